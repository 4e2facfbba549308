//! Fetching chunks of converted layers: through the node's chunk cache,
//! with neighbouring missing chunks coalesced into one range request, every
//! chunk verified before use, and a deadline on every read.

mod complete;
mod content;
mod open;

pub use complete::{
    partial_path, CompletionConfig, CompletionError, CompletionReport, CompletionStart,
};
pub use content::Content;
pub use open::{
    decode_toc_tail, fetch_toc, fetch_toc_tail, open_image, open_layer, open_layer_from,
    open_layer_sized, toc_location, toc_location_in, LayerError, OpenedImage, TocTail,
};

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::format::{decode_chunk, Chunk};
use crate::image::ImageStore;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How chunks are fetched.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Missing chunks closer than this in the blob are fetched in one
    /// request, the gap included (bounded over-read).
    pub max_gap_bytes: u64,
    /// Upper bound of one coalesced request.
    pub max_request_bytes: u64,
    /// A read that must fetch also fetches the chunks that follow it in
    /// the blob, up to this many bytes from the first one fetched: files
    /// stored together (a package's modules, a library and its data) are
    /// mostly read together, and one larger request costs far less than
    /// many small ones. 0 turns it off.
    pub amplify_bytes: u64,
    /// A read that cannot be served within this fails with EIO.
    pub read_timeout_secs: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_gap_bytes: 64 << 10,
            max_request_bytes: 8 << 20,
            amplify_bytes: 1 << 20,
            read_timeout_secs: 30,
        }
    }
}

/// One converted layer to read from: where its blob is, and its chunks.
#[derive(Clone)]
pub struct RemoteLayer {
    /// The registry (or layout) holding the blob.
    pub store: ImageStore,
    /// The blob's digest.
    pub digest: Digest,
    /// The layer's chunk table, from its TOC.
    pub chunks: Arc<[Chunk]>,
}

/// Why a read could not be served. Every variant names the layer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry failed, or a chunk failed verification, or the cache.
    #[error("layer {layer}: chunk {chunk}")]
    Chunk {
        layer: Digest,
        chunk: Digest,
        #[source]
        source: crate::cache::CacheError,
    },
    /// The read took longer than the configured deadline.
    #[error("layer {layer}: read not served within {after:?}")]
    Timeout { layer: Digest, after: Duration },
    /// The layer's content contradicts what its image claims (found when
    /// it was completed): it is out of service.
    #[error("layer {layer} is out of service: {reason}")]
    Refused { layer: Digest, reason: String },
    /// A chunk the read needs failed less than [`FAIL_FAST`] ago.
    #[error("layer {layer}: chunk {chunk} failed less than {FAIL_FAST:?} ago")]
    FailedLately { layer: Digest, chunk: Digest },
}

/// Counters of what was fetched, for `--stats` and metrics.
#[derive(Default)]
pub struct FetchStats {
    /// Range requests sent.
    pub requests: AtomicU64,
    /// Bytes received from the registry.
    pub bytes_fetched: AtomicU64,
    /// Chunks received and verified.
    pub chunks_fetched: AtomicU64,
    /// Chunks that failed verification.
    pub corrupt_chunks: AtomicU64,
    /// Reads that failed.
    pub failed_reads: AtomicU64,
    /// Sum and count of request latencies, in microseconds.
    pub latency_us_sum: AtomicU64,
    /// Largest request latency, in microseconds.
    pub latency_us_max: AtomicU64,
    /// Chunks on-demand reads fetched (with their neighbours and
    /// readahead) that a followed start trace holds: the prefetch had not
    /// brought them yet.
    pub traced_demand_chunks: AtomicU64,
    /// Chunks on-demand reads fetched that no followed trace holds: many
    /// of them say the trace covers little of this start.
    pub untraced_demand_chunks: AtomicU64,
    /// Bytes fetched by the layer's background completion.
    pub completion_bytes: AtomicU64,
    /// 1 once the layer's completion found its content is not what the
    /// image claims (the layer is out of service).
    pub refused: AtomicU64,
}

/// A point-in-time copy of [`FetchStats`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchStatsSnapshot {
    /// Range requests sent.
    pub requests: u64,
    /// Bytes received from the registry.
    pub bytes_fetched: u64,
    /// Chunks received and verified.
    pub chunks_fetched: u64,
    /// Chunks that failed verification.
    pub corrupt_chunks: u64,
    /// Reads that failed.
    pub failed_reads: u64,
    /// Mean request latency, in microseconds.
    pub mean_latency_us: u64,
    /// Largest request latency, in microseconds.
    pub max_latency_us: u64,
    /// See [`FetchStats::traced_demand_chunks`].
    pub traced_demand_chunks: u64,
    /// See [`FetchStats::untraced_demand_chunks`].
    pub untraced_demand_chunks: u64,
    /// See [`FetchStats::completion_bytes`].
    pub completion_bytes: u64,
    /// See [`FetchStats::refused`].
    pub refused: u64,
}

impl FetchStats {
    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> FetchStatsSnapshot {
        let requests = self.requests.load(Ordering::Relaxed);
        FetchStatsSnapshot {
            requests,
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            chunks_fetched: self.chunks_fetched.load(Ordering::Relaxed),
            corrupt_chunks: self.corrupt_chunks.load(Ordering::Relaxed),
            failed_reads: self.failed_reads.load(Ordering::Relaxed),
            mean_latency_us: self.latency_us_sum.load(Ordering::Relaxed) / requests.max(1),
            max_latency_us: self.latency_us_max.load(Ordering::Relaxed),
            traced_demand_chunks: self.traced_demand_chunks.load(Ordering::Relaxed),
            untraced_demand_chunks: self.untraced_demand_chunks.load(Ordering::Relaxed),
            completion_bytes: self.completion_bytes.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Serves chunk reads for every layer of a node, through one cache.
pub struct Fetcher {
    cache: Arc<ChunkCache>,
    config: FetchConfig,
    /// On-demand reads being served now; prefetch backs off while any is.
    demand: std::sync::atomic::AtomicUsize,
    /// The chunks of the start traces being followed (bounded by
    /// [`MAX_TRACED_CHUNKS`]); `following` says whether there are any, so
    /// reads without a trace take no lock.
    traced: std::sync::RwLock<HashSet<Digest>>,
    following: AtomicBool,
    /// Untraced on-demand chunks at which the next "trace covers little"
    /// warning is logged (doubling each time; 0: none logged yet).
    next_coverage_warning: AtomicU64,
    /// What was fetched so far.
    pub stats: FetchStats,
    /// Chunks whose read failed lately, and when: a read that needs one of
    /// them within [`FAIL_FAST`] fails at once.
    failed: std::sync::Mutex<HashMap<Digest, Instant>>,
    /// When a read last failed ([`Fetcher::clock_ms`]; 0: never), so reads
    /// skip `failed` when none did lately.
    last_failure_ms: AtomicU64,
    started: Instant,
    /// Chunks of the runs being fetched now: the cache's single flight
    /// covers only a run's first chunk, so a read of any of them waits for
    /// the run here instead of asking the registry for the same bytes
    /// again (over a link the prefetch already fills).
    run_members: std::sync::Mutex<HashMap<Digest, tokio::sync::watch::Receiver<()>>>,
    /// The layer's blob, complete and verified on local disk: reads come
    /// from it instead of the registry.
    local: std::sync::RwLock<Option<Arc<std::fs::File>>>,
    /// Why the layer is out of service, once its completion found it lies.
    refused: std::sync::OnceLock<String>,
    /// When ([`Fetcher::clock_ms`]) a read last had to fetch: completion
    /// waits for the start to be over.
    last_fetching_read_ms: AtomicU64,
}

/// A run's members in [`Fetcher::run_members`] while its request is in
/// flight, each with its own sender: a chunk is released (its waiters
/// woken, to find it in the cache) as soon as its bytes arrived and were
/// stored, and dropping this (the run done, failed or cancelled) releases
/// the rest, whose waiters then find them in the cache or fetch them.
struct RunMembers<'a> {
    fetcher: &'a Fetcher,
    senders: std::sync::Mutex<HashMap<Digest, tokio::sync::watch::Sender<()>>>,
}

impl RunMembers<'_> {
    /// Whether a read waits for `digest` (holds a receiver besides the
    /// one in the fetcher's map).
    fn is_waited(&self, digest: &Digest) -> bool {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .is_some_and(|s| s.receiver_count() > 1)
    }

    /// Wakes the waiters of `digest` (stored, or given up on).
    fn release(&self, digest: &Digest) {
        let sender = self
            .senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        if sender.is_some() {
            self.fetcher.members().remove(digest);
        }
    }
}

impl Drop for RunMembers<'_> {
    fn drop(&mut self) {
        let senders = std::mem::take(self.senders.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut members = self.fetcher.members();
        for digest in senders.keys() {
            members.remove(digest);
        }
    }
}

/// Decodes a run's chunks in blob order as the response body grows, so
/// each is stored and its waiters woken when its own bytes are in, not
/// when the run's last bytes are (requests in flight share the link: a
/// 1 MiB run's last bytes come long after its first chunk's).
struct RunDecoder<'a> {
    fetcher: &'a Fetcher,
    layer: &'a RemoteLayer,
    run: &'a [u32],
    /// Blob offset of the run's first byte.
    start: u64,
    /// Position in `run` of the next chunk to decode.
    next: usize,
    from_local: bool,
    /// The run is of another blob holding this layer's chunks (a trace's
    /// pack): every chunk is decoded and stored, none is the leader of a
    /// single flight or kept as a frame this layer's table cannot check.
    foreign: bool,
    members: Option<&'a RunMembers<'a>>,
    /// The first chunk, decoded (returned to the run's single flight).
    leader: Option<Result<Bytes, crate::format::FormatError>>,
}

impl RunDecoder<'_> {
    /// Decodes every chunk `body` (the run's bytes from its start) now
    /// holds whole and that is not decoded yet.
    fn take(&mut self, body: &[u8]) {
        while let Some(&i) = self.run.get(self.next) {
            let chunk = &self.layer.chunks[i as usize];
            let at = (chunk.blob_offset - self.start) as usize;
            let Some(frame) = body.get(at..at + chunk.compressed_len as usize) else {
                return;
            };
            let is_leader = self.next == 0 && !self.foreign;
            self.next += 1;
            let cache = self.fetcher.cache();
            // A chunk no one waits for yet, that a followed trace does not
            // foresee (a neighbour the read's amplification brought) is
            // kept as it came until something reads it.
            let keep = !is_leader
                && !self.from_local
                && !self.foreign
                && !self.members.is_some_and(|m| m.is_waited(&chunk.digest))
                && self.fetcher.count_traced(self.layer, &[i]) == 0;
            if keep {
                cache.keep_frame(chunk.digest, Bytes::copy_from_slice(frame));
                if let Some(members) = self.members {
                    members.release(&chunk.digest);
                }
                continue;
            }
            match decode_chunk(frame, chunk) {
                Ok(data) => {
                    let data = Bytes::from(data);
                    self.fetcher
                        .stats
                        .chunks_fetched
                        .fetch_add(1, Ordering::Relaxed);
                    // decode_chunk checked it against its digest. The first
                    // chunk is kept in memory for its waiters now and stored
                    // by the run's single flight when the run is over.
                    if is_leader || self.from_local {
                        cache.insert_in_memory(&chunk.digest, data.clone());
                    } else {
                        cache.insert_verified(&chunk.digest, data.clone());
                    }
                    if is_leader {
                        self.leader = Some(Ok(data));
                    }
                }
                Err(e) => {
                    self.fetcher
                        .stats
                        .corrupt_chunks
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(layer = %self.layer.digest, chunk = %chunk.digest, error = %e, "registry served a corrupt chunk; not served");
                    if is_leader {
                        self.leader = Some(Err(e));
                    }
                }
            }
            if let Some(members) = self.members {
                members.release(&chunk.digest);
            }
        }
    }
}

/// How long a chunk whose read failed makes other reads of it fail at
/// once. The kernel reads a page again, synchronously, right after its
/// readahead failed: without this, one read() would wait out the deadline
/// twice.
pub const FAIL_FAST: Duration = Duration::from_secs(1);

/// Traced chunks a fetcher remembers (32 bytes each); chunks of traces
/// past it are read as untraced ones are.
pub const MAX_TRACED_CHUNKS: usize = 1 << 20;

/// Untraced chunks fetched on demand, while a trace is followed, before the
/// first warning that the trace covers little of the start (or as many as
/// the traces hold, if more).
const FIRST_COVERAGE_WARNING: u64 = 16;

impl Fetcher {
    /// A fetcher over the node's cache.
    pub fn new(cache: Arc<ChunkCache>, config: FetchConfig) -> Fetcher {
        Fetcher {
            cache,
            traced: std::sync::RwLock::new(HashSet::new()),
            following: AtomicBool::new(false),
            next_coverage_warning: AtomicU64::new(0),
            config,
            demand: std::sync::atomic::AtomicUsize::new(0),
            stats: FetchStats::default(),
            failed: std::sync::Mutex::new(HashMap::new()),
            last_failure_ms: AtomicU64::new(0),
            started: Instant::now(),
            run_members: std::sync::Mutex::new(HashMap::new()),
            local: std::sync::RwLock::new(None),
            refused: std::sync::OnceLock::new(),
            last_fetching_read_ms: AtomicU64::new(0),
        }
    }

    /// A start trace holding these chunks is being replayed: it says what
    /// the start reads next, so a read of a traced chunk does not fetch its
    /// blob neighbours on a guess (bytes a slow link would rather not
    /// carry). A read the trace did not foresee keeps the untraced policy,
    /// amplification and all, so a trace never makes a start slower than
    /// no trace.
    pub fn follow_trace(&self, chunks: impl IntoIterator<Item = Digest>) {
        let mut traced = self.traced.write().unwrap_or_else(|e| e.into_inner());
        for digest in chunks {
            if traced.len() >= MAX_TRACED_CHUNKS {
                tracing::warn!(
                    max = MAX_TRACED_CHUNKS,
                    "too many traced chunks to remember: reads of the rest are amplified as untraced ones"
                );
                break;
            }
            traced.insert(digest);
        }
        self.following.store(!traced.is_empty(), Ordering::Relaxed);
    }

    /// On-demand reads in flight now.
    pub fn demand_in_flight(&self) -> usize {
        self.demand.load(Ordering::Relaxed)
    }

    /// The cache chunks go through.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Whether the chunk is here: cached, or fetched along with another
    /// and kept compressed until read. What needs no request.
    pub fn has(&self, digest: &Digest) -> bool {
        self.cache.contains(digest) || self.cache.has_frame(digest)
    }

    /// The chunk at `index`, decoded from its kept frame and cached, if
    /// one was kept (a corrupt one is logged and dropped: it is fetched
    /// again).
    fn unstash(&self, layer: &RemoteLayer, index: u32) -> Option<Bytes> {
        let chunk = &layer.chunks[index as usize];
        let frame = self.cache.take_frame(&chunk.digest)?;
        match decode_chunk(&frame, chunk) {
            Ok(data) => {
                let data = Bytes::from(data);
                self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                self.cache.insert_verified(&chunk.digest, data.clone());
                Some(data)
            }
            Err(e) => {
                self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                tracing::error!(layer = %layer.digest, chunk = %chunk.digest, error = %e, "registry served a corrupt chunk; not served");
                None
            }
        }
    }

    /// Bytes `offset..offset+len` of a file (clamped to its end).
    ///
    /// `readahead` bytes past the read are fetched too if missing (in the
    /// same coalesced requests), for sequential readers.
    pub async fn read_file(
        self: &Arc<Self>,
        layer: &RemoteLayer,
        content: &Content,
        offset: u64,
        len: u64,
        readahead: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let deadline = Duration::from_secs(self.config.read_timeout_secs);
        if let Some(refused) = self.refusal(layer) {
            self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
            return Err(refused);
        }
        let indexes = content.chunks_in(offset, offset.saturating_add(len));
        if let Some(chunk) = self.failed_lately(layer, &indexes) {
            self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
            return Err(FetchError::FailedLately {
                layer: layer.digest,
                chunk,
            });
        }
        self.demand.fetch_add(1, Ordering::Relaxed);
        let _demand = DemandGuard(&self.demand);
        let began = Instant::now();
        let result = tokio::time::timeout(
            deadline,
            self.read_file_inner(layer, content, offset, len, &indexes, readahead),
        )
        .await;
        let waited = began.elapsed();
        if waited >= Duration::from_millis(1) && tracing::enabled!(tracing::Level::DEBUG) {
            let traced = self.count_traced(layer, &indexes);
            tracing::debug!(layer = %layer.digest, offset, len, chunks = indexes.len(), traced, first_chunk = indexes.first().copied().unwrap_or(0), waited_us = waited.as_micros() as u64, at_ms = self.clock_ms(), "a read waited (for the registry or the disk tier)");
        }
        let result = result.unwrap_or(Err(FetchError::Timeout {
            layer: layer.digest,
            after: deadline,
        }));
        if let Err(e) = &result {
            self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %crate::error_chain::chain(e), "read failed");
            self.remember_failure(layer, &indexes);
        }
        result
    }

    async fn read_file_inner(
        self: &Arc<Self>,
        layer: &RemoteLayer,
        content: &Content,
        offset: u64,
        len: u64,
        indexes: &[u32],
        readahead: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let end = offset.saturating_add(len);
        let needed = content.extents_in(offset, end);
        let readahead = self.read_ahead(layer, indexes, readahead);
        let mut ahead = if readahead > 0 {
            content.chunks_in(end, end.saturating_add(readahead).min(content.size()))
        } else {
            Vec::new()
        };
        ahead.extend(self.blob_neighbours(layer, indexes));
        ahead.sort_unstable();
        ahead.dedup();
        let chunks = self.chunks(layer, indexes, &ahead).await?;
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        for i in needed {
            let extent = &content.extents[i];
            let data = &chunks[indexes.binary_search(&extent.chunk).expect("fetched")];
            let start = content.starts[i];
            let from = offset.max(start) - start;
            let to = end.min(start + u64::from(extent.len)) - start;
            let base = extent.offset as usize;
            out.extend_from_slice(&data[base + from as usize..base + to as usize]);
        }
        Ok(out)
    }

    /// The first of the chunks at `indexes` whose read failed within
    /// [`FAIL_FAST`]. Reads take no lock unless a read failed lately.
    fn failed_lately(&self, layer: &RemoteLayer, indexes: &[u32]) -> Option<Digest> {
        let now_ms = self.clock_ms();
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        if last == 0 || now_ms.saturating_sub(last) >= FAIL_FAST.as_millis() as u64 {
            return None;
        }
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        indexes
            .iter()
            .filter_map(|&i| layer.chunks.get(i as usize))
            .map(|c| c.digest)
            .find(|d| {
                failed
                    .get(d)
                    .is_some_and(|at| now.duration_since(*at) < FAIL_FAST)
            })
    }

    /// Records that the uncached chunks at `indexes` failed a read now.
    fn remember_failure(&self, layer: &RemoteLayer, indexes: &[u32]) {
        let now = Instant::now();
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, at| now.duration_since(*at) < FAIL_FAST);
        for chunk in indexes.iter().filter_map(|&i| layer.chunks.get(i as usize)) {
            if !self.cache.contains(&chunk.digest) {
                failed.insert(chunk.digest, now);
            }
        }
        self.last_failure_ms
            .store(self.clock_ms().max(1), Ordering::Relaxed);
    }

    /// Milliseconds since this fetcher was made.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// When some of `indexes` (sorted) must be fetched: the uncached chunks
    /// after the last of them in blob order, within the amplification of
    /// the first missing one (see [`FetchConfig::amplify_bytes`] and
    /// [`Fetcher::follow_trace`]).
    fn blob_neighbours(&self, layer: &RemoteLayer, indexes: &[u32]) -> Vec<u32> {
        let cached = |i: u32| self.has(&layer.chunks[i as usize].digest);
        let missing: Vec<u32> = indexes.iter().copied().filter(|&i| !cached(i)).collect();
        let (Some(&first), Some(&last)) = (missing.first(), indexes.last()) else {
            return Vec::new();
        };
        let amplify = self.amplification(layer, &missing);
        let start = layer.chunks[first as usize].blob_offset;
        (last + 1..layer.chunks.len() as u32)
            .take_while(|&i| {
                let c = &layer.chunks[i as usize];
                c.blob_offset + u64::from(c.compressed_len) - start <= amplify
            })
            .filter(|&i| !cached(i))
            .collect()
    }

    /// The read-ahead of a read of `indexes` that a sequential reader's
    /// pattern earned `readahead`: none when a followed trace holds every
    /// chunk of the read. The reads after it are the trace's, which its
    /// prefetch brings; read-ahead would only put bytes the start does not
    /// read on the link ahead of them (on the JVM's mapped libraries, 4.7
    /// of the 20.9 MB a traced start fetched). Reads outside the trace keep
    /// it, as they keep amplification.
    fn read_ahead(&self, layer: &RemoteLayer, indexes: &[u32], readahead: u64) -> u64 {
        if self.all_traced(layer, indexes) {
            0
        } else {
            readahead
        }
    }

    /// The amplification of an on-demand read that must fetch `missing`:
    /// none when a followed trace holds every one of them, the configured
    /// one otherwise.
    fn amplification(&self, layer: &RemoteLayer, missing: &[u32]) -> u64 {
        if self.all_traced(layer, missing) {
            0
        } else {
            self.config.amplify_bytes
        }
    }

    /// Whether a trace is followed and holds every one of these chunks.
    fn all_traced(&self, layer: &RemoteLayer, indexes: &[u32]) -> bool {
        self.following.load(Ordering::Relaxed) && self.count_traced(layer, indexes) == indexes.len()
    }

    /// How many of these chunks the followed traces hold.
    fn count_traced(&self, layer: &RemoteLayer, indexes: &[u32]) -> usize {
        let traced = self.traced.read().unwrap_or_else(|e| e.into_inner());
        indexes
            .iter()
            .filter(|&&i| traced.contains(&layer.chunks[i as usize].digest))
            .count()
    }

    /// Counts the chunks an on-demand read fetches (`missing`: the read's,
    /// its neighbours' and its readahead's) in or outside the followed
    /// traces, and warns, at doubling counts, when the traces cover little
    /// of what the start reads.
    fn count_demand(&self, layer: &RemoteLayer, missing: &[u32]) {
        if !self.following.load(Ordering::Relaxed) || missing.is_empty() {
            return;
        }
        let (outside, traced_len) = {
            let traced = self.traced.read().unwrap_or_else(|e| e.into_inner());
            let outside = missing
                .iter()
                .filter(|&&i| !traced.contains(&layer.chunks[i as usize].digest))
                .count() as u64;
            (outside, traced.len())
        };
        self.stats
            .traced_demand_chunks
            .fetch_add(missing.len() as u64 - outside, Ordering::Relaxed);
        if outside == 0 {
            return;
        }
        let untraced = self
            .stats
            .untraced_demand_chunks
            .fetch_add(outside, Ordering::Relaxed)
            + outside;
        let next = self.next_coverage_warning.load(Ordering::Relaxed);
        if untraced >= next.max(FIRST_COVERAGE_WARNING.max(traced_len as u64))
            && self
                .next_coverage_warning
                .compare_exchange(next, untraced * 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                layer = %layer.digest,
                untraced_chunks = untraced,
                traced_chunks = traced_len,
                "the start reads beyond its trace: chunks no trace holds were fetched on demand (read as without a trace); record the trace again from a start like this one"
            );
        }
    }

    /// The chunks at these (sorted, unique) indexes of the layer's chunk
    /// table: from the cache, or fetched with missing neighbours coalesced.
    /// The `ahead` chunks (sorted, after `indexes`) are fetched into the
    /// cache in the same requests when missing, but not returned.
    pub async fn chunks(
        self: &Arc<Self>,
        layer: &RemoteLayer,
        indexes: &[u32],
        ahead: &[u32],
    ) -> Result<Vec<Bytes>, FetchError> {
        for &i in indexes {
            if !self.cache.contains(&layer.chunks[i as usize].digest) {
                self.unstash(layer, i);
            }
        }
        let mut missing: Vec<u32> = {
            let members = self.members();
            indexes
                .iter()
                .chain(ahead)
                .copied()
                .filter(|&i| {
                    let digest = &layer.chunks[i as usize].digest;
                    !self.has(digest) && !members.contains_key(digest)
                })
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            self.last_fetching_read_ms
                .store(self.clock_ms(), Ordering::Relaxed);
        }
        self.count_demand(layer, &missing);
        // Each run is fetched by a task of its own, and the read waits only
        // for its own chunks: they lead their runs, and the read-ahead and
        // neighbours behind them (megabytes, at link speed) are stored as
        // they arrive, after the read was answered. A reader waiting for
        // the whole run paid that transfer on every miss of a start.
        let runs = self.runs(layer, &missing);
        let mut tasks = RunTasks(Vec::with_capacity(runs.len()));
        let mut registered = Vec::with_capacity(runs.len());
        for run in &runs {
            let (told, registration) = tokio::sync::oneshot::channel();
            let (fetcher, layer, run) = (self.clone(), layer.clone(), run.clone());
            tasks.0.push(Some(tokio::spawn(async move {
                fetcher.fetch_run_telling(&layer, &run, Some(told)).await
            })));
            registered.push(registration);
        }
        for registration in registered {
            let _ = registration.await; // dropped: the run ended first
        }
        // Taken before any of them arrives, so that the runs decode the
        // read's chunks for it rather than keep them as frames.
        let waits: Vec<_> = {
            let members = self.members();
            indexes
                .iter()
                .map(|&i| members.get(&layer.chunks[i as usize].digest).cloned())
                .collect()
        };
        let mut out = Vec::with_capacity(indexes.len());
        for (&i, wait) in indexes.iter().zip(waits) {
            if let Some(mut wait) = wait {
                let _ = wait.changed().await; // Err: released already
            }
            if let Some(bytes) = self.cache.get(&layer.chunks[i as usize].digest) {
                out.push(bytes);
                continue;
            }
            // Not stored: its run failed (the read fails with the run's
            // error) or left it to be fetched again.
            let task = runs
                .iter()
                .position(|run| run.binary_search(&i).is_ok())
                .and_then(|run| tasks.0[run].take());
            if let Some(task) = task {
                if let Ok(Err(e)) = task.await {
                    return Err(e);
                }
            }
            out.push(self.chunk(layer, i).await?);
        }
        tasks.detach();
        Ok(out)
    }

    /// Groups missing chunk indexes into runs that one request can fetch.
    pub fn runs(&self, layer: &RemoteLayer, missing: &[u32]) -> Vec<Vec<u32>> {
        self.runs_within(layer, missing, self.config.max_request_bytes)
    }

    /// [`runs`](Self::runs), each spanning at most `max_request_bytes` of
    /// the blob instead of the configured cap (a trace's pack, in read
    /// order, is best read in larger requests than a layer).
    pub fn runs_within(
        &self,
        layer: &RemoteLayer,
        missing: &[u32],
        max_request_bytes: u64,
    ) -> Vec<Vec<u32>> {
        let mut runs: Vec<Vec<u32>> = Vec::new();
        for &i in missing {
            let chunk = &layer.chunks[i as usize];
            if let Some(run) = runs.last_mut() {
                let first = &layer.chunks[run[0] as usize];
                let last = &layer.chunks[*run.last().unwrap() as usize];
                let last_end = last.blob_offset + u64::from(last.compressed_len);
                let new_end = chunk.blob_offset + u64::from(chunk.compressed_len);
                if chunk.blob_offset >= last_end
                    && chunk.blob_offset - last_end <= self.config.max_gap_bytes
                    && new_end - first.blob_offset <= max_request_bytes
                {
                    run.push(i);
                    continue;
                }
            }
            runs.push(vec![i]);
        }
        runs
    }

    /// Fetches a run of chunks with one range request into the cache and
    /// returns the first. The first chunk goes through the cache's single
    /// flight, so concurrent readers of it wait on this request. If the
    /// first chunk came from the cache or another caller's request (an
    /// on-demand read of the chunk a prefetch run starts at, say), the
    /// rest of the run is still fetched: those are the bytes read next.
    pub async fn fetch_run(&self, layer: &RemoteLayer, run: &[u32]) -> Result<Bytes, FetchError> {
        self.fetch_run_telling(layer, run, None).await
    }

    /// [`fetch_run`](Self::fetch_run), telling `registered` once the run's
    /// members are registered (see [`Fetcher::chunks`]).
    async fn fetch_run_telling(
        &self,
        layer: &RemoteLayer,
        run: &[u32],
        registered: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Bytes, FetchError> {
        let (first, rest_unfetched) = self.fetch_run_led(layer, run, registered).await?;
        if rest_unfetched {
            let rest: Vec<u32> = {
                let members = self.members();
                run[1..]
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let digest = &layer.chunks[i as usize].digest;
                        !self.has(digest) && !members.contains_key(digest)
                    })
                    .collect()
            };
            if !rest.is_empty() {
                // Its errors were logged by the cache; readers of these
                // chunks fetch them again.
                let _ = Box::pin(self.fetch_run(layer, &rest)).await;
            }
        }
        Ok(first)
    }

    /// [`fetch_run`](Self::fetch_run)'s request, led by the run's first
    /// chunk; also says whether that chunk came without it (the rest of
    /// the run then unfetched).
    ///
    /// `registered` is told once the run's members are registered, so a
    /// reader can wait for them.
    async fn fetch_run_led(
        &self,
        layer: &RemoteLayer,
        run: &[u32],
        registered: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(Bytes, bool), FetchError> {
        let leader = &layer.chunks[run[0] as usize];
        // The first chunk too: its readers are woken when its bytes are in
        // (its single flight alone would have a reader fetch the rest of
        // its own run again, in more requests).
        let members = self.register_members(layer, run);
        if let Some(registered) = registered {
            let _ = registered.send(());
        }
        let requested = AtomicBool::new(false);
        // A complete layer's chunks come from its blob on local disk: kept
        // in memory only, not copied to the disk cache.
        let from_local = self.is_complete();
        let fetch = || async {
            requested.store(true, Ordering::Relaxed);
            let first = &layer.chunks[run[0] as usize];
            let last = &layer.chunks[*run.last().unwrap() as usize];
            let start = first.blob_offset;
            let end = last.blob_offset + u64::from(last.compressed_len);
            let mut decoder = RunDecoder {
                fetcher: self,
                layer,
                run,
                start,
                next: 0,
                from_local,
                foreign: false,
                members: members.as_ref(),
                leader: None,
            };
            let bytes = match self.local_range(start..end).await {
                Some(local) => local.map_err(Box::<dyn std::error::Error + Send + Sync>::from)?,
                None => {
                    let began = Instant::now();
                    let bytes = layer
                        .store
                        .blob_range_observed(&layer.digest, start..end, &mut |body| {
                            decoder.take(body)
                        })
                        .await
                        .map_err(Box::<dyn std::error::Error + Send + Sync>::from)?;
                    self.record_request(bytes.len() as u64, began.elapsed());
                    bytes
                }
            };
            decoder.take(&bytes);
            match decoder.leader.take() {
                Some(Ok(data)) => Ok(data),
                Some(Err(e)) => Err(Box::<dyn std::error::Error + Send + Sync>::from(e)),
                None => Err(Box::<dyn std::error::Error + Send + Sync>::from(
                    "the run's bytes end before its first chunk does",
                )),
            }
        };
        let fetched = if from_local {
            self.cache.get_or_fetch_local(&leader.digest, fetch).await
        } else {
            self.cache
                .get_or_fetch_verified(&leader.digest, fetch)
                .await
        };
        fetched
            .map(|bytes| (bytes, run.len() > 1 && !requested.load(Ordering::Relaxed)))
            .map_err(|source| FetchError::Chunk {
                layer: layer.digest,
                chunk: leader.digest,
                source,
            })
    }

    /// Fetches `run` (sorted, contiguous chunk indexes) of `source`, another
    /// blob that holds chunks of this fetcher's layer under their digests
    /// (a trace's pack), into the cache. Each chunk is stored once its
    /// frame is in and checked against its digest, and its readers on the
    /// real layer are woken; a frame that fails is counted and left to
    /// them. Never from the layer's local blob, and outside the cache's
    /// single flights: a reader of the real layer never takes this
    /// request's failure for its own. Fails only if the request does.
    pub async fn fetch_foreign_run(
        &self,
        source: &RemoteLayer,
        run: &[u32],
    ) -> Result<(), FetchError> {
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let members = self.register_members(source, run);
        let first = &source.chunks[first as usize];
        let last = &source.chunks[last as usize];
        let (start, end) = (
            first.blob_offset,
            last.blob_offset + u64::from(last.compressed_len),
        );
        let mut decoder = RunDecoder {
            fetcher: self,
            layer: source,
            run,
            start,
            next: 0,
            from_local: false,
            foreign: true,
            members: members.as_ref(),
            leader: None,
        };
        let began = Instant::now();
        let bytes = source
            .store
            .blob_range_observed(&source.digest, start..end, &mut |body| decoder.take(body))
            .await
            .map_err(|e| FetchError::Chunk {
                layer: source.digest,
                chunk: first.digest,
                source: crate::cache::CacheError::Fetch {
                    digest: first.digest,
                    source: Arc::new(e),
                },
            })?;
        self.record_request(bytes.len() as u64, began.elapsed());
        decoder.take(&bytes);
        Ok(())
    }

    /// One chunk: from the cache, or from the run fetching it now, or
    /// fetched alone.
    async fn chunk(&self, layer: &RemoteLayer, index: u32) -> Result<Bytes, FetchError> {
        let chunk = &layer.chunks[index as usize];
        if let Some(bytes) = self.cache.get(&chunk.digest) {
            return Ok(bytes);
        }
        let run = self.members().get(&chunk.digest).cloned();
        if let Some(mut run) = run {
            // Err: the run is over (its sender dropped), whatever it brought.
            let _ = run.changed().await;
            if let Some(bytes) = self.cache.get(&chunk.digest) {
                return Ok(bytes);
            }
        }
        if let Some(bytes) = self.unstash(layer, index) {
            return Ok(bytes);
        }
        self.fetch_run(layer, &[index]).await
    }

    fn members(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Digest, tokio::sync::watch::Receiver<()>>> {
        // Only inserts and removes happen under the lock.
        self.run_members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a run's chunks as in flight until the guard drops (those
    /// another run already holds stay that run's).
    fn register_members(&self, layer: &RemoteLayer, members: &[u32]) -> Option<RunMembers<'_>> {
        if members.is_empty() {
            return None;
        }
        let mut senders = HashMap::with_capacity(members.len());
        let mut map = self.members();
        for &i in members {
            let digest = layer.chunks[i as usize].digest;
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(digest) {
                let (done, receiver) = tokio::sync::watch::channel(());
                slot.insert(receiver);
                senders.insert(digest, done);
            }
        }
        drop(map);
        Some(RunMembers {
            fetcher: self,
            senders: std::sync::Mutex::new(senders),
        })
    }

    fn record_request(&self, bytes: u64, latency: Duration) {
        let us = latency.as_micros() as u64;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        self.stats.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.stats.latency_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

/// The tasks fetching a read's runs: they outlive the read that answered
/// (the rest of each run is on the way), but a read that fails or is given
/// up on (its deadline) takes them down, as it did when it owned its
/// requests: a stalled request would otherwise keep its chunks' later
/// readers waiting on it.
struct RunTasks(Vec<Option<tokio::task::JoinHandle<Result<Bytes, FetchError>>>>);

impl RunTasks {
    /// The read was answered: the runs go on without it.
    fn detach(mut self) {
        self.0.clear();
    }
}

impl Drop for RunTasks {
    fn drop(&mut self) {
        for task in self.0.iter().flatten() {
            task.abort();
        }
    }
}

/// Ends an on-demand read's count however the read ends.
struct DemandGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod test_layer;
#[cfg(test)]
mod tests;
