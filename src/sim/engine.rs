//! The simulation proper: replays a trace through the scheduler's own
//! [`ClusterView`] (same placement, routing and reservation code as the
//! service) over simulated nodes whose image caches fill and evict, and
//! measures what each policy costs and what start latency it gives.

use super::costs::StartCosts;
use super::sizing::{load_profiles, policy_for, PolicyKind};
use super::trace::Trace;
use crate::scheduler::cluster::{ClusterView, Placement, RetiredInstance};
use crate::scheduler::error::{FieldError, SchedulerError};
use crate::scheduler::function::FunctionSpec;
use crate::scheduler::report::{NodeReport, Resources};
use crate::scheduler::scoring::ScoringWeights;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Wall-clock time the trace's 0 is mapped to: Monday 2019-07-15 00:00 UTC,
/// so time-of-day windows line up with the trace's day.
pub const SIM_EPOCH_MS: u64 = 1_563_148_800_000;

/// The largest instance memory a function is given, MiB.
pub const MAX_FUNCTION_MEMORY_MIB: u32 = 4096;

/// Function `index`'s instance memory, MiB: drawn (deterministically, by
/// index) from the Burr XII distribution (c 11.652, k 0.221, scale
/// 107.083 MB: median about 140, 90th percentile about 260) that the
/// Azure Functions 2019 characterisation ("Serverless in the Wild",
/// ATC'20) fitted to applications' allocated memory, as we read it;
/// within 64..=4096 MiB.
pub fn function_memory_mib(index: usize) -> u32 {
    use rand::{RngExt, SeedableRng};
    let (c, k, scale) = (11.652f64, 0.221f64, 107.083f64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6c6f_6369 ^ index as u64);
    let u: f64 = rng.random_range(0.0..1.0);
    let mb = scale * ((1.0 - u).powf(-1.0 / k) - 1.0).powf(1.0 / c);
    (mb.round().min(f64::from(MAX_FUNCTION_MEMORY_MIB)) as u32).clamp(64, MAX_FUNCTION_MEMORY_MIB)
}

/// The simulated cluster and platform settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterParams {
    /// Number of nodes.
    pub nodes: u32,
    /// Each node's CPU, millicores.
    pub node_cpu_millis: u32,
    /// Each node's memory, MiB.
    pub node_memory_mib: u32,
    /// Images each node's cache holds (least recently started evicted).
    pub cache_images: usize,
    /// CPU of one instance of any function, millicores (memory is each
    /// function's own, see [`function_memory_mib`]).
    pub instance_cpu_millis: u32,
    /// Invocations one instance takes at once.
    pub concurrency: u32,
    /// Idle time after which an on-demand instance is retired, s.
    pub keep_alive_s: u64,
    /// How often policies and keep-alives are evaluated, ms.
    pub tick_ms: u64,
}

impl Default for ClusterParams {
    fn default() -> Self {
        Self {
            nodes: 200,
            node_cpu_millis: 16_000,
            node_memory_mib: 65_536,
            cache_images: 24,
            instance_cpu_millis: 500,
            concurrency: 1,
            keep_alive_s: 600,
            tick_ms: 10_000,
        }
    }
}

impl ClusterParams {
    fn validate(&self) -> Result<(), FieldError> {
        if self.nodes == 0 {
            return Err(FieldError::new("nodes", "must be at least 1"));
        }
        if self.cache_images == 0 {
            return Err(FieldError::new("cache_images", "must be at least 1"));
        }
        if self.tick_ms == 0 {
            return Err(FieldError::new("tick_ms", "must be positive"));
        }
        let node = Resources {
            cpu_millis: self.node_cpu_millis,
            memory_mib: self.node_memory_mib,
        };
        let largest = Resources {
            cpu_millis: self.instance_cpu_millis,
            memory_mib: MAX_FUNCTION_MEMORY_MIB,
        };
        if !node.fits(largest) {
            return Err(FieldError::new(
                "node_memory_mib",
                format!(
                    "must hold the largest function ({MAX_FUNCTION_MEMORY_MIB} MiB) and its CPU"
                ),
            ));
        }
        Ok(())
    }
}

/// One row of the simulator's result: one policy with or without
/// cache-aware placement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimRow {
    /// Reservation policy.
    pub policy: PolicyKind,
    /// Whether placement scored image warmth.
    pub cache_aware: bool,
    /// Idle seconds before an on-demand instance is retired.
    pub keep_alive_s: u64,
    /// Invocations replayed in the measured part.
    pub invocations: u64,
    /// Invocations that waited for an instance to start.
    pub cold_starts: u64,
    /// Per function, the share of its invocations that were cold starts
    /// (%): the 75th percentile across the functions invoked (the
    /// literature's measure: most functions, not the busiest, decide it).
    pub cold_start_pct_p75: f64,
    /// The same, 99th percentile across functions.
    pub cold_start_pct_p99: f64,
    /// Mean wait of the invocations that waited, ms: what cache-aware
    /// placement shortens.
    pub mean_cold_start_ms: f64,
    /// Invocations dropped because no node had capacity.
    pub rejected: u64,
    /// Instances placed (on demand and reserved), over the whole run, warm-up included.
    pub placements: u64,
    /// Sum of all instances' lifetimes, s (what the platform pays for).
    pub instance_seconds: f64,
    /// The part of it with nothing in flight, s.
    pub idle_instance_seconds: f64,
    /// Memory held by instances over time, GB-seconds (GiB × s).
    pub gb_seconds: f64,
    /// The part of it held by idle instances: the wasted memory time.
    pub idle_gb_seconds: f64,
    /// Median start latency (arrival to start of execution), ms.
    pub p50_start_ms: f64,
    /// 99th percentile start latency, ms.
    pub p99_start_ms: f64,
    /// 99.9th percentile start latency, ms.
    pub p999_start_ms: f64,
    /// Placements per second of scheduler CPU spent placing (scoring every
    /// node, choosing one, recording the instance), measured inside
    /// [`ClusterView::place`].
    pub placements_per_s: f64,
}

/// A simulated node's image cache: fixed number of slots, least recently
/// started image evicted.
struct NodeCache {
    slots: Vec<(u32, u64)>,
}

impl NodeCache {
    /// Records a start of `image`; returns the image evicted for it, if any.
    fn touch(&mut self, image: u32, now: u64, capacity: usize) -> Option<u32> {
        if let Some(slot) = self.slots.iter_mut().find(|(i, _)| *i == image) {
            slot.1 = now;
            return None;
        }
        if self.slots.len() < capacity {
            self.slots.push((image, now));
            return None;
        }
        let oldest = self
            .slots
            .iter_mut()
            .min_by_key(|(_, t)| *t)
            .expect("capacity >= 1");
        let evicted = oldest.0;
        *oldest = (image, now);
        Some(evicted)
    }
}

/// The simulation state for one run.
struct Run<'a> {
    trace: &'a Trace,
    costs: &'a StartCosts,
    params: &'a ClusterParams,
    view: ClusterView,
    caches: Vec<NodeCache>,
    node_index: HashMap<String, usize>,
    image_ids: HashMap<&'a str, u32>,
    image_names: Vec<&'a str>,
    instance_ms: u64,
    idle_ms: u64,
    /// Each function's instance memory, MiB (for GB-seconds).
    function_memory: HashMap<String, u32>,
    /// Memory held × time, MiB·ms; and the idle part of it.
    mib_ms: u128,
    idle_mib_ms: u128,
    /// Start of the measured part, simulated Unix ms.
    measure_from: u64,
    /// Each instance's busy time when the measured part began.
    busy_at_measure_start: Option<HashMap<u64, u64>>,
}

impl<'a> Run<'a> {
    /// Accounts for an instance placed at `now`: sets when it is ready from
    /// its image's start cost on that node, and warms the node's cache.
    fn started(&mut self, p: &Placement, now: u64) -> u64 {
        let ready = now + self.costs.of(&p.image).start_ms(p.warm_fraction).round() as u64;
        self.view.set_ready_at(p.instance_id, ready);
        let node = self.node_index[&p.node_id];
        let image = self.image_ids[p.image.as_str()];
        if let Some(evicted) = self.caches[node].touch(image, now, self.params.cache_images) {
            self.view
                .set_image_warmth(&p.node_id, self.image_names[evicted as usize], 0.0);
        }
        self.view.set_image_warmth(&p.node_id, &p.image, 1.0);
        ready
    }

    /// Accounts for instances retired at `now`, for their time after the
    /// measurement start only (busy time before it taken off by the
    /// snapshot made there).
    fn retired(&mut self, gone: &[RetiredInstance], now: u64) {
        for r in gone {
            let created = now.saturating_sub(r.lifetime_ms);
            let lifetime = now.saturating_sub(created.max(self.measure_from));
            let busy_before = self
                .busy_at_measure_start
                .as_ref()
                .and_then(|b| b.get(&r.instance_id))
                .copied()
                .unwrap_or(0);
            let busy = r.busy_ms.saturating_sub(busy_before).min(lifetime);
            let idle = lifetime - busy;
            self.instance_ms += lifetime;
            self.idle_ms += idle;
            let memory = u128::from(self.function_memory.get(&r.function).copied().unwrap_or(0));
            self.mib_ms += memory * u128::from(lifetime);
            self.idle_mib_ms += memory * u128::from(idle);
        }
    }

    fn tick(&mut self, now: u64) {
        if now >= self.measure_from && self.busy_at_measure_start.is_none() {
            self.busy_at_measure_start = Some(self.view.busy_ms_so_far(now));
        }
        let idle = self.view.retire_idle(now);
        let changes = self.view.reconcile_reservations(now);
        self.retired(&idle, now);
        self.retired(&changes.stopped, now);
        for p in &changes.started {
            self.started(p, now);
        }
    }
}

/// Runs one policy over `trace`, measuring only from `measure_from_ms`
/// (ms since the trace's start) on: every function gets a policy of `kind`
/// sized from the invocations before it (see [`super::sizing`]), so that
/// no policy knows what it is judged on, and that part is replayed first
/// as warm-up (instances, caches and the histogram policy's learning carry
/// over). With `measure_from_ms` 0 the policies are sized on the measured
/// trace itself: an oracle. The cluster starts empty at the tick of the
/// trace's first arrival.
pub fn simulate(
    trace: &Trace,
    measure_from_ms: u64,
    costs: &StartCosts,
    params: &ClusterParams,
    policy: PolicyKind,
    cache_aware: bool,
) -> Result<SimRow, FieldError> {
    params.validate()?;
    let weights = if cache_aware {
        ScoringWeights::default()
    } else {
        ScoringWeights::default().cache_blind()
    };
    let mut view = ClusterView::new(weights);
    let mut node_index = HashMap::new();
    for n in 0..params.nodes {
        let node_id = format!("node-{n:03}");
        let report = NodeReport {
            node_id: node_id.clone(),
            capacity: Resources {
                cpu_millis: params.node_cpu_millis,
                memory_mib: params.node_memory_mib,
            },
            used: Resources::default(),
            instances: vec![],
            images: vec![],
            running: Vec::new(),
            starts_instances: false,
        };
        view.apply_report(&report, SIM_EPOCH_MS)?;
        node_index.insert(node_id, n as usize);
    }
    if measure_from_ms > 0 && measure_from_ms >= trace.span_ms() {
        return Err(FieldError::new(
            "measure_from_ms",
            format!(
                "{measure_from_ms} leaves nothing to measure in a trace of {} ms",
                trace.span_ms()
            ),
        ));
    }
    let profiles = load_profiles(trace, (measure_from_ms > 0).then_some(measure_from_ms));
    let measure_from = SIM_EPOCH_MS + measure_from_ms;
    let mut function_ids = Vec::with_capacity(trace.functions.len());
    let mut image_ids = HashMap::new();
    let mut image_names = Vec::new();
    let mut function_memory: HashMap<String, u32> = HashMap::new();
    for (index, (f, profile)) in trace.functions.iter().zip(&profiles).enumerate() {
        let spec = FunctionSpec {
            name: f.name.clone(),
            image: f.image.clone(),
            cpu_millis: params.instance_cpu_millis,
            memory_mib: function_memory_mib(index),
            concurrency: params.concurrency,
            timeout_s: crate::scheduler::function::MAX_TIMEOUT_S,
            keep_alive_s: params.keep_alive_s,
            policy: policy_for(policy, profile, params.concurrency, params.keep_alive_s),
            command: None,
            start_timeout_s: 120,
        };
        function_memory.insert(f.name.clone(), spec.memory_mib);
        function_ids.push(
            view.register_function(spec)
                .map_err(|e| e.within(&f.name))?,
        );
        image_ids.entry(f.image.as_str()).or_insert_with(|| {
            image_names.push(f.image.as_str());
            image_names.len() as u32 - 1
        });
    }
    let mut run = Run {
        trace,
        costs,
        params,
        view,
        caches: (0..params.nodes)
            .map(|_| NodeCache { slots: Vec::new() })
            .collect(),
        node_index,
        image_ids,
        image_names,
        instance_ms: 0,
        idle_ms: 0,
        function_memory,
        mib_ms: 0,
        idle_mib_ms: 0,
        measure_from,
        busy_at_measure_start: None,
    };

    let mut completions: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut latencies: Vec<u32> = Vec::with_capacity(trace.invocations.len());
    let (mut cold_starts, mut rejected, mut cold_wait_ms) = (0u64, 0u64, 0u64);
    // Per function: (invocations, cold starts).
    let mut per_function = vec![(0u64, 0u64); trace.functions.len()];
    let first = trace.invocations.first().map_or(0, |i| i.timestamp_ms);
    let mut next_tick = SIM_EPOCH_MS + first / params.tick_ms * params.tick_ms;
    let mut now = next_tick;
    for inv in &run.trace.invocations {
        let arrival = SIM_EPOCH_MS + inv.timestamp_ms;
        // Everything due up to this arrival, in time order.
        loop {
            let due = completions.peek().map(|Reverse((t, _))| *t);
            if next_tick <= arrival && due.is_none_or(|t| next_tick <= t) {
                run.tick(next_tick);
                next_tick += params.tick_ms;
            } else if let Some(t) = due.filter(|&t| t <= arrival) {
                let Reverse((_, invocation)) = completions.pop().expect("peeked");
                run.view
                    .complete(invocation, t)
                    .expect("simulated invocations complete once");
            } else {
                break;
            }
        }
        now = arrival;
        let routed = match run.view.route(function_ids[inv.function as usize], arrival) {
            Ok(r) => r,
            Err(SchedulerError::NoCapacity { .. }) => {
                rejected += u64::from(arrival >= measure_from);
                continue;
            }
            Err(other) => unreachable!("the simulator registers every function: {other}"),
        };
        let ready = match &routed.cold_start {
            Some(p) => run.started(p, arrival),
            None => routed.ready_at_ms,
        };
        let start = ready.max(arrival);
        if arrival >= measure_from {
            let counts = &mut per_function[inv.function as usize];
            counts.0 += 1;
            if start > arrival {
                cold_starts += 1;
                cold_wait_ms += start - arrival;
                counts.1 += 1;
            }
            latencies.push((start - arrival).min(u64::from(u32::MAX)) as u32);
        }
        completions.push(Reverse((
            start + u64::from(inv.duration_ms),
            routed.invocation_id,
        )));
    }
    while let Some(Reverse((t, invocation))) = completions.pop() {
        run.view
            .complete(invocation, t)
            .expect("simulated invocations complete once");
        now = now.max(t);
    }
    let gone = run.view.retire_all(now);
    run.retired(&gone, now);

    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        f64::from(latencies[rank - 1])
    };
    let mut cold_pct: Vec<f64> = per_function
        .iter()
        .filter(|(invoked, _)| *invoked > 0)
        .map(|&(invoked, cold)| 100.0 * cold as f64 / invoked as f64)
        .collect();
    cold_pct.sort_unstable_by(f64::total_cmp);
    let across_functions = |p: f64| -> f64 {
        if cold_pct.is_empty() {
            return 0.0;
        }
        let rank = ((p * cold_pct.len() as f64).ceil() as usize).clamp(1, cold_pct.len());
        cold_pct[rank - 1]
    };
    Ok(SimRow {
        policy,
        cache_aware,
        keep_alive_s: params.keep_alive_s,
        invocations: per_function.iter().map(|c| c.0).sum::<u64>() + rejected,
        cold_starts,
        cold_start_pct_p75: across_functions(0.75),
        cold_start_pct_p99: across_functions(0.99),
        mean_cold_start_ms: cold_wait_ms as f64 / cold_starts.max(1) as f64,
        rejected,
        placements: run.view.placement_stats().placements,
        instance_seconds: run.instance_ms as f64 / 1000.0,
        idle_instance_seconds: run.idle_ms as f64 / 1000.0,
        gb_seconds: run.mib_ms as f64 / 1024.0 / 1000.0,
        idle_gb_seconds: run.idle_mib_ms as f64 / 1024.0 / 1000.0,
        p50_start_ms: percentile(0.50),
        p99_start_ms: percentile(0.99),
        p999_start_ms: percentile(0.999),
        placements_per_s: run.view.placement_stats().per_second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::costs::ColdMode;
    use crate::sim::generate::{generate, GeneratorParams};

    fn small_trace() -> Trace {
        generate(GeneratorParams {
            seed: 3,
            invocations: 30_000,
            functions: 40,
            hours: 24,
        })
        .unwrap()
    }

    fn params() -> ClusterParams {
        ClusterParams {
            nodes: 20,
            cache_images: 4,
            ..ClusterParams::default()
        }
    }

    #[test]
    fn every_invocation_is_served_or_rejected_and_accounted() {
        let trace = small_trace();
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let row = simulate(&trace, 0, &costs, &params(), PolicyKind::Utilisation, true).unwrap();
        assert_eq!(row.invocations, 30_000);
        assert_eq!(row.rejected, 0, "20 nodes of 32 slots are plenty");
        assert!(row.cold_starts > 0 && row.cold_starts < 30_000);
        assert!(row.idle_instance_seconds < row.instance_seconds);
        assert!(row.p50_start_ms <= row.p99_start_ms && row.p99_start_ms <= row.p999_start_ms);
        assert!(row.p999_start_ms <= costs.of("x").cold_ms);
    }

    #[test]
    fn cache_aware_placement_starts_faster_than_cache_blind() {
        let trace = small_trace();
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let aware = simulate(&trace, 0, &costs, &params(), PolicyKind::Fixed, true).unwrap();
        let blind = simulate(&trace, 0, &costs, &params(), PolicyKind::Fixed, false).unwrap();
        assert!(
            aware.mean_cold_start_ms < blind.mean_cold_start_ms,
            "{aware:?} vs {blind:?}"
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_result() {
        let trace = small_trace();
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let mut a = simulate(&trace, 0, &costs, &params(), PolicyKind::Hybrid, true).unwrap();
        let mut b = simulate(&trace, 0, &costs, &params(), PolicyKind::Hybrid, true).unwrap();
        a.placements_per_s = 0.0;
        b.placements_per_s = 0.0;
        assert_eq!(a, b);
    }

    /// The keep-alive baseline trades idle memory for cold starts: a longer
    /// keep-alive never starts more cold and never holds less idle; the
    /// per-function cold-start percentages are shares, p75 below p99.
    #[test]
    fn a_longer_keep_alive_starts_fewer_cold_and_idles_more() {
        let trace = small_trace();
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let run = |keep_alive_s| {
            let params = ClusterParams {
                keep_alive_s,
                ..params()
            };
            simulate(&trace, 0, &costs, &params, PolicyKind::KeepAlive, true).unwrap()
        };
        let short = run(60);
        let long = run(1_200);
        assert_eq!((short.keep_alive_s, long.keep_alive_s), (60, 1_200));
        assert!(
            long.cold_starts < short.cold_starts,
            "{long:?} vs {short:?}"
        );
        assert!(long.idle_instance_seconds > short.idle_instance_seconds);
        assert!(long.idle_gb_seconds > short.idle_gb_seconds);
        assert!(short.idle_gb_seconds < short.gb_seconds);
        for row in [&short, &long] {
            assert!(
                0.0 <= row.cold_start_pct_p75 && row.cold_start_pct_p75 <= row.cold_start_pct_p99
            );
            assert!(row.cold_start_pct_p99 <= 100.0);
        }
        assert!(long.cold_start_pct_p75 <= short.cold_start_pct_p75);
    }

    /// Function memory follows the distribution it is drawn from (median
    /// about 140 MiB, 90th percentile about 260 MiB), the same for the same
    /// function.
    #[test]
    fn function_memory_follows_its_distribution() {
        let mut sizes: Vec<u32> = (0..4000).map(function_memory_mib).collect();
        assert_eq!(function_memory_mib(17), function_memory_mib(17));
        sizes.sort_unstable();
        let (median, p90) = (sizes[2000], sizes[3600]);
        assert!((125..=155).contains(&median), "median {median}");
        assert!((235..=290).contains(&p90), "p90 {p90}");
        assert!(sizes[0] >= 64 && *sizes.last().unwrap() <= MAX_FUNCTION_MEMORY_MIB);
    }
}
