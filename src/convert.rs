//! Converting a whole image: every layer of every platform into loci's
//! format, then config, manifests and index, pushed in that order so that a
//! half-converted image is never visible under the destination tag.

use crate::digest::Digest;
use crate::format::{self, annotations, ConvertOptions, FormatError, LayerSummary};
use crate::image::{media_types, remove_scratch_file, ImageError, ImageStore};
use crate::progress::Progress;
use crate::registry::{Manifest, MAX_CONFIG_BYTES};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why an image could not be converted. Layer errors name the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading from the source or writing to the destination failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A layer's content was refused.
    #[error("layer {layer}")]
    Layer {
        layer: Digest,
        #[source]
        source: FormatError,
    },
    /// A layer's media type is not one loci can convert.
    #[error("layer {layer}: unsupported media type {media_type}")]
    UnsupportedLayer { layer: Digest, media_type: String },
    /// A manifest, index or config that is not valid.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// Local scratch space failed.
    #[error("scratch file {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What was converted, for the summary the CLI prints.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Digest of the manifest or index pushed under the destination tag.
    pub digest: Digest,
    /// Every layer handled, in manifest order.
    pub layers: Vec<LayerReport>,
}

/// One layer's conversion.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// The source layer's digest.
    pub source: Digest,
    /// The converted blob's descriptor digest.
    pub converted: Digest,
    /// Uncompressed tar size (0 when the layer was passed through).
    pub uncompressed_size: u64,
    /// Converted blob size.
    pub blob_size: u64,
    /// TOC frame size.
    pub toc_size: u64,
    /// Seconds spent converting (not downloading or pushing).
    pub convert_secs: f64,
    /// The layer was already in loci's format and was copied as is.
    pub passed_through: bool,
    /// The source layer's diff_id.
    pub source_diff_id: Digest,
    /// The converted layer's diff_id: the source's, unless the layer was
    /// reordered for a start trace.
    pub diff_id: Digest,
    /// What reordering for a start trace did, if the layer was reordered.
    pub reordered: Option<format::ReorderSummary>,
}

/// Converts images from one store to another.
pub struct Converter {
    /// How layers are chunked and compressed.
    pub options: ConvertOptions,
    /// Layers converted at once (each also uses every core for chunks).
    pub parallel_layers: usize,
    /// Where progress is shown.
    pub progress: Progress,
    /// Directory for downloaded and converted blobs while they are in flight.
    pub scratch: PathBuf,
    /// Signs each converted layer's (blob, TOC, diff_id), so nodes that
    /// trust the key serve it lazily (see [`format::SigningKey`]).
    pub sign_key: Option<format::SigningKey>,
    /// What a start reads, by the diff_id of the source layer holding
    /// it: those layers are written trace-ordered
    /// ([`format::reorder_tar`]), with new diff_ids in a rewritten config.
    pub read_order: HashMap<Digest, LayerOrder>,
}

/// How one layer is written trace-ordered.
#[derive(Clone, Debug, Default)]
pub struct LayerOrder {
    /// The files a start reads (TOC paths), in first-read order: moved to
    /// the front of the tar.
    pub files: Vec<Vec<u8>>,
    /// Chunk boundaries at the edges of the bytes it reads of them (see
    /// [`ConvertOptions::cuts`]).
    pub cuts: HashMap<Vec<u8>, Vec<u64>>,
}

fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> ConvertError {
    ConvertError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn oci_digest(d: &oci_spec::image::Digest) -> Result<Digest, ConvertError> {
    d.to_string().parse().map_err(|e| invalid("descriptor", e))
}

/// Serializes with sorted keys (serde_json's map is ordered), so the same
/// input always gives the same manifest bytes and digest.
fn canonical_json<T: serde::Serialize>(value: &T) -> Bytes {
    let value = serde_json::to_value(value).expect("OCI types serialize");
    Bytes::from(serde_json::to_vec(&value).expect("JSON values serialize"))
}

impl Converter {
    /// Converts the image at `src` and pushes it to `dst`.
    pub async fn convert(
        &self,
        src: &ImageStore,
        dst: &ImageStore,
    ) -> Result<ConvertReport, ConvertError> {
        let top = src.resolve().await?;
        let mut layers = Vec::new();
        let converted = match top.media_type.as_str() {
            media_types::OCI_INDEX | media_types::DOCKER_LIST => {
                let index = ImageIndex::from_reader(&top.bytes[..])
                    .map_err(|e| invalid(format!("index {}", top.digest), e))?;
                let mut children = Vec::new();
                for child in index.manifests() {
                    let digest = oci_digest(child.digest())?;
                    let manifest = src.manifest(&digest).await?;
                    let (new_manifest, reports) =
                        self.convert_manifest(src, dst, &manifest).await?;
                    dst.put_manifest(&new_manifest, false).await?;
                    layers.extend(reports);
                    let mut descriptor = child.clone();
                    descriptor.set_media_type(MediaType::ImageManifest);
                    descriptor.set_size(new_manifest.bytes.len() as u64);
                    descriptor.set_digest(
                        new_manifest
                            .digest
                            .to_string()
                            .parse()
                            .expect("valid digest"),
                    );
                    children.push(descriptor);
                }
                let mut index = index.clone();
                index.set_media_type(Some(MediaType::ImageIndex));
                index.set_manifests(children);
                let bytes = canonical_json(&index);
                Manifest {
                    digest: Digest::of(&bytes),
                    bytes,
                    media_type: media_types::OCI_INDEX.into(),
                }
            }
            media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST => {
                let (manifest, reports) = self.convert_manifest(src, dst, &top).await?;
                layers = reports;
                manifest
            }
            other => {
                return Err(invalid(
                    format!("{src}"),
                    format!("unsupported manifest media type {other}"),
                ))
            }
        };
        dst.put_manifest(&converted, true).await?;
        tracing::info!(src = %src, dst = %dst, digest = %converted.digest, "image converted");
        Ok(ConvertReport {
            digest: converted.digest,
            layers,
        })
    }

    /// Converts one platform's image; pushes its layers and config, and
    /// returns the new manifest (not yet pushed).
    async fn convert_manifest(
        &self,
        src: &ImageStore,
        dst: &ImageStore,
        source: &Manifest,
    ) -> Result<(Manifest, Vec<LayerReport>), ConvertError> {
        let what = format!("manifest {}", source.digest);
        let mut manifest =
            ImageManifest::from_reader(&source.bytes[..]).map_err(|e| invalid(&what, e))?;
        let config_digest = oci_digest(manifest.config().digest())?;
        let config_bytes = src.blob_bytes(&config_digest, MAX_CONFIG_BYTES).await?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| invalid(format!("config {config_digest}"), e))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(invalid(
                &what,
                format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            ));
        }
        let jobs = manifest
            .layers()
            .iter()
            .cloned()
            .zip(diff_ids.iter().cloned());
        let results: Vec<(Descriptor, LayerReport)> = futures::stream::iter(jobs)
            .map(|(layer, diff_id)| self.convert_layer(src, dst, layer, diff_id))
            .buffered(self.parallel_layers.max(1))
            .try_collect()
            .await?;
        let (descriptors, reports): (Vec<_>, Vec<_>) = results.into_iter().unzip();
        let mut config_descriptor = manifest.config().clone();
        if reports.iter().any(|r| r.diff_id != r.source_diff_id) {
            let diff_ids: Vec<Digest> = reports.iter().map(|r| r.diff_id).collect();
            let bytes = with_diff_ids(&config_bytes, &diff_ids)
                .map_err(|e| invalid(format!("config {config_digest}"), e))?;
            let digest = Digest::of(&bytes);
            config_descriptor.set_size(bytes.len() as u64);
            config_descriptor.set_digest(digest.to_string().parse().expect("valid digest"));
            dst.put_blob_bytes(&digest, bytes, None).await?;
        } else {
            dst.put_blob_bytes(&config_digest, config_bytes, Some(src))
                .await?;
        }
        manifest.set_layers(descriptors);
        manifest.set_media_type(Some(MediaType::ImageManifest));
        config_descriptor.set_media_type(MediaType::ImageConfig);
        manifest.set_config(config_descriptor);
        let bytes = canonical_json(&manifest);
        Ok((
            Manifest {
                digest: Digest::of(&bytes),
                bytes,
                media_type: media_types::OCI_MANIFEST.into(),
            },
            reports,
        ))
    }

    /// Converts (or passes through) one layer and pushes the result.
    async fn convert_layer(
        &self,
        src: &ImageStore,
        dst: &ImageStore,
        layer: Descriptor,
        diff_id: String,
    ) -> Result<(Descriptor, LayerReport), ConvertError> {
        let digest = oci_digest(layer.digest())?;
        let scratch = &self.scratch;
        // A layer already in loci's format is copied as it is, unless it
        // is to be written trace-ordered.
        let reorder = diff_id
            .parse::<Digest>()
            .is_ok_and(|d| self.read_order.contains_key(&d));
        let already = !reorder
            && layer
                .annotations()
                .as_ref()
                .is_some_and(|a| a.contains_key(annotations::TOC_DIGEST));
        if already {
            if !dst.has_blob(&digest).await? {
                let path = src
                    .blob_file(&digest, layer.size(), scratch, &|_| {})
                    .await?;
                dst.put_blob_file(&digest, &path, Some(src)).await?;
                remove_scratch_file(scratch, &path);
            }
            tracing::info!(layer = %digest, "already converted; passed through");
            let report = LayerReport {
                source: digest,
                converted: digest,
                uncompressed_size: 0,
                blob_size: layer.size(),
                toc_size: 0,
                convert_secs: 0.0,
                passed_through: true,
                source_diff_id: diff_id
                    .parse()
                    .map_err(|e| invalid(format!("config diff_id of layer {digest}"), e))?,
                diff_id: diff_id
                    .parse()
                    .map_err(|e| invalid(format!("config diff_id of layer {digest}"), e))?,
                reordered: None,
            };
            return Ok((layer, report));
        }
        let media_type = layer.media_type().to_string();
        let decompression = Decompression::for_media_type(&media_type).ok_or_else(|| {
            ConvertError::UnsupportedLayer {
                layer: digest,
                media_type: media_type.clone(),
            }
        })?;
        let expected_diff_id: Digest = diff_id
            .parse()
            .map_err(|e| invalid(format!("config diff_id of layer {digest}"), e))?;
        let short = &digest.hex()[..12];
        let download = self.progress.bytes(&format!("fetch {short}"), layer.size());
        let input = src
            .blob_file(&digest, layer.size(), scratch, &|n| download.inc(n))
            .await?;
        download.finish("fetched");
        let output = scratch.join(format!("{}.loci", digest.hex()));
        let task = std::sync::Arc::new(self.progress.bytes(&format!("convert {short}"), 0));
        let started = Instant::now();
        let order = self.read_order.get(&expected_diff_id).cloned();
        let (summary, reordered) = {
            let (input, output, mut options) =
                (input.clone(), output.clone(), self.options.clone());
            let task = task.clone();
            let scratch = scratch.clone();
            if let Some(order) = &order {
                options.cuts = order.cuts.clone();
            }
            tokio::task::spawn_blocking(move || match order {
                None => convert_file(&input, &output, decompression, &options, &|n| task.set(n))
                    .map(|summary| (summary, None)),
                Some(order) => convert_reordered(
                    &input,
                    &output,
                    &scratch,
                    decompression,
                    &order.files,
                    &expected_diff_id,
                    &options,
                    &|n| task.set(n),
                ),
            })
            .await
            .expect("conversion thread panicked")
        }
        .map_err(|source| match source {
            LocalError::Format(source) => ConvertError::Layer {
                layer: digest,
                source,
            },
            LocalError::Scratch(path, source) => ConvertError::Scratch { path, source },
        })?;
        let convert_secs = started.elapsed().as_secs_f64();
        task.finish("converted");
        if reordered.is_none() && summary.diff_id != expected_diff_id {
            return Err(ConvertError::Layer {
                layer: digest,
                source: FormatError::DiffIdMismatch {
                    expected: expected_diff_id,
                    actual: summary.diff_id,
                },
            });
        }
        dst.put_scratch_blob(&summary.blob_digest, &output).await?;
        remove_scratch_file(scratch, &input);
        remove_scratch_file(scratch, &output);
        tracing::info!(
            layer = %digest,
            converted = %summary.blob_digest,
            uncompressed = summary.uncompressed_size,
            compressed = summary.blob_size,
            entries = summary.entries,
            chunks = summary.chunks,
            secs = format!("{convert_secs:.2}"),
            reordered_files = reordered.as_ref().map_or(0, |r| r.moved_files),
            "layer converted"
        );
        Ok((
            converted_descriptor(&layer, &summary, self.sign_key.as_ref()),
            LayerReport {
                source: digest,
                converted: summary.blob_digest,
                uncompressed_size: summary.uncompressed_size,
                blob_size: summary.blob_size,
                toc_size: summary.toc_length,
                convert_secs,
                passed_through: false,
                source_diff_id: expected_diff_id,
                diff_id: summary.diff_id,
                reordered,
            },
        ))
    }
}

/// The descriptor of a converted layer: the source's annotations (less
/// any of loci's, which only the converter may write) plus loci's, signed
/// when a key is given; the zstd media type, the new digest and size.
fn converted_descriptor(
    source: &Descriptor,
    summary: &LayerSummary,
    sign_key: Option<&format::SigningKey>,
) -> Descriptor {
    let mut descriptor = Descriptor::new(
        MediaType::ImageLayerZstd,
        summary.blob_size,
        summary
            .blob_digest
            .to_string()
            .parse::<oci_spec::image::Digest>()
            .expect("valid digest"),
    );
    let mut annotations: HashMap<String, String> = source.annotations().clone().unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with(annotations::LOCI_PREFIX));
    annotations.extend(summary.annotations());
    if let Some(key) = sign_key {
        let identity = format::LayerIdentity {
            blob: summary.blob_digest,
            toc: summary.toc_digest,
            diff_id: summary.diff_id,
        };
        annotations.insert(annotations::SIGNATURE.into(), key.sign(&identity));
    }
    descriptor.set_annotations(Some(annotations));
    descriptor
}

/// How a source layer is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Decompression {
    /// Plain tar.
    None,
    /// gzip (possibly multi-member).
    Gzip,
    /// zstd (possibly multi-frame).
    Zstd,
}

impl Decompression {
    /// The decompression a layer media type needs, or None if loci cannot
    /// read that media type.
    pub fn for_media_type(media_type: &str) -> Option<Decompression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Decompression::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Decompression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Decompression::Zstd)
            }
            _ => None,
        }
    }

    /// Wraps a compressed reader into one that yields the tar.
    pub fn reader<'a, R: Read + 'a>(self, input: R) -> std::io::Result<Box<dyn Read + 'a>> {
        let input = BufReader::with_capacity(1 << 20, input);
        Ok(match self {
            Decompression::None => Box::new(input),
            Decompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Decompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        })
    }
}

enum LocalError {
    Format(FormatError),
    Scratch(PathBuf, std::io::Error),
}

/// Converts a local compressed layer file into a local loci blob file.
fn convert_file(
    input: &Path,
    output: &Path,
    decompression: Decompression,
    options: &ConvertOptions,
    progress: &dyn Fn(u64),
) -> Result<LayerSummary, LocalError> {
    let file =
        std::fs::File::open(input).map_err(|e| LocalError::Scratch(input.to_path_buf(), e))?;
    let tar = decompression
        .reader(file)
        .map_err(|e| LocalError::Format(FormatError::Io(e)))?;
    let out =
        std::fs::File::create(output).map_err(|e| LocalError::Scratch(output.to_path_buf(), e))?;
    let out = std::io::BufWriter::with_capacity(1 << 20, out);
    format::convert_layer(tar, out, options, progress).map_err(LocalError::Format)
}

/// The config with `diff_ids` as its `rootfs.diff_ids`, everything else as
/// it was (keys sorted, as [`canonical_json`] writes them).
fn with_diff_ids(config: &[u8], diff_ids: &[Digest]) -> Result<Bytes, String> {
    let mut value: serde_json::Value = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let rootfs = value
        .get_mut("rootfs")
        .and_then(|r| r.as_object_mut())
        .ok_or("no rootfs")?;
    rootfs.insert(
        "diff_ids".into(),
        serde_json::Value::from(diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
    );
    Ok(Bytes::from(
        serde_json::to_vec(&value).map_err(|e| e.to_string())?,
    ))
}

/// [`convert_file`] for a layer written trace-ordered: the source is
/// decompressed to scratch and checked against its diff_id, reordered
/// ([`format::reorder_tar`]) and converted.
#[allow(clippy::too_many_arguments)]
fn convert_reordered(
    input: &Path,
    output: &Path,
    scratch: &Path,
    decompression: Decompression,
    order: &[Vec<u8>],
    expected_diff_id: &Digest,
    options: &ConvertOptions,
    progress: &dyn Fn(u64),
) -> Result<(LayerSummary, Option<format::ReorderSummary>), LocalError> {
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    let (tar_path, ordered_path) = (
        scratch.join(format!("{name}.tar")),
        scratch.join(format!("{name}.ordered.tar")),
    );
    let scratch_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e| LocalError::Scratch(path, e)
    };
    let result = (|| {
        let file = std::fs::File::open(input).map_err(scratch_err(input))?;
        let mut tar = decompression
            .reader(file)
            .map_err(|e| LocalError::Format(FormatError::Io(e)))?;
        let out = std::fs::File::create(&tar_path).map_err(scratch_err(&tar_path))?;
        let mut out = crate::digest::HashingWriter::new(std::io::BufWriter::new(out));
        std::io::copy(&mut tar, &mut out).map_err(|e| LocalError::Format(FormatError::Io(e)))?;
        let (mut out, diff_id, _) = out.finish();
        std::io::Write::flush(&mut out).map_err(scratch_err(&tar_path))?;
        if diff_id != *expected_diff_id {
            return Err(LocalError::Format(FormatError::DiffIdMismatch {
                expected: *expected_diff_id,
                actual: diff_id,
            }));
        }
        let mut tar = std::fs::File::open(&tar_path).map_err(scratch_err(&tar_path))?;
        let ordered = std::fs::File::create(&ordered_path).map_err(scratch_err(&ordered_path))?;
        let reordered = format::reorder_tar(&mut tar, std::io::BufWriter::new(ordered), order)
            .map_err(LocalError::Format)?;
        let summary = convert_file(
            &ordered_path,
            output,
            Decompression::None,
            options,
            progress,
        )?;
        Ok((summary, Some(reordered)))
    })();
    let _ = std::fs::remove_file(&tar_path);
    let _ = std::fs::remove_file(&ordered_path);
    result
}
