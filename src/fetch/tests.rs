//! The middle of the read path without root, FUSE or a registry: a
//! converted layer in an OCI layout in a temp dir (the store every test
//! reads through, as stargz-snapshotter tests its blob reader with fake
//! transports), table-driven: which runs missing chunks coalesce into,
//! which neighbours a fetching read brings along, and that `read_file`
//! returns the file's bytes with the requests the tables say.

use super::test_layer::{blob_bytes, chunk_bytes, converted, layout_store, Converted};
use super::*;
use crate::cache::CacheConfig;
use crate::format::{EntryKind, Toc};

/// Chunks of `len` compressed bytes each at the given blob offsets.
fn chunk_table(layout: &[(u64, u32)]) -> Arc<[Chunk]> {
    layout
        .iter()
        .enumerate()
        .map(|(i, &(blob_offset, compressed_len))| Chunk {
            blob_offset,
            compressed_len,
            len: compressed_len * 2,
            digest: Digest::of(&(i as u64).to_le_bytes()),
        })
        .collect()
}

fn fetcher(dir: &std::path::Path, config: FetchConfig) -> Arc<Fetcher> {
    let cache = ChunkCache::open(&CacheConfig {
        dir: dir.join("cache"),
        memory_bytes: 64 << 20,
        disk_bytes: 1 << 30,
        disk_min_free_bytes: 0,
        ..CacheConfig::default()
    })
    .unwrap();
    Arc::new(Fetcher::new(cache, config))
}

/// The runtime each test drives the fetcher on.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn missing_chunks_coalesce_into_runs_within_the_gap_and_size_bounds() {
    let dir = tempfile::tempdir().unwrap();
    // Chunks of 100 bytes: 0..100, 100..200, 250..350, 1000..1100, 1100..1200.
    let layer = RemoteLayer {
        store: layout_store(dir.path()),
        digest: Digest::of(b"blob"),
        chunks: chunk_table(&[(0, 100), (100, 100), (250, 100), (1000, 100), (1100, 100)]),
    };
    // (max_gap, max_request, missing, runs)
    type Case<'a> = (u64, u64, &'a [u32], &'a [&'a [u32]]);
    let cases: &[Case] = &[
        (0, 1 << 20, &[0, 1, 2, 3, 4], &[&[0, 1], &[2], &[3, 4]]),
        (50, 1 << 20, &[0, 1, 2, 3, 4], &[&[0, 1, 2], &[3, 4]]),
        (1000, 1 << 20, &[0, 1, 2, 3, 4], &[&[0, 1, 2, 3, 4]]),
        (1000, 300, &[0, 1, 2, 3, 4], &[&[0, 1], &[2], &[3, 4]]),
        (1000, 1 << 20, &[0, 2, 4], &[&[0, 2, 4]]),
        (0, 1 << 20, &[0, 4], &[&[0], &[4]]),
        (0, 1 << 20, &[], &[]),
    ];
    for (gap, request, missing, runs) in cases {
        let f = fetcher(
            dir.path(),
            FetchConfig {
                max_gap_bytes: *gap,
                max_request_bytes: *request,
                ..FetchConfig::default()
            },
        );
        let got = f.runs(&layer, missing);
        let want: Vec<Vec<u32>> = runs.iter().map(|r| r.to_vec()).collect();
        assert_eq!(
            got, want,
            "gap {gap}, request {request}, missing {missing:?}"
        );
    }
}

#[test]
fn a_fetching_read_brings_the_uncached_chunks_after_it_within_the_amplification() {
    let dir = tempfile::tempdir().unwrap();
    let layer = RemoteLayer {
        store: layout_store(dir.path()),
        digest: Digest::of(b"blob"),
        chunks: chunk_table(&[(0, 100), (100, 100), (200, 100), (300, 100), (400, 100)]),
    };
    // (amplify_bytes, chunks read, cached before, neighbours)
    type Case<'a> = (u64, &'a [u32], &'a [u32], &'a [u32]);
    let cases: &[Case] = &[
        (0, &[0], &[], &[]),
        (300, &[0], &[], &[1, 2]),
        (1 << 20, &[0], &[], &[1, 2, 3, 4]),
        (1 << 20, &[0], &[2], &[1, 3, 4]),
        (300, &[1, 2], &[], &[3]),
        // Nothing to fetch: no neighbours either.
        (1 << 20, &[0], &[0], &[]),
    ];
    for (amplify, read, cached, neighbours) in cases {
        let sub = tempfile::tempdir().unwrap();
        let f = fetcher(
            sub.path(),
            FetchConfig {
                amplify_bytes: *amplify,
                ..FetchConfig::default()
            },
        );
        for &i in *cached {
            let data = Bytes::from(vec![i as u8; 10]);
            let digest = Digest::of(&data);
            f.cache.insert(&digest, data).unwrap();
            // Stand the cached chunk in for chunk i.
            let mut chunks = layer.chunks.to_vec();
            chunks[i as usize].digest = digest;
            let layer = RemoteLayer {
                store: layer.store.clone(),
                digest: layer.digest,
                chunks: chunks.into(),
            };
            assert_eq!(
                f.blob_neighbours(&layer, read),
                neighbours.to_vec(),
                "amplify {amplify}, read {read:?}, cached {cached:?}"
            );
        }
        if cached.is_empty() {
            assert_eq!(
                f.blob_neighbours(&layer, read),
                neighbours.to_vec(),
                "amplify {amplify}, read {read:?}"
            );
        }
    }
}

#[test]
fn a_followed_trace_spares_neighbours_only_for_the_reads_it_foresaw() {
    let dir = tempfile::tempdir().unwrap();
    let layer = RemoteLayer {
        store: layout_store(dir.path()),
        digest: Digest::of(b"blob"),
        chunks: chunk_table(&[(0, 100), (100, 100), (200, 100), (300, 100), (400, 100)]),
    };
    let f = fetcher(
        dir.path(),
        FetchConfig {
            amplify_bytes: 300,
            ..FetchConfig::default()
        },
    );
    f.follow_trace([0, 1].map(|i| layer.chunks[i].digest));
    // (chunks read, neighbours)
    type Case<'a> = (&'a [u32], &'a [u32]);
    let cases: &[Case] = &[
        // Foreseen by the trace: its next reads are prefetched, no guess.
        (&[0], &[]),
        (&[0, 1], &[]),
        // Not foreseen: read as without a trace.
        (&[2], &[3, 4]),
        // Partly foreseen: amplified from the first missing chunk.
        (&[1, 2], &[3]),
    ];
    for (read, neighbours) in cases {
        assert_eq!(
            f.blob_neighbours(&layer, read),
            neighbours.to_vec(),
            "read {read:?}"
        );
        // Read-ahead likewise: none for what the trace foresaw.
        let ahead = if neighbours.is_empty() { 0 } else { 4096 };
        assert_eq!(f.read_ahead(&layer, read, 4096), ahead, "read {read:?}");
    }
    f.count_demand(&layer, &[0, 2, 3, 4]);
    let stats = f.stats.snapshot();
    assert_eq!(
        (stats.traced_demand_chunks, stats.untraced_demand_chunks),
        (1, 3)
    );
}

/// big1.bin's content, and its first four chunks: a run the tests fetch.
fn big1_run(c: &Converted) -> (Content, Vec<u32>) {
    let content = content_of(&c.toc, "big1.bin");
    let run = content.extents.iter().take(4).map(|e| e.chunk).collect();
    (content, run)
}

fn content_of(toc: &Toc, path: &str) -> Content {
    let entry = toc
        .entries
        .iter()
        .find(|e| e.path == path.as_bytes() && e.kind == EntryKind::File)
        .unwrap();
    let mut at = 0;
    let starts: Vec<u64> = entry
        .extents
        .iter()
        .map(|e| {
            let start = at;
            at += u64::from(e.len);
            start
        })
        .collect();
    Content {
        layer: 0,
        extents: entry.extents.clone().into(),
        starts: starts.into(),
    }
}

#[test]
fn read_file_returns_the_bytes_asked_with_the_requests_expected() {
    let c = converted();
    let runtime = current_thread();
    // (file, offset, len, amplify, requests for this read from a cold cache)
    let cases: &[(&str, u64, u64, u64, u64)] = &[
        ("a.txt", 0, 13, 0, 1),
        ("a.txt", 5, 100, 0, 1),
        ("big1.bin", 0, 4096, 0, 1),
        ("big1.bin", 100_000, 60_000, 0, 1),
        ("big1.bin", 0, 200 << 10, 0, 1),
        ("big2.bin", 150_000, 1, 0, 1),
        ("big1.bin", 204_799, 10, 0, 1),
        ("b.txt", 13, 10, 0, 0),
    ];
    for (file, offset, len, amplify, requests) in cases {
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(
            dir.path(),
            FetchConfig {
                amplify_bytes: *amplify,
                ..FetchConfig::default()
            },
        );
        let content = content_of(&c.toc, file);
        let got = runtime
            .block_on(f.read_file(&c.layer, &content, *offset, *len, 0))
            .unwrap();
        let data = &c.files.iter().find(|(n, _)| n == file).unwrap().1;
        let start = (*offset as usize).min(data.len());
        let end = ((offset + len) as usize).min(data.len());
        assert_eq!(got, data[start..end], "{file} {offset}+{len}");
        assert_eq!(
            f.stats.requests.load(Ordering::Relaxed),
            *requests,
            "{file} {offset}+{len}: range requests"
        );
    }
}

#[test]
fn amplification_fetches_the_next_file_with_the_first() {
    let c = converted();
    let runtime = current_thread();
    for (amplify, requests_for_both) in [(0u64, 2u64), (1 << 20, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(
            dir.path(),
            FetchConfig {
                amplify_bytes: amplify,
                ..FetchConfig::default()
            },
        );
        for file in ["big1.bin", "big2.bin"] {
            let content = content_of(&c.toc, file);
            let got = runtime
                .block_on(f.read_file(&c.layer, &content, 0, 200 << 10, 0))
                .unwrap();
            assert_eq!(got, c.files.iter().find(|(n, _)| *n == file).unwrap().1);
        }
        assert_eq!(
            f.stats.requests.load(Ordering::Relaxed),
            requests_for_both,
            "amplify {amplify}"
        );
    }
}

#[test]
fn a_read_of_a_chunk_a_run_is_fetching_waits_for_that_run() {
    let c = converted();
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(
        dir.path(),
        FetchConfig {
            amplify_bytes: 0,
            ..FetchConfig::default()
        },
    );
    let (content, run) = big1_run(&c);
    // A read inside the run's third chunk, started while the run (say, the
    // prefetch's) is in flight: its chunk is no run's first, so the cache's
    // single flight alone would not see it.
    let offset = content.starts[2] + 10;
    let (fetched, read) = runtime.block_on(async {
        tokio::join!(
            f.fetch_run(&c.layer, &run),
            f.read_file(&c.layer, &content, offset, 100, 0)
        )
    });
    fetched.unwrap();
    let data = &c.files.iter().find(|(n, _)| *n == "big1.bin").unwrap().1;
    assert_eq!(read.unwrap(), data[offset as usize..offset as usize + 100]);
    assert_eq!(
        f.stats.requests.load(Ordering::Relaxed),
        1,
        "one request for both"
    );
    assert!(f.members().is_empty(), "the run's members are released");
}

#[test]
fn a_runs_chunks_are_stored_and_released_as_their_bytes_arrive() {
    let c = converted();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let (_, run) = big1_run(&c);
    let chunk = |i: usize| &c.layer.chunks[run[i] as usize];
    let start = chunk(0).blob_offset;
    let end = chunk(3).blob_offset + u64::from(chunk(3).compressed_len);
    let blob = blob_bytes(&c, start..end);
    // The third chunk's bytes corrupted in flight.
    let mut body = blob.clone();
    let third = (chunk(2).blob_offset - start) as usize;
    body[third + 20] ^= 0xff;
    // A trace foresees them: decoded as they come (see the next test for
    // chunks no one reads yet).
    f.follow_trace(run.iter().map(|&i| c.layer.chunks[i as usize].digest));
    let members = f.register_members(&c.layer, &run);
    let mut decoder = RunDecoder {
        fetcher: &f,
        layer: &c.layer,
        run: &run,
        start,
        next: 0,
        from_local: false,
        foreign: false,
        members: members.as_ref(),
        leader: None,
    };
    // (body received so far, chunks stored, chunks still waited for)
    let second_end = (chunk(1).blob_offset + u64::from(chunk(1).compressed_len) - start) as usize;
    let steps: [(usize, &[usize], &[usize]); 4] = [
        (10, &[], &[0, 1, 2, 3]),
        (second_end - 1, &[0], &[1, 2, 3]),
        (second_end, &[0, 1], &[2, 3]),
        (body.len(), &[0, 1, 3], &[]),
    ];
    for (received, stored, waiting) in steps {
        decoder.take(&body[..received]);
        for i in 0..4 {
            let digest = &chunk(i).digest;
            assert_eq!(
                f.cache().contains(digest),
                stored.contains(&i),
                "{received} bytes in: chunk {i} stored"
            );
            assert_eq!(
                f.members().contains_key(digest),
                waiting.contains(&i),
                "{received} bytes in: chunk {i} waited for"
            );
        }
    }
    assert!(matches!(decoder.leader, Some(Ok(_))));
    assert_eq!(f.stats.corrupt_chunks.load(Ordering::Relaxed), 1);
    // A retry's body begins again: nothing is decoded twice.
    decoder.take(&blob[..10]);
    decoder.take(&blob);
    assert_eq!(f.stats.chunks_fetched.load(Ordering::Relaxed), 3);
}

#[test]
fn neighbours_no_one_reads_yet_stay_compressed_until_read() {
    let c = converted();
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let (content, run) = big1_run(&c);
    runtime.block_on(f.fetch_run(&c.layer, &run)).unwrap();
    let digest = |i: usize| &c.layer.chunks[run[i] as usize].digest;
    assert!(
        f.cache().contains(digest(0)),
        "the run's first chunk is read: decoded"
    );
    for i in 1..4 {
        assert!(
            f.has(digest(i)) && !f.cache().contains(digest(i)),
            "chunk {i} kept compressed"
        );
    }
    let offset = content.starts[2] + 10;
    let read = runtime
        .block_on(f.read_file(&c.layer, &content, offset, 100, 0))
        .unwrap();
    let data = &c.files.iter().find(|(n, _)| *n == "big1.bin").unwrap().1;
    assert_eq!(read, data[offset as usize..offset as usize + 100]);
    assert!(f.cache().contains(digest(2)), "decoded when read");
    assert!(!f.cache().contains(digest(3)));
    assert_eq!(
        f.stats.requests.load(Ordering::Relaxed),
        1,
        "no request for it"
    );
    // A kept frame that does not decode to its digest is dropped, logged,
    // and the chunk fetched again: never served.
    f.cache().take_frame(digest(3)).unwrap();
    f.cache()
        .keep_frame(*digest(3), Bytes::from_static(b"not this chunk's frame"));
    let offset = content.starts[3] + 5;
    let read = runtime
        .block_on(f.read_file(&c.layer, &content, offset, 100, 0))
        .unwrap();
    assert_eq!(read, data[offset as usize..offset as usize + 100]);
    assert_eq!(f.stats.corrupt_chunks.load(Ordering::Relaxed), 1);
    assert_eq!(f.stats.requests.load(Ordering::Relaxed), 2, "fetched again");
}

/// A run of another blob holding the layer's chunks (a trace's pack)
/// whose first frame is spoiled, its request still open: a read of that
/// chunk on the real layer is served from the layer, not failed with the
/// run (nor left waiting for it), and the run's other chunks still come.
#[test]
fn a_read_of_a_chunk_a_foreign_run_spoils_is_served_from_the_layer() {
    let c = converted();
    let (content, run) = big1_run(&c);
    let mut pack = Vec::new();
    let mut chunks = Vec::new();
    for &i in &run {
        let chunk = &c.layer.chunks[i as usize];
        let mut frame = zstd::bulk::compress(&chunk_bytes(&c, i), 9).unwrap();
        if chunks.is_empty() {
            let middle = frame.len() / 2;
            frame[middle] ^= 0x55;
        }
        chunks.push(Chunk {
            blob_offset: pack.len() as u64,
            compressed_len: frame.len() as u32,
            ..*chunk
        });
        pack.extend_from_slice(&frame);
    }
    let (release, held) = std::sync::mpsc::channel();
    // The body stops right after the spoiled frame.
    let addr = held_registry(pack.clone(), chunks[0].compressed_len as usize, held);
    let options = crate::registry::RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let image: crate::image::ImageRef = format!("{addr}/repo:t").parse().unwrap();
    let source = RemoteLayer {
        store: ImageStore::open(&image, &options, false).unwrap(),
        digest: Digest::of(&pack),
        chunks: chunks.into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let len = u64::from(content.extents[0].len);
    let data = &c.files.iter().find(|(n, _)| *n == "big1.bin").unwrap().1;
    current_thread().block_on(async {
        let foreign = tokio::spawn({
            let (f, source) = (f.clone(), source.clone());
            let run: Vec<u32> = (0..run.len() as u32).collect();
            async move { f.fetch_foreign_run(&source, &run).await }
        });
        for _ in 0..500 {
            if f.stats.corrupt_chunks.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.stats.corrupt_chunks.load(Ordering::Relaxed), 1);
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            f.read_file(&c.layer, &content, 0, len, 0),
        )
        .await;
        assert_eq!(
            read.expect("the read waited for the spoiled run").unwrap(),
            data[..len as usize]
        );
        release.send(()).unwrap();
        foreign.await.unwrap().unwrap();
    });
    for &i in &run {
        assert!(f.has(&c.layer.chunks[i as usize].digest), "chunk {i}");
    }
}

#[test]
fn a_run_whose_first_chunk_came_otherwise_still_fetches_the_rest() {
    let c = converted();
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let (_, run) = big1_run(&c);
    // An on-demand read brought the run's first chunk (as when a start
    // reads the chunk a prefetch run begins at, just before the run).
    runtime.block_on(f.fetch_run(&c.layer, &run[..1])).unwrap();
    runtime.block_on(f.fetch_run(&c.layer, &run)).unwrap();
    for &i in &run {
        assert!(
            f.has(&c.layer.chunks[i as usize].digest),
            "chunk {i} of the run is here"
        );
    }
    assert_eq!(f.stats.requests.load(Ordering::Relaxed), 2);
}

#[test]
fn a_foreseen_read_has_no_read_ahead_and_others_wait_for_theirs() {
    let c = converted();
    let runtime = current_thread();
    let content = content_of(&c.toc, "big1.bin");
    let first = content.extents[0].chunk;
    let next = &c.layer.chunks[content.extents[1].chunk as usize].digest;
    let len = u64::from(content.extents[0].len);
    let data = &c.files.iter().find(|(n, _)| *n == "big1.bin").unwrap().1;
    // (the read is one a followed trace foresaw, requests when it returns)
    for (foreseen, requests) in [(false, 2), (true, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), FetchConfig::default());
        if foreseen {
            f.follow_trace([c.layer.chunks[first as usize].digest]);
        }
        runtime.block_on(f.fetch_run(&c.layer, &[first])).unwrap();
        let got = runtime
            .block_on(f.read_file(&c.layer, &content, 0, len, 64 << 10))
            .unwrap();
        assert_eq!(got, data[..len as usize]);
        // (the read-ahead arrives after the read returned)
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        assert_eq!(f.cache().contains(next), !foreseen, "foreseen: {foreseen}");
        assert_eq!(
            f.stats.requests.load(Ordering::Relaxed),
            requests,
            "foreseen: {foreseen}"
        );
    }
}

#[test]
fn a_completed_layer_is_verified_and_read_locally_and_one_that_lies_is_refused() {
    let c = converted();
    let runtime = current_thread();
    let config = CompletionConfig {
        request_bytes: 100 << 10,
        ..CompletionConfig::default()
    };
    let content = content_of(&c.toc, "big2.bin");
    let data = &c.files.iter().find(|(n, _)| *n == "big2.bin").unwrap().1;
    // (claimed diff_id, refused)
    let cases = [
        (c.summary.diff_id, false),
        (Digest::of(b"another tar"), true),
    ];
    for (diff_id, refused) in cases {
        let dir = tempfile::tempdir().unwrap();
        let f = fetcher(dir.path(), FetchConfig::default());
        let path = dir.path().join("blob");
        let result = runtime.block_on(f.complete(
            &c.layer,
            c.summary.blob_size,
            c.summary.toc_digest,
            diff_id,
            &path,
            &config,
            CompletionStart::Quiet,
        ));
        let requests = f.stats.requests.load(Ordering::Relaxed);
        let read = runtime.block_on(f.read_file(&c.layer, &content, 0, 1000, 0));
        if refused {
            let e = result.unwrap_err();
            assert!(matches!(e, CompletionError::Refused { .. }), "{e:?}");
            assert!(e.to_string().contains(&c.layer.digest.to_string()), "{e}");
            assert!(!f.is_complete() && !path.exists() && !partial_path(&path).exists());
            let e = read.unwrap_err();
            assert!(matches!(e, FetchError::Refused { .. }), "{e:?}");
            assert!(e.to_string().contains(&c.layer.digest.to_string()), "{e}");
            assert_eq!(f.stats.refused.load(Ordering::Relaxed), 1);
        } else {
            let report = result.unwrap();
            assert_eq!(report.fetched_bytes, c.summary.blob_size);
            assert!(f.is_complete() && path.exists());
            assert_eq!(read.unwrap(), data[..1000]);
            assert_eq!(
                f.stats.requests.load(Ordering::Relaxed),
                requests,
                "a complete layer is read from its local blob"
            );
            // A later fetcher for the same mount (a restart) uses it at once.
            let again = fetcher(&dir.path().join("again"), FetchConfig::default());
            assert!(again.use_completed(&path, c.summary.blob_size));
        }
    }
}

#[test]
fn a_completion_resumes_what_an_earlier_one_left() {
    let c = converted();
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let ImageStore::Layout { layout, .. } = &c.layer.store else {
        unreachable!()
    };
    let blob = std::fs::read(layout.blob_path(&c.layer.digest)).unwrap();
    let kept = blob.len() / 3;
    std::fs::write(partial_path(&path), &blob[..kept]).unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let report = runtime
        .block_on(f.complete(
            &c.layer,
            c.summary.blob_size,
            c.summary.toc_digest,
            c.summary.diff_id,
            &path,
            &CompletionConfig::default(),
            CompletionStart::Quiet,
        ))
        .unwrap();
    assert_eq!(report.resumed_bytes, kept as u64);
    assert_eq!(report.fetched_bytes, (blob.len() - kept) as u64);
    assert_eq!(std::fs::read(&path).unwrap(), blob);
}

#[test]
fn a_completion_that_would_fill_the_disk_does_not_start() {
    let c = converted();
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let f = fetcher(dir.path(), FetchConfig::default());
    let e = runtime
        .block_on(f.complete(
            &c.layer,
            c.summary.blob_size,
            c.summary.toc_digest,
            c.summary.diff_id,
            &path,
            &CompletionConfig {
                disk_min_free_bytes: u64::MAX / 2,
                ..CompletionConfig::default()
            },
            CompletionStart::Quiet,
        ))
        .unwrap_err();
    assert!(matches!(e, CompletionError::Incomplete { .. }), "{e:?}");
    assert!(format!("{:?}", e).contains("needed"), "{e:?}");
    assert!(!path.exists() && !partial_path(&path).exists());
    assert_eq!(f.stats.requests.load(Ordering::Relaxed), 0);
    assert_eq!(f.stats.completion_bytes.load(Ordering::Relaxed), 0);
}

/// A start that has read past `eager_fraction` of a layer has it completed
/// at once; one that has not waits for quiet; 0 turns eagerness off.
#[test]
fn a_start_that_reads_past_the_eager_fraction_completes_the_layer_at_once() {
    let runtime = current_thread();
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let config = CompletionConfig {
        quiet_secs: 3600,
        eager_fraction: 0.25,
        ..CompletionConfig::default()
    };
    let waits = |f: &Fetcher, config: &CompletionConfig| {
        runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_millis(300),
                f.wait_to_complete(config, 1000),
            )
            .await
            .ok()
        })
    };
    f.stats.bytes_fetched.store(249, Ordering::Relaxed);
    assert_eq!(waits(&f, &config), None);
    f.stats.bytes_fetched.store(250, Ordering::Relaxed);
    assert_eq!(waits(&f, &config), Some(CompletionStart::Eager));
    let off = CompletionConfig {
        eager_fraction: 0.0,
        ..config.clone()
    };
    assert_eq!(waits(&f, &off), None);
    assert!(!off.eager_for("r.example/team/app:1"));
    let images = CompletionConfig {
        eager_images: vec!["r.example/team/".into()],
        ..config
    };
    assert!(images.eager_for("r.example/team/app:1"));
    assert!(!images.eager_for("r.example/other/app:1"));
}

/// A registry for one blob whose range responses stop after `held` bytes
/// of body until `release` is told (or dropped): the fake transport of a
/// slow link. Returns its address.
fn held_registry(blob: Vec<u8>, held: usize, release: std::sync::mpsc::Receiver<()>) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let release = std::sync::Mutex::new(release);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let (mut request, mut range) = (String::new(), None);
            reader.read_line(&mut request).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                }
            }
            let Some((a, b)) = range else {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let body = &blob[a..=b];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\nConnection: close\r\n\r\n",
                body.len(),
                blob.len()
            );
            let first = held.min(body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body[..first]);
            let _ = conn.flush();
            let _ = release.lock().unwrap().recv();
            let _ = conn.write_all(&body[first..]);
        }
    });
    addr
}

#[test]
fn a_read_returns_when_its_chunks_are_in_not_when_its_run_is() {
    let c = converted();
    let (content, run) = big1_run(&c);
    let chunk = |i: usize| &c.layer.chunks[run[i] as usize];
    let blob = blob_bytes(&c, 0..c.summary.blob_size);
    let (release, held) = std::sync::mpsc::channel();
    // The body stops right after the read's chunk, the first of its run.
    let addr = held_registry(blob, chunk(0).compressed_len as usize, held);
    let options = crate::registry::RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let image: crate::image::ImageRef = format!("{addr}/repo:t").parse().unwrap();
    let layer = RemoteLayer {
        store: ImageStore::open(&image, &options, false).unwrap(),
        ..c.layer.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), FetchConfig::default());
    let runtime = current_thread();
    let len = u64::from(content.extents[0].len);
    let read = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            f.read_file(&layer, &content, 0, len, 0),
        )
        .await
    });
    let data = &c.files.iter().find(|(n, _)| *n == "big1.bin").unwrap().1;
    assert_eq!(
        read.expect("the read waited for its neighbours").unwrap(),
        data[..len as usize]
    );
    assert!(
        !f.has(&chunk(1).digest),
        "the neighbours are still on the way"
    );
    release.send(()).unwrap();
    runtime.block_on(async {
        for _ in 0..500 {
            if (1..4).all(|i| f.has(&chunk(i).digest)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the rest of the run never arrived");
    });
    assert_eq!(f.stats.requests.load(Ordering::Relaxed), 1);
}

/// A layer's open reads its TOC from the annotated offset to the blob's
/// end; an offset that is wrong (the image's word) costs a second try
/// without it, never a wrong TOC or a failed open.
#[test]
fn a_layer_opens_from_its_annotated_toc_offset_or_despite_it() {
    let c = converted();
    let (offset, size) = (c.summary.toc_offset, c.summary.blob_size);
    let runtime = current_thread();
    let offsets = [
        Some(offset),
        None,
        Some(offset - 1),
        Some(offset + 1),
        Some(0),
        Some(size),
        Some(size + 10),
        Some(u64::MAX),
    ];
    for toc_offset in offsets {
        let opened = runtime.block_on(open_layer(
            &c.layer.store,
            c.layer.digest,
            c.summary.toc_digest,
            toc_offset,
        ));
        let (image, tail) = opened.unwrap_or_else(|e| panic!("{toc_offset:?}: {e}"));
        assert_eq!(tail.blob_size, size, "{toc_offset:?}");
        assert_eq!(tail.bytes.len() as u64, size - offset, "{toc_offset:?}");
        assert_eq!(
            image.tocs[0].entries.len(),
            c.toc.entries.len(),
            "{toc_offset:?}"
        );
    }
}
