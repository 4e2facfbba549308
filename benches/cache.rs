//! Chunk cache speed: memory-tier hit latency, and disk-tier read and write
//! throughput for 64 KiB and 256 KiB chunks against the baseline of the same
//! bytes as plain files in a directory (measured in the same run, so the
//! RocksDB tier's cost reads as a ratio). Both disk paths verify sha256, as
//! the cache does; the `sha256` group shows how much of that is hashing.
//!
//! Data: pseudo-random (incompressible) chunks, 64 MiB per read set; the
//! write benches run against a full tier, so each insert also evicts.

use bytes::Bytes;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use loci::cache::{CacheConfig, ChunkCache};
use loci::digest::Digest;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const KIB: usize = 1024;
const READ_SET_BYTES: usize = 64 << 20;
const WRITE_BOUND_BYTES: u64 = 128 << 20;
const CHUNK_SIZES: [usize; 2] = [64 * KIB, 256 * KIB];

/// Pseudo-random bytes (xorshift64), distinct per seed.
fn chunk(seed: u64, len: usize) -> (Digest, Bytes) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    (Digest::of(&data), Bytes::from(data))
}

fn open(dir: &Path, memory_bytes: u64, disk_bytes: u64) -> Arc<ChunkCache> {
    ChunkCache::open(&CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes,
        disk_bytes,
        ..CacheConfig::default()
    })
    .unwrap()
}

fn label(size: usize) -> String {
    format!("{}KiB", size / KIB)
}

fn memory_hit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * KIB;
    let count = READ_SET_BYTES / size;
    let cache = open(
        dir.path(),
        2 * READ_SET_BYTES as u64,
        4 * READ_SET_BYTES as u64,
    );
    let digests: Vec<Digest> = (0..count as u64)
        .map(|i| {
            let (digest, data) = chunk(i, size);
            cache.insert(&digest, data).unwrap();
            digest
        })
        .collect();
    let mut group = c.benchmark_group("memory_hit");
    let mut i = 0;
    group.bench_function(label(size), |b| {
        b.iter(|| {
            i = (i + 1) % digests.len();
            black_box(cache.get(&digests[i]).unwrap())
        })
    });
    group.finish();
    assert_eq!(cache.stats().disk_hits, 0, "every read must hit memory");
}

fn disk_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("disk_read");
    for size in CHUNK_SIZES {
        let count = READ_SET_BYTES / size;
        let chunks: Vec<_> = (0..count as u64).map(|i| chunk(i, size)).collect();
        group.throughput(Throughput::Bytes(size as u64));

        let cache_dir = tempfile::tempdir().unwrap();
        // No memory tier: every read is a RocksDB read plus verification.
        let cache = open(cache_dir.path(), 0, 2 * READ_SET_BYTES as u64);
        for (digest, data) in &chunks {
            cache.insert(digest, data.clone()).unwrap();
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("rocksdb", label(size)), |b| {
            b.iter(|| {
                i = (i + 1) % chunks.len();
                black_box(cache.get(&chunks[i].0).unwrap())
            })
        });
        assert_eq!(cache.stats().memory_hits, 0);

        let files_dir = tempfile::tempdir().unwrap();
        for (digest, data) in &chunks {
            std::fs::write(files_dir.path().join(digest.hex()), data).unwrap();
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("files", label(size)), |b| {
            b.iter(|| {
                i = (i + 1) % chunks.len();
                let digest = &chunks[i].0;
                let data = std::fs::read(files_dir.path().join(digest.hex())).unwrap();
                assert_eq!(Digest::of(&data), *digest);
                black_box(data)
            })
        });
    }
    group.finish();
}

fn disk_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("disk_write");
    for size in CHUNK_SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        let cache_dir = tempfile::tempdir().unwrap();
        let cache = open(cache_dir.path(), 0, WRITE_BOUND_BYTES);
        let mut seed = 0;
        // Fill first, so the measured inserts each evict, as in steady state.
        while !cache.disk_full() {
            seed += 1;
            let (digest, data) = chunk(seed, size);
            cache.insert(&digest, data).unwrap();
        }
        group.bench_function(BenchmarkId::new("rocksdb", label(size)), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    chunk(seed, size)
                },
                |(digest, data)| cache.insert(&digest, data).unwrap(),
                BatchSize::SmallInput,
            )
        });
        assert!(cache.stats().evictions_disk > 0);

        // Files: one new file per chunk, the oldest deleted past the bound,
        // as the cache does. (Overwriting files in place instead would make
        // ext4 flush on every truncate, an unfair baseline.)
        let files_dir = tempfile::tempdir().unwrap();
        let slots = WRITE_BOUND_BYTES as usize / size;
        let mut stored = std::collections::VecDeque::with_capacity(slots + 1);
        group.bench_function(BenchmarkId::new("files", label(size)), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    chunk(seed, size)
                },
                |(digest, data)| {
                    assert_eq!(Digest::of(&data), digest);
                    let path = files_dir.path().join(digest.hex());
                    std::fs::write(&path, &data).unwrap();
                    stored.push_back(path);
                    if stored.len() > slots {
                        std::fs::remove_file(stored.pop_front().unwrap()).unwrap();
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn sha256(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256");
    for size in CHUNK_SIZES {
        let (_, data) = chunk(1, size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(label(size), |b| b.iter(|| Digest::of(black_box(&data))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = memory_hit, disk_read, disk_write, sha256
}
criterion_main!(benches);
