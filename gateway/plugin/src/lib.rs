//! The Gatehouse plugin host: runs WebAssembly component plugins (the `wit/` contract) on the
//! request path, each sandboxed.
//!
//! One [`PluginEngine`] per process compiles components once (never on the request path) and
//! pre-links them. Each plugin use on an API is a [`PluginSlot`] with its own configuration and a
//! lock-free pool of warm instances; a [`PluginChain`] runs an API's slots in order. A plugin has
//! no WASI: no files, network, environment or clock beyond the WIT's `host` interface. Every
//! instance has a memory limit, every call a deadline enforced by epoch interruption; a plugin
//! that traps, times out or exceeds its memory fails only the call, and its instance is thrown
//! away.
//!
//! This crate knows HTTP headers (`pingora-http`) but not the proxy.

pub mod bindings;
pub mod budget;
pub mod counters;
pub mod engine;
pub mod grants;
pub mod metrics;
pub mod proxy_wasm;
pub mod slot;

pub use bindings::{EditLimits, MemoryBudget, Node, NodeChoice, Reply, SteerTo};
pub use engine::{
    release_freed_memory, set_release_freed_memory, Component, LoadError, PluginEngine,
    COARSE_TICK, EPOCH_TICK,
};
pub use grants::{Grants, Needs};
pub use slot::filters::{Stream, Streams};
pub use slot::{
    Failure, GrantedBy, HeldInstance, Hook, PluginConfig, PluginSlot, RequestOutcome, SlotLimits,
};
pub mod standard;
#[cfg(feature = "testing")]
pub mod testing;
