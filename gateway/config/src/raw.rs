//! The configuration file as written: serde types that mirror the YAML one to one.
//!
//! Nothing here is checked beyond its shape. Numbers are read wide (`i64`) and choices as strings so
//! that an out-of-range port or a misspelt protocol becomes a [`crate::Problem`] with its path, reported
//! together with every other problem, instead of stopping the parse at the first one. Unknown keys are
//! refused: a typo must fail, not be silently ignored.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub instance: RawInstance,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub vpcs: Vec<RawVpc>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub connections: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub services: Vec<RawService>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub vpc: String,
    pub listen: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i64>,
    /// How often node host names are resolved again, e.g. `30s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<String>,
    /// Sandbox limits of WebAssembly plugins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins: Option<RawPluginLimits>,
    /// Address of the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Bearer token of the admin API (the `GATEHOUSE_ADMIN_TOKEN` environment variable wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// How client requests are read, normalised and bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<RawHttp>,
    /// TLS certificate and key of the admin listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<RawCertFiles>,
    /// Client addresses (CIDRs) allowed to reach the admin API; empty allows any.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub admin_allow: Vec<String>,
    /// Folders the files the configuration names may be read from.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub file_roots: Vec<String>,
    /// One line per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<RawAccessLog>,
    /// Listeners that terminate TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawListenerTls>,
    /// Where a new process takes the listening sockets over from this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<String>,
    /// Longest requests in flight may take to finish once the gateway stops, e.g. `30s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// Longest the two processes of an upgrade wait for each other, e.g. `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_timeout: Option<String>,
    /// Take the shared configuration (VPCs, connections, upstreams, services) from etcd instead
    /// of this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<RawEtcd>,
}

/// Where a fleet's shared configuration lives: an etcd v3 cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    pub endpoints: Vec<String>,
    /// Key prefix of the configuration, e.g. `/gatehouse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password, as `${NAME}` (an environment variable); or `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawEtcdTls>,
    /// Folder of the last good configuration and the files it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// Longest one etcd request may take, e.g. `5s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// TLS to etcd: the CA that signed its certificates, and a client certificate if it wants one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// TLS listeners: addresses and the certificates they choose from by SNI.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub listen: Vec<String>,
    pub certificates: Vec<RawCertFiles>,
    /// Offer HTTP/2 by ALPN (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
}

/// The access log of an instance.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `json` or `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A file to append to; standard output without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Share of requests logged, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
}

/// An API's access log choice: on, off, or the share of its requests logged.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawLogChoice {
    Switch(bool),
    Share(f64),
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertFiles {
    pub cert_file: String,
    pub key_file: String,
}

/// Client-facing HTTP options of the proxy listeners.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_encoded_slashes: Option<bool>,
    /// Peers whose forwarding headers are kept and extended (CIDRs).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub trusted_proxies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2c: Option<bool>,
    /// Streams one HTTP/2 connection may have open at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_concurrent_streams: Option<i64>,
    /// Streams a client may reset before the server sees them, before the connection is closed
    /// (protection against rapid resets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_pending_resets: Option<i64>,
    /// Streams of one HTTP/2 connection that may be receiving their request body at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_max_pending_bodies: Option<i64>,
    /// `drop`, `reject` or `allow` request header names with an underscore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underscores_in_headers: Option<String>,
    /// Read buffer of each client connection of the plain listeners (`0`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_buffer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    /// Linear memory one plugin instance may use, e.g. `16MiB`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// Longest a single hook call may run, e.g. `10ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// Reuse warm instances between calls (`true`), or instantiate afresh for every call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse_instances: Option<bool>,
    /// Linear memory all plugin instances together may use, e.g. `1GiB`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<String>,
    /// Most headers one hook call may add or set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_added_headers: Option<i64>,
    /// Most header bytes one hook call may add or set, e.g. `16KiB`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_added_header_bytes: Option<String>,
    /// Most keys of one plugin use's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter_keys: Option<i64>,
    /// Most memory a plugin use may ask for with its own `memory_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_limit: Option<String>,
    /// Longest time limit a plugin use may ask for with its own `time_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time_limit: Option<String>,
    /// Largest request or response body a plugin use reads, e.g. `64KiB` (its default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<String>,
    /// Largest body limit a plugin use may ask for with its own `body_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_limit: Option<String>,
    /// The environment variables `${NAME}` in a plugin's secret keys may read: names, or
    /// prefixes ending in `*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVpc {
    pub id: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub cidrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub name: String,
    pub vpc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// How long a node that failed to connect is left out, e.g. `10s`; `0s` never leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_timeout: Option<String>,
    /// Statuses that count as a failed attempt and are retried on another node (idempotent
    /// requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_statuses: Option<Vec<i64>>,
    /// Total time all attempts of one request may take, e.g. `15s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<String>,
    /// Speak HTTP/2 to the nodes: by ALPN over TLS (falling back to HTTP/1.1), with prior
    /// knowledge (h2c) over plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    /// How long an idle connection to a node is kept for reuse, e.g. `4s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<String>,
    /// Active and passive health checks of the nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub nodes: Vec<RawNode>,
}

/// An upstream's health checks, one flat map (the product's health checker fields).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Probe every node in the background.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Count the outcomes of real requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<bool>,
    /// Path (and query) of the probe request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Headers of the probe request.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_statuses: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_statuses: Option<Vec<i64>>,
    /// Consecutive failed connections that take a node out (0 = never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_failures: Option<i64>,
    /// Consecutive timeouts that take a node out (0 = never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<i64>,
    /// Consecutive responses with an unhealthy status that take a node out (0 = never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_failures: Option<i64>,
    /// Consecutive healthy probes that bring a node back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
}

fn is_empty_map<K, V>(m: &std::collections::BTreeMap<K, V>) -> bool {
    m.is_empty()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Client certificate chain and key presented to nodes that require one (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub host: String,
    pub port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Labels plugins steer requests by (`canary`).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub apis: Vec<RawApi>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub name: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Methods outside the standard set this API accepts (e.g. `PROPFIND`).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub extension_methods: Vec<String>,
    /// Largest request body, overriding `instance.http.max_body_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    pub backend: RawBackend,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub plugins: Vec<RawPlugin>,
    /// Overrides the instance's access log for this API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<RawLogChoice>,
    /// Passes WebSocket upgrades through to the node (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<bool>,
    /// Carries gRPC calls (default false): checked at load for what gRPC needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<bool>,
}

/// A plugin on an API: a standard plugin by `name`, or a component file by `path`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Handed to the plugin as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_yaml::Value>,
    /// Keys of `config` (dotted for nested ones) that hold secrets, never shown by the admin API.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub secret_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// Linear memory one instance of this plugin use may have, e.g. `4MiB` (instead of
    /// `instance.plugins.memory_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// Longest one hook call of this plugin use may run, e.g. `50ms` (instead of
    /// `instance.plugins.time_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// Largest body this plugin use reads, e.g. `256KiB` (instead of
    /// `instance.plugins.body_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<String>,
    /// What this plugin use may touch; see [`RawGrants`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<RawGrants>,
    /// A Proxy-Wasm filter's root id (Envoy's `root_id`): which of its root contexts serves
    /// this use. Empty by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// A Proxy-Wasm filter's VM configuration (Envoy's `vm_config.configuration`): text as it is,
    /// or a map as JSON. Empty by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_yaml::Value>,
}

/// What a plugin use may touch: hooks, headers by name or prefix, bodies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// Hooks the gateway may call (default: on-request, on-upstream-request, on-response, and
    /// on-response-body with response_body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<RawHeaderGrant>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<RawHeaderGrant>,
    /// The whole request body, to read and replace (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<bool>,
    /// The whole response body, to read and replace (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<bool>,
    /// Choosing the nodes that may serve a request and its retries (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_steering: Option<bool>,
    /// Counters shared by the instances of the plugin use (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<bool>,
}

/// Headers of one message: names (`authorization`), prefixes (`x-tenant-*`) or `*`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderGrant {
    #[serde(default, skip_serializing_if = "is_empty")]
    pub read: Vec<String>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub write: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<RawFixedResponse>,
    /// When the API was bound to its upstream (RFC 3339), recorded by the admin API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFixedResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

/// Empty collections are left out when a configuration is written back.
fn is_empty<T>(value: &T) -> bool
where
    for<'a> &'a T: IntoIterator,
{
    value.into_iter().next().is_none()
}
