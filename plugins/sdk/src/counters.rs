//! Counters the gateway keeps for the plugin use, shared by all of its instances in the process
//! (needs [`Needs::counters`](crate::Needs::counters)). Per gateway process: a fleet of N
//! gateways allows N times a limit counted here.
//!
//! A counter counts in fixed windows aligned to the clock (a 60 s window starts on each full
//! minute); windows are 1 s to 1 day, keys 1 to 256 bytes, and a key keeps the window it was
//! first counted with. When the gateway's table of keys is full and every counter is still in
//! its window, [`increment`] of a new key returns an error. Off `wasm32` the counters live in the
//! test thread.

/// A counter's value in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The count in the current window.
    pub count: u64,
    /// Milliseconds until the window ends and the count starts again from zero.
    pub resets_in_ms: u64,
}

/// Adds `delta` to counter `key` in windows of `window_ms`; returns its window after.
pub fn increment(key: &str, delta: u64, window_ms: u64) -> Result<Window, String> {
    #[cfg(target_arch = "wasm32")]
    return crate::guest::counter_increment(key, delta, window_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::double::counter_increment(key, delta, window_ms);
}

/// Counter `key`'s current window, unchanged (a key never counted has 0).
pub fn get(key: &str, window_ms: u64) -> Result<Window, String> {
    #[cfg(target_arch = "wasm32")]
    return crate::guest::counter_get(key, window_ms);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::double::counter_get(key, window_ms);
}
