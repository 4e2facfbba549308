//! A converted layer in an OCI layout in a temp dir, for the tests of the
//! read path and of what replays through it (the fetcher's, the trace
//! pack's): one layer, built the same way for both.

use super::RemoteLayer;
use crate::format::{convert_layer, read_toc, ConvertOptions, LayerSummary, Toc};
use crate::image::{ImageStore, OciLayout};

/// The store of a layout under `dir` (made if missing).
pub(crate) fn layout_store(dir: &std::path::Path) -> ImageStore {
    ImageStore::Layout {
        layout: OciLayout::open(&dir.join("layout"), true).unwrap(),
        tag: "t".into(),
    }
}

/// A converted layer of four files in a layout: two small (one pack
/// chunk), two of 200 KiB (16 KiB chunks each).
pub(crate) struct Converted {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) layer: RemoteLayer,
    pub(crate) toc: Toc,
    pub(crate) files: Vec<(&'static str, Vec<u8>)>,
    pub(crate) summary: LayerSummary,
}

/// Converts the four files and puts the blob in the layout.
pub(crate) fn converted() -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 7u64;
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
    let files = vec![
        ("a.txt", b"small file a\n".to_vec()),
        ("b.txt", b"small file b\n".to_vec()),
        ("big1.bin", random(200 << 10)),
        ("big2.bin", random(200 << 10)),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, &data[..]).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut blob = Vec::new();
    let options = ConvertOptions {
        chunk_size: 16 << 10,
        ..ConvertOptions::default()
    };
    let summary = convert_layer(&tar[..], &mut blob, &options, &|_| {}).unwrap();
    let store = layout_store(dir.path());
    let ImageStore::Layout { layout, .. } = &store else {
        unreachable!()
    };
    layout.put_blob(&summary.blob_digest, &blob).unwrap();
    let (_, toc) = read_toc(
        &mut std::io::Cursor::new(&blob),
        blob.len() as u64,
        Some(&summary.toc_digest),
    )
    .unwrap();
    Converted {
        layer: RemoteLayer {
            store,
            digest: summary.blob_digest,
            chunks: toc.chunks.clone().into(),
        },
        toc,
        files,
        summary,
        _dir: dir,
    }
}

/// Bytes `range` of the layer's blob, as stored.
pub(crate) fn blob_bytes(c: &Converted, range: std::ops::Range<u64>) -> Vec<u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(c.layer.store.blob_range(&c.layer.digest, range))
        .unwrap()
        .to_vec()
}

/// The uncompressed bytes of chunk `index`, decoded from the blob.
pub(crate) fn chunk_bytes(c: &Converted, index: u32) -> Vec<u8> {
    let chunk = &c.layer.chunks[index as usize];
    let end = chunk.blob_offset + u64::from(chunk.compressed_len);
    zstd::bulk::decompress(&blob_bytes(c, chunk.blob_offset..end), chunk.len as usize).unwrap()
}
