//! Runs a set of policies (the keep-alive baseline over a list of
//! keep-alives) with and without cache-aware placement, and sets each
//! row's wasted memory against the 10-minute keep-alive's: the axes of
//! the literature's Pareto comparison.

use super::costs::StartCosts;
use super::engine::{simulate, ClusterParams, SimRow};
use super::sizing::PolicyKind;
use super::trace::Trace;
use crate::scheduler::error::FieldError;
use serde::Serialize;
use std::time::Instant;

/// The keep-alives the baseline is swept over by default, minutes.
pub const DEFAULT_KEEP_ALIVE_SWEEP_MIN: [u64; 7] = [5, 10, 20, 30, 60, 120, 240];
/// The reference keep-alive (the big platforms' 10 minutes), s.
pub const REFERENCE_KEEP_ALIVE_S: u64 = 600;

/// What to run.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// Policies to run.
    pub policies: Vec<PolicyKind>,
    /// Keep-alives (s) to run the keep-alive baseline with, and the
    /// histogram policy (as its fallback); empty, and for other policies,
    /// `params.keep_alive_s`. The baseline also runs at the reference
    /// keep-alive, so rows can be set against it.
    pub keep_alives_s: Vec<u64>,
}

/// One row of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    /// The simulation's result.
    #[serde(flatten)]
    pub row: SimRow,
    /// Idle GB-seconds against the 10-minute keep-alive's with the same
    /// placement (None when the baseline was not run).
    pub wasted_vs_keep_alive_10min: Option<f64>,
}

/// Runs the plan over `trace`, measured from `measure_from_ms` on (see
/// [`simulate`]).
pub fn sweep(
    trace: &Trace,
    measure_from_ms: u64,
    costs: &StartCosts,
    params: &ClusterParams,
    plan: &SweepPlan,
) -> Result<Vec<SweepRow>, FieldError> {
    let mut rows = Vec::new();
    for &policy in &plan.policies {
        let mut keep_alives = if policy.is_keep_alive_swept() && !plan.keep_alives_s.is_empty() {
            plan.keep_alives_s.clone()
        } else {
            vec![params.keep_alive_s]
        };
        if policy == PolicyKind::KeepAlive {
            keep_alives.push(REFERENCE_KEEP_ALIVE_S);
        }
        keep_alives.sort_unstable();
        keep_alives.dedup();
        for keep_alive_s in keep_alives {
            let params = ClusterParams {
                keep_alive_s,
                ..params.clone()
            };
            for cache_aware in [true, false] {
                let clock = Instant::now();
                let row = simulate(trace, measure_from_ms, costs, &params, policy, cache_aware)?;
                tracing::info!(
                    ?policy,
                    keep_alive_s,
                    cache_aware,
                    seconds = clock.elapsed().as_secs_f64(),
                    "simulated"
                );
                rows.push(row);
            }
        }
    }
    let reference = |cache_aware: bool| {
        rows.iter()
            .find(|r| {
                r.policy == PolicyKind::KeepAlive
                    && r.keep_alive_s == REFERENCE_KEEP_ALIVE_S
                    && r.cache_aware == cache_aware
            })
            .map(|r| r.idle_gb_seconds)
    };
    let (aware, blind) = (reference(true), reference(false));
    Ok(rows
        .iter()
        .map(|row| {
            let base = if row.cache_aware { aware } else { blind };
            SweepRow {
                wasted_vs_keep_alive_10min: base
                    .filter(|&b| b > 0.0)
                    .map(|b| row.idle_gb_seconds / b),
                row: row.clone(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::costs::ColdMode;
    use crate::sim::generate::{generate, GeneratorParams};

    #[test]
    fn rows_are_set_against_the_ten_minute_keep_alive() {
        let trace = generate(GeneratorParams {
            seed: 5,
            invocations: 20_000,
            functions: 30,
            hours: 48,
        })
        .unwrap();
        let day = 24 * 3_600_000;
        let measured = trace
            .invocations
            .iter()
            .filter(|i| i.timestamp_ms >= day)
            .count() as u64;
        let params = ClusterParams {
            nodes: 10,
            cache_images: 4,
            ..ClusterParams::default()
        };
        let plan = SweepPlan {
            policies: vec![PolicyKind::KeepAlive, PolicyKind::Histogram],
            keep_alives_s: vec![300, 3600],
        };
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let rows = sweep(&trace, day, &costs, &params, &plan).unwrap();
        // 300, 600 (the reference, added) and 3600 s for the baseline; 300
        // and 3600 s for the histogram policy (its fallback and extra
        // instances' keep-alive); each with and without cache-aware
        // placement.
        assert_eq!(rows.len(), 10);
        let find = |keep_alive_s, cache_aware| {
            rows.iter()
                .find(|r| {
                    r.row.policy == PolicyKind::KeepAlive
                        && r.row.keep_alive_s == keep_alive_s
                        && r.row.cache_aware == cache_aware
                })
                .unwrap()
        };
        for cache_aware in [true, false] {
            let (short, long) = (find(300, cache_aware), find(3600, cache_aware));
            let reference = find(600, cache_aware).row.idle_gb_seconds;
            let ratio = long.wasted_vs_keep_alive_10min.unwrap();
            assert!((ratio - long.row.idle_gb_seconds / reference).abs() < 1e-9);
            assert!(ratio > 1.0, "{long:?}");
            assert!(short.wasted_vs_keep_alive_10min.unwrap() < 1.0, "{short:?}");
        }
        assert!(rows.iter().all(|r| r.wasted_vs_keep_alive_10min.is_some()));
        assert!(rows.iter().all(|r| r.row.invocations == measured));
    }
}
