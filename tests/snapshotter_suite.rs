//! containerd 1.6's own snapshotter test suite (`snapshots/testsuite`)
//! against `loci snapshotter`, through containerd's gRPC proxy client: the
//! Go test in tools/snapshotter-testsuite is built offline from Debian's
//! containerd source (golang-github-containerd-containerd-dev) and starts
//! one daemon per test.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Where Debian's Go sources live (GOPATH mode, no network).
const GOPATH: &str = "/usr/share/gocode";
const TESTSUITE: &str =
    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite";

/// The suite's subtests; containerd's suite skips `Rename` itself ("still
/// fails on some kernels with overlay"), for every snapshotter.
const SUBTESTS: &[&str] = &[
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "128LayersMount",
];

#[test]
fn containerd_snapshotter_suite_passes() {
    let test = "containerd_snapshotter_suite_passes";
    if !require(test, &["go"], true) {
        return;
    }
    if !Path::new(TESTSUITE).is_dir() {
        let reason = format!(
            "{TESTSUITE} missing (apt-get install golang-github-containerd-containerd-dev)"
        );
        if std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
            panic!("{test}: {reason}");
        }
        eprintln!("SKIP {test}: {reason}");
        return;
    }
    let target = Path::new(env!("CARGO_BIN_EXE_loci"))
        .parent()
        .unwrap()
        .to_path_buf();
    let binary = target.join("loci-snapshotter-suite.test");
    run(Command::new("go")
        .current_dir(repo_root().join("tools/snapshotter-testsuite"))
        .args(["test", "-c", "-o"])
        .arg(&binary)
        .arg(".")
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", target.join("go-cache")));
    let out = Command::new(&binary)
        .args(["-test.v", "-test.parallel", "4", "-test.timeout", "600s"])
        .env("LOCI_BIN", env!("CARGO_BIN_EXE_loci"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "the suite failed:\n{report}");
    for name in SUBTESTS {
        assert!(
            stdout.contains(&format!("--- PASS: TestLociSnapshotter/{name} ")),
            "{name} did not pass:\n{report}"
        );
    }
    assert!(
        stdout.contains("--- SKIP: TestLociSnapshotter/Rename "),
        "containerd's suite no longer skips Rename: add it to SUBTESTS\n{report}"
    );
}
