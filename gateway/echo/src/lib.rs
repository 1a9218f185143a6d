//! A small keep-alive HTTP/1.1 backend that answers every request with a JSON description of what
//! it received (node name, method, URI, Host, headers, body size) and an `X-Echo-Node` header.
//!
//! It stands in for private services in `gatehouse demo`, in the end-to-end tests and in the
//! benchmarks. It is not part of the gateway's request path. Each server runs on its own thread
//! with its own single-threaded runtime, so it works the same from sync and async callers.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the server does with each request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer 200 with the JSON description.
    Echo,
    /// Answer 200 with a body of exactly this many bytes (for benchmarks).
    Fixed(usize),
    /// Read the whole request, then close the connection without answering.
    Hangup,
    /// Wait, then answer like [`Behavior::Echo`].
    Delay(Duration),
    /// Answer like [`Behavior::Echo`], with this status.
    Status(u16),
    /// Answer the first request of each connection; read any later one, then close without
    /// answering (a node closing an idle connection just as a request arrives on it).
    HangupOnReuse,
}

/// Settings of one echo server.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Reported as `node` in the JSON and in `X-Echo-Node`.
    pub name: String,
    pub behavior: Behavior,
}

impl EchoConfig {
    pub fn echo(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            behavior: Behavior::Echo,
        }
    }

    pub fn with_behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }
}

/// Counters shared by all connections of one server.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
}

impl Stats {
    /// Requests fully read (answered or, for [`Behavior::Hangup`], dropped).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A running echo server; it stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks a free port) and serves on a thread of its own.
    pub fn start(addr: SocketAddr, config: EchoConfig) -> io::Result<Self> {
        Self::from_listener(StdListener::bind(addr)?, config)
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: StdListener, config: EchoConfig) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (stop, mut stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_stats = stats.clone();
        let config = Arc::new(config);
        std::thread::Builder::new()
            .name(format!("echo-{}", config.name))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("echo server {addr}: {e}");
                            return;
                        }
                    };
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let _ = stream.set_nodelay(true);
                                thread_stats.connections.fetch_add(1, Ordering::SeqCst);
                                let (config, stats) = (config.clone(), thread_stats.clone());
                                tokio::spawn(async move {
                                    let _ = serve_connection(stream, &config, &stats).await;
                                });
                            }
                        }
                    }
                });
            })?;
        Ok(Self { addr, stats, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Serves HTTP/1.1 requests on one connection until the peer closes it or asks to.
pub async fn serve_connection<S>(
    mut stream: S,
    config: &EchoConfig,
    stats: &Stats,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut served = 0u64;
    loop {
        // Read until a full request head is buffered.
        let (head_len, request) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => break (n, Request::from_parsed(&req)),
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                _ => {
                    stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await?;
                    return Ok(());
                }
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        buf.drain(..head_len);
        let body_len = read_body(&mut stream, &mut buf, &request).await?;
        stats.requests.fetch_add(1, Ordering::SeqCst);

        served += 1;
        let body = match &config.behavior {
            Behavior::Hangup => return Ok(()),
            Behavior::HangupOnReuse if served > 1 => return Ok(()),
            Behavior::HangupOnReuse => request.describe(&config.name, body_len),
            Behavior::Fixed(n) => vec![b'x'; *n],
            Behavior::Delay(d) => {
                tokio::time::sleep(*d).await;
                request.describe(&config.name, body_len)
            }
            Behavior::Echo | Behavior::Status(_) => request.describe(&config.name, body_len),
        };
        let status = match config.behavior {
            Behavior::Status(code) => code,
            _ => 200,
        };
        let content_type = match config.behavior {
            Behavior::Fixed(_) => "text/plain",
            _ => "application/json",
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-echo-node: {}\r\n{}\r\n",
            if status == 200 { "OK" } else { "Status" },
            body.len(),
            config.name,
            if request.keep_alive { "" } else { "connection: close\r\n" },
        );
        let mut out = head.into_bytes();
        if request.method != "HEAD" {
            out.extend_from_slice(&body);
        }
        stream.write_all(&out).await?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Consumes the request body from `buf` and the stream; returns its size.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    req: &Request,
) -> io::Result<usize> {
    if req.chunked {
        let mut total = 0;
        loop {
            let line_end = loop {
                if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                    break pos;
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            buf.drain(..line_end + 2);
            // chunk data plus its CRLF (the last chunk is followed by an empty trailer line)
            while buf.len() < size + 2 {
                if read_more(stream, buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            buf.drain(..size + 2);
            total += size;
            if size == 0 {
                return Ok(total);
            }
        }
    }
    while buf.len() < req.content_length {
        if read_more(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    buf.drain(..req.content_length);
    Ok(req.content_length)
}

struct Request {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    content_length: usize,
    chunked: bool,
    keep_alive: bool,
}

impl Request {
    fn from_parsed(req: &httparse::Request) -> Self {
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let http10 = req.version == Some(0);
        let connection = find("connection").unwrap_or_default();
        Self {
            method: req.method.unwrap_or("").to_owned(),
            uri: req.path.unwrap_or("").to_owned(),
            content_length: find("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            chunked: find("transfer-encoding").is_some_and(|v| v.contains("chunked")),
            keep_alive: if http10 {
                connection == "keep-alive"
            } else {
                connection != "close"
            },
            headers,
        }
    }

    fn describe(&self, node: &str, body_bytes: usize) -> Vec<u8> {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let host = self
            .headers
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| v.as_str());
        let mut body = serde_json::to_vec(&serde_json::json!({
            "node": node,
            "method": self.method,
            "uri": self.uri,
            "host": host,
            "headers": headers,
            "body_bytes": body_bytes,
        }))
        .unwrap_or_default();
        body.push(b'\n');
        body
    }
}
