//! Logging to stderr, with credentials scrubbed from every line at every level.
//!
//! The engine logs raw requests when it cannot parse them (at ERROR on the admin listener, at
//! DEBUG on the proxy listener), and libraries log headers at TRACE. Every record goes through
//! [`redact`] before it is written: values of credential headers (`Authorization`, `Cookie`,
//! `X-API-Key`, ...) and of credential query parameters (`api_key`, `token`, ...) become
//! `[redacted]`, and so does every secret value of the configuration (the admin token, plugin
//! keys; see `gatehouse_config::secrets::remember`).

use std::borrow::Cow;
use std::io::Write;

const MARK: &str = "[redacted]";

/// Engine messages logged at a level they do not deserve, with the level they get here:
/// (target prefix, message, level).
///
/// "failed to acquire reusable stream": a request wanted a pooled upstream connection while the
/// engine's idle watcher still held a reference to it (a race inside the engine's pool, about
/// once per ten requests under load). Nothing fails: the request opens a new connection. It is
/// not something an operator must act on, so it is DEBUG, not ERROR.
///
/// "No incoming socket transfer, sleep 1s and try again": a process started with `--upgrade`
/// waiting for the running one to hand its sockets over, which is how an upgrade begins.
const DEMOTED: [(&str, &str, log::Level); 2] = [
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
        log::Level::Debug,
    ),
    (
        "pingora_core::server::transfer_fd",
        "No incoming socket transfer",
        log::Level::Info,
    ),
];

/// Engine messages about clients, logged at ERROR though nothing is wrong with the gateway or a
/// node, by (target prefix, message start): they are DEBUG here, so that ERROR stays something
/// an operator acts on.
///
/// - "Fail to proxy: Downstream ConnectionClosed" / "... ReadError" / "... ConnectionReset": a
///   client that connected and closed (a TCP health check, a port scan) or broke off while
///   sending its request header;
/// - "Downstream handshake error" / "Downstream handshake timeout": a TLS handshake a client
///   abandoned or could not complete (a port probe, a client that trusts no certificate here).
const CLIENT_NOISE: [(&str, &str); 5] = [
    (
        "pingora_proxy",
        "Fail to proxy: Downstream ConnectionClosed",
    ),
    ("pingora_proxy", "Fail to proxy: Downstream ReadError"),
    ("pingora_proxy", "Fail to proxy: Downstream ConnectionReset"),
    (
        "pingora_core::services::listening",
        "Downstream handshake error",
    ),
    (
        "pingora_core::services::listening",
        "Downstream handshake timeout",
    ),
];

/// The level a record is written at: its own, or a lower one from [`DEMOTED`] and
/// [`CLIENT_NOISE`] (matched by target and the start of the message, which is formatted only for
/// those few engine targets).
fn level_of(record: &log::Record<'_>) -> log::Level {
    let target = record.target();
    let demoted = DEMOTED.iter().any(|(t, _, _)| target.starts_with(t));
    let noise = record.level() <= log::Level::Warn
        && CLIENT_NOISE.iter().any(|(t, _)| target.starts_with(t));
    if !demoted && !noise {
        return record.level();
    }
    let message = match record.args().as_str() {
        Some(text) => std::borrow::Cow::Borrowed(text),
        None => std::borrow::Cow::Owned(record.args().to_string()),
    };
    for (t, start, level) in DEMOTED {
        if target.starts_with(t) && message.starts_with(start) {
            return level;
        }
    }
    if noise
        && CLIENT_NOISE
            .iter()
            .any(|(t, start)| target.starts_with(t) && message.starts_with(start))
    {
        return log::Level::Debug;
    }
    record.level()
}

/// env_logger's logger, with the levels of [`DEMOTED`] applied before its filter.
struct Logger(env_logger::Logger);

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = level_of(record);
        if level == record.level() {
            return self.0.log(record);
        }
        if !self.0.enabled(
            &log::Metadata::builder()
                .level(level)
                .target(record.target())
                .build(),
        ) {
            return;
        }
        self.0.log(
            &log::Record::builder()
                .args(*record.args())
                .level(level)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Starts logging at `level` (or `RUST_LOG`, default `info`).
pub fn init(level: Option<&str>) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder.format(|buf, record| {
        let text = record.args().to_string();
        writeln!(
            buf,
            "[{} {:<5} {}] {}",
            buf.timestamp_millis(),
            record.level(),
            record.target(),
            redact(&text)
        )
    });
    let logger = builder.build();
    log::set_max_level(logger.filter());
    if log::set_boxed_logger(Box::new(Logger(logger))).is_err() {
        eprintln!("gatehouse: a logger was already set");
    }
}

/// `line` with credential values and known secrets replaced by `[redacted]`.
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(line);
    let lower = line.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for name in gatehouse_config::secrets::CREDENTIAL_NAMES {
        let mut from = 0;
        while let Some(at) = lower[from..].find(name) {
            let start = from + at;
            from = start + name.len();
            let before = lower[..start].bytes().next_back();
            // after an escaped line end (`\r\n` as the engine logs raw bytes) a name starts anew
            let escaped = start >= 2
                && matches!(
                    &lower.as_bytes()[start - 2..start],
                    b"\\n" | b"\\r" | b"\\t"
                );
            if !escaped
                && before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                continue;
            }
            if let Some(span) = value_after(line.as_bytes(), from) {
                spans.push(span);
            }
        }
    }
    if !spans.is_empty() {
        spans.sort_unstable();
        let mut text = String::with_capacity(line.len());
        let mut done = 0;
        for (start, end) in spans {
            if start < done {
                continue;
            }
            text.push_str(&line[done..start]);
            text.push_str(MARK);
            done = end;
        }
        text.push_str(&line[done..]);
        out = Cow::Owned(text);
    }
    match gatehouse_config::secrets::scrub(&out) {
        Cow::Borrowed(_) => out,
        Cow::Owned(scrubbed) => Cow::Owned(scrubbed),
    }
}

/// The value that follows a credential name at `from`: after a separator (`:`, `=`, quotes,
/// spaces), up to the end of the value (a quote, a line end, an escaped line end, `&`, `,`).
fn value_after(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    let mut separated = false;
    while i < bytes.len() && matches!(bytes[i], b':' | b'=' | b'"' | b'\'' | b' ' | b'\t') {
        separated |= matches!(bytes[i], b':' | b'=');
        i += 1;
    }
    if !separated {
        return None;
    }
    let start = i;
    while i < bytes.len()
        && !matches!(
            bytes[i],
            b'"' | b'\'' | b'\r' | b'\n' | b'\\' | b'&' | b',' | b'}'
        )
    {
        i += 1;
    }
    (i > start).then_some((start, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_pool_race_is_debug_not_error() {
        let race = format_args!("failed to acquire reusable stream");
        let record = log::Record::builder()
            .args(race)
            .level(log::Level::Error)
            .target("pingora_core::connectors")
            .build();
        assert_eq!(level_of(&record), log::Level::Debug);
        // the same words elsewhere, and other engine errors, keep their level
        let other = format_args!("failed to acquire reusable stream");
        let elsewhere = log::Record::builder()
            .args(other)
            .level(log::Level::Error)
            .target("gatehouse_proxy")
            .build();
        assert_eq!(level_of(&elsewhere), log::Level::Error);
        let real = format_args!("TLS handshake failure");
        let engine = log::Record::builder()
            .args(real)
            .level(log::Level::Error)
            .target("pingora_core::connectors")
            .build();
        assert_eq!(level_of(&engine), log::Level::Error);
    }

    #[test]
    fn clients_that_leave_are_debug_not_error() {
        let level = |target: &str, args: std::fmt::Arguments<'_>| {
            level_of(
                &log::Record::builder()
                    .args(args)
                    .level(log::Level::Error)
                    .target(target)
                    .build(),
            )
        };
        let n = 3;
        assert_eq!(
            level(
                "pingora_proxy",
                format_args!("Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: {n}, downstream session type: h1")
            ),
            log::Level::Debug
        );
        assert_eq!(
            level(
                "pingora_core::services::listening",
                format_args!("Downstream handshake error from 127.0.0.1:{n}: TLSHandshakeFailure")
            ),
            log::Level::Debug
        );
        // an upstream failure stays an error
        assert_eq!(
            level(
                "pingora_proxy",
                format_args!("Fail to proxy: Upstream ConnectRefused context: {n}")
            ),
            log::Level::Error
        );
    }

    #[test]
    fn credentials_are_scrubbed_in_every_shape() {
        let cases = [
            (
                r"Fail to proxy: InvalidHTTPHeader buf: GET / HTTP/1.1\r\nAuthorization: Bearer s3cr3t-token\r\nHost: a\r\n",
                r"Fail to proxy: InvalidHTTPHeader buf: GET / HTTP/1.1\r\nAuthorization: [redacted]\r\nHost: a\r\n",
            ),
            (
                r#"headers: {"cookie": "sid=abc; x=1", "x-api-key": "k-123", "accept": "*/*"}"#,
                r#"headers: {"cookie": "[redacted]", "x-api-key": "[redacted]", "accept": "*/*"}"#,
            ),
            (
                "GET /a?x=1&api_key=k-42&y=2",
                "GET /a?x=1&api_key=[redacted]&y=2",
            ),
            (
                "PROXY-AUTHORIZATION: Basic dXNlcg==",
                "PROXY-AUTHORIZATION: [redacted]",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(redact(line), expected, "{line}");
        }
        // multi-byte text before a name
        assert_eq!(redact("é\\ntoken: x"), "é\\ntoken: [redacted]");
        // words that merely contain a name, or names without a value, are left alone
        for line in ["tokenizer: done", "the token was refused", "no_token_here"] {
            assert_eq!(redact(line), line);
        }
    }

    #[test]
    fn known_secrets_are_scrubbed_anywhere() {
        gatehouse_config::secrets::remember("admin-token-0123456789");
        assert_eq!(
            redact("weird admin-token-0123456789 text"),
            "weird [redacted] text"
        );
    }
}
