//! The node configuration file (TOML): cache tiers and fetching.

use crate::cache::CacheConfig;
use crate::fetch::FetchConfig;
use crate::prefetch::PrefetchConfig;
use crate::snapshotter::SnapshotterConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything `loci mount` and the snapshotter read from `--config`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The chunk cache.
    pub cache: CacheConfig,
    /// Chunk fetching.
    pub fetch: FetchConfig,
    /// Trace replay.
    pub prefetch: PrefetchConfig,
    /// The containerd snapshotter daemon.
    pub snapshotter: SnapshotterConfig,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    /// Loads a TOML file; missing fields take their defaults, unknown
    /// fields are refused.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
