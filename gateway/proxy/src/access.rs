//! The access log: one line per request, JSON or text, to standard output or a file.
//!
//! The request path never waits for it: the `logging` phase hands a small [`Entry`] to a bounded
//! queue (a `try_send`, no lock, no formatting) and a writer thread of its own formats, redacts
//! and writes the lines through a buffer. When the writer falls behind and the queue is full, the
//! line is dropped and counted (`gatehouse_access_log_dropped_total`). Credential query parameters
//! and the configuration's secret values never reach the log. A file is reopened on `SIGUSR1`
//! (log rotation).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use gatehouse_config::{AccessLog as Settings, AccessLogFormat};
use once_cell::sync::Lazy;
use serde::Serialize;

use crate::runtime::{ApiBackend, Runtime};

/// Lines waiting for the writer; beyond this they are dropped and counted.
pub const QUEUE: usize = 16 * 1024;

static DROPPED: Lazy<prometheus::IntCounter> = Lazy::new(|| {
    prometheus::register_int_counter!(
        "gatehouse_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind (the request path never waits for it)."
    )
    .expect("metric registers once")
});

static WRITTEN: Lazy<prometheus::IntCounter> = Lazy::new(|| {
    prometheus::register_int_counter!(
        "gatehouse_access_log_lines_total",
        "Access log lines written."
    )
    .expect("metric registers once")
});

/// What one request leaves for the access log; formatted on the writer thread.
pub struct Entry {
    pub time: SystemTime,
    pub duration: Duration,
    pub client: Option<IpAddr>,
    pub method: http::Method,
    /// Path and query as the client sent them.
    pub target: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The snapshot the request used, to name its service, API, upstream and node.
    pub runtime: Arc<Runtime>,
    pub api: Option<usize>,
    pub node: Option<usize>,
    pub attempts: u32,
    pub request_id: Option<String>,
    /// The gateway's error code when it answered itself.
    pub error: Option<&'static str>,
}

/// One access log destination, shared by the runtime snapshots that log to it.
pub struct AccessLog {
    settings: Settings,
    /// Started with the first line, so building a snapshot (or a dry run) starts nothing.
    queue: OnceLock<SyncSender<Entry>>,
    reopen: Arc<AtomicBool>,
    capacity: usize,
}

impl AccessLog {
    pub fn new(settings: Settings) -> Self {
        Self::with_capacity(settings, QUEUE)
    }

    fn with_capacity(settings: Settings, capacity: usize) -> Self {
        Lazy::force(&DROPPED);
        Self {
            settings,
            queue: OnceLock::new(),
            reopen: Arc::new(AtomicBool::new(false)),
            capacity,
        }
    }

    /// Whether this log writes where and how `settings` say (so a new snapshot can keep it).
    pub fn serves(&self, settings: &Settings) -> bool {
        self.settings.format == settings.format && self.settings.file == settings.file
    }

    /// Queues one line; never waits.
    pub fn push(&self, entry: Entry) {
        let queue = self.queue.get_or_init(|| self.start());
        match queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => DROPPED.inc(),
        }
    }

    /// Has a file log reopened before its next line (after log rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn start(&self) -> SyncSender<Entry> {
        let (tx, rx) = sync_channel(self.capacity);
        let writer = Writer {
            format: self.settings.format,
            file: self.settings.file.clone(),
            reopen: Arc::clone(&self.reopen),
        };
        let spawned = std::thread::Builder::new()
            .name("gatehouse-access-log".to_owned())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            log::error!("cannot start the access log writer: {e}; access log lines are dropped");
        }
        tx
    }
}

struct Writer {
    format: AccessLogFormat,
    file: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn open(&self) -> Box<dyn Write> {
        match &self.file {
            None => Box::new(std::io::stdout()),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    log::error!(
                        "cannot open the access log {}: {e}; its lines are dropped until it can be opened (SIGUSR1 tries again)",
                        path.display()
                    );
                    Box::new(std::io::sink())
                }
            },
        }
    }

    /// Writes lines until every sender is gone; flushes whenever the queue runs empty.
    fn run(self, rx: Receiver<Entry>) {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, self.open());
        let mut line = Vec::with_capacity(512);
        loop {
            let entry = match rx.try_recv() {
                Ok(e) => e,
                Err(_) => {
                    let _ = out.flush();
                    match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            if self.reopen.swap(false, Ordering::AcqRel) {
                let _ = out.flush();
                out = std::io::BufWriter::with_capacity(64 * 1024, self.open());
            }
            line.clear();
            format_line(&mut line, &entry, self.format);
            if out.write_all(&line).is_ok() {
                WRITTEN.inc();
            } else {
                DROPPED.inc();
            }
        }
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<IpAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// `text` for a quoted field of the text format: a quote and a backslash escaped with a backslash, control
/// and non-ASCII bytes as `\xNN`, spaces kept.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if text.bytes().all(plain) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b if plain(b) => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Formats one line (with its newline) into `out`, credentials and secrets redacted.
fn format_line(out: &mut Vec<u8>, e: &Entry, format: AccessLogFormat) {
    let target = gatehouse_config::secrets::redact_target(&e.target);
    let api = e.api.map(|i| &e.runtime.apis[i]);
    let upstream = api.and_then(|a| match &a.backend {
        ApiBackend::Upstream { upstream, .. } => Some(&e.runtime.upstreams[*upstream]),
        ApiBackend::Fixed(_) => None,
    });
    let node = upstream.zip(e.node).map(|(u, n)| u.nodes[n].label.as_str());
    let time = humantime::format_rfc3339_millis(e.time).to_string();
    let request_id = e
        .request_id
        .as_deref()
        .map(gatehouse_config::secrets::scrub);
    let duration_ms = (e.duration.as_secs_f64() * 1e6).round() / 1e3;
    match format {
        AccessLogFormat::Json => {
            let line = JsonLine {
                time,
                client: e.client,
                method: e.method.as_str(),
                path: &target,
                status: e.status,
                bytes_in: e.bytes_in,
                bytes_out: e.bytes_out,
                duration_ms,
                service: api.map(|a| a.service.as_str()),
                api: api.map(|a| a.name.as_str()),
                upstream: upstream.map(|u| u.name.as_str()),
                node,
                attempts: e.attempts,
                request_id: request_id.as_deref(),
                error: e.error,
            };
            let _ = serde_json::to_writer(&mut *out, &line);
            out.push(b'\n');
        }
        AccessLogFormat::Text => {
            let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
            // what a client chose (the target, its request id) is escaped, and the request id
            // quoted, so that one request is always one line of the same fields
            let rid = request_id
                .as_deref()
                .map_or_else(|| "-".to_owned(), |id| format!("\"{}\"", escaped(id)));
            let _ = writeln!(
                out,
                "{} {time} \"{} {}\" {} {} {} {duration_ms}ms {}.{} {} {} attempts={} rid={} error={}",
                e.client.map_or("-".to_owned(), |c| c.to_string()),
                escaped(e.method.as_str()),
                escaped(&target),
                e.status,
                e.bytes_in,
                e.bytes_out,
                dash(api.map(|a| a.service.as_str())),
                dash(api.map(|a| a.name.as_str())),
                dash(upstream.map(|u| u.name.as_str())),
                dash(node),
                e.attempts,
                rid,
                e.error.unwrap_or("-"),
            );
        }
    }
}

/// Whether request number `n` (counting from 0) of an API logging `share` of its requests is
/// logged: exactly `share` of any run of requests, spread evenly, with one atomic add.
pub fn sampled(counter: &AtomicU64, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    if share <= 0.0 {
        return false;
    }
    let n = counter.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * share).floor() > (n * share).floor()
}

/// Reopens the access log file on `SIGUSR1`, after log rotation moved it away.
pub struct ReopenOnUsr1(pub crate::runtime::SharedRuntime);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReopenOnUsr1 {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGUSR1 (access log reopening): {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = usr1.recv() => {
                    if let Some(access) = &self.0.load().access {
                        access.reopen();
                        log::info!("SIGUSR1: the access log is reopened before its next line");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_logs_exactly_the_share() {
        for (share, expected) in [(0.5, 500), (0.1, 100), (0.25, 250), (1.0, 1000), (0.0, 0)] {
            let counter = AtomicU64::new(0);
            let logged = (0..1000).filter(|_| sampled(&counter, share)).count();
            assert_eq!(logged, expected, "share {share}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let log = AccessLog::with_capacity(
            Settings {
                sample: 1.0,
                format: AccessLogFormat::Json,
                file: Some(PathBuf::from("/nonexistent-folder/access.log")),
            },
            0,
        );
        // a rendezvous queue: no line waits, so with the writer busy or slow lines are dropped
        let config = gatehouse_config::parse(
            "instance: { id: t, type: dedicated, vpc: v, listen: [\"127.0.0.1:1\"] }\nvpcs: [{ id: v, cidrs: [\"127.0.0.0/8\"] }]\n",
            "test.yaml",
            std::path::Path::new("/"),
        )
        .unwrap();
        let engine = crate::server::plugin_engine().unwrap();
        let runtime = Arc::new(Runtime::build(config, 1, None, &engine).unwrap());
        let before = DROPPED.get();
        for _ in 0..1000 {
            log.push(Entry {
                time: SystemTime::now(),
                duration: Duration::ZERO,
                client: None,
                method: http::Method::GET,
                target: "/".to_owned(),
                status: 200,
                bytes_in: 0,
                bytes_out: 0,
                runtime: runtime.clone(),
                api: None,
                node: None,
                attempts: 0,
                request_id: None,
                error: None,
            });
        }
        // every push returned (none waited for the writer), and the ones it could not take were
        // counted
        assert!(DROPPED.get() > before, "lines were dropped");
    }
}
