//! A misbehaving registry: `tools/fault-proxy.py` in front of a real
//! docker-registry answers loci's range reads with 5xx, 429, resets,
//! truncated, stalled, oversized and corrupt bodies. Under each fault a
//! read through `loci mount` either returns the right bytes or fails with
//! EIO within the read deadline; the daemon stays up; and nothing corrupt
//! is cached (the same file reads right once the fault is gone). The
//! table of outcomes is printed. Also: oversized manifests are refused
//! before they are buffered, and a cache on a full filesystem still
//! serves the right bytes.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NEEDS: &[&str] = &["docker-registry", "skopeo", "python3", "zstd"];
/// The read deadline the mounts run with.
const DEADLINE_SECS: u64 = 4;

struct Setup {
    work: tempfile::TempDir,
    registry: Registry,
    proxy: FaultProxy,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("fixture");
        build_fixture(&layout, "v1", &["--big-mib", "8"]);
        let registry = Registry::start();
        push_layout(&layout, "v1", &format!("{}/fixture:v1", registry.addr));
        run(loci().args([
            "convert",
            "--plain-http",
            &format!("{}/fixture:v1", registry.addr),
            &format!("{}/fixture:loci", registry.addr),
        ]));
        let proxy = FaultProxy::start(&registry.addr, work.path().join("proxy.log"));
        Setup {
            work,
            registry,
            proxy,
        }
    }

    /// A mount of the converted image through `host`, with no read-ahead
    /// or amplification (each case's file is fetched on its own), the
    /// cache under `cache`.
    fn mount(&self, name: &str, host: &str, cache: &Path) -> LociMount {
        self.mount_with(name, host, cache, None)
    }

    /// [`Setup::mount`], with the disk tier's free-space reserve set.
    fn mount_with(&self, name: &str, host: &str, cache: &Path, min_free: Option<u64>) -> LociMount {
        let config = self.work.path().join(format!("{name}.toml"));
        write_config(&config, cache, DEADLINE_SECS);
        let mut text = std::fs::read_to_string(&config).unwrap();
        if let Some(min_free) = min_free {
            text = text.replace(
                "[cache]\n",
                &format!("[cache]\ndisk_min_free_bytes = {min_free}\n"),
            );
            // Small memtables, so chunks reach the full disk during the test.
            text.push_str("[cache.rocksdb]\nwrite_buffer_bytes = 1048576\n");
        }
        text = text.replace("[fetch]\n", "[fetch]\namplify_bytes = 0\n");
        text.push_str("[prefetch]\nenabled = false\n");
        std::fs::write(&config, text).unwrap();
        LociMount::start(
            &format!("{host}/fixture:loci"),
            &self.work.path().join(name),
            &config,
            &self.work.path().join(format!("{name}.log")),
        )
    }
}

fn sha256(bytes: &[u8]) -> String {
    loci::digest::Digest::of(bytes).to_string()
}

/// What one read did.
#[derive(Debug, PartialEq)]
enum Outcome {
    Right,
    Eio,
}

#[test]
fn registry_faults_give_right_bytes_or_eio_within_the_deadline() {
    let test = "registry_faults_give_right_bytes_or_eio_within_the_deadline";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new();
    // The truth: the same files through a mount straight at the registry
    // (every chunk verified against the TOC).
    let truth = setup.mount(
        "truth",
        &setup.registry.addr,
        &setup.work.path().join("truth-cache"),
    );
    let expected = |file: &str| sha256(&std::fs::read(truth.dir.join(file)).unwrap());
    let mut faulty = setup.mount(
        "faulty",
        &setup.proxy.addr,
        &setup.work.path().join("faulty-cache"),
    );

    // (name, rule, outcomes allowed)
    let blobs = r#""path": "/blobs/sha256:", "method": "GET""#;
    let cases: Vec<(&str, String, &[Outcome])> = vec![
        (
            "503 twice",
            format!(r#"{{"mode": "status", "code": 503, "count": 2, {blobs}}}"#),
            &[Outcome::Right],
        ),
        (
            "429 + Retry-After twice",
            format!(r#"{{"mode": "status", "code": 429, "count": 2, {blobs}}}"#),
            &[Outcome::Right],
        ),
        (
            "reset mid-body once",
            format!(r#"{{"mode": "reset", "count": 1, {blobs}}}"#),
            &[Outcome::Right],
        ),
        (
            "truncated body once",
            format!(r#"{{"mode": "truncate", "count": 1, {blobs}}}"#),
            &[Outcome::Right],
        ),
        (
            "body larger than the range",
            format!(r#"{{"mode": "oversize", "count": 1, {blobs}}}"#),
            &[Outcome::Eio, Outcome::Right],
        ),
        (
            "corrupt body",
            format!(r#"{{"mode": "corrupt", "count": 1, {blobs}}}"#),
            &[Outcome::Eio, Outcome::Right],
        ),
        (
            "stall past the deadline",
            format!(r#"{{"mode": "stall", "seconds": 30, {blobs}}}"#),
            &[Outcome::Eio],
        ),
        (
            "503 always",
            format!(r#"{{"mode": "status", "code": 503, {blobs}}}"#),
            &[Outcome::Eio],
        ),
    ];
    let mut table = vec![
        "| fault | read returned | seconds | daemon up | right bytes after |".to_string(),
        "| --- | --- | ---: | --- | --- |".to_string(),
    ];
    for (i, (name, rule, allowed)) in cases.iter().enumerate() {
        let file = format!("big/files/f{:02}.bin", i * 3);
        setup.proxy.clear();
        setup.proxy.set(rule);
        let began = Instant::now();
        let read = std::fs::read(faulty.dir.join(&file));
        let secs = began.elapsed().as_secs_f64();
        let outcome = match &read {
            Ok(bytes) => {
                assert_eq!(sha256(bytes), expected(&file), "{name}: wrong bytes served");
                Outcome::Right
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                Outcome::Eio
            }
        };
        let up = faulty.daemon.child.try_wait().unwrap().is_none();
        setup.proxy.clear();
        // A chunk that just failed fails at once for a second (so the
        // kernel's retry of a failed readahead does not wait again).
        std::thread::sleep(loci::fetch::FAIL_FAST + Duration::from_millis(100));
        let after = std::fs::read(faulty.dir.join(&file)).map(|b| sha256(&b));
        let right_after = after.as_ref().ok() == Some(&expected(&file));
        table.push(format!(
            "| {name} | {outcome:?} | {secs:.2} | {up} | {right_after} |"
        ));
        assert!(
            allowed.contains(&outcome),
            "{name}: {outcome:?}, allowed {allowed:?}"
        );
        assert!(
            secs < (DEADLINE_SECS + 2) as f64,
            "{name}: the read took {secs:.2} s, the deadline is {DEADLINE_SECS} s"
        );
        assert!(up, "{name}: the daemon died:\n{}", faulty.daemon.log_text());
        assert!(right_after, "{name}: after the fault: {after:?}");
    }
    eprintln!("{}", table.join("\n"));
    let log = faulty.daemon.log_text();
    assert!(
        log.contains("registry served a corrupt chunk; not served"),
        "{log}"
    );
    assert_eq!(
        faulty.stop().code(),
        Some(0),
        "{}",
        faulty.daemon.log_text()
    );
}

#[test]
fn a_manifest_larger_than_any_manifest_is_refused() {
    let test = "a_manifest_larger_than_any_manifest_is_refused";
    if !require(test, NEEDS, false) {
        return;
    }
    let setup = Setup::new();
    let reference = format!("{}/fixture:loci", setup.proxy.addr);
    let inspect = || {
        loci()
            .args(["inspect", "--plain-http", &reference])
            .output()
            .unwrap()
    };
    assert!(inspect().status.success(), "the control fails");
    // Valid JSON, padded with spaces past 4 MiB.
    setup
        .proxy
        .set(r#"{"mode": "pad", "bytes": 5000000, "path": "/manifests/loci", "method": "GET"}"#);
    let out = inspect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("over the 4194304 expected at most"),
        "{stderr}"
    );
}

#[test]
fn a_cache_on_a_full_filesystem_still_serves_the_right_bytes() {
    let test = "a_cache_on_a_full_filesystem_still_serves_the_right_bytes";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new();
    let small = setup.work.path().join("small-fs");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let truth = setup.mount(
        "truth",
        &setup.registry.addr,
        &setup.work.path().join("truth-cache"),
    );
    // With the default reserve, and with small memtables (1 MiB) under the
    // smallest reserve allowed for them, so chunks would reach the disk
    // during the test if the guard let them.
    for (name, min_free) in [("guarded", None), ("small-memtables", Some(2 << 20))] {
        let cache = small.join(name);
        let mut full = setup.mount_with(name, &setup.registry.addr, &cache, min_free);
        for file in ["big/huge.bin", "big/files/f01.bin", "data/big-random.bin"] {
            let want = sha256(&std::fs::read(truth.dir.join(file)).unwrap());
            for pass in 0..2 {
                let got = std::fs::read(full.dir.join(file))
                    .map(|b| sha256(&b))
                    .unwrap_or_else(|e| panic!("{name}: {file}: {e}\n{}", full.daemon.log_text()));
                assert_eq!(got, want, "{name}: {file}, pass {pass}");
            }
        }
        let said = "nearly full";
        // Disk copies are written once fetching is quiet (1 s): wait for
        // them to meet the full filesystem.
        let deadline = Instant::now() + Duration::from_secs(15);
        let log = loop {
            let log = full.daemon.log_text();
            if log.contains(said) || Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            full.daemon.child.try_wait().unwrap().is_none(),
            "{name}: {log}"
        );
        assert!(
            log.contains(said),
            "{name}: the log does not say {said:?}:\n{log}"
        );
        assert_eq!(
            full.stop().code(),
            Some(0),
            "{name}: {}",
            full.daemon.log_text()
        );
    }
    // No reserve at all let RocksDB meet the full disk, and its error path
    // aborted the daemon now and then (an assertion in Debian's
    // librocksdb): such a config is refused before anything starts.
    let config = setup.work.path().join("unguarded.toml");
    write_config(&config, &small.join("unguarded"), DEADLINE_SECS);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[cache]\n", "[cache]\ndisk_min_free_bytes = 0\n"),
    )
    .unwrap();
    let dir = setup.work.path().join("unguarded");
    std::fs::create_dir_all(&dir).unwrap();
    let out = loci()
        .args(["mount", "--plain-http", "--config"])
        .arg(&config)
        .arg(format!("{}/fixture:loci", setup.registry.addr))
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("disk_min_free_bytes"), "{stderr}");
}

/// A registry that asks for a token at a realm on plain HTTP on another
/// host is refused (the node's credentials would go there in the clear);
/// one on its own host (configured plain HTTP) is asked, and a token
/// response over 1 MiB is refused before it is buffered.
#[test]
fn token_realms_and_bodies_from_a_hostile_registry_are_refused() {
    let test = "token_realms_and_bodies_from_a_hostile_registry_are_refused";
    if !require(test, NEEDS, false) {
        return;
    }
    let setup = Setup::new();
    let reference = format!("{}/fixture:loci", setup.proxy.addr);
    let inspect = || {
        let out = loci()
            .args(["inspect", "--plain-http", &reference])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    setup.proxy.set(
        r#"{"mode": "challenge", "path": "/v2/fixture/manifests/", "header": "Bearer realm=\"http://127.0.0.2:1/token\",service=\"registry\""}"#,
    );
    let stderr = inspect();
    assert!(
        stderr.contains("token realm \"http://127.0.0.2:1/token\" refused: plain HTTP on another host than 127.0.0.1"),
        "{stderr}"
    );
    setup.proxy.clear();
    let realm = format!("http://{}/token", setup.proxy.addr);
    setup.proxy.set(&format!(
        r#"{{"mode": "challenge", "path": "/v2/fixture/manifests/", "header": "Bearer realm=\"{realm}\""}}"#
    ));
    setup
        .proxy
        .set(r#"{"mode": "body", "path": "^/token", "bytes": 2000000}"#);
    let stderr = inspect();
    assert!(
        stderr.contains("over the 1048576 expected at most"),
        "{stderr}"
    );
}
