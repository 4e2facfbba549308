//! `loci mount REF DIR`: the merged image, read-only and lazy, until
//! SIGINT/SIGTERM or an outside `umount DIR`.

use super::registry_args::RegistryArgs;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::fs::MountFlags;
use crate::image::{ImageRef, ImageStore};
use crate::node::SchedulerLink;
use crate::prefetch::push_trace;
use crate::serve::{serve_image, ServeOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
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
    /// File with the bearer token the scheduler asks of node agents (one
    /// line; read for each report, so it can be rotated).
    #[arg(long)]
    scheduler_token_file: Option<PathBuf>,
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

/// How often the mount checks whether it was unmounted from outside (by
/// `umount DIR`), which ends it as SIGTERM does.
const UNMOUNT_POLL: Duration = Duration::from_millis(200);

/// Mounts, waits for a signal or an outside `umount`, unmounts.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = super::runtime()?;
    let store = ImageStore::open(
        &args.image,
        &config.registry.apply(args.registry.options()),
        false,
    )?;
    let options = ServeOptions {
        flags: MountFlags {
            suid: args.suid,
            dev: args.dev,
            allow_other: args.allow_other,
        },
        threads: args.threads,
        replay_trace: !args.no_prefetch,
        record_trace: args.record_trace.is_some(),
        scheduler: args.scheduler.clone().map(|url| SchedulerLink {
            url,
            node_id: args.node_id.clone().unwrap_or_else(hostname),
            interval: Duration::from_secs(args.report_interval_secs),
            token_file: args.scheduler_token_file.clone(),
        }),
    };
    let served = serve_image(&runtime, &store, &args.image, &args.dir, &config, &options)?;
    eprintln!(
        "mounted {} at {} ({} layers; TOCs in {} ms); SIGINT, SIGTERM or umount ends it",
        args.image,
        args.dir.display(),
        served.image.layers.len(),
        served.toc_time.as_millis()
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
        let mut poll = tokio::time::interval(UNMOUNT_POLL);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = poll.tick() => if served.ended_elsewhere() {
                    eprintln!("{} was unmounted from outside", args.dir.display());
                    break;
                },
                _ = usr1.recv() => {
                    served.report_now.notify_one();
                    if args.stats {
                        print_stats(&served.fetcher);
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    let fetcher = served.fetcher.clone();
    let manifest = served.manifest.clone();
    let trace = served.unmount().context("unmounting")?;
    if let (Some(trace), Some(path)) = (trace, &args.record_trace) {
        // Published with its pack: the file is the trace as published.
        let (trace, pack) = match (&store, args.publish_trace) {
            (ImageStore::Registry { .. }, true) => {
                super::trace::packed_for_publishing(trace, fetcher.cache(), &config)
            }
            _ => (trace, None),
        };
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
            let digest = runtime.block_on(push_trace(
                client,
                &reference.repository,
                &manifest,
                &trace,
                pack.as_ref(),
            ))?;
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
