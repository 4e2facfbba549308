//! Shared harness for tests that run real components: a `docker-registry`
//! on 127.0.0.1, a private containerd, the fixture image builder, and a
//! file-tree walker to compare what different unpackers produce.
//!
//! A test that needs something the machine lacks says so and skips, unless
//! `LOCI_REQUIRE_SYSTEM_TESTS=1` (set by CI), where a skip is a failure.
#![allow(dead_code)]

pub mod token_issuer;

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (fixtures, tools).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Checks that every requirement holds; if not, skips the test with the
/// reason (or fails it under CI).
pub fn require(test: &str, binaries: &[&str], root: bool) -> bool {
    let mut missing: Vec<String> = binaries
        .iter()
        .filter(|b| which(b).is_none())
        .map(|b| format!("`{b}` not on PATH"))
        .collect();
    if root && unsafe { libc_geteuid() } != 0 {
        missing.push("not running as root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join(", ");
    if std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
        panic!("{test}: required system component missing: {reason}");
    }
    eprintln!("SKIP {test}: {reason} (install them, see .ci/run, or set LOCI_REQUIRE_SYSTEM_TESTS=1 to fail instead)");
    false
}

/// Checks that /dev/fuse exists; if not, skips (or fails under CI).
pub fn require_fuse(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
        panic!("{test}: /dev/fuse is missing");
    }
    eprintln!("SKIP {test}: /dev/fuse is missing");
    false
}

/// Whether the kernel has FUSE passthrough (Linux 6.9 and later); says
/// why a test skips if not, and fails it where system tests are required.
pub fn require_fuse_passthrough(test: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version >= (6, 9) {
        return true;
    }
    let reason = format!(
        "kernel {} has no FUSE passthrough (Linux >= 6.9)",
        release.trim()
    );
    if std::env::var("LOCI_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
        panic!("{test}: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The `loci` binary under test.
pub fn loci() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loci"));
    cmd.env("LOCI_LOG", "info");
    cmd
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            panic!("{what} not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when the handle drops.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What `find` first finds in the daemon's log (colour codes taken
    /// out), waiting for it up to 30 s (`what` names it in the failure).
    pub fn wait_for_log<T>(&self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let log = strip_ansi(&self.log_text());
            if let Some(found) = find(&log) {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {what} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What follows "listening on " in the daemon's log: the address a
    /// daemon told to take port 0 bound (`what` names the daemon).
    pub fn listening_address(&self, what: &str) -> String {
        self.wait_for_log(&format!("address {what} listens on"), |log| {
            log.lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(|a| a.trim().to_string())
        })
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real `docker-registry` on 127.0.0.1 with storage in a temp dir.
pub struct Registry {
    pub addr: String,
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_configured("", "")
    }

    /// A registry whose config has `http_extra` added to its `http:`
    /// section (e.g. `tls:`) and `top_extra` at the top level (e.g.
    /// `auth:`), both YAML indented as they would be there.
    pub fn start_configured(http_extra: &str, top_extra: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("loci-registry-")
            .tempdir()
            .unwrap();
        let template = std::fs::read_to_string(repo_root().join("fixtures/registry.yml")).unwrap();
        // A port found free can be taken by another test's daemon before
        // this registry binds it; that registry then exits, and another
        // port is tried (tests run in parallel).
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = template
                .replace("@ROOT@", dir.path().join("storage").to_str().unwrap())
                .replace("@ADDR@", &addr);
            let config = format!("{}\n{http_extra}\n{top_extra}\n", config.trim_end());
            std::fs::write(dir.path().join("config.yml"), config).unwrap();
            if let Some(daemon) = Self::serve(dir.path(), &addr, "registry.log") {
                return Registry { addr, daemon, dir };
            }
        }
        panic!("docker-registry could not listen on any of 5 free ports");
    }

    /// Starts the registry again after `daemon.stop()`: same storage, same
    /// address, its access log in a new file.
    pub fn restart(&mut self) {
        self.daemon.stop();
        self.daemon = Self::serve(self.dir.path(), &self.addr, "registry2.log")
            .unwrap_or_else(|| panic!("docker-registry could not listen on {} again", self.addr));
    }

    /// The registry serving on `addr`, or None if it exited without (its
    /// port was taken). Ready once it logs that it listens there itself:
    /// a port that answers may be another test's registry.
    fn serve(dir: &Path, addr: &str, log: &str) -> Option<Daemon> {
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(dir.join("config.yml"));
        let mut daemon = Daemon::spawn(cmd, dir.join(log));
        let listening = format!("listening on {addr}");
        let mut exited = false;
        wait_until("docker-registry", Duration::from_secs(20), || {
            exited = matches!(daemon.child.try_wait(), Ok(Some(_)));
            exited || daemon.log_text().contains(&listening)
        });
        (!exited).then_some(daemon)
    }

    /// Access-log lines of GET requests for a blob.
    pub fn blob_gets(&self, digest: &str) -> Vec<String> {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("/blobs/{digest}")) && l.contains("\"GET "))
            .map(str::to_string)
            .collect()
    }
}

/// Builds the fixture image into `dir` (an OCI layout) with `tag`.
pub fn build_fixture(dir: &Path, tag: &str, extra: &[&str]) {
    run(Command::new("python3")
        .arg(repo_root().join("tools/make-fixture-image.py"))
        .arg(dir)
        .arg("--tag")
        .arg(tag)
        .args(extra));
}

/// Tools a realistic (debootstrap-built) image needs.
pub const DEBIAN_IMAGE_NEEDS: &[&str] = &["debootstrap", "umoci", "skopeo", "tar"];

/// A realistic image: Debian bookworm (minbase, merged /usr) with
/// `packages`, built by tools/make-debian-image.sh with its `extra`
/// arguments (`--cmd`, `--user`, `--workdir`). Returns the OCI layout
/// holding it as `tag`. Built once per machine: the rootfs and the image
/// are cached in `LOCI_TEST_IMAGE_CACHE` (default /var/tmp/loci-test-images),
/// keyed by everything that makes them.
pub fn debian_image(tag: &str, packages: &str, extra: &[&str]) -> PathBuf {
    let cache = std::env::var_os("LOCI_TEST_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/loci-test-images"));
    // One build at a time: tests share the cache's layout.
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    assert_eq!(unsafe { flock(fd, 2) }, 0, "locking {}", cache.display());
    run(Command::new(repo_root().join("tools/make-debian-image.sh"))
        .arg(&cache)
        .arg(tag)
        .arg(packages)
        .args(extra));
    cache.join("layout")
}

extern "C" {
    fn flock(fd: i32, operation: i32) -> i32;
}

/// Copies an OCI layout image into the registry with skopeo.
pub fn push_layout(dir: &Path, tag: &str, reference: &str) {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(format!("docker://{reference}")));
}

/// A private containerd: own config, root, state and socket in a temp dir.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub daemon: Daemon,
    pub namespace: String,
}

impl Containerd {
    pub fn start(proxy_plugins: &str) -> Containerd {
        Containerd::start_from("containerd.toml", &[("@PROXY_PLUGINS@", proxy_plugins)])
    }

    /// A containerd with its CRI plugin on (fixtures/containerd-cri.toml):
    /// `snapshotter = "loci"`, the sandbox image given, registries as the
    /// hosts.toml files under `certs_d` say. Namespace `k8s.io`, as CRI's.
    pub fn start_cri(proxy_plugins: &str, sandbox_image: &str, certs_d: &Path) -> Containerd {
        let mut containerd = Containerd::start_from(
            "containerd-cri.toml",
            &[
                ("@PROXY_PLUGINS@", proxy_plugins),
                ("@SANDBOX_IMAGE@", sandbox_image),
                ("@CERTS_D@", certs_d.to_str().unwrap()),
            ],
        );
        containerd.namespace = "k8s.io".into();
        containerd
    }

    /// A containerd from a fixtures/ config template, its placeholders
    /// (besides @DIR@) replaced as given.
    fn start_from(template: &str, values: &[(&str, &str)]) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("loci-containerd-")
            .tempdir()
            .unwrap();
        let template =
            std::fs::read_to_string(repo_root().join("fixtures").join(template)).unwrap();
        let mut config = template.replace("@DIR@", dir.path().to_str().unwrap());
        for (key, value) in values {
            config = config.replace(key, value);
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let socket = dir.path().join("containerd.sock");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config_path);
        let daemon = Daemon::spawn(cmd, dir.path().join("containerd.log"));
        let probe = socket.clone();
        wait_until("containerd", Duration::from_secs(30), || probe.exists());
        Containerd {
            dir,
            socket,
            daemon,
            namespace: "loci-test".into(),
        }
    }

    /// `ctr` bound to this containerd and namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// The keys of the snapshots `snapshotter` holds in this namespace.
    pub fn snapshots(&self, snapshotter: &str) -> Vec<String> {
        let out = run(self
            .ctr()
            .args(["snapshots", "--snapshotter", snapshotter, "ls"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    /// Pulls (and unpacks) an image from a plain-HTTP registry.
    pub fn pull(&self, reference: &str, snapshotter: &str) {
        run(self
            .ctr()
            .args([
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                snapshotter,
            ])
            .arg(reference));
    }

    /// Mounts a read-only view of the unpacked image whose layers have
    /// these diff_ids, at `target`. Returns the view's key.
    pub fn mount_view(&self, diff_ids: &[String], snapshotter: &str, key: &str, target: &Path) {
        let parent = chain_id(diff_ids);
        std::fs::create_dir_all(target).unwrap();
        // One call creates the view and prints its mount command, so the
        // garbage collector (views hold no lease) cannot get in between.
        let out = run(self
            .ctr()
            .args([
                "snapshots",
                "--snapshotter",
                snapshotter,
                "view",
                "--target",
            ])
            .arg(target)
            .args([key, &parent]));
        let script = String::from_utf8(out.stdout).unwrap();
        run(Command::new("sh").arg("-c").arg(script.trim()));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers a failed test left running: their shims outlive
        // containerd, and runc's state (shared by namespace) would make the
        // next run's container of the same name "already exist".
        let tasks = self.ctr().args(["task", "ls", "-q"]).output();
        let tasks = tasks.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        for task in tasks.unwrap_or_default().split_whitespace() {
            let _ = self
                .ctr()
                .args(["task", "kill", "-s", "KILL", task])
                .output();
            for _ in 0..50 {
                let deleted = self.ctr().args(["task", "delete", task]).output();
                if deleted.is_ok_and(|o| o.status.success()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.daemon.stop();
        // Unmount anything a test left mounted below our directory.
        unmount_all_under(self.dir.path());
    }
}

/// OCI chain ID of a stack of layers (the name containerd gives the
/// committed snapshot of the top layer).
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = diff_ids[0].clone();
    for diff in &diff_ids[1..] {
        chain = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{chain} {diff}")))
        );
    }
    chain
}

/// A blob of an OCI layout, whole.
pub fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
}

/// A JSON blob (manifest, config) of an OCI layout.
pub fn layout_json(dir: &Path, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&layout_blob(dir, digest)).unwrap()
}

/// An OCI layout's index, the index entry of the image tagged `tag`, and
/// that image's manifest.
pub fn layout_manifest(
    dir: &Path,
    tag: &str,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()
        .clone();
    let manifest = layout_json(dir, entry["digest"].as_str().unwrap());
    (index, entry, manifest)
}

/// Writes `value` as a blob of the layout at `dir`; returns its digest and
/// size.
pub fn put_layout_json(dir: &Path, value: &serde_json::Value) -> (String, usize) {
    let bytes = serde_json::to_vec(value).unwrap();
    let digest = loci::digest::Digest::of(&bytes).to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::write(dir.join("blobs/sha256").join(hex), &bytes).unwrap();
    (digest, bytes.len())
}

/// Adds `manifest` to the layout at `dir` under `tag`, its index entry
/// made from `like` (another image's entry).
pub fn tag_layout_manifest(
    dir: &Path,
    like: &serde_json::Value,
    manifest: &serde_json::Value,
    tag: &str,
) {
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let (digest, size) = put_layout_json(dir, manifest);
    let mut entry = like.clone();
    entry["digest"] = digest.into();
    entry["size"] = size.into();
    entry["annotations"]["org.opencontainers.image.ref.name"] = tag.into();
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The diff_ids of the image tagged `tag` in an OCI layout.
pub fn layout_diff_ids(dir: &Path, tag: &str) -> Vec<String> {
    let (_, _, manifest) = layout_manifest(dir, tag);
    let config = layout_json(dir, manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// What a file-tree comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Option<i64>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub sha256: Option<String>,
    /// For files with several links: the first path (in walk order) that
    /// shares the inode.
    pub hardlink_of: Option<PathBuf>,
}

/// Walks a tree (not following symlinks, not crossing into other mounts'
/// children) and records every path's metadata and content hash.
pub fn walk_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "other"
            };
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .filter(|n| !n.to_string_lossy().starts_with("trusted.overlay"))
                    .map(|n| {
                        let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                        (n.to_string_lossy().into_owned(), v)
                    })
                    .collect()
            };
            let sha256 = ft
                .is_file()
                .then(|| hex::encode(Sha256::digest(std::fs::read(&path).unwrap())));
            let hardlink_of = (ft.is_file() && meta.nlink() > 1).then(|| {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone()
            });
            out.insert(
                rel.clone(),
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if ft.is_dir() { 0 } else { meta.size() },
                    mtime: (!ft.is_dir()).then(|| meta.mtime()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    rdev: meta.rdev(),
                    xattrs,
                    sha256,
                    hardlink_of,
                },
            );
            if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Asserts two trees are equal, listing every difference.
pub fn assert_same_tree(expected: &BTreeMap<PathBuf, Node>, actual: &BTreeMap<PathBuf, Node>) {
    let mut diffs = Vec::new();
    for (path, node) in expected {
        match actual.get(path) {
            None => diffs.push(format!("missing: {}", path.display())),
            Some(other) if other != node => diffs.push(format!(
                "differs: {}\n  expected {node:?}\n  actual   {other:?}",
                path.display()
            )),
            _ => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        diffs.push(format!("unexpected: {}", path.display()));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// Requests and bytes the registry's access log shows for GETs of a blob
/// (the combined-log lines: `"GET /v2/…/blobs/DIGEST HTTP/1.1" 206 BYTES`,
/// or `HTTP/2.0` over TLS),
/// counting only log text after byte `from` of the log, once the log has
/// settled ([`settled_log`]).
pub fn blob_traffic(registry: &Registry, digest: &str, from: usize) -> (usize, u64) {
    blob_traffic_in(&settled_log(registry), digest, from)
}

/// [`blob_traffic`] in a log read already: for counting several blobs
/// after one wait for the log to settle.
pub fn blob_traffic_in(text: &str, digest: &str, from: usize) -> (usize, u64) {
    let mut requests = 0;
    let mut bytes = 0;
    for line in text[from.min(text.len())..].lines() {
        if !line.contains(&format!("/blobs/{digest} HTTP/")) || !line.contains("\"GET ") {
            continue;
        }
        // After the protocol (`HTTP/1.1" `, `HTTP/2.0" `): status, bytes.
        let after = line
            .split_once(" HTTP/")
            .and_then(|(_, rest)| rest.split_once("\" "))
            .map_or("", |(_, after)| after);
        let mut fields = after.split(' ');
        let _status = fields.next();
        if let Some(n) = fields.next().and_then(|b| b.parse::<u64>().ok()) {
            requests += 1;
            bytes += n;
        }
    }
    (requests, bytes)
}

/// The registry's log once it has not grown for 250 ms (waiting 10 s at
/// most): the registry logs a request only when its whole response is
/// sent, which can be after the read that asked for it returned (a read
/// is answered as soon as its own chunks are in), so a count taken at
/// once could miss the read's request or give it to the next one.
pub fn settled_log(registry: &Registry) -> String {
    let start = Instant::now();
    let mut text = registry.daemon.log_text();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(250) && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(25));
        let now = registry.daemon.log_text();
        if now.len() != text.len() {
            (text, since) = (now, Instant::now());
        }
    }
    text
}

/// Whether `dir` is a mount point right now.
pub fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
}

/// A `loci mount` process: mounted when created, SIGTERMed when dropped.
pub struct LociMount {
    pub dir: PathBuf,
    pub daemon: Daemon,
}

impl LociMount {
    /// Starts `loci mount --plain-http --stats --config CONFIG REF DIR` and
    /// waits for the mount.
    pub fn start(reference: &str, dir: &Path, config: &Path, log: &Path) -> LociMount {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = loci();
        cmd.args(["mount", "--plain-http", "--stats", "--config"])
            .arg(config)
            .arg(reference)
            .arg(dir);
        LociMount::start_with(cmd, dir, log)
    }

    /// Starts a prepared `loci mount` command and waits for the mount.
    pub fn start_with(cmd: Command, dir: &Path, log: &Path) -> LociMount {
        let mut daemon = Daemon::spawn(cmd, log.to_path_buf());
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("loci mount exited ({status}):\n{}", daemon.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "loci mount did not mount:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        LociMount {
            dir: dir.to_path_buf(),
            daemon,
        }
    }

    /// SIGTERM, wait for exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.daemon.stop();
        self.daemon.child.wait().unwrap()
    }
}

impl Drop for LociMount {
    fn drop(&mut self) {
        self.daemon.stop();
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Starts `loci snapshotter` on `work`/loci.sock, its state in
/// `work`/root and its config `work`/loci.toml, with `env` set; waits for
/// its socket. Its log is a new `work`/snapshotter-N.log each start.
pub fn spawn_snapshotter_at(work: &Path, env: &[(&str, &Path)]) -> Daemon {
    let socket = work.join("loci.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = loci();
    cmd.arg("snapshotter")
        .arg("--address")
        .arg(&socket)
        .arg("--root")
        .arg(work.join("root"))
        .arg("--config")
        .arg(work.join("loci.toml"));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let n = std::fs::read_dir(work).unwrap().count();
    let mut snapshotter = Daemon::spawn(cmd, work.join(format!("snapshotter-{n}.log")));
    let start = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = snapshotter.child.try_wait() {
            panic!(
                "loci snapshotter exited ({status}):\n{}",
                snapshotter.log_text()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no snapshotter socket:\n{}",
            snapshotter.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    snapshotter
}

/// Where `snapshotter` serves its metrics: the address its log says it
/// bound (the config asks for port 0, so that parallel tests never race
/// for a port).
pub fn metrics_address(snapshotter: &Daemon) -> String {
    snapshotter.wait_for_log("metrics address", |log| {
        log.lines()
            .filter(|l| l.contains("serving metrics"))
            .find_map(|l| l.split_once("addr=").map(|(_, a)| a.trim().to_string()))
    })
}

/// A log without its colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `work`/loci.toml for [`spawn_snapshotter_at`]: the cache in
/// `work`/cache, `registry` (host:port) reached over plain HTTP as the
/// node's configuration says, layers signed by `work`'s key trusted,
/// metrics on a free port of 127.0.0.1 (see [`metrics_address`]), and
/// `extra` lines after them in the `[snapshotter]` table (or tables of
/// their own).
pub fn write_snapshotter_config(work: &Path, registry: &str, extra: &str) {
    let config = work.join("loci.toml");
    write_config(&config, &work.join("cache"), 30);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[snapshotter]\nmetrics_address = \"127.0.0.1:0\"\nplain_http_registries = [{registry:?}]\ntrusted_keys = [{:?}]\n{extra}\n",
        signing_key(work).with_extension("key.pub")
    ));
    std::fs::write(&config, text).unwrap();
}

/// Writes a node config with the cache in `cache_dir`.
pub fn write_config(path: &Path, cache_dir: &Path, read_timeout_secs: u64) {
    std::fs::write(
        path,
        format!(
            "[cache]\ndir = {:?}\nmemory_bytes = 67108864\ndisk_bytes = 4294967296\n\n[fetch]\nread_timeout_secs = {read_timeout_secs}\n",
            cache_dir.to_str().unwrap()
        ),
    )
    .unwrap();
}

/// `tools/fault-proxy.py` in front of a registry: a child process on a
/// free port of 127.0.0.1, whose faults are set over HTTP.
pub struct FaultProxy {
    pub addr: String,
    _daemon: Daemon,
}

impl FaultProxy {
    pub fn start(target: &str, log: PathBuf) -> FaultProxy {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tools/fault-proxy.py"))
            .arg("0")
            .arg(target);
        let daemon = Daemon::spawn(cmd, log);
        let addr = daemon.listening_address("the fault proxy");
        let addr = addr
            .split_once(' ')
            .map_or(addr.as_str(), |(a, _)| a)
            .to_string();
        FaultProxy {
            addr,
            _daemon: daemon,
        }
    }

    /// Sends a control request: POST a rule, or DELETE them all.
    pub fn control(&self, method: &str, rule: &str) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            conn,
            "{method} /__fault HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{rule}",
            rule.len()
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    pub fn set(&self, rule: &str) {
        self.control("POST", rule);
    }

    pub fn clear(&self) {
        self.control("DELETE", "");
    }
}

/// The key a test's conversions sign with (made on first use, in `work`);
/// its public half, beside it with `.pub` appended, is what a snapshotter
/// trusts.
pub fn signing_key(work: &Path) -> PathBuf {
    let key = work.join("sign.key");
    if !key.exists() {
        run(loci().args(["key", "generate", key.to_str().unwrap()]));
    }
    key
}

/// The realistic image the Python tests run: Debian with python3, whose
/// config runs as `nobody` in `/tmp` (see [`debian_image`]).
pub fn debian_python_image() -> PathBuf {
    debian_image(
        "py3-nobody",
        "python3",
        &[
            "--cmd",
            "python3 -c 'import json'",
            "--user",
            "nobody",
            "--workdir",
            "/tmp",
        ],
    )
}

/// Base64 (standard alphabet), as registries and docker configs write it.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The mounts (lines of /proc/self/mounts) whose target is under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|t| t.starts_with(dir)))
        .map(str::to_string)
        .collect()
}

/// After a (failed) test: a stopped snapshotter leaves its lazy mounts to
/// its fd holder, which would keep them (and itself) alive. Ends the
/// holder of the snapshotter rooted at `root` and unmounts what is under it.
pub fn release_snapshotter_root(root: &Path) {
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(format!("fd-holder --socket {}", root.display()))
        .status();
    unmount_all_under(root);
}

/// Lazily unmounts every mount below `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) {
    let mounts = mounts_under(dir);
    let mut targets: Vec<&str> = mounts.iter().filter_map(|m| m.split(' ').nth(1)).collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = Command::new("umount").arg("-l").arg(target).status();
    }
}
