//! `loci trace record`: a real start through containerd over a lazy root.
//!
//! The image's layers are mounted merged with loci's FUSE code, recording
//! every chunk read; an overlay gives the container a writable root on top;
//! containerd runs the image's process on it (its Env, WorkingDir and User,
//! the command given or its Entrypoint and Cmd) until it exits or the
//! timeout passes. The trace of a start that succeeded is then published
//! with the image.

use super::registry_args::registry_of;
use super::registry_args::RegistryArgs;
use crate::config::Config;
use crate::fs::{self, tree::View};
use crate::image::{ImageRef, ImageStore, RunConfig};
use crate::prefetch::{push_trace, ContainerRun, TraceRecorder};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `loci trace record`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace to run the container in.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Node configuration file (TOML: [cache] (its dir is replaced by
    /// the recording's own), [fetch], [limits]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop recording (and the container) after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub run_timeout_secs: u64,
    /// Also write the trace to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not publish the trace to the registry.
    #[arg(long)]
    pub no_publish: bool,
    /// Publish (and write) the trace even when the command exits
    /// non-zero or is killed at the timeout: by default such a run leaves
    /// no trace, as a start that failed early would mislead every later
    /// start.
    #[arg(long)]
    pub allow_failure: bool,
    /// The converted image.
    pub image: ImageRef,
    /// The start command (it replaces the image's Entrypoint and Cmd, as
    /// a Kubernetes `command` does); the image's own when none is given.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Records and publishes the trace of one start.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let work = tempfile::Builder::new().prefix("loci-trace-").tempdir()?;
    let store = ImageStore::open(
        &args.image,
        &config.registry.apply(args.registry.options()),
        false,
    )?;
    // Its own cache: the recording must not be shaped by what this node
    // already holds, and must leave the node's cache alone.
    let fetcher = super::trace::scratch_fetcher(&config, work.path())?;
    let cache = fetcher.cache().clone();
    let image = runtime
        .block_on(crate::fetch::open_image(&store))
        .with_context(|| format!("opening {}", args.image))?;
    let manifest = image
        .manifest
        .clone()
        .context("the image has no manifest")?;
    let run_config = RunConfig::parse(
        &image
            .config
            .as_ref()
            .context("the image has no config")?
            .bytes,
    )?;
    let recorder = Arc::new(TraceRecorder::new(
        image.layers.iter().map(|l| l.digest).collect(),
    ));
    let lower = work.path().join("lower");
    let (upper, overlay_work, rootfs) = (
        work.path().join("upper"),
        work.path().join("work"),
        work.path().join("rootfs"),
    );
    for dir in [&lower, &upper, &overlay_work, &rootfs] {
        std::fs::create_dir_all(dir)?;
    }
    let session = fs::mount(
        &image,
        View::Merged,
        &lower,
        fs::MountFlags::CONTAINER_ROOT,
        fetcher,
        runtime.handle().clone(),
        8,
        Some(recorder.clone()),
    )?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        overlay_work.display()
    );
    sh(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&rootfs))?;
    let started = Instant::now();
    // The user is looked up in the image's own account files, through the
    // lazy root: containerd reads them the same way on a real start.
    let outcome = run_config
        .process(&args.command, &lower)
        .context("the image's process")
        .and_then(|process| {
            let id = format!("loci-trace-{}", std::process::id());
            let run = ContainerRun {
                address: &args.address,
                namespace: &args.namespace,
                id: &id,
                rootfs: &rootfs,
                work: work.path(),
                timeout: Duration::from_secs(args.run_timeout_secs),
            };
            eprintln!(
                "running {:?} as {}:{}",
                process.args, process.uid, process.gid
            );
            Ok(run.run(&process)?)
        });
    let elapsed = started.elapsed();
    let _ = sh(Command::new("umount").arg(&rootfs));
    session.umount_and_join().context("unmounting the image")?;
    let outcome = outcome?;
    let trace = recorder.trace();
    eprintln!(
        "recorded {} chunk reads in {:.1} s; the start {outcome}",
        trace.accesses.len(),
        elapsed.as_secs_f64(),
    );
    if !outcome.succeeded() && !args.allow_failure {
        bail!("the start {outcome}: its trace is not kept (--allow-failure keeps it)");
    }
    let publish_to = (!args.no_publish).then(|| registry_of(&store, &args.image));
    // Published with its pack: the file is the trace as published.
    let (trace, pack) = match publish_to {
        Some(Ok(_)) => super::trace::packed_for_publishing(trace, &cache, &config),
        _ => (trace, None),
    };
    if let Some(path) = &args.out {
        std::fs::write(path, trace.encode())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(target) = publish_to {
        let (client, repo) = target?;
        let digest =
            runtime.block_on(push_trace(client, repo, &manifest, &trace, pack.as_ref()))?;
        println!("{digest}");
    }
    Ok(())
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
