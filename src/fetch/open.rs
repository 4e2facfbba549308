//! Opening a converted layer: finding it in an image, fetching its TOC
//! (one range read, verified against the digest the image declares, within
//! the node's limits) or reading a copy kept earlier, and making it a
//! [`RemoteLayer`] the fetcher reads chunks of. Everything between an
//! image in a registry and the chunks a filesystem serves, and nothing of
//! FUSE.

use super::RemoteLayer;
use crate::digest::Digest;
use crate::format::{self, annotations, Footer, FormatError, Limits, Toc, FOOTER_SIZE};
use crate::image::{platform_image, ImageConfig, ImageError, ImageLayer, ImageStore};
use crate::registry::Manifest;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::sync::Arc;

/// Why a converted layer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading from the store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A layer is not in loci's format, so it cannot be read lazily.
    #[error("layer {layer} is not a loci layer ({media_type}); convert the image first")]
    NotConverted { layer: Digest, media_type: String },
    /// The layer's bytes were refused.
    #[error("layer {layer}")]
    Format {
        layer: Digest,
        #[source]
        source: FormatError,
    },
    /// A manifest, config or annotation is not what it must be.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> LayerError {
    LayerError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// Where a converted layer's TOC is, from its descriptor's annotations:
/// the TOC frame's digest, and its offset when annotated. None for a layer
/// that is not loci's.
pub fn toc_location(layer: &ImageLayer) -> Result<Option<(Digest, Option<u64>)>, LayerError> {
    toc_location_in(&layer.digest, &layer.annotations)
}

/// [`toc_location`] from a layer's digest and its descriptor's annotations.
pub fn toc_location_in(
    layer: &Digest,
    descriptor: &std::collections::BTreeMap<String, String>,
) -> Result<Option<(Digest, Option<u64>)>, LayerError> {
    let Some(digest) = descriptor.get(annotations::TOC_DIGEST) else {
        return Ok(None);
    };
    let digest = digest
        .parse()
        .map_err(|e| invalid(format!("layer {layer} annotation"), e))?;
    let offset = descriptor
        .get(annotations::TOC_OFFSET)
        .map(|o| o.parse::<u64>())
        .transpose()
        .map_err(|e| invalid(format!("layer {layer} TOC offset"), e))?;
    Ok(Some((digest, offset)))
}

/// Fetches and verifies a converted layer's footer and TOC: one range read
/// of TOC and footer when the offset is annotated, else the footer first.
pub async fn fetch_toc(
    store: &ImageStore,
    layer: &ImageLayer,
) -> Result<(Footer, Toc), LayerError> {
    let (expected, toc_offset) = toc_location(layer)?.ok_or_else(|| LayerError::NotConverted {
        layer: layer.digest,
        media_type: layer.media_type.clone(),
    })?;
    let (_, footer, toc) =
        fetch_toc_tail(store, &layer.digest, layer.size, &expected, toc_offset).await?;
    Ok((footer, toc))
}

/// The end of a converted blob from its TOC on (TOC frame and footer), as
/// fetched and verified: what a node keeps to read the TOC again without
/// the registry (see [`decode_toc_tail`]).
#[derive(Clone, Debug)]
pub struct TocTail {
    /// The blob's size.
    pub blob_size: u64,
    /// Its bytes from the TOC's offset to the end.
    pub bytes: Vec<u8>,
}

/// Fetches a converted layer's TOC frame and footer, verified against
/// `expected`: one range read when the TOC offset is annotated, else the
/// footer first. Returns the bytes with what they decode to.
pub async fn fetch_toc_tail(
    store: &ImageStore,
    digest: &Digest,
    size: u64,
    expected: &Digest,
    toc_offset: Option<u64>,
) -> Result<(TocTail, Footer, Toc), LayerError> {
    let format_err = |source| LayerError::Format {
        layer: *digest,
        source,
    };
    // The annotated offset is only a hint from the image: it is used when
    // the tail it asks for is no longer than a TOC may be.
    let most = Limits::node().max_toc_frame_bytes + FOOTER_SIZE as u64;
    let start = match toc_offset {
        Some(offset) if offset < size && size - offset <= most => offset,
        _ => size.saturating_sub(FOOTER_SIZE as u64),
    };
    let mut base = start;
    let mut tail = store.blob_range(digest, start..size).await?;
    let footer = Footer::parse(&tail, size, Limits::node()).map_err(format_err)?;
    if footer.toc_offset < base {
        base = footer.toc_offset;
        tail = store.blob_range(digest, base..size).await?;
    }
    let tail = TocTail {
        blob_size: size,
        bytes: tail[(footer.toc_offset - base) as usize..].to_vec(),
    };
    let (footer, toc) = decode_toc_tail(digest, &tail, expected)?;
    Ok((tail, footer, toc))
}

/// Decodes the footer and TOC of a [`TocTail`], checking the TOC against
/// `expected` (so a tail kept on disk is trusted no more than one fetched).
pub fn decode_toc_tail(
    digest: &Digest,
    tail: &TocTail,
    expected: &Digest,
) -> Result<(Footer, Toc), LayerError> {
    let format_err = |source| LayerError::Format {
        layer: *digest,
        source,
    };
    let footer = Footer::parse(&tail.bytes, tail.blob_size, Limits::node()).map_err(format_err)?;
    let begin = tail.blob_size - tail.bytes.len() as u64;
    if footer.toc_offset != begin {
        return Err(format_err(FormatError::Truncated {
            needed: tail.blob_size - footer.toc_offset,
            actual: tail.bytes.len() as u64,
        }));
    }
    let frame = &tail.bytes[..footer.toc_length.min(tail.bytes.len() as u64) as usize];
    let toc =
        format::decode_toc(frame, &footer, Some(expected), Limits::node()).map_err(format_err)?;
    Ok((footer, toc))
}

/// An image's layers, ready to mount: their TOCs and where their chunks are.
pub struct OpenedImage {
    /// The platform manifest the layers come from (None for a single layer
    /// opened without its image).
    pub manifest: Option<Manifest>,
    /// The image config (None for a single layer opened without its
    /// image).
    pub config: Option<ImageConfig>,
    /// One entry per layer, bottom first.
    pub layers: Arc<Vec<RemoteLayer>>,
    /// The layers' TOCs, in the same order.
    pub tocs: Vec<Toc>,
}

/// TOC range reads [`open_image`] keeps in flight: a mount waits on every
/// TOC, so they overlap instead of costing a round trip each.
const TOC_FETCHES_IN_FLIGHT: usize = 8;

/// Resolves the image at `store` and fetches every layer's TOC (a range
/// read each, verified against its annotated digest; several at once).
pub async fn open_image(store: &ImageStore) -> Result<OpenedImage, LayerError> {
    let image = platform_image(store).await?;
    let tocs: Vec<Toc> = stream::iter(image.layers.iter().map(|layer| fetch_toc(store, layer)))
        .buffered(TOC_FETCHES_IN_FLIGHT)
        .map_ok(|(_, toc)| toc)
        .try_collect()
        .await?;
    let layers = image
        .layers
        .iter()
        .zip(&tocs)
        .map(|(layer, toc)| RemoteLayer {
            store: store.clone(),
            digest: layer.digest,
            chunks: toc.chunks.clone().into(),
        })
        .collect();
    Ok(OpenedImage {
        manifest: Some(image.manifest),
        config: Some(image.config),
        layers: Arc::new(layers),
        tocs,
    })
}

/// Opens one converted layer of the repository `store` points at, known
/// by its blob digest and TOC digest (as a snapshotter learns them from
/// snapshot labels, without the manifest): the blob's size from the
/// registry, then its TOC, verified. The result mounts like a one-layer
/// image, typically as an overlayfs lower dir; the TOC's bytes come with
/// it, to open the layer again later without the registry
/// ([`open_layer_from`]).
pub async fn open_layer(
    store: &ImageStore,
    digest: Digest,
    toc_digest: Digest,
    toc_offset: Option<u64>,
) -> Result<(OpenedImage, TocTail), LayerError> {
    // With the offset, the TOC and the blob's size come in one request.
    // The offset is the image's word: if what it gives is not the TOC,
    // the size is asked for and the footer believed instead.
    if let Some(offset) = toc_offset {
        let most = Limits::node().max_toc_frame_bytes + FOOTER_SIZE as u64;
        let tail = store
            .blob_tail(&digest, offset, most)
            .await
            .map(|(bytes, blob_size)| TocTail {
                blob_size,
                bytes: bytes.to_vec(),
            });
        match tail.map_err(LayerError::from).and_then(|tail| {
            let (_, toc) = decode_toc_tail(&digest, &tail, &toc_digest)?;
            Ok((tail, toc))
        }) {
            Ok((tail, toc)) => return Ok((one_layer(store, digest, toc), tail)),
            // A registry that is down or refuses the blob would refuse the
            // size too: only an answer that is not the TOC is tried again.
            Err(e) if !offset_may_be_wrong(&e) => return Err(e),
            Err(e) => {
                tracing::debug!(layer = %digest, error = %crate::error_chain::chain(&e), "TOC not read from its annotated offset; asking the blob's size")
            }
        }
    }
    let size = store.blob_size(&digest).await?;
    open_layer_sized(store, digest, size, toc_digest, toc_offset).await
}

/// Whether a failed read of a TOC from its annotated offset may be the
/// offset's fault (what it gave is not the TOC, or the registry does not
/// serve ranges open at the end), rather than the registry's.
fn offset_may_be_wrong(e: &LayerError) -> bool {
    use crate::registry::RegistryError as R;
    match e {
        LayerError::Format { .. } => true,
        LayerError::Image(ImageError::Registry(r)) => {
            matches!(r, R::BadResponse { .. } | R::UnexpectedStatus { .. })
        }
        LayerError::Image(ImageError::Io { .. }) => true,
        _ => false,
    }
}

/// [`open_layer`] when the blob's size is known (from a manifest's
/// descriptor): a round trip less.
pub async fn open_layer_sized(
    store: &ImageStore,
    digest: Digest,
    size: u64,
    toc_digest: Digest,
    toc_offset: Option<u64>,
) -> Result<(OpenedImage, TocTail), LayerError> {
    let (tail, _, toc) = fetch_toc_tail(store, &digest, size, &toc_digest, toc_offset).await?;
    Ok((one_layer(store, digest, toc), tail))
}

/// [`open_layer`] from TOC bytes kept earlier: no request, and the TOC is
/// verified against `toc_digest` as if it had just been fetched.
pub fn open_layer_from(
    store: &ImageStore,
    digest: Digest,
    toc_digest: Digest,
    tail: &TocTail,
) -> Result<OpenedImage, LayerError> {
    let (_, toc) = decode_toc_tail(&digest, tail, &toc_digest)?;
    Ok(one_layer(store, digest, toc))
}

fn one_layer(store: &ImageStore, digest: Digest, toc: Toc) -> OpenedImage {
    OpenedImage {
        manifest: None,
        config: None,
        layers: Arc::new(vec![RemoteLayer {
            store: store.clone(),
            digest,
            chunks: toc.chunks.clone().into(),
        }]),
        tocs: vec![toc],
    }
}
