//! Finding an image's start trace: the one lookup `loci mount` and the
//! snapshotter share. A trace that does not fit is a warning and no
//! trace, never a failure: the image is still served lazily without it.

use super::publish::fetch_trace;
use super::trace::{Trace, TraceError};
use crate::digest::Digest;
use crate::image::ImageStore;
use std::future::Future;

/// The newest trace published for the image whose platform manifest is
/// `manifest` (in `store`'s repository), if there is one and it lists
/// exactly `layers`, bottom first. The registry is asked while `layers`
/// are still coming (None: they never came, so no trace). Each access is
/// checked against the layers' chunk tables by whoever replays it
/// ([`Trace::validate`]).
pub async fn find_trace(
    store: &ImageStore,
    manifest: &Digest,
    layers: impl Future<Output = Option<Vec<Digest>>>,
) -> Option<Trace> {
    let ImageStore::Registry { client, reference } = store else {
        return None;
    };
    let image = reference.to_string();
    let (found, layers) =
        tokio::join!(fetch_trace(client, &reference.repository, manifest), layers);
    let layers = layers?;
    match found {
        Ok(Some(trace)) if trace.layers == layers => {
            tracing::info!(
                image,
                accesses = trace.accesses.len(),
                "replaying the image's start trace"
            );
            Some(trace)
        }
        Ok(Some(trace)) => {
            let e = TraceError::OtherImage {
                trace: trace.layers,
                image: layers,
            };
            tracing::warn!(image, error = %e, "ignoring the image's trace");
            None
        }
        Ok(None) => {
            tracing::info!(
                image,
                "no start trace for this image; serving lazily without prefetch"
            );
            None
        }
        Err(e) => {
            tracing::warn!(image, error = %crate::error_chain::chain(&e), "ignoring the image's trace");
            None
        }
    }
}
