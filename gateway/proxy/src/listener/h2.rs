//! HTTP/2 client connections, bounded like HTTP/1 ones.
//!
//! The engine drives an HTTP/2 connection with no deadline before its first stream and none on a
//! stream's request body. This loop accepts the streams itself and gives each `instance.http`
//! bound its HTTP/2 meaning:
//!
//! - `header_timeout`: from the accept (after the TLS handshake) until the preface and the first
//!   complete HEADERS; a connection still short of them is closed;
//! - `idle_timeout`: a connection with no open stream for that long gets a GOAWAY and is closed
//!   once the client has had a moment to read it;
//! - `max_requests_per_connection`: the stream that reaches it is served, then GOAWAY;
//! - `body_timeout`, per stream: a stream whose unfinished request body brings no byte for that
//!   long is reset (`RST_STREAM`, `CANCEL`);
//! - `h2_max_pending_bodies`, per connection: the streams still receiving their request body;
//!   one more stream with a body is refused (`RST_STREAM`, `REFUSED_STREAM`: the client may
//!   retry it).
//!
//! A stream without a body (END_STREAM on its HEADERS) costs nothing here beyond a counter.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use prometheus::{register_int_counter_vec, IntCounterVec};
use tokio::sync::Notify;

use super::{EdgeHttp, METRICS};

static STREAMS_RESET: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_downstream_streams_reset_total",
        "HTTP/2 client streams the gateway reset on its own, by reason (body_timeout: the request \
         body stalled; pending_bodies: too many streams of the connection were receiving a body).",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Registers the stream metrics, so they show from the start.
pub(super) fn init_metrics() {
    Lazy::force(&STREAMS_RESET);
}

/// Streams the engine rejected while accepting them (malformed targets, framing, authority)
/// before the connection is closed: the engine's own budget, which its public accept call does
/// not keep across calls.
const MAX_REJECTED_STREAMS: usize = 32;

/// How long a connection told to go away (GOAWAY) may stay open with no stream in flight: time
/// for the client to read the GOAWAY and close first.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The request body clock of the HTTP/2 stream whose task is running, when the stream has a
    /// body to receive.
    static BODY: Arc<BodyClock>;
}

/// Sets the body timeout of the current HTTP/2 stream from the configuration serving it (a
/// reload changes it for new requests, as for HTTP/1).
pub fn set_body_timeout(timeout: Duration) {
    let _ = BODY.try_with(|b| {
        b.timeout_micros
            .store(timeout.as_micros() as u64, Ordering::Release)
    });
}

/// Records that request body bytes arrived on the current HTTP/2 stream (`end`: the body is
/// complete). Called by the proxy as it reads the body; nothing happens outside an HTTP/2 stream
/// with a body.
pub fn body_progress(end: bool) {
    let _ = BODY.try_with(|b| b.progress(end));
}

/// Per connection: streams in flight, and those still receiving a request body.
struct Streams {
    active: AtomicUsize,
    idle: Notify,
    receiving_body: AtomicUsize,
}

impl Streams {
    async fn wait_until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a stream's task for its lifetime.
struct InFlight {
    streams: Arc<Streams>,
    body: Option<Arc<BodyClock>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(body) = &self.body {
            body.finish();
        }
        if self.streams.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.streams.idle.notify_waiters();
        }
    }
}

/// When the request body of one stream last made progress.
struct BodyClock {
    started: Instant,
    /// Microseconds after `started` of the last body bytes.
    last: AtomicU64,
    timeout_micros: AtomicU64,
    done: AtomicBool,
    streams: Arc<Streams>,
}

impl BodyClock {
    fn progress(&self, end: bool) {
        self.last
            .store(self.started.elapsed().as_micros() as u64, Ordering::Release);
        if end {
            self.finish();
        }
    }

    fn finish(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.streams.receiving_body.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Resolves when the body has gone its timeout without a byte while still unfinished.
    async fn stalled(&self) {
        loop {
            if self.done.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            let last = self.started + Duration::from_micros(self.last.load(Ordering::Acquire));
            let deadline =
                last + Duration::from_micros(self.timeout_micros.load(Ordering::Acquire));
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Why the accept loop stopped waiting for the next stream.
enum Wait {
    /// No complete first request within `header_timeout`.
    Header,
    /// No stream open for `idle_timeout`.
    Idle,
    /// Told to go away, nothing left in flight, and the grace is over.
    Gone,
}

/// Serves one HTTP/2 client connection: the preface, the streams, the bounds above.
pub(super) async fn serve<A>(
    http: &Arc<EdgeHttp<A>>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    header_deadline: Instant,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let limits = http.limits;
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match tokio::time::timeout_at(
        header_deadline.into(),
        handshake(stream, Some(http.h2.clone())),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            log::debug!("an HTTP/2 client failed its handshake: {e}");
            return;
        }
        Err(_) => {
            header_timed_out(limits.header_timeout);
            return;
        }
    };
    let streams = Arc::new(Streams {
        active: AtomicUsize::new(0),
        idle: Notify::new(),
        receiving_body: AtomicUsize::new(0),
    });
    let mut shutdown = shutdown.clone();
    let mut first = true;
    let mut going_away = false;
    let mut accepted: u64 = 0;
    let mut rejected = 0usize;
    loop {
        let wait = next_stream_deadline(
            &streams,
            first,
            going_away,
            header_deadline,
            limits.idle_timeout,
        );
        let next = tokio::select! {
            biased;
            _ = shutdown.changed(), if !going_away => {
                conn.graceful_shutdown();
                going_away = true;
                continue;
            }
            next = HttpSession::from_h2_conn(&mut conn, digest.clone()) => next,
            why = wait => match why {
                Wait::Header => {
                    header_timed_out(limits.header_timeout);
                    return;
                }
                Wait::Idle => {
                    log::debug!("an HTTP/2 connection idle for {:?} is told to go away", limits.idle_timeout);
                    conn.graceful_shutdown();
                    going_away = true;
                    continue;
                }
                Wait::Gone => return,
            },
        };
        let mut session = match next {
            Ok(Some(H2Accept::Session(session))) => session,
            Ok(Some(H2Accept::Rejected)) => {
                // answered or reset by the engine: a malformed request still ends the wait for
                // a first one
                first = false;
                rejected += 1;
                if rejected >= MAX_REJECTED_STREAMS {
                    log::debug!("closing an HTTP/2 connection after {rejected} malformed requests");
                    return;
                }
                continue;
            }
            // the client closed, or the connection broke (clients often just drop TCP)
            Ok(None) => return,
            Err(e) => {
                log::debug!("an HTTP/2 connection ended: {e}");
                return;
            }
        };
        first = false;
        accepted += 1;
        let receiving_body = !session.is_body_done();
        if receiving_body
            && streams.receiving_body.load(Ordering::Acquire) >= limits.h2_max_pending_bodies
        {
            STREAMS_RESET.with_label_values(&["pending_bodies"]).inc();
            log::debug!(
                "refusing an HTTP/2 stream: {} streams of its connection are receiving a body",
                limits.h2_max_pending_bodies
            );
            session.shutdown_with_reason(::h2::Reason::REFUSED_STREAM);
            continue;
        }
        streams.active.fetch_add(1, Ordering::AcqRel);
        let body = receiving_body.then(|| {
            streams.receiving_body.fetch_add(1, Ordering::AcqRel);
            Arc::new(BodyClock {
                started: Instant::now(),
                last: AtomicU64::new(0),
                timeout_micros: AtomicU64::new(limits.body_timeout.as_micros() as u64),
                done: AtomicBool::new(false),
                streams: streams.clone(),
            })
        });
        let in_flight = InFlight {
            streams: streams.clone(),
            body: body.clone(),
        };
        let app = http.clone();
        let stream_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let request = app.process_new_http(ServerSession::new_http2(session), &stream_shutdown);
            match body {
                None => {
                    request.await;
                }
                Some(body) => {
                    tokio::select! {
                        _ = BODY.scope(body.clone(), request) => {}
                        () = body.stalled() => {
                            // dropping the stream's request resets it (CANCEL) and ends its
                            // upstream attempt
                            STREAMS_RESET.with_label_values(&["body_timeout"]).inc();
                            log::debug!(
                                "resetting an HTTP/2 stream whose request body sent nothing for {:?}",
                                Duration::from_micros(body.timeout_micros.load(Ordering::Relaxed))
                            );
                        }
                    }
                }
            }
            drop(in_flight);
        });
        if limits.max_requests_per_connection > 0
            && accepted >= limits.max_requests_per_connection
            && !going_away
        {
            conn.graceful_shutdown();
            going_away = true;
        }
    }
}

/// The deadline for the next stream: the first request's header deadline, the idle timeout once
/// nothing is in flight, or the grace after a GOAWAY.
async fn next_stream_deadline(
    streams: &Streams,
    first: bool,
    going_away: bool,
    header_deadline: Instant,
    idle_timeout: Duration,
) -> Wait {
    if first && !going_away {
        tokio::time::sleep_until(header_deadline.into()).await;
        return Wait::Header;
    }
    streams.wait_until_idle().await;
    if going_away {
        tokio::time::sleep(GOAWAY_GRACE).await;
        Wait::Gone
    } else {
        tokio::time::sleep(idle_timeout).await;
        Wait::Idle
    }
}

fn header_timed_out(timeout: Duration) {
    METRICS.closed.with_label_values(&["header_timeout"]).inc();
    log::debug!(
        "closing an HTTP/2 connection whose preface and first request took longer than {timeout:?}"
    );
}
