//! `loci trace record`: a real start through containerd over a lazy root.
//!
//! The image's layers are mounted merged with loci's FUSE code, recording
//! every chunk read; an overlay gives the container a writable root on top;
//! containerd runs CMD on it (`ctr run --rootfs`, runc underneath) until it
//! exits or the timeout passes. The trace is then published with the image.

use super::registry_args::registry_of;
use super::registry_args::RegistryArgs;
use crate::cache::ChunkCache;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::fs::{self, tree::View};
use crate::image::{ImageRef, ImageStore};
use crate::prefetch::{push_trace, TraceRecorder};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
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
    /// The converted image.
    pub image: ImageRef,
    /// The start command to run in it.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Records and publishes the trace of one start.
pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let work = tempfile::Builder::new().prefix("loci-trace-").tempdir()?;
    let store = ImageStore::open(&args.image, &args.registry.options(), false)?;
    let mut cache_config = config.cache.clone();
    // Its own cache: the recording must not be shaped by what this node
    // already holds, and must leave the node's cache alone.
    cache_config.dir = work.path().join("cache");
    let fetcher = Arc::new(Fetcher::new(
        ChunkCache::open(&cache_config)?,
        config.fetch.clone(),
    ));
    let image = runtime
        .block_on(crate::fetch::open_image(&store))
        .with_context(|| format!("opening {}", args.image))?;
    let manifest = image
        .manifest
        .clone()
        .context("the image has no manifest")?;
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
    let outcome = run_container(&args, &rootfs);
    let elapsed = started.elapsed();
    let _ = sh(Command::new("umount").arg(&rootfs));
    session.umount_and_join().context("unmounting the image")?;
    outcome?;
    let trace = recorder.trace();
    eprintln!(
        "recorded {} chunk reads in {:.1} s of {}",
        trace.accesses.len(),
        elapsed.as_secs_f64(),
        args.command.join(" ")
    );
    if let Some(path) = &args.out {
        std::fs::write(path, trace.encode())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.no_publish {
        let (client, repo) = registry_of(&store, &args.image)?;
        let digest = runtime.block_on(push_trace(client, repo, &manifest, &trace))?;
        println!("{digest}");
    }
    Ok(())
}

/// Runs the command in a container on `rootfs` through containerd, killing
/// it at the timeout.
fn run_container(args: &Args, rootfs: &Path) -> anyhow::Result<()> {
    let id = format!("loci-trace-{}", std::process::id());
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&args.address)
        .args(["--namespace", &args.namespace, "run", "--rm", "--rootfs"])
        .arg(rootfs)
        .arg(&id)
        .args(&args.command)
        .stdin(std::process::Stdio::null())
        // The command's output goes to stderr: stdout is for the trace's digest.
        .stdout(std::io::stderr())
        .spawn()
        .context("starting ctr (containerd's client) to run the container")?;
    let deadline = Instant::now() + Duration::from_secs(args.run_timeout_secs);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                eprintln!("warning: the command exited with {status}; its reads are recorded all the same");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "timeout: stopping the container after {} s",
                args.run_timeout_secs
            );
            let _ = Command::new("ctr")
                .arg("--address")
                .arg(&args.address)
                .args([
                    "--namespace",
                    &args.namespace,
                    "tasks",
                    "kill",
                    "-s",
                    "SIGKILL",
                    &id,
                ])
                .status();
            child.wait()?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
