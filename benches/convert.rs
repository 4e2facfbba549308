//! Conversion throughput, in MB/s of uncompressed input, against plain zstd
//! compression of the same tar at the same level (the baseline, measured in
//! the same run), for several chunk sizes, on one core and on all.
//!
//! Input: a tar of real files (see `support::input_tar`). Also prints the
//! TOC size per 1,000 files.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loci::format::{convert_layer, ConvertOptions, DEFAULT_LEVEL, DEFAULT_PACK_SIZE};

#[path = "support/mod.rs"]
mod support;
use support::input_tar;

/// CPU time (user + system, all threads) this process spends running `f`
/// three times, per run: throughput per core is input over this.
fn cpu_seconds(f: impl Fn()) -> f64 {
    fn ticks() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    }
    let start = ticks();
    for _ in 0..3 {
        f();
    }
    (ticks() - start) / 3.0
}

fn bench(c: &mut Criterion) {
    let (tar, files) = input_tar();
    eprintln!(
        "input: {:.1} MiB tar, {files} files",
        tar.len() as f64 / (1 << 20) as f64
    );
    let mut group = c.benchmark_group("convert");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(20));

    group.bench_function("zstd single stream, same level (baseline)", |b| {
        b.iter(|| {
            zstd::stream::encode_all(&tar[..], DEFAULT_LEVEL)
                .unwrap()
                .len()
        })
    });
    for chunk_kib in [64u32, 256, 1024] {
        let opts = ConvertOptions {
            chunk_size: chunk_kib * 1024,
            pack_size: DEFAULT_PACK_SIZE,
            level: DEFAULT_LEVEL,
            ..ConvertOptions::default()
        };
        let mut out = Vec::with_capacity(tar.len());
        let summary = convert_layer(&tar[..], &mut out, &opts, &|_| {}).unwrap();
        eprintln!(
            "chunk {chunk_kib} KiB: blob {:.1} MiB ({:.3} of plain zstd), {} chunks, TOC {} B = {:.0} B per 1,000 files",
            out.len() as f64 / (1 << 20) as f64,
            out.len() as f64 / zstd::stream::encode_all(&tar[..], DEFAULT_LEVEL).unwrap().len() as f64,
            summary.chunks,
            summary.toc_length,
            summary.toc_length as f64 * 1000.0 / files as f64
        );
        let cpu = cpu_seconds(|| {
            let mut out = Vec::with_capacity(tar.len());
            convert_layer(&tar[..], &mut out, &opts, &|_| {}).unwrap();
        });
        eprintln!(
            "chunk {chunk_kib} KiB: {:.0} MB of input per CPU-second (per core); zstd baseline (same level) {:.0}",
            tar.len() as f64 / 1e6 / cpu,
            tar.len() as f64 / 1e6 / cpu_seconds(|| {
                zstd::stream::encode_all(&tar[..], DEFAULT_LEVEL).unwrap();
            })
        );
        group.bench_with_input(
            BenchmarkId::new("loci all cores", chunk_kib),
            &opts,
            |b, opts| {
                b.iter(|| {
                    let mut out = Vec::with_capacity(tar.len());
                    convert_layer(&tar[..], &mut out, opts, &|_| {})
                        .unwrap()
                        .blob_size
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
