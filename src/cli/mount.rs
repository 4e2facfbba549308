//! `loci mount REF DIR`: the merged image, read-only and lazy, until
//! SIGINT/SIGTERM.

use super::registry_args::RegistryArgs;
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::digest::Digest;
use crate::fetch::Fetcher;
use crate::fetch::OpenedImage;
use crate::fs::{self, tree::View};
use crate::image::{ImageRef, ImageStore};
use crate::node::{report_loop, ServedImage};
use crate::prefetch::{fetch_trace, prefetch, push_trace, Trace, TraceRecorder};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Mount a converted image read-only, fetching chunks as they are read.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Node configuration file (TOML: [cache], [fetch], [prefetch],
    /// [limits]; [snapshotter] is ignored here).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print fetch and cache statistics as JSON on SIGUSR1 and at unmount.
    #[arg(long)]
    stats: bool,
    /// FUSE threads serving requests.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Report this node's cache of the image to a `loci scheduler` at this
    /// URL, periodically and on SIGUSR1.
    #[arg(long)]
    scheduler: Option<String>,
    /// This node's id in reports (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Seconds between reports.
    #[arg(long, default_value_t = 10)]
    report_interval_secs: u64,
    /// Record the chunks read, in order, and write the trace to this file
    /// at unmount.
    #[arg(long)]
    record_trace: Option<PathBuf>,
    /// With --record-trace: also push the trace to the registry, referring
    /// to the image, so later mounts and pulls replay it.
    #[arg(long, requires = "record_trace")]
    publish_trace: bool,
    /// Do not replay the image's trace even if the registry has one.
    #[arg(long)]
    no_prefetch: bool,
    /// Honour the image's setuid and setgid bits (default: nosuid).
    #[arg(long)]
    suid: bool,
    /// Honour the image's device nodes (default: nodev).
    #[arg(long)]
    dev: bool,
    /// Let users other than root read the mount (default: root only).
    #[arg(long)]
    allow_other: bool,
    /// The converted image.
    image: ImageRef,
    /// Where to mount it.
    dir: PathBuf,
}

/// Mounts, waits for a signal, unmounts.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = super::runtime()?;
    let store = ImageStore::open(&args.image, &args.registry.options(), false)?;
    let cache = ChunkCache::open(&config.cache).context("opening the chunk cache")?;
    let fetcher = Arc::new(Fetcher::new(cache, config.fetch.clone()));
    let started = Instant::now();
    let image = runtime
        .block_on(crate::fetch::open_image(&store))
        .with_context(|| format!("opening {}", args.image))?;
    let toc_ms = started.elapsed().as_millis();
    let manifest = image
        .manifest
        .clone()
        .context("the image has no manifest")?;
    let layers = image.layers.len();
    let trace = if args.no_prefetch || !config.prefetch.enabled {
        None
    } else {
        runtime.block_on(find_trace(&store, &manifest.digest, &image))
    };
    if let Some(trace) = &trace {
        runtime.spawn(prefetch(
            fetcher.clone(),
            image.layers.clone(),
            trace.clone(),
            config.prefetch.clone(),
        ));
    }
    let report_now = Arc::new(tokio::sync::Notify::new());
    if let Some(url) = &args.scheduler {
        let served = ServedImage {
            image: match &args.image {
                ImageRef::Registry(reference) => reference.to_string(),
                other => other.to_string(),
            },
            chunks: image
                .tocs
                .iter()
                .flat_map(|t| t.chunks.iter().map(|c| c.digest))
                .collect(),
            trace: trace
                .as_ref()
                .map(|t| t.accesses.iter().map(|a| a.digest).collect()),
        };
        let node_id = args.node_id.clone().unwrap_or_else(hostname);
        runtime.spawn(report_loop(
            url.clone(),
            node_id,
            fetcher.cache().clone(),
            vec![served],
            Duration::from_secs(args.report_interval_secs.max(1)),
            report_now.clone(),
        ));
    }
    let recorder = args.record_trace.as_ref().map(|_| {
        Arc::new(TraceRecorder::new(
            image.layers.iter().map(|l| l.digest).collect(),
        ))
    });
    let session = fs::mount(
        &image,
        View::Merged,
        &args.dir,
        fs::MountFlags {
            suid: args.suid,
            dev: args.dev,
            allow_other: args.allow_other,
        },
        fetcher.clone(),
        runtime.handle().clone(),
        args.threads,
        recorder.clone(),
    )?;
    eprintln!(
        "mounted {} at {} ({layers} layers; TOCs in {toc_ms} ms); SIGINT or SIGTERM unmounts",
        args.image,
        args.dir.display()
    );
    let print_stats = |fetcher: &Fetcher| {
        let stats = serde_json::json!({
            "fetch": fetcher.stats.snapshot(),
            "cache": fetcher.cache().stats(),
        });
        println!("{stats}");
    };
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => {
                    report_now.notify_one();
                    if args.stats {
                        print_stats(&fetcher);
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    session.umount_and_join().context("unmounting")?;
    fetcher.cache().persist();
    if let (Some(recorder), Some(path)) = (&recorder, &args.record_trace) {
        let trace = recorder.trace();
        std::fs::write(path, trace.encode())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "trace of {} chunk reads written to {}",
            trace.accesses.len(),
            path.display()
        );
        if args.publish_trace {
            let ImageStore::Registry { client, reference } = &store else {
                anyhow::bail!("--publish-trace needs a registry image, not {}", args.image);
            };
            let digest =
                runtime.block_on(push_trace(client, &reference.repository, &manifest, &trace))?;
            eprintln!(
                "trace published as {digest}, referring to {}",
                manifest.digest
            );
        }
    }
    if args.stats {
        print_stats(&fetcher);
    }
    eprintln!("unmounted {}", args.dir.display());
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The image's newest trace from the registry, if it has one that fits the
/// layers; anything wrong with it is a warning, never a failure: the mount
/// still serves lazily without it.
async fn find_trace(store: &ImageStore, manifest: &Digest, image: &OpenedImage) -> Option<Trace> {
    let ImageStore::Registry { client, reference } = store else {
        return None;
    };
    match fetch_trace(client, &reference.repository, manifest).await {
        Ok(Some(trace)) => match trace.validate(&image.layers) {
            Ok(()) => {
                tracing::info!(
                    accesses = trace.accesses.len(),
                    "replaying the image's start trace"
                );
                Some(trace)
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the image's trace");
                None
            }
        },
        Ok(None) => {
            tracing::info!("no start trace for this image; serving lazily without prefetch");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the image's trace");
            None
        }
    }
}
