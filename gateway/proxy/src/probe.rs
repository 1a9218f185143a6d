//! Active health checks: background probes of every node of the upstreams that ask for them.
//!
//! A supervisor wakes every [`TICK`], looks at the current runtime snapshot and starts a probe for
//! each node whose time has come, on its own task: a `GET` of the configured path over a fresh
//! connection made with the node's own peer (the upstream's TLS settings, its connect timeout, and
//! only ever an address inside the VPC: a probe cannot leave it any more than a request can).
//! Nodes and upstreams that a configuration change removed are simply not in the next snapshot,
//! so their probes stop. Probes never run on the request path; the first probe of each node is
//! placed at random within one interval, and every later one is jittered by up to a tenth of it,
//! so 200 nodes do not get probed in the same millisecond.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gatehouse_config::NodeHost;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::health::{Evidence, Source};
use crate::runtime::SharedRuntime;
use crate::upstream::{now_ms, UpstreamRuntime};

/// How often the supervisor looks for nodes due for a probe.
const TICK: Duration = Duration::from_millis(50);

pub struct Prober {
    runtime: SharedRuntime,
    connector: Arc<Connector>,
    /// Jitter; only the supervisor uses it.
    rng: std::sync::Mutex<SmallRng>,
}

impl Prober {
    pub fn new(runtime: SharedRuntime) -> Self {
        Self {
            runtime,
            // its own connector: probes never take or leave pooled connections of the proxy
            connector: Arc::new(Connector::new(None)),
            rng: std::sync::Mutex::new(SmallRng::from_os_rng()),
        }
    }

    /// Starts the probes that are due at `now`.
    fn tick(&self, now: u64) {
        let runtime = self.runtime.load();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        for upstream in runtime.upstreams.iter() {
            let Some(active) = &upstream.config.health.active else {
                continue;
            };
            let interval = active.interval.as_millis() as u64;
            for (i, node) in upstream.nodes.iter().enumerate() {
                if node.weight == 0 {
                    continue;
                }
                let h = &node.health;
                let next = h.next_probe.load(Ordering::Relaxed);
                if next == 0 {
                    // first sight: spread the first probes over one interval
                    let offset = rng.random_range(0..interval.max(1));
                    h.next_probe.store(now + offset, Ordering::Relaxed);
                    continue;
                }
                if next > now || h.probing.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let jitter = rng.random_range(0..=interval / 10);
                h.next_probe
                    .store(now + interval - interval / 20 + jitter, Ordering::Relaxed);
                let (upstream, connector) = (Arc::clone(upstream), Arc::clone(&self.connector));
                tokio::spawn(async move {
                    let evidence = probe(&upstream, i, &connector).await;
                    if let Some(evidence) = evidence {
                        upstream.report(i, Source::Probe, &evidence);
                    }
                    upstream.nodes[i]
                        .health
                        .probing
                        .store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Probes node `i` once; `None` when it has no address to probe.
async fn probe(upstream: &UpstreamRuntime, i: usize, connector: &Connector) -> Option<Evidence> {
    let active = upstream.config.health.active.as_ref()?;
    let node = &upstream.nodes[i];
    let template = node.peer()?;
    let mut peer = pingora::upstreams::peer::HttpPeer::clone(&template);
    peer.options.read_timeout = Some(active.timeout);
    peer.options.write_timeout = Some(active.timeout);
    let host = match &upstream.host_header {
        Some(h) => h.to_str().unwrap_or_default().to_owned(),
        None => match &node.host {
            NodeHost::Name(_) | NodeHost::Ip(std::net::IpAddr::V4(_)) => {
                format!("{}:{}", node.host, node.port)
            }
            NodeHost::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", node.port),
        },
    };
    let exchange = async {
        let (mut session, _) = connector.get_http_session(&peer).await?;
        let mut req = RequestHeader::build("GET", active.path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, host.as_str())?;
        req.insert_header(http::header::USER_AGENT, "gatehouse-health-check")?;
        for (name, value) in &active.headers {
            req.insert_header(name.clone(), value.as_str())?;
        }
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        Ok::<u16, Box<pingora::Error>>(session.response_header().map_or(0, |r| r.status.as_u16()))
    };
    let metrics = &node.metrics;
    Some(match tokio::time::timeout(active.timeout, exchange).await {
        Err(_) => {
            metrics.probes[3].inc();
            Evidence::TimedOut
        }
        Ok(Ok(status)) => {
            let check = &upstream.config.health;
            let result = if check.healthy_statuses.contains(&status) {
                0
            } else if check.unhealthy_statuses.contains(&status) {
                1
            } else {
                2
            };
            metrics.probes[result].inc();
            Evidence::Status(status)
        }
        Ok(Err(e)) => {
            use pingora::ErrorType::*;
            if matches!(
                e.etype(),
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            ) {
                metrics.probes[3].inc();
                Evidence::TimedOut
            } else {
                metrics.probes[4].inc();
                Evidence::ConnectFailed(e.etype().as_str().to_owned())
            }
        }
    })
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => self.tick(now_ms()),
            }
        }
    }
}
