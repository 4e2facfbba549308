//! `loci convert SRC DST`.

use super::registry_args::{registry_of, RegistryArgs};
use crate::config::Config;
use crate::convert::{Converter, LayerOrder};
use crate::digest::Digest;
use crate::fetch::open_image;
use crate::format::{
    ConvertOptions, SigningKey, DEFAULT_CHUNK_SIZE, DEFAULT_HOT_LEVEL, DEFAULT_LEVEL,
    DEFAULT_PACK_SIZE,
};
use crate::image::{ImageRef, ImageStore};
use crate::prefetch;
use crate::progress::Progress;
use crate::registry::RegistryClient;
use anyhow::Context;

/// Convert an OCI image into loci's chunked, seekable format.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Target chunk size in KiB (content-defined: chunks vary from a quarter
    /// to four times this). At most 4096, so chunks stay within a reader's
    /// limits.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE / 1024,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    chunk_size_kib: u32,
    /// Size in KiB at which a pack of small files (each under a quarter of
    /// the chunk size) is closed. At most 8192.
    #[arg(long, default_value_t = DEFAULT_PACK_SIZE / 1024,
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    pack_size_kib: u32,
    /// zstd level of chunk frames.
    #[arg(long, default_value_t = DEFAULT_LEVEL)]
    level: i32,
    /// zstd level, with `--trace-of`, of the chunks holding the bytes the
    /// start reads: fetched by every cold start, compressed once.
    #[arg(long, default_value_t = DEFAULT_HOT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    hot_level: i32,
    /// Sign each converted layer with this private key (from `loci key
    /// generate`): snapshotters serve lazily only layers signed by a key
    /// they trust.
    #[arg(long)]
    sign_key: Option<std::path::PathBuf>,
    /// Layers converted at once.
    #[arg(long, default_value_t = 2)]
    parallel_layers: usize,
    /// Write each layer trace-ordered for the start trace published with
    /// this loci image (of the same source layers): the files the start
    /// reads first, in the order it reads them. The reordered layers get
    /// new diff_ids (the config is rewritten), and the destination gets
    /// the trace that replays the same reads.
    #[arg(long, value_name = "REF")]
    trace_of: Option<ImageRef>,
    /// loci config file (TOML): registry hosts and credentials; with
    /// `--trace-of`, the fetch settings and `[prefetch] pack_level` of the
    /// pack the new trace is published with (0: none).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Source image: docker://host/repo:tag, oci:DIR:TAG, or host/repo:tag.
    src: ImageRef,
    /// Destination image, in the same forms.
    dst: ImageRef,
}

/// Runs the conversion and prints a per-layer summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let opts = config.registry.apply(args.registry.options());
    let src = ImageStore::open(&args.src, &opts, false)
        .with_context(|| format!("opening {}", args.src))?;
    let dst = ImageStore::open(&args.dst, &opts, true)
        .with_context(|| format!("opening {}", args.dst))?;
    let sign_key = args
        .sign_key
        .as_deref()
        .map(SigningKey::load)
        .transpose()
        .context("loading the signing key")?;
    let scratch = tempfile::Builder::new().prefix("loci-convert-").tempdir()?;
    let runtime = super::runtime()?;
    let orders = match &args.trace_of {
        Some(traced) => {
            let store = ImageStore::open(traced, &opts, false)
                .with_context(|| format!("opening {traced}"))?;
            runtime
                .block_on(prefetch::read_orders_of(&store))
                .with_context(|| format!("reading the start trace of {traced}"))?
        }
        None => Default::default(),
    };
    let converter = Converter {
        options: ConvertOptions {
            chunk_size: args.chunk_size_kib.saturating_mul(1024),
            pack_size: args.pack_size_kib.saturating_mul(1024),
            level: args.level,
            cuts: Default::default(),
            hot_level: args.hot_level,
        },
        parallel_layers: args.parallel_layers,
        progress: Progress::new(),
        scratch: scratch.path().to_path_buf(),
        sign_key,
        read_order: orders
            .iter()
            .map(|(diff_id, files)| {
                let order = LayerOrder {
                    files: files.iter().map(|f| f.path.clone()).collect(),
                    cuts: files.iter().map(|f| (f.path.clone(), f.cuts())).collect(),
                };
                (*diff_id, order)
            })
            .collect(),
    };
    let report = runtime
        .block_on(converter.convert(&src, &dst))
        .with_context(|| format!("converting {} to {}", args.src, args.dst))?;
    for layer in &report.layers {
        if layer.passed_through {
            println!("{}  already converted", layer.source);
            continue;
        }
        println!(
            "{} -> {}  {:.1} MB tar -> {:.1} MB ({:.1} MB/s, TOC {} B)",
            layer.source,
            layer.converted,
            layer.uncompressed_size as f64 / 1e6,
            layer.blob_size as f64 / 1e6,
            layer.uncompressed_size as f64 / 1e6 / layer.convert_secs.max(1e-9),
            layer.toc_size,
        );
    }
    if !orders.is_empty() {
        // The same reads, by the reordered layers' diff_ids.
        let by_new: prefetch::ReadOrders = report
            .layers
            .iter()
            .filter_map(|l| Some((l.diff_id, orders.get(&l.source_diff_id)?.clone())))
            .collect();
        for layer in report
            .layers
            .iter()
            .filter_map(|l| l.reordered.as_ref().map(|r| (l, r)))
        {
            let (l, r) = layer;
            eprintln!(
                "{}: {} traced files and {} directories first ({:.1} MB of tar), {} traced paths not in it",
                l.converted,
                r.moved_files,
                r.moved_dirs,
                r.moved_bytes as f64 / 1e6,
                r.not_found
            );
        }
        if let Ok((client, repo)) = registry_of(&dst, &args.dst) {
            let (digest, accesses) =
                publish_ordered_trace(&runtime, &config, &dst, &by_new, client, repo)
                    .with_context(|| format!("publishing the start trace of {}", args.dst))?;
            eprintln!(
                "trace {digest} ({accesses} chunk reads) published with {}",
                args.dst
            );
        } else {
            eprintln!(
                "warning: {} is not in a registry: its start trace is not published",
                args.dst
            );
        }
    }
    println!("{} {}", args.dst, report.digest);
    Ok(())
}

/// Publishes with the trace-ordered image at `dst` the trace that replays
/// `orders` on it, with a pack of its chunks (fetched back from `dst`, cut
/// by the conversion to the bytes the start reads): a replay then reads
/// exactly those bytes, recompressed harder, in one stream.
fn publish_ordered_trace(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    dst: &ImageStore,
    orders: &prefetch::ReadOrders,
    client: &RegistryClient,
    repo: &str,
) -> anyhow::Result<(Digest, usize)> {
    let opened = runtime.block_on(open_image(dst))?;
    let trace = prefetch::trace_for_image(&opened, orders)?;
    let manifest = opened
        .manifest
        .clone()
        .context("the image has no manifest")?;
    let accesses = trace.accesses.len();
    let (trace, pack) = super::trace::packed_from_layers(runtime, config, opened.layers, trace)?;
    let digest = runtime.block_on(prefetch::push_trace(
        client,
        repo,
        &manifest,
        &trace,
        pack.as_ref(),
    ))?;
    Ok((digest, accesses))
}
