//! The scheduler at platform scale, on one core: 10,000 nodes, 100,000
//! functions, 1,000,000 instances (issue #17's benchmark). Prints p50/p99
//! latency and throughput of placement, warm routing and report
//! ingestion, and the time of one tick (idle retirement and reservations).
//! Goals: placement p99 <= 1 ms, >= 100x the platform's 20,000 instances a
//! minute (33,333 a second) on one core, tick <= 20 ms.
//!
//! `cargo bench --bench scheduler_scale` (about a minute; `LOCI_SCALE=0.1`
//! runs a tenth of every count).

#[path = "support/cluster.rs"]
mod cluster;

use loci::scheduler::cluster::{ClusterView, FunctionId};
use loci::scheduler::report::{NodeReport, Resources};
use loci::scheduler::scoring::ScoringWeights;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

const CACHED_PER_NODE: usize = 24;
const SAMPLES: usize = 100_000;

fn report(rng: &mut ChaCha8Rng, n: usize, functions: usize) -> NodeReport {
    NodeReport {
        node_id: format!("node-{n:05}"),
        capacity: Resources {
            cpu_millis: 128_000,
            memory_mib: 1 << 20,
        },
        used: Resources::default(),
        instances: vec![],
        images: cluster::warm_images(rng, CACHED_PER_NODE, functions),
        running: Vec::new(),
        starts_instances: false,
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p = |q: f64| us(samples[((q * samples.len() as f64) as usize).min(samples.len() - 1)]);
    let mean = samples.iter().map(|&d| us(d)).sum::<f64>() / samples.len() as f64;
    (p(0.50), p(0.99), 1e6 / mean)
}

fn main() {
    let scale: f64 = std::env::var("LOCI_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let nodes = (10_000.0 * scale) as usize;
    let functions = (100_000.0 * scale) as usize;
    let instances = (1_000_000.0 * scale) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut view = ClusterView::new(ScoringWeights::default());
    let clock = Instant::now();
    for n in 0..nodes {
        view.apply_report(&report(&mut rng, n, functions), 0)
            .expect("valid report");
    }
    let ids: Vec<FunctionId> = (0..functions)
        .map(|f| {
            view.register_function(cluster::function(f, 100, 128, 3600, 600))
                .expect("valid spec")
        })
        .collect();
    // Fill the cluster: every route to a function whose instances are all
    // busy places a new one.
    let mut in_flight = Vec::with_capacity(instances);
    for i in 0..instances {
        let routed = view.route(ids[i % functions], 1).expect("capacity");
        in_flight.push(routed.invocation_id);
    }
    eprintln!(
        "set up {nodes} nodes, {functions} functions, {instances} instances in {:.1} s",
        clock.elapsed().as_secs_f64()
    );

    // Placement: one more instance of a random function, timed alone.
    let mut placed = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let f = ids[rng.random_range(0..functions)];
        let t = Instant::now();
        view.place(f, false, 2).expect("capacity");
        placed.push(t.elapsed());
    }
    let place = percentiles(placed);

    // Warm routing: an invocation ends, the next one of that function is
    // routed to the instance it freed.
    let mut routed_times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let k = rng.random_range(0..in_flight.len());
        let (instance, _) = view.complete(in_flight[k], 3).expect("in flight");
        let f = ids[k % functions];
        let t = Instant::now();
        let routed = view.route(f, 3).expect("warm instance");
        routed_times.push(t.elapsed());
        assert!(routed.cold_start.is_none(), "routed to a free instance");
        let _ = instance;
        in_flight[k] = routed.invocation_id;
    }
    let route = percentiles(routed_times);

    // Report ingestion: a node reporting its cache again.
    let mut reports = Vec::with_capacity(SAMPLES / 10);
    for i in 0..SAMPLES / 10 {
        let r = report(&mut rng, i % nodes, functions);
        let t = Instant::now();
        view.apply_report(&r, 4).expect("valid report");
        reports.push(t.elapsed());
    }
    let ingest = percentiles(reports);

    // A tick as the service runs it: timeouts, lost nodes, idle retirement
    // (the timed placements above are idle) and reservations, ten times.
    let mut ticks = Vec::new();
    for k in 0..10u64 {
        let now = 4 + k * 1000;
        let t = Instant::now();
        view.kill_timed_out(now);
        view.expire_lost_nodes(now, 15_000, 60_000);
        view.retire_idle(now);
        view.reconcile_reservations(now);
        ticks.push(t.elapsed());
    }
    let tick_ms: Vec<f64> = ticks.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut sorted = tick_ms.clone();
    sorted.sort_by(f64::total_cmp);

    println!("| operation | p50 µs | p99 µs | per second (one core) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, (p50, p99, rate)) in [
        ("place an instance", place),
        ("route warm", route),
        ("ingest a node report", ingest),
    ] {
        println!("| {name} | {p50:.1} | {p99:.1} | {rate:.0} |");
    }
    println!(
        "| tick (timeouts, lost nodes, idle, reservations), ms | {:.1} | {:.1} (max of 10) | |",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
}
