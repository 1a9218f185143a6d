//! The smallest useful Pingora reverse proxy, forwarding every request to one upstream address
//! over kept-alive connections: the program of `bare-pingora` (on mimalloc, like Gatehouse) and
//! of `bare-pingora-system-alloc` (on the C library's allocator).
//!
//! It runs with the same server settings as Gatehouse (worker threads from a flag, no work
//! stealing), so the gap between the two is what Gatehouse adds on top of its engine:
//! routing, node selection, metrics, plugins. With `--tls-listen` it also terminates TLS
//! (rustls, HTTP/2 and HTTP/1.1 offered by ALPN) the way Gatehouse's TLS listeners do.
//!
//! The engine's settings that can change from outside it are flags too (work stealing, the
//! client read buffer, the upstream keep-alive pool, the upstream idle timeout), so that the
//! bench can weigh each against nginx in one run.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

/// A minimal Pingora reverse proxy to one upstream: the engine's own ceiling.
#[derive(Parser)]
#[command(name = "bare-pingora")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:28180")]
    listen: SocketAddr,
    /// The upstream every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also listen with TLS on this address (HTTP/2 and HTTP/1.1 by ALPN).
    #[arg(long, requires = "cert", requires = "key")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener, leaf first.
    #[arg(long)]
    cert: Option<String>,
    /// PEM private key of the TLS listener's certificate.
    #[arg(long)]
    key: Option<String>,
    /// Let worker threads steal each other's tasks (Pingora's default; off like Gatehouse).
    #[arg(long)]
    work_stealing: bool,
    /// Size of each client connection's read buffer, bytes (default: the engine's, 64 KiB).
    #[arg(long)]
    read_buffer: Option<usize>,
    /// Idle upstream connections kept per worker thread (the engine's default: 128).
    #[arg(long)]
    pool_size: Option<usize>,
    /// How long an idle upstream connection is kept, seconds (default: until the pool evicts it).
    #[arg(long)]
    upstream_idle_timeout: Option<u64>,
}

/// Forwards to a single plain-HTTP upstream.
struct Forward {
    upstream: SocketAddr,
    idle_timeout: Option<Duration>,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = self.idle_timeout;
        Ok(Box::new(peer))
    }
}

pub fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        upstream_keepalive_pool_size: args
            .pool_size
            .unwrap_or(ServerConf::default().upstream_keepalive_pool_size),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Forward {
            upstream: args.upstream,
            idle_timeout: args.upstream_idle_timeout.map(Duration::from_secs),
        },
    );
    match args.read_buffer {
        Some(size) => proxy.add_listener(
            ListenerConfig::tcp(args.listen.to_string())
                .l4_buffer(L4BufferSettings::default().read(size)),
        ),
        None => proxy.add_tcp(&args.listen.to_string()),
    }
    if let (Some(addr), Some(cert), Some(key)) = (args.tls_listen, &args.cert, &args.key) {
        let mut tls = match TlsSettings::intermediate(cert, key) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!(
                    "bare-pingora: {cert} and {key} are not a usable certificate and key: {e}"
                );
                std::process::exit(2);
            }
        };
        tls.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, tls);
        println!("bare-pingora TLS on {addr}");
    }
    server.add_service(proxy);
    println!(
        "bare-pingora on {} -> {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
