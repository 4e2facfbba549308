//! The table of contents: everything a filesystem needs to serve a layer
//! without reading its tar, and where each chunk of file content lives.

use super::limits::{check_chunk_lengths, over, Limits};
use super::FormatError;
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The table of contents of one converted layer.
///
/// Encoded with postcard (varints, no field names) and compressed with zstd;
/// `version` lets later builds change the encoding. Small files share
/// chunks (packs) so that a layer of tens of thousands of small files needs
/// a digest per pack, not per file: kilobytes of TOC, not megabytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    /// Encoding version of this TOC (see [`super::FORMAT_VERSION`]).
    pub version: u32,
    /// Every chunk frame of the blob that holds file content, in blob order.
    pub chunks: Vec<Chunk>,
    /// Entries in tar order, whiteout files included as they are in the tar.
    pub entries: Vec<TocEntry>,
}

/// What kind of filesystem object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file; its content is in `extents`.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; `link` is its target, as written.
    Symlink,
    /// A hard link to an earlier entry; `link` is that entry's path.
    Hardlink,
    /// A character device (`dev_major`/`dev_minor`).
    CharDevice,
    /// A block device (`dev_major`/`dev_minor`).
    BlockDevice,
    /// A named pipe.
    Fifo,
}

/// One extended attribute, as carried in PAX `SCHILY.xattr.*` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment` or `security.capability`.
    pub name: String,
    /// Raw value.
    pub value: Vec<u8>,
}

/// One tar entry's metadata and, for regular files, where its content is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// Path relative to the layer root, without leading `./` or `/` and
    /// without a trailing slash; the root itself is empty. Raw bytes: tar
    /// names need not be UTF-8.
    pub path: Vec<u8>,
    /// Object type.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (no file type bits).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Content size for regular files, 0 otherwise.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Symlink target or hardlink target path.
    pub link: Option<Vec<u8>>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Device major number for device nodes.
    pub dev_major: u32,
    /// Device minor number for device nodes.
    pub dev_minor: u32,
    /// Where the file's content is, in file order; the extents' lengths
    /// add up to `size`.
    pub extents: Vec<Extent>,
}

/// One chunk: an independent zstd frame in the blob. A chunk holds a piece
/// of one large file, or several small files with the tar headers between
/// them (a pack).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset of the chunk's zstd frame in the blob.
    pub blob_offset: u64,
    /// Length of the zstd frame in the blob.
    pub compressed_len: u32,
    /// Length of the uncompressed chunk.
    pub len: u32,
    /// SHA-256 of the uncompressed chunk: its identity in every cache.
    pub digest: Digest,
}

/// A run of a file's content inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Index of the chunk in [`Toc::chunks`].
    pub chunk: u32,
    /// Offset of the run in the chunk's uncompressed bytes.
    pub offset: u32,
    /// Length of the run.
    pub len: u32,
}

impl TocEntry {
    /// The path as text, lossily, for messages and listings.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

impl Toc {
    /// Serializes (columnar postcard, see `wire`) without compression.
    pub fn encode(&self) -> Vec<u8> {
        super::wire::encode(self)
    }

    /// Parses what [`Toc::encode`] wrote, within `limits` (not yet
    /// validated: see [`Toc::validate`]).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Toc, FormatError> {
        super::wire::decode(bytes, limits)
    }

    /// Checks the invariants a reader relies on, so a malformed or hostile
    /// TOC is refused before any path or offset in it is used.
    ///
    /// `data_end` is where the chunk frames end in the blob (the TOC offset).
    /// Besides each entry's and chunk's own checks: chunks must be in blob
    /// order without overlap, one digest must not name two lengths, and no
    /// path may appear twice.
    pub fn validate(&self, data_end: u64, limits: &Limits) -> Result<(), FormatError> {
        let bad = |msg: String| Err(FormatError::MalformedToc(msg));
        if self.version != super::FORMAT_VERSION {
            return bad(format!("TOC version {} is not supported", self.version));
        }
        self.check_counts(limits)?;
        let mut lengths: HashMap<Digest, u32> = HashMap::with_capacity(self.chunks.len());
        let mut previous_end = 0u64;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if u64::from(chunk.compressed_len) > limits.max_frame_bytes() {
                return Err(over(
                    &format!("chunk {index}'s frame length"),
                    u64::from(chunk.compressed_len),
                    limits.max_frame_bytes(),
                    "max_chunk_bytes",
                ));
            }
            if let Some(other) = lengths.insert(chunk.digest, chunk.len) {
                if other != chunk.len {
                    return bad(format!(
                        "chunk {index} has digest {} with length {}, an earlier chunk has it with length {other}",
                        chunk.digest, chunk.len
                    ));
                }
            }
            let end = chunk
                .blob_offset
                .checked_add(u64::from(chunk.compressed_len));
            if chunk.blob_offset < previous_end
                || end.is_none_or(|end| end > data_end)
                || chunk.len == 0
            {
                return bad(format!(
                    "chunk {index} at blob offset {} is out of place",
                    chunk.blob_offset
                ));
            }
            previous_end = end.unwrap_or(u64::MAX);
        }
        let mut paths: HashSet<&[u8]> = HashSet::with_capacity(self.entries.len());
        for entry in &self.entries {
            check_path(&entry.path)?;
            if !paths.insert(&entry.path) {
                return bad(format!("{:?} appears twice", entry.display_path()));
            }
            check_entry_limits(entry, limits)?;
            match (entry.kind, &entry.link) {
                (EntryKind::Hardlink, Some(target)) => check_path(target)?,
                (EntryKind::Hardlink | EntryKind::Symlink, None) => {
                    return bad(format!("{:?} has no link target", entry.display_path()))
                }
                _ => {}
            }
            if entry.kind != EntryKind::File && !entry.extents.is_empty() {
                return bad(format!("non-file {:?} has content", entry.display_path()));
            }
            let mut covered = 0u64;
            for extent in &entry.extents {
                let fits = self.chunks.get(extent.chunk as usize).is_some_and(|chunk| {
                    extent.len > 0
                        && u64::from(extent.offset) + u64::from(extent.len) <= u64::from(chunk.len)
                });
                if !fits {
                    return bad(format!(
                        "extent of {:?} at file offset {covered} lies outside its chunk",
                        entry.display_path()
                    ));
                }
                covered += u64::from(extent.len);
            }
            if entry.kind == EntryKind::File && covered != entry.size {
                return bad(format!(
                    "extents of {:?} cover {covered} bytes, file has {}",
                    entry.display_path(),
                    entry.size
                ));
            }
        }
        Ok(())
    }
}

impl Toc {
    /// The counts a TOC built in memory (not decoded) must also keep to.
    fn check_counts(&self, limits: &Limits) -> Result<(), FormatError> {
        let extents: u64 = self.entries.iter().map(|e| e.extents.len() as u64).sum();
        for (what, count, limit, key) in [
            (
                "the entry count",
                self.entries.len() as u64,
                limits.max_entries,
                "max_entries",
            ),
            (
                "the chunk count",
                self.chunks.len() as u64,
                limits.max_chunks,
                "max_chunks",
            ),
            (
                "the extent count",
                extents,
                limits.max_extents,
                "max_extents",
            ),
        ] {
            if count > limit {
                return Err(over(what, count, limit, key));
            }
        }
        check_chunk_lengths(&self.chunks, limits)
    }
}

/// An entry's path, link target and extended attributes against `limits`.
fn check_entry_limits(entry: &TocEntry, limits: &Limits) -> Result<(), FormatError> {
    let path = entry.display_path();
    let max_path = u64::from(limits.max_path_bytes);
    if entry.path.len() as u64 > max_path {
        return Err(over(
            &format!("the path length of {path:?}"),
            entry.path.len() as u64,
            max_path,
            "max_path_bytes",
        ));
    }
    if let Some(link) = &entry.link {
        if link.len() as u64 > max_path {
            return Err(over(
                &format!("the link target length of {path:?}"),
                link.len() as u64,
                max_path,
                "max_path_bytes",
            ));
        }
    }
    let max_xattrs = u64::from(limits.max_xattrs_per_entry);
    if entry.xattrs.len() as u64 > max_xattrs {
        return Err(over(
            &format!("the xattr count of {path:?}"),
            entry.xattrs.len() as u64,
            max_xattrs,
            "max_xattrs_per_entry",
        ));
    }
    let max_value = u64::from(limits.max_xattr_value_bytes);
    for xattr in &entry.xattrs {
        if xattr.name.is_empty() || xattr.name.len() > 255 || xattr.name.contains('\0') {
            return Err(FormatError::MalformedToc(format!(
                "{path:?} has an xattr with a bad name"
            )));
        }
        if xattr.value.len() as u64 > max_value {
            return Err(over(
                &format!("xattr {} of {path:?}", xattr.name),
                xattr.value.len() as u64,
                max_value,
                "max_xattr_value_bytes",
            ));
        }
    }
    Ok(())
}

/// Refuses a path that is absolute or has `..`, `.`, empty or NUL-holding
/// components, so no path from a layer can name anything outside the layer
/// root.
pub(crate) fn check_path(path: &[u8]) -> Result<(), FormatError> {
    let unsafe_path = || FormatError::UnsafePath {
        path: String::from_utf8_lossy(path).into_owned(),
    };
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with(b"/") {
        return Err(unsafe_path());
    }
    for component in path.split(|&b| b == b'/') {
        if component.is_empty() || component == b".." || component == b"." || component.contains(&0)
        {
            return Err(unsafe_path());
        }
    }
    Ok(())
}

/// Normalizes a tar path: strips `./` prefixes and a trailing slash, then
/// refuses it if it is absolute or climbs out of the root.
pub(crate) fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut path = raw;
    while let Some(rest) = path.strip_prefix(b"./") {
        path = rest;
    }
    if path == b"." || path == b"/" {
        path = b""; // the root itself, as umoci and others write it
    }
    while let Some(rest) = path.strip_suffix(b"/") {
        if rest.is_empty() {
            break;
        }
        path = rest;
    }
    check_path(path)?;
    Ok(path.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_leading_dot_and_trailing_slash() {
        assert_eq!(normalize_path(b"./usr/bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize_path(b"./").unwrap(), b"");
        assert_eq!(normalize_path(b"/").unwrap(), b"");
        assert_eq!(normalize_path(b"etc").unwrap(), b"etc");
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a/../../b", b"a//b"] {
            assert!(
                matches!(normalize_path(bad), Err(FormatError::UnsafePath { .. })),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
