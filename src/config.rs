//! The node configuration file (TOML): cache tiers, fetching, trace
//! replay, the snapshotter daemon, and the limits layer metadata is held to.

use crate::cache::CacheConfig;
use crate::fetch::{CompletionConfig, FetchConfig};
use crate::format::Limits;
use crate::prefetch::PrefetchConfig;
use crate::registry::RegistryConfig;
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
    /// Background completion of lazily served layers.
    pub completion: CompletionConfig,
    /// The containerd snapshotter daemon.
    pub snapshotter: SnapshotterConfig,
    /// Registry hosts (containerd's hosts.toml) and node credentials.
    pub registry: RegistryConfig,
    /// Bounds on what a layer's TOC may declare.
    pub limits: Limits,
}

impl Config {
    /// Values that parse but cannot work: a section's count of 0 where
    /// at least one is needed. The error names the key.
    fn check_counts(&self) -> Result<(), String> {
        let counts = [
            ("fetch.read_timeout_secs", self.fetch.read_timeout_secs),
            ("fetch.max_request_bytes", self.fetch.max_request_bytes),
            ("prefetch.max_in_flight", self.prefetch.max_in_flight as u64),
            ("prefetch.window", self.prefetch.window as u64),
            ("completion.request_bytes", self.completion.request_bytes),
            (
                "prefetch.max_request_bytes",
                self.prefetch.max_request_bytes,
            ),
            (
                "prefetch.pack_request_bytes",
                self.prefetch.pack_request_bytes,
            ),
            (
                "prefetch.pack_in_flight",
                self.prefetch.pack_in_flight as u64,
            ),
            (
                "prefetch.record_window_secs",
                self.prefetch.record_window_secs,
            ),
            (
                "snapshotter.fuse_threads",
                self.snapshotter.fuse_threads as u64,
            ),
            (
                "snapshotter.held_connection_timeout_secs",
                self.snapshotter.held_connection_timeout_secs,
            ),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if !(0..=zstd::zstd_safe::max_c_level()).contains(&self.prefetch.pack_level) {
            return Err(format!(
                "prefetch.pack_level must be 0 (no pack) to {}",
                zstd::zstd_safe::max_c_level()
            ));
        }
        Ok(())
    }
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
        config.check_counts().map_err(invalid)?;
        Limits::install(config.limits.clone()).map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_validated_and_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[cache.rocksdb]\nmax_background_jobs = 0\n",
                "[cache] rocksdb.max_background_jobs",
            ),
            ("[limits]\nmax_entries = 0\n", "[limits] limits.max_entries"),
            (
                "[fetch]\nread_timeout_secs = 0\n",
                "fetch.read_timeout_secs must be at least 1",
            ),
            ("[prefetch]\nmax_in_flight = 0\n", "prefetch.max_in_flight"),
            ("[prefetch]\npack_level = 23\n", "prefetch.pack_level"),
            (
                "[prefetch]\npack_in_flight = 0\n",
                "prefetch.pack_in_flight",
            ),
            (
                "[prefetch]\npack_request_bytes = 0\n",
                "prefetch.pack_request_bytes",
            ),
            ("[prefetch]\npack_level = -1\n", "prefetch.pack_level"),
            (
                "[snapshotter]\nfuse_threads = 0\n",
                "snapshotter.fuse_threads",
            ),
            ("[snapshotter]\ntrust = \"maybe\"\n", "unknown variant"),
            ("[fetch]\nmax_gap = 1\n", "unknown field"),
            ("[registry]\nhost_dir = \"/x\"\n", "unknown field"),
            (
                "[registry.auth.\"r:5000\"]\ntoken = \"t\"\n",
                "unknown field",
            ),
        ];
        for (text, says) in cases {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_packaged_example_config_loads_and_never_prints_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshotter.toml");
        let example = include_str!("../packaging/loci-snapshotter.toml");
        let with_auth = format!(
            "{example}\n[registry.auth.\"r.example:5000\"]\nusername = \"u\"\npassword = \"hunter2-secret\"\n"
        );
        std::fs::write(&path, with_auth).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.registry.hosts_dir.as_deref(),
            Some(Path::new("/etc/containerd/certs.d"))
        );
        assert_eq!(
            config.registry.auth["r.example:5000"].password,
            "hunter2-secret"
        );
        let shown = format!("{config:?} {:?}", config.registry.apply(Default::default()));
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }
}
