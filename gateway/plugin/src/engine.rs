//! The process-wide wasmtime engine: compilation, pre-linking, the epoch clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{HostState, Plugin, PluginPre};

/// How often the epoch advances. Call deadlines are counted in these ticks, so a deadline is
/// enforced to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Instance slots reserved by the pooling allocator. Warm instances are kept per plugin use, so
/// this bounds plugin uses × concurrency; beyond it the engine falls back to on-demand allocation.
const POOLED_INSTANCES: u32 = 1000;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} {1}")]
    Read(String, gatehouse_config::files::FileError),
    #[error("{0} is not a usable WebAssembly component: {1}")]
    Compile(String, String),
    #[error("{0} does not implement the gatehouse:plugin@0.1.0 world: {1}")]
    Link(String, String),
}

/// Compiles and pre-links components once; shared by every slot.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
    /// Compiled and linked components by source key (file path or standard name).
    cache: Mutex<HashMap<String, PluginPre<HostState>>>,
}

impl PluginEngine {
    /// Builds the engine. Instances may use up to `max_memory` bytes; each store's own limit
    /// (the configured `memory_limit`) is enforced below that.
    pub fn new(max_memory: u64) -> Result<Arc<Self>, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let mut pooling = PoolingAllocationConfig::new();
        pooling.total_component_instances(POOLED_INSTANCES);
        pooling.total_core_instances(POOLED_INSTANCES);
        pooling.total_memories(POOLED_INSTANCES);
        pooling.total_tables(POOLED_INSTANCES);
        pooling.max_memory_size(max_memory as usize);
        // Pages a warm instance touched stay mapped, so the next instantiation in the slot is cheap.
        pooling.linear_memory_keep_resident(128 * 1024);
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = match Engine::new(&pooled) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("plugin engine: pooling allocator unavailable ({e}); allocating instances on demand");
                Engine::new(&config).map_err(|e| format!("cannot create the plugin engine: {e}"))?
            }
        };
        let mut linker = Linker::new(&engine);
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| format!("cannot link the plugin host functions: {e}"))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Advances the epoch by one tick; call every [`EPOCH_TICK`] from one background task.
    pub fn tick(&self) {
        self.engine.increment_epoch();
    }

    /// Compiles (once per key) and pre-links a component from its bytes.
    pub fn load(
        &self,
        key: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, LoadError>,
    ) -> Result<PluginPre<HostState>, LoadError> {
        if let Some(pre) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(pre.clone());
        }
        let bytes = bytes()?;
        // Only binary components: a text or other file is refused without quoting it.
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::Compile(
                key.to_owned(),
                "not a WebAssembly component (a binary component starts with \\0asm)".to_owned(),
            ));
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| LoadError::Compile(key.to_owned(), format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| LoadError::Link(key.to_owned(), format!("{e:#}")))?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), pre.clone());
        Ok(pre)
    }

    /// Loads a component file, read only from inside `roots`
    /// ([`gatehouse_config::files::read_confined`]).
    pub fn load_file(
        &self,
        path: &std::path::Path,
        roots: &[std::path::PathBuf],
    ) -> Result<PluginPre<HostState>, LoadError> {
        let key = path.display().to_string();
        self.load(&key, || {
            gatehouse_config::files::read_confined(
                path,
                roots,
                gatehouse_config::files::MAX_COMPONENT_BYTES,
            )
            .map_err(|e| LoadError::Read(key.clone(), e))
        })
    }
}
