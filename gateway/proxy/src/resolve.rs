//! Background resolution of node host names, off the request path.
//!
//! Every `instance.dns_refresh` the resolver looks up each named node of the current snapshot
//! and hands the answer to its upstream, which keeps only addresses inside the VPC (see
//! [`crate::upstream::UpstreamRuntime::apply_resolution`]). Lookups run on tokio's blocking pool,
//! never on a worker thread serving requests.

use async_trait::async_trait;
use gatehouse_config::NodeHost;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::SharedRuntime;

pub struct Resolver {
    runtime: SharedRuntime,
}

impl Resolver {
    pub fn new(runtime: SharedRuntime) -> Self {
        Self { runtime }
    }

    /// Resolves every named node of the current snapshot once.
    pub async fn refresh(&self) {
        let runtime = self.runtime.load();
        for upstream in runtime.upstreams.iter() {
            for node in upstream.nodes.iter() {
                let NodeHost::Name(name) = &node.host else {
                    continue;
                };
                let answer = tokio::net::lookup_host((name.as_str(), node.port))
                    .await
                    .map(|addrs| addrs.collect::<Vec<_>>());
                upstream.apply_resolution(node, answer);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self.runtime.load().config.instance.dns_refresh;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => self.refresh().await,
            }
        }
    }
}
