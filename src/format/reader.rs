//! Decoding what a lazy reader fetches: the TOC frame and chunk frames.
//!
//! Both functions take the bytes as fetched and trust nothing in them: the
//! TOC is checked against the digest the image declared and validated, a
//! chunk against its sha256, before anything is used or served.

use super::{Chunk, Footer, FormatError, Toc, SKIPPABLE_HEADER, SKIPPABLE_MAGIC_TOC};
use crate::digest::Digest;

/// Largest TOC a reader accepts once decompressed (a guard against
/// decompression bombs; a million-file layer needs far less).
const MAX_TOC_BYTES: u64 = 512 << 20;

/// Decodes and validates the TOC frame located by `footer`.
///
/// `expected` is the TOC digest from the layer's annotation; when given,
/// the frame must match it.
pub fn decode_toc(
    frame: &[u8],
    footer: &Footer,
    expected: Option<&Digest>,
) -> Result<Toc, FormatError> {
    if frame.len() as u64 != footer.toc_length {
        return Err(FormatError::Truncated {
            needed: footer.toc_length,
            actual: frame.len() as u64,
        });
    }
    if let Some(expected) = expected {
        let actual = Digest::of(frame);
        if actual != *expected {
            return Err(FormatError::TocDigestMismatch {
                expected: *expected,
                actual,
            });
        }
    }
    let malformed = |m: String| FormatError::MalformedToc(m);
    let magic = u32::from_le_bytes(frame[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    if magic != SKIPPABLE_MAGIC_TOC || len != frame.len() - SKIPPABLE_HEADER {
        return Err(malformed("TOC frame header is wrong".into()));
    }
    if footer.toc_uncompressed_len > MAX_TOC_BYTES {
        return Err(malformed(format!(
            "TOC claims {} bytes uncompressed, more than the {MAX_TOC_BYTES} accepted",
            footer.toc_uncompressed_len
        )));
    }
    let encoded = zstd::bulk::decompress(
        &frame[SKIPPABLE_HEADER..],
        footer.toc_uncompressed_len as usize,
    )
    .map_err(|e| malformed(format!("TOC does not decompress: {e}")))?;
    if encoded.len() as u64 != footer.toc_uncompressed_len {
        return Err(malformed("TOC length differs from the footer's".into()));
    }
    let toc = Toc::decode(&encoded)?;
    toc.validate(footer.toc_offset)?;
    Ok(toc)
}

/// Decompresses one chunk frame and checks it against the TOC: its length,
/// then its sha256. Corrupt bytes are never returned.
pub fn decode_chunk(frame: &[u8], chunk: &Chunk) -> Result<Vec<u8>, FormatError> {
    let corrupt = |reason: String| FormatError::ChunkCorrupt {
        blob_offset: chunk.blob_offset,
        digest: chunk.digest,
        reason,
    };
    if frame.len() != chunk.compressed_len as usize {
        return Err(corrupt(format!(
            "frame is {} bytes, TOC says {}",
            frame.len(),
            chunk.compressed_len
        )));
    }
    let data = zstd::bulk::decompress(frame, chunk.len as usize)
        .map_err(|e| corrupt(format!("frame does not decompress: {e}")))?;
    if data.len() != chunk.len as usize {
        return Err(corrupt(format!(
            "decompressed to {} bytes, TOC says {}",
            data.len(),
            chunk.len
        )));
    }
    let actual = Digest::of(&data);
    if actual != chunk.digest {
        return Err(FormatError::ChunkDigestMismatch {
            blob_offset: chunk.blob_offset,
            expected: chunk.digest,
            actual,
        });
    }
    Ok(data)
}
