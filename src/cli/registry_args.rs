//! Registry flags shared by every subcommand that talks to a registry.

use crate::image::{ImageRef, ImageStore};
use crate::registry::RegistryOptions;
use std::time::Duration;

/// How to reach registries.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Talk to registries over plain HTTP (local test registries).
    #[arg(long)]
    pub plain_http: bool,
    /// containerd's per-host configuration directory (e.g.
    /// /etc/containerd/certs.d): mirrors, private CAs, client certificates.
    #[arg(long, env = "LOCI_HOSTS_DIR")]
    pub hosts_dir: Option<std::path::PathBuf>,
    /// Seconds before a connection or a stalled response times out.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Retries of idempotent requests after network errors, 429 and 5xx.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

impl RegistryArgs {
    /// The client options these flags describe.
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            plain_http: self.plain_http,
            hosts_dir: self.hosts_dir.clone(),
            timeout: Duration::from_secs(self.timeout_secs),
            retries: self.retries,
            ..RegistryOptions::default()
        }
    }
}

/// The registry client and repository of an image kept in a registry;
/// traces are kept nowhere else.
pub(super) fn registry_of<'a>(
    store: &'a ImageStore,
    image: &ImageRef,
) -> anyhow::Result<(&'a crate::registry::RegistryClient, &'a str)> {
    match store {
        ImageStore::Registry { client, reference } => Ok((client, reference.repository.as_str())),
        ImageStore::Layout { .. } => {
            anyhow::bail!("traces are kept in registries; {image} is a layout")
        }
    }
}
