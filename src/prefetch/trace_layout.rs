//! From a start trace to a trace-ordered image and back: which files (and
//! which bytes of them) a start read, per layer, in first-read order (what
//! `loci convert --trace-of` moves to the front of each layer), and the
//! trace of the reordered image that replays those same reads, now a few
//! large range requests.

use super::lookup::find_trace;
use super::trace::{Access, FileReads, Trace, TRACE_VERSION};
use crate::digest::Digest;
use crate::fetch::{fetch_toc, LayerError, OpenedImage};
use crate::format::Toc;
use crate::image::{layers_of, platform_image, ImageError, ImageStore};
use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// One file a start read: where, which bytes (as the trace's reads name
/// them, or the chunks it read when the trace has no reads for it;
/// merged), and when first (its first access's position in the trace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedFile {
    /// The file's path in its layer (as in the TOC).
    pub path: Vec<u8>,
    /// Byte ranges of the file the start read.
    pub ranges: Vec<Range<u64>>,
    /// Position of its first access in the trace.
    pub first: usize,
}

/// Gaps between a file's read ranges up to this are cut with them (read
/// along): a hole this small is not worth a chunk and a request of its own.
const CUT_GAP: u64 = 16 << 10;

impl TracedFile {
    /// Where a trace-ordered layer cuts this file's chunks: at both edges
    /// of each run of read ranges (runs joined across gaps up to
    /// [`CUT_GAP`]), so the bytes read are chunks of their own.
    pub fn cuts(&self) -> Vec<u64> {
        let mut cuts: Vec<u64> = Vec::with_capacity(self.ranges.len() * 2);
        for r in &self.ranges {
            match cuts.last_mut() {
                Some(end) if r.start <= *end + CUT_GAP => *end = (*end).max(r.end),
                _ => cuts.extend([r.start, r.end]),
            }
        }
        cuts
    }
}

/// Traced files in first-read order, by the diff_id of the layer holding
/// them.
pub type ReadOrders = HashMap<Digest, Vec<TracedFile>>;

/// Why an image's reads could not be taken from its trace, or the new
/// trace not published.
#[derive(Debug, thiserror::Error)]
pub enum TraceLayoutError {
    /// The image, its manifest or config did not read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A layer's TOC did not read.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The image has no trace that fits it.
    #[error("{0} has no start trace that fits it")]
    NoTrace(String),
    /// The trace's reads are malformed.
    #[error(transparent)]
    Trace(#[from] super::trace::TraceError),
}

/// The reads of `trace`, whose layers are `layers` (diff_id and TOC each,
/// in the trace's layer order), per layer diff_id. Accesses naming a path
/// the TOC has no file at, or a chunk the file does not use, are skipped.
/// A file's bytes are those of its reads in the trace where it has them
/// (page-granular), else those of the chunks it read.
pub fn read_orders(trace: &Trace, layers: &[(Digest, &Toc)]) -> ReadOrders {
    let fine: HashMap<(u32, &str), &[(u64, u64)]> = trace
        .reads
        .iter()
        .map(|r| ((r.layer, r.path.as_str()), r.ranges.as_slice()))
        .collect();
    let by_path: Vec<_> = layers.iter().map(|(_, toc)| entries_by_path(toc)).collect();
    let mut files: Vec<Vec<TracedFile>> = vec![Vec::new(); layers.len()];
    let mut slot: Vec<HashMap<usize, usize>> = vec![HashMap::new(); layers.len()];
    for (position, access) in trace.accesses.iter().enumerate() {
        let layer = access.layer as usize;
        let Some((_, toc)) = layers.get(layer) else {
            continue;
        };
        let Some(&entry_index) = by_path[layer].get(&access.path) else {
            continue;
        };
        let entry = &toc.entries[entry_index];
        let mut at = 0u64;
        let mut ranges = Vec::new();
        for extent in &entry.extents {
            let len = u64::from(extent.len);
            if extent.chunk == access.chunk {
                ranges.push(at..at + len);
            }
            at += len;
        }
        if ranges.is_empty() {
            continue;
        }
        if let Some(read) = fine.get(&(access.layer, access.path.as_str())) {
            ranges = read
                .iter()
                .map(|&(start, end)| start.min(entry.size)..end.min(entry.size))
                .filter(|r| !r.is_empty())
                .collect();
        }
        let file = *slot[layer].entry(entry_index).or_insert_with(|| {
            files[layer].push(TracedFile {
                path: entry.path.clone(),
                ranges: Vec::new(),
                first: position,
            });
            files[layer].len() - 1
        });
        files[layer][file].ranges.extend(ranges);
    }
    layers
        .iter()
        .zip(files)
        .filter(|(_, files)| !files.is_empty())
        .map(|((diff_id, _), mut files)| {
            for file in &mut files {
                file.ranges = merged(std::mem::take(&mut file.ranges));
            }
            (*diff_id, files)
        })
        .collect()
}

/// A TOC's entries by the path a trace names them with.
fn entries_by_path(toc: &Toc) -> HashMap<String, usize> {
    toc.entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.display_path(), i))
        .collect()
}

fn merged(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// A trace of the image whose layers are `layers` (blob digest, diff_id,
/// TOC each, bottom first) that replays `orders` (by those diff_ids): the
/// chunks holding each traced range, files in their first-read order
/// across layers.
pub fn trace_for(orders: &ReadOrders, layers: &[(Digest, Digest, &Toc)]) -> Trace {
    let mut files: Vec<(usize, usize, &TracedFile)> = Vec::new();
    for (layer, (_, diff_id, _)) in layers.iter().enumerate() {
        if let Some(traced) = orders.get(diff_id) {
            files.extend(traced.iter().map(|f| (f.first, layer, f)));
        }
    }
    files.sort_by_key(|&(first, layer, _)| (first, layer));
    let by_path: Vec<HashMap<&[u8], usize>> = layers
        .iter()
        .map(|(_, _, toc)| {
            toc.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_slice(), i))
                .collect()
        })
        .collect();
    // Once per (chunk, file), as a recording names every file read.
    let mut seen: HashSet<(usize, u32, usize)> = HashSet::new();
    let mut accesses = Vec::new();
    let mut reads = Vec::new();
    for (first, layer, file) in files {
        let toc = layers[layer].2;
        let Some(&entry_index) = by_path[layer].get(file.path.as_slice()) else {
            continue;
        };
        let entry = &toc.entries[entry_index];
        let mut read = FileReads {
            layer: layer as u32,
            path: entry.display_path(),
            ranges: Vec::new(),
        };
        for r in &file.ranges {
            read.add((r.start, r.end));
        }
        reads.push(read);
        let mut at = 0u64;
        for extent in &entry.extents {
            let span = at..at + u64::from(extent.len);
            at = span.end;
            let read = file
                .ranges
                .iter()
                .any(|r| r.start < span.end && span.start < r.end);
            if read && seen.insert((layer, extent.chunk, entry_index)) {
                accesses.push(Access {
                    layer: layer as u32,
                    chunk: extent.chunk,
                    digest: toc.chunks[extent.chunk as usize].digest,
                    at_ms: first as u64,
                    path: entry.display_path(),
                });
            }
        }
    }
    Trace {
        version: TRACE_VERSION,
        layers: layers.iter().map(|(digest, _, _)| *digest).collect(),
        accesses,
        reads,
        pack: None,
    }
}

/// How much the files a trace read take: what a start must at least move.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpenedSize {
    /// Files the trace read (each once).
    pub files: usize,
    /// Their sizes, uncompressed.
    pub bytes: u64,
    /// Their share of the compressed chunks holding them (a chunk shared
    /// by several files counted by the bytes of it each uses).
    pub compressed_bytes: u64,
}

/// The files `trace` (of layers with these TOCs) read, whole, and what
/// they take compressed: the least a start that opens them can fetch.
pub fn opened_size(trace: &Trace, tocs: &[Toc]) -> OpenedSize {
    let by_path: Vec<_> = tocs.iter().map(entries_by_path).collect();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut size = OpenedSize::default();
    for access in &trace.accesses {
        let layer = access.layer as usize;
        let Some(&entry) = by_path.get(layer).and_then(|m| m.get(&access.path)) else {
            continue;
        };
        if !seen.insert((layer, entry)) {
            continue;
        }
        let toc = &tocs[layer];
        let entry = &toc.entries[entry];
        size.files += 1;
        size.bytes += entry.size;
        for extent in &entry.extents {
            let Some(chunk) = toc.chunks.get(extent.chunk as usize) else {
                continue;
            };
            size.compressed_bytes += u64::from(extent.len) * u64::from(chunk.compressed_len)
                / u64::from(chunk.len.max(1));
        }
    }
    size
}

/// The reads of the start trace published with the loci image at `store`
/// (for this host's platform), per layer diff_id.
pub async fn read_orders_of(store: &ImageStore) -> Result<ReadOrders, TraceLayoutError> {
    let image = platform_image(store).await?;
    let digests: Vec<Digest> = image.layers.iter().map(|l| l.digest).collect();
    let trace = find_trace(
        store,
        &image.manifest.digest,
        std::future::ready(Some(digests)),
    )
    .await
    .ok_or_else(|| TraceLayoutError::NoTrace(store.to_string()))?;
    trace.check_reads()?;
    let mut tocs = Vec::new();
    for layer in &image.layers {
        tocs.push(fetch_toc(store, layer).await?.1);
    }
    let layers: Vec<(Digest, &Toc)> = image
        .layers
        .iter()
        .zip(&tocs)
        .map(|(l, toc)| (l.diff_id, toc))
        .collect();
    Ok(read_orders(&trace, &layers))
}

/// The trace that replays `orders` (by the diff_ids of its layers) on
/// `image` (as opened to mount it, TOCs and all): what `convert
/// --trace-of` publishes with the image it wrote.
pub fn trace_for_image(
    image: &OpenedImage,
    orders: &ReadOrders,
) -> Result<Trace, TraceLayoutError> {
    let (Some(manifest), Some(config)) = (&image.manifest, &image.config) else {
        return Err(ImageError::Invalid {
            what: "image".into(),
            reason: "opened without its manifest and config".into(),
        }
        .into());
    };
    let described =
        layers_of(&manifest.bytes, &config.bytes).map_err(|reason| ImageError::Invalid {
            what: format!("image {}", manifest.digest),
            reason,
        })?;
    let layers: Vec<(Digest, Digest, &Toc)> = described
        .iter()
        .zip(&image.tocs)
        .map(|(l, toc)| (l.digest, l.diff_id, toc))
        .collect();
    Ok(trace_for(orders, &layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Chunk, EntryKind, Extent, TocEntry};

    fn chunk(i: u8) -> Chunk {
        Chunk {
            blob_offset: u64::from(i) * 100,
            compressed_len: 100,
            len: 1000,
            digest: Digest::of(&[i]),
        }
    }

    fn file(path: &str, extents: &[(u32, u32, u32)]) -> TocEntry {
        TocEntry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: extents.iter().map(|e| u64::from(e.2)).sum(),
            mtime: 0,
            link: None,
            xattrs: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            extents: extents
                .iter()
                .map(|&(chunk, offset, len)| Extent { chunk, offset, len })
                .collect(),
        }
    }

    fn access(layer: u32, chunk: u32, path: &str) -> Access {
        Access {
            layer,
            chunk,
            digest: Digest::of(&[chunk as u8]),
            at_ms: 0,
            path: path.into(),
        }
    }

    #[test]
    fn reads_become_file_ranges_and_come_back_as_the_new_layouts_chunks() {
        // Old layer: big.so in chunks 0..3 (1000 bytes each), a pack (chunk
        // 3) holding a.py and b.py.
        let old = Toc {
            version: 1,
            chunks: (0..4).map(chunk).collect(),
            entries: vec![
                file(
                    "usr/lib/big.so",
                    &[(0, 0, 1000), (1, 0, 1000), (2, 0, 1000)],
                ),
                file("app/a.py", &[(3, 0, 10)]),
                file("app/b.py", &[(3, 500, 20)]),
            ],
        };
        let (old_diff, new_diff, blob) = (Digest::of(b"d0"), Digest::of(b"d1"), Digest::of(b"b1"));
        let trace = Trace {
            pack: None,
            version: TRACE_VERSION,
            layers: vec![Digest::of(b"old")],
            accesses: vec![
                access(0, 3, "app/b.py"),
                access(0, 2, "usr/lib/big.so"),
                access(0, 0, "usr/lib/big.so"),
                access(0, 9, "no/such/file"),
            ],
            reads: Vec::new(),
        };
        let orders = read_orders(&trace, &[(old_diff, &old)]);
        assert_eq!(
            orders[&old_diff],
            [
                TracedFile {
                    path: b"app/b.py".to_vec(),
                    ranges: vec![Range { start: 0, end: 20 }],
                    first: 0
                },
                TracedFile {
                    path: b"usr/lib/big.so".to_vec(),
                    ranges: vec![0..1000, 2000..3000],
                    first: 1
                },
            ]
        );
        // The reordered layer: b.py packed first (chunk 0), big.so after in
        // chunks 1..4.
        let new = Toc {
            version: 1,
            chunks: (0..5).map(chunk).collect(),
            entries: vec![
                file("app/b.py", &[(0, 0, 20)]),
                file(
                    "usr/lib/big.so",
                    &[(1, 0, 1000), (2, 0, 1000), (3, 0, 1000)],
                ),
                file("app/a.py", &[(4, 0, 10)]),
            ],
        };
        let orders = HashMap::from([(new_diff, orders[&old_diff].clone())]);
        let trace = trace_for(&orders, &[(blob, new_diff, &new)]);
        // b.py (20 of chunk 0's 1000 bytes, 100 compressed) and big.so
        // (three whole chunks).
        assert_eq!(
            opened_size(&trace, std::slice::from_ref(&new)),
            OpenedSize {
                files: 2,
                bytes: 3020,
                compressed_bytes: 2 + 300
            }
        );
        assert_eq!(trace.layers, [blob]);
        let got: Vec<(u32, u32)> = trace.accesses.iter().map(|a| (a.layer, a.chunk)).collect();
        assert_eq!(got, [(0, 0), (0, 1), (0, 3)]);
        assert_eq!(trace.accesses[1].digest, new.chunks[1].digest);
    }

    #[test]
    fn a_traces_reads_are_the_bytes_cut_and_replayed() {
        // big.so in chunks 0..3 (1000 bytes each); the start read two
        // pieces of it, inside chunks 0 and 2.
        let old = Toc {
            version: 1,
            chunks: (0..3).map(chunk).collect(),
            entries: vec![file(
                "usr/lib/big.so",
                &[(0, 0, 1000), (1, 0, 1000), (2, 0, 1000)],
            )],
        };
        let diff = Digest::of(b"d0");
        let trace = Trace {
            pack: None,
            version: TRACE_VERSION,
            layers: vec![Digest::of(b"old")],
            accesses: vec![
                access(0, 0, "usr/lib/big.so"),
                access(0, 2, "usr/lib/big.so"),
            ],
            reads: vec![FileReads {
                layer: 0,
                path: "usr/lib/big.so".into(),
                ranges: vec![(100, 200), (2500, 2600), (2900, 9000)],
            }],
        };
        let orders = read_orders(&trace, &[(diff, &old)]);
        let big = &orders[&diff][0];
        assert_eq!(big.ranges, [100..200, 2500..2600, 2900..3000]);
        // Holes under CUT_GAP are read along.
        assert_eq!(big.cuts(), [100, 3000]);
        let apart = TracedFile {
            path: Vec::new(),
            ranges: vec![0..4096, 100_000..110_000, 120_000..130_000],
            first: 0,
        };
        assert_eq!(apart.cuts(), [0, 4096, 100_000, 130_000]);
        // Without reads, the chunks read.
        let coarse = Trace {
            reads: Vec::new(),
            ..trace
        };
        assert_eq!(
            read_orders(&coarse, &[(diff, &old)])[&diff][0].ranges,
            [0..1000, 2000..3000]
        );
        // The layer cut there: the new trace replays only the chunks of
        // the read pieces, and carries the reads on.
        let new = Toc {
            version: 1,
            chunks: (0..4).map(chunk).collect(),
            entries: vec![file(
                "usr/lib/big.so",
                &[(0, 0, 100), (1, 0, 100), (2, 0, 2300), (3, 0, 500)],
            )],
        };
        let blob = Digest::of(b"b1");
        let trace = trace_for(&orders, &[(blob, diff, &new)]);
        let got: Vec<u32> = trace.accesses.iter().map(|a| a.chunk).collect();
        assert_eq!(got, [1, 3]);
        assert_eq!(trace.reads.len(), 1);
        assert_eq!(
            trace.reads[0].ranges,
            [(100, 200), (2500, 2600), (2900, 3000)]
        );
        assert!(trace.check_reads().is_ok());
    }
}
