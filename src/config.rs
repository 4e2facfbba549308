//! The node configuration file (TOML): cache tiers, fetching, trace
//! replay, the snapshotter daemon, and the limits layer metadata is held to.

use crate::cache::CacheConfig;
use crate::fetch::FetchConfig;
use crate::format::Limits;
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
    /// Bounds on what a layer's TOC may declare.
    pub limits: Limits,
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
    /// fields are refused, and every section is validated, the error
    /// naming the key. Its `[limits]` become the ones every layer this
    /// process opens is held to.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let config: Config = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config
            .cache
            .validate()
            .map_err(|e| invalid(format!("[cache] {e}")))?;
        config
            .limits
            .validate()
            .map_err(|e| invalid(format!("[limits] {e}")))?;
        Limits::install(config.limits.clone()).map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }
}
