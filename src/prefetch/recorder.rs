//! Recording a trace from the reads a mount serves.

use super::trace::{Access, FileReads, Trace, TRACE_VERSION};
use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
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

/// What a mount's reads recorded so far.
#[derive(Default)]
struct Recorded {
    /// The (layer, chunk, file) seen so far.
    seen: HashSet<(u32, u32, u64)>,
    /// Their first accesses, in order.
    accesses: Vec<Access>,
    /// Each (layer, file)'s read ranges, by its position in `reads`.
    files: HashMap<(u32, u64), usize>,
    reads: Vec<FileReads>,
}

impl TraceRecorder {
    /// A recorder for a mount of these layers (bottom first).
    pub fn new(layers: Vec<Digest>) -> TraceRecorder {
        TraceRecorder {
            started: Instant::now(),
            layers,
            state: Mutex::new(Recorded::default()),
        }
    }

    /// Notes that a read of `range` of `file` (an inode, named by `path`)
    /// touched these chunks of `layer` (`path` is only called when the
    /// file or a chunk is new for the file).
    pub fn record(
        &self,
        layer: usize,
        file: u64,
        range: Range<u64>,
        chunks: &[(u32, Digest)],
        path: impl FnOnce() -> String,
    ) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let layer = layer as u32;
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let mut path = Some(path);
        let mut name = String::new();
        let mut name = move || {
            if let Some(f) = path.take() {
                name = f();
            }
            name.clone()
        };
        for &(chunk, digest) in chunks {
            if state.seen.insert((layer, chunk, file)) {
                state.accesses.push(Access {
                    layer,
                    chunk,
                    digest,
                    at_ms,
                    path: name(),
                });
            }
        }
        let reads = *state.files.entry((layer, file)).or_insert_with(|| {
            state.reads.push(FileReads {
                layer,
                path: name(),
                ranges: Vec::new(),
            });
            state.reads.len() - 1
        });
        state.reads[reads].add((range.start, range.end));
    }

    /// The trace so far.
    pub fn trace(&self) -> Trace {
        let state = self.state.lock().unwrap();
        Trace {
            version: TRACE_VERSION,
            layers: self.layers.clone(),
            accesses: state.accesses.clone(),
            reads: state.reads.clone(),
            pack: None,
        }
    }
}

impl crate::fs::ReadRecorder for TraceRecorder {
    fn record(
        &self,
        layer: usize,
        file: u64,
        range: Range<u64>,
        chunks: &[(u32, Digest)],
        path: &mut dyn FnMut() -> String,
    ) {
        TraceRecorder::record(self, layer, file, range, chunks, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_kept_per_file_beside_the_first_accesses() {
        let layers = vec![Digest::of(b"l0"), Digest::of(b"l1")];
        let recorder = TraceRecorder::new(layers.clone());
        let c = |i: u32| (i, Digest::of(&[i as u8]));
        recorder.record(1, 7, 0..4096, &[c(0)], || "lib.so".into());
        recorder.record(0, 9, 0..10, &[c(3)], || "etc/x".into());
        recorder.record(1, 7, 65536..131072, &[c(0), c(1)], || "lib.so".into());
        recorder.record(1, 7, 4096..8192, &[c(0)], || unreachable!("named already"));
        let trace = recorder.trace();
        assert_eq!(trace.layers, layers);
        let got: Vec<(u32, u32)> = trace.accesses.iter().map(|a| (a.layer, a.chunk)).collect();
        assert_eq!(got, [(1, 0), (0, 3), (1, 1)]);
        assert_eq!(
            trace.reads,
            [
                FileReads {
                    layer: 1,
                    path: "lib.so".into(),
                    ranges: vec![(0, 8192), (65536, 131072)],
                },
                FileReads {
                    layer: 0,
                    path: "etc/x".into(),
                    ranges: vec![(0, 10)],
                },
            ]
        );
        assert!(trace.check_reads().is_ok());
    }
}
