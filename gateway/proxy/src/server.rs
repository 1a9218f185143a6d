//! Assembles the Pingora server: the proxy listeners, the metrics endpoint and the resolver.

use std::net::TcpListener;

use std::sync::Arc;

use gatehouse_config::{limits, Config, Problem};
use gatehouse_plugin_host::PluginEngine;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
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
    #[error("{0}")]
    Upgrade(String),
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

/// How a new process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// It binds them.
    Bind,
    /// It takes them over from the running process once that one is sent `SIGQUIT` (waiting up
    /// to `instance.upgrade_timeout`).
    Upgrade,
    /// It takes them over at once, for 5 s: how a running process of an earlier version, which
    /// does not say that it was sent `SIGQUIT`, hands them over.
    UpgradeNow,
}

/// Builds a ready-to-run server for `config`. Reads CA files and resolves node names once.
/// With an upgrade, the listening sockets are taken over from the running process (which is
/// sent `SIGQUIT` to hand them over) instead of bound.
pub fn build(config: Config, sockets: Sockets) -> Result<(Server, SharedRuntime), StartError> {
    let upgrade = sockets != Sockets::Bind;
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
    if sockets == Sockets::Upgrade {
        // the engine listens for the sockets for 5 s only: start listening once the running
        // process has been told to hand them over
        wait_for_handover(&instance.upgrade_socket, instance.upgrade_timeout)?;
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let app = EdgeApp::new(
        http_proxy(&server.configuration, Gateway::new(runtime.clone())),
        ListenerLimits::from(&instance.http),
    );
    let mut proxy = Service::new("gatehouse proxy".to_owned(), app);
    for addr in &instance.listen {
        let buffer = L4BufferSettings::default().read(instance.http.read_buffer);
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffer));
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
/// to a new process) have finished and their connections have closed. The engine stops
/// accepting at once, then waits its grace period (the configured `drain_timeout`) whatever is
/// left, and cuts what is still running after it; this service makes the wait as short as the
/// requests. Kept-alive connections close on their own meanwhile: after the answer to their
/// next request, or idle after a short grace ([`crate::listener::DRAIN_IDLE_GRACE`]).
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
            "stopping: no new connections; waiting for {} requests in flight and {} client connections",
            crate::metrics::METRICS.in_flight.get(),
            crate::listener::open_connections()
        );
        while crate::metrics::METRICS.in_flight.get() > 0 || crate::listener::open_connections() > 0
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        // the access log writer flushes as soon as its queue runs empty
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        log::info!(
            "stopping: requests in flight finished and client connections closed after {:?}; exiting",
            started.elapsed()
        );
        std::process::exit(0);
    }
}

/// The file a running process sent `SIGQUIT` keeps beside the upgrade socket while it waits for a
/// new process to take its sockets (it holds that process's id).
fn handover_marker(socket: &std::path::Path) -> std::path::PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".handover");
    std::path::PathBuf::from(name)
}

/// Waits, up to `timeout`, until the running process has been sent `SIGQUIT` and waits for this
/// one ([`handover_marker`]), saying so now and then.
fn wait_for_handover(
    socket: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<(), StartError> {
    let marker = handover_marker(socket);
    let started = std::time::Instant::now();
    let mut said = std::time::Duration::ZERO;
    while !marker.exists() {
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(StartError::Upgrade(format!(
                "no running process was sent SIGQUIT to hand its sockets over ({} waited; instance.upgrade_timeout is {}); send SIGQUIT to the running gatehouse within that time",
                humantime::format_duration(std::time::Duration::from_secs(waited.as_secs())),
                humantime::format_duration(timeout)
            )));
        }
        if waited >= said {
            log::info!(
                "waiting up to {} for the running process to be sent SIGQUIT (it then hands its sockets over through {})",
                humantime::format_duration(timeout),
                socket.display()
            );
            said += std::time::Duration::from_secs(30);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    log::info!("the running process is handing its sockets over");
    Ok(())
}

/// The signals that stop or upgrade the gateway: `SIGTERM` drains and exits, `SIGINT` exits at
/// once, `SIGQUIT` hands the listening sockets to a new process started with `gatehouse run
/// --upgrade`. A `SIGQUIT` with no new process listening on the upgrade socket waits for one, up
/// to `instance.upgrade_timeout`; if none comes, this process keeps serving and says why,
/// rather than stop with nobody to take its sockets.
pub struct Signals {
    pub upgrade_socket: std::path::PathBuf,
    pub upgrade_timeout: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch the stop and upgrade signals; SIGTERM stops at once");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                // the drain starts once the listeners are closed (a client told to reconnect
                // must be refused, not queued on a socket nobody accepts from any more)
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = quit.recv() => {
                    let marker = handover_marker(&self.upgrade_socket);
                    if let Err(e) = std::fs::write(&marker, std::process::id().to_string()) {
                        log::warn!("SIGQUIT: cannot write {}: {e}; a new process may not see this one waiting", marker.display());
                    }
                    let waits = self.new_process_waits().await;
                    let _ = std::fs::remove_file(&marker);
                    if waits {
                        // the new process accepts from the same sockets: clients told to
                        // reconnect from now on reach it
                        crate::listener::start_draining();
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    log::error!(
                        "SIGQUIT: no process started with `gatehouse run --upgrade` listened on {} within {}; this process keeps serving (start the new process, then send SIGQUIT again)",
                        self.upgrade_socket.display(),
                        humantime::format_duration(self.upgrade_timeout)
                    );
                }
            }
        }
    }
}

impl Signals {
    /// Whether a new process listens on the upgrade socket, waiting up to the upgrade timeout.
    async fn new_process_waits(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.upgrade_timeout;
        let mut said = false;
        loop {
            if listening_on(&self.upgrade_socket) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            if !said {
                log::info!(
                    "SIGQUIT: waiting up to {} for a process started with `gatehouse run --upgrade` to listen on {}",
                    humantime::format_duration(self.upgrade_timeout),
                    self.upgrade_socket.display()
                );
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Whether a process listens on the Unix socket at `path`, read from `/proc/net/unix` (its
/// `Flags` carry `__SO_ACCEPTCON` for a listening socket). Connecting to find out would be taken
/// for the hand-over itself.
fn listening_on(path: &std::path::Path) -> bool {
    const ACCEPTING: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        // no table to read: let the engine try, as it always did
        return true;
    };
    let wanted = path.display().to_string();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[7] == wanted
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & ACCEPTING != 0)
    })
}
