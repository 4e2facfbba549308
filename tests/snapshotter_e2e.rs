//! The snapshotter end to end: a real containerd 1.6 with `loci
//! snapshotter` as its proxy plugin, a converted image in a real
//! docker-registry on 127.0.0.1, `loci pull`, then `ctr run` with runc.
//! What was fetched is read from the registry's access log.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NEEDS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "python3",
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
];

/// A registry with the fixture (original and converted), `loci
/// snapshotter` and a containerd that uses it.
struct Setup {
    work: tempfile::TempDir,
    registry: Registry,
    snapshotter: Daemon,
    containerd: Containerd,
}

fn socket(work: &Path) -> PathBuf {
    work.join("loci.sock")
}

/// Starts `loci snapshotter` with its metrics on a free port of 127.0.0.1,
/// reaching the registry at `registry` (host:port) over plain HTTP, as its
/// node configuration says (never as an image's labels say).
fn start_snapshotter(work: &Path, registry: &str) -> Daemon {
    start_snapshotter_with(work, registry, NO_COMPLETION)
}

/// The tests of laziness count what reads fetch: background completion
/// (tested where a test asks for it) would fetch the rest.
const NO_COMPLETION: &str = "[completion]\nenabled = false\n";

/// [`start_snapshotter`] with `extra` lines in its `[snapshotter]` table.
fn start_snapshotter_with(work: &Path, registry: &str, extra: &str) -> Daemon {
    start_snapshotter_budgeted(work, registry, extra, None)
}

/// [`start_snapshotter_with`], the disk budget (`[cache] disk_bytes`) set
/// to `disk_bytes` if given.
fn start_snapshotter_budgeted(
    work: &Path,
    registry: &str,
    extra: &str,
    disk_bytes: Option<u64>,
) -> Daemon {
    write_snapshotter_config(work, registry, extra);
    if let Some(bytes) = disk_bytes {
        let config = work.join("loci.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("disk_bytes = 4294967296", &format!("disk_bytes = {bytes}"));
        std::fs::write(&config, text).unwrap();
    }
    spawn_snapshotter_at(work, &[])
}

impl Setup {
    fn new() -> Setup {
        Setup::new_with(NO_COMPLETION)
    }

    /// [`Setup::new`], the snapshotter's `[snapshotter]` table having
    /// `extra` lines too.
    fn new_with(extra: &str) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("fixture");
        build_fixture(&layout, "v1", &["--big-mib", "16"]);
        let registry = Registry::start();
        push_layout(&layout, "v1", &format!("{}/fixture:v1", registry.addr));
        let key = signing_key(work.path());
        run(loci().args([
            "convert",
            "--plain-http",
            "--sign-key",
            key.to_str().unwrap(),
            &format!("{}/fixture:v1", registry.addr),
            &format!("{}/fixture:loci", registry.addr),
        ]));
        let snapshotter = start_snapshotter_with(work.path(), &registry.addr, extra);
        let containerd = Containerd::start(&format!(
            "[proxy_plugins.loci]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket(work.path()).display()
        ));
        Setup {
            work,
            registry,
            snapshotter,
            containerd,
        }
    }

    fn pull(&self, reference: &str) -> String {
        let out = run(loci()
            .args(["pull", "--plain-http", "--address"])
            .arg(&self.containerd.socket)
            .args(["--namespace", &self.containerd.namespace, reference]));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ctr_run(&self, reference: &str, id: &str, args: &[&str]) -> String {
        let out = run(self
            .containerd
            .ctr()
            .args(["run", "--rm", "--snapshotter", "loci", reference, id])
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `args` in the running task `task`, returning its output; a
    /// read that never gets an answer fails it after a minute.
    fn exec(&self, task: &str, exec_id: &str, args: &[&str]) -> String {
        let out = run(self
            .containerd
            .ctr()
            .args(["task", "exec", "--exec-id", exec_id, task])
            .args(["/bin/busybox", "timeout", "60"])
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The daemon's Prometheus metrics: each sample's name with labels,
    /// and value.
    fn metrics(&self) -> BTreeMap<String, f64> {
        use std::io::{Read, Write};
        let address = metrics_address(&self.snapshotter);
        let mut conn = std::net::TcpStream::connect(address).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    fn loci_snapshots(&self) -> Vec<String> {
        self.containerd.snapshots("loci")
    }
}

impl Drop for Setup {
    /// After a failed test: the daemon leaves lazy mounts to its fd holder,
    /// which would keep them (and itself) alive. End both, and the views
    /// a test mounted.
    fn drop(&mut self) {
        self.snapshotter.stop();
        release_snapshotter_root(&self.work.path().join("root"));
        // Views a test mounted in its work directory (over the lazy mounts).
        unmount_all_under(self.work.path());
    }
}

#[test]
fn pull_and_run_lazily_then_remove_leaves_nothing() {
    let test = "pull_and_run_lazily_then_remove_leaves_nothing";
    if !require(test, NEEDS, true) || !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() != Ok("1")
                || Path::new("/dev/fuse").exists(),
            "{test}: /dev/fuse is missing"
        );
        return;
    }
    let mut setup = Setup::new();
    let root = setup.work.path().join("root");
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let original = format!("{}/fixture:v1", setup.registry.addr);

    // An unconverted image goes the ordinary way: downloaded, applied into
    // the snapshotter's directories, run like with overlayfs.
    let said = setup.pull(&original);
    assert!(said.contains("0 layers lazy, 4 unpacked"), "{said}");
    let out = setup.ctr_run(&original, "plain-1", &["cat", "/etc/hello.txt"]);
    assert_eq!(out, "hello again from layer 3\n");
    assert_eq!(setup.loci_snapshots().len(), 4);
    remove_image_and_collect(&setup, &original, &root);

    let layers: Vec<serde_json::Value> = serde_json::from_slice(
        &run(loci().args(["inspect", "--plain-http", "--json", &converted])).stdout,
    )
    .unwrap();
    assert_eq!(layers.len(), 4);
    let log_from = settled_log(&setup.registry).len();
    let said = setup.pull(&converted);
    assert!(said.contains("4 layers lazy, 0 unpacked"), "{said}");
    let out = setup.ctr_run(&converted, "lazy-1", &["cat", "/etc/hello.txt"]);
    assert_eq!(out, "hello again from layer 3\n");
    let out = setup.ctr_run(
        &converted,
        "lazy-2",
        &["sh", "-c", "readlink /data/abs-link; cat /data/abs-link"],
    );
    assert_eq!(out, "/etc/hello.txt\nhello again from layer 3\n");

    // No layer's open asked the registry for its blob's size: the first
    // read its TOC from the annotated offset to the blob's end, and the
    // others' TOCs were fetched as it opened, from the manifest's
    // descriptors, not one after another as containerd prepared them.
    let heads: Vec<String> = setup.registry.daemon.log_text()[log_from..]
        .lines()
        .filter(|l| l.contains("\"HEAD ") && l.contains("/blobs/"))
        .map(String::from)
        .collect();
    assert_eq!(heads.len(), 0, "{heads:#?}");
    // ...and the manifest they came from was read once by `loci pull` and
    // once by the snapshotter, for them and for the trace lookup both.
    let manifest_reads = setup.registry.daemon.log_text()[log_from..]
        .lines()
        .filter(|l| l.contains("\"GET /v2/fixture/manifests/loci ") && l.contains("loci/"))
        .count();
    assert_eq!(manifest_reads, 2);

    // No layer blob was fetched whole: only range reads of TOCs and chunks.
    let mut big_layers = 0;
    let log = settled_log(&setup.registry);
    for layer in &layers {
        let digest = layer["layer"].as_str().unwrap();
        let size = layer["size"].as_u64().unwrap();
        let (requests, bytes) = blob_traffic_in(&log, digest, log_from);
        assert!(requests > 0, "layer {digest} was never read");
        let gets = setup.registry.blob_gets(digest);
        assert!(
            gets.iter().all(|l| l.contains("\" 206 ")),
            "layer {digest} was not read by ranges only:\n{}",
            gets.join("\n")
        );
        // The big layer's files are never read: its chunks stay remote.
        if size > 8 << 20 {
            assert!(
                bytes < size / 20,
                "layer {digest}: {bytes} of {size} bytes fetched"
            );
            big_layers += 1;
        }
    }
    assert_eq!(big_layers, 1);

    // The daemon's metrics tell the same story, per layer.
    let metrics = setup.metrics();
    let metric = |name: &str| {
        metrics
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics["loci_lazy_mounts_active"], 4.0, "{metrics:?}");
    assert!(metrics[r#"loci_snapshot_operations_total{op="prepare"}"#] >= 4.0);
    let fetched = metric("loci_layer_fetched_bytes_total");
    assert_eq!(fetched.len(), 4, "one series per lazy layer: {fetched:?}");
    for layer in &layers {
        let digest = layer["layer"].as_str().unwrap();
        assert!(
            fetched.iter().any(|(k, _)| k.contains(digest)),
            "no series for {digest}: {fetched:?}"
        );
    }
    let total: f64 = fetched.iter().map(|(_, v)| **v).sum();
    let log = settled_log(&setup.registry);
    let (_, registry_bytes) = layers.iter().fold((0, 0), |(r, b), layer| {
        let (r2, b2) = blob_traffic_in(&log, layer["layer"].as_str().unwrap(), log_from);
        (r + r2, b + b2)
    });
    assert!(
        total > 0.0 && total <= registry_bytes as f64,
        "metrics say {total} bytes fetched, the registry sent {registry_bytes}"
    );
    assert!(metrics["loci_fetch_latency_seconds_count"] > 0.0);
    assert_eq!(mounts_under(&root).len(), 4, "one FUSE mount per layer");

    // A container that runs across restarts of the snapshotter, graceful
    // and not: its reads of files nothing has read yet (so neither the
    // page cache nor loci's cache has them) are served by the next daemon.
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "lazy-bg",
        "sleep",
        "600",
    ]));
    setup.snapshotter.stop();
    setup.snapshotter = start_snapshotter(setup.work.path(), &setup.registry.addr);
    let out = setup.exec("lazy-bg", "read-1", &["sha256sum", "/big/huge.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
    // SIGKILL while the container reads: requests the dead daemon had read
    // but not answered are sent again to the next one.
    let reading = setup
        .containerd
        .ctr()
        .args(["task", "exec", "--exec-id", "read-2", "lazy-bg"])
        .args(["/bin/busybox", "timeout", "60", "sh", "-c"])
        .arg("cat /big/files/* | sha256sum")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    setup.snapshotter.child.kill().unwrap();
    setup.snapshotter.child.wait().unwrap();
    setup.snapshotter = start_snapshotter(setup.work.path(), &setup.registry.addr);
    let out = reading.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().1.as_str()),
        "{out}"
    );
    let out = setup.exec("lazy-bg", "read-3", &["cat", "/big/small.txt"]);
    assert_eq!(out, "a small file in a big layer\n");
    let log = setup.snapshotter.log_text();
    assert_eq!(
        log.matches("serving a lazy layer again on its kept connection")
            .count(),
        4,
        "{log}"
    );

    // A restart while the registry is down: the TOCs kept next to the
    // mounts serve the layers again, and what the cache holds is read.
    setup.registry.daemon.stop();
    setup.snapshotter.stop();
    setup.snapshotter = start_snapshotter(setup.work.path(), &setup.registry.addr);
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let out = setup.exec("lazy-bg", "read-4", &["cat", "/big/small.txt"]);
    assert_eq!(out, "a small file in a big layer\n");
    let log = setup.snapshotter.log_text();
    assert_eq!(
        log.matches("serving a lazy layer again on its kept connection")
            .count(),
        4,
        "{log}"
    );
    setup.registry.restart();
    run(setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "lazy-bg"]));
    wait_for_task_exit(&setup, "lazy-bg");
    run(setup.containerd.ctr().args(["containers", "rm", "lazy-bg"]));

    // containerd is still connected after the restarts: the persisted
    // snapshots are served and a new container runs.
    wait_for_containerd(&setup);
    assert_eq!(setup.loci_snapshots().len(), 4);
    let out = setup.ctr_run(&converted, "lazy-3", &["cat", "/etc/hello.txt"]);
    assert_eq!(out, "hello again from layer 3\n");
    let live = mounts_under(&root);
    assert_eq!(live.len(), 4, "{live:?}");
    remove_image_and_collect(&setup, &converted, &root);

    // Holding no connection any more, the fd holder exits with its daemon.
    let holder_socket = root.join("fuse-fds.sock");
    assert!(holder_socket.exists());
    setup.snapshotter.stop();
    let start = Instant::now();
    while holder_socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the fd holder is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sha256 of the fixture's `/big/huge.bin` and of its `/big/files/*`
/// concatenated (`--big-mib 16`), from the generator's seeded random
/// bytes, not from any mount.
fn fixture_sha256s() -> (String, String) {
    let out = run(Command::new("python3").args([
        "-c",
        "import hashlib, random\n\
         r = random.Random(7)\n\
         print(hashlib.sha256(r.randbytes(8 << 20)).hexdigest())\n\
         print(hashlib.sha256(b''.join(r.randbytes(128 << 10) for _ in range(64))).hexdigest())",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::to_string);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// Waits until containerd reaches the snapshotter again (it redials the
/// proxy after a backoff).
fn wait_for_containerd(setup: &Setup) {
    let start = Instant::now();
    while !setup
        .containerd
        .ctr()
        .args(["snapshots", "--snapshotter", "loci", "ls"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "containerd never reconnected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_task_exit(setup: &Setup, id: &str) {
    let start = Instant::now();
    loop {
        let out = run(setup.containerd.ctr().args(["task", "ls"]));
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let running = listing
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"));
        if !running {
            let _ = setup.containerd.ctr().args(["task", "rm", id]).output();
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "task {id} did not stop: {listing}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the image; containerd's GC then removes every snapshot, and
/// loci every mount and directory.
fn remove_image_and_collect(setup: &Setup, image: &str, root: &Path) {
    run(setup
        .containerd
        .ctr()
        .args(["images", "rm", "--sync", image]));
    let start = Instant::now();
    while !setup.loci_snapshots().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "GC left snapshots: {:?}",
            setup.loci_snapshots()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mounts_under(root).is_empty(), "{:?}", mounts_under(root));
    let left: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "orphaned snapshot dirs: {left:?}");
}

/// Builds, in the layout at `dir` (a copy of the converted fixture under
/// `tag`), the image `evil`: the fixture's second layer, its loci
/// annotations and genuine signature included, claiming the diff_id of the
/// fixture's first layer, so that it would be committed under that
/// layer's chain ID.
fn craft_diff_id_claim(dir: &Path, tag: &str) {
    let (_, entry, mut manifest) = layout_manifest(dir, tag);
    let mut config = layout_json(dir, manifest["config"]["digest"].as_str().unwrap());
    let claimed = config["rootfs"]["diff_ids"][0].clone();
    let mut layer = manifest["layers"][1].clone();
    layer["annotations"]["containerd.io/snapshot/loci.uncompressed"] = claimed.clone();
    assert!(
        layer["annotations"]["containerd.io/snapshot/loci.signature"].is_string(),
        "the fixture's layers are signed"
    );
    config["rootfs"]["diff_ids"] = serde_json::json!([claimed]);
    config["history"] = serde_json::json!([]);
    let (config_digest, config_size) = put_layout_json(dir, &config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    manifest["layers"] = serde_json::json!([layer]);
    tag_layout_manifest(dir, &entry, &manifest, "evil");
}

/// An image that claims another layer's diff_id (here a genuinely signed
/// loci layer replayed under the diff_id of the fixture's base layer) is
/// not served lazily under that layer's chain ID: the signature does not
/// cover the claim, so the snapshotter leaves the layer to be unpacked, and
/// unpacking finds the true diff_id and fails the pull. The image with the
/// true layer, pulled after, sees its own files, and the daemon serves on.
#[test]
fn an_image_claiming_another_layers_diff_id_cannot_stand_in_for_it() {
    let test = "an_image_claiming_another_layers_diff_id_cannot_stand_in_for_it";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new();
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let evil = format!("{}/fixture:evil", setup.registry.addr);
    let layout = setup.work.path().join("evil-layout");
    copy_to_layout(&converted, &layout);
    craft_diff_id_claim(&layout, "loci");
    push_layout(&layout, "evil", &evil);

    let out = loci()
        .args(["pull", "--plain-http", "--address"])
        .arg(&setup.containerd.socket)
        .args(["--namespace", &setup.containerd.namespace, &evil])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the claiming image was pulled: {stderr}"
    );
    assert!(
        stderr.contains("not the diff_id") && stderr.contains("its image claims"),
        "{stderr}"
    );
    let log = setup.snapshotter.log_text();
    assert!(
        log.contains("not admitted for lazy service")
            && log.contains("does not match this layer's blob, TOC and diff_id"),
        "the snapshotter's log does not say why the layer was refused:\n{log}"
    );
    assert!(
        setup.loci_snapshots().is_empty(),
        "the refused layer left a snapshot: {:?}",
        setup.loci_snapshots()
    );

    // The true image: served lazily, its base layer its own.
    let pulled = setup.pull(&converted);
    assert!(pulled.contains("4 layers lazy, 0 unpacked"), "{pulled}");
    // /bin/busybox and /etc/group come from the base layer alone: the
    // claiming layer (the fixture's second) has neither.
    let group = setup.ctr_run(
        &converted,
        "true-image",
        &["/bin/busybox", "cat", "/etc/group"],
    );
    assert_eq!(group, "root:x:0:\nuser:x:1000:\n");
}

/// Copies the registry image `reference` into the OCI layout `layout` at
/// tag `loci`, for a test to tamper with.
fn copy_to_layout(reference: &str, layout: &Path) {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:loci", layout.display())));
}

/// The pid of the fd holder of the snapshotter at `root`, if one runs.
fn holder_pid(root: &Path) -> Option<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!(
            "fd-holder --socket {}",
            root.join("fuse-fds.sock").display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fd holder is SIGKILLed under a running container: the daemon hands
/// the connections to a new holder, so a later crash of the daemon is
/// survived as before. Then, the daemon stopped, `loci release` closes the
/// mounts and the holder for good.
#[test]
fn a_dead_holder_is_replaced_and_release_closes_everything() {
    let test = "a_dead_holder_is_replaced_and_release_closes_everything";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let mut setup = Setup::new();
    let root = setup.work.path().join("root");
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    setup.pull(&converted);
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "holder-bg",
        "sleep",
        "600",
    ]));
    let first = holder_pid(&root).expect("a holder runs");
    run(Command::new("kill").args(["-KILL", &first.to_string()]));
    wait_until("no new holder took the connections", 20, || {
        setup
            .snapshotter
            .log_text()
            .contains("a new fd holder keeps the FUSE connections")
    });
    let second = holder_pid(&root).expect("a new holder runs");
    assert_ne!(first, second);
    let log = strip_ansi(&setup.snapshotter.log_text());
    assert!(log.contains("handed=4"), "{log}");

    // The new holder does the old one's job: the daemon dies, the next
    // one serves the same connections, the container reads.
    setup.snapshotter.child.kill().unwrap();
    setup.snapshotter.child.wait().unwrap();
    setup.snapshotter = start_snapshotter(setup.work.path(), &setup.registry.addr);
    let out = setup.exec("holder-bg", "read-1", &["sha256sum", "/big/huge.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
    let log = setup.snapshotter.log_text();
    assert_eq!(
        log.matches("serving a lazy layer again on its kept connection")
            .count(),
        4,
        "{log}"
    );

    // Stopped for good: release refuses while the daemon runs, then
    // closes every connection and mount.
    let refused = loci()
        .args(["release", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{refused:?}"
    );
    setup.snapshotter.stop();
    assert_eq!(
        mounts_under(&root).len(),
        4,
        "SIGTERM leaves the mounts for the next daemon"
    );
    let out = run(loci().args(["release", "--root"]).arg(&root));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("held 4 connections; 4 FUSE mounts unmounted"),
        "{said}"
    );
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    wait_until("the holder did not exit", 10, || {
        holder_pid(&root).is_none()
    });
    let _ = setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "holder-bg"])
        .output();
    wait_for_task_exit(&setup, "holder-bg");
}

/// With no daemon to take them back, held connections are closed after
/// `held_connection_timeout_secs`: a read in a container then fails at
/// once instead of hanging.
#[test]
fn connections_nobody_serves_are_closed_after_the_timeout() {
    let test = "connections_nobody_serves_are_closed_after_the_timeout";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let mut setup =
        Setup::new_with("held_connection_timeout_secs = 2\n[completion]\nenabled = false");
    let root = setup.work.path().join("root");
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let pulled = loci()
        .args(["pull", "--plain-http", "--address"])
        .arg(&setup.containerd.socket)
        .args(["--namespace", &setup.containerd.namespace, &converted])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&pulled.stderr),
        setup.snapshotter.log_text()
    );
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "orphan-bg",
        "sleep",
        "600",
    ]));
    setup.snapshotter.stop();
    wait_until(
        "the holder kept the connections past the timeout",
        20,
        || holder_pid(&root).is_none(),
    );
    let began = Instant::now();
    let out = setup
        .containerd
        .ctr()
        .args(["task", "exec", "--exec-id", "read-orphan", "orphan-bg"])
        .args(["/bin/busybox", "timeout", "30", "cat", "/big/files/f20.bin"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the read succeeded: {out:?}");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the read waited {:?} (it should fail at once)",
        began.elapsed()
    );
    let holder_log = std::fs::read_to_string(root.join("fd-holder.log")).unwrap_or_default();
    assert!(
        holder_log.contains("no daemon took the FUSE connections back"),
        "{holder_log}"
    );
    let _ = setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "orphan-bg"])
        .output();
    wait_for_task_exit(&setup, "orphan-bg");
}

/// Adds, in the layout at `dir`, the image `new_tag`: the image `tag` with
/// `key: value` among every layer's annotations.
fn plant_annotation(dir: &Path, tag: &str, new_tag: &str, key: &str, value: &str) {
    let (_, entry, mut manifest) = layout_manifest(dir, tag);
    for layer in manifest["layers"].as_array_mut().unwrap() {
        layer["annotations"][key] = value.into();
    }
    tag_layout_manifest(dir, &entry, &manifest, new_tag);
}

/// An image whose layers ask, by annotation (which containerd passes on
/// as a snapshot label), for plain HTTP to a registry host the node does
/// not reach over plain HTTP: the snapshotter does not lower the
/// transport; the layers cannot be served lazily from that host over
/// HTTPS, so they take the ordinary path. The same image from the host the
/// node's configuration names is served lazily (the control).
#[test]
fn an_annotation_asking_for_plain_http_is_ignored() {
    let test = "an_annotation_asking_for_plain_http_is_ignored";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new();
    // A second name for the same registry, not in plain_http_registries.
    let other = FaultProxy::start(&setup.registry.addr, setup.work.path().join("proxy.log"));
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let layout = setup.work.path().join("planted-layout");
    copy_to_layout(&converted, &layout);
    plant_annotation(
        &layout,
        "loci",
        "planted",
        "containerd.io/snapshot/loci.plain-http",
        "true",
    );
    push_layout(
        &layout,
        "planted",
        &format!("{}/fixture:planted", setup.registry.addr),
    );

    let said = setup.pull(&format!("{}/fixture:planted", other.addr));
    assert!(said.contains("0 layers lazy, 4 unpacked"), "{said}");
    let log = setup.snapshotter.log_text();
    assert!(
        log.contains("cannot serve the layer lazily")
            && log.contains(&format!("https://{}", other.addr)),
        "the snapshotter did not try HTTPS to {}:\n{log}",
        other.addr
    );
    let proxy_log = std::fs::read_to_string(setup.work.path().join("proxy.log")).unwrap();
    assert!(proxy_log.contains("refused a TLS handshake"), "{proxy_log}");
    // The control: from the configured host, the same layers are lazy.
    let image = format!("{}/fixture:planted", setup.registry.addr);
    remove_image_and_collect(
        &setup,
        &format!("{}/fixture:planted", other.addr),
        &setup.work.path().join("root"),
    );
    let said = setup.pull(&image);
    assert!(said.contains("4 layers lazy, 0 unpacked"), "{said}");
}

/// A node set to record starts (`[prefetch] record_starts`) publishes the
/// first start of an image that has no trace: what the container read,
/// through the lazily served layers, in the image's layer order.
#[test]
fn a_node_records_a_real_start_and_publishes_it_as_the_trace() {
    let test = "a_node_records_a_real_start_and_publishes_it_as_the_trace";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new_with(
        "[prefetch]\nrecord_starts = true\nrecord_window_secs = 3\n[completion]\nenabled = false",
    );
    let image = format!("{}/fixture:loci", setup.registry.addr);
    setup.pull(&image);
    let out = setup.ctr_run(
        &image,
        "recorded",
        &[
            "/bin/sh",
            "-c",
            "cat /etc/hello.txt; sha256sum /data/big-random.bin",
        ],
    );
    assert!(out.contains("hello again from layer 3"), "{out}");
    wait_until("the recorded start is published", 30, || {
        setup.snapshotter.log_text().contains("trace published")
    });
    let shown = run(loci().args(["trace", "show", "--plain-http", &image]));
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
        "a file the start never read is in the trace"
    );
    // Published with its pack, from what the node's cache holds (this
    // node's next start finds the chunks cached; the pack's replay is
    // prefetch_e2e's).
    let frames = trace["pack"]["frames"].as_array();
    assert!(frames.is_some_and(|f| !f.is_empty()), "no pack: {trace}");

    // The next cold start of the image replays it. Pulled by digest, so
    // the node has not looked this reference up yet: the lookup starts as
    // the first layer opens, and every layer's replay shares it (one
    // lookup for the image, not one per layer).
    let digest = image_digest(&setup, &image);
    remove_image_and_collect(&setup, &image, &setup.work.path().join("root"));
    let by_digest = format!("{}/fixture@{digest}", setup.registry.addr);
    let log_from = settled_log(&setup.registry).len();
    let snap_from = setup.snapshotter.log_text().len();
    setup.pull(&by_digest);
    let out = setup.ctr_run(&by_digest, "replayed", &["cat", "/etc/hello.txt"]);
    assert!(out.contains("hello again from layer 3"), "{out}");
    wait_until("the replay finishes", 30, || {
        strip_ansi(&setup.snapshotter.log_text()[snap_from..]).contains("prefetch finished")
    });
    let log = strip_ansi(&setup.snapshotter.log_text()[snap_from..]);
    let replays = log
        .lines()
        .filter(|l| l.contains("replaying the image's start trace") && l.contains(&by_digest))
        .count();
    assert_eq!(replays, 1, "{log}");
    let fallback_tag = format!("/manifests/{}", digest.replace(':', "-"));
    let lookups = setup.registry.daemon.log_text()[log_from..]
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains(&fallback_tag))
        .count();
    assert_eq!(lookups, 1, "the trace was looked up {lookups} times");
}

/// The manifest digest containerd has for `image`.
fn image_digest(setup: &Setup, image: &str) -> String {
    let out = run(setup.containerd.ctr().args(["images", "ls"]));
    let listing = String::from_utf8(out.stdout).unwrap();
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .unwrap_or_else(|| panic!("{image} not in:\n{listing}"))
        .to_string()
}

/// A converted image whose top layer claims a diff_id its content does not
/// have, on a node that trusts images' claims (`trust = "any"`, so no
/// signature stops it at admission): the layer is served lazily until its
/// background completion has the whole blob, finds the stream is not that
/// diff_id, and takes the layer out of service. The log names the layer,
/// the metric counts it, and reads of its files fail from then on rather
/// than serve content the image lied about.
#[test]
fn a_layer_whose_content_contradicts_its_diff_id_is_taken_out_of_service() {
    let test = "a_layer_whose_content_contradicts_its_diff_id_is_taken_out_of_service";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new_with("trust = \"any\"\n[completion]\nquiet_secs = 1\n");
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let liar = format!("{}/fixture:liar", setup.registry.addr);
    let layout = setup.work.path().join("liar-layout");
    copy_to_layout(&converted, &layout);
    let (_, entry, mut manifest) = layout_manifest(&layout, "loci");
    let mut config = layout_json(&layout, manifest["config"]["digest"].as_str().unwrap());
    let top = manifest["layers"].as_array().unwrap().len() - 1;
    let layer_digest = manifest["layers"][top]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let fake = format!("sha256:{}", "5a".repeat(32));
    manifest["layers"][top]["annotations"]["containerd.io/snapshot/loci.uncompressed"] =
        fake.clone().into();
    config["rootfs"]["diff_ids"][top] = fake.into();
    let (config_digest, config_size) = put_layout_json(&layout, &config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    tag_layout_manifest(&layout, &entry, &manifest, "liar");
    push_layout(&layout, "liar", &liar);

    let pulled = setup.pull(&liar);
    assert!(pulled.contains("4 layers lazy"), "{pulled}");
    wait_until("the lying layer's completion", 60, || {
        setup
            .snapshotter
            .log_text()
            .contains("layer taken out of service")
    });
    let log = strip_ansi(&setup.snapshotter.log_text());
    let line = log
        .lines()
        .find(|l| l.contains("layer taken out of service"))
        .unwrap();
    assert!(
        line.contains(&layer_digest) && line.contains("diff_id"),
        "the error does not name the layer and the diff_id: {line}"
    );
    assert_eq!(
        setup.metrics().get("loci_layers_refused_total"),
        Some(&1.0),
        "{:?}",
        setup.metrics()
    );
    // Its files are no longer served; the layers below still are.
    let out = setup
        .containerd
        .ctr()
        .args(["run", "--rm", "--snapshotter", "loci", &liar, "liar-read"])
        .args(["/bin/busybox", "cat", "/big/small.txt"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a refused layer's file was read: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let group = setup.ctr_run(&liar, "liar-base", &["/bin/busybox", "cat", "/etc/group"]);
    assert_eq!(group, "root:x:0:\nuser:x:1000:\n");
}

/// A container started lazily keeps running and reading the right bytes
/// while its layers complete in the background: the daemon is restarted
/// while the big layer is half fetched (completion capped at 4 MB/s), the
/// next daemon resumes that completion rather than starting over, every
/// layer ends complete and verified, and from then on the container's
/// reads of files nothing had read are served from the local blobs (no
/// registry request) with the fixture's own bytes.
#[test]
fn a_running_container_reads_correctly_while_its_layers_complete_across_a_restart() {
    let test = "a_running_container_reads_correctly_while_its_layers_complete_across_a_restart";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    const COMPLETING: &str = "[completion]\nquiet_secs = 1\nmax_bytes_per_sec = 4000000\n";
    let mut setup = Setup::new_with(COMPLETING);
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let said = setup.pull(&converted);
    assert!(said.contains("4 layers lazy, 0 unpacked"), "{said}");
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "completing",
        "sleep",
        "600",
    ]));
    let out = setup.exec("completing", "read-1", &["cat", "/big/small.txt"]);
    assert_eq!(out, "a small file in a big layer\n");
    // Restart in the middle of the big layer's completion.
    wait_until("the big layer's completion to be under way", 60, || {
        setup
            .metrics()
            .iter()
            .any(|(k, v)| k.starts_with("loci_layer_completion_bytes_total") && *v >= 4e6)
    });
    setup.snapshotter.stop();
    let partials = std::fs::read_dir(setup.work.path().join("root/snapshots"))
        .unwrap()
        .filter(|d| d.as_ref().unwrap().path().join("blob.partial").exists())
        .count();
    // The big layer's at least (the small ones may still be under way too).
    assert!(partials >= 1, "no completion was cut off half way");
    setup.snapshotter = start_snapshotter_with(setup.work.path(), &setup.registry.addr, COMPLETING);
    // Reads go on while the completions resume.
    let out = setup.exec("completing", "read-2", &["sha256sum", "/big/huge.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
    wait_until("every layer to be complete", 120, || {
        strip_ansi(&setup.snapshotter.log_text())
            .matches("layer complete and verified")
            .count()
            + strip_ansi(&setup.snapshotter.log_text())
                .matches("layer served from its completed blob")
                .count()
            >= 4
    });
    let log = strip_ansi(&setup.snapshotter.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("layer complete and verified") && !l.contains("resumed_bytes=0")),
        "the cut-off completion was not resumed:\n{log}"
    );
    // Complete layers are read locally: nothing more from the registry.
    let before = setup.registry.daemon.log_text().matches("/blobs/").count();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let out = setup.exec(
        "completing",
        "read-3",
        &["sh", "-c", "cat /big/files/* | sha256sum"],
    );
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().1.as_str()),
        "{out}"
    );
    let after = setup.registry.daemon.log_text().matches("/blobs/").count();
    assert_eq!(
        before, after,
        "a complete layer's read went to the registry"
    );
    run(setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "completing"]));
    wait_for_task_exit(&setup, "completing");
    run(setup
        .containerd
        .ctr()
        .args(["containers", "rm", "completing"]));
}

/// Once every layer is complete, a container started on the FUSE lower
/// dirs before that is served by FUSE passthrough (this kernel has it): its
/// files' reads go to ordinary files the daemon wrote out once (now in the
/// laid-out directories), with the fixture's own bytes, and the daemon says
/// so.
#[test]
fn complete_layers_are_read_by_passthrough() {
    let test = "complete_layers_are_read_by_passthrough";
    if !require(test, NEEDS, true) || !require_fuse(test) || !require_fuse_passthrough(test) {
        return;
    }
    let setup = Setup::new_with("[completion]\nquiet_secs = 1\n");
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let said = setup.pull(&converted);
    assert!(said.contains("4 layers lazy, 0 unpacked"), "{said}");
    // Started on the FUSE lower dirs, before the layers are complete (new
    // containers after that get the plain directories instead).
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "native",
        "sleep",
        "600",
    ]));
    wait_until("every layer to be complete and laid out", 120, || {
        strip_ansi(&setup.snapshotter.log_text())
            .matches("layer laid out as a plain lower directory")
            .count()
            >= 4
    });
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let out = setup.exec("native", "read", &["sha256sum", "/big/huge.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
    let log = strip_ansi(&setup.snapshotter.log_text());
    assert!(
        log.contains("the complete layer's files are opened by passthrough"),
        "{log}"
    );
    // The files live once, in the laid-out directories.
    let huge = std::fs::read_dir(setup.work.path().join("root/snapshots"))
        .unwrap()
        .map(|d| d.unwrap().path().join("lower/big/huge.bin"))
        .find(|p| p.exists())
        .expect("huge.bin laid out");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&huge).unwrap()),
        1
    );
    run(setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "native"]));
    wait_for_task_exit(&setup, "native");
    run(setup.containerd.ctr().args(["containers", "rm", "native"]));
}

/// Completed layers and cached chunks share `[cache] disk_bytes`: with a
/// budget that holds one image's completed layers and a half, a second
/// image's completion evicts the first image's layers (claimed earlier,
/// used by no container), never the second's; the bound holds throughout;
/// and the evicted image still runs, its reads lazy again.
#[test]
fn completed_layers_are_evicted_least_recently_used_first_within_the_disk_budget() {
    let test = "completed_layers_are_evicted_least_recently_used_first_within_the_disk_budget";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    const COMPLETING: &str = "[completion]\nquiet_secs = 1\n";
    let mut setup = Setup::new_with(COMPLETING);
    let first = format!("{}/fixture:loci", setup.registry.addr);
    let second = format!("{}/fixture:loci-b", setup.registry.addr);
    let layout = setup.work.path().join("fixture-b");
    build_fixture(&layout, "v2", &["--big-mib", "16", "--variant", "two"]);
    push_layout(
        &layout,
        "v2",
        &format!("{}/fixture:v2", setup.registry.addr),
    );
    run(loci().args([
        "convert",
        "--plain-http",
        "--sign-key",
        signing_key(setup.work.path()).to_str().unwrap(),
        &format!("{}/fixture:v2", setup.registry.addr),
        &second,
    ]));
    let metric = |setup: &Setup, name: &str| -> f64 {
        setup
            .metrics()
            .iter()
            .filter(|(k, _)| k.starts_with(name))
            .map(|(_, v)| v)
            .sum()
    };
    let complete = |setup: &Setup| {
        let log = strip_ansi(&setup.snapshotter.log_text());
        log.matches("layer complete and verified").count()
            + log.matches("layer served from its completed blob").count()
    };
    setup.pull(&first);
    wait_until("the first image to be complete", 120, || {
        complete(&setup) >= 4
    });
    let first_layers = metric(&setup, "loci_disk_used_bytes{kind=\"layers\"}");
    assert!(first_layers > 20e6, "{first_layers}");

    // Room for the first image's layers and half as much again.
    let bound = (first_layers * 1.5) as u64;
    setup.snapshotter.stop();
    setup.snapshotter = start_snapshotter_budgeted(
        setup.work.path(),
        &setup.registry.addr,
        COMPLETING,
        Some(bound),
    );
    // (The new daemon's log: each layer found complete at its mount.)
    wait_until("the first image's layers to be claimed again", 60, || {
        complete(&setup) >= 4
    });
    wait_for_containerd(&setup);
    let blobs_of = |setup: &Setup| -> Vec<String> {
        let mut dirs: Vec<String> = std::fs::read_dir(setup.work.path().join("root/snapshots"))
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|d| d.join("blob").exists())
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        dirs
    };
    let first_blobs = blobs_of(&setup);
    assert_eq!(first_blobs.len(), 4, "{first_blobs:?}");

    let said = setup.pull(&second);
    assert!(said.contains("lazy"), "{said}");
    let started = Instant::now();
    let mut peak = 0.0f64;
    wait_until("the second image's layers to complete", 120, || {
        let used = metric(&setup, "loci_disk_used_bytes");
        peak = peak.max(used);
        // Its first layer is the first image's (same chain): three new.
        let log = strip_ansi(&setup.snapshotter.log_text());
        let done = log.matches("layer complete and verified").count();
        done >= 3 || started.elapsed() > Duration::from_secs(110)
    });
    let used = metric(&setup, "loci_disk_used_bytes");
    assert!(
        peak.max(used) <= bound as f64,
        "disk use {} over the budget {bound}",
        peak.max(used)
    );
    let evicted = metric(&setup, "loci_completed_layers_evicted_total");
    assert!(
        evicted >= 1.0,
        "nothing was evicted (bound {bound}, metrics {:?}):\n{}",
        setup
            .metrics()
            .iter()
            .filter(|(k, _)| k.starts_with("loci_disk"))
            .collect::<Vec<_>>(),
        strip_ansi(&setup.snapshotter.log_text())
    );
    let blobs = blobs_of(&setup);
    let kept_first: Vec<&String> = blobs.iter().filter(|b| first_blobs.contains(b)).collect();
    let second_blobs = blobs.len() - kept_first.len();
    assert_eq!(
        second_blobs, 3,
        "the second image's layers were evicted: {blobs:?}"
    );
    assert_eq!(
        first_blobs.len() - kept_first.len(),
        evicted as usize,
        "evicted layers other than the first image's: {blobs:?} after {first_blobs:?}"
    );

    // The first image still runs; what was evicted is read lazily again.
    let out = setup.ctr_run(&first, "after-eviction", &["sha256sum", "/big/huge.bin"]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
}

/// A complete layer is laid out as a plain directory, and snapshots made
/// after that use it as their overlayfs lower dir, with no FUSE under
/// them: the tree they show is the one the FUSE lower dirs showed
/// (metadata, xattrs, whiteouts, hard links, devices), and a container
/// started before the switch keeps reading through FUSE.
#[test]
fn complete_layers_become_plain_lower_dirs_for_new_snapshots() {
    let test = "complete_layers_become_plain_lower_dirs_for_new_snapshots";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    // Slow enough that the FUSE view is read before the big layer is
    // complete; not eager, though the walk reads every file.
    let setup = Setup::new_with(
        "[completion]\nquiet_secs = 1\nmax_bytes_per_sec = 4000000\neager_fraction = 0.0\n",
    );
    let converted = format!("{}/fixture:loci", setup.registry.addr);
    let said = setup.pull(&converted);
    assert!(said.contains("4 layers lazy, 0 unpacked"), "{said}");
    let diff_ids = layout_diff_ids(&setup.work.path().join("fixture"), "v1");
    let lowerdirs = |target: &Path| -> Vec<String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(target.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} is not mounted", target.display()))
            .to_string();
        let options = line.split(' ').nth(3).unwrap().to_string();
        options
            .split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap_or_else(|| panic!("no lowerdir in {line}"))
            .split(':')
            .map(str::to_string)
            .collect()
    };
    let through_fuse = setup.work.path().join("view-fuse");
    setup
        .containerd
        .mount_view(&diff_ids, "loci", "view-fuse", &through_fuse);
    let expected = walk_tree(&through_fuse);
    assert!(
        lowerdirs(&through_fuse).iter().any(|d| d.ends_with("/fs")),
        "the first view was not over FUSE"
    );
    run(setup.containerd.ctr().args([
        "run",
        "-d",
        "--snapshotter",
        "loci",
        &converted,
        "before-switch",
        "sleep",
        "600",
    ]));
    wait_until(
        "every layer to be laid out as a plain directory",
        120,
        || {
            strip_ansi(&setup.snapshotter.log_text())
                .matches("layer laid out as a plain lower directory")
                .count()
                >= 4
        },
    );

    let plain = setup.work.path().join("view-plain");
    setup
        .containerd
        .mount_view(&diff_ids, "loci", "view-plain", &plain);
    let dirs = lowerdirs(&plain);
    assert_eq!(dirs.len(), 4, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.ends_with("/lower")), "{dirs:?}");
    assert_same_tree(&expected, &walk_tree(&plain));

    // The container started before the switch reads on, through FUSE.
    let out = setup.exec(
        "before-switch",
        "after-switch",
        &["sha256sum", "/big/huge.bin"],
    );
    assert_eq!(
        out.split_whitespace().next(),
        Some(fixture_sha256s().0.as_str()),
        "{out}"
    );
    // A container started after it runs on the plain directories.
    let out = setup.ctr_run(&converted, "after-switch", &["cat", "/etc/hello.txt"]);
    assert_eq!(out, "hello again from layer 3\n");
    run(setup
        .containerd
        .ctr()
        .args(["task", "kill", "-s", "KILL", "before-switch"]));
    wait_for_task_exit(&setup, "before-switch");
    run(setup
        .containerd
        .ctr()
        .args(["containers", "rm", "before-switch"]));
}
