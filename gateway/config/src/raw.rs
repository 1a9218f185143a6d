//! The configuration file as written: serde types that mirror the YAML one to one.
//!
//! Nothing here is checked beyond its shape. Numbers are read wide (`i64`) and choices as strings so
//! that an out-of-range port or a misspelt protocol becomes a [`crate::Problem`] with its path, reported
//! together with every other problem, instead of stopping the parse at the first one. Unknown keys are
//! refused: a typo must fail, not be silently ignored.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub instance: RawInstance,
    #[serde(default)]
    pub vpcs: Vec<RawVpc>,
    #[serde(default)]
    pub connections: Vec<Vec<String>>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub services: Vec<RawService>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub vpc: String,
    pub listen: Vec<String>,
    pub metrics: Option<String>,
    pub threads: Option<i64>,
    /// How often node host names are resolved again, e.g. `30s`.
    pub dns_refresh: Option<String>,
    /// Sandbox limits of WebAssembly plugins.
    pub plugins: Option<RawPluginLimits>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    /// Linear memory one plugin instance may use, e.g. `16MiB`.
    pub memory_limit: Option<String>,
    /// Longest a single hook call may run, e.g. `10ms`.
    pub time_limit: Option<String>,
    /// Reuse warm instances between calls (`true`), or instantiate afresh for every call.
    pub reuse_instances: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVpc {
    pub id: String,
    #[serde(default)]
    pub cidrs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub name: String,
    pub vpc: String,
    pub description: Option<String>,
    pub algorithm: Option<String>,
    pub protocol: String,
    pub host_header: Option<String>,
    pub retries: Option<i64>,
    pub connect_timeout: Option<String>,
    /// How long a node that failed to connect is left out, e.g. `10s`; `0s` never leaves it out.
    pub unhealthy_timeout: Option<String>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub verify: Option<bool>,
    pub ca_file: Option<String>,
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub host: String,
    pub port: i64,
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub apis: Vec<RawApi>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub name: String,
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub backend: RawBackend,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
}

/// A plugin on an API: a standard plugin by `name`, or a component file by `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Option<String>,
    pub path: Option<String>,
    /// Handed to the plugin as JSON.
    pub config: Option<serde_yaml::Value>,
    pub on_error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub upstream: Option<String>,
    pub path: Option<String>,
    pub timeout: Option<String>,
    pub response: Option<RawFixedResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFixedResponse {
    pub status: Option<i64>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}
