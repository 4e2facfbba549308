//! The tiered chunk cache: every chunk a lazy read needs comes through here.
//!
//! Chunks are keyed by the sha256 of their uncompressed bytes, so a chunk
//! shared by several layers or images is fetched once per node. Tier 1 is an
//! in-memory LRU ([`memory`]), tier 2 RocksDB on local disk with its own LRU
//! bookkeeping ([`recency`], [`disk`]); both are bounded in bytes. Concurrent
//! readers of a missing chunk share one fetch ([`single_flight`]). Nothing
//! enters a tier unverified, and a chunk read back from disk is verified
//! again. The network is not this module's business: callers pass the fetch.
//! See `docs/cache.md` for the design and its crash recovery.

mod config;
mod disk;
mod frames;
mod layers;
mod memory;
mod recency;
mod single_flight;
mod stats;
mod write_behind;

pub use config::{CacheConfig, Compression, RocksDbOptions};
pub use layers::LayerClaim;
pub use stats::{CacheStats, LatencyBucket, LatencyHistogram};

use crate::digest::Digest;
use bytes::Bytes;
use disk::{DiskLookup, DiskTier};
use layers::Ledger;
use memory::MemoryTier;
use single_flight::{Role, SingleFlight};
use stats::Counters;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use write_behind::WriteBehind;

/// Why a cache operation failed. Cloneable so that one failed fetch can be
/// handed to every caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The cache directory or its database could not be opened.
    #[error("cannot open the chunk cache in {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The config file could not be read or has a bad field.
    #[error("cache config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// Bytes offered for a chunk do not hash to its digest.
    #[error("bytes for chunk {digest} hash to {actual} instead")]
    Corrupt { digest: Digest, actual: Digest },
    /// The caller's fetch failed.
    #[error("fetching chunk {digest} failed")]
    Fetch {
        digest: Digest,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The disk tier stopped writing after an earlier failed write.
    #[error("chunk cache database, {context}: the disk tier takes no writes after a failed one")]
    DiskStopped { context: &'static str },
    /// RocksDB refused an operation.
    #[error("chunk cache database, {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    /// A completed layer does not fit the disk budget even after evicting
    /// every chunk and every completed layer no container uses.
    #[error("a completed layer of {bytes} bytes does not fit the disk budget of {bound} bytes ({in_use} bytes held by layers in use)")]
    NoRoom { bytes: u64, bound: u64, in_use: u64 },
}

/// Checks that `data` is the chunk named by `digest`; on mismatch returns
/// what it hashes to.
pub(crate) fn hashes_to(digest: &Digest, data: &[u8]) -> Result<(), Digest> {
    let actual = Digest::of(data);
    if actual == *digest {
        Ok(())
    } else {
        Err(actual)
    }
}

/// The tiers and counters, shared with blocking tasks.
struct Tiers {
    memory: MemoryTier,
    disk: DiskTier,
    /// Completed layers holding part of the disk budget.
    layers: Mutex<Ledger>,
    counters: Counters,
    /// Logical time of uses, shared by both tiers' LRU orders.
    clock: AtomicU64,
    /// Fetched chunks waiting for their disk copy (written by the
    /// `loci-disk-behind` thread once fetching is quiet, and at persist).
    behind: Arc<WriteBehind>,
}

impl Tiers {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn memory_get(&self, digest: &Digest) -> Option<Bytes> {
        let data = self.memory.get(digest, self.tick())?;
        Counters::bump(&self.counters.memory_hits);
        Some(data)
    }

    /// Reads from disk and promotes a hit to memory.
    fn disk_get(&self, digest: &Digest) -> Option<Bytes> {
        let tick = self.tick();
        match self.disk.get(digest, tick) {
            DiskLookup::Hit(data) => {
                Counters::bump(&self.counters.disk_hits);
                self.put_in_memory(*digest, data.clone(), tick);
                Some(data)
            }
            DiskLookup::Miss => None,
            DiskLookup::Corrupt => {
                Counters::bump(&self.counters.corrupt_on_disk);
                None
            }
        }
    }

    /// Memory, then disk; counts a miss if neither has the chunk.
    fn lookup(&self, digest: &Digest) -> Option<Bytes> {
        let found = self.memory_get(digest).or_else(|| self.disk_get(digest));
        if found.is_none() {
            Counters::bump(&self.counters.misses);
        }
        found
    }

    fn put_in_memory(&self, digest: Digest, data: Bytes, tick: u64) {
        let evicted = self.memory.insert(digest, data, tick);
        Counters::add(&self.counters.evictions_memory, evicted.len() as u64);
        // Uses served from memory count as uses on disk, so a chunk that
        // stayed hot in memory is not the first to go from disk.
        for chunk in evicted {
            self.disk.touch(&chunk.digest, chunk.tick);
        }
    }

    /// Verifies a chunk, then stores it in both tiers.
    fn verify_and_store(&self, digest: &Digest, data: Bytes) -> Result<(), CacheError> {
        hashes_to(digest, &data).map_err(|actual| CacheError::Corrupt {
            digest: *digest,
            actual,
        })?;
        let tick = self.tick();
        self.put_in_memory(*digest, data.clone(), tick);
        self.store_on_disk(digest, &data, tick)
    }

    fn store_on_disk(&self, digest: &Digest, data: &[u8], tick: u64) -> Result<(), CacheError> {
        let evicted = self
            .disk
            .insert(digest, data, tick, &|d| self.memory.last_use(d))?;
        Counters::add(&self.counters.evictions_disk, evicted);
        Counters::add(&self.counters.bytes_inserted, data.len() as u64);
        Ok(())
    }

    /// Stores a chunk its caller has verified: in memory now, on disk
    /// once fetching is quiet (see [`write_behind`]), off the reader's path
    /// (a failed disk write only loses the copy on disk).
    fn store_verified_behind(self: &Arc<Self>, digest: Digest, data: Bytes) {
        let tick = self.tick();
        self.put_in_memory(digest, data.clone(), tick);
        self.behind.push((digest, data, tick));
    }

    /// Writes pending disk copies.
    fn write_behind(&self, chunks: Vec<write_behind::Pending>) {
        for (digest, data, tick) in chunks {
            if let Err(error) = self.store_on_disk(&digest, &data, tick) {
                tracing::warn!(%digest, %error, "could not store a fetched chunk on disk");
            }
        }
    }
}

impl Tiers {
    /// Records what memory served since it was loaded, so the disk order
    /// after a restart reflects it, and writes to disk what is only in
    /// RocksDB's memtables. A crash skips this and loses the chunks stored
    /// since the last memtable flush (they are fetched again), never
    /// consistency.
    fn persist(&self) {
        self.write_behind(self.behind.take_all());
        for chunk in self.memory.last_uses() {
            self.disk.touch(&chunk.digest, chunk.tick);
        }
        self.disk.flush();
    }
}

impl Drop for Tiers {
    fn drop(&mut self) {
        self.persist();
        self.behind.stop();
    }
}

/// Whether fetched bytes still need checking against their digest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// Hashed by the cache before it keeps or returns them.
    Unchecked,
    /// Checked by the caller; kept in memory at once, on disk behind.
    Verified,
    /// Checked by the caller and read from a complete layer's blob on
    /// local disk: kept in memory only (a disk copy would duplicate it).
    Local,
}

/// The node's chunk cache: memory and disk tiers, with single-flight fetches
/// of what neither holds. Shared through `Arc` by the FUSE threads and the
/// prefetcher.
pub struct ChunkCache {
    tiers: Arc<Tiers>,
    flights: SingleFlight<Digest, Result<Bytes, CacheError>>,
    /// Frames fetched along with others and not read yet, within a
    /// quarter of the memory tier's bound, node-wide (see [`frames`]).
    frames: frames::Frames,
}

impl ChunkCache {
    /// Makes what the cache holds survive a restart: for a daemon's
    /// shutdown, which may exit before the cache is dropped.
    pub fn persist(&self) {
        self.tiers.persist();
    }

    /// Opens the cache described by `config`, recovering the disk tier's
    /// contents, sizes and eviction order from a previous run (clean exit
    /// or not).
    pub fn open(config: &CacheConfig) -> Result<Arc<ChunkCache>, CacheError> {
        let disk = DiskTier::open(config)?;
        let clock = disk.newest_tick().map_or(0, |tick| tick + 1);
        tracing::info!(
            dir = %config.dir.display(),
            disk_bytes = disk.used_bytes(),
            disk_bound = config.disk_bytes,
            memory_bound = config.memory_bytes,
            "chunk cache open"
        );
        // Pending copies share their bytes with the memory tier; bounded
        // to half of it beyond what it holds.
        let behind = Arc::new(WriteBehind::new(config.memory_bytes / 2));
        let tiers = Arc::new(Tiers {
            memory: MemoryTier::new(config.memory_bytes),
            disk,
            layers: Mutex::new(Ledger::default()),
            counters: Counters::default(),
            clock: AtomicU64::new(clock),
            behind: behind.clone(),
        });
        let writer = Arc::downgrade(&tiers);
        std::thread::Builder::new()
            .name("loci-disk-behind".into())
            .spawn(move || {
                while let Some(chunks) = behind.wait_due() {
                    match writer.upgrade() {
                        Some(tiers) => tiers.write_behind(chunks),
                        None => return,
                    }
                }
            })
            .map_err(|e| CacheError::Open {
                dir: config.dir.clone(),
                source: Arc::new(e),
            })?;
        Ok(Arc::new(ChunkCache {
            tiers,
            flights: SingleFlight::new(),
            frames: frames::Frames::new(config.memory_bytes / 4),
        }))
    }

    /// Memory, then disk (promoting to memory), else runs `fetch` once for
    /// all concurrent callers of the same digest. The fetched bytes are
    /// verified (sha256 == digest) before entering any tier; a mismatch is
    /// an error for every waiter and nothing is cached. Errors from `fetch`
    /// are passed to every waiter and not cached, so the next call retries.
    /// Disk reads and writes run on tokio's blocking pool.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        digest: &Digest,
        fetch: F,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_fetch_with(digest, fetch, Fetched::Unchecked)
            .await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) for a `fetch` that returns only
    /// bytes it has checked against `digest` itself (as the fetcher does,
    /// decoding chunks): they are not hashed again, and reach the disk tier
    /// after the caller has them. Must be called within a tokio runtime.
    pub async fn get_or_fetch_verified<F, Fut, E>(
        &self,
        digest: &Digest,
        fetch: F,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_fetch_with(digest, fetch, Fetched::Verified)
            .await
    }

    /// [`get_or_fetch_verified`](Self::get_or_fetch_verified) for chunks
    /// read from a complete layer's local blob: cached in memory only.
    pub async fn get_or_fetch_local<F, Fut, E>(
        &self,
        digest: &Digest,
        fetch: F,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_fetch_with(digest, fetch, Fetched::Local).await
    }

    async fn get_or_fetch_with<F, Fut, E>(
        &self,
        digest: &Digest,
        fetch: F,
        checked: Fetched,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut fetch = Some(fetch);
        loop {
            if let Some(data) = self.tiers.memory_get(digest) {
                return Ok(data);
            }
            match self.flights.join(*digest) {
                Role::Follower(follower) => {
                    Counters::bump(&self.tiers.counters.coalesced);
                    if let Some(result) = follower.wait().await {
                        return result;
                    }
                    // The leader was cancelled: start over.
                }
                Role::Leader(leader) => {
                    let fetch = fetch.take().expect("a caller leads at most once");
                    let result = self.lead(digest, fetch, checked).await;
                    leader.complete(result.clone());
                    return result;
                }
            }
        }
    }

    /// The leader's part: look again (a previous flight may have just
    /// stored the chunk), then fetch, verify and store.
    async fn lead<F, Fut, E>(
        &self,
        digest: &Digest,
        fetch: F,
        checked: Fetched,
    ) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tiers = Arc::clone(&self.tiers);
        let key = *digest;
        if let Some(data) = blocking(move || tiers.lookup(&key)).await {
            return Ok(data);
        }
        let counters = &self.tiers.counters;
        Counters::bump(&counters.fetches);
        let started = Instant::now();
        let fetched = fetch().await;
        counters.record_fetch_latency(started.elapsed());
        let data = fetched.map_err(|e| {
            Counters::bump(&counters.fetch_errors);
            let source: Arc<dyn std::error::Error + Send + Sync> = Arc::from(e.into());
            tracing::warn!(%digest, error = %crate::error_chain::chain(&*source), "chunk fetch failed");
            CacheError::Fetch {
                digest: *digest,
                source,
            }
        })?;
        Counters::add(&counters.bytes_fetched, data.len() as u64);
        tracing::debug!(%digest, bytes = data.len(), elapsed_us = started.elapsed().as_micros() as u64, "chunk fetched");

        match checked {
            Fetched::Verified => {
                self.tiers.store_verified_behind(key, data.clone());
                return Ok(data);
            }
            Fetched::Local => {
                self.tiers
                    .put_in_memory(key, data.clone(), self.tiers.tick());
                return Ok(data);
            }
            Fetched::Unchecked => {}
        }
        let tiers = Arc::clone(&self.tiers);
        let stored = data.clone();
        match blocking(move || tiers.verify_and_store(&key, stored)).await {
            Ok(()) => Ok(data),
            Err(error @ CacheError::Corrupt { .. }) => {
                Counters::bump(&counters.fetch_errors);
                tracing::warn!(%error, "fetched chunk does not match its digest; not cached");
                Err(error)
            }
            Err(error) => {
                // Verified bytes are good to serve even if the disk write failed.
                tracing::warn!(%digest, %error, "could not store a fetched chunk on disk");
                Ok(data)
            }
        }
    }

    /// The chunk from memory or disk (verified), without fetching.
    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.tiers.lookup(digest)
    }

    /// Whether a tier holds the chunk; no read of the value, no effect on
    /// eviction order. The prefetcher uses it to skip cached chunks.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.tiers.memory.contains(digest) || self.tiers.disk.contains(digest)
    }

    /// Verifies and stores a chunk obtained elsewhere (the prefetcher's
    /// fetches). Bytes not matching the digest are refused.
    pub fn insert(&self, digest: &Digest, data: Bytes) -> Result<(), CacheError> {
        self.tiers.verify_and_store(digest, data)
    }

    /// Stores a chunk the caller has checked against `digest` itself: in
    /// memory at once, on disk in the background (see
    /// [`get_or_fetch_verified`](Self::get_or_fetch_verified)). Must be
    /// called within a tokio runtime.
    pub fn insert_verified(&self, digest: &Digest, data: Bytes) {
        self.tiers.store_verified_behind(*digest, data);
    }

    /// Keeps the compressed, unchecked `frame` of a chunk fetched along
    /// with others, until [`take_frame`](Self::take_frame) (the oldest go
    /// past the bound).
    pub fn keep_frame(&self, digest: Digest, frame: Bytes) {
        self.frames.put(digest, frame);
    }

    /// Whether a frame is kept for `digest`.
    pub fn has_frame(&self, digest: &Digest) -> bool {
        self.frames.contains(digest)
    }

    /// The kept frame for `digest`, taken out: the caller decodes and
    /// verifies it before use.
    pub fn take_frame(&self, digest: &Digest) -> Option<Bytes> {
        self.frames.take(digest)
    }

    /// Keeps a chunk the caller has checked, read from a complete layer's
    /// local blob, in memory only (see [`Fetched::Local`]).
    pub fn insert_in_memory(&self, digest: &Digest, data: Bytes) {
        self.tiers.put_in_memory(*digest, data, self.tiers.tick());
    }

    /// Whether the disk tier has no room for another chunk as large as the
    /// largest it holds without evicting: the prefetcher stops there rather
    /// than evict chunks that were read for ones that might be.
    pub fn disk_full(&self) -> bool {
        self.tiers.disk.is_full()
    }

    /// A snapshot of the counters and the tiers' sizes.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self
            .tiers
            .counters
            .snapshot(self.tiers.memory.bytes(), self.tiers.disk.used_bytes());
        let ledger = self.ledger();
        stats.layers_bytes = ledger.bytes_except(None);
        stats.layers_evicted = ledger.evicted;
        stats.disk_bound = self.tiers.disk.bound();
        stats
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.tiers.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants completed layer `id` (a snapshot) `claim.bytes` of the disk
    /// budget, making room first by evicting what was used least recently:
    /// chunks, and completed layers no container uses (whose `evict` is
    /// called). Fails, evicting nothing more, when layers in use leave too
    /// little. Blocking (RocksDB, and the evictions' file removals).
    pub fn claim_layer(&self, id: u64, claim: LayerClaim) -> Result<(), CacheError> {
        let disk = &self.tiers.disk;
        let bound = disk.bound();
        let mut ledger = self.ledger();
        let no_room = |ledger: &Ledger| CacheError::NoRoom {
            bytes: claim.bytes,
            bound,
            in_use: ledger.bytes_except(Some(id)),
        };
        if claim.bytes > bound {
            return Err(no_room(&ledger));
        }
        loop {
            let layers = ledger.bytes_except(Some(id));
            let chunks = disk.used_bytes();
            if chunks + layers + claim.bytes <= bound {
                break;
            }
            let layer = ledger.oldest_evictable(id);
            let chunk = disk.oldest_tick();
            match (layer, chunk) {
                (Some((victim, tick)), chunk) if chunk.is_none_or(|c| tick <= c) => {
                    ledger.evict(victim);
                }
                (layer, Some(_)) => {
                    let target = bound.saturating_sub(layers + claim.bytes);
                    let freed = disk.shrink(target, layer.map(|(_, tick)| tick), &|d| {
                        self.tiers.memory.last_use(d)
                    })?;
                    if freed == 0 && layer.is_none() {
                        return Err(no_room(&ledger));
                    }
                }
                (_, None) => return Err(no_room(&ledger)),
            }
        }
        let tick = self.tiers.tick();
        ledger.grant(id, claim, tick);
        disk.set_reserved(ledger.bytes_except(None));
        Ok(())
    }

    /// Marks completed layer `id` used now (a container started on it).
    pub fn touch_layer(&self, id: u64) {
        let tick = self.tiers.tick();
        self.ledger().touch(id, tick);
    }

    /// Gives back layer `id`'s share of the budget: its snapshot was
    /// removed, and its data with it.
    pub fn release_layer(&self, id: u64) {
        let mut ledger = self.ledger();
        if ledger.release(id) {
            self.tiers.disk.set_reserved(ledger.bytes_except(None));
        }
    }
}

/// Runs blocking work (RocksDB, hashing) off the async workers; a panic in
/// it resumes in the caller.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::disk::{CHUNKS_CF, RECENCY_CF};
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, Options, DB};

    fn config(dir: &std::path::Path) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            memory_bytes: 0, // every read goes to disk
            disk_bytes: 1 << 24,
            ..CacheConfig::default()
        }
    }

    /// Overwrites a stored chunk's value through a raw RocksDB handle, as a
    /// bad disk or a stray writer would.
    fn overwrite_on_disk(dir: &std::path::Path, digest: &Digest, garbage: &[u8]) {
        let families = [CHUNKS_CF, RECENCY_CF]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&Options::default(), dir, families).unwrap();
        db.put_cf(db.cf_handle(CHUNKS_CF).unwrap(), digest.0, garbage)
            .unwrap();
    }

    #[tokio::test]
    async fn a_chunk_corrupted_on_disk_is_not_served_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let good = Bytes::from(vec![0x5a; 64 << 10]);
        let digest = Digest::of(&good);
        let kept = Bytes::from(vec![0xa5; 32 << 10]);
        {
            let cache = ChunkCache::open(&config(dir.path())).unwrap();
            cache.insert(&digest, good.clone()).unwrap();
            cache.insert(&Digest::of(&kept), kept.clone()).unwrap();
        }
        let mut garbage = good.to_vec();
        garbage[1000] ^= 1;
        overwrite_on_disk(dir.path(), &digest, &garbage);

        let cache = ChunkCache::open(&config(dir.path())).unwrap();
        assert!(cache.contains(&digest), "bookkeeping still lists it");
        assert_eq!(cache.get(&digest), None);
        let stats = cache.stats();
        assert_eq!((stats.corrupt_on_disk, stats.disk_hits), (1, 0));
        assert!(!cache.contains(&digest));
        assert_eq!(stats.disk_bytes, kept.len() as u64);
        // The other chunk is untouched, and the bad one is refetched.
        assert_eq!(cache.get(&Digest::of(&kept)), Some(kept.clone()));
        let refetched = cache
            .get_or_fetch(&digest, || async { Ok::<_, String>(good.clone()) })
            .await
            .unwrap();
        assert_eq!(refetched, good);
        assert_eq!(cache.stats().fetches, 1);
        drop(cache);

        // The deletion and the refetch were persisted.
        let cache = ChunkCache::open(&config(dir.path())).unwrap();
        assert_eq!(cache.get(&digest), Some(good.clone()));
        assert_eq!(cache.stats().disk_bytes, (good.len() + kept.len()) as u64);
    }

    /// The disk budget holds under a workload larger than it: chunks and
    /// completed layers are evicted together, least recently used first,
    /// and a layer a container uses never is.
    #[test]
    fn completed_layers_and_chunks_share_one_budget_in_lru_order() {
        use std::sync::atomic::AtomicBool;
        const K: u64 = 1 << 10;
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(&CacheConfig {
            dir: dir.path().to_path_buf(),
            memory_bytes: 0,
            disk_bytes: 1024 * K,
            ..CacheConfig::default()
        })
        .unwrap();
        let evicted: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let layer = |name: &str, kib: u64, in_use: &Arc<AtomicBool>| {
            let (log, name, in_use) = (evicted.clone(), name.to_string(), in_use.clone());
            LayerClaim {
                bytes: kib * K,
                evict: Box::new(move || log.lock().unwrap().push(name.clone())),
                in_use: Box::new(move || in_use.load(Ordering::Relaxed)),
            }
        };
        let chunk = |n: u8| Bytes::from(vec![n; 128 << 10]);
        let within_budget = |cache: &ChunkCache| {
            let stats = cache.stats();
            assert!(
                stats.disk_bytes + stats.layers_bytes <= stats.disk_bound,
                "{} + {} over {}",
                stats.disk_bytes,
                stats.layers_bytes,
                stats.disk_bound
            );
        };
        let idle = Arc::new(AtomicBool::new(false));
        let a_in_use = Arc::new(AtomicBool::new(false));
        let d_in_use = Arc::new(AtomicBool::new(false));
        for n in 1..=4 {
            cache.insert(&Digest::of(&chunk(n)), chunk(n)).unwrap();
        }
        cache.claim_layer(1, layer("A", 256, &a_in_use)).unwrap();
        cache.claim_layer(2, layer("B", 256, &idle)).unwrap();
        within_budget(&cache);
        // A fifth chunk fits only in what the layers leave: the oldest goes.
        cache.insert(&Digest::of(&chunk(5)), chunk(5)).unwrap();
        assert!(!cache.contains(&Digest::of(&chunk(1))));
        within_budget(&cache);
        // A is used again; C needs 512 KiB: chunks 2-4 (older than B)
        // go, then B, not chunk 5 (newer than B) nor A.
        cache.touch_layer(1);
        cache.claim_layer(3, layer("C", 512, &idle)).unwrap();
        assert_eq!(*evicted.lock().unwrap(), ["B"]);
        let kept: Vec<bool> = (2..=5)
            .map(|n| cache.contains(&Digest::of(&chunk(n))))
            .collect();
        assert_eq!(kept, [false, false, false, true]);
        within_budget(&cache);
        // With A in use, D takes chunk 5 and C, never A.
        a_in_use.store(true, Ordering::Relaxed);
        cache.claim_layer(4, layer("D", 768, &d_in_use)).unwrap();
        assert_eq!(*evicted.lock().unwrap(), ["B", "C"]);
        assert!(!cache.contains(&Digest::of(&chunk(5))));
        within_budget(&cache);
        // Everything left is in use: E is refused and nothing is evicted.
        d_in_use.store(true, Ordering::Relaxed);
        let err = cache.claim_layer(5, layer("E", 512, &idle)).unwrap_err();
        assert!(matches!(err, CacheError::NoRoom { .. }), "{err}");
        assert_eq!(evicted.lock().unwrap().len(), 2);
        // A removed snapshot gives its share back; chunks may use it.
        cache.release_layer(4);
        let stats = cache.stats();
        assert_eq!((stats.layers_bytes, stats.layers_evicted), (256 * K, 2));
        for n in 6..=11 {
            cache.insert(&Digest::of(&chunk(n)), chunk(n)).unwrap();
        }
        assert_eq!(cache.stats().disk_bytes, 768 * K);
        within_budget(&cache);
    }
}
