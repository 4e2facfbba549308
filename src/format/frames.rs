//! Reading a converted blob's data one zstd frame at a time, remembering
//! where each frame's output lands in the layer tar. That map is what ties
//! a TOC's chunks to the tar: a chunk's bytes are the tar's bytes at the
//! offset where its frame decodes.

use super::{decode_chunk, Chunk, FormatError, Limits};
use std::collections::HashMap;
use std::io::{self, Read};

/// zstd's magic number, and the mask and value of skippable frames'.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_BASE: u32 = 0x184D_2A50;

/// Decodes the data frames of a blob (its bytes up to the TOC) in order,
/// as a reader of the layer tar; records, for each frame, the blob offset
/// it starts at and the tar offset and length of its output.
pub(super) struct FrameReader<R> {
    blob: R,
    /// Where the next frame starts in the blob.
    blob_offset: u64,
    /// Where the data frames end (the TOC's offset).
    data_end: u64,
    /// Longest frame accepted, compressed or not.
    max_frame: u64,
    /// Output of the current frame not yet read.
    pending: Vec<u8>,
    pending_at: usize,
    /// Bytes of tar produced so far.
    tar_offset: u64,
    /// Blob offset of each data frame -> (tar offset, length) of its output.
    pub(super) frames: HashMap<u64, (u64, u64)>,
    /// Bytes read ahead of the current frame.
    lookahead: Vec<u8>,
    /// The TOC's chunks by blob offset: their frames are checked against
    /// them (length, sha256) as they are decoded.
    chunks: HashMap<u64, Chunk>,
    /// Chunks whose frame was decoded and checked.
    pub(super) chunks_checked: usize,
    /// Why the stream stopped, when a chunk was refused (the io::Error the
    /// reader returns carries it only as text).
    pub(super) refused: Option<FormatError>,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `blob`, positioned at its start, up to `data_end`,
    /// checking those that are `chunks` against them.
    pub(super) fn new(blob: R, data_end: u64, chunks: &[Chunk], limits: &Limits) -> FrameReader<R> {
        FrameReader {
            blob,
            blob_offset: 0,
            data_end,
            max_frame: limits.max_frame_bytes().max(limits.max_toc_frame_bytes),
            pending: Vec::new(),
            pending_at: 0,
            tar_offset: 0,
            frames: HashMap::new(),
            lookahead: Vec::new(),
            chunks: chunks.iter().map(|c| (c.blob_offset, *c)).collect(),
            chunks_checked: 0,
            refused: None,
        }
    }

    /// Bytes of tar produced so far.
    pub(super) fn tar_offset(&self) -> u64 {
        self.tar_offset
    }

    fn corrupt(&self, reason: impl Into<String>) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            FormatError::StreamCorrupt {
                offset: self.tar_offset,
                reason: format!(
                    "frame at blob offset {}: {}",
                    self.blob_offset,
                    reason.into()
                ),
            },
        )
    }

    /// Tops the lookahead up to `want` bytes (fewer at the end of the data).
    fn fill(&mut self, want: u64) -> io::Result<()> {
        let left = self.data_end - self.blob_offset;
        let want = want.min(left) as usize;
        if self.lookahead.len() < want {
            let have = self.lookahead.len();
            self.lookahead.resize(want, 0);
            self.blob.read_exact(&mut self.lookahead[have..])?;
        }
        Ok(())
    }

    /// Decodes the next frame into `pending`; false at the end of the data.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.blob_offset >= self.data_end {
                return Ok(false);
            }
            let mut window = 64 * 1024u64;
            let length = loop {
                self.fill(window)?;
                match zstd::zstd_safe::find_frame_compressed_size(&self.lookahead) {
                    Ok(n) => break n as u64,
                    Err(_) if (self.lookahead.len() as u64) < window => {
                        return Err(self.corrupt("not a whole zstd frame"));
                    }
                    Err(_) if window >= self.max_frame => {
                        return Err(self.corrupt("longer than any frame may be"));
                    }
                    Err(_) => window = (window * 4).min(self.max_frame),
                }
            };
            let frame: Vec<u8> = self.lookahead.drain(..length as usize).collect();
            let start = self.blob_offset;
            self.blob_offset += length;
            let magic = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
            if magic & SKIPPABLE_MASK == SKIPPABLE_BASE {
                continue; // produces no output, as in any zstd decoder
            }
            if magic != ZSTD_MAGIC {
                return Err(self.corrupt("not a zstd frame"));
            }
            if let Some(chunk) = self.chunks.get(&start) {
                let data = match decode_chunk(&frame, chunk) {
                    Ok(data) => data,
                    Err(e) => {
                        let error = self.corrupt(e.to_string());
                        self.refused = Some(e);
                        return Err(error);
                    }
                };
                self.chunks_checked += 1;
                self.frames
                    .insert(start, (self.tar_offset, data.len() as u64));
                self.pending = data;
                self.pending_at = 0;
                return Ok(true);
            }
            let declared = match zstd::zstd_safe::get_frame_content_size(&frame) {
                Ok(Some(n)) if n <= self.max_frame => n,
                Ok(Some(n)) => return Err(self.corrupt(format!("declares {n} bytes of output"))),
                _ => return Err(self.corrupt("does not declare its output's length")),
            };
            let data = zstd::bulk::decompress(&frame, declared as usize)
                .map_err(|e| self.corrupt(format!("does not decompress: {e}")))?;
            if data.len() as u64 != declared {
                return Err(self.corrupt("output differs from its declared length"));
            }
            self.frames.insert(start, (self.tar_offset, declared));
            self.pending = data;
            self.pending_at = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending_at == self.pending.len() {
            if !self.next_frame()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.pending_at);
        buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
        self.pending_at += n;
        self.tar_offset += n as u64;
        Ok(n)
    }
}
