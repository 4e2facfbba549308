//! The cluster view: nodes (from reports), functions (registered), the
//! instances the scheduler placed and the invocations running on them.
//!
//! All operations take the current time as Unix milliseconds instead of
//! reading a clock, so the HTTP service (wall clock) and the simulator
//! (simulated time) drive the very same code.

use super::error::{FieldError, SchedulerError};
use super::function::FunctionSpec;
use super::node_index::{NodeIndex, COLD_CANDIDATES, WARM_CANDIDATES};
use super::policy::ReservationPolicy;
use super::report::{FunctionInstances, NodeReport, Resources, StopReason};
use super::scoring::{warm_fraction, ScoringWeights};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

/// Scheduler-assigned id of an instance, unique for the view's lifetime.
pub type InstanceId = u64;
/// Scheduler-assigned id of a routed invocation.
pub type InvocationId = u64;

/// Dense handle of a registered function, for callers (the simulator) that
/// route millions of times and should not hash the name each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunctionId(usize);

/// Interned image name.
type ImageKey = u32;

pub(super) struct Node {
    id: String,
    capacity: Resources,
    reported_used: Resources,
    /// Sum of the resources of the instances the view tracks on the node.
    reserved: Resources,
    /// CPU of the instances that have at least one invocation in flight.
    busy_cpu_millis: u64,
    warm: HashMap<ImageKey, f64>,
    reported_instances: Vec<FunctionInstances>,
    last_report_ms: u64,
    alive: bool,
    /// Silent past the dead timeout: its instances were retired.
    dead: bool,
    /// Its daemon starts the instances placed there and says when they
    /// are ready (`starts_instances`): they start out starting.
    starts_instances: bool,
    /// Lost long enough to be forgotten: its slot awaits a new node.
    forgotten: bool,
    /// The instances the view has on it, so a lost node's are found
    /// without a scan.
    instances: HashSet<InstanceId>,
}

impl Node {
    fn free(&self) -> Resources {
        let used_cpu = self.reserved.cpu_millis.max(self.reported_used.cpu_millis);
        let used_mem = self.reserved.memory_mib.max(self.reported_used.memory_mib);
        Resources {
            cpu_millis: self.capacity.cpu_millis.saturating_sub(used_cpu),
            memory_mib: self.capacity.memory_mib.saturating_sub(used_mem),
        }
    }

    /// Busy CPU share: what the node reported, or what the view knows is
    /// busy, whichever is higher.
    fn load(&self) -> f64 {
        let busy = (self.busy_cpu_millis as f64).max(f64::from(self.reported_used.cpu_millis));
        (busy / f64::from(self.capacity.cpu_millis)).min(1.0)
    }
}

pub(super) struct FunctionState {
    pub(super) spec: FunctionSpec,
    image: ImageKey,
    pub(super) policy: Option<ReservationPolicy>,
    pub(super) instances: Vec<InstanceId>,
    in_flight: u32,
    /// Integral of `in_flight` over time (invocation-milliseconds) since
    /// `demand_since_ms`, for the average load policies see.
    in_flight_integral: f64,
    demand_since_ms: Option<u64>,
    last_change_ms: u64,
}

pub(super) struct Instance {
    pub(super) function: usize,
    node: usize,
    /// What was reserved for it on its node at placement: released exactly
    /// so, whatever the function's spec says by then (it may have been
    /// registered again with other resources).
    resources: Resources,
    pub(super) reserved: bool,
    pub(super) in_flight: u32,
    /// The invocations in flight on it (at most its concurrency), so
    /// retiring it fails them without a scan.
    invocations: Vec<InvocationId>,
    ready_at_ms: u64,
    /// Started by a node agent that has not said it is ready yet (the
    /// service's instances; the simulator models starts by `ready_at_ms`).
    starting: bool,
    created_ms: u64,
    pub(super) idle_since_ms: u64,
    busy_since_ms: u64,
    busy_ms: u64,
}

struct Invocation {
    instance: InstanceId,
    /// When it times out: its start plus its function's timeout when it
    /// was routed.
    deadline_ms: u64,
}

/// Where a new instance went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// The new instance.
    pub instance_id: InstanceId,
    /// Function it serves.
    pub function: String,
    /// Image it runs.
    pub image: String,
    /// Node it was placed on.
    pub node_id: String,
    /// Resources reserved for it there.
    pub resources: Resources,
    /// The node's placement score.
    pub score: f64,
    /// The image's warm fraction on that node (0 = nothing cached).
    pub warm_fraction: f64,
    /// Whether a reservation policy holds it (otherwise on demand).
    pub reserved: bool,
}

/// Where an invocation was sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    /// Id to complete the invocation with.
    pub invocation_id: InvocationId,
    /// Instance it runs on.
    pub instance_id: InstanceId,
    /// Invocations in flight on that instance, this one included.
    pub in_flight: u32,
    /// When the instance is ready (equal to the route time unless it is
    /// still starting), Unix ms.
    pub ready_at_ms: u64,
    /// Set when no instance had a free slot and a new one was placed.
    pub cold_start: Option<Placement>,
}

/// An instance that left the view, with what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetiredInstance {
    /// The instance.
    pub instance_id: InstanceId,
    /// Function it served.
    pub function: String,
    /// Node it ran on.
    pub node_id: String,
    /// Why it left.
    pub reason: StopReason,
    /// Whether a policy held it when it left.
    pub reserved: bool,
    /// From placement to retirement.
    pub lifetime_ms: u64,
    /// Time with at least one invocation in flight.
    pub busy_ms: u64,
    /// Invocations that were in flight on it: they failed with it.
    pub failed_invocations: Vec<InvocationId>,
}

/// How many failed invocations are remembered (oldest forgotten first), so
/// their callers learn why when they ask; memory stays bounded.
const MAX_FAILED_REMEMBERED: usize = 100_000;

/// Invocations that ended because their instance was stopped under them.
#[derive(Default)]
struct FailedInvocations {
    /// Why each failed, and whether it was itself past its deadline.
    why: HashMap<InvocationId, (StopReason, bool)>,
    order: std::collections::VecDeque<InvocationId>,
}

impl FailedInvocations {
    fn remember(&mut self, id: InvocationId, reason: StopReason, overdue: bool) {
        if self.order.len() == MAX_FAILED_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.why.remove(&oldest);
            }
        }
        self.why.insert(id, (reason, overdue));
        self.order.push_back(id);
    }
}

/// A lost node is forgotten after this many node timeouts without a
/// report.
pub const FORGET_LOST_AFTER_TIMEOUTS: u64 = 10;

/// Interned image names, counted: each node cache entry and each function
/// holds a reference, and an image nobody refers to is forgotten (its key
/// reused), so names nodes report once do not pile up.
#[derive(Default)]
struct Images {
    keys: HashMap<String, ImageKey>,
    names: Vec<String>,
    refs: Vec<u32>,
    free: Vec<ImageKey>,
}

impl Images {
    /// The key of `name`, taking a reference to it.
    fn acquire(&mut self, name: &str) -> ImageKey {
        let key = match self.keys.get(name) {
            Some(&key) => key,
            None => {
                let key = match self.free.pop() {
                    Some(key) => {
                        self.names[key as usize] = name.to_string();
                        key
                    }
                    None => {
                        self.names.push(name.to_string());
                        self.refs.push(0);
                        self.names.len() as ImageKey - 1
                    }
                };
                self.keys.insert(name.to_string(), key);
                key
            }
        };
        self.refs[key as usize] += 1;
        key
    }

    /// Drops a reference; the last one forgets the image.
    fn release(&mut self, key: ImageKey) {
        let refs = &mut self.refs[key as usize];
        debug_assert!(*refs > 0, "image key {key} released more than acquired");
        if *refs == 0 {
            return;
        }
        *refs -= 1;
        if *refs == 0 {
            let name = std::mem::take(&mut self.names[key as usize]);
            self.keys.remove(&name);
            self.free.push(key);
        }
    }

    /// The key of a known image.
    fn get(&self, name: &str) -> Option<ImageKey> {
        self.keys.get(name).copied()
    }

    /// Images known (referred to by a node or a function).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// A node that stopped reporting: lost (its instances kept) or dead (its
/// instances retired).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostNode {
    /// The node.
    pub node_id: String,
    /// Its instances: kept while it is lost, retired once it is dead.
    pub instances: Vec<InstanceId>,
    /// Invocations running on them.
    pub invocations: usize,
    /// Declared dead (its instances were retired), not just lost.
    pub dead: bool,
}

/// Summary of one node for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    /// Node id.
    pub node_id: String,
    /// False once the node missed its report deadline.
    pub alive: bool,
    /// Capacity as reported.
    pub capacity: Resources,
    /// What is free for new instances.
    pub free: Resources,
    /// Instances the scheduler tracks there.
    pub instances: u32,
    /// Instances per function as the node last reported them.
    pub reported_instances: Vec<FunctionInstances>,
    /// Images the node reported, with warm fraction.
    pub warm_images: usize,
    /// When the node last reported, Unix ms.
    pub last_report_ms: u64,
}

/// Summary of one function for `GET /v1/functions/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionSummary {
    /// Function name.
    pub name: String,
    /// Instances held by its reservation policy.
    pub reserved_instances: u32,
    /// Instances started on demand.
    pub on_demand_instances: u32,
    /// Invocations in flight.
    pub in_flight: u32,
    /// Policy kind, if any.
    pub policy: Option<&'static str>,
}

/// How many placements the view made and the CPU time they took: the
/// scheduler's placement throughput, exposed in `GET /v1/cluster` and
/// reported by the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlacementStats {
    /// Successful placements.
    pub placements: u64,
    /// Time spent in placement calls (failed ones included), ns.
    pub busy_ns: u64,
}

impl PlacementStats {
    /// Placements per second of placement time.
    pub fn per_second(&self) -> f64 {
        self.placements as f64 / (self.busy_ns.max(1) as f64 / 1e9)
    }
}

/// The scheduler's model of the cluster. Not thread-safe by itself; the
/// service wraps it in a mutex, the simulator owns it.
pub struct ClusterView {
    weights: ScoringWeights,
    pub(super) nodes: Vec<Node>,
    node_ids: HashMap<String, usize>,
    /// Slots of forgotten nodes, for new ones.
    free_nodes: Vec<usize>,
    images: Images,
    pub(super) functions: Vec<FunctionState>,
    function_ids: HashMap<String, usize>,
    pub(super) instances: HashMap<InstanceId, Instance>,
    invocations: HashMap<InvocationId, Invocation>,
    /// Invocations that failed with their instance, for their callers.
    failed: FailedInvocations,
    next_instance: InstanceId,
    next_invocation: InvocationId,
    placement_stats: PlacementStats,
    /// Nodes ordered for placement; told of every change below.
    index: NodeIndex,
    /// When each idle on-demand instance's keep-alive runs out (instances
    /// of functions whose policy plans idle time excepted): retirement
    /// takes what is due instead of scanning every instance.
    idle_timers: BTreeSet<(u64, InstanceId)>,
    idle_timer_of: HashMap<InstanceId, u64>,
    /// Invocations in flight by deadline: timeouts take what is due.
    deadlines: BTreeSet<(u64, InvocationId)>,
}

impl ClusterView {
    /// An empty view scoring nodes with `weights`.
    pub fn new(weights: ScoringWeights) -> Self {
        Self {
            weights,
            nodes: Vec::new(),
            node_ids: HashMap::new(),
            free_nodes: Vec::new(),
            images: Images::default(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            instances: HashMap::new(),
            invocations: HashMap::new(),
            failed: FailedInvocations::default(),
            next_instance: 1,
            next_invocation: 1,
            placement_stats: PlacementStats::default(),
            index: NodeIndex::default(),
            idle_timers: BTreeSet::new(),
            idle_timer_of: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Sets instance `id`'s idle timer from its state: due at the end of
    /// its keep-alive when it is on demand, idle and its function's policy
    /// plans no idle time; none otherwise (or when it is gone).
    pub(super) fn retime(&mut self, id: InstanceId) {
        if let Some(due) = self.idle_timer_of.remove(&id) {
            self.idle_timers.remove(&(due, id));
        }
        let Some(i) = self.instances.get(&id) else {
            return;
        };
        let f = &self.functions[i.function];
        if i.reserved || i.in_flight > 0 || f.policy.as_ref().is_some_and(|p| p.plans_idle()) {
            return;
        }
        let due = i.idle_since_ms + f.spec.keep_alive_s * 1000;
        self.idle_timers.insert((due, id));
        self.idle_timer_of.insert(id, due);
    }

    /// Re-keys node `idx` in the placement index after its capacity, use,
    /// load or liveness changed.
    fn reindex(&mut self, idx: usize) {
        let node = &self.nodes[idx];
        let cap = node.capacity;
        let key = (node.alive && cap.cpu_millis > 0 && cap.memory_mib > 0).then(|| {
            let free = node.free();
            let free_frac = f64::min(
                f64::from(free.cpu_millis) / f64::from(cap.cpu_millis),
                f64::from(free.memory_mib) / f64::from(cap.memory_mib),
            );
            self.weights.score(0.0, free_frac, node.load())
        });
        self.index.set_capacity(idx, key);
    }

    /// Replaces node `idx`'s cached images (whose keys the caller
    /// acquired), keeping the index in step and releasing the old ones.
    fn set_node_warmth(&mut self, idx: usize, warm: HashMap<ImageKey, f64>) {
        let old = std::mem::replace(&mut self.nodes[idx].warm, warm);
        for (&image, &w) in &old {
            self.index.set_warmth(image, idx, Some(w), None);
            self.images.release(image);
        }
        for (&image, &w) in &self.nodes[idx].warm {
            self.index.set_warmth(image, idx, None, Some(w));
        }
    }

    /// Takes in a node report: creates the node or refreshes it (a lost node
    /// that reports again is alive again, with the instances it had unless
    /// it was dead by then).
    pub fn apply_report(&mut self, report: &NodeReport, now_ms: u64) -> Result<(), FieldError> {
        report.validate()?;
        let warm: HashMap<ImageKey, f64> = report
            .images
            .iter()
            .map(|c| {
                (
                    self.images.acquire(&c.image),
                    warm_fraction(c.chunks_cached, c.trace_cached),
                )
            })
            .collect();
        let idx = match self.node_ids.get(&report.node_id) {
            Some(&idx) => idx,
            None => {
                let node = Node {
                    id: report.node_id.clone(),
                    capacity: report.capacity,
                    reported_used: Resources::default(),
                    reserved: Resources::default(),
                    busy_cpu_millis: 0,
                    warm: HashMap::new(),
                    reported_instances: Vec::new(),
                    last_report_ms: now_ms,
                    alive: true,
                    dead: false,
                    starts_instances: false,
                    forgotten: false,
                    instances: HashSet::new(),
                };
                let idx = match self.free_nodes.pop() {
                    Some(idx) => {
                        self.nodes[idx] = node;
                        idx
                    }
                    None => {
                        self.nodes.push(node);
                        self.nodes.len() - 1
                    }
                };
                self.node_ids.insert(report.node_id.clone(), idx);
                idx
            }
        };
        let node = &mut self.nodes[idx];
        node.capacity = report.capacity;
        node.reported_used = report.used;
        node.reported_instances = report.instances.clone();
        node.last_report_ms = now_ms;
        node.alive = true;
        node.dead = false;
        node.starts_instances = report.starts_instances;
        self.set_node_warmth(idx, warm);
        self.reindex(idx);
        Ok(())
    }

    /// Sets how warm `image` is on `node_id` between reports; the simulator
    /// uses it as its nodes' caches fill and evict. A warmth of 0 forgets
    /// the image. Returns false for an unknown node.
    pub fn set_image_warmth(&mut self, node_id: &str, image: &str, warm: f64) -> bool {
        let Some(&idx) = self.node_ids.get(node_id) else {
            return false;
        };
        let key = self.images.acquire(image);
        let cache = &mut self.nodes[idx].warm;
        let old = if warm > 0.0 {
            cache.insert(key, warm.min(1.0))
        } else {
            cache.remove(&key)
        };
        let new = cache.get(&key).copied();
        self.index.set_warmth(key, idx, old, new);
        // The cache holds one reference to a key it has: the one taken
        // above is it when the image came in; otherwise drop it, and the
        // cache's own too when the image left.
        match (old, new) {
            (None, Some(_)) => {}
            (Some(_), None) => {
                self.images.release(key);
                self.images.release(key);
            }
            _ => self.images.release(key),
        }
        true
    }

    /// Registers a function or replaces its spec. A replaced policy starts
    /// with fresh state; existing instances stay.
    pub fn register_function(&mut self, spec: FunctionSpec) -> Result<FunctionId, FieldError> {
        spec.validate()?;
        let policy = spec
            .policy
            .as_ref()
            .map(|p| p.compile().map_err(|e| e.within("policy")))
            .transpose()?;
        let image = self.images.acquire(&spec.image);
        if let Some(&idx) = self.function_ids.get(&spec.name) {
            let f = &mut self.functions[idx];
            let old_image = std::mem::replace(&mut f.image, image);
            f.spec = spec;
            f.policy = policy;
            self.images.release(old_image);
            for id in self.functions[idx].instances.clone() {
                self.retime(id);
            }
            return Ok(FunctionId(idx));
        }
        self.function_ids
            .insert(spec.name.clone(), self.functions.len());
        self.functions.push(FunctionState {
            spec,
            image,
            policy,
            instances: Vec::new(),
            in_flight: 0,
            in_flight_integral: 0.0,
            demand_since_ms: None,
            last_change_ms: 0,
        });
        Ok(FunctionId(self.functions.len() - 1))
    }

    /// The handle of a registered function.
    pub fn function_id(&self, name: &str) -> Result<FunctionId, SchedulerError> {
        self.function_ids
            .get(name)
            .map(|&i| FunctionId(i))
            .ok_or_else(|| SchedulerError::UnknownFunction(name.to_string()))
    }

    /// The best live node for an instance of `image` needing `need`, with its
    /// score and the image's warm fraction there. Never a node that lacks
    /// the capacity; ties go to the node that reported first.
    /// The best node for an instance of `image` needing `need`: scored
    /// exactly among the warmest nodes caching the image and the nodes
    /// with the best capacity score (see [`NodeIndex`]), ties to the
    /// earliest node.
    fn best_node(&self, image: ImageKey, need: Resources) -> Option<(usize, f64, f64)> {
        let fits = |&idx: &usize| capacity_terms(&self.nodes[idx], need).is_some();
        let warm = self
            .index
            .by_warmth(image)
            .filter(fits)
            .take(WARM_CANDIDATES);
        let cold = self.index.by_capacity().filter(fits).take(COLD_CANDIDATES);
        let mut best: Option<(usize, f64, f64)> = None;
        for idx in warm.chain(cold) {
            let node = &self.nodes[idx];
            let Some((free_after, load)) = capacity_terms(node, need) else {
                continue;
            };
            let warm = node.warm.get(&image).copied().unwrap_or(0.0);
            let score = self.weights.score(warm, free_after, load);
            let better = best.is_none_or(|(b, s, _)| score > s || (score == s && idx < b));
            if better {
                best = Some((idx, score, warm));
            }
        }
        best
    }

    /// Scores the named nodes for a pod running `images` and needing `need`,
    /// for the Kubernetes extender. A pod's warm fraction on a node is the
    /// mean over its images.
    pub fn fit_nodes(
        &self,
        node_ids: &[String],
        images: &[String],
        need: Resources,
    ) -> Vec<NodeFit> {
        let keys: Vec<Option<ImageKey>> = images.iter().map(|i| self.images.get(i)).collect();
        node_ids
            .iter()
            .map(|id| {
                let Some(node) = self
                    .node_ids
                    .get(id)
                    .map(|&i| &self.nodes[i])
                    .filter(|n| n.alive)
                else {
                    return NodeFit::Unknown;
                };
                let Some((free_after, load)) = capacity_terms(node, need) else {
                    return NodeFit::Unfit(node.free());
                };
                let warm_sum: f64 = keys
                    .iter()
                    .map(|k| k.and_then(|k| node.warm.get(&k)).copied().unwrap_or(0.0))
                    .sum();
                let warm = if keys.is_empty() {
                    0.0
                } else {
                    warm_sum / keys.len() as f64
                };
                NodeFit::Fits(
                    self.weights
                        .scaled(self.weights.score(warm, free_after, load), 10),
                )
            })
            .collect()
    }

    /// Placements made so far and the time they took.
    pub fn placement_stats(&self) -> PlacementStats {
        self.placement_stats
    }

    /// Places a new instance of `function`, on demand or for a reservation.
    pub fn place(
        &mut self,
        function: FunctionId,
        reserved: bool,
        now_ms: u64,
    ) -> Result<Placement, SchedulerError> {
        let clock = Instant::now();
        let placed = self.place_untimed(function, reserved, now_ms);
        self.placement_stats.busy_ns += clock.elapsed().as_nanos() as u64;
        self.placement_stats.placements += u64::from(placed.is_ok());
        placed
    }

    fn place_untimed(
        &mut self,
        function: FunctionId,
        reserved: bool,
        now_ms: u64,
    ) -> Result<Placement, SchedulerError> {
        let f = &self.functions[function.0];
        let need = f.spec.resources();
        let image = f.image;
        let Some((node_idx, score, warm)) = self.best_node(image, need) else {
            return Err(SchedulerError::NoCapacity {
                image: f.spec.image.clone(),
                cpu_millis: need.cpu_millis,
                memory_mib: need.memory_mib,
            });
        };
        let id = self.next_instance;
        self.next_instance += 1;
        let node = &mut self.nodes[node_idx];
        node.reserved.cpu_millis += need.cpu_millis;
        node.reserved.memory_mib += need.memory_mib;
        node.instances.insert(id);
        self.reindex(node_idx);
        self.instances.insert(
            id,
            Instance {
                function: function.0,
                node: node_idx,
                resources: need,
                reserved,
                in_flight: 0,
                invocations: Vec::new(),
                ready_at_ms: now_ms,
                starting: self.nodes[node_idx].starts_instances,
                created_ms: now_ms,
                idle_since_ms: now_ms,
                busy_since_ms: now_ms,
                busy_ms: 0,
            },
        );
        let f = &mut self.functions[function.0];
        f.instances.push(id);
        self.retime(id);
        let f = &self.functions[function.0];
        Ok(Placement {
            instance_id: id,
            function: f.spec.name.clone(),
            image: f.spec.image.clone(),
            node_id: self.nodes[node_idx].id.clone(),
            resources: need,
            score,
            warm_fraction: warm,
            reserved,
        })
    }

    /// Marks an instance as starting until `ready_at_ms`; invocations routed
    /// to it meanwhile wait. The simulator sets this from the start cost.
    pub fn set_ready_at(&mut self, instance: InstanceId, ready_at_ms: u64) {
        if let Some(i) = self.instances.get_mut(&instance) {
            i.ready_at_ms = ready_at_ms;
        }
    }

    /// Marks an instance its node's agent reported ready. Until then (from
    /// its placement on a node that `starts_instances`) it is starting:
    /// routing prefers ready instances, and an invocation sent to a
    /// starting one may wait its function's start timeout before its own
    /// timeout counts.
    pub fn set_ready(&mut self, instance: InstanceId) {
        if let Some(i) = self.instances.get_mut(&instance) {
            i.starting = false;
        }
    }

    /// A registered function's spec.
    pub fn spec(&self, function: FunctionId) -> &FunctionSpec {
        &self.functions[function.0].spec
    }

    /// Numbers instances from `first` on: a restarted service starts past
    /// the ids its predecessor gave, so a node still running one of those
    /// is not taken for a new instance of the same id.
    pub fn number_instances_from(&mut self, first: InstanceId) {
        self.next_instance = self.next_instance.max(first);
    }

    /// The node and function of an instance, if the view has it.
    pub fn instance_home(&self, instance: InstanceId) -> Option<(&str, &str)> {
        let i = self.instances.get(&instance)?;
        Some((
            self.nodes[i.node].id.as_str(),
            self.functions[i.function].spec.name.as_str(),
        ))
    }

    /// Routes an invocation of `function`: to the instance with the fewest
    /// invocations in flight among those with a free slot (ready ones
    /// first), or to a newly placed instance when every slot is taken.
    pub fn route(&mut self, function: FunctionId, now_ms: u64) -> Result<Routed, SchedulerError> {
        let f = &self.functions[function.0];
        let concurrency = f.spec.concurrency;
        let best = f
            .instances
            .iter()
            .filter_map(|id| self.instances.get(id).map(|i| (*id, i)))
            .filter(|(_, i)| i.in_flight < concurrency && self.nodes[i.node].alive)
            .min_by_key(|(id, i)| {
                let not_ready = i.starting || i.ready_at_ms > now_ms;
                (not_ready, i.in_flight, i.ready_at_ms, *id)
            })
            .map(|(id, _)| id);
        let (instance_id, cold_start) = match best {
            Some(id) => (id, None),
            None => {
                let placement = self.place(function, false, now_ms)?;
                (placement.instance_id, Some(placement))
            }
        };
        self.note_demand_change(function.0, now_ms);
        let f = &mut self.functions[function.0];
        if f.in_flight == 0 {
            if let Some(policy) = f.policy.as_mut() {
                policy.went_busy(now_ms);
            }
        }
        f.in_flight += 1;
        let instance = self
            .instances
            .get_mut(&instance_id)
            .expect("instance chosen above exists");
        if instance.in_flight == 0 {
            instance.busy_since_ms = now_ms;
            let node = instance.node;
            self.nodes[node].busy_cpu_millis += u64::from(instance.resources.cpu_millis);
            self.reindex(node);
        }
        let instance = self
            .instances
            .get_mut(&instance_id)
            .expect("instance chosen above exists");
        instance.in_flight += 1;
        let (in_flight, ready_at_ms) = (instance.in_flight, instance.ready_at_ms);
        let spec = &self.functions[function.0].spec;
        // Waiting for a start is not running past the timeout: a starting
        // instance gets its start timeout first (it is stopped past it).
        let start_wait_ms = if instance.starting {
            spec.start_timeout_s * 1000
        } else {
            0
        };
        let deadline_ms = now_ms.max(ready_at_ms) + start_wait_ms + spec.timeout_s * 1000;
        self.retime(instance_id);
        let invocation_id = self.next_invocation;
        self.next_invocation += 1;
        if let Some(i) = self.instances.get_mut(&instance_id) {
            i.invocations.push(invocation_id);
        }
        self.invocations.insert(
            invocation_id,
            Invocation {
                instance: instance_id,
                deadline_ms,
            },
        );
        self.deadlines.insert((deadline_ms, invocation_id));
        Ok(Routed {
            invocation_id,
            instance_id,
            in_flight,
            ready_at_ms,
            cold_start,
        })
    }

    /// Ends an invocation; returns its instance and what is left in flight.
    pub fn complete(
        &mut self,
        invocation: InvocationId,
        now_ms: u64,
    ) -> Result<(InstanceId, u32), SchedulerError> {
        let record = self.invocations.remove(&invocation).ok_or_else(|| {
            match self.failed.why.get(&invocation) {
                Some(&(reason, overdue)) => SchedulerError::InvocationFailed {
                    invocation,
                    reason,
                    overdue,
                },
                None => SchedulerError::UnknownInvocation(invocation),
            }
        })?;
        self.deadlines.remove(&(record.deadline_ms, invocation));
        let instance = self
            .instances
            .get_mut(&record.instance)
            .expect("instances outlive their invocations");
        let function = instance.function;
        if let Some(at) = instance.invocations.iter().position(|&i| i == invocation) {
            instance.invocations.swap_remove(at);
        }
        instance.in_flight -= 1;
        let left = instance.in_flight;
        if left == 0 {
            instance.idle_since_ms = now_ms;
            instance.busy_ms += now_ms.saturating_sub(instance.busy_since_ms);
            let node = instance.node;
            self.nodes[node].busy_cpu_millis -= u64::from(instance.resources.cpu_millis);
            self.reindex(node);
            self.retime(record.instance);
        }
        self.note_demand_change(function, now_ms);
        self.function_in_flight_dropped(function, 1, now_ms);
        Ok((record.instance, left))
    }

    /// `by` fewer invocations of `function` in flight; its policy learns
    /// when none are left.
    fn function_in_flight_dropped(&mut self, function: usize, by: u32, now_ms: u64) {
        let f = &mut self.functions[function];
        f.in_flight -= by;
        if f.in_flight == 0 {
            if let Some(policy) = f.policy.as_mut() {
                policy.went_idle(now_ms);
            }
        }
    }

    fn note_demand_change(&mut self, function: usize, now_ms: u64) {
        let f = &mut self.functions[function];
        f.in_flight_integral +=
            f64::from(f.in_flight) * now_ms.saturating_sub(f.last_change_ms) as f64;
        f.last_change_ms = now_ms;
    }

    /// Average in-flight invocations of a function since the previous call
    /// (the current count on the first call), and starts a new period.
    pub(super) fn take_average_in_flight(&mut self, function: usize, now_ms: u64) -> f64 {
        self.note_demand_change(function, now_ms);
        let f = &mut self.functions[function];
        let avg = match f.demand_since_ms {
            Some(since) if now_ms > since => f.in_flight_integral / (now_ms - since) as f64,
            _ => f64::from(f.in_flight),
        };
        f.in_flight_integral = 0.0;
        f.demand_since_ms = Some(now_ms);
        avg
    }

    /// Removes an instance (and any invocation on it) from the view.
    pub(super) fn retire(
        &mut self,
        id: InstanceId,
        reason: StopReason,
        now_ms: u64,
    ) -> Option<RetiredInstance> {
        let instance = self.instances.remove(&id)?;
        self.retime(id);
        let f = &mut self.functions[instance.function];
        f.instances.retain(|&i| i != id);
        let need = instance.resources;
        let mut failed_invocations = Vec::new();
        let busy_ms = if instance.in_flight > 0 {
            // (invocation, ran past its own deadline)
            let mut failed = Vec::new();
            for &invocation in &instance.invocations {
                if let Some(inv) = self.invocations.remove(&invocation) {
                    self.deadlines.remove(&(inv.deadline_ms, invocation));
                    let late = reason == StopReason::Timeout && inv.deadline_ms <= now_ms;
                    failed.push((invocation, late));
                }
            }
            failed.sort_unstable();
            for &(invocation, late) in &failed {
                self.failed.remember(invocation, reason, late);
            }
            failed_invocations = failed
                .into_iter()
                .map(|(invocation, _)| invocation)
                .collect();
            self.nodes[instance.node].busy_cpu_millis -= u64::from(need.cpu_millis);
            self.note_demand_change(instance.function, now_ms);
            self.function_in_flight_dropped(instance.function, instance.in_flight, now_ms);
            instance.busy_ms + now_ms.saturating_sub(instance.busy_since_ms)
        } else {
            instance.busy_ms
        };
        let node = &mut self.nodes[instance.node];
        node.reserved.cpu_millis -= need.cpu_millis;
        node.reserved.memory_mib -= need.memory_mib;
        node.instances.remove(&id);
        self.reindex(instance.node);
        let node = &self.nodes[instance.node];
        Some(RetiredInstance {
            instance_id: id,
            function: self.functions[instance.function].spec.name.clone(),
            node_id: node.id.clone(),
            reason,
            reserved: instance.reserved,
            lifetime_ms: now_ms.saturating_sub(instance.created_ms),
            busy_ms,
            failed_invocations,
        })
    }

    /// Retires on-demand instances idle longer than their function's
    /// keep-alive. Under a histogram policy, once the function is idle, the
    /// most recently busy idle instance (the paper's one instance per
    /// application) is kept as the policy plans, and any others no longer
    /// than that where it keeps one, else as the function's keep-alive
    /// says: a burst's extra instances are neither dropped at once nor
    /// kept for the policy's long windows.
    pub fn retire_idle(&mut self, now_ms: u64) -> Vec<RetiredInstance> {
        let idle_past = |i: &Instance, keep_alive_ms: u64| {
            !i.reserved && i.in_flight == 0 && i.idle_since_ms + keep_alive_ms <= now_ms
        };
        let mut expired: Vec<InstanceId> = self
            .idle_timers
            .range(..=(now_ms, InstanceId::MAX))
            .map(|&(_, id)| id)
            .collect();
        for f in &self.functions {
            let Some(policy) = f.policy.as_ref().filter(|p| p.plans_idle()) else {
                continue;
            };
            let keep_alive_ms = f.spec.keep_alive_s * 1000;
            let planned = policy.planned_keep_alive_ms();
            let mut idle: Vec<(u64, InstanceId)> = f
                .instances
                .iter()
                .map(|id| (id, &self.instances[id]))
                .filter(|(_, i)| !i.reserved && i.in_flight == 0)
                .map(|(id, i)| (i.idle_since_ms, *id))
                .collect();
            idle.sort_unstable_by(|a, b| b.cmp(a));
            for (n, (_, id)) in idle.into_iter().enumerate() {
                // The plan's instance; the others no longer than it where
                // it keeps one (never dropped at once: the next burst wants
                // them), else the function's keep-alive.
                let keep = match (n, planned) {
                    (0, Some(p)) => p,
                    (_, Some(p)) if p > 0 => p.min(keep_alive_ms),
                    _ => keep_alive_ms,
                };
                if idle_past(&self.instances[&id], keep) {
                    expired.push(id);
                }
            }
        }
        expired.sort_unstable();
        expired
            .into_iter()
            .filter_map(|id| self.retire(id, StopReason::Retired, now_ms))
            .collect()
    }

    /// Every instance's busy time so far at `now_ms` (its current busy
    /// period included), for accounting that starts mid-way.
    pub fn busy_ms_so_far(&self, now_ms: u64) -> HashMap<InstanceId, u64> {
        self.instances
            .iter()
            .map(|(&id, i)| {
                let current = if i.in_flight > 0 {
                    now_ms.saturating_sub(i.busy_since_ms)
                } else {
                    0
                };
                (id, i.busy_ms + current)
            })
            .collect()
    }

    /// Retires every instance, as when a simulation ends; returns what each
    /// cost.
    pub fn retire_all(&mut self, now_ms: u64) -> Vec<RetiredInstance> {
        let mut all: Vec<InstanceId> = self.instances.keys().copied().collect();
        all.sort_unstable();
        all.into_iter()
            .filter_map(|id| self.retire(id, StopReason::Retired, now_ms))
            .collect()
    }

    /// Finds invocations running past their function's timeout (as it was
    /// when they were routed) and retires their instances, to be killed by
    /// their nodes; it takes the due ones from the deadline index.
    pub fn kill_timed_out(&mut self, now_ms: u64) -> Vec<RetiredInstance> {
        let mut late: Vec<InstanceId> = self
            .deadlines
            .range(..(now_ms, 0))
            .map(|(_, invocation)| self.invocations[invocation].instance)
            .collect();
        late.sort_unstable();
        late.dedup();
        late.into_iter()
            .filter_map(|id| self.retire(id, StopReason::Timeout, now_ms))
            .collect()
    }

    /// Follows nodes that stopped reporting. Silent for `node_timeout_ms`,
    /// a node is lost: nothing is placed or routed there, its instances are
    /// kept for when it comes back. Silent for `node_dead_ms`, it is dead:
    /// its instances are retired (their invocations fail) so reservation
    /// policies replace them. Silent for [`FORGET_LOST_AFTER_TIMEOUTS`]
    /// node timeouts (and at least until dead), it is forgotten and its
    /// slot reused, so node ids that stop reporting do not pile up.
    pub fn expire_lost_nodes(
        &mut self,
        now_ms: u64,
        node_timeout_ms: u64,
        node_dead_ms: u64,
    ) -> Vec<LostNode> {
        let forget_ms = node_timeout_ms
            .saturating_mul(FORGET_LOST_AFTER_TIMEOUTS)
            .max(node_dead_ms);
        let mut changes = Vec::new();
        for idx in 0..self.nodes.len() {
            let node = &self.nodes[idx];
            if node.forgotten {
                continue;
            }
            let silent_ms = now_ms.saturating_sub(node.last_report_ms);
            if node.alive && silent_ms > node_timeout_ms {
                self.nodes[idx].alive = false;
                self.set_node_warmth(idx, HashMap::new());
                self.nodes[idx].reported_used = Resources::default();
                self.reindex(idx);
                changes.push(self.lost_node(idx, false));
            }
            if !self.nodes[idx].alive && !self.nodes[idx].dead && silent_ms > node_dead_ms {
                self.nodes[idx].dead = true;
                let lost = self.lost_node(idx, true);
                for &id in &lost.instances {
                    self.retire(id, StopReason::NodeLost, now_ms);
                }
                changes.push(lost);
            }
            if !self.nodes[idx].alive && silent_ms > forget_ms {
                let node = &mut self.nodes[idx];
                node.forgotten = true;
                node.reported_instances.clear();
                let id = std::mem::take(&mut node.id);
                self.node_ids.remove(&id);
                self.free_nodes.push(idx);
            }
        }
        changes
    }

    /// Node `idx`'s instances and the invocations running on them.
    fn lost_node(&self, idx: usize, dead: bool) -> LostNode {
        let mut instances: Vec<InstanceId> = self.nodes[idx].instances.iter().copied().collect();
        instances.sort_unstable();
        let invocations = instances
            .iter()
            .filter_map(|id| self.instances.get(id))
            .map(|i| i.invocations.len())
            .sum();
        LostNode {
            node_id: self.nodes[idx].id.clone(),
            instances,
            invocations,
            dead,
        }
    }

    /// Every node, for the cluster summary.
    pub fn node_summaries(&self) -> Vec<NodeSummary> {
        self.nodes
            .iter()
            .filter(|n| !n.forgotten)
            .map(|n| NodeSummary {
                node_id: n.id.clone(),
                alive: n.alive,
                capacity: n.capacity,
                free: if n.alive {
                    n.free()
                } else {
                    Resources::default()
                },
                instances: n.instances.len() as u32,
                reported_instances: n.reported_instances.clone(),
                warm_images: n.warm.len(),
                last_report_ms: n.last_report_ms,
            })
            .collect()
    }

    /// One function's instances and load.
    pub fn function_summary(&self, id: FunctionId) -> FunctionSummary {
        let f = &self.functions[id.0];
        let reserved = f
            .instances
            .iter()
            .filter(|i| self.instances[i].reserved)
            .count() as u32;
        FunctionSummary {
            name: f.spec.name.clone(),
            reserved_instances: reserved,
            on_demand_instances: f.instances.len() as u32 - reserved,
            in_flight: f.in_flight,
            policy: f.spec.policy.as_ref().map(|p| p.kind()),
        }
    }

    /// All registered function handles, in registration order.
    pub fn function_ids(&self) -> impl Iterator<Item = FunctionId> {
        (0..self.functions.len()).map(FunctionId)
    }
}

/// Free share left on a node after placing `need` (the scarcer of CPU and
/// memory) and its load; None when the node is down or `need` does not fit.
fn capacity_terms(node: &Node, need: Resources) -> Option<(f64, f64)> {
    if !node.alive {
        return None;
    }
    let free = node.free();
    if !free.fits(need) {
        return None;
    }
    let cap = node.capacity;
    let free_after = f64::min(
        f64::from(free.cpu_millis - need.cpu_millis) / f64::from(cap.cpu_millis),
        f64::from(free.memory_mib - need.memory_mib) / f64::from(cap.memory_mib),
    );
    Some((free_after, node.load()))
}

/// How a node suits a pod, for the Kubernetes extender.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeFit {
    /// loci knows nothing about the node (no report, or lost): no opinion.
    Unknown,
    /// The node lacks the capacity; what it has free.
    Unfit(Resources),
    /// The node fits, with a score in 0..=10.
    Fits(i64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::report::ImageCache;

    fn report(node: &str, cpu: u32, images: &[(&str, f64)]) -> NodeReport {
        NodeReport {
            node_id: node.into(),
            capacity: Resources {
                cpu_millis: cpu,
                memory_mib: 16_384,
            },
            used: Resources::default(),
            instances: vec![],
            images: images
                .iter()
                .map(|&(image, f)| ImageCache {
                    image: image.into(),
                    chunks_cached: f,
                    trace_cached: f,
                })
                .collect(),
            running: Vec::new(),
            starts_instances: false,
        }
    }

    fn spec(name: &str, image: &str, concurrency: u32) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            image: image.into(),
            cpu_millis: 1000,
            memory_mib: 1024,
            concurrency,
            timeout_s: 10,
            keep_alive_s: 60,
            policy: None,
            command: None,
            start_timeout_s: 120,
        }
    }

    fn view() -> (ClusterView, FunctionId) {
        let mut v = ClusterView::new(ScoringWeights::default());
        v.apply_report(&report("cold", 8000, &[]), 0).unwrap();
        v.apply_report(&report("warm", 2000, &[("img", 1.0)]), 0)
            .unwrap();
        let f = v.register_function(spec("f", "img", 2)).unwrap();
        (v, f)
    }

    #[test]
    fn placement_prefers_the_warm_node_until_it_is_full() {
        let (mut v, f) = view();
        assert_eq!(v.place(f, false, 0).unwrap().node_id, "warm");
        assert_eq!(v.place(f, false, 0).unwrap().node_id, "warm");
        let third = v.place(f, false, 0).unwrap();
        assert_eq!(third.node_id, "cold", "warm node has no CPU left");
        assert_eq!(third.warm_fraction, 0.0);
    }

    /// A function registered again with other resources: its instances
    /// placed before give back exactly what was reserved for them.
    #[test]
    fn resources_reserved_at_placement_are_released_exactly() {
        let (mut v, f) = view();
        let free = |v: &ClusterView, node: &str| {
            v.node_summaries()
                .into_iter()
                .find(|n| n.node_id == node)
                .unwrap()
                .free
        };
        let before = free(&v, "warm");
        let routed = v.route(f, 0).unwrap();
        let placed = routed.cold_start.clone().unwrap();
        assert_eq!(placed.node_id, "warm");
        assert_eq!(free(&v, "warm").cpu_millis, before.cpu_millis - 1000);
        let mut smaller = spec("f", "img", 2);
        smaller.cpu_millis = 100;
        smaller.memory_mib = 64;
        assert_eq!(v.register_function(smaller).unwrap(), f);
        v.complete(routed.invocation_id, 1).unwrap();
        v.retire(placed.instance_id, StopReason::Retired, 2)
            .unwrap();
        assert_eq!(free(&v, "warm"), before);
        // And the other way round: a bigger spec after placement.
        let routed = v.route(f, 3).unwrap();
        let mut bigger = spec("f", "img", 2);
        bigger.cpu_millis = 1500;
        v.register_function(bigger).unwrap();
        v.complete(routed.invocation_id, 4).unwrap();
        v.retire(routed.instance_id, StopReason::Retired, 5)
            .unwrap();
        assert_eq!(free(&v, "warm"), before);
    }

    #[test]
    fn cache_blind_placement_picks_the_emptier_node() {
        let (mut v, f) = view();
        v.weights = v.weights.cache_blind();
        assert_eq!(v.place(f, false, 0).unwrap().node_id, "cold");
    }

    #[test]
    fn routing_fills_the_least_loaded_instance_then_starts_one() {
        let (mut v, f) = view();
        let a = v.route(f, 0).unwrap();
        assert!(a.cold_start.is_some());
        let b = v.route(f, 1).unwrap();
        assert_eq!((b.instance_id, b.in_flight), (a.instance_id, 2));
        let c = v.route(f, 2).unwrap();
        assert!(
            c.cold_start.is_some(),
            "both slots of the first instance taken"
        );
        assert_ne!(c.instance_id, a.instance_id);
        v.complete(a.invocation_id, 3).unwrap();
        v.complete(b.invocation_id, 3).unwrap();
        let d = v.route(f, 4).unwrap();
        assert_eq!(
            d.instance_id, a.instance_id,
            "0 in flight there, 1 on the newer one"
        );
        let e = v.route(f, 5).unwrap();
        assert_eq!(
            e.instance_id, a.instance_id,
            "1 each now: the earlier-ready one"
        );
        let g = v.route(f, 6).unwrap();
        assert_eq!(
            (g.instance_id, g.in_flight),
            (c.instance_id, 2),
            "not round robin: fills by load"
        );
    }

    #[test]
    fn idle_on_demand_instances_retire_after_keep_alive() {
        let (mut v, f) = view();
        let r = v.route(f, 0).unwrap();
        v.complete(r.invocation_id, 1_000).unwrap();
        assert!(v.retire_idle(60_000).is_empty());
        let gone = v.retire_idle(61_000);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].lifetime_ms, gone[0].busy_ms), (61_000, 1_000));
        assert_eq!(v.node_summaries()[1].free.cpu_millis, 2000);
    }

    /// Idle retirement takes only what its timers say is due; a function
    /// registered with a shorter keep-alive shortens its idle instances'
    /// at once; no timer outlives its instance.
    #[test]
    fn idle_timers_follow_keep_alive_changes_and_leave_with_their_instance() {
        let (mut v, _) = view();
        let f = v.register_function(spec("g", "img", 1)).unwrap();
        let a = v.route(f, 0).unwrap();
        let b = v.route(f, 0).unwrap();
        assert_ne!(a.instance_id, b.instance_id);
        v.complete(a.invocation_id, 1_000).unwrap();
        assert_eq!(v.idle_timers.len(), 1, "only the idle instance has a timer");
        let mut shorter = spec("g", "img", 1);
        shorter.keep_alive_s = 10;
        v.register_function(shorter).unwrap();
        assert!(v.retire_idle(10_999).is_empty());
        let gone = v.retire_idle(11_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].instance_id, a.instance_id);
        v.complete(b.invocation_id, 20_000).unwrap();
        assert_eq!(v.retire_idle(30_000).len(), 1);
        assert!(v.idle_timers.is_empty() && v.idle_timer_of.is_empty());
        assert!(v.instances.is_empty());
    }

    /// Images nobody refers to any more, and nodes lost long ago, are
    /// forgotten: what reports name once does not stay in memory.
    #[test]
    fn state_nobody_refreshes_is_forgotten() {
        let (mut v, f) = view();
        assert_eq!(v.images.len(), 1, "img: the function's and the warm node's");
        for n in 0..50 {
            let image = format!("passing-{n}");
            v.apply_report(&report("warm", 2000, &[(&image, 0.5)]), n)
                .unwrap();
        }
        assert_eq!(v.images.len(), 2, "img and the last one reported");
        v.set_image_warmth("cold", "briefly", 1.0);
        v.set_image_warmth("cold", "briefly", 0.7);
        assert_eq!(v.images.len(), 3);
        v.set_image_warmth("cold", "briefly", 0.0);
        assert_eq!(v.images.len(), 2);
        v.register_function(spec("f", "img-2", 2)).unwrap();
        assert!(
            v.images.get("img").is_none(),
            "no node or function refers to it"
        );
        // "cold" is lost after 15 s and forgotten after 10 timeouts; a new
        // node takes its slot and is placed on.
        v.apply_report(&report("warm", 2000, &[]), 200_000).unwrap();
        assert_eq!(v.expire_lost_nodes(20_000, 15_000, 60_000).len(), 1);
        assert_eq!(v.node_summaries().len(), 2, "lost, not yet forgotten");
        v.expire_lost_nodes(151_000, 15_000, 60_000);
        let names: Vec<String> = v.node_summaries().into_iter().map(|n| n.node_id).collect();
        assert_eq!(names, ["warm"]);
        v.apply_report(&report("new", 8000, &[("img-2", 1.0)]), 151_000)
            .unwrap();
        assert_eq!(v.nodes.len(), 2, "the forgotten slot is reused");
        assert_eq!(v.place(f, false, 151_000).unwrap().node_id, "new");
    }

    #[test]
    fn timed_out_invocations_retire_their_instance() {
        let (mut v, f) = view();
        let r = v.route(f, 0).unwrap();
        assert!(v.kill_timed_out(10_000).is_empty());
        let killed = v.kill_timed_out(10_001);
        assert_eq!(killed[0].instance_id, r.instance_id);
        assert_eq!(killed[0].reason, StopReason::Timeout);
        assert!(matches!(
            v.complete(r.invocation_id, 10_002),
            Err(SchedulerError::InvocationFailed {
                reason: StopReason::Timeout,
                ..
            })
        ));
        assert_eq!(v.function_summary(f).in_flight, 0);
    }

    /// The other invocations on an instance killed at a timeout fail with
    /// it, and their callers are told so, not that they never existed.
    #[test]
    fn invocations_on_a_killed_instance_are_reported_failed() {
        let (mut v, f) = view();
        let slow = v.route(f, 0).unwrap();
        let other = v.route(f, 5_000).unwrap();
        assert_eq!(other.instance_id, slow.instance_id);
        let killed = v.kill_timed_out(10_001);
        assert_eq!(killed.len(), 1);
        assert_eq!(
            killed[0].failed_invocations,
            [slow.invocation_id, other.invocation_id]
        );
        // Only the slow one ran past its deadline: its caller is owed the
        // timeout, the other's a failure.
        for (id, late) in [(slow.invocation_id, true), (other.invocation_id, false)] {
            let err = v.complete(id, 10_002).unwrap_err();
            assert!(
                matches!(err, SchedulerError::InvocationFailed { invocation, reason: StopReason::Timeout, overdue } if invocation == id && overdue == late),
                "{err}"
            );
        }
        assert!(matches!(
            v.complete(999, 10_003),
            Err(SchedulerError::UnknownInvocation(999))
        ));
    }

    #[test]
    fn lost_nodes_keep_their_instances_until_they_are_dead() {
        let (mut v, f) = view();
        let first = v.route(f, 0).unwrap();
        let warm_instance = first.instance_id;
        v.apply_report(&report("cold", 8000, &[]), 5_000).unwrap();
        let lost = v.expire_lost_nodes(6_000, 5_000, 20_000);
        assert_eq!(lost.len(), 1);
        let l = &lost[0];
        assert_eq!(
            (
                l.node_id.as_str(),
                l.instances.clone(),
                l.invocations,
                l.dead
            ),
            ("warm", vec![warm_instance], 1, false)
        );
        // Nothing new goes to the lost node, not even to its free slots.
        assert_eq!(v.place(f, false, 6_000).unwrap().node_id, "cold");
        let routed = v.route(f, 6_000).unwrap();
        assert_ne!(routed.instance_id, warm_instance);
        // Back before it is dead: its instance and invocation are there.
        v.apply_report(&report("warm", 8000, &[]), 7_000).unwrap();
        assert!(v.complete(first.invocation_id, 7_001).is_ok());
        let again = v.route(f, 7_002).unwrap();
        assert_eq!(again.instance_id, warm_instance, "routable again");
        // Silent past the dead timeout: lost and dead at once, instance gone.
        v.apply_report(&report("cold", 8000, &[]), 27_000).unwrap();
        let gone = v.expire_lost_nodes(27_002, 5_000, 20_000);
        let summary: Vec<(&str, bool)> =
            gone.iter().map(|l| (l.node_id.as_str(), l.dead)).collect();
        assert_eq!(summary, [("warm", false), ("warm", true)]);
        assert!(v.instance_home(warm_instance).is_none());
        assert!(matches!(
            v.complete(again.invocation_id, 27_003),
            Err(SchedulerError::InvocationFailed {
                reason: StopReason::NodeLost,
                ..
            })
        ));
    }

    #[test]
    fn average_in_flight_integrates_over_time() {
        let (mut v, f) = view();
        v.take_average_in_flight(f.0, 1_000);
        let r = v.route(f, 1_000).unwrap();
        v.complete(r.invocation_id, 3_000).unwrap();
        let avg = v.take_average_in_flight(f.0, 5_000);
        assert!((avg - 0.5).abs() < 1e-9, "2 s busy out of 4 s, got {avg}");
    }
}
