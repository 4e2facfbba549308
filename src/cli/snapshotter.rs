//! `loci snapshotter`: the containerd remote snapshotter daemon.

use crate::config::Config;
use anyhow::Context;
use std::path::PathBuf;

/// Serve containerd's snapshots API, mounting loci layers lazily.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The daemon's unix socket (containerd's `[proxy_plugins.loci] address`).
    #[arg(long, default_value = "/run/loci/snapshotter.sock")]
    address: PathBuf,
    /// State directory: snapshot metadata, layer directories, mounts.
    #[arg(long, default_value = "/var/lib/loci/snapshotter")]
    root: PathBuf,
    /// Node configuration file (TOML: [cache], [fetch], [prefetch],
    /// [snapshotter], [limits]).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    super::runtime()?
        .block_on(crate::snapshotter::run(&args.address, &args.root, config))
        .context("loci snapshotter")
}

/// Keep the snapshotter's FUSE connections across its restarts (started by
/// the snapshotter itself; not meant to be run by hand).
#[derive(clap::Args, Debug)]
pub struct HolderArgs {
    /// The unix socket the snapshotter reaches the holder on.
    #[arg(long)]
    socket: PathBuf,
    /// Close the held connections once no daemon has taken them back for
    /// this long.
    #[arg(long, default_value_t = 300)]
    orphan_timeout_secs: u64,
}

/// Runs the fd holder until it holds nothing or its socket is removed.
pub fn run_holder(args: HolderArgs) -> anyhow::Result<()> {
    crate::snapshotter::fdstore::run_holder(
        &args.socket,
        std::time::Duration::from_secs(args.orphan_timeout_secs),
    )
    .with_context(|| format!("fd holder on {}", args.socket.display()))
}

/// Release a stopped snapshotter's lazy mounts and fd holder for good.
#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    /// The stopped snapshotter's state directory.
    #[arg(long, default_value = "/var/lib/loci/snapshotter")]
    root: PathBuf,
}

/// Runs the release and says what it closed.
pub fn run_release(args: ReleaseArgs) -> anyhow::Result<()> {
    let released = crate::snapshotter::release(&args.root)?;
    println!(
        "released {}: the fd holder held {} connections; {} FUSE mounts unmounted",
        args.root.display(),
        released.held,
        released.unmounted.len()
    );
    Ok(())
}
