//! Prometheus metrics of the gateway and the endpoint that serves them (`GET /metrics`).
//!
//! Every metric is registered once in the process-wide registry. The request path never looks a
//! label set up: the label children it touches (per API, per node) are resolved when a runtime
//! snapshot is built, so counting a request is an atomic add.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, TextEncoder,
};

/// Request duration buckets, in seconds: sub-millisecond resolution for a gateway in front of fast
/// private services, up to the default backend timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The gateway's metric families.
pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_attempts: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub egress_denied: IntCounterVec,
    pub node_ejections: IntCounterVec,
    pub node_probations: IntCounterVec,
    pub node_available: IntGaugeVec,
    pub node_healthy: IntGaugeVec,
    pub node_transitions: IntCounterVec,
    pub probes: IntCounterVec,
    pub upstream_panic: IntGaugeVec,
    pub panic_requests: IntCounterVec,
    pub steered_requests: IntCounterVec,
    pub websocket_open: IntGauge,
    pub in_flight: IntGauge,
    pub websocket_upgrades: IntCounter,
    pub config_info: IntGaugeVec,
    pub config_generation: IntGauge,
    pub config_applied: Gauge,
}

/// The process-wide metrics.
pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    Metrics {
    requests: register_int_counter_vec!(
        "gatehouse_requests_total",
        "Requests answered, by service, API, upstream and status class (1xx..5xx; none when the client left before a response).",
        &["service", "api", "upstream", "status_class"]
    )
    .expect("metric registers once"),
    request_duration: register_histogram_vec!(
        "gatehouse_request_duration_seconds",
        "Time from reading the request header to the end of the response, by service and API.",
        &["service", "api"],
        DURATION_BUCKETS.to_vec()
    )
    .expect("metric registers once"),
    upstream_attempts: register_int_counter_vec!(
        "gatehouse_upstream_attempts_total",
        "Attempts to send a request to a node, by upstream, node and outcome.",
        &["upstream", "node", "outcome"]
    )
    .expect("metric registers once"),
    upstream_retries: register_int_counter_vec!(
        "gatehouse_upstream_retries_total",
        "Requests sent to another node after a failed attempt, by upstream.",
        &["upstream"]
    )
    .expect("metric registers once"),
    egress_denied: register_int_counter_vec!(
        "gatehouse_egress_denied_total",
        "Addresses a node's host name resolved to outside its upstream's VPC, which the gateway refused to use.",
        &["upstream", "node"]
    )
    .expect("metric registers once"),
    node_ejections: register_int_counter_vec!(
        "gatehouse_upstream_node_ejections_total",
        "Times a node was taken out of rotation by health checks (passive or active), by upstream and node.",
        &["upstream", "node"]
    )
    .expect("metric registers once"),
    node_probations: register_int_counter_vec!(
        "gatehouse_upstream_node_probations_total",
        "Times a node's recovery time passed and one trial request was let through to decide whether it is back (passive checks only), by upstream and node.",
        &["upstream", "node"]
    )
    .expect("metric registers once"),
    node_available: register_int_gauge_vec!(
        "gatehouse_upstream_node_available",
        "1 when the node has an address inside its VPC to connect to, 0 when not (name not resolved, or only outside the VPC).",
        &["upstream", "node"]
    )
    .expect("metric registers once"),
    node_healthy: register_int_gauge_vec!(
        "gatehouse_upstream_node_healthy",
        "1 when the node receives requests (HEALTHY, NO_DATA or OFF, with an address), 0 when health checks took it out or it has no address.",
        &["upstream", "node"]
    )
    .expect("metric registers once"),
    node_transitions: register_int_counter_vec!(
        "gatehouse_upstream_node_health_transitions_total",
        "Changes of a node's health state, by upstream, node and the state entered (HEALTHY, UNHEALTHY).",
        &["upstream", "node", "state"]
    )
    .expect("metric registers once"),
    probes: register_int_counter_vec!(
        "gatehouse_upstream_probes_total",
        "Active health check probes, by upstream, node and result (healthy, unhealthy_status, other_status, timeout, connect_error).",
        &["upstream", "node", "result"]
    )
    .expect("metric registers once"),
    upstream_panic: register_int_gauge_vec!(
        "gatehouse_upstream_panic",
        "1 while every node of the upstream is unhealthy and requests are spread over all of them anyway (panic mode).",
        &["upstream"]
    )
    .expect("metric registers once"),
    panic_requests: register_int_counter_vec!(
        "gatehouse_upstream_panic_requests_total",
        "Requests sent while the upstream was in panic mode (every node unhealthy), by upstream.",
        &["upstream"]
    )
    .expect("metric registers once"),
    steered_requests: register_int_counter_vec!(
        "gatehouse_upstream_steered_requests_total",
        "Requests a plugin steered, by upstream and outcome: steered (to an allowed node), \
         fallback (no allowed node could take it: another node did) or refused (503).",
        &["upstream", "outcome"]
    )
    .expect("metric registers once"),
    in_flight: register_int_gauge!(
        "gatehouse_requests_in_flight",
        "Requests being served (from their header to the end of their response)."
    )
    .expect("metric registers once"),
    websocket_open: register_int_gauge!(
        "gatehouse_websocket_connections",
        "WebSocket (upgraded) connections open through the gateway."
    )
    .expect("metric registers once"),
    websocket_upgrades: prometheus::register_int_counter!(
        "gatehouse_websocket_upgrades_total",
        "Connections a node switched to WebSocket (101 Switching Protocols)."
    )
    .expect("metric registers once"),
    config_info: register_int_gauge_vec!(
        "gatehouse_config_info",
        "Always 1; labels identify the configuration being served.",
        &["instance", "hash"]
    )
    .expect("metric registers once"),
    config_generation: register_int_gauge!(
        "gatehouse_config_generation",
        "Generation of the configuration being served, 1 for the one loaded at start."
    )
    .expect("metric registers once"),
    config_applied: register_gauge!(
        "gatehouse_config_applied_timestamp_seconds",
        "Unix time at which the configuration being served was applied."
    )
    .expect("metric registers once"),
}
});

/// Status classes in label order: index `status / 100`, 0 for no response.
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Pre-resolved counters for the requests of one API (or of unrouted requests).
#[derive(Clone)]
pub struct RequestMetrics {
    by_class: [IntCounter; 6],
    duration: Histogram,
}

impl RequestMetrics {
    pub fn new(service: &str, api: &str, upstream: &str) -> Self {
        let m = &*METRICS;
        Self {
            by_class: STATUS_CLASSES.map(|class| {
                m.requests
                    .with_label_values(&[service, api, upstream, class])
            }),
            duration: m.request_duration.with_label_values(&[service, api]),
        }
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100);
        self.by_class[if (1..=5).contains(&class) { class } else { 0 }].inc();
        self.duration.observe(seconds);
    }
}

/// How an attempt on a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered with a response header.
    Ok,
    /// The connection could not be made (refused, unreachable, reset).
    ConnectError,
    /// The connection (or TLS handshake) did not complete within the connect timeout.
    ConnectTimeout,
    /// The TLS handshake failed (certificate, name, protocol).
    TlsError,
    /// Connected, but no response header within the backend timeout.
    ResponseTimeout,
    /// Connected, but the connection broke before a complete response.
    Broken,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::ConnectError,
        Outcome::ConnectTimeout,
        Outcome::TlsError,
        Outcome::ResponseTimeout,
        Outcome::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ConnectError => "connect_error",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::TlsError => "tls_error",
            Outcome::ResponseTimeout => "response_timeout",
            Outcome::Broken => "broken",
        }
    }
}

/// Pre-resolved counters of one node.
pub struct NodeMetrics {
    attempts: [IntCounter; 6],
    pub egress_denied: IntCounter,
    pub ejections: IntCounter,
    pub probations: IntCounter,
    pub available: IntGauge,
    pub healthy: IntGauge,
    /// Entering HEALTHY, entering UNHEALTHY.
    pub became: [IntCounter; 2],
    /// By [`PROBE_RESULTS`].
    pub probes: [IntCounter; 5],
}

/// Results of an active probe, in the order of [`NodeMetrics::probes`].
pub const PROBE_RESULTS: [&str; 5] = [
    "healthy",
    "unhealthy_status",
    "other_status",
    "timeout",
    "connect_error",
];

impl NodeMetrics {
    pub fn new(upstream: &str, node: &str) -> Self {
        let m = &*METRICS;
        Self {
            attempts: Outcome::ALL.map(|o| {
                m.upstream_attempts
                    .with_label_values(&[upstream, node, o.as_str()])
            }),
            egress_denied: m.egress_denied.with_label_values(&[upstream, node]),
            ejections: m.node_ejections.with_label_values(&[upstream, node]),
            probations: m.node_probations.with_label_values(&[upstream, node]),
            available: m.node_available.with_label_values(&[upstream, node]),
            healthy: m.node_healthy.with_label_values(&[upstream, node]),
            became: ["HEALTHY", "UNHEALTHY"].map(|state| {
                m.node_transitions
                    .with_label_values(&[upstream, node, state])
            }),
            probes: PROBE_RESULTS.map(|r| m.probes.with_label_values(&[upstream, node, r])),
        }
    }

    pub fn attempt(&self, outcome: Outcome) {
        self.attempts[outcome as usize].inc();
    }
}

/// Records that a configuration is now served.
/// Removes the request series of an API that no configuration serves any more.
pub fn forget_api(service: &str, api: &str, upstream: &str, duration_too: bool) {
    let m = &*METRICS;
    for class in STATUS_CLASSES {
        let _ = m
            .requests
            .remove_label_values(&[service, api, upstream, class]);
    }
    if duration_too {
        let _ = m.request_duration.remove_label_values(&[service, api]);
    }
}

/// Removes the series of a node that no configuration has any more.
pub fn forget_node(upstream: &str, node: &str) {
    let m = &*METRICS;
    for outcome in Outcome::ALL {
        let _ = m
            .upstream_attempts
            .remove_label_values(&[upstream, node, outcome.as_str()]);
    }
    let _ = m.egress_denied.remove_label_values(&[upstream, node]);
    let _ = m.node_ejections.remove_label_values(&[upstream, node]);
    let _ = m.node_probations.remove_label_values(&[upstream, node]);
    let _ = m.node_available.remove_label_values(&[upstream, node]);
    let _ = m.node_healthy.remove_label_values(&[upstream, node]);
    for state in ["HEALTHY", "UNHEALTHY"] {
        let _ = m
            .node_transitions
            .remove_label_values(&[upstream, node, state]);
    }
    for result in PROBE_RESULTS {
        let _ = m.probes.remove_label_values(&[upstream, node, result]);
    }
}

/// Removes the series of an upstream that no configuration has any more.
pub fn forget_upstream(upstream: &str) {
    let _ = METRICS.upstream_retries.remove_label_values(&[upstream]);
    let _ = METRICS.upstream_panic.remove_label_values(&[upstream]);
    let _ = METRICS.panic_requests.remove_label_values(&[upstream]);
    for outcome in STEER_OUTCOMES {
        let _ = METRICS
            .steered_requests
            .remove_label_values(&[upstream, outcome]);
    }
}

/// The `outcome` labels of `gatehouse_upstream_steered_requests_total`, in
/// [`crate::upstream::UpstreamRuntime`]'s order.
pub const STEER_OUTCOMES: [&str; 3] = ["steered", "fallback", "refused"];

pub fn config_applied(instance: &str, hash: &str, generation: u64) {
    let m = &*METRICS;
    m.config_info.reset();
    m.config_info.with_label_values(&[instance, hash]).set(1);
    m.config_generation.set(generation as i64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    m.config_applied.set(now);
}

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> Vec<u8> {
    Lazy::force(&METRICS);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}

/// The `/metrics` endpoint.
pub struct MetricsApp;

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, content_type, body) = if path == "/metrics" {
            (200, TextEncoder::new().format_type().to_owned(), render())
        } else {
            (
                404,
                "application/json".to_owned(),
                br#"{"status":404,"error":"not_found","message":"metrics are served at /metrics"}"#
                    .to_vec(),
            )
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
