//! Synthetic invocation traces shaped like the Azure Functions 2019
//! characterisation (Shahrad et al., "Serverless in the Wild", ATC 2020):
//! per-function rates log-normally spread over many orders of magnitude,
//! a quarter of functions timer-triggered, diurnal cycles with per-function
//! amplitude and peak hour, a flash sale (a sudden burst on a few functions
//! at once) and short single-function spikes; execution times log-normal
//! per function with medians from tens of milliseconds to seconds.
//! Seeded with ChaCha8, so a seed always gives the same trace.

use super::trace::{Invocation, Trace, TraceFunction};
use crate::scheduler::error::FieldError;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};

/// Spread of per-function popularity (log-normal sigma): +-3 sigma covers
/// about 6.5 orders of magnitude of daily invocation counts.
const POPULARITY_SIGMA: f64 = 2.5;
/// Share of functions triggered by timers (periodic, no diurnal cycle).
const TIMER_SHARE: f64 = 0.25;
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
    for (f, &count) in counts.iter().enumerate() {
        functions.push(TraceFunction {
            name: format!("fn-{f:04}"),
            image: format!("img-{f:04}"),
        });
        let median_ms = 10f64.powf(rng.random_range(-1.5..1.2)) * 1000.0;
        let durations = LogNormal::new(median_ms.ln(), 0.6).expect("finite parameters");
        let arrivals = if rng.random_bool(TIMER_SHARE) {
            timer_arrivals(&mut rng, count, span_ms)
        } else {
            let mut shape = diurnal_shape(&mut rng, minutes);
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
            sample_arrivals(&mut rng, count, &shape)
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
