//! `loci node`: the node agent beside `loci snapshotter` and containerd.

use super::registry_args::RegistryArgs;
use crate::agent::runtime::Containerd;
use crate::agent::AgentConfig;
use crate::scheduler::report::Resources;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Carry out the scheduler's orders on this node: start, stop and kill
/// function instances through containerd and the loci snapshotter, report
/// what runs and is ready.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scheduler's URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    scheduler: String,
    /// File whose first line is the scheduler's bearer token (re-read for
    /// every call, so it can be rotated in place).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// This node's id (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd namespace the instances run in.
    #[arg(long, default_value = "loci")]
    namespace: String,
    /// The snapshotter instances' roots come from (containerd's proxy
    /// plugin name for `loci snapshotter`).
    #[arg(long, default_value = "loci")]
    snapshotter: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Host the scheduler reaches this node's instances at.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    /// Ports given to instances (each serves HTTP on its `$PORT`), FIRST-LAST.
    #[arg(long, default_value = "20000-29999", value_parser = parse_ports)]
    ports: (u16, u16),
    /// CPU instances may reserve, in millicores (default: every CPU).
    #[arg(long)]
    cpu_millis: Option<u32>,
    /// Memory instances may reserve, in MiB (default: all memory).
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Seconds between reports when nothing changes.
    #[arg(long, default_value_t = 5)]
    report_interval_secs: u64,
    /// `loci snapshotter`'s metrics URL (its `[snapshotter] metrics_address`
    /// plus `/metrics`): how much of each image its cache holds is reported
    /// to the scheduler, which places instances where it is warm.
    #[arg(long)]
    snapshotter_metrics: Option<String>,
    /// Instances started at once (creating the container and waiting for
    /// it to answer); more wait their turn in order.
    #[arg(long, default_value_t = 4)]
    max_concurrent_starts: usize,
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected FIRST-LAST"))?;
    let first: u16 = first.parse().map_err(|e| format!("{first:?}: {e}"))?;
    let last: u16 = last.parse().map_err(|e| format!("{last:?}: {e}"))?;
    if first == 0 || first > last {
        return Err(format!("{text:?}: expected 1 <= FIRST <= LAST"));
    }
    Ok((first, last))
}

/// Runs the agent until SIGTERM or Ctrl-C; instances keep running.
pub fn run(args: Args) -> anyhow::Result<()> {
    let node_id = match args.node_id {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name for --node-id")?
            .trim()
            .to_string(),
    };
    let capacity = match (args.cpu_millis, args.memory_mib) {
        (None, None) => None,
        (cpu, memory) => {
            let host = crate::node::host_resources(&mut Default::default()).0;
            Some(Resources {
                cpu_millis: cpu.unwrap_or(host.cpu_millis),
                memory_mib: memory.unwrap_or(host.memory_mib),
            })
        }
    };
    let config = AgentConfig {
        scheduler_url: args.scheduler,
        token_file: args.token_file,
        node_id,
        containerd: Containerd {
            address: args.address,
            namespace: args.namespace,
            snapshotter: args.snapshotter,
        },
        registry: args.registry.options(),
        endpoint_base: crate::agent::advertised_base(&args.advertise_host)
            .map_err(|e| anyhow::anyhow!(e))?,
        ports: args.ports.0..=args.ports.1,
        capacity,
        report_interval: Duration::from_secs(args.report_interval_secs.max(1)),
        max_concurrent_starts: args.max_concurrent_starts,
        snapshotter_metrics: args.snapshotter_metrics,
    };
    super::runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("watching SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        crate::agent::run(config, shutdown)
            .await
            .context("loci node")
    })
}

#[cfg(test)]
mod tests {
    use super::parse_ports;

    #[test]
    fn port_ranges_are_checked() {
        assert_eq!(parse_ports("20000-20009"), Ok((20000, 20009)));
        for bad in ["20000", "0-10", "10-9", "a-b", "1-70000"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
