//! Synthetic invocation traces shaped like the Azure Functions 2019
//! characterisation (Shahrad et al., "Serverless in the Wild", ATC 2020),
//! as we read it:
//! - per-function rates log-normally spread over more than 6 orders of
//!   magnitude, so that the most popular fifth of the functions carries
//!   well over 95 % of the invocations and about half the functions are
//!   invoked at most once an hour;
//! - 16 % of the functions timer-triggered, drawn among the rarely
//!   invoked ones (periodic, at most once every 10 minutes: 2 % of
//!   invocations in the paper);
//! - event- and queue-like functions arriving in bursts (inter-arrival
//!   coefficient of variation well above 1);
//! - diurnal cycles with per-function amplitude and peak hour, quieter
//!   weekends (the trace starts on a Monday), a flash sale (a burst on a
//!   few functions at once) and short single-function spikes;
//! - per-function average execution times log-normal (log-mean -0.38,
//!   sigma 2.36, in seconds: half the functions under a second), each
//!   invocation spread log-normally around its function's.
//!
//! Seeded with ChaCha8, so a seed always gives the same trace.

use super::trace::{Invocation, Trace, TraceFunction};
use crate::scheduler::error::FieldError;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};

/// Spread of per-function popularity (log-normal sigma): +-2.5 sigma
/// covers 6.5 orders of magnitude of daily rates.
const POPULARITY_SIGMA: f64 = 3.0;
/// Share of functions triggered by timers (periodic, no diurnal cycle).
const TIMER_SHARE: f64 = 0.16;
/// Timers are drawn among functions invoked at most once per this many
/// minutes.
const TIMER_MAX_RATE_MINUTES: u64 = 10;
/// Share of the other functions whose arrivals come in bursts.
const BURSTY_SHARE: f64 = 0.5;
/// Mean gap between the invocations of one burst, ms.
const BURST_GAP_MS: f64 = 2_000.0;
/// Weekend days' rate against a weekday's.
const WEEKEND_FACTOR: f64 = 0.7;
/// Log-normal of functions' average execution time, seconds.
const DURATION_LOG_MEAN: f64 = -0.38;
const DURATION_LOG_SIGMA: f64 = 2.36;
/// Spread of one function's invocations around its average.
const DURATION_SPREAD_SIGMA: f64 = 0.6;
/// Share of functions caught in the flash sale.
const FLASH_SALE_SHARE: f64 = 0.05;
/// Length of the flash sale.
const FLASH_SALE_MINUTES: usize = 15;
/// Share of a sale function's invocations that fall inside the sale.
const FLASH_SALE_MASS: f64 = 0.25;
/// Share of functions with one short spike of their own.
const SPIKE_SHARE: f64 = 0.10;
/// Length of a single-function spike.
const SPIKE_MINUTES: usize = 5;
/// Share of a spiking function's invocations inside its spike.
const SPIKE_MASS: f64 = 0.10;
/// Longest execution time generated.
const MAX_DURATION_MS: f64 = 300_000.0;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorParams {
    /// RNG seed; same seed, same trace.
    pub seed: u64,
    /// Total invocations.
    pub invocations: u64,
    /// Number of functions (each with its own image).
    pub functions: u32,
    /// Length of the trace in hours (24 gives one diurnal cycle).
    pub hours: u32,
}

impl GeneratorParams {
    fn validate(&self) -> Result<(), FieldError> {
        if self.functions == 0 {
            return Err(FieldError::new("functions", "must be at least 1"));
        }
        if self.invocations < u64::from(self.functions) {
            return Err(FieldError::new(
                "invocations",
                format!(
                    "{} is fewer than one per function ({})",
                    self.invocations, self.functions
                ),
            ));
        }
        if !(1..=24 * 366).contains(&self.hours) {
            return Err(FieldError::new(
                "hours",
                format!("must be within 1..=8784, got {}", self.hours),
            ));
        }
        Ok(())
    }
}

/// Generates a trace; see the module documentation for its shape.
pub fn generate(params: GeneratorParams) -> Result<Trace, FieldError> {
    params.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let minutes = params.hours as usize * 60;
    let span_ms = minutes as u64 * 60_000;
    let counts = split_counts(&mut rng, params.invocations, params.functions as usize);
    let sale_start = (rng.random_range(0.55..0.85) * minutes as f64) as usize;
    let sale = sale_start..(sale_start + FLASH_SALE_MINUTES).min(minutes);

    let mut functions = Vec::with_capacity(counts.len());
    let mut invocations = Vec::with_capacity(params.invocations as usize);
    // Timers are the rarely invoked functions' trigger (16 % of functions,
    // 2 % of invocations in the paper): drawn among those invoked at most
    // once per TIMER_MAX_RATE_MINUTES.
    let timer_eligible = counts
        .iter()
        .filter(|&&c| c * TIMER_MAX_RATE_MINUTES <= minutes as u64)
        .count();
    let timer_chance = (TIMER_SHARE * counts.len() as f64 / timer_eligible.max(1) as f64).min(1.0);
    for (f, &count) in counts.iter().enumerate() {
        functions.push(TraceFunction {
            name: format!("fn-{f:04}"),
            image: format!("img-{f:04}"),
        });
        let mean_s: f64 = LogNormal::new(DURATION_LOG_MEAN, DURATION_LOG_SIGMA)
            .expect("finite parameters")
            .sample(&mut rng);
        let mean_ms = (mean_s * 1000.0).clamp(1.0, MAX_DURATION_MS);
        // Median of the spread such that its mean is the function's mean.
        let median_ms = mean_ms / (DURATION_SPREAD_SIGMA.powi(2) / 2.0).exp();
        let durations =
            LogNormal::new(median_ms.ln(), DURATION_SPREAD_SIGMA).expect("finite parameters");
        let timer =
            rng.random_bool(timer_chance) && count * TIMER_MAX_RATE_MINUTES <= minutes as u64;
        let bursty = rng.random_bool(BURSTY_SHARE);
        let arrivals = if timer {
            timer_arrivals(&mut rng, count, span_ms)
        } else {
            let mut shape = diurnal_shape(&mut rng, minutes);
            weekly(&mut shape);
            if rng.random_bool(FLASH_SALE_SHARE) {
                add_burst(&mut shape, sale.clone(), FLASH_SALE_MASS);
            }
            if rng.random_bool(SPIKE_SHARE) {
                let start = rng.random_range(0..minutes.saturating_sub(SPIKE_MINUTES).max(1));
                add_burst(
                    &mut shape,
                    start..(start + SPIKE_MINUTES).min(minutes),
                    SPIKE_MASS,
                );
            }
            if bursty {
                burst_arrivals(&mut rng, count, &shape)
            } else {
                sample_arrivals(&mut rng, count, &shape)
            }
        };
        for timestamp_ms in arrivals {
            let duration: f64 = durations.sample(&mut rng);
            invocations.push(Invocation {
                timestamp_ms,
                function: f as u32,
                duration_ms: duration.clamp(1.0, MAX_DURATION_MS) as u32,
            });
        }
    }
    invocations.sort_by_key(|i| (i.timestamp_ms, i.function));
    Ok(Trace {
        functions,
        invocations,
    })
}

/// Splits `total` invocations over `n` functions by log-normal popularity,
/// at least one each, summing exactly to `total`.
fn split_counts(rng: &mut ChaCha8Rng, total: u64, n: usize) -> Vec<u64> {
    let weights: Vec<f64> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (POPULARITY_SIGMA * z).exp()
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let spare = (total - n as u64) as f64;
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|w| 1 + (spare * w / sum) as u64)
        .collect();
    // Hand the rounding remainder to the most popular functions.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut missing = total - counts.iter().sum::<u64>();
    for &f in order.iter().cycle() {
        if missing == 0 {
            break;
        }
        counts[f] += 1;
        missing -= 1;
    }
    counts
}

/// Evenly spaced arrivals with a random phase and a little jitter.
fn timer_arrivals(rng: &mut ChaCha8Rng, count: u64, span_ms: u64) -> Vec<u64> {
    let period = span_ms as f64 / count as f64;
    let phase = rng.random_range(0.0..period);
    (0..count)
        .map(|k| {
            let jitter = rng.random_range(0.0..period.min(1_000.0) * 0.1);
            ((phase + k as f64 * period + jitter) as u64).min(span_ms - 1)
        })
        .collect()
}

/// Per-minute relative rate of a day-cycled function: peak in the
/// afternoon (UTC) give or take a few hours, amplitude 30-95%.
fn diurnal_shape(rng: &mut ChaCha8Rng, minutes: usize) -> Vec<f64> {
    let amplitude = rng.random_range(0.3..0.95);
    let z: f64 = StandardNormal.sample(rng);
    let peak_minute = (14.0 + 3.0 * z).rem_euclid(24.0) * 60.0;
    (0..minutes)
        .map(|m| {
            let phase = (m as f64 - peak_minute) / 1440.0 * std::f64::consts::TAU;
            1.0 + amplitude * phase.cos()
        })
        .collect()
}

/// Scales weekend days (days 5 and 6 from the Monday the trace starts on).
fn weekly(shape: &mut [f64]) {
    for (minute, rate) in shape.iter_mut().enumerate() {
        if (minute / 1440) % 7 >= 5 {
            *rate *= WEEKEND_FACTOR;
        }
    }
}

/// Arrivals in bursts: burst starts drawn from the shape, each burst a
/// geometric number of invocations (mean drawn per function, 2 to 30)
/// spaced by exponential gaps; `count` in all.
fn burst_arrivals(rng: &mut ChaCha8Rng, count: u64, shape: &[f64]) -> Vec<u64> {
    let mean_burst = rng.random_range(2.0f64..30.0);
    let end_ms = shape.len() as u64 * 60_000 - 1;
    let mut bursts = (count as f64 / mean_burst).ceil() as u64;
    let mut out = Vec::with_capacity(count as usize);
    while (out.len() as u64) < count {
        bursts = bursts.max(1);
        for start in sample_arrivals(rng, bursts, shape) {
            let mut at = start as f64;
            loop {
                if out.len() as u64 == count {
                    break;
                }
                out.push((at as u64).min(end_ms));
                if rng.random_bool(1.0 / mean_burst) {
                    break;
                }
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                at += -u.ln() * BURST_GAP_MS;
            }
        }
        bursts = (count - out.len() as u64).div_ceil(mean_burst.ceil() as u64);
    }
    out
}

/// Adds a burst over `window` holding `mass` of the shape's total after.
fn add_burst(shape: &mut [f64], window: std::ops::Range<usize>, mass: f64) {
    let base: f64 = shape.iter().sum();
    let extra = base * mass / (1.0 - mass) / window.len().max(1) as f64;
    for rate in &mut shape[window] {
        *rate += extra;
    }
}

/// Draws `count` arrival times from a per-minute rate shape.
fn sample_arrivals(rng: &mut ChaCha8Rng, count: u64, shape: &[f64]) -> Vec<u64> {
    let cumulative: Vec<f64> = shape
        .iter()
        .scan(0.0, |acc, rate| {
            *acc += rate;
            Some(*acc)
        })
        .collect();
    let total = *cumulative.last().expect("at least one minute");
    (0..count)
        .map(|_| {
            let u = rng.random_range(0.0..total);
            let minute = cumulative.partition_point(|&c| c <= u).min(shape.len() - 1);
            minute as u64 * 60_000 + rng.random_range(0..60_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> GeneratorParams {
        GeneratorParams {
            seed,
            invocations: 20_000,
            functions: 50,
            hours: 24,
        }
    }

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let a = generate(params(7)).unwrap();
        assert_eq!(a, generate(params(7)).unwrap());
        assert_ne!(a, generate(params(8)).unwrap());
    }

    #[test]
    fn counts_and_order_are_exact() {
        let t = generate(params(1)).unwrap();
        assert_eq!(t.invocations.len(), 20_000);
        assert_eq!(t.functions.len(), 50);
        assert!(t
            .invocations
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        assert!(t.span_ms() < 24 * 3_600_000);
        let mut per_function = vec![0u64; 50];
        for i in &t.invocations {
            per_function[i.function as usize] += 1;
        }
        assert!(per_function.iter().all(|&c| c >= 1));
        let (min, max) = (
            per_function.iter().min().unwrap(),
            per_function.iter().max().unwrap(),
        );
        assert!(
            max / min >= 100,
            "rates should span orders of magnitude: {min}..{max}"
        );
    }

    /// The statistics the module documentation promises, on what `loci
    /// sim` replays by default (1 M invocations, 500 functions, two days),
    /// for two seeds; the weekly cycle on a week.
    #[test]
    fn traces_match_the_published_characterisation() {
        for seed in [11, 12] {
            let hours = 48u32;
            let t = generate(GeneratorParams {
                seed,
                invocations: 1_000_000,
                functions: 500,
                hours,
            })
            .unwrap();
            let n = t.functions.len();
            let mut times: Vec<Vec<u64>> = vec![Vec::new(); n];
            let mut durations = vec![0f64; n];
            for i in &t.invocations {
                times[i.function as usize].push(i.timestamp_ms);
                durations[i.function as usize] += f64::from(i.duration_ms);
            }
            let counts: Vec<u64> = times.iter().map(|v| v.len() as u64).collect();
            let total = counts.iter().sum::<u64>() as f64;
            let days = f64::from(hours) / 24.0;
            let mut sorted = counts.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            // Popularity: orders of magnitude and concentration.
            let (max, min) = (
                sorted[0] as f64 / days,
                *sorted.last().unwrap() as f64 / days,
            );
            assert!(
                max / min >= 10f64.powf(4.5),
                "seed {seed}: daily counts {min}..{max}"
            );
            let top_fifth: u64 = sorted[..n / 5].iter().sum();
            assert!(
                top_fifth as f64 / total > 0.95,
                "seed {seed}: top fifth {top_fifth}"
            );
            let rare = counts.iter().filter(|&&c| c <= u64::from(hours)).count();
            assert!(
                (0.30..0.70).contains(&(rare as f64 / n as f64)),
                "seed {seed}: {rare} of {n} invoked at most once an hour"
            );
            // Inter-arrival regularity: timers (CV near 0) are a minority
            // of invocations; a real share of functions is bursty.
            let cv = |ts: &[u64]| {
                let gaps: Vec<f64> = ts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
                let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
                let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
                var.sqrt() / mean.max(1e-9)
            };
            let with_gaps: Vec<usize> = (0..n).filter(|&f| counts[f] >= 20).collect();
            let periodic: Vec<usize> = with_gaps
                .iter()
                .copied()
                .filter(|&f| cv(&times[f]) < 0.1)
                .collect();
            let periodic_share = periodic.iter().map(|&f| counts[f]).sum::<u64>() as f64 / total;
            assert!(
                !periodic.is_empty() && periodic_share < 0.10,
                "seed {seed}: timers {periodic_share}"
            );
            let bursty = with_gaps.iter().filter(|&&f| cv(&times[f]) > 2.0).count();
            assert!(
                bursty as f64 / with_gaps.len() as f64 > 0.25,
                "seed {seed}: {bursty} of {} bursty",
                with_gaps.len()
            );
            // Diurnal: all invocations by hour of day.
            let mut by_hour = [0u64; 24];
            for i in &t.invocations {
                by_hour[((i.timestamp_ms / 3_600_000) % 24) as usize] += 1;
            }
            let (peak, trough) = (
                *by_hour.iter().max().unwrap(),
                *by_hour.iter().min().unwrap(),
            );
            assert!(
                peak as f64 > 1.3 * trough as f64,
                "seed {seed}: hours {by_hour:?}"
            );
            // Weekly: a week's invocations by day.
            let week = generate(GeneratorParams {
                seed,
                invocations: 200_000,
                functions: 200,
                hours: 168,
            })
            .unwrap();
            let mut by_day = [0u64; 7];
            for i in &week.invocations {
                by_day[(i.timestamp_ms / 86_400_000) as usize] += 1;
            }
            let weekday = by_day[..5].iter().sum::<u64>() as f64 / 5.0;
            let weekend = by_day[5..].iter().sum::<u64>() as f64 / 2.0;
            assert!(weekend < 0.9 * weekday, "seed {seed}: days {by_day:?}");
            // Execution times: about half the functions average under 1 s.
            let under_a_second = (0..n)
                .filter(|&f| counts[f] > 0 && durations[f] / (counts[f] as f64) < 1000.0)
                .count();
            assert!(
                (0.40..0.70).contains(&(under_a_second as f64 / n as f64)),
                "seed {seed}: {under_a_second} of {n} average under 1 s"
            );
        }
        // The popularity model itself spans more than 6 orders of
        // magnitude: the most and least popular of 500 functions' shares.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let counts = split_counts(&mut rng, 1 << 40, 500);
        let (max, min) = (counts.iter().max().unwrap(), counts.iter().min().unwrap());
        assert!(*max as f64 / *min as f64 > 1e6, "{min}..{max}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let mut p = params(1);
        p.invocations = 10;
        assert_eq!(generate(p).unwrap_err().field, "invocations");
        p = params(1);
        p.hours = 0;
        assert_eq!(generate(p).unwrap_err().field, "hours");
    }
}
