//! Command-line interface: argument parsing and the glue from each
//! subcommand to the library. No logic of its own lives here.

mod convert;
mod inspect;
mod key;
mod logging;
mod mount;
mod node;
mod pull;
mod registry_args;

mod scheduler;
mod sim;
mod snapshotter;
mod trace;
mod trace_record;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// loci — lazy OCI image acceleration.
#[derive(Parser, Debug)]
#[command(name = "loci", version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `loci=debug`.
    #[arg(long, global = true, env = "LOCI_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert an OCI image into loci's chunked, seekable format.
    Convert(convert::Args),
    /// Print (and optionally verify) the table of contents of converted layers.
    Inspect(inspect::Args),
    /// Mount a converted image read-only, fetching chunks lazily.
    Mount(mount::Args),
    /// Generate the keys that sign converted layers.
    Key(key::Args),
    /// Show or publish an image's start trace.
    Trace(trace::Args),
    /// Pull an image into containerd with the loci snapshotter, fetching
    /// no layer that loci serves lazily.
    Pull(pull::Args),
    /// Run the scheduler service: cache-aware placement, load-aware routing,
    /// reservation policies, Kubernetes extender.
    Scheduler(scheduler::Args),
    /// Run the node agent: start, stop and kill function instances through
    /// containerd as the scheduler orders, and report what runs.
    Node(node::Args),
    /// Run the containerd remote snapshotter: layers of converted images
    /// are mounted lazily instead of downloaded.
    Snapshotter(snapshotter::Args),
    /// Release, for good, what a stopped snapshotter keeps for its next
    /// start (lazy mounts and the fd holder): to drain a node or uninstall.
    Release(snapshotter::ReleaseArgs),
    /// Hold the snapshotter's FUSE connections across its restarts.
    #[command(hide = true)]
    FdHolder(snapshotter::HolderArgs),
    /// Replay or generate an invocation trace over a simulated cluster and
    /// compare reservation policies and placement.
    Sim(sim::Args),
}

/// Entry point of the binary: parses arguments, sets up logging, runs the
/// subcommand and turns its error into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log, cli.log_json);
    if matches!(cli.command, Command::Inspect(_) | Command::Sim(_)) {
        end_quietly_when_the_reader_goes();
    }
    let result = match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Key(args) => key::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::Snapshotter(args) => snapshotter::run(args),
        Command::Release(args) => snapshotter::run_release(args),
        Command::FdHolder(args) => snapshotter::run_holder(args),
        Command::Sim(args) => sim::run(args),
        Command::Node(args) => node::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loci: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports read through a pipe (`loci inspect --json | head`) end when the
/// reader goes, as Unix tools do, instead of panicking on a closed stdout.
/// Only for those: daemons keep SIGPIPE ignored, so a peer that goes away
/// is an error to handle, not the end of the process.
fn end_quietly_when_the_reader_goes() {
    // SAFETY: restores the default disposition of one signal, before any
    // thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Builds the multi-threaded tokio runtime that async subcommands run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
