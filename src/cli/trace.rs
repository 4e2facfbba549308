//! `loci trace`: show and publish start traces kept with images.

use super::registry_args::{registry_of, RegistryArgs};
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::{open_image, Fetcher, RemoteLayer};
use crate::image::{ImageRef, ImageStore};
use crate::prefetch::{fetch_trace, opened_size, prefetch, push_trace, with_pack, Trace};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Show or publish an image's start trace.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: TraceCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TraceCommand {
    /// Run CMD in a container of the image through containerd, with the
    /// image's root served lazily by loci; record every chunk it reads and
    /// publish the trace with the image.
    Record(super::trace_record::Args),
    /// Print the trace the registry keeps for an image, as JSON.
    Show {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print instead what the files the trace read take (files, bytes,
        /// compressed bytes): the least a start that opens them fetches.
        #[arg(long)]
        opened: bool,
        /// The converted image.
        image: ImageRef,
    },
    /// Publish a trace file (from `loci mount --record-trace`) for an image,
    /// with a pack of the chunks it reads (fetched from the image's layers,
    /// verified, recompressed at `[prefetch] pack_level`).
    Push {
        #[command(flatten)]
        registry: RegistryArgs,
        /// loci config file (TOML): registry hosts and credentials, the
        /// fetch settings and `[prefetch] pack_level` (0: no pack).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Publish even if the trace does not match the image's layers
        /// (for testing how mounts ignore bad traces); such a trace is
        /// published without a pack.
        #[arg(long)]
        force: bool,
        /// The converted image.
        image: ImageRef,
        /// The trace file.
        file: PathBuf,
    },
}

/// Runs the trace subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    match args.command {
        TraceCommand::Record(record_args) => super::trace_record::run(record_args, &runtime)?,
        TraceCommand::Show {
            registry,
            opened: opened_only,
            image,
        } => {
            let store = ImageStore::open(&image, &registry.options(), false)?;
            let (client, repo) = registry_of(&store, &image)?;
            let opened = runtime.block_on(open_image(&store))?;
            let manifest = opened
                .manifest
                .clone()
                .context("the image has no manifest")?;
            match runtime.block_on(fetch_trace(client, repo, &manifest.digest))? {
                Some(trace) => {
                    if let Err(e) = trace.validate(&opened.layers) {
                        eprintln!("warning: {e}");
                    }
                    if opened_only {
                        let size = opened_size(&trace, &opened.tocs);
                        println!("{}", serde_json::to_string(&size)?);
                    } else {
                        println!("{}", serde_json::to_string_pretty(&trace)?);
                    }
                }
                None => bail!("no trace refers to {image} ({})", manifest.digest),
            }
        }
        TraceCommand::Push {
            registry,
            config,
            force,
            image,
            file,
        } => {
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let store =
                ImageStore::open(&image, &config.registry.apply(registry.options()), false)?;
            let (client, repo) = registry_of(&store, &image)?;
            let opened = runtime.block_on(open_image(&store))?;
            let manifest = opened
                .manifest
                .clone()
                .context("the image has no manifest")?;
            let trace = match Trace::decode(&bytes) {
                Ok(trace) => trace,
                Err(e) if force => {
                    eprintln!(
                        "warning: {}: {e}; pushing its bytes anyway (--force)",
                        file.display()
                    );
                    let digest = runtime.block_on(crate::prefetch::push_raw_trace(
                        client, repo, &manifest, bytes,
                    ))?;
                    println!("{digest}");
                    return Ok(());
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
            };
            // A pack index the file carries names a pack this push does not
            // have: the replay below would ask the registry for it. The
            // chunks come from the layers, and the pack is made anew.
            let trace = Trace {
                pack: None,
                ..trace
            };
            let (trace, pack) = match trace.validate(&opened.layers) {
                Ok(()) => packed_from_layers(&runtime, &config, opened.layers.clone(), trace)?,
                Err(e) if force => {
                    eprintln!("warning: {e}; pushing anyway, without a pack (--force)");
                    (trace, None)
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("{} does not fit {image}", file.display()))
                }
            };
            let digest =
                runtime.block_on(push_trace(client, repo, &manifest, &trace, pack.as_ref()))?;
            println!("{digest}");
        }
    }
    Ok(())
}

/// A fetcher with a cache of its own in `dir` (configured as the node's,
/// but apart from it): what a command fetches for one image is neither
/// shaped by what the node holds nor left in the node's cache.
pub(super) fn scratch_fetcher(config: &Config, dir: &Path) -> anyhow::Result<Arc<Fetcher>> {
    let mut cache_config = config.cache.clone();
    cache_config.dir = dir.join("cache");
    let cache = ChunkCache::open(&cache_config)?;
    Ok(Arc::new(Fetcher::new(cache, config.fetch.clone())))
}

/// `trace` (checked against `layers`) with a pack of its chunks, fetched
/// from `layers` into a scratch cache (each verified on the way, as a
/// replay does) and recompressed at `[prefetch] pack_level` (none at 0):
/// how a trace made away from a node's cache gets its pack.
pub(super) fn packed_from_layers(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    layers: Arc<Vec<RemoteLayer>>,
    trace: Trace,
) -> anyhow::Result<(Trace, Option<bytes::Bytes>)> {
    if config.prefetch.pack_level == 0 {
        return Ok((trace, None));
    }
    let work = tempfile::Builder::new().prefix("loci-trace-").tempdir()?;
    let fetcher = scratch_fetcher(config, work.path())?;
    let report = runtime.block_on(prefetch(
        fetcher.clone(),
        layers,
        trace.clone(),
        config.prefetch.clone(),
    ));
    eprintln!(
        "fetched its chunks from the image to pack: {:.1} MB in {} requests ({} failed)",
        fetcher.stats.bytes_fetched.load(Ordering::Relaxed) as f64 / 1e6,
        fetcher.stats.requests.load(Ordering::Relaxed),
        report.failed
    );
    Ok(packed_for_publishing(trace, fetcher.cache(), config))
}

/// `trace` with a pack of its chunks from `cache` at `[prefetch]
/// pack_level` for publishing (see [`with_pack`]), saying what it packed.
pub(super) fn packed_for_publishing(
    trace: Trace,
    cache: &ChunkCache,
    config: &Config,
) -> (Trace, Option<bytes::Bytes>) {
    let level = config.prefetch.pack_level;
    let started = std::time::Instant::now();
    let (trace, pack) = with_pack(trace, cache, level);
    if let Some(index) = &trace.pack {
        eprintln!(
            "packed {} of its chunks at zstd level {level}: {:.1} MB in {:.1} s",
            index.frames.len(),
            index.size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    (trace, pack)
}
