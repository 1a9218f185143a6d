//! The runtime snapshot: everything the request path reads, built from one validated
//! configuration and published as a whole.
//!
//! A request loads the current snapshot once and uses it to the end, so a configuration change is
//! one atomic pointer swap: requests in flight finish on the snapshot they started with. Upstreams
//! whose configuration did not change are carried over into the next snapshot with their selector
//! position and node addresses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use gatehouse_config::{Backend, Config, PathTemplate, Problem};
use http::{HeaderName, HeaderValue};

use gatehouse_plugin_host::PluginEngine;

use crate::access::AccessLog;
use crate::metrics::{config_applied, RequestMetrics};
use crate::plugins::ApiPlugins;
use crate::route::Router;
use crate::upstream::UpstreamRuntime;

/// One API at run time.
pub struct ApiRuntime {
    pub service: String,
    pub name: String,
    pub backend: ApiBackend,
    pub plugins: Arc<ApiPlugins>,
    pub metrics: RequestMetrics,
    /// Largest request body, in bytes (the API's own or `instance.http.max_body_size`).
    pub max_body_size: u64,
    /// WebSocket upgrades pass through to the node.
    pub websocket: bool,
    /// Share of its requests the access log gets, and their count (for even sampling).
    pub access_share: f64,
    pub access_counter: std::sync::atomic::AtomicU64,
}

pub enum ApiBackend {
    Upstream {
        /// Index into [`Runtime::upstreams`].
        upstream: usize,
        path: Option<PathTemplate>,
        timeout: Duration,
    },
    Fixed(FixedAnswer),
}

/// A response the gateway gives itself.
pub struct FixedAnswer {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Everything the request path reads.
pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub apis: Box<[ApiRuntime]>,
    pub upstreams: Box<[Arc<UpstreamRuntime>]>,
    /// Counters for requests that matched no API.
    pub unrouted: RequestMetrics,
    /// The certificates of the TLS listeners.
    pub certificates: Option<Arc<crate::tls::Certificates>>,
    /// The access log, when any request is logged.
    pub access: Option<Arc<AccessLog>>,
    pub unrouted_access_share: f64,
    pub unrouted_access_counter: std::sync::atomic::AtomicU64,
}

impl Runtime {
    /// Builds a snapshot. Reads CA files and resolves node names, so call it off the request
    /// path. Upstreams unchanged since `previous` are reused as they are.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Runtime>,
        engine: &Arc<PluginEngine>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        engine
            .memory_budget()
            .set_limit(config.instance.plugin_limits.total_memory);
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for (i, u) in config.upstreams.iter().enumerate() {
            let reused = previous.and_then(|p| p.upstreams.iter().find(|old| old.same_config(u)));
            match reused {
                Some(old) => upstreams.push(old.clone()),
                None => match UpstreamRuntime::build(
                    u,
                    &format!("upstreams[{i}]"),
                    &config.instance.file_roots,
                ) {
                    Ok(built) => {
                        if let Some(old) =
                            previous.and_then(|p| p.upstreams.iter().find(|old| old.name == u.name))
                        {
                            built.inherit_health(old);
                        }
                        upstreams.push(Arc::new(built))
                    }
                    Err(mut p) => problems.append(&mut p),
                },
            }
        }
        // Plugin chains of the previous snapshot, by (service, API), to keep unchanged ones warm.
        let previous_plugins: HashMap<(&str, &str), &Arc<ApiPlugins>> = previous
            .map(|p| {
                p.apis
                    .iter()
                    .filter(|a| !a.plugins.is_empty())
                    .map(|a| ((a.service.as_str(), a.name.as_str()), &a.plugins))
                    .collect()
            })
            .unwrap_or_default();
        let mut apis = Vec::new();
        for (si, service) in config.services.iter().enumerate() {
            for (ai, api) in service.apis.iter().enumerate() {
                let (backend, upstream_name) = match &api.backend {
                    Backend::Upstream(b) => (
                        ApiBackend::Upstream {
                            upstream: b.upstream,
                            path: b.path.clone(),
                            timeout: b.timeout,
                        },
                        config.upstreams[b.upstream].name.as_str(),
                    ),
                    Backend::Response(r) => {
                        let path = format!("services[{si}].apis[{ai}].backend.response.headers");
                        let mut headers = Vec::new();
                        for (name, value) in &r.headers {
                            match (
                                HeaderName::try_from(name.as_str()),
                                HeaderValue::try_from(value.as_str()),
                            ) {
                                (Ok(n), Ok(v)) => headers.push((n, v)),
                                _ => problems.push(Problem::new(
                                    format!("{path}.{name}"),
                                    "not a valid header (name or value)",
                                    "use ASCII header names and visible ASCII values",
                                )),
                            }
                        }
                        let answer = FixedAnswer {
                            status: r.status,
                            headers,
                            body: Bytes::from(r.body.clone()),
                        };
                        (ApiBackend::Fixed(answer), "")
                    }
                };
                let kept = previous_plugins
                    .get(&(service.name.as_str(), api.name.as_str()))
                    .filter(|old| old.serves(engine, &config, si, ai))
                    .map(|old| Arc::clone(old));
                let plugins = match kept {
                    Some(plugins) => plugins,
                    None => match ApiPlugins::build(engine, &config, si, ai) {
                        Ok(p) => Arc::new(p),
                        Err(mut p) => {
                            problems.append(&mut p);
                            Arc::default()
                        }
                    },
                };
                apis.push(ApiRuntime {
                    websocket: api.websocket,
                    access_share: api.access_log.unwrap_or(config.instance.access_log.sample),
                    access_counter: std::sync::atomic::AtomicU64::new(0),
                    max_body_size: api
                        .max_body_size
                        .unwrap_or(config.instance.http.max_body_size),
                    plugins,
                    metrics: RequestMetrics::new(&service.name, &api.name, upstream_name),
                    service: service.name.clone(),
                    name: api.name.clone(),
                    backend,
                });
            }
        }
        let certificates = match &config.instance.tls {
            Some(tls) => match crate::tls::Certificates::load(tls, &config.instance.file_roots) {
                Ok(c) => {
                    c.report_expiry();
                    Some(Arc::new(c))
                }
                Err(mut p) => {
                    problems.append(&mut p);
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let settings = &config.instance.access_log;
        let logging = settings.sample > 0.0 || apis.iter().any(|a| a.access_share > 0.0);
        // the log of the previous snapshot is kept when it writes to the same place
        let access = logging.then(|| {
            previous
                .and_then(|p| p.access.as_ref())
                .filter(|a| a.serves(settings))
                .cloned()
                .unwrap_or_else(|| Arc::new(AccessLog::new(settings.clone())))
        });
        Ok(Self {
            certificates,
            access,
            unrouted_access_share: settings.sample,
            unrouted_access_counter: std::sync::atomic::AtomicU64::new(0),
            generation,
            router: Router::build(&config),
            apis: apis.into_boxed_slice(),
            upstreams: upstreams.into_boxed_slice(),
            unrouted: RequestMetrics::new("", "", ""),
            config: Arc::new(config),
        })
    }
}

/// The labels of an API's request series: (service, API, upstream).
fn api_labels(api: &ApiRuntime, runtime: &Runtime) -> (String, String, String) {
    let upstream = match &api.backend {
        ApiBackend::Upstream { upstream, .. } => runtime.upstreams[*upstream].name.clone(),
        ApiBackend::Fixed(_) => String::new(),
    };
    (api.service.clone(), api.name.clone(), upstream)
}

/// Removes the metric series that `old` had and `new` has not.
fn forget_removed(old: &Runtime, new: &Runtime) {
    let apis: HashSet<_> = new.apis.iter().map(|a| api_labels(a, new)).collect();
    let named: HashSet<(&str, &str)> = new
        .apis
        .iter()
        .map(|a| (a.service.as_str(), a.name.as_str()))
        .collect();
    for api in old.apis.iter() {
        let labels = api_labels(api, old);
        if !apis.contains(&labels) {
            let gone = !named.contains(&(api.service.as_str(), api.name.as_str()));
            crate::metrics::forget_api(&labels.0, &labels.1, &labels.2, gone);
        }
    }
    let nodes: HashSet<(&str, &str)> = new
        .upstreams
        .iter()
        .flat_map(|u| u.nodes.iter().map(|n| (u.name.as_str(), n.label.as_str())))
        .collect();
    let upstreams: HashSet<&str> = new.upstreams.iter().map(|u| u.name.as_str()).collect();
    for upstream in old.upstreams.iter() {
        for node in upstream.nodes.iter() {
            if !nodes.contains(&(upstream.name.as_str(), node.label.as_str())) {
                crate::metrics::forget_node(&upstream.name, &node.label);
            }
        }
        if !upstreams.contains(upstream.name.as_str()) {
            crate::metrics::forget_upstream(&upstream.name);
        }
    }
    let plugins: HashSet<&str> = new.apis.iter().flat_map(|a| a.plugins.labels()).collect();
    let mut forgotten = HashSet::new();
    for plugin in old.apis.iter().flat_map(|a| a.plugins.labels()) {
        if !plugins.contains(plugin) && forgotten.insert(plugin) {
            gatehouse_plugin_host::metrics::forget(plugin);
        }
    }
}

/// The current snapshot, shared by the proxy, the resolver and whoever applies new configs,
/// with the plugin engine that snapshots are built with.
#[derive(Clone)]
pub struct SharedRuntime {
    current: Arc<ArcSwap<Runtime>>,
    engine: Arc<PluginEngine>,
}

impl SharedRuntime {
    /// Builds the first snapshot (generation 1) of `config`.
    pub fn start(config: Config, engine: Arc<PluginEngine>) -> Result<Self, Vec<Problem>> {
        let runtime = Runtime::build(config, 1, None, &engine)?;
        config_applied(
            &runtime.config.instance.id,
            &runtime.config.hash,
            runtime.generation,
        );
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(runtime)),
            engine,
        })
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The snapshot a new request uses.
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Builds the next snapshot from `config` without publishing it (reads CA files, resolves
    /// names, configures plugins: call it off the request path).
    pub fn prepare(&self, config: Config) -> Result<Runtime, Vec<Problem>> {
        let current = self.load();
        Runtime::build(config, current.generation + 1, Some(&current), &self.engine)
    }

    /// Publishes a prepared snapshot: new requests use it, requests in flight finish on theirs.
    /// Metric series of APIs, upstreams, nodes and plugins the new snapshot no longer has are
    /// removed, so `/metrics` follows the configuration.
    pub fn publish(&self, next: Runtime) -> u64 {
        let generation = next.generation;
        config_applied(&next.config.instance.id, &next.config.hash, generation);
        let next = Arc::new(next);
        let previous = self.current.swap(next.clone());
        forget_removed(&previous, &next);
        drop(previous);
        // components only the replaced configuration used (once its last request ends)
        self.engine.prune();
        generation
    }

    /// Builds a snapshot from `config` and publishes it; on error the current one keeps serving.
    pub fn apply(&self, config: Config) -> Result<u64, Vec<Problem>> {
        Ok(self.publish(self.prepare(config)?))
    }
}
