//! Every way a layer can be refused, each naming what was wrong.

use crate::digest::Digest;

/// Why a layer could not be converted, parsed or verified.
///
/// Callers add the layer's identity (digest, reference) as context; these
/// variants say what inside the layer was wrong.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The blob is shorter than its footer, or than where the footer says
    /// the TOC is.
    #[error("blob is truncated: need {needed} bytes, have {actual}")]
    Truncated { needed: u64, actual: u64 },
    /// The last bytes are not a loci footer: not a converted layer, or cut.
    #[error("no loci footer at the end of the blob (not a loci layer, or truncated)")]
    NoFooter,
    /// The footer names a format version this build does not read.
    #[error("unsupported loci format version {found} (this build reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The footer's TOC location lies outside the blob.
    #[error("footer points outside the blob: TOC at {offset}+{length}, blob data ends at {limit}")]
    FooterOutOfBounds {
        offset: u64,
        length: u64,
        limit: u64,
    },
    /// The TOC bytes do not hash to the digest the image declared.
    #[error("TOC digest mismatch: expected {expected}, got {actual}")]
    TocDigestMismatch { expected: Digest, actual: Digest },
    /// The TOC is not decodable or not self-consistent.
    #[error("malformed TOC: {0}")]
    MalformedToc(String),
    /// A declared count or size is over the node's limits (see
    /// [`super::Limits`]): refused before anything is allocated for it.
    #[error("layer metadata over limits: {0}")]
    Limit(String),
    /// The TOC would not fit in a skippable frame.
    #[error("TOC too large: {size} bytes")]
    TocTooLarge { size: u64 },
    /// A chunk's bytes do not hash to the digest in the TOC.
    #[error(
        "chunk {expected} at blob offset {blob_offset} is corrupt: its bytes hash to {actual}"
    )]
    ChunkDigestMismatch {
        blob_offset: u64,
        expected: Digest,
        actual: Digest,
    },
    /// A chunk frame does not decompress to the length the TOC says.
    #[error("chunk {digest} at blob offset {blob_offset} is corrupt: {reason}")]
    ChunkCorrupt {
        blob_offset: u64,
        digest: Digest,
        reason: String,
    },
    /// The layer's data frames do not decompress.
    #[error("layer stream is corrupt at uncompressed byte {offset}: {reason}")]
    StreamCorrupt { offset: u64, reason: String },
    /// The input tar is malformed.
    #[error("malformed tar at byte {offset}: {reason}")]
    MalformedTar { offset: u64, reason: String },
    /// A tar entry's path (or hardlink target) would escape the layer root.
    #[error("tar entry path {path:?} escapes the layer root")]
    UnsafePath { path: String },
    /// The TOC says something the layer's tar does not.
    #[error("the TOC disagrees with the tar at {path:?}: {what}")]
    TocDisagrees { path: String, what: String },
    /// The decompressed layer does not hash to its diff_id.
    #[error(
        "decompressed layer digest mismatch: its diff_id is {expected}, the stream is {actual}"
    )]
    DiffIdMismatch { expected: Digest, actual: Digest },
    /// Reading or writing the layer failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}
