//! `request-id`: makes sure every request carries an id header, sent upstream and returned to
//! the client on the response.

use gatehouse_plugin_sdk::{
    export_plugin, parse_config, random, Action, Hooks, Needs, Plugin, Request, Response,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The header carrying the id.
    #[serde(default = "default_header")]
    header: String,
    /// Replace an id sent by the client instead of keeping it.
    #[serde(default)]
    overwrite: bool,
}

fn default_header() -> String {
    "X-Request-Id".to_string()
}

/// Ids longer than this sent by a client are replaced.
const MAX_CLIENT_ID_LEN: usize = 200;

/// Adds a request id.
#[derive(Debug)]
pub struct RequestId {
    header: String,
    overwrite: bool,
}

impl Plugin for RequestId {
    const HOOKS: Hooks = Hooks::ON_REQUEST.and(Hooks::ON_RESPONSE);

    fn configure(config: &str) -> Result<Self, String> {
        let Config { header, overwrite } = parse_config(config)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if header.is_empty() || !header.bytes().all(token) {
            return Err(format!("`header` {header:?} is not a valid header name"));
        }
        Ok(RequestId { header, overwrite })
    }

    /// Its one header: read and set on the request, set on the response.
    fn needs(&self) -> Needs {
        let header = self.header.to_ascii_lowercase();
        Needs::new(Self::HOOKS)
            .read_request_header(header.clone())
            .write_request_header(header.clone())
            .write_response_header(header)
    }

    /// Keeps the client's id unless `overwrite`, otherwise sets a new one; the request (and so
    /// the upstream) carries it from here on.
    fn on_request(&self, req: &Request) -> Result<Action, String> {
        let keep = !self.overwrite
            && req
                .header(&self.header)
                .is_some_and(|id| !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN);
        if !keep {
            req.set_header(&self.header, &new_id(random(), random()))?;
        }
        Ok(Action::Proceed)
    }

    /// Copies the id from the client's request, which holds the one chosen in `on_request`.
    fn on_response(&self, req: &Request, resp: &Response) -> Result<(), String> {
        match req.header(&self.header) {
            Some(id) => resp.set_header(&self.header, &id),
            None => Ok(()),
        }
    }
}

export_plugin!(RequestId);

/// A UUID version 4 (random) made of two 64-bit random numbers, in lower-case hex.
fn new_id(high: u64, low: u64) -> String {
    let high = (high & !0xf000) | 0x4000; // version 4
    let low = (low & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_uuid_v4(id: &str) -> bool {
        let parts: Vec<_> = id.split('-').collect();
        parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && id
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && parts[2].starts_with('4')
            && matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn id_format() {
        assert_eq!(new_id(0, 0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(
            new_id(u64::MAX, u64::MAX),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert!(is_uuid_v4(&new_id(
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210
        )));
    }

    /// The gateway's sequence: on-request, then on-response with the same, now read-only, request.
    fn round_trip(plugin: &RequestId, req: &Request) -> Response {
        assert_eq!(plugin.on_request(req).unwrap(), Action::Proceed);
        req.freeze();
        let resp = Response::new(200);
        plugin.on_response(req, &resp).unwrap();
        resp
    }

    #[test]
    fn generates_an_id_sent_both_ways() {
        let plugin = RequestId::configure("{}").unwrap();
        let req = Request::new("GET", "/");
        let resp = round_trip(&plugin, &req);
        let id = req.header("x-request-id").unwrap();
        assert!(is_uuid_v4(&id), "{id}");
        assert_eq!(resp.header("X-Request-Id"), Some(id.clone()));

        let other = Request::new("GET", "/");
        round_trip(&plugin, &other);
        assert_ne!(other.header("x-request-id").unwrap(), id);
    }

    #[test]
    fn keeps_the_clients_id() {
        let plugin = RequestId::configure("{}").unwrap();
        let req = Request::new("GET", "/").with_header("x-request-id", "abc-123");
        let resp = round_trip(&plugin, &req);
        assert_eq!(req.header_all("x-request-id"), ["abc-123"]);
        assert_eq!(resp.header("x-request-id").as_deref(), Some("abc-123"));
    }

    #[test]
    fn replaces_empty_or_oversized_ids() {
        let plugin = RequestId::configure("{}").unwrap();
        for bad in [String::new(), "x".repeat(MAX_CLIENT_ID_LEN + 1)] {
            let req = Request::new("GET", "/").with_header("x-request-id", &bad);
            round_trip(&plugin, &req);
            assert!(is_uuid_v4(&req.header("x-request-id").unwrap()));
        }
    }

    #[test]
    fn overwrite_and_custom_header() {
        let plugin =
            RequestId::configure(r#"{"header": "X-Correlation-Id", "overwrite": true}"#).unwrap();
        let req = Request::new("GET", "/").with_header("X-Correlation-Id", "client");
        let resp = round_trip(&plugin, &req);
        let id = req.header("x-correlation-id").unwrap();
        assert!(is_uuid_v4(&id));
        assert_eq!(req.header_all("x-correlation-id").len(), 1);
        assert_eq!(resp.header("x-correlation-id"), Some(id));
        assert_eq!(resp.header("x-request-id"), None);
    }

    #[test]
    fn config_errors() {
        assert!(RequestId::configure(r#"{"header": ""}"#)
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(RequestId::configure(r#"{"header": "a b"}"#).is_err());
        assert!(RequestId::configure(r#"{"overwrite": "yes"}"#).is_err());
    }
}
