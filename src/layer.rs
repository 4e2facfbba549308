//! Converted layers as a reader meets them in an image: found through the
//! manifest (for the host's platform), their TOC fetched with one range
//! read and checked against the digest the descriptor declares.

use crate::digest::Digest;
use crate::format::{self, annotations, Footer, FormatError, Limits, Toc, FOOTER_SIZE};
use crate::image::{media_types, ImageError, ImageStore};
use crate::registry::{Manifest, MAX_CONFIG_BYTES};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

/// Why a converted layer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading from the store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
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

/// A layer of an image, and what its descriptor says about it.
#[derive(Clone, Debug)]
pub struct ImageLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// The diff_id from the image config.
    pub diff_id: Digest,
    /// The TOC digest, for converted layers.
    pub toc_digest: Option<Digest>,
    /// The TOC offset, when annotated.
    pub toc_offset: Option<u64>,
}

/// An image for the host's platform: its manifest and layers.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    /// The platform manifest (what traces and other referrers point at).
    pub manifest: Manifest,
    /// Its layers, bottom first.
    pub layers: Vec<ImageLayer>,
}

/// The image at `store`, for the host's platform when the reference is an
/// index.
pub async fn image_layers(store: &ImageStore) -> Result<PlatformImage, LayerError> {
    let mut manifest = store.resolve().await?;
    if manifest.media_type == media_types::OCI_INDEX
        || manifest.media_type == media_types::DOCKER_LIST
    {
        let digest = platform_manifest(&manifest.bytes)
            .map_err(|reason| invalid(format!("index {}", manifest.digest), reason))?;
        manifest = store.manifest(&digest).await?;
    }
    let config_digest = config_of(&manifest.bytes)
        .map_err(|reason| invalid(format!("manifest {}", manifest.digest), reason))?;
    let config_bytes = store.blob_bytes(&config_digest, MAX_CONFIG_BYTES).await?;
    let layers = layers_of(&manifest.bytes, &config_bytes)
        .map_err(|reason| invalid(format!("manifest {}", manifest.digest), reason))?;
    Ok(PlatformImage { manifest, layers })
}

/// The digest of the host platform's manifest in an index, from the
/// index's bytes as a registry served them.
pub fn platform_manifest(index: &[u8]) -> Result<Digest, String> {
    let index = ImageIndex::from_reader(index).map_err(|e| e.to_string())?;
    let child = pick_platform(index.manifests())
        .ok_or_else(|| format!("no manifest for linux/{}", host_arch()))?;
    child
        .digest()
        .to_string()
        .parse()
        .map_err(|e| format!("{e}"))
}

/// The config digest a manifest names.
pub fn config_of(manifest: &[u8]) -> Result<Digest, String> {
    let parsed = ImageManifest::from_reader(manifest).map_err(|e| e.to_string())?;
    parsed
        .config()
        .digest()
        .to_string()
        .parse()
        .map_err(|e| format!("{e}"))
}

/// A manifest's layers paired with its config's diff_ids, each layer's
/// loci annotations parsed: everything a reader takes from an image's
/// metadata, from the bytes as served. A count mismatch is refused.
pub fn layers_of(manifest: &[u8], config: &[u8]) -> Result<Vec<ImageLayer>, String> {
    let parsed = ImageManifest::from_reader(manifest).map_err(|e| e.to_string())?;
    let config = ImageConfiguration::from_reader(config).map_err(|e| format!("config: {e}"))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != parsed.layers().len() {
        return Err("layer count differs from the config's diff_ids".into());
    }
    parsed
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| describe(layer, diff_id).map_err(|e| e.to_string()))
        .collect()
}

fn describe(layer: &Descriptor, diff_id: &str) -> Result<ImageLayer, LayerError> {
    let digest: Digest = layer
        .digest()
        .to_string()
        .parse()
        .map_err(|e| invalid("layer descriptor", e))?;
    let annotation = |key: &str| {
        layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let toc_digest = annotation(annotations::TOC_DIGEST)
        .map(|d| {
            d.parse::<Digest>()
                .map_err(|e| invalid(format!("layer {digest} annotation"), e))
        })
        .transpose()?;
    let toc_offset = annotation(annotations::TOC_OFFSET)
        .map(|o| {
            o.parse::<u64>()
                .map_err(|e| invalid(format!("layer {digest} TOC offset"), e))
        })
        .transpose()?;
    Ok(ImageLayer {
        digest,
        size: layer.size(),
        media_type: layer.media_type().to_string(),
        diff_id: diff_id
            .parse()
            .map_err(|e| invalid(format!("diff_id of layer {digest}"), e))?,
        toc_digest,
        toc_offset,
    })
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
        })
    })
}

/// Fetches and verifies a converted layer's footer and TOC: one range read
/// of TOC and footer when the offset is annotated, else the footer first.
pub async fn fetch_toc(
    store: &ImageStore,
    layer: &ImageLayer,
) -> Result<(Footer, Toc), LayerError> {
    let expected = layer.toc_digest.ok_or_else(|| {
        invalid(
            format!("layer {}", layer.digest),
            "not a loci layer (no TOC digest annotation)",
        )
    })?;
    fetch_toc_of(
        store,
        &layer.digest,
        layer.size,
        &expected,
        layer.toc_offset,
    )
    .await
}

/// [`fetch_toc`] for a layer known only by its blob digest and size, as a
/// snapshotter learns it from labels rather than from a manifest.
pub async fn fetch_toc_of(
    store: &ImageStore,
    digest: &Digest,
    size: u64,
    expected: &Digest,
    toc_offset: Option<u64>,
) -> Result<(Footer, Toc), LayerError> {
    let (_, footer, toc) = fetch_toc_tail(store, digest, size, expected, toc_offset).await?;
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
