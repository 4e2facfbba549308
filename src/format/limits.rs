//! Bounds on what a layer's metadata may declare, checked before anything
//! it declares is allocated or looped over.
//!
//! A TOC comes from whoever built the image. Without bounds, a few
//! megabytes of it can ask a node for terabytes (a chunk claiming 4 GiB, a
//! million files each spanning a million chunks) or an hour of CPU. Every
//! count and size a reader takes from a footer or a TOC is compared with
//! these limits first; the defaults are far above what real layers need
//! (a full Debian with every package is ~300,000 entries).
//!
//! The memory a TOC's decoding may take is stated, not hoped for: at most
//! `max_toc_bytes` for the decompressed TOC, `max_decode_bytes` for the
//! tables decoded from it (charged before each table is allocated), then
//! `max_entries` entries and `max_extents` extents for the result.

use super::{Chunk, FormatError};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The `[limits]` section of the node configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest TOC frame (compressed, as stored in the blob) a reader
    /// fetches or reads.
    pub max_toc_frame_bytes: u64,
    /// Largest TOC once decompressed.
    pub max_toc_bytes: u64,
    /// Most memory the TOC's decoded tables may take, beyond the
    /// decompressed bytes themselves.
    pub max_decode_bytes: u64,
    /// Most entries (files, directories, links, …) in one layer.
    pub max_entries: u64,
    /// Most content chunks in one layer.
    pub max_chunks: u64,
    /// Most extents (runs of a file in a chunk), all files together.
    pub max_extents: u64,
    /// Longest uncompressed chunk. The converter cuts chunks of at most
    /// 4 × its chunk size (1 MiB by default) and packs of about its pack
    /// size, so 16 MiB leaves room for any option it accepts.
    pub max_chunk_bytes: u32,
    /// Longest path or link target, in bytes (Linux's PATH_MAX).
    pub max_path_bytes: u32,
    /// Most extended attributes on one entry.
    pub max_xattrs_per_entry: u32,
    /// Longest extended attribute value (Linux's XATTR_SIZE_MAX).
    pub max_xattr_value_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_toc_frame_bytes: 64 << 20,
            max_toc_bytes: 256 << 20,
            max_decode_bytes: 1 << 30,
            max_entries: 1 << 21,
            max_chunks: 1 << 22,
            max_extents: 1 << 23,
            max_chunk_bytes: 16 << 20,
            max_path_bytes: 4096,
            max_xattrs_per_entry: 128,
            max_xattr_value_bytes: 64 << 10,
        }
    }
}

static NODE_LIMITS: OnceLock<Limits> = OnceLock::new();

impl Limits {
    /// Makes `limits` the ones every layer opened by this process is held
    /// to (from the node configuration). The first call wins; later calls
    /// with other limits are refused, so no layer is opened under two.
    pub fn install(limits: Limits) -> Result<(), FormatError> {
        let installed = NODE_LIMITS.get_or_init(|| limits.clone());
        if *installed != limits {
            return Err(FormatError::Limit(
                "format limits were already set differently in this process".into(),
            ));
        }
        Ok(())
    }

    /// The limits this process holds layers to: installed from the
    /// configuration, or the defaults.
    pub fn node() -> &'static Limits {
        NODE_LIMITS.get_or_init(Limits::default)
    }

    /// Checks that the limits themselves make sense, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("max_toc_frame_bytes", self.max_toc_frame_bytes),
            ("max_toc_bytes", self.max_toc_bytes),
            ("max_decode_bytes", self.max_decode_bytes),
            ("max_entries", self.max_entries),
            ("max_chunks", self.max_chunks),
            ("max_extents", self.max_extents),
            ("max_chunk_bytes", u64::from(self.max_chunk_bytes)),
            ("max_path_bytes", u64::from(self.max_path_bytes)),
        ];
        match fields.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("limits.{name} must be above 0")),
            None => Ok(()),
        }
    }

    /// The longest a chunk's zstd frame may be: its content at the worst
    /// expansion zstd allows (raw blocks), with headers.
    pub fn max_frame_bytes(&self) -> u64 {
        let len = u64::from(self.max_chunk_bytes);
        len + len / 128 + 1024
    }
}

/// Refuses the first chunk longer than `limits.max_chunk_bytes`.
pub(super) fn check_chunk_lengths(chunks: &[Chunk], limits: &Limits) -> Result<(), FormatError> {
    match chunks
        .iter()
        .enumerate()
        .find(|(_, c)| c.len > limits.max_chunk_bytes)
    {
        Some((i, c)) => Err(over(
            &format!("chunk {i}'s length"),
            u64::from(c.len),
            u64::from(limits.max_chunk_bytes),
            "max_chunk_bytes",
        )),
        None => Ok(()),
    }
}

/// An error for a declared count or size over its limit.
pub(super) fn over(what: &str, declared: u64, limit: u64, key: &str) -> FormatError {
    FormatError::Limit(format!(
        "{what} is {declared}, over the limit of {limit} (limits.{key})"
    ))
}
