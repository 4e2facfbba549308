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
    /// histogram policy (as its fallback); other policies run with
    /// `params.keep_alive_s`. The reference keep-alive is added
    /// when the baseline runs, so rows can be set against it.
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
        let mut keep_alives = if policy.is_keep_alive_swept() {
            let mut k = plan.keep_alives_s.clone();
            k.push(REFERENCE_KEEP_ALIVE_S);
            k.sort_unstable();
            k.dedup();
            k
        } else {
            vec![params.keep_alive_s]
        };
        if keep_alives.is_empty() {
            keep_alives.push(params.keep_alive_s);
        }
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
        let measured = trace.split_at(day).1.invocations.len() as u64;
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
        // 300, 600 (added), 3600 s for the baseline and for the histogram
        // policy (its fallback and extra instances' keep-alive); each with
        // and without cache-aware placement.
        assert_eq!(rows.len(), 12);
        for r in &rows {
            let ratio = r.wasted_vs_keep_alive_10min.unwrap();
            if r.row.policy == PolicyKind::KeepAlive && r.row.keep_alive_s == 600 {
                assert_eq!(ratio, 1.0);
            }
            if r.row.policy == PolicyKind::KeepAlive && r.row.keep_alive_s == 3600 {
                assert!(ratio > 1.0, "{r:?}");
            }
        }
        assert!(rows.iter().all(|r| r.row.invocations == measured));
    }
}
