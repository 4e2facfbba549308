//! Traces recorded from real starts on a node, so a platform gets traces
//! from its production starts without a separate recording run (the
//! snapshotter with `[prefetch] record_starts`): the reads of an image's
//! lazily served layers, from the first one for `record_window_secs`, are
//! published as the image's trace unless it has one by then. One recording
//! per image per daemon.

use super::pack::with_pack;
use super::publish::{fetch_trace, push_trace};
use super::recorder::TraceRecorder;
use super::trace::{Access, FileReads, Trace, TRACE_VERSION};
use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::fs::ReadRecorder;
use crate::image::{platform_image, ImageStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The node's recordings, by image reference.
pub struct NodeRecordings {
    window: Duration,
    runtime: tokio::runtime::Handle,
    images: Mutex<HashMap<String, Arc<Recording>>>,
    packing: Packing,
}

/// Where a published recording's pack comes from: the node's cache, which
/// holds every chunk the start read, recompressed at `level` (0: no pack).
#[derive(Clone)]
struct Packing {
    cache: Arc<ChunkCache>,
    level: i32,
}

/// One image's recording: its layers in the order they were mounted (the
/// image's order is known only when it is published).
struct Recording {
    image: String,
    store: ImageStore,
    /// Taken when the recording is published: a node keeps no accesses
    /// of images it recorded.
    recorder: Mutex<Option<TraceRecorder>>,
    layers: Mutex<Vec<Digest>>,
    started: AtomicBool,
    closed: AtomicBool,
    packing: Packing,
}

impl NodeRecordings {
    /// Recordings `window` long, published from `runtime` with a pack of
    /// their chunks from `cache` at zstd `pack_level` (0: none).
    pub fn new(
        window: Duration,
        runtime: tokio::runtime::Handle,
        cache: Arc<ChunkCache>,
        pack_level: i32,
    ) -> NodeRecordings {
        NodeRecordings {
            window,
            runtime,
            images: Mutex::new(HashMap::new()),
            packing: Packing {
                cache,
                level: pack_level,
            },
        }
    }

    /// The recorder for a lazily served `layer` of `image` (read through
    /// `store`), or None when this image's recording is over.
    pub fn layer_recorder(
        &self,
        image: &str,
        store: &ImageStore,
        layer: Digest,
    ) -> Option<Arc<dyn ReadRecorder>> {
        let recording = self
            .images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(image.to_string())
            .or_insert_with(|| {
                Arc::new(Recording {
                    image: image.to_string(),
                    store: store.clone(),
                    recorder: Mutex::new(Some(TraceRecorder::new(Vec::new()))),
                    layers: Mutex::new(Vec::new()),
                    started: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                    packing: self.packing.clone(),
                })
            })
            .clone();
        if recording.closed.load(Ordering::Relaxed) {
            return None;
        }
        let index = {
            let mut layers = recording.layers.lock().unwrap_or_else(|e| e.into_inner());
            match layers.iter().position(|d| *d == layer) {
                Some(i) => i,
                None => {
                    layers.push(layer);
                    layers.len() - 1
                }
            }
        };
        Some(Arc::new(LayerRecorder {
            recording,
            index,
            window: self.window,
            runtime: self.runtime.clone(),
        }))
    }
}

/// Records one mounted layer's reads into its image's recording, and
/// starts the recording's window at the image's first read.
struct LayerRecorder {
    recording: Arc<Recording>,
    index: usize,
    window: Duration,
    runtime: tokio::runtime::Handle,
}

impl ReadRecorder for LayerRecorder {
    fn record(
        &self,
        _layer: usize,
        file: u64,
        range: std::ops::Range<u64>,
        chunks: &[(u32, Digest)],
        path: &mut dyn FnMut() -> String,
    ) {
        let recording = &self.recording;
        if recording.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(recorder) = &*recording.recorder.lock().unwrap_or_else(|e| e.into_inner()) {
            recorder.record(self.index, file, range, chunks, path);
        }
        if !recording.started.swap(true, Ordering::Relaxed) {
            tracing::info!(
                image = recording.image,
                secs = self.window.as_secs(),
                "recording the image's start"
            );
            let (recording, window) = (recording.clone(), self.window);
            self.runtime.spawn(async move {
                tokio::time::sleep(window).await;
                recording.closed.store(true, Ordering::Relaxed);
                recording.publish().await;
            });
        }
    }
}

impl Recording {
    /// Publishes what was recorded as the image's trace, in the image's
    /// layer order, unless the image has a trace already.
    async fn publish(&self) {
        let image = self.image.as_str();
        let Some(recorder) = self
            .recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let ImageStore::Registry { client, reference } = &self.store else {
            return;
        };
        let platform = match platform_image(&self.store).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(image, error = %crate::error_chain::chain(&e), "the recorded start is not published: the image's manifest did not read");
                return;
            }
        };
        let order: Vec<Digest> = platform.layers.iter().map(|l| l.digest).collect();
        let mounted = self
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(trace) = in_image_order(recorder.trace(), &mounted, order) else {
            tracing::warn!(
                image,
                "the recorded start is not published: it read layers the image does not have"
            );
            return;
        };
        if trace.accesses.is_empty() {
            return;
        }
        let repo = &reference.repository;
        match fetch_trace(client, repo, &platform.manifest.digest).await {
            Ok(Some(_)) => {
                tracing::info!(
                    image,
                    "the image has a trace already; the recorded start is not published"
                );
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(image, error = %crate::error_chain::chain(&e), "the recorded start is not published: looking for the image's trace failed");
                return;
            }
        }
        let Packing { cache, level } = self.packing.clone();
        // On one thread: the node's other cores stay with its containers
        // (a JVM start's pack at zstd 19 is ~15 CPU-s).
        let (trace, pack) = match tokio::task::spawn_blocking(move || {
            match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                Ok(pool) => pool.install(|| with_pack(trace, &cache, level)),
                Err(_) => with_pack(trace, &cache, level),
            }
        })
        .await
        {
            Ok(packed) => packed,
            Err(e) => {
                tracing::warn!(image, error = %e, "the recorded start is not published: packing its chunks failed");
                return;
            }
        };
        if let Err(e) = push_trace(client, repo, &platform.manifest, &trace, pack.as_ref()).await {
            tracing::warn!(image, error = %crate::error_chain::chain(&e), "publishing the recorded start failed");
        }
    }
}

/// The trace recorded against `mounted` (layer digests by recording
/// index) as a trace of the image whose layers are `order`; None if a
/// recorded layer is not the image's.
fn in_image_order(recorded: Trace, mounted: &[Digest], order: Vec<Digest>) -> Option<Trace> {
    let index: Vec<u32> = mounted
        .iter()
        .map(|d| order.iter().position(|o| o == d).map(|i| i as u32))
        .collect::<Option<_>>()?;
    let layer = |recorded: u32| index.get(recorded as usize).copied();
    Some(Trace {
        version: TRACE_VERSION,
        accesses: recorded
            .accesses
            .into_iter()
            .map(|a| {
                Some(Access {
                    layer: layer(a.layer)?,
                    ..a
                })
            })
            .collect::<Option<_>>()?,
        reads: recorded
            .reads
            .into_iter()
            .map(|r| {
                Some(FileReads {
                    layer: layer(r.layer)?,
                    ..r
                })
            })
            .collect::<Option<_>>()?,
        layers: order,
        pack: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(layer: u32, chunk: u32) -> Access {
        Access {
            layer,
            chunk,
            digest: Digest::of(&[layer as u8, chunk as u8]),
            at_ms: 0,
            path: format!("f{layer}-{chunk}"),
        }
    }

    #[test]
    fn layers_recorded_in_mount_order_are_put_in_the_images_order() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        // Mounted top first: c, then a (b was unpacked, not lazy).
        let recorded = Trace {
            pack: None,
            version: TRACE_VERSION,
            layers: Vec::new(),
            accesses: vec![access(0, 5), access(1, 2), access(0, 6)],
            reads: vec![FileReads {
                layer: 1,
                path: "f1-2".into(),
                ranges: vec![(0, 4096)],
            }],
        };
        let trace = in_image_order(recorded.clone(), &[c, a], vec![a, b, c]).unwrap();
        assert_eq!(trace.layers, [a, b, c]);
        let got: Vec<(u32, u32)> = trace.accesses.iter().map(|x| (x.layer, x.chunk)).collect();
        assert_eq!(got, [(2, 5), (0, 2), (2, 6)]);
        assert_eq!(trace.reads[0].layer, 0);
        assert!(in_image_order(recorded, &[c, Digest::of(b"z")], vec![a, b, c]).is_none());
    }
}
