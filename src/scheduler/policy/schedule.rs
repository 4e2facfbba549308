//! The *scheduled* reservation: cron-started windows, each keeping its own
//! number of instances ready for a while, evaluated in a named time zone
//! (so "09:00 on weekdays in Asia/Shanghai" survives DST and UTC offsets).

use crate::scheduler::error::FieldError;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};

/// Longest window accepted: one week, the longest period a 5-field cron
/// pattern repeats with on every day of the week.
const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// How long to trust "no window start found" before searching again.
const RETRY_AFTER_SEARCH_FAILURE_MS: u64 = 3_600_000;

/// Configuration of a scheduled reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledConfig {
    /// IANA time zone the cron patterns are read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Instances kept ready when no window is open.
    #[serde(default)]
    pub baseline: u32,
    /// The windows; where several are open, the largest count wins.
    pub windows: Vec<WindowConfig>,
}

fn utc() -> String {
    "UTC".to_string()
}

/// One reservation window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Standard 5-field cron pattern (`min hour day-of-month month
    /// day-of-week`) giving the times the window opens.
    pub cron: String,
    /// How long the window stays open after each start.
    pub duration_minutes: u32,
    /// Instances kept ready while it is open.
    pub instances: u32,
}

/// A validated scheduled reservation, with per-window caches so evaluating
/// it every tick costs a comparison, not a cron search.
#[derive(Debug, Clone)]
pub struct Schedule {
    timezone: Tz,
    baseline: u32,
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    cron: Cron,
    duration_ms: u64,
    instances: u32,
    /// Cached answer: open or not, valid for `valid_from..valid_until`.
    open: bool,
    valid_from_ms: u64,
    valid_until_ms: u64,
}

impl ScheduledConfig {
    /// Validates the configuration and compiles its patterns.
    pub fn compile(&self, max_instances: u32) -> Result<Schedule, FieldError> {
        let timezone: Tz = self.timezone.parse().map_err(|_| {
            FieldError::new(
                "timezone",
                format!("{:?} is not an IANA time zone name", self.timezone),
            )
        })?;
        if self.baseline > max_instances {
            return Err(FieldError::new(
                "baseline",
                format!("{} exceeds the limit of {max_instances}", self.baseline),
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let windows = self
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let field = |name: &str| format!("windows[{i}].{name}");
                let cron = parser.parse(&w.cron).map_err(|e| {
                    FieldError::new(
                        field("cron"),
                        format!("{:?} is not a 5-field cron pattern: {e}", w.cron),
                    )
                })?;
                if w.duration_minutes == 0 || w.duration_minutes > MAX_WINDOW_MINUTES {
                    return Err(FieldError::new(
                        field("duration_minutes"),
                        format!(
                            "must be within 1..={MAX_WINDOW_MINUTES}, got {}",
                            w.duration_minutes
                        ),
                    ));
                }
                if w.instances > max_instances {
                    return Err(FieldError::new(
                        field("instances"),
                        format!("{} exceeds the limit of {max_instances}", w.instances),
                    ));
                }
                Ok(Window {
                    cron,
                    duration_ms: u64::from(w.duration_minutes) * 60_000,
                    instances: w.instances,
                    open: false,
                    valid_from_ms: 1,
                    valid_until_ms: 0,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Schedule {
            timezone,
            baseline: self.baseline,
            windows,
        })
    }
}

impl Schedule {
    /// Instances the schedule asks for at `now_ms` (Unix milliseconds).
    pub fn instances_at(&mut self, now_ms: u64) -> u32 {
        let timezone = self.timezone;
        self.windows
            .iter_mut()
            .filter_map(|w| w.is_open(now_ms, &timezone).then_some(w.instances))
            .fold(self.baseline, u32::max)
    }
}

impl Window {
    fn is_open(&mut self, now_ms: u64, timezone: &Tz) -> bool {
        if !(self.valid_from_ms..self.valid_until_ms).contains(&now_ms) {
            self.recompute(now_ms, timezone);
        }
        self.open
    }

    /// Open at `now` iff the latest start at or before `now` is less than
    /// `duration` ago. The answer holds until that window closes, or, when
    /// closed, until the next start.
    fn recompute(&mut self, now_ms: u64, timezone: &Tz) {
        self.valid_from_ms = now_ms;
        let now = local_time(now_ms, timezone);
        let last_start = self
            .cron
            .find_previous_occurrence(&now, true)
            .ok()
            .map(|t| t.timestamp_millis().max(0) as u64);
        if let Some(start) = last_start.filter(|start| start + self.duration_ms > now_ms) {
            self.open = true;
            self.valid_until_ms = start + self.duration_ms;
            return;
        }
        self.open = false;
        self.valid_until_ms = match self.cron.find_next_occurrence(&now, false) {
            Ok(next) => next.timestamp_millis().max(now_ms as i64 + 1) as u64,
            Err(_) => now_ms + RETRY_AFTER_SEARCH_FAILURE_MS,
        };
    }
}

fn local_time(now_ms: u64, timezone: &Tz) -> DateTime<Tz> {
    let utc = DateTime::<Utc>::from_timestamp_millis(now_ms as i64).unwrap_or_default();
    timezone.from_utc_datetime(&utc.naive_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    fn config(timezone: &str) -> ScheduledConfig {
        ScheduledConfig {
            timezone: timezone.into(),
            baseline: 1,
            windows: vec![WindowConfig {
                cron: "0 9 * * 1-5".into(),
                duration_minutes: 8 * 60,
                instances: 10,
            }],
        }
    }

    #[test]
    fn window_opens_in_its_own_time_zone() {
        let mut s = config("Asia/Shanghai").compile(100).unwrap();
        // Monday 2024-07-15 09:30 in Shanghai is 01:30 UTC.
        assert_eq!(s.instances_at(ms("2024-07-15T01:30:00Z")), 10);
        // 09:30 UTC is 17:30 in Shanghai: the 09:00-17:00 window has closed.
        assert_eq!(s.instances_at(ms("2024-07-15T09:30:00Z")), 1);
        // The same instant read in UTC is inside a UTC window.
        let mut s = config("UTC").compile(100).unwrap();
        assert_eq!(s.instances_at(ms("2024-07-15T09:30:00Z")), 10);
        assert_eq!(s.instances_at(ms("2024-07-15T01:30:00Z")), 1);
    }

    #[test]
    fn weekends_fall_back_to_baseline() {
        let mut s = config("UTC").compile(100).unwrap();
        assert_eq!(s.instances_at(ms("2024-07-13T10:00:00Z")), 1);
    }

    #[test]
    fn cache_follows_time_in_both_directions() {
        let mut s = config("UTC").compile(100).unwrap();
        assert_eq!(s.instances_at(ms("2024-07-15T10:00:00Z")), 10);
        assert_eq!(s.instances_at(ms("2024-07-15T17:00:00Z")), 1);
        assert_eq!(s.instances_at(ms("2024-07-16T09:00:00Z")), 10);
        assert_eq!(s.instances_at(ms("2024-07-15T08:59:00Z")), 1);
    }

    #[test]
    fn dst_shift_moves_the_window_in_utc() {
        let mut s = config("Europe/Berlin").compile(100).unwrap();
        // Winter: 09:00 CET = 08:00 UTC. Summer: 09:00 CEST = 07:00 UTC.
        assert_eq!(s.instances_at(ms("2024-01-15T08:10:00Z")), 10);
        assert_eq!(s.instances_at(ms("2024-01-15T07:10:00Z")), 1);
        assert_eq!(s.instances_at(ms("2024-07-15T07:10:00Z")), 10);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = config("Mars/Olympus");
        assert_eq!(c.compile(100).unwrap_err().field, "timezone");
        c = config("UTC");
        c.windows[0].cron = "61 * * * *".into();
        assert_eq!(c.compile(100).unwrap_err().field, "windows[0].cron");
        c = config("UTC");
        c.windows[0].duration_minutes = 0;
        assert_eq!(
            c.compile(100).unwrap_err().field,
            "windows[0].duration_minutes"
        );
        c = config("UTC");
        c.windows[0].instances = 101;
        assert_eq!(c.compile(100).unwrap_err().field, "windows[0].instances");
    }
}
