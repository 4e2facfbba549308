//! The tiered chunk cache as its users see it: bounds and eviction in both
//! tiers, recovery after a restart or a kill, single-flight fetches,
//! verification, and the config file.

use bytes::Bytes;
use loci::cache::{CacheConfig, CacheError, ChunkCache};
use loci::digest::Digest;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: usize = 1024;

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
fn chunk(seed: u64, len: usize) -> (Digest, Bytes) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len);
    (Digest::of(&data), Bytes::from(data))
}

fn config(dir: &Path, memory_bytes: u64, disk_bytes: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes,
        disk_bytes,
        ..CacheConfig::default()
    }
}

/// A fetch that must not run.
async fn no_fetch() -> Result<Bytes, String> {
    panic!("the chunk was cached; nothing should be fetched")
}

#[test]
fn memory_tier_is_bounded_in_bytes_and_keeps_the_most_recent() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    let cache = ChunkCache::open(&config(dir.path(), 4 * size as u64, 1 << 30)).unwrap();
    let chunks: Vec<_> = (0..10).map(|i| chunk(i, size)).collect();
    for (digest, data) in &chunks {
        cache.insert(digest, data.clone()).unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.memory_bytes, 4 * size as u64);
    assert_eq!(stats.evictions_memory, 6);
    assert_eq!(stats.disk_bytes, 10 * size as u64);

    for (digest, data) in &chunks[6..] {
        assert_eq!(cache.get(digest).as_ref(), Some(data));
    }
    let after_recent = cache.stats();
    assert_eq!(after_recent.memory_hits, 4);
    assert_eq!(after_recent.disk_hits, 0);

    // An old chunk comes from disk, is promoted, and pushes one out.
    assert_eq!(cache.get(&chunks[0].0).as_ref(), Some(&chunks[0].1));
    let after_old = cache.stats();
    assert_eq!(after_old.disk_hits, 1);
    assert_eq!(after_old.evictions_memory, 7);
    assert_eq!(after_old.memory_bytes, 4 * size as u64);
}

#[test]
fn disk_tier_evicts_least_recently_used_and_keeps_recently_read() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    // No memory tier: every read is a disk read and a disk use.
    let cache = ChunkCache::open(&config(dir.path(), 0, 10 * size as u64)).unwrap();
    let chunks: Vec<_> = (0..15).map(|i| chunk(i, size)).collect();
    for (digest, data) in &chunks[..10] {
        cache.insert(digest, data.clone()).unwrap();
    }
    assert!(cache.disk_full());
    for (digest, data) in &chunks[..5] {
        assert_eq!(cache.get(digest).as_ref(), Some(data));
    }
    for (digest, data) in &chunks[10..] {
        cache.insert(digest, data.clone()).unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.disk_bytes, 10 * size as u64);
    assert_eq!(stats.evictions_disk, 5);
    for (i, (digest, data)) in chunks.iter().enumerate() {
        let expect_kept = !(5..10).contains(&i);
        assert_eq!(cache.contains(digest), expect_kept, "chunk {i}");
        assert_eq!(
            cache.get(digest).as_ref(),
            expect_kept.then_some(data),
            "chunk {i}"
        );
    }
}

#[test]
fn a_chunk_hot_in_memory_is_not_evicted_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    let chunks: Vec<_> = (0..4).map(|i| chunk(i, size)).collect();
    {
        // Memory holds three chunks, so chunk 0 stays there throughout.
        let cache =
            ChunkCache::open(&config(dir.path(), 3 * size as u64, 3 * size as u64)).unwrap();
        cache.insert(&chunks[0].0, chunks[0].1.clone()).unwrap();
        cache.insert(&chunks[1].0, chunks[1].1.clone()).unwrap();
        // Chunk 0 is served from memory only: disk never sees this use.
        assert!(cache.get(&chunks[0].0).is_some());
        assert_eq!(cache.stats().memory_hits, 1);
        cache.insert(&chunks[2].0, chunks[2].1.clone()).unwrap();
        // The disk is full; by its own bookkeeping chunk 0 is the oldest,
        // but memory used it after chunk 1.
        cache.insert(&chunks[3].0, chunks[3].1.clone()).unwrap();
        assert_eq!(cache.stats().evictions_disk, 1);
        assert!(cache.get(&chunks[0].0).is_some());
        assert_eq!(cache.stats().disk_hits, 0, "chunk 0 never left memory");
    }
    // After a reopen the memory tier is empty: what is left is on disk.
    let cache = ChunkCache::open(&config(dir.path(), 0, 3 * size as u64)).unwrap();
    assert!(cache.contains(&chunks[0].0));
    assert!(!cache.contains(&chunks[1].0));
    assert!(cache.contains(&chunks[2].0));
    assert!(cache.contains(&chunks[3].0));
}

#[test]
fn reopen_keeps_chunks_sizes_and_eviction_order() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [16 * KIB, 64 * KIB, 256 * KIB, 100 * KIB, 1024 * KIB];
    let chunks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| chunk(100 + i as u64, len))
        .collect();
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    {
        let cache = ChunkCache::open(&config(dir.path(), 0, total)).unwrap();
        for (digest, data) in &chunks {
            cache.insert(digest, data.clone()).unwrap();
        }
        // Make the first chunk the most recently used.
        assert!(cache.get(&chunks[0].0).is_some());
    }
    let cache = ChunkCache::open(&config(dir.path(), 0, total)).unwrap();
    assert_eq!(cache.stats().disk_bytes, total);
    assert!(cache.disk_full());
    // Chunk 0 was read last before the restart, so chunk 1 is now the
    // least recently used: a new 16 KiB chunk evicts exactly it.
    let (new_digest, new_data) = chunk(999, 16 * KIB);
    cache.insert(&new_digest, new_data).unwrap();
    assert!(!cache.contains(&chunks[1].0));
    assert_eq!(
        cache.stats().disk_bytes,
        total - sizes[1] as u64 + 16 * KIB as u64
    );
    for (i, (digest, data)) in chunks.iter().enumerate().filter(|&(i, _)| i != 1) {
        assert_eq!(cache.get(digest).as_ref(), Some(data), "chunk {i}");
    }
    assert_eq!(cache.stats().disk_hits, chunks.len() as u64 - 1);
}

#[test]
fn shrinking_the_disk_bound_evicts_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    let chunks: Vec<_> = (0..6).map(|i| chunk(i, size)).collect();
    {
        let cache = ChunkCache::open(&config(dir.path(), 0, 1 << 30)).unwrap();
        for (digest, data) in &chunks {
            cache.insert(digest, data.clone()).unwrap();
        }
    }
    let cache = ChunkCache::open(&config(dir.path(), 0, 2 * size as u64)).unwrap();
    assert_eq!(cache.stats().disk_bytes, 2 * size as u64);
    assert!(chunks[4..].iter().all(|(d, _)| cache.contains(d)));
    assert!(chunks[..4].iter().all(|(d, _)| !cache.contains(d)));
}

#[test]
fn disk_full_reports_when_another_chunk_would_evict() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    let cache = ChunkCache::open(&config(dir.path(), 0, 4 * size as u64)).unwrap();
    assert!(!cache.disk_full());
    for i in 0..3 {
        let (digest, data) = chunk(i, size);
        cache.insert(&digest, data).unwrap();
        assert!(!cache.disk_full(), "after {} chunks", i + 1);
    }
    let (digest, data) = chunk(3, size);
    cache.insert(&digest, data).unwrap();
    assert!(cache.disk_full());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_of_a_missing_chunk_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    let (digest, data) = chunk(7, 256 * KIB);
    let fetches = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, fetches, barrier, data) = (
                cache.clone(),
                fetches.clone(),
                barrier.clone(),
                data.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_fetch(&digest, || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, String>(data)
                    })
                    .await
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), data);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.bytes_fetched, data.len() as u64);
    assert_eq!(stats.coalesced + stats.memory_hits, 49);
    assert_eq!(stats.fetch_latency.count(), 1);
    assert!(stats.fetch_latency.quantile(0.5).unwrap() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_with_the_wrong_bytes_fails_every_waiter_and_caches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    let (digest, _) = chunk(1, 64 * KIB);
    let (wrong_digest, wrong) = chunk(2, 64 * KIB);
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, barrier, wrong) = (cache.clone(), barrier.clone(), wrong.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_fetch(&digest, || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(wrong)
                    })
                    .await
            })
        })
        .collect();
    for reader in readers {
        match reader.await.unwrap() {
            Err(CacheError::Corrupt { digest: d, actual }) => {
                assert_eq!(d, digest);
                assert_eq!(actual, wrong_digest);
            }
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }
    assert!(!cache.contains(&digest) && !cache.contains(&wrong_digest));
    assert_eq!(cache.get(&digest), None);
    let stats = cache.stats();
    assert_eq!((stats.memory_bytes, stats.disk_bytes), (0, 0));
    assert_eq!(stats.fetch_errors, stats.fetches);
    assert!(stats.fetches >= 1);
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached_and_the_next_call_retries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    let (digest, data) = chunk(3, 64 * KIB);
    let attempts = AtomicUsize::new(0);
    let err = cache
        .get_or_fetch(&digest, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<Bytes, _>("registry returned 503")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CacheError::Fetch { digest: d, source } if *d == digest && source.to_string().contains("503")),
        "{err}"
    );
    assert!(!cache.contains(&digest));
    let got = cache
        .get_or_fetch(&digest, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(data.clone())
        })
        .await
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.fetch_errors), (2, 1));
    // Cached now: the next call fetches nothing.
    assert_eq!(cache.get_or_fetch(&digest, no_fetch).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fetch_hands_over_to_a_waiting_reader() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    let (digest, data) = chunk(4, 64 * KIB);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_fetch(&digest, || async move {
                    started_tx.send(()).unwrap();
                    std::future::pending::<Result<Bytes, String>>().await
                })
                .await
        })
    };
    started_rx.await.unwrap();
    let follower = {
        let (cache, data) = (cache.clone(), data.clone());
        tokio::spawn(async move {
            cache
                .get_or_fetch(&digest, || async move { Ok::<_, String>(data) })
                .await
        })
    };
    // Let the follower join the stuck flight, then cancel its leader.
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let got = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower must not hang")
        .unwrap()
        .unwrap();
    assert_eq!(got, data);
    assert_eq!(cache.stats().fetches, 2);
}

#[tokio::test]
async fn get_or_fetch_serves_from_disk_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = chunk(5, 128 * KIB);
    {
        let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
        let fetched = cache
            .get_or_fetch(&digest, || async { Ok::<_, String>(data.clone()) })
            .await
            .unwrap();
        assert_eq!(fetched, data);
    }
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    assert_eq!(cache.get_or_fetch(&digest, no_fetch).await.unwrap(), data);
    assert_eq!(cache.get_or_fetch(&digest, no_fetch).await.unwrap(), data);
    let stats = cache.stats();
    assert_eq!(
        (stats.disk_hits, stats.memory_hits, stats.fetches),
        (1, 1, 0)
    );
}

/// Chunks the fetcher has already checked: served at once from memory,
/// written to disk behind the reader, and there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_chunks_are_served_at_once_and_reach_disk_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = chunk(6, 128 * KIB);
    let (neighbour, neighbour_data) = chunk(7, 64 * KIB);
    {
        let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
        let fetched = cache
            .get_or_fetch_verified(&digest, || async { Ok::<_, String>(data.clone()) })
            .await
            .unwrap();
        assert_eq!(fetched, data);
        cache.insert_verified(&neighbour, neighbour_data.clone());
        assert_eq!(cache.get(&digest), Some(data.clone()));
        assert_eq!(cache.get(&neighbour), Some(neighbour_data.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.stats().disk_bytes < (data.len() + neighbour_data.len()) as u64 {
            assert!(Instant::now() < deadline, "never written to disk");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The writer may still hold the database for a moment after counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cache = loop {
        match ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)) {
            Ok(cache) => break cache,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reopen: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(cache.get_or_fetch(&digest, no_fetch).await.unwrap(), data);
    assert_eq!(cache.get(&neighbour), Some(neighbour_data));
    assert_eq!(cache.stats().disk_hits, 2);
}

#[test]
fn insert_refuses_bytes_that_do_not_match_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(&config(dir.path(), 1 << 20, 1 << 24)).unwrap();
    let (digest, _) = chunk(1, 16 * KIB);
    let (_, other) = chunk(2, 16 * KIB);
    assert!(matches!(
        cache.insert(&digest, other),
        Err(CacheError::Corrupt { .. })
    ));
    assert!(!cache.contains(&digest));
}

#[test]
fn config_loads_from_toml_and_a_bad_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.toml");
    std::fs::write(
        &path,
        "dir = \"/srv/loci\"\nmemory_bytes = 1048576\n[rocksdb]\nmax_background_jobs = 4\n",
    )
    .unwrap();
    let config = CacheConfig::load(&path).unwrap();
    assert_eq!(config.dir, Path::new("/srv/loci"));
    assert_eq!(config.memory_bytes, 1 << 20);
    assert_eq!(config.disk_bytes, CacheConfig::default().disk_bytes);
    assert_eq!(config.rocksdb.max_background_jobs, 4);

    for (text, field) in [
        ("memory_bytes = \"lots\"\n", "memory_bytes"),
        ("disk_byte = 1\n", "disk_byte"),
        ("[rocksdb]\ncompression = \"brotli\"\n", "compression"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = CacheConfig::load(&path).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CacheError::Config { .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(field), "{message}");
    }
    let missing = dir.path().join("absent.toml");
    let message = CacheConfig::load(&missing).unwrap_err().to_string();
    assert!(message.contains("absent.toml"), "{message}");
}

#[test]
fn open_names_the_directory_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = ChunkCache::open(&config(&file, 1 << 20, 1 << 20))
        .err()
        .expect("a file is not a cache directory");
    assert!(matches!(err, CacheError::Open { .. }));
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

/// Env var that turns `killed_child_stores_chunks_until_killed` into the
/// child of `killing_loci_mid_write_leaves_a_usable_cache`.
const CHILD_DIR_VAR: &str = "LOCI_CACHE_TEST_CHILD_DIR";

fn kill_test_chunk(i: u64) -> (Digest, Bytes) {
    chunk(10_000 + i, 16 * KIB + (i as usize * 7919) % (240 * KIB))
}

/// The child: stores chunks (and reads earlier ones back) forever,
/// reporting each stored chunk and, once, that what it stored so far was
/// persisted, until the parent kills it.
#[test]
#[ignore = "run by killing_loci_mid_write_leaves_a_usable_cache as a child process"]
fn killed_child_stores_chunks_until_killed() {
    let dir = std::env::var(CHILD_DIR_VAR).expect("run only as the kill test's child");
    let cache = ChunkCache::open(&config(Path::new(&dir), 4 << 20, 1 << 30)).unwrap();
    for i in 0.. {
        let (digest, data) = kill_test_chunk(i);
        cache.insert(&digest, data).unwrap();
        println!("stored {i}");
        if i == PERSISTED_AT {
            cache.persist();
            println!("persisted {i}");
        }
        assert!(cache.get(&kill_test_chunk(i / 2).0).is_some());
    }
}

/// The chunk after which the child persists the cache (as a daemon does
/// at shutdown). Writes skip RocksDB's WAL (on a full disk a failed WAL
/// write aborts the process), so what was stored after it may be lost to a
/// SIGKILL; what was persisted may not.
const PERSISTED_AT: u64 = 150;

#[test]
fn killing_loci_mid_write_leaves_a_usable_cache() {
    const STORED_BEFORE_KILL: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "killed_child_stores_chunks_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_stored = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(i) = line.unwrap().strip_prefix("stored ") {
            let i: u64 = i.parse().unwrap();
            last_stored = Some(i);
            if i >= STORED_BEFORE_KILL {
                break;
            }
        }
        assert!(Instant::now() < deadline, "child too slow: {last_stored:?}");
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no flush
    child.wait().unwrap();
    let last_stored = last_stored.expect("the child stored nothing");
    assert!(last_stored >= STORED_BEFORE_KILL);

    let cache = ChunkCache::open(&config(dir.path(), 4 << 20, 1 << 30)).unwrap();
    for i in 0..=PERSISTED_AT {
        let (digest, data) = kill_test_chunk(i);
        assert_eq!(cache.get(&digest).as_ref(), Some(&data), "chunk {i}");
    }
    for i in PERSISTED_AT + 1..=last_stored {
        let (digest, data) = kill_test_chunk(i);
        if let Some(got) = cache.get(&digest) {
            assert_eq!(got, data, "chunk {i} came back wrong");
        }
    }
    // Chunks the child wrote after its last report may or may not be there;
    // the recovered size must account for exactly what is.
    let present: u64 = (0..last_stored + 100)
        .map(kill_test_chunk)
        .filter(|(digest, _)| cache.contains(digest))
        .map(|(_, data)| data.len() as u64)
        .sum();
    let stats = cache.stats();
    assert_eq!(stats.disk_bytes, present);
    assert_eq!(stats.corrupt_on_disk, 0);
    let (digest, data) = chunk(424242, 64 * KIB);
    cache.insert(&digest, data.clone()).unwrap();
    assert_eq!(cache.get(&digest), Some(data));
}
