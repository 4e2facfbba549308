//! Where a regular file's bytes are: the extents of a layer's chunks that
//! make it up, and which of them a byte range needs. The fetcher reads
//! files through it; the filesystem keeps one per file.

use crate::format::Extent;
use std::sync::Arc;

/// Where a regular file's content is: a layer's chunk table and the
/// file's extents, with their starting offsets for binary search.
#[derive(Clone, Debug)]
pub struct Content {
    /// Index of the layer (bottom first) whose blob holds the content.
    pub layer: usize,
    /// The file's extents in file order.
    pub extents: Arc<[Extent]>,
    /// `starts[i]` is the file offset where `extents[i]` begins.
    pub starts: Arc<[u64]>,
}

impl Content {
    /// Indexes of the extents overlapping bytes `offset..end` of the file.
    pub fn extents_in(&self, offset: u64, end: u64) -> std::ops::Range<usize> {
        if end <= offset {
            return 0..0;
        }
        let first = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let last = self.starts.partition_point(|&s| s < end);
        let first = (first..last)
            .find(|&i| self.starts[i] + u64::from(self.extents[i].len) > offset)
            .unwrap_or(last);
        first..last
    }

    /// The file's size: where its last extent ends.
    pub fn size(&self) -> u64 {
        match (self.starts.last(), self.extents.last()) {
            (Some(start), Some(extent)) => start + u64::from(extent.len),
            _ => 0,
        }
    }

    /// The chunk indexes (sorted, unique) holding bytes `offset..end`.
    pub fn chunks_in(&self, offset: u64, end: u64) -> Vec<u32> {
        let mut chunks: Vec<u32> = self.extents[self.extents_in(offset, end)]
            .iter()
            .map(|e| e.chunk)
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 35 bytes: 10 in chunk 0, 20 in chunk 1 (from its byte
    /// 100), 5 in chunk 2.
    fn content() -> Content {
        let extents = [(0, 0, 10), (1, 100, 20), (2, 0, 5)]
            .iter()
            .map(|&(chunk, offset, len)| Extent { chunk, offset, len })
            .collect::<Vec<_>>();
        Content {
            layer: 0,
            extents: extents.into(),
            starts: vec![0, 10, 30].into(),
        }
    }

    #[test]
    fn a_range_maps_to_the_extents_and_chunks_it_touches() {
        let content = content();
        // (offset, end, extents, chunks)
        let cases: &[(u64, u64, std::ops::Range<usize>, &[u32])] = &[
            (0, 1, 0..1, &[0]),
            (9, 11, 0..2, &[0, 1]),
            (10, 30, 1..2, &[1]),
            (29, 100, 1..3, &[1, 2]),
            (5, 32, 0..3, &[0, 1, 2]),
            (34, 35, 2..3, &[2]),
            (35, 40, 3..3, &[]),
            (12, 12, 0..0, &[]),
        ];
        for (offset, end, extents, chunks) in cases {
            assert_eq!(
                &content.extents_in(*offset, *end),
                extents,
                "{offset}..{end}"
            );
            assert_eq!(
                &content.chunks_in(*offset, *end)[..],
                *chunks,
                "{offset}..{end}"
            );
        }
        assert_eq!(content.size(), 35);
    }
}
