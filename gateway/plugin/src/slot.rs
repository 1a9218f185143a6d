//! One plugin on one API: its configuration, its warm instances, and the hook calls.
//!
//! A call takes a warm instance (the one its worker thread used last, else one from a lock-free
//! pool that a background thread keeps filled), moves the request/response headers into the
//! store, calls the hook under the memory limit and the epoch deadline, moves the headers back,
//! and returns the instance to its worker. An instance that trapped, timed out or ran out of
//! memory is dropped: the next call gets a fresh one.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::atomic::AtomicCell;
use crossbeam_utils::CachePadded;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::sync::Notify;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use crate::bindings::{
    check_reply_headers, hooks_of_v1, readable_headers, v1, v2, Action, EditLimits, HostState,
    LogBudget, Node, NodeChoice, Reply, Violation, REQUEST, RESPONSE,
};
use crate::budget::CallBudget;
use crate::engine::{Component, PluginEngine};
use crate::grants::{Grants, HookSet, Needs};
use crate::metrics::PluginMetrics;

pub(crate) mod filters;

/// The hooks of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Describe,
    Configure,
    Request,
    UpstreamRequest,
    Response,
    ResponseBody,
    /// The end of a request in a Proxy-Wasm filter (`proxy_on_log`, `proxy_on_done`,
    /// `proxy_on_delete`).
    Log,
    /// A Proxy-Wasm filter's timer and queue callbacks (`proxy_on_tick`,
    /// `proxy_on_queue_ready`), run by the filter clock.
    Tick,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::Describe,
        Hook::Configure,
        Hook::Request,
        Hook::UpstreamRequest,
        Hook::Response,
        Hook::ResponseBody,
        Hook::Log,
        Hook::Tick,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Describe => "describe",
            Hook::Configure => "configure",
            Hook::Request => "on-request",
            Hook::UpstreamRequest => "on-upstream-request",
            Hook::Response => "on-response",
            Hook::ResponseBody => "on-response-body",
            Hook::Log => "on-log",
            Hook::Tick => "on-tick",
        }
    }
}

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin trapped (panic, unreachable, out-of-bounds access).
    Trap(String),
    /// The call ran past the time limit.
    Timeout,
    /// The plugin tried to grow past its memory limit.
    Memory,
    /// The plugin returned an error.
    Error(String),
    /// The plugin returned something the gateway cannot use (e.g. an invalid status).
    InvalidOutput(String),
    /// The plugin answered with a reply body over [`MAX_REPLY_BODY`] (counted as
    /// `invalid_output`); the instance whose memory built it is not kept.
    ReplyTooLarge(usize),
    /// No instance could be created or configured.
    Instantiate(String),
    /// The plugin tried to set or remove a header that frames the message (`Content-Length`,
    /// `Transfer-Encoding`, `Connection`, ...): framing is the gateway's.
    ForbiddenHeader(String),
    /// The plugin tried to add more headers or header bytes than one call may.
    HeaderLimit(String),
    /// The plugin failed so often that its breaker is open: the call was not made.
    BreakerOpen,
    /// The plugin changed a header its use was not granted to write (or, at load, declared
    /// needs beyond its grants).
    Denied(String),
    /// A body over the plugin use's body limit: the request's or response's, or one the plugin
    /// set.
    BodyLimit(String),
}

impl Failure {
    pub const REASONS: [&'static str; 11] = [
        "trap",
        "timeout",
        "memory",
        "error",
        "invalid_output",
        "instantiate",
        "forbidden_header",
        "header_limit",
        "breaker_open",
        "denied",
        "body_limit",
    ];

    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    pub(crate) fn reason_index(&self) -> usize {
        match self {
            Failure::Trap(_) => 0,
            Failure::Timeout => 1,
            Failure::Memory => 2,
            Failure::Error(_) => 3,
            Failure::InvalidOutput(_) | Failure::ReplyTooLarge(_) => 4,
            Failure::Instantiate(_) => 5,
            Failure::ForbiddenHeader(_) => 6,
            Failure::HeaderLimit(_) => 7,
            Failure::BreakerOpen => 8,
            Failure::Denied(_) => 9,
            Failure::BodyLimit(_) => 10,
        }
    }

    /// Whether this failure says the plugin is broken (it counts towards its breaker): it
    /// trapped, timed out, ran out of memory or could not be instantiated.
    fn breaks(&self) -> bool {
        matches!(
            self,
            Failure::Trap(_) | Failure::Timeout | Failure::Memory | Failure::Instantiate(_)
        )
    }

    /// Whether the instance can serve again after this failure.
    fn keeps_instance(&self) -> bool {
        matches!(
            self,
            Failure::Error(_)
                | Failure::InvalidOutput(_)
                | Failure::ForbiddenHeader(_)
                | Failure::HeaderLimit(_)
                | Failure::Denied(_)
                | Failure::BodyLimit(_)
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(m) => write!(f, "trapped: {m}"),
            Failure::Timeout => f.write_str("ran past its time limit"),
            Failure::Memory => f.write_str("exceeded its memory limit"),
            Failure::Error(m) => write!(f, "returned an error: {m}"),
            Failure::InvalidOutput(m) => write!(f, "returned an invalid result: {m}"),
            Failure::ReplyTooLarge(n) => write!(
                f,
                "returned an invalid result: a reply body of {n} bytes (at most {MAX_REPLY_BODY})"
            ),
            Failure::Instantiate(m) => write!(f, "could not be instantiated: {m}"),
            Failure::ForbiddenHeader(m) => write!(f, "broke the message framing: {m}"),
            Failure::HeaderLimit(m) => write!(f, "added too much: {m}"),
            Failure::BreakerOpen => f.write_str("is failing on every call; its breaker is open"),
            Failure::Denied(m) => write!(f, "was denied: {m}"),
            Failure::BodyLimit(m) => write!(f, "met its body limit: {m}"),
        }
    }
}

/// Limits and instance policy of a slot.
#[derive(Debug, Clone, Copy)]
pub struct SlotLimits {
    pub memory: u64,
    pub time: Duration,
    pub reuse_instances: bool,
    /// What one hook call may add to a message's headers.
    pub edits: EditLimits,
    /// Largest request or response body the plugin use reads or sets.
    pub body: usize,
    /// Most keys of the plugin use's counters.
    pub counter_keys: usize,
}

/// Largest body of a reply a plugin answers with: error pages and small JSON documents, not
/// content (warm instances would otherwise keep such buffers alive).
pub const MAX_REPLY_BODY: usize = 1024 * 1024;

/// Longest `configure` may take: it parses configuration once per instance.
const CONFIGURE_TIME: Duration = Duration::from_secs(1);

/// Warm instances kept per slot; more concurrent calls instantiate extra ones, which are dropped
/// when the pool is full.
const POOL_SIZE: usize = 64;

/// An instance whose linear memory grew more than this past its size once configured (a large
/// body copied in, say) is "grown": wasm memory never shrinks, so it holds that memory for as
/// long as it lives.
const GROWN_BY: u64 = 1 << 20;

/// Grown instances kept warm per slot; the others are dropped after their call, which gives
/// their memory back to the operating system (the next call may wait for a fresh instance).
const GROWN_KEPT: usize = 4;

/// A warm instance, boxed so that handing it between the pool, a worker's cell and a call
/// moves a pointer.
type Instance = Box<Warm>;

struct Warm {
    store: Store<HostState>,
    plugin: Guest,
    /// Linear memory held once configured.
    baseline: u64,
    /// Counted in [`PluginSlot::grown_pooled`] while pooled.
    grown: bool,
    /// A Proxy-Wasm filter trapped in a call (after breaking a rule, which the call reports):
    /// its memory may be inconsistent, it must not serve again.
    poisoned: bool,
}

/// An instance of a component of either contract version, or of a Proxy-Wasm filter.
enum Guest {
    V1(v1::Plugin),
    V2(v2::Plugin),
    ProxyWasm(Box<filters::FilterGuest>),
}

/// What `configure` answered.
struct Configured {
    hooks: HookSet,
    /// What a 0.2 plugin declared; 0.1 plugins declare nothing.
    needs: Option<Needs>,
}

/// What a request-phase call decided.
pub enum RequestOutcome {
    Proceed {
        /// The plugin changed the path.
        path_changed: bool,
        /// The plugin changed the query.
        query_changed: bool,
        /// The plugin set or removed the Host header.
        host_changed: bool,
        /// The plugin replaced the request body.
        body_changed: bool,
        /// The nodes the plugin allowed the request to use.
        nodes: Option<NodeChoice>,
        /// The retry count the plugin set.
        retries: Option<u32>,
    },
    Respond(Reply),
}

/// A plugin use's configuration: the plugin's `config` (JSON text, or text), and what a
/// Proxy-Wasm filter takes beside it (Envoy's `root_id` and `vm_config.configuration`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    pub config: String,
    pub root_id: String,
    pub vm_config: String,
}

impl From<String> for PluginConfig {
    fn from(config: String) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

/// Where the grants of a plugin use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantedBy {
    /// The operator's `grants:`.
    Operator,
    /// A standard plugin's declared needs.
    Declared,
    /// A 0.2 component file with no `grants:` ([`Grants::baseline`]).
    Baseline,
    /// A 0.1 component file with no `grants:` ([`Grants::contract_0_1`]).
    Contract0_1,
}

/// One plugin as used by one API.
pub struct PluginSlot {
    label: Arc<str>,
    who: Arc<str>,
    service: Arc<str>,
    api: Arc<str>,
    engine: Arc<PluginEngine>,
    pre: Arc<Component>,
    config: String,
    /// A Proxy-Wasm filter's root id and VM configuration.
    root_id: Arc<str>,
    vm_config: Arc<[u8]>,
    limits: SlotLimits,
    /// The instance each worker thread used last ([`worker_cell`]): a worker calling the plugin
    /// again finds it warm in its caches, where the shared pool would hand back its least
    /// recently used instance.
    hot: Box<[CachePadded<AtomicCell<Option<Instance>>>]>,
    pool: ArrayQueue<Instance>,
    /// The hooks the plugin declared in `configure` and was granted; the others are never
    /// called.
    hooks: HookSet,
    /// What this use may touch.
    grants: Arc<Grants>,
    /// The use's counters, shared by its instances.
    counters: Arc<crate::counters::Counters>,
    /// What the plugin declared in `configure` (0.2), for `gatehouse validate`.
    declared: Option<Needs>,
    /// Where the grants came from.
    granted_by: GrantedBy,
    /// The plugin reads the request body (a 0.2 plugin that declared it, granted).
    request_body: bool,
    /// Keys of its configuration the plugin declared secret.
    secret_keys: Vec<String>,
    metrics: PluginMetrics,
    log_budget: Arc<LogBudget>,
    /// A background thread is making instances.
    refilling: AtomicBool,
    /// Grown instances in the pool (at most [`GROWN_KEPT`]).
    grown_pooled: AtomicUsize,
    /// Signalled when an instance goes into the pool while a request waits for one.
    ready: Notify,
    /// Requests waiting for an instance: returning one to the pool signals `ready` only then
    /// (the signal takes a lock).
    waiting: AtomicUsize,
    breaker: Breaker,
    /// A Proxy-Wasm filter's VMs, one per worker thread (`None` for a component).
    filter: Option<filters::Vms>,
}

impl PluginSlot {
    /// Creates the slot of a trusted plugin (granted what it declares; a 0.1 component what 0.1
    /// gave) and one configured instance, so a bad configuration is refused now, with the
    /// plugin's own message.
    pub fn new(
        engine: Arc<PluginEngine>,
        pre: Arc<Component>,
        label: &str,
        service: &str,
        api: &str,
        config: impl Into<PluginConfig>,
        limits: SlotLimits,
    ) -> Result<Arc<Self>, Failure> {
        Self::with_grants(engine, pre, label, service, api, config, limits, None, true)
    }

    /// Creates the slot and one configured instance, so a bad configuration is refused now, with
    /// the plugin's own message. `grants` are the operator's; without them a `trusted` (standard)
    /// plugin gets what it declares, a 0.2 component [`Grants::baseline`] and a 0.1 component
    /// [`Grants::contract_0_1`]. Declared needs beyond the grants fail with
    /// [`Failure::Denied`], listing what is missing.
    #[allow(clippy::too_many_arguments)]
    pub fn with_grants(
        engine: Arc<PluginEngine>,
        pre: Arc<Component>,
        label: &str,
        service: &str,
        api: &str,
        config: impl Into<PluginConfig>,
        limits: SlotLimits,
        grants: Option<Grants>,
        trusted: bool,
    ) -> Result<Arc<Self>, Failure> {
        crate::engine::note_time_limit(limits.time);
        let PluginConfig {
            config,
            root_id,
            vm_config,
        } = config.into();
        let mut slot = Self {
            root_id: Arc::from(root_id),
            vm_config: Arc::from(vm_config.into_bytes()),
            who: Arc::from(format!("{label} ({service}.{api})")),
            label: Arc::from(label),
            service: Arc::from(service),
            api: Arc::from(api),
            engine,
            pre,
            config,
            limits,
            hot: (0..hot_cells())
                .map(|_| CachePadded::new(AtomicCell::new(None)))
                .collect(),
            pool: ArrayQueue::new(POOL_SIZE),
            hooks: HookSet::ALL,
            grants: Arc::new(Grants::baseline()),
            counters: Arc::new(crate::counters::Counters::new(limits.counter_keys)),
            declared: None,
            granted_by: GrantedBy::Baseline,
            request_body: false,
            secret_keys: Vec::new(),
            log_budget: Arc::new(LogBudget::new(crate::metrics::log_dropped(label))),
            breaker: Breaker::new(label),
            filter: None,
            metrics: PluginMetrics::new(label),
            refilling: AtomicBool::new(false),
            grown_pooled: AtomicUsize::new(0),
            ready: Notify::new(),
            waiting: AtomicUsize::new(0),
        };
        if matches!(&*slot.pre, Component::ProxyWasm(_)) {
            slot.filter = Some(filters::Vms::new(hot_cells(), &slot.label, &slot.who));
        }
        let mut warm = slot.instance()?;
        if matches!(warm.plugin, Guest::V2(_)) {
            let info = slot.call(&mut warm, Hook::Describe, CONFIGURE_TIME, |p, s| match p {
                Guest::V2(p) => p.call_describe(s).map(|info| Ok(Some(info))),
                Guest::V1(_) | Guest::ProxyWasm(_) => Ok(Ok(None)),
            })?;
            slot.secret_keys = info.map(|i| i.secret_keys).unwrap_or_default();
        }
        let configured = slot.configure(&mut warm)?;
        let (grants, granted_by) = match (&configured.needs, grants) {
            (_, Some(granted)) => (granted, GrantedBy::Operator),
            (Some(needs), None) if trusted => (
                Grants::declared(needs).map_err(Failure::InvalidOutput)?,
                GrantedBy::Declared,
            ),
            (Some(_), None) => (Grants::baseline(), GrantedBy::Baseline),
            // a Proxy-Wasm filter declares nothing: what a 0.2 component file gets
            (None, None) if slot.filter.is_some() => (Grants::baseline(), GrantedBy::Baseline),
            (None, None) => (Grants::contract_0_1(), GrantedBy::Contract0_1),
        };
        if let Some(needs) = &configured.needs {
            needs.check().map_err(Failure::InvalidOutput)?;
            let missing = grants.missing(needs);
            if !missing.is_empty() {
                return Err(Failure::Denied(format!(
                    "it needs what this use does not grant: {}",
                    missing.join(", ")
                )));
            }
        }
        // a 0.1 plugin is held to the operator's hooks too
        slot.hooks = configured.hooks.intersect(grants.hooks);
        let reads_body = match &configured.needs {
            Some(needs) => needs.request_body,
            // a filter sees the body when its use is granted it
            None => slot.filter.is_some(),
        };
        slot.request_body =
            reads_body && grants.request_body && slot.hooks.contains(HookSet::ON_REQUEST);
        slot.grants = Arc::new(grants);
        slot.granted_by = granted_by;
        slot.declared = configured.needs;
        warm.store.data_mut().grants = slot.grants.clone();
        warm.baseline = warm.store.data().limiter.held();
        let _ = slot.pool.push(warm);
        let slot = Arc::new(slot);
        if slot.filter.is_some() {
            filters::clock::watch(&slot);
        }
        Ok(slot)
    }

    /// The plugin's name (standard name or file stem).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the plugin is a Proxy-Wasm filter.
    pub fn is_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// The contract version of the plugin's component.
    pub fn contract(&self) -> &'static str {
        self.pre.contract()
    }

    /// What the plugin declared it needs (0.2; `None` for a 0.1 component).
    pub fn declared(&self) -> Option<&Needs> {
        self.declared.as_ref()
    }

    /// Where this use's grants came from.
    pub fn granted_by(&self) -> GrantedBy {
        self.granted_by
    }

    /// Keys of its configuration the plugin declared secret (0.2's `describe`).
    pub fn secret_keys(&self) -> &[String] {
        &self.secret_keys
    }

    /// Whether the gateway must read the request body whole for this plugin.
    pub fn reads_request_body(&self) -> bool {
        self.request_body
    }

    /// Whether the gateway must hold the response body whole for this plugin.
    pub fn reads_response_body(&self) -> bool {
        self.hooks.contains(HookSet::ON_RESPONSE_BODY)
    }

    /// Counts and logs a failure of this plugin use that happened outside a call (a body over
    /// its limit).
    pub fn count_failure(&self, failure: &Failure) {
        self.metrics.failure(failure);
        log::warn!("plugin {}: {failure}", self.who);
    }

    /// The plugin use's body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.limits.body
    }

    /// Whether the plugin implements `hook` (`describe` and `configure` always).
    pub fn implements(&self, hook: Hook) -> bool {
        match hook {
            Hook::Describe | Hook::Configure => true,
            Hook::Request => self.hooks.contains(HookSet::ON_REQUEST),
            Hook::UpstreamRequest => self.hooks.contains(HookSet::ON_UPSTREAM_REQUEST),
            Hook::Response => self.hooks.contains(HookSet::ON_RESPONSE),
            Hook::ResponseBody => self.hooks.contains(HookSet::ON_RESPONSE_BODY),
            Hook::Log | Hook::Tick => self.filter.is_some(),
        }
    }

    /// A new instance, not configured yet.
    fn instance(&self) -> Result<Instance, Failure> {
        let mut state = HostState::new(
            self.limits.memory as usize,
            self.limits.edits,
            self.engine.memory_budget().clone(),
            self.log_budget.clone(),
            self.who.clone(),
            self.service.clone(),
            self.api.clone(),
        );
        state.grants = self.grants.clone();
        state.counters = self.counters.clone();
        state.call.body_limit = self.limits.body;
        state.budget = CallBudget::start(CONFIGURE_TIME);
        if let (Some(vms), Component::ProxyWasm(filter)) = (&self.filter, &*self.pre) {
            let mut filter_state = crate::proxy_wasm::FilterState::new(
                &self.config,
                vms.usage(),
                filter.shared.clone(),
            );
            filter_state.root_id = self.root_id.clone();
            filter_state.vm_config = self.vm_config.clone();
            state.filter = Some(Box::new(filter_state));
        }
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // every call is bounded by the CPU time its thread runs (crate::budget)
        store.epoch_deadline_callback(crate::budget::on_deadline);
        store.set_epoch_deadline(1);
        let plugin = match &*self.pre {
            Component::V1(pre) => pre.instantiate(&mut store).map(Guest::V1),
            Component::V2(pre) => pre.instantiate(&mut store).map(Guest::V2),
            Component::ProxyWasm(filter) => filter
                .pre
                .instantiate(&mut store)
                .and_then(|instance| filters::FilterGuest::new(&mut store, instance).map(Box::new))
                .map(Guest::ProxyWasm),
        }
        .map_err(|e| self.trap_failure(&store, e, "instantiate"))?;
        Ok(Box::new(Warm {
            store,
            plugin,
            baseline: 0,
            grown: false,
            poisoned: false,
        }))
    }

    /// Configures an instance; returns what `configure` declared.
    fn configure(&self, warm: &mut Warm) -> Result<Configured, Failure> {
        let config = self.config.as_str();
        self.call(warm, Hook::Configure, CONFIGURE_TIME, |p, s| match p {
            Guest::V1(p) => p.call_configure(s, config).map(|r| {
                r.map(|hooks| Configured {
                    hooks: hooks_of_v1(hooks),
                    needs: None,
                })
            }),
            Guest::V2(p) => p.call_configure(s, config).map(|r| {
                r.map(|needs| {
                    let needs = Needs::from(needs);
                    Configured {
                        hooks: needs.hooks,
                        needs: Some(needs),
                    }
                })
            }),
            Guest::ProxyWasm(f) => f
                .start(s)
                .map(|r| r.map(|hooks| Configured { hooks, needs: None })),
        })
    }

    /// A new configured instance.
    fn instantiate(&self) -> Result<Instance, Failure> {
        let mut warm = self.instance()?;
        self.configure(&mut warm)?;
        warm.baseline = warm.store.data().limiter.held();
        Ok(warm)
    }

    /// The calling worker's hot instance, if it has one.
    fn take_hot(&self) -> Option<Instance> {
        self.hot[worker_cell() % self.hot.len()].take()
    }

    /// A pooled instance, if any.
    fn pop(&self) -> Option<Instance> {
        let mut warm = self.pool.pop()?;
        if std::mem::take(&mut warm.grown) {
            self.grown_pooled.fetch_sub(1, Ordering::AcqRel);
        }
        Some(warm)
    }

    /// A warm instance. Instances are made by a background thread, never on the worker thread
    /// serving the request (a plugin whose `configure` hangs would stall every API of that
    /// thread): a request that finds none waits up to [`INSTANCE_WAIT`] for one, then fails. A
    /// call whose breaker is open fails at once.
    async fn acquire(self: &Arc<Self>) -> Result<Instance, Failure> {
        self.admit()?;
        self.take_instance().await
    }

    /// Whether the breaker lets a call through now (an open one fails it at once).
    fn admit(self: &Arc<Self>) -> Result<(), Failure> {
        match self.breaker.admit(&self.who) {
            Admission::Call => Ok(()),
            refused => {
                if refused == Admission::Probe {
                    self.probe();
                }
                let f = Failure::BreakerOpen;
                self.metrics.failure(&f);
                Err(f)
            }
        }
    }

    /// A warm instance: the worker's hot one, a pooled one, or one the background thread makes
    /// within [`INSTANCE_WAIT`].
    async fn take_instance(self: &Arc<Self>) -> Result<Instance, Failure> {
        if let Some(warm) = self.take_hot() {
            return Ok(warm);
        }
        if let Some(warm) = self.pop() {
            if self.pool.is_empty() {
                self.refill();
            }
            return Ok(warm);
        }
        self.refill();
        let deadline = tokio::time::Instant::now() + INSTANCE_WAIT;
        // counted before the pool is looked at (see `release`); uncounted however this ends,
        // a request dropped while it waits included
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(warm) = self.pop() {
                return Ok(warm);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let f = Failure::Instantiate(format!(
                    "no instance became ready within {INSTANCE_WAIT:?}"
                ));
                self.metrics.failure(&f);
                self.breaker.record(false, &self.who);
                return Err(f);
            }
        }
    }

    /// Starts a background thread that makes instances until [`SPARE`] are ready (one thread
    /// per slot at most).
    fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("gatehouse-plugin-refill".to_owned())
            .spawn(move || {
                loop {
                    while slot.pool.len() < SPARE {
                        match slot.instantiate() {
                            Ok(warm) => {
                                let _ = slot.pool.push(warm);
                                slot.ready.notify_waiters();
                            }
                            Err(f) => {
                                let f = match f {
                                    Failure::Error(m) => {
                                        Failure::Instantiate(format!("configure: {m}"))
                                    }
                                    other => other,
                                };
                                slot.metrics.failure(&f);
                                slot.breaker.record(false, &slot.who);
                                break;
                            }
                        }
                    }
                    slot.refilling.store(false, Ordering::Release);
                    // a request may have emptied the pool after the last check
                    if slot.pool.len() >= SPARE
                        || slot.breaker.is_open()
                        || slot.refilling.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            self.refilling.store(false, Ordering::Release);
            log::error!("plugin {}: cannot start an instance thread: {e}", self.who);
        }
    }

    /// Starts the background probe of an open breaker: one new instance, made and configured
    /// on its own thread; a working one is kept for the trial call.
    fn probe(self: &Arc<Self>) {
        let slot = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("gatehouse-plugin-probe".to_owned())
            .spawn(move || match slot.instantiate() {
                Ok(warm) => {
                    let _ = slot.pool.push(warm);
                    slot.ready.notify_waiters();
                    slot.breaker.probed(true, &slot.who);
                }
                Err(_) => slot.breaker.probed(false, &slot.who),
            });
        if let Err(e) = spawned {
            self.breaker.probed(false, &self.who);
            log::error!("plugin {}: cannot start a probe thread: {e}", self.who);
        }
    }

    /// Keeps an instance that served well: as its worker's hot instance (the one it displaces
    /// goes to the pool), or in the pool when it grew.
    fn release(&self, mut warm: Instance) {
        if !self.limits.reuse_instances {
            return;
        }
        let grown = warm.store.data().limiter.held() > warm.baseline + GROWN_BY;
        if !grown {
            match self.hot[worker_cell() % self.hot.len()].swap(Some(warm)) {
                None => return,
                Some(displaced) => warm = displaced,
            }
        } else {
            if self.grown_pooled.fetch_add(1, Ordering::AcqRel) >= GROWN_KEPT {
                // dropping it unmaps its memory
                self.grown_pooled.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            warm.grown = true;
        }
        match self.pool.push(warm) {
            // a request may be waiting for an instance (only the background thread's new ones
            // woke it before: it could time out with instances idle in the pool). The fence
            // pairs with the waiter's count: either it finds this instance or it is seen here.
            Ok(()) => {
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.waiting.load(Ordering::Relaxed) > 0 {
                    self.ready.notify_waiters();
                }
            }
            Err(rejected) => {
                if rejected.grown {
                    self.grown_pooled.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Runs one hook call with the slot's limits and records its duration and failure.
    fn call<R>(
        &self,
        warm: &mut Warm,
        hook: Hook,
        time: Duration,
        f: impl FnOnce(&Guest, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Failure> {
        let budget = CallBudget::start(time);
        let started = budget.started();
        warm.store.data_mut().budget = budget;
        warm.store.set_epoch_deadline(1);
        warm.store.data_mut().limiter.denied = false;
        let result = f(&warm.plugin, &mut warm.store);
        self.metrics.call(hook, started.elapsed().as_secs_f64());
        let violation = warm.store.data_mut().call.violation.take();
        // a filter's SDK panics on an error status it did not expect: the rule the filter broke
        // is what the call reports
        let result = match (result, &violation, &warm.plugin) {
            (Err(_), Some(_), Guest::ProxyWasm(_)) => {
                warm.poisoned = true;
                Ok(Ok(None))
            }
            (result, _, _) => result.map(|r| r.map(Some)),
        };
        let outcome = match (result, violation) {
            (Ok(_), Some(Violation::Forbidden(m))) => Err(Failure::ForbiddenHeader(m)),
            (Ok(_), Some(Violation::Limit(m))) => Err(Failure::HeaderLimit(m)),
            (Ok(_), Some(Violation::Denied(m))) => Err(Failure::Denied(m)),
            (Ok(_), Some(Violation::Body(m))) => Err(Failure::BodyLimit(m)),
            (Ok(Ok(Some(v))), None) => Ok(v),
            (Ok(Ok(None)), None) => Err(Failure::Trap("the call stopped".to_owned())),
            (Ok(Err(message)), _) => Err(Failure::Error(message)),
            (Err(e), _) => Err(self.trap_failure(&warm.store, e, hook.as_str())),
        };
        if let Err(f) = &outcome {
            self.metrics.failure(f);
            log::warn!("plugin {} {}: {f}", self.who, hook.as_str());
        }
        outcome
    }

    fn trap_failure(&self, store: &Store<HostState>, e: wasmtime::Error, what: &str) -> Failure {
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            Failure::Timeout
        } else if store.data().limiter.denied {
            Failure::Memory
        } else if what == "instantiate" {
            Failure::Instantiate(format!("{e:#}"))
        } else {
            Failure::Trap(format!("{e:#}"))
        }
    }

    /// Runs `on-request` on the client's request, as [`Self::on_request_in`] does; a Proxy-Wasm
    /// filter's context for the request ends with the call.
    pub async fn on_request(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        body: Option<&mut bytes::Bytes>,
    ) -> Result<RequestOutcome, Failure> {
        let mut streams = filters::Streams::default();
        self.on_request_in(req, client_ip, body, &mut streams).await
    }

    /// Runs `on-request` on the client's request. `body` is the whole request body when the
    /// gateway read it (an API with a plugin that [reads it](Self::reads_request_body)); a body
    /// the plugin sets replaces it. A Proxy-Wasm filter opens the request's context in its VM and
    /// adds it to `streams`, which end it when the request ends.
    pub async fn on_request_in(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        body: Option<&mut bytes::Bytes>,
        streams: &mut filters::Streams,
    ) -> Result<RequestOutcome, Failure> {
        if self.filter.is_some() {
            let body = body.filter(|_| self.request_body);
            return self.filter_request(req, client_ip, body, streams).await;
        }
        let mut warm = self.acquire().await?;
        let call = &mut warm.store.data_mut().call;
        call.begin(true, client_ip);
        call.steerable = true;
        let body = body.filter(|_| self.request_body);
        call.body = body.as_ref().map(|b| bytes::Bytes::clone(b));
        std::mem::swap(&mut call.request, req);
        let result = self.call(&mut warm, Hook::Request, self.limits.time, |p, s| match p {
            Guest::V1(p) => p
                .call_on_request(&mut *s, Resource::new_borrow(REQUEST))
                .map(|r| r.map(Action::from)),
            Guest::V2(p) => p
                .call_on_request(&mut *s, Resource::new_borrow(REQUEST))
                .map(|r| r.map(Action::from)),
            Guest::ProxyWasm(_) => Ok(Ok(Action::Proceed)),
        });
        let outcome = result.and_then(|action| match action {
            Action::Proceed => {
                let call = &mut warm.store.data_mut().call;
                Ok(RequestOutcome::Proceed {
                    path_changed: call.path_changed,
                    query_changed: call.query_changed,
                    host_changed: call.host_changed,
                    body_changed: call.new_body.is_some(),
                    nodes: call.nodes.take(),
                    retries: call.retries,
                })
            }
            Action::Respond(reply) => check_reply(reply, &self.limits.edits)
                .map(RequestOutcome::Respond)
                .inspect_err(|f| {
                    self.metrics.failure(f);
                    log::warn!("plugin {} {}: {f}", self.who, Hook::Request.as_str());
                }),
        });
        let call = &mut warm.store.data_mut().call;
        if outcome.is_err() {
            call.roll_back();
        }
        call.body = None;
        if let (Some(body), Some(new)) = (body, call.new_body.take()) {
            *body = bytes::Bytes::from(new);
        }
        std::mem::swap(&mut call.request, req);
        self.finish(warm, &outcome);
        outcome
    }

    /// Runs `on-upstream-request` on the request for one attempt.
    pub async fn on_upstream_request(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        node: &Node,
    ) -> Result<(), Failure> {
        let mut warm = self.acquire().await?;
        let call = &mut warm.store.data_mut().call;
        call.begin(true, client_ip);
        std::mem::swap(&mut call.request, req);
        let result = self.call(
            &mut warm,
            Hook::UpstreamRequest,
            self.limits.time,
            |p, s| match p {
                Guest::V1(p) => {
                    p.call_on_upstream_request(&mut *s, Resource::new_borrow(REQUEST), &node.into())
                }
                Guest::V2(p) => {
                    p.call_on_upstream_request(&mut *s, Resource::new_borrow(REQUEST), &node.into())
                }
                Guest::ProxyWasm(_) => Ok(Ok(())),
            },
        );
        let call = &mut warm.store.data_mut().call;
        if result.is_err() {
            call.roll_back();
        }
        std::mem::swap(&mut call.request, req);
        self.finish(warm, &result);
        result
    }

    /// Runs `on-response`, as [`Self::on_response_in`] does, without a request's filter
    /// contexts (a Proxy-Wasm filter gets a new one, which ends with the call).
    pub async fn on_response(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        resp: &mut ResponseHeader,
        client_ip: Option<IpAddr>,
    ) -> Result<(), Failure> {
        let mut streams = filters::Streams::default();
        self.on_response_in(req, resp, client_ip, &mut streams)
            .await
    }

    /// Runs `on-response` on the response going to the client (the request is read-only). A
    /// Proxy-Wasm filter runs in the request's context from `streams`.
    pub async fn on_response_in(
        self: &Arc<Self>,
        req: &mut RequestHeader,
        resp: &mut ResponseHeader,
        client_ip: Option<IpAddr>,
        streams: &mut filters::Streams,
    ) -> Result<(), Failure> {
        if self.filter.is_some() {
            return self.filter_response(req, resp, client_ip, streams).await;
        }
        let mut warm = self.acquire().await?;
        let call = &mut warm.store.data_mut().call;
        call.begin(false, client_ip);
        std::mem::swap(&mut call.request, req);
        std::mem::swap(&mut call.response, resp);
        let result = self.call(&mut warm, Hook::Response, self.limits.time, |p, s| {
            let (req, resp) = (
                Resource::new_borrow(REQUEST),
                Resource::new_borrow(RESPONSE),
            );
            match p {
                Guest::V1(p) => p.call_on_response(&mut *s, req, resp),
                Guest::V2(p) => p.call_on_response(&mut *s, req, resp),
                Guest::ProxyWasm(_) => Ok(Ok(())),
            }
        });
        let call = &mut warm.store.data_mut().call;
        if result.is_err() {
            call.roll_back();
        }
        std::mem::swap(&mut call.request, req);
        std::mem::swap(&mut call.response, resp);
        self.finish(warm, &result);
        result
    }

    /// Takes an instance for `on-response-body` while the response header goes out (the body
    /// phase of the proxy cannot wait), for [`HeldInstance::on_response_body`] once the whole
    /// body has arrived. Dropped unused, the instance goes back to the pool.
    pub async fn hold(self: &Arc<Self>) -> Result<HeldInstance, Failure> {
        if self.filter.is_some() {
            // a filter's body callback runs in the request's context, in its worker's VM
            self.admit()?;
            return Ok(HeldInstance {
                slot: Arc::clone(self),
                warm: None,
            });
        }
        let warm = self.acquire().await?;
        Ok(HeldInstance {
            slot: Arc::clone(self),
            warm: Some(warm),
        })
    }

    fn finish<T>(self: &Arc<Self>, warm: Instance, outcome: &Result<T, Failure>) {
        self.breaker
            .record(!matches!(outcome, Err(f) if f.breaks()), &self.who);
        match outcome {
            Ok(_) => self.release(warm),
            Err(f) if f.keeps_instance() => self.release(warm),
            Err(_) => self.discard(warm),
        }
        if matches!(outcome, Err(Failure::ReplyTooLarge(_))) {
            // the lifted body is freed: do not let the allocator keep it resident
            crate::engine::release_freed_memory();
        }
    }

    /// Drops an instance that must not serve again (its memory goes back) and refills the pool
    /// when it was the last.
    fn discard(self: &Arc<Self>, warm: Instance) {
        drop(warm);
        if self.pool.is_empty() {
            self.refill();
        }
    }
}

/// An instance taken from a slot's pool for a later call.
pub struct HeldInstance {
    slot: Arc<PluginSlot>,
    warm: Option<Instance>,
}

impl Drop for HeldInstance {
    fn drop(&mut self) {
        if let Some(warm) = self.warm.take() {
            self.slot.release(warm);
        }
    }
}

impl HeldInstance {
    /// The plugin use this instance belongs to.
    pub fn slot(&self) -> &Arc<PluginSlot> {
        &self.slot
    }

    /// Runs `on-response-body` as [`Self::on_response_body_in`] does, without a request's
    /// filter contexts.
    pub fn on_response_body(
        self,
        req: &mut RequestHeader,
        status: u16,
        headers: &http::HeaderMap,
        body: &[u8],
        client_ip: Option<IpAddr>,
    ) -> Result<Option<bytes::Bytes>, Failure> {
        let mut streams = filters::Streams::default();
        self.on_response_body_in(req, status, headers, body, client_ip, &mut streams)
    }

    /// Runs `on-response-body` on the whole response body (0.2 plugins that declared it, and
    /// Proxy-Wasm filters granted it, in the request's context from `streams`); the status and
    /// `headers` have gone to the client. Returns the body to send instead, if the plugin
    /// replaced it. Synchronous: the instance is already at hand.
    pub fn on_response_body_in(
        mut self,
        req: &mut RequestHeader,
        status: u16,
        headers: &http::HeaderMap,
        body: &[u8],
        client_ip: Option<IpAddr>,
        streams: &mut filters::Streams,
    ) -> Result<Option<bytes::Bytes>, Failure> {
        let slot = Arc::clone(&self.slot);
        if slot.filter.is_some() {
            return slot.filter_response_body(req, status, headers, body, client_ip, streams);
        }
        let Some(mut warm) = self.warm.take() else {
            return Err(Failure::Instantiate(
                "the instance was used already".to_owned(),
            ));
        };
        let call = &mut warm.store.data_mut().call;
        call.begin(false, client_ip);
        std::mem::swap(&mut call.request, req);
        let visible = readable_headers(&slot.grants.response.read, headers);
        let limit = slot.limits.body;
        let result = slot
            .call(
                &mut warm,
                Hook::ResponseBody,
                slot.limits.time,
                |p, s| match p {
                    Guest::V2(p) => p.call_on_response_body(
                        &mut *s,
                        Resource::new_borrow(REQUEST),
                        status,
                        &visible,
                        body,
                    ),
                    Guest::V1(_) | Guest::ProxyWasm(_) => Ok(Ok(None)),
                },
            )
            .and_then(|replaced| match replaced {
                Some(b) if b.len() > limit => {
                    let f = Failure::BodyLimit(format!(
                        "a body of {} bytes is over this plugin's body_limit of {limit} bytes",
                        b.len()
                    ));
                    slot.metrics.failure(&f);
                    log::warn!("plugin {} {}: {f}", slot.who, Hook::ResponseBody.as_str());
                    Err(f)
                }
                other => Ok(other.map(bytes::Bytes::from)),
            });
        let call = &mut warm.store.data_mut().call;
        std::mem::swap(&mut call.request, req);
        slot.finish(warm, &result);
        result
    }
}

/// A request counted in [`PluginSlot`]'s `waiting` while it waits for an instance.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest a request waits for an instance when none is warm. A background thread makes one
/// in tens of microseconds (milliseconds on a loaded machine); one that takes longer is a plugin
/// stuck in `configure`, whose breaker soon opens.
pub const INSTANCE_WAIT: Duration = Duration::from_millis(500);

/// Instances kept ready in the pool beyond the ones in use and the workers' hot ones, so
/// concurrent requests rarely wait.
const SPARE: usize = 2;

/// Upper bound of the hot cells of a slot (one per core otherwise).
const MAX_HOT_CELLS: usize = 64;

// A worker's cell is one atomic word: taking and returning its instance never locks.
const _: () = assert!(AtomicCell::<Option<Instance>>::is_lock_free());

/// Hot cells per slot: one per core, as the gateway runs about one worker thread per core;
/// threads beyond that share cells (a shared cell still works: the instance it displaces goes
/// to the pool).
fn hot_cells() -> usize {
    static CELLS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CELLS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_HOT_CELLS)
    })
}

/// The calling thread's number, given on its first call: its hot cell in every slot is this
/// number modulo the slot's cells.
fn worker_cell() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static CELL: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    CELL.with(|c| *c)
}

/// Consecutive breaking failures that open a plugin's breaker.
const BREAKER_FAILURES: u32 = 5;
/// How long a breaker stays open at first; it doubles after each failed trial, up to the max.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(30);

/// Fails a plugin's calls fast after it failed [`BREAKER_FAILURES`] times in a row (trapped,
/// timed out, ran out of memory, could not be instantiated): no instance is made or called while
/// it is open. After the cooldown a background probe makes and configures a new instance, off the
/// request path: if that fails the breaker stays open for twice as long; if it works, the next
/// call is the trial, whose success closes the breaker (failure opens it again for twice as long).
/// Opening and closing are each logged once and counted.
struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    cooldown_ms: AtomicU64,
    /// A background probe is under way.
    probing: AtomicBool,
    /// The probe made a working instance: the next call is the trial.
    probed: AtomicBool,
    /// The trial call has been let through.
    trial: AtomicBool,
    epoch: Instant,
    open_gauge: prometheus::IntGauge,
    opened: prometheus::IntCounter,
}

/// What the breaker lets a caller do.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Call,
    Refuse,
    /// Refuse, and start the background probe.
    Probe,
}

impl Breaker {
    fn new(plugin: &str) -> Self {
        let (open_gauge, opened) = crate::metrics::breaker(plugin);
        Self {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            cooldown_ms: AtomicU64::new(BREAKER_COOLDOWN.as_millis() as u64),
            probing: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            trial: AtomicBool::new(false),
            epoch: Instant::now(),
            open_gauge,
            opened,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Whether a call may be made now.
    fn admit(&self, who: &str) -> Admission {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Call;
        }
        if self.now_ms() < until {
            return Admission::Refuse;
        }
        if self.probed.load(Ordering::Acquire) {
            if !self.trial.swap(true, Ordering::AcqRel) {
                log::info!("plugin {who}: breaker half open, this call is the trial");
                return Admission::Call;
            }
            return Admission::Refuse;
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            return Admission::Probe;
        }
        Admission::Refuse
    }

    /// Records the outcome of a background probe (`ok`: a new instance was made and configured).
    fn probed(&self, ok: bool, who: &str) {
        if ok {
            self.probed.store(true, Ordering::Release);
            log::debug!("plugin {who}: probe instance works, the next call is a trial");
        } else {
            self.reopen(who);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Keeps an open breaker open, for twice as long as the last time (up to the maximum).
    fn reopen(&self, who: &str) {
        let next = (self.cooldown_ms.load(Ordering::Relaxed) * 2)
            .min(BREAKER_MAX_COOLDOWN.as_millis() as u64);
        self.cooldown_ms.store(next, Ordering::Relaxed);
        self.probed.store(false, Ordering::Release);
        self.trial.store(false, Ordering::Release);
        self.open_until
            .store(self.now_ms() + next, Ordering::Release);
        log::debug!("plugin {who}: still failing, breaker stays open for {next} ms");
    }

    /// Records a call's outcome (`ok`: it did not break).
    fn record(&self, ok: bool, who: &str) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                self.trial.store(false, Ordering::Release);
                self.probed.store(false, Ordering::Release);
                self.cooldown_ms
                    .store(BREAKER_COOLDOWN.as_millis() as u64, Ordering::Relaxed);
                self.open_gauge.set(0);
                log::info!("plugin {who}: works again, breaker closed");
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.is_open() {
            // only the trial's failure counts: calls that started before the breaker opened
            // tell nothing new
            if self.trial.load(Ordering::Acquire) {
                self.reopen(who);
            }
            return;
        }
        if failures >= BREAKER_FAILURES {
            let cooldown = self.cooldown_ms.load(Ordering::Relaxed);
            self.probed.store(false, Ordering::Release);
            self.trial.store(false, Ordering::Release);
            self.open_until
                .store(self.now_ms() + cooldown, Ordering::Release);
            self.open_gauge.set(1);
            self.opened.inc();
            log::warn!(
                "plugin {who}: failed {failures} times in a row, breaker open: its calls fail at once for {cooldown} ms, then a new instance is tried in the background"
            );
        }
    }
}

/// Checks a short-circuit reply before the gateway writes it.
fn check_reply(reply: Reply, limits: &EditLimits) -> Result<Reply, Failure> {
    if reply.body.len() > MAX_REPLY_BODY {
        return Err(Failure::ReplyTooLarge(reply.body.len()));
    }
    if !(200..=599).contains(&reply.status) {
        return Err(Failure::InvalidOutput(format!(
            "status {} is not a final HTTP status",
            reply.status
        )));
    }
    match check_reply_headers(&reply.headers, limits) {
        Ok(()) => Ok(reply),
        Err(Violation::Forbidden(m)) => Err(Failure::ForbiddenHeader(m)),
        Err(Violation::Limit(m)) => Err(Failure::HeaderLimit(m)),
        Err(Violation::Denied(m)) => Err(Failure::Denied(m)),
        Err(Violation::Body(m)) => Err(Failure::BodyLimit(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_probes_in_the_background_before_a_trial_call_closes_it() {
        let b = Breaker::new("breaker-unit-test");
        let expire = |b: &Breaker| b.open_until.store(1, Ordering::Release);
        for _ in 0..BREAKER_FAILURES - 1 {
            b.record(false, "p");
        }
        assert_eq!(b.admit("p"), Admission::Call, "not yet");
        b.record(false, "p");
        assert_eq!(b.admit("p"), Admission::Refuse, "open");
        // cooldown over: exactly one caller starts the probe; no call is made meanwhile
        expire(&b);
        assert_eq!(b.admit("p"), Admission::Probe);
        assert_eq!(b.admit("p"), Admission::Refuse);
        // a failed probe keeps it open, twice as long
        b.probed(false, "p");
        assert!(b.is_open());
        assert_eq!(b.cooldown_ms.load(Ordering::Relaxed), 2000);
        assert_eq!(b.admit("p"), Admission::Refuse);
        // a working probe: one trial call, and its failure opens it again
        expire(&b);
        assert_eq!(b.admit("p"), Admission::Probe);
        b.probed(true, "p");
        assert_eq!(b.admit("p"), Admission::Call, "the trial");
        assert_eq!(b.admit("p"), Admission::Refuse, "only one trial");
        b.record(false, "p");
        assert_eq!(b.cooldown_ms.load(Ordering::Relaxed), 4000);
        assert_eq!(b.admit("p"), Admission::Refuse);
        // a late failure of a call from before does not extend it
        let until = b.open_until.load(Ordering::Acquire);
        b.record(false, "p");
        assert_eq!(b.open_until.load(Ordering::Acquire), until);
        // probe and trial succeed: closed, cooldown reset
        expire(&b);
        assert_eq!(b.admit("p"), Admission::Probe);
        b.probed(true, "p");
        assert_eq!(b.admit("p"), Admission::Call);
        b.record(true, "p");
        assert!(!b.is_open());
        assert_eq!(b.open_gauge.get(), 0);
        assert_eq!(b.opened.get(), 1, "opened once");
        assert_eq!(b.admit("p"), Admission::Call);
        assert_eq!(b.cooldown_ms.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn replies_are_bounded() {
        let reply = |body: usize, headers: Vec<(String, String)>| Reply {
            status: 403,
            headers,
            body: vec![b'x'; body],
        };
        let limits = EditLimits::default();
        assert!(check_reply(reply(MAX_REPLY_BODY, vec![]), &limits).is_ok());
        let huge = check_reply(reply(100 * 1024 * 1024, vec![]), &limits);
        assert!(matches!(huge, Err(Failure::ReplyTooLarge(n)) if n == 100 * 1024 * 1024));
        assert!(!Failure::ReplyTooLarge(0).keeps_instance() && !Failure::ReplyTooLarge(0).breaks());
        let framing = vec![("content-length".to_owned(), "5".to_owned())];
        assert!(matches!(
            check_reply(reply(5, framing), &limits),
            Err(Failure::ForbiddenHeader(_))
        ));
        let many: Vec<_> = (0..65)
            .map(|i| (format!("x-{i}"), "v".to_owned()))
            .collect();
        assert!(matches!(
            check_reply(reply(0, many), &limits),
            Err(Failure::HeaderLimit(_))
        ));
        let interim = Reply {
            status: 101,
            headers: vec![],
            body: vec![],
        };
        assert!(matches!(
            check_reply(interim, &limits),
            Err(Failure::InvalidOutput(_))
        ));
    }
}
