//! The life of the instances node agents start, as the service sees it:
//! placed and starting (with a deadline), ready at an endpoint, or gone;
//! what each node last said it runs; and how long starts took, from the
//! scheduler's decision to the agent's word that the instance is ready.
//!
//! The cluster view decides; this records what the nodes did about it, so
//! invocations can wait for a starting instance and be sent to a ready one.

use super::cluster::InstanceId;
use super::report::StartOrder;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::Notify;

/// How many start latencies are kept for the percentiles (the most recent).
const LATENCIES_KEPT: usize = 10_000;

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stage {
    /// Placed, its node not yet saying it is ready.
    Starting,
    /// Ready at this endpoint (`http://HOST:PORT`).
    Ready(String),
    /// Stopped, failed or never known.
    Gone,
}

struct Starting {
    placed_ms: u64,
    deadline_ms: u64,
    node: String,
    /// Sent again while the node does not report the instance: an order
    /// taken by a poll whose agent died is not lost.
    order: StartOrder,
}

/// Start latencies and outcomes, for `GET /v1/cluster`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StartStats {
    /// Instances whose node said they were ready.
    pub ready: u64,
    /// Instances that were not ready within their start timeout.
    pub failed: u64,
    /// Median time from placement to ready, over the last starts.
    pub p50_ms: Option<u64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<u64>,
}

/// The instances of agent-run nodes, by id.
#[derive(Default)]
pub(super) struct Lifecycle {
    starting: HashMap<InstanceId, Starting>,
    /// The starting instances of each node, so a report looks only at its
    /// own node's.
    starting_on: HashMap<String, HashSet<InstanceId>>,
    ready: HashMap<InstanceId, String>,
    /// Rung when an instance becomes ready or goes: invocations waiting
    /// for it or running on it look again.
    bells: HashMap<InstanceId, Arc<Notify>>,
    /// What each node said it runs in its last report.
    reported: HashMap<String, HashSet<InstanceId>>,
    latencies: VecDeque<u64>,
    stats: StartStats,
}

impl Lifecycle {
    /// An instance was ordered started on `node`, whose agent reports it.
    pub(super) fn placed(&mut self, node: &str, order: StartOrder, now_ms: u64) {
        let deadline_ms = now_ms.saturating_add(order.start_timeout_s.saturating_mul(1000));
        self.starting_on
            .entry(node.to_string())
            .or_default()
            .insert(order.instance_id);
        self.starting.insert(
            order.instance_id,
            Starting {
                placed_ms: now_ms,
                deadline_ms,
                node: node.to_string(),
                order,
            },
        );
    }

    /// The start orders of `node`'s instances that are starting and not
    /// among `reported` (the instances the node says it runs).
    pub(super) fn unreported_starts(
        &self,
        node: &str,
        reported: &HashSet<InstanceId>,
    ) -> Vec<StartOrder> {
        let mut orders: Vec<StartOrder> = self
            .starting_on
            .get(node)
            .into_iter()
            .flatten()
            .filter(|id| !reported.contains(id))
            .filter_map(|id| self.starting.get(id))
            .map(|s| s.order.clone())
            .collect();
        orders.sort_by_key(|o| o.instance_id);
        orders
    }

    /// The node said the instance is ready at `endpoint`. Returns the
    /// decision-to-ready time the first time, None after.
    pub(super) fn ready(&mut self, id: InstanceId, endpoint: &str, now_ms: u64) -> Option<u64> {
        let started = self.unstart(id)?;
        self.ready.insert(id, endpoint.to_string());
        let took = now_ms.saturating_sub(started.placed_ms);
        if self.latencies.len() == LATENCIES_KEPT {
            self.latencies.pop_front();
        }
        self.latencies.push_back(took);
        self.stats.ready += 1;
        self.ring(id);
        Some(took)
    }

    /// The instance left the view (stopped, failed, its node lost).
    pub(super) fn gone(&mut self, id: InstanceId) {
        self.unstart(id);
        self.ready.remove(&id);
        self.ring(id);
        self.bells.remove(&id);
    }

    /// Takes an instance out of the starting ones (and its node's).
    fn unstart(&mut self, id: InstanceId) -> Option<Starting> {
        let started = self.starting.remove(&id)?;
        if let Some(on_node) = self.starting_on.get_mut(&started.node) {
            on_node.remove(&id);
            if on_node.is_empty() {
                self.starting_on.remove(&started.node);
            }
        }
        Some(started)
    }

    fn ring(&self, id: InstanceId) {
        if let Some(bell) = self.bells.get(&id) {
            bell.notify_waiters();
        }
    }

    /// Where the instance is (an instance on a node without an agent is
    /// never starting nor ready here: the view alone knows it).
    pub(super) fn stage(&self, id: InstanceId) -> Stage {
        if let Some(endpoint) = self.ready.get(&id) {
            return Stage::Ready(endpoint.clone());
        }
        if self.starting.contains_key(&id) {
            return Stage::Starting;
        }
        Stage::Gone
    }

    /// The bell that rings when the instance becomes ready or goes. Only
    /// for instances that are starting or ready, so bells do not pile up.
    pub(super) fn bell(&mut self, id: InstanceId) -> Option<Arc<Notify>> {
        if !self.starting.contains_key(&id) && !self.ready.contains_key(&id) {
            return None;
        }
        Some(self.bells.entry(id).or_default().clone())
    }

    /// Instances past their start deadline, counted as failed starts.
    pub(super) fn take_expired_starts(&mut self, now_ms: u64) -> Vec<InstanceId> {
        let mut late: Vec<InstanceId> = self
            .starting
            .iter()
            .filter(|(_, s)| s.deadline_ms <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        late.sort_unstable();
        for &id in &late {
            self.unstart(id);
        }
        self.stats.failed += late.len() as u64;
        late
    }

    /// Records what `node` runs now; returns what it ran at its previous
    /// report and no longer does.
    pub(super) fn node_runs(&mut self, node: &str, now: HashSet<InstanceId>) -> Vec<InstanceId> {
        let before = self
            .reported
            .insert(node.to_string(), now)
            .unwrap_or_default();
        let now = &self.reported[node];
        let mut left: Vec<InstanceId> = before.difference(now).copied().collect();
        left.sort_unstable();
        left
    }

    /// Forgets a node's reports (it was lost).
    pub(super) fn forget_node(&mut self, node: &str) {
        self.reported.remove(node);
    }

    /// Start counts and latency percentiles.
    pub(super) fn stats(&self) -> StartStats {
        let mut sorted: Vec<u64> = self.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let pick = |q: f64| {
            (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
        };
        StartStats {
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: InstanceId, start_timeout_s: u64) -> StartOrder {
        StartOrder {
            instance_id: id,
            function: "f".into(),
            image: "i".into(),
            resources: Default::default(),
            command: Vec::new(),
            start_timeout_s,
        }
    }

    #[test]
    fn an_instance_goes_from_starting_to_ready_to_gone() {
        let mut l = Lifecycle::default();
        l.placed("n", order(1, 5), 1_000);
        let unreported = l.unreported_starts("n", &HashSet::new());
        assert_eq!(unreported.len(), 1, "sent again until the node reports it");
        assert!(l.unreported_starts("n", &HashSet::from([1])).is_empty());
        assert!(l.unreported_starts("other", &HashSet::new()).is_empty());
        assert_eq!(l.stage(1), Stage::Starting);
        let bell = l.bell(1).expect("a starting instance has a bell");
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        assert_eq!(l.ready(1, "http://127.0.0.1:9000", 1_250), Some(250));
        assert_eq!(
            l.ready(1, "http://127.0.0.1:9000", 1_300),
            None,
            "counted once"
        );
        assert!(futures_ready(rung), "waiters are woken when it is ready");
        assert_eq!(l.stage(1), Stage::Ready("http://127.0.0.1:9000".into()));
        l.gone(1);
        assert!(
            l.starting_on.is_empty(),
            "nodes with nothing starting are dropped"
        );
        assert_eq!(l.stage(1), Stage::Gone);
        assert!(l.bell(1).is_none(), "no bell for what is gone");
        let stats = l.stats();
        assert_eq!(
            (stats.ready, stats.p50_ms, stats.p99_ms),
            (1, Some(250), Some(250))
        );
    }

    #[test]
    fn starts_past_their_deadline_fail_once() {
        let mut l = Lifecycle::default();
        l.placed("n", order(1, 1), 0);
        l.placed("n", order(2, 10), 0);
        assert!(l.take_expired_starts(999).is_empty());
        assert_eq!(l.take_expired_starts(1_000), vec![1]);
        assert!(l.take_expired_starts(5_000).is_empty());
        assert_eq!(l.stats().failed, 1);
        assert_eq!(l.stage(2), Stage::Starting);
    }

    #[test]
    fn a_node_report_says_what_stopped_running() {
        let mut l = Lifecycle::default();
        assert!(l.node_runs("n", HashSet::from([1, 2, 3])).is_empty());
        assert_eq!(l.node_runs("n", HashSet::from([2, 4])), vec![1, 3]);
        l.forget_node("n");
        assert!(l.node_runs("n", HashSet::new()).is_empty());
    }

    fn futures_ready(f: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        std::future::Future::poll(f, &mut cx).is_ready()
    }
}
