//! Completed layers' share of the node's one disk budget. A layer whose
//! blob is completed (and whose files are written out) holds disk the
//! chunk cache then cannot: before a completion starts it claims its
//! bytes, and room is made by evicting whatever was used least recently,
//! chunks or other completed layers alike, never a layer a container uses.
//! An evicted layer's reads go back to the lazy path.

use std::collections::HashMap;

/// A completed layer's claim on the disk budget.
pub struct LayerClaim {
    /// Bytes it holds on disk: its blob and its written-out files.
    pub bytes: u64,
    /// Deletes its local data and sends its reads back to the lazy path.
    pub evict: Box<dyn Fn() + Send + Sync>,
    /// Whether a container uses it now (then it is never evicted).
    pub in_use: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A claim granted, with when its layer was last used (the chunk cache's
/// clock, so layers and chunks are ordered together).
struct Held {
    claim: LayerClaim,
    tick: u64,
}

/// The completed layers holding disk, by snapshot id.
#[derive(Default)]
pub(super) struct Ledger {
    held: HashMap<u64, Held>,
    /// Layers evicted since the cache opened.
    pub(super) evicted: u64,
}

impl Ledger {
    /// Bytes held by every layer but `except`.
    pub(super) fn bytes_except(&self, except: Option<u64>) -> u64 {
        self.held
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .map(|(_, h)| h.claim.bytes)
            .sum()
    }

    /// The least recently used layer (other than `except`) no container
    /// uses: its id and last use.
    pub(super) fn oldest_evictable(&self, except: u64) -> Option<(u64, u64)> {
        self.held
            .iter()
            .filter(|(id, held)| **id != except && !(held.claim.in_use)())
            .map(|(id, held)| (*id, held.tick))
            .min_by_key(|(_, tick)| *tick)
    }

    /// Evicts layer `id`: its data goes, its claim with it.
    pub(super) fn evict(&mut self, id: u64) {
        if let Some(held) = self.held.remove(&id) {
            tracing::info!(
                id,
                bytes = held.claim.bytes,
                "evicting a completed layer for room on disk; its reads are lazy again"
            );
            (held.claim.evict)();
            self.evicted += 1;
        }
    }

    pub(super) fn grant(&mut self, id: u64, claim: LayerClaim, tick: u64) {
        self.held.insert(id, Held { claim, tick });
    }

    pub(super) fn touch(&mut self, id: u64, tick: u64) {
        if let Some(held) = self.held.get_mut(&id) {
            held.tick = tick;
        }
    }

    pub(super) fn release(&mut self, id: u64) -> bool {
        self.held.remove(&id).is_some()
    }
}
