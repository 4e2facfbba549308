//! A trace-ordered layer: the files a start reads moved to the front of
//! the layer tar, in the order the start first reads them, so a traced
//! prefetch is a few large range reads and small files are packed with the
//! files read with them.
//!
//! Entries are moved whole, byte for byte (extension headers, header,
//! content, padding), so each keeps every attribute; a moved file's
//! ancestor directories move with it, ahead of it, so parents still come
//! before children. The tar's order changes and so does its diff_id: the
//! image's config must list the new one (the converter rewrites it), and
//! the image stays valid for any runtime.

use super::toc::normalize_path;
use super::FormatError;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};

/// What reordering did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReorderSummary {
    /// Files moved to the front (not counting their directories).
    pub moved_files: usize,
    /// Directories moved ahead of them.
    pub moved_dirs: usize,
    /// Bytes of the tar at the front.
    pub moved_bytes: u64,
    /// Paths asked for that the tar has no regular file at.
    pub not_found: usize,
}

/// One entry's bytes in the tar.
struct Span {
    start: u64,
    end: u64,
}

/// Writes to `out` the tar read from `input` with the regular files at
/// `first` (TOC paths, in the order wanted) and their ancestor
/// directories moved to the front. A tar with a global PAX header (which
/// applies to the entries after it) is copied unchanged.
pub fn reorder_tar<R: Read + Seek, W: Write>(
    input: &mut R,
    mut out: W,
    first: &[Vec<u8>],
) -> Result<ReorderSummary, FormatError> {
    let (spans, index, files, dirs, global_headers) = scan(input)?;
    let total = input.seek(SeekFrom::End(0))?;
    let tail_start = spans.last().map_or(0, |s| s.end);
    let mut summary = ReorderSummary::default();
    if global_headers {
        tracing::warn!("the layer has a global PAX header: kept in tar order");
        copy_range(input, &mut out, 0, total)?;
        return Ok(summary);
    }
    let mut moved: Vec<usize> = Vec::new();
    let mut taken: HashSet<usize> = HashSet::new();
    for path in first {
        let Some(&i) = index.get(path.as_slice()).filter(|i| files.contains(i)) else {
            summary.not_found += 1;
            continue;
        };
        if taken.contains(&i) {
            continue;
        }
        let mut ancestors = Vec::new();
        let mut at = path.as_slice();
        loop {
            at = match at.iter().rposition(|&b| b == b'/') {
                Some(cut) => &at[..cut],
                None if !at.is_empty() => &b""[..],
                None => break,
            };
            if let Some(&d) = index.get(at).filter(|d| dirs.contains(d)) {
                ancestors.push(d);
            }
        }
        for &d in ancestors.iter().rev() {
            if taken.insert(d) {
                moved.push(d);
                summary.moved_dirs += 1;
            }
        }
        taken.insert(i);
        moved.push(i);
        summary.moved_files += 1;
    }
    for &i in &moved {
        copy_range(input, &mut out, spans[i].start, spans[i].end)?;
        summary.moved_bytes += spans[i].end - spans[i].start;
    }
    for (i, span) in spans.iter().enumerate() {
        if !taken.contains(&i) {
            copy_range(input, &mut out, span.start, span.end)?;
        }
    }
    copy_range(input, &mut out, tail_start, total)?;
    out.flush()?;
    Ok(summary)
}

type Scan = (
    Vec<Span>,
    HashMap<Vec<u8>, usize>,
    HashSet<usize>,
    HashSet<usize>,
    bool,
);

/// Every entry's span, the entries by normalized path, which are regular
/// files and which directories, and whether a global PAX header is there.
fn scan<R: Read + Seek>(input: &mut R) -> Result<Scan, FormatError> {
    use tar::EntryType as T;
    input.seek(SeekFrom::Start(0))?;
    let mut archive = tar::Archive::new(&mut *input);
    let mut spans = Vec::new();
    let mut index = HashMap::new();
    let (mut files, mut dirs) = (HashSet::new(), HashSet::new());
    let mut global_headers = false;
    let mut previous_end = 0u64;
    let tar_error = |offset: u64, e: io::Error| FormatError::MalformedTar {
        offset,
        reason: e.to_string(),
    };
    for item in archive.entries_with_seek().map_err(|e| tar_error(0, e))? {
        let item = item.map_err(|e| tar_error(previous_end, e))?;
        let kind = item.header().entry_type();
        let stored = match kind {
            T::GNUSparse => item
                .header()
                .entry_size()
                .map_err(|e| tar_error(item.raw_header_position(), e))?,
            _ => item.size(),
        };
        let end = item.raw_file_position() + stored.div_ceil(512) * 512;
        let i = spans.len();
        spans.push(Span {
            start: previous_end,
            end,
        });
        previous_end = end;
        match kind {
            T::XGlobalHeader => global_headers = true,
            T::Regular | T::Continuous | T::Directory => {
                let path = normalize_path(&item.path_bytes())?;
                if kind == T::Directory {
                    dirs.insert(i);
                } else {
                    files.insert(i);
                }
                index.insert(path, i);
            }
            _ => {}
        }
    }
    Ok((spans, index, files, dirs, global_headers))
}

fn copy_range<R: Read + Seek, W: Write>(
    input: &mut R,
    out: &mut W,
    start: u64,
    end: u64,
) -> io::Result<()> {
    input.seek(SeekFrom::Start(start))?;
    let copied = io::copy(&mut (&mut *input).take(end - start), out)?;
    if copied != end - start {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the tar ends inside bytes {start}..{end}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            match data {
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn listing(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, data)
            })
            .collect()
    }

    #[test]
    fn traced_files_come_first_in_trace_order_with_their_directories() {
        let long = format!("usr/lib/{}/deep.so", "x".repeat(150));
        let tar = tar_of(&[
            ("./", None),
            ("etc/", None),
            ("etc/a.conf", Some(b"a")),
            ("etc/b.conf", Some(b"b")),
            ("usr/", None),
            ("usr/lib/", None),
            (&format!("usr/lib/{}/", "x".repeat(150)), None),
            (&long, Some(&[7u8; 3000])),
            ("usr/bin/", None),
            ("usr/bin/tool", Some(b"#!/bin/sh\n")),
        ]);
        let first = [
            long.as_bytes().to_vec(),
            b"etc/b.conf".to_vec(),
            b"etc/missing".to_vec(),
            b"usr/lib".to_vec(), // a directory, not a file: not moved by itself
        ];
        let mut out = Vec::new();
        let summary = reorder_tar(&mut io::Cursor::new(&tar), &mut out, &first).unwrap();
        assert_eq!(
            summary,
            ReorderSummary {
                moved_files: 2,
                moved_dirs: 5,
                moved_bytes: summary.moved_bytes,
                not_found: 2,
            }
        );
        let got: Vec<String> = listing(&out).into_iter().map(|(p, _)| p).collect();
        let x_dir = format!("usr/lib/{}/", "x".repeat(150));
        let want = [
            "./",
            "usr/",
            "usr/lib/",
            &x_dir,
            &long,
            "etc/",
            "etc/b.conf",
            "etc/a.conf",
            "usr/bin/",
            "usr/bin/tool",
        ];
        assert_eq!(got, want);
        // Same entries, same bytes, same length: only the order changed.
        assert_eq!(out.len(), tar.len());
        let mut before = listing(&tar);
        let mut after = listing(&out);
        before.sort();
        after.sort();
        assert_eq!(before, after);
    }

    #[test]
    fn nothing_asked_copies_the_tar_unchanged() {
        let tar = tar_of(&[("a", Some(b"1")), ("b/", None), ("b/c", Some(b"2"))]);
        let mut out = Vec::new();
        reorder_tar(&mut io::Cursor::new(&tar), &mut out, &[]).unwrap();
        assert_eq!(out, tar);
    }

    #[test]
    fn a_truncated_tar_is_refused() {
        let tar = tar_of(&[("a", Some(&[1u8; 2000])), ("b", Some(b"2"))]);
        let mut out = Vec::new();
        assert!(reorder_tar(
            &mut io::Cursor::new(&tar[..1200]),
            &mut out,
            &[b"b".to_vec()]
        )
        .is_err());
    }
}
