//! Lazily served layers: recognising from a Prepare's labels that loci can
//! serve a layer, opening it from the registry (TOC only) and keeping its
//! FUSE mount (an overlayfs lower dir) alive while its snapshot exists.

use super::admission::Admission;
use super::early_tocs::EarlyTocs;
use super::fdstore::FdStore;
use super::meta::{LazySource, Usage};
use super::metrics::Metrics;
use crate::cache::{ChunkCache, LayerClaim};
use crate::digest::Digest;
use crate::fetch::{self, OpenedImage, TocTail};
use crate::fetch::{CompletionConfig, CompletionError, CompletionStart, FetchConfig, Fetcher};
use crate::format::{annotations, EntryKind, Toc};
use crate::fs::{self, takeover, tree::View, Connection, MountError};
use crate::image::{ImageRef, ImageStore};
use crate::prefetch::{ImageTraces, NodeRecordings, PrefetchConfig};
use crate::registry::RegistryOptions;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The label containerd's unpacker puts on a layer's Prepare: the key of
/// the committed snapshot it will create (the layer's chain ID).
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";
/// The image the layer belongs to (set by the CRI plugin and `loci pull`).
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's blob digest (set by the CRI plugin and `loci pull`).
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The image's platform manifest digest (set by the CRI plugin and `loci
/// pull`): the trace lookup starts from it before the manifest is read.
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

/// Why a layer could not be served lazily.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// A label is malformed.
    #[error("label {label}: {reason}")]
    Label { label: &'static str, reason: String },
    /// The registry client could not be built.
    #[error("opening {image}")]
    Store {
        image: String,
        #[source]
        source: crate::image::ImageError,
    },
    /// The layer's TOC could not be read.
    #[error(transparent)]
    Open(#[from] fetch::LayerError),
    /// The kernel refused the mount.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// A Prepare that loci can answer by mounting the layer itself.
#[derive(Debug, Clone)]
pub struct LazyRequest {
    /// The committed snapshot to create (the chain ID).
    pub target: String,
    /// Where the layer comes from.
    pub source: LazySource,
    /// Where the TOC starts in the blob, when annotated.
    pub toc_offset: Option<u64>,
    /// The converter's signature (`loci.signature`), if it signed.
    pub signature: Option<String>,
}

impl LazyRequest {
    /// The lazy request these labels describe, if they describe one: a
    /// target key, the image and layer, and loci's TOC digest.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<LazyRequest> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(LazyRequest {
            target: get(TARGET_REF)?,
            source: LazySource {
                image_ref: get(IMAGE_REF)?,
                layer_digest: get(LAYER_DIGEST)?,
                toc_digest: get(annotations::TOC_DIGEST)?,
                diff_id: get(annotations::UNCOMPRESSED),
                manifest_digest: get(MANIFEST_DIGEST),
            },
            toc_offset: get(annotations::TOC_OFFSET).and_then(|v| v.parse().ok()),
            signature: get(annotations::SIGNATURE),
        })
    }
}

/// An opened layer, ready to mount.
pub struct OpenedLayer {
    image: OpenedImage,
    source: LazySource,
    /// The blob's size, for its completion.
    blob_size: u64,
    /// The TOC's bytes as just fetched, to keep next to the mount.
    fetched_toc: Option<TocTail>,
}

impl OpenedLayer {
    /// What the layer holds, for `Usage`: content bytes and entries.
    pub fn usage(&self) -> Usage {
        usage_of(&self.image.tocs[0])
    }
}

fn usage_of(toc: &Toc) -> Usage {
    Usage {
        size: toc
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size as i64)
            .sum(),
        inodes: toc.entries.len() as i64,
    }
}

/// The node's lazily mounted layers, by snapshot id.
pub struct LazyLayers {
    cache: Arc<ChunkCache>,
    fetch: FetchConfig,
    registry: RegistryOptions,
    plain_http_hosts: Vec<String>,
    admission: Admission,
    runtime: tokio::runtime::Handle,
    threads: usize,
    metrics: Arc<Metrics>,
    mounts: Mutex<HashMap<u64, Mounted>>,
    /// Start traces, replayed for each layer as it is mounted.
    traces: Arc<ImageTraces>,
    /// The TOCs of an image's layers, fetched as its first layer opens.
    early_tocs: Arc<EarlyTocs>,
    prefetch: PrefetchConfig,
    completion: CompletionConfig,
    /// Starts recorded as traces (`[prefetch] record_starts`).
    recordings: Option<NodeRecordings>,
    /// Keeps each mount's FUSE connection for the next daemon.
    held: Arc<FdStore>,
    /// Whether a container uses a layer (by snapshot id): such a layer's
    /// completed data is never evicted. Set by the snapshots; until then
    /// every layer counts as used.
    users: Arc<std::sync::OnceLock<LayerUsers>>,
}

/// Tells whether a container uses the layer of a snapshot id.
pub type LayerUsers = Box<dyn Fn(u64) -> bool + Send + Sync>;

struct Mounted {
    session: fuser::BackgroundSession,
    dir: PathBuf,
    image: String,
    layer: String,
    /// The fd holder connection ([`FdStore::generation`]) that was handed
    /// this layer's connection (so it outlives us), if one was.
    held: Option<u64>,
    /// The layer's background completion, stopped with the mount.
    completion: Option<tokio::task::JoinHandle<()>>,
    /// A duplicate of the connection, to hand a new holder if this one
    /// dies.
    connection: Option<OwnedFd>,
}

impl LazyLayers {
    /// Layers served through `cache`, fetched per `fetch`, with `threads`
    /// FUSE threads each; registries in `plain_http_hosts` are reached
    /// over HTTP; only layers `admission` admits are served; connections
    /// are kept across restarts by `held`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: Arc<ChunkCache>,
        fetch: FetchConfig,
        registry: RegistryOptions,
        plain_http_hosts: Vec<String>,
        admission: Admission,
        runtime: tokio::runtime::Handle,
        threads: usize,
        metrics: Arc<Metrics>,
        prefetch: PrefetchConfig,
        completion: CompletionConfig,
        held: FdStore,
    ) -> LazyLayers {
        LazyLayers {
            cache: cache.clone(),
            fetch,
            registry,
            plain_http_hosts,
            admission,
            threads,
            metrics,
            mounts: Mutex::new(HashMap::new()),
            traces: Arc::new(ImageTraces::default()),
            early_tocs: Arc::default(),
            recordings: prefetch.record_starts.then(|| {
                NodeRecordings::new(
                    std::time::Duration::from_secs(prefetch.record_window_secs),
                    runtime.clone(),
                    cache.clone(),
                    prefetch.pack_level,
                )
            }),
            runtime,
            prefetch,
            completion,
            held: Arc::new(held),
            users: Arc::default(),
        }
    }

    /// Sets how to tell whether a container uses a layer (see `users`).
    pub fn set_users(&self, users: LayerUsers) {
        let _ = self.users.set(users);
    }

    /// A container started on snapshot `id`'s layer: its completed data is
    /// the last to be evicted.
    pub fn touch(&self, id: u64) {
        self.cache.touch_layer(id);
    }

    /// The FUSE connections an earlier daemon left with the holder, by
    /// snapshot id: to [`resume`](Self::resume), or to close and
    /// [`drop_held`](Self::drop_held).
    pub fn held_connections(&self) -> HashMap<u64, OwnedFd> {
        self.held.list().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot ask the fd holder for its connections");
            HashMap::new()
        })
    }

    /// Has the holder close snapshot `id`'s connection. Once no process
    /// has it open, the kernel fails the mount's pending and future reads
    /// instead of leaving them waiting.
    pub fn drop_held(&self, id: u64) {
        if let Err(e) = self.held.remove(id) {
            tracing::warn!(id, error = %e, "fd holder did not drop a connection");
        }
    }

    /// Whether `request` over `parent` may be served lazily (see
    /// [`Admission`]); the reason if not.
    pub fn admit(&self, request: &LazyRequest, parent: &str) -> Result<Option<String>, String> {
        self.admission.admit(request, parent)
    }

    /// Reads the layer's TOC (blocking this thread): the copy kept when
    /// it was mounted at `mounted_at` before, if there is a good one, else
    /// from its registry. So layers a restart serves again need no
    /// registry.
    pub fn open(
        &self,
        source: &LazySource,
        toc_offset: Option<u64>,
        mounted_at: Option<&Path>,
    ) -> Result<OpenedLayer, LazyError> {
        let label_err = |label, reason: String| LazyError::Label { label, reason };
        let image: ImageRef = source
            .image_ref
            .parse()
            .map_err(|e| label_err(IMAGE_REF, format!("{e}")))?;
        let digest: Digest = source
            .layer_digest
            .parse()
            .map_err(|e| label_err(LAYER_DIGEST, format!("{e}")))?;
        let toc_digest: Digest = source
            .toc_digest
            .parse()
            .map_err(|e| label_err(annotations::TOC_DIGEST, format!("{e}")))?;
        let mut options = self.registry.clone();
        // Plain HTTP is the node's decision alone: labels come from the
        // image (containerd passes its annotations on), so nothing in them
        // may lower the transport's security.
        if let ImageRef::Registry(r) = &image {
            options.plain_http = self.plain_http_hosts.contains(&r.registry);
        }
        let store =
            ImageStore::open(&image, &options, false).map_err(|source| LazyError::Store {
                image: image.to_string(),
                source,
            })?;
        if let Some(kept) = mounted_at.map(toc_file) {
            match read_toc_file(&kept) {
                Ok(tail) => match fetch::open_layer_from(&store, digest, toc_digest, &tail) {
                    Ok(image) => {
                        return Ok(OpenedLayer {
                            image,
                            source: source.clone(),
                            blob_size: tail.blob_size,
                            fetched_toc: None,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(file = %kept.display(), error = %e, "kept TOC refused; fetching it again")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %kept.display(), error = %e, "kept TOC unreadable; fetching it again")
                }
            }
        }
        let mounted = || -> HashSet<Digest> {
            let mounts = self.mounts.lock().expect("lazy mounts lock");
            mounts
                .values()
                .filter_map(|m| m.layer.parse().ok())
                .collect()
        };
        // The image's manifest, read once as its first layer opens, also
        // gives the trace lookup its layers.
        let (tell_listed, listed) = tokio::sync::oneshot::channel();
        let first = self.early_tocs.open_others(
            &source.image_ref,
            &store,
            digest,
            mounted,
            move |manifest, layers| {
                let _ = tell_listed.send((manifest, layers));
            },
            &self.runtime,
        );
        if first {
            // The holder's start (a process, some 20 ms) would otherwise
            // wait for the first mount; by then it is listening.
            let held = self.held.clone();
            self.runtime.spawn_blocking(move || {
                if let Err(e) = held.start() {
                    tracing::warn!(error = %e, "cannot start the fd holder; the mount will try again");
                }
            });
        }
        if first && self.prefetch.enabled {
            let label = source
                .manifest_digest
                .as_deref()
                .and_then(|d| d.parse().ok());
            self.traces
                .look_up_early(&source.image_ref, &store, label, listed, &self.runtime);
        }
        let early = if first {
            None
        } else {
            self.runtime.block_on(
                self.early_tocs
                    .take(&source.image_ref, &digest, &toc_digest),
            )
        };
        let (image, tail) = match early {
            Some(opened) => opened,
            None => self
                .runtime
                .block_on(fetch::open_layer(&store, digest, toc_digest, toc_offset))?,
        };
        Ok(OpenedLayer {
            image,
            source: source.clone(),
            blob_size: tail.blob_size,
            fetched_toc: Some(tail),
        })
    }

    /// Mounts an opened layer at `dir` as an overlayfs lower dir, for
    /// snapshot `id`, and gives the holder its connection.
    pub fn mount(&self, id: u64, layer: OpenedLayer, dir: &Path) -> Result<(), LazyError> {
        let mount_err = |source| MountError::Mount {
            dir: dir.to_path_buf(),
            source,
        };
        let fd = takeover::mount_fuse(dir).map_err(mount_err)?;
        let dup = fd.try_clone().ok();
        let held = match dup.as_ref().map(|dup| self.held.put(id, dup)) {
            Some(Ok(generation)) => Some(generation),
            Some(Err(e)) => {
                tracing::warn!(id, error = %e, "the fd holder does not keep this layer's FUSE connection: its containers lose uncached reads if the daemon restarts");
                None
            }
            None => None,
        };
        let result = self.serve(id, layer, dir, Connection::New(fd), held, dup);
        if result.is_err() {
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = self.held.remove(id);
        }
        result
    }

    /// Serves again the connection an earlier daemon mounted at `dir` for
    /// snapshot `id` (taken from the holder, which keeps it): readers that
    /// waited meanwhile are answered.
    pub fn resume(
        &self,
        id: u64,
        layer: OpenedLayer,
        dir: &Path,
        connection: OwnedFd,
    ) -> Result<(), LazyError> {
        let dup = connection.try_clone().ok();
        // Taken from the holder this store is connected to: it keeps it.
        let held = Some(self.held.generation());
        self.serve(id, layer, dir, Connection::Resumed(connection), held, dup)
    }

    /// Checks that the fd holder keeping the layers' connections is
    /// alive; if it died, hands them to a new holder (started by the first
    /// `put`, or already started since for a later mount), so they survive
    /// the next restart again. Returns how many were handed over.
    pub fn check_holder(&self) -> usize {
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        if mounts.values().all(|m| m.held.is_none()) {
            return 0;
        }
        let alive = self.held.holder_alive();
        let current = self.held.generation();
        // Held, but not by the live holder this store talks to.
        let lost = |m: &Mounted| m.held.is_some() && (!alive || m.held != Some(current));
        if !mounts.values().any(lost) {
            return 0;
        }
        tracing::warn!(
            layers = mounts.values().filter(|m| lost(m)).count(),
            "the fd holder is gone; handing the FUSE connections to a new one"
        );
        let mut handed = 0;
        for (id, mounted) in mounts.iter_mut() {
            if !lost(mounted) {
                continue;
            }
            let Some(fd) = &mounted.connection else {
                continue;
            };
            match self.held.put(*id, fd) {
                Ok(generation) => {
                    mounted.held = Some(generation);
                    handed += 1;
                }
                Err(e) => {
                    tracing::error!(id, error = %e, "a new fd holder did not take a connection")
                }
            }
        }
        tracing::info!(handed, "a new fd holder keeps the FUSE connections");
        handed
    }

    /// Serves a layer's connection; each layer has its own fetcher (over
    /// the shared cache) so its traffic is reported per layer.
    fn serve(
        &self,
        id: u64,
        layer: OpenedLayer,
        dir: &Path,
        connection: Connection,
        held: Option<u64>,
        dup: Option<OwnedFd>,
    ) -> Result<(), LazyError> {
        let fetcher = Arc::new(Fetcher::new(self.cache.clone(), self.fetch.clone()));
        let image = layer.source.image_ref.clone();
        let digest = layer.source.layer_digest.clone();
        if let Some(tail) = &layer.fetched_toc {
            if let Err(e) = write_toc_file(&toc_file(dir), tail) {
                tracing::warn!(layer = %digest, error = %e, "could not keep the TOC; a restart will fetch it again");
            }
        }
        let recorder = self.recordings.as_ref().and_then(|r| {
            let layer_digest = layer.image.layers[0].digest;
            r.layer_recorder(&image, &layer.image.layers[0].store, layer_digest)
        });
        // Before the prefetch below learns which chunks the trace reads.
        let chunks = layer.image.layers[0].chunks.clone();
        let replaced = self
            .metrics
            .layer_mounted(&image, &digest, fetcher.clone(), chunks);
        // The replay starts before the FUSE session (its inode tree, some
        // milliseconds per thousand files): it needs only the chunk table.
        let prefetch = self.prefetch.enabled.then(|| {
            let traces = self.traces.clone();
            let layers = layer.image.layers.clone();
            let (image, fetcher, config) = (image.clone(), fetcher.clone(), self.prefetch.clone());
            let (metrics, digest) = (self.metrics.clone(), digest.clone());
            self.runtime.spawn(async move {
                let store = layers[0].store.clone();
                let traced = |chunks| metrics.layer_traced(&image, &digest, chunks);
                traces
                    .prefetch_layer(&image, &store, layers, fetcher, config, traced)
                    .await;
            })
        });
        let native = Arc::new(fs::NativeFiles::new(native_dir(dir), lower_dir(dir)));
        let session = fs::serve(
            &layer.image,
            View::OverlayLower,
            connection,
            fetcher.clone(),
            self.runtime.clone(),
            fs::Serving {
                threads: self.threads,
                recorder,
                native: Some(native.clone()),
            },
        );
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                if let Some(prefetch) = prefetch {
                    prefetch.abort();
                }
                self.metrics.layer_mount_failed(&image, &digest, replaced);
                return Err(e.into());
            }
        };
        let completion = self.complete_in_background(id, &layer, &fetcher, &native, dir);

        let old = self.mounts.lock().expect("lazy mounts lock").insert(
            id,
            Mounted {
                session,
                dir: dir.to_path_buf(),
                image,
                layer: digest,
                held,
                completion,
                connection: dup,
            },
        );
        if let Some(old) = old {
            self.finish(id, old);
        }
        Ok(())
    }

    /// Serves the layer from its completed blob if an earlier daemon left
    /// one (next to the mount at `dir`), else completes it once its start
    /// is over (see [`CompletionConfig`]); the task is the mount's.
    fn complete_in_background(
        &self,
        id: u64,
        layer: &OpenedLayer,
        fetcher: &Arc<Fetcher>,
        native: &Arc<fs::NativeFiles>,
        dir: &Path,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let path = blob_file(dir);
        let (native, runtime) = (native.clone(), self.runtime.clone());
        // The blob, and its files once written out (as the TOC sizes them).
        let files: u64 = layer
            .image
            .tocs
            .iter()
            .flat_map(|toc| &toc.entries)
            .filter(|e| e.kind == crate::format::EntryKind::File)
            .map(|e| e.size)
            .sum();
        let claim = self.claim_for(id, layer.blob_size + files, fetcher, &native, &path);
        if fetcher.use_completed(&path, layer.blob_size) {
            tracing::info!(layer = %layer.source.layer_digest, "layer served from its completed blob");
            // Files a write-out cut short are written now, if the disk
            // budget still has room for the layer (it may have shrunk).
            let (fetcher, digest) = (fetcher.clone(), layer.image.layers[0].digest);
            return Some(self.runtime.spawn(async move {
                if claim.await {
                    write_out(native, fetcher, runtime, digest).await;
                }
            }));
        }
        if !self.completion.enabled {
            return None;
        }
        let parse = |v: Option<&String>| v.and_then(|v| v.parse::<Digest>().ok());
        let (Some(toc), Some(diff_id)) = (
            parse(Some(&layer.source.toc_digest)),
            parse(layer.source.diff_id.as_ref()),
        ) else {
            tracing::info!(layer = %layer.source.layer_digest, "layer not completed: its record names no diff_id to verify it against");
            return None;
        };
        let (fetcher, config) = (fetcher.clone(), self.completion.clone());
        let (remote, blob_size) = (layer.image.layers[0].clone(), layer.blob_size);
        let metrics = self.metrics.clone();
        let cache = self.cache.clone();
        let eager_image = config.eager_for(&layer.source.image_ref);
        Some(self.runtime.spawn(async move {
            let start = if eager_image {
                CompletionStart::Eager
            } else {
                fetcher.wait_to_complete(&config, blob_size).await
            };
            if !claim.await {
                return;
            }
            tracing::info!(layer = %remote.digest, ?start, "completing the layer in the background");
            let began = std::time::Instant::now();
            match fetcher
                .complete(&remote, blob_size, toc, diff_id, &path, &config, start)
                .await
            {
                Ok(report) => {
                    tracing::info!(
                        layer = %remote.digest,
                        fetched_bytes = report.fetched_bytes,
                        resumed_bytes = report.resumed_bytes,
                        secs = format!("{:.2}", began.elapsed().as_secs_f64()),
                        "layer complete and verified; its reads are local from now on"
                    );
                    write_out(native, fetcher, runtime, remote.digest).await;
                }
                Err(e @ CompletionError::Refused { .. }) => {
                    cache.release_layer(id);
                    metrics.layer_refused();
                    tracing::error!(error = %crate::error_chain::chain(&e), "layer taken out of service: its reads fail from now on");
                }
                Err(e) => tracing::warn!(error = %crate::error_chain::chain(&e), "layer completion stopped; the next mount tries again"),
            }
        }))
    }

    /// Claims the layer's share of the disk budget (its blob and its
    /// written-out files), evicting what was used least recently; resolves
    /// to whether it got it. Without room, the layer's local data (if a
    /// completion left any) is removed and its reads stay lazy.
    fn claim_for(
        &self,
        id: u64,
        bytes: u64,
        fetcher: &Arc<Fetcher>,
        native: &Arc<fs::NativeFiles>,
        path: &Path,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let evict = {
            let (fetcher, native, path) = (fetcher.clone(), native.clone(), path.to_path_buf());
            move || {
                native.retire();
                fetcher.forget_completed();
                for file in [path.clone(), crate::fetch::partial_path(&path)] {
                    if let Err(e) = std::fs::remove_file(&file) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(file = %file.display(), error = %e, "removing an evicted layer's blob");
                        }
                    }
                }
            }
        };
        let users = self.users.clone();
        let cache = self.cache.clone();
        async move {
            let claim = LayerClaim {
                bytes,
                evict: Box::new(evict.clone()),
                in_use: Box::new(move || users.get().is_none_or(|used| used(id))),
            };
            let claimed = tokio::task::spawn_blocking(move || cache.claim_layer(id, claim)).await;
            match claimed {
                Ok(Ok(())) => {
                    tracing::info!(
                        id,
                        bytes,
                        "completed layer's share of the disk budget claimed"
                    );
                    true
                }
                Ok(Err(e)) => {
                    tracing::warn!(id, error = %crate::error_chain::chain(&e), "no room on disk for the completed layer; its reads stay lazy");
                    let _ = tokio::task::spawn_blocking(evict).await;
                    false
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "claiming disk for a completed layer failed");
                    false
                }
            }
        }
    }

    /// Unmounts snapshot `id`'s layer, if it is mounted.
    pub fn unmount(&self, id: u64) {
        let mounted = self.mounts.lock().expect("lazy mounts lock").remove(&id);
        if let Some(mounted) = mounted {
            self.finish(id, mounted);
        }
    }

    /// At shutdown: leaves every mount whose connection the holder keeps
    /// (containers go on reading through it, and the next daemon serves
    /// it), unmounts the others.
    pub fn shutdown(&self) {
        let all: Vec<(u64, Mounted)> = self
            .mounts
            .lock()
            .expect("lazy mounts lock")
            .drain()
            .collect();
        let mut kept = 0;
        for (id, mounted) in all {
            if mounted.held.is_some() {
                kept += 1;
                // Its threads stop with the process; requests they had
                // read are sent again to the next daemon.
                drop(mounted.session);
            } else {
                self.finish(id, mounted);
            }
        }
        if kept > 0 {
            tracing::info!(kept, "lazy layers stay mounted for the next daemon");
        }
    }

    fn finish(&self, id: u64, mounted: Mounted) {
        if let Some(completion) = &mounted.completion {
            completion.abort();
        }
        self.cache.release_layer(id);
        self.metrics.layer_unmounted(&mounted.image, &mounted.layer);
        if let Err(e) = takeover::unmount(&mounted.dir, mounted.session) {
            tracing::warn!(id, layer = %mounted.layer, error = %e, "unmounting a lazy layer");
        }
        if mounted.held.is_some() {
            if let Err(e) = self.held.remove(id) {
                tracing::warn!(id, error = %e, "fd holder did not drop a connection");
            }
        }
    }
}

/// Writes out a complete layer's files for passthrough, off the runtime's
/// workers (until a file is written its opens go through the daemon), then
/// lays the layer out as a plain directory for new snapshots.
async fn write_out(
    native: Arc<fs::NativeFiles>,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    layer: Digest,
) {
    let written = tokio::task::spawn_blocking(move || {
        let files = native.write_all(&fetcher, &runtime)?;
        Ok::<_, std::io::Error>((files, native.build_lower()))
    })
    .await;
    match written {
        Ok(Ok((files, laid_out))) => {
            tracing::info!(layer = %layer, files, "layer's files written out for passthrough");
            match laid_out {
                Ok(true) => {
                    tracing::info!(layer = %layer, "layer laid out as a plain lower directory: new containers read it without FUSE")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(layer = %layer, error = %e, "laying the layer out as a plain directory failed; new containers read it through FUSE")
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(layer = %layer, error = %e, "writing out the layer's files stopped; the rest are read through the daemon")
        }
        Err(e) => {
            tracing::warn!(layer = %layer, error = %e, "writing out the layer's files stopped")
        }
    }
}

/// Where the complete files of the layer mounted at `dir` are written
/// out, for passthrough: next to it, in the snapshot's directory.
fn native_dir(dir: &Path) -> PathBuf {
    dir.with_file_name("files")
}

/// Where the complete layer mounted at `dir` is laid out as a plain
/// directory for overlayfs: next to it, in the snapshot's directory.
pub fn lower_dir(dir: &Path) -> PathBuf {
    dir.with_file_name("lower")
}

/// Where the completed blob of the layer mounted at `dir` is kept: next
/// to it, in the snapshot's directory (removed with the snapshot).
fn blob_file(dir: &Path) -> PathBuf {
    dir.with_file_name("blob")
}

/// Where the TOC of the layer mounted at `dir` is kept: next to it, in the
/// snapshot's directory (removed with the snapshot).
fn toc_file(dir: &Path) -> PathBuf {
    dir.with_file_name("toc")
}

/// The kept TOC: the blob's size (8 bytes, little endian), then its tail.
fn read_toc_file(path: &Path) -> std::io::Result<TocTail> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 8 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "shorter than its header",
        ));
    }
    let (size, tail) = bytes.split_at(8);
    Ok(TocTail {
        blob_size: u64::from_le_bytes(size.try_into().expect("8 bytes")),
        bytes: tail.to_vec(),
    })
}

fn write_toc_file(path: &Path, tail: &TocTail) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + tail.bytes.len());
    bytes.extend_from_slice(&tail.blob_size.to_le_bytes());
    bytes.extend_from_slice(&tail.bytes);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
