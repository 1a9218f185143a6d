//! One `on-request` plugin call, on a warm instance (`reuse_instances: true`, the default) and on
//! a fresh instance per call (`reuse_instances: false`), with the standard plugins embedded in the
//! gateway; and a warm call of each hook on a request with 20 realistic headers (and a response
//! with 10): the header hooks with standard plugins, `on-upstream-request` (no standard plugin
//! has one) and `on-response-body` with `grant-probe` from `plugins/dist`. The engine runs its
//! epoch clock as in the gateway; no call comes near its deadline.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_config::PluginGrants;
use gatehouse_plugin_host::{standard, Grants, Node, PluginEngine, PluginSlot, SlotLimits};
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
        counter_keys: 65_536,
    };
    PluginSlot::new(
        engine.clone(),
        pre,
        name,
        "svc",
        "api",
        config.to_owned(),
        limits,
    )
    .expect("standard plugin configures")
}

/// A slot for `grant-probe` (plugins/dist) with `config`, granted `grants`.
fn probe_slot(engine: &Arc<PluginEngine>, config: &str, grants: PluginGrants) -> Arc<PluginSlot> {
    let pre = engine
        .load("bench:grant-probe", || {
            Ok(include_bytes!("../../plugins/dist/grant-probe.wasm").to_vec())
        })
        .expect("grant-probe loads");
    let limits = SlotLimits {
        memory: 16 << 20,
        time: Duration::from_millis(10),
        reuse_instances: true,
        edits: Default::default(),
        body: 64 * 1024,
        counter_keys: 65_536,
    };
    PluginSlot::with_grants(
        engine.clone(),
        pre,
        "grant-probe",
        "svc",
        "api",
        config.to_owned(),
        limits,
        Some(Grants::configured(&grants).expect("grants")),
        false,
    )
    .expect("grant-probe configures")
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
    // on-upstream-request of a plugin that changes nothing: the hook's own cost
    let upstream = probe_slot(
        &engine,
        r#"{"hooks":["on-upstream-request"]}"#,
        PluginGrants::default(),
    );
    let node = Node {
        upstream: "users".to_owned(),
        host: "10.0.0.7".to_owned(),
        port: 8080,
        address: "10.0.0.7:8080".to_owned(),
    };
    group.bench_function("on-upstream-request/no-op", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(upstream.on_upstream_request(&mut req, None, &node))
                    .is_ok(),
            )
        })
    });
    // on-response-body appending to a 1 KiB body: an instance held, the body copied in and out
    let appender = probe_slot(
        &engine,
        r#"{"needs":{"response_body":true},"append_to_response":"!"}"#,
        PluginGrants {
            response_body: true,
            ..PluginGrants::default()
        },
    );
    let body = vec![b'x'; 1024];
    let sent = resp.headers.clone();
    group.bench_function("on-response-body/append-1k", |b| {
        b.iter(|| {
            let held = rt.block_on(appender.hold()).expect("an instance");
            black_box(
                held.on_response_body(&mut req, 200, &sent, &body, None)
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
    // steering: canary choosing the canary tag for a client in its share
    let canary = slot(
        &engine,
        "canary",
        r#"{"tag":"canary","stable_tag":"stable","percent":100}"#,
        true,
    );
    let client = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    group.bench_function("on-request/canary", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(canary.on_request(&mut req, client, None))
                    .is_ok(),
            )
        })
    });
    // counting: rate-limit counting the request and adding its headers to the response
    let limit = slot(
        &engine,
        "rate-limit",
        r#"{"limit":1000000000,"window":"1h","response_headers":true}"#,
        true,
    );
    group.bench_function("on-request/rate-limit", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(limit.on_request(&mut req, client, None))
                    .is_ok(),
            )
        })
    });
    group.bench_function("on-response/rate-limit", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(limit.on_response(&mut req, &mut resp, client))
                    .is_ok(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, plugin_call, plugin_hook);
criterion_main!(benches);
