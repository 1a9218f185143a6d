//! Assembles the Pingora server: the proxy listeners, the metrics endpoint and the resolver.

use std::net::TcpListener;

use std::sync::Arc;

use gatehouse_config::{limits, Config, Problem};
use gatehouse_plugin_host::PluginEngine;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::listener::{EdgeApp, ListenerLimits};
use crate::metrics::MetricsApp;
use crate::probe::Prober;
use crate::proxy::Gateway;
use crate::resolve::Resolver;
use crate::runtime::SharedRuntime;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the configuration cannot be served:\n{}", list(.0))]
    Config(Vec<Problem>),
    #[error("{0}")]
    Plugins(String),
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seconds the engine gives its runtimes to stop after the drain (requests still running then are
/// cut: `instance.drain_timeout` has passed).
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 1;

/// Builds a ready-to-run server for `config`. Reads CA files and resolves node names once.
/// With `upgrade`, the listening sockets are taken over from the running process (which is sent
/// `SIGQUIT` to hand them over) instead of bound.
pub fn build(config: Config, upgrade: bool) -> Result<(Server, SharedRuntime), StartError> {
    // Fail early with a clear message when a port is taken, rather than deep inside Pingora.
    if !upgrade {
        for addr in &config.instance.listen {
            check_bindable("cannot listen on", *addr)?;
        }
        check_bindable("cannot serve metrics on", config.instance.metrics)?;
        for addr in config.instance.tls.iter().flat_map(|t| &t.listen) {
            check_bindable("cannot listen (TLS) on", *addr)?;
        }
    }

    let instance = config.instance.clone();
    let nodes: usize = config.upstreams.iter().map(|u| u.nodes.len()).sum();
    let engine = plugin_engine().map_err(StartError::Plugins)?;
    let runtime = SharedRuntime::start(config, engine.clone()).map_err(StartError::Config)?;

    let conf = ServerConf {
        threads: instance
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // Our own retry budget (`retries`, at most 100) decides; Pingora's cap must not cut it.
        max_retries: limits::MAX_RETRIES as usize + 1,
        // Work stealing between worker threads costs more than it balances for a proxy (measured on
        // a bare Pingora proxy: about 17.3 → 16.6 CPU µs per request without it).
        work_stealing: false,
        // the engine waits this long for requests in flight; `Drain` exits as soon as they are done
        grace_period_seconds: Some(instance.drain_timeout.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        upstream_keepalive_pool_size: keepalive_pool_size(nodes),
        upgrade_sock: instance.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let app = EdgeApp::new(
        http_proxy(&server.configuration, Gateway::new(runtime.clone())),
        ListenerLimits::from(&instance.http),
    );
    let mut proxy = Service::new("gatehouse proxy".to_owned(), app);
    for addr in &instance.listen {
        proxy.add_tcp(&addr.to_string());
    }
    if let Some(tls) = &instance.tls {
        for addr in &tls.listen {
            // no files: the resolver takes each handshake's certificate from the current snapshot
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| StartError::Tls(e.to_string()))?;
            settings.set_cert_resolver(Arc::new(crate::tls::Resolver(runtime.clone())));
            if tls.http2 {
                settings.enable_h2();
            }
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        }
    }
    let mut metrics = Service::new("gatehouse metrics".to_owned(), MetricsApp);
    metrics.add_tcp(&instance.metrics.to_string());

    server.add_service(proxy);
    server.add_service(metrics);
    server.add_service(background_service(
        "gatehouse resolver",
        Resolver::new(runtime.clone()),
    ));
    server.add_service(background_service(
        "gatehouse health checks",
        Prober::new(runtime.clone()),
    ));
    server.add_service(background_service("gatehouse drain", Drain));
    server.add_service(background_service(
        "gatehouse access log reopen on SIGUSR1",
        crate::access::ReopenOnUsr1(runtime.clone()),
    ));
    Ok((server, runtime))
}

/// Idle upstream connections kept for reuse. Pingora keeps one LRU for all nodes: round robin over
/// more nodes than it holds evicts every connection before its node comes round again (measured:
/// with the default 128 and a 200-node upstream, every request opened a new connection). Room
/// for two idle connections per node, and never less than 1024 so nodes added at run time fit.
fn keepalive_pool_size(nodes: usize) -> usize {
    (2 * nodes).max(MIN_KEEPALIVE_POOL)
}

const MIN_KEEPALIVE_POOL: usize = 1024;

/// The process's plugin engine.
pub fn plugin_engine() -> Result<Arc<PluginEngine>, String> {
    PluginEngine::new(limits::MAX_PLUGIN_MEMORY)
}

fn check_bindable(what: &'static str, addr: std::net::SocketAddr) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Ends the process as soon as the requests in flight at a graceful stop (SIGTERM, or the hand-off
/// to a new process) have finished. The engine stops accepting at once, then waits its grace
/// period (the configured `drain_timeout`) whatever is left, and cuts what is still running after
/// it; this service makes the wait as short as the requests.
pub struct Drain;

/// How often the drain looks at the requests in flight.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Drain {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let started = std::time::Instant::now();
        log::info!(
            "stopping: no new connections; waiting for {} requests in flight",
            crate::metrics::METRICS.in_flight.get()
        );
        while crate::metrics::METRICS.in_flight.get() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        // the access log writer flushes as soon as its queue runs empty
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        log::info!(
            "stopping: requests in flight finished after {:?}; exiting",
            started.elapsed()
        );
        std::process::exit(0);
    }
}
