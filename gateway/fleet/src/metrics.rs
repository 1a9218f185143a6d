//! Metrics of the configuration source.

use once_cell::sync::Lazy;
use prometheus::{register_int_counter, register_int_gauge, IntCounter, IntGauge};

pub struct SourceMetrics {
    /// 1 while the instance is connected to etcd and following it.
    pub up: IntGauge,
    /// The configuration revision served.
    pub revision: IntGauge,
    /// Revisions refused because they were not a valid configuration.
    pub refused: IntCounter,
    /// Whole-state reads after a lost watch.
    pub resyncs: IntCounter,
}

pub static SOURCE_METRICS: Lazy<SourceMetrics> = Lazy::new(|| SourceMetrics {
    up: register_int_gauge!(
        "gatehouse_config_source_up",
        "1 while the shared configuration's etcd is reachable and followed, 0 otherwise"
    )
    .expect("metric registers"),
    revision: register_int_gauge!(
        "gatehouse_config_source_revision",
        "etcd revision of the shared configuration being served"
    )
    .expect("metric registers"),
    refused: register_int_counter!(
        "gatehouse_config_revisions_refused_total",
        "configuration revisions from etcd refused as invalid (the last good one keeps serving)"
    )
    .expect("metric registers"),
    resyncs: register_int_counter!(
        "gatehouse_config_source_resyncs_total",
        "whole-state reads of the shared configuration after a lost or compacted watch"
    )
    .expect("metric registers"),
});
