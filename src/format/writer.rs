//! Converting an ordinary layer tar into a loci blob.
//!
//! One thread walks the tar (with the `tar` crate, through a tap that keeps
//! every byte it reads) and cuts it into segments: runs of headers and
//! padding, and content-defined chunks of file content (FastCDC, see
//! [`super::chunker`]). Batches of segments go to a second thread that
//! compresses them in parallel (rayon) and writes the frames in order, so
//! the output is the same
//! whatever the thread count: conversion is deterministic.

use super::chunker::Chunker;
use super::toc::normalize_path;
use super::{
    annotations, skippable_frame, Chunk, EntryKind, Extent, Footer, FormatError, Limits, Toc,
    TocEntry, Xattr, FORMAT_VERSION, SKIPPABLE_MAGIC_TOC,
};
use crate::digest::{Digest, Hasher, HashingWriter};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::mpsc;

/// Default target chunk size. Chosen by measurement (benches/convert.rs):
/// smaller chunks cost conversion speed, TOC size and request count; larger
/// ones over-fetch on small reads of large files.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
/// Smallest target chunk size (FastCDC's least average).
pub const MIN_CHUNK_SIZE: u32 = 256;
/// Largest target chunk size: chunks reach four times it, which readers'
/// limits allow (see [`super::Limits`]).
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
/// Default zstd level for chunk frames. Level 2 rather than zstd's own 3:
/// on the bench's images it takes about 10 % less conversion CPU for
/// 2.5-3 % more bytes, and decompresses as fast. The bytes a traced start
/// reads are compressed harder anyway in trace-ordered layers
/// ([`DEFAULT_HOT_LEVEL`]).
pub const DEFAULT_LEVEL: i32 = 2;
/// Default size at which a pack of small files is closed.
pub const DEFAULT_PACK_SIZE: u32 = 64 * 1024;
/// Default zstd level of the chunks a trace reads (see
/// [`ConvertOptions::hot_level`]): on the JVM's hot 256 KiB pieces
/// (`libjvm.so`, `classes.jsa`) it makes 11 % fewer bytes than level 3, at
/// about 11 times the compression CPU for those bytes (level 16: 12 %, at
/// 22 times). Decompression costs the same.
pub const DEFAULT_HOT_LEVEL: i32 = 14;
/// zstd level for the TOC: it is small and read on every mount.
const TOC_LEVEL: i32 = 10;
/// Uncompressed bytes handed to the compressor at once.
const BATCH_BYTES: usize = 32 << 20;

/// How to cut and compress a layer.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Target (average) chunk size of large files' content-defined chunks;
    /// chunks range from a quarter to four times this.
    pub chunk_size: u32,
    /// Files smaller than a quarter of `chunk_size` (they would be one
    /// chunk anyway) are packed, with the tar headers between them, into
    /// shared chunks closed at about this size.
    pub pack_size: u32,
    /// zstd compression level of chunk frames.
    pub level: i32,
    /// Chunk boundaries forced at these byte offsets of these files (by
    /// TOC path; offsets sorted): a trace-ordered layer gives the bytes a
    /// start reads chunks of their own, so its traced prefetch fetches
    /// those bytes and not the rest of the chunks around them. Content
    /// between two cuts is chunked as any content is.
    pub cuts: HashMap<Vec<u8>, Vec<u64>>,
    /// zstd level of the chunks the cuts give the bytes a start reads (a
    /// file's content between a pair of cuts, and packs holding a file
    /// with cuts): every cold start fetches them, and the layer is
    /// compressed once.
    pub hot_level: i32,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            pack_size: DEFAULT_PACK_SIZE,
            level: DEFAULT_LEVEL,
            cuts: HashMap::new(),
            hot_level: DEFAULT_HOT_LEVEL,
        }
    }
}

/// What converting one layer produced.
#[derive(Clone, Debug)]
pub struct LayerSummary {
    /// Digest of the converted blob.
    pub blob_digest: Digest,
    /// Size of the converted blob.
    pub blob_size: u64,
    /// Digest of the uncompressed tar (unchanged by conversion).
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Digest of the TOC skippable frame.
    pub toc_digest: Digest,
    /// Offset of the TOC skippable frame in the blob.
    pub toc_offset: u64,
    /// Length of the TOC skippable frame.
    pub toc_length: u64,
    /// Number of TOC entries.
    pub entries: usize,
    /// Number of content chunks.
    pub chunks: usize,
}

impl LayerSummary {
    /// The annotations a converted layer descriptor carries.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (annotations::TOC_DIGEST.into(), self.toc_digest.to_string()),
            (annotations::TOC_OFFSET.into(), self.toc_offset.to_string()),
            (annotations::TOC_LENGTH.into(), self.toc_length.to_string()),
            (annotations::VERSION.into(), FORMAT_VERSION.to_string()),
            (annotations::UNCOMPRESSED.into(), self.diff_id.to_string()),
        ])
    }
}

/// Converts the uncompressed layer tar read from `tar` into a loci blob
/// written to `out`. `progress` is told how many input bytes were consumed
/// after each batch.
pub fn convert_layer<R: Read, W: Write + Send>(
    tar: R,
    out: W,
    opts: &ConvertOptions,
    progress: &dyn Fn(u64),
) -> Result<LayerSummary, FormatError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
        return Err(FormatError::Limit(format!(
            "chunk size {} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
            opts.chunk_size
        )));
    }
    let tap_state = Rc::new(RefCell::new(TapState::default()));
    let tap = Tap {
        inner: tar,
        state: tap_state.clone(),
    };
    let levels = (opts.level, opts.hot_level);
    let out = HashingWriter::new(out);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<Segment>>(1);
        let compressor = scope.spawn(move || compress_and_write(rx, out, levels));
        let mut cutter = Cutter {
            tap_state,
            pack_files: Vec::new(),
            pack_hot: false,
            batch: Vec::new(),
            batch_bytes: 0,
            chunk_block: Vec::new(),
            tx,
            progress,
        };
        let walked = cutter.walk(tap, opts);
        drop(cutter); // closes the channel so the compressor finishes
                      // The compressor's error comes first: when it fails, the walk only
                      // sees a closed channel.
        let (chunks, extents, out) = compressor.join().expect("compressor thread panicked")?;
        let (mut entries, diff_id, uncompressed_size) = walked?;
        for (entry, extent) in extents {
            entries[entry].extents.push(extent);
        }
        let toc = Toc {
            version: FORMAT_VERSION,
            chunks,
            entries,
        };
        finish_blob(out, toc, diff_id, uncompressed_size)
    })
}

/// Appends TOC and footer, and sums up.
fn finish_blob<W: Write>(
    mut out: HashingWriter<W>,
    toc: Toc,
    diff_id: Digest,
    uncompressed_size: u64,
) -> Result<LayerSummary, FormatError> {
    let toc_offset = out.written();
    // A layer every reader would refuse (a path twice in its tar, a chunk
    // over the limits) is refused here, naming what is wrong.
    toc.validate(toc_offset, Limits::node())?;
    let encoded = toc.encode();
    let compressed = zstd::bulk::compress(&encoded, TOC_LEVEL)?;
    let frame = skippable_frame(SKIPPABLE_MAGIC_TOC, &compressed)?;
    out.write_all(&frame)?;
    let footer = Footer {
        version: FORMAT_VERSION,
        toc_offset,
        toc_length: frame.len() as u64,
        toc_uncompressed_len: encoded.len() as u64,
    };
    out.write_all(&footer.to_bytes())?;
    out.flush()?;
    let (_, blob_digest, blob_size) = out.finish();
    Ok(LayerSummary {
        blob_digest,
        blob_size,
        diff_id,
        uncompressed_size,
        toc_digest: Digest::of(&frame),
        toc_offset,
        toc_length: frame.len() as u64,
        entries: toc.entries.len(),
        chunks: toc.chunks.len(),
    })
}

/// A piece of the tar that becomes one zstd frame.
struct Segment {
    data: Vec<u8>,
    /// Whether the frame holds file content (a chunk in the TOC) or only
    /// tar headers and padding (never read lazily).
    is_chunk: bool,
    /// The file content in it: (TOC entry, offset in segment, length).
    files: Vec<(usize, u32, u32)>,
    /// Bytes a trace reads (compressed at the hot level).
    hot: bool,
}

/// What the tap has seen: every byte is hashed (diff_id) and counted; bytes
/// are kept only while `recording` (headers and padding, not file content,
/// which the chunker reads itself).
#[derive(Default)]
struct TapState {
    offset: u64,
    recording: bool,
    kept: Vec<u8>,
    hasher: Hasher,
}

/// A reader that reports what passes through it to a shared [`TapState`].
struct Tap<R> {
    inner: R,
    state: Rc<RefCell<TapState>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.borrow_mut();
        state.offset += n as u64;
        state.hasher.update(&buf[..n]);
        if state.recording {
            state.kept.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Walks the tar, building TOC entries and handing segments on in order.
struct Cutter<'p> {
    tap_state: Rc<RefCell<TapState>>,
    /// Small files recorded in the kept bytes since the last flush.
    pack_files: Vec<(usize, u32, u32)>,
    /// Whether one of them is read by the trace the cuts come from.
    pack_hot: bool,
    batch: Vec<Segment>,
    batch_bytes: usize,
    /// The chunker's read buffer, kept from file to file.
    chunk_block: Vec<u8>,
    tx: mpsc::SyncSender<Vec<Segment>>,
    progress: &'p dyn Fn(u64),
}

impl Cutter<'_> {
    fn walk<R: Read>(
        &mut self,
        tap: Tap<R>,
        opts: &ConvertOptions,
    ) -> Result<(Vec<TocEntry>, Digest, u64), FormatError> {
        self.tap_state.borrow_mut().recording = true;
        let mut archive = tar::Archive::new(tap);
        let mut entries = Vec::new();
        let tar_error = |offset: u64, err: io::Error| FormatError::MalformedTar {
            offset,
            reason: err.to_string(),
        };
        for item in archive.entries().map_err(|e| tar_error(0, e))? {
            let offset = self.tap_state.borrow().offset;
            let mut item = item.map_err(|e| tar_error(offset, e))?;
            let Some(entry) = toc_entry(&mut item)? else {
                continue;
            };
            let index = entries.len();
            let size = entry.size;
            let is_content = entry.kind == EntryKind::File && size > 0;
            let cuts = opts.cuts.get(&entry.path).map_or(&[][..], Vec::as_slice);
            entries.push(entry);
            if is_content {
                if item.raw_file_position() != offset {
                    return Err(FormatError::MalformedTar {
                        offset,
                        reason: "entry data does not follow its header".into(),
                    });
                }
                if size < u64::from(opts.chunk_size / 4) {
                    self.pack_hot |= !cuts.is_empty();
                    self.pack_small_file(&mut item, index, size)?;
                } else {
                    self.flush_kept()?;
                    self.tap_state.borrow_mut().recording = false;
                    self.cut_content(&mut item, index, size, cuts, opts)?;
                    self.tap_state.borrow_mut().recording = true;
                }
            }
            if self.tap_state.borrow().kept.len() >= opts.pack_size as usize {
                self.flush_kept()?;
            }
        }
        // The tar crate stops at the end-of-archive marker; the rest of the
        // stream (the second zero block, record padding) belongs to the
        // layer too.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())?;
        self.flush_kept()?;
        self.send_batch()?;
        let state = std::mem::take(&mut *self.tap_state.borrow_mut());
        Ok((entries, state.hasher.finish(), state.offset))
    }

    /// Cuts one file's content into content-defined chunks, with a chunk
    /// boundary at each of `cuts` (offsets in the file; those outside it
    /// or out of order are ignored).
    fn cut_content(
        &mut self,
        content: &mut impl Read,
        entry: usize,
        size: u64,
        cuts: &[u64],
        opts: &ConvertOptions,
    ) -> Result<(), FormatError> {
        let mut seen = 0u64;
        // (length, hot): cuts come in pairs around the ranges a trace
        // reads, so a piece is hot when an odd number of cuts precede it.
        let mut pieces = Vec::with_capacity(cuts.len() + 1);
        let mut at = 0u64;
        for &cut in cuts.iter().chain([&size]) {
            if cut > at && cut <= size {
                pieces.push((cut - at, cuts.partition_point(|&c| c <= at) % 2 == 1));
                at = cut;
            }
        }
        let mut block = std::mem::take(&mut self.chunk_block);
        let mut cut = Ok(());
        for (piece, hot) in pieces {
            let mut chunker =
                Chunker::new((&mut *content).take(piece), opts.chunk_size, &mut block);
            cut = loop {
                let data = match chunker.next_chunk() {
                    Ok(Some(data)) => data,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(FormatError::from(e)),
                };
                seen += data.len() as u64;
                let pushed = self.push(Segment {
                    is_chunk: true,
                    files: vec![(entry, 0, data.len() as u32)],
                    data,
                    hot,
                });
                if pushed.is_err() {
                    break pushed;
                }
            };
            if cut.is_err() {
                break;
            }
        }
        self.chunk_block = block;
        cut?;
        if seen != size {
            let offset = self.tap_state.borrow().offset;
            return Err(FormatError::MalformedTar {
                offset,
                reason: format!("file content ends after {seen} of {size} bytes"),
            });
        }
        Ok(())
    }

    /// Reads a small file's content into the kept bytes, so that it lands
    /// in a pack with its neighbours.
    fn pack_small_file(
        &mut self,
        content: &mut impl Read,
        entry: usize,
        size: u64,
    ) -> Result<(), FormatError> {
        let offset_in_pack = self.tap_state.borrow().kept.len() as u32;
        let read = io::copy(content, &mut io::sink())?;
        if read != size {
            let offset = self.tap_state.borrow().offset;
            return Err(FormatError::MalformedTar {
                offset,
                reason: format!("file content ends after {read} of {size} bytes"),
            });
        }
        self.pack_files.push((entry, offset_in_pack, size as u32));
        Ok(())
    }

    /// Turns the kept bytes into a segment: a pack chunk if small files are
    /// in it, a headers-only frame otherwise.
    fn flush_kept(&mut self) -> Result<(), FormatError> {
        let kept = std::mem::take(&mut self.tap_state.borrow_mut().kept);
        if kept.is_empty() {
            return Ok(());
        }
        let files = std::mem::take(&mut self.pack_files);
        let hot = std::mem::take(&mut self.pack_hot);
        self.push(Segment {
            is_chunk: !files.is_empty(),
            files,
            data: kept,
            hot,
        })
    }

    fn push(&mut self, segment: Segment) -> Result<(), FormatError> {
        self.batch_bytes += segment.data.len();
        self.batch.push(segment);
        if self.batch_bytes >= BATCH_BYTES {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<(), FormatError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        (self.progress)(self.tap_state.borrow().offset);
        // A closed channel means the compressor failed; its error is
        // reported when it is joined.
        self.tx
            .send(batch)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressor stopped"))?;
        Ok(())
    }
}

thread_local! {
    /// Each compressing thread's zstd contexts, by level (a layer uses two
    /// at most: its own and the hot one): a context is made once per
    /// thread, not once per chunk (its allocation and reset cost about 3 %
    /// of a conversion). Output is the same either way.
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

/// One zstd frame of `data` at `level`, with this thread's context.
fn compress_frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSORS.with(|contexts| {
        let mut contexts = contexts.borrow_mut();
        let at = match contexts.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                if contexts.len() >= 2 {
                    contexts.remove(0);
                }
                contexts.push((level, zstd::bulk::Compressor::new(level)?));
                contexts.len() - 1
            }
        };
        contexts[at].1.compress(data)
    })
}

/// Builds the TOC entry of one tar entry, or None for entry types that carry
/// no filesystem object (global PAX headers, volume labels).
pub(super) fn toc_entry<R: Read>(
    item: &mut tar::Entry<'_, R>,
) -> Result<Option<TocEntry>, FormatError> {
    use tar::EntryType as T;
    let header = item.header().clone();
    let header_offset = item.raw_header_position();
    let malformed = |reason: String| FormatError::MalformedTar {
        offset: header_offset,
        reason,
    };
    let kind = match header.entry_type() {
        T::Regular | T::Continuous => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        T::Char => EntryKind::CharDevice,
        T::Block => EntryKind::BlockDevice,
        T::Fifo => EntryKind::Fifo,
        T::GNUSparse => return Err(malformed("sparse files are not supported".into())),
        _ => return Ok(None),
    };
    // An all-NUL numeric field reads as 0, as in Go's archive/tar (and so
    // in containerd's unpacker); anything else unparsable is refused.
    let old = header.as_old();
    let field = |r: io::Result<u64>, raw: &[u8], what: &str| match r {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0) => Ok(0),
        Err(e) => Err(malformed(format!("{what}: {e}"))),
    };
    let mode = field(header.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
    let mut uid = field(header.uid(), &old.uid, "uid")?;
    let mut gid = field(header.gid(), &old.gid, "gid")?;
    let mut mtime = field(header.mtime(), &old.mtime, "mtime")? as i64;
    let (dev_major, dev_minor) = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => (
            header
                .device_major()
                .map_err(|e| malformed(format!("device major: {e}")))?
                .unwrap_or(0),
            header
                .device_minor()
                .map_err(|e| malformed(format!("device minor: {e}")))?
                .unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = item
        .pax_extensions()
        .map_err(|e| malformed(e.to_string()))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| malformed(format!("PAX record: {e}")))?;
            let key = ext
                .key()
                .map_err(|_| malformed("non-UTF-8 PAX key".into()))?;
            let number = || -> Result<i64, FormatError> {
                let text = ext.value().map_err(|_| malformed(format!("PAX {key}")))?;
                let whole = text.split('.').next().unwrap_or("");
                whole
                    .parse()
                    .map_err(|_| malformed(format!("PAX {key} value {text:?}")))
            };
            match key {
                "uid" => uid = number()? as u64,
                "gid" => gid = number()? as u64,
                "mtime" => mtime = number()?,
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.push(Xattr {
                            name: name.to_string(),
                            value: ext.value_bytes().to_vec(),
                        });
                    }
                }
            }
        }
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    let path = normalize_path(&item.path_bytes())?;
    let link = match kind {
        EntryKind::Symlink => Some(link_bytes(item)?),
        EntryKind::Hardlink => Some(normalize_path(&link_bytes(item)?)?),
        _ => None,
    };
    let size = if kind == EntryKind::File {
        item.size()
    } else {
        0
    };
    Ok(Some(TocEntry {
        path,
        kind,
        mode,
        uid: u32::try_from(uid).map_err(|_| malformed(format!("uid {uid} out of range")))?,
        gid: u32::try_from(gid).map_err(|_| malformed(format!("gid {gid} out of range")))?,
        size,
        mtime,
        link,
        xattrs,
        dev_major,
        dev_minor,
        extents: Vec::new(),
    }))
}

fn link_bytes<R: Read>(item: &tar::Entry<'_, R>) -> Result<Vec<u8>, FormatError> {
    item.link_name_bytes()
        .map(|l| l.into_owned())
        .ok_or_else(|| FormatError::MalformedTar {
            offset: item.raw_header_position(),
            reason: "link entry without a target".into(),
        })
}

/// What the compressor produced: the chunk table, each file's extents as
/// (TOC entry, extent) in blob order, and the writer.
type Written<W> = (Vec<Chunk>, Vec<(usize, Extent)>, HashingWriter<W>);

/// Compresses batches in parallel and writes their frames in order.
fn compress_and_write<W: Write>(
    rx: mpsc::Receiver<Vec<Segment>>,
    mut out: HashingWriter<W>,
    (level, hot_level): (i32, i32),
) -> Result<Written<W>, FormatError> {
    let mut chunks = Vec::new();
    let mut extents = Vec::new();
    for batch in rx {
        let frames: Vec<(Vec<u8>, Option<Digest>)> = batch
            .par_iter()
            .map(|segment| {
                let level = if segment.hot { hot_level } else { level };
                let frame = compress_frame(&segment.data, level)?;
                let digest = segment.is_chunk.then(|| Digest::of(&segment.data));
                Ok((frame, digest))
            })
            .collect::<io::Result<_>>()?;
        for (segment, (frame, digest)) in batch.iter().zip(frames) {
            let blob_offset = out.written();
            out.write_all(&frame)?;
            let Some(digest) = digest else { continue };
            let chunk = chunks.len() as u32;
            chunks.push(Chunk {
                blob_offset,
                compressed_len: frame.len() as u32,
                len: segment.data.len() as u32,
                digest,
            });
            for &(entry, offset, len) in &segment.files {
                extents.push((entry, Extent { chunk, offset, len }));
            }
        }
    }
    Ok((chunks, extents, out))
}
