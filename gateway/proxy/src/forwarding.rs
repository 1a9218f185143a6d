//! The forwarding headers of every upstream request: `X-Forwarded-For`, `X-Real-IP`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239).
//!
//! From a peer outside `instance.http.trusted_proxies` the client's own values are replaced by
//! the gateway's; from a trusted one they are extended. The replaced values depend only on the
//! peer, the Host and the scheme, which the requests of one connection share: a connection
//! renders them once ([`Memo`]) and each of its requests takes a reference to them.

use std::net::IpAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use gatehouse_config::HttpOptions;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The names as they go on the wire, without rendering them again for each request.
fn wire(name: &'static [u8]) -> Bytes {
    Bytes::from_static(name)
}

/// What the requests of one connection share: the values set for an untrusted peer, rendered
/// by the connection's first request.
#[derive(Debug, Default)]
pub struct Memo(OnceLock<Rendered>);

/// The values for one peer, Host and scheme.
#[derive(Debug)]
struct Rendered {
    peer: Option<IpAddr>,
    host: Option<HeaderValue>,
    scheme: &'static str,
    /// The peer's address (`X-Forwarded-For`, `X-Real-IP`), when it has one.
    ip: Option<HeaderValue>,
    forwarded: HeaderValue,
}

impl Rendered {
    fn new(peer: Option<IpAddr>, host: Option<&HeaderValue>, scheme: &'static str) -> Self {
        let ip = peer.map(|ip| {
            HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
                .expect("an address is a header value")
        });
        let mut forwarded = String::with_capacity(64);
        forwarded_element(&mut forwarded, peer, host, scheme);
        Self {
            peer,
            // a copy: the request's value shares the buffer its whole header was read into,
            // which a clone would keep for as long as the connection lives
            host: host.map(|h| HeaderValue::from_bytes(h.as_bytes()).unwrap_or_else(|_| h.clone())),
            scheme,
            ip,
            forwarded: HeaderValue::from_maybe_shared(Bytes::from(forwarded))
                .expect("an element of printable characters is a header value"),
        }
    }

    fn values(self) -> (Option<HeaderValue>, HeaderValue) {
        (self.ip, self.forwarded)
    }

    fn serves(&self, peer: Option<IpAddr>, host: Option<&HeaderValue>, scheme: &str) -> bool {
        self.peer == peer && self.host.as_ref() == host && self.scheme == scheme
    }
}

impl Memo {
    /// The peer's address and the `Forwarded` element for this request: the connection's, when
    /// its first request had the same peer, Host and scheme, else rendered now.
    fn values(
        &self,
        peer: Option<IpAddr>,
        host: Option<&HeaderValue>,
        scheme: &'static str,
    ) -> (Option<HeaderValue>, HeaderValue) {
        let kept = self.0.get_or_init(|| Rendered::new(peer, host, scheme));
        if kept.serves(peer, host, scheme) {
            (kept.ip.clone(), kept.forwarded.clone())
        } else {
            Rendered::new(peer, host, scheme).values()
        }
    }
}

/// Sets the forwarding headers of `req`, sent by `peer` with the client's `host` over `scheme`;
/// `memo` is the connection's (HTTP/1), if there is one.
pub fn apply(
    req: &mut RequestHeader,
    http: &HttpOptions,
    peer: Option<IpAddr>,
    host: Option<&HeaderValue>,
    scheme: &'static str,
    memo: Option<&Memo>,
) -> Result<()> {
    if peer.is_some_and(|ip| http.trusts(ip)) {
        return extend(req, http, peer, host, scheme);
    }
    let (ip, forwarded) = match memo {
        Some(memo) => memo.values(peer, host, scheme),
        None => Rendered::new(peer, host, scheme).values(),
    };
    match ip {
        Some(ip) => {
            req.insert_header(wire(b"x-forwarded-for"), ip.clone())?;
            req.insert_header(wire(b"x-real-ip"), ip)?;
        }
        None => {
            req.remove_header(&X_FORWARDED_FOR);
            req.remove_header(&X_REAL_IP);
        }
    }
    req.insert_header(wire(b"x-forwarded-proto"), HeaderValue::from_static(scheme))?;
    match host {
        Some(host) => req.insert_header(wire(b"x-forwarded-host"), host.clone())?,
        None => drop(req.remove_header(&X_FORWARDED_HOST)),
    }
    req.insert_header(wire(b"forwarded"), forwarded)
}

/// A trusted peer's request keeps what the proxies before it said, with this hop added.
fn extend(
    req: &mut RequestHeader,
    http: &HttpOptions,
    peer: Option<IpAddr>,
    host: Option<&HeaderValue>,
    scheme: &'static str,
) -> Result<()> {
    let peer_text = peer.map(|ip| ip.to_string()).unwrap_or_default();
    // several X-Forwarded-For lines are one list
    let mut chain = String::new();
    for line in req.headers.get_all(X_FORWARDED_FOR) {
        if let Ok(line) = line.to_str() {
            for hop in line.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(hop);
            }
        }
    }
    let client = settle_client(&chain, peer, http);
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer_text);
    req.insert_header(wire(b"x-forwarded-for"), chain)?;
    if let Some(client) = client {
        req.insert_header(wire(b"x-real-ip"), client.to_string())?;
    }
    if !req.headers.contains_key(X_FORWARDED_PROTO) {
        req.insert_header(wire(b"x-forwarded-proto"), HeaderValue::from_static(scheme))?;
    }
    if !req.headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = host {
            req.insert_header(wire(b"x-forwarded-host"), host.clone())?;
        }
    }
    let mut forwarded = String::new();
    for line in req.headers.get_all(FORWARDED) {
        if let Ok(line) = line.to_str() {
            forwarded.push_str(line);
            forwarded.push_str(", ");
        }
    }
    forwarded_element(&mut forwarded, peer, host, scheme);
    req.insert_header(wire(b"forwarded"), forwarded)
}

/// The client address behind a chain of trusted proxies: the right-most address of
/// `X-Forwarded-For` + peer that is not a trusted proxy (or the left-most one when all are).
fn settle_client(chain: &str, peer: Option<IpAddr>, http: &HttpOptions) -> Option<IpAddr> {
    let mut client = peer?;
    for hop in chain.rsplit(',').map(str::trim) {
        if !http.trusts(client) {
            break;
        }
        match hop.parse::<IpAddr>() {
            Ok(ip) => client = ip,
            Err(_) => break,
        }
    }
    Some(client)
}

/// Appends the RFC 7239 element for this hop: `for=...;host=...;proto=http`.
fn forwarded_element(
    out: &mut String,
    peer: Option<IpAddr>,
    host: Option<&HeaderValue>,
    scheme: &str,
) {
    use std::fmt::Write;
    match peer {
        Some(IpAddr::V6(ip)) => {
            let _ = write!(out, "for=\"[{ip}]\"");
        }
        Some(ip) => {
            let _ = write!(out, "for={ip}");
        }
        None => out.push_str("for=unknown"),
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()).filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    }) {
        out.push_str(";host=\"");
        out.push_str(host);
        out.push('"');
    }
    out.push_str(";proto=");
    out.push_str(scheme);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusting(cidrs: &[&str]) -> HttpOptions {
        HttpOptions {
            trusted_proxies: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..HttpOptions::default()
        }
    }

    fn header(req: &RequestHeader, name: &str) -> String {
        req.headers.get(name).unwrap().to_str().unwrap().to_owned()
    }

    /// A request as an HTTP/1 client sends it (names in their case), with forged forwarding
    /// headers.
    fn forged() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.append_header("x-real-ip", "6.6.6.6").unwrap();
        req.append_header("x-forwarded-proto", "https").unwrap();
        req.append_header("forwarded", "for=6.6.6.6").unwrap();
        req
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_replaced() {
        let memo = Memo::default();
        for memo in [None, Some(&memo), Some(&memo)] {
            let mut req = forged();
            let host = HeaderValue::from_static("shop.example");
            let peer = "203.0.113.9".parse().ok();
            apply(&mut req, &trusting(&[]), peer, Some(&host), "http", memo).unwrap();
            assert_eq!(header(&req, "x-forwarded-for"), "203.0.113.9");
            assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(header(&req, "x-real-ip"), "203.0.113.9");
            assert_eq!(header(&req, "x-forwarded-proto"), "http");
            assert_eq!(header(&req, "x-forwarded-host"), "shop.example");
            assert_eq!(
                header(&req, "forwarded"),
                "for=203.0.113.9;host=\"shop.example\";proto=http"
            );
            // on the wire: each once, in lower case
            let mut wire = Vec::new();
            req.header_to_h1_wire(&mut wire);
            let wire = String::from_utf8(wire).unwrap();
            assert_eq!(
                wire.matches("x-forwarded-for: 203.0.113.9\r\n").count(),
                1,
                "{wire}"
            );
            assert!(!wire.contains("6.6.6.6"), "{wire}");
        }
    }

    #[test]
    fn a_connections_values_serve_only_requests_with_its_host() {
        let memo = Memo::default();
        let peer = "203.0.113.9".parse().ok();
        let (a, b) = (
            HeaderValue::from_static("a.example"),
            HeaderValue::from_static("b.example"),
        );
        for (host, expected) in [
            (Some(&a), "for=203.0.113.9;host=\"a.example\";proto=http"),
            (Some(&b), "for=203.0.113.9;host=\"b.example\";proto=http"),
            (None, "for=203.0.113.9;proto=http"),
            (Some(&a), "for=203.0.113.9;host=\"a.example\";proto=http"),
        ] {
            let mut req = forged();
            apply(&mut req, &trusting(&[]), peer, host, "http", Some(&memo)).unwrap();
            assert_eq!(header(&req, "forwarded"), expected);
            assert_eq!(
                req.headers.get("x-forwarded-host"),
                host,
                "the client's Host, or none"
            );
        }
        // a peer without an address: no address headers at all
        let mut req = forged();
        apply(&mut req, &trusting(&[]), None, None, "https", Some(&memo)).unwrap();
        assert!(req.headers.get("x-forwarded-for").is_none());
        assert!(req.headers.get("x-real-ip").is_none());
        assert_eq!(header(&req, "forwarded"), "for=unknown;proto=https");
    }

    #[test]
    fn forwarding_headers_from_trusted_peers_are_extended() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "198.51.100.1, 10.0.0.7")
            .unwrap();
        req.append_header("x-forwarded-for", "10.0.0.8").unwrap();
        req.append_header("x-forwarded-proto", "https").unwrap();
        req.append_header("forwarded", "for=198.51.100.1").unwrap();
        let peer = "10.0.0.9".parse().ok();
        let memo = Memo::default();
        apply(
            &mut req,
            &trusting(&["10.0.0.0/8"]),
            peer,
            None,
            "http",
            Some(&memo),
        )
        .unwrap();
        assert_eq!(
            header(&req, "x-forwarded-for"),
            "198.51.100.1, 10.0.0.7, 10.0.0.8, 10.0.0.9"
        );
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(header(&req, "x-real-ip"), "198.51.100.1");
        assert_eq!(header(&req, "x-forwarded-proto"), "https");
        assert_eq!(
            header(&req, "forwarded"),
            "for=198.51.100.1, for=10.0.0.9;proto=http"
        );
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut out = String::new();
        forwarded_element(&mut out, "2001:db8::1".parse().ok(), None, "http");
        assert_eq!(out, "for=\"[2001:db8::1]\";proto=http");
    }
}
