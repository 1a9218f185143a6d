//! What the micro-benchmarks share: requests and responses with realistic headers.

#![allow(dead_code)] // each benchmark uses its part

use pingora_http::{RequestHeader, ResponseHeader};

/// The 20 headers of a browser's request to a shop.
pub const REQUEST_HEADERS: [(&str, &str); 20] = [
    ("Host", "shop.example.com"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("Accept-Language", "en-US,en;q=0.5"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Connection", "keep-alive"),
    ("Cookie", "session=7f3c9a1e2b; theme=dark; consent=1"),
    ("Upgrade-Insecure-Requests", "1"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-User", "?1"),
    ("Priority", "u=0, i"),
    ("Cache-Control", "max-age=0"),
    ("Referer", "https://shop.example.com/catalog?page=2"),
    ("If-None-Match", "\"5d8c72a5edda8d6a:3239\""),
    ("X-Request-Id", "6a1f4c2e-93b7-4d1a-a8f2-0c9e7b5d3f21"),
    (
        "Authorization",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
    ),
    ("DNT", "1"),
    ("TE", "trailers"),
];

/// The headers of a typical API answer.
pub const RESPONSE_HEADERS: [(&str, &str); 10] = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Content-Length", "1843"),
    ("Date", "Mon, 07 Dec 2026 09:00:00 GMT"),
    ("Cache-Control", "private, max-age=0, must-revalidate"),
    ("ETag", "\"5d8c72a5edda8d6a:3239\""),
    ("Vary", "Accept-Encoding, Authorization"),
    ("X-Request-Id", "6a1f4c2e-93b7-4d1a-a8f2-0c9e7b5d3f21"),
    (
        "Strict-Transport-Security",
        "max-age=31536000; includeSubDomains",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Server-Timing", "db;dur=12.4, app;dur=31.9"),
];

/// A GET with [`REQUEST_HEADERS`], as an HTTP/1.1 client sends it (names in their case).
pub fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/catalog/items/42?color=red", Some(24)).unwrap();
    for (name, value) in REQUEST_HEADERS {
        req.append_header(name.to_owned(), value).unwrap();
    }
    req
}

/// A 200 answer with [`RESPONSE_HEADERS`].
pub fn response() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, Some(12)).unwrap();
    for (name, value) in RESPONSE_HEADERS {
        resp.append_header(name.to_owned(), value).unwrap();
    }
    resp
}
