//! Chunks a read's request brought along (amplification's neighbours),
//! kept as they came, compressed and not yet checked, until something
//! reads them: most never are, and decompressing and hashing each on
//! arrival took the daemon's CPU from the start that fetched them. Whoever
//! takes a frame out decodes and verifies it before use.

use crate::digest::Digest;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Compressed frames by chunk digest, oldest dropped past a byte bound (a
/// dropped one is fetched again if it is ever read).
pub(crate) struct Frames {
    bound: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    frames: HashMap<Digest, Bytes>,
    order: VecDeque<Digest>,
    bytes: u64,
}

impl Frames {
    /// Frames holding at most `bound` bytes.
    pub(crate) fn new(bound: u64) -> Frames {
        Frames {
            bound,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `frame` for `digest`, dropping the oldest past the bound.
    pub(crate) fn put(&self, digest: Digest, frame: Bytes) {
        let size = frame.len() as u64;
        if size > self.bound {
            return;
        }
        let mut state = self.lock();
        if state.frames.insert(digest, frame).is_some() {
            return; // the same bytes (content-addressed), already counted
        }
        state.order.push_back(digest);
        state.bytes += size;
        if state.order.len() > 2 * state.frames.len() + 64 {
            // Taken frames leave their digests behind: drop those.
            let State { frames, order, .. } = &mut *state;
            order.retain(|d| frames.contains_key(d));
        }
        while state.bytes > self.bound {
            let Some(old) = state.order.pop_front() else {
                break;
            };
            if let Some(dropped) = state.frames.remove(&old) {
                state.bytes -= dropped.len() as u64;
            }
        }
    }

    /// Whether a frame for `digest` is kept.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.lock().frames.contains_key(digest)
    }

    /// Takes the frame for `digest` out, if kept.
    pub(crate) fn take(&self, digest: &Digest) -> Option<Bytes> {
        let mut state = self.lock();
        let frame = state.frames.remove(digest)?;
        state.bytes -= frame.len() as u64;
        // Its place in `order` goes at the next compaction in `put`.
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_once_and_the_oldest_go_past_the_bound() {
        let frames = Frames::new(10);
        let d = |i: u8| Digest::of(&[i]);
        frames.put(d(1), Bytes::from_static(b"aaaa"));
        frames.put(d(2), Bytes::from_static(b"bbbb"));
        frames.put(d(2), Bytes::from_static(b"bbbb"));
        assert!(frames.contains(&d(1)) && frames.contains(&d(2)));
        frames.put(d(3), Bytes::from_static(b"cccc"));
        assert!(!frames.contains(&d(1)), "oldest dropped past 10 bytes");
        assert_eq!(frames.take(&d(2)).as_deref(), Some(&b"bbbb"[..]));
        assert_eq!(frames.take(&d(2)), None);
        frames.put(d(4), Bytes::from_static(b"dddddd"));
        assert!(frames.contains(&d(3)) && frames.contains(&d(4)));
        frames.put(d(5), Bytes::from_static(b"this is too large"));
        assert!(!frames.contains(&d(5)));
    }
}
