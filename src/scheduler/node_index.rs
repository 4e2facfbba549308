//! Nodes indexed for placement, so choosing a node costs O(log n) in the
//! number of nodes instead of a scan of all of them: alive nodes ordered by
//! what their free capacity and load score (the score of a node that does
//! not cache the image), and, per image, the nodes that cache it ordered
//! by how warm it is there. Placement scores exactly the best few of each
//! ([`COLD_CANDIDATES`], [`WARM_CANDIDATES`] that fit); a node beyond them
//! could only win on a mix of capacity and warmth those leaders lack.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashMap};

/// Nodes without the image scored per placement (best capacity first).
pub const COLD_CANDIDATES: usize = 32;
/// Nodes caching the image scored per placement (warmest first).
pub const WARM_CANDIDATES: usize = 64;

/// An f64 ordered totally (for keys; NaN never occurs in scores).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Key(pub f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The index itself; the view tells it every change of a node.
#[derive(Debug, Default)]
pub(super) struct NodeIndex {
    /// (best capacity score first, node).
    by_capacity: BTreeSet<(Reverse<Key>, usize)>,
    /// Each node's current capacity key, by node index.
    capacity_key: Vec<Option<Key>>,
    /// Per image: (warmest first, node).
    by_warmth: HashMap<u32, BTreeSet<(Reverse<Key>, usize)>>,
}

impl NodeIndex {
    /// Sets node `idx`'s capacity score (None: not placeable, e.g. lost).
    pub fn set_capacity(&mut self, idx: usize, key: Option<f64>) {
        if self.capacity_key.len() <= idx {
            self.capacity_key.resize(idx + 1, None);
        }
        let new = key.map(Key);
        if self.capacity_key[idx] == new {
            return;
        }
        if let Some(old) = self.capacity_key[idx].take() {
            self.by_capacity.remove(&(Reverse(old), idx));
        }
        if let Some(k) = new {
            self.by_capacity.insert((Reverse(k), idx));
            self.capacity_key[idx] = Some(k);
        }
    }

    /// Sets how warm `image` is on node `idx` (`old` what it was; 0 or
    /// None: not cached).
    pub fn set_warmth(&mut self, image: u32, idx: usize, old: Option<f64>, new: Option<f64>) {
        if let Some(o) = old {
            if let Some(set) = self.by_warmth.get_mut(&image) {
                set.remove(&(Reverse(Key(o)), idx));
                if set.is_empty() {
                    self.by_warmth.remove(&image);
                }
            }
        }
        if let Some(n) = new.filter(|&n| n > 0.0) {
            self.by_warmth
                .entry(image)
                .or_default()
                .insert((Reverse(Key(n)), idx));
        }
    }

    /// Nodes in order of capacity score, best first.
    pub fn by_capacity(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_capacity.iter().map(|&(_, idx)| idx)
    }

    /// Nodes caching `image`, warmest first.
    pub fn by_warmth(&self, image: u32) -> impl Iterator<Item = usize> + '_ {
        self.by_warmth
            .get(&image)
            .into_iter()
            .flat_map(|set| set.iter().map(|&(_, idx)| idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_follow_every_change() {
        let mut index = NodeIndex::default();
        index.set_capacity(0, Some(0.1));
        index.set_capacity(1, Some(0.5));
        index.set_capacity(2, Some(0.3));
        assert_eq!(index.by_capacity().collect::<Vec<_>>(), [1, 2, 0]);
        index.set_capacity(1, Some(0.0));
        index.set_capacity(2, None);
        assert_eq!(index.by_capacity().collect::<Vec<_>>(), [0, 1]);
        index.set_warmth(7, 0, None, Some(0.2));
        index.set_warmth(7, 1, None, Some(0.9));
        assert_eq!(index.by_warmth(7).collect::<Vec<_>>(), [1, 0]);
        index.set_warmth(7, 1, Some(0.9), Some(0.1));
        assert_eq!(index.by_warmth(7).collect::<Vec<_>>(), [0, 1]);
        index.set_warmth(7, 0, Some(0.2), None);
        index.set_warmth(7, 1, Some(0.1), Some(0.0));
        assert_eq!(index.by_warmth(7).count(), 0);
        assert_eq!(index.by_warmth(8).count(), 0);
    }
}
