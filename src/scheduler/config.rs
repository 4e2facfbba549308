//! The scheduler's configuration file (`loci scheduler --config FILE`),
//! TOML or JSON by extension: timing, scoring weights and the functions with
//! their reservation policies.

use super::access::AccessConfig;
use super::error::FieldError;
use super::function::FunctionSpec;
use super::scoring::ScoringWeights;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Everything `loci scheduler` can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// A node that has not reported for this long is lost: nothing new is
    /// placed or routed there, its instances are kept (a node that comes
    /// back reconciles them).
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// A node that has not reported for this long is dead: its instances
    /// are dropped (their invocations fail) and reservation policies
    /// replace them elsewhere. At least `node_timeout_ms`.
    #[serde(default = "default_node_dead_ms")]
    pub node_dead_ms: u64,
    /// How often timeouts, node loss, keep-alives and reservation policies
    /// are evaluated.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// Placement score weights.
    #[serde(default)]
    pub scoring: ScoringWeights,
    /// Functions known from the start (more can be registered over HTTP).
    #[serde(default)]
    pub functions: Vec<FunctionSpec>,
    /// Who may call the API.
    #[serde(default)]
    pub access: AccessConfig,
}

fn default_node_timeout_ms() -> u64 {
    15_000
}

fn default_node_dead_ms() -> u64 {
    60_000
}

fn default_reconcile_interval_ms() -> u64 {
    1_000
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            node_timeout_ms: default_node_timeout_ms(),
            node_dead_ms: default_node_dead_ms(),
            reconcile_interval_ms: default_reconcile_interval_ms(),
            scoring: ScoringWeights::default(),
            functions: Vec::new(),
            access: AccessConfig::default(),
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON for this schema.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and field.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field and what is wrong with it.
        source: FieldError,
    },
}

impl SchedulerConfig {
    /// Reads and validates a `.toml` or `.json` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let config: SchedulerConfig = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| parse_error(e.to_string()))?,
            _ => toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?,
        };
        config.validate().map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(config)
    }

    /// Checks timings, weights and every function, naming the first bad field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.reconcile_interval_ms == 0 {
            return Err(FieldError::new("reconcile_interval_ms", "must be positive"));
        }
        if self.node_timeout_ms < self.reconcile_interval_ms {
            return Err(FieldError::new(
                "node_timeout_ms",
                format!(
                    "{} is shorter than reconcile_interval_ms {}",
                    self.node_timeout_ms, self.reconcile_interval_ms
                ),
            ));
        }
        if self.node_dead_ms < self.node_timeout_ms {
            return Err(FieldError::new(
                "node_dead_ms",
                format!(
                    "{} is shorter than node_timeout_ms {}",
                    self.node_dead_ms, self.node_timeout_ms
                ),
            ));
        }
        self.scoring.validate().map_err(|e| e.within("scoring"))?;
        let mut names = HashSet::new();
        for (i, f) in self.functions.iter().enumerate() {
            let path = format!("functions[{i}]");
            f.validate().map_err(|e| e.within(&path))?;
            if !names.insert(f.name.as_str()) {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    format!("{:?} is defined twice", f.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EXAMPLE: &str = r#"
node_timeout_ms = 10000

[scoring]
warm = 1.0
free = 0.2
load = 0.4

[[functions]]
name = "checkout"
image = "registry.example/shop/checkout:1.4"
cpu_millis = 500
memory_mib = 512
concurrency = 4
timeout_s = 30

[functions.policy]
kind = "utilisation"
target = 0.7
min = 2
max = 1
"#;

    fn write(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn impossible_bounds_name_the_function_and_field() {
        let file = write(".toml", EXAMPLE);
        let err = SchedulerConfig::load(file.path()).unwrap_err();
        let ConfigError::Invalid { source, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(source.field, "functions[0].policy.min");
    }

    #[test]
    fn a_valid_file_loads_with_defaults() {
        let file = write(".toml", &EXAMPLE.replace("max = 1", "max = 10"));
        let config = SchedulerConfig::load(file.path()).unwrap();
        assert_eq!(config.reconcile_interval_ms, 1_000);
        assert_eq!(
            config.functions[0].policy.as_ref().unwrap().kind(),
            "utilisation"
        );
    }

    #[test]
    fn parse_errors_say_where() {
        let file = write(".json", r#"{"functions": [{"name": "f"}]}"#);
        let err = SchedulerConfig::load(file.path()).unwrap_err().to_string();
        assert!(err.contains("missing field `image`"), "{err}");
    }
}
