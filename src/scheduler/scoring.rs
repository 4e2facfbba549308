//! Placement scoring: how good a node is for a new instance. One formula,
//! used by `place`, by routing's cold starts and by the Kubernetes extender,
//! so all three agree on where an image is warm.

use super::error::FieldError;
use serde::{Deserialize, Serialize};

/// Weights of the three terms of a node's score
/// `warm * warm_fraction + free * free_after - load * load`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringWeights {
    /// Weight of the image's warm fraction on the node (cache awareness).
    pub warm: f64,
    /// Weight of the node's free capacity left after placing.
    pub free: f64,
    /// Weight of the node's current load (busy CPU share), subtracted.
    pub load: f64,
}

impl Default for ScoringWeights {
    /// Warmth dominates: a fully warm image saves more start time than any
    /// spread of load can; free capacity and load break ties and keep
    /// nodes from filling up while others idle.
    fn default() -> Self {
        Self {
            warm: 1.0,
            free: 0.3,
            load: 0.3,
        }
    }
}

impl ScoringWeights {
    /// The same weights with the cache term off: the baseline placement the
    /// simulator compares cache-aware placement against.
    pub fn cache_blind(self) -> Self {
        Self { warm: 0.0, ..self }
    }

    /// Weights must be finite and non-negative, and not all zero.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (name, w) in [
            ("warm", self.warm),
            ("free", self.free),
            ("load", self.load),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(FieldError::new(
                    name,
                    format!("must be a finite number >= 0, got {w}"),
                ));
            }
        }
        if self.warm + self.free + self.load == 0.0 {
            return Err(FieldError::new(
                "warm",
                "at least one weight must be positive",
            ));
        }
        Ok(())
    }

    /// Score of a node; higher is better.
    pub fn score(&self, warm_fraction: f64, free_after: f64, load: f64) -> f64 {
        self.warm * warm_fraction + self.free * free_after - self.load * load
    }

    /// The score mapped onto 0..=`max` independently of other nodes, for
    /// consumers (the Kubernetes extender) that want bounded integers.
    pub fn scaled(&self, score: f64, max: i64) -> i64 {
        let span = self.warm + self.free + self.load;
        let unit = ((score + self.load) / span).clamp(0.0, 1.0);
        (unit * max as f64).round() as i64
    }
}

/// How warm an image is on a node, from the two fractions a node reports.
/// The start trace is what a cold start reads, so it counts most; the rest
/// of the image's chunks matter for reads after start.
pub fn warm_fraction(chunks_cached: f64, trace_cached: f64) -> f64 {
    0.8 * trace_cached + 0.2 * chunks_cached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmth_outweighs_free_capacity_by_default() {
        let w = ScoringWeights::default();
        let warm_but_fuller = w.score(1.0, 0.2, 0.5);
        let cold_but_empty = w.score(0.0, 1.0, 0.0);
        assert!(warm_but_fuller > cold_but_empty);
        let blind = w.cache_blind();
        assert!(blind.score(1.0, 0.2, 0.5) < blind.score(0.0, 1.0, 0.0));
    }

    #[test]
    fn scaled_scores_span_the_range() {
        let w = ScoringWeights::default();
        assert_eq!(w.scaled(w.score(1.0, 1.0, 0.0), 10), 10);
        assert_eq!(w.scaled(w.score(0.0, 0.0, 1.0), 10), 0);
    }

    #[test]
    fn negative_weights_are_named() {
        let w = ScoringWeights {
            load: -1.0,
            ..Default::default()
        };
        assert_eq!(w.validate().unwrap_err().field, "load");
    }
}
