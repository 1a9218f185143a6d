//! The process-wide wasmtime engine: compilation, pre-linking, the epoch clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use sha2::{Digest, Sha256};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use crate::bindings::{v1, v2, HostState, MemoryBudget};

/// The budget of linear memory for all plugin instances until a configuration sets one.
const DEFAULT_TOTAL_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

/// How often the epoch advances while a call runs long: a call past its first tick is checked
/// this often, so its limit is enforced to within this.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How often the epoch advances while no call runs long, at most: every call is looked at by
/// then. The clock wakes twice in this period (at the tick and one [`EPOCH_TICK`] later, to see
/// whether a call ran into the tick) instead of every millisecond: a wake-up on a busy core
/// costs the requests around it more than the checks it saves.
pub const COARSE_TICK: Duration = Duration::from_millis(10);

/// The clock's period while no call runs long: [`COARSE_TICK`], or the shortest time limit of a
/// plugin use if that is shorter (so that every call is looked at within its limit); it stays
/// that short until the process restarts.
static COARSE_MICROS: AtomicU64 = AtomicU64::new(COARSE_TICK.as_micros() as u64);

/// Set by a call found still running at a tick: the clock goes on at [`EPOCH_TICK`].
static LONG_CALL: AtomicBool = AtomicBool::new(false);

/// Makes the clock look at every call within `limit` (a plugin use's time limit).
pub fn note_time_limit(limit: Duration) {
    let micros = limit.clamp(EPOCH_TICK, COARSE_TICK).as_micros() as u64;
    COARSE_MICROS.fetch_min(micros, Ordering::Relaxed);
}

/// Tells the clock that a call ran into a tick and goes on.
pub(crate) fn long_call_running() {
    if !LONG_CALL.load(Ordering::Relaxed) {
        LONG_CALL.store(true, Ordering::Relaxed);
    }
}

/// Hands memory the process freed back to the operating system; set by the binary, which knows
/// its allocator.
static RELEASE_FREED_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets how the process gives freed memory back to the operating system. The host calls it after
/// freeing a buffer a hostile plugin made it allocate (the lifted body of an oversized reply),
/// which an allocator would otherwise keep resident for reuse.
pub fn set_release_freed_memory(release: fn()) {
    let _ = RELEASE_FREED_MEMORY.set(release);
}

/// Gives freed memory back to the operating system, if the binary said how (after freeing a
/// large buffer: the host's hostile replies, the proxy's whole bodies).
pub fn release_freed_memory() {
    if let Some(release) = RELEASE_FREED_MEMORY.get() {
        release();
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} {1}")]
    Read(String, gatehouse_config::files::FileError),
    #[error("{0} is not a usable WebAssembly component: {1}")]
    Compile(String, String),
    #[error("{0} does not implement the gatehouse:plugin world of its version ({1}): {2}")]
    Link(String, &'static str, String),
    #[error("{0} is built for a plugin contract this gateway does not load (it loads {loads}): it imports {1}; rebuild it against wit/plugin.wit", loads = CONTRACTS.join(" and "))]
    Contract(String, String),
}

/// The contract versions the host loads.
pub const CONTRACTS: [&str; 2] = ["0.1.0", "0.2.0"];

/// A compiled component, linked for the contract version it was built for.
pub enum Component {
    V1(v1::PluginPre<HostState>),
    V2(v2::PluginPre<HostState>),
    /// A Proxy-Wasm filter (a core module).
    ProxyWasm(crate::proxy_wasm::Filter),
}

impl Component {
    /// The contract version the component targets.
    pub fn contract(&self) -> &'static str {
        match self {
            Component::V1(_) => CONTRACTS[0],
            Component::V2(_) => CONTRACTS[1],
            Component::ProxyWasm(f) => match f.abi {
                "0.2.0" => "proxy-wasm 0.2.0",
                _ => "proxy-wasm 0.2.1",
            },
        }
    }
}

/// Compiles and pre-links components once; shared by every slot. Owns the epoch clock that
/// enforces every call's time limit, wherever guest code runs (start-up, `validate`, admin
/// writes, the request path).
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
    /// The host functions of Proxy-Wasm filters.
    filter_linker: wasmtime::Linker<HostState>,
    /// Compiled and linked components by source: `standard:NAME`, or `file:SHA256` of a
    /// component file's bytes, so a replaced file is compiled afresh.
    cache: Mutex<HashMap<String, Arc<Component>>>,
    clock: Once,
    budget: Arc<MemoryBudget>,
}

impl PluginEngine {
    /// Builds the engine. Instances may use up to `max_memory` bytes; each store's own limit
    /// (the configured `memory_limit`) is enforced below that.
    ///
    /// Instances are allocated on demand, not from a fixed pool: a pool caps the instances of
    /// the whole process (1,000 core instances by default, three per standard plugin), which a
    /// configuration with a few hundred plugin uses, or load on many of them, would hit. Warm
    /// instances are reused, so allocation stays off the common request path.
    pub fn new(max_memory: u64) -> Result<Arc<Self>, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        config.memory_reservation(max_memory.min(1 << 32));
        let engine =
            Engine::new(&config).map_err(|e| format!("cannot create the plugin engine: {e}"))?;
        // one linker for both versions: their interfaces have distinct (versioned) names
        let mut linker = Linker::new(&engine);
        v1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| format!("cannot link the plugin host functions (0.1): {e}"))?;
        v2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| format!("cannot link the plugin host functions (0.2): {e}"))?;
        let filter_linker = crate::proxy_wasm::linker(&engine)
            .map_err(|e| format!("cannot link the Proxy-Wasm host functions: {e}"))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            filter_linker,
            cache: Mutex::new(HashMap::new()),
            clock: Once::new(),
            budget: Arc::new(MemoryBudget::new(DEFAULT_TOTAL_MEMORY)),
        }))
    }

    /// Starts the epoch clock the first time a plugin is loaded (a gateway without plugins has
    /// no clock). It runs on its own thread for as long as the engine lives. The gateway does
    /// not daemonize, so the thread is never lost to a fork.
    fn start_clock(self: &Arc<Self>) {
        self.clock.call_once(|| {
            let engine = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("gatehouse-plugin-clock".to_owned())
                .spawn(move || {
                    let tick = || match engine.upgrade() {
                        Some(e) => {
                            e.engine.increment_epoch();
                            true
                        }
                        None => false,
                    };
                    loop {
                        // a tick, then one fine tick later: a call that ran into the first has
                        // said so by then (`long_call_running`), and fine ticks go on while
                        // calls do; otherwise the clock sleeps the rest of the coarse period
                        std::thread::sleep(EPOCH_TICK);
                        if !tick() {
                            return;
                        }
                        if LONG_CALL.swap(false, Ordering::Relaxed) {
                            continue;
                        }
                        let coarse = Duration::from_micros(COARSE_MICROS.load(Ordering::Relaxed));
                        std::thread::sleep(coarse.saturating_sub(EPOCH_TICK));
                        if !tick() {
                            return;
                        }
                    }
                });
            if let Err(e) = started {
                log::error!("cannot start the plugin clock, time limits are not enforced: {e}");
            }
        });
    }

    /// The memory budget shared by every instance of this engine.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (once per key) and pre-links a component from its bytes.
    pub fn load(
        self: &Arc<Self>,
        key: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, LoadError>,
    ) -> Result<Arc<Component>, LoadError> {
        self.start_clock();
        if let Some(pre) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(pre.clone());
        }
        let bytes = bytes()?;
        self.compile(key, key, &bytes)
    }

    /// Compiles and pre-links `bytes`, caching the result under `key`; `name` names the source in
    /// errors.
    fn compile(&self, key: &str, name: &str, bytes: &[u8]) -> Result<Arc<Component>, LoadError> {
        let key_owned = key.to_owned();
        let key = name;
        // Only binary components: a text or other file is refused without quoting it.
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::Compile(
                key.to_owned(),
                "not a WebAssembly component (a binary component starts with \\0asm)".to_owned(),
            ));
        }
        // A core module (version 1 in the header): a Proxy-Wasm filter, or a module where a
        // component (layer 1) is wanted.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            let module = wasmtime::Module::new(&self.engine, bytes)
                .map_err(|e| LoadError::Compile(key.to_owned(), format!("{e:#}")))?;
            if !module
                .exports()
                .any(|e| e.name().starts_with("proxy_abi_version_"))
            {
                return Err(LoadError::Compile(
                    key.to_owned(),
                    "it is a core WebAssembly module, neither a component nor a Proxy-Wasm \
                     filter (which exports proxy_abi_version_0_2_1): build a plugin with the \
                     plugin SDK (plugins/README.md), or wrap it with `wasm-tools component new \
                     MODULE.wasm -o PLUGIN.wasm` if it implements the contract's world"
                        .to_owned(),
                ));
            }
            let filter = crate::proxy_wasm::link(&self.filter_linker, &module, key)?;
            let pre = Arc::new(Component::ProxyWasm(filter));
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key_owned, pre.clone());
            return Ok(pre);
        }
        let component = wasmtime::component::Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(key.to_owned(), format!("{e:#}")))?;
        // A component importing the contract's interfaces of another version only.
        let contract_imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.starts_with("gatehouse:plugin/"))
            .collect();
        let known = |name: &String| {
            CONTRACTS
                .iter()
                .any(|v| name.strip_suffix(v).is_some_and(|n| n.ends_with('@')))
        };
        if !contract_imports.is_empty() && !contract_imports.iter().any(known) {
            return Err(LoadError::Contract(
                key.to_owned(),
                contract_imports.join(", "),
            ));
        }
        // 0.2 components export `describe`, 0.1 ones do not; a component that is neither gets
        // 0.1's error, which says what is missing.
        let imports_v2 = component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name == "describe");
        let linked = self.linker.instantiate_pre(&component);
        let pre = if imports_v2 {
            linked
                .and_then(v2::PluginPre::new)
                .map(Component::V2)
                .map_err(|e| LoadError::Link(key.to_owned(), CONTRACTS[1], format!("{e:#}")))?
        } else {
            linked
                .and_then(v1::PluginPre::new)
                .map(Component::V1)
                .map_err(|e| LoadError::Link(key.to_owned(), CONTRACTS[0], format!("{e:#}")))?
        };
        let pre = Arc::new(pre);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_owned, pre.clone());
        Ok(pre)
    }

    /// Drops compiled components that no plugin slot uses any more (call after a new
    /// configuration is serving; components of one still finishing requests stay until the next
    /// call).
    pub fn prune(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, pre| key.starts_with("standard:") || Arc::strong_count(pre) > 1);
    }

    /// How many compiled components are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Loads a component file, read only from inside `roots`
    /// ([`gatehouse_config::files::read_confined`]).
    /// The file is read every time: a replaced file is compiled afresh, an unchanged one comes
    /// from the cache (by the hash of its bytes).
    pub fn load_file(
        self: &Arc<Self>,
        path: &std::path::Path,
        roots: &[std::path::PathBuf],
    ) -> Result<Arc<Component>, LoadError> {
        self.start_clock();
        let name = path.display().to_string();
        let bytes = gatehouse_config::files::read_confined(
            path,
            roots,
            gatehouse_config::files::MAX_COMPONENT_BYTES,
        )
        .map_err(|e| LoadError::Read(name.clone(), e))?;
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = format!("file:{digest}");
        if let Some(pre) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(pre.clone());
        }
        self.compile(&key, &name, &bytes)
    }
}
