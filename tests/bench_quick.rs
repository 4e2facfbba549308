//! `tools/bench.py --quick` end to end: a real registry, containerd, the
//! snapshotter, `loci mount` and, where built, Nydus; every mode runs and
//! the JSON and PNG it writes have the promised shape.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const NEEDS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
    "zstd",
    "tar",
    "gzip",
];
const MODES: &[&str] = &[
    "overlayfs",
    "loci",
    "loci-trace",
    "loci-ordered",
    "loci-warm",
    "loci-fs",
    "nydus-fs",
];
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn quick_bench_runs_every_mode_and_writes_json_and_png() {
    let test = "quick_bench_runs_every_mode_and_writes_json_and_png";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let matplotlib = Command::new(PYTHON)
        .args(["-c", "import matplotlib"])
        .status()
        .is_ok_and(|s| s.success());
    let required = std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1");
    if !matplotlib {
        assert!(
            !required,
            "{test}: {PYTHON} has no matplotlib (python3-matplotlib)"
        );
        eprintln!("SKIP {test}: {PYTHON} has no matplotlib (apt install python3-matplotlib)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let done = run(Command::new(PYTHON)
        .arg(repo_root().join("tools/bench.py"))
        .args(["--quick", "--loci", env!("CARGO_BIN_EXE_loci"), "--out"])
        .arg(out.path()));
    let said = String::from_utf8_lossy(&done.stderr);

    let runs: serde_json::Value = read_json(&out.path().join("bench-runs.json"));
    let modes: Vec<&str> = runs["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let nydus_found = runs["peers"]["nydus"]["found"].as_bool().unwrap();
    for mode in MODES {
        if *mode == "nydus-fs" && !nydus_found {
            // Only a machine without Nydus built may skip it, and it says so.
            assert!(
                !required,
                "{test}: Nydus is not installed (tools/install-peers.sh)"
            );
            assert!(said.contains("peer nydus: skipped"), "{said}");
            continue;
        }
        assert!(modes.contains(mode), "mode {mode} did not run: {modes:?}");
    }
    assert!(
        said.contains("peer stargz:"),
        "the run says what it found of stargz:\n{said}"
    );

    let rows: Vec<serde_json::Value> =
        serde_json::from_value(read_json(&out.path().join("bench.json"))).unwrap();
    let images = ["busybox", "fixture"];
    assert_eq!(rows.len(), images.len() * modes.len(), "{rows:#?}");
    for image in images {
        let row = |mode: &str| {
            rows.iter()
                .find(|r| r["image"] == image && r["mode"] == mode)
                .unwrap_or_else(|| panic!("no row for {image} {mode}"))
        };
        for mode in &modes {
            let r = row(mode);
            let num = |k: &str| {
                r[k].as_f64()
                    .unwrap_or_else(|| panic!("{image} {mode}: {k} is not a number: {r}"))
            };
            let (pull, start, total) = (num("pull_s"), num("start_s"), num("total_s"));
            // loci-native times a start of an image pulled (and
            // completed) before: no pull in it.
            if *mode == "loci-native" {
                assert!(pull == 0.0 && start > 0.0, "{r}");
            } else {
                assert!(pull > 0.0 && start > 0.0, "{r}");
            }
            assert!((pull + start - total).abs() < 1e-6, "{r}");
            assert!(r["bytes_fetched"].as_u64().is_some(), "{r}");
            let ratio = num("ratio_to_overlayfs");
            assert!(
                (ratio - total / num_of(row("overlayfs"), "total_s")).abs() < 1e-6,
                "{r}"
            );
            let to_warm = num("ratio_to_warm");
            assert!(
                (to_warm - total / num_of(row("loci-warm"), "total_s")).abs() < 1e-6,
                "{r}"
            );
            if mode.starts_with("loci") {
                // The least the start can fetch, from its trace and TOCs.
                let least = num("opened_compressed_bytes");
                assert!(least > 0.0, "{r}");
                let to_opened = num("fetched_to_opened");
                assert!(
                    (to_opened - r["bytes_fetched"].as_f64().unwrap() / least).abs() < 1e-6,
                    "{r}"
                );
            }
        }
        let bytes = |mode: &str| row(mode)["bytes_fetched"].as_u64().unwrap();
        assert!(bytes("overlayfs") > 0);
        // Lazy pulls fetch something; a warm cache next to nothing.
        assert!(bytes("loci") > 0);
        assert!(
            bytes("loci-warm") < bytes("loci") / 4,
            "{image}: warm {} cold {}",
            bytes("loci-warm"),
            bytes("loci")
        );
    }
    // The fixture's 16 MiB incompressible layer is never read by its start.
    let fixture = |mode: &str| {
        rows.iter()
            .find(|r| r["image"] == "fixture" && r["mode"] == mode)
            .unwrap()["bytes_fetched"]
            .as_u64()
            .unwrap()
    };
    assert!(fixture("loci") < fixture("overlayfs") / 2);

    // Both conversions are measured per CPU-second, on the same image.
    for image in images {
        let c = &runs["conversions"][image];
        assert!(c["loci_mb_per_cpu_s"].as_f64().unwrap() > 0.0, "{c}");
        if nydus_found {
            assert!(c["nydus_mb_per_cpu_s"].as_f64().unwrap() > 0.0, "{c}");
        }
    }

    let png = std::fs::read(out.path().join("bench.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
}

fn num_of(row: &serde_json::Value, key: &str) -> f64 {
    row[key].as_f64().unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
