//! Reservation policies: how many instances of a function are kept ready,
//! so invocations find a warm instance instead of paying a cold start.
//!
//! Four kinds after Alibaba Function Compute's reserved instances:
//! *fixed* (N always), *scheduled* (cron windows in a time zone),
//! *utilisation* (follow load at a target utilisation) and *hybrid* (the
//! larger of a scheduled and a utilisation policy); and *histogram*, the
//! hybrid histogram policy of "Serverless in the Wild", which learns each
//! function's idle times to unload, pre-warm and keep alive. Policies are plain
//! configuration ([`PolicyConfig`], TOML or JSON) compiled into a
//! [`ReservationPolicy`] that also holds the state evaluation needs.

mod histogram;
mod schedule;
mod utilisation;

pub use histogram::{HistogramConfig, IdleHistogram, IdlePlan, IdleRule};
pub use schedule::{Schedule, ScheduledConfig, WindowConfig};
pub use utilisation::{UtilisationConfig, UtilisationScaler};

use super::error::FieldError;
use serde::{Deserialize, Serialize};

/// Most instances any policy may reserve for one function; a guard against
/// typos (a reservation of 1e6 instances would drain any cluster).
pub const MAX_RESERVED_INSTANCES: u32 = 10_000;

/// A reservation policy as configured, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Always keep `instances` ready.
    Fixed {
        /// Instances kept ready.
        instances: u32,
    },
    /// Keep what the open cron windows ask for.
    Scheduled(ScheduledConfig),
    /// Follow load at a target utilisation.
    Utilisation(UtilisationConfig),
    /// The larger of a schedule and a utilisation policy: planned peaks are
    /// ready before they come, unplanned ones are followed.
    Hybrid {
        /// The planned part.
        scheduled: ScheduledConfig,
        /// The reactive part.
        utilisation: UtilisationConfig,
    },
    /// Learn idle times; unload, pre-warm and keep alive by them.
    Histogram(HistogramConfig),
}

/// What a policy needs to know about the function's recent load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Average in-flight invocations since the previous evaluation.
    pub avg_in_flight: f64,
    /// Invocations one instance takes at once.
    pub concurrency: u32,
}

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone)]
pub enum ReservationPolicy {
    /// See [`PolicyConfig::Fixed`].
    Fixed(u32),
    /// See [`PolicyConfig::Scheduled`].
    Scheduled(Schedule),
    /// See [`PolicyConfig::Utilisation`].
    Utilisation(UtilisationScaler),
    /// See [`PolicyConfig::Hybrid`].
    Hybrid(Schedule, UtilisationScaler),
    /// See [`PolicyConfig::Histogram`].
    Histogram(IdleHistogram),
}

impl PolicyConfig {
    /// The policy's kind as configured (`fixed`, `scheduled`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyConfig::Fixed { .. } => "fixed",
            PolicyConfig::Scheduled(_) => "scheduled",
            PolicyConfig::Utilisation(_) => "utilisation",
            PolicyConfig::Hybrid { .. } => "hybrid",
            PolicyConfig::Histogram(_) => "histogram",
        }
    }

    /// Validates the policy; errors name the field relative to the policy.
    pub fn compile(&self) -> Result<ReservationPolicy, FieldError> {
        let max = MAX_RESERVED_INSTANCES;
        Ok(match self {
            PolicyConfig::Fixed { instances } => {
                if *instances > max {
                    return Err(FieldError::new(
                        "instances",
                        format!("{instances} exceeds the limit of {max}"),
                    ));
                }
                ReservationPolicy::Fixed(*instances)
            }
            PolicyConfig::Scheduled(c) => ReservationPolicy::Scheduled(c.compile(max)?),
            PolicyConfig::Utilisation(c) => ReservationPolicy::Utilisation(c.compile(max)?),
            PolicyConfig::Hybrid {
                scheduled,
                utilisation,
            } => ReservationPolicy::Hybrid(
                scheduled.compile(max).map_err(|e| e.within("scheduled"))?,
                utilisation
                    .compile(max)
                    .map_err(|e| e.within("utilisation"))?,
            ),
            PolicyConfig::Histogram(c) => ReservationPolicy::Histogram(c.compile()?),
        })
    }
}

impl ReservationPolicy {
    /// Instances to keep ready at `now_ms` (Unix milliseconds).
    pub fn instances_at(&mut self, now_ms: u64, demand: Demand) -> u32 {
        match self {
            ReservationPolicy::Fixed(n) => *n,
            ReservationPolicy::Scheduled(s) => s.instances_at(now_ms),
            ReservationPolicy::Utilisation(u) => {
                u.instances_at(now_ms, demand.avg_in_flight, demand.concurrency)
            }
            ReservationPolicy::Hybrid(s, u) => s.instances_at(now_ms).max(u.instances_at(
                now_ms,
                demand.avg_in_flight,
                demand.concurrency,
            )),
            ReservationPolicy::Histogram(h) => h.instances_at(now_ms),
        }
    }

    /// The function's last invocation in flight ended at `now_ms`.
    pub fn went_idle(&mut self, now_ms: u64) {
        if let ReservationPolicy::Histogram(h) = self {
            h.went_idle(now_ms);
        }
    }

    /// An invocation arrived while nothing of the function was in flight.
    pub fn went_busy(&mut self, now_ms: u64) {
        if let ReservationPolicy::Histogram(h) = self {
            h.went_busy(now_ms);
        }
    }

    /// Whether the policy plans the function's idle time (the histogram
    /// policy): its most recently busy idle instance is then kept as
    /// [`Self::planned_keep_alive_ms`] says, the others by the function's
    /// keep-alive.
    pub fn plans_idle(&self) -> bool {
        matches!(self, ReservationPolicy::Histogram(_))
    }

    /// The planned keep-alive of the function's idle instance, ms (None
    /// while the function is busy, or under a policy that plans nothing).
    pub fn planned_keep_alive_ms(&self) -> Option<u64> {
        match self {
            ReservationPolicy::Histogram(h) => h.idle_keep_alive_ms(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_TOML: &str = r#"
kind = "hybrid"
[scheduled]
timezone = "UTC"
[[scheduled.windows]]
cron = "0 20 * * *"
duration_minutes = 120
instances = 30
[utilisation]
target = 0.7
max = 50
"#;

    #[test]
    fn hybrid_takes_the_larger_part() {
        let config: PolicyConfig = toml::from_str(HYBRID_TOML).unwrap();
        let mut policy = config.compile().unwrap();
        let at = |h: u32| u64::from(h) * 3_600_000 + 19 * 86_400_000 * 365;
        let idle = Demand {
            avg_in_flight: 0.0,
            concurrency: 1,
        };
        let busy = Demand {
            avg_in_flight: 28.0,
            concurrency: 1,
        };
        assert_eq!(
            policy.instances_at(at(21), idle),
            30,
            "window open, no load"
        );
        assert_eq!(
            policy.instances_at(at(21) + 1000, busy),
            40,
            "load beyond window"
        );
    }

    #[test]
    fn json_and_toml_read_the_same() {
        let json = r#"{"kind":"fixed","instances":3}"#;
        let from_json: PolicyConfig = serde_json::from_str(json).unwrap();
        let from_toml: PolicyConfig = toml::from_str("kind = \"fixed\"\ninstances = 3").unwrap();
        assert_eq!(from_json, from_toml);
        assert_eq!(from_json.kind(), "fixed");
    }

    #[test]
    fn nested_errors_carry_their_path() {
        let mut config: PolicyConfig = toml::from_str(HYBRID_TOML).unwrap();
        if let PolicyConfig::Hybrid { utilisation, .. } = &mut config {
            utilisation.min = 60;
        }
        assert_eq!(config.compile().unwrap_err().field, "utilisation.min");
        let fixed = PolicyConfig::Fixed {
            instances: MAX_RESERVED_INSTANCES + 1,
        };
        assert_eq!(fixed.compile().unwrap_err().field, "instances");
    }
}
