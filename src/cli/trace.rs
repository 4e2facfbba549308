//! `loci trace`: show and publish start traces kept with images.

use super::registry_args::{registry_of, RegistryArgs};
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::open_image;
use crate::image::{ImageRef, ImageStore};
use crate::prefetch::{fetch_trace, opened_size, push_trace, with_pack, Trace};
use anyhow::{bail, Context};
use std::path::PathBuf;

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
    /// Publish a trace file (from `loci mount --record-trace`) for an image.
    Push {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Publish even if the trace does not match the image's layers
        /// (for testing how mounts ignore bad traces).
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
            force,
            image,
            file,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let store = ImageStore::open(&image, &registry.options(), false)?;
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
            if let Err(e) = trace.validate(&opened.layers) {
                if !force {
                    return Err(e)
                        .with_context(|| format!("{} does not fit {image}", file.display()));
                }
                eprintln!("warning: {e}; pushing anyway (--force)");
            }
            // No chunks here to pack: a pack the file names is not pushed.
            let digest = runtime.block_on(push_trace(client, repo, &manifest, &trace, None))?;
            println!("{digest}");
        }
    }
    Ok(())
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
