//! Keeping a trace with its image: an OCI 1.1 artifact whose `subject` is
//! the image manifest, found through the referrers API or, on registries
//! without it (docker-registry 2.8), the `sha256-<hex>` tag fallback.

use super::trace::{Trace, TracePack, MAX_TRACE_BYTES};
use crate::digest::Digest;
use crate::image::media_types;
use crate::registry::{Manifest, RegistryClient, RegistryError};
use bytes::Bytes;
use serde_json::{json, Value};

/// The artifact type (and layer media type) of a loci start trace.
pub const TRACE_ARTIFACT_TYPE: &str = "application/vnd.loci.trace.v1+json";
/// Media type of a trace artifact's second layer, its pack: the traced
/// chunks recompressed (see [`Trace::pack`]).
pub const TRACE_PACK_MEDIA_TYPE: &str = "application/vnd.loci.trace.pack.v1";
/// Annotation of a trace artifact naming its trace blob. Registries copy a
/// referrer's annotations into the referrers index (loci's fallback index
/// does too), so a lookup fetches the blob alongside the artifact manifest
/// instead of after it: a round trip less before a cold start's replay.
pub const TRACE_BLOB_ANNOTATION: &str = "loci.trace.blob";
pub(super) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(super) const EMPTY_JSON: &[u8] = b"{}";

/// Why a trace could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A referrer or its index is not what it must be.
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn fallback_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// Pushes `trace` as an artifact referring to `image` (a manifest of
/// `repo`) and lists it in the referrers fallback tag; with `pack` (the
/// blob `trace.pack` names, see [`with_pack`](super::with_pack)) as a
/// layer of it. Without one, or when the pack's index would make the trace
/// larger than a lookup reads, the trace is pushed without its pack.
/// Returns the artifact manifest's digest.
pub async fn push_trace(
    client: &RegistryClient,
    repo: &str,
    image: &Manifest,
    trace: &Trace,
    pack: Option<&Bytes>,
) -> Result<Digest, PublishError> {
    let without_pack = || {
        Trace {
            pack: None,
            ..trace.clone()
        }
        .encode()
    };
    let (encoded, index) = match (pack, &trace.pack) {
        (Some(blob), Some(index)) if Digest::of(blob) == index.digest => {
            match trace.encode() {
                encoded if encoded.len() as u64 <= MAX_TRACE_BYTES => {
                    client
                        .push_blob_bytes(repo, &index.digest, blob.clone(), None)
                        .await?;
                    (encoded, Some(index))
                }
                _ => {
                    tracing::warn!(repo, "the trace with its pack's index is too large; publishing it without its pack");
                    (without_pack(), None)
                }
            }
        }
        (Some(_), _) => {
            return Err(PublishError::Invalid(
                "the pack is not the one the trace names".into(),
            ))
        }
        (None, _) => (without_pack(), None),
    };
    let digest = push_artifact(client, repo, image, encoded, index).await?;
    tracing::info!(
        repo,
        image = %image.digest,
        trace = %digest,
        accesses = trace.accesses.len(),
        pack_bytes = index.map(|p| p.size),
        "trace published"
    );
    Ok(digest)
}

/// Pushes trace bytes as they are, unchecked: how tests publish broken
/// traces.
pub async fn push_raw_trace(
    client: &RegistryClient,
    repo: &str,
    image: &Manifest,
    trace: Vec<u8>,
) -> Result<Digest, PublishError> {
    push_artifact(client, repo, image, trace, None).await
}

/// The artifact of [`push_trace`]: the trace blob, the pack's layer
/// (pushed already) when there is one, the manifest and the fallback
/// tag's entry.
async fn push_artifact(
    client: &RegistryClient,
    repo: &str,
    image: &Manifest,
    trace: Vec<u8>,
    pack: Option<&TracePack>,
) -> Result<Digest, PublishError> {
    let blob = Bytes::from(trace);
    let blob_digest = Digest::of(&blob);
    client
        .push_blob_bytes(repo, &blob_digest, blob.clone(), None)
        .await?;
    let empty = Digest::of(EMPTY_JSON);
    client
        .push_blob_bytes(repo, &empty, Bytes::from_static(EMPTY_JSON), None)
        .await?;
    let mut layers = vec![
        json!({"mediaType": TRACE_ARTIFACT_TYPE, "digest": blob_digest.to_string(), "size": blob.len()}),
    ];
    if let Some(pack) = pack {
        layers.push(json!({"mediaType": TRACE_PACK_MEDIA_TYPE, "digest": pack.digest.to_string(), "size": pack.size}));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "artifactType": TRACE_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": EMPTY_JSON.len()},
        "layers": layers,
        "subject": {"mediaType": image.media_type, "digest": image.digest.to_string(), "size": image.bytes.len()},
        "annotations": {TRACE_BLOB_ANNOTATION: blob_digest.to_string()},
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("JSON serializes"));
    let digest = Digest::of(&bytes);
    client
        .put_manifest(repo, &digest.to_string(), &bytes, media_types::OCI_MANIFEST)
        .await?;
    // Registries with the referrers API index the subject themselves; for
    // the others, add the artifact to the fallback tag's index.
    if client
        .get_referrers(repo, &image.digest, TRACE_ARTIFACT_TYPE)
        .await?
        .is_none()
    {
        let tag = fallback_tag(&image.digest);
        let mut index = match client.get_manifest(repo, &tag).await {
            Ok(existing) => serde_json::from_slice::<Value>(&existing.bytes)
                .map_err(|e| PublishError::Invalid(format!("referrers tag {tag}: {e}")))?,
            Err(RegistryError::NotFound { .. }) => {
                json!({"schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": []})
            }
            Err(e) => return Err(e.into()),
        };
        let entries = index["manifests"].as_array_mut().ok_or_else(|| {
            PublishError::Invalid(format!("referrers tag {tag} has no manifests"))
        })?;
        entries.push(json!({
            "mediaType": media_types::OCI_MANIFEST,
            "artifactType": TRACE_ARTIFACT_TYPE,
            "digest": digest.to_string(),
            "size": bytes.len(),
            "annotations": manifest["annotations"],
        }));
        let index_bytes = Bytes::from(serde_json::to_vec(&index).expect("JSON serializes"));
        client
            .put_manifest(repo, &tag, &index_bytes, media_types::OCI_INDEX)
            .await?;
    }
    Ok(digest)
}

/// The newest trace referring to `image`, if any: its artifact manifest
/// and blob are fetched by digest (so verified), and its subject checked.
/// The trace is not yet validated against the layers; the caller does that.
pub async fn fetch_trace(
    client: &RegistryClient,
    repo: &str,
    image: &Digest,
) -> Result<Option<Trace>, PublishError> {
    // Both at once: a registry without the referrers API (docker-registry
    // 2.8) would otherwise cost a round trip more, and on a cold start
    // that round trip delays the replay.
    let fallback = fallback_tag(image);
    let (referrers, tagged) = tokio::join!(
        client.get_referrers(repo, image, TRACE_ARTIFACT_TYPE),
        client.get_manifest(repo, &fallback)
    );
    let index = match referrers? {
        Some(bytes) => bytes,
        None => match tagged {
            Ok(m) => m.bytes,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    let index: Value = serde_json::from_slice(&index)
        .map_err(|e| PublishError::Invalid(format!("referrers index of {image}: {e}")))?;
    let newest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["artifactType"] == TRACE_ARTIFACT_TYPE)
        .filter_map(|d| {
            let artifact = d["digest"].as_str()?.parse::<Digest>().ok()?;
            let named_blob = d["annotations"][TRACE_BLOB_ANNOTATION]
                .as_str()
                .and_then(|b| b.parse::<Digest>().ok());
            Some((artifact, named_blob))
        })
        .next_back();
    let Some((artifact, named_blob)) = newest else {
        return Ok(None);
    };
    // The blob the index names is fetched beside the manifest, and used
    // only if the manifest names it too.
    let artifact_ref = artifact.to_string();
    let (manifest, early_blob) = tokio::join!(client.get_manifest(repo, &artifact_ref), async {
        match named_blob {
            Some(blob) => Some((blob, client.get_blob(repo, &blob, MAX_TRACE_BYTES).await)),
            None => None,
        }
    });
    let manifest: Value = serde_json::from_slice(&manifest?.bytes)
        .map_err(|e| PublishError::Invalid(format!("trace artifact {artifact}: {e}")))?;
    if manifest["subject"]["digest"].as_str() != Some(image.to_string().as_str()) {
        return Err(PublishError::Invalid(format!(
            "trace artifact {artifact} refers to {}, not {image}",
            manifest["subject"]["digest"]
        )));
    }
    let blob: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            PublishError::Invalid(format!("trace artifact {artifact} has no trace layer"))
        })?;
    let bytes = match early_blob {
        Some((named, fetched)) if named == blob => fetched?,
        _ => client.get_blob(repo, &blob, MAX_TRACE_BYTES).await?,
    };
    Trace::decode(&bytes)
        .map(Some)
        .map_err(|e| PublishError::Invalid(format!("trace {blob}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::test_registry::*;

    #[test]
    fn a_lookup_asks_for_the_trace_blob_the_index_names_without_waiting_for_its_manifest() {
        let (image, trace) = (image(), trace(3));
        let (index, manifest, blob) = published(&image, &trace, None);
        let client = client_of(&registry_holding(paths(&image, index, manifest, blob)).0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let found = runtime.block_on(async {
            tokio::time::timeout(HELD / 2, fetch_trace(&client, "repo", &image.digest)).await
        });
        let found = found.expect("the blob was asked for only after the manifest came");
        assert_eq!(found.unwrap().unwrap().accesses, trace.accesses);
    }

    /// The index's word is only a head start: a blob it names that the
    /// artifact manifest does not is fetched but not used.
    #[test]
    fn a_blob_the_index_names_but_the_manifest_does_not_is_not_the_trace() {
        let (image, trace, other) = (image(), trace(3), trace(7).encode());
        let (index, manifest, blob) = published(&image, &trace, Some(Digest::of(&other)));
        let mut paths = paths(&image, index, manifest, blob);
        paths.push((format!("/blobs/{}", Digest::of(&other)), other));
        let client = client_of(&registry_holding(paths).0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let found = runtime.block_on(fetch_trace(&client, "repo", &image.digest));
        assert_eq!(found.unwrap().unwrap().accesses, trace.accesses);
    }
}
