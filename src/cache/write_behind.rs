//! Disk copies of fetched chunks, written once fetching goes quiet. The
//! memory tier serves a chunk as soon as it is fetched; writing its copy
//! to RocksDB at once (a batch put, the memtable, a flush: the decompressed
//! bytes copied three times) took CPU from the start that fetched it:
//! without disk writes an untraced JVM start's daemon used 0.28 CPU-s
//! instead of 0.41 and the start was faster in 4 of 5 interleaved runs. The
//! copies wait until no chunk has been fetched for [`QUIET`], or until the
//! pending bytes reach their bound, and are always written at persist.

use crate::digest::Digest;
use bytes::Bytes;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long fetching must pause before pending copies are written.
pub(super) const QUIET: Duration = Duration::from_secs(1);

/// A chunk waiting for its disk copy, with the use tick it was stored at.
pub(super) type Pending = (Digest, Bytes, u64);

struct Queue {
    chunks: Vec<Pending>,
    bytes: u64,
    last_push: Instant,
    stopped: bool,
}

/// The pending copies and the writer's wake-up.
pub(super) struct WriteBehind {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Pending bytes at which copies are written whether fetching is quiet
    /// or not, so memory stays bounded.
    max_bytes: u64,
}

impl WriteBehind {
    /// A queue that holds at most `max_bytes` of chunks before it must be
    /// written.
    pub(super) fn new(max_bytes: u64) -> WriteBehind {
        WriteBehind {
            queue: Mutex::new(Queue {
                chunks: Vec::new(),
                bytes: 0,
                last_push: Instant::now(),
                stopped: false,
            }),
            wake: Condvar::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a chunk's disk copy.
    pub(super) fn push(&self, chunk: Pending) {
        let mut q = self.lock();
        q.bytes += chunk.1.len() as u64;
        q.chunks.push(chunk);
        q.last_push = Instant::now();
        if q.chunks.len() == 1 || q.bytes >= self.max_bytes {
            self.wake.notify_one();
        }
    }

    /// Every pending copy, now (for persist).
    pub(super) fn take_all(&self) -> Vec<Pending> {
        let mut q = self.lock();
        q.bytes = 0;
        std::mem::take(&mut q.chunks)
    }

    /// Blocks until copies are due (fetching quiet for [`QUIET`], or the
    /// bound reached) and takes them; None once stopped.
    pub(super) fn wait_due(&self) -> Option<Vec<Pending>> {
        let mut q = self.lock();
        loop {
            if q.stopped {
                return None;
            }
            if q.chunks.is_empty() {
                q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let quiet_for = q.last_push.elapsed();
            if quiet_for >= QUIET || q.bytes >= self.max_bytes {
                q.bytes = 0;
                return Some(std::mem::take(&mut q.chunks));
            }
            q = self
                .wake
                .wait_timeout(q, QUIET - quiet_for)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Ends [`wait_due`](Self::wait_due) for good.
    pub(super) fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn chunk(n: u8, len: usize) -> Pending {
        let data = Bytes::from(vec![n; len]);
        (Digest::of(&data), data, u64::from(n))
    }

    #[test]
    fn copies_wait_for_quiet_or_the_bound() {
        let behind = Arc::new(WriteBehind::new(100));
        behind.push(chunk(1, 10));
        let started = Instant::now();
        let due = behind.wait_due().unwrap();
        assert_eq!(due.len(), 1);
        assert!(
            started.elapsed() >= QUIET - Duration::from_millis(50),
            "waited for quiet"
        );
        // At the bound they are due at once.
        behind.push(chunk(2, 60));
        behind.push(chunk(3, 60));
        let started = Instant::now();
        assert_eq!(behind.wait_due().unwrap().len(), 2);
        assert!(started.elapsed() < QUIET / 2, "{:?}", started.elapsed());
        // Persist takes what is pending; stop ends the writer.
        behind.push(chunk(4, 1));
        assert_eq!(behind.take_all().len(), 1);
        let writer = {
            let behind = behind.clone();
            std::thread::spawn(move || behind.wait_due())
        };
        std::thread::sleep(Duration::from_millis(50));
        behind.stop();
        assert!(writer.join().unwrap().is_none());
    }
}
