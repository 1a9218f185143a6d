//! Upstreams at run time: nodes with ready-made peers, the shared node selector, and the VPC
//! egress guard.
//!
//! A node's peer (address, TLS settings, timeouts) is built when the upstream is built or when its
//! host name resolves to a new address, never per request. Only addresses inside the upstream's VPC
//! ever become peers, so the request path cannot connect outside the VPC whatever DNS answers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use arc_swap::ArcSwapOption;
use gatehouse_config::{NodeHost, Problem, Protocol, Upstream, Vpc};
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::metrics::{NodeMetrics, METRICS};
use crate::selection::{SmoothWeighted, TriedSet};

/// How long an idle pooled connection to a node is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a peer for one node needs except its address.
#[derive(Clone)]
struct PeerSettings {
    tls: bool,
    sni: String,
    verify: bool,
    ca: Option<Arc<CaType>>,
    connect_timeout: Duration,
}

/// One node of an upstream.
pub struct NodeRuntime {
    pub label: String,
    pub host: NodeHost,
    pub port: u16,
    pub weight: u32,
    settings: PeerSettings,
    /// The peer to connect to; `None` while the node has no address inside the VPC.
    peer: ArcSwapOption<HttpPeer>,
    /// Milliseconds since [`CLOCK_START`] until which the node is skipped; 0 when healthy.
    ejected_until: AtomicU64,
    pub metrics: NodeMetrics,
}

/// Origin of the cheap millisecond clock used for ejections.
static CLOCK_START: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    CLOCK_START.elapsed().as_millis() as u64
}

impl NodeRuntime {
    pub fn peer(&self) -> Option<Arc<HttpPeer>> {
        self.peer.load_full()
    }

    pub fn is_available(&self) -> bool {
        self.peer.load().is_some()
    }

    /// Whether the node is being skipped after a failed connection at time `now` (ms).
    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    fn set_address(&self, addr: Option<SocketAddr>) {
        let peer = addr.map(|addr| {
            let s = &self.settings;
            let mut peer = HttpPeer::new(addr, s.tls, s.sni.clone());
            peer.options.connection_timeout = Some(s.connect_timeout);
            peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
            peer.options.verify_cert = s.verify;
            peer.options.verify_hostname = s.verify;
            peer.options.ca = s.ca.clone();
            Arc::new(peer)
        });
        self.metrics.available.set(i64::from(peer.is_some()));
        self.peer.store(peer);
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
    pub selector: SmoothWeighted,
    pub retries_total: prometheus::IntCounter,
    /// The configuration this was built from, to tell whether a new one changes it.
    pub config: Upstream,
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
                };
                NodeRuntime {
                    metrics: NodeMetrics::new(&config.name, &label),
                    label,
                    host: node.host.clone(),
                    port: node.port,
                    weight: node.weight,
                    settings,
                    peer: ArcSwapOption::empty(),
                    ejected_until: AtomicU64::new(0),
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
            retries_total: METRICS.upstream_retries.with_label_values(&[&config.name]),
            nodes,
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
        Ok(upstream)
    }

    /// Picks a node for a request that has tried `tried` already: the first attempt claims the
    /// next schedule position, a retry continues after `previous` (the position of the failed
    /// attempt). Nodes that recently failed to connect are passed over while others remain.
    /// Returns (position, node).
    pub fn pick(&self, previous: Option<usize>, tried: &TriedSet) -> Option<(usize, usize)> {
        let start = match previous {
            Some(pos) => pos.wrapping_add(1),
            None => self.selector.next_position(),
        };
        let now = now_ms();
        let usable = |i: usize| !tried.contains(i) && self.nodes[i].is_available();
        self.selector
            .pick_from(start, |i| !usable(i) || self.nodes[i].is_ejected(now))
            .or_else(|| self.selector.pick_from(start, |i| !usable(i)))
    }

    /// Skips `node` for the upstream's `unhealthy_timeout` after it failed to connect.
    pub fn eject(&self, node: usize) {
        let timeout = self.config.unhealthy_timeout;
        if timeout.is_zero() {
            return;
        }
        let node = &self.nodes[node];
        node.ejected_until
            .store(now_ms() + timeout.as_millis() as u64, Ordering::Relaxed);
        node.metrics.ejections.inc();
    }

    /// Whether a node remains that this request has not tried and could use.
    pub fn has_untried(&self, tried: &TriedSet) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| n.weight > 0 && !tried.contains(i) && n.is_available())
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
    }
    problems
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
