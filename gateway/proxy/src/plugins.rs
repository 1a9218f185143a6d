//! The plugins of each API, run in order on the request path, with each plugin's failure policy.

use std::net::IpAddr;
use std::sync::Arc;

use gatehouse_config::{Api, Config, OnError, PluginLimits, PluginRef, PluginSource, Problem};
use gatehouse_plugin_host::{
    Component, EditLimits, Failure, GrantedBy, Grants, HeldInstance, Hook, LoadError, Node,
    NodeChoice, PluginConfig, PluginEngine, PluginSlot, Reply, RequestOutcome, SlotLimits, Streams,
};
use pingora_http::{RequestHeader, ResponseHeader};

/// One API's plugin chain. Shared between runtime snapshots while the API's plugins, their
/// configuration and the limits stay the same, so a configuration change elsewhere keeps the warm
/// instances.
#[derive(Default)]
pub struct ApiPlugins {
    slots: Vec<(Arc<PluginSlot>, OnError)>,
    /// The compiled component of each slot, to tell whether a file changed since.
    components: Vec<Arc<Component>>,
    /// Largest request body the chain reads whole (the smallest body limit of its plugins that
    /// read it); `None`: no plugin reads it, the body streams.
    request_body: Option<usize>,
    /// Largest response body the chain holds whole; `None`: it streams.
    response_body: Option<usize>,
    /// What the chain was built from: (service, API, plugins, limits).
    built_from: Option<(String, String, Vec<PluginRef>, PluginLimits)>,
}

/// A plugin failure that stops the request (`fail_closed`).
pub struct Stopped<'a> {
    pub plugin: &'a str,
    pub failure: Failure,
}

/// What the request-phase chain decided.
pub enum Decision<'a> {
    Proceed {
        path_changed: bool,
        query_changed: bool,
        host_changed: bool,
        body_changed: bool,
        /// The nodes the last plugin that steered allowed.
        nodes: Option<NodeChoice>,
        /// The lowest retry count a plugin set.
        retries: Option<u32>,
    },
    Respond(Reply),
    Stop(Stopped<'a>),
}

impl ApiPlugins {
    /// Builds the chain of API `ai` of service `si`: loads each component (once per engine) and
    /// configures one instance, so a bad component or configuration is a problem now.
    pub fn build(
        engine: &Arc<PluginEngine>,
        config: &Config,
        si: usize,
        ai: usize,
    ) -> Result<Self, Vec<Problem>> {
        let service = &config.services[si];
        let api: &Api = &service.apis[ai];
        let limits = config.instance.plugin_limits;
        let limits = SlotLimits {
            memory: limits.memory,
            time: limits.time,
            reuse_instances: limits.reuse_instances,
            edits: EditLimits {
                headers: limits.max_added_headers,
                bytes: limits.max_added_header_bytes,
            },
            body: limits.body as usize,
            counter_keys: limits.counter_keys,
        };
        let mut problems = Vec::new();
        let mut slots = Vec::new();
        let mut components = Vec::new();
        for (k, plugin) in api.plugins.iter().enumerate() {
            let path = format!("services[{si}].apis[{ai}].plugins[{k}]");
            let loaded = match &plugin.source {
                PluginSource::Standard(name) => engine.load(&format!("standard:{name}"), || {
                    gatehouse_plugin_host::standard::component(name)
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| {
                            LoadError::Compile(
                                name.clone(),
                                "not embedded in this build".to_owned(),
                            )
                        })
                }),
                PluginSource::File(file) => engine.load_file(file, &config.instance.file_roots),
            };
            let pre = match loaded {
                Ok(pre) => pre,
                Err(e) => {
                    let key = if matches!(plugin.source, PluginSource::File(_)) {
                        "path"
                    } else {
                        "name"
                    };
                    problems.push(Problem::new(
                        format!("{path}.{key}"),
                        e.to_string(),
                        "give a component built for the gatehouse:plugin world, version 0.2.0 or 0.1.0 (see plugins/README.md), or a Proxy-Wasm filter (ABI 0.2.1, docs/proxy-wasm.md)",
                    ));
                    continue;
                }
            };
            let label = plugin.source.label();
            components.push(pre.clone());
            let grants = match plugin.grants.as_ref().map(Grants::configured).transpose() {
                Ok(grants) => grants,
                Err(e) => {
                    problems.push(Problem::new(
                        format!("{path}.grants"),
                        e,
                        "write header names in lower case, prefixes ending in *",
                    ));
                    continue;
                }
            };
            let trusted = matches!(plugin.source, PluginSource::Standard(_));
            match PluginSlot::with_grants(
                engine.clone(),
                pre,
                &label,
                &service.name,
                &api.name,
                PluginConfig {
                    config: plugin.config.clone(),
                    root_id: plugin.root_id.clone(),
                    vm_config: plugin.vm_config.clone(),
                },
                SlotLimits {
                    memory: plugin.memory,
                    time: plugin.time,
                    body: plugin.body as usize,
                    ..limits
                },
                grants,
                trusted,
            ) {
                Ok(slot)
                    if !slot.is_filter()
                        && (!plugin.root_id.is_empty() || !plugin.vm_config.is_empty()) =>
                {
                    problems.push(Problem::new(
                        path,
                        format!("plugin {label} is a component: root_id and vm_config are a Proxy-Wasm filter's"),
                        "remove root_id and vm_config",
                    ))
                }
                Ok(slot) if api.websocket && (slot.reads_request_body() || slot.reads_response_body()) => {
                    problems.push(Problem::new(
                        path,
                        format!("plugin {label} reads whole bodies, which the upgraded connections of a WebSocket API (websocket: true) do not have"),
                        "use the plugin on an API without websocket: true",
                    ))
                }
                Ok(slot) if api.grpc && (slot.reads_request_body() || slot.reads_response_body()) => {
                    problems.push(Problem::new(
                        path,
                        format!("plugin {label} reads whole bodies, which the streamed messages of a gRPC API (grpc: true) are not"),
                        "use the plugin on an API without grpc: true, or a plugin that reads headers only",
                    ))
                }
                Ok(slot) => {
                    if let Some(key) = declared_key(&plugin.source) {
                        gatehouse_config::secrets::declare(key, slot.secret_keys(), &plugin.config);
                    }
                    slots.push((slot, plugin.on_error))
                }
                Err(Failure::Denied(message)) => problems.push(Problem::new(
                    format!("{path}.grants"),
                    format!("plugin {label} is refused: {message}"),
                    "grant what it needs under grants: (see wit/README.md), or use another plugin",
                )),
                // a plugin's own words may quote its configuration: never a secret of it
                Err(Failure::Error(message)) => problems.push(Problem::new(
                    format!("{path}.config"),
                    format!(
                        "plugin {label} refused its configuration: {}",
                        gatehouse_config::secrets::scrub(&message)
                    ),
                    match &plugin.source {
                        PluginSource::Standard(name) => format!(
                            "fix the config of {label} (its keys: plugins/{name}/README.md)"
                        ),
                        PluginSource::File(_) => format!(
                            "fix the config of {label} where the message says (the keys its author documents)"
                        ),
                    },
                )),
                Err(failure) => problems.push(Problem::new(
                    path,
                    gatehouse_config::secrets::scrub(&format!("plugin {label} {failure}"))
                        .into_owned(),
                    "check the component; it must configure within 1s and the memory limit",
                )),
            }
        }
        if problems.is_empty() {
            let smallest = |reads: fn(&PluginSlot) -> bool| {
                slots
                    .iter()
                    .filter(|(s, _)| reads(s))
                    .map(|(s, _)| s.body_limit())
                    .min()
            };
            Ok(Self {
                request_body: smallest(PluginSlot::reads_request_body),
                response_body: smallest(PluginSlot::reads_response_body),
                slots,
                components,
                built_from: Some((
                    service.name.clone(),
                    api.name.clone(),
                    api.plugins.clone(),
                    config.instance.plugin_limits,
                )),
            })
        } else {
            Err(problems)
        }
    }

    /// Whether this chain is the one API `ai` of service `si` of `config` would build.
    /// Component files are read again: a replaced file makes a new chain.
    pub fn serves(
        &self,
        engine: &Arc<PluginEngine>,
        config: &Config,
        si: usize,
        ai: usize,
    ) -> bool {
        let (service, api) = (&config.services[si], &config.services[si].apis[ai]);
        let same_config = self
            .built_from
            .as_ref()
            .is_some_and(|(s, a, plugins, limits)| {
                *s == service.name
                    && *a == api.name
                    && *plugins == api.plugins
                    && *limits == config.instance.plugin_limits
            });
        same_config
            && api
                .plugins
                .iter()
                .zip(&self.components)
                .all(|(plugin, component)| match &plugin.source {
                    PluginSource::File(file) => engine
                        .load_file(file, &config.instance.file_roots)
                        .is_ok_and(|now| Arc::ptr_eq(&now, component)),
                    PluginSource::Standard(_) => true,
                })
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Largest request body the chain reads whole before its `on-request` plugins run, if any
    /// plugin reads it.
    pub fn request_body_limit(&self) -> Option<usize> {
        self.request_body
    }

    /// Whether a plugin of the chain reads a whole body (request or response).
    pub fn reads_a_body(&self) -> bool {
        self.request_body.is_some() || self.response_body.is_some()
    }

    /// Largest response body the chain holds whole for its `on-response-body` plugins, if any.
    pub fn response_body_limit(&self) -> Option<usize> {
        self.response_body
    }

    /// Counts a body over the chain's limit as a `body_limit` failure of each plugin that
    /// reads it; returns the first such `fail_closed` plugin, which stops the request.
    pub fn body_over_limit(&self, response: bool, length: usize) -> Option<Stopped<'_>> {
        let mut stopped = None;
        for (slot, on_error) in &self.slots {
            let reads = if response {
                slot.reads_response_body()
            } else {
                slot.reads_request_body()
            };
            if !reads || length <= slot.body_limit() {
                continue;
            }
            let failure = Failure::BodyLimit(format!(
                "a {} body of {length} bytes or more is over its body_limit of {} bytes",
                if response { "response" } else { "request" },
                slot.body_limit()
            ));
            slot.count_failure(&failure);
            if *on_error == OnError::FailClosed && stopped.is_none() {
                stopped = Some(Stopped {
                    plugin: slot.label(),
                    failure,
                });
            }
        }
        stopped
    }

    /// Takes an instance of every `on-response-body` plugin, in order, while the response
    /// header goes out. A plugin that cannot get one fails now: `fail_closed` stops the
    /// response; `fail_open` leaves the plugin out.
    pub async fn hold_response_body(&self) -> Result<Vec<(HeldInstance, OnError)>, Stopped<'_>> {
        let mut held = Vec::new();
        for (slot, on_error) in self.slots.iter().filter(|(s, _)| s.reads_response_body()) {
            match slot.hold().await {
                Ok(instance) => held.push((instance, *on_error)),
                Err(failure) if *on_error == OnError::FailClosed => {
                    return Err(Stopped {
                        plugin: slot.label(),
                        failure,
                    })
                }
                Err(_) => {}
            }
        }
        Ok(held)
    }

    /// The names of the chain's plugins, as their metrics label them.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|(slot, _)| slot.label())
    }

    /// Runs `on-request` of every plugin in order.
    pub async fn on_request(
        &self,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        mut body: Option<&mut bytes::Bytes>,
        streams: &mut Streams,
    ) -> Decision<'_> {
        let (mut path, mut query, mut host, mut body_set) = (false, false, false, false);
        let (mut steered, mut retry_cap) = (None, None::<u32>);
        for (slot, on_error) in self
            .slots
            .iter()
            .filter(|(s, _)| s.implements(Hook::Request))
        {
            match slot
                .on_request_in(req, client_ip, body.as_deref_mut(), streams)
                .await
            {
                Ok(RequestOutcome::Proceed {
                    path_changed,
                    query_changed,
                    host_changed,
                    body_changed,
                    nodes,
                    retries,
                }) => {
                    path |= path_changed;
                    query |= query_changed;
                    host |= host_changed;
                    body_set |= body_changed;
                    if nodes.is_some() {
                        steered = nodes;
                    }
                    if let Some(r) = retries {
                        retry_cap = Some(retry_cap.map_or(r, |c| c.min(r)));
                    }
                }
                Ok(RequestOutcome::Respond(reply)) => return Decision::Respond(reply),
                Err(failure) => {
                    if *on_error == OnError::FailClosed {
                        return Decision::Stop(Stopped {
                            plugin: slot.label(),
                            failure,
                        });
                    }
                }
            }
        }
        Decision::Proceed {
            path_changed: path,
            query_changed: query,
            host_changed: host,
            body_changed: body_set,
            nodes: steered,
            retries: retry_cap,
        }
    }

    /// Runs `on-upstream-request` of every plugin in order.
    pub async fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        node: &Node,
    ) -> Result<(), Stopped<'_>> {
        for (slot, on_error) in self
            .slots
            .iter()
            .filter(|(s, _)| s.implements(Hook::UpstreamRequest))
        {
            if let Err(failure) = slot.on_upstream_request(req, client_ip, node).await {
                if *on_error == OnError::FailClosed {
                    return Err(Stopped {
                        plugin: slot.label(),
                        failure,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs `on-response` of every plugin in order.
    pub async fn on_response(
        &self,
        req: &mut RequestHeader,
        resp: &mut ResponseHeader,
        client_ip: Option<IpAddr>,
        streams: &mut Streams,
    ) -> Result<(), Stopped<'_>> {
        for (slot, on_error) in self
            .slots
            .iter()
            .filter(|(s, _)| s.implements(Hook::Response))
        {
            if let Err(failure) = slot.on_response_in(req, resp, client_ip, streams).await {
                if *on_error == OnError::FailClosed {
                    return Err(Stopped {
                        plugin: slot.label(),
                        failure,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Runs the held `on-response-body` plugins in order on the whole response body; each sees the
/// body the previous one left. `Ok(None)`: the body is unchanged.
pub fn run_response_body(
    held: Vec<(HeldInstance, OnError)>,
    req: &mut RequestHeader,
    status: u16,
    headers: &http::HeaderMap,
    body: bytes::Bytes,
    client_ip: Option<IpAddr>,
    streams: &mut Streams,
) -> Result<Option<bytes::Bytes>, (String, Failure)> {
    let mut current: Option<bytes::Bytes> = None;
    for (instance, on_error) in held {
        let label = instance.slot().label().to_owned();
        let input = current.as_ref().unwrap_or(&body);
        match instance.on_response_body_in(req, status, headers, input, client_ip, streams) {
            Ok(Some(replaced)) => current = Some(replaced),
            Ok(None) => {}
            Err(failure) if on_error == OnError::FailClosed => return Err((label, failure)),
            Err(_) => {}
        }
    }
    Ok(current)
}

/// The key under which the secret keys a plugin declares are kept for redaction.
fn declared_key(source: &PluginSource) -> Option<String> {
    match source {
        PluginSource::Standard(name) => gatehouse_config::secrets::declared_key(Some(name), None),
        PluginSource::File(path) => gatehouse_config::secrets::declared_key(None, path.to_str()),
    }
}

/// Checks every plugin of a configuration (loads, links, configures), as starting it would:
/// every chain stays alive until all are built, as they do when the configuration serves, so the
/// memory budget is judged the same way.
pub fn check(engine: &Arc<PluginEngine>, config: &Config) -> Vec<Problem> {
    check_uses(engine, config).0
}

/// One plugin use as `gatehouse validate` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginUse {
    /// `services[0].apis[1].plugins[0]`.
    pub path: String,
    /// The plugin's name and contract: `key-auth (0.2)`.
    pub plugin: String,
    /// What it needs and who granted it, in the configuration's words.
    pub needs: String,
    /// Set for a 0.1 component running without `grants:` (every header, as 0.1 gave).
    pub warning: Option<String>,
}

/// Like [`check`], and on success describes every plugin use: what it declared it needs and
/// where its grants come from.
pub fn check_uses(engine: &Arc<PluginEngine>, config: &Config) -> (Vec<Problem>, Vec<PluginUse>) {
    engine
        .memory_budget()
        .set_limit(config.instance.plugin_limits.total_memory);
    let mut problems = Vec::new();
    let mut uses = Vec::new();
    // the chains stay alive until every one is built, as in a runtime snapshot
    let mut chains = Vec::new();
    for (si, service) in config.services.iter().enumerate() {
        for ai in 0..service.apis.len() {
            match ApiPlugins::build(engine, config, si, ai) {
                Ok(chain) => {
                    for (k, (slot, _)) in chain.slots.iter().enumerate() {
                        uses.push(describe(
                            format!("services[{si}].apis[{ai}].plugins[{k}]"),
                            slot,
                        ));
                    }
                    chains.push(chain);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
    }
    (problems, uses)
}

fn describe(path: String, slot: &PluginSlot) -> PluginUse {
    let plugin = format!("{} ({})", slot.label(), slot.contract());
    let granted = match slot.granted_by() {
        GrantedBy::Operator => "granted by its grants:",
        GrantedBy::Declared => "granted as declared (standard plugin)",
        GrantedBy::Baseline => "no grants: (needs nothing beyond its hooks)",
        GrantedBy::Contract0_1 => "no grants:",
    };
    match slot.declared() {
        Some(needs) => PluginUse {
            path,
            plugin,
            needs: format!("{}; {granted}", needs.summary()),
            warning: None,
        },
        None if slot.contract().starts_with("proxy-wasm") => PluginUse {
            path,
            plugin,
            needs: if slot.granted_by() == GrantedBy::Operator {
                "a Proxy-Wasm filter (declares nothing); held to its grants:".to_owned()
            } else {
                "a Proxy-Wasm filter (declares nothing); no grants: its header hooks and the request line, no header".to_owned()
            },
            warning: None,
        },
        None => {
            let ungranted = slot.granted_by() == GrantedBy::Contract0_1;
            PluginUse {
                path,
                plugin,
                needs: if ungranted {
                    "declares nothing (contract 0.1): every header of the request and response, its header hooks, no body".to_owned()
                } else {
                    "declares nothing (contract 0.1); held to its grants:".to_owned()
                },
                warning: ungranted.then(|| {
                    "a 0.1 plugin runs ungranted: it reads and writes every header; add grants: to hold it to what it needs, or rebuild it on contract 0.2".to_owned()
                }),
            }
        }
    }
}
