//! Bad input is refused with an error naming the layer and what was wrong,
//! and a failed conversion publishes nothing.

mod common;

use common::{loci, run};
use loci::digest::Digest;
use loci::format::{convert_layer, ConvertOptions, LayerSummary, FOOTER_SIZE};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Writes an OCI layout holding one single-layer image tagged `t`.
fn layout_with_layer(
    dir: &Path,
    blob: &[u8],
    media_type: &str,
    annotations: &BTreeMap<String, String>,
    diff_id: &Digest,
) -> Digest {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let layer = put(blob);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "config": {}
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": layer.to_string(), "size": blob.len(), "annotations": annotations}]
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest.to_string(), "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": "t"}}]
        }))
        .unwrap(),
    )
    .unwrap();
    layer
}

/// A tar whose one entry has exactly this raw name (bypassing the tar
/// crate's own refusal to write `..`).
fn tar_with_raw_name(name: &[u8], entry_type: tar::EntryType, link: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(entry_type);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(if entry_type == tar::EntryType::Regular {
        4
    } else {
        0
    });
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    if entry_type == tar::EntryType::Regular {
        let mut data = b"evil".to_vec();
        data.resize(512, 0);
        out.extend(data);
    }
    out.extend([0u8; 1024]);
    out
}

fn convert_fails(tar: &[u8], expected: &str) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let dst = work.path().join("dst");
    let layer = layout_with_layer(
        &src,
        tar,
        "application/vnd.oci.image.layer.v1.tar",
        &BTreeMap::new(),
        &Digest::of(tar),
    );
    let out = loci()
        .args(["convert"])
        .arg(format!("oci:{}:t", src.display()))
        .arg(format!("oci:{}:t", dst.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "conversion of a bad layer succeeded");
    assert!(
        stderr.contains(&format!("layer {layer}")),
        "error does not name the layer: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "error does not say {expected:?}: {stderr}"
    );
    // Nothing is published under the tag: the manifest goes last.
    let index = std::fs::read_to_string(dst.join("index.json")).unwrap_or_default();
    assert!(
        !index.contains("\"t\""),
        "a tag was written despite the failure: {index}"
    );
}

#[test]
fn convert_refuses_paths_escaping_the_root() {
    convert_fails(
        &tar_with_raw_name(b"../evil", tar::EntryType::Regular, b""),
        "\"../evil\" escapes the layer root",
    );
    convert_fails(
        &tar_with_raw_name(b"/etc/evil", tar::EntryType::Regular, b""),
        "\"/etc/evil\" escapes the layer root",
    );
    convert_fails(
        &tar_with_raw_name(b"a/../../evil", tar::EntryType::Directory, b""),
        "escapes the layer root",
    );
    convert_fails(
        &tar_with_raw_name(b"ok", tar::EntryType::Link, b"../../etc/shadow"),
        "\"../../etc/shadow\" escapes the layer root",
    );
}

#[test]
fn convert_refuses_a_malformed_tar() {
    let mut tar = tar_with_raw_name(b"file", tar::EntryType::Regular, b"");
    tar[100] ^= 0xff; // mode field: the header checksum no longer matches
    convert_fails(&tar, "malformed tar");
    let truncated = tar_with_raw_name(b"file", tar::EntryType::Regular, b"")[..514].to_vec();
    convert_fails(&truncated, "malformed tar");
}

#[test]
fn convert_refuses_a_layer_that_does_not_match_its_diff_id() {
    let work = tempfile::tempdir().unwrap();
    let tar = tar_with_raw_name(b"file", tar::EntryType::Regular, b"");
    let layer = layout_with_layer(
        &work.path().join("src"),
        &tar,
        "application/vnd.oci.image.layer.v1.tar",
        &BTreeMap::new(),
        &Digest::of(b"other"),
    );
    let out = loci()
        .arg("convert")
        .arg(format!("oci:{}:t", work.path().join("src").display()))
        .arg(format!("oci:{}:t", work.path().join("dst").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("layer {layer}")) && stderr.contains("digest mismatch"),
        "{stderr}"
    );
}

/// A real converted layer (the fixture-like sample) and its summary.
fn converted() -> (Vec<u8>, LayerSummary, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut state = 0x1234_5678_9abc_def0u64;
    let random: Vec<u8> = (0..600_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for (name, data) in [("small.txt", &b"hello"[..]), ("random.bin", &random[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, name, data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut blob = Vec::new();
    let summary = convert_layer(&tar[..], &mut blob, &ConvertOptions::default(), &|_| {}).unwrap();
    (blob, summary, tar)
}

/// Runs `loci inspect [--verify]` on a one-layer layout holding `blob`;
/// asserts it fails naming the layer and saying `expected`.
fn inspect_fails(
    blob: &[u8],
    annotations: &BTreeMap<String, String>,
    diff_id: &Digest,
    verify: bool,
    expected: &str,
) {
    let work = tempfile::tempdir().unwrap();
    let layer = layout_with_layer(
        work.path(),
        blob,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        annotations,
        diff_id,
    );
    let mut cmd = loci();
    cmd.arg("inspect");
    if verify {
        cmd.arg("--verify");
    }
    let out = cmd
        .arg(format!("oci:{}:t", work.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "inspect accepted a bad layer ({expected})"
    );
    assert!(
        stderr.contains(&format!("layer {layer}")),
        "error does not name the layer: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "error does not say {expected:?}: {stderr}"
    );
}

#[test]
fn the_good_layer_inspects_and_verifies() {
    let (blob, summary, _) = converted();
    let work = tempfile::tempdir().unwrap();
    layout_with_layer(
        work.path(),
        &blob,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &summary.annotations(),
        &summary.diff_id,
    );
    let out = run(loci()
        .args(["inspect", "--verify", "--json"])
        .arg(format!("oci:{}:t", work.path().display())));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<_> = listing[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["small.txt", "random.bin"]);
}

#[test]
fn inspect_refuses_a_truncated_blob() {
    let (blob, summary, _) = converted();
    inspect_fails(
        &blob[..blob.len() - 100],
        &summary.annotations(),
        &summary.diff_id,
        false,
        "no loci footer",
    );
}

#[test]
fn inspect_refuses_a_footer_pointing_outside_the_blob() {
    let (mut blob, summary, _) = converted();
    let at = blob.len() - FOOTER_SIZE + 24; // toc_offset field
    blob[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let mut annotations = summary.annotations();
    annotations.remove("containerd.io/snapshot/loci.toc-offset");
    inspect_fails(
        &blob,
        &annotations,
        &summary.diff_id,
        false,
        "footer points outside the blob",
    );
}

#[test]
fn inspect_refuses_a_toc_whose_digest_does_not_match() {
    let (blob, summary, _) = converted();
    let mut annotations = summary.annotations();
    annotations.insert(
        "containerd.io/snapshot/loci.toc-digest".into(),
        Digest::of(b"another toc").to_string(),
    );
    inspect_fails(
        &blob,
        &annotations,
        &summary.diff_id,
        false,
        "TOC digest mismatch",
    );
}

#[test]
fn inspect_refuses_a_malformed_toc() {
    let (mut blob, summary, _) = converted();
    let toc = summary.toc_offset as usize + 8;
    for b in &mut blob[toc..toc + 16] {
        *b ^= 0x5a;
    }
    // The annotation matches the altered TOC: only decoding can catch it.
    let frame = &blob
        [summary.toc_offset as usize..summary.toc_offset as usize + summary.toc_length as usize];
    let mut annotations = summary.annotations();
    annotations.insert(
        "containerd.io/snapshot/loci.toc-digest".into(),
        Digest::of(frame).to_string(),
    );
    inspect_fails(
        &blob,
        &annotations,
        &summary.diff_id,
        false,
        "malformed TOC",
    );
}

#[test]
fn verify_refuses_a_chunk_whose_bytes_do_not_match_its_digest() {
    let (mut blob, summary, tar) = converted();
    // Random data is stored raw by zstd: flipping a byte in the middle of
    // the blob changes the chunk's content without breaking the frame.
    let middle = summary.toc_offset as usize / 2;
    blob[middle] ^= 0x01;
    inspect_fails(
        &blob,
        &summary.annotations(),
        &Digest::of(&tar),
        true,
        "is corrupt",
    );
}

/// `loci inspect --json | head -c 1`: the listing ends quietly when its
/// reader goes (killed by SIGPIPE, as Unix tools are), never a panic.
#[test]
fn inspect_ends_quietly_when_its_reader_goes() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    // A listing far larger than a pipe's buffer: 3000 entries.
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..3000 {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(4);
        builder
            .append_data(&mut h, format!("many/file-{i:05}.txt"), &b"data"[..])
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut blob = Vec::new();
    let summary = convert_layer(&tar[..], &mut blob, &ConvertOptions::default(), &|_| {}).unwrap();
    let work = tempfile::tempdir().unwrap();
    layout_with_layer(
        work.path(),
        &blob,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &summary.annotations(),
        &summary.diff_id,
    );
    let mut child = loci()
        .args(["inspect", "--json"])
        .arg(format!("oci:{}:t", work.path().display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // and closes it
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "{:?}: {stderr}",
        out.status
    );
}
