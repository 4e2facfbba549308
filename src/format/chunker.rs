//! Content-defined chunking (FastCDC 2020) of a stream, with one copy per
//! byte.
//!
//! `fastcdc`'s own `StreamCDC` keeps a buffer of exactly the largest chunk
//! size and, after every chunk, drains the chunk off its front byte by
//! byte, moves the rest down and zero-fills the buffer back to size: about
//! 5 % of a conversion's CPU time went to that. This chunker reads into a
//! block several times larger, cuts every chunk it can see whole in place,
//! and moves only the short tail down before the next read. Its cut points
//! are `StreamCDC`'s (a chunk's end depends only on the bytes from its
//! start to at most the largest size, and each cut is looked for with that
//! many bytes in view, or all that is left), so converted layers are
//! byte-for-byte what they were.

use fastcdc::v2020::{cut, Normalization, MASKS};
use std::io::{self, Read};

/// Smallest block read at once; at least twice the largest chunk.
const MIN_BLOCK: usize = 8 << 20;

/// Cuts a reader's bytes into content-defined chunks.
pub(super) struct Chunker<'b, R> {
    source: R,
    /// Lent by the caller, so that a layer's many files share one block
    /// (a fresh zeroed block per file cost more than the moves it saves).
    block: &'b mut Vec<u8>,
    /// Start of the next chunk in `block`.
    start: usize,
    /// Bytes of `block` read so far.
    filled: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl<'b, R: Read> Chunker<'b, R> {
    /// Chunks of `avg` bytes on average, from `avg / 4` (at least 64) to
    /// `avg * 4`, with normalization level 1, as `StreamCDC::new` cuts
    /// them. `avg` must be within FastCDC's bounds (256 B to 4 MiB).
    /// `block` is grown to the size the chunker needs the first time.
    pub(super) fn new(source: R, avg: u32, block: &'b mut Vec<u8>) -> Self {
        let bits = fastcdc::v2020::logarithm2(avg);
        let normalization = Normalization::Level1.bits();
        let max = avg as usize * 4;
        let size = MIN_BLOCK.max(2 * max);
        if block.len() < size {
            block.resize(size, 0);
        }
        Chunker {
            source,
            block,
            start: 0,
            filled: 0,
            eof: false,
            min: (avg as usize / 4).max(64),
            avg: avg as usize,
            max,
            mask_s: MASKS[(bits + normalization) as usize],
            mask_l: MASKS[(bits - normalization) as usize],
        }
    }

    /// The next chunk, or None at the end of the stream.
    pub(super) fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.filled - self.start < self.max && !self.eof {
            self.refill()?;
        }
        if self.start == self.filled {
            return Ok(None);
        }
        let (_, len) = cut(
            &self.block[self.start..self.filled],
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let chunk = self.block[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(Some(chunk))
    }

    /// Moves the unchunked tail to the front and reads until the block is
    /// full or the stream ends.
    fn refill(&mut self) -> io::Result<()> {
        self.block.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
        while self.filled < self.block.len() {
            match self.source.read(&mut self.block[self.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes with some structure (repeats and noise), so
    /// cuts land everywhere from the minimum to the maximum size.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(5) {
                let run = (x >> 8) as usize % 3000;
                out.extend(std::iter::repeat_n(x as u8, run));
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// A reader handing out at most `step` bytes per read, as a tar entry
    /// over a decompressor does.
    struct Dribble<'a>(&'a [u8], usize);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_where_fastcdc_stream_cdc_cuts() {
        for (len, avg, step) in [
            (0, 256 * 1024, 1 << 20),
            (100, 256 * 1024, 1 << 20),
            (3 << 20, 4096, 777),
            (20 << 20, 256 * 1024, 65536),
            (20 << 20, 256 * 1024, 1 << 30),
            (40 << 20, 4 << 20, 100_000),
        ] {
            let data = sample(len, len as u64 + u64::from(avg));
            let expected: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(
                Dribble(&data, step),
                (avg / 4).max(64),
                avg,
                avg * 4,
            )
            .map(|c| c.unwrap().data)
            .collect();
            let mut block = Vec::new();
            let mut chunker = Chunker::new(Dribble(&data, step), avg, &mut block);
            let mut got = Vec::new();
            while let Some(chunk) = chunker.next_chunk().unwrap() {
                got.push(chunk);
            }
            assert_eq!(got.concat(), data, "len {len} avg {avg}");
            let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
            assert_eq!(
                lens(&got),
                lens(&expected),
                "len {len} avg {avg} step {step}"
            );
            if len > (8 * avg as usize) {
                assert!(got.len() > 2, "content-defined cuts, not one chunk");
            }
        }
    }

    #[test]
    fn a_read_error_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let err = Chunker::new(Broken, 4096, &mut Vec::new())
            .next_chunk()
            .unwrap_err();
        assert_eq!(err.to_string(), "gone");
    }
}
