//! The *histogram* policy: the hybrid histogram policy of "Serverless in
//! the Wild" (Shahrad et al., USENIX ATC'20), per function.
//!
//! It learns the function's idle times (from the end of its last
//! invocation in flight to the next arrival) in 1-minute bins over a range
//! of hours. When the function goes idle it plans from them:
//! - *pre-warm window*: the head percentile of the idle times, less a
//!   margin; the instance is unloaded at once and a new one made ready
//!   when the window ends (none if the window is empty: the instance
//!   stays);
//! - *keep-alive window*: from then to the tail percentile, plus a margin.
//!
//! A histogram with too few idle times, or one whose bin counts are spread
//! evenly (coefficient of variation below `min_cv`: no pattern to learn),
//! falls back to a plain keep-alive; one whose idle times mostly lie beyond
//! the range falls back to a forecast: the mean of the last few such idle
//! times (the paper uses ARIMA), pre-warmed at 85 % of it and kept 30 %
//! of it. The histogram can start from `history`, bin counts learned on
//! earlier days, and keeps learning online.

use crate::scheduler::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Longest range accepted (a day of 1-minute bins).
const MAX_RANGE_MINUTES: u32 = 1440;
/// Longest fallback keep-alive accepted (a day).
const MAX_FALLBACK_KEEP_ALIVE_S: u64 = 86_400;
/// Out-of-range idle times kept for the forecast.
const FORECAST_SAMPLES: usize = 4;
const MINUTE_MS: u64 = 60_000;

/// Configuration of a histogram policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramConfig {
    /// Range of the histogram, minutes (1-minute bins).
    #[serde(default = "default_range_minutes")]
    pub range_minutes: u32,
    /// Percentile of idle times the pre-warm window ends at.
    #[serde(default = "default_head_percentile")]
    pub head_percentile: f64,
    /// Percentile of idle times the keep-alive window ends at.
    #[serde(default = "default_tail_percentile")]
    pub tail_percentile: f64,
    /// Safety margin: the pre-warm window is shortened by it, the
    /// keep-alive window's end pushed out by it (0.1: 10 %).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Idle times needed before the histogram is trusted.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Least coefficient of variation of the bin counts for the histogram
    /// to count as a pattern.
    #[serde(default = "default_min_cv")]
    pub min_cv: f64,
    /// Largest share of idle times beyond the range before the forecast
    /// takes over.
    #[serde(default = "default_max_out_of_range")]
    pub max_out_of_range: f64,
    /// Keep-alive when the histogram is not trusted, s.
    #[serde(default = "default_fallback_keep_alive_s")]
    pub fallback_keep_alive_s: u64,
    /// Bin counts learned earlier: `range_minutes` bins, then the count of
    /// idle times beyond the range. Empty: learn from nothing.
    #[serde(default)]
    pub history: Vec<u32>,
}

fn default_range_minutes() -> u32 {
    240
}
fn default_head_percentile() -> f64 {
    5.0
}
fn default_tail_percentile() -> f64 {
    99.0
}
fn default_margin() -> f64 {
    0.1
}
fn default_min_samples() -> u32 {
    3
}
fn default_min_cv() -> f64 {
    2.0
}
fn default_max_out_of_range() -> f64 {
    0.5
}
fn default_fallback_keep_alive_s() -> u64 {
    600
}

impl Default for HistogramConfig {
    fn default() -> Self {
        HistogramConfig {
            range_minutes: default_range_minutes(),
            head_percentile: default_head_percentile(),
            tail_percentile: default_tail_percentile(),
            margin: default_margin(),
            min_samples: default_min_samples(),
            min_cv: default_min_cv(),
            max_out_of_range: default_max_out_of_range(),
            fallback_keep_alive_s: default_fallback_keep_alive_s(),
            history: Vec::new(),
        }
    }
}

/// What the policy decided when the function last went idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePlan {
    /// From going idle until a pre-warmed instance is wanted, ms (0: the
    /// idle instance stays).
    pub prewarm_ms: u64,
    /// How long an instance is then kept, ms.
    pub keep_alive_ms: u64,
    /// Which rule decided.
    pub rule: IdleRule,
}

/// The rule behind an [`IdlePlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleRule {
    /// The histogram's percentiles.
    Histogram,
    /// Too few idle times, or no pattern in them: plain keep-alive.
    Fallback,
    /// Idle times mostly beyond the range: the forecast.
    Forecast,
}

/// A validated histogram policy with what it has learned.
#[derive(Debug, Clone)]
pub struct IdleHistogram {
    config: HistogramConfig,
    /// `range_minutes` bins and the beyond-range count.
    bins: Vec<u32>,
    total: u64,
    recent_beyond_ms: VecDeque<u64>,
    idle_since_ms: Option<u64>,
    plan: IdlePlan,
}

impl HistogramConfig {
    /// Validates the parameters and the history.
    pub fn compile(&self) -> Result<IdleHistogram, FieldError> {
        if !(1..=MAX_RANGE_MINUTES).contains(&self.range_minutes) {
            return Err(FieldError::new(
                "range_minutes",
                format!(
                    "must be within 1..={MAX_RANGE_MINUTES}, got {}",
                    self.range_minutes
                ),
            ));
        }
        for (field, p) in [
            ("head_percentile", self.head_percentile),
            ("tail_percentile", self.tail_percentile),
        ] {
            if !(0.0..=100.0).contains(&p) {
                return Err(FieldError::new(
                    field,
                    format!("must be within 0..=100, got {p}"),
                ));
            }
        }
        if self.head_percentile > self.tail_percentile {
            return Err(FieldError::new(
                "head_percentile",
                "must not exceed tail_percentile",
            ));
        }
        if !(0.0..1.0).contains(&self.margin) {
            return Err(FieldError::new(
                "margin",
                format!("must be within [0, 1), got {}", self.margin),
            ));
        }
        if !(self.min_cv >= 0.0 && self.min_cv.is_finite()) {
            return Err(FieldError::new("min_cv", "must be a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&self.max_out_of_range) {
            return Err(FieldError::new(
                "max_out_of_range",
                format!("must be within 0..=1, got {}", self.max_out_of_range),
            ));
        }
        if self.fallback_keep_alive_s > MAX_FALLBACK_KEEP_ALIVE_S {
            return Err(FieldError::new(
                "fallback_keep_alive_s",
                format!("must be at most {MAX_FALLBACK_KEEP_ALIVE_S}"),
            ));
        }
        let bins_len = self.range_minutes as usize + 1;
        let bins = match self.history.len() {
            0 => vec![0; bins_len],
            n if n == bins_len => self.history.clone(),
            n => {
                return Err(FieldError::new(
                    "history",
                    format!("must hold range_minutes + 1 = {bins_len} counts, got {n}"),
                ))
            }
        };
        let total = bins.iter().map(|&b| u64::from(b)).sum();
        let mut config = self.clone();
        config.history = Vec::new();
        let fallback = IdlePlan {
            prewarm_ms: 0,
            keep_alive_ms: config.fallback_keep_alive_s * 1000,
            rule: IdleRule::Fallback,
        };
        Ok(IdleHistogram {
            config,
            bins,
            total,
            recent_beyond_ms: VecDeque::new(),
            idle_since_ms: None,
            plan: fallback,
        })
    }
}

impl IdleHistogram {
    /// The function's last invocation in flight ended at `now_ms`: plan
    /// the idle period.
    pub fn went_idle(&mut self, now_ms: u64) {
        self.idle_since_ms = Some(now_ms);
        self.plan = self.plan_idle();
        tracing::trace!(
            rule = ?self.plan.rule,
            prewarm_ms = self.plan.prewarm_ms,
            keep_alive_ms = self.plan.keep_alive_ms,
            "idle planned"
        );
    }

    /// An invocation arrived while the function was idle: learn the idle
    /// time.
    pub fn went_busy(&mut self, now_ms: u64) {
        let Some(since) = self.idle_since_ms.take() else {
            return;
        };
        let idle_ms = now_ms.saturating_sub(since);
        let range = self.config.range_minutes as usize;
        let bin = ((idle_ms / MINUTE_MS) as usize).min(range);
        self.bins[bin] = self.bins[bin].saturating_add(1);
        self.total += 1;
        if bin == range {
            if self.recent_beyond_ms.len() == FORECAST_SAMPLES {
                self.recent_beyond_ms.pop_front();
            }
            self.recent_beyond_ms.push_back(idle_ms);
        }
    }

    /// The plan made when the function last went idle.
    #[cfg(test)]
    pub fn plan(&self) -> IdlePlan {
        self.plan
    }

    /// While the function is idle, how long its idle instance outside any
    /// reservation is kept, ms: the keep-alive window when nothing is
    /// pre-warmed, else nothing (it is unloaded and a new one pre-warmed).
    /// None while the function is busy: no plan is in force.
    pub fn idle_keep_alive_ms(&self) -> Option<u64> {
        self.idle_since_ms?;
        Some(if self.plan.prewarm_ms == 0 {
            self.plan.keep_alive_ms
        } else {
            0
        })
    }

    /// Instances to keep ready at `now_ms`: one inside the planned window
    /// after a pre-warm, none otherwise.
    pub fn instances_at(&self, now_ms: u64) -> u32 {
        let Some(since) = self.idle_since_ms else {
            return 0;
        };
        let plan = self.plan;
        if plan.prewarm_ms == 0 {
            return 0;
        }
        let start = since + plan.prewarm_ms;
        u32::from(start <= now_ms && now_ms < start + plan.keep_alive_ms)
    }

    fn plan_idle(&self) -> IdlePlan {
        let c = &self.config;
        let fallback = IdlePlan {
            prewarm_ms: 0,
            keep_alive_ms: c.fallback_keep_alive_s * 1000,
            rule: IdleRule::Fallback,
        };
        if self.total < u64::from(c.min_samples) {
            return fallback;
        }
        let range = c.range_minutes as usize;
        let beyond = u64::from(self.bins[range]);
        if beyond as f64 > c.max_out_of_range * self.total as f64 {
            let Some(mean) = mean(&self.recent_beyond_ms) else {
                return fallback;
            };
            return IdlePlan {
                prewarm_ms: (mean * 0.85) as u64,
                keep_alive_ms: (mean * 0.30) as u64,
                rule: IdleRule::Forecast,
            };
        }
        let in_range: u64 = self.bins[..range].iter().map(|&b| u64::from(b)).sum();
        if in_range == 0 || bin_cv(&self.bins[..range]) < c.min_cv {
            return fallback;
        }
        let head = self.percentile_bin(c.head_percentile) as f64;
        let tail = (self.percentile_bin(c.tail_percentile) + 1) as f64;
        let prewarm_min = (head * (1.0 - c.margin)).floor();
        let end_min = (tail * (1.0 + c.margin)).ceil();
        IdlePlan {
            prewarm_ms: prewarm_min as u64 * MINUTE_MS,
            keep_alive_ms: (end_min - prewarm_min).max(1.0) as u64 * MINUTE_MS,
            rule: IdleRule::Histogram,
        }
    }

    /// The bin holding the `p`th percentile of the idle times in range.
    fn percentile_bin(&self, p: f64) -> usize {
        let range = self.config.range_minutes as usize;
        let in_range: u64 = self.bins[..range].iter().map(|&b| u64::from(b)).sum();
        let rank = ((p / 100.0 * in_range as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bin, &count) in self.bins[..range].iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return bin;
            }
        }
        range - 1
    }
}

fn mean(values: &VecDeque<u64>) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<u64>() as f64 / values.len() as f64)
}

/// Coefficient of variation of the bin counts (0 for no counts).
fn bin_cv(bins: &[u32]) -> f64 {
    let n = bins.len() as f64;
    let mean = bins.iter().map(|&b| f64::from(b)).sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let var = bins
        .iter()
        .map(|&b| (f64::from(b) - mean).powi(2))
        .sum::<f64>()
        / n;
    var.sqrt() / mean
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = MINUTE_MS;

    /// Feeds idle times (minutes) through went_idle/went_busy.
    fn learn(h: &mut IdleHistogram, start: u64, idle_minutes: &[u64]) -> u64 {
        let mut now = start;
        for &m in idle_minutes {
            h.went_idle(now);
            now += m * MIN;
            h.went_busy(now);
            now += 1000;
        }
        now
    }

    #[test]
    fn a_regular_idle_time_is_prewarmed_just_before_and_kept_just_after() {
        let mut h = HistogramConfig::default().compile().unwrap();
        let now = learn(&mut h, 0, &[30; 20]);
        h.went_idle(now);
        let plan = h.plan();
        assert_eq!(plan.rule, IdleRule::Histogram);
        // Every idle time falls in bin 30: head 30 min less 10 %, tail 31
        // min plus 10 %.
        assert_eq!(plan.prewarm_ms, 27 * MIN);
        assert_eq!(plan.keep_alive_ms, (35 - 27) * MIN);
        assert_eq!(h.idle_keep_alive_ms(), Some(0), "unloaded at once");
        assert_eq!(h.instances_at(now + 26 * MIN), 0);
        assert_eq!(h.instances_at(now + 27 * MIN), 1, "pre-warmed");
        assert_eq!(h.instances_at(now + 34 * MIN), 1);
        assert_eq!(h.instances_at(now + 35 * MIN), 0, "window over");
        h.went_busy(now + 30 * MIN);
        assert_eq!(h.instances_at(now + 31 * MIN), 0, "busy: nothing reserved");
        assert_eq!(h.idle_keep_alive_ms(), None, "busy: no plan in force");
    }

    #[test]
    fn short_idle_times_keep_the_instance_instead() {
        let mut h = HistogramConfig::default().compile().unwrap();
        let mut times = vec![0; 18];
        times.extend([3, 4]);
        let now = learn(&mut h, 0, &times);
        h.went_idle(now);
        let plan = h.plan();
        assert_eq!(plan.prewarm_ms, 0);
        // The 99th percentile is in bin 4: its end, 5 min, plus 10 %,
        // rounded up to whole minutes.
        assert_eq!(plan.keep_alive_ms, 6 * MIN);
        assert_eq!(h.idle_keep_alive_ms(), Some(6 * MIN));
        assert_eq!(h.instances_at(now + MIN), 0, "kept, not reserved");
    }

    #[test]
    fn too_few_or_patternless_idle_times_fall_back_to_keep_alive() {
        let mut h = HistogramConfig::default().compile().unwrap();
        let now = learn(&mut h, 0, &[10, 10]);
        h.went_idle(now);
        assert_eq!(h.plan().rule, IdleRule::Fallback);
        assert_eq!(h.idle_keep_alive_ms(), Some(600_000));
        // One idle time in each bin: no pattern.
        let mut h = HistogramConfig::default().compile().unwrap();
        let spread: Vec<u64> = (0..240).collect();
        let now = learn(&mut h, 0, &spread);
        h.went_idle(now);
        assert_eq!(h.plan().rule, IdleRule::Fallback);
    }

    #[test]
    fn idle_times_beyond_the_range_are_forecast() {
        let mut h = HistogramConfig::default().compile().unwrap();
        let now = learn(&mut h, 0, &[600, 600, 600, 600, 600, 600]);
        h.went_idle(now);
        let plan = h.plan();
        assert_eq!(plan.rule, IdleRule::Forecast);
        assert_eq!(plan.prewarm_ms, 510 * MIN);
        assert_eq!(plan.keep_alive_ms, 180 * MIN);
    }

    #[test]
    fn history_seeds_the_histogram_and_is_checked() {
        let mut history = vec![0u32; 241];
        history[30] = 50;
        let config = HistogramConfig {
            history,
            ..HistogramConfig::default()
        };
        let mut h = config.compile().unwrap();
        h.went_idle(0);
        assert_eq!(h.plan().rule, IdleRule::Histogram);
        assert_eq!(h.plan().prewarm_ms, 27 * MIN);
        let bad = HistogramConfig {
            history: vec![1; 3],
            ..HistogramConfig::default()
        };
        assert_eq!(bad.compile().unwrap_err().field, "history");
        for (field, config) in [
            (
                "range_minutes",
                HistogramConfig {
                    range_minutes: 0,
                    ..HistogramConfig::default()
                },
            ),
            (
                "head_percentile",
                HistogramConfig {
                    head_percentile: 99.5,
                    ..HistogramConfig::default()
                },
            ),
            (
                "margin",
                HistogramConfig {
                    margin: f64::NAN,
                    ..HistogramConfig::default()
                },
            ),
        ] {
            assert_eq!(config.compile().unwrap_err().field, field);
        }
    }
}
