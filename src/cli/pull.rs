//! `loci pull REF`: pull an image into containerd with the loci
//! snapshotter, downloading no layer that loci serves lazily.

use super::registry_args::RegistryArgs;
use anyhow::Context;
use std::path::PathBuf;

/// Pull an image into containerd through the loci snapshotter.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    registry: RegistryArgs,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd namespace.
    #[arg(long, default_value = "default", env = "CONTAINERD_NAMESPACE")]
    namespace: String,
    /// The image, e.g. `registry.example/app:v1`.
    reference: String,
}

/// Pulls and prints what was done per layer.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = super::runtime()?
        .block_on(crate::pull::pull(
            &args.address,
            &args.namespace,
            &args.reference,
            &args.registry.options(),
        ))
        .with_context(|| format!("pulling {}", args.reference))?;
    eprintln!(
        "pulled {}: {} layers lazy, {} unpacked, {} already present",
        report.name, report.lazy_layers, report.unpacked_layers, report.present_layers
    );
    Ok(())
}
