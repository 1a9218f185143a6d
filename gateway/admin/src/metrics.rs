//! Admin and reload metrics.

use once_cell::sync::Lazy;
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};

pub struct AdminMetrics {
    pub requests: IntCounterVec,
    pub reloads_ok: IntCounter,
    pub reloads_failed: IntCounter,
}

pub static ADMIN_METRICS: Lazy<AdminMetrics> = Lazy::new(|| {
    let reloads = register_int_counter_vec!(
        "gatehouse_config_reloads_total",
        "Re-reads of the configuration file (SIGHUP or POST /reload), by result (ok, error).",
        &["result"]
    )
    .expect("metric registers once");
    AdminMetrics {
        requests: register_int_counter_vec!(
            "gatehouse_admin_requests_total",
            "Admin API requests, by route and status code.",
            &["route", "status"]
        )
        .expect("metric registers once"),
        reloads_ok: reloads.with_label_values(&["ok"]),
        reloads_failed: reloads.with_label_values(&["error"]),
    }
});
