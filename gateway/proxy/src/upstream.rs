//! Upstreams at run time: nodes with ready-made peers, node eligibility (health, panic mode and
//! fair redistribution), the shared node selector, and the VPC egress guard.
//!
//! Which nodes a request may use is decided in one place, [`UpstreamRuntime::pick`]: a node is
//! eligible when it has an address inside the VPC and health checks have not taken it out. The
//! smooth weighted round-robin schedule is rebuilt over the eligible nodes whenever that set
//! changes (a rare event), so a node that is out gives its share to the others in proportion to
//! their weights. When no node is eligible, requests are spread over all nodes with an address
//! anyway (panic mode, as in Envoy), which is logged once and counted.
//!
//! A node's peer (address, TLS settings, timeouts) is built when the upstream is built or when its
//! host name resolves to a new address, never per request. Only addresses inside the upstream's VPC
//! ever become peers, so the request path cannot connect outside the VPC whatever DNS answers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use arc_swap::{ArcSwap, ArcSwapOption};
use gatehouse_config::{NodeHost, Problem, Protocol, Upstream, Vpc};
use gatehouse_plugin_host::{NodeChoice, SteerTo};
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::health::{Change, Evidence, NodeHealth, Source, State};
use crate::metrics::{NodeMetrics, METRICS};
use crate::selection::{SmoothWeighted, TriedSet};

/// Everything a peer for one node needs except its address.
#[derive(Clone)]
struct PeerSettings {
    tls: bool,
    sni: String,
    verify: bool,
    ca: Option<Arc<CaType>>,
    connect_timeout: Duration,
    keepalive_timeout: Duration,
    /// Presented to nodes that ask for a client certificate.
    client: Option<Arc<pingora::utils::tls::CertKey>>,
    http2: bool,
}

/// One node of an upstream.
pub struct NodeRuntime {
    pub label: String,
    pub host: NodeHost,
    pub port: u16,
    pub weight: u32,
    /// Indexes of the node's tags in [`UpstreamRuntime::tags`].
    tags: Box<[u16]>,
    settings: PeerSettings,
    /// The peer to connect to; `None` while the node has no address inside the VPC.
    peer: ArcSwapOption<HttpPeer>,
    pub health: NodeHealth,
    pub metrics: NodeMetrics,
}

/// Origin of the cheap millisecond clock used for health.
static CLOCK_START: Lazy<Instant> = Lazy::new(Instant::now);

/// Milliseconds since the clock's origin (never 0, which means "not out").
pub fn now_ms() -> u64 {
    CLOCK_START.elapsed().as_millis() as u64 + 1
}

impl NodeRuntime {
    pub fn peer(&self) -> Option<Arc<HttpPeer>> {
        self.peer.load_full()
    }

    /// The node's peer, borrowed for the time of one attempt's copy (no reference count).
    pub fn peer_template(&self) -> arc_swap::Guard<Option<Arc<HttpPeer>>> {
        self.peer.load()
    }

    pub fn is_available(&self) -> bool {
        self.peer.load().is_some()
    }

    /// Whether the node is in the schedule at `now`: it has an address and is not out (a node
    /// on probation is in, and [`NodeRuntime::admits`] lets one request through).
    fn is_eligible(&self, now: u64) -> bool {
        self.weight > 0 && !self.health.is_out(now) && self.is_available()
    }

    /// Whether a request at `now` may use the node: it is eligible, and, on probation, this
    /// request takes its one trial.
    fn admits(&self, now: u64) -> bool {
        self.weight > 0
            && self.is_available()
            && self.health.admit(now, crate::health::TRIAL_TIMEOUT)
    }

    fn set_address(&self, addr: Option<SocketAddr>) {
        let peer = addr.map(|addr| {
            let s = &self.settings;
            let mut peer = HttpPeer::new(addr, s.tls, s.sni.clone());
            peer.options.connection_timeout = Some(s.connect_timeout);
            peer.options.idle_timeout = Some(s.keepalive_timeout);
            peer.options.verify_cert = s.verify;
            peer.options.verify_hostname = s.verify;
            peer.options.ca = s.ca.clone();
            peer.client_cert_key = s.client.clone();
            if s.http2 {
                // over TLS: h2 by ALPN, HTTP/1.1 when the node does not offer it; plain: h2c
                let min = if s.tls { 1 } else { 2 };
                peer.options.set_http_version(2, min);
            }
            Arc::new(peer)
        });
        self.metrics.available.set(i64::from(peer.is_some()));
        self.peer.store(peer);
        self.show_health();
    }

    /// Sets the node's health gauge from its state and address.
    fn show_health(&self) {
        let receives = self.health.state() != State::Unhealthy && self.is_available();
        self.metrics.healthy.set(i64::from(receives));
    }

    fn current_address(&self) -> Option<SocketAddr> {
        self.peer
            .load()
            .as_ref()
            .and_then(|p| p._address.as_inet().copied())
    }
}

/// One upstream, shared by the APIs that use it.
pub struct UpstreamRuntime {
    pub name: String,
    pub vpc: Vpc,
    pub retries: u32,
    pub host_header: Option<http::HeaderValue>,
    pub nodes: Box<[NodeRuntime]>,
    /// Every tag of the upstream's nodes, sorted.
    pub tags: Box<[String]>,
    /// The schedule over every node with a weight.
    pub selector: SmoothWeighted,
    /// The schedule over the nodes requests may use now.
    eligible: ArcSwap<Eligible>,
    /// The eligible set may have changed since `eligible` was built.
    dirty: AtomicBool,
    rebuilding: AtomicBool,
    panic: AtomicBool,
    panic_gauge: prometheus::IntGauge,
    panic_requests: prometheus::IntCounter,
    /// Steered requests by outcome ([`crate::metrics::STEER_OUTCOMES`]).
    steered: [prometheus::IntCounter; 3],
    pub retries_total: prometheus::IntCounter,
    /// The configuration this was built from, to tell whether a new one changes it.
    pub config: Upstream,
}

/// The schedule requests use until the eligible set changes.
struct Eligible {
    selector: SmoothWeighted,
    /// For each tag of [`UpstreamRuntime::tags`], the schedule over its nodes requests may use
    /// now (in panic mode, over all of them with an address).
    tagged: Box<[SmoothWeighted]>,
    /// Every node with an address is in the schedule because none is eligible.
    panic: bool,
    /// Upstream-clock milliseconds at which a node out for a while is due back.
    recheck_at: u64,
}

/// Which of an upstream's nodes a plugin allowed a request to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// The nodes with the tag of this index in [`UpstreamRuntime::tags`].
    Tag(usize),
    /// The node of this index.
    Node(usize),
    /// None: the plugin named a tag or node the upstream does not have.
    Nothing,
}

/// A plugin's steering of one request, resolved against its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steer {
    pub allowed: Allowed,
    /// When no allowed node can take the request: refuse it (503) rather than use any node.
    pub fail: bool,
}

impl Steer {
    fn allows(&self, i: usize, node: &NodeRuntime) -> bool {
        match self.allowed {
            Allowed::Tag(t) => node.tags.contains(&(t as u16)),
            Allowed::Node(n) => n == i,
            Allowed::Nothing => false,
        }
    }
}

/// The health of one node, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeReport {
    pub node: String,
    pub weight: u32,
    #[serde(flatten)]
    pub health: crate::health::Report,
    /// RFC 3339 time at which a node out for a recovery time is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back_at: Option<String>,
}

/// The health of an upstream's nodes, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    pub upstream: String,
    pub active_checks: bool,
    pub passive_checks: bool,
    /// Every node is unhealthy and requests go to all of them anyway.
    pub panic: bool,
    pub nodes: Vec<NodeReport>,
}

impl UpstreamRuntime {
    /// Builds the upstream; reads its CA file and resolves node names (blocking, so never call it
    /// on the request path). `path` is the upstream's config path, for problems.
    pub fn build(
        config: &Upstream,
        path: &str,
        roots: &[std::path::PathBuf],
    ) -> Result<Self, Vec<Problem>> {
        let ca = match config.tls.as_ref().and_then(|t| t.ca_file.as_deref()) {
            Some(file) => Some(load_ca(file, roots).map_err(|msg| vec![ca_problem(path, msg)])?),
            None => None,
        };
        let client = match config.tls.as_ref().and_then(|t| t.client.as_ref()) {
            Some(files) => Some(
                crate::tls::client_certificate(files, roots)
                    .map_err(|e| vec![client_problem(path, e)])?,
            ),
            None => None,
        };
        let host_header = match &config.host_header {
            Some(h) => Some(http::HeaderValue::from_str(h).map_err(|_| {
                vec![Problem::new(
                    format!("{path}.host_header"),
                    "not a valid header value",
                    "use a host name with an optional port",
                )]
            })?),
            None => None,
        };
        let mut tags: Vec<String> = config
            .nodes
            .iter()
            .flat_map(|n| n.tags.iter().cloned())
            .collect();
        tags.sort_unstable();
        tags.dedup();
        let nodes: Box<[NodeRuntime]> = config
            .nodes
            .iter()
            .map(|node| {
                let label = node.label();
                let settings = PeerSettings {
                    tls: config.protocol == Protocol::Https,
                    sni: config.sni_for(node),
                    verify: config.tls.as_ref().is_none_or(|t| t.verify),
                    ca: ca.clone(),
                    connect_timeout: config.connect_timeout,
                    keepalive_timeout: config.keepalive_timeout,
                    client: client.clone(),
                    http2: config.http2,
                };
                let health = if node.weight == 0 {
                    NodeHealth::new(State::Off, "weight 0: drained")
                } else if config.health.enabled() {
                    NodeHealth::new(State::NoData, "no request or probe has reached it yet")
                } else {
                    NodeHealth::new(State::Off, "health checks are off")
                };
                NodeRuntime {
                    metrics: NodeMetrics::new(&config.name, &label),
                    label,
                    host: node.host.clone(),
                    port: node.port,
                    weight: node.weight,
                    tags: node
                        .tags
                        .iter()
                        .filter_map(|t| tags.binary_search(t).ok())
                        .map(|i| i as u16)
                        .collect(),
                    settings,
                    peer: ArcSwapOption::empty(),
                    health,
                }
            })
            .collect();
        let weights: Vec<u32> = config.nodes.iter().map(|n| n.weight).collect();
        let upstream = Self {
            name: config.name.clone(),
            vpc: config.vpc.clone(),
            retries: config.retries,
            host_header,
            selector: SmoothWeighted::new(&weights),
            eligible: ArcSwap::from_pointee(Eligible {
                selector: SmoothWeighted::new(&weights),
                tagged: Box::default(),
                panic: false,
                recheck_at: u64::MAX,
            }),
            dirty: AtomicBool::new(false),
            rebuilding: AtomicBool::new(false),
            panic: AtomicBool::new(false),
            panic_gauge: METRICS.upstream_panic.with_label_values(&[&config.name]),
            panic_requests: METRICS.panic_requests.with_label_values(&[&config.name]),
            steered: crate::metrics::STEER_OUTCOMES.map(|outcome| {
                METRICS
                    .steered_requests
                    .with_label_values(&[&config.name, outcome])
            }),
            retries_total: METRICS.upstream_retries.with_label_values(&[&config.name]),
            nodes,
            tags: tags.into_boxed_slice(),
            config: config.clone(),
        };
        for node in upstream.nodes.iter() {
            match &node.host {
                NodeHost::Ip(ip) => node.set_address(Some(SocketAddr::new(*ip, node.port))),
                NodeHost::Name(name) => {
                    let resolved = (name.as_str(), node.port)
                        .to_socket_addrs()
                        .map(|a| a.collect::<Vec<_>>());
                    upstream.apply_resolution(node, resolved);
                }
            }
        }
        upstream.panic_gauge.set(0);
        upstream.refresh(now_ms());
        Ok(upstream)
    }

    /// Picks a node for a request that has tried `tried` already: the first attempt claims the
    /// next position of the eligible schedule, a retry continues after `previous` (the position of
    /// the failed attempt). Only eligible nodes are picked (in panic mode, any node with an
    /// address). Returns (position, node).
    ///
    /// A request a plugin steered picks among the nodes it allowed, by the same rules (their own
    /// schedule for a tag); when none of them can take it, `steer.fail` refuses it (`None`) and
    /// otherwise it picks among all nodes.
    pub fn pick(
        &self,
        previous: Option<usize>,
        tried: &TriedSet,
        steer: Option<&Steer>,
    ) -> Option<(usize, usize)> {
        let now = now_ms();
        let mut current = self.eligible.load();
        if now >= current.recheck_at {
            self.refresh(now);
            current = self.eligible.load();
        }
        if let Some(steer) = steer {
            let usable = |i: usize| {
                !tried.contains(i)
                    && if current.panic {
                        self.nodes[i].weight > 0 && self.nodes[i].is_available()
                    } else {
                        self.nodes[i].admits(now)
                    }
            };
            let picked = match steer.allowed {
                Allowed::Tag(t) => current
                    .tagged
                    .get(t)
                    .filter(|selector| selector.period() > 0)
                    .and_then(|selector| {
                        let start = match previous {
                            Some(pos) => pos.wrapping_add(1),
                            None => selector.next_position(),
                        };
                        selector.pick_from(start, |i| !usable(i))
                    }),
                Allowed::Node(i) => usable(i).then_some((previous.unwrap_or(0), i)),
                Allowed::Nothing => None,
            };
            if previous.is_none() {
                let outcome = match (picked.is_some(), steer.fail) {
                    (true, _) => 0,
                    (false, false) => 1,
                    (false, true) => 2,
                };
                self.steered[outcome].inc();
            }
            if picked.is_some() || steer.fail {
                return picked;
            }
        }
        let start = match previous {
            Some(pos) => pos.wrapping_add(1),
            None => current.selector.next_position(),
        };
        let picked = if current.panic {
            current.selector.pick_from(start, |i| {
                tried.contains(i) || !self.nodes[i].is_available()
            })
        } else {
            // the schedule may lag a node that was just taken out: check each pick
            current
                .selector
                .pick_from(start, |i| tried.contains(i) || !self.nodes[i].admits(now))
        };
        if current.panic && previous.is_none() && picked.is_some() {
            self.panic_requests.inc();
        }
        picked
    }

    /// Records evidence about node `node` from a request or a probe; a node over a threshold is
    /// taken out.
    pub fn report(&self, node: usize, source: Source, evidence: &Evidence) {
        let n = &self.nodes[node];
        // with active checks, only probes bring a node back
        let recovery = if self.config.health.active.is_some() {
            Duration::ZERO
        } else {
            self.config.unhealthy_timeout
        };
        let change = n
            .health
            .record(&self.config.health, recovery, source, evidence, now_ms());
        self.changed(n, change);
    }

    /// Logs, counts and applies a node's change of state.
    fn changed(&self, node: &NodeRuntime, change: Change) {
        match change {
            // probation starts in `refresh`, never from a piece of evidence
            Change::None | Change::Probation => return,
            Change::Out | Change::OutAgain => {
                node.metrics.ejections.inc();
                if change == Change::Out {
                    node.metrics.became[1].inc();
                }
                let back = match node.health.back_at() {
                    None => "back when probes find it healthy".to_owned(),
                    Some(at) => format!(
                        "one request tries it again in {}",
                        humantime::format_duration(Duration::from_millis(
                            at.saturating_sub(now_ms())
                        ))
                    ),
                };
                log::warn!(
                    "upstream {}: node {} is UNHEALTHY ({}); {back}",
                    self.name,
                    node.label,
                    node.health.report().reason
                );
            }

            Change::Back => {
                node.metrics.became[0].inc();
                log::info!(
                    "upstream {}: node {} is HEALTHY again ({})",
                    self.name,
                    node.label,
                    node.health.report().reason
                );
            }
        }
        node.show_health();
        self.refresh(now_ms());
    }

    /// Rebuilds the eligible schedule after the eligible set changed (or may have): brings back
    /// nodes whose recovery time has passed, enters or leaves panic mode. Cheap for common
    /// upstreams (a schedule period times the node count, once per change); never blocks.
    fn refresh(&self, now: u64) {
        self.dirty.store(true, Ordering::Release);
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            // the thread rebuilding sees `dirty` and goes round once more
            return;
        }
        while self.dirty.swap(false, Ordering::AcqRel) {
            for node in self.nodes.iter() {
                if node.health.is_due_back(now) && node.health.expire(now) == Change::Probation {
                    node.metrics.probations.inc();
                    node.show_health();
                    log::info!(
                        "upstream {}: node {} is on probation after its recovery time: its next request decides whether it is back",
                        self.name,
                        node.label
                    );
                }
            }
            let weights: Vec<u32> = self
                .nodes
                .iter()
                .map(|n| if n.is_eligible(now) { n.weight } else { 0 })
                .collect();
            let panic = weights.iter().all(|w| *w == 0)
                && self.nodes.iter().any(|n| n.weight > 0 && n.is_available());
            let weights = if panic {
                self.nodes
                    .iter()
                    .map(|n| if n.is_available() { n.weight } else { 0 })
                    .collect()
            } else {
                weights
            };
            let selector = SmoothWeighted::new(&weights);
            let tagged = (0..self.tags.len())
                .map(|t| {
                    let of_tag: Vec<u32> = self
                        .nodes
                        .iter()
                        .zip(&weights)
                        .map(|(n, w)| if n.tags.contains(&(t as u16)) { *w } else { 0 })
                        .collect();
                    SmoothWeighted::new(&of_tag)
                })
                .collect();
            // a node due back already is on probation, in the schedule: only later returns
            // need another look (a past time here would rebuild the schedule on every request,
            // and a new schedule starts from its first node each time)
            let recheck_at = self
                .nodes
                .iter()
                .filter_map(|n| n.health.back_at())
                .filter(|at| *at > now)
                .min()
                .unwrap_or(u64::MAX);
            if self.panic.swap(panic, Ordering::AcqRel) != panic {
                self.panic_gauge.set(i64::from(panic));
                if panic {
                    log::error!(
                        "upstream {}: every node is unhealthy; spreading requests over all of them until one recovers (panic mode)",
                        self.name
                    );
                } else {
                    log::info!(
                        "upstream {}: a node is healthy again; panic mode over",
                        self.name
                    );
                }
            }
            self.eligible.store(Arc::new(Eligible {
                selector,
                tagged,
                panic,
                recheck_at,
            }));
        }
        self.rebuilding.store(false, Ordering::Release);
        if self.dirty.load(Ordering::Acquire) {
            self.refresh(now);
        }
    }

    /// Carries node health over from the previous runtime of this upstream (same name), for the
    /// nodes both have, so a configuration change does not forget which nodes are out.
    pub fn inherit_health(&self, old: &UpstreamRuntime) {
        if !self.config.health.enabled() {
            return;
        }
        for node in self.nodes.iter().filter(|n| n.weight > 0) {
            if let Some(o) = old.nodes.iter().find(|o| o.label == node.label) {
                if o.health.state() != State::Off {
                    node.health.inherit(&o.health);
                    if self.config.health.active.is_none() {
                        node.health.without_probes(now_ms());
                    }
                    node.show_health();
                }
            }
        }
        self.refresh(now_ms());
    }

    /// The health of every node, for operators.
    pub fn health_report(&self) -> HealthReport {
        let now = now_ms();
        let unix_now = crate::health::unix_ms();
        HealthReport {
            upstream: self.name.clone(),
            active_checks: self.config.health.active.is_some(),
            passive_checks: self.config.health.passive,
            panic: self.panic.load(Ordering::Acquire),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let mut health = n.health.report();
                    if !n.is_available() {
                        health.state = State::Unhealthy.as_str();
                        health.reason = format!("no address inside VPC {}", self.vpc.id);
                    }
                    NodeReport {
                        node: n.label.clone(),
                        weight: n.weight,
                        back_at: n
                            .health
                            .back_at()
                            .filter(|t| *t > now)
                            .map(|t| crate::health::rfc3339(unix_now + (t - now))),
                        health,
                    }
                })
                .collect(),
        }
    }

    /// Whether a node remains that this request has not tried and could use (an eligible one,
    /// or in panic mode any with an address), among the nodes a plugin steered it to (or, unless
    /// the steering says to fail, among all).
    pub fn has_untried(&self, tried: &TriedSet, steer: Option<&Steer>) -> bool {
        let now = now_ms();
        let panic = self.panic.load(Ordering::Relaxed);
        let usable = |i: usize, n: &NodeRuntime| {
            !tried.contains(i)
                && if panic {
                    n.weight > 0 && n.is_available()
                } else {
                    n.is_eligible(now)
                }
        };
        let mut nodes = self.nodes.iter().enumerate();
        match steer {
            Some(s) if s.fail => nodes.any(|(i, n)| s.allows(i, n) && usable(i, n)),
            _ => nodes.any(|(i, n)| usable(i, n)),
        }
    }

    /// The index of `tag` in [`UpstreamRuntime::tags`].
    pub fn tag_index(&self, tag: &str) -> Option<usize> {
        self.tags.binary_search_by(|t| t.as_str().cmp(tag)).ok()
    }

    /// The node a plugin named by `address`: its `host:port` as configured, or the socket
    /// address it connects to.
    pub fn node_index(&self, address: &str) -> Option<usize> {
        let socket = address.parse::<SocketAddr>().ok();
        self.nodes.iter().position(|n| {
            n.label.eq_ignore_ascii_case(address)
                || socket.is_some_and(|s| n.current_address() == Some(s))
        })
    }

    /// Why no node a plugin allowed can take a request, for the client and the log.
    pub fn describe_steer(&self, steer: &Steer) -> String {
        match steer.allowed {
            Allowed::Tag(t) => format!(
                "no node of upstream {} tagged {:?} can take the request",
                self.name, self.tags[t]
            ),
            Allowed::Node(i) => format!(
                "node {} of upstream {} cannot take the request",
                self.nodes[i].label, self.name
            ),
            Allowed::Nothing => format!(
                "the request was steered to a tag or node upstream {} does not have",
                self.name
            ),
        }
    }

    /// Resolves a plugin's choice of nodes against this upstream's tags and nodes.
    pub fn steer(&self, choice: &NodeChoice) -> Steer {
        let allowed = match &choice.to {
            SteerTo::Tag(tag) => self.tag_index(tag).map_or(Allowed::Nothing, Allowed::Tag),
            SteerTo::Node(address) => self
                .node_index(address)
                .map_or(Allowed::Nothing, Allowed::Node),
        };
        Steer {
            allowed,
            fail: choice.fail,
        }
    }

    /// Applies a DNS answer for a named node: keeps only addresses inside the VPC, logs and counts
    /// the others, and keeps the previous address when resolution failed.
    pub fn apply_resolution(&self, node: &NodeRuntime, resolved: std::io::Result<Vec<SocketAddr>>) {
        let addrs = match resolved {
            Ok(a) => a,
            Err(e) => {
                if node.is_available() {
                    log::warn!(
                        "upstream {}: cannot resolve node {}: {e}; keeping its last address",
                        self.name,
                        node.label
                    );
                } else {
                    log::warn!("upstream {}: cannot resolve node {}: {e}; the node is skipped until it resolves", self.name, node.label);
                }
                return;
            }
        };
        let (inside, outside): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| self.vpc.contains(a.ip()));
        if !outside.is_empty() {
            node.metrics.egress_denied.inc_by(outside.len() as u64);
            log::warn!(
                "upstream {}: node {} resolved to {} outside VPC {} ({}); the gateway will not connect there",
                self.name,
                node.label,
                outside.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", "),
                self.vpc.id,
                self.vpc.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            );
        }
        // Prefer the address in use, so a name with several addresses does not flap.
        let current = node.current_address();
        let chosen = current
            .filter(|c| inside.contains(c))
            .or_else(|| inside.first().copied());
        if chosen != current {
            match chosen {
                Some(a) => log::info!(
                    "upstream {}: node {} now connects to {a}",
                    self.name,
                    node.label
                ),
                None => log::warn!(
                    "upstream {}: node {} has no address inside VPC {}",
                    self.name,
                    node.label,
                    self.vpc.id
                ),
            }
            node.set_address(chosen);
            self.refresh(now_ms());
        }
    }

    /// Whether `other` is the same upstream, so its nodes, connections and selector can be kept.
    pub fn same_config(&self, other: &Upstream) -> bool {
        self.config.name == other.name
            && self.config.vpc.id == other.vpc.id
            && self.config.vpc.cidrs == other.vpc.cidrs
            && self.config.protocol == other.protocol
            && self.config.host_header == other.host_header
            && self.config.retries == other.retries
            && self.config.connect_timeout == other.connect_timeout
            && self.config.unhealthy_timeout == other.unhealthy_timeout
            && self.config.keepalive_timeout == other.keepalive_timeout
            && self.config.http2 == other.http2
            && self.config.retry_statuses == other.retry_statuses
            && self.config.retry_budget == other.retry_budget
            && self.config.health == other.health
            && self.config.tls == other.tls
            && self.config.nodes == other.nodes
    }
}

/// Checks the files a configuration refers to (CA files), as starting it would: used by
/// `gatehouse validate`, which must not resolve names or connect anywhere.
pub fn check_files(config: &gatehouse_config::Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        if let Some(file) = u.tls.as_ref().and_then(|t| t.ca_file.as_deref()) {
            if let Err(msg) = load_ca(file, &config.instance.file_roots) {
                problems.push(ca_problem(&format!("upstreams[{i}]"), msg));
            }
        }
        if let Some(files) = u.tls.as_ref().and_then(|t| t.client.as_ref()) {
            if let Err(e) = crate::tls::client_certificate(files, &config.instance.file_roots) {
                problems.push(client_problem(&format!("upstreams[{i}]"), e));
            }
        }
    }
    problems
}

fn client_problem(upstream_path: &str, (field, msg): (&'static str, String)) -> Problem {
    Problem::new(
        format!("{upstream_path}.tls.{field}"),
        msg,
        "give the PEM certificate chain (leaf first) the nodes trust and the leaf's PEM private key",
    )
}

fn ca_problem(upstream_path: &str, msg: String) -> Problem {
    Problem::new(
        format!("{upstream_path}.tls.ca_file"),
        msg,
        "point ca_file at a readable PEM file of CA certificates",
    )
}

/// Reads a PEM file of CA certificates into Pingora's per-peer CA list.
fn load_ca(file: &Path, roots: &[std::path::PathBuf]) -> Result<Arc<CaType>, String> {
    let pem =
        gatehouse_config::files::read_confined(file, roots, gatehouse_config::files::MAX_PEM_BYTES)
            .map_err(|e| format!("{} {e}", file.display()))?;
    // The parser's own errors may quote the file: say what is wrong, not what is there.
    let ders = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{} is not a PEM file of certificates", file.display()))?;
    if ders.is_empty() {
        return Err(format!("{} holds no certificate", file.display()));
    }
    let mut store = pingora::tls::RootCertStore::empty();
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.into_iter().enumerate() {
        store.add(der.clone()).map_err(|e| {
            format!(
                "certificate {} in {} is not a usable CA: {e}",
                i + 1,
                file.display()
            )
        })?;
        let raw = der.to_vec();
        let cert =
            catch_unwind(AssertUnwindSafe(|| WrappedX509::new(raw, parse_x509))).map_err(|_| {
                format!(
                    "certificate {} in {} cannot be parsed",
                    i + 1,
                    file.display()
                )
            })?;
        certs.push(cert);
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes a (weight 3) and b (weight 1) tagged `canary`, c (weight 5) not.
    fn upstream() -> UpstreamRuntime {
        let config = gatehouse_config::parse(
            r#"
instance: { id: ins-1, type: dedicated, vpc: vpc-main, listen: ["127.0.0.1:8080"] }
vpcs:
  - { id: vpc-main, cidrs: ["10.0.0.0/16"] }
upstreams:
  - name: u
    vpc: vpc-main
    protocol: http
    nodes:
      - { host: 10.0.0.1, port: 80, weight: 3, tags: [canary, zone-a] }
      - { host: 10.0.0.2, port: 80, weight: 1, tags: [canary] }
      - { host: 10.0.0.3, port: 80, weight: 5, tags: [zone-a] }
"#,
            "test",
            Path::new("/"),
        )
        .unwrap();
        UpstreamRuntime::build(&config.upstreams[0], "upstreams[0]", &[]).unwrap()
    }

    fn steer(u: &UpstreamRuntime, to: SteerTo, fail: bool) -> Steer {
        u.steer(&NodeChoice { to, fail })
    }

    fn tag(name: &str) -> SteerTo {
        SteerTo::Tag(name.to_owned())
    }

    fn counts(u: &UpstreamRuntime, steer: Option<&Steer>, n: usize) -> [usize; 3] {
        let mut counts = [0; 3];
        for _ in 0..n {
            let (_, node) = u.pick(None, &TriedSet::default(), steer).unwrap();
            counts[node] += 1;
        }
        counts
    }

    fn take_out(u: &UpstreamRuntime, node: usize) {
        for _ in 0..10 {
            u.report(
                node,
                Source::Request,
                &Evidence::ConnectFailed("refused".into()),
            );
        }
        assert_eq!(u.nodes[node].health.state(), State::Unhealthy);
    }

    #[test]
    fn a_tag_spreads_requests_over_its_nodes_by_weight() {
        let u = upstream();
        assert_eq!(u.tags[..], ["canary", "zone-a"]);
        let canary = steer(&u, tag("canary"), true);
        assert_eq!(counts(&u, Some(&canary), 400), [300, 100, 0]);
        let zone = steer(&u, tag("zone-a"), true);
        assert_eq!(counts(&u, Some(&zone), 800), [300, 0, 500]);
        // one node, by its configured address or the address it connects to
        let one = steer(&u, SteerTo::Node("10.0.0.2:80".into()), true);
        assert_eq!(counts(&u, Some(&one), 10), [0, 10, 0]);
        // unsteered requests keep the whole schedule
        assert_eq!(counts(&u, None, 900), [300, 100, 500]);
    }

    #[test]
    fn when_no_allowed_node_can_serve_the_fallback_decides() {
        let u = upstream();
        take_out(&u, 0);
        take_out(&u, 1);
        let fail = steer(&u, tag("canary"), true);
        assert_eq!(u.pick(None, &TriedSet::default(), Some(&fail)), None);
        assert!(!u.has_untried(&TriedSet::default(), Some(&fail)));
        let any = steer(&u, tag("canary"), false);
        assert_eq!(counts(&u, Some(&any), 10), [0, 0, 10]);
        assert!(u.has_untried(&TriedSet::default(), Some(&any)));
        // a tag or node the upstream does not have allows nothing
        for to in [tag("blue"), SteerTo::Node("10.0.0.9:80".into())] {
            let s = steer(&u, to, true);
            assert_eq!(s.allowed, Allowed::Nothing);
            assert_eq!(u.pick(None, &TriedSet::default(), Some(&s)), None);
            let s = Steer { fail: false, ..s };
            assert_eq!(counts(&u, Some(&s), 5), [0, 0, 5]);
        }
    }

    #[test]
    fn a_retry_stays_among_the_allowed_nodes_it_has_not_tried() {
        let u = upstream();
        let fail = steer(&u, tag("canary"), true);
        let mut tried = TriedSet::default();
        let (pos, first) = u.pick(None, &tried, Some(&fail)).unwrap();
        tried.insert(first);
        let (_, second) = u.pick(Some(pos), &tried, Some(&fail)).unwrap();
        assert_ne!(first, second);
        assert!(second < 2, "a canary node");
        tried.insert(second);
        assert!(!u.has_untried(&tried, Some(&fail)), "both canaries tried");
        assert_eq!(u.pick(Some(pos), &tried, Some(&fail)), None);
        let any = Steer {
            fail: false,
            ..fail
        };
        assert!(u.has_untried(&tried, Some(&any)));
        assert_eq!(u.pick(Some(pos), &tried, Some(&any)).map(|p| p.1), Some(2));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the weights, tags, nodes out and nodes tried: a steered pick that must not
        /// fall back gives an allowed node the request may use, or none exactly when no such
        /// node is left (as `has_untried` says); one that may fall back gives a node whenever
        /// any is left.
        #[test]
        fn a_steered_pick_keeps_to_the_allowed_nodes_it_may_use(
            nodes in proptest::collection::vec((0u32..4, 0u8..4, proptest::bool::ANY, proptest::bool::ANY), 1..7),
            target in 0usize..8,
            by_tag in proptest::bool::ANY,
            fail in proptest::bool::ANY,
        ) {
            // each node: weight, tags (bit 0: a, bit 1: b), out, tried
            let mut nodes = nodes;
            nodes[0].0 = nodes[0].0.max(1);
            let lines: String = nodes
                .iter()
                .enumerate()
                .map(|(i, (w, tags, _, _))| {
                    let tags: Vec<&str> = [(1, "a"), (2, "b")]
                        .iter()
                        .filter(|(bit, _)| tags & bit != 0)
                        .map(|(_, t)| *t)
                        .collect();
                    format!(
                        "      - {{ host: 10.0.0.{}, port: 80, weight: {w}, tags: [{}] }}\n",
                        i + 1,
                        tags.join(", ")
                    )
                })
                .collect();
            let config = gatehouse_config::parse(
                &format!(
                    "instance: {{ id: ins-1, type: dedicated, vpc: vpc-main, listen: [\"127.0.0.1:8080\"] }}\nvpcs:\n  - {{ id: vpc-main, cidrs: [\"10.0.0.0/16\"] }}\nupstreams:\n  - name: u\n    vpc: vpc-main\n    protocol: http\n    nodes:\n{lines}"
                ),
                "test",
                Path::new("/"),
            )
            .unwrap();
            let u = UpstreamRuntime::build(&config.upstreams[0], "upstreams[0]", &[]).unwrap();
            let mut tried = TriedSet::default();
            for (i, (w, _, out, was_tried)) in nodes.iter().enumerate() {
                if *out && *w > 0 {
                    take_out(&u, i);
                }
                if *was_tried {
                    tried.insert(i);
                }
            }
            let to = if by_tag {
                tag(["a", "b", "c"][target % 3])
            } else {
                SteerTo::Node(format!("10.0.0.{}:80", target + 1))
            };
            let s = steer(&u, to.clone(), fail);
            let allowed = |i: usize| match &to {
                SteerTo::Tag(t) => (t == "a" && nodes[i].1 & 1 != 0) || (t == "b" && nodes[i].1 & 2 != 0),
                SteerTo::Node(_) => i == target,
            };
            let panic = nodes.iter().all(|(w, _, out, _)| *w == 0 || *out);
            let usable = |i: usize| !tried.contains(i) && nodes[i].0 > 0 && (panic || !nodes[i].2);
            let picked = u.pick(None, &tried, Some(&s)).map(|p| p.1);
            let any_allowed = (0..nodes.len()).any(|i| allowed(i) && usable(i));
            let any = (0..nodes.len()).any(usable);
            if fail {
                proptest::prop_assert_eq!(picked.is_some(), any_allowed);
                if let Some(i) = picked {
                    proptest::prop_assert!(allowed(i) && usable(i), "picked {}", i);
                }
            } else {
                proptest::prop_assert_eq!(picked.is_some(), any);
                if let Some(i) = picked {
                    proptest::prop_assert!(usable(i), "picked {}", i);
                    if any_allowed {
                        proptest::prop_assert!(allowed(i), "picked {} over an allowed node", i);
                    }
                }
            }
            proptest::prop_assert_eq!(u.has_untried(&tried, Some(&s)), if fail { any_allowed } else { any });
        }
    }

    #[test]
    fn in_panic_mode_a_tag_fails_open_over_its_own_nodes() {
        let u = upstream();
        for node in 0..3 {
            take_out(&u, node);
        }
        let fail = steer(&u, tag("canary"), true);
        assert_eq!(counts(&u, Some(&fail), 40), [30, 10, 0]);
    }
}
