//! `rate-limit`: lets at most `limit` requests per window through for each client (its address),
//! each value of a header, or the whole API, and answers the others `429` with `Retry-After`.
//! Counts live in the gateway's counters, shared by the plugin use's instances in one process.

use gatehouse_plugin_sdk::{
    config_header_name, counters, export_plugin, log, parse_config, Action, Hooks, Needs, Plugin,
    Reply, Request, Response,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Requests let through per window and key.
    limit: u64,
    /// The window: `1s` to `1d` (`30s`, `1m`, `1h`, `1d`).
    window: String,
    /// What is limited: `client-addr`, `api` or `header:NAME`.
    #[serde(default = "client_addr")]
    by: String,
    /// Send `RateLimit-*` headers on the responses let through too (a second hook call per
    /// request: off by default).
    #[serde(default)]
    response_headers: bool,
    /// When the gateway cannot count a request (its table of keys is full): `allow` or `deny`.
    #[serde(default = "allow")]
    when_uncounted: String,
}

fn client_addr() -> String {
    "client-addr".to_string()
}

fn allow() -> String {
    "allow".to_string()
}

/// What is limited.
#[derive(Debug, Clone, PartialEq, Eq)]
enum By {
    ClientAddr,
    Api,
    /// A header's value; requests without it are counted by client address.
    Header(String),
}

/// Longest key part kept as it is; a longer header value is counted by its hash.
const MAX_KEY_PART: usize = 200;

/// Limits requests per key in fixed windows.
#[derive(Debug)]
pub struct RateLimit {
    limit: u64,
    window_ms: u64,
    by: By,
    response_headers: bool,
    deny_uncounted: bool,
}

/// `30s`, `1m`, `1h`, `1d` in milliseconds: whole seconds from 1 s to 1 day.
fn parse_window(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ms = match unit.trim() {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms));
    match ms {
        Some(ms) if (1_000..=86_400_000).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "`window`: {text:?} is not a window from 1s to 1d; write a number and s, m, h or d (30s, 1m, 1h)"
        )),
    }
}

/// FNV-1a of a long key part, so keys stay short whatever a client sends.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl RateLimit {
    /// The counter key of a request.
    fn key(&self, req: &Request) -> String {
        match &self.by {
            By::Api => "api".to_string(),
            By::ClientAddr => format!("ip:{}", req.client_addr()),
            By::Header(name) => match req.header(name) {
                Some(v) if v.len() <= MAX_KEY_PART => format!("h:{v}"),
                Some(v) => format!("h#{}", digest(&v)),
                None => format!("ip:{}", req.client_addr()),
            },
        }
    }

    /// The `RateLimit-*` headers for a window.
    fn headers(&self, window: &counters::Window) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.limit.to_string()),
            (
                "ratelimit-remaining",
                self.limit.saturating_sub(window.count).to_string(),
            ),
            ("ratelimit-reset", seconds(window.resets_in_ms).to_string()),
        ]
    }
}

/// Milliseconds rounded up to whole seconds (at least 1).
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

const RATE_HEADERS: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

impl Plugin for RateLimit {
    const HOOKS: Hooks = Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE);

    fn needs(&self) -> Needs {
        let hooks = if self.response_headers {
            Self::HOOKS
        } else {
            Hooks::ON_REQUEST
        };
        let mut needs = Needs::new(hooks).counters();
        if let By::Header(name) = &self.by {
            needs = needs.read_request_header(name.clone());
        }
        if self.response_headers {
            for name in RATE_HEADERS {
                needs = needs.write_response_header(name);
            }
        }
        needs
    }

    fn configure(config: &str) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        if !(1..=1_000_000_000).contains(&c.limit) {
            return Err(format!(
                "`limit`: {} is out of range 1 to 1000000000",
                c.limit
            ));
        }
        let window_ms = parse_window(&c.window)?;
        let by = match c.by.as_str() {
            "client-addr" => By::ClientAddr,
            "api" => By::Api,
            other => match other.strip_prefix("header:") {
                Some(name) => By::Header(config_header_name("by", name)?),
                None => {
                    return Err(format!(
                        "`by`: {other:?} is not something to limit by; use client-addr, api or header:NAME"
                    ))
                }
            },
        };
        let deny_uncounted = match c.when_uncounted.as_str() {
            "allow" => false,
            "deny" => true,
            other => return Err(format!("`when_uncounted`: {other:?} is not allow or deny")),
        };
        Ok(RateLimit {
            limit: c.limit,
            window_ms,
            by,
            response_headers: c.response_headers,
            deny_uncounted,
        })
    }

    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let window = match counters::increment(&self.key(req), 1, self.window_ms) {
            Ok(window) => window,
            Err(e) if self.deny_uncounted => {
                log::warn(&format!("refusing an uncounted request: {e}"));
                return Ok(Reply::error(
                    429,
                    "too_many_requests",
                    "the rate limit cannot count this request now",
                )
                .header("retry-after", "1")
                .into());
            }
            Err(e) => {
                log::warn(&format!("letting an uncounted request through: {e}"));
                return Ok(Action::Proceed);
            }
        };
        if window.count <= self.limit {
            return Ok(Action::Proceed);
        }
        let mut reply = Reply::error(
            429,
            "too_many_requests",
            &format!(
                "rate limit of {} requests per {} s exceeded",
                self.limit,
                self.window_ms / 1000
            ),
        )
        .header("retry-after", seconds(window.resets_in_ms).to_string());
        for (name, value) in self.headers(&window) {
            reply = reply.header(name, value);
        }
        Ok(reply.into())
    }

    fn on_response(&self, req: &Request, resp: &Response) -> Result<(), String> {
        if !self.response_headers || resp.status() == 429 {
            return Ok(());
        }
        // The count now, which includes the requests counted since this one.
        let Ok(window) = counters::get(&self.key(req), self.window_ms) else {
            return Ok(());
        };
        for (name, value) in self.headers(&window) {
            resp.set_header(name, &value)?;
        }
        Ok(())
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn status(plugin: &RateLimit, req: &Request) -> (u16, Option<Reply>) {
        match plugin.on_request(req).unwrap() {
            Action::Proceed => (200, None),
            Action::Respond(reply) => (reply.status, Some(reply)),
        }
    }

    #[test]
    fn lets_the_limit_through_then_answers_429_with_retry_after() {
        let plugin =
            RateLimit::configure(r#"{"limit": 3, "window": "1h", "by": "header:x-key"}"#).unwrap();
        let req = || Request::new("GET", "/").with_header("x-key", "lets-the-limit-through");
        for _ in 0..3 {
            assert_eq!(status(&plugin, &req()).0, 200);
        }
        let (code, reply) = status(&plugin, &req());
        assert_eq!(code, 429);
        let reply = reply.unwrap();
        let retry: u64 = reply.header_value("retry-after").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
        assert_eq!(reply.header_value("ratelimit-limit"), Some("3"));
        assert_eq!(reply.header_value("ratelimit-remaining"), Some("0"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "too_many_requests");
        // another key has its own count
        let other = Request::new("GET", "/").with_header("x-key", "someone-else");
        assert_eq!(status(&plugin, &other).0, 200);
    }

    #[test]
    fn keys_by_address_api_or_header() {
        let by = |b: &str| {
            RateLimit::configure(&format!(r#"{{"limit": 1, "window": "1m", "by": "{b}"}}"#))
                .unwrap()
        };
        let req = Request::new("GET", "/")
            .with_client_addr("10.0.0.7")
            .with_header("x-user", "ann");
        assert_eq!(by("client-addr").key(&req), "ip:10.0.0.7");
        assert_eq!(by("api").key(&req), "api");
        assert_eq!(by("header:X-User").key(&req), "h:ann");
        let anonymous = Request::new("GET", "/").with_client_addr("10.0.0.8");
        assert_eq!(by("header:x-user").key(&anonymous), "ip:10.0.0.8");
        let long = Request::new("GET", "/").with_header("x-user", &"a".repeat(300));
        let key = by("header:x-user").key(&long);
        assert!(key.starts_with("h#") && key.len() < 40, "{key}");
    }

    #[test]
    fn passed_responses_carry_the_rate_limit_headers() {
        let plugin = RateLimit::configure(
            r#"{"limit": 5, "window": "1d", "by": "header:x-k", "response_headers": true}"#,
        )
        .unwrap();
        let req = Request::new("GET", "/").with_header("x-k", "passed-responses");
        plugin.on_request(&req).unwrap();
        plugin.on_request(&req).unwrap();
        req.freeze();
        let resp = Response::new(200);
        plugin.on_response(&req, &resp).unwrap();
        assert_eq!(resp.header("ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(resp.header("ratelimit-remaining").as_deref(), Some("3"));
        // by default, only refusals carry them
        let quiet = RateLimit::configure(r#"{"limit": 5, "window": "1d"}"#).unwrap();
        assert_eq!(quiet.needs(), Needs::new(Hooks::ON_REQUEST).counters());
        let resp = Response::new(200);
        quiet.on_response(&req, &resp).unwrap();
        assert_eq!(resp.header("ratelimit-limit"), None);
    }

    #[test]
    fn windows_parse_from_one_second_to_one_day() {
        for (text, ms) in [
            ("1s", 1_000),
            ("30s", 30_000),
            ("1m", 60_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
        ] {
            assert_eq!(parse_window(text), Ok(ms), "{text}");
        }
        for bad in ["0s", "2d", "90", "1 week", "1.5m", "s", ""] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        for (config, error) in [
            (r#"{"window": "1m"}"#, "missing field `limit`"),
            (
                r#"{"limit": 0, "window": "1m"}"#,
                "`limit`: 0 is out of range",
            ),
            (
                r#"{"limit": 5, "window": "1w"}"#,
                "`window`: \"1w\" is not a window",
            ),
            (
                r#"{"limit": 5, "window": "1m", "by": "cookie"}"#,
                "`by`: \"cookie\" is not something to limit by",
            ),
            (
                r#"{"limit": 5, "window": "1m", "by": "header:"}"#,
                "`by`: \"\" is not a header name",
            ),
            (
                r#"{"limit": 5, "window": "1m", "when_uncounted": "maybe"}"#,
                "`when_uncounted`",
            ),
        ] {
            let err = RateLimit::configure(config).unwrap_err();
            assert!(err.contains(error), "{config}: {err}");
        }
    }
}
