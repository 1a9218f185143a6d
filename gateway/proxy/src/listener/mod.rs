//! The client side of the proxy listeners: bounds on how long, how much and how many.
//!
//! Pingora times each read of a request header separately (a client dripping one byte a minute
//! is never cut off) and waits for a kept-alive connection's next request without any timeout.
//! Two thin layers around the engine's HTTP application close those gaps without touching the
//! request path:
//!
//! - [`EdgeApp`] admits a connection only while fewer than `max_connections` are open (past it the
//!   client gets a `503` JSON answer and the connection is closed), and watches the connection's
//!   reads so the next layer knows when a request header starts arriving;
//! - [`EdgeHttp`] runs each request of a connection against a total deadline for its header
//!   (`header_timeout`, from the connection's start for the first request, from the first byte
//!   for a kept-alive one), bounds the idle wait between requests (`idle_timeout`), and caps the
//!   requests per connection.
//!
//! Between two requests of a kept-alive HTTP/1 connection, [`EdgeApp`] waits for the next
//! request's first byte itself, holding only the connection: the engine builds a request's state
//! (its session, header buffer and request future, about 21 KiB) as soon as it starts to wait,
//! so an idle connection would hold it for as long as it idles. When the engine may already hold
//! bytes of the next request (the client pipelined, or the request had a body), the engine waits
//! as before.
//!
//! The header is done once the proxy's first hook runs ([`header_received`]); from then on the
//! request is bounded by the body and backend timeouts instead.
//!
//! When the process starts to stop or hand its sockets over ([`start_draining`]), every answer
//! from then on says `Connection: close` (HTTP/2: a GOAWAY), and a kept-alive connection is
//! closed only between requests: one that sends nothing for [`DRAIN_IDLE_GRACE`] after the
//! drain started. A client busy on its connection gets its next request answered (and told to
//! reconnect) instead of finding the connection gone under it.
//!
//! HTTP/2 connections (ALPN `h2`, or the h2c preface on a plain listener) are driven by
//! [`h2`], which gives the same deadlines their HTTP/2 meaning.
//!
//! A worker thread that goes quiet after connections closed gives their memory back to the
//! system ([`quiet`]).

mod h2;
mod quiet;

pub use h2::{body_progress, set_body_timeout};

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gatehouse_config::HttpOptions;
use once_cell::sync::{Lazy, OnceCell};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

struct ListenerMetrics {
    open: IntGauge,
    closed: IntCounterVec,
}

static METRICS: Lazy<ListenerMetrics> = Lazy::new(|| ListenerMetrics {
    open: register_int_gauge!(
        "gatehouse_downstream_connections",
        "Client connections open on the proxy listeners."
    )
    .expect("metric registers once"),
    closed: register_int_counter_vec!(
        "gatehouse_downstream_connections_refused_total",
        "Client connections the gateway closed on its own, by reason (max_connections: refused \
         at accept; header_timeout: the request header, or an HTTP/2 connection's preface and \
         first request, took too long).",
        &["reason"]
    )
    .expect("metric registers once"),
});

/// Registers the listener metrics, so they show from the start.
pub fn init_metrics() {
    Lazy::force(&METRICS);
}

/// How long a connection kept alive from before the drain may still send its next request.
/// One sending nothing for that long is closed; its client sees an idle connection closed, which
/// HTTP/1.1 clients expect (RFC 9112 §9.5), rather than a request cut.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(2);

static DRAINING: AtomicBool = AtomicBool::new(false);
static DRAIN_STARTED: OnceCell<Instant> = OnceCell::new();
/// Flips to `true` when the drain starts; what the engine and the HTTP/2 connections watch.
static DRAIN: Lazy<tokio::sync::watch::Sender<bool>> =
    Lazy::new(|| tokio::sync::watch::channel(false).0);

/// Starts the drain: from now on answers close their connection, HTTP/2 connections are told to
/// go away, and idle kept-alive connections close after [`DRAIN_IDLE_GRACE`]. Called when the
/// sockets are being handed to a new process, or once a stopping process has closed its
/// listeners; calling it again does nothing.
pub fn start_draining() {
    if DRAINING.swap(true, Ordering::AcqRel) {
        return;
    }
    let _ = DRAIN_STARTED.set(Instant::now());
    DRAIN.send_replace(true);
    log::info!(
        "draining: answers close their connections; idle kept-alive connections close after {:?}",
        DRAIN_IDLE_GRACE
    );
}

/// Whether the drain has started (one atomic load).
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Client connections open on the proxy listeners.
pub fn open_connections() -> i64 {
    METRICS.open.get()
}

/// When the drain started (now, if it has not).
fn drain_started() -> Instant {
    *DRAIN_STARTED.get_or_init(Instant::now)
}

tokio::task_local! {
    /// The state of the connection whose task is running; set by [`EdgeApp`] for HTTP/1
    /// connections.
    static CONNECTION: Arc<ConnectionClock>;
}

/// Runs `f` with the forwarding values the requests of the current HTTP/1 connection share
/// (`None` on an HTTP/2 stream).
pub fn with_forwarding_memo<R>(f: impl FnOnce(Option<&crate::forwarding::Memo>) -> R) -> R {
    let mut f = Some(f);
    match CONNECTION.try_with(|c| (f.take().expect("called once"))(Some(&c.forwarding))) {
        Ok(r) => r,
        Err(_) => (f.take().expect("called once"))(None),
    }
}

/// Marks the current request's header as fully received (called by the proxy's first hook).
/// `bodyless_header_len`: the length of the request's header on the wire when the request has
/// no body (so the engine read exactly that many bytes for it if nothing else arrived), `None`
/// when it has one or the length is unknown.
pub fn header_received(bodyless_header_len: Option<usize>) {
    let _ = CONNECTION.try_with(|c| {
        let expected = bodyless_header_len.map_or(u64::MAX, |n| n as u64);
        c.expected.store(expected, Ordering::Relaxed);
        c.header_done.store(true, Ordering::Release);
    });
}

/// Per connection: when the header of the request being waited for started to arrive.
struct ConnectionClock {
    started: Instant,
    /// Set while waiting for a request header: the next read marks its first byte.
    armed: AtomicBool,
    /// Microseconds after `started` of that first byte, plus one (0: not yet).
    first_byte: AtomicU64,
    first_byte_seen: Notify,
    header_done: AtomicBool,
    /// Bytes handed to the engine since the awaited request started.
    delivered: AtomicU64,
    /// What the engine reads for that request and no more: its header's length when it has no
    /// body; `u64::MAX` when unknown.
    expected: AtomicU64,
    /// A request has been started on this connection already.
    reused: AtomicBool,
    /// The forwarding headers' values its requests share.
    forwarding: crate::forwarding::Memo,
}

impl ConnectionClock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            armed: AtomicBool::new(false),
            first_byte: AtomicU64::new(0),
            first_byte_seen: Notify::new(),
            header_done: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            reused: AtomicBool::new(false),
            forwarding: crate::forwarding::Memo::default(),
        }
    }

    /// Starts waiting for the next request header.
    fn arm(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.expected.store(u64::MAX, Ordering::Relaxed);
        self.header_done.store(false, Ordering::Release);
        self.first_byte.store(0, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    fn saw_bytes(&self) {
        // a plain load first: most reads happen while nothing waits for a first byte
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            let micros = self.started.elapsed().as_micros() as u64 + 1;
            self.first_byte.store(micros, Ordering::Release);
            self.first_byte_seen.notify_one();
        }
    }

    /// Whether the engine was handed exactly the last request and nothing more: no byte of the
    /// next one can be waiting in its buffers.
    fn nothing_read_ahead(&self) -> bool {
        let expected = self.expected.load(Ordering::Relaxed);
        expected != u64::MAX && self.delivered.load(Ordering::Relaxed) == expected
    }

    /// When the first byte of the awaited header arrived, if it has.
    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte.load(Ordering::Acquire) {
            0 => None,
            micros => Some(self.started + Duration::from_micros(micros - 1)),
        }
    }
}

/// The limits the listener layers apply, from `instance.http`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_requests_per_connection: u64,
    pub max_connections: usize,
    pub h2c: bool,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_pending_bodies: usize,
    /// Longest an HTTP/2 stream may go without a byte of its unfinished request body.
    pub body_timeout: Duration,
    /// Largest HTTP/2 header list (the same bound as an HTTP/1.1 header).
    pub max_header_size: u32,
    /// Client connections read through a buffer (`read_buffer` > 0): the first byte of the next
    /// request is read ahead into it, and the rest follows from it without another read.
    pub buffered_reads: bool,
}

impl From<&HttpOptions> for ListenerLimits {
    fn from(h: &HttpOptions) -> Self {
        Self {
            header_timeout: h.header_timeout,
            idle_timeout: h.idle_timeout,
            max_requests_per_connection: h.max_requests_per_connection,
            max_connections: h.max_connections,
            h2c: h.h2c,
            h2_max_concurrent_streams: h.h2_max_concurrent_streams,
            h2_max_pending_resets: h.h2_max_pending_resets,
            h2_max_pending_bodies: h.h2_max_pending_bodies,
            body_timeout: h.body_timeout,
            max_header_size: u32::try_from(h.max_header_size).unwrap_or(u32::MAX),
            buffered_reads: h.read_buffer > 0,
        }
    }
}

/// The HTTP application with the per-request bounds around the engine's proxy.
pub struct EdgeHttp<A> {
    inner: Arc<A>,
    limits: ListenerLimits,
    options: Option<HttpServerOptions>,
    h2: pingora::protocols::http::v2::server::H2Options,
    /// Given to the engine instead of its own shutdown watch: it flips when the drain starts,
    /// not when the engine stops accepting (for a hand-over, seconds later).
    drain: ShutdownWatch,
}

impl<A: HttpServerApp> EdgeHttp<A> {
    pub fn new(inner: A, limits: ListenerLimits) -> Self {
        let mut options = inner.server_options().cloned().unwrap_or_default();
        // The engine counts reuses: a limit of n requests is n - 1 reuses.
        options.keepalive_request_limit = match limits.max_requests_per_connection {
            0 => None,
            n => Some(u32::try_from(n - 1).unwrap_or(u32::MAX)),
        };
        // The connection layer tells HTTP/2 from HTTP/1 itself (under `header_timeout`): the
        // engine's own h2c detection waits for 24 bytes without a deadline.
        options.h2c = false;
        let mut h2 = inner.h2_options().unwrap_or_default();
        h2.max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_size)
            .max_pending_accept_reset_streams(limits.h2_max_pending_resets);
        Self {
            inner: Arc::new(inner),
            limits,
            options: Some(options),
            h2,
            drain: DRAIN.subscribe(),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for EdgeHttp<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if session.get_keepalive().is_some() {
            // Each read of the next request waits at most this long (the engine's own default
            // for a kept-alive connection is to wait forever).
            session.set_keepalive(Some(self.limits.idle_timeout.as_secs().max(1)));
        }
        let Ok(clock) = CONNECTION.try_with(Arc::clone) else {
            // HTTP/2 streams: the connection's own limits apply
            return self.inner.process_new_http(session, &self.drain).await;
        };
        let first_request = !clock.reused.swap(true, Ordering::AcqRel);
        clock.arm();
        let started = Instant::now();
        let request = self.inner.process_new_http(session, &self.drain);
        tokio::pin!(request);
        tokio::select! {
            biased;
            reused = &mut request => reused,
            cut = self.watchdog(&clock, started, first_request) => match cut {
                Cut::HeaderTimeout => {
                    METRICS.closed.with_label_values(&["header_timeout"]).inc();
                    log::debug!("closing a connection whose request header took longer than {:?}", self.limits.header_timeout);
                    None
                }
                Cut::IdleInDrain => {
                    log::debug!("draining: closing a kept-alive connection idle between requests");
                    None
                }
                Cut::HeaderDone => request.await,
            }
        }
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        Some(self.h2.clone())
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.options.as_ref()
    }

    async fn http_cleanup(&self) {
        // The engine stopped accepting and closed the listeners (on SIGTERM the drain starts
        // only now, so that clients told to reconnect are refused, never left queued on a
        // socket nobody accepts from any more). Its own cleanup closes every kept-alive connection at
        // once, under requests that may be on their way: let the idle ones close themselves
        // between requests first (`process_new_http`).
        start_draining();
        let grace = DRAIN_IDLE_GRACE.min(self.limits.idle_timeout);
        tokio::time::sleep_until((drain_started() + grace + Duration::from_secs(1)).into()).await;
        self.inner.http_cleanup().await
    }
}

/// Why a request's watchdog ended it (or stopped watching).
enum Cut {
    /// Its header was not complete `header_timeout` after its first byte (the first request
    /// of a connection: after the accept).
    HeaderTimeout,
    /// Its connection was kept alive and idle a grace after the drain started.
    IdleInDrain,
    /// Its header is in: the body and backend timeouts bound it from here.
    HeaderDone,
}

impl<A> EdgeHttp<A> {
    /// Watches one request of a connection: the header deadline, and the drain while the
    /// connection idles before it. A request answered soon (the common case on a kept-alive
    /// connection) costs one timer and nothing else: whether its first byte came, and when, is
    /// read from the connection's clock when the timer fires, and only a connection found idle
    /// then waits for its first byte or for the drain.
    async fn watchdog(
        &self,
        clock: &ConnectionClock,
        started: Instant,
        first_request: bool,
    ) -> Cut {
        let header_timeout = self.limits.header_timeout;
        if first_request {
            // the first request's clock runs from the accept
            sleep_until(started + header_timeout).await;
            return Self::header_cut(clock);
        }
        // a kept-alive connection may idle (bounded by `idle_timeout`) until its next request
        // starts; the header's deadline runs from its first byte
        let grace = DRAIN_IDLE_GRACE.min(self.limits.idle_timeout);
        sleep_until(started + header_timeout.min(grace)).await;
        let first = loop {
            // (registered before the clock is read, so that a byte arriving in between wakes it)
            let byte = clock.first_byte_seen.notified();
            tokio::pin!(byte);
            byte.as_mut().enable();
            if let Some(first) = clock.first_byte() {
                break first;
            }
            if draining() {
                // still idle a grace after the drain started: closed; a request that begins
                // to arrive meanwhile is answered
                let closing = drain_started().max(started) + grace;
                tokio::select! {
                    biased;
                    () = &mut byte => continue,
                    () = sleep_until(closing) => {}
                }
                if clock.first_byte().is_none() {
                    return Cut::IdleInDrain;
                }
                continue;
            }
            let mut drain = self.drain.clone();
            tokio::select! {
                biased;
                () = &mut byte => {}
                _ = drain.wait_for(|draining| *draining) => {}
            }
        };
        sleep_until(first + header_timeout).await;
        Self::header_cut(clock)
    }

    /// Waits, between two requests of a kept-alive connection, for the next one's first byte:
    /// `false` when the connection is to close instead (the client closed it or went silent
    /// for `idle_timeout`, or it stayed idle a grace after the drain started).
    async fn await_next_request(&self, watched: &mut Watched) -> bool {
        let started = Instant::now();
        // the engine's own wait counts whole seconds, at least one
        let idle = Duration::from_secs(self.limits.idle_timeout.as_secs().max(1));
        let grace = DRAIN_IDLE_GRACE.min(self.limits.idle_timeout);
        let mut drain = self.drain.clone();
        let drained = async move {
            if drain.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
            sleep_until(drain_started().max(started) + grace).await;
        };
        tokio::select! {
            biased;
            first = watched.hold_first_byte() => matches!(first, Ok(true)),
            () = sleep_until(started + idle) => false,
            () = drained => {
                log::debug!("draining: closing a kept-alive connection idle between requests");
                false
            }
        }
    }

    fn header_cut(clock: &ConnectionClock) -> Cut {
        if clock.header_done.load(Ordering::Acquire) {
            Cut::HeaderDone
        } else {
            Cut::HeaderTimeout
        }
    }
}

fn sleep_until(at: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(at.into())
}

/// The connection layer: admission under `max_connections` and the read watch.
pub struct EdgeApp<A> {
    http: Arc<EdgeHttp<A>>,
    open: Arc<AtomicUsize>,
    max: usize,
}

impl<A: HttpServerApp> EdgeApp<A> {
    pub fn new(inner: A, limits: ListenerLimits) -> Self {
        init_metrics();
        h2::init_metrics();
        Self {
            http: Arc::new(EdgeHttp::new(inner, limits)),
            open: Arc::new(AtomicUsize::new(0)),
            max: limits.max_connections,
        }
    }
}

/// Releases a connection slot when the connection ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        METRICS.open.dec();
        quiet::connection_event();
    }
}

/// The answer to a connection past `max_connections`.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
cache-control: no-store\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 105\r\n\r\n\
{\"status\":503,\"error\":\"over_capacity\",\"message\":\"the gateway is at its connection limit; retry shortly\"}\n";

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            METRICS.closed.with_label_values(&["max_connections"]).inc();
            let refuse = async {
                let _ = stream.write_all(OVER_CAPACITY).await;
                let _ = stream.flush().await;
                Shutdown::shutdown(&mut *stream).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
            return None;
        }
        METRICS.open.inc();
        quiet::connection_event();
        let _slot = Slot(self.open.clone());
        let clock = Arc::new(ConnectionClock::new());
        let header_deadline = clock.started + self.http.limits.header_timeout;
        let mut watched = Watched {
            inner: stream,
            clock: clock.clone(),
            replay: Vec::new(),
            replayed: 0,
            held: None,
        };
        let http2 = if watched.inner.get_ssl_digest().is_some() {
            matches!(watched.inner.selected_alpn_proto(), Some(ALPN::H2))
        } else if self.http.limits.h2c {
            match tokio::time::timeout_at(header_deadline.into(), watched.read_preface()).await {
                Ok(Ok(http2)) => http2,
                Ok(Err(e)) => {
                    log::debug!("a client connection ended before its first request: {e}");
                    return None;
                }
                Err(_) => {
                    METRICS.closed.with_label_values(&["header_timeout"]).inc();
                    log::debug!(
                        "closing a connection that sent no request within {:?}",
                        self.http.limits.header_timeout
                    );
                    return None;
                }
            }
        } else {
            false
        };
        if http2 {
            h2::serve(
                &self.http,
                Box::new(watched),
                &self.http.drain,
                header_deadline,
            )
            .await;
            return None;
        }
        CONNECTION
            .scope(clock.clone(), self.serve_http1(watched, &clock))
            .await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.http).await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> EdgeApp<A> {
    /// The requests of an HTTP/1 connection, one after the other, as the engine's own loop
    /// serves them, except for the wait between two of them (see the module's documentation).
    async fn serve_http1(&self, watched: Watched, clock: &ConnectionClock) -> Option<Stream> {
        let http = &self.http;
        let mut session = ServerSession::new_http1(Box::new(watched));
        if *http.drain.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(60));
        }
        session.set_keepalive_reuses_remaining(
            http.options
                .as_ref()
                .and_then(|o| o.keepalive_request_limit),
        );
        loop {
            let (stream, settings) = http.process_new_http(session, &http.drain).await?.consume();
            let stream: Stream = if http.limits.buffered_reads && clock.nothing_read_ahead() {
                let Ok(mut watched) = stream.into_any().downcast::<Watched>() else {
                    log::error!(
                        "a kept-alive client connection is not the listener's own; closing it"
                    );
                    return None;
                };
                if !http.await_next_request(&mut watched).await {
                    return None;
                }
                watched
            } else {
                stream
            };
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// A client stream that tells its connection's clock when bytes arrive; everything else is the
/// inner stream's.
struct Watched {
    inner: Stream,
    clock: Arc<ConnectionClock>,
    /// Bytes read to tell HTTP/2 from HTTP/1, given back to the first reads.
    replay: Vec<u8>,
    replayed: usize,
    /// The first byte of the next request, read while the connection waited for it.
    held: Option<u8>,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Watched {
    /// Waits for the next request's first byte and keeps it for the engine's next read: `false`
    /// when the client closed the connection. The read fills the stream's read buffer, so the
    /// rest of the request is there too when the engine reads it.
    async fn hold_first_byte(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        if self.inner.read(&mut byte).await? == 0 {
            return Ok(false);
        }
        self.held = Some(byte[0]);
        Ok(true)
    }

    /// Notes `n` bytes handed to the engine.
    fn delivered(&self, n: usize) {
        self.clock.delivered.fetch_add(n as u64, Ordering::Relaxed);
        self.clock.saw_bytes();
    }

    /// Reads until the bytes received either are the HTTP/2 preface or cannot begin it, and
    /// keeps them for the protocol's own reads. A short HTTP/1 request (or a client that closes)
    /// is told apart at its first byte, without waiting for 24 of them.
    async fn read_preface(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut got = 0;
        loop {
            let n = self.inner.read(&mut buf[got..]).await?;
            got += n;
            self.replay.extend_from_slice(&buf[got - n..got]);
            if n == 0 || !H2_PREFACE.starts_with(&buf[..got]) {
                return Ok(false);
            }
            if got == H2_PREFACE.len() {
                return Ok(true);
            }
        }
    }
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            this.delivered(n);
            return Poll::Ready(Ok(()));
        }
        if let Some(byte) = this.held {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            buf.put_slice(&[byte]);
            this.held = None;
            // and what followed it, without waiting; an error shows on the next read
            let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.delivered(buf.filled().len() - before);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.delivered(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.replay.is_empty() && self.held.is_none() {
            self.inner.try_peek(buf).await
        } else {
            // the bytes read already are not in the inner stream's peek buffer
            Ok(false)
        }
    }
}
