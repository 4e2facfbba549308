//! Recording a trace from the reads a mount serves.

use super::trace::{Access, Trace, TRACE_VERSION};
use crate::digest::Digest;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

/// Collects first accesses of chunks by files while a mount serves reads:
/// a chunk shared by several files read (a pack of small files) is
/// recorded once per file, so the trace names every file the start read
/// (what a trace-ordered layout moves to the front).
pub struct TraceRecorder {
    started: Instant,
    layers: Vec<Digest>,
    state: Mutex<Recorded>,
}

/// The (layer, chunk, file) seen so far, and their first accesses in order.
type Recorded = (HashSet<(u32, u32, u64)>, Vec<Access>);

impl TraceRecorder {
    /// A recorder for a mount of these layers (bottom first).
    pub fn new(layers: Vec<Digest>) -> TraceRecorder {
        TraceRecorder {
            started: Instant::now(),
            layers,
            state: Mutex::new((HashSet::new(), Vec::new())),
        }
    }

    /// Notes that a read of `file` (an inode, named by `path`) touched
    /// these chunks of `layer` (`path` is only called when a chunk is new
    /// for the file).
    pub fn record(
        &self,
        layer: usize,
        file: u64,
        chunks: &[(u32, Digest)],
        path: impl FnOnce() -> String,
    ) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let mut state = self.state.lock().unwrap();
        let (seen, accesses) = &mut *state;
        let mut path = Some(path);
        let mut name = String::new();
        for &(chunk, digest) in chunks {
            if seen.insert((layer as u32, chunk, file)) {
                accesses.push(Access {
                    layer: layer as u32,
                    chunk,
                    digest,
                    at_ms,
                    path: {
                        if let Some(f) = path.take() {
                            name = f();
                        }
                        name.clone()
                    },
                });
            }
        }
    }

    /// The trace so far.
    pub fn trace(&self) -> Trace {
        Trace {
            version: TRACE_VERSION,
            layers: self.layers.clone(),
            accesses: self.state.lock().unwrap().1.clone(),
        }
    }
}

impl crate::fs::ReadRecorder for TraceRecorder {
    fn record(
        &self,
        layer: usize,
        file: u64,
        chunks: &[(u32, Digest)],
        path: &mut dyn FnMut() -> String,
    ) {
        TraceRecorder::record(self, layer, file, chunks, path)
    }
}
