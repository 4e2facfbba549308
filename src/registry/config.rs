//! The `[registry]` section of the node configuration: where containerd's
//! per-host configuration lives and the credentials the node was given.

use super::auth::{HostAuth, NodeCredentials};
use super::RegistryOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How the node reaches registries, beyond the defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd's `certs.d` directory (its CRI `config_path`), so mirrors,
    /// private CAs and client certificates configured for containerd apply
    /// to loci's fetches too. Unset: every registry is reached directly.
    pub hosts_dir: Option<PathBuf>,
    /// Credentials per registry host (`[registry.auth."host:port"]`),
    /// tried before `~/.docker/config.json`. Kept in memory only.
    pub auth: BTreeMap<String, HostAuth>,
}

impl RegistryConfig {
    /// `base` with this section's hosts directory (unless `base` names
    /// one) and credentials.
    pub fn apply(&self, mut base: RegistryOptions) -> RegistryOptions {
        if base.hosts_dir.is_none() {
            base.hosts_dir = self.hosts_dir.clone();
        }
        base.credentials = NodeCredentials::new(self.auth.clone());
        base
    }
}
