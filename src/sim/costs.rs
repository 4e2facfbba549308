//! Per-image start costs for the simulator: how long an instance takes to
//! start with nothing cached (cold) and with the image warm in the node's
//! cache. Built-in defaults, or taken from `loci bench` JSON.

use serde::Deserialize;
use std::collections::HashMap;

/// Built-in cold start with a full image pull (overlayfs), ms.
pub const DEFAULT_OVERLAYFS_MS: f64 = 8_000.0;
/// Built-in cold start with loci's lazy loading and an empty cache, ms.
pub const DEFAULT_LAZY_MS: f64 = 1_500.0;
/// Built-in start with loci and the image's start trace cached, ms.
pub const DEFAULT_WARM_MS: f64 = 300.0;

/// Which `loci bench` mode stands for a cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColdMode {
    /// Full pull, then start (`overlayfs` rows).
    Overlayfs,
    /// loci lazy loading with an empty cache (`loci-lazy` rows).
    Lazy,
}

impl ColdMode {
    fn bench_mode(self) -> &'static str {
        match self {
            ColdMode::Overlayfs => "overlayfs",
            ColdMode::Lazy => "loci-lazy",
        }
    }

    fn default_ms(self) -> f64 {
        match self {
            ColdMode::Overlayfs => DEFAULT_OVERLAYFS_MS,
            ColdMode::Lazy => DEFAULT_LAZY_MS,
        }
    }
}

/// Cold and warm start time of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageCost {
    /// Start with nothing cached, ms.
    pub cold_ms: f64,
    /// Start with the image warm in the node's cache, ms.
    pub warm_ms: f64,
}

impl ImageCost {
    /// Start time on a node where the image is `warm_fraction` warm:
    /// linear between cold and warm.
    pub fn start_ms(&self, warm_fraction: f64) -> f64 {
        self.cold_ms - warm_fraction.clamp(0.0, 1.0) * (self.cold_ms - self.warm_ms)
    }
}

/// Start costs per image, with a default for images not listed.
#[derive(Debug, Clone, PartialEq)]
pub struct StartCosts {
    default: ImageCost,
    per_image: HashMap<String, ImageCost>,
}

/// One row of `loci bench` JSON; fields the simulator does not use are
/// ignored.
#[derive(Debug, Deserialize)]
struct BenchRow {
    image: String,
    mode: String,
    total_s: f64,
}

/// `loci bench` output: a bare array of rows or `{"rows": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BenchFile {
    Rows(Vec<BenchRow>),
    Wrapped { rows: Vec<BenchRow> },
}

/// Why a costs file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CostsError {
    /// Not `loci bench` JSON.
    #[error("not loci bench JSON (an array of {{image, mode, total_s, ...}} rows): {0}")]
    Parse(#[from] serde_json::Error),
    /// A row has an impossible time.
    #[error("rows[{row}].total_s: {value} is not a finite number of seconds >= 0")]
    BadTime {
        /// Index of the row.
        row: usize,
        /// The value given.
        value: f64,
    },
    /// No image has both a cold and a warm row.
    #[error("no image has both a {cold:?} and a \"loci-warm\" row")]
    NoUsableImage {
        /// The cold mode looked for.
        cold: &'static str,
    },
}

impl StartCosts {
    /// The built-in defaults for every image.
    pub fn defaults(cold: ColdMode) -> Self {
        Self {
            default: ImageCost {
                cold_ms: cold.default_ms(),
                warm_ms: DEFAULT_WARM_MS,
            },
            per_image: HashMap::new(),
        }
    }

    /// Reads `loci bench` JSON: cold = the `cold` mode's `total_s`, warm =
    /// `loci-warm`'s. Images without both rows keep the defaults.
    pub fn from_bench_json(json: &str, cold: ColdMode) -> Result<Self, CostsError> {
        let rows = match serde_json::from_str(json)? {
            BenchFile::Rows(rows) | BenchFile::Wrapped { rows } => rows,
        };
        let mut cold_ms = HashMap::new();
        let mut warm_ms = HashMap::new();
        for (row, r) in rows.iter().enumerate() {
            if !(r.total_s.is_finite() && r.total_s >= 0.0) {
                return Err(CostsError::BadTime {
                    row,
                    value: r.total_s,
                });
            }
            if r.mode == cold.bench_mode() {
                cold_ms.insert(r.image.clone(), r.total_s * 1000.0);
            } else if r.mode == "loci-warm" {
                warm_ms.insert(r.image.clone(), r.total_s * 1000.0);
            }
        }
        let per_image: HashMap<String, ImageCost> = cold_ms
            .into_iter()
            .filter_map(|(image, cold_ms)| {
                let warm_ms = *warm_ms.get(&image)?;
                Some((
                    image,
                    ImageCost {
                        cold_ms,
                        warm_ms: warm_ms.min(cold_ms),
                    },
                ))
            })
            .collect();
        if per_image.is_empty() {
            return Err(CostsError::NoUsableImage {
                cold: cold.bench_mode(),
            });
        }
        Ok(Self {
            per_image,
            ..Self::defaults(cold)
        })
    }

    /// The costs of `image`.
    pub fn of(&self, image: &str) -> ImageCost {
        self.per_image.get(image).copied().unwrap_or(self.default)
    }

    /// How many images have costs of their own.
    pub fn measured_images(&self) -> usize {
        self.per_image.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = r#"[
        {"image":"python:3.12","mode":"overlayfs","pull_s":9.0,"start_s":1.0,"total_s":10.0,"bytes_fetched":1,"ratio_to_overlayfs":1.0},
        {"image":"python:3.12","mode":"loci-lazy","pull_s":0.1,"start_s":1.9,"total_s":2.0,"bytes_fetched":1,"ratio_to_overlayfs":0.2},
        {"image":"python:3.12","mode":"loci-warm","pull_s":0.0,"start_s":0.4,"total_s":0.4,"bytes_fetched":0,"ratio_to_overlayfs":0.04},
        {"image":"nginx","mode":"overlayfs","pull_s":2.0,"start_s":0.5,"total_s":2.5,"bytes_fetched":1,"ratio_to_overlayfs":1.0}
    ]"#;

    #[test]
    fn bench_rows_give_cold_and_warm_costs() {
        let costs = StartCosts::from_bench_json(BENCH, ColdMode::Lazy).unwrap();
        assert_eq!(
            costs.of("python:3.12"),
            ImageCost {
                cold_ms: 2000.0,
                warm_ms: 400.0
            }
        );
        let costs = StartCosts::from_bench_json(BENCH, ColdMode::Overlayfs).unwrap();
        assert_eq!(costs.of("python:3.12").cold_ms, 10_000.0);
        assert_eq!(costs.measured_images(), 1, "nginx has no warm row");
        assert_eq!(costs.of("nginx").cold_ms, DEFAULT_OVERLAYFS_MS);
    }

    #[test]
    fn start_cost_interpolates_by_warmth() {
        let c = ImageCost {
            cold_ms: 1000.0,
            warm_ms: 200.0,
        };
        assert_eq!(c.start_ms(0.0), 1000.0);
        assert_eq!(c.start_ms(1.0), 200.0);
        assert_eq!(c.start_ms(0.5), 600.0);
    }

    #[test]
    fn bad_rows_are_named() {
        let json = r#"{"rows":[{"image":"a","mode":"loci-warm","total_s":-1}]}"#;
        let err = StartCosts::from_bench_json(json, ColdMode::Lazy).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rows[0].total_s: -1 is not a finite number of seconds >= 0"
        );
        assert!(StartCosts::from_bench_json("{}", ColdMode::Lazy).is_err());
    }
}
