//! Least-recently-used bookkeeping for the disk tier.
//!
//! RocksDB does not evict, so the cache keeps, for every chunk on disk, its
//! size and the logical time ("tick") it was last used, ordered by tick.
//! Ticks come from one counter shared by both tiers, which lets a chunk's
//! use in the memory tier count as recent use on disk too (see
//! [`RecencyIndex::touch`]) and lets the order be persisted as plain numbers
//! and rebuilt after a restart.

use crate::digest::Digest;
use std::collections::{BTreeSet, HashMap};

/// Size and last use of one chunk on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Bytes of chunk data.
    pub size: u64,
    /// Logical time of the last use.
    pub tick: u64,
}

/// Chunks on disk ordered by last use, with their total size.
#[derive(Debug, Default)]
pub(crate) struct RecencyIndex {
    entries: HashMap<Digest, Entry>,
    by_age: BTreeSet<(u64, Digest)>,
    total_bytes: u64,
    largest_chunk: u64,
}

impl RecencyIndex {
    /// Adds a chunk, or replaces its entry if already present.
    pub fn insert(&mut self, digest: Digest, entry: Entry) {
        self.remove(&digest);
        self.entries.insert(digest, entry);
        self.by_age.insert((entry.tick, digest));
        self.total_bytes += entry.size;
        self.largest_chunk = self.largest_chunk.max(entry.size);
    }

    /// Records a use at `tick`; an older tick than the one recorded is
    /// ignored. Returns the updated entry if the chunk moved, `None` if it is
    /// absent or already as recent.
    pub fn touch(&mut self, digest: &Digest, tick: u64) -> Option<Entry> {
        let entry = self.entries.get_mut(digest)?;
        if tick <= entry.tick {
            return None;
        }
        self.by_age.remove(&(entry.tick, *digest));
        entry.tick = tick;
        self.by_age.insert((tick, *digest));
        Some(*entry)
    }

    /// Forgets a chunk; returns what it was.
    pub fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.entries.remove(digest)?;
        self.by_age.remove(&(entry.tick, *digest));
        self.total_bytes -= entry.size;
        Some(entry)
    }

    /// The least recently used chunk, without removing it.
    pub fn oldest(&self) -> Option<(Digest, Entry)> {
        let &(_, digest) = self.by_age.first()?;
        Some((digest, self.entries[&digest]))
    }

    /// The entry of a chunk, if present.
    pub fn get(&self, digest: &Digest) -> Option<Entry> {
        self.entries.get(digest).copied()
    }

    /// Sum of the sizes of all chunks.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The largest chunk ever recorded: the room a next insert may need.
    pub fn largest_chunk(&self) -> u64 {
        self.largest_chunk
    }

    /// The newest tick recorded, so the clock can resume past it.
    pub fn newest_tick(&self) -> Option<u64> {
        self.by_age.last().map(|&(tick, _)| tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn oldest_follows_touches_and_sizes_add_up() {
        let mut index = RecencyIndex::default();
        for (n, tick) in [(1u8, 10u64), (2, 11), (3, 12)] {
            index.insert(
                d(n),
                Entry {
                    size: 100 * n as u64,
                    tick,
                },
            );
        }
        assert_eq!(index.total_bytes(), 600);
        assert_eq!(index.oldest().unwrap().0, d(1));
        assert!(index.touch(&d(1), 13).is_some());
        assert_eq!(index.oldest().unwrap().0, d(2));
        // A stale touch (an older tick) does not move the chunk back.
        assert!(index.touch(&d(1), 5).is_none());
        assert_eq!(index.newest_tick(), Some(13));
        assert_eq!(index.remove(&d(2)).unwrap().size, 200);
        assert_eq!(index.total_bytes(), 400);
        assert_eq!(index.oldest().unwrap().0, d(3));
        assert_eq!(index.largest_chunk(), 300);
    }

    #[test]
    fn reinserting_replaces_instead_of_double_counting() {
        let mut index = RecencyIndex::default();
        index.insert(d(1), Entry { size: 50, tick: 1 });
        index.insert(d(1), Entry { size: 50, tick: 2 });
        assert_eq!(index.total_bytes(), 50);
        assert_eq!(index.get(&d(1)).unwrap().tick, 2);
        index.remove(&d(1));
        assert!(index.oldest().is_none());
    }
}
