//! The TOCs of an image's other layers, fetched when its first layer is
//! opened. containerd prepares an image's layers one after another, each
//! after the one below is mounted; a layer's TOC fetched only when its
//! turn comes costs round trips per layer and, on a link the first
//! layer's trace replay already fills, waits behind that replay: a
//! two-layer image's second TOC took 218 ms behind 200 Mbit/s + 10 ms,
//! and the container could not start before it was mounted.

use crate::digest::Digest;
use crate::fetch::{open_layer_sized, toc_location_in, LayerError, OpenedImage, TocTail};
use crate::image::{platform_manifest_layers, ImageStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a TOC fetched early waits for its layer's open, and how long
/// an image is not looked at again after its layers were.
const KEEP: Duration = Duration::from_secs(60);
/// How long a layer's open waits for its image's manifest to be read.
const LISTING_WAIT: Duration = Duration::from_secs(2);
/// The most layers of one image opened early.
const MAX_LAYERS: usize = 128;
/// The most TOCs waiting for their layer's open, node-wide.
const MAX_PENDING: usize = 512;

type Opening = JoinHandle<Result<(OpenedImage, TocTail), LayerError>>;

/// TOCs fetched ahead of their layers' opens, by (layer, TOC digest).
#[derive(Default)]
pub struct EarlyTocs {
    pending: Mutex<HashMap<(Digest, Digest), Opening>>,
    /// Images whose layers were opened early lately: when, and whether
    /// their manifest was read (and its layers' fetches started) yet.
    seen: Mutex<HashMap<String, (Instant, watch::Receiver<bool>)>>,
}

impl EarlyTocs {
    /// On a layer's open: unless it was lately, reads `image`'s manifest,
    /// hands its digest and layers to `then` (the trace lookup, which needs
    /// no second read of it), and fetches, in the background, the TOCs of
    /// its loci layers other than `opening` and those `mounted` already.
    /// Each is verified like any TOC (against its digest from the
    /// manifest, which the layer's own labels must name too, see
    /// [`take`](Self::take)). Returns whether it started that (then
    /// `opening` itself was not opened early).
    pub fn open_others(
        self: &Arc<Self>,
        image: &str,
        store: &ImageStore,
        opening: Digest,
        mounted: impl FnOnce() -> HashSet<Digest>,
        then: impl FnOnce(Digest, Vec<Digest>) + Send + 'static,
        runtime: &tokio::runtime::Handle,
    ) -> bool {
        let listed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            seen.retain(|_, (at, _)| now.duration_since(*at) < KEEP);
            if seen.contains_key(image) {
                return false;
            }
            let (listed, listing) = watch::channel(false);
            seen.insert(image.to_string(), (now, listing));
            listed
        };
        let mounted = mounted();
        let (this, image, store) = (self.clone(), image.to_string(), store.clone());
        let handle = runtime.clone();
        runtime.spawn(async move {
            // Told when this task ends, however it ends.
            let _listed = Listed(listed);
            let layers = match platform_manifest_layers(&store).await {
                Ok((manifest, layers)) => {
                    then(manifest.digest, layers.iter().map(|l| l.digest).collect());
                    layers
                }
                Err(e) => {
                    tracing::debug!(image, error = %e, "layers' TOCs not opened early: the manifest did not read");
                    return;
                }
            };
            for layer in layers.into_iter().take(MAX_LAYERS) {
                if layer.digest == opening || mounted.contains(&layer.digest) {
                    continue;
                }
                let Ok(Some((toc, offset))) = toc_location_in(&layer.digest, &layer.annotations)
                else {
                    continue; // not loci's: unpacked, no TOC
                };
                let key = (layer.digest, toc);
                let mut pending = this.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.len() >= MAX_PENDING || pending.contains_key(&key) {
                    continue;
                }
                let store = store.clone();
                pending.insert(
                    key,
                    handle.spawn(async move {
                        open_layer_sized(&store, layer.digest, layer.size, toc, offset).await
                    }),
                );
                drop(pending);
                let this = this.clone();
                handle.spawn(async move {
                    tokio::time::sleep(KEEP).await;
                    let stale = this
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    if let Some(stale) = stale {
                        stale.abort();
                    }
                });
            }
        });
        true
    }

    /// The layer of `image` opened early, if it was (waiting for the
    /// image's manifest to be read, then for the fetch): a layer is taken
    /// once, by the open that names the same TOC digest.
    pub async fn take(
        &self,
        image: &str,
        layer: &Digest,
        toc: &Digest,
    ) -> Option<(OpenedImage, TocTail)> {
        let listing = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(image)
            .map(|(_, listing)| listing.clone());
        if let Some(mut listing) = listing {
            // Bounded: a manifest read that stalls leaves this layer to
            // fetch its TOC itself.
            let _ = tokio::time::timeout(LISTING_WAIT, listing.wait_for(|listed| *listed)).await;
        }
        let opening = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(*layer, *toc))?;
        match opening.await {
            Ok(Ok(opened)) => Some(opened),
            Ok(Err(e)) => {
                tracing::debug!(layer = %layer, error = %e, "the TOC fetched early failed; fetching it again");
                None
            }
            Err(_) => None,
        }
    }
}

/// Tells an image's waiting opens that its layers' early fetches are
/// started (or that there will be none), when dropped.
struct Listed(watch::Sender<bool>);

impl Drop for Listed {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}
