//! Sizing each function's reservation policy from the trace, the way an
//! operator would from last week's history: every policy kind is sized from
//! the same per-function load profile at the same target utilisation, so the
//! simulator compares the policies' shapes, not how generously each was set.

use super::trace::Trace;
use crate::scheduler::policy::{
    HistogramConfig, PolicyConfig, ScheduledConfig, UtilisationConfig, WindowConfig,
};
use serde::Serialize;

/// Utilisation reserved instances are sized for.
pub const TARGET_UTILISATION: f64 = 0.7;
/// Hours per scheduled window (six windows a day).
pub const BLOCK_HOURS: u64 = 4;
/// Upper bound of utilisation-driven reservations.
pub const UTILISATION_MAX: u32 = 500;
/// Stabilisation window before utilisation-driven reservations shrink.
pub const SCALE_DOWN_DELAY_S: u64 = 300;

const DAY_MS: u64 = 86_400_000;
const BLOCK_MS: u64 = BLOCK_HOURS * 3_600_000;
const BLOCKS: usize = (DAY_MS / BLOCK_MS) as usize;

/// The reservation policy kinds the simulator compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// N instances all day, N from the daily average load.
    Fixed,
    /// Six 4-hour windows, each sized from that time of day's average load.
    Scheduled,
    /// Follows load at the target utilisation.
    Utilisation,
    /// The scheduled windows, with utilisation on top for load they did
    /// not plan for (bursts).
    Hybrid,
    /// The baseline: no reservation at all; an instance started on demand
    /// is kept alive for the keep-alive after its last invocation (the big
    /// platforms' 10-minute rule).
    #[serde(rename = "keep-alive")]
    KeepAlive,
    /// The hybrid histogram policy of "Serverless in the Wild": per
    /// function, unload, pre-warm and keep alive by the idle times it
    /// learned online.
    Histogram,
}

impl PolicyKind {
    /// The name as typed on the command line and written in JSON.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Fixed => "fixed",
            PolicyKind::Scheduled => "scheduled",
            PolicyKind::Utilisation => "utilisation",
            PolicyKind::Hybrid => "hybrid",
            PolicyKind::KeepAlive => "keep-alive",
            PolicyKind::Histogram => "histogram",
        }
    }

    /// Whether a sweep runs the policy once per keep-alive: the baseline,
    /// and the histogram policy, whose fallback is a keep-alive.
    pub fn is_keep_alive_swept(self) -> bool {
        matches!(self, PolicyKind::KeepAlive | PolicyKind::Histogram)
    }
}

/// Average concurrency of one function, over the day and per time-of-day
/// block (the trace starts at midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProfile {
    /// Busy time / trace length.
    pub average: f64,
    /// The same per block of the day.
    pub per_block: [f64; BLOCKS],
}

/// Computes every function's load profile in one pass over the trace's
/// invocations before `until_ms` (all of them with None).
pub fn load_profiles(trace: &Trace, until_ms: Option<u64>) -> Vec<LoadProfile> {
    let cut = until_ms.map_or(trace.invocations.len(), |ms| {
        trace.invocations.partition_point(|i| i.timestamp_ms < ms)
    });
    let invocations = &trace.invocations[..cut];
    let span = invocations.last().map_or(0, |i| i.timestamp_ms).max(1);
    let days = span.div_ceil(DAY_MS) as f64;
    let mut busy = vec![(0.0f64, [0.0f64; BLOCKS]); trace.functions.len()];
    for inv in invocations {
        let block = ((inv.timestamp_ms % DAY_MS) / BLOCK_MS) as usize;
        let entry = &mut busy[inv.function as usize];
        entry.0 += f64::from(inv.duration_ms);
        entry.1[block] += f64::from(inv.duration_ms);
    }
    busy.into_iter()
        .map(|(total, blocks)| LoadProfile {
            average: total / span as f64,
            per_block: blocks.map(|b| b / (BLOCK_MS as f64 * days)),
        })
        .collect()
}

fn instances_for(load: f64, concurrency: u32) -> f64 {
    load / (f64::from(concurrency) * TARGET_UTILISATION)
}

fn schedule(profile: &LoadProfile, concurrency: u32, round: fn(f64) -> f64) -> ScheduledConfig {
    ScheduledConfig {
        timezone: "UTC".into(),
        baseline: 0,
        windows: profile
            .per_block
            .iter()
            .enumerate()
            .map(|(b, &load)| WindowConfig {
                cron: format!("0 {} * * *", b as u64 * BLOCK_HOURS),
                duration_minutes: (BLOCK_HOURS * 60) as u32,
                instances: round(instances_for(load, concurrency)) as u32,
            })
            .collect(),
    }
}

fn utilisation() -> UtilisationConfig {
    UtilisationConfig {
        target: TARGET_UTILISATION,
        min: 0,
        max: UTILISATION_MAX,
        scale_down_delay_s: SCALE_DOWN_DELAY_S,
    }
}

/// The policy of `kind` for a function with `profile` (None: no
/// reservation, the keep-alive baseline). The histogram policy needs no
/// sizing: it learns idle times online, so the history replayed before
/// the measured part teaches it; `keep_alive_s` is its fallback.
pub fn policy_for(
    kind: PolicyKind,
    profile: &LoadProfile,
    concurrency: u32,
    keep_alive_s: u64,
) -> Option<PolicyConfig> {
    Some(match kind {
        PolicyKind::KeepAlive => return None,
        PolicyKind::Histogram => PolicyConfig::Histogram(HistogramConfig {
            fallback_keep_alive_s: keep_alive_s,
            ..HistogramConfig::default()
        }),
        PolicyKind::Fixed => PolicyConfig::Fixed {
            instances: instances_for(profile.average, concurrency).ceil() as u32,
        },
        PolicyKind::Scheduled => PolicyConfig::Scheduled(schedule(profile, concurrency, f64::ceil)),
        PolicyKind::Utilisation => PolicyConfig::Utilisation(utilisation()),
        PolicyKind::Hybrid => PolicyConfig::Hybrid {
            scheduled: schedule(profile, concurrency, f64::ceil),
            utilisation: utilisation(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::trace::{Invocation, TraceFunction};

    #[test]
    fn profiles_split_busy_time_by_time_of_day() {
        let trace = Trace {
            functions: vec![TraceFunction {
                name: "f".into(),
                image: "i".into(),
            }],
            invocations: vec![
                Invocation {
                    timestamp_ms: 0,
                    function: 0,
                    duration_ms: 1_440_000,
                },
                Invocation {
                    timestamp_ms: DAY_MS - 1,
                    function: 0,
                    duration_ms: 0,
                },
            ],
        };
        let p = &load_profiles(&trace, None)[0];
        assert!((p.average - 1_440_000.0 / (DAY_MS - 1) as f64).abs() < 1e-9);
        assert!((p.per_block[0] - 0.1).abs() < 1e-9, "{:?}", p.per_block);
        assert_eq!(p.per_block[1], 0.0);
        let Some(PolicyConfig::Scheduled(s)) = policy_for(PolicyKind::Scheduled, p, 1, 600) else {
            panic!()
        };
        assert_eq!(s.windows[0].instances, 1);
        assert_eq!(s.windows[0].cron, "0 0 * * *");
        assert!(policy_for(PolicyKind::Hybrid, p, 1, 600)
            .unwrap()
            .compile()
            .is_ok());
        assert!(policy_for(PolicyKind::KeepAlive, p, 1, 600).is_none());
    }
}
