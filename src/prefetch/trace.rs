//! The trace: which chunks of which layers a start read, in order.

use crate::digest::Digest;
use crate::fetch::RemoteLayer;
use crate::format::Chunk;
use serde::{Deserialize, Serialize};

/// The trace format version this build reads and writes.
pub const TRACE_VERSION: u32 = 1;
/// Largest trace artifact read from a registry: a start that touches a
/// million chunks stays well under it.
pub const MAX_TRACE_BYTES: u64 = 64 << 20;

/// The chunks an image's start read, in the order of first access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Format version.
    pub version: u32,
    /// The layers (blob digests), bottom first, that `accesses` index.
    pub layers: Vec<Digest>,
    /// First accesses, in order.
    pub accesses: Vec<Access>,
    /// The bytes of each file the start read (as the kernel asked for
    /// them: page faults with their read-around, read-ahead), finer than
    /// the chunks in `accesses`: what a trace-ordered layout cuts into
    /// chunks of their own. Empty in traces from older builds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<FileReads>,
    /// The traced chunks recompressed in one blob of the trace artifact,
    /// in access order: a replay reads them in a few large requests, fewer
    /// bytes than the layers' own frames. A hint like the rest: each chunk
    /// from it is checked against the TOC's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<TracePack>,
}

/// Where a trace's traced chunks are, recompressed: the pack blob and its
/// frames (see [`Trace::pack`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePack {
    /// The pack blob, in the image's repository.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its frames, in blob order, each one chunk.
    pub frames: Vec<PackFrame>,
}

/// One chunk in a trace's pack: its own zstd frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackFrame {
    /// Index into [`Trace::layers`].
    pub layer: u32,
    /// Index into that layer's chunk table.
    pub chunk: u32,
    /// Where the frame starts in the pack.
    pub offset: u64,
    /// The frame's length.
    pub compressed_len: u32,
}

impl TracePack {
    /// The frames of layer `layer`, as a pack of a one-layer trace: what
    /// the snapshotter replays per mounted layer.
    pub fn of_layer(&self, layer: u32) -> TracePack {
        TracePack {
            frames: self
                .frames
                .iter()
                .filter(|f| f.layer == layer)
                .map(|f| PackFrame { layer: 0, ..*f })
                .collect(),
            ..self.clone()
        }
    }
}

/// The byte ranges of one file a start read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReads {
    /// Index into [`Trace::layers`].
    pub layer: u32,
    /// The file's path in its layer, as [`Access::path`] names it.
    pub path: String,
    /// Sorted, disjoint, non-empty `[start, end)` byte ranges of the file.
    pub ranges: Vec<(u64, u64)>,
}

/// Most ranges kept for one file: a start that reads a file in more
/// pieces than this has its nearest pieces merged (see
/// [`FileReads::add`]).
pub const MAX_RANGES_PER_FILE: usize = 1024;

/// The first read of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Index into [`Trace::layers`].
    pub layer: u32,
    /// Index into the layer's chunk table.
    pub chunk: u32,
    /// The chunk's digest, so a trace for other layers cannot pass.
    pub digest: Digest,
    /// Milliseconds since the recording began.
    pub at_ms: u64,
    /// The file whose read touched it first (for people reading traces).
    pub path: String,
}

/// Why a trace cannot be used for an image.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not JSON of this format, or a version this build does not read.
    #[error("trace does not decode: {0}")]
    Malformed(String),
    /// The trace was recorded for other layers.
    #[error("trace is for layers {trace:?}, the image has {image:?}")]
    OtherImage {
        trace: Vec<Digest>,
        image: Vec<Digest>,
    },
    /// A file's reads name a layer the trace does not have, or ranges
    /// that are not sorted, disjoint and non-empty, or too many.
    #[error("trace reads of {path:?} (layer {layer}) are malformed")]
    BadReads { layer: u32, path: String },
    /// The pack's index does not fit the trace or the layers.
    #[error("trace pack {pack}: {why}")]
    BadPack { pack: Digest, why: String },
    /// An access names a chunk the layer does not have.
    #[error("trace access {index} names chunk {chunk} of layer {layer}, which does not match the layer's TOC")]
    BadAccess {
        index: usize,
        layer: u32,
        chunk: u32,
    },
}

impl Trace {
    /// Parses a trace and checks its version.
    pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
        let trace: Trace =
            serde_json::from_slice(bytes).map_err(|e| TraceError::Malformed(e.to_string()))?;
        if trace.version != TRACE_VERSION {
            return Err(TraceError::Malformed(format!(
                "version {} (this build reads {TRACE_VERSION})",
                trace.version
            )));
        }
        Ok(trace)
    }

    /// Serializes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a trace serializes")
    }

    /// Checks that every file's reads name one of the trace's layers and
    /// hold at most [`MAX_RANGES_PER_FILE`] sorted, disjoint, non-empty
    /// ranges.
    pub fn check_reads(&self) -> Result<(), TraceError> {
        for reads in &self.reads {
            let sorted = reads.ranges.iter().all(|&(s, e)| s < e)
                && reads.ranges.windows(2).all(|w| w[0].1 < w[1].0);
            if reads.layer as usize >= self.layers.len()
                || !sorted
                || reads.ranges.len() > MAX_RANGES_PER_FILE
            {
                return Err(TraceError::BadReads {
                    layer: reads.layer,
                    path: reads.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Checks the trace against the layers it would be replayed on: the
    /// same layers, every access naming a chunk with that digest, and
    /// well-formed reads.
    pub fn validate(&self, layers: &[RemoteLayer]) -> Result<(), TraceError> {
        self.check_reads()?;
        let image: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
        if image != self.layers {
            return Err(TraceError::OtherImage {
                trace: self.layers.clone(),
                image,
            });
        }
        for (index, access) in self.accesses.iter().enumerate() {
            let ok = layers
                .get(access.layer as usize)
                .and_then(|l| l.chunks.get(access.chunk as usize))
                .is_some_and(|c| c.digest == access.digest);
            if !ok {
                return Err(TraceError::BadAccess {
                    index,
                    layer: access.layer,
                    chunk: access.chunk,
                });
            }
        }
        Ok(())
    }
}

impl Trace {
    /// Checks the pack's index against the chunk tables of the layers the
    /// trace is replayed on (after [`Trace::validate`]): frames in blob
    /// order, inside the pack and apart; each naming a chunk the trace
    /// reads, once; each no longer than zstd can make of its chunk. A pack
    /// that fails is not used; the trace is.
    pub fn check_pack(&self, tables: &[&[Chunk]]) -> Result<(), TraceError> {
        let Some(pack) = &self.pack else {
            return Ok(());
        };
        let bad = |why: String| TraceError::BadPack {
            pack: pack.digest,
            why,
        };
        let traced: std::collections::HashSet<(u32, u32)> =
            self.accesses.iter().map(|a| (a.layer, a.chunk)).collect();
        if pack.frames.len() > traced.len() {
            return Err(bad(format!(
                "{} frames for {} traced chunks",
                pack.frames.len(),
                traced.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(pack.frames.len());
        let mut end = 0u64;
        for (i, f) in pack.frames.iter().enumerate() {
            let chunk = tables
                .get(f.layer as usize)
                .and_then(|t| t.get(f.chunk as usize))
                .ok_or_else(|| {
                    bad(format!(
                        "frame {i} names chunk {} of layer {}, which is not there",
                        f.chunk, f.layer
                    ))
                })?;
            if !traced.contains(&(f.layer, f.chunk)) || !seen.insert((f.layer, f.chunk)) {
                return Err(bad(format!(
                    "frame {i} holds chunk {} of layer {}, which the trace does not read or another frame holds",
                    f.chunk, f.layer
                )));
            }
            let bound = zstd::zstd_safe::compress_bound(chunk.len as usize) as u64;
            let frame_end = f.offset.checked_add(u64::from(f.compressed_len));
            if f.compressed_len == 0
                || u64::from(f.compressed_len) > bound
                || f.offset < end
                || frame_end.is_none_or(|e| e > pack.size)
            {
                return Err(bad(format!(
                    "frame {i} ({} bytes at {}) is empty, larger than its chunk can compress to, out of order or past the pack's {} bytes",
                    f.compressed_len, f.offset, pack.size
                )));
            }
            end = frame_end.unwrap_or(u64::MAX);
        }
        Ok(())
    }
}

impl FileReads {
    /// Adds `range` (start < end), merging it with the ranges it touches;
    /// past [`MAX_RANGES_PER_FILE`], the pieces closest to each other are
    /// merged until the count is under it again (a bounded, coarser record
    /// of a file read in many small pieces).
    pub fn add(&mut self, range: (u64, u64)) {
        let (mut start, mut end) = range;
        if start >= end {
            return;
        }
        let at = self.ranges.partition_point(|&(_, e)| e < start);
        let mut past = at;
        while past < self.ranges.len() && self.ranges[past].0 <= end {
            start = start.min(self.ranges[past].0);
            end = end.max(self.ranges[past].1);
            past += 1;
        }
        self.ranges.splice(at..past, [(start, end)]);
        let mut gap = 4096u64;
        while self.ranges.len() > MAX_RANGES_PER_FILE {
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
            for &(s, e) in &self.ranges {
                match merged.last_mut() {
                    Some(last) if s - last.1 <= gap => last.1 = e,
                    _ => merged.push((s, e)),
                }
            }
            self.ranges = merged;
            gap = gap.saturating_mul(2); // at u64::MAX every piece merges
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_merge_what_touches_and_stay_bounded() {
        let mut reads = FileReads {
            layer: 0,
            path: "f".into(),
            ranges: Vec::new(),
        };
        // (range added, ranges after)
        type Step<'a> = ((u64, u64), &'a [(u64, u64)]);
        let steps: &[Step] = &[
            ((8192, 12288), &[(8192, 12288)]),
            ((0, 4096), &[(0, 4096), (8192, 12288)]),
            ((4096, 8192), &[(0, 12288)]),
            ((20000, 30000), &[(0, 12288), (20000, 30000)]),
            ((10000, 25000), &[(0, 30000)]),
            ((5, 5), &[(0, 30000)]),
        ];
        for (add, want) in steps {
            reads.add(*add);
            assert_eq!(reads.ranges, *want, "after {add:?}");
        }
        for i in 0..5000u64 {
            reads.add((100_000 + i * 8192, 100_000 + i * 8192 + 4096));
        }
        assert!(reads.ranges.len() <= MAX_RANGES_PER_FILE);
        assert_eq!(reads.ranges.first().unwrap().0, 0);
        assert_eq!(reads.ranges.last().unwrap().1, 100_000 + 4999 * 8192 + 4096);
    }

    fn trace_with_reads(reads: Vec<FileReads>) -> Trace {
        Trace {
            pack: None,
            version: TRACE_VERSION,
            layers: vec![Digest::of(b"layer")],
            accesses: Vec::new(),
            reads,
        }
    }

    #[test]
    fn malformed_reads_are_refused() {
        let reads = |layer, ranges: &[(u64, u64)]| FileReads {
            layer,
            path: "f".into(),
            ranges: ranges.to_vec(),
        };
        let too_many: Vec<(u64, u64)> = (0..=MAX_RANGES_PER_FILE as u64)
            .map(|i| (i * 10, i * 10 + 5))
            .collect();
        // (reads, valid)
        let cases = [
            (reads(0, &[(0, 10), (20, 30)]), true),
            (reads(1, &[(0, 10)]), false),
            (reads(0, &[(10, 10)]), false),
            (reads(0, &[(20, 30), (0, 10)]), false),
            (reads(0, &[(0, 10), (10, 30)]), false),
            (reads(0, &too_many), false),
        ];
        for (reads, valid) in cases {
            let trace = trace_with_reads(vec![reads.clone()]);
            let result = trace.validate(&[]);
            // No layers to check accesses against: only the reads decide,
            // and the layers' mismatch comes after them.
            assert_eq!(
                !matches!(result, Err(TraceError::BadReads { .. })),
                valid,
                "{reads:?}"
            );
        }
    }

    #[test]
    fn traces_without_reads_still_decode() {
        let old = br#"{"version":1,"layers":[],"accesses":[]}"#;
        let trace = Trace::decode(old).unwrap();
        assert!(trace.reads.is_empty());
        assert!(!String::from_utf8(trace.encode()).unwrap().contains("reads"));
    }

    #[test]
    fn a_pack_index_that_does_not_fit_is_refused_and_the_trace_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::image::ImageStore::Layout {
            layout: crate::image::OciLayout::open(dir.path(), true).unwrap(),
            tag: "t".into(),
        };
        let chunk = |i: u8| Chunk {
            blob_offset: u64::from(i) * 500,
            compressed_len: 500,
            len: 1000,
            digest: Digest::of(&[i]),
        };
        let layers: Vec<RemoteLayer> = (0..2u8)
            .map(|l| RemoteLayer {
                store: store.clone(),
                digest: Digest::of(&[100 + l]),
                chunks: (0..3).map(|i| chunk(l * 3 + i)).collect(),
            })
            .collect();
        let access = |layer: u32, chunk: u32| Access {
            layer,
            chunk,
            digest: layers[layer as usize].chunks[chunk as usize].digest,
            at_ms: 0,
            path: "f".into(),
        };
        let frame = |layer, chunk, offset, compressed_len| PackFrame {
            layer,
            chunk,
            offset,
            compressed_len,
        };
        let good = [
            frame(0, 0, 0, 100),
            frame(0, 2, 100, 50),
            frame(1, 1, 150, 80),
        ];
        let with = |frames: &[PackFrame], size: u64| Trace {
            version: TRACE_VERSION,
            layers: layers.iter().map(|l| l.digest).collect(),
            accesses: vec![access(0, 0), access(0, 2), access(1, 1)],
            reads: Vec::new(),
            pack: Some(TracePack {
                digest: Digest::of(b"pack"),
                size,
                frames: frames.to_vec(),
            }),
        };
        let replace = |at: usize, f: PackFrame| {
            let mut frames = good.to_vec();
            frames[at] = f;
            frames
        };
        // (frames, pack size, usable)
        let cases: Vec<(Vec<PackFrame>, u64, bool)> = vec![
            (good.to_vec(), 230, true),
            (good.to_vec(), 10_000, true),
            (good[..2].to_vec(), 150, true),
            (good.to_vec(), 229, false),
            (replace(2, frame(2, 1, 150, 80)), 230, false),
            (replace(2, frame(1, 7, 150, 80)), 230, false),
            (replace(2, frame(1, 0, 150, 80)), 230, false),
            (replace(1, frame(0, 0, 100, 50)), 230, false),
            (replace(1, frame(0, 2, 99, 50)), 230, false),
            (replace(1, frame(0, 2, 100, 0)), 230, false),
            (replace(2, frame(1, 1, 150, 1000)), 10_000, true),
            (replace(2, frame(1, 1, 150, 5000)), 10_000, false),
            (replace(2, frame(1, 1, u64::MAX - 10, 80)), u64::MAX, false),
            ([good.to_vec(), good.to_vec()].concat(), 10_000, false),
        ];
        for (frames, size, usable) in cases {
            let trace = with(&frames, size);
            assert!(trace.validate(&layers).is_ok(), "the trace itself is fine");
            let tables: Vec<&[Chunk]> = layers.iter().map(|l| &l.chunks[..]).collect();
            let checked = trace.check_pack(&tables);
            assert_eq!(checked.is_ok(), usable, "{frames:?} in {size}: {checked:?}");
        }
    }
}
