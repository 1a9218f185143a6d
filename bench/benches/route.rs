//! Route lookup: method + path to an API with 10 and with 10,000 APIs, through the same
//! configuration parser and router the gateway uses.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse_config::Config;
use gatehouse_proxy::route::{RouteMatch, Router};
use http::Method;

/// Distinct paths looked up in turn, spread over the whole API set.
const PATHS: usize = 64;

/// A valid configuration with `apis` APIs `/svc{i}/items/{id}` on one upstream.
fn config(apis: usize) -> Config {
    let mut text = String::from(
        r#"instance: { id: bench, type: dedicated, vpc: v, listen: ["127.0.0.1:1"] }
vpcs: [{ id: v, cidrs: ["127.0.0.0/8"] }]
upstreams:
  - { name: u, vpc: v, protocol: http, nodes: [{ host: 127.0.0.1, port: 9 }] }
services:
  - name: s
    apis:
"#,
    );
    for i in 0..apis {
        text.push_str(&format!(
            "      - {{ name: a{i}, path: \"/svc{i}/items/{{id}}\", methods: [GET], backend: {{ upstream: u, path: \"/v1/items/{{id}}\" }} }}\n"
        ));
    }
    gatehouse_config::parse(&text, "bench", Path::new("/"))
        .expect("generated configuration is valid")
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for apis in [10, 10_000] {
        let router = Router::build(&config(apis));
        let paths: Vec<String> = (0..PATHS)
            .map(|k| format!("/svc{}/items/{k}", k * apis / PATHS))
            .collect();
        group.bench_function(BenchmarkId::from_parameter(apis), |b| {
            let mut k = 0;
            b.iter(|| {
                k = (k + 1) % PATHS;
                match router.lookup(&Method::GET, black_box(&paths[k])) {
                    RouteMatch::Found { api, params } => black_box((api, params.get(0).len())),
                    _ => panic!("{} is routed", paths[k]),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_lookup);
criterion_main!(benches);
