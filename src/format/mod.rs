//! loci's layer format: an ordinary `tar+zstd` OCI layer, cut so that it can
//! be read one chunk at a time.
//!
//! A converted blob is, in order:
//! 1. independent zstd frames whose concatenated output is the original
//!    layer tar byte for byte: runs of tar headers and padding ("meta"
//!    frames) alternate with file content cut into content-defined chunks,
//!    one frame per chunk;
//! 2. the table of contents ([`Toc`]), compressed, inside a zstd skippable
//!    frame;
//! 3. a fixed-size [`Footer`] (itself a skippable frame) locating the TOC.
//!
//! Every zstd decoder, and so every runtime, sees an ordinary layer; a lazy
//! reader fetches the footer, then the TOC, then only the chunks a read needs.

mod chunker;
mod error;
mod footer;
mod frames;
mod limits;
mod reader;
mod reorder;
mod signature;
mod toc;
mod verify;
mod wire;
mod writer;

pub use error::FormatError;
pub use footer::{Footer, FOOTER_SIZE, FORMAT_VERSION};
pub use limits::Limits;
pub use reader::{decode_chunk, decode_toc};
pub use reorder::{reorder_tar, ReorderSummary};
pub use signature::{LayerIdentity, PublicKey, SignatureError, SigningKey, TrustedKeys};
pub use toc::{Chunk, EntryKind, Extent, Toc, TocEntry, Xattr};
pub use verify::{read_toc, verify_layer, VerifyReport};
pub use writer::{
    convert_layer, ConvertOptions, LayerSummary, DEFAULT_CHUNK_SIZE, DEFAULT_HOT_LEVEL,
    DEFAULT_LEVEL, DEFAULT_PACK_SIZE,
};

/// Annotation keys on converted layer descriptors. They start with
/// `containerd.io/snapshot/` because containerd passes only that prefix on
/// to remote snapshotters as labels.
pub mod annotations {
    /// What every loci annotation starts with.
    pub const LOCI_PREFIX: &str = "containerd.io/snapshot/loci.";
    /// Digest of the TOC skippable frame (as stored in the blob).
    pub const TOC_DIGEST: &str = "containerd.io/snapshot/loci.toc-digest";
    /// Offset of the TOC skippable frame in the blob, so a reader can fetch
    /// it in one range request without reading the footer first.
    pub const TOC_OFFSET: &str = "containerd.io/snapshot/loci.toc-offset";
    /// Length in bytes of the TOC skippable frame.
    pub const TOC_LENGTH: &str = "containerd.io/snapshot/loci.toc-length";
    /// Format version of the layer.
    pub const VERSION: &str = "containerd.io/snapshot/loci.version";
    /// The uncompressed layer digest (diff_id), so the snapshotter can
    /// verify and name a layer without the image config.
    pub const UNCOMPRESSED: &str = "containerd.io/snapshot/loci.uncompressed";
    /// A signature over (blob digest, TOC digest, diff_id) by the key that
    /// converted the layer (see [`super::SigningKey`]).
    pub const SIGNATURE: &str = "containerd.io/snapshot/loci.signature";
}

/// zstd skippable frame magic numbers are 0x184D2A50..=0x184D2A5F.
const SKIPPABLE_MAGIC_TOC: u32 = 0x184D_2A5E;
const SKIPPABLE_MAGIC_FOOTER: u32 = 0x184D_2A5F;
/// Bytes of a skippable frame header: magic and payload length, both LE u32.
const SKIPPABLE_HEADER: usize = 8;

/// Wraps `payload` in a zstd skippable frame with the given magic.
fn skippable_frame(magic: u32, payload: &[u8]) -> Result<Vec<u8>, FormatError> {
    let len = u32::try_from(payload.len()).map_err(|_| FormatError::TocTooLarge {
        size: payload.len() as u64,
    })?;
    let mut out = Vec::with_capacity(SKIPPABLE_HEADER + payload.len());
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}
