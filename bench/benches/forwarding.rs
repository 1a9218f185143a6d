//! The forwarding headers of one upstream request from an untrusted peer, on a request with 20
//! realistic headers: rendered for the connection's first request, and taken from the
//! connection's memo for a kept-alive one.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gatehouse_config::HttpOptions;
use gatehouse_proxy::forwarding::{apply, Memo};

mod common;

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forwarding_headers");
    let http = HttpOptions::default();
    let peer = "203.0.113.9".parse().ok();
    let host = http::HeaderValue::from_static("shop.example.com");
    group.bench_function("first_request", |b| {
        b.iter_batched_ref(
            common::request,
            |req| apply(req, &http, peer, Some(&host), "http", None).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let memo = Memo::default();
    group.bench_function("kept_alive", |b| {
        b.iter_batched_ref(
            common::request,
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
