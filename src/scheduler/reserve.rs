//! Applying reservation policies to the cluster view: each pass asks every
//! function's policy how many instances to keep ready and makes the view
//! match, reusing warm on-demand instances before placing new ones.

use super::cluster::{ClusterView, InstanceId, Placement, RetiredInstance};
use super::policy::Demand;
use super::report::StopReason;

/// What one reconciliation pass changed.
#[derive(Debug, Default)]
pub struct ReservationChanges {
    /// Instances placed to fill reservations; their nodes must start them.
    pub started: Vec<Placement>,
    /// Idle reserved instances retired because their reservation shrank.
    pub stopped: Vec<RetiredInstance>,
    /// Functions whose reservation could not be filled, with how many
    /// instances are missing (no node had the capacity).
    pub shortfalls: Vec<(String, u32)>,
}

impl ClusterView {
    /// Evaluates every function's policy at `now_ms` and adjusts reserved
    /// instances: on-demand instances are promoted first (they are warm),
    /// then new ones are placed; on shrinking, idle reserved instances are
    /// retired (longest idle first) and busy ones demoted to on-demand, so
    /// their keep-alive retires them once idle.
    pub fn reconcile_reservations(&mut self, now_ms: u64) -> ReservationChanges {
        let mut changes = ReservationChanges::default();
        for fi in 0..self.functions.len() {
            if self.functions[fi].policy.is_none() {
                continue;
            }
            let avg_in_flight = self.take_average_in_flight(fi, now_ms);
            let f = &mut self.functions[fi];
            let demand = Demand {
                avg_in_flight,
                concurrency: f.spec.concurrency,
            };
            let target = f
                .policy
                .as_mut()
                .map_or(0, |p| p.instances_at(now_ms, demand)) as usize;
            let (mut reserved, mut on_demand): (Vec<InstanceId>, Vec<InstanceId>) = f
                .instances
                .iter()
                .partition(|id| self.instances[id].reserved);
            if reserved.len() < target {
                on_demand.sort_by_key(|id| self.instances[id].in_flight);
                for id in on_demand.into_iter().take(target - reserved.len()) {
                    self.instances
                        .get_mut(&id)
                        .expect("listed instance")
                        .reserved = true;
                    self.retime(id);
                    reserved.push(id);
                }
                let fid = self
                    .function_id(&self.functions[fi].spec.name)
                    .expect("registered");
                while reserved.len() < target {
                    match self.place(fid, true, now_ms) {
                        Ok(p) => {
                            reserved.push(p.instance_id);
                            changes.started.push(p);
                        }
                        Err(err) => {
                            let missing = (target - reserved.len()) as u32;
                            tracing::warn!(function = %self.functions[fi].spec.name, missing, %err, "reservation not filled");
                            changes
                                .shortfalls
                                .push((self.functions[fi].spec.name.clone(), missing));
                            break;
                        }
                    }
                }
            } else if reserved.len() > target {
                // Keep busy instances, then the most recently used ones.
                reserved.sort_by_key(|id| {
                    let i = &self.instances[id];
                    (i.in_flight == 0, std::cmp::Reverse(i.idle_since_ms))
                });
                for id in reserved.into_iter().skip(target) {
                    if self.instances[&id].in_flight > 0 {
                        self.instances
                            .get_mut(&id)
                            .expect("listed instance")
                            .reserved = false;
                        self.retime(id);
                    } else if let Some(r) = self.retire(id, StopReason::Retired, now_ms) {
                        changes.stopped.push(r);
                    }
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::cluster::ClusterView;
    use crate::scheduler::function::FunctionSpec;
    use crate::scheduler::policy::{HistogramConfig, PolicyConfig, UtilisationConfig};
    use crate::scheduler::report::{NodeReport, Resources};
    use crate::scheduler::scoring::ScoringWeights;

    fn view(policy: PolicyConfig) -> (ClusterView, crate::scheduler::cluster::FunctionId) {
        let mut v = ClusterView::new(ScoringWeights::default());
        let node = NodeReport {
            node_id: "n".into(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mib: 4096,
            },
            used: Resources::default(),
            instances: vec![],
            images: vec![],
            running: Vec::new(),
            starts_instances: false,
        };
        v.apply_report(&node, 0).unwrap();
        let f = v
            .register_function(FunctionSpec {
                name: "f".into(),
                image: "i".into(),
                cpu_millis: 1000,
                memory_mib: 512,
                concurrency: 1,
                timeout_s: 60,
                keep_alive_s: 60,
                policy: Some(policy),
                command: None,
                start_timeout_s: 120,
            })
            .unwrap();
        (v, f)
    }

    #[test]
    fn fixed_reservation_fills_up_and_reports_shortfall() {
        let (mut v, f) = view(PolicyConfig::Fixed { instances: 6 });
        let changes = v.reconcile_reservations(1_000);
        assert_eq!(
            changes.started.len(),
            4,
            "the node holds four 1-CPU instances"
        );
        assert_eq!(changes.shortfalls, vec![("f".to_string(), 2)]);
        assert_eq!(v.function_summary(f).reserved_instances, 4);
        assert!(v.reconcile_reservations(2_000).started.is_empty());
    }

    #[test]
    fn on_demand_instances_are_promoted_before_placing() {
        let (mut v, f) = view(PolicyConfig::Fixed { instances: 1 });
        let routed = v.route(f, 0).unwrap();
        let changes = v.reconcile_reservations(1_000);
        assert!(changes.started.is_empty());
        let s = v.function_summary(f);
        assert_eq!((s.reserved_instances, s.on_demand_instances), (1, 0));
        v.complete(routed.invocation_id, 2_000).unwrap();
        assert!(
            v.retire_idle(1_000_000).is_empty(),
            "reserved instances do not expire"
        );
    }

    #[test]
    fn utilisation_shrinks_idle_instances_first_and_demotes_busy_ones() {
        let policy = PolicyConfig::Utilisation(UtilisationConfig {
            target: 1.0,
            min: 0,
            max: 4,
            scale_down_delay_s: 0,
        });
        let (mut v, f) = view(policy);
        let a = v.route(f, 0).unwrap();
        let b = v.route(f, 0).unwrap();
        let c = v.route(f, 0).unwrap();
        let changes = v.reconcile_reservations(1_000);
        assert!(
            changes.started.is_empty(),
            "3 in flight: the 3 on-demand ones are promoted"
        );
        assert_eq!(v.function_summary(f).reserved_instances, 3);
        v.complete(a.invocation_id, 1_000).unwrap();
        v.complete(b.invocation_id, 1_000).unwrap();
        let changes = v.reconcile_reservations(2_000);
        assert_eq!(changes.stopped.len(), 2, "1 in flight needs 1 instance");
        assert_eq!(v.function_summary(f).reserved_instances, 1);
        v.complete(c.invocation_id, 2_000).unwrap();
        let changes = v.reconcile_reservations(3_000);
        assert_eq!(changes.stopped.len(), 1);
        assert_eq!(v.function_summary(f).reserved_instances, 0);
    }

    /// A function idle for half an hour between invocations, as its
    /// history says: its instance goes as soon as it is idle, a new one is
    /// ready before the next invocation, which starts warm, and that one
    /// goes once the window has passed.
    #[test]
    fn histogram_unloads_at_once_and_prewarms_before_the_next_invocation() {
        let mut history = vec![0u32; 241];
        history[30] = 20;
        let (mut v, f) = view(PolicyConfig::Histogram(HistogramConfig {
            history,
            ..HistogramConfig::default()
        }));
        let min = 60_000;
        let first = v.route(f, 0).unwrap();
        assert!(first.cold_start.is_some());
        v.complete(first.invocation_id, 1_000).unwrap();
        assert_eq!(v.retire_idle(1_000).len(), 1, "unloaded when idle");
        assert!(v.reconcile_reservations(26 * min).started.is_empty());
        let prewarm = v.reconcile_reservations(28 * min);
        assert_eq!(prewarm.started.len(), 1, "pre-warmed in the window");
        let next = v.route(f, 30 * min).unwrap();
        assert!(next.cold_start.is_none(), "the next invocation starts warm");
        assert_eq!(next.instance_id, prewarm.started[0].instance_id);
        v.complete(next.invocation_id, 30 * min + 1_000).unwrap();
        // Idle again: the pre-warmed instance goes, the next one is planned.
        assert_eq!(v.reconcile_reservations(31 * min).stopped.len(), 1);
        let s = v.function_summary(f);
        assert_eq!((s.reserved_instances, s.on_demand_instances), (0, 0));
        assert_eq!(v.reconcile_reservations(58 * min).started.len(), 1);
    }
}
