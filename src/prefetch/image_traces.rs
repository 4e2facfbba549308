//! Traces for a node serving many layers of many images (the snapshotter):
//! each image's trace is looked up once, and each lazily mounted layer
//! replays the part of it that reads that layer.

use super::lookup::find_trace;
use super::replay::{prefetch, PrefetchConfig};
use super::trace::Trace;
use crate::fetch::{Fetcher, RemoteLayer};
use crate::image::platform_image;
use crate::image::ImageStore;
use std::collections::HashMap;
use std::sync::Arc;

/// The node's known traces, by image reference (None: looked up, none fits).
#[derive(Default)]
pub struct ImageTraces {
    known: tokio::sync::Mutex<HashMap<String, Option<Arc<Trace>>>>,
}

impl ImageTraces {
    /// Replays, in the background of the caller, the accesses of `image`'s
    /// trace that read `layer` (the only entry of `layers`); `traced` is
    /// told which of the layer's chunks the trace reads, before they are
    /// fetched.
    pub async fn prefetch_layer(
        &self,
        image: &str,
        store: &ImageStore,
        layers: Arc<Vec<RemoteLayer>>,
        fetcher: Arc<Fetcher>,
        config: PrefetchConfig,
        traced: impl FnOnce(Vec<u32>),
    ) {
        let Some(trace) = self.trace_of(image, store).await else {
            return;
        };
        let layer = &layers[0];
        let Some(index) = trace.layers.iter().position(|d| *d == layer.digest) else {
            return;
        };
        let sub = Trace {
            version: trace.version,
            layers: vec![layer.digest],
            accesses: trace
                .accesses
                .iter()
                .filter(|a| a.layer as usize == index)
                .map(|a| super::trace::Access {
                    layer: 0,
                    ..a.clone()
                })
                .collect(),
            reads: Vec::new(), // a replay fetches chunks
        };
        if sub.accesses.is_empty() {
            return;
        }
        if let Err(e) = sub.validate(&layers) {
            tracing::warn!(image, layer = %layer.digest, error = %e, "ignoring the image's trace for this layer");
            return;
        }
        traced(sub.accesses.iter().map(|a| a.chunk).collect());
        prefetch(fetcher, layers, sub, config).await;
    }

    /// The image's trace, looked up once per image (see [`find_trace`]).
    async fn trace_of(&self, image: &str, store: &ImageStore) -> Option<Arc<Trace>> {
        let mut known = self.known.lock().await;
        if let Some(found) = known.get(image) {
            return found.clone();
        }
        let found = match platform_image(store).await {
            Ok(platform) => {
                let layers: Vec<_> = platform.layers.iter().map(|l| l.digest).collect();
                find_trace(store, &platform.manifest.digest, &layers)
                    .await
                    .map(Arc::new)
            }
            Err(e) => {
                tracing::warn!(image, error = %crate::error_chain::chain(&e), "no trace: the image's manifest did not read");
                None
            }
        };
        known.insert(image.to_string(), found.clone());
        found
    }
}
