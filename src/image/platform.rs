//! An image as a reader meets it: the manifest for this host's platform
//! (picked from an index), its config, and its layers paired with their
//! diff_ids. The one place that choice and that pairing are made, for
//! mounting, pulling, inspecting and prefetching alike.

use super::{media_types, ImageError, ImageStore};
use crate::digest::Digest;
use crate::registry::{Manifest, MAX_CONFIG_BYTES};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::BTreeMap;

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
    /// The descriptor's annotations (loci's TOC location among them, read
    /// by `fetch`).
    pub annotations: BTreeMap<String, String>,
}

/// An image's config as its manifest names it, and its bytes.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// Digest.
    pub digest: Digest,
    /// Media type, as the manifest gives it.
    pub media_type: String,
    /// The bytes, verified against the digest.
    pub bytes: bytes::Bytes,
}

/// An image for the host's platform: its manifest, config and layers.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    /// The index the manifest was picked from, when the reference named
    /// one.
    pub index: Option<Manifest>,
    /// The platform manifest (what traces and other referrers point at).
    pub manifest: Manifest,
    /// The image config.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<ImageLayer>,
}

fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// The image at `store`, for the host's platform when the reference is an
/// index.
pub async fn platform_image(store: &ImageStore) -> Result<PlatformImage, ImageError> {
    let (manifest, index) = resolve_platform_manifest(store).await?;
    let what = format!("manifest {}", manifest.digest);
    let config_digest = config_of(&manifest.bytes).map_err(|reason| invalid(&what, reason))?;
    let media_type = ImageManifest::from_reader(&manifest.bytes[..])
        .map(|m| m.config().media_type().to_string())
        .map_err(|e| invalid(&what, e))?;
    let bytes = store.blob_bytes(&config_digest, MAX_CONFIG_BYTES).await?;
    let layers = layers_of(&manifest.bytes, &bytes).map_err(|reason| invalid(&what, reason))?;
    Ok(PlatformImage {
        index,
        manifest,
        config: ImageConfig {
            digest: config_digest,
            media_type,
            bytes,
        },
        layers,
    })
}

/// The host platform's manifest at `store` (picked from an index when the
/// reference names one), and the index.
async fn resolve_platform_manifest(
    store: &ImageStore,
) -> Result<(Manifest, Option<Manifest>), ImageError> {
    let top = store.resolve().await?;
    if top.media_type == media_types::OCI_INDEX || top.media_type == media_types::DOCKER_LIST {
        let digest = platform_manifest(&top.bytes)
            .map_err(|reason| invalid(format!("index {}", top.digest), reason))?;
        Ok((store.manifest(&digest).await?, Some(top)))
    } else {
        Ok((top, None))
    }
}

/// A layer as the platform manifest describes it (no diff_id: that is in
/// the config).
#[derive(Clone, Debug)]
pub struct ManifestLayer {
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// The descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The host platform's manifest at `store` and its layers, bottom first,
/// without the config: what finding the image's trace and opening its
/// layers' TOCs early need, one round trip sooner than [`platform_image`].
pub async fn platform_manifest_layers(
    store: &ImageStore,
) -> Result<(Manifest, Vec<ManifestLayer>), ImageError> {
    let (manifest, _) = resolve_platform_manifest(store).await?;
    let what = format!("manifest {}", manifest.digest);
    let parsed = ImageManifest::from_reader(&manifest.bytes[..]).map_err(|e| invalid(&what, e))?;
    let layers = parsed
        .layers()
        .iter()
        .map(|layer| {
            Ok(ManifestLayer {
                digest: layer.digest().to_string().parse()?,
                size: layer.size(),
                annotations: layer
                    .annotations()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, crate::digest::ParseDigestError>>()
        .map_err(|e| invalid(&what, format!("layer descriptor: {e}")))?;
    Ok((manifest, layers))
}

/// The digest of the host platform's manifest in an index, from the
/// index's bytes as a registry served them.
pub fn platform_manifest(index: &[u8]) -> Result<Digest, String> {
    let index = ImageIndex::from_reader(index).map_err(|e| e.to_string())?;
    let child = index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
            })
        })
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

/// A manifest's layers paired with its config's diff_ids: everything a
/// reader takes from an image's metadata, from the bytes as served. A
/// count mismatch (or an image without layers) is refused.
pub fn layers_of(manifest: &[u8], config: &[u8]) -> Result<Vec<ImageLayer>, String> {
    let parsed = ImageManifest::from_reader(manifest).map_err(|e| e.to_string())?;
    let config = ImageConfiguration::from_reader(config).map_err(|e| format!("config: {e}"))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != parsed.layers().len() {
        return Err(format!(
            "{} layers but {} diff_ids in the config",
            parsed.layers().len(),
            diff_ids.len()
        ));
    }
    if diff_ids.is_empty() {
        return Err("the image has no layers".into());
    }
    parsed
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| describe(layer, diff_id))
        .collect()
}

fn describe(layer: &Descriptor, diff_id: &str) -> Result<ImageLayer, String> {
    let digest: Digest = layer
        .digest()
        .to_string()
        .parse()
        .map_err(|e| format!("layer descriptor: {e}"))?;
    Ok(ImageLayer {
        digest,
        size: layer.size(),
        media_type: layer.media_type().to_string(),
        diff_id: diff_id
            .parse()
            .map_err(|e| format!("diff_id of layer {digest}: {e}"))?,
        annotations: layer
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    })
}

/// The chain ID of a layer with `diff_id` over the layers whose chain ID
/// is `parent` (OCI image spec: sha256 of "parent diff_id").
pub fn chain_id(parent: &str, diff_id: &Digest) -> String {
    if parent.is_empty() {
        diff_id.to_string()
    } else {
        Digest::of(format!("{parent} {diff_id}").as_bytes()).to_string()
    }
}

/// This host's architecture as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
