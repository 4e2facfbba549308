//! Tier 1: chunks in memory, least recently used evicted first, bounded in
//! bytes of chunk data.

use crate::digest::Digest;
use bytes::Bytes;
use lru::LruCache;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A chunk pushed out of memory, with its last use, so the disk tier can
/// count that use (see `RecencyIndex::touch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub digest: Digest,
    pub tick: u64,
}

struct Slot {
    data: Bytes,
    tick: u64,
}

struct State {
    lru: LruCache<Digest, Slot>,
    bytes: u64,
}

/// The in-memory tier. A hit is one hash lookup and list move under a short
/// lock, and hands out a reference-counted `Bytes` (no copy).
pub(crate) struct MemoryTier {
    bound: u64,
    state: Mutex<State>,
}

impl MemoryTier {
    /// An empty tier holding at most `bound` bytes of chunk data.
    pub fn new(bound: u64) -> Self {
        MemoryTier {
            bound,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements that can panic, so a
        // panic elsewhere while holding the lock leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chunk, if present, marking it used at `tick`.
    pub fn get(&self, digest: &Digest, tick: u64) -> Option<Bytes> {
        let mut state = self.lock();
        let slot = state.lru.get_mut(digest)?;
        slot.tick = tick;
        Some(slot.data.clone())
    }

    /// Whether the chunk is present; does not count as a use.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().lru.contains(digest)
    }

    /// When the chunk was last used, if present; does not count as a use.
    pub fn last_use(&self, digest: &Digest) -> Option<u64> {
        self.lock().lru.peek(digest).map(|slot| slot.tick)
    }

    /// Stores a chunk used at `tick`, evicting the least recently used ones
    /// until it fits; returns those. A chunk larger than the whole tier is
    /// not stored.
    pub fn insert(&self, digest: Digest, data: Bytes, tick: u64) -> Vec<Evicted> {
        let size = data.len() as u64;
        let mut evicted = Vec::new();
        if size > self.bound {
            return evicted;
        }
        let mut state = self.lock();
        if let Some(old) = state.lru.put(digest, Slot { data, tick }) {
            state.bytes -= old.data.len() as u64;
        }
        state.bytes += size;
        while state.bytes > self.bound {
            let Some((digest, slot)) = state.lru.pop_lru() else {
                break;
            };
            state.bytes -= slot.data.len() as u64;
            evicted.push(Evicted {
                digest,
                tick: slot.tick,
            });
        }
        evicted
    }

    /// Bytes of chunk data held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Every chunk's last use, so they can be recorded on disk at shutdown.
    pub fn last_uses(&self) -> Vec<Evicted> {
        self.lock()
            .lru
            .iter()
            .map(|(digest, slot)| Evicted {
                digest: *digest,
                tick: slot.tick,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (Digest, Bytes) {
        let data = Bytes::from(vec![n; len]);
        (Digest::of(&data), data)
    }

    #[test]
    fn bound_is_in_bytes_and_least_recent_goes_first() {
        let tier = MemoryTier::new(1000);
        let (a, da) = chunk(1, 400);
        let (b, db) = chunk(2, 400);
        let (c, dc) = chunk(3, 400);
        assert!(tier.insert(a, da.clone(), 1).is_empty());
        assert!(tier.insert(b, db, 2).is_empty());
        assert_eq!(tier.get(&a, 3), Some(da)); // a is now more recent than b
        let evicted = tier.insert(c, dc, 4);
        assert_eq!(evicted, vec![Evicted { digest: b, tick: 2 }]);
        assert_eq!(tier.bytes(), 800);
        assert!(tier.contains(&a) && tier.contains(&c) && !tier.contains(&b));
        assert_eq!(tier.last_use(&a), Some(3));
    }

    #[test]
    fn chunk_larger_than_tier_is_not_stored() {
        let tier = MemoryTier::new(100);
        let (a, da) = chunk(1, 101);
        assert!(tier.insert(a, da, 1).is_empty());
        assert!(!tier.contains(&a));
        assert_eq!(tier.bytes(), 0);
    }

    #[test]
    fn reinserting_does_not_double_count() {
        let tier = MemoryTier::new(1000);
        let (a, da) = chunk(1, 300);
        tier.insert(a, da.clone(), 1);
        tier.insert(a, da, 2);
        assert_eq!(tier.bytes(), 300);
    }
}
