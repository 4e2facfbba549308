//! End-to-end verification of a converted blob held locally: every chunk
//! against its sha256, and the whole decompressed stream against the
//! layer's diff_id.

use super::frames::FrameReader;
use super::writer::toc_entry;
use super::{decode_toc, Footer, FormatError, Limits, Toc, TocEntry, FOOTER_SIZE};
use crate::digest::{Digest, Hasher};
use std::collections::HashMap;
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
///
/// Besides every chunk against its sha256 and the whole stream against the
/// diff_id, the TOC must say exactly what the tar says: the same entries in
/// the same order with the same metadata (type, mode with its setuid bits,
/// owner, size, time, link target, xattrs, device numbers), and each file's
/// extents must lie where the tar has that file's bytes. A reader serves
/// only what the TOC says, so a TOC that lies is refused, naming the entry.
pub fn verify_layer<R: Read + Seek>(
    blob: &mut R,
    blob_size: u64,
    expected_toc: Option<&Digest>,
    expected_diff_id: Option<&Digest>,
) -> Result<(Toc, VerifyReport), FormatError> {
    let (footer, toc) = read_toc(blob, blob_size, expected_toc)?;
    blob.seek(SeekFrom::Start(0))?;
    // One pass: each frame is decompressed once, a chunk's checked against
    // the TOC (length, sha256) as it is.
    let frames = FrameReader::new(
        blob.by_ref().take(footer.toc_offset),
        footer.toc_offset,
        &toc.chunks,
        Limits::node(),
    );
    let mut tap = HashingSink {
        inner: frames,
        hasher: Hasher::default(),
    };
    let seen = read_tar(&mut tap).map_err(|e| match tap.inner.refused.take() {
        Some(refused) => refused,
        None => e,
    })?;
    let uncompressed_size = tap.inner.tar_offset();
    let diff_id = tap.hasher.finish();
    if let Some(expected) = expected_diff_id {
        if *expected != diff_id {
            return Err(FormatError::DiffIdMismatch {
                expected: *expected,
                actual: diff_id,
            });
        }
    }
    if tap.inner.chunks_checked != toc.chunks.len() {
        let missing = toc
            .chunks
            .iter()
            .find(|c| !tap.inner.frames.contains_key(&c.blob_offset))
            .copied()
            .unwrap_or(toc.chunks[0]);
        return Err(FormatError::ChunkCorrupt {
            blob_offset: missing.blob_offset,
            digest: missing.digest,
            reason: "no frame of the layer's data starts there".into(),
        });
    }
    check_toc_against_tar(&toc, &seen, &tap.inner.frames)?;
    let report = VerifyReport {
        entries: toc.entries.len(),
        chunks: tap.inner.chunks_checked,
        diff_id,
        uncompressed_size,
    };
    Ok((toc, report))
}

/// Every entry of the tar `stream` (as a TOC entry would say it) with
/// where its data starts, read to the stream's end.
fn read_tar<R: Read>(stream: &mut R) -> Result<Vec<(TocEntry, u64)>, FormatError> {
    let mut seen = Vec::new();
    let mut archive = tar::Archive::new(stream);
    let stream_err = |e: io::Error| FormatError::StreamCorrupt {
        offset: 0,
        reason: e.to_string(),
    };
    for item in archive.entries().map_err(stream_err)? {
        let mut item = item.map_err(stream_err)?;
        if let Some(entry) = toc_entry(&mut item)? {
            seen.push((entry, item.raw_file_position()));
        }
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(stream_err)?;
    Ok(seen)
}

/// The TOC's entries against the tar's (`seen`: each entry as the tar
/// describes it, with where its data starts in the tar), and each file's
/// extents against where its frames decode (`frames`: blob offset ->
/// (tar offset, length)).
fn check_toc_against_tar(
    toc: &Toc,
    seen: &[(TocEntry, u64)],
    frames: &HashMap<u64, (u64, u64)>,
) -> Result<(), FormatError> {
    let disagree = |path: &[u8], what: String| FormatError::TocDisagrees {
        path: String::from_utf8_lossy(path).into_owned(),
        what,
    };
    for (claimed, (actual, data_at)) in toc.entries.iter().zip(seen) {
        let fields: [(&str, String, String); 11] = [
            (
                "path",
                format!("{:?}", claimed.display_path()),
                format!("{:?}", actual.display_path()),
            ),
            (
                "type",
                format!("{:?}", claimed.kind),
                format!("{:?}", actual.kind),
            ),
            (
                "mode",
                format!("{:o}", claimed.mode),
                format!("{:o}", actual.mode),
            ),
            ("uid", claimed.uid.to_string(), actual.uid.to_string()),
            ("gid", claimed.gid.to_string(), actual.gid.to_string()),
            ("size", claimed.size.to_string(), actual.size.to_string()),
            ("mtime", claimed.mtime.to_string(), actual.mtime.to_string()),
            (
                "link target",
                format!("{:?}", claimed.link),
                format!("{:?}", actual.link),
            ),
            (
                "xattrs",
                format!("{:?}", claimed.xattrs),
                format!("{:?}", actual.xattrs),
            ),
            (
                "device major",
                claimed.dev_major.to_string(),
                actual.dev_major.to_string(),
            ),
            (
                "device minor",
                claimed.dev_minor.to_string(),
                actual.dev_minor.to_string(),
            ),
        ];
        if let Some((field, toc_says, tar_says)) = fields.iter().find(|(_, a, b)| a != b) {
            return Err(disagree(
                &actual.path,
                format!("{field}: the TOC says {toc_says}, the tar {tar_says}"),
            ));
        }
        let mut covered = 0u64;
        for extent in &claimed.extents {
            let chunk = &toc.chunks[extent.chunk as usize];
            let Some(&(frame_at, frame_len)) = frames.get(&chunk.blob_offset) else {
                return Err(disagree(
                    &claimed.path,
                    format!("chunk {} is not a frame of the layer's data", extent.chunk),
                ));
            };
            if frame_len != u64::from(chunk.len)
                || frame_at + u64::from(extent.offset) != data_at + covered
            {
                return Err(disagree(
                    &claimed.path,
                    format!("its bytes from file offset {covered} are not where the tar has them"),
                ));
            }
            covered += u64::from(extent.len);
        }
    }
    if toc.entries.len() != seen.len() {
        return Err(disagree(
            b"",
            format!(
                "the TOC has {} entries, the tar {}",
                toc.entries.len(),
                seen.len()
            ),
        ));
    }
    Ok(())
}

/// Passes the tar through while hashing it (the diff_id).
struct HashingSink<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingSink<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
