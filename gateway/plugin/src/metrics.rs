//! Plugin metrics: call duration by plugin and hook, failures by plugin and reason.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, Histogram, HistogramVec, IntCounter,
    IntCounterVec,
};

use crate::slot::{Failure, Hook};

/// Plugin calls take microseconds; the top buckets catch runaway calls cut at the time limit.
const CALL_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
];

struct Families {
    calls: HistogramVec,
    failures: IntCounterVec,
    log_dropped: IntCounterVec,
    breaker_open: prometheus::IntGaugeVec,
    breaker_opened: IntCounterVec,
    unsupported: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    Families {
    calls: register_histogram_vec!(
        "gatehouse_plugin_call_duration_seconds",
        "Time spent in a plugin hook call (including instantiation when no warm instance was ready), by plugin and hook.",
        &["plugin", "hook"],
        CALL_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    failures: register_int_counter_vec!(
        "gatehouse_plugin_failures_total",
        "Plugin calls that failed, by plugin and reason (trap, timeout, memory, error, invalid_output, instantiate, forbidden_header, header_limit, breaker_open).",
        &["plugin", "reason"]
    )
    .expect("metric registers once"),
    breaker_open: prometheus::register_int_gauge_vec!(
        "gatehouse_plugin_breaker_open",
        "1 while a plugin use's breaker is open (its calls fail at once), by plugin.",
        &["plugin"]
    )
    .expect("metric registers once"),
    breaker_opened: register_int_counter_vec!(
        "gatehouse_plugin_breaker_opened_total",
        "Times a plugin's breaker opened after it failed on every call, by plugin.",
        &["plugin"]
    )
    .expect("metric registers once"),
    unsupported: register_int_counter_vec!(
        "gatehouse_proxy_wasm_unsupported_calls_total",
        "Calls a Proxy-Wasm filter made to ABI functions the gateway does not provide, or did not grant to its use (answered with an error status), by plugin and function.",
        &["plugin", "function"]
    )
    .expect("metric registers once"),
    log_dropped: register_int_counter_vec!(
        "gatehouse_plugin_log_lines_dropped_total",
        "Log lines a plugin wrote past its budget (50 per second per plugin use), by plugin.",
        &["plugin"]
    )
    .expect("metric registers once"),
}
});

/// Pre-resolved series of one plugin.
pub struct PluginMetrics {
    calls: [Histogram; Hook::ALL.len()],
    failures: [IntCounter; Failure::REASONS.len()],
}

/// The breaker gauge and counter of a plugin.
pub fn breaker(plugin: &str) -> (prometheus::IntGauge, IntCounter) {
    (
        FAMILIES.breaker_open.with_label_values(&[plugin]),
        FAMILIES.breaker_opened.with_label_values(&[plugin]),
    )
}

/// The dropped-log-lines counter of a plugin.
pub fn log_dropped(plugin: &str) -> IntCounter {
    FAMILIES.log_dropped.with_label_values(&[plugin])
}

/// Counts a call of a Proxy-Wasm ABI function the gateway does not provide.
pub fn proxy_wasm_unsupported(plugin: &str, function: &str) {
    FAMILIES
        .unsupported
        .with_label_values(&[plugin, function])
        .inc();
}

/// Removes the series of a plugin that no API uses any more.
pub fn forget(plugin: &str) {
    let f = &*FAMILIES;
    let _ = f.log_dropped.remove_label_values(&[plugin]);
    let _ = f.breaker_open.remove_label_values(&[plugin]);
    let _ = f.breaker_opened.remove_label_values(&[plugin]);
    for hook in Hook::ALL {
        let _ = f.calls.remove_label_values(&[plugin, hook.as_str()]);
    }
    for reason in Failure::REASONS {
        let _ = f.failures.remove_label_values(&[plugin, reason]);
    }
    crate::proxy_wasm::shared::forget(plugin);
    for function in crate::proxy_wasm::abi::ABI_FUNCTIONS {
        let _ = f.unsupported.remove_label_values(&[plugin, function]);
    }
}

impl PluginMetrics {
    pub fn new(plugin: &str) -> Self {
        let f = &*FAMILIES;
        Self {
            calls: Hook::ALL.map(|h| f.calls.with_label_values(&[plugin, h.as_str()])),
            failures: Failure::REASONS.map(|r| f.failures.with_label_values(&[plugin, r])),
        }
    }

    pub fn call(&self, hook: Hook, seconds: f64) {
        self.calls[hook as usize].observe(seconds);
    }

    pub fn failure(&self, failure: &Failure) {
        self.failures[failure.reason_index()].inc();
    }
}
