//! What each fuzz target feeds to loci, shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, run with `cargo fuzz`) and by the test that
//! replays the committed corpora in CI (`tests/fuzz_corpus.rs`). Each
//! function takes arbitrary bytes, as they would arrive from an image or a
//! registry, and must return without panicking, whatever they are; where
//! loci accepts the input, the invariants a reader relies on are checked.

use loci::convert::Decompression;
use loci::format::{self, ConvertOptions, Footer, Limits, Toc};
use loci::image;
use loci::prefetch::Trace;
use loci::registry::Challenge;
use loci::snapshotter::admission::Admission;
use loci::snapshotter::lazy::LazyRequest;
use std::collections::BTreeMap;
use std::io::{Cursor, Read};

/// Limits small enough that a fuzzer's inputs reach them.
fn small_limits() -> Limits {
    Limits {
        max_toc_frame_bytes: 1 << 20,
        max_toc_bytes: 4 << 20,
        max_decode_bytes: 16 << 20,
        max_entries: 10_000,
        max_chunks: 10_000,
        max_extents: 100_000,
        max_chunk_bytes: 1 << 20,
        ..Limits::default()
    }
}

/// The TOC's wire decoding and validation; an accepted TOC has no extent
/// outside its chunks and re-encodes to something that decodes the same.
pub fn toc(data: &[u8]) {
    let limits = small_limits();
    let Ok(toc) = Toc::decode(data, &limits) else {
        return;
    };
    let data_end = toc.chunks.last().map_or(0, |c| {
        c.blob_offset.saturating_add(u64::from(c.compressed_len))
    });
    if toc.validate(data_end, &limits).is_err() {
        return;
    }
    for entry in &toc.entries {
        for extent in &entry.extents {
            let chunk = &toc.chunks[extent.chunk as usize];
            assert!(u64::from(extent.offset) + u64::from(extent.len) <= u64::from(chunk.len));
        }
    }
    let again = Toc::decode(&toc.encode(), &limits).expect("a valid TOC re-encodes");
    assert_eq!(again, toc);
}

/// A blob's tail: the footer, then the TOC frame it locates.
pub fn footer(data: &[u8]) {
    let limits = small_limits();
    let Ok(footer) = Footer::parse(data, data.len() as u64, &limits) else {
        return;
    };
    let start = footer.toc_offset as usize;
    let frame = &data[start..start + footer.toc_length as usize];
    let _ = format::decode_toc(frame, &footer, None, &limits);
}

/// The converter on a layer of any compression (the first byte picks it);
/// a layer it accepts must read back and verify against its own TOC and
/// diff_id.
pub fn convert(data: &[u8]) {
    let Some((&kind, layer)) = data.split_first() else {
        return;
    };
    let decompression = match kind % 3 {
        0 => Decompression::None,
        1 => Decompression::Gzip,
        _ => Decompression::Zstd,
    };
    let Ok(reader) = decompression.reader(Cursor::new(layer)) else {
        return;
    };
    // Fuzzed gzip and zstd can expand without bound: the converter reads
    // what a real pull would, here capped for the fuzzer's sake.
    let reader = reader.take(64 << 20);
    let options = ConvertOptions {
        chunk_size: 4096,
        pack_size: 2048,
        level: 1,
        cuts: Default::default(),
        hot_level: 1,
    };
    let mut blob = Vec::new();
    let Ok(summary) = format::convert_layer(reader, &mut blob, &options, &|_| {}) else {
        return;
    };
    let (toc, report) = format::verify_layer(
        &mut Cursor::new(&blob),
        blob.len() as u64,
        Some(&summary.toc_digest),
        Some(&summary.diff_id),
    )
    .expect("a converted layer verifies");
    assert_eq!(toc.entries.len(), summary.entries);
    assert_eq!(report.uncompressed_size, summary.uncompressed_size);
}

/// Manifests, indexes and configs as a registry serves them: the input is
/// tried as each, and split at its first NUL as a manifest and its config.
pub fn manifest(data: &[u8]) {
    let _ = image::platform_manifest(data);
    let _ = image::config_of(data);
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (manifest, config) = data.split_at(split);
    let config = config.get(1..).unwrap_or_default();
    if let Ok(layers) = image::layers_of(manifest, config) {
        for layer in layers {
            let _ = loci::fetch::toc_location(&layer);
        }
    }
}

/// A `WWW-Authenticate` header.
pub fn www_authenticate(data: &[u8]) {
    if let Ok(header) = std::str::from_utf8(data) {
        let _ = Challenge::parse(header);
    }
}

/// A `Content-Range` answering a range to a blob's end: the first 8 bytes
/// are the range's start, the rest the header's value. A size it gives
/// must be past the start.
pub fn content_range(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let start = u64::from_le_bytes(data[..8].try_into().unwrap());
    if let Ok(value) = std::str::from_utf8(&data[8..]) {
        if let Some(size) = loci::registry::content_range_tail(value, start) {
            assert!(size > start, "{value:?} from {start}: size {size}");
        }
    }
}

/// containerd's hosts.toml, as loci reads it for a registry's mirrors,
/// CAs and client certificates.
pub fn hosts_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = loci::registry::hosts::parse_hosts_file(
            std::path::Path::new("/etc/containerd/certs.d/registry.example"),
            text,
        );
    }
}

/// Snapshot labels, one `key=value` a line (the last line the parent's
/// chain ID), through the lazy request and the node's admission check.
pub fn labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.lines().collect();
    let parent = lines.pop().unwrap_or_default();
    let labels: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(request) = LazyRequest::from_labels(&labels) {
        let _ = Admission::default().admit(&request, parent);
    }
}

/// A start trace artifact: a decoded one encodes back to itself, and
/// reads that pass their check are sorted and disjoint.
pub fn trace(data: &[u8]) {
    let Ok(trace) = Trace::decode(data) else {
        return;
    };
    assert_eq!(Trace::decode(&trace.encode()).unwrap(), trace);
    if trace.check_reads().is_ok() {
        for reads in &trace.reads {
            assert!(reads.ranges.windows(2).all(|w| w[0].1 < w[1].0));
        }
    }
    trace_pack(&trace);
}

/// A trace's pack index, checked against chunk tables that hold every
/// chunk its accesses name (when they are few): one that passes has its
/// frames in order, inside the pack, apart, and each a traced chunk once.
fn trace_pack(trace: &Trace) {
    let Some(pack) = &trace.pack else { return };
    let mut sizes = vec![0usize; trace.layers.len().min(64)];
    for a in &trace.accesses {
        match sizes.get_mut(a.layer as usize) {
            Some(n) if a.chunk < 4096 => *n = (*n).max(a.chunk as usize + 1),
            _ => return,
        }
    }
    let tables: Vec<Vec<loci::format::Chunk>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| loci::format::Chunk {
                    blob_offset: 0,
                    compressed_len: 1,
                    len: 1 << 12,
                    digest: loci::digest::Digest::of(&(i as u64).to_le_bytes()),
                })
                .collect()
        })
        .collect();
    let tables: Vec<&[loci::format::Chunk]> = tables.iter().map(|t| &t[..]).collect();
    if trace.check_pack(&tables).is_err() {
        return;
    }
    let mut end = 0;
    let mut seen = std::collections::HashSet::new();
    for f in &pack.frames {
        assert!(f.offset >= end && f.compressed_len > 0);
        end = f.offset + u64::from(f.compressed_len);
        assert!(end <= pack.size);
        assert!(seen.insert((f.layer, f.chunk)));
        assert!(trace
            .accesses
            .iter()
            .any(|a| (a.layer, a.chunk) == (f.layer, f.chunk)));
    }
}

/// The public Azure Functions trace's files: the input split at its first
/// NUL into the invocations file and the durations file (none without a
/// NUL); when the first byte is odd it is replaced by the real header,
/// so rows are reached. An accepted trace is sorted, names
/// only its own functions and stays under the cap.
pub fn azure_trace(data: &[u8]) {
    let (invocations, durations) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(data[at + 1..].to_vec())),
        None => (data, None),
    };
    let mut file = Vec::new();
    let mut rows = invocations;
    if let Some((_, rest)) = invocations.split_first().filter(|(b, _)| *b % 2 == 1) {
        let minutes: Vec<String> = (1..=1440).map(|m| m.to_string()).collect();
        file.extend_from_slice(
            format!(
                "HashOwner,HashApp,HashFunction,Trigger,{}\n",
                minutes.join(",")
            )
            .as_bytes(),
        );
        rows = rest;
    }
    file.extend_from_slice(rows);
    let day = loci::sim::azure::AzureDay {
        name: "fuzz".into(),
        invocations: Cursor::new(file),
        durations: durations.map(Cursor::new),
    };
    if let Ok(trace) = loci::sim::azure::read_days(vec![day], 1, 10_000) {
        assert!(trace.invocations.len() <= 10_000);
        assert!(trace
            .invocations
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        assert!(trace
            .invocations
            .iter()
            .all(|i| (i.function as usize) < trace.functions.len()));
    }
}

/// A target's name and its function.
pub type Target = (&'static str, fn(&[u8]));

/// A node report as the scheduler takes it (JSON, then validation): a
/// report that validates has only plain `http://HOST[:PORT]` endpoints and
/// stays within its bounds.
pub fn node_report(data: &[u8]) {
    use loci::scheduler::report::{NodeReport, MAX_REPORTED_INSTANCES};
    let Ok(report) = serde_json::from_slice::<NodeReport>(data) else {
        return;
    };
    if report.validate().is_ok() {
        assert!(report.running.len() <= MAX_REPORTED_INSTANCES);
        for r in &report.running {
            if let Some(endpoint) = &r.endpoint {
                assert!(endpoint.starts_with("http://"), "{endpoint}");
                let after_host = &endpoint["http://".len()..];
                assert!(
                    !after_host.contains(['@', '?', '#', '/', '\\']),
                    "{endpoint}"
                );
            }
        }
    }
}

/// The snapshotter's metrics page as the node agent reads it: whatever it
/// holds, the images read are ones the scheduler accepts.
pub fn snapshotter_metrics(data: &[u8]) {
    use loci::scheduler::report::MAX_REPORTED_IMAGES;
    let images = loci::agent::warmth::parse(&String::from_utf8_lossy(data));
    assert!(images.len() <= MAX_REPORTED_IMAGES);
    for i in &images {
        assert!(!i.image.is_empty() && i.image.len() <= 512);
        assert!((0.0..=1.0).contains(&i.chunks_cached) && (0.0..=1.0).contains(&i.trace_cached));
    }
}

/// Every target, by name, for the corpus replay.
pub const TARGETS: &[Target] = &[
    ("toc", toc),
    ("footer", footer),
    ("convert", convert),
    ("manifest", manifest),
    ("www_authenticate", www_authenticate),
    ("content_range", content_range),
    ("labels", labels),
    ("trace", trace),
    ("hosts_toml", hosts_toml),
    ("azure_trace", azure_trace),
    ("node_report", node_report),
    ("snapshotter_metrics", snapshotter_metrics),
];
