//! Node selection: one smooth weighted round-robin pick on upstreams of 2 and 200 nodes, with
//! the tried-node filter a request's first attempt uses.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse_proxy::selection::{SmoothWeighted, TriedSet};

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("select_pick");
    for nodes in [2usize, 200] {
        // Uneven weights 1..=10, so the schedule is a real interleaving, not a plain rotation.
        let weights: Vec<u32> = (0..nodes).map(|i| (i % 10) as u32 + 1).collect();
        let selector = SmoothWeighted::new(&weights);
        let tried = TriedSet::default();
        group.bench_function(BenchmarkId::from_parameter(nodes), |b| {
            b.iter(|| black_box(selector.pick(|n| tried.contains(n))))
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
