//! The format's promises, checked on generated layers: the converted blob
//! decompresses to the input tar byte for byte, every chunk decodes and
//! verifies on its own, the TOC describes every entry, and conversion is
//! deterministic.

use loci::format::{
    convert_layer, decode_chunk, read_toc, verify_layer, ConvertOptions, EntryKind,
};
use std::io::{Cursor, Read};

/// A small deterministic generator (xorshift), enough for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize, compressible: bool) -> Vec<u8> {
        (0..n)
            .map(|i| {
                if compressible {
                    (i % 251) as u8 ^ (i / 4096) as u8
                } else {
                    self.next() as u8
                }
            })
            .collect()
    }
}

/// A tar with files of many sizes, dirs, links, a long name and xattrs.
fn sample_tar(seed: u64) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut rng = Rng(seed);
    let mut builder = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "./d/", std::io::empty())
        .unwrap();
    let sizes = [0usize, 1, 100, 4095, 65536, 300_000, 1 << 20, 3 << 20];
    for (i, size) in sizes.iter().enumerate() {
        let data = rng.bytes(*size, i % 2 == 0);
        let name = format!("d/file-{i}-{}", "x".repeat(if i == 3 { 150 } else { 1 }));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000 + i as u64);
        builder.append_data(&mut h, &name, &data[..]).unwrap();
        files.push((name, data));
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder
        .append_link(&mut link, "d/link", "file-0-x")
        .unwrap();
    let mut hard = tar::Header::new_gnu();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    builder
        .append_link(&mut hard, "d/hard", "d/file-1-x")
        .unwrap();
    builder
        .append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    let mut x = tar::Header::new_ustar();
    x.set_mode(0o600);
    x.set_size(3);
    builder
        .append_data(&mut x, "d/with-xattr", &b"abc"[..])
        .unwrap();
    files.push(("d/with-xattr".into(), b"abc".to_vec()));
    (builder.into_inner().unwrap(), files)
}

fn convert(tar: &[u8], chunk_size: u32) -> (Vec<u8>, loci::format::LayerSummary) {
    let mut out = Vec::new();
    let opts = ConvertOptions {
        chunk_size,
        pack_size: 64 * 1024,
        level: 3,
        ..ConvertOptions::default()
    };
    let summary = convert_layer(tar, &mut out, &opts, &|_| {}).unwrap();
    (out, summary)
}

#[test]
fn blob_decompresses_to_the_input_tar_byte_for_byte() {
    for (seed, chunk) in [(1, 4096), (2, 64 * 1024), (3, 1 << 20)] {
        let (tar, _) = sample_tar(seed);
        let (blob, summary) = convert(&tar, chunk);
        let mut plain = Vec::new();
        zstd::stream::read::Decoder::new(&blob[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert!(
            plain == tar,
            "chunk size {chunk}: stream differs from the input tar"
        );
        assert_eq!(summary.diff_id, loci::digest::Digest::of(&tar));
        assert_eq!(summary.uncompressed_size, tar.len() as u64);
        assert_eq!(summary.blob_size, blob.len() as u64);
    }
}

#[test]
fn the_zstd_cli_reads_the_blob_as_an_ordinary_layer() {
    if common_zstd().is_none() {
        eprintln!("SKIP the_zstd_cli_reads_the_blob_as_an_ordinary_layer: zstd CLI not installed");
        return;
    }
    let (tar, _) = sample_tar(9);
    let (blob, _) = convert(&tar, 16 * 1024);
    let mut child = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &blob).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == tar);
}

fn common_zstd() -> Option<()> {
    std::process::Command::new("zstd")
        .arg("--version")
        .output()
        .ok()
        .map(|_| ())
}

#[test]
fn every_chunk_decodes_alone_and_files_reassemble() {
    let (tar, files) = sample_tar(4);
    let (blob, summary) = convert(&tar, 8 * 1024);
    let (_, toc) = read_toc(
        &mut Cursor::new(&blob),
        blob.len() as u64,
        Some(&summary.toc_digest),
    )
    .unwrap();
    for (name, data) in &files {
        let entry = toc
            .entries
            .iter()
            .find(|e| e.path == name.as_bytes())
            .unwrap_or_else(|| panic!("{name} not in TOC"));
        assert_eq!(entry.kind, EntryKind::File);
        assert_eq!(entry.size, data.len() as u64);
        let mut rebuilt = Vec::new();
        for extent in &entry.extents {
            let chunk = &toc.chunks[extent.chunk as usize];
            let start = chunk.blob_offset as usize;
            let frame = &blob[start..start + chunk.compressed_len as usize];
            let plain = decode_chunk(frame, chunk).unwrap();
            let run = extent.offset as usize..(extent.offset + extent.len) as usize;
            rebuilt.extend_from_slice(&plain[run]);
        }
        assert!(
            rebuilt == *data,
            "{name}: extents do not reassemble the file"
        );
    }
    let big = toc.entries.iter().find(|e| e.size == 3 << 20).unwrap();
    let n = big.extents.len();
    assert!(n > 50, "a 3 MiB file in 8 KiB chunks has {n} extents");
    // Small files share packs: fewer chunks than files with content.
    let small: Vec<_> = toc
        .entries
        .iter()
        .filter(|e| e.size > 0 && e.size < 2048)
        .collect();
    assert!(small.len() >= 3);
    assert!(small.iter().all(|e| e.extents.len() == 1));
    assert!(
        small
            .windows(2)
            .any(|w| w[0].extents[0].chunk == w[1].extents[0].chunk),
        "small files were not packed together"
    );
    let kinds: Vec<_> = toc
        .entries
        .iter()
        .map(|e| (e.display_path(), e.kind))
        .collect();
    assert!(kinds.contains(&("d".into(), EntryKind::Dir)), "{kinds:?}");
    let link = toc.entries.iter().find(|e| e.path == b"d/link").unwrap();
    assert_eq!(link.link.as_deref(), Some(&b"file-0-x"[..]));
    let hard = toc.entries.iter().find(|e| e.path == b"d/hard").unwrap();
    assert_eq!(
        (hard.kind, hard.link.as_deref()),
        (EntryKind::Hardlink, Some(&b"d/file-1-x"[..]))
    );
    let x = toc
        .entries
        .iter()
        .find(|e| e.path == b"d/with-xattr")
        .unwrap();
    assert_eq!(x.xattrs.len(), 1);
    assert_eq!(
        (x.xattrs[0].name.as_str(), &x.xattrs[0].value[..]),
        ("user.k", &b"v"[..])
    );
}

#[test]
fn conversion_is_deterministic() {
    let (tar, _) = sample_tar(5);
    let (a, sa) = convert(&tar, 16 * 1024);
    let (b, sb) = convert(&tar, 16 * 1024);
    assert_eq!(sa.blob_digest, sb.blob_digest);
    assert!(a == b);
    let (_, other) = convert(&tar, 64 * 1024);
    assert_ne!(
        sa.blob_digest, other.blob_digest,
        "chunk size should change the blob"
    );
}

#[test]
fn chunk_sizes_outside_the_readers_limits_are_refused() {
    let (tar, _) = sample_tar(5);
    for chunk_size in [0, 255, (4 << 20) + 1, 64 << 20] {
        let options = ConvertOptions {
            chunk_size,
            ..ConvertOptions::default()
        };
        let err = convert_layer(Cursor::new(&tar), Vec::new(), &options, &|_| {}).unwrap_err();
        assert!(
            err.to_string().contains("chunk size"),
            "{chunk_size}: {err}"
        );
    }
}

#[test]
fn verify_accepts_a_good_blob_and_checks_the_diff_id() {
    let (tar, _) = sample_tar(6);
    let (blob, summary) = convert(&tar, 32 * 1024);
    let size = blob.len() as u64;
    let (_, report) = verify_layer(
        &mut Cursor::new(&blob),
        size,
        Some(&summary.toc_digest),
        Some(&summary.diff_id),
    )
    .unwrap();
    assert_eq!(report.uncompressed_size, tar.len() as u64);
    assert!(report.chunks >= 8);
    let wrong = loci::digest::Digest::of(b"not the layer");
    let err = verify_layer(&mut Cursor::new(&blob), size, None, Some(&wrong)).unwrap_err();
    assert!(
        err.to_string()
            .contains("decompressed layer digest mismatch"),
        "{err}"
    );
}

#[test]
fn toc_stays_small_for_many_files() {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..10_000 {
        let data = format!("file number {i}\n");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder
            .append_data(
                &mut h,
                format!("usr/lib/python3/dist-packages/pkg{}/module_{i}.py", i % 100),
                data.as_bytes(),
            )
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let (_, summary) = convert(&tar, 64 * 1024);
    let per_1000 = summary.toc_length as f64 / 10.0;
    eprintln!(
        "TOC: {} bytes for 10,000 files ({per_1000:.0} bytes per 1,000 files)",
        summary.toc_length
    );
    // Small files share packs, so digests are per pack, not per file; a
    // 44,000-file layer must stay well under a megabyte of TOC.
    assert!(
        per_1000 < 10_000.0,
        "TOC too large: {per_1000} bytes per 1,000 files"
    );
}

#[test]
fn cuts_give_the_bytes_a_start_reads_chunks_of_their_own() {
    let (tar, files) = sample_tar(5);
    let (name, data) = files.iter().find(|(_, d)| d.len() == 3 << 20).unwrap();
    // (cuts asked for, boundaries expected among the file's extents)
    let cases: &[(&[u64], &[u64])] = &[
        (
            &[4096, 8192, 2_000_000, 2_000_001],
            &[4096, 8192, 2_000_000, 2_000_001],
        ),
        // Out of the file, or out of order: ignored.
        (&[0, 500_000, 100, 4 << 20], &[500_000]),
        (&[], &[]),
    ];
    for (cuts, want) in cases {
        let opts = ConvertOptions {
            cuts: [(name.as_bytes().to_vec(), cuts.to_vec())].into(),
            ..ConvertOptions::default()
        };
        let mut blob = Vec::new();
        let summary = convert_layer(&tar[..], &mut blob, &opts, &|_| {}).unwrap();
        assert_eq!(summary.diff_id, loci::digest::Digest::of(&tar), "{cuts:?}");
        let (_, toc) = read_toc(&mut Cursor::new(&blob), blob.len() as u64, None).unwrap();
        let entry = toc
            .entries
            .iter()
            .find(|e| e.path == name.as_bytes())
            .unwrap();
        let mut boundaries = Vec::new();
        let mut at = 0u64;
        let mut rebuilt = Vec::new();
        for extent in &entry.extents {
            let chunk = &toc.chunks[extent.chunk as usize];
            assert_eq!(extent.offset, 0, "a cut file's chunks are its own");
            let start = chunk.blob_offset as usize;
            let plain =
                decode_chunk(&blob[start..start + chunk.compressed_len as usize], chunk).unwrap();
            rebuilt.extend_from_slice(&plain[..extent.len as usize]);
            at += u64::from(extent.len);
            boundaries.push(at);
        }
        assert!(
            rebuilt == *data,
            "{cuts:?}: extents do not reassemble the file"
        );
        for cut in *want {
            assert!(boundaries.contains(cut), "{cuts:?}: no chunk ends at {cut}");
        }
        // Between cuts, content-defined chunks as usual: a 3 MiB file in
        // 256 KiB chunks has several whatever the cuts.
        assert!(
            boundaries.len() >= 4 + want.len(),
            "{cuts:?}: {boundaries:?}"
        );
    }
}

/// The chunks between a pair of cuts (the bytes a trace reads) and the
/// packs holding a file with cuts are compressed at the hot level; every
/// other frame is as without it, and the layer's content is the same.
#[test]
fn the_bytes_a_trace_reads_are_compressed_at_the_hot_level() {
    let (tar, files) = sample_tar(5);
    let big = &files.iter().find(|(_, d)| d.len() == 1 << 20).unwrap().0;
    let small = &files.iter().find(|(_, d)| d.len() == 100).unwrap().0;
    let (from, to) = (256u64 << 10, 768u64 << 10);
    let convert = |hot_level: i32| {
        let opts = ConvertOptions {
            cuts: [
                (big.as_bytes().to_vec(), vec![from, to]),
                (small.as_bytes().to_vec(), vec![0, 100]),
            ]
            .into(),
            hot_level,
            ..ConvertOptions::default()
        };
        let mut blob = Vec::new();
        let summary = convert_layer(&tar[..], &mut blob, &opts, &|_| {}).unwrap();
        assert_eq!(summary.diff_id, loci::digest::Digest::of(&tar));
        let (_, toc) = read_toc(&mut Cursor::new(&blob), blob.len() as u64, None).unwrap();
        for chunk in toc.chunks.iter() {
            let start = chunk.blob_offset as usize;
            decode_chunk(&blob[start..start + chunk.compressed_len as usize], chunk).unwrap();
        }
        toc
    };
    let (plain, hot) = (convert(ConvertOptions::default().level), convert(19));
    assert_eq!(plain.chunks.len(), hot.chunks.len(), "the same chunks");
    let extents = |toc: &loci::format::Toc, path: &str| {
        let entry = toc
            .entries
            .iter()
            .find(|e| e.path == path.as_bytes())
            .unwrap();
        let mut at = 0u64;
        entry
            .extents
            .iter()
            .map(|e| {
                at += u64::from(e.len);
                (at - u64::from(e.len), e.chunk as usize)
            })
            .collect::<Vec<_>>()
    };
    let (mut hot_plain, mut hot_hot, mut inside) = (0u64, 0u64, 0);
    for (start, chunk) in extents(&hot, big) {
        let (p, h) = (&plain.chunks[chunk], &hot.chunks[chunk]);
        assert_eq!(p.digest, h.digest, "chunk at {start}: the same content");
        if (from..to).contains(&start) {
            inside += 1;
            hot_plain += u64::from(p.compressed_len);
            hot_hot += u64::from(h.compressed_len);
        } else {
            assert_eq!(
                p.compressed_len, h.compressed_len,
                "chunk at {start} is not read"
            );
        }
    }
    assert!(
        inside >= 1,
        "the cuts give the read range chunks of its own"
    );
    assert!(
        hot_hot < hot_plain,
        "read range: {hot_hot} bytes at 19, {hot_plain} at 3"
    );
    let (_, pack) = extents(&hot, small)[0];
    assert!(hot.chunks[pack].compressed_len <= plain.chunks[pack].compressed_len);
}
