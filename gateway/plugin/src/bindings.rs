//! Host side of the WIT contract (`wit/plugin.wit`): the generated bindings and the host
//! functions a plugin may call.
//!
//! A hook receives handles to "the request" and "the response" of the call in progress. The
//! headers themselves are moved into the store for the duration of the call (a pointer swap, no
//! copy) and moved back after it, so plugins read and edit the real request without the gateway
//! copying header maps per call.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Uri};
use pingora_http::{RequestHeader, ResponseHeader};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use wasmtime::component::Resource;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use crate::grants::{DeclaredHeaders, Grants, HeaderSet, HookSet, Needs};

/// Contract 0.1.0 (`wit/0.1.0/plugin.wit`, frozen).
pub mod v1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit/0.1.0",
        with: {
            "gatehouse:plugin/http.request": super::RequestHandle,
            "gatehouse:plugin/http.response": super::ResponseHandle,
        },
    });
}

/// Contract 0.2.0 (`wit/plugin.wit`).
pub mod v2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit",
        with: {
            "gatehouse:plugin/http.request": super::RequestHandle,
            "gatehouse:plugin/http.response": super::ResponseHandle,
        },
    });
}

/// An answer a plugin gives instead of forwarding the request (any contract version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The node chosen for one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name of the upstream.
    pub upstream: String,
    /// The node as configured: an IP address or a DNS name.
    pub host: String,
    pub port: u16,
    /// The socket address actually connected to, `ip:port`.
    pub address: String,
}

/// Where a plugin steered a request, as it named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteerTo {
    /// The upstream's nodes with this tag.
    Tag(String),
    /// One node, by `host:port` as configured or the `ip:port` it connects to.
    Node(String),
}

/// A plugin's choice of the nodes that may serve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChoice {
    pub to: SteerTo,
    /// When none of those nodes can take the request: refuse it rather than use another.
    pub fail: bool,
}

/// What `on-request` decided.
pub enum Action {
    Proceed,
    Respond(Reply),
}

/// The types every contract version shares, converted to the host's.
macro_rules! convert_types {
    ($v:ident) => {
        impl From<$v::gatehouse::plugin::types::Action> for Action {
            fn from(action: $v::gatehouse::plugin::types::Action) -> Self {
                use $v::gatehouse::plugin::types::Action as A;
                match action {
                    A::Proceed => Action::Proceed,
                    A::Respond(r) => Action::Respond(Reply {
                        status: r.status,
                        headers: r.headers,
                        body: r.body,
                    }),
                }
            }
        }

        impl From<&Node> for $v::gatehouse::plugin::types::Node {
            fn from(node: &Node) -> Self {
                Self {
                    upstream: node.upstream.clone(),
                    host: node.host.clone(),
                    port: node.port,
                    address: node.address.clone(),
                }
            }
        }

        impl From<$v::gatehouse::plugin::types::LogLevel> for log::Level {
            fn from(level: $v::gatehouse::plugin::types::LogLevel) -> Self {
                use $v::gatehouse::plugin::types::LogLevel as L;
                match level {
                    L::Trace => log::Level::Trace,
                    L::Debug => log::Level::Debug,
                    L::Info => log::Level::Info,
                    L::Warn => log::Level::Warn,
                    L::Error => log::Level::Error,
                }
            }
        }
    };
}
convert_types!(v1);
convert_types!(v2);

impl From<v2::gatehouse::plugin::types::Needs> for Needs {
    fn from(n: v2::gatehouse::plugin::types::Needs) -> Self {
        let headers = |h: v2::gatehouse::plugin::types::HeaderAccess| DeclaredHeaders {
            read: h.read,
            write: h.write,
        };
        use v2::gatehouse::plugin::types::Hooks as H;
        let hooks = [
            (H::ON_REQUEST, HookSet::ON_REQUEST),
            (H::ON_UPSTREAM_REQUEST, HookSet::ON_UPSTREAM_REQUEST),
            (H::ON_RESPONSE, HookSet::ON_RESPONSE),
            (H::ON_RESPONSE_BODY, HookSet::ON_RESPONSE_BODY),
        ]
        .into_iter()
        .filter(|(flag, _)| n.hooks.contains(*flag))
        .fold(HookSet::default(), |set, (_, hook)| set.union(hook));
        Needs {
            hooks,
            request_headers: headers(n.request_headers),
            response_headers: headers(n.response_headers),
            request_body: n.request_body,
            response_body: n.response_body,
            node_steering: n.node_steering,
            counters: n.counters,
        }
    }
}

/// Marker for the `request` resource: there is one request per call, held in [`Call`].
pub struct RequestHandle;
/// Marker for the `response` resource.
pub struct ResponseHandle;

/// Handle value of the request passed to a hook.
pub const REQUEST: u32 = 0;
/// Handle value of the response passed to a hook.
pub const RESPONSE: u32 = 1;

/// Per-store state: limits, identity for logs, and the call in progress.
pub struct HostState {
    pub limiter: Limiter,
    /// `plugin-name (service.api)`, for log lines.
    pub who: Arc<str>,
    pub service: Arc<str>,
    pub api: Arc<str>,
    pub call: Call,
    /// What this plugin use may touch, enforced by every host function.
    pub grants: Arc<Grants>,
    /// The time budget of the call running now.
    pub budget: crate::budget::CallBudget,
    /// The plugin use's counters.
    pub counters: Arc<crate::counters::Counters>,
    pub(crate) rng: SmallRng,
    /// A Proxy-Wasm filter's VM state (`None` for a component).
    pub(crate) filter: Option<Box<crate::proxy_wasm::FilterState>>,
    log_budget: Arc<LogBudget>,
}

impl HostState {
    pub fn new(
        memory_limit: usize,
        edits: EditLimits,
        budget: Arc<MemoryBudget>,
        log_budget: Arc<LogBudget>,
        who: Arc<str>,
        service: Arc<str>,
        api: Arc<str>,
    ) -> Self {
        Self {
            limiter: Limiter::new(memory_limit, budget),
            who,
            service,
            api,
            call: Call::new(edits),
            grants: Arc::new(Grants::baseline()),
            budget: Default::default(),
            counters: Arc::new(crate::counters::Counters::new(0)),
            rng: SmallRng::from_os_rng(),
            filter: None,
            log_budget,
        }
    }
}

/// The linear memory of every plugin instance of the process, against one budget. At the budget
/// an instance cannot grow (its call fails with reason `memory`) and no new instance can be made
/// (reason `instantiate`); instances of a failed call are dropped, which gives their memory back.
pub struct MemoryBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        }
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes of linear memory held by all instances.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.limit.load(Ordering::Relaxed) {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Memory and table limits of one instance; remembers a refused growth so a failure can be
/// reported as "memory" rather than a plain trap.
pub struct Limiter {
    inner: StoreLimits,
    pub denied: bool,
    budget: Arc<MemoryBudget>,
    /// Bytes this instance holds of the budget.
    held: u64,
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl Limiter {
    /// Bytes of linear memory this instance holds.
    pub fn held(&self) -> u64 {
        self.held
    }

    fn new(memory: usize, budget: Arc<MemoryBudget>) -> Self {
        Self {
            budget,
            held: 0,
            inner: StoreLimitsBuilder::new()
                .memory_size(memory)
                .table_elements(100_000)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let mut ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            let more = desired.saturating_sub(current) as u64;
            ok = self.budget.take(more);
            if ok {
                self.held += more;
            }
        }
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.table_growing(current, desired, maximum)?;
        self.denied |= !ok;
        Ok(ok)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What one hook call may add to a message's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditLimits {
    /// Headers set or appended.
    pub headers: usize,
    /// Bytes of the names and values set or appended.
    pub bytes: usize,
}

impl Default for EditLimits {
    fn default() -> Self {
        Self {
            headers: 64,
            bytes: 16 * 1024,
        }
    }
}

/// No message leaves a plugin call with more header lines than this, whatever the limits: the
/// header map's own capacity (32,768) is far away, so inserting can never panic.
pub const MAX_HEADER_LINES: usize = 1000;

/// Headers that frame the message or the connection. After the plugins run, framing is the
/// gateway's: a plugin that sets or removes one fails its call, and its edits are rolled back.
pub fn is_framing_header(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    *name == CONTENT_LENGTH
        || *name == TRANSFER_ENCODING
        || *name == CONNECTION
        || *name == UPGRADE
        || *name == TE
        || *name == TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// A rule a plugin broke during a call; the call fails even if the plugin ignored the setter's
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A framing header.
    Forbidden(String),
    /// Too many header edits or bytes.
    Limit(String),
    /// A header the plugin use was not granted to write.
    Denied(String),
    /// A body over the plugin use's body limit.
    Body(String),
}

/// Checks the headers of a reply a plugin answers with.
pub fn check_reply_headers(
    headers: &[(String, String)],
    limits: &EditLimits,
) -> Result<(), Violation> {
    if headers.len() > limits.headers {
        return Err(Violation::Limit(format!(
            "a reply with {} headers (at most {})",
            headers.len(),
            limits.headers
        )));
    }
    let mut bytes = 0;
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Violation::Forbidden(format!("{name:?} is not a valid header name")))?;
        if is_framing_header(&n) {
            return Err(Violation::Forbidden(format!("the reply sets {n}")));
        }
        if HeaderValue::from_str(value).is_err() {
            return Err(Violation::Forbidden(format!(
                "the value of {n} is not visible ASCII on one line"
            )));
        }
        bytes += name.len() + value.len();
    }
    if bytes > limits.bytes {
        return Err(Violation::Limit(format!(
            "reply headers of {bytes} bytes (at most {})",
            limits.bytes
        )));
    }
    Ok(())
}

/// How a setter changes a header.
#[derive(Clone, Copy)]
pub(crate) enum Edit {
    /// Replace every value.
    Set,
    /// Add a value.
    Append,
}

/// The messages of the call in progress. Outside a call they hold placeholders.
pub struct Call {
    pub request: RequestHeader,
    pub response: ResponseHeader,
    /// Setters on the request work (false in `on-response`, where it is the client's request).
    pub request_writable: bool,
    pub client_ip: Option<IpAddr>,
    /// A setter changed the path.
    pub path_changed: bool,
    /// A setter changed the query.
    pub query_changed: bool,
    /// A setter changed the Host header.
    pub host_changed: bool,
    /// The first rule the plugin broke in this call.
    pub violation: Option<Violation>,
    /// The request body, in `on-request` of a plugin use granted it.
    pub body: Option<bytes::Bytes>,
    /// The body a plugin set in this call, to go upstream instead.
    pub new_body: Option<Vec<u8>>,
    /// Largest body the plugin use may set.
    pub body_limit: usize,
    /// The call may steer the request (`on-request`).
    pub steerable: bool,
    /// The nodes this call allowed the request to use.
    pub nodes: Option<NodeChoice>,
    /// The retry count this call set.
    pub retries: Option<u32>,
    limits: EditLimits,
    /// Headers and bytes set in this call so far.
    added_headers: usize,
    added_bytes: usize,
    /// What this call changed, as it was before: the values of each header the call touched
    /// (saved on its first touch) and the URI. A call that edits nothing saves nothing; a call
    /// that edits a header saves that header's values only. Replayed backwards when it fails.
    undo: Vec<Undo>,
}

/// One saved state of an edited call.
enum Undo {
    Request(HeaderName, Saved),
    Response(HeaderName, Saved),
    Uri(http::Uri),
}

/// A header's values before a call changed them. Most headers have none or one: saving those
/// allocates nothing.
enum Saved {
    None,
    One(HeaderValue),
    Many(Vec<HeaderValue>),
}

impl Saved {
    fn of(headers: &http::HeaderMap, name: &HeaderName) -> Self {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Saved::None,
            (Some(one), None) => Saved::One(one.clone()),
            _ => Saved::Many(headers.get_all(name).iter().cloned().collect()),
        }
    }

    fn into_values(self) -> impl Iterator<Item = HeaderValue> {
        let (one, many) = match self {
            Saved::None => (None, Vec::new()),
            Saved::One(value) => (Some(value), Vec::new()),
            Saved::Many(values) => (None, values),
        };
        one.into_iter().chain(many)
    }
}

impl Call {
    fn new(limits: EditLimits) -> Self {
        Self {
            request: RequestHeader::build("GET", b"/", Some(0)).expect("static request line"),
            response: ResponseHeader::build(200, Some(0)).expect("static status"),
            request_writable: false,
            client_ip: None,
            path_changed: false,
            query_changed: false,
            host_changed: false,
            violation: None,
            body: None,
            new_body: None,
            body_limit: 0,
            steerable: false,
            nodes: None,
            retries: None,
            limits,
            added_headers: 0,
            added_bytes: 0,
            undo: Vec::new(),
        }
    }

    /// Resets the per-call state before a hook call.
    pub fn begin(&mut self, request_writable: bool, client_ip: Option<IpAddr>) {
        self.request_writable = request_writable;
        self.client_ip = client_ip;
        self.path_changed = false;
        self.query_changed = false;
        self.host_changed = false;
        self.violation = None;
        self.new_body = None;
        self.steerable = false;
        self.nodes = None;
        self.retries = None;
        self.added_headers = 0;
        self.added_bytes = 0;
        self.undo.clear();
    }

    /// Undoes every edit of the failed call in progress.
    pub fn roll_back(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Request(name, values) => {
                    self.request.remove_header(&name);
                    for v in values.into_values() {
                        let _ = self.request.append_header(name.clone(), v);
                    }
                }
                Undo::Response(name, values) => {
                    self.response.remove_header(&name);
                    for v in values.into_values() {
                        let _ = self.response.append_header(name.clone(), v);
                    }
                }
                Undo::Uri(uri) => self.request.set_uri(uri),
            }
        }
        self.path_changed = false;
        self.query_changed = false;
        self.host_changed = false;
        self.new_body = None;
        self.nodes = None;
        self.retries = None;
    }

    /// Records a broken rule (the first one is reported) and returns its message for the guest.
    pub(crate) fn violate(&mut self, violation: Violation) -> String {
        let message = match &violation {
            Violation::Forbidden(m)
            | Violation::Limit(m)
            | Violation::Denied(m)
            | Violation::Body(m) => m.clone(),
        };
        self.violation.get_or_insert(violation);
        message
    }

    /// Checks that a header may be edited and that this edit fits the call's budget.
    fn admit(
        &mut self,
        name: &HeaderName,
        value: Option<&HeaderValue>,
        lines: usize,
    ) -> Result<(), String> {
        if is_framing_header(name) {
            return Err(self.violate(Violation::Forbidden(format!(
                "{name} is set by the gateway, not by plugins"
            ))));
        }
        let Some(value) = value else { return Ok(()) };
        self.added_headers += 1;
        self.added_bytes += name.as_str().len() + value.len();
        if self.added_headers > self.limits.headers {
            return Err(self.violate(Violation::Limit(format!(
                "more than {} header edits in one call",
                self.limits.headers
            ))));
        }
        if self.added_bytes > self.limits.bytes {
            return Err(self.violate(Violation::Limit(format!(
                "more than {} bytes of headers in one call",
                self.limits.bytes
            ))));
        }
        if lines >= MAX_HEADER_LINES {
            return Err(self.violate(Violation::Limit(format!(
                "a message with more than {MAX_HEADER_LINES} header lines"
            ))));
        }
        Ok(())
    }

    /// Saves a request header's values before this call first changes them.
    fn save_request(&mut self, name: &HeaderName) {
        if !self
            .undo
            .iter()
            .any(|u| matches!(u, Undo::Request(n, _) if n == name))
        {
            let values = Saved::of(&self.request.headers, name);
            self.undo.push(Undo::Request(name.clone(), values));
        }
    }

    /// Saves a response header's values before this call first changes them.
    fn save_response(&mut self, name: &HeaderName) {
        if !self
            .undo
            .iter()
            .any(|u| matches!(u, Undo::Response(n, _) if n == name))
        {
            let values = Saved::of(&self.response.headers, name);
            self.undo.push(Undo::Response(name.clone(), values));
        }
    }

    /// Saves the URI before this call first changes it.
    fn save_uri(&mut self) {
        if !self.undo.iter().any(|u| matches!(u, Undo::Uri(_))) {
            self.undo.push(Undo::Uri(self.request.uri.clone()));
        }
    }

    /// Sets or appends a request header after checking name and value.
    pub(crate) fn edit_request_header(
        &mut self,
        granted: &HeaderSet,
        edit: Edit,
        name: &str,
        value: &str,
    ) -> Result<(), String> {
        let (n, v) = (header_name(name)?, header_value(value)?);
        let host = n == http::header::HOST;
        self.request_mut()?;
        self.may_write(granted, &n)?;
        self.admit(&n, Some(&v), self.request.headers.len())?;
        self.save_request(&n);
        let req = &mut self.request;
        match edit {
            Edit::Set => req.insert_header(n, v),
            Edit::Append => req.append_header(n, v).map(drop),
        }
        .map_err(|e| e.to_string())?;
        self.host_changed |= host;
        Ok(())
    }

    /// Sets or appends a response header after checking name and value.
    pub(crate) fn edit_response_header(
        &mut self,
        granted: &HeaderSet,
        edit: Edit,
        name: &str,
        value: &str,
    ) -> Result<(), String> {
        let (n, v) = (header_name(name)?, header_value(value)?);
        self.may_write(granted, &n)?;
        self.admit(&n, Some(&v), self.response.headers.len())?;
        self.save_response(&n);
        match edit {
            Edit::Set => self.response.insert_header(n, v),
            Edit::Append => self.response.append_header(n, v).map(drop),
        }
        .map_err(|e| e.to_string())
    }

    /// Checks a header may be written under the plugin use's grants.
    fn may_write(&mut self, granted: &HeaderSet, name: &HeaderName) -> Result<(), String> {
        if granted.allows(name) {
            Ok(())
        } else {
            Err(self.violate(Violation::Denied(format!(
                "changing {name} is not granted to this plugin"
            ))))
        }
    }

    /// Removes a request header after checking it may be.
    pub(crate) fn remove_request_header(
        &mut self,
        granted: &HeaderSet,
        name: &str,
    ) -> Result<(), String> {
        let n = header_name(name)?;
        let host = n == http::header::HOST;
        self.request_mut()?;
        self.may_write(granted, &n)?;
        self.admit(&n, None, 0)?;
        if self.request.headers.contains_key(&n) {
            self.save_request(&n);
            self.request.remove_header(&n);
        }
        self.host_changed |= host;
        Ok(())
    }

    /// Removes a response header after checking it may be.
    pub(crate) fn remove_response_header(
        &mut self,
        granted: &HeaderSet,
        name: &str,
    ) -> Result<(), String> {
        let n = header_name(name)?;
        self.may_write(granted, &n)?;
        self.admit(&n, None, 0)?;
        if self.response.headers.contains_key(&n) {
            self.save_response(&n);
            self.response.remove_header(&n);
        }
        Ok(())
    }

    /// Replaces the request body sent upstream.
    pub(crate) fn set_body(&mut self, body: Vec<u8>) -> Result<(), String> {
        if self.body.is_none() || !self.request_writable {
            return Err(
                "the body can be set only in on-request, by a plugin granted request_body"
                    .to_owned(),
            );
        }
        if body.len() > self.body_limit {
            return Err(self.violate(Violation::Body(format!(
                "a body of {} bytes is over this plugin's body_limit of {} bytes",
                body.len(),
                self.body_limit
            ))));
        }
        self.new_body = Some(body);
        Ok(())
    }

    pub(crate) fn request_mut(&mut self) -> Result<&mut RequestHeader, String> {
        if self.request_writable {
            Ok(&mut self.request)
        } else {
            Err("the request is read-only in this hook".to_owned())
        }
    }
}

pub(crate) fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))
}

fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value)
        .map_err(|_| "header values must be visible ASCII on one line".to_owned())
}

pub(crate) fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn all_headers(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), text(v)))
        .collect()
}

/// Builds a URI from a path and an optional query, checking both.
fn uri_of(path: &str, query: Option<&str>) -> Result<Uri, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    let joined = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    joined
        .parse::<Uri>()
        .map_err(|e| format!("{joined:?} is not a valid path and query: {e}"))
}

/// Reads a header under a read grant: one the plugin may not read is not there for it.
pub(crate) fn readable<'h>(
    granted: &HeaderSet,
    map: &'h http::HeaderMap,
    name: &str,
) -> Option<http::header::GetAll<'h, HeaderValue>> {
    let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
    granted.allows(&n).then(|| map.get_all(n))
}

/// The headers of a message the plugin may read.
pub fn readable_headers(granted: &HeaderSet, map: &http::HeaderMap) -> Vec<(String, String)> {
    if granted.is_all() {
        return all_headers(map);
    }
    map.iter()
        .filter(|(n, _)| granted.allows(n))
        .map(|(n, v)| (n.as_str().to_owned(), text(v)))
        .collect()
}

/// The host functions of one contract version; `$extra` are its request functions beyond 0.1's.
macro_rules! host_functions {
    ($v:ident { $($extra:item)* }) => {
        impl $v::gatehouse::plugin::http::Host for HostState {}
        impl $v::gatehouse::plugin::types::Host for HostState {}

        impl $v::gatehouse::plugin::http::HostRequest for HostState {
            fn method(&mut self, _: Resource<RequestHandle>) -> String {
                self.call.request.method.as_str().to_owned()
            }

            fn path(&mut self, _: Resource<RequestHandle>) -> String {
                self.call.request.uri.path().to_owned()
            }

            fn query(&mut self, _: Resource<RequestHandle>) -> Option<String> {
                self.call.request.uri.query().map(str::to_owned)
            }

            fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
                readable(&self.grants.request.read, &self.call.request.headers, &name)?
                    .iter()
                    .next()
                    .map(text)
            }

            fn header_all(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<String> {
                readable(&self.grants.request.read, &self.call.request.headers, &name)
                    .map(|all| all.iter().map(text).collect())
                    .unwrap_or_default()
            }

            fn headers(&mut self, _: Resource<RequestHandle>) -> Vec<(String, String)> {
                readable_headers(&self.grants.request.read, &self.call.request.headers)
            }

            fn client_addr(&mut self, _: Resource<RequestHandle>) -> String {
                self.call
                    .client_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default()
            }

            fn service(&mut self, _: Resource<RequestHandle>) -> String {
                self.service.to_string()
            }

            fn api(&mut self, _: Resource<RequestHandle>) -> String {
                self.api.to_string()
            }

            fn set_path(&mut self, _: Resource<RequestHandle>, path: String) -> Result<(), String> {
                self.set_request_path(path)
            }

            fn set_query(
                &mut self,
                _: Resource<RequestHandle>,
                query: Option<String>,
            ) -> Result<(), String> {
                self.set_request_query(query)
            }

            fn set_header(
                &mut self,
                _: Resource<RequestHandle>,
                name: String,
                value: String,
            ) -> Result<(), String> {
                self.call
                    .edit_request_header(&self.grants.request.write, Edit::Set, &name, &value)
            }

            fn append_header(
                &mut self,
                _: Resource<RequestHandle>,
                name: String,
                value: String,
            ) -> Result<(), String> {
                self.call
                    .edit_request_header(&self.grants.request.write, Edit::Append, &name, &value)
            }

            fn remove_header(
                &mut self,
                _: Resource<RequestHandle>,
                name: String,
            ) -> Result<(), String> {
                self.call
                    .remove_request_header(&self.grants.request.write, &name)
            }

            $($extra)*

            fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
                Ok(())
            }
        }

        impl $v::gatehouse::plugin::http::HostResponse for HostState {
            fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
                self.call.response.status.as_u16()
            }

            fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<String> {
                readable(&self.grants.response.read, &self.call.response.headers, &name)?
                    .iter()
                    .next()
                    .map(text)
            }

            fn headers(&mut self, _: Resource<ResponseHandle>) -> Vec<(String, String)> {
                readable_headers(&self.grants.response.read, &self.call.response.headers)
            }

            fn set_header(
                &mut self,
                _: Resource<ResponseHandle>,
                name: String,
                value: String,
            ) -> Result<(), String> {
                self.call
                    .edit_response_header(&self.grants.response.write, Edit::Set, &name, &value)
            }

            fn append_header(
                &mut self,
                _: Resource<ResponseHandle>,
                name: String,
                value: String,
            ) -> Result<(), String> {
                self.call.edit_response_header(
                    &self.grants.response.write,
                    Edit::Append,
                    &name,
                    &value,
                )
            }

            fn remove_header(
                &mut self,
                _: Resource<ResponseHandle>,
                name: String,
            ) -> Result<(), String> {
                self.call
                    .remove_response_header(&self.grants.response.write, &name)
            }

            fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
                Ok(())
            }
        }

        impl $v::gatehouse::plugin::host::Host for HostState {
            fn log(&mut self, level: $v::gatehouse::plugin::types::LogLevel, message: String) {
                self.write_log(level.into(), &message);
            }

            fn now_millis(&mut self) -> u64 {
                unix_millis()
            }

            fn random(&mut self) -> u64 {
                self.rng.next_u64()
            }
        }
    };
}

host_functions!(v1 {});
host_functions!(v2 {
    fn body(&mut self, _: Resource<RequestHandle>) -> Result<Vec<u8>, String> {
        match (&self.call.new_body, &self.call.body) {
            // what this call set, else what it was given
            (Some(set), Some(_)) if self.call.request_writable => Ok(set.clone()),
            (None, Some(body)) if self.call.request_writable => Ok(body.to_vec()),
            _ => Err("the body can be read only in on-request, by a plugin granted request_body".to_owned()),
        }
    }

    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) -> Result<(), String> {
        self.call.set_body(body)
    }
});

impl v2::gatehouse::plugin::steering::Host for HostState {
    fn to_tag(
        &mut self,
        _: Resource<RequestHandle>,
        tag: String,
        fallback: v2::gatehouse::plugin::steering::Fallback,
    ) -> Result<(), String> {
        self.may_steer()?;
        self.call.nodes = Some(NodeChoice {
            to: SteerTo::Tag(tag),
            fail: fallback == v2::gatehouse::plugin::steering::Fallback::Fail,
        });
        Ok(())
    }

    fn to_node(
        &mut self,
        _: Resource<RequestHandle>,
        address: String,
        fallback: v2::gatehouse::plugin::steering::Fallback,
    ) -> Result<(), String> {
        self.may_steer()?;
        self.call.nodes = Some(NodeChoice {
            to: SteerTo::Node(address),
            fail: fallback == v2::gatehouse::plugin::steering::Fallback::Fail,
        });
        Ok(())
    }

    fn limit_retries(&mut self, _: Resource<RequestHandle>, retries: u32) -> Result<(), String> {
        self.may_steer()?;
        self.call.retries = Some(self.call.retries.map_or(retries, |r| r.min(retries)));
        Ok(())
    }
}

impl v2::gatehouse::plugin::counters::Host for HostState {
    fn increment(
        &mut self,
        key: String,
        delta: u64,
        window_ms: u64,
    ) -> Result<v2::gatehouse::plugin::counters::Window, String> {
        self.may_count()?;
        self.counters
            .increment(&key, delta, window_ms, unix_millis())
            .map(window)
    }

    fn get(
        &mut self,
        key: String,
        window_ms: u64,
    ) -> Result<v2::gatehouse::plugin::counters::Window, String> {
        self.may_count()?;
        self.counters
            .get(&key, window_ms, unix_millis())
            .map(window)
    }
}

fn window(w: crate::counters::Window) -> v2::gatehouse::plugin::counters::Window {
    v2::gatehouse::plugin::counters::Window {
        count: w.count,
        resets_in_ms: w.resets_in_ms,
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl HostState {
    /// Counters work for a plugin use granted them.
    fn may_count(&mut self) -> Result<(), String> {
        if self.grants.counters {
            Ok(())
        } else {
            Err(self.call.violate(Violation::Denied(
                "counters are not granted to this plugin (grants: { counters: true })".to_owned(),
            )))
        }
    }

    /// Steering works in `on-request`, for a plugin use granted it.
    fn may_steer(&mut self) -> Result<(), String> {
        if !self.grants.node_steering {
            return Err(self.call.violate(Violation::Denied(
                "steering requests is not granted to this plugin (grants: { node_steering: true })"
                    .to_owned(),
            )));
        }
        if !self.call.steerable {
            return Err("requests can be steered only in on-request".to_owned());
        }
        Ok(())
    }

    pub(crate) fn set_request_path(&mut self, path: String) -> Result<(), String> {
        // The backend gets the canonical form, so a plugin cannot send a path that routing
        // would have refused (dot segments, encoded slashes, ...).
        let path = gatehouse_config::canonical::canonicalize(&path, &Default::default())
            .map_err(|e| format!("path {path:?} refused: {e}"))?;
        let req = self.call.request_mut()?;
        let uri = uri_of(&path, req.uri.query())?;
        self.call.save_uri();
        self.call.request.set_uri(uri);
        self.call.path_changed = true;
        Ok(())
    }

    pub(crate) fn set_request_query(&mut self, query: Option<String>) -> Result<(), String> {
        let req = self.call.request_mut()?;
        let uri = uri_of(req.uri.path(), query.as_deref().filter(|q| !q.is_empty()))?;
        self.call.save_uri();
        self.call.request.set_uri(uri);
        self.call.query_changed = true;
        Ok(())
    }

    pub(crate) fn write_log(&mut self, level: log::Level, message: &str) {
        if !log::log_enabled!(target: "gatehouse::plugin", level) || !self.log_budget.admit() {
            return;
        }
        let mut end = message.len().min(MAX_LOG_LINE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        log::log!(target: "gatehouse::plugin", level, "plugin {}: {}", self.who, &message[..end]);
    }
}

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// Lines one plugin use may log per second: enough to explain a failure, too few for a plugin
/// that logs in a loop to fill a disk. The rest are dropped and counted.
pub const LOG_LINES_PER_SECOND: u32 = 50;

/// The log budget of one plugin use, shared by its instances: the current second (Unix time)
/// and the lines admitted in it, in one atomic word so concurrent calls never admit more.
pub struct LogBudget {
    /// `second << 32 | lines`
    window: AtomicU64,
    dropped: prometheus::IntCounter,
}

impl LogBudget {
    pub fn new(dropped: prometheus::IntCounter) -> Self {
        Self {
            window: AtomicU64::new(0),
            dropped,
        }
    }

    /// Whether one more line may be written now; counts the line when not.
    fn admit(&self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & u64::from(u32::MAX);
        let admitted = self
            .window
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let (at, lines) = (w >> 32, w & u64::from(u32::MAX));
                if at != second {
                    Some(second << 32 | 1)
                } else if lines < u64::from(LOG_LINES_PER_SECOND) {
                    Some(w + 1)
                } else {
                    None
                }
            })
            .is_ok();
        if !admitted {
            self.dropped.inc();
        }
        admitted
    }
}

/// The hooks a 0.1 component declared.
pub fn hooks_of_v1(hooks: v1::gatehouse::plugin::types::Hooks) -> HookSet {
    use v1::gatehouse::plugin::types::Hooks as H;
    [
        (H::ON_REQUEST, HookSet::ON_REQUEST),
        (H::ON_UPSTREAM_REQUEST, HookSet::ON_UPSTREAM_REQUEST),
        (H::ON_RESPONSE, HookSet::ON_RESPONSE),
    ]
    .into_iter()
    .filter(|(flag, _)| hooks.contains(*flag))
    .fold(HookSet::default(), |set, (_, hook)| set.union(hook))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every header of a map, in order, as text.
    fn lines(map: &http::HeaderMap) -> Vec<(String, String)> {
        all_headers(map)
    }

    /// A header edit of a call: set, append or remove, on one of a few names.
    fn edit() -> impl Strategy<Value = (u8, usize, String)> {
        (0u8..3, 0usize..4, "[a-z0-9]{0,3}")
    }

    const NAMES: [&str; 4] = ["x-a", "x-b", "host", "x-absent"];

    proptest! {
        /// A failed call leaves both messages exactly as they were, whatever it edited: headers
        /// with none, one or several values, set, appended and removed in any order.
        #[test]
        fn a_rolled_back_call_restores_every_header(
            request in proptest::collection::vec((0usize..3, "[a-z0-9]{1,3}"), 0..6),
            edits in proptest::collection::vec(edit(), 1..8),
            response_edits in proptest::collection::vec(edit(), 0..4),
        ) {
            let mut call = Call::new(EditLimits::default());
            for (name, value) in &request {
                call.request.append_header(NAMES[*name], value.as_str()).unwrap();
                call.response.append_header(NAMES[*name], value.as_str()).unwrap();
            }
            let (before, before_response) = (lines(&call.request.headers), lines(&call.response.headers));
            call.begin(true, None);
            let all = HeaderSet::all();
            for (op, name, value) in &edits {
                let name = NAMES[*name];
                let _ = match op {
                    0 => call.edit_request_header(&all, Edit::Set, name, value),
                    1 => call.edit_request_header(&all, Edit::Append, name, value),
                    _ => call.remove_request_header(&all, name),
                };
            }
            for (op, name, value) in &response_edits {
                let name = NAMES[*name];
                let _ = match op {
                    0 => call.edit_response_header(&all, Edit::Set, name, value),
                    1 => call.edit_response_header(&all, Edit::Append, name, value),
                    _ => call.remove_response_header(&all, name),
                };
            }
            call.roll_back();
            // a header's values keep their order; headers may come back in another order
            let sorted = |mut v: Vec<(String, String)>| { v.sort_by(|a, b| a.0.cmp(&b.0)); v };
            prop_assert_eq!(sorted(lines(&call.request.headers)), sorted(before));
            prop_assert_eq!(sorted(lines(&call.response.headers)), sorted(before_response));
            prop_assert!(!call.host_changed);
        }
    }

    #[test]
    fn a_plugin_logging_in_a_loop_is_cut_to_its_budget_and_counted() {
        let dropped = prometheus::IntCounter::new("test_dropped", "test").unwrap();
        let budget = LogBudget::new(dropped.clone());
        let admitted = (0..10_000).filter(|_| budget.admit()).count() as u32;
        // one or two one-second windows may be crossed while the loop runs
        assert!((LOG_LINES_PER_SECOND..=2 * LOG_LINES_PER_SECOND).contains(&admitted));
        assert_eq!(dropped.get() + u64::from(admitted), 10_000);
    }
}
