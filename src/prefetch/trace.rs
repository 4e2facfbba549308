//! The trace: which chunks of which layers a start read, in order.

use crate::digest::Digest;
use crate::fetch::RemoteLayer;
use serde::{Deserialize, Serialize};

/// The trace format version this build reads and writes.
pub const TRACE_VERSION: u32 = 1;
/// Largest trace artifact read from a registry: a start that touches a
/// million chunks stays well under it.
pub const MAX_TRACE_BYTES: u64 = 64 << 20;

/// The chunks an image's start read, in the order of first access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Format version.
    pub version: u32,
    /// The layers (blob digests), bottom first, that `accesses` index.
    pub layers: Vec<Digest>,
    /// First accesses, in order.
    pub accesses: Vec<Access>,
}

/// The first read of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Index into [`Trace::layers`].
    pub layer: u32,
    /// Index into the layer's chunk table.
    pub chunk: u32,
    /// The chunk's digest, so a trace for other layers cannot pass.
    pub digest: Digest,
    /// Milliseconds since the recording began.
    pub at_ms: u64,
    /// The file whose read touched it first (for people reading traces).
    pub path: String,
}

/// Why a trace cannot be used for an image.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not JSON of this format, or a version this build does not read.
    #[error("trace does not decode: {0}")]
    Malformed(String),
    /// The trace was recorded for other layers.
    #[error("trace is for layers {trace:?}, the image has {image:?}")]
    OtherImage {
        trace: Vec<Digest>,
        image: Vec<Digest>,
    },
    /// An access names a chunk the layer does not have.
    #[error("trace access {index} names chunk {chunk} of layer {layer}, which does not match the layer's TOC")]
    BadAccess {
        index: usize,
        layer: u32,
        chunk: u32,
    },
}

impl Trace {
    /// Parses a trace and checks its version.
    pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
        let trace: Trace =
            serde_json::from_slice(bytes).map_err(|e| TraceError::Malformed(e.to_string()))?;
        if trace.version != TRACE_VERSION {
            return Err(TraceError::Malformed(format!(
                "version {} (this build reads {TRACE_VERSION})",
                trace.version
            )));
        }
        Ok(trace)
    }

    /// Serializes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a trace serializes")
    }

    /// Checks the trace against the layers it would be replayed on: the
    /// same layers, and every access naming a chunk with that digest.
    pub fn validate(&self, layers: &[RemoteLayer]) -> Result<(), TraceError> {
        let image: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
        if image != self.layers {
            return Err(TraceError::OtherImage {
                trace: self.layers.clone(),
                image,
            });
        }
        for (index, access) in self.accesses.iter().enumerate() {
            let ok = layers
                .get(access.layer as usize)
                .and_then(|l| l.chunks.get(access.chunk as usize))
                .is_some_and(|c| c.digest == access.digest);
            if !ok {
                return Err(TraceError::BadAccess {
                    index,
                    layer: access.layer,
                    chunk: access.chunk,
                });
            }
        }
        Ok(())
    }
}
