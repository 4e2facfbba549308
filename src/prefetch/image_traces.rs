//! Traces for a node serving many layers of many images (the snapshotter):
//! each image's trace is looked up once, and each lazily mounted layer
//! replays the part of it that reads that layer.

use super::lookup::find_trace;
use super::replay::{prefetch, PrefetchConfig};
use super::trace::Trace;
use crate::digest::Digest;
use crate::fetch::{Fetcher, RemoteLayer};
use crate::image::platform_manifest_layers;
use crate::image::ImageStore;
use std::collections::HashMap;
use std::future::ready;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OnceCell};

/// The node's known traces, by image reference: each looked up once (None:
/// looked up, none fits), and again once a "none" is [`NO_TRACE_TTL`] old:
/// a trace published since (by a recording node, say) is then found. A
/// lookup holds only its own image's cell, so images looked up at once do
/// not wait for each other.
#[derive(Default)]
pub struct ImageTraces {
    known: std::sync::Mutex<HashMap<String, (Instant, Arc<TraceCell>)>>,
}

/// How long a node believes an image has no trace.
pub const NO_TRACE_TTL: Duration = Duration::from_secs(300);
/// Images remembered before those past [`NO_TRACE_TTL`] are forgotten.
const KNOWN_IMAGES: usize = 1024;

/// One image's lookup: set once it is done (None: no trace fits).
type TraceCell = OnceCell<Option<Arc<Trace>>>;

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
            pack: trace.pack.as_ref().map(|p| p.of_layer(index as u32)),
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

    /// Starts looking up `image`'s trace in the background, if no one has:
    /// the snapshotter calls it as an image's first layer opens, so the
    /// lookup's round trips overlap the layers' TOC fetches and mounts
    /// instead of delaying the replay that follows a mount. `listed` brings
    /// the platform manifest's digest and layers once that open has read
    /// them. With the digest the pull labelled the layer with (`labelled`),
    /// the registry is asked at once, a round trip earlier, and the trace
    /// kept only if the manifest read is that one.
    pub fn look_up_early(
        self: &Arc<Self>,
        image: &str,
        store: &ImageStore,
        labelled: Option<Digest>,
        listed: oneshot::Receiver<(Digest, Vec<Digest>)>,
        runtime: &tokio::runtime::Handle,
    ) {
        let cell = self.cell(image);
        if cell.initialized() {
            return;
        }
        let (image, store) = (image.to_string(), store.clone());
        runtime.spawn(async move {
            cell.get_or_init(|| async {
                // The manifest and its layers as the open read them, or as
                // read here if it could not.
                let listed = async {
                    match listed.await {
                        Ok(listed) => Some(listed),
                        Err(_) => manifest_layers(&image, &store).await,
                    }
                };
                let Some(manifest) = labelled else {
                    let (manifest, layers) = listed.await?;
                    return find_trace(&store, &manifest, ready(Some(layers))).await.map(Arc::new);
                };
                let layers = async {
                    let (read, layers) = listed.await?;
                    if read != manifest {
                        tracing::info!(image, labelled = %manifest, %read, "no trace: the image's manifest is not the one its pull named");
                        return None;
                    }
                    Some(layers)
                };
                find_trace(&store, &manifest, layers).await.map(Arc::new)
            })
            .await;
        });
    }

    /// The image's trace, looked up once per image (see [`find_trace`]).
    async fn trace_of(&self, image: &str, store: &ImageStore) -> Option<Arc<Trace>> {
        self.cell(image)
            .get_or_init(|| look_up(image, store))
            .await
            .clone()
    }

    fn cell(&self, image: &str) -> Arc<TraceCell> {
        self.cell_at(image, Instant::now())
    }

    /// The image's cell as of `now`: a new one where its lookup found no
    /// trace [`NO_TRACE_TTL`] ago or more.
    fn cell_at(&self, image: &str, now: Instant) -> Arc<TraceCell> {
        let stale = |(at, cell): &(Instant, Arc<TraceCell>)| {
            matches!(cell.get(), Some(None)) && now.saturating_duration_since(*at) >= NO_TRACE_TTL
        };
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_IMAGES {
            known.retain(|_, entry| !stale(entry));
        }
        let entry = known
            .entry(image.to_string())
            .or_insert_with(|| (now, Arc::default()));
        if stale(entry) {
            *entry = (now, Arc::default());
        }
        entry.1.clone()
    }
}

/// `image`'s trace from its registry: its platform manifest and layers
/// (the config is not needed), then [`find_trace`].
async fn look_up(image: &str, store: &ImageStore) -> Option<Arc<Trace>> {
    let (manifest, layers) = manifest_layers(image, store).await?;
    find_trace(store, &manifest, ready(Some(layers)))
        .await
        .map(Arc::new)
}

/// `image`'s platform manifest digest and layer digests, read from its
/// registry (None, and a warning, if they do not read).
async fn manifest_layers(image: &str, store: &ImageStore) -> Option<(Digest, Vec<Digest>)> {
    match platform_manifest_layers(store).await {
        Ok((manifest, layers)) => {
            Some((manifest.digest, layers.iter().map(|l| l.digest).collect()))
        }
        Err(e) => {
            tracing::warn!(image, error = %crate::error_chain::chain(&e), "no trace: the image's manifest did not read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::test_registry::*;

    /// The lookup from the pull's manifest digest asks the registry before
    /// the open has read the manifest; without the label it waits for it;
    /// and a trace for another manifest than the one read is not kept.
    #[test]
    fn a_lookup_starts_from_the_labelled_manifest_digest_and_keeps_only_its_trace() {
        let (image, trace) = (image(), trace(3));
        let other = Digest::of(b"another manifest");
        // (labelled, the manifest the open reads, asked before it is read, found)
        let cases = [
            (Some(image.digest), image.digest, true, true),
            (None, image.digest, false, true),
            (Some(image.digest), other, true, false),
        ];
        for (n, (labelled, read, early, found)) in cases.into_iter().enumerate() {
            let (index, manifest, blob) = published(&image, &trace, None);
            let blob_path = format!("/blobs/{}", Digest::of(&blob));
            let (addr, asked) = registry_holding(paths(&image, index, manifest, blob));
            let options = crate::registry::RegistryOptions {
                plain_http: true,
                ..Default::default()
            };
            let reference: crate::image::ImageRef = format!("{addr}/repo:t").parse().unwrap();
            let store = ImageStore::open(&reference, &options, false).unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let traces = Arc::new(ImageTraces::default());
            let (tell_listed, listed) = oneshot::channel();
            traces.look_up_early("reg/app:1", &store, labelled, listed, runtime.handle());
            let blob_asked = || {
                asked
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|p| p.ends_with(&blob_path))
            };
            let start = Instant::now();
            while !blob_asked() && start.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(
                blob_asked(),
                early,
                "case {n}: trace asked for before the manifest was read"
            );
            tell_listed.send((read, trace.layers.clone())).unwrap();
            let got = runtime
                .block_on(async {
                    tokio::time::timeout(HELD, traces.trace_of("reg/app:1", &store)).await
                })
                .expect("the lookup ended");
            assert_eq!(got.is_some(), found, "case {n}: trace kept");
            if let Some(got) = got {
                assert_eq!(got.accesses, trace.accesses);
            }
        }
    }

    #[test]
    fn no_trace_is_believed_for_a_while_and_a_trace_for_good() {
        let traces = ImageTraces::default();
        let t0 = Instant::now();
        let none = traces.cell_at("reg/none:1", t0);
        none.set(None).unwrap();
        let found = traces.cell_at("reg/found:1", t0);
        found
            .set(Some(Arc::new(Trace {
                pack: None,
                version: 1,
                layers: Vec::new(),
                accesses: Vec::new(),
                reads: Vec::new(),
            })))
            .unwrap();
        let soon = t0 + NO_TRACE_TTL / 2;
        assert!(Arc::ptr_eq(&none, &traces.cell_at("reg/none:1", soon)));
        let later = t0 + NO_TRACE_TTL;
        let again = traces.cell_at("reg/none:1", later);
        assert!(
            !Arc::ptr_eq(&none, &again),
            "a stale 'no trace' is looked up again"
        );
        assert!(!again.initialized());
        assert!(Arc::ptr_eq(
            &found,
            &traces.cell_at("reg/found:1", later + NO_TRACE_TTL)
        ));
    }
}
