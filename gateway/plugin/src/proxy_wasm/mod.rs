//! Proxy-Wasm filters: core WebAssembly modules written for the Proxy-Wasm ABI 0.2.1 (the HTTP
//! filters of Envoy and APISIX), run beside the contract's components under the same limits,
//! grants and failure policy.
//!
//! A filter is told apart from a component by its header (a core module) and its exports (the
//! ABI's `proxy_abi_version_0_2_*` marker). It is linked against every function of the ABI and
//! the WASI preview 1 functions its SDK may import ([`abi`], [`wasi`]); a function the host does
//! not provide returns the ABI's `Unimplemented` status (counted and logged once per use), never
//! a trap and never a silent success. Anything else it imports refuses it at load, by name.
//!
//! Each VM (one module instance) runs the filter's root context, configured once, and the HTTP
//! contexts of the requests that use it: a request's context lives from its request headers to
//! its end (a [`Stream`](crate::Stream)), as in Envoy, so a filter may carry state from the
//! request to the response. A plugin use keeps one VM per worker thread.

pub(crate) mod abi;
pub mod shared;
mod wasi;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use wasmtime::{Engine, InstancePre, Linker, Module};

use crate::bindings::{HostState, Reply};
use crate::engine::LoadError;

/// The ABI versions a filter may be built for, by the name of the function it exports to say so.
pub const ABI_VERSIONS: [(&str, &str); 2] = [
    ("proxy_abi_version_0_2_1", "0.2.1"),
    ("proxy_abi_version_0_2_0", "0.2.0"),
];

/// A compiled and linked Proxy-Wasm filter.
pub struct Filter {
    pub(crate) pre: InstancePre<HostState>,
    /// The ABI version the module says it was built for.
    pub abi: &'static str,
    /// The data and queues the module's VMs share.
    pub(crate) shared: Arc<shared::Shared>,
}

/// Links a compiled filter: refuses an ABI version other than 0.2.x and any import outside the
/// ABI and WASI preview 1, naming it.
pub(crate) fn link(
    base: &Linker<HostState>,
    module: &Module,
    name: &str,
) -> Result<Filter, LoadError> {
    let exports: HashSet<&str> = module.exports().map(|e| e.name()).collect();
    let Some(abi) = ABI_VERSIONS
        .iter()
        .find(|(marker, _)| exports.contains(marker))
        .map(|(_, version)| *version)
    else {
        let found: Vec<&str> = exports
            .iter()
            .copied()
            .filter(|e| e.starts_with("proxy_abi_version_"))
            .collect();
        return Err(LoadError::Compile(
            name.to_owned(),
            format!(
                "it is a Proxy-Wasm filter for ABI {}, and this gateway runs ABI 0.2.1 and 0.2.0 \
                 filters: rebuild it with a current Proxy-Wasm SDK",
                found
                    .join(", ")
                    .replace("proxy_abi_version_", "")
                    .replace('_', ".")
            ),
        ));
    };
    if !exports.contains("memory") {
        return Err(LoadError::Compile(
            name.to_owned(),
            "a Proxy-Wasm filter must export its memory".to_owned(),
        ));
    }
    let mut linker = base.clone();
    let mut refused = Vec::new();
    let mut stubbed = HashSet::new();
    for import in module.imports() {
        let (from, function) = (import.module(), import.name());
        let known = match from {
            "env" => abi::is_abi_function(function),
            "wasi_snapshot_preview1" | "wasi_unstable" => wasi::is_wasi_function(function),
            _ => false,
        };
        if !known {
            refused.push(format!("{from}.{function}"));
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            refused.push(format!("{from}.{function} (not a function)"));
            continue;
        };
        // functions the host implements are in `base`; the rest answer "unimplemented"
        let implemented = match from {
            "env" => abi::implements(function),
            _ => wasi::implements(function),
        };
        if !implemented && stubbed.insert((from.to_owned(), function.to_owned())) {
            let defined = if from == "env" {
                let stub = abi::unimplemented(function, &ty);
                linker.func_new(from, function, ty, stub).map(drop)
            } else {
                let stub = wasi::unavailable(function, &ty);
                linker.func_new(from, function, ty, stub).map(drop)
            };
            defined
                .map_err(|e| LoadError::Link(name.to_owned(), "proxy-wasm", format!("{e:#}")))?;
        }
    }
    if !refused.is_empty() {
        return Err(LoadError::Compile(
            name.to_owned(),
            format!(
                "it imports what no Proxy-Wasm host provides: {} (a filter may import the \
                 Proxy-Wasm ABI 0.2.1 functions of module env and WASI preview 1)",
                refused.join(", ")
            ),
        ));
    }
    let pre = linker.instantiate_pre(module).map_err(|e| {
        LoadError::Link(
            name.to_owned(),
            "proxy-wasm",
            format!("{e:#} (the import's signature is not the ABI's)"),
        )
    })?;
    Ok(Filter {
        pre,
        abi,
        shared: Arc::default(),
    })
}

/// The host functions every filter is linked against.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<HostState>, String> {
    let mut linker = Linker::new(engine);
    abi::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    wasi::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    Ok(linker)
}

/// What a filter's store holds beyond [`HostState`]'s call: the configuration and the context
/// bookkeeping of its VM.
pub struct FilterState {
    /// The filter's plugin configuration (`proxy_on_configure`).
    pub(crate) plugin_config: Arc<[u8]>,
    /// The filter's VM configuration (`proxy_on_vm_start`).
    pub(crate) vm_config: Arc<[u8]>,
    /// The root id the use gives (the property `plugin_root_id`).
    pub(crate) root_id: Arc<str>,
    /// The next context id to hand out (the root context is 1).
    pub(crate) next_context: u32,
    /// The HTTP contexts alive in this VM.
    pub(crate) live: HashSet<u32>,
    /// What the callback running now may touch.
    pub(crate) phase: Phase,
    /// The answer the filter sent with `proxy_send_local_response` in this call.
    pub(crate) local: Option<Reply>,
    /// The gateway holds this message's body whole for the filter and frames what it sends
    /// itself: removing `Content-Length` is then accepted (and changes nothing).
    pub(crate) body_held: bool,
    /// The whole response body, in the response body callback.
    pub(crate) response_body: Option<bytes::Bytes>,
    /// The response body the filter set in this call.
    pub(crate) new_response_body: Option<Vec<u8>>,
    /// The use this VM serves.
    pub(crate) usage: Arc<FilterUse>,
    /// This VM's id in the process (queues name their owner by it).
    pub(crate) vm: u64,
    /// The data and queues of the module's VMs.
    pub(crate) shared: Arc<shared::Shared>,
    /// The metrics this VM defined, by id.
    pub(crate) metrics: Vec<shared::Metric>,
    /// How often the root context wants `proxy_on_tick` (`None`: never).
    pub(crate) tick: Option<std::time::Duration>,
}

/// The callback running in a filter, which decides what the host functions reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// VM start and configuration: no request.
    Root,
    /// Request headers (and the request body, when read): the request is writable.
    Request,
    /// Response headers: the request is read-only, the response writable.
    Response,
    /// The whole response body: its headers have gone to the client (read-only).
    ResponseBody,
    /// The end of a request (`proxy_on_log`, `proxy_on_done`, `proxy_on_delete`): read-only.
    Done,
}

impl Phase {
    /// Whether the response's status and headers exist for the filter.
    pub(crate) fn has_response(self) -> bool {
        matches!(self, Phase::Response | Phase::ResponseBody | Phase::Done)
    }
}

/// The ROOT context's id: one root per VM.
pub(crate) const ROOT_CONTEXT: u32 = 1;

impl FilterState {
    pub(crate) fn new(config: &str, usage: Arc<FilterUse>, shared: Arc<shared::Shared>) -> Self {
        static NEXT_VM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            vm: NEXT_VM.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shared,
            metrics: Vec::new(),
            tick: None,
            plugin_config: plugin_configuration(config),
            vm_config: Arc::from(&b""[..]),
            root_id: Arc::from(""),
            next_context: ROOT_CONTEXT + 1,
            live: HashSet::new(),
            phase: Phase::Root,
            local: None,
            body_held: false,
            response_body: None,
            new_response_body: None,
            usage,
        }
    }
}

/// The bytes a filter gets as its plugin configuration: a YAML string as it is (many filters
/// take plain text), anything else as JSON text.
fn plugin_configuration(config: &str) -> Arc<[u8]> {
    match serde_json::from_str::<serde_json::Value>(config) {
        Ok(serde_json::Value::String(text)) => Arc::from(text.into_bytes()),
        _ => Arc::from(config.as_bytes()),
    }
}

/// What the VMs of one filter use share: its name for metrics and logs, the refusals already
/// logged (an ABI function the host does not provide, a bound reached: each logged once, counted
/// every time), and whether it needs the filter clock.
pub struct FilterUse {
    pub(crate) label: Arc<str>,
    who: Arc<str>,
    logged: Mutex<HashSet<String>>,
    /// A VM of the use set a timer or registered a queue: the filter clock keeps a VM in every
    /// worker's cell from then on, as Envoy runs one per worker, traffic or not.
    pub(crate) wants_clock: std::sync::atomic::AtomicBool,
}

impl FilterUse {
    pub(crate) fn new(label: Arc<str>, who: Arc<str>) -> Self {
        Self {
            label,
            who,
            logged: Mutex::new(HashSet::new()),
            wants_clock: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Logs, once per use and `what`, why a call was refused (a bound reached).
    pub(crate) fn refused(&self, what: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.insert(what.to_owned()) {
            log::warn!(
                "plugin {}: refused {what} (logged once; the filter got an error status)",
                self.who
            );
        }
    }

    /// Records a call of `function`, which answered `status`.
    pub(crate) fn record(&self, function: &str, why: &str) {
        crate::metrics::proxy_wasm_unsupported(&self.label, function);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.insert(function.to_owned()) {
            log::warn!(
                "plugin {}: the filter called {function}, which {why}; it got an error status \
                 (logged once, counted in gatehouse_proxy_wasm_unsupported_calls_total)",
                self.who
            );
        }
    }
}
