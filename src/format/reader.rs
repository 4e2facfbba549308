//! Decoding what a lazy reader fetches: the TOC frame and chunk frames.
//!
//! Both functions take the bytes as fetched and trust nothing in them: the
//! TOC is checked against the digest the image declared and validated, a
//! chunk against its sha256, before anything is used or served.

use super::limits::over;
use super::{Chunk, Footer, FormatError, Limits, Toc, SKIPPABLE_HEADER, SKIPPABLE_MAGIC_TOC};
use crate::digest::Digest;

/// Decodes and validates the TOC frame located by `footer`.
///
/// `expected` is the TOC digest from the layer's annotation; when given,
/// the frame must match it. Nothing the footer or TOC declares is
/// allocated before it is checked against `limits`.
pub fn decode_toc(
    frame: &[u8],
    footer: &Footer,
    expected: Option<&Digest>,
    limits: &Limits,
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
    let (Some(header), Some(payload)) =
        (frame.get(..SKIPPABLE_HEADER), frame.get(SKIPPABLE_HEADER..))
    else {
        return Err(malformed("TOC frame is shorter than its header".into()));
    };
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if magic != SKIPPABLE_MAGIC_TOC || len != payload.len() {
        return Err(malformed("TOC frame header is wrong".into()));
    }
    if footer.toc_uncompressed_len > limits.max_toc_bytes {
        return Err(over(
            "the TOC's uncompressed length",
            footer.toc_uncompressed_len,
            limits.max_toc_bytes,
            "max_toc_bytes",
        ));
    }
    let encoded = zstd::bulk::decompress(payload, footer.toc_uncompressed_len as usize)
        .map_err(|e| malformed(format!("TOC does not decompress: {e}")))?;
    if encoded.len() as u64 != footer.toc_uncompressed_len {
        return Err(malformed("TOC length differs from the footer's".into()));
    }
    let toc = Toc::decode(&encoded, limits)?;
    toc.validate(footer.toc_offset, limits)?;
    Ok(toc)
}

/// Decompresses one chunk frame and checks it against the TOC: its length,
/// then its sha256. Corrupt bytes are never returned, and no more than the
/// chunk's declared length (bounded when its TOC was validated) is ever
/// decompressed.
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
