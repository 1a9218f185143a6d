//! One `on-request` plugin call, on a warm instance (`reuse_instances: true`, the default) and on
//! a fresh instance per call (`reuse_instances: false`), with the standard plugins embedded in the
//! gateway; and a warm call of each header hook on a request with 20 realistic headers (and a
//! response with 10). The engine runs its epoch clock as in the gateway; no call comes near its
//! deadline.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_plugin_host::{standard, PluginEngine, PluginSlot, SlotLimits};
use pingora_http::RequestHeader;

mod common;

/// A slot for the standard plugin `name` with configuration `config`.
fn slot(engine: &Arc<PluginEngine>, name: &str, config: &str, reuse: bool) -> Arc<PluginSlot> {
    let pre = engine
        .load(&format!("standard:{name}"), || {
            Ok(standard::component(name).expect("standard plugin").to_vec())
        })
        .expect("standard plugin loads");
    let limits = SlotLimits {
        memory: 16 << 20,
        time: Duration::from_millis(10),
        reuse_instances: reuse,
        edits: Default::default(),
        body: 64 * 1024,
    };
    PluginSlot::new(
        engine.clone(),
        pre,
        name,
        "svc",
        "api",
        config.into(),
        limits,
    )
    .expect("standard plugin configures")
}

/// The plugin engine, and a current-thread runtime to drive the hooks (they are async: they may
/// wait for an instance).
fn engine_and_runtime() -> (Arc<PluginEngine>, tokio::runtime::Runtime) {
    let engine = PluginEngine::new(64 << 20).expect("plugin engine");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    (engine, rt)
}

fn plugin_call(c: &mut Criterion) {
    let (engine, rt) = engine_and_runtime();
    let mut group = c.benchmark_group("plugin_call");
    let cases = [
        (
            "host-rewrite",
            r#"{"host":"users.internal"}"#,
            true,
            "host-rewrite/warm",
        ),
        (
            "host-rewrite",
            r#"{"host":"users.internal"}"#,
            false,
            "host-rewrite/fresh",
        ),
        (
            "headers",
            r#"{"request":{"set":{"x-env":"bench"}}}"#,
            true,
            "headers/warm",
        ),
        ("request-id", "{}", true, "request-id/warm"),
    ];
    for (name, config, reuse, id) in cases {
        let slot = slot(&engine, name, config, reuse);
        let mut req = RequestHeader::build("GET", b"/users/1", None).expect("request");
        group.bench_function(id, |b| {
            b.iter(|| {
                // request-id keeps an id it finds: drop it so every call makes a new one.
                req.remove_header("x-request-id");
                black_box(rt.block_on(slot.on_request(&mut req, None, None)).is_ok())
            })
        });
    }
    group.finish();
}

/// A warm call of each header hook, with realistic headers: what a plugin costs on a request
/// of a browser or an API client.
fn plugin_hook(c: &mut Criterion) {
    let (engine, rt) = engine_and_runtime();
    let mut group = c.benchmark_group("plugin_hook");
    let rewrite = slot(
        &engine,
        "host-rewrite",
        r#"{"host":"users.internal"}"#,
        true,
    );
    let headers = slot(
        &engine,
        "headers",
        r#"{"request":{"set":{"x-env":"bench"}},"response":{"set":{"x-served-by":"gatehouse"},"remove":["server-timing"]}}"#,
        true,
    );
    let (mut req, mut resp) = (common::request(), common::response());
    group.bench_function("on-request/host-rewrite", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(rewrite.on_request(&mut req, None, None))
                    .is_ok(),
            )
        })
    });
    group.bench_function("on-request/headers", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(headers.on_request(&mut req, None, None))
                    .is_ok(),
            )
        })
    });
    group.bench_function("on-response/headers", |b| {
        b.iter(|| {
            // the plugin removes it: put it back so every call has the same work
            resp.insert_header("server-timing", "db;dur=12.4").unwrap();
            black_box(
                rt.block_on(headers.on_response(&mut req, &mut resp, None))
                    .is_ok(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, plugin_call, plugin_hook);
criterion_main!(benches);
