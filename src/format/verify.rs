//! End-to-end verification of a converted blob held locally: every chunk
//! against its sha256, and the whole decompressed stream against the
//! layer's diff_id.

use super::{decode_chunk, decode_toc, Footer, FormatError, Limits, Toc, FOOTER_SIZE};
use crate::digest::{Digest, Hasher};
use std::io::{self, Read, Seek, SeekFrom};

/// What a successful verification checked.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// TOC entries.
    pub entries: usize,
    /// Chunks decompressed and hashed.
    pub chunks: usize,
    /// Digest of the whole decompressed stream.
    pub diff_id: Digest,
    /// Size of the whole decompressed stream.
    pub uncompressed_size: u64,
}

/// Reads the footer and TOC of a local blob of `blob_size` bytes, within
/// the node's [`Limits`].
pub fn read_toc<R: Read + Seek>(
    blob: &mut R,
    blob_size: u64,
    expected_toc: Option<&Digest>,
) -> Result<(Footer, Toc), FormatError> {
    let limits = Limits::node();
    let tail_len = (FOOTER_SIZE as u64).min(blob_size);
    let mut tail = vec![0u8; tail_len as usize];
    blob.seek(SeekFrom::Start(blob_size - tail_len))?;
    blob.read_exact(&mut tail)?;
    let footer = Footer::parse(&tail, blob_size, limits)?;
    let mut frame = vec![0u8; footer.toc_length as usize];
    blob.seek(SeekFrom::Start(footer.toc_offset))?;
    blob.read_exact(&mut frame)?;
    let toc = decode_toc(&frame, &footer, expected_toc, limits)?;
    Ok((footer, toc))
}

/// Verifies a whole converted blob. `expected_toc` and `expected_diff_id`
/// come from the image (annotation, config) when known.
pub fn verify_layer<R: Read + Seek>(
    blob: &mut R,
    blob_size: u64,
    expected_toc: Option<&Digest>,
    expected_diff_id: Option<&Digest>,
) -> Result<(Toc, VerifyReport), FormatError> {
    let (footer, toc) = read_toc(blob, blob_size, expected_toc)?;
    let mut chunks = 0;
    let mut frame = Vec::new();
    for chunk in &toc.chunks {
        frame.resize(chunk.compressed_len as usize, 0);
        blob.seek(SeekFrom::Start(chunk.blob_offset))?;
        blob.read_exact(&mut frame)?;
        decode_chunk(&frame, chunk)?;
        chunks += 1;
    }
    blob.seek(SeekFrom::Start(0))?;
    let data = blob.by_ref().take(footer.toc_offset);
    let mut decoder = zstd::stream::read::Decoder::new(data)?;
    let mut hashing = HashingSink::default();
    if let Err(e) = io::copy(&mut decoder, &mut hashing) {
        return Err(FormatError::StreamCorrupt {
            offset: hashing.written,
            reason: e.to_string(),
        });
    }
    let uncompressed_size = hashing.written;
    let diff_id = hashing.hasher.finish();
    if let Some(expected) = expected_diff_id {
        if *expected != diff_id {
            return Err(FormatError::DiffIdMismatch {
                expected: *expected,
                actual: diff_id,
            });
        }
    }
    let report = VerifyReport {
        entries: toc.entries.len(),
        chunks,
        diff_id,
        uncompressed_size,
    };
    Ok((toc, report))
}

#[derive(Default)]
struct HashingSink {
    hasher: Hasher,
    written: u64,
}

impl io::Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
