//! Scheduler throughput on one core: placements (and routes) per second
//! against a cluster of 200 nodes and 500 functions whose images are warm on
//! a random few nodes each. The platform's bar is 20,000 instances a minute
//! (333 a second).

#[path = "support/cluster.rs"]
mod cluster;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loci::scheduler::cluster::{ClusterView, FunctionId};
use loci::scheduler::report::{NodeReport, Resources};
use loci::scheduler::scoring::ScoringWeights;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODES: usize = 200;
const FUNCTIONS: usize = 500;
/// Images cached per node (of the 500).
const CACHED_PER_NODE: usize = 24;

/// 200 nodes of 64 cores, each with 24 random images partly or fully
/// warm, and 500 functions with their own image and no keep-alive (so a
/// placed instance can be retired straight away to keep the cluster steady).
fn cluster() -> (ClusterView, Vec<FunctionId>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut view = ClusterView::new(ScoringWeights::default());
    for n in 0..NODES {
        let images = cluster::warm_images(&mut rng, CACHED_PER_NODE, FUNCTIONS);
        let report = NodeReport {
            node_id: format!("node-{n:03}"),
            capacity: Resources {
                cpu_millis: 64_000,
                memory_mib: 262_144,
            },
            used: Resources {
                cpu_millis: rng.random_range(0..32_000),
                memory_mib: 0,
            },
            instances: vec![],
            images,
            running: Vec::new(),
            starts_instances: false,
        };
        view.apply_report(&report, 0).expect("valid report");
    }
    let functions = (0..FUNCTIONS)
        .map(|f| {
            view.register_function(cluster::function(f, 500, 512, 60, 0))
                .expect("valid spec")
        })
        .collect();
    (view, functions)
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_200_nodes_500_functions");
    group.throughput(Throughput::Elements(1));

    let (mut view, functions) = cluster();
    let mut next = 0usize;
    group.bench_function("place_then_retire", |b| {
        b.iter(|| {
            let f = functions[next % FUNCTIONS];
            next += 1;
            let placement = view.place(f, false, 1).expect("capacity");
            let retired = view.retire_idle(1);
            debug_assert_eq!(retired.len(), 1);
            placement.score
        })
    });

    // 500 placements into a cluster that fills up as it goes (each batch
    // starts from a fresh cluster).
    group.throughput(Throughput::Elements(FUNCTIONS as u64));
    group.bench_function("place_500_accumulating", |b| {
        b.iter_batched(
            cluster,
            |(mut view, functions)| {
                for &f in &functions {
                    view.place(f, false, 1).expect("capacity");
                }
                view
            },
            BatchSize::LargeInput,
        )
    });

    // Warm routing: one instance per function, route and complete.
    group.throughput(Throughput::Elements(1));
    let (mut view, functions) = cluster();
    for &f in &functions {
        view.place(f, false, 1).expect("capacity");
    }
    let mut next = 0usize;
    group.bench_function("route_then_complete_warm", |b| {
        b.iter(|| {
            let f = functions[next % FUNCTIONS];
            next += 1;
            let routed = view.route(f, 2).expect("warm instance");
            view.complete(routed.invocation_id, 2).expect("routed");
            routed.instance_id
        })
    });
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
