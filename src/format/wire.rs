//! The TOC's encoding: columns rather than records, so that zstd sees like
//! next to like. Chunk digests (incompressible) sit apart from everything
//! else; blob offsets are stored as gaps from the previous chunk's end;
//! paths are front-coded against the previous path; a file's extents are
//! not stored at all but derived: the writer lays every file's content in
//! consecutive chunks from an offset in the first, so the first chunk (as
//! a delta from the previous file's) and that offset are enough.

use super::{Chunk, EntryKind, Extent, FormatError, Toc, TocEntry, Xattr};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u32,
    chunk_gaps: Vec<u64>,
    chunk_compressed: Vec<u32>,
    chunk_lens: Vec<u32>,
    path_shared: Vec<u32>,
    path_suffixes: Vec<Vec<u8>>,
    kinds: Vec<EntryKind>,
    modes: Vec<u32>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    sizes: Vec<u64>,
    mtimes: Vec<i64>,
    links: Vec<Option<Vec<u8>>>,
    xattrs: Vec<Vec<Xattr>>,
    devices: Vec<(u32, u32)>,
    /// For each file with content: its first chunk minus the previous
    /// such file's first chunk.
    content_chunk_delta: Vec<u32>,
    /// For each file with content: where it starts in its first chunk.
    content_offset: Vec<u32>,
    chunk_digests: Vec<[u8; 32]>,
}

/// Encodes a TOC (uncompressed).
pub(super) fn encode(toc: &Toc) -> Vec<u8> {
    let mut wire = Wire {
        version: toc.version,
        chunk_gaps: Vec::with_capacity(toc.chunks.len()),
        chunk_compressed: toc.chunks.iter().map(|c| c.compressed_len).collect(),
        chunk_lens: toc.chunks.iter().map(|c| c.len).collect(),
        path_shared: Vec::with_capacity(toc.entries.len()),
        path_suffixes: Vec::with_capacity(toc.entries.len()),
        kinds: toc.entries.iter().map(|e| e.kind).collect(),
        modes: toc.entries.iter().map(|e| e.mode).collect(),
        uids: toc.entries.iter().map(|e| e.uid).collect(),
        gids: toc.entries.iter().map(|e| e.gid).collect(),
        sizes: toc.entries.iter().map(|e| e.size).collect(),
        mtimes: toc.entries.iter().map(|e| e.mtime).collect(),
        links: toc.entries.iter().map(|e| e.link.clone()).collect(),
        xattrs: toc.entries.iter().map(|e| e.xattrs.clone()).collect(),
        devices: toc
            .entries
            .iter()
            .map(|e| (e.dev_major, e.dev_minor))
            .collect(),
        content_chunk_delta: Vec::new(),
        content_offset: Vec::new(),
        chunk_digests: toc.chunks.iter().map(|c| c.digest.0).collect(),
    };
    let mut end = 0u64;
    for chunk in &toc.chunks {
        // Chunks are in blob order; a malformed input still round-trips.
        wire.chunk_gaps.push(chunk.blob_offset.wrapping_sub(end));
        end = chunk
            .blob_offset
            .wrapping_add(u64::from(chunk.compressed_len));
    }
    let mut previous_chunk = 0u32;
    for entry in toc.entries.iter().filter(|e| !e.extents.is_empty()) {
        let first = entry.extents[0];
        assert_eq!(
            derive_extents(&toc.chunks, first.chunk, first.offset, entry.size).as_deref(),
            Some(&entry.extents[..]),
            "the writer lays file content in consecutive chunks"
        );
        wire.content_chunk_delta
            .push(first.chunk.wrapping_sub(previous_chunk));
        wire.content_offset.push(first.offset);
        previous_chunk = first.chunk;
    }
    let mut previous: &[u8] = &[];
    for entry in &toc.entries {
        let shared = previous
            .iter()
            .zip(&entry.path)
            .take_while(|(a, b)| a == b)
            .count();
        wire.path_shared.push(shared as u32);
        wire.path_suffixes.push(entry.path[shared..].to_vec());
        previous = &entry.path;
    }
    postcard::to_stdvec(&wire).expect("serializing a TOC to memory cannot fail")
}

/// Decodes a TOC, refusing columns of different lengths.
pub(super) fn decode(bytes: &[u8]) -> Result<Toc, FormatError> {
    let malformed = |m: &str| FormatError::MalformedToc(m.to_string());
    let w: Wire = postcard::from_bytes(bytes)
        .map_err(|e| FormatError::MalformedToc(format!("TOC does not decode: {e}")))?;
    let chunks = w.chunk_gaps.len();
    if [
        w.chunk_compressed.len(),
        w.chunk_lens.len(),
        w.chunk_digests.len(),
    ]
    .iter()
    .any(|&n| n != chunks)
    {
        return Err(malformed("chunk columns differ in length"));
    }
    let entries = w.kinds.len();
    let lens = [
        w.path_shared.len(),
        w.path_suffixes.len(),
        w.modes.len(),
        w.uids.len(),
        w.gids.len(),
        w.sizes.len(),
        w.mtimes.len(),
        w.links.len(),
        w.xattrs.len(),
        w.devices.len(),
    ];
    if lens.iter().any(|&n| n != entries) {
        return Err(malformed("entry columns differ in length"));
    }
    let mut end = 0u64;
    let mut toc_chunks = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let blob_offset = end.wrapping_add(w.chunk_gaps[i]);
        end = blob_offset.wrapping_add(u64::from(w.chunk_compressed[i]));
        toc_chunks.push(Chunk {
            blob_offset,
            compressed_len: w.chunk_compressed[i],
            len: w.chunk_lens[i],
            digest: Digest(w.chunk_digests[i]),
        });
    }
    let mut toc_entries: Vec<TocEntry> = Vec::with_capacity(entries);
    let mut previous: Vec<u8> = Vec::new();
    if w.content_chunk_delta.len() != w.content_offset.len() {
        return Err(malformed("content columns differ in length"));
    }
    let mut contents = w.content_chunk_delta.iter().zip(&w.content_offset);
    let mut chunk = 0u32;
    let mut columns = w.path_suffixes.into_iter().zip(w.links).zip(w.xattrs);
    for i in 0..entries {
        let ((suffix, link), xattrs) = columns.next().expect("lengths checked");
        let has_content = w.kinds[i] == EntryKind::File && w.sizes[i] > 0;
        let extents = if has_content {
            let (delta, offset) = contents
                .next()
                .ok_or_else(|| malformed("fewer content records than files"))?;
            chunk = chunk.wrapping_add(*delta);
            derive_extents(&toc_chunks, chunk, *offset, w.sizes[i])
                .ok_or_else(|| malformed("a file's content runs past the chunk table"))?
        } else {
            Vec::new()
        };
        let shared = w.path_shared[i] as usize;
        if shared > previous.len() {
            return Err(malformed("path shares more than the previous path has"));
        }
        let mut path = previous[..shared].to_vec();
        path.extend_from_slice(&suffix);
        previous = path.clone();
        toc_entries.push(TocEntry {
            path,
            kind: w.kinds[i],
            mode: w.modes[i],
            uid: w.uids[i],
            gid: w.gids[i],
            size: w.sizes[i],
            mtime: w.mtimes[i],
            link,
            xattrs,
            dev_major: w.devices[i].0,
            dev_minor: w.devices[i].1,
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
/// whole following chunks. None if the chunk table ends first.
fn derive_extents(chunks: &[Chunk], first: u32, offset: u32, size: u64) -> Option<Vec<Extent>> {
    let mut extents = Vec::new();
    let mut left = size;
    let mut chunk = first;
    let mut at = offset;
    while left > 0 {
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
