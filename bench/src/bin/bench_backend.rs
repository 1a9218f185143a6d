//! `bench-backend`: a fast keep-alive HTTP/1.1 backend for load tests.
//!
//! Every request is answered `200 OK` with a body of a fixed size, from a response rendered once at
//! start. Pipelined requests are answered in one write. Request bodies with `content-length` are
//! read and discarded; chunked request bodies are refused (the load tests never send them).
//! `GET /__bench/stats` answers the connections accepted and requests answered so far, as JSON, so
//! a load test can tell how well a proxy reuses its upstream connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fast keep-alive HTTP/1.1 backend answering 200 with a fixed-size body.
#[derive(Parser)]
#[command(name = "bench-backend")]
struct Args {
    /// Address to listen on (0.0.0.0:PORT answers on every loopback address).
    #[arg(long, default_value = "127.0.0.1:28100")]
    listen: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 0)]
    body: usize,
    /// Worker threads; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Largest request (head and body) buffered.
const MAX_REQUEST: usize = 1 << 20;

/// The path that answers the counters instead of the fixed body.
const STATS_PATH: &str = "/__bench/stats";

/// Connections accepted and requests answered since start.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn main() -> io::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_io()
            .build()?
    };
    runtime.block_on(serve(args))
}

/// Accepts connections forever; each is served by its own task.
async fn serve(args: Args) -> io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let responses = Arc::new(Responses::new(args.body));
    println!(
        "bench-backend listening on {} ({} B bodies, {} thread(s))",
        listener.local_addr()?,
        args.body,
        args.threads.max(1)
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let responses = responses.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, &responses).await;
        });
    }
}

/// The prebuilt answers.
struct Responses {
    /// Head and body of the keep-alive answer.
    keep_alive: Vec<u8>,
    /// Length of the head alone (the answer to `HEAD`).
    head_len: usize,
    /// Head and body of the answer that closes the connection.
    close: Vec<u8>,
}

impl Responses {
    fn new(body: usize) -> Self {
        let render = |extra: &str| {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {body}\r\n{extra}\r\n"
            )
            .into_bytes();
            let head_len = out.len();
            out.resize(head_len + body, b'x');
            (out, head_len)
        };
        let (keep_alive, head_len) = render("");
        let (close, _) = render("connection: close\r\n");
        Self {
            keep_alive,
            head_len,
            close,
        }
    }
}

/// What the server needs to know about one parsed request head.
struct Head {
    content_length: usize,
    chunked: bool,
    keep_alive: bool,
    is_head: bool,
}

impl Head {
    fn of(req: &httparse::Request) -> Self {
        let mut head = Head {
            content_length: 0,
            chunked: false,
            // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it.
            keep_alive: req.version == Some(1),
            is_head: req.method == Some("HEAD"),
        };
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                head.content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                let value = h.value.to_ascii_lowercase();
                if value.windows(5).any(|w| w == b"close") {
                    head.keep_alive = false;
                } else if value.windows(10).any(|w| w == b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        }
        head
    }
}

/// Serves requests on one connection until the client closes it or asks to.
async fn serve_connection(mut stream: TcpStream, responses: &Responses) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut out = Vec::with_capacity(responses.keep_alive.len());
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // Answer every complete request in the buffer.
        let mut start = 0;
        let mut close = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(&buf[start..filled]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return refuse(&mut stream, "400 Bad Request").await,
            };
            let head = Head::of(&req);
            if head.chunked {
                return refuse(&mut stream, "411 Length Required").await;
            }
            if head_len + head.content_length > MAX_REQUEST {
                return refuse(&mut stream, "413 Content Too Large").await;
            }
            if filled - start < head_len + head.content_length {
                break;
            }
            start += head_len + head.content_length;
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            if req.path == Some(STATS_PATH) {
                out.extend_from_slice(&stats_response());
                continue;
            }
            let answer = if head.keep_alive {
                &responses.keep_alive
            } else {
                &responses.close
            };
            let len = if head.is_head {
                answer.len() - (responses.keep_alive.len() - responses.head_len)
            } else {
                answer.len()
            };
            out.extend_from_slice(&answer[..len]);
            if !head.keep_alive {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        // Keep the unanswered rest at the front; grow the buffer for a large request.
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            if buf.len() >= MAX_REQUEST {
                return refuse(&mut stream, "413 Content Too Large").await;
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// The counters as a JSON answer.
fn stats_response() -> Vec<u8> {
    let body = format!(
        "{{\"connections\":{},\"requests\":{}}}",
        CONNECTIONS.load(Ordering::Relaxed),
        REQUESTS.load(Ordering::Relaxed)
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers an error status and closes the connection.
async fn refuse(stream: &mut TcpStream, status: &str) -> io::Result<()> {
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await
}
