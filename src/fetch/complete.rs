//! Completing a lazily served layer: once its start is over, the rest of
//! its blob is fetched in the background (behind on-demand reads, under a
//! bandwidth cap) into a file next to its mount, and the whole blob is
//! verified: its sha256 against the layer digest, every chunk against the
//! TOC, the TOC against the tar, and the decompressed stream against the
//! diff_id. A verified blob serves the layer's reads from local disk; a
//! blob that is the image's but contradicts its diff_id or TOC takes the
//! layer out of service.

use super::{FetchError, Fetcher, RemoteLayer};
use crate::digest::{Digest, Hasher};
use crate::format::{verify_layer, FormatError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When and how fast lazily served layers are completed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionConfig {
    /// Complete lazily served layers in the background; off for nodes
    /// that want pure laziness (only what is read is ever fetched).
    pub enabled: bool,
    /// A layer's start is taken as over once this long has passed since
    /// it was mounted and since a read last had to fetch.
    pub quiet_secs: u64,
    /// Bytes per second completion may take from the link (0: no cap; it
    /// still waits whenever an on-demand read does).
    pub max_bytes_per_sec: u64,
    /// Size of one completion request.
    pub request_bytes: u64,
    /// A completion starts only if its filesystem keeps at least this
    /// free after the rest of the blob: the blob's size is the registry's
    /// word, and a node's disk is not its to fill.
    pub disk_min_free_bytes: u64,
    /// Once a start has fetched this fraction of a layer's blob, the rest
    /// is completed at once and at full speed (no cap): past it, one
    /// sequential download beats further lazy reads. 0 turns it off.
    pub eager_fraction: f64,
    /// Images (reference prefixes, e.g. `registry.example/team/`) whose
    /// layers are completed eagerly from their mount on, at full speed.
    pub eager_images: Vec<String>,
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            enabled: true,
            quiet_secs: 10,
            max_bytes_per_sec: 0,
            request_bytes: 4 << 20,
            disk_min_free_bytes: 256 << 20,
            eager_fraction: 0.33,
            eager_images: Vec::new(),
        }
    }
}

impl CompletionConfig {
    /// Whether `image`'s layers are completed eagerly from the mount on.
    pub fn eager_for(&self, image: &str) -> bool {
        self.eager_images
            .iter()
            .any(|prefix| image.starts_with(prefix.as_str()))
    }
}

/// Why a completion starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionStart {
    /// The layer's start is over (reads quiet): at the configured pace.
    Quiet,
    /// The start read past `eager_fraction`, or the image is eager: at
    /// full speed, now.
    Eager,
}

/// Why a layer was not completed.
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    /// Fetching or writing the blob failed; a later mount tries again.
    #[error("layer {layer}: completing it")]
    Incomplete {
        layer: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry's bytes are not the blob the layer names (sha256); a
    /// later mount tries again.
    #[error("layer {layer}: the registry served a blob whose sha256 is {actual}")]
    WrongBlob { layer: Digest, actual: Digest },
    /// The blob is the layer's but contradicts its TOC or diff_id: the
    /// image lies about its content, and the layer is out of service.
    #[error("layer {layer}: its content is not what the image claims")]
    Refused {
        layer: Digest,
        #[source]
        source: FormatError,
    },
}

/// What a completion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompletionReport {
    /// Bytes fetched by this completion (0 if the blob was already here).
    pub fetched_bytes: u64,
    /// Bytes of an earlier, unfinished completion kept.
    pub resumed_bytes: u64,
}

/// Where a layer's blob is completed: the verified blob at `path`, the
/// unfinished one beside it.
pub fn partial_path(path: &Path) -> PathBuf {
    path.with_extension("partial")
}

impl Fetcher {
    /// Serves this layer's reads from its verified blob at `path`, if a
    /// completion left one there (a restart keeps completed layers).
    /// Returns whether it did.
    pub fn use_completed(&self, path: &Path, blob_size: u64) -> bool {
        match std::fs::File::open(path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == blob_size) => {
                *self.local.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(file));
                true
            }
            _ => false,
        }
    }

    /// Whether the layer's reads are served from its verified local blob.
    pub fn is_complete(&self) -> bool {
        self.local_blob().is_some()
    }

    /// Stops serving reads from the local blob (it is being evicted): they
    /// go back to the registry and the chunk cache.
    pub fn forget_completed(&self) {
        *self.local.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn local_blob(&self) -> Option<Arc<std::fs::File>> {
        self.local.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the layer is out of service, if it is.
    pub fn refused(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }

    /// Waits until the layer's start is over ([`CompletionConfig::quiet_secs`]
    /// since the fetcher was made and since a read last fetched), or until
    /// the start has fetched [`CompletionConfig::eager_fraction`] of the
    /// `blob_size`-byte blob, and says which.
    pub async fn wait_to_complete(
        &self,
        config: &CompletionConfig,
        blob_size: u64,
    ) -> CompletionStart {
        let quiet = Duration::from_secs(config.quiet_secs).as_millis() as u64;
        let eager_at = (config.eager_fraction > 0.0)
            .then_some((blob_size as f64 * config.eager_fraction) as u64);
        loop {
            let fetched = self.stats.bytes_fetched.load(Ordering::Relaxed);
            if eager_at.is_some_and(|at| fetched >= at) {
                return CompletionStart::Eager;
            }
            let now = self.clock_ms();
            let last = self.last_fetching_read_ms.load(Ordering::Relaxed);
            let since = now.saturating_sub(last).min(now);
            if since >= quiet && self.demand_in_flight() == 0 {
                return CompletionStart::Quiet;
            }
            tokio::time::sleep(Duration::from_millis(
                (quiet - since.min(quiet)).clamp(100, 500),
            ))
            .await;
        }
    }

    /// Fetches the rest of `layer`'s blob (`blob_size` bytes) into
    /// `path`, resuming an unfinished completion, verifies it against the
    /// layer digest, `toc_digest` and `diff_id`, and from then on serves
    /// the layer's reads from it. A blob that contradicts its TOC or
    /// diff_id takes the layer out of service: every read of it fails,
    /// naming the layer.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &self,
        layer: &RemoteLayer,
        blob_size: u64,
        toc_digest: Digest,
        diff_id: Digest,
        path: &Path,
        config: &CompletionConfig,
        start: CompletionStart,
    ) -> Result<CompletionReport, CompletionError> {
        if self.use_completed(path, blob_size) {
            return Ok(CompletionReport::default());
        }
        let incomplete =
            |e: Box<dyn std::error::Error + Send + Sync>| CompletionError::Incomplete {
                layer: layer.digest,
                source: e,
            };
        let partial = partial_path(path);
        let kept = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let dir = path.parent().unwrap_or(Path::new("."));
        let free = nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| incomplete(e.into()))?;
        let needed = blob_size
            .saturating_sub(kept)
            .saturating_add(config.disk_min_free_bytes);
        if free < needed {
            return Err(incomplete(
                format!("{free} bytes free, {needed} needed for the rest of the blob and the bytes kept free").into(),
            ));
        }
        let (mut file, mut hasher, resumed) =
            open_partial(&partial, blob_size).map_err(|e| incomplete(e.into()))?;
        let began = Instant::now();
        let mut offset = resumed;
        let request = config.request_bytes.max(64 << 10);
        while offset < blob_size {
            // On-demand reads first.
            while self.demand_in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let end = (offset + request).min(blob_size);
            let bytes = layer
                .store
                .blob_range(&layer.digest, offset..end)
                .await
                .map_err(|e| incomplete(e.into()))?;
            if bytes.len() as u64 != end - offset {
                return Err(incomplete(
                    format!(
                        "asked {} bytes at {offset}, got {}",
                        end - offset,
                        bytes.len()
                    )
                    .into(),
                ));
            }
            hasher.update(&bytes);
            file.write_all(&bytes).map_err(|e| incomplete(e.into()))?;
            offset = end;
            self.stats
                .completion_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if config.max_bytes_per_sec > 0 && start == CompletionStart::Quiet {
                let due = Duration::from_secs_f64(
                    (offset - resumed) as f64 / config.max_bytes_per_sec as f64,
                );
                if let Some(ahead) = due.checked_sub(began.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        file.sync_all().map_err(|e| incomplete(e.into()))?;
        let actual = hasher.finish();
        if actual != layer.digest {
            let _ = std::fs::remove_file(&partial);
            return Err(CompletionError::WrongBlob {
                layer: layer.digest,
                actual,
            });
        }
        let verified = tokio::task::spawn_blocking(move || {
            let mut file = file;
            file.seek(SeekFrom::Start(0))?;
            verify_layer(&mut file, blob_size, Some(&toc_digest), Some(&diff_id)).map(|_| ())
        })
        .await
        .map_err(|e| incomplete(e.into()))?;
        if let Err(source) = verified {
            let _ = std::fs::remove_file(&partial);
            if let FormatError::Io(e) = source {
                return Err(incomplete(e.into()));
            }
            let _ = self
                .refused
                .set(crate::error_chain::chain(&source).to_string());
            self.stats.refused.store(1, Ordering::Relaxed);
            return Err(CompletionError::Refused {
                layer: layer.digest,
                source,
            });
        }
        std::fs::rename(&partial, path).map_err(|e| incomplete(e.into()))?;
        self.use_completed(path, blob_size);
        Ok(CompletionReport {
            fetched_bytes: blob_size - resumed,
            resumed_bytes: resumed,
        })
    }

    /// The error for a read of a layer out of service.
    pub(super) fn refusal(&self, layer: &RemoteLayer) -> Option<FetchError> {
        self.refused.get().map(|reason| FetchError::Refused {
            layer: layer.digest,
            reason: reason.clone(),
        })
    }

    /// Bytes `range` of the layer's blob from its verified local copy, if
    /// it has one.
    pub(super) async fn local_range(
        &self,
        range: std::ops::Range<u64>,
    ) -> Option<std::io::Result<bytes::Bytes>> {
        let file = self.local_blob()?;
        Some(
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                file.read_exact_at(&mut buf, range.start)?;
                Ok(bytes::Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e))),
        )
    }
}

/// The unfinished completion at `partial` (created if absent), its bytes
/// hashed, positioned at its end; one longer than the blob starts over.
fn open_partial(partial: &Path, blob_size: u64) -> std::io::Result<(std::fs::File, Hasher, u64)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)?;
    let mut len = file.metadata()?.len();
    if len > blob_size {
        file.set_len(0)?;
        len = 0;
    }
    let mut hasher = Hasher::default();
    let mut kept = (&mut file).take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = kept.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.seek(SeekFrom::Start(len))?;
    Ok((file, hasher, len))
}
