//! The host functions of the Proxy-Wasm ABI 0.2.1 (module `env`), over the same call state,
//! grants and edit checks as the contract's host functions.
//!
//! Data goes to the filter in memory it allocates itself (`proxy_on_memory_allocate`, or
//! `malloc` in older SDKs); the address and size are written where the filter said. Header maps
//! travel in the ABI's serialization: the pair count, then each pair's key and value sizes
//! (32-bit little endian), then each key and value followed by a NUL byte.

use http::HeaderMap;
use wasmtime::{Caller, FuncType, Linker, Memory, Val};

use super::shared::{Metric, Refusal, Shared};
use super::{FilterState, Phase, ROOT_CONTEXT};
use crate::bindings::{readable, text, Edit, HostState, Reply};

/// The ABI's status codes.
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const PARSE_FAILURE: i32 = 4;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// The ABI's header map types.
mod map {
    pub const REQUEST_HEADERS: i32 = 0;
    pub const REQUEST_TRAILERS: i32 = 1;
    pub const RESPONSE_HEADERS: i32 = 2;
    pub const RESPONSE_TRAILERS: i32 = 3;
}

/// The ABI's buffer types.
mod buffer {
    pub const REQUEST_BODY: i32 = 0;
    pub const RESPONSE_BODY: i32 = 1;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

/// Every function of module `env` a Proxy-Wasm SDK imports (ABI 0.2.1, with the names 0.2.0
/// SDKs still use). A filter may import any of them; the ones not in [`IMPLEMENTED`] answer
/// `Unimplemented`.
pub(crate) const ABI_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_get_header_map_size",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_dispatch_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

/// The functions of [`ABI_FUNCTIONS`] the host implements.
const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_continue_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_send_local_response",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

pub(crate) fn is_abi_function(name: &str) -> bool {
    ABI_FUNCTIONS.contains(&name)
}

pub(crate) fn implements(name: &str) -> bool {
    IMPLEMENTED.contains(&name)
}

/// Why the host does not provide an ABI function, for the log line.
fn why_unimplemented(function: &str) -> &'static str {
    match function {
        "proxy_http_call"
        | "proxy_dispatch_http_call"
        | "proxy_grpc_call"
        | "proxy_grpc_stream"
        | "proxy_grpc_send"
        | "proxy_grpc_cancel"
        | "proxy_grpc_close" => "makes an outbound call, which this plugin use is not granted",
        _ => "this gateway does not provide",
    }
}

/// The stand-in for an ABI function the host does not provide: it records the call and answers
/// `Unimplemented` (zeros for any other result).
pub(crate) fn unimplemented(
    function: &str,
    ty: &FuncType,
) -> impl Fn(Caller<'_, HostState>, &[Val], &mut [Val]) -> wasmtime::Result<()> + Send + Sync + 'static
{
    let function = function.to_owned();
    let results: Vec<Val> = ty
        .results()
        .map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0)))
        .collect();
    move |caller, _params, out| {
        if let Some(filter) = &caller.data().filter {
            filter.usage.record(&function, why_unimplemented(&function));
        }
        for (slot, value) in out.iter_mut().zip(&results) {
            *slot = match value {
                Val::I32(_) => Val::I32(status::UNIMPLEMENTED),
                other => *other,
            };
        }
        Ok(())
    }
}

type Ctx<'a> = Caller<'a, HostState>;

/// The filter's exported memory.
fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    caller.get_export("memory")?.into_memory()
}

/// Copies `len` bytes at `ptr` out of the filter's memory.
fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let mem = memory(caller).ok_or(status::INVALID_MEMORY_ACCESS)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&*caller);
    let end = start
        .checked_add(len)
        .filter(|&e| e <= data.len())
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    Ok(data[start..end].to_vec())
}

/// Reads a UTF-8 string argument.
fn read_str(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<String, i32> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| status::BAD_ARGUMENT)
}

/// Writes `bytes` at `ptr` in the filter's memory.
fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let mem = memory(caller).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|_| status::INVALID_MEMORY_ACCESS)
}

/// Hands `data` to the filter: allocates it in the filter's memory and writes its address and
/// size at `ret_ptr` and `ret_size`. An empty value is the null address.
fn give(caller: &mut Ctx<'_>, data: &[u8], ret_ptr: i32, ret_size: i32) -> wasmtime::Result<i32> {
    let address = if data.is_empty() {
        0
    } else {
        let alloc = caller
            .get_export("proxy_on_memory_allocate")
            .or_else(|| caller.get_export("malloc"))
            .and_then(|e| e.into_func());
        let Some(alloc) = alloc else {
            return Ok(status::INTERNAL_FAILURE);
        };
        let Ok(alloc) = alloc.typed::<i32, i32>(&*caller) else {
            return Ok(status::INTERNAL_FAILURE);
        };
        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
        let address = alloc.call(&mut *caller, len)?;
        if address == 0 {
            return Ok(status::INTERNAL_FAILURE);
        }
        if let Err(s) = write(caller, address, data) {
            return Ok(s);
        }
        address
    };
    if let Err(s) = write(caller, ret_ptr, &(address as u32).to_le_bytes())
        .and_then(|()| write(caller, ret_size, &(data.len() as u32).to_le_bytes()))
    {
        return Ok(s);
    }
    Ok(status::OK)
}

/// The filter state of the store; every filter store has one.
fn filter<'a>(caller: &'a Ctx<'_>) -> Option<&'a FilterState> {
    caller.data().filter.as_deref()
}

fn phase(caller: &Ctx<'_>) -> Phase {
    filter(caller).map_or(Phase::Root, |f| f.phase)
}

/// Serializes header pairs the ABI's way.
fn serialize(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses header pairs serialized the ABI's way.
fn deserialize(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count.checked_mul(8)?;
    let mut pairs = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at += k + 1;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at += v + 1;
        pairs.push((
            String::from_utf8(key.to_vec()).ok()?,
            String::from_utf8(value.to_vec()).ok()?,
        ));
    }
    Some(pairs)
}

/// The request's pseudo-headers as Envoy gives them; `:authority` under the Host read grant.
fn request_pseudo(state: &HostState) -> Vec<(String, Vec<u8>)> {
    let req = &state.call.request;
    let mut pairs = vec![
        (
            ":path".to_owned(),
            req.uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes()
                .to_vec(),
        ),
        (
            ":method".to_owned(),
            req.method.as_str().as_bytes().to_vec(),
        ),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    if let Some(host) = readable(&state.grants.request.read, &req.headers, "host")
        .and_then(|all| all.iter().next().map(|v| v.as_bytes().to_vec()))
    {
        pairs.insert(0, (":authority".to_owned(), host));
    }
    pairs
}

/// The readable headers of a message.
fn headers_of(
    granted: &crate::grants::HeaderSet,
    map: &HeaderMap,
    pairs: &mut Vec<(String, Vec<u8>)>,
) {
    for (name, value) in map {
        if granted.allows(name) {
            pairs.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
        }
    }
}

/// The pairs of a header map the filter may read now; `None`: not available in this callback.
fn map_pairs(state: &HostState, map: i32) -> Option<Vec<(String, Vec<u8>)>> {
    let phase = state.filter.as_deref().map_or(Phase::Root, |f| f.phase);
    match map {
        map::REQUEST_HEADERS if phase != Phase::Root => {
            let mut pairs = request_pseudo(state);
            headers_of(
                &state.grants.request.read,
                &state.call.request.headers,
                &mut pairs,
            );
            Some(pairs)
        }
        map::RESPONSE_HEADERS if phase.has_response() => {
            let mut pairs = vec![(
                ":status".to_owned(),
                state.call.response.status.as_str().as_bytes().to_vec(),
            )];
            headers_of(
                &state.grants.response.read,
                &state.call.response.headers,
                &mut pairs,
            );
            Some(pairs)
        }
        // trailers are not passed to filters: always empty
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS if phase != Phase::Root => Some(Vec::new()),
        _ => None,
    }
}

/// One header's value the filter may read now (the first, for a repeated header).
fn map_value(state: &HostState, map: i32, key: &str) -> Option<Vec<u8>> {
    let key = key.to_ascii_lowercase();
    if key.starts_with(':') {
        return map_pairs(state, map)?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v);
    }
    let phase = state.filter.as_deref().map_or(Phase::Root, |f| f.phase);
    let (granted, headers) = match map {
        map::REQUEST_HEADERS if phase != Phase::Root => {
            (&state.grants.request.read, &state.call.request.headers)
        }
        map::RESPONSE_HEADERS if phase.has_response() => {
            (&state.grants.response.read, &state.call.response.headers)
        }
        _ => return None,
    };
    readable(granted, headers, &key)?
        .iter()
        .next()
        .map(|v| text(v).into_bytes())
}

/// How a filter edits a header.
#[derive(Clone, Copy)]
enum HeaderEdit {
    Replace,
    Add,
    Remove,
}

/// Applies one header edit under the grants and edit limits; the status the filter gets.
fn edit(state: &mut HostState, map: i32, key: &str, value: &str, how: HeaderEdit) -> i32 {
    let phase = state.filter.as_deref().map_or(Phase::Root, |f| f.phase);
    let key = key.to_ascii_lowercase();
    let held = state.filter.as_deref().is_some_and(|f| f.body_held);
    if held && key == "content-length" && matches!(how, HeaderEdit::Remove) {
        // the gateway sends the body the filter leaves with its own framing
        return status::OK;
    }
    let grants = state.grants.clone();
    let result = match (map, phase) {
        (map::REQUEST_HEADERS, Phase::Request) => match (key.as_str(), how) {
            (":path", HeaderEdit::Replace) => set_path(state, value),
            (":authority", _) => edit_request(state, &grants, "host", value, how),
            (k, _) if k.starts_with(':') => return status::BAD_ARGUMENT,
            (k, how) => edit_request(state, &grants, k, value, how),
        },
        (map::RESPONSE_HEADERS, Phase::Response) => {
            if key.starts_with(':') {
                return status::BAD_ARGUMENT;
            }
            let write = &grants.response.write;
            match how {
                HeaderEdit::Replace => {
                    state
                        .call
                        .edit_response_header(write, Edit::Set, &key, value)
                }
                HeaderEdit::Add => {
                    state
                        .call
                        .edit_response_header(write, Edit::Append, &key, value)
                }
                HeaderEdit::Remove => state.call.remove_response_header(write, &key),
            }
        }
        _ => return status::NOT_FOUND,
    };
    match result {
        Ok(()) => status::OK,
        Err(_) => status::BAD_ARGUMENT,
    }
}

fn edit_request(
    state: &mut HostState,
    grants: &crate::grants::Grants,
    key: &str,
    value: &str,
    how: HeaderEdit,
) -> Result<(), String> {
    let write = &grants.request.write;
    match how {
        HeaderEdit::Replace => state.call.edit_request_header(write, Edit::Set, key, value),
        HeaderEdit::Add => state
            .call
            .edit_request_header(write, Edit::Append, key, value),
        HeaderEdit::Remove => state.call.remove_request_header(write, key),
    }
}

/// Sets the request's `:path` (path and query).
fn set_path(state: &mut HostState, value: &str) -> Result<(), String> {
    let (path, query) = match value.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (value, None),
    };
    let old_query = state.call.request.uri.query().map(str::to_owned);
    if path != state.call.request.uri.path() {
        state.set_request_path(path.to_owned())?;
    }
    if query != old_query {
        state.set_request_query(query)?;
    }
    Ok(())
}

/// Replaces a whole header map with `pairs`: headers that differ are set, missing ones removed,
/// each under the same checks as a single edit.
fn replace_map(state: &mut HostState, map: i32, pairs: Vec<(String, String)>) -> i32 {
    let Some(current) = map_pairs(state, map) else {
        return status::NOT_FOUND;
    };
    let mut wanted: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in pairs {
        let k = k.to_ascii_lowercase();
        match wanted.iter_mut().find(|(n, _)| *n == k) {
            Some((_, values)) => values.push(v),
            None => wanted.push((k, vec![v])),
        }
    }
    let values_of = |name: &str| -> Vec<Vec<u8>> {
        current
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    // removed headers
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in &current {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        if !wanted.iter().any(|(k, _)| k == name) {
            if name.starts_with(':') {
                return status::BAD_ARGUMENT;
            }
            let s = edit(state, map, name, "", HeaderEdit::Remove);
            if s != status::OK {
                return s;
            }
        }
    }
    // changed or new headers
    for (name, values) in &wanted {
        let same = values_of(name)
            .iter()
            .map(|v| v.as_slice())
            .eq(values.iter().map(|v| v.as_bytes()));
        if same {
            continue;
        }
        for (i, value) in values.iter().enumerate() {
            let how = if i == 0 {
                HeaderEdit::Replace
            } else {
                HeaderEdit::Add
            };
            let s = edit(state, map, name, value, how);
            if s != status::OK {
                return s;
            }
        }
    }
    status::OK
}

/// The bytes of a buffer the filter may read now.
fn buffer_of(state: &HostState, kind: i32) -> Option<Vec<u8>> {
    let filter = state.filter.as_deref()?;
    match kind {
        buffer::PLUGIN_CONFIGURATION => Some(filter.plugin_config.to_vec()),
        buffer::VM_CONFIGURATION => Some(filter.vm_config.to_vec()),
        buffer::REQUEST_BODY if filter.phase == Phase::Request && state.call.request_writable => {
            match (&state.call.new_body, &state.call.body) {
                (Some(set), Some(_)) => Some(set.clone()),
                (None, Some(body)) => Some(body.to_vec()),
                _ => None,
            }
        }
        buffer::RESPONSE_BODY if filter.phase == Phase::ResponseBody => {
            match (&filter.new_response_body, &filter.response_body) {
                (Some(set), _) => Some(set.clone()),
                (None, Some(body)) => Some(body.to_vec()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Replaces the response body, up to the use's body limit.
fn set_response_body(state: &mut HostState, body: Vec<u8>) -> Result<(), String> {
    let limit = state.call.body_limit;
    if body.len() > limit {
        return Err(state.call.violate(crate::bindings::Violation::Body(format!(
            "a body of {} bytes is over this plugin's body_limit of {limit} bytes",
            body.len()
        ))));
    }
    if let Some(f) = state.filter.as_deref_mut() {
        f.new_response_body = Some(body);
    }
    Ok(())
}

/// The value of a property (its path's segments joined by NUL). Numbers are 64-bit little
/// endian, as Envoy gives them.
fn property(state: &HostState, label: &str, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    let phase = state.filter.as_deref().map_or(Phase::Root, |f| f.phase);
    let req = &state.call.request;
    let in_request = phase != Phase::Root;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match segments.as_slice() {
        [b"request", b"path"] if in_request => {
            text(req.uri.path_and_query().map_or("/", |pq| pq.as_str()))
        }
        [b"request", b"url_path"] if in_request => text(req.uri.path()),
        [b"request", b"query"] if in_request => text(req.uri.query().unwrap_or("")),
        [b"request", b"method"] if in_request => text(req.method.as_str()),
        [b"request", b"scheme"] if in_request => text("http"),
        [b"request", b"protocol"] if in_request => text(match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        }),
        [b"request", b"host"] if in_request => map_value(state, map::REQUEST_HEADERS, "host"),
        [b"request", b"headers", name] if in_request => std::str::from_utf8(name)
            .ok()
            .and_then(|n| map_value(state, map::REQUEST_HEADERS, n)),
        [b"response", b"code"] if matches!(phase, Phase::Response | Phase::Done) => Some(
            u64::from(state.call.response.status.as_u16())
                .to_le_bytes()
                .to_vec(),
        ),
        [b"response", b"headers", name] => std::str::from_utf8(name)
            .ok()
            .and_then(|n| map_value(state, map::RESPONSE_HEADERS, n)),
        [b"source", b"address"] if in_request => {
            state.call.client_ip.map(|ip| ip.to_string().into_bytes())
        }
        [b"plugin_name"] => text(label),
        [b"plugin_root_id"] => state
            .filter
            .as_deref()
            .map(|f| f.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => Some(Vec::new()),
        [b"route_name"] | [b"xds", b"route_name"] => text(&state.api),
        [b"gatehouse", b"service"] => text(&state.service),
        [b"gatehouse", b"api"] => text(&state.api),
        _ => None,
    }
}

/// The status of a refused shared-data or queue operation (a bound reached is logged once).
fn refusal(caller: &Ctx<'_>, refusal: Refusal) -> i32 {
    match refusal {
        Refusal::NotFound => status::NOT_FOUND,
        Refusal::CasMismatch => status::CAS_MISMATCH,
        Refusal::Empty => status::EMPTY,
        Refusal::Full(what) => {
            if let Some(f) = filter(caller) {
                f.usage.refused(what);
            }
            status::BAD_ARGUMENT
        }
    }
}

/// Runs `op` on the module's shared data and queues; a refusal as the ABI's status.
fn on_shared<T>(
    caller: &Ctx<'_>,
    op: impl FnOnce(&Shared) -> Result<T, Refusal>,
) -> Result<T, i32> {
    let Some(shared) = filter(caller).map(|f| f.shared.clone()) else {
        return Err(status::NOT_FOUND);
    };
    op(&shared).map_err(|r| refusal(caller, r))
}

/// Reads a queue's name, finds (or registers) the queue with `op`, and writes its id where the
/// filter said.
fn queue_by_name(
    mut c: Ctx<'_>,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
    op: impl FnOnce(&FilterState, &str) -> Result<u32, Refusal>,
) -> i32 {
    let name = match read_str(&mut c, name_ptr, name_len) {
        Ok(n) => n,
        Err(s) => return s,
    };
    let Some(f) = filter(&c) else {
        return status::NOT_FOUND;
    };
    match op(f, &name) {
        Ok(id) => write(&mut c, ret_id, &id.to_le_bytes()).map_or_else(|s| s, |()| status::OK),
        Err(r) => refusal(&c, r),
    }
}

/// The metric `id` of this VM.
fn metric(caller: &Ctx<'_>, id: i32) -> Option<Metric> {
    filter(caller)?.metrics.get(id as u32 as usize).cloned()
}

/// Most metrics one VM may define.
const MAX_VM_METRICS: usize = 64;

/// Shortest tick period: the filter clock's period.
pub(crate) const MIN_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Adds shared data, queues, metrics and ticks (see [`super::shared`]).
fn add_shared_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32, ret_cas: i32| {
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s),
            };
            match on_shared(&c, |s| s.get(&key)) {
                Ok((value, cas)) => {
                    if let Err(s) = write(&mut c, ret_cas, &cas.to_le_bytes()) {
                        return Ok(s);
                    }
                    give(&mut c, &value, ret_ptr, ret_size)
                }
                Err(s) => Ok(s),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            let (key, value) = match (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            on_shared(&c, |s| s.set(&key, value, cas as u32)).map_or_else(|s| s, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |c: Ctx<'_>, np: i32, nl: i32, ret_id: i32| -> i32 {
            queue_by_name(c, np, nl, ret_id, |f, name| {
                // the owner is told of messages by the filter clock
                f.usage
                    .wants_clock
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                f.shared.register_queue(name, f.vm)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |c: Ctx<'_>, _vp: i32, _vl: i32, np: i32, nl: i32, ret_id: i32| -> i32 {
            // one VM id per filter module: the VM id given is not looked at
            queue_by_name(c, np, nl, ret_id, |f, name| f.shared.resolve_queue(name))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Ctx<'_>, id: i32, vp: i32, vl: i32| -> i32 {
            let value = match read(&mut c, vp, vl) {
                Ok(v) => v,
                Err(s) => return s,
            };
            on_shared(&c, |s| s.enqueue(id as u32, value)).map_or_else(|s| s, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ret_ptr: i32, ret_size: i32| -> wasmtime::Result<i32> {
            match on_shared(&c, |s| s.dequeue(id as u32)) {
                Ok(message) => give(&mut c, &message, ret_ptr, ret_size),
                Err(s) => Ok(s),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, np: i32, nl: i32, ret_id: i32| -> i32 {
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s,
            };
            let Some(f) = c.data_mut().filter.as_deref_mut() else {
                return status::NOT_FOUND;
            };
            if f.metrics.len() >= MAX_VM_METRICS {
                f.usage.refused("more than 64 metrics in one VM");
                return status::BAD_ARGUMENT;
            }
            match super::shared::define_metric(kind, &name, &f.usage.label) {
                Ok(metric) => {
                    let id = f.metrics.len() as u32;
                    f.metrics.push(metric);
                    write(&mut c, ret_id, &id.to_le_bytes()).map_or_else(|s| s, |()| 0)
                }
                Err(why) => {
                    f.usage.refused(&format!("the metric {name:?}: {why}"));
                    status::BAD_ARGUMENT
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, offset: i64| -> i32 {
            match metric(&c, id) {
                Some(Metric::Counter(m)) if offset >= 0 => {
                    m.inc_by(offset as u64);
                    status::OK
                }
                Some(Metric::Gauge(m)) => {
                    m.add(offset);
                    status::OK
                }
                Some(_) => status::BAD_ARGUMENT,
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Ctx<'_>, id: i32, value: i64| -> i32 {
            match metric(&c, id) {
                Some(Metric::Gauge(m)) => {
                    m.set(value);
                    status::OK
                }
                Some(Metric::Histogram(m)) => {
                    m.observe(value as u64 as f64);
                    status::OK
                }
                // a counter only goes up
                Some(Metric::Counter(m)) if value as u64 >= m.get() => {
                    m.inc_by(value as u64 - m.get());
                    status::OK
                }
                Some(Metric::Counter(_)) => status::BAD_ARGUMENT,
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ret: i32| -> i32 {
            let value = match metric(&c, id) {
                Some(Metric::Counter(m)) => m.get(),
                Some(Metric::Gauge(m)) => m.get() as u64,
                Some(Metric::Histogram(m)) => m.get_sample_count(),
                None => return status::NOT_FOUND,
            };
            write(&mut c, ret, &value.to_le_bytes()).map_or_else(|s| s, |()| 0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| -> i32 {
            let Some(f) = c.data_mut().filter.as_deref_mut() else {
                return status::NOT_FOUND;
            };
            let period = std::time::Duration::from_millis(period as u32 as u64);
            f.tick = (!period.is_zero()).then(|| period.max(MIN_TICK));
            if f.tick.is_some() {
                f.usage
                    .wants_clock
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            status::OK
        },
    )?;
    Ok(())
}

/// Adds the host functions the gateway implements to `linker` (module `env`).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    add_shared_to_linker(linker)?;
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let Ok(message) = read(&mut c, ptr, len) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let level = match level {
                0 => log::Level::Trace,
                1 => log::Level::Debug,
                2 => log::Level::Info,
                3 => log::Level::Warn,
                _ => log::Level::Error,
            };
            c.data_mut()
                .write_log(level, &String::from_utf8_lossy(&message));
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, ret: i32| -> i32 {
            let level: u32 = match log::max_level() {
                log::LevelFilter::Trace => 0,
                log::LevelFilter::Debug => 1,
                log::LevelFilter::Info => 2,
                log::LevelFilter::Warn => 3,
                _ => 4,
            };
            write(&mut c, ret, &level.to_le_bytes()).map_or_else(|s| s, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: i32| -> i32 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            write(&mut c, ret, &now.to_le_bytes()).map_or_else(|s| s, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ret_ptr: i32, ret_size: i32| -> wasmtime::Result<i32> {
            let Some(pairs) = map_pairs(c.data(), map) else {
                return Ok(status::NOT_FOUND);
            };
            let bytes = serialize(&pairs);
            give(&mut c, &bytes, ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>,
         map: i32,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> wasmtime::Result<i32> {
            let key = match read_str(&mut c, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return Ok(s),
            };
            match map_value(c.data(), map, &key) {
                Some(value) => give(&mut c, &value, ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    for (name, how) in [
        ("proxy_replace_header_map_value", HeaderEdit::Replace),
        ("proxy_add_header_map_value", HeaderEdit::Add),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Ctx<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                let (key, value) = match (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) {
                    (Ok(k), Ok(v)) => (k, v),
                    (Err(s), _) | (_, Err(s)) => return s,
                };
                edit(c.data_mut(), map, &key, &value, how)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: i32, kp: i32, kl: i32| -> i32 {
            match read_str(&mut c, kp, kl) {
                Ok(key) => edit(c.data_mut(), map, &key, "", HeaderEdit::Remove),
                Err(s) => s,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s,
            };
            match deserialize(&bytes) {
                Some(pairs) => replace_map(c.data_mut(), map, pairs),
                None => status::PARSE_FAILURE,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>,
         kind: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> wasmtime::Result<i32> {
            let Some(bytes) = buffer_of(c.data(), kind) else {
                return Ok(status::NOT_FOUND);
            };
            let start = (start as u32 as usize).min(bytes.len());
            let end = start.saturating_add(max as u32 as usize).min(bytes.len());
            give(&mut c, &bytes[start..end], ret_ptr, ret_size)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            if kind != buffer::REQUEST_BODY && kind != buffer::RESPONSE_BODY {
                return status::NOT_FOUND;
            }
            let Some(mut body) = buffer_of(c.data(), kind) else {
                return status::NOT_FOUND;
            };
            let data = match read(&mut c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s,
            };
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            body.splice(start..end, data);
            let state = c.data_mut();
            let set = if kind == buffer::REQUEST_BODY {
                state.call.set_body(body)
            } else {
                set_response_body(state, body)
            };
            match set {
                Ok(()) => status::OK,
                Err(_) => status::BAD_ARGUMENT,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> wasmtime::Result<i32> {
            let path = match read(&mut c, pp, pl) {
                Ok(p) => p,
                Err(s) => return Ok(s),
            };
            let label = c
                .data()
                .filter
                .as_deref()
                .map(|f| f.usage.label.clone())
                .unwrap_or_default();
            match property(c.data(), &label, &path) {
                Some(value) => give(&mut c, &value, ret_ptr, ret_size),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    for name in [
        "proxy_continue_request",
        "proxy_continue_response",
        "proxy_done",
    ] {
        linker.func_wrap("env", name, |_: Ctx<'_>| -> i32 { status::OK })?;
    }
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |_: Ctx<'_>, _kind: i32| -> i32 { status::OK },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |c: Ctx<'_>, context: i32| -> i32 {
            let context = context as u32;
            match filter(&c) {
                Some(f) if context == ROOT_CONTEXT || f.live.contains(&context) => status::OK,
                _ => status::BAD_ARGUMENT,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         code: i32,
         _details_ptr: i32,
         _details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32|
         -> i32 {
            if phase(&c) != Phase::Request {
                // the response has started: it cannot be replaced
                return status::BAD_ARGUMENT;
            }
            let (body, headers) = match (
                read(&mut c, body_ptr, body_len),
                read(&mut c, headers_ptr, headers_len),
            ) {
                (Ok(b), Ok(h)) => (b, h),
                (Err(s), _) | (_, Err(s)) => return s,
            };
            let headers = if headers.is_empty() {
                Vec::new()
            } else {
                match deserialize(&headers) {
                    Some(pairs) => pairs,
                    None => return status::PARSE_FAILURE,
                }
            };
            let Ok(status) = u16::try_from(code) else {
                return status::BAD_ARGUMENT;
            };
            if let Some(f) = c.data_mut().filter.as_deref_mut() {
                f.local = Some(Reply {
                    status,
                    headers,
                    body,
                });
            }
            status::OK
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip() {
        let pairs = vec![
            (":path".to_owned(), b"/a?b".to_vec()),
            ("x-one".to_owned(), b"".to_vec()),
            ("x-two".to_owned(), "é".as_bytes().to_vec()),
        ];
        let back = deserialize(&serialize(&pairs)).unwrap();
        assert_eq!(
            back,
            vec![
                (":path".to_owned(), "/a?b".to_owned()),
                ("x-one".to_owned(), String::new()),
                ("x-two".to_owned(), "é".to_owned()),
            ]
        );
        assert_eq!(deserialize(&[]), None);
        // a count far beyond the bytes
        assert_eq!(deserialize(&[255, 255, 255, 255]), None);
        // sizes past the end
        assert_eq!(
            deserialize(&[1, 0, 0, 0, 9, 0, 0, 0, 9, 0, 0, 0, b'a']),
            None
        );
    }
}
