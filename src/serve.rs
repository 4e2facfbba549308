//! Serving one image at a directory, as `loci mount` does: its layers
//! opened, mounted merged over FUSE, its start trace replayed, its reads
//! recorded, and the node's cache of it reported to a scheduler. The
//! snapshotter serves layers its own way (`snapshotter::lazy`); this is
//! the whole-image path, kept out of the command line.

use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::{open_image, Fetcher, LayerError, OpenedImage};
use crate::fs::{self, tree::View, MountError, MountFlags};
use crate::image::{ImageRef, ImageStore};
use crate::node::{report_loop, SchedulerLink, ServedImage};
use crate::prefetch::{find_trace, prefetch, Trace, TraceRecorder};
use crate::registry::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to serve besides the files.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// What the mount lets the image's files do on the host.
    pub flags: MountFlags,
    /// FUSE threads.
    pub threads: usize,
    /// Replay the image's start trace (if `[prefetch]` is enabled too).
    pub replay_trace: bool,
    /// Record the chunks read, in order of first access.
    pub record_trace: bool,
    /// Report the node's cache of the image to a scheduler.
    pub scheduler: Option<SchedulerLink>,
}

/// Why an image could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The chunk cache did not open.
    #[error("opening the chunk cache")]
    Cache(#[from] crate::cache::CacheError),
    /// The image or a layer's TOC could not be read.
    #[error("opening {image}")]
    Open {
        image: String,
        #[source]
        source: Box<LayerError>,
    },
    /// The image has no manifest to name it by.
    #[error("{0} has no manifest")]
    NoManifest(String),
    /// The mount failed.
    #[error(transparent)]
    Mount(Box<MountError>),
}

/// An image being served at a directory; unmounted by [`Served::unmount`].
pub struct Served {
    /// Its layers and TOCs.
    pub image: OpenedImage,
    /// Its platform manifest (what a recorded trace refers to).
    pub manifest: Manifest,
    /// Reads chunks for it, through the node's cache.
    pub fetcher: Arc<Fetcher>,
    /// How long opening the layers (their TOCs) took.
    pub toc_time: Duration,
    /// The start trace being replayed, if any.
    pub trace: Option<Trace>,
    /// Wakes the scheduler reports at once (a SIGUSR1).
    pub report_now: Arc<tokio::sync::Notify>,
    recorder: Option<Arc<TraceRecorder>>,
    session: fuser::BackgroundSession,
    dir: PathBuf,
}

/// Opens the image at `store` (named `image` in reports) and mounts it,
/// merged and read-only, at `dir`, with the node's `config`; background
/// work (trace replay, reports) runs on `runtime`.
pub fn serve_image(
    runtime: &tokio::runtime::Runtime,
    store: &ImageStore,
    image: &ImageRef,
    dir: &Path,
    config: &Config,
    options: &ServeOptions,
) -> Result<Served, ServeError> {
    let started = Instant::now();
    // The cache's database opens (tens of ms for a new one) while the
    // registry is asked for the manifest and TOCs, not before.
    let (cache, opened) = std::thread::scope(|s| {
        let cache = s.spawn(|| ChunkCache::open(&config.cache));
        let opened = runtime.block_on(open_image(store));
        let toc_time = started.elapsed();
        let cache = cache
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (cache, opened.map(|opened| (opened, toc_time)))
    });
    let fetcher = Arc::new(Fetcher::new(cache?, config.fetch.clone()));
    let (opened, toc_time) = opened.map_err(|source| ServeError::Open {
        image: image.to_string(),
        source: Box::new(source),
    })?;
    let manifest = opened
        .manifest
        .clone()
        .ok_or_else(|| ServeError::NoManifest(image.to_string()))?;
    let trace = if options.replay_trace && config.prefetch.enabled {
        let layers: Vec<_> = opened.layers.iter().map(|l| l.digest).collect();
        runtime
            .block_on(find_trace(
                store,
                &manifest.digest,
                std::future::ready(Some(layers)),
            ))
            .filter(|trace| match trace.validate(&opened.layers) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the image's trace");
                    false
                }
            })
    } else {
        None
    };
    if let Some(trace) = &trace {
        runtime.spawn(prefetch(
            fetcher.clone(),
            opened.layers.clone(),
            trace.clone(),
            config.prefetch.clone(),
        ));
    }
    let report_now = Arc::new(tokio::sync::Notify::new());
    if let Some(link) = &options.scheduler {
        let served = ServedImage {
            image: match image {
                ImageRef::Registry(reference) => reference.to_string(),
                other => other.to_string(),
            },
            chunks: opened
                .tocs
                .iter()
                .flat_map(|t| t.chunks.iter().map(|c| c.digest))
                .collect(),
            trace: trace
                .as_ref()
                .map(|t| t.accesses.iter().map(|a| a.digest).collect()),
        };
        let mut link = link.clone();
        link.interval = link.interval.max(Duration::from_secs(1));
        runtime.spawn(report_loop(
            link,
            fetcher.cache().clone(),
            vec![served],
            report_now.clone(),
        ));
    }
    let recorder = options.record_trace.then(|| {
        Arc::new(TraceRecorder::new(
            opened.layers.iter().map(|l| l.digest).collect(),
        ))
    });
    let session = fs::mount(
        &opened,
        View::Merged,
        dir,
        options.flags,
        fetcher.clone(),
        runtime.handle().clone(),
        options.threads,
        recorder
            .clone()
            .map(|r| r as Arc<dyn crate::fs::ReadRecorder>),
    )
    .map_err(|e| ServeError::Mount(Box::new(e)))?;
    Ok(Served {
        image: opened,
        manifest,
        fetcher,
        toc_time,
        trace,
        report_now,
        recorder,
        session,
        dir: dir.to_path_buf(),
    })
}

impl Served {
    /// Whether the filesystem has ended without [`Served::unmount`]: someone
    /// ran `umount` on it (or the kernel aborted the connection).
    pub fn ended_elsewhere(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts, makes the cache's contents survive the exit, and returns
    /// the recorded trace when recording was asked for.
    pub fn unmount(self) -> std::io::Result<Option<Trace>> {
        if self.ended_elsewhere() {
            // Unmounting again would fail (EINVAL): only the thread is left.
            self.session.join()?;
        } else {
            self.session.umount_and_join()?;
        }
        self.fetcher.cache().persist();
        tracing::info!(dir = %self.dir.display(), "unmounted");
        Ok(self.recorder.map(|r| r.trace()))
    }
}
