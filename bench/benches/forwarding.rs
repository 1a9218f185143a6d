//! The forwarding headers of one upstream request from an untrusted peer, on a request with 20
//! realistic headers: rendered for the connection's first request, and taken from the
//! connection's memo for a kept-alive one.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gatehouse_config::HttpOptions;
use gatehouse_proxy::forwarding::{apply, Memo};
use pingora_http::RequestHeader;

const HEADERS: [(&str, &str); 20] = [
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

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/catalog/items/42?color=red", Some(24)).unwrap();
    for (name, value) in HEADERS {
        req.append_header(name.to_owned(), value).unwrap();
    }
    req
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forwarding_headers");
    let http = HttpOptions::default();
    let peer = "203.0.113.9".parse().ok();
    let host = http::HeaderValue::from_static("shop.example.com");
    group.bench_function("first_request", |b| {
        b.iter_batched_ref(
            request,
            |req| apply(req, &http, peer, Some(&host), "http", None).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let memo = Memo::default();
    group.bench_function("kept_alive", |b| {
        b.iter_batched_ref(
            request,
            |req| {
                apply(
                    req,
                    &http,
                    peer,
                    Some(&host),
                    "http",
                    black_box(Some(&memo)),
                )
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
