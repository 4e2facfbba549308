//! The `[registry]` section of the node configuration: where containerd's
//! per-host configuration lives and the credentials the node was given.

use super::auth::{HostAuth, NodeCredentials};
use super::RegistryOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How the node reaches registries, beyond the defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd's `certs.d` directory (its CRI `config_path`), so mirrors,
    /// private CAs and client certificates configured for containerd apply
    /// to loci's fetches too. Unset: every registry is reached directly.
    pub hosts_dir: Option<PathBuf>,
    /// Credentials per registry host (`[registry.auth."host:port"]`),
    /// tried before `~/.docker/config.json`. Kept in memory only.
    pub auth: BTreeMap<String, HostAuth>,
    /// Offer HTTP/2 over TLS (it is used where the registry accepts it):
    /// a start's many range requests then share one connection instead
    /// of opening one each. False keeps HTTP/1.1, for a proxy in the way
    /// that mishandles HTTP/2.
    pub http2: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hosts_dir: None,
            auth: BTreeMap::new(),
            http2: true,
        }
    }
}

impl RegistryConfig {
    /// `base` with this section's hosts directory (unless `base` names
    /// one) and credentials.
    pub fn apply(&self, mut base: RegistryOptions) -> RegistryOptions {
        if base.hosts_dir.is_none() {
            base.hosts_dir = self.hosts_dir.clone();
        }
        base.credentials = NodeCredentials::new(self.auth.clone());
        base.http2 = self.http2;
        base
    }
}
