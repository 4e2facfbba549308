//! Crafted TOCs and footers, each named after what it tries, refused by
//! the reader with an error naming what was wrong and within a stated
//! allocation: this test binary counts every byte it allocates, so "the
//! decoder does not allocate more than a bound" is measured, not assumed.
//!
//! The hostile TOCs are written in the wire encoding directly (the columns
//! below mirror `src/format/wire.rs`), as an attacker would write them:
//! loci's own encoder could not produce them without materialising them.

use loci::digest::Digest;
use loci::format::{
    convert_layer, decode_toc, read_toc, verify_layer, ConvertOptions, EntryKind, Footer,
    FormatError, Limits, Toc, Xattr, FORMAT_VERSION,
};
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Counts live bytes and their peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Tests share the counters: one measures at a time.
static MEASURING: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at
/// once beyond what was live when it began.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The TOC's wire columns, in the order `src/format/wire.rs` writes them.
#[derive(Serialize, Default)]
struct Wire {
    version: u32,
    chunk_gaps: Vec<u64>,
    chunk_compressed: Vec<u32>,
    chunk_lens: Vec<u32>,
    path_shared: Vec<u32>,
    path_suffixes: Vec<Vec<u8>>,
    kinds: Vec<EntryKind>,
    modes: Vec<u32>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    sizes: Vec<u64>,
    mtimes: Vec<i64>,
    links: Vec<Option<Vec<u8>>>,
    xattrs: Vec<Vec<Xattr>>,
    devices: Vec<(u32, u32)>,
    content_chunk_delta: Vec<u32>,
    content_offset: Vec<u32>,
    chunk_digests: Vec<[u8; 32]>,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            version: FORMAT_VERSION,
            ..Wire::default()
        }
    }

    /// Adds `n` chunks of `len` bytes, each frame `compressed` long, back to
    /// back, with distinct digests.
    fn chunks(mut self, n: usize, len: u32, compressed: u32) -> Wire {
        for i in self.chunk_gaps.len()..self.chunk_gaps.len() + n {
            self.chunk_gaps.push(0);
            self.chunk_compressed.push(compressed);
            self.chunk_lens.push(len);
            self.chunk_digests
                .push(Digest::of(&(i as u64).to_le_bytes()).0);
        }
        self
    }

    /// Adds an entry; a file with content starts `delta` chunks after the
    /// previous file's first chunk.
    fn entry(mut self, path: &str, kind: EntryKind, size: u64, mode: u32, delta: u32) -> Wire {
        self.path_shared.push(0);
        self.path_suffixes.push(path.as_bytes().to_vec());
        self.kinds.push(kind);
        self.modes.push(mode);
        self.uids.push(0);
        self.gids.push(0);
        self.sizes.push(size);
        self.mtimes.push(0);
        self.links.push(None);
        self.xattrs.push(Vec::new());
        self.devices.push((0, 0));
        if kind == EntryKind::File && size > 0 {
            self.content_chunk_delta.push(delta);
            self.content_offset.push(0);
        }
        self
    }

    /// Where the chunk frames end: the TOC's offset in the blob.
    fn data_end(&self) -> u64 {
        self.chunk_compressed.iter().map(|&c| u64::from(c)).sum()
    }

    /// The TOC frame and the footer that locates it, as a blob's tail.
    fn frame(&self) -> (Vec<u8>, Footer) {
        toc_frame(&postcard::to_stdvec(self).unwrap(), self.data_end())
    }

    fn decode(&self, limits: &Limits) -> Result<Toc, FormatError> {
        let (frame, footer) = self.frame();
        decode_toc(&frame, &footer, None, limits)
    }
}

/// An encoded TOC in its skippable frame, and the footer that puts it at
/// `data_end`.
fn toc_frame(encoded: &[u8], data_end: u64) -> (Vec<u8>, Footer) {
    let compressed = zstd::bulk::compress(encoded, 3).unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    frame.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    frame.extend_from_slice(&compressed);
    let footer = Footer {
        version: FORMAT_VERSION,
        toc_offset: data_end,
        toc_length: frame.len() as u64,
        toc_uncompressed_len: encoded.len() as u64,
    };
    (frame, footer)
}

fn limit_error(result: Result<loci::format::Toc, FormatError>) -> String {
    match result {
        Err(e @ FormatError::Limit(_)) => e.to_string(),
        Err(other) => panic!("refused, but not for a limit: {other}"),
        Ok(toc) => panic!("accepted a TOC of {} entries", toc.entries.len()),
    }
}

fn malformed_error(result: Result<loci::format::Toc, FormatError>) -> String {
    match result {
        Err(e @ FormatError::MalformedToc(_)) => e.to_string(),
        Err(other) => panic!("refused, but not as malformed: {other}"),
        Ok(toc) => panic!("accepted a TOC of {} entries", toc.entries.len()),
    }
}

/// 60,000 chunks and 60,000 files that each span all of them: a TOC of
/// about 3 MB whose extents would number 3.6 billion (43 GB). The decoder
/// stops at `max_extents` and, with the defaults, allocates no more than
/// the stated bound: the decompressed TOC, its columns, and the extents
/// allowed.
#[test]
fn a_toc_whose_extents_multiply_is_refused_within_a_stated_allocation() {
    let n = 60_000;
    let mut wire = Wire::new().chunks(n, 1 << 20, 16);
    for i in 0..n {
        wire = wire.entry(
            &format!("f{i}"),
            EntryKind::File,
            (n as u64) << 20,
            0o644,
            0,
        );
    }
    let (frame, footer) = wire.frame();
    assert!(
        frame.len() < 4 << 20,
        "the crafted TOC is {} bytes",
        frame.len()
    );
    let limits = Limits::default();
    let (result, peak) = peak_allocation(|| decode_toc(&frame, &footer, None, &limits));
    let error = limit_error(result);
    assert!(error.contains("limits.max_extents"), "{error}");
    // The stated bound: decompressed TOC + decoded columns (at most
    // max_decode_bytes, here far less as the TOC is small) + entries built
    // + max_extents extents of 12 bytes. Measured, it is the columns and
    // the extents: well under 200 MiB for 8 Mi extents.
    let bound = footer.toc_uncompressed_len as usize * 2
        + n * 2 * 200
        + limits.max_extents as usize * 12 * 2;
    assert!(
        peak < bound,
        "decoding allocated {peak} bytes at its peak, over the stated {bound}"
    );
    eprintln!(
        "extent bomb: {} byte TOC frame, refused after a peak of {peak} bytes",
        frame.len()
    );
}

/// Millions of entries with empty paths cost a byte each on the wire and
/// 24 in memory per column: the decode budget is charged before each
/// column is allocated, so a small budget stops it before it grows.
#[test]
fn a_toc_of_millions_of_empty_entries_stops_at_the_decode_budget() {
    let mut wire = Wire::new();
    let n = 2_000_000;
    wire.path_shared = vec![0; n];
    wire.path_suffixes = vec![Vec::new(); n];
    wire.kinds = vec![EntryKind::Dir; n];
    let (frame, footer) = wire.frame();
    let limits = Limits {
        max_decode_bytes: 16 << 20,
        ..Limits::default()
    };
    let (result, peak) = peak_allocation(|| decode_toc(&frame, &footer, None, &limits));
    let error = limit_error(result);
    assert!(error.contains("max_decode_bytes"), "{error}");
    let bound = footer.toc_uncompressed_len as usize + 2 * (16 << 20);
    assert!(peak < bound, "peak {peak} over {bound}");
}

#[test]
fn a_chunk_claiming_4_gib_is_refused() {
    let wire = Wire::new().chunks(1, u32::MAX, 64).entry(
        "big",
        EntryKind::File,
        u64::from(u32::MAX),
        0o644,
        0,
    );
    let (result, peak) = peak_allocation(|| wire.decode(&Limits::default()));
    let error = limit_error(result);
    assert!(
        error.contains("chunk 0's length") && error.contains("max_chunk_bytes"),
        "{error}"
    );
    assert!(peak < 1 << 20, "peak {peak}");
}

#[test]
fn a_chunk_frame_longer_than_any_chunk_can_compress_to_is_refused() {
    let wire = Wire::new()
        .chunks(1, 1024, u32::MAX)
        .entry("f", EntryKind::File, 1024, 0o644, 0);
    let error = limit_error(wire.decode(&Limits::default()));
    assert!(error.contains("frame length"), "{error}");
}

#[test]
fn two_chunks_with_one_digest_and_two_lengths_are_refused() {
    let mut wire = Wire::new()
        .chunks(2, 4096, 100)
        .entry("a", EntryKind::File, 4096, 0o644, 0)
        .entry("b", EntryKind::File, 4096, 0o644, 1);
    wire.chunk_digests[1] = wire.chunk_digests[0];
    wire.chunk_lens[1] = 8192;
    wire.sizes[1] = 8192;
    let error = malformed_error(wire.decode(&Limits::default()));
    assert!(
        error.contains("chunk 1 has digest") && error.contains("length 4096"),
        "{error}"
    );
}

#[test]
fn a_path_twice_is_refused() {
    let wire = Wire::new().entry("etc", EntryKind::Dir, 0, 0o755, 0).entry(
        "etc",
        EntryKind::Dir,
        0,
        0o4755,
        0,
    );
    let error = malformed_error(wire.decode(&Limits::default()));
    assert!(error.contains("\"etc\" appears twice"), "{error}");
}

#[test]
fn chunks_that_overlap_or_lie_outside_the_blob_are_refused() {
    let mut wire = Wire::new()
        .chunks(2, 4096, 100)
        .entry("a", EntryKind::File, 8192, 0o644, 0);
    // The second chunk starts 50 bytes before the first ends.
    wire.chunk_gaps[1] = u64::MAX - 49;
    let error = malformed_error(wire.decode(&Limits::default()));
    assert!(error.contains("chunk 1"), "{error}");

    let wire = Wire::new()
        .chunks(1, 4096, 100)
        .entry("a", EntryKind::File, 4096, 0o644, 0);
    let (frame, mut footer) = wire.frame();
    footer.toc_offset = 50; // the chunk would end past the data
    let error = malformed_error(decode_toc(&frame, &footer, None, &Limits::default()));
    assert!(error.contains("chunk 0"), "{error}");
}

#[test]
fn a_file_whose_content_runs_past_the_chunk_table_is_refused() {
    let wire = Wire::new()
        .chunks(1, 4096, 100)
        .entry("a", EntryKind::File, 4097, 0o644, 0);
    let error = malformed_error(wire.decode(&Limits::default()));
    assert!(error.contains("runs past the chunk table"), "{error}");
}

#[test]
fn an_oversized_toc_tail_is_refused_before_it_is_fetched() {
    // A footer whose TOC spans 1 GiB of the blob: refused from the
    // footer alone, so no reader asks for (or allocates) that tail.
    let blob_size = (1u64 << 30) + 4096;
    let footer = Footer {
        version: FORMAT_VERSION,
        toc_offset: 4096,
        toc_length: 1 << 30,
        toc_uncompressed_len: 1 << 20,
    };
    let limits = Limits::default();
    let error = Footer::parse(&footer.to_bytes(), blob_size + 48, &limits)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("limits.max_toc_frame_bytes"), "{error}");

    // A TOC claiming 4 GiB once decompressed (a zstd bomb) is refused
    // before decompression.
    let wire = Wire::new();
    let (frame, mut footer) = wire.frame();
    footer.toc_uncompressed_len = 4 << 30;
    let (result, peak) = peak_allocation(|| decode_toc(&frame, &footer, None, &limits));
    let error = limit_error(result);
    assert!(error.contains("limits.max_toc_bytes"), "{error}");
    assert!(peak < 1 << 20, "peak {peak}");
}

#[test]
fn a_toc_that_decompresses_to_less_than_its_footer_says_is_refused() {
    let wire = Wire::new().entry("a", EntryKind::Dir, 0, 0o755, 0);
    let (frame, mut footer) = wire.frame();
    footer.toc_uncompressed_len += 1000;
    let error = malformed_error(decode_toc(&frame, &footer, None, &Limits::default()));
    assert!(error.contains("differs from the footer"), "{error}");
}

#[test]
fn paths_links_and_xattrs_over_their_limits_are_refused() {
    let long = "a".repeat(5000);
    let error = limit_error(
        Wire::new()
            .entry(&long, EntryKind::Dir, 0, 0o755, 0)
            .decode(&Limits::default()),
    );
    assert!(error.contains("max_path_bytes"), "{error}");

    let mut wire = Wire::new().entry("l", EntryKind::Symlink, 0, 0o777, 0);
    wire.links[0] = Some(vec![b'x'; 5000]);
    let error = limit_error(wire.decode(&Limits::default()));
    assert!(error.contains("link target length"), "{error}");

    let mut wire = Wire::new().entry("x", EntryKind::Dir, 0, 0o755, 0);
    wire.xattrs[0] = vec![Xattr {
        name: "user.big".into(),
        value: vec![0; 70_000],
    }];
    let error = limit_error(wire.decode(&Limits::default()));
    assert!(error.contains("max_xattr_value_bytes"), "{error}");

    let mut wire = Wire::new().entry("x", EntryKind::Dir, 0, 0o755, 0);
    wire.xattrs[0] = (0..200)
        .map(|i| Xattr {
            name: format!("user.{i}"),
            value: Vec::new(),
        })
        .collect();
    let error = limit_error(wire.decode(&Limits::default()));
    assert!(error.contains("max_xattrs_per_entry"), "{error}");
}

#[test]
fn a_path_with_a_nul_or_escaping_the_root_is_refused() {
    for path in ["a\0b", "../etc", "/etc", "a/./b"] {
        let result = Wire::new()
            .entry(path, EntryKind::Dir, 0, 0o755, 0)
            .decode(&Limits::default());
        assert!(
            matches!(result, Err(FormatError::UnsafePath { .. })),
            "{path:?}: {result:?}"
        );
    }
}

#[test]
fn a_well_formed_crafted_toc_is_accepted() {
    // The control: the same builder, within limits, decodes.
    let toc = Wire::new()
        .chunks(2, 4096, 100)
        .entry("a", EntryKind::File, 6000, 0o644, 0)
        .entry("d", EntryKind::Dir, 0, 0o755, 0)
        .decode(&Limits::default())
        .unwrap();
    assert_eq!(toc.entries[0].extents.len(), 2);
    assert_eq!(toc.entries[0].extents[1].len, 6000 - 4096);
}

/// A converted layer of two 64 KiB files of random bytes (each in chunks
/// of its own), a shell script and a directory.
fn honest_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut seed = 1u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    };
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(if data.is_empty() && path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        tar.append_data(&mut header, path, data).unwrap();
    };
    add("bin/", 0o755, b"");
    add("bin/tool", 0o755, b"#!/bin/sh\necho hi\n");
    add("a.bin", 0o644, &random(64 << 10));
    add("b.bin", 0o644, &random(64 << 10));
    let tar = tar.into_inner().unwrap();
    let mut blob = Vec::new();
    let options = ConvertOptions {
        chunk_size: 16 << 10,
        ..ConvertOptions::default()
    };
    convert_layer(&tar[..], &mut blob, &options, &|_| {}).unwrap();
    blob
}

/// `blob` with its TOC replaced by what `edit` makes of it: the layer an
/// attacker publishes, with the annotation (TOC digest) to match.
fn with_edited_toc(blob: &[u8], edit: impl FnOnce(&mut Toc)) -> (Vec<u8>, Digest) {
    let (footer, mut toc) = read_toc(&mut Cursor::new(blob), blob.len() as u64, None).unwrap();
    edit(&mut toc);
    let (frame, footer) = toc_frame(&toc.encode(), footer.toc_offset);
    let mut lying = blob[..footer.toc_offset as usize].to_vec();
    lying.extend_from_slice(&frame);
    lying.extend_from_slice(&footer.to_bytes());
    (lying, Digest::of(&frame))
}

fn verify(blob: &[u8], toc: &Digest) -> Result<(), FormatError> {
    verify_layer(&mut Cursor::new(blob), blob.len() as u64, Some(toc), None).map(|_| ())
}

#[test]
fn a_toc_that_lies_about_a_setuid_bit_is_refused_naming_the_entry() {
    let blob = honest_layer();
    let (honest, digest) = with_edited_toc(&blob, |_| {});
    verify(&honest, &digest).expect("the control verifies");
    let (lying, digest) = with_edited_toc(&blob, |toc| {
        let tool = toc
            .entries
            .iter_mut()
            .find(|e| e.path == b"bin/tool")
            .unwrap();
        tool.mode |= 0o4000;
    });
    let error = verify(&lying, &digest).unwrap_err().to_string();
    assert!(
        error.contains("\"bin/tool\"") && error.contains("mode: the TOC says 4755, the tar 755"),
        "{error}"
    );
}

#[test]
fn a_toc_that_lies_about_a_files_bytes_is_refused_naming_the_entry() {
    let blob = honest_layer();
    // b.bin is said to be a.bin's bytes: every chunk still matches its
    // digest, so only the tar can tell.
    let (lying, digest) = with_edited_toc(&blob, |toc| {
        let a = toc
            .entries
            .iter()
            .find(|e| e.path == b"a.bin")
            .unwrap()
            .extents
            .clone();
        let b = toc.entries.iter_mut().find(|e| e.path == b"b.bin").unwrap();
        b.extents = a;
    });
    let error = verify(&lying, &digest).unwrap_err().to_string();
    assert!(
        error.contains("\"b.bin\"") && error.contains("are not where the tar has them"),
        "{error}"
    );
}

#[test]
fn a_toc_that_hides_or_adds_an_entry_is_refused() {
    let blob = honest_layer();
    let (lying, digest) = with_edited_toc(&blob, |toc| {
        toc.entries.retain(|e| e.path != b"bin/tool");
    });
    let error = verify(&lying, &digest).unwrap_err().to_string();
    assert!(error.contains("path: the TOC says"), "{error}");
    let (lying, digest) = with_edited_toc(&blob, |toc| {
        let mut extra = toc.entries[0].clone();
        extra.path = b"etc".to_vec();
        toc.entries.push(extra);
    });
    let error = verify(&lying, &digest).unwrap_err().to_string();
    assert!(
        error.contains("the TOC has 5 entries, the tar 4"),
        "{error}"
    );
}
