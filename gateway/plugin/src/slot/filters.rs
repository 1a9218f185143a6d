//! Proxy-Wasm filters in a plugin slot: one VM per worker thread, and each request's HTTP
//! context kept in its VM from the request headers to the request's end.
//!
//! A VM is an instance made and configured like a component's (in the background, under the
//! configure time limit); it stays in its worker's cell and serves every request of that worker,
//! each in a context of its own, as Envoy runs a filter. A request remembers its contexts
//! ([`Streams`]): the response callbacks run in the same context, and the context is ended
//! (`proxy_on_log`, `proxy_on_done`, `proxy_on_delete`) when the request ends. A VM that traps,
//! runs out of time or memory is dropped with its contexts; a request whose context was lost
//! gets a new one for its response.
//!
//! A cell is a mutex held for the length of one callback: the worker that owns it is the only
//! one to take it, unless there are more worker threads than cells.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use pingora_http::{RequestHeader, ResponseHeader};
use wasmtime::{Store, TypedFunc};

use super::{check_reply, worker_cell, Failure, Guest, Hook, Instance, PluginSlot, RequestOutcome};
use crate::bindings::HostState;
use crate::grants::HookSet;
use crate::proxy_wasm::{FilterUse, Phase, ROOT_CONTEXT};

/// The exports of a filter instance the host calls.
pub(crate) struct FilterGuest {
    /// `_initialize` (a reactor) or `_start` (a command), called once before the VM starts.
    initialize: Option<TypedFunc<(), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    log: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
}

/// `Continue` and `Pause`, what a filter's callback answers.
const PAUSE: i32 = 1;

impl FilterGuest {
    /// Finds the callbacks of an instance; one with another signature than the ABI's is an error.
    pub(crate) fn new(
        store: &mut Store<HostState>,
        instance: wasmtime::Instance,
    ) -> wasmtime::Result<Self> {
        fn optional<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
            store: &mut Store<HostState>,
            instance: &wasmtime::Instance,
            name: &str,
        ) -> wasmtime::Result<Option<TypedFunc<P, R>>> {
            match instance.get_func(&mut *store, name) {
                None => Ok(None),
                Some(f) => f.typed(&*store).map(Some).map_err(|e| {
                    e.context(format!(
                        "its export {name} does not have the signature of Proxy-Wasm ABI 0.2.1"
                    ))
                }),
            }
        }
        let initialize = match optional(store, &instance, "_initialize")? {
            Some(f) => Some(f),
            None => optional(store, &instance, "_start")?,
        };
        let context_create =
            optional(store, &instance, "proxy_on_context_create")?.ok_or_else(|| {
                wasmtime::Error::msg("a Proxy-Wasm filter must export proxy_on_context_create")
            })?;
        Ok(Self {
            initialize,
            vm_start: optional(store, &instance, "proxy_on_vm_start")?,
            configure: optional(store, &instance, "proxy_on_configure")?,
            context_create,
            request_headers: optional(store, &instance, "proxy_on_request_headers")?,
            request_body: optional(store, &instance, "proxy_on_request_body")?,
            response_headers: optional(store, &instance, "proxy_on_response_headers")?,
            response_body: optional(store, &instance, "proxy_on_response_body")?,
            log: optional(store, &instance, "proxy_on_log")?,
            tick: optional(store, &instance, "proxy_on_tick")?,
            queue_ready: optional(store, &instance, "proxy_on_queue_ready")?,
            done: optional(store, &instance, "proxy_on_done")?,
            delete: optional(store, &instance, "proxy_on_delete")?,
        })
    }

    /// Starts the VM and its root context with the configuration; the hooks the filter has.
    pub(crate) fn start(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<HookSet, String>> {
        set_phase(store, Phase::Root);
        if let Some(init) = &self.initialize {
            init.call(&mut *store, ())?;
        }
        let (vm_size, config_size) = match store.data().filter.as_deref() {
            Some(f) => (f.vm_config.len(), f.plugin_config.len()),
            None => (0, 0),
        };
        let root = ROOT_CONTEXT as i32;
        // the root context first: the VM start and the configuration are its callbacks
        self.context_create.call(&mut *store, (root, 0))?;
        if let Some(start) = &self.vm_start {
            if start.call(&mut *store, (root, vm_size as i32))? == 0 {
                return Ok(Err(
                    "the filter refused to start (proxy_on_vm_start returned false)".to_owned(),
                ));
            }
        }
        if let Some(configure) = &self.configure {
            if configure.call(&mut *store, (root, config_size as i32))? == 0 {
                return Ok(Err(
                    "the filter refused its configuration (proxy_on_configure returned false)"
                        .to_owned(),
                ));
            }
        }
        let mut hooks = HookSet::from_bits(0);
        if self.request_headers.is_some() || self.request_body.is_some() {
            hooks = hooks.union(HookSet::ON_REQUEST);
        }
        if self.response_headers.is_some() {
            hooks = hooks.union(HookSet::ON_RESPONSE);
        }
        // held only for a use granted response bodies (the hook comes with the grant)
        if self.response_body.is_some() {
            hooks = hooks.union(HookSet::ON_RESPONSE_BODY);
        }
        Ok(Ok(hooks))
    }

    /// The request callbacks of a context: created (when `create`), request headers, then the
    /// whole body when the gateway read it. Stops at a local response.
    fn request(
        &self,
        store: &mut Store<HostState>,
        context: u32,
        create: bool,
        headers: usize,
        body: Option<usize>,
        end_of_stream: bool,
    ) -> wasmtime::Result<Result<i32, String>> {
        let ctx = context as i32;
        if create {
            self.context_create
                .call(&mut *store, (ctx, ROOT_CONTEXT as i32))?;
        }
        let mut action = 0;
        if let Some(f) = &self.request_headers {
            let eos = (end_of_stream && body.is_none()) as i32;
            action = f.call(&mut *store, (ctx, headers as i32, eos))?;
        }
        if let (Some(len), Some(f)) = (body, &self.request_body) {
            if !answered(store) {
                action = f.call(&mut *store, (ctx, len as i32, 1))?;
            }
        }
        Ok(Ok(action))
    }

    /// One message callback of a context (created first when `create`): the response headers
    /// (`size` headers) or the whole response body (`size` bytes, the end of the stream).
    fn in_context(
        &self,
        store: &mut Store<HostState>,
        context: u32,
        create: bool,
        callback: Option<&TypedFunc<(i32, i32, i32), i32>>,
        size: usize,
        end_of_stream: bool,
    ) -> wasmtime::Result<Result<i32, String>> {
        let ctx = context as i32;
        if create {
            self.context_create
                .call(&mut *store, (ctx, ROOT_CONTEXT as i32))?;
        }
        match callback {
            Some(f) => f
                .call(&mut *store, (ctx, size as i32, end_of_stream as i32))
                .map(Ok),
            None => Ok(Ok(0)),
        }
    }

    /// The root context's timer (`tick`) and the queues with new messages.
    fn root_callbacks(
        &self,
        store: &mut Store<HostState>,
        tick: bool,
        queues: &[u32],
    ) -> wasmtime::Result<Result<(), String>> {
        let root = ROOT_CONTEXT as i32;
        if let (true, Some(f)) = (tick, &self.tick) {
            f.call(&mut *store, root)?;
        }
        if let Some(f) = &self.queue_ready {
            for id in queues {
                f.call(&mut *store, (root, *id as i32))?;
            }
        }
        Ok(Ok(()))
    }

    /// Ends a context: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    fn end(
        &self,
        store: &mut Store<HostState>,
        context: u32,
    ) -> wasmtime::Result<Result<(), String>> {
        let ctx = context as i32;
        if let Some(f) = &self.log {
            f.call(&mut *store, ctx)?;
        }
        if let Some(f) = &self.done {
            f.call(&mut *store, ctx)?;
        }
        if let Some(f) = &self.delete {
            f.call(&mut *store, ctx)?;
        }
        Ok(Ok(()))
    }
}

fn set_phase(store: &mut Store<HostState>, phase: Phase) {
    if let Some(f) = store.data_mut().filter.as_deref_mut() {
        f.phase = phase;
        f.local = None;
    }
}

fn set_body_held(store: &mut Store<HostState>, held: bool) {
    if let Some(f) = store.data_mut().filter.as_deref_mut() {
        f.body_held = held;
    }
}

/// Whether the filter sent a local response in this call.
fn answered(store: &Store<HostState>) -> bool {
    store
        .data()
        .filter
        .as_deref()
        .is_some_and(|f| f.local.is_some())
}

/// A plugin use's VMs: one cell per worker thread.
pub(crate) struct Vms {
    cells: Box<[CachePadded<Mutex<Vm>>]>,
    usage: Arc<FilterUse>,
}

/// One worker's VM, and how many VMs the cell has had (a context belongs to one of them).
#[derive(Default)]
struct Vm {
    warm: Option<Instance>,
    generation: u64,
    /// When the root context's timer is due next.
    next_tick: Option<std::time::Instant>,
}

impl Vm {
    /// Puts `warm` (or nothing) in the cell: the contexts and timer of the VM it held are gone.
    fn replace(&mut self, warm: Option<Instance>) {
        self.warm = warm;
        self.generation += 1;
        self.next_tick = None;
    }
}

impl Vms {
    pub(crate) fn new(cells: usize, label: &Arc<str>, who: &Arc<str>) -> Self {
        Self {
            cells: (0..cells.max(1))
                .map(|_| CachePadded::new(Mutex::new(Vm::default())))
                .collect(),
            usage: Arc::new(FilterUse::new(label.clone(), who.clone())),
        }
    }

    pub(crate) fn usage(&self) -> Arc<FilterUse> {
        self.usage.clone()
    }

    fn lock(&self, cell: usize) -> MutexGuard<'_, Vm> {
        self.cells[cell].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's HTTP context in a filter's VM.
pub struct Stream {
    slot: Arc<PluginSlot>,
    cell: usize,
    generation: u64,
    context: u32,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.context != 0 {
            self.slot.end_context(self, None, None);
        }
    }
}

/// The filter contexts of one request, ended when it ends.
#[derive(Default)]
pub struct Streams {
    open: Vec<Stream>,
}

impl Streams {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Ends every context with the request as it went upstream and the response the client got
    /// (what `proxy_on_log` reads).
    pub fn finish(
        &mut self,
        req: &mut RequestHeader,
        mut resp: Option<&mut ResponseHeader>,
        client_ip: Option<IpAddr>,
    ) {
        for mut stream in self.open.drain(..) {
            let slot = stream.slot.clone();
            let messages = (&mut *req, resp.as_deref_mut());
            slot.end_context(&stream, Some(messages), client_ip);
            stream.context = 0;
        }
    }

    /// Keeps a new context of `slot`'s, in place of the one the request had in it (whose VM is
    /// gone, or which is ended now). No cell may be locked by the caller.
    fn keep(&mut self, slot: &Arc<PluginSlot>, cell: usize, generation: u64, context: u32) {
        let stream = Stream {
            slot: Arc::clone(slot),
            cell,
            generation,
            context,
        };
        match self.position_of(slot) {
            Some(i) => self.open[i] = stream,
            None => self.open.push(stream),
        }
    }

    fn position_of(&self, slot: &PluginSlot) -> Option<usize> {
        self.open
            .iter()
            .position(|s| std::ptr::eq(Arc::as_ptr(&s.slot), slot))
    }
}

/// Whether a request header says a body follows.
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl PluginSlot {
    fn vms(&self) -> &Vms {
        self.filter.as_ref().expect("only a filter's slot has VMs")
    }

    /// The calling worker's cell, with a VM in it: the VM is made in the background, as
    /// instances are, if the cell has none.
    async fn filter_cell(self: &Arc<Self>) -> Result<usize, Failure> {
        self.admit()?;
        let vms = self.vms();
        let cell = worker_cell() % vms.cells.len();
        if vms.lock(cell).warm.is_some() {
            return Ok(cell);
        }
        let warm = self.take_instance().await?;
        let mut vm = vms.lock(cell);
        if vm.warm.is_none() {
            vm.replace(Some(warm));
        } else {
            let _ = self.pool.push(warm);
        }
        Ok(cell)
    }

    /// After a callback: counts it for the breaker and drops a VM that must not serve again
    /// (it trapped, ran out of time or memory). Whether the VM lives on.
    fn after_callback<T>(self: &Arc<Self>, vm: &mut Vm, outcome: &Result<T, Failure>) -> bool {
        self.breaker
            .record(!matches!(outcome, Err(f) if f.breaks()), &self.who);
        let poisoned = vm.warm.as_ref().is_some_and(|w| w.poisoned);
        if poisoned || matches!(outcome, Err(f) if !f.keeps_instance()) {
            // its contexts go with it; a request holding one gets a new one
            vm.replace(None);
            if self.pool.is_empty() {
                // the next request of this worker takes a new VM from the pool
                self.refill();
            }
            return false;
        }
        true
    }

    /// Runs the request callbacks in a new context of the worker's VM.
    pub(super) async fn filter_request(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        body: Option<&mut bytes::Bytes>,
        streams: &mut Streams,
    ) -> Result<RequestOutcome, Failure> {
        let cell = self.filter_cell().await?;
        let vms = self.vms();
        let mut vm = vms.lock(cell);
        let generation = vm.generation;
        let Some(warm) = vm.warm.as_mut() else {
            return Err(self.lost_vm());
        };
        let state = warm.store.data_mut();
        let end_of_stream = !has_body(req);
        let headers = req.headers.len() + 4;
        state.call.begin(true, client_ip);
        state.call.body = body.as_ref().map(|b| bytes::Bytes::clone(b));
        let body_len = state.call.body.as_ref().map(bytes::Bytes::len);
        std::mem::swap(&mut state.call.request, req);
        let context = new_context(state);
        let held = body_len.is_some();
        set_phase(&mut warm.store, Phase::Request);
        set_body_held(&mut warm.store, held);
        let result = self.call(warm, Hook::Request, self.limits.time, |g, s| match g {
            Guest::ProxyWasm(f) => f.request(s, context, true, headers, body_len, end_of_stream),
            _ => Ok(Ok(0)),
        });
        let state = warm.store.data_mut();
        let local = state.filter.as_deref_mut().and_then(|f| f.local.take());
        let outcome = result.and_then(|action| match local {
            Some(reply) => check_reply(reply, &self.limits.edits)
                .map(RequestOutcome::Respond)
                .inspect_err(|f| self.count_failure(f)),
            None if action == PAUSE => {
                let f = paused();
                self.count_failure(&f);
                Err(f)
            }
            None => {
                let call = &state.call;
                Ok(RequestOutcome::Proceed {
                    path_changed: call.path_changed,
                    query_changed: call.query_changed,
                    host_changed: call.host_changed,
                    body_changed: call.new_body.is_some(),
                    nodes: None,
                    retries: None,
                })
            }
        });
        let call = &mut state.call;
        if outcome.is_err() {
            call.roll_back();
        }
        call.body = None;
        if let (Some(body), Some(new)) = (body, call.new_body.take()) {
            *body = bytes::Bytes::from(new);
        }
        std::mem::swap(&mut call.request, req);
        let alive = self.after_callback(&mut vm, &outcome);
        drop(vm);
        if alive {
            streams.keep(self, cell, generation, context);
        }
        outcome
    }

    /// Runs the response header callback in the request's context (a new one when the request
    /// has none in a live VM).
    pub(super) async fn filter_response(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        resp: &mut ResponseHeader,
        client_ip: Option<IpAddr>,
        streams: &mut Streams,
    ) -> Result<(), Failure> {
        self.admit()?;
        let vms = self.vms();
        let held = self.held_context(streams);
        let cell = match held {
            Some((cell, _, _)) => cell,
            None => self.filter_cell().await?,
        };
        let create = held.is_none();
        let mut vm = vms.lock(cell);
        let generation = vm.generation;
        let Some(warm) = vm.warm.as_mut() else {
            return Err(self.lost_vm());
        };
        let state = warm.store.data_mut();
        let context = match held {
            Some((_, _, context)) => context,
            None => new_context(state),
        };
        let headers = resp.headers.len() + 1;
        state.call.begin(false, client_ip);
        std::mem::swap(&mut state.call.request, req);
        std::mem::swap(&mut state.call.response, resp);
        set_phase(&mut warm.store, Phase::Response);
        set_body_held(&mut warm.store, self.reads_response_body());
        let result = self.call(warm, Hook::Response, self.limits.time, |g, s| match g {
            Guest::ProxyWasm(f) => f.in_context(
                s,
                context,
                create,
                f.response_headers.as_ref(),
                headers,
                false,
            ),
            _ => Ok(Ok(0)),
        });
        let outcome = result.and_then(|action| {
            if action == PAUSE {
                let f = paused();
                self.count_failure(&f);
                return Err(f);
            }
            Ok(())
        });
        let call = &mut warm.store.data_mut().call;
        if outcome.is_err() {
            call.roll_back();
        }
        std::mem::swap(&mut call.request, req);
        std::mem::swap(&mut call.response, resp);
        let alive = self.after_callback(&mut vm, &outcome);
        drop(vm);
        if alive && create {
            streams.keep(self, cell, generation, context);
        }
        outcome
    }

    /// The request's context in this use's VMs, if its VM still lives: (cell, generation,
    /// context).
    fn held_context(&self, streams: &Streams) -> Option<(usize, u64, u32)> {
        let stream = &streams.open[streams.position_of(self)?];
        let vm = self.vms().lock(stream.cell);
        (vm.generation == stream.generation && vm.warm.is_some()).then_some((
            stream.cell,
            stream.generation,
            stream.context,
        ))
    }

    /// Runs the response body callback on the whole body in the request's context (a new one
    /// when the request has none in a live VM, in the worker's VM or a pooled one: the body
    /// phase cannot wait for a new VM). The body to send instead, if the filter replaced it.
    pub(super) fn filter_response_body(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        status: u16,
        headers: &http::HeaderMap,
        body: &[u8],
        client_ip: Option<IpAddr>,
        streams: &mut Streams,
    ) -> Result<Option<bytes::Bytes>, Failure> {
        let vms = self.vms();
        let held = self.held_context(streams);
        let cell = held.map_or_else(|| worker_cell() % vms.cells.len(), |(cell, _, _)| cell);
        let mut vm = vms.lock(cell);
        if vm.warm.is_none() {
            match self.pop() {
                Some(warm) => vm.replace(Some(warm)),
                None => return Err(self.lost_vm()),
            }
        }
        let generation = vm.generation;
        let Some(warm) = vm.warm.as_mut() else {
            return Err(self.lost_vm());
        };
        let state = warm.store.data_mut();
        let context = match held {
            Some((_, _, context)) => context,
            None => new_context(state),
        };
        let Ok(mut response) = ResponseHeader::build(status, Some(headers.len())) else {
            return Err(Failure::InvalidOutput(format!("status {status}")));
        };
        for (name, value) in headers {
            let _ = response.append_header(name.clone(), value.clone());
        }
        state.call.begin(false, client_ip);
        std::mem::swap(&mut state.call.request, req);
        state.call.response = response;
        set_phase(&mut warm.store, Phase::ResponseBody);
        if let Some(f) = warm.store.data_mut().filter.as_deref_mut() {
            f.response_body = Some(bytes::Bytes::copy_from_slice(body));
            f.new_response_body = None;
        }
        let len = body.len();
        let result = self.call(warm, Hook::ResponseBody, self.limits.time, |g, s| match g {
            Guest::ProxyWasm(f) => {
                let body = f.response_body.as_ref();
                f.in_context(s, context, held.is_none(), body, len, true)
            }
            _ => Ok(Ok(0)),
        });
        let state = warm.store.data_mut();
        let replaced = state.filter.as_deref_mut().and_then(|f| {
            f.response_body = None;
            f.new_response_body.take()
        });
        std::mem::swap(&mut state.call.request, req);
        let outcome = result.and_then(|action| {
            if action == PAUSE {
                let f = paused();
                self.count_failure(&f);
                return Err(f);
            }
            Ok(replaced.map(bytes::Bytes::from))
        });
        let alive = self.after_callback(&mut vm, &outcome);
        drop(vm);
        if alive && held.is_none() {
            streams.keep(self, cell, generation, context);
        }
        outcome
    }

    /// Ends a request's context, if its VM still lives. With the request's final messages
    /// (`messages`) the filter reads them in `proxy_on_log`; without (the request was dropped
    /// early), it reads none.
    fn end_context(
        self: &Arc<Self>,
        stream: &Stream,
        mut messages: Option<(&mut RequestHeader, Option<&mut ResponseHeader>)>,
        client_ip: Option<IpAddr>,
    ) {
        let vms = self.vms();
        let mut vm = vms.lock(stream.cell);
        if vm.generation != stream.generation {
            return;
        }
        let Some(warm) = vm.warm.as_mut() else {
            return;
        };
        let state = warm.store.data_mut();
        state.call.begin(false, client_ip);
        // the messages are lent to the store (swapped in, and back after the call)
        let phase = match &mut messages {
            Some((req, resp)) => {
                std::mem::swap(&mut state.call.request, *req);
                if let Some(resp) = resp {
                    std::mem::swap(&mut state.call.response, *resp);
                }
                Phase::Done
            }
            None => Phase::Root,
        };
        set_phase(&mut warm.store, phase);
        let context = stream.context;
        let result = self.call(warm, Hook::Log, self.limits.time, |g, s| match g {
            Guest::ProxyWasm(f) => f.end(s, context),
            _ => Ok(Ok(())),
        });
        let state = warm.store.data_mut();
        if let Some((req, resp)) = messages {
            std::mem::swap(&mut state.call.request, req);
            if let Some(resp) = resp {
                std::mem::swap(&mut state.call.response, resp);
            }
        }
        if let Some(f) = state.filter.as_deref_mut() {
            f.live.remove(&context);
        }
        self.after_callback(&mut vm, &result);
    }

    /// The failure of a callback whose VM went away between finding it and calling it.
    fn lost_vm(&self) -> Failure {
        let f = Failure::Instantiate("the filter's VM was replaced".to_owned());
        self.count_failure(&f);
        f
    }
}

/// The filter clock: one thread, started with the first filter, that runs the root contexts'
/// timers (`proxy_set_tick_period_milliseconds`, at most every 10 ms) and tells a queue's VM of
/// new messages (`proxy_on_queue_ready`), in each VM of every filter use still serving. It takes
/// a VM's cell only when no request holds it.
pub(crate) mod clock {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, Weak};
    use std::time::{Duration, Instant};

    use super::{Guest, Hook, PluginSlot};
    use crate::proxy_wasm::abi::MIN_TICK;
    use crate::proxy_wasm::Phase;

    static WATCHED: Mutex<Vec<Weak<PluginSlot>>> = Mutex::new(Vec::new());

    /// How long the clock sleeps while no VM has a timer or a queue.
    const IDLE: Duration = Duration::from_millis(250);

    /// Adds a filter use to the clock (starting it the first time).
    pub(crate) fn watch(slot: &Arc<PluginSlot>) {
        let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        let first = watched.is_empty() && !STARTED.swap(true, std::sync::atomic::Ordering::AcqRel);
        watched.retain(|w| w.strong_count() > 0);
        watched.push(Arc::downgrade(slot));
        drop(watched);
        if first {
            let started = std::thread::Builder::new()
                .name("gatehouse-filter-clock".to_owned())
                .spawn(run);
            if let Err(e) = started {
                log::error!("cannot start the Proxy-Wasm filter clock, timers will not run: {e}");
            }
        }
    }

    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn run() {
        loop {
            let slots: Vec<Arc<PluginSlot>> = {
                let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
                watched.retain(|w| w.strong_count() > 0);
                watched.iter().filter_map(Weak::upgrade).collect()
            };
            let mut busy = false;
            for slot in &slots {
                busy |= slot.run_timers();
            }
            drop(slots);
            std::thread::sleep(if busy { MIN_TICK } else { IDLE });
        }
    }

    impl PluginSlot {
        /// Runs the due timers and queue callbacks of this use's VMs; whether any VM has a
        /// timer or a queue (the clock keeps its short period then).
        fn run_timers(self: &Arc<Self>) -> bool {
            let Some(vms) = &self.filter else {
                return false;
            };
            let mut busy = false;
            for cell in 0..vms.cells.len() {
                let Ok(mut vm) = vms.cells[cell].try_lock() else {
                    busy = true;
                    continue;
                };
                if vm.warm.is_none() && vms.usage.wants_clock.load(Ordering::Relaxed) {
                    // every worker's VM runs its timers, traffic or not
                    match self.pop() {
                        Some(warm) => vm.replace(Some(warm)),
                        None => self.refill(),
                    }
                    busy = true;
                }
                let Some(warm) = vm.warm.as_mut() else {
                    continue;
                };
                let Some(f) = warm.store.data_mut().filter.as_deref_mut() else {
                    continue;
                };
                let now = Instant::now();
                let tick = match (f.tick, vm.next_tick) {
                    (None, _) => false,
                    (Some(_), Some(at)) if at > now => false,
                    (Some(period), _) => {
                        vm.next_tick = Some(now + period);
                        true
                    }
                };
                let Some(warm) = vm.warm.as_mut() else {
                    continue;
                };
                let Some(f) = warm.store.data_mut().filter.as_deref_mut() else {
                    continue;
                };
                let queues = f.shared.ready_for(f.vm);
                busy |= f.tick.is_some() || f.shared.has_queues();
                if !tick && queues.is_empty() {
                    continue;
                }
                // a use whose breaker is open waits for a request's trial call to close it
                if self.breaker.is_open() {
                    continue;
                }
                warm.store.data_mut().call.begin(false, None);
                super::set_phase(&mut warm.store, Phase::Root);
                let result = self.call(warm, Hook::Tick, self.limits.time, |g, s| match g {
                    Guest::ProxyWasm(f) => f.root_callbacks(s, tick, &queues),
                    _ => Ok(Ok(())),
                });
                self.after_callback(&mut vm, &result);
            }
            busy
        }
    }
}

/// Opens a new HTTP context in a VM.
fn new_context(state: &mut HostState) -> u32 {
    let Some(f) = state.filter.as_deref_mut() else {
        return ROOT_CONTEXT + 1;
    };
    let context = f.next_context;
    f.next_context = f.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
    f.live.insert(context);
    context
}

/// A filter that paused with nothing to wait for: nothing would ever resume it.
fn paused() -> Failure {
    Failure::InvalidOutput(
        "it paused the request with nothing to wait for (no outbound call is pending), which \
         would hang it"
            .to_owned(),
    )
}
