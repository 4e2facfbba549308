//! A trace's pack: the chunks its start read, recompressed harder than a
//! conversion can afford and laid out in access order in one blob kept
//! with the trace. A replay reads it in a few large requests instead of
//! the layers' scattered frames (on the JVM's start, 36 requests for
//! 16.7 MB), so a node that records traces from its own starts gets most
//! of a trace-ordered image's gain without a new image.

use super::trace::{Access, PackFrame, Trace, TracePack};
use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::fetch::RemoteLayer;
use crate::format::Chunk;
use bytes::Bytes;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// The pack of `trace`'s chunks, each its own zstd frame at `level`,
/// grouped by layer and in first-access order within one; a chunk
/// `chunk_bytes` does not have is left out (its replay reads the layer).
/// None when it has none of them. The frames are compressed in parallel:
/// a pack is made once and read by every cold start, so it is made at a
/// level that costs seconds of CPU.
fn build_pack(
    trace: &Trace,
    chunk_bytes: impl Fn(&Digest) -> Option<Bytes> + Sync,
    level: i32,
) -> Option<(Bytes, TracePack)> {
    let mut packed = std::collections::HashSet::new();
    let mut order = Vec::new();
    for layer in 0..trace.layers.len() as u32 {
        for access in trace.accesses.iter().filter(|a| a.layer == layer) {
            if packed.insert((access.layer, access.chunk)) {
                order.push(access);
            }
        }
    }
    let frames: Vec<Option<(&Access, Vec<u8>)>> = order
        .par_iter()
        .map(|access| {
            let data = chunk_bytes(&access.digest)?;
            match pack_frame(&data, level) {
                Ok((frame, _)) => Some((*access, frame)),
                Err(e) => {
                    tracing::warn!(error = %e, level, chunk = access.chunk, "recompressing a traced chunk failed; it is left out of the pack");
                    None
                }
            }
        })
        .collect();
    let mut blob = Vec::with_capacity(frames.iter().flatten().map(|(_, f)| f.len()).sum());
    let mut index = Vec::new();
    for (access, frame) in frames.into_iter().flatten() {
        index.push(PackFrame {
            layer: access.layer,
            chunk: access.chunk,
            offset: blob.len() as u64,
            compressed_len: frame.len() as u32,
        });
        blob.extend_from_slice(&frame);
    }
    if index.is_empty() {
        return None;
    }
    let blob = Bytes::from(blob);
    let pack = TracePack {
        digest: Digest::of(&blob),
        size: blob.len() as u64,
        frames: index,
    };
    Some((blob, pack))
}

/// zstd level every chunk is tried at first: fast enough (~1 GB/s) that
/// trying it costs nothing beside the pack's own level.
const QUICK_LEVEL: i32 = 1;

/// A chunk's frame in a pack, and the level it was made at: `level`,
/// unless a quick try does not shrink the chunk by 3 %, in which case that
/// try is the frame. zstd's high levels gain nothing on bytes that are
/// compressed already (zip, jar, gzip, media files) and spend ~0.5 s a MB
/// on them at 19, which would keep a node that publishes the trace of a
/// start reading such files busy for minutes.
fn pack_frame(data: &[u8], level: i32) -> std::io::Result<(Vec<u8>, i32)> {
    let quick = zstd::bulk::compress(data, QUICK_LEVEL)?;
    if level <= QUICK_LEVEL || quick.len() as u64 * 100 >= data.len() as u64 * 97 {
        return Ok((quick, QUICK_LEVEL));
    }
    Ok((zstd::bulk::compress(data, level)?, level))
}

/// `trace` with the pack of its chunks that `cache` holds, at zstd `level`
/// (none at 0, or when the cache holds none of them), and the pack's blob
/// to publish with it.
pub fn with_pack(mut trace: Trace, cache: &ChunkCache, level: i32) -> (Trace, Option<Bytes>) {
    trace.pack = None;
    if level == 0 {
        return (trace, None);
    }
    match build_pack(&trace, |d| cache.get(d), level) {
        Some((blob, index)) => {
            trace.pack = Some(index);
            (trace, Some(blob))
        }
        None => (trace, None),
    }
}

/// The pack (checked with [`Trace::check_pack`]) as layers a replay reads:
/// per layer with frames, the pack blob with those frames as its chunk
/// table (each with its chunk's length and digest from `layers`' TOCs, so
/// what it decodes to is verified as the layer's chunk and cached as
/// one), and the trace's accesses of packed chunks in their order.
pub(super) fn pack_layers(
    trace: &Trace,
    pack: &TracePack,
    layers: &[RemoteLayer],
) -> (Arc<Vec<RemoteLayer>>, Vec<Access>) {
    let mut packed: Vec<RemoteLayer> = Vec::new();
    let mut index_of_layer: HashMap<u32, u32> = HashMap::new();
    let mut tables: Vec<Vec<Chunk>> = Vec::new();
    let mut at: HashMap<(u32, u32), (u32, u32)> = HashMap::new();
    for f in &pack.frames {
        let layer = *index_of_layer.entry(f.layer).or_insert_with(|| {
            tables.push(Vec::new());
            (tables.len() - 1) as u32
        });
        let chunk = &layers[f.layer as usize].chunks[f.chunk as usize];
        let table = &mut tables[layer as usize];
        at.insert((f.layer, f.chunk), (layer, table.len() as u32));
        table.push(Chunk {
            blob_offset: f.offset,
            compressed_len: f.compressed_len,
            len: chunk.len,
            digest: chunk.digest,
        });
    }
    let mut order: Vec<(u32, u32)> = index_of_layer.into_iter().collect();
    order.sort_unstable_by_key(|&(_, packed)| packed);
    for ((layer, _), table) in order.into_iter().zip(tables) {
        packed.push(RemoteLayer {
            store: layers[layer as usize].store.clone(),
            digest: pack.digest,
            chunks: table.into(),
        });
    }
    let accesses = trace
        .accesses
        .iter()
        .filter_map(|a| {
            let &(layer, chunk) = at.get(&(a.layer, a.chunk))?;
            Some(Access {
                layer,
                chunk,
                ..a.clone()
            })
        })
        .collect();
    (Arc::new(packed), accesses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::fetch::test_layer::{chunk_bytes, converted, Converted};
    use crate::fetch::{FetchConfig, Fetcher};
    use crate::image::{ImageStore, OciLayout};
    use crate::prefetch::{prefetch, PrefetchConfig, TRACE_VERSION};
    use std::sync::atomic::Ordering;

    /// The fetch tests' converted layer, in a layout that holds its blob
    /// only when `with_blob`; and each chunk's bytes.
    struct Layer {
        _converted: Converted,
        layout: OciLayout,
        remote: RemoteLayer,
        chunks: Vec<Vec<u8>>,
    }

    fn layer(with_blob: bool) -> Layer {
        let converted = converted();
        let chunks = (0..converted.layer.chunks.len() as u32)
            .map(|i| chunk_bytes(&converted, i))
            .collect();
        let ImageStore::Layout { layout, .. } = &converted.layer.store else {
            unreachable!()
        };
        let layout = layout.clone();
        if !with_blob {
            std::fs::remove_file(layout.blob_path(&converted.summary.blob_digest)).unwrap();
        }
        Layer {
            layout,
            remote: converted.layer.clone(),
            chunks,
            _converted: converted,
        }
    }

    const TRACED: [u32; 4] = [5, 2, 9, 3];

    fn trace_of(layer: &Layer) -> Trace {
        Trace {
            version: TRACE_VERSION,
            layers: vec![layer.remote.digest],
            accesses: TRACED
                .iter()
                .map(|&chunk| Access {
                    layer: 0,
                    chunk,
                    digest: layer.remote.chunks[chunk as usize].digest,
                    at_ms: 0,
                    path: "big1.bin".into(),
                })
                .collect(),
            reads: Vec::new(),
            pack: None,
        }
    }

    /// The trace with a pack built from the layer's chunks, `spoil`ed
    /// (as published: the index names the spoiled blob), in the layout
    /// when `published`.
    fn packed(layer: &Layer, spoil: impl Fn(&mut Vec<u8>, &TracePack), published: bool) -> Trace {
        let mut trace = trace_of(layer);
        let by_digest: HashMap<Digest, Bytes> = layer
            .remote
            .chunks
            .iter()
            .zip(&layer.chunks)
            .map(|(c, data)| (c.digest, Bytes::from(data.clone())))
            .collect();
        let (blob, mut index) = build_pack(&trace, |d| by_digest.get(d).cloned(), 9).unwrap();
        let mut blob = blob.to_vec();
        spoil(&mut blob, &index);
        index.digest = Digest::of(&blob);
        if published {
            layer.layout.put_blob(&index.digest, &blob).unwrap();
        }
        trace.pack = Some(index);
        trace
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

    fn replay(layer: &Layer, trace: Trace) -> (crate::prefetch::PrefetchReport, Arc<Fetcher>) {
        replay_with(
            layer,
            trace,
            FetchConfig::default(),
            PrefetchConfig::default(),
        )
    }

    fn replay_with(
        layer: &Layer,
        trace: Trace,
        fetch: FetchConfig,
        config: PrefetchConfig,
    ) -> (crate::prefetch::PrefetchReport, Arc<Fetcher>) {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = fetcher(dir.path(), fetch);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = runtime.block_on(prefetch(
            fetcher.clone(),
            Arc::new(vec![layer.remote.clone()]),
            trace,
            config,
        ));
        (report, fetcher)
    }

    #[test]
    fn a_pack_holds_the_traced_chunks_in_access_order_recompressed() {
        let layer = layer(true);
        let trace = packed(&layer, |_, _| {}, true);
        let pack = trace.pack.as_ref().unwrap();
        let chunks: Vec<u32> = pack.frames.iter().map(|f| f.chunk).collect();
        assert_eq!(chunks, TRACED);
        let blob = std::fs::read(layer.layout.blob_path(&pack.digest)).unwrap();
        assert_eq!(blob.len() as u64, pack.size);
        let mut at = 0;
        for f in &pack.frames {
            assert_eq!(f.offset, at, "frames follow each other");
            at += u64::from(f.compressed_len);
            let frame = &blob[f.offset as usize..at as usize];
            let data = zstd::bulk::decompress(frame, 1 << 20).unwrap();
            assert_eq!(data, layer.chunks[f.chunk as usize], "chunk {}", f.chunk);
        }
        assert_eq!(at, pack.size);
        assert!(trace.check_pack(&[&layer.remote.chunks[..]]).is_ok());
    }

    #[test]
    fn incompressible_chunks_are_packed_at_the_quick_level() {
        // SHA-256 outputs, one after another: bytes no compressor shrinks.
        let noise: Vec<u8> = (0..8192u32)
            .flat_map(|i| Digest::of(&i.to_le_bytes()).0)
            .collect();
        let text: Vec<u8> = (0..256 << 10)
            .map(|i: u32| b"loci packs what a start reads "[(i % 29) as usize] ^ (i / 4096) as u8)
            .collect();
        for (data, expected_level) in [(&noise, QUICK_LEVEL), (&text, 19)] {
            let (frame, used) = pack_frame(data, 19).unwrap();
            assert_eq!(used, expected_level);
            assert_eq!(frame, zstd::bulk::compress(data, used).unwrap());
            assert_eq!(&zstd::bulk::decompress(&frame, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn a_replay_reads_the_pack_and_never_the_layer() {
        // The layer's blob is not there: every chunk comes from the pack.
        let layer = layer(false);
        let (report, fetcher) = replay(&layer, packed(&layer, |_, _| {}, true));
        assert_eq!((report.from_pack, report.pack_requests), (4, 1));
        assert_eq!((report.requests, report.failed), (0, 0), "{report:?}");
        for &c in &TRACED {
            let digest = layer.remote.chunks[c as usize].digest;
            assert_eq!(
                fetcher.cache().get(&digest).unwrap(),
                layer.chunks[c as usize]
            );
        }
    }

    #[test]
    fn a_pack_is_read_in_requests_of_its_own_size() {
        let layer = layer(false);
        let trace = packed(&layer, |_, _| {}, true);
        let caps = |fetch: u64, pack: u64| {
            (
                FetchConfig {
                    max_request_bytes: fetch,
                    ..FetchConfig::default()
                },
                PrefetchConfig {
                    pack_request_bytes: pack,
                    ..PrefetchConfig::default()
                },
            )
        };
        // (configs, pack requests): the layers' request cap does not cut
        // a pack; its own does, a frame at least per request.
        let cases = [(caps(1, 32 << 20), 1), (caps(8 << 20, 1), TRACED.len())];
        for ((fetch, config), requests) in cases {
            let what = format!(
                "fetch cap {}, pack cap {}",
                fetch.max_request_bytes, config.pack_request_bytes
            );
            let (report, fetcher) = replay_with(&layer, trace.clone(), fetch, config);
            assert_eq!(report.pack_requests, requests, "{what}: {report:?}");
            assert_eq!(
                (report.requests, report.failed),
                (0, 0),
                "{what}: {report:?}"
            );
            for &c in &TRACED {
                let digest = layer.remote.chunks[c as usize].digest;
                assert!(fetcher.cache().get(&digest).is_some(), "{what}: chunk {c}");
            }
        }
    }

    #[test]
    fn what_the_pack_does_not_deliver_right_comes_from_the_layer() {
        let flip = |frame: usize| {
            move |blob: &mut Vec<u8>, pack: &TracePack| {
                let f = pack.frames[frame];
                blob[(f.offset + u64::from(f.compressed_len) / 2) as usize] ^= 0x55;
            }
        };
        let layer = layer(true);
        // (trace, corrupt chunks seen, chunks read from the layer)
        let cases = [
            ("a spoiled first frame", packed(&layer, flip(0), true), 1, 1),
            (
                "a spoiled middle frame",
                packed(&layer, flip(2), true),
                1,
                1,
            ),
            (
                "a pack not in the registry",
                packed(&layer, |blob, _| blob.push(0), false),
                0,
                4,
            ),
            (
                "a pack index that does not fit",
                {
                    let mut trace = packed(&layer, |_, _| {}, true);
                    trace.pack.as_mut().unwrap().frames[1].chunk = 7;
                    trace
                },
                0,
                4,
            ),
        ];
        for (case, trace, corrupt, from_layer) in cases {
            let (report, fetcher) = replay(&layer, trace);
            for &c in &TRACED {
                let digest = layer.remote.chunks[c as usize].digest;
                assert_eq!(
                    fetcher.cache().get(&digest).as_deref(),
                    Some(&layer.chunks[c as usize][..]),
                    "{case}: chunk {c}"
                );
            }
            assert_eq!(
                fetcher.stats.corrupt_chunks.load(Ordering::Relaxed),
                corrupt,
                "{case}"
            );
            // What the layer's replay found cached came from the pack.
            assert_eq!(4 - report.already_cached, from_layer, "{case}: {report:?}");
            assert!(report.requests >= 1, "{case}: {report:?}");
        }
    }
}
