//! Conversion against real components: the fixture image is pushed to a
//! real docker-registry, converted registry → registry by `loci convert`,
//! then pulled by plain containerd 1.6 (overlayfs, not loci) and run with
//! runc. The converted image must unpack to the same tree as the original.

mod common;

use common::*;
use std::io::Read;
use std::process::Command;

#[test]
fn converted_image_unpacks_and_runs_in_plain_containerd() {
    let test = "converted_image_unpacks_and_runs_in_plain_containerd";
    if !require(
        test,
        &[
            "docker-registry",
            "skopeo",
            "containerd",
            "ctr",
            "runc",
            "python3",
            "zstd",
        ],
        true,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("fixture");
    build_fixture(&layout, "v1", &[]);
    let registry = Registry::start();
    let original = format!("{}/fixture:v1", registry.addr);
    let converted = format!("{}/fixture:v1-loci", registry.addr);
    push_layout(&layout, "v1", &original);

    let out = run(loci().args(["convert", "--plain-http", &original, &converted]));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        summary.lines().filter(|l| l.contains(" -> ")).count(),
        3,
        "{summary}"
    );

    // Deterministic: converting again gives the same manifest digest.
    let again = run(loci().args([
        "convert",
        "--plain-http",
        &original,
        &format!("{}/fixture:again", registry.addr),
    ]));
    let digest = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .next_back()
            .unwrap()
            .split(' ')
            .next_back()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest(&out.stdout), digest(&again.stdout));

    // Every converted layer verifies end to end against its diff_id.
    run(loci().args(["inspect", "--plain-http", "--verify", &converted]));

    // Byte for byte: each converted blob decompresses to the original tar.
    let converted_layout = work.path().join("converted");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("docker://{converted}"))
        .arg(format!("oci:{}:c", converted_layout.display())));
    // Verifying an image in a layout reads its blobs in place and leaves
    // them there (the tars are read from them next).
    run(loci()
        .args(["inspect", "--verify"])
        .arg(format!("oci:{}:c", converted_layout.display())));
    let original_tars = layer_tars(&layout, "v1");
    let converted_tars = layer_tars(&converted_layout, "c");
    assert_eq!(original_tars.len(), converted_tars.len());
    for (i, (a, b)) in original_tars.iter().zip(&converted_tars).enumerate() {
        assert!(
            a == b,
            "layer {i}: converted tar differs from the original ({} vs {} bytes)",
            a.len(),
            b.len()
        );
    }

    // Plain containerd unpacks both; the trees must be equal.
    let containerd = Containerd::start("");
    containerd.pull(&original, "overlayfs");
    containerd.pull(&converted, "overlayfs");
    let diff_ids = layout_diff_ids(&layout, "v1");
    let mnt = work.path().join("mnt");
    containerd.mount_view(
        &diff_ids,
        "overlayfs",
        "view-original",
        &mnt.join("original"),
    );
    let expected = walk_tree(&mnt.join("original"));
    run(Command::new("umount").arg(mnt.join("original")));
    // The converted image has the same diff_ids, so containerd shares the
    // snapshots by chain ID; remove the original image and its snapshots so
    // the converted one is unpacked on its own.
    // (Views hold no lease: the garbage collector may have removed it.)
    let _ = containerd
        .ctr()
        .args(["snapshots", "rm", "view-original"])
        .output();
    run(containerd
        .ctr()
        .args(["images", "rm", "--sync", &original, &converted]));
    let left = run(containerd.ctr().args(["snapshots", "ls"]));
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).lines().count(),
        1,
        "snapshots left after removal"
    );
    containerd.pull(&converted, "overlayfs");
    containerd.mount_view(
        &diff_ids,
        "overlayfs",
        "view-converted",
        &mnt.join("converted"),
    );
    let actual = walk_tree(&mnt.join("converted"));
    run(Command::new("umount").arg(mnt.join("converted")));
    assert!(
        expected.len() > 100,
        "fixture tree too small: {}",
        expected.len()
    );
    assert_same_tree(&expected, &actual);

    // And runc runs a command in it.
    let out = run(containerd.ctr().args([
        "run",
        "--rm",
        &converted,
        "loci-convert-e2e",
        "/bin/sh",
        "-c",
        "cat /etc/hello.txt; sha256sum /data/big-random.bin; ls /data/opaque-dir; ls /data/to-delete.txt 2>&1 || true",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let big = expected[std::path::Path::new("data/big-random.bin")]
        .sha256
        .clone()
        .unwrap();
    assert!(text.contains("hello again from layer 3"), "{text}");
    assert!(text.contains(&big), "{text}");
    assert!(text.contains("new.txt") && !text.contains("old1"), "{text}");
    assert!(text.contains("No such file"), "{text}");
}

/// The uncompressed tar of every layer of an image in an OCI layout.
fn layer_tars(dir: &std::path::Path, tag: &str) -> Vec<Vec<u8>> {
    let read = |digest: &str| layout_blob(dir, digest);
    let (_, _, manifest) = layout_manifest(dir, tag);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            let blob = read(layer["digest"].as_str().unwrap());
            let media = layer["mediaType"].as_str().unwrap();
            let mut out = Vec::new();
            if media.ends_with("+gzip") {
                flate2::read::MultiGzDecoder::new(&blob[..])
                    .read_to_end(&mut out)
                    .unwrap();
            } else if media.ends_with("+zstd") {
                zstd::stream::read::Decoder::new(&blob[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            } else {
                out = blob;
            }
            out
        })
        .collect()
}
