//! One interface over registries and layout directories.

use super::{ImageRef, OciLayout};
use crate::digest::Digest;
use crate::registry::{
    Manifest, Reference, RegistryClient, RegistryError, RegistryOptions, MAX_MANIFEST_BYTES,
};
use bytes::Bytes;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why reading or writing an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A layout directory could not be read or written.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A manifest or index that is not what the OCI spec says it must be.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// A place images are read from and written to.
#[derive(Clone)]
pub enum ImageStore {
    /// A repository in a registry, at a tag or digest.
    Registry {
        /// Client for the registry host.
        client: RegistryClient,
        /// Repository and tag.
        reference: Reference,
    },
    /// An OCI image layout directory, at a tag.
    Layout {
        /// The layout.
        layout: OciLayout,
        /// The manifest's ref name.
        tag: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

impl ImageStore {
    /// Opens the store an [`ImageRef`] names; a layout is created when
    /// `create` (a conversion's destination).
    pub fn open(
        image: &ImageRef,
        opts: &RegistryOptions,
        create: bool,
    ) -> Result<ImageStore, ImageError> {
        Ok(match image {
            ImageRef::Registry(reference) => ImageStore::Registry {
                client: RegistryClient::new(&reference.registry, opts.clone())?,
                reference: reference.clone(),
            },
            ImageRef::Layout { dir, tag } => ImageStore::Layout {
                layout: OciLayout::open(dir, create).map_err(io_err(dir.display().to_string()))?,
                tag: tag.clone(),
            },
        })
    }

    /// The manifest or index the reference points at.
    pub async fn resolve(&self) -> Result<Manifest, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .get_manifest(&reference.repository, &reference.manifest_reference())
                .await?),
            ImageStore::Layout { layout, tag } => {
                let descriptor = layout.find_tag(tag).map_err(io_err(format!("tag {tag}")))?;
                let digest: Digest = descriptor["digest"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| ImageError::Invalid {
                        what: format!("index.json entry for {tag}"),
                        reason: "no valid digest".into(),
                    })?;
                self.manifest(&digest).await
            }
        }
    }

    /// A manifest or index by digest, verified.
    pub async fn manifest(&self, digest: &Digest) -> Result<Manifest, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .get_manifest(&reference.repository, &digest.to_string())
                .await?),
            ImageStore::Layout { .. } => {
                let bytes = self.blob_bytes(digest, MAX_MANIFEST_BYTES).await?;
                let media_type = sniff_media_type(&bytes).ok_or_else(|| ImageError::Invalid {
                    what: format!("manifest {digest}"),
                    reason: "neither a manifest nor an index".into(),
                })?;
                Ok(Manifest {
                    bytes,
                    media_type,
                    digest: *digest,
                })
            }
        }
    }

    /// A small blob (config, manifest) whole, verified against its digest;
    /// refused when it is over `max` bytes.
    pub async fn blob_bytes(&self, digest: &Digest, max: u64) -> Result<Bytes, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.get_blob(&reference.repository, digest, max).await?)
            }
            ImageStore::Layout { layout, .. } => {
                let path = layout.blob_path(digest);
                let mut bytes = Vec::new();
                std::fs::File::open(&path)
                    .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut bytes))
                    .map_err(io_err(format!("blob {digest}")))?;
                if bytes.len() as u64 > max {
                    return Err(ImageError::Invalid {
                        what: format!("blob {}", path.display()),
                        reason: format!("over the {max} bytes expected at most"),
                    });
                }
                let actual = Digest::of(&bytes);
                if actual != *digest {
                    return Err(RegistryError::DigestMismatch {
                        what: format!("blob {}", path.display()),
                        expected: *digest,
                        actual,
                    }
                    .into());
                }
                Ok(Bytes::from(bytes))
            }
        }
    }

    /// A local file holding the blob of `size` bytes (as its descriptor
    /// says): downloaded into `scratch` from a registry (verified, and
    /// refused once it passes that size), or the layout's own file (no
    /// copy).
    pub async fn blob_file(
        &self,
        digest: &Digest,
        size: u64,
        scratch: &Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<PathBuf, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => {
                let path = scratch.join(digest.hex());
                client
                    .get_blob_to_file(&reference.repository, digest, size, &path, on_bytes)
                    .await?;
                Ok(path)
            }
            ImageStore::Layout { layout, .. } => {
                let path = layout.blob_path(digest);
                if !path.exists() {
                    return Err(ImageError::Io {
                        what: format!("blob {digest}"),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
                Ok(path)
            }
        }
    }

    /// Whether the store has a blob.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.blob_exists(&reference.repository, digest).await?)
            }
            ImageStore::Layout { layout, .. } => Ok(layout.blob_path(digest).exists()),
        }
    }

    /// The size of a blob.
    pub async fn blob_size(&self, digest: &Digest) -> Result<u64, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.blob_size(&reference.repository, digest).await?)
            }
            ImageStore::Layout { layout, .. } => Ok(std::fs::metadata(layout.blob_path(digest))
                .map_err(io_err(format!("blob {digest}")))?
                .len()),
        }
    }

    /// A byte range of a blob.
    pub async fn blob_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, ImageError> {
        self.blob_range_observed(digest, range, &mut |_| {}).await
    }

    /// The end of a blob from `start` on, and the blob's size, in one
    /// request (see [`RegistryClient::get_blob_tail`]); at most `max` bytes.
    pub async fn blob_tail(
        &self,
        digest: &Digest,
        start: u64,
        max: u64,
    ) -> Result<(Bytes, u64), ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .get_blob_tail(&reference.repository, digest, start, max)
                .await?),
            ImageStore::Layout { layout, .. } => {
                let what = format!("blob {digest} bytes {start}-");
                let size = std::fs::metadata(layout.blob_path(digest))
                    .map_err(io_err(&what))?
                    .len();
                if start >= size || size - start > max {
                    return Err(ImageError::Io {
                        what,
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("the blob is {size} bytes"),
                        ),
                    });
                }
                Ok((self.blob_range(digest, start..size).await?, size))
            }
        }
    }

    /// [`blob_range`](Self::blob_range), showing `observe` the bytes
    /// received so far as they arrive (a layout's range all at once).
    pub async fn blob_range_observed(
        &self,
        digest: &Digest,
        range: Range<u64>,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Bytes, ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .get_blob_range_observed(&reference.repository, digest, range, observe)
                .await?),
            ImageStore::Layout { layout, .. } => {
                let what = format!("blob {digest} bytes {}-{}", range.start, range.end);
                let mut file =
                    std::fs::File::open(layout.blob_path(digest)).map_err(io_err(&what))?;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                file.seek(SeekFrom::Start(range.start))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(io_err(&what))?;
                observe(&buf);
                Ok(Bytes::from(buf))
            }
        }
    }

    /// The repository to mount a blob from when copying from `src` to this
    /// store: only when both are repositories of the same registry.
    fn mount_source<'a>(&self, src: Option<&'a ImageStore>) -> Option<&'a str> {
        match (self, src) {
            (
                ImageStore::Registry { reference: dst, .. },
                Some(ImageStore::Registry {
                    reference: from, ..
                }),
            ) if dst.registry == from.registry => Some(from.repository.as_str()),
            _ => None,
        }
    }

    /// Stores the blob held in `path` (skipped when already present).
    pub async fn put_blob_file(
        &self,
        digest: &Digest,
        path: &Path,
        src: Option<&ImageStore>,
    ) -> Result<(), ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .push_blob_file(&reference.repository, digest, path, self.mount_source(src))
                .await?),
            ImageStore::Layout { layout, .. } => layout
                .put_blob_file(digest, path)
                .map_err(io_err(format!("blob {digest}"))),
        }
    }

    /// Stores a blob written to a scratch file of the caller's, which may
    /// be consumed: a layout takes the file itself where it can (a rename,
    /// no copy of a converted layer's hundreds of MB); a registry is sent
    /// it and the file stays.
    pub async fn put_scratch_blob(&self, digest: &Digest, path: &Path) -> Result<(), ImageError> {
        match self {
            ImageStore::Layout { layout, .. } => layout
                .move_blob_file(digest, path)
                .map_err(io_err(format!("blob {digest}"))),
            ImageStore::Registry { .. } => self.put_blob_file(digest, path, None).await,
        }
    }

    /// Stores a blob held in memory (skipped when already present).
    pub async fn put_blob_bytes(
        &self,
        digest: &Digest,
        data: Bytes,
        src: Option<&ImageStore>,
    ) -> Result<(), ImageError> {
        match self {
            ImageStore::Registry { client, reference } => Ok(client
                .push_blob_bytes(&reference.repository, digest, data, self.mount_source(src))
                .await?),
            ImageStore::Layout { layout, .. } => layout
                .put_blob(digest, &data)
                .map_err(io_err(format!("blob {digest}"))),
        }
    }

    /// Stores a manifest or index by digest (`tag` None, for the children
    /// of an index) or under this store's tag.
    pub async fn put_manifest(&self, manifest: &Manifest, tagged: bool) -> Result<(), ImageError> {
        match self {
            ImageStore::Registry { client, reference } => {
                let target = if tagged {
                    reference.manifest_reference()
                } else {
                    manifest.digest.to_string()
                };
                Ok(client
                    .put_manifest(
                        &reference.repository,
                        &target,
                        &manifest.bytes,
                        &manifest.media_type,
                    )
                    .await?)
            }
            ImageStore::Layout { layout, tag } => {
                layout
                    .put_blob(&manifest.digest, &manifest.bytes)
                    .map_err(io_err(format!("manifest {}", manifest.digest)))?;
                if tagged {
                    let descriptor = serde_json::json!({
                        "mediaType": manifest.media_type,
                        "digest": manifest.digest.to_string(),
                        "size": manifest.bytes.len(),
                    });
                    layout
                        .set_tag(tag, descriptor)
                        .map_err(io_err(format!("tag {tag}")))?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageStore::Registry { reference, .. } => write!(f, "docker://{reference}"),
            ImageStore::Layout { tag, .. } => write!(f, "oci layout:{tag}"),
        }
    }
}

/// A manifest's media type: its `mediaType` field, which OCI makes
/// optional, else what its shape says (umoci, for one, leaves it out).
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(t) = value["mediaType"].as_str() {
        return Some(t.to_string());
    }
    if value["manifests"].is_array() {
        Some(super::media_types::OCI_INDEX.into())
    } else if value["layers"].is_array() && value["config"].is_object() {
        Some(super::media_types::OCI_MANIFEST.into())
    } else {
        None
    }
}

/// Removes a file [`ImageStore::blob_file`] returned (or any file made in
/// `scratch`) once it is no longer needed; a layout's own blob, which
/// `blob_file` hands out in place, is left alone.
pub fn remove_scratch_file(scratch: &Path, path: &Path) {
    if path.starts_with(scratch) {
        let _ = std::fs::remove_file(path);
    }
}
