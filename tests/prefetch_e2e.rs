//! Trace-based prefetch against a real registry and real FUSE: a trace
//! recorded by one mount is published with the image, replayed by the next
//! mount before anything reads, ignored with a warning when it does not fit,
//! and never in the way of a read it does not cover.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NEEDS: &[&str] = &["docker-registry", "skopeo", "python3", "zstd"];

fn ready(test: &str) -> bool {
    require(test, NEEDS, true) && require_fuse(test)
}

struct Setup {
    work: tempfile::TempDir,
    registry: Registry,
}

impl Setup {
    /// The fixture (with a big layer of `big_mib`) converted into each of
    /// `repos` on one registry.
    fn new(big_mib: &str, repos: &[&str]) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("fixture");
        build_fixture(&layout, "v1", &["--big-mib", big_mib]);
        Setup::from_layout(work, &layout, "v1", repos)
    }

    /// The image `tag` of `layout` converted into each of `repos`.
    fn from_layout(work: tempfile::TempDir, layout: &Path, tag: &str, repos: &[&str]) -> Setup {
        let registry = Registry::start();
        let source = format!("{}/source:v1", registry.addr);
        push_layout(layout, tag, &source);
        for repo in repos {
            run(loci().args([
                "convert",
                "--plain-http",
                &source,
                &format!("{}/{repo}:loci", registry.addr),
            ]));
        }
        Setup { work, registry }
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:loci", self.registry.addr)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// `loci mount` with a fresh cache named `name`, and extra flags.
    fn mount(&self, repo: &str, name: &str, extra: &[&str]) -> LociMount {
        self.mount_configured(repo, name, extra, "")
    }

    /// [`Setup::mount`] with `toml` added to its config.
    fn mount_configured(&self, repo: &str, name: &str, extra: &[&str], toml: &str) -> LociMount {
        let config = self.path(&format!("{name}.toml"));
        write_config(&config, &self.path(&format!("{name}-cache")), 30);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(toml);
        std::fs::write(&config, text).unwrap();
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = loci();
        cmd.args(["mount", "--plain-http", "--config"])
            .arg(&config)
            .args(extra)
            .arg(self.image(repo))
            .arg(&dir);
        LociMount::start_with(cmd, &dir, &self.path(&format!("{name}.log")))
    }

    /// Records a trace of reading `files` and publishes it for `repo`.
    fn record(&self, repo: &str, files: &[&str]) -> PathBuf {
        self.record_configured(repo, files, "")
    }

    /// [`Setup::record`] with `toml` added to the recording's config.
    fn record_configured(&self, repo: &str, files: &[&str], toml: &str) -> PathBuf {
        let trace = self.path(&format!("{repo}-trace.json"));
        let trace_arg = trace.to_str().unwrap().to_string();
        let mut mount = self.mount_configured(
            repo,
            &format!("{repo}-record"),
            &["--record-trace", &trace_arg, "--publish-trace"],
            toml,
        );
        for file in files {
            std::fs::read(mount.dir.join(file)).unwrap();
        }
        assert!(mount.stop().success(), "{}", mount.daemon.log_text());
        trace
    }
}

/// Waits until the mount's log says the prefetch finished.
fn wait_for_prefetch(mount: &LociMount) {
    let start = Instant::now();
    while !mount.daemon.log_text().contains("prefetch finished") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prefetch never finished:\n{}",
            mount.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The image's layer digests (this reads TOCs: call it before measuring).
fn layer_digests(setup: &Setup, repo: &str) -> Vec<String> {
    let out = run(loci().args(["inspect", "--plain-http", "--json", &setup.image(repo)]));
    let layers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    layers
        .iter()
        .map(|l| l["layer"].as_str().unwrap().to_string())
        .collect()
}

/// The digest of the pack a trace (as JSON) names, if it has one.
fn pack_digest(trace: &serde_json::Value) -> Option<String> {
    let bytes = trace["pack"]["digest"].as_array()?;
    Some(format!(
        "sha256:{}",
        bytes
            .iter()
            .map(|b| format!("{:02x}", b.as_u64().unwrap()))
            .collect::<String>()
    ))
}

/// That `trace` (as JSON) has a pack (else panics with `missing`) whose
/// frames are its traced chunks, each once.
fn assert_pack_holds_each_traced_chunk_once(trace: &serde_json::Value, missing: &str) {
    let frames = trace["pack"]["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{missing}: {trace}"));
    let chunk = |v: &serde_json::Value| (v["layer"].as_u64(), v["chunk"].as_u64());
    let packed: std::collections::HashSet<_> = frames.iter().map(chunk).collect();
    let traced: std::collections::HashSet<_> = trace["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .map(chunk)
        .collect();
    assert_eq!(frames.len(), packed.len(), "a chunk packed twice: {trace}");
    assert_eq!(packed, traced, "{trace}");
}

/// Blob GETs (requests, bytes) of these layers in the registry log after
/// byte `from`.
fn image_traffic(setup: &Setup, layers: &[String], from: usize) -> (usize, u64) {
    let log = settled_log(&setup.registry);
    layers.iter().fold((0, 0), |(r, b), layer| {
        let (r2, b2) = blob_traffic_in(&log, layer, from);
        (r + r2, b + b2)
    })
}

#[test]
fn a_published_trace_is_replayed_on_the_next_mount() {
    let test = "a_published_trace_is_replayed_on_the_next_mount";
    if !ready(test) {
        return;
    }
    let setup = Setup::new("32", &["app"]);
    let traced = [
        "etc/hello.txt",
        "big/files/f01.bin",
        "big/files/f02.bin",
        "data/big-random.bin",
    ];
    let trace_file = setup.record("app", &traced);
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    let accesses = trace["accesses"].as_array().unwrap();
    assert!(accesses.len() >= traced.len(), "{trace}");
    assert!(accesses.iter().any(|a| a["path"] == "data/big-random.bin"));
    let shown = run(loci().args(["trace", "show", "--plain-http", &setup.image("app")]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown, trace,
        "the registry's trace differs from the recorded one"
    );

    // It came with its pack: each traced chunk once, recompressed.
    assert_pack_holds_each_traced_chunk_once(&trace, "a published trace has a pack");
    let pack_digest = pack_digest(&trace).unwrap();

    // A fresh node: the trace is replayed, from the pack, before anything
    // reads; of the layers only their TOCs are read.
    let layers = layer_digests(&setup, "app");
    let before_mount = settled_log(&setup.registry).len();
    let mount = setup.mount("app", "replay", &[]);
    wait_for_prefetch(&mount);
    let log = settled_log(&setup.registry);
    let (pack_requests, pack_bytes) = blob_traffic_in(&log, &pack_digest, before_mount);
    assert!(pack_requests >= 1, "{}", mount.daemon.log_text());
    assert_eq!(Some(pack_bytes), trace["pack"]["size"].as_u64());
    assert_eq!(
        image_traffic(&setup, &layers, before_mount).0,
        layers.len(),
        "the replay read the layers:\n{}",
        mount.daemon.log_text()
    );
    let before = settled_log(&setup.registry).len();
    for file in traced {
        std::fs::read(mount.dir.join(file)).unwrap();
    }
    let (requests, bytes) = image_traffic(&setup, &layers, before);
    assert_eq!(
        (requests, bytes),
        (0, 0),
        "traced reads went to the registry after the prefetch"
    );
    // A file the trace does not cover is fetched on demand.
    let before = settled_log(&setup.registry).len();
    std::fs::read(mount.dir.join("big/files/f40.bin")).unwrap();
    assert!(
        image_traffic(&setup, &layers, before).0 >= 1,
        "untraced read was not fetched:\n{}",
        mount.daemon.log_text()
    );
}

/// `loci trace push FILE`, as a user publishes a trace recorded without
/// `--publish-trace`: the trace goes out with a pack of its chunks, fetched
/// from the image's layers, and the next fresh mount replays the pack and
/// reads only the layers' TOCs.
#[test]
fn a_pushed_trace_file_is_published_with_its_pack() {
    let test = "a_pushed_trace_file_is_published_with_its_pack";
    if !ready(test) {
        return;
    }
    let setup = Setup::new("32", &["app"]);
    let traced = ["etc/hello.txt", "big/files/f01.bin", "data/big-random.bin"];
    let trace_file = setup.path("app-trace.json");
    let mut recording = setup.mount(
        "app",
        "record",
        &["--record-trace", trace_file.to_str().unwrap()],
    );
    for file in traced {
        std::fs::read(recording.dir.join(file)).unwrap();
    }
    assert!(
        recording.stop().success(),
        "{}",
        recording.daemon.log_text()
    );
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    assert!(
        recorded["pack"].is_null(),
        "nothing was published: {recorded}"
    );

    let pushed = run(loci()
        .args(["trace", "push", "--plain-http", &setup.image("app")])
        .arg(&trace_file));
    let said = String::from_utf8_lossy(&pushed.stderr);
    assert!(said.contains("packed"), "{said}");
    let shown = run(loci().args(["trace", "show", "--plain-http", &setup.image("app")]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["accesses"], recorded["accesses"]);
    assert_pack_holds_each_traced_chunk_once(&shown, &format!("pushed without a pack: {said}"));

    let layers = layer_digests(&setup, "app");
    let before_mount = settled_log(&setup.registry).len();
    let mount = setup.mount("app", "replay", &[]);
    wait_for_prefetch(&mount);
    let log = settled_log(&setup.registry);
    let (_, pack_bytes) = blob_traffic_in(&log, &pack_digest(&shown).unwrap(), before_mount);
    assert_eq!(Some(pack_bytes), shown["pack"]["size"].as_u64());
    assert_eq!(
        image_traffic(&setup, &layers, before_mount).0,
        layers.len(),
        "the replay read the layers:\n{}",
        mount.daemon.log_text()
    );

    // A file whose pack index names a pack the registry does not hold (as
    // `--record-trace` writes one it published elsewhere): the push takes
    // the chunks from the layers and never asks for that pack.
    let mut elsewhere = shown.clone();
    elsewhere["pack"]["digest"] = serde_json::json!([0x11u8; 32].to_vec());
    let absent = pack_digest(&elsewhere).unwrap();
    let elsewhere_file = setup.path("elsewhere-trace.json");
    std::fs::write(&elsewhere_file, elsewhere.to_string()).unwrap();
    let before_push = settled_log(&setup.registry).len();
    let pushed = run(loci()
        .args(["trace", "push", "--plain-http", &setup.image("app")])
        .arg(&elsewhere_file));
    let said = String::from_utf8_lossy(&pushed.stderr);
    assert!(said.contains("packed"), "{said}");
    let log = settled_log(&setup.registry);
    assert_eq!(
        blob_traffic_in(&log, &absent, before_push).0,
        0,
        "the push asked for the file's pack:\n{said}"
    );
}

/// A trace that foresaw almost nothing of a start (here: one small file)
/// must not make the start fetch in more requests than no trace: reads it
/// did not foresee keep the untraced policy (neighbours fetched along), are
/// counted, and the mount warns that the trace covers little.
#[test]
fn a_trace_that_covers_little_is_no_slower_than_none_and_says_so() {
    let test = "a_trace_that_covers_little_is_no_slower_than_none_and_says_so";
    if !ready(test) {
        return;
    }
    let setup = Setup::new("32", &["app"]);
    let layers = layer_digests(&setup, "app");
    let read_the_start = |mount: &LociMount| {
        for i in 0..64 {
            std::fs::read(mount.dir.join(format!("big/files/f{i:02}.bin"))).unwrap();
        }
        use std::io::Read;
        let mut head = vec![0; 8 << 20];
        std::fs::File::open(mount.dir.join("big/huge.bin"))
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
    };
    let before = settled_log(&setup.registry).len();
    let mut untraced = setup.mount("app", "untraced", &["--no-prefetch"]);
    read_the_start(&untraced);
    let (untraced_requests, untraced_bytes) = image_traffic(&setup, &layers, before);
    untraced.stop();

    setup.record("app", &["etc/hello.txt"]);
    let before = settled_log(&setup.registry).len();
    let mut traced = setup.mount("app", "traced", &["--stats"]);
    wait_for_prefetch(&traced);
    read_the_start(&traced);
    let (traced_requests, traced_bytes) = image_traffic(&setup, &layers, before);
    traced.stop();
    eprintln!("untraced: {untraced_requests} requests, {untraced_bytes} B; with a trace of one file: {traced_requests} requests, {traced_bytes} B");
    // The trace's own prefetch is one more request. The kernel's
    // asynchronous read-ahead, and reads answered before the rest of
    // their requests arrive, make the split of the same bytes into
    // requests vary from run to run (25-32 here, either mount); without
    // the untraced policy for unforeseen reads it would be twice as many
    // (each 128 KiB file alone).
    assert!(
        traced_requests <= untraced_requests + 1 + untraced_requests / 3,
        "the poor trace made the start send {traced_requests} requests against {untraced_requests}"
    );
    let log = traced.daemon.log_text();
    assert!(log.contains("the start reads beyond its trace"), "{log}");
    let stats: serde_json::Value = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no --stats line:\n{log}"));
    assert!(
        stats["fetch"]["untraced_demand_chunks"].as_u64().unwrap() >= 16,
        "{stats}"
    );
}

#[test]
fn traces_that_do_not_fit_are_ignored_with_a_warning() {
    let test = "traces_that_do_not_fit_are_ignored_with_a_warning";
    if !ready(test) {
        return;
    }
    let setup = Setup::new("8", &["good", "other", "truncated", "altered"]);
    let good = setup.record("good", &["etc/hello.txt", "data/big-text.txt"]);

    // A trace of another image: the same fixture with a different last layer.
    let other_layout = setup.path("other-layout");
    build_fixture(&other_layout, "v1", &[]);
    push_layout(
        &other_layout,
        "v1",
        &format!("{}/small:v1", setup.registry.addr),
    );
    run(loci().args([
        "convert",
        "--plain-http",
        &format!("{}/small:v1", setup.registry.addr),
        &setup.image("other"),
    ]));
    run(loci()
        .args([
            "trace",
            "push",
            "--plain-http",
            "--force",
            &setup.image("other"),
        ])
        .arg(&good));

    // A truncated trace.
    let bytes = std::fs::read(&good).unwrap();
    let truncated = setup.path("truncated.json");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    run(loci()
        .args([
            "trace",
            "push",
            "--plain-http",
            "--force",
            &setup.image("truncated"),
        ])
        .arg(&truncated));

    // A trace whose blob in the registry no longer matches its digest (a
    // trace of its own: blobs are shared across repositories).
    let altered = setup.record("altered", &["etc/hello.txt", "etc/passwd"]);
    let blob = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&altered).unwrap()))
    };
    let blob_path = setup.registry.dir.path().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{blob}/data",
        &blob[..2]
    ));
    let mut data = std::fs::read(&blob_path).unwrap();
    data[10] ^= 0x01;
    std::fs::write(&blob_path, data).unwrap();

    for (repo, says) in [
        ("other", "trace is for layers"),
        ("truncated", "does not decode"),
        ("altered", "digest mismatch"),
    ] {
        let mut mount = setup.mount(repo, &format!("{repo}-mount"), &[]);
        assert_eq!(
            std::fs::read_to_string(mount.dir.join("etc/hello.txt")).unwrap(),
            "hello again from layer 3\n"
        );
        mount.stop();
        let log = mount.daemon.log_text();
        assert!(
            log.contains("ignoring the image's trace") && log.contains(says),
            "{repo}: no warning saying {says:?}:\n{log}"
        );
        assert!(
            !log.contains("prefetch finished"),
            "{repo}: a bad trace was replayed"
        );
    }
}

#[test]
fn an_untraced_read_is_not_starved_by_prefetch() {
    let test = "an_untraced_read_is_not_starved_by_prefetch";
    if !ready(test) {
        return;
    }
    let setup = Setup::new("208", &["big"]);
    setup.record("big", &["big/huge.bin"]);
    let untraced = "data/big-text.txt";
    // Baseline: the same read on a fresh node without prefetch.
    let quiet = setup.mount("big", "quiet", &["--no-prefetch"]);
    let started = Instant::now();
    std::fs::read(quiet.dir.join(untraced)).unwrap();
    let alone = started.elapsed();
    drop(quiet);

    let busy = setup.mount("big", "busy", &[]);
    std::thread::sleep(Duration::from_millis(100)); // let the prefetch get going
    let started = Instant::now();
    std::fs::read(busy.dir.join(untraced)).unwrap();
    let during = started.elapsed();
    let still_prefetching = !busy.daemon.log_text().contains("prefetch finished");
    eprintln!("untraced 3.5 MB read: {alone:?} alone, {during:?} during prefetch (prefetch still running: {still_prefetching})");
    assert!(
        still_prefetching,
        "the prefetch ended before the read: nothing was measured"
    );
    assert!(
        during < alone * 5 + Duration::from_millis(500),
        "the read took {during:?} during prefetch against {alone:?} alone"
    );
}

#[test]
fn trace_record_runs_the_start_through_containerd_and_publishes_it() {
    let test = "trace_record_runs_the_start_through_containerd_and_publishes_it";
    if !ready(test) || !require(test, &["containerd", "ctr", "runc"], true) {
        return;
    }
    let setup = Setup::new("8", &["app"]);
    let containerd = Containerd::start("");
    let out = run(loci()
        .args(["trace", "record", "--plain-http", "--address"])
        .arg(&containerd.socket)
        .args(["--namespace", "rec", &setup.image("app"), "--"])
        .args([
            "/bin/sh",
            "-c",
            "cat /etc/hello.txt; sha256sum /data/big-random.bin",
        ]));
    let artifact = String::from_utf8(out.stdout).unwrap();
    assert!(artifact.trim().starts_with("sha256:"), "{artifact}");
    let shown = run(loci().args(["trace", "show", "--plain-http", &setup.image("app")]));
    let trace: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let paths: Vec<&str> = trace["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    for expected in ["bin/busybox", "etc/hello.txt", "data/big-random.bin"] {
        assert!(
            paths.contains(&expected),
            "{expected} not in the trace: {paths:?}"
        );
    }
    assert!(
        !paths.contains(&"data/big-text.txt"),
        "a file the command never read is in the trace"
    );
}

/// Runs `command` chrooted into a mount, as root, and checks it succeeds.
fn run_in(root: &Path, command: &str) {
    run(std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", command]));
}

/// A new user's first trace: a Debian image (debootstrap, merged /usr)
/// whose config sets User and WorkingDir, recorded with a bare command
/// name. The run is the image's (its PATH finds `python3`, it runs as
/// `nobody` in /tmp); failed and timed-out runs publish nothing; the trace
/// that is published makes the next cold start fetch less than an
/// untraced one.
#[test]
fn trace_record_runs_a_debian_images_bare_command_and_its_trace_pays_off() {
    let test = "trace_record_runs_a_debian_images_bare_command_and_its_trace_pays_off";
    if !ready(test)
        || !require(test, &["containerd", "ctr", "runc", "chroot"], true)
        || !require(test, DEBIAN_IMAGE_NEEDS, true)
    {
        return;
    }
    let layout = debian_python_image();
    let setup = Setup::from_layout(tempfile::tempdir().unwrap(), &layout, "py3-nobody", &["py"]);
    let containerd = Containerd::start("");
    let start =
        "import os, json, email.parser, http.client; print('as', os.getuid(), 'in', os.getcwd())";
    let record = |extra: &[&str], command: &[&str]| {
        loci()
            .args(["trace", "record", "--plain-http", "--address"])
            .arg(&containerd.socket)
            .args(["--namespace", "rec"])
            .args(extra)
            .arg(setup.image("py"))
            .arg("--")
            .args(command)
            .output()
            .unwrap()
    };
    let no_trace = || {
        let shown = loci()
            .args(["trace", "show", "--plain-http", &setup.image("py")])
            .output()
            .unwrap();
        !shown.status.success()
            && String::from_utf8_lossy(&shown.stderr).contains("no trace refers to")
    };

    // Runs that fail leave no trace.
    let failed = record(&[], &["python3", "-c", "import sys; sys.exit(3)"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("exited with 3") && stderr.contains("not kept"),
        "{stderr}"
    );
    let timed_out = record(&["--run-timeout-secs", "2"], &["sleep", "60"]);
    let stderr = String::from_utf8_lossy(&timed_out.stderr);
    assert!(!timed_out.status.success(), "{stderr}");
    assert!(stderr.contains("killed at the timeout"), "{stderr}");
    assert!(no_trace(), "a failed run published a trace");

    // An untraced cold start, for comparison.
    let layers = layer_digests(&setup, "py");
    let from = settled_log(&setup.registry).len();
    let mut cold = setup.mount("py", "untraced", &[]);
    run_in(&cold.dir, &format!("cd /tmp && python3 -c \"{start}\""));
    let (untraced_requests, untraced_bytes) = image_traffic(&setup, &layers, from);
    cold.stop();

    // The bare name is found on the image's PATH, as the image's user, in
    // its working directory.
    let recorded = record(&[], &["python3", "-c", start]);
    let stderr = String::from_utf8_lossy(&recorded.stderr);
    assert!(recorded.status.success(), "{stderr}");
    assert!(stderr.contains("as 65534 in /tmp"), "{stderr}");
    assert!(!no_trace(), "the trace was not published");
    let shown = run(loci().args(["trace", "show", "--plain-http", &setup.image("py")]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    // What the start reads comes from the layers and the trace's pack.
    let mut blobs = layers.clone();
    blobs.push(pack_digest(&shown).expect("the published trace has a pack"));

    let from = settled_log(&setup.registry).len();
    let traced = setup.mount("py", "traced", &[]);
    wait_for_prefetch(&traced);
    run_in(&traced.dir, &format!("cd /tmp && python3 -c \"{start}\""));
    let (traced_requests, traced_bytes) = image_traffic(&setup, &blobs, from);
    eprintln!(
        "untraced: {untraced_requests} requests, {untraced_bytes} B; traced: {traced_requests} requests, {traced_bytes} B"
    );
    assert!(
        traced_bytes < untraced_bytes,
        "with the trace the start fetched {traced_bytes} B, without it {untraced_bytes} B"
    );
}

/// `loci convert --trace-of`: the files a published trace read move to
/// the front of their layers, in the order they were read; the new image
/// is still an ordinary valid image (containerd's own unpacker checks its
/// new diff_ids), it carries a trace of its own with a pack of the chunks
/// that trace reads (fetched back from the new image, so cut to the bytes
/// read), and replaying that trace takes fewer requests than replaying the
/// original on the original (from its layers: the original is recorded
/// without a pack).
#[test]
fn a_trace_ordered_image_replays_its_trace_in_fewer_requests() {
    let test = "a_trace_ordered_image_replays_its_trace_in_fewer_requests";
    if !ready(test) || !require(test, &["containerd", "ctr", "runc"], true) {
        return;
    }
    let setup = Setup::new("32", &["app"]);
    let traced = [
        "etc/hello.txt",
        "big/files/f40.bin",
        "big/files/f03.bin",
        "data/big-text.txt",
        "big/files/f22.bin",
        "big/small.txt",
    ];
    setup.record_configured("app", &traced, "[prefetch]\npack_level = 0\n");
    let source = format!("{}/source:v1", setup.registry.addr);
    let ordered = format!("{}/ordered:loci", setup.registry.addr);
    let out = run(loci().args([
        "convert",
        "--plain-http",
        "--trace-of",
        &setup.image("app"),
        &source,
        &ordered,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("traced files")
            && stderr.contains("packed")
            && stderr.contains("published with"),
        "{stderr}"
    );
    run(loci().args(["inspect", "--plain-http", "--verify", &ordered]));

    // Any runtime can pull it the old way: containerd checks each layer
    // it unpacks against the config's (rewritten) diff_ids.
    let containerd = Containerd::start("");
    containerd.pull(&ordered, "overlayfs");
    let hello = run(containerd.ctr().args([
        "run",
        "--rm",
        &ordered,
        "plain-run",
        "cat",
        "/etc/hello.txt",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout),
        "hello again from layer 3\n"
    );

    // Replays: the original trace on the original image, the new on the new.
    let replay = |reference: &str, name: &str| {
        let repo = reference
            .split('/')
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        let out = run(loci().args(["inspect", "--plain-http", "--json", reference]));
        let layers: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .iter()
            .map(|l| l["layer"].as_str().unwrap().to_string())
            .collect();
        let shown = run(loci().args(["trace", "show", "--plain-http", reference]));
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        let pack = pack_digest(&shown);
        let blobs: Vec<String> = layers.iter().cloned().chain(pack.clone()).collect();
        let before = settled_log(&setup.registry).len();
        let mount = setup.mount(repo, name, &[]);
        wait_for_prefetch(&mount);
        let prefetched = image_traffic(&setup, &blobs, before);
        if let Some(pack) = &pack {
            // One range request per layer it holds chunks of.
            let layers_packed: std::collections::HashSet<_> = shown["pack"]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["layer"].as_u64())
                .collect();
            let log = settled_log(&setup.registry);
            assert_eq!(
                blob_traffic_in(&log, pack, before),
                (layers_packed.len(), shown["pack"]["size"].as_u64().unwrap()),
                "{name}: the pack is read whole, a request per layer"
            );
        }
        let before = settled_log(&setup.registry).len();
        let contents: Vec<Vec<u8>> = traced
            .iter()
            .map(|f| std::fs::read(mount.dir.join(f)).unwrap())
            .collect();
        assert_eq!(
            image_traffic(&setup, &blobs, before),
            (0, 0),
            "{name}: traced reads went to the registry"
        );
        (prefetched, contents, shown)
    };
    let ((original_requests, original_bytes), original, original_trace) =
        replay(&setup.image("app"), "original");
    let ((ordered_requests, ordered_bytes), reordered, ordered_trace) = replay(&ordered, "ordered");
    assert!(original_trace["pack"].is_null(), "{original_trace}");
    assert_pack_holds_each_traced_chunk_once(
        &ordered_trace,
        "the trace-ordered image's trace has a pack",
    );
    eprintln!("prefetch: original {original_requests} requests, {original_bytes} B; trace-ordered {ordered_requests} requests, {ordered_bytes} B");
    assert_eq!(
        original, reordered,
        "the trace-ordered image serves other bytes"
    );
    assert!(
        ordered_requests < original_requests,
        "trace-ordered: {ordered_requests} requests, original: {original_requests}"
    );
}
