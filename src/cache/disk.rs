//! Tier 2: chunks in RocksDB on local disk, bounded in bytes, least recently
//! used evicted first.
//!
//! Two column families: `chunks` maps a digest's 32 bytes to the chunk's
//! bytes; `recency` maps them to the chunk's size and last use (16 bytes),
//! so that the size bookkeeping and the eviction order can be rebuilt at
//! open by scanning small values instead of every chunk. A chunk and its
//! recency entry are written and deleted in one atomic `WriteBatch`; a later
//! use only rewrites the recency entry, in batches, so a crash loses at most
//! the last batch of uses (the order becomes slightly stale, never wrong
//! about what is stored or how big it is).

use super::config::CacheConfig;
use super::recency::{Entry, RecencyIndex};
use super::{hashes_to, CacheError};
use crate::digest::Digest;
use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options,
    ReadOptions, WriteBatch, DB,
};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Column family of chunk bytes, keyed by the digest's raw 32 bytes.
pub(crate) const CHUNKS_CF: &str = "chunks";
/// Column family of recency entries (size, last use), same keys.
pub(crate) const RECENCY_CF: &str = "recency";
/// How many uses are collected before their recency entries are written.
const RECENCY_SAVE_BATCH: usize = 256;

/// What a disk read found.
#[derive(Debug)]
pub(crate) enum DiskLookup {
    /// The chunk, verified against its digest.
    Hit(Bytes),
    /// Not stored.
    Miss,
    /// Stored but unreadable or not matching its digest; it has been
    /// deleted (and a warning logged), so it reads as a miss from now on.
    Corrupt,
}

struct State {
    recency: RecencyIndex,
    /// Chunks whose last use changed since their recency entry was written.
    unsaved: HashSet<Digest>,
}

/// The RocksDB disk tier with its LRU bookkeeping.
pub(crate) struct DiskTier {
    db: DB,
    /// The node's disk budget, shared with completed layers.
    bound: u64,
    /// Bytes of the budget completed layers hold now; chunks get the rest.
    reserved: AtomicU64,
    state: Mutex<State>,
    dir: std::path::PathBuf,
    min_free: u64,
    /// Set at the first failed write: RocksDB may abort the process on a
    /// later write to a file whose write failed, so the tier stops writing
    /// until the next start (reads go on).
    broken: AtomicBool,
    /// When free space was last checked (ms since open), and whether it
    /// was enough.
    space_checked: AtomicU64,
    space_ok: AtomicBool,
    opened: Instant,
}

impl DiskTier {
    /// Opens (or creates) the database in `config.dir` and rebuilds the size
    /// and recency bookkeeping from the `recency` column family. If the
    /// stored chunks exceed the configured bound (it shrank), the least
    /// recently used are evicted now.
    pub fn open(config: &CacheConfig) -> Result<DiskTier, CacheError> {
        let open_error = |source: Arc<dyn std::error::Error + Send + Sync>| CacheError::Open {
            dir: config.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.dir).map_err(|e| open_error(Arc::new(e)))?;
        // Cached chunks are other people's image content: root's alone.
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| open_error(Arc::new(e)))?;
        let (db_options, families) = rocksdb_options(config);
        let db = DB::open_cf_descriptors(&db_options, &config.dir, families)
            .map_err(|e| open_error(Arc::new(e)))?;
        let tier = DiskTier {
            db,
            bound: config.disk_bytes,
            reserved: AtomicU64::new(0),
            state: Mutex::new(State {
                recency: RecencyIndex::default(),
                unsaved: HashSet::new(),
            }),
            dir: config.dir.clone(),
            min_free: config.disk_min_free_bytes,
            broken: AtomicBool::new(false),
            space_checked: AtomicU64::new(0),
            space_ok: AtomicBool::new(true),
            opened: Instant::now(),
        };
        tier.load_recency()?;
        tier.evict_to_bound()?;
        Ok(tier)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation keeps the index consistent statement by statement.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn load_recency(&self) -> Result<(), CacheError> {
        let mut state = self.lock();
        let mut malformed = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(RECENCY_CF), IteratorMode::Start)
        {
            let (key, value) = item.map_err(|source| CacheError::Db {
                context: "scanning the recency column family",
                source,
            })?;
            match (decode_key(&key), decode_entry(&value)) {
                (Some(digest), Some(entry)) => state.recency.insert(digest, entry),
                _ => malformed.push(key),
            }
        }
        if !malformed.is_empty() {
            tracing::warn!(
                count = malformed.len(),
                "dropping malformed recency entries and their chunks"
            );
            let mut batch = WriteBatch::default();
            for key in &malformed {
                batch.delete_cf(self.cf(CHUNKS_CF), key);
                batch.delete_cf(self.cf(RECENCY_CF), key);
            }
            self.write(batch, "dropping malformed recency entries")?;
        }
        Ok(())
    }

    fn evict_to_bound(&self) -> Result<(), CacheError> {
        let mut state = self.lock();
        let evicted = self.make_room(&mut state, 0, &|_| None, WriteBatch::default())?;
        if evicted > 0 {
            tracing::info!(evicted, bound = self.bound, "disk tier shrunk to its bound");
        }
        Ok(())
    }

    /// The whole disk budget (chunks and completed layers).
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// What chunks may take: the budget less what completed layers hold.
    fn allowance(&self) -> u64 {
        self.bound
            .saturating_sub(self.reserved.load(Ordering::Relaxed))
    }

    /// Sets the bytes completed layers hold; chunks give way (see
    /// [`shrink`](Self::shrink)).
    pub fn set_reserved(&self, bytes: u64) {
        self.reserved.store(bytes, Ordering::Relaxed);
    }

    /// When the least recently used chunk was last used.
    pub fn oldest_tick(&self) -> Option<u64> {
        Some(self.lock().recency.oldest()?.1.tick)
    }

    /// Evicts least recently used chunks until at most `target` bytes are
    /// stored, stopping at the first used at or after `older_than`.
    /// Returns the bytes freed.
    pub fn shrink(
        &self,
        target: u64,
        older_than: Option<u64>,
        last_use_elsewhere: &dyn Fn(&Digest) -> Option<u64>,
    ) -> Result<u64, CacheError> {
        let mut state = self.lock();
        let before = state.recency.total_bytes();
        self.evict_while(
            &mut state,
            &|total| total > target,
            older_than,
            last_use_elsewhere,
            WriteBatch::default(),
        )?;
        Ok(before - state.recency.total_bytes())
    }

    fn write(&self, batch: WriteBatch, context: &'static str) -> Result<(), CacheError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(CacheError::DiskStopped { context });
        }
        // No write-ahead log: a cache loses nothing it cannot fetch again
        // by losing its last writes in a crash (a chunk and its recency
        // entry are in one batch, so they go together), and on a full disk
        // a failed WAL write makes RocksDB abort the process (an assertion
        // in Debian's build) instead of returning an error. Memtables are
        // flushed at shutdown ([`DiskTier::flush`]) and when full.
        let mut options = rocksdb::WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(|source| {
            if !self.broken.swap(true, Ordering::Relaxed) {
                tracing::error!(dir = %self.dir.display(), error = %source, "the disk cache failed a write and takes no more until loci restarts; chunks are served from memory and the registry");
            }
            CacheError::Db { context, source }
        })
    }

    /// Writes what is only in memory (the memtables, as writes skip the
    /// WAL) to disk, so a restart finds it.
    pub fn flush(&self) {
        self.save_recency();
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = self
            .db
            .flush_cf(self.cf(CHUNKS_CF))
            .and_then(|()| self.db.flush_cf(self.cf(RECENCY_CF)))
        {
            tracing::warn!(%error, "could not flush the disk cache; its last chunks are lost at exit");
        }
    }

    /// Whether the disk has room for more chunks: at least `min_free`
    /// bytes free on the cache's filesystem, checked at most every 500 ms.
    fn has_room(&self) -> bool {
        let now = self.opened.elapsed().as_millis() as u64;
        let checked = self.space_checked.load(Ordering::Relaxed);
        if now.saturating_sub(checked) >= 500 || checked == 0 {
            self.space_checked.store(now.max(1), Ordering::Relaxed);
            let ok = nix::sys::statvfs::statvfs(&self.dir)
                .map(|s| s.blocks_available() * s.fragment_size() >= self.min_free)
                .unwrap_or(false);
            if self.space_ok.swap(ok, Ordering::Relaxed) != ok {
                if ok {
                    tracing::info!(dir = %self.dir.display(), "the disk cache has room again");
                } else {
                    tracing::warn!(dir = %self.dir.display(), min_free = self.min_free, "the disk cache's filesystem is nearly full; chunks are not written to disk until it has room");
                }
            }
        }
        self.space_ok.load(Ordering::Relaxed)
    }

    /// Whether the chunk is stored; answered from the bookkeeping, no I/O.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().recency.get(digest).is_some()
    }

    /// Bytes of chunk data stored.
    pub fn used_bytes(&self) -> u64 {
        self.lock().recency.total_bytes()
    }

    /// Whether storing one more chunk as large as the largest seen would
    /// evict something.
    pub fn is_full(&self) -> bool {
        let state = self.lock();
        let room_wanted = state.recency.largest_chunk().max(1);
        state.recency.total_bytes().saturating_add(room_wanted) > self.allowance()
    }

    /// The newest use recorded, so the shared clock resumes past it.
    pub fn newest_tick(&self) -> Option<u64> {
        self.lock().recency.newest_tick()
    }

    /// Reads and verifies a chunk, marking it used at `tick` on a hit.
    pub fn get(&self, digest: &Digest, tick: u64) -> DiskLookup {
        if !self.contains(digest) {
            return DiskLookup::Miss;
        }
        let mut read_options = ReadOptions::default();
        // The memory tier keeps what was read; RocksDB's block cache is
        // left to index and filter blocks.
        read_options.fill_cache(false);
        match self
            .db
            .get_cf_opt(self.cf(CHUNKS_CF), digest.0, &read_options)
        {
            Ok(Some(value)) => match hashes_to(digest, &value) {
                Ok(()) => {
                    self.touch(digest, tick);
                    DiskLookup::Hit(Bytes::from(value))
                }
                Err(actual) => {
                    tracing::warn!(%digest, %actual, "chunk on disk does not match its digest; deleting it");
                    self.discard(digest);
                    DiskLookup::Corrupt
                }
            },
            Ok(None) => {
                tracing::warn!(%digest, "recency entry without a chunk; dropping it");
                self.discard(digest);
                DiskLookup::Miss
            }
            Err(error) => {
                tracing::warn!(%digest, %error, "chunk on disk is unreadable; deleting it");
                self.discard(digest);
                DiskLookup::Corrupt
            }
        }
    }

    fn discard(&self, digest: &Digest) {
        if let Err(error) = self.remove(digest) {
            tracing::warn!(%digest, %error, "could not delete a bad chunk");
        }
    }

    /// Deletes a chunk and its bookkeeping.
    pub fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        let mut state = self.lock();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CHUNKS_CF), digest.0);
        batch.delete_cf(self.cf(RECENCY_CF), digest.0);
        self.write(batch, "deleting a chunk")?;
        state.recency.remove(digest);
        state.unsaved.remove(digest);
        Ok(())
    }

    /// Records a use of a stored chunk at `tick` (ignored if older than the
    /// one recorded, or if the chunk is not stored).
    pub fn touch(&self, digest: &Digest, tick: u64) {
        let mut state = self.lock();
        if state.recency.touch(digest, tick).is_some() {
            state.unsaved.insert(*digest);
            if state.unsaved.len() >= RECENCY_SAVE_BATCH {
                self.save_recency_locked(&mut state);
            }
        }
    }

    /// Writes the recency entries of chunks used since the last save.
    pub fn save_recency(&self) {
        let mut state = self.lock();
        self.save_recency_locked(&mut state);
    }

    fn save_recency_locked(&self, state: &mut State) {
        if self.broken.load(Ordering::Relaxed) {
            state.unsaved.clear();
            return;
        }
        let mut batch = WriteBatch::default();
        for digest in state.unsaved.drain() {
            if let Some(entry) = state.recency.get(&digest) {
                batch.put_cf(self.cf(RECENCY_CF), digest.0, encode_entry(entry));
            }
        }
        // Losing uses only makes the eviction order staler; not worth
        // failing a read over.
        if let Err(error) = self.write(batch, "saving chunk uses") {
            tracing::warn!(%error, "could not save chunk uses");
        }
    }

    /// Stores a verified chunk used at `tick`, evicting least recently used
    /// chunks in the same atomic write until it fits. `last_use_elsewhere`
    /// tells when the memory tier last served a chunk, so that a chunk hot
    /// in memory is not evicted from disk for looking idle there. Returns
    /// the number of chunks evicted. A chunk larger than the whole tier is
    /// not stored.
    pub fn insert(
        &self,
        digest: &Digest,
        data: &[u8],
        tick: u64,
        last_use_elsewhere: &dyn Fn(&Digest) -> Option<u64>,
    ) -> Result<u64, CacheError> {
        let size = data.len() as u64;
        let mut state = self.lock();
        if state.recency.get(digest).is_some() {
            drop(state);
            self.touch(digest, tick);
            return Ok(0);
        }
        if size > self.allowance() {
            tracing::debug!(%digest, size, allowance = self.allowance(), "chunk larger than the disk tier's share of the budget; not stored");
            return Ok(0);
        }
        if !self.has_room() || self.broken.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let entry = Entry { size, tick };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CHUNKS_CF), digest.0, data);
        batch.put_cf(self.cf(RECENCY_CF), digest.0, encode_entry(entry));
        let evicted = self.make_room(&mut state, size, last_use_elsewhere, batch)?;
        state.recency.insert(*digest, entry);
        Ok(evicted)
    }

    /// Evicts until `size` more bytes fit, writing the deletions together
    /// with `batch`. The index changes only once the write succeeded.
    fn make_room(
        &self,
        state: &mut State,
        size: u64,
        last_use_elsewhere: &dyn Fn(&Digest) -> Option<u64>,
        batch: WriteBatch,
    ) -> Result<u64, CacheError> {
        let allowance = self.allowance();
        self.evict_while(
            state,
            &|total| total + size > allowance,
            None,
            last_use_elsewhere,
            batch,
        )
    }

    /// Evicts the least recently used chunk while `over` says the stored
    /// bytes are too many (and it was used before `older_than`), writing the
    /// deletions with `batch`. Returns the number evicted.
    fn evict_while(
        &self,
        state: &mut State,
        over: &dyn Fn(u64) -> bool,
        older_than: Option<u64>,
        last_use_elsewhere: &dyn Fn(&Digest) -> Option<u64>,
        mut batch: WriteBatch,
    ) -> Result<u64, CacheError> {
        let mut victims = Vec::new();
        while over(state.recency.total_bytes()) {
            let Some((victim, entry)) = state.recency.oldest() else {
                break;
            };
            if older_than.is_some_and(|limit| entry.tick >= limit) {
                break;
            }
            if let Some(used) = last_use_elsewhere(&victim).filter(|&used| used > entry.tick) {
                state.recency.touch(&victim, used);
                state.unsaved.insert(victim);
                continue;
            }
            state.recency.remove(&victim);
            batch.delete_cf(self.cf(CHUNKS_CF), victim.0);
            batch.delete_cf(self.cf(RECENCY_CF), victim.0);
            victims.push((victim, entry));
        }
        if let Err(error) = self.write(batch, "storing a chunk") {
            for (victim, entry) in victims {
                state.recency.insert(victim, entry);
            }
            return Err(error);
        }
        for (victim, _) in &victims {
            state.unsaved.remove(victim);
        }
        Ok(victims.len() as u64)
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.save_recency();
    }
}

fn rocksdb_options(config: &CacheConfig) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let knobs = &config.rocksdb;
    let block_cache = Cache::new_lru_cache(knobs.block_cache_bytes as usize);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&block_cache);
    table.set_cache_index_and_filter_blocks(true);

    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(knobs.max_background_jobs as i32);
    // The small recency family would otherwise pin old WAL files until its
    // memtable fills; cap the WAL so both families get flushed.
    db.set_max_total_wal_size(4 * knobs.write_buffer_bytes);

    let mut chunks = Options::default();
    chunks.set_block_based_table_factory(&table);
    chunks.set_write_buffer_size(knobs.write_buffer_bytes as usize);
    chunks.set_compression_type(knobs.compression.into());

    let mut recency = Options::default();
    recency.set_block_based_table_factory(&table);
    recency.set_compression_type(rocksdb::DBCompressionType::None);

    let families = vec![
        ColumnFamilyDescriptor::new(CHUNKS_CF, chunks),
        ColumnFamilyDescriptor::new(RECENCY_CF, recency),
    ];
    (db, families)
}

fn decode_key(key: &[u8]) -> Option<Digest> {
    Some(Digest(key.try_into().ok()?))
}

fn encode_entry(entry: Entry) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&entry.size.to_le_bytes());
    out[8..].copy_from_slice(&entry.tick.to_le_bytes());
    out
}

fn decode_entry(value: &[u8]) -> Option<Entry> {
    let value: &[u8; 16] = value.try_into().ok()?;
    let (size, tick) = value.split_at(8);
    Some(Entry {
        size: u64::from_le_bytes(size.try_into().ok()?),
        tick: u64::from_le_bytes(tick.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recency_entries_round_trip() {
        let entry = Entry {
            size: 262_144,
            tick: u64::MAX - 3,
        };
        assert_eq!(decode_entry(&encode_entry(entry)), Some(entry));
        assert_eq!(decode_entry(&[0u8; 15]), None);
        assert_eq!(decode_key(&[7u8; 31]), None);
    }
}
