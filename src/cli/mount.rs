//! `loci mount REF DIR`: the merged image, read-only and lazy, until
//! SIGINT/SIGTERM.

use super::registry_args::RegistryArgs;
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::fs::{self, tree::View};
use crate::image::{ImageRef, ImageStore};
use crate::node::{report_loop, ServedImage};
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
    /// Node configuration file (TOML: [cache], [fetch]).
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
        .block_on(fs::open_image(&store))
        .with_context(|| format!("opening {}", args.image))?;
    let toc_ms = started.elapsed().as_millis();
    let layers = image.layers.len();
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
            trace: None,
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
    let session = fs::mount(
        image,
        View::Merged,
        &args.dir,
        fetcher.clone(),
        runtime.handle().clone(),
        args.threads,
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
