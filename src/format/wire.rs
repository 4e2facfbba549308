//! The TOC's encoding: columns rather than records, so that zstd sees like
//! next to like. Chunk digests (incompressible) sit apart from everything
//! else; blob offsets are stored as gaps from the previous chunk's end;
//! paths are front-coded against the previous path; a file's extents are
//! not stored at all but derived: the writer lays every file's content in
//! consecutive chunks from an offset in the first, so the first chunk (as
//! a delta from the previous file's) and that offset are enough.

use super::limits::{check_chunk_lengths, over, Limits};
use super::{Chunk, EntryKind, Extent, FormatError, Toc, TocEntry, Xattr};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::marker::PhantomData;

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u32,
    chunk_gaps: Column<u64>,
    chunk_compressed: Column<u32>,
    chunk_lens: Column<u32>,
    path_shared: Column<u32>,
    path_suffixes: Column<Vec<u8>>,
    kinds: Column<EntryKind>,
    modes: Column<u32>,
    uids: Column<u32>,
    gids: Column<u32>,
    sizes: Column<u64>,
    mtimes: Column<i64>,
    links: Column<Option<Vec<u8>>>,
    xattrs: Column<Column<Xattr>>,
    devices: Column<(u32, u32)>,
    /// For each file with content: its first chunk minus the previous
    /// such file's first chunk.
    content_chunk_delta: Column<u32>,
    /// For each file with content: where it starts in its first chunk.
    content_offset: Column<u32>,
    chunk_digests: Column<[u8; 32]>,
}

thread_local! {
    /// Bytes the TOC being decoded on this thread may still allocate for
    /// its tables (see [`Column`]).
    static DECODE_BUDGET: Cell<u64> = const { Cell::new(0) };
    /// Whether the TOC being decoded on this thread ran out of budget.
    static EXHAUSTED: Cell<bool> = const { Cell::new(false) };
}

/// A vector of the wire format whose decoding is charged, before it is
/// allocated, against the thread's decode budget: every element a TOC
/// declares costs its in-memory size, whatever it costs on the wire (an
/// empty path is one byte there, 24 in memory). Encoded as a plain vector.
struct Column<T>(Vec<T>);

impl<T> From<Vec<T>> for Column<T> {
    fn from(v: Vec<T>) -> Self {
        Column(v)
    }
}

impl<T: Serialize> Serialize for Column<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Column<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Column<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Column<T>, A::Error> {
                let declared = seq.size_hint().unwrap_or(0);
                charge::<T, A::Error>(declared)?;
                let mut out = Vec::with_capacity(declared);
                while let Some(item) = seq.next_element()? {
                    if out.len() == declared {
                        charge::<T, A::Error>(1)?;
                    }
                    out.push(item);
                }
                Ok(Column(out))
            }
        }
        d.deserialize_seq(Visit(PhantomData))
    }
}

/// Takes `count` elements of `T` from the thread's decode budget. When it
/// runs out, `EXHAUSTED` is set so the caller can report the limit:
/// postcard keeps no custom error text.
fn charge<T, E: serde::de::Error>(count: usize) -> Result<(), E> {
    let cost = (count as u64).saturating_mul(std::mem::size_of::<T>().max(1) as u64);
    DECODE_BUDGET.with(|budget| {
        let left = budget.get();
        if cost > left {
            EXHAUSTED.with(|e| e.set(true));
            return Err(E::custom("over limits.max_decode_bytes"));
        }
        budget.set(left - cost);
        Ok(())
    })
}

impl<T> FromIterator<T> for Column<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Column(iter.into_iter().collect())
    }
}

/// Encodes a TOC (uncompressed).
pub(super) fn encode(toc: &Toc) -> Vec<u8> {
    let entries = &toc.entries;
    let mut wire = Wire {
        version: toc.version,
        chunk_gaps: Vec::with_capacity(toc.chunks.len()).into(),
        chunk_compressed: toc.chunks.iter().map(|c| c.compressed_len).collect(),
        chunk_lens: toc.chunks.iter().map(|c| c.len).collect(),
        path_shared: Vec::with_capacity(entries.len()).into(),
        path_suffixes: Vec::with_capacity(entries.len()).into(),
        kinds: entries.iter().map(|e| e.kind).collect(),
        modes: entries.iter().map(|e| e.mode).collect(),
        uids: entries.iter().map(|e| e.uid).collect(),
        gids: entries.iter().map(|e| e.gid).collect(),
        sizes: entries.iter().map(|e| e.size).collect(),
        mtimes: entries.iter().map(|e| e.mtime).collect(),
        links: entries.iter().map(|e| e.link.clone()).collect(),
        xattrs: entries.iter().map(|e| e.xattrs.clone().into()).collect(),
        devices: entries.iter().map(|e| (e.dev_major, e.dev_minor)).collect(),
        content_chunk_delta: Vec::new().into(),
        content_offset: Vec::new().into(),
        chunk_digests: toc.chunks.iter().map(|c| c.digest.0).collect(),
    };
    let mut end = 0u64;
    for chunk in &toc.chunks {
        // Chunks are in blob order; a malformed input still round-trips.
        wire.chunk_gaps.0.push(chunk.blob_offset.wrapping_sub(end));
        end = chunk
            .blob_offset
            .wrapping_add(u64::from(chunk.compressed_len));
    }
    let mut previous_chunk = 0u32;
    for entry in entries.iter().filter(|e| !e.extents.is_empty()) {
        let first = entry.extents[0];
        let mut budget = u64::MAX;
        assert_eq!(
            derive_extents(
                &toc.chunks,
                first.chunk,
                first.offset,
                entry.size,
                &mut budget
            )
            .as_deref(),
            Some(&entry.extents[..]),
            "the writer lays file content in consecutive chunks"
        );
        wire.content_chunk_delta
            .0
            .push(first.chunk.wrapping_sub(previous_chunk));
        wire.content_offset.0.push(first.offset);
        previous_chunk = first.chunk;
    }
    let mut previous: &[u8] = &[];
    for entry in entries {
        let shared = previous
            .iter()
            .zip(&entry.path)
            .take_while(|(a, b)| a == b)
            .count();
        wire.path_shared.0.push(shared as u32);
        wire.path_suffixes.0.push(entry.path[shared..].to_vec());
        previous = &entry.path;
    }
    postcard::to_stdvec(&wire).expect("serializing a TOC to memory cannot fail")
}

/// Decodes a TOC within `limits`: its tables are charged against
/// `max_decode_bytes` before they are allocated, its entry, chunk and
/// extent counts checked before the result is built, and columns of
/// different lengths refused.
pub(super) fn decode(bytes: &[u8], limits: &Limits) -> Result<Toc, FormatError> {
    let malformed = |m: &str| FormatError::MalformedToc(m.to_string());
    DECODE_BUDGET.with(|b| b.set(limits.max_decode_bytes));
    EXHAUSTED.with(|e| e.set(false));
    let decoded = postcard::from_bytes::<Wire>(bytes);
    DECODE_BUDGET.with(|b| b.set(0));
    if EXHAUSTED.with(|e| e.replace(false)) {
        return Err(FormatError::Limit(format!(
            "the TOC's tables need more than {} bytes (limits.max_decode_bytes)",
            limits.max_decode_bytes
        )));
    }
    let w = decoded.map_err(|e| FormatError::MalformedToc(format!("TOC does not decode: {e}")))?;
    let chunks = w.chunk_gaps.0.len();
    if [
        w.chunk_compressed.0.len(),
        w.chunk_lens.0.len(),
        w.chunk_digests.0.len(),
    ]
    .iter()
    .any(|&n| n != chunks)
    {
        return Err(malformed("chunk columns differ in length"));
    }
    let entries = w.kinds.0.len();
    let lens = [
        w.path_shared.0.len(),
        w.path_suffixes.0.len(),
        w.modes.0.len(),
        w.uids.0.len(),
        w.gids.0.len(),
        w.sizes.0.len(),
        w.mtimes.0.len(),
        w.links.0.len(),
        w.xattrs.0.len(),
        w.devices.0.len(),
    ];
    if lens.iter().any(|&n| n != entries) {
        return Err(malformed("entry columns differ in length"));
    }
    if chunks as u64 > limits.max_chunks {
        return Err(over(
            "the chunk count",
            chunks as u64,
            limits.max_chunks,
            "max_chunks",
        ));
    }
    if entries as u64 > limits.max_entries {
        return Err(over(
            "the entry count",
            entries as u64,
            limits.max_entries,
            "max_entries",
        ));
    }
    let mut end = 0u64;
    let mut toc_chunks = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let blob_offset = end.wrapping_add(w.chunk_gaps.0[i]);
        end = blob_offset.wrapping_add(u64::from(w.chunk_compressed.0[i]));
        toc_chunks.push(Chunk {
            blob_offset,
            compressed_len: w.chunk_compressed.0[i],
            len: w.chunk_lens.0[i],
            digest: Digest(w.chunk_digests.0[i]),
        });
    }
    // Chunk lengths are checked here, not only in validation: extents are
    // derived from them.
    check_chunk_lengths(&toc_chunks, limits)?;
    let mut toc_entries: Vec<TocEntry> = Vec::with_capacity(entries);
    let mut previous: Vec<u8> = Vec::new();
    if w.content_chunk_delta.0.len() != w.content_offset.0.len() {
        return Err(malformed("content columns differ in length"));
    }
    let mut contents = w.content_chunk_delta.0.iter().zip(&w.content_offset.0);
    let mut chunk = 0u32;
    let mut extents_left = limits.max_extents;
    let mut columns = w.path_suffixes.0.into_iter().zip(w.links.0).zip(w.xattrs.0);
    for i in 0..entries {
        let Some(((suffix, link), xattrs)) = columns.next() else {
            return Err(malformed("entry columns differ in length"));
        };
        let size = w.sizes.0[i];
        let has_content = w.kinds.0[i] == EntryKind::File && size > 0;
        let extents = if has_content {
            let (delta, offset) = contents
                .next()
                .ok_or_else(|| malformed("fewer content records than files"))?;
            chunk = chunk.wrapping_add(*delta);
            match derive_extents(&toc_chunks, chunk, *offset, size, &mut extents_left) {
                Some(extents) => extents,
                None if extents_left == 0 => {
                    return Err(over(
                        "the extent count",
                        limits.max_extents + 1,
                        limits.max_extents,
                        "max_extents",
                    ))
                }
                None => return Err(malformed("a file's content runs past the chunk table")),
            }
        } else {
            Vec::new()
        };
        let shared = w.path_shared.0[i] as usize;
        if shared > previous.len() {
            return Err(malformed("path shares more than the previous path has"));
        }
        let mut path = previous[..shared].to_vec();
        path.extend_from_slice(&suffix);
        if path.len() as u64 > u64::from(limits.max_path_bytes) {
            return Err(over(
                &format!("entry {i}'s path length"),
                path.len() as u64,
                u64::from(limits.max_path_bytes),
                "max_path_bytes",
            ));
        }
        previous.clone_from(&path);
        toc_entries.push(TocEntry {
            path,
            kind: w.kinds.0[i],
            mode: w.modes.0[i],
            uid: w.uids.0[i],
            gid: w.gids.0[i],
            size,
            mtime: w.mtimes.0[i],
            link,
            xattrs: xattrs.0,
            dev_major: w.devices.0[i].0,
            dev_minor: w.devices.0[i].1,
            extents,
        });
    }
    if contents.next().is_some() {
        return Err(malformed("more content records than files"));
    }
    Ok(Toc {
        version: w.version,
        chunks: toc_chunks,
        entries: toc_entries,
    })
}

/// A file's extents: `size` bytes from `offset` in chunk `first`, then
/// whole following chunks, each taken from `budget` (the extents every
/// file together may still have). None if the chunk table or the budget
/// ends first.
fn derive_extents(
    chunks: &[Chunk],
    first: u32,
    offset: u32,
    size: u64,
    budget: &mut u64,
) -> Option<Vec<Extent>> {
    let mut extents = Vec::new();
    let mut left = size;
    let mut chunk = first;
    let mut at = offset;
    while left > 0 {
        *budget = budget.checked_sub(1)?;
        let len = chunks.get(chunk as usize)?.len;
        let take = u64::from(len.checked_sub(at)?).min(left);
        if take == 0 {
            return None;
        }
        extents.push(Extent {
            chunk,
            offset: at,
            len: take as u32,
        });
        left -= take;
        chunk = chunk.checked_add(1)?;
        at = 0;
    }
    Some(extents)
}
