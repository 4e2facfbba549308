//! `loci scheduler`: runs the scheduler HTTP service.

use crate::scheduler::config::SchedulerConfig;
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

/// Run the scheduler service that loci node daemons report to.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Configuration file (.toml or .json): timings, scoring weights,
    /// functions and their reservation policies.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Loads the configuration, binds the listener and serves until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => SchedulerConfig::load(path)?,
        None => SchedulerConfig::default(),
    };
    super::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        // The first stdout line tells scripts (and tests) the real port.
        println!("listening on {addr}");
        std::io::stdout().flush().context("writing to stdout")?;
        tracing::info!(%addr, functions = config.functions.len(), "scheduler listening");
        let shutdown = async {
            // If Ctrl-C cannot be watched, run until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        crate::scheduler::server::serve(listener, config, shutdown).await?;
        Ok(())
    })
}
