//! The *utilisation* reservation: size the reservation so the reserved
//! instances run near a target utilisation. Scaling up takes effect at the
//! next evaluation; scaling down waits until a lower size has been enough for
//! a whole stabilisation window (the rule Kubernetes' HPA uses for scale-down),
//! so a brief lull does not throw away warm instances a burst will want back.

use crate::scheduler::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Longest stabilisation window accepted (a day).
const MAX_SCALE_DOWN_DELAY_S: u64 = 86_400;

/// Configuration of a utilisation-driven reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtilisationConfig {
    /// Wanted utilisation of reserved instances, in (0, 1]: in-flight
    /// invocations divided by the concurrency the reservation offers.
    pub target: f64,
    /// Fewest instances kept ready.
    #[serde(default)]
    pub min: u32,
    /// Most instances kept ready.
    pub max: u32,
    /// How long a smaller size must have sufficed before the reservation
    /// shrinks to it.
    #[serde(default = "default_scale_down_delay_s")]
    pub scale_down_delay_s: u64,
}

fn default_scale_down_delay_s() -> u64 {
    300
}

/// A validated utilisation policy with its recent recommendations.
#[derive(Debug, Clone)]
pub struct UtilisationScaler {
    config: UtilisationConfig,
    /// (time, recommendation), recommendations strictly decreasing from the
    /// front: the front is the largest one within the window.
    recent: VecDeque<(u64, u32)>,
}

impl UtilisationConfig {
    /// Validates the bounds and target.
    pub fn compile(&self, max_instances: u32) -> Result<UtilisationScaler, FieldError> {
        if !(self.target > 0.0 && self.target <= 1.0) {
            return Err(FieldError::new(
                "target",
                format!("must be within (0, 1], got {}", self.target),
            ));
        }
        if self.max == 0 {
            return Err(FieldError::new("max", "must be at least 1"));
        }
        if self.max > max_instances {
            return Err(FieldError::new(
                "max",
                format!("{} exceeds the limit of {max_instances}", self.max),
            ));
        }
        if self.min > self.max {
            return Err(FieldError::new(
                "min",
                format!("{} exceeds max {}", self.min, self.max),
            ));
        }
        if self.scale_down_delay_s > MAX_SCALE_DOWN_DELAY_S {
            return Err(FieldError::new(
                "scale_down_delay_s",
                format!(
                    "must be at most {MAX_SCALE_DOWN_DELAY_S}, got {}",
                    self.scale_down_delay_s
                ),
            ));
        }
        Ok(UtilisationScaler {
            config: self.clone(),
            recent: VecDeque::new(),
        })
    }
}

impl UtilisationScaler {
    /// Instances to keep ready at `now_ms`, given the function's average
    /// in-flight invocations since the last evaluation and how many
    /// invocations one instance takes at once.
    pub fn instances_at(&mut self, now_ms: u64, avg_in_flight: f64, concurrency: u32) -> u32 {
        let per_instance = f64::from(concurrency.max(1)) * self.config.target;
        let wanted = (avg_in_flight.max(0.0) / per_instance).ceil();
        let wanted = (wanted.min(f64::from(self.config.max)) as u32).max(self.config.min);
        while self.recent.back().is_some_and(|&(_, r)| r <= wanted) {
            self.recent.pop_back();
        }
        self.recent.push_back((now_ms, wanted));
        let window_start = now_ms.saturating_sub(self.config.scale_down_delay_s * 1000);
        while self.recent.front().is_some_and(|&(t, _)| t < window_start) {
            self.recent.pop_front();
        }
        self.recent.front().map_or(wanted, |&(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler() -> UtilisationScaler {
        UtilisationConfig {
            target: 0.5,
            min: 1,
            max: 20,
            scale_down_delay_s: 60,
        }
        .compile(1000)
        .unwrap()
    }

    #[test]
    fn scales_up_at_once_and_down_after_the_delay() {
        let mut s = scaler();
        assert_eq!(s.instances_at(0, 0.0, 1), 1, "min bound holds at no load");
        assert_eq!(
            s.instances_at(1_000, 4.0, 1),
            8,
            "4 in flight at 50% target"
        );
        assert_eq!(
            s.instances_at(2_000, 1.0, 1),
            8,
            "no shrink inside the window"
        );
        assert_eq!(s.instances_at(59_000, 1.0, 1), 8);
        assert_eq!(
            s.instances_at(62_000, 1.0, 1),
            2,
            "shrinks once the peak is a window old"
        );
    }

    #[test]
    fn max_bound_and_concurrency_apply() {
        let mut s = scaler();
        assert_eq!(s.instances_at(0, 1000.0, 1), 20);
        let mut s = scaler();
        assert_eq!(s.instances_at(0, 4.0, 4), 2, "4 slots per instance at 50%");
    }

    #[test]
    fn impossible_bounds_are_named() {
        let c = |target, min, max| UtilisationConfig {
            target,
            min,
            max,
            scale_down_delay_s: 60,
        };
        assert_eq!(c(0.5, 5, 3).compile(100).unwrap_err().field, "min");
        assert_eq!(c(0.5, 0, 0).compile(100).unwrap_err().field, "max");
        assert_eq!(c(0.5, 0, 101).compile(100).unwrap_err().field, "max");
        assert_eq!(c(1.5, 0, 3).compile(100).unwrap_err().field, "target");
        assert_eq!(c(f64::NAN, 0, 3).compile(100).unwrap_err().field, "target");
    }
}
