//! `loci mount REF DIR`: the merged image, read-only and lazy, until
//! SIGINT/SIGTERM.

use super::registry_args::RegistryArgs;
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::fs::{self, tree::View};
use crate::image::{ImageRef, ImageStore};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
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
                _ = usr1.recv() => if args.stats { print_stats(&fetcher) },
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
