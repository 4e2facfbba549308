//! `loci pull`: pulls an image into containerd with the loci snapshotter,
//! as containerd's CRI plugin would, through containerd's own API
//! (content, snapshots, diff, images, leases; 1.6 has no Transfer service).
//!
//! Manifest and config go into containerd's content store. Each layer is
//! Prepared with the labels the snapshotter needs (`snapshot.ref` = chain
//! ID, the image and layer, the layer's loci annotations): loci answers
//! ALREADY_EXISTS for layers it serves lazily, whose blobs are never
//! fetched; other layers are downloaded, applied and committed as
//! containerd's unpacker does. Last, the image record, with GC labels that
//! keep its content and snapshots.

use crate::digest::Digest;
use crate::image::{
    chain_id, platform_image, ImageError, ImageLayer, ImageRef, ImageStore, PlatformImage,
};
use crate::progress::Progress;
use crate::registry::RegistryOptions;
use crate::snapshotter::lazy::{IMAGE_REF, LAYER_DIGEST, MANIFEST_DIGEST, TARGET_REF};
use bytes::Bytes;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest,
    GetImageRequest, Image, InfoRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use std::collections::HashMap;
use std::path::Path;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The snapshotter name loci registers as in containerd.
pub const SNAPSHOTTER: &str = "loci";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Connecting to containerd failed.
    #[error("connecting to containerd at {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// containerd refused a call.
    #[error("containerd: {what}")]
    Containerd {
        what: String,
        #[source]
        source: Status,
    },
    /// The registry failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image's manifest, index or config is not usable.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn containerd(what: impl Into<String>) -> impl FnOnce(Status) -> PullError {
    let what = what.into();
    move |source| PullError::Containerd { what, source }
}

fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> PullError {
    PullError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// What a pull did, per layer.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PullReport {
    /// The image record's name.
    pub name: String,
    /// Layers loci serves lazily (their blobs were not fetched).
    pub lazy_layers: usize,
    /// Layers downloaded and unpacked by containerd.
    pub unpacked_layers: usize,
    /// Layers whose snapshot already existed.
    pub present_layers: usize,
}

/// A layer as the manifest describes it, with its diff_id.
struct Layer {
    descriptor: Descriptor,
    diff_id: Digest,
}

impl From<&ImageLayer> for Layer {
    fn from(layer: &ImageLayer) -> Layer {
        Layer {
            descriptor: Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.to_string(),
                size: layer.size as i64,
                annotations: layer.annotations.clone().into_iter().collect(),
            },
            diff_id: layer.diff_id,
        }
    }
}

/// Pulls `reference` into containerd at `address` in `namespace`.
pub async fn pull(
    address: &Path,
    namespace: &str,
    reference: &str,
    registry: &RegistryOptions,
) -> Result<PullReport, PullError> {
    let name = reference
        .strip_prefix("docker://")
        .unwrap_or(reference)
        .to_string();
    let image: ImageRef = name.parse().map_err(|e| invalid(&name, e))?;
    if !matches!(image, ImageRef::Registry(_)) {
        return Err(invalid(&name, "loci pull takes a registry reference"));
    }
    let store = ImageStore::open(&image, registry, false)?;
    let channel = containerd_client::connect(address)
        .await
        .map_err(|source| PullError::Connect {
            address: address.display().to_string(),
            source,
        })?;
    let mut client = Client {
        channel,
        namespace: namespace.to_string(),
        lease: None,
    };
    let lease = format!("loci-pull-{}", std::process::id());
    LeasesClient::new(client.channel.clone())
        .create(
            client.request(CreateRequest {
                id: lease.clone(),
                labels: HashMap::from([(
                    "containerd.io/gc.expire".to_string(),
                    // A crashed pull's lease expires and GC reclaims its content.
                    chrono::Utc::now()
                        .checked_add_signed(chrono::Duration::hours(1))
                        .expect("in range")
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )]),
            }),
        )
        .await
        .map_err(containerd("creating a lease"))?;
    client.lease = Some(lease.clone());
    let result = pull_leased(&client, &store, &name).await;
    client.lease = None;
    let deleted = LeasesClient::new(client.channel.clone())
        .delete(client.request(DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await;
    let report = result?;
    deleted.map_err(containerd("deleting the pull's lease"))?;
    Ok(report)
}

async fn pull_leased(
    client: &Client,
    store: &ImageStore,
    name: &str,
) -> Result<PullReport, PullError> {
    let progress = Progress::new();
    let image = platform_image(store).await?;
    let layers: Vec<Layer> = image.layers.iter().map(Layer::from).collect();
    let PlatformImage {
        index,
        manifest,
        config,
        ..
    } = image;
    let top = index.as_ref().unwrap_or(&manifest);
    let top_descriptor = Descriptor {
        media_type: top.media_type.clone(),
        digest: top.digest.to_string(),
        size: top.bytes.len() as i64,
        annotations: HashMap::new(),
    };
    let config_desc = Descriptor {
        media_type: config.media_type.clone(),
        digest: config.digest.to_string(),
        size: config.bytes.len() as i64,
        annotations: HashMap::new(),
    };

    let mut report = PullReport {
        name: name.to_string(),
        ..PullReport::default()
    };
    let mut parent = String::new();
    let mut chain = String::new();
    for layer in &layers {
        chain = chain_id(&chain, &layer.diff_id);
        let task = progress.bytes(
            &format!("layer {}", short(&layer.descriptor.digest)),
            layer.descriptor.size as u64,
        );
        let outcome = unpack_layer(
            client,
            store,
            name,
            &manifest.digest,
            layer,
            &parent,
            &chain,
            &task,
        )
        .await?;
        match outcome {
            Outcome::Present => report.present_layers += 1,
            Outcome::Lazy => report.lazy_layers += 1,
            Outcome::Unpacked => report.unpacked_layers += 1,
        }
        task.finish(match outcome {
            Outcome::Present => "present",
            Outcome::Lazy => "lazy (not downloaded)",
            Outcome::Unpacked => "unpacked",
        });
        parent = chain.clone();
    }

    // Content, with the labels containerd's GC follows from the image.
    let mut config_labels = HashMap::from([(
        format!("containerd.io/gc.ref.snapshot.{}", crate::pull::SNAPSHOTTER),
        chain.clone(),
    )]);
    config_labels.insert("containerd.io/distribution.source".into(), name.to_string());
    client
        .write_content(&config_desc, config.bytes.clone(), config_labels)
        .await?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config_desc.digest.clone(),
    )]);
    for (i, layer) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.descriptor.digest.clone(),
        );
    }
    let manifest_desc = Descriptor {
        media_type: manifest.media_type.clone(),
        digest: manifest.digest.to_string(),
        size: manifest.bytes.len() as i64,
        annotations: HashMap::new(),
    };
    client
        .write_content(&manifest_desc, manifest.bytes.clone(), manifest_labels)
        .await?;
    if let Some(index) = &index {
        let labels = HashMap::from([(
            "containerd.io/gc.ref.content.m.0".to_string(),
            manifest.digest.to_string(),
        )]);
        client
            .write_content(&top_descriptor, index.bytes.clone(), labels)
            .await?;
    }
    client.put_image(name, top_descriptor).await?;
    Ok(report)
}

enum Outcome {
    Present,
    Lazy,
    Unpacked,
}

#[allow(clippy::too_many_arguments)]
async fn unpack_layer(
    client: &Client,
    store: &ImageStore,
    name: &str,
    manifest: &Digest,
    layer: &Layer,
    parent: &str,
    chain: &str,
    task: &crate::progress::Task,
) -> Result<Outcome, PullError> {
    let mut snapshots = SnapshotsClient::new(client.channel.clone());
    let stat = snapshots
        .stat(client.request(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: chain.to_string(),
        }))
        .await;
    match stat {
        Ok(_) => return Ok(Outcome::Present),
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(containerd(format!("stat snapshot {chain}"))(s)),
    }
    let mut labels: HashMap<String, String> = layer
        .descriptor
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(TARGET_REF.into(), chain.to_string());
    labels.insert(IMAGE_REF.into(), name.to_string());
    labels.insert(LAYER_DIGEST.into(), layer.descriptor.digest.clone());
    labels.insert(MANIFEST_DIGEST.into(), manifest.to_string());
    let key = format!("loci-pull/{}/{chain}", std::process::id());
    let prepared = snapshots
        .prepare(client.request(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: parent.to_string(),
            labels,
        }))
        .await;
    let mounts = match prepared {
        Ok(r) => r.into_inner().mounts,
        Err(s) if s.code() == Code::AlreadyExists => return Ok(Outcome::Lazy),
        Err(s) => return Err(containerd(format!("prepare snapshot {chain}"))(s)),
    };
    let applied = async {
        let digest: Digest = layer
            .descriptor
            .digest
            .parse()
            .map_err(|e| invalid("layer digest", e))?;
        // Bounded by the size the manifest declares (and checked against
        // the digest), as a whole-layer download.
        let blob = store
            .blob_bytes(&digest, layer.descriptor.size.max(0) as u64)
            .await?;
        task.set(blob.len() as u64);
        let labels = HashMap::from([(
            "containerd.io/uncompressed".to_string(),
            layer.diff_id.to_string(),
        )]);
        client
            .write_content(&layer.descriptor, blob, labels)
            .await?;
        let applied = DiffClient::new(client.channel.clone())
            .apply(client.request(ApplyRequest {
                diff: Some(layer.descriptor.clone()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(containerd(format!(
                "applying layer {}",
                layer.descriptor.digest
            )))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        // As containerd's own unpacker does: the layer is committed under a
        // chain ID made from its diff_id only if it is that diff_id.
        if applied != layer.diff_id.to_string() {
            return Err(invalid(
                format!("layer {}", layer.descriptor.digest),
                format!(
                    "it unpacks to {applied}, not the diff_id {} its image claims",
                    layer.diff_id
                ),
            ));
        }
        snapshots
            .commit(client.request(CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.to_string(),
                key: key.clone(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(containerd(format!("commit snapshot {chain}")))?;
        Ok::<(), PullError>(())
    }
    .await;
    if let Err(e) = applied {
        let _ = snapshots
            .remove(client.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key,
            }))
            .await;
        return Err(e);
    }
    Ok(Outcome::Unpacked)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// containerd's API with a namespace and, during the pull, a lease.
struct Client {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Client {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let headers = request.metadata_mut();
        headers.insert(
            "containerd-namespace",
            self.namespace.parse().expect("namespace is ASCII"),
        );
        if let Some(lease) = &self.lease {
            headers.insert("containerd-lease", lease.parse().expect("lease is ASCII"));
        }
        request
    }

    /// Writes `data` as blob `desc` into the content store (unless there),
    /// with `labels`.
    async fn write_content(
        &self,
        desc: &Descriptor,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), PullError> {
        let mut content = ContentClient::new(self.channel.clone());
        let info = content
            .info(self.request(InfoRequest {
                digest: desc.digest.clone(),
            }))
            .await;
        match info {
            Ok(_) => {
                let update = containerd_client::services::v1::UpdateRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: desc.digest.clone(),
                        labels: labels.clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
                    }),
                };
                content
                    .update(self.request(update))
                    .await
                    .map_err(containerd(format!("labelling {}", desc.digest)))?;
                return Ok(());
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(containerd(format!("content info {}", desc.digest))(s)),
        }
        let reference = format!("loci-pull-{}", desc.digest);
        let total = data.len() as i64;
        let mut requests = Vec::new();
        let mut offset = 0usize;
        while offset < data.len() {
            let end = (offset + (1 << 20)).min(data.len());
            requests.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: desc.digest.clone(),
                offset: offset as i64,
                data: data.slice(offset..end).to_vec(),
                labels: HashMap::new(),
            });
            offset = end;
        }
        requests.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: desc.digest.clone(),
            offset: total,
            data: Vec::new(),
            labels,
        });
        let mut responses = content
            .write(self.request(futures::stream::iter(requests)))
            .await
            .map_err(containerd(format!("writing {}", desc.digest)))?
            .into_inner();
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(containerd(format!("writing {}", desc.digest))(s)),
            }
        }
    }

    /// Creates the image record, or points an existing one at `target`.
    async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), PullError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let exists = images
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
            .is_ok();
        if exists {
            images
                .update(self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map_err(containerd(format!("updating image {name}")))?;
        } else {
            images
                .create(self.request(CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                }))
                .await
                .map_err(containerd(format!("creating image {name}")))?;
        }
        Ok(())
    }
}
