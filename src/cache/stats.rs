//! Counters the cache keeps as it works, and the snapshot it reports, so
//! operators can see hit rates per tier, what the network cost, and how
//! long fetches take.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the fetch latency buckets: 2^k microseconds for
/// k = 0..=24 (1 µs to ~16.8 s), then one open-ended bucket.
const LATENCY_BOUNDS: usize = 25;

/// Live counters, updated with relaxed atomics on the hot path.
#[derive(Default)]
pub(crate) struct Counters {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub fetches: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub bytes_inserted: AtomicU64,
    pub evictions_memory: AtomicU64,
    pub evictions_disk: AtomicU64,
    pub corrupt_on_disk: AtomicU64,
    fetch_latency: [AtomicU64; LATENCY_BOUNDS + 1],
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Records how long one fetch took.
    pub fn record_fetch_latency(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().max(1);
        // Smallest k with micros <= 2^k.
        let bucket = (u128::BITS - (micros - 1).leading_zeros()) as usize;
        Self::bump(&self.fetch_latency[bucket.min(LATENCY_BOUNDS)]);
    }

    /// A consistent-enough copy (each counter is read once; counters may
    /// move between reads) plus the tiers' current sizes.
    pub fn snapshot(&self, memory_bytes: u64, disk_bytes: u64) -> CacheStats {
        let read = |c: &AtomicU64| c.load(Relaxed);
        CacheStats {
            memory_hits: read(&self.memory_hits),
            disk_hits: read(&self.disk_hits),
            misses: read(&self.misses),
            coalesced: read(&self.coalesced),
            fetches: read(&self.fetches),
            fetch_errors: read(&self.fetch_errors),
            bytes_fetched: read(&self.bytes_fetched),
            bytes_inserted: read(&self.bytes_inserted),
            evictions_memory: read(&self.evictions_memory),
            evictions_disk: read(&self.evictions_disk),
            corrupt_on_disk: read(&self.corrupt_on_disk),
            memory_bytes,
            disk_bytes,
            // Filled by the cache, which holds the ledger.
            layers_bytes: 0,
            layers_evicted: 0,
            disk_bound: 0,
            fetch_latency: LatencyHistogram {
                buckets: self
                    .fetch_latency
                    .iter()
                    .enumerate()
                    .map(|(k, count)| LatencyBucket {
                        upper: (k < LATENCY_BOUNDS).then(|| Duration::from_micros(1 << k)),
                        count: read(count),
                    })
                    .collect(),
            },
        }
    }
}

/// A snapshot of the cache's counters, for metrics and `loci` status output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups served from memory.
    pub memory_hits: u64,
    /// Lookups served from disk (and promoted to memory).
    pub disk_hits: u64,
    /// Lookups that found the chunk in no tier.
    pub misses: u64,
    /// `get_or_fetch` calls that waited for another caller's lookup of the
    /// same chunk instead of doing their own.
    pub coalesced: u64,
    /// Fetches run (one per miss in `get_or_fetch`).
    pub fetches: u64,
    /// Fetches that failed or returned bytes not matching the digest.
    pub fetch_errors: u64,
    /// Bytes returned by fetches.
    pub bytes_fetched: u64,
    /// Bytes of verified chunks stored (fetched or inserted).
    pub bytes_inserted: u64,
    /// Chunks evicted from memory.
    pub evictions_memory: u64,
    /// Chunks evicted from disk.
    pub evictions_disk: u64,
    /// Chunks found corrupt or unreadable on disk (and deleted).
    pub corrupt_on_disk: u64,
    /// Bytes of chunk data in memory now.
    pub memory_bytes: u64,
    /// Bytes of chunk data on disk now.
    pub disk_bytes: u64,
    /// Bytes completed layers hold on disk now (blobs and files).
    pub layers_bytes: u64,
    /// Completed layers evicted for room since the cache opened.
    pub layers_evicted: u64,
    /// The disk budget chunks and completed layers share.
    pub disk_bound: u64,
    /// How long fetches took.
    pub fetch_latency: LatencyHistogram,
}

/// Fetch latencies in power-of-two buckets; cheap to record, enough to read
/// off p50 and p99 within a factor of two.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LatencyHistogram {
    /// Buckets in increasing order of their bound.
    pub buckets: Vec<LatencyBucket>,
}

/// Fetches that took at most `upper` (and more than the previous bucket's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LatencyBucket {
    /// Inclusive upper bound; `None` for the last, open-ended bucket.
    #[serde(rename = "upper_us", serialize_with = "as_micros")]
    pub upper: Option<Duration>,
    /// Fetches in this bucket.
    pub count: u64,
}

impl LatencyHistogram {
    /// Fetches recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// The bound of the bucket holding the `q` quantile (`0.5` for p50):
    /// at least that fraction of fetches took no longer. `None` with no
    /// fetches recorded, or when it falls in the open-ended bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for bucket in &self.buckets {
            seen += bucket.count;
            if seen >= rank {
                return bucket.upper;
            }
        }
        None
    }
}

/// Serializes a bucket bound as whole microseconds (readable JSON).
fn as_micros<S: serde::Serializer>(upper: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match upper {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_power_of_two_buckets_and_quantiles_read_them() {
        let counters = Counters::default();
        for _ in 0..98 {
            counters.record_fetch_latency(Duration::from_micros(900)); // <= 1024 µs
        }
        counters.record_fetch_latency(Duration::from_millis(40)); // <= 65536 µs
        counters.record_fetch_latency(Duration::from_secs(60)); // open-ended
        let histogram = counters.snapshot(0, 0).fetch_latency;
        assert_eq!(histogram.count(), 100);
        assert_eq!(histogram.quantile(0.5), Some(Duration::from_micros(1024)));
        assert_eq!(histogram.quantile(0.99), Some(Duration::from_micros(65536)));
        assert_eq!(histogram.quantile(1.0), None);
    }

    #[test]
    fn exact_powers_of_two_stay_in_their_own_bucket() {
        let counters = Counters::default();
        counters.record_fetch_latency(Duration::from_micros(1024));
        let histogram = counters.snapshot(0, 0).fetch_latency;
        assert_eq!(histogram.quantile(0.5), Some(Duration::from_micros(1024)));
        assert_eq!(LatencyHistogram { buckets: vec![] }.quantile(0.5), None);
    }
}
