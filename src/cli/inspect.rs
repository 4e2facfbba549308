//! `loci inspect REF|BLOB`: the TOC as a listing or JSON, and end-to-end
//! verification of converted layers.

use super::registry_args::RegistryArgs;
use crate::fetch::{fetch_toc, toc_location};
use crate::format::{self, EntryKind, Toc, TocEntry};
use crate::image::platform_image;
use crate::image::{remove_scratch_file, ImageRef, ImageStore};
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;

/// Print (and optionally verify) the table of contents of converted layers.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Print JSON instead of a listing.
    #[arg(long)]
    json: bool,
    /// Verify every layer end to end: each chunk's sha256, and the whole
    /// decompressed stream against the diff_id.
    #[arg(long)]
    verify: bool,
    /// An image reference, or the path of a converted layer blob.
    target: String,
}

/// A TOC entry as JSON: text where the TOC holds bytes.
#[derive(Serialize)]
struct JsonEntry<'a> {
    path: String,
    kind: EntryKind,
    mode: String,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<(&'a str, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extents: Vec<JsonExtent>,
}

/// A run of a file's content in a chunk.
#[derive(Serialize)]
struct JsonExtent {
    chunk: u32,
    offset: u32,
    len: u32,
}

#[derive(Serialize)]
struct JsonChunk {
    blob_offset: u64,
    compressed_len: u32,
    len: u32,
    digest: String,
}

#[derive(Serialize)]
struct JsonLayer<'a> {
    layer: String,
    size: u64,
    toc_length: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<bool>,
    chunks: Vec<JsonChunk>,
    entries: Vec<JsonEntry<'a>>,
}

/// Prints each converted layer's TOC, verifying first if asked.
pub fn run(args: Args) -> anyhow::Result<()> {
    let local = PathBuf::from(&args.target);
    let layers: Vec<Inspected> = if local.is_file() {
        let mut file = std::fs::File::open(&local)?;
        let size = file.metadata()?.len();
        let name = local.display().to_string();
        let (footer, toc) =
            format::read_toc(&mut file, size, None).with_context(|| format!("reading {name}"))?;
        if args.verify {
            let (_, report) = format::verify_layer(&mut file, size, None, None)
                .with_context(|| format!("verifying {name}"))?;
            eprintln!(
                "{name}: verified {} chunks; decompressed stream {} ({} bytes)",
                report.chunks, report.diff_id, report.uncompressed_size
            );
        }
        vec![Inspected {
            name,
            size,
            toc_length: footer.toc_length,
            toc,
        }]
    } else {
        let image: ImageRef = args.target.parse()?;
        let store = ImageStore::open(&image, &args.registry.options(), false)?;
        super::runtime()?.block_on(remote_tocs(&store, args.verify))?
    };
    if args.json {
        let out: Vec<JsonLayer> = layers
            .iter()
            .map(
                |Inspected {
                     name,
                     size,
                     toc_length,
                     toc,
                 }| JsonLayer {
                    layer: name.clone(),
                    size: *size,
                    toc_length: *toc_length,
                    verified: args.verify.then_some(true),
                    chunks: toc
                        .chunks
                        .iter()
                        .map(|c| JsonChunk {
                            blob_offset: c.blob_offset,
                            compressed_len: c.compressed_len,
                            len: c.len,
                            digest: c.digest.to_string(),
                        })
                        .collect(),
                    entries: toc.entries.iter().map(json_entry).collect(),
                },
            )
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for Inspected {
            name: layer, toc, ..
        } in &layers
        {
            println!(
                "# {layer}: {} entries, {} chunks",
                toc.entries.len(),
                toc.chunks.len()
            );
            for entry in &toc.entries {
                println!("{}", listing_line(entry));
            }
        }
    }
    Ok(())
}

/// One converted layer's TOC and where it came from.
struct Inspected {
    name: String,
    size: u64,
    toc_length: u64,
    toc: Toc,
}

async fn remote_tocs(store: &ImageStore, verify: bool) -> anyhow::Result<Vec<Inspected>> {
    let scratch = tempfile::Builder::new().prefix("loci-inspect-").tempdir()?;
    let mut out = Vec::new();
    for layer in platform_image(store).await?.layers {
        let Some((toc_digest, _)) = toc_location(&layer)? else {
            eprintln!("{}: not a loci layer ({})", layer.digest, layer.media_type);
            continue;
        };
        let (footer, toc) = fetch_toc(store, &layer).await?;
        if verify {
            let path = store
                .blob_file(&layer.digest, layer.size, scratch.path(), &|_| {})
                .await?;
            let mut file = std::fs::File::open(&path)?;
            let (_, report) = format::verify_layer(
                &mut file,
                layer.size,
                Some(&toc_digest),
                Some(&layer.diff_id),
            )
            .with_context(|| format!("verifying layer {}", layer.digest))?;
            eprintln!(
                "{}: verified {} chunks against diff_id {}",
                layer.digest, report.chunks, report.diff_id
            );
            remove_scratch_file(scratch.path(), &path);
        }
        out.push(Inspected {
            name: layer.digest.to_string(),
            size: layer.size,
            toc_length: footer.toc_length,
            toc,
        });
    }
    Ok(out)
}

fn json_entry(entry: &TocEntry) -> JsonEntry<'_> {
    JsonEntry {
        path: entry.display_path(),
        kind: entry.kind,
        mode: format!("{:04o}", entry.mode),
        uid: entry.uid,
        gid: entry.gid,
        size: entry.size,
        mtime: entry.mtime,
        link: entry
            .link
            .as_ref()
            .map(|l| String::from_utf8_lossy(l).into_owned()),
        xattrs: entry
            .xattrs
            .iter()
            .map(|x| {
                (
                    x.name.as_str(),
                    String::from_utf8_lossy(&x.value).into_owned(),
                )
            })
            .collect(),
        device: matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice)
            .then_some((entry.dev_major, entry.dev_minor)),
        extents: entry
            .extents
            .iter()
            .map(|e| JsonExtent {
                chunk: e.chunk,
                offset: e.offset,
                len: e.len,
            })
            .collect(),
    }
}

/// An `ls -l`-like line.
fn listing_line(entry: &TocEntry) -> String {
    let type_char = match entry.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::Fifo => 'p',
    };
    let mut line = format!(
        "{type_char}{:04o} {:>5} {:>5} {:>12} {:>11} {:>4} /{}",
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        entry.mtime,
        entry.extents.len(),
        entry.display_path()
    );
    if let Some(link) = &entry.link {
        let arrow = if entry.kind == EntryKind::Hardlink {
            "link to"
        } else {
            "->"
        };
        line.push_str(&format!(" {arrow} {}", String::from_utf8_lossy(link)));
    }
    line
}
