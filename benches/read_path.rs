//! The lazy read path's CPU costs, each against a baseline measured in the
//! same run:
//! - a chunk as fetched turned into bytes to serve: zstd decompression plus
//!   the sha256 check (`decode_chunk`), against decompression alone;
//! - the TOC: decoding and validating it, building the inode tree from it;
//! - finding things in it: resolving a path name by name through the tree
//!   against one hash-map lookup of the whole path, and mapping a 4 KiB read
//!   to the chunks that hold it.
//!
//! Input: a real tree converted at the default chunk size (see
//! `support::input_tar`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loci::format::{
    convert_layer, decode_chunk, decode_toc, read_toc, ConvertOptions, Limits, DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL, DEFAULT_PACK_SIZE,
};
use loci::fs::tree::{Ino, Tree, View, ROOT};
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Cursor;

#[path = "support/mod.rs"]
mod support;

/// Every file of the tree with its path and inode, depth first.
fn files(tree: &Tree) -> Vec<(Vec<u8>, Ino)> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::new(), ROOT)];
    while let Some((path, ino)) = stack.pop() {
        let node = tree.get(ino).unwrap();
        if node.content.is_some() {
            out.push((path.clone(), ino));
        }
        for (name, &child) in &node.children {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            stack.push((p, child));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let (tar, _) = support::input_tar();
    let opts = ConvertOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        pack_size: DEFAULT_PACK_SIZE,
        level: DEFAULT_LEVEL,
        ..ConvertOptions::default()
    };
    let mut blob = Vec::with_capacity(tar.len());
    convert_layer(&tar[..], &mut blob, &opts, &|_| {}).unwrap();
    let (footer, toc) = read_toc(&mut Cursor::new(&blob), blob.len() as u64, None).unwrap();
    let frame_of = |offset: u64, len: u64| &blob[offset as usize..(offset + len) as usize];
    let toc_frame = frame_of(footer.toc_offset, footer.toc_length);
    let content_bytes: u64 = toc.chunks.iter().map(|c| u64::from(c.len)).sum();
    eprintln!(
        "layer: {:.1} MiB of tar in {} chunks, {} entries, TOC frame {} B",
        tar.len() as f64 / (1 << 20) as f64,
        toc.chunks.len(),
        toc.entries.len(),
        toc_frame.len()
    );

    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Bytes(content_bytes));
    group.sample_size(10);
    group.bench_function("zstd decompress (baseline)", |b| {
        b.iter(|| {
            toc.chunks
                .iter()
                .map(|c| {
                    let frame = frame_of(c.blob_offset, u64::from(c.compressed_len));
                    zstd::bulk::decompress(frame, c.len as usize).unwrap().len()
                })
                .sum::<usize>()
        })
    });
    group.bench_function("decompress + sha256 verify", |b| {
        b.iter(|| {
            toc.chunks
                .iter()
                .map(|c| {
                    let frame = frame_of(c.blob_offset, u64::from(c.compressed_len));
                    decode_chunk(frame, c).unwrap().len()
                })
                .sum::<usize>()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("toc");
    group.throughput(Throughput::Elements(toc.entries.len() as u64));
    group.bench_function("decode and validate", |b| {
        b.iter(|| {
            decode_toc(toc_frame, &footer, None, &Limits::default())
                .unwrap()
                .entries
                .len()
        })
    });
    group.bench_function("build inode tree", |b| {
        b.iter(|| Tree::build(&[&toc], View::Merged).unwrap().len())
    });
    group.finish();

    let tree = Tree::build(&[&toc], View::Merged).unwrap();
    let files = files(&tree);
    let by_path: HashMap<Vec<u8>, Ino> = files.iter().cloned().collect();
    let sample: Vec<&(Vec<u8>, Ino)> = files.iter().step_by((files.len() / 1000).max(1)).collect();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(sample.len() as u64));
    group.bench_function("whole path in a hash map (baseline)", |b| {
        b.iter(|| {
            sample
                .iter()
                .map(|(p, _)| by_path[black_box(p)])
                .sum::<u64>()
        })
    });
    group.bench_function("path resolved name by name", |b| {
        b.iter(|| {
            sample
                .iter()
                .map(|(p, _)| {
                    black_box(p)
                        .split(|&c| c == b'/')
                        .fold(ROOT, |dir, name| tree.lookup(dir, name).unwrap())
                })
                .sum::<u64>()
        })
    });
    // 4 KiB reads spread over the largest files.
    let mut big: Vec<&(Vec<u8>, Ino)> = files.iter().collect();
    big.sort_by_key(|(_, ino)| std::cmp::Reverse(tree.get(*ino).unwrap().size));
    let reads: Vec<(&loci::fs::tree::Content, u64)> = big
        .iter()
        .take(16)
        .flat_map(|(_, ino)| {
            let content = tree.get(*ino).unwrap().content.as_ref().unwrap();
            let size = content.size();
            (0..64u64).map(move |i| (content, (size / 64 * i) & !4095))
        })
        .collect();
    group.throughput(Throughput::Elements(reads.len() as u64));
    group.bench_function("4 KiB read to its chunks", |b| {
        b.iter(|| {
            reads
                .iter()
                .map(|(content, offset)| content.chunks_in(*offset, offset + 4096).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
