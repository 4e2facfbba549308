//! The lazy mount against real components: a converted image in a real
//! docker-registry on 127.0.0.1, mounted with `loci mount` over real FUSE.
//! What was fetched is read from the registry's own access log.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NEEDS: &[&str] = &["docker-registry", "skopeo", "python3", "zstd"];

/// A registry holding the fixture image (original and converted).
struct Setup {
    work: tempfile::TempDir,
    registry: Registry,
    layout: PathBuf,
}

impl Setup {
    fn new(fixture_args: &[&str]) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let layout = work.path().join("fixture");
        build_fixture(&layout, "v1", fixture_args);
        let registry = Registry::start();
        push_layout(&layout, "v1", &format!("{}/fixture:v1", registry.addr));
        run(loci().args([
            "convert",
            "--plain-http",
            &format!("{}/fixture:v1", registry.addr),
            &format!("{}/fixture:loci", registry.addr),
        ]));
        Setup {
            work,
            registry,
            layout,
        }
    }

    fn converted(&self) -> String {
        format!("{}/fixture:loci", self.registry.addr)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn config(&self, name: &str, timeout_secs: u64) -> PathBuf {
        let path = self.path(&format!("{name}.toml"));
        write_config(&path, &self.path(&format!("{name}-cache")), timeout_secs);
        path
    }

    /// `loci mount` of the converted fixture with a node config of its own
    /// (30 s timeout), at `NAME-mnt`, logging to `NAME.log`.
    fn mount(&self, name: &str) -> LociMount {
        LociMount::start(
            &self.converted(),
            &self.path(&format!("{name}-mnt")),
            &self.config(name, 30),
            &self.path(&format!("{name}.log")),
        )
    }

    /// Layer digests and TOC info of the converted image, from `loci inspect --json`.
    fn converted_layers(&self, reference: &str) -> Vec<serde_json::Value> {
        let out = run(loci().args(["inspect", "--plain-http", "--json", reference]));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn mounted_tree_equals_containerd_unpack() {
    let test = "mounted_tree_equals_containerd_unpack";
    let mut needs = NEEDS.to_vec();
    needs.extend(["containerd", "ctr"]);
    if !require(test, &needs, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    let containerd = Containerd::start("");
    let original = format!("{}/fixture:v1", setup.registry.addr);
    containerd.pull(&original, "overlayfs");
    let view = setup.path("containerd-view");
    containerd.mount_view(
        &layout_diff_ids(&setup.layout, "v1"),
        "overlayfs",
        "view",
        &view,
    );
    let expected = walk_tree(&view);
    run(Command::new("umount").arg(&view));

    let mut mount = setup.mount("node");
    let actual = walk_tree(&mount.dir);
    assert!(expected.len() > 100);
    assert_same_tree(&expected, &actual);
    assert!(mount.stop().success(), "{}", mount.daemon.log_text());
    assert!(!is_mounted(&mount.dir), "SIGTERM left the mount behind");
    let stats: serde_json::Value = serde_json::from_str(
        mount
            .daemon
            .log_text()
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap(),
    )
    .unwrap();
    assert!(
        stats["fetch"]["chunks_fetched"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[test]
fn reading_one_small_file_fetches_under_one_percent_of_the_layer() {
    let test = "reading_one_small_file_fetches_under_one_percent_of_the_layer";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&["--big-mib", "208"]);
    let layers = setup.converted_layers(&setup.converted());
    let big = layers.last().unwrap();
    let digest = big["layer"].as_str().unwrap().to_string();
    let size: u64 = big["size"].as_u64().unwrap();
    let toc_length: u64 = big["toc_length"].as_u64().unwrap();
    assert!(size >= 200 << 20, "big layer is only {size} bytes");
    let before = settled_log(&setup.registry).len();

    let mut mount = setup.mount("node");
    let text = std::fs::read_to_string(mount.dir.join("big/small.txt")).unwrap();
    assert_eq!(text, "a small file in a big layer\n");
    mount.stop();
    let (requests, bytes) = blob_traffic(&setup.registry, &digest, before);
    eprintln!(
        "big layer: {size} bytes, TOC {toc_length}; fetched {bytes} bytes in {requests} requests"
    );
    assert!(
        requests >= 2,
        "expected a TOC read and a chunk read, saw {requests}"
    );
    assert!(
        (bytes as f64) < size as f64 * 0.01 + toc_length as f64,
        "fetched {bytes} bytes of a {size}-byte layer (TOC {toc_length})"
    );
}

/// A read that must fetch also fetches what follows it in the blob (up to
/// `amplify_bytes`): the next file in the layer is then read without a
/// request. With amplification off it costs one.
#[test]
fn a_fetching_read_brings_the_files_after_it_along() {
    let test = "a_fetching_read_brings_the_files_after_it_along";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&["--big-mib", "16"]);
    let layers = setup.converted_layers(&setup.converted());
    let digest = layers.last().unwrap()["layer"]
        .as_str()
        .unwrap()
        .to_string();
    for (name, amplify, extra_requests) in [("amplified", 1u64 << 20, 0), ("plain", 0, 1)] {
        let config = setup.config(name, 30);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("amplify_bytes = {amplify}\n"));
        std::fs::write(&config, text).unwrap();
        let mut mount = LociMount::start(
            &setup.converted(),
            &setup.path(&format!("{name}-mnt")),
            &config,
            &setup.path(&format!("{name}.log")),
        );
        // big/small.txt is stored just before big/huge.bin.
        let before = settled_log(&setup.registry).len();
        let text = std::fs::read_to_string(mount.dir.join("big/small.txt")).unwrap();
        assert_eq!(text, "a small file in a big layer\n");
        let (after_first, _) = blob_traffic(&setup.registry, &digest, before);
        let mut head = [0u8; 4096];
        std::io::Read::read_exact(
            &mut std::fs::File::open(mount.dir.join("big/huge.bin")).unwrap(),
            &mut head,
        )
        .unwrap();
        let (after_second, _) = blob_traffic(&setup.registry, &digest, before);
        mount.stop();
        assert!(after_first >= 1, "{name}: the first read fetched nothing");
        assert_eq!(
            after_second - after_first,
            extra_requests,
            "{name}: requests for the next file"
        );
    }
}

#[test]
fn a_second_image_fetches_none_of_the_shared_chunks() {
    let test = "a_second_image_fetches_none_of_the_shared_chunks";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    // A second image: same files but one, built and converted separately.
    let second = setup.path("second");
    build_fixture(&second, "v2", &["--variant", "two"]);
    push_layout(&second, "v2", &format!("{}/second:v2", setup.registry.addr));
    let second_ref = format!("{}/second:loci", setup.registry.addr);
    run(loci().args([
        "convert",
        "--plain-http",
        &format!("{}/second:v2", setup.registry.addr),
        &second_ref,
    ]));

    let config = setup.config("node", 30);
    let mut first = LociMount::start(
        &setup.converted(),
        &setup.path("mnt1"),
        &config,
        &setup.path("loci1.log"),
    );
    walk_tree(&first.dir); // reads every file
    first.stop();

    let before = settled_log(&setup.registry).len();
    let mut mount = LociMount::start(
        &second_ref,
        &setup.path("mnt2"),
        &config,
        &setup.path("loci2.log"),
    );
    let tree = walk_tree(&mount.dir);
    mount.stop();
    assert_eq!(
        std::fs::read_to_string(mount.dir.join("data/variant.txt")).ok(),
        None,
        "unmounted"
    );
    let variant = &tree[Path::new("data/variant.txt")];
    assert_eq!(variant.size, "variant two\n".len() as u64);

    // What the second image needs that the first did not have.
    let first_chunks: std::collections::HashSet<String> = setup
        .converted_layers(&setup.converted())
        .iter()
        .flat_map(|l| {
            l["chunks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["digest"].as_str().unwrap().to_string())
        })
        .collect();
    let mut new_bytes = 0u64;
    let mut shared_bytes = 0u64;
    let mut fetched = 0u64;
    let second_layers = setup.converted_layers(&second_ref);
    let log = settled_log(&setup.registry);
    for layer in second_layers {
        let digest = layer["layer"].as_str().unwrap();
        new_bytes += layer["toc_length"].as_u64().unwrap() + 48;
        for chunk in layer["chunks"].as_array().unwrap() {
            let len = chunk["compressed_len"].as_u64().unwrap();
            if first_chunks.contains(chunk["digest"].as_str().unwrap()) {
                shared_bytes += len;
            } else {
                new_bytes += len;
            }
        }
        fetched += blob_traffic_in(&log, digest, before).1;
    }
    eprintln!("second image: fetched {fetched} bytes; new chunks + TOCs {new_bytes}; shared chunks {shared_bytes}");
    assert!(
        shared_bytes > 1 << 20,
        "the images share too little to tell: {shared_bytes}"
    );
    assert!(
        fetched <= new_bytes + (64 << 10),
        "fetched {fetched} bytes, more than the {new_bytes} the first image lacked"
    );
}

#[test]
fn registry_faults_give_eio_in_bounded_time_and_corrupt_chunks_are_never_served() {
    let test = "registry_faults_give_eio_in_bounded_time_and_corrupt_chunks_are_never_served";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let mut setup = Setup::new(&[]);
    let config = setup.config("node", 5);
    let log = setup.path("loci.log");
    let mut mount = LociMount::start(&setup.converted(), &setup.path("mnt"), &config, &log);
    let cached = mount.dir.join("etc/hello.txt");
    let expected = std::fs::read_to_string(&cached).unwrap();

    // Registry down: cached reads work, an uncached one fails with EIO in bounded time.
    setup.registry.daemon.stop();
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), expected);
    let started = Instant::now();
    let err = std::fs::read(mount.dir.join("data/big-random.bin")).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(5), "expected EIO, got {err}");
    assert!(
        took < Duration::from_secs(10),
        "EIO took {took:?} (deadline 5 s)"
    );

    // Registry back (same storage, same address): the read works, once the
    // second in which a chunk that just failed fails at once has passed.
    setup.registry.restart();
    std::thread::sleep(loci::fetch::FAIL_FAST);
    let original_hash = sha256_file(&setup.layout_file("data/big-random.bin"));
    assert_eq!(
        sha256_file(&mount.dir.join("data/big-random.bin")),
        original_hash
    );
    mount.stop();

    // Altered bytes in the registry's copy of a chunk: EIO and a log line
    // naming the chunk, never the altered bytes.
    let layers = setup.converted_layers(&setup.converted());
    let (layer, chunk) = layers
        .iter()
        .find_map(|l| {
            let entries = l["entries"].as_array().unwrap();
            let file = entries.iter().find(|e| e["path"] == "data/big-text.txt")?;
            let index = file["extents"][0]["chunk"].as_u64().unwrap() as usize;
            Some((
                l["layer"].as_str().unwrap().to_string(),
                l["chunks"][index].clone(),
            ))
        })
        .unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let data = setup.registry.dir.path().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut blob = std::fs::read(&data).unwrap();
    let at = chunk["blob_offset"].as_u64().unwrap() as usize
        + chunk["compressed_len"].as_u64().unwrap() as usize / 2;
    blob[at] ^= 0x20;
    std::fs::write(&data, blob).unwrap();
    let fresh = setup.config("fresh", 5);
    let log2 = setup.path("loci2.log");
    let mut mount = LociMount::start(&setup.converted(), &setup.path("mnt2"), &fresh, &log2);
    let err = std::fs::read(mount.dir.join("data/big-text.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "expected EIO, got {err}");
    mount.stop();
    let text = std::fs::read_to_string(&log2).unwrap();
    let digest = chunk["digest"].as_str().unwrap();
    assert!(
        text.contains(digest),
        "no log line names chunk {digest}:\n{text}"
    );
}

#[test]
fn killing_loci_mid_read_leaves_the_cache_usable() {
    let test = "killing_loci_mid_read_leaves_the_cache_usable";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&["--big-mib", "64"]);
    let config = setup.config("node", 30);
    let dir = setup.path("mnt");
    let mut mount = LociMount::start(&setup.converted(), &dir, &config, &setup.path("loci.log"));
    let reader = {
        let file = dir.join("big/huge.bin");
        std::thread::spawn(move || std::fs::read(file).map(|d| d.len()))
    };
    std::thread::sleep(Duration::from_millis(300));
    mount.daemon.child.kill().unwrap(); // SIGKILL mid-read
    mount.daemon.child.wait().unwrap();
    let _ = reader.join();
    let _ = Command::new("umount").arg("-l").arg(&dir).status();

    let mount = LociMount::start(
        &setup.converted(),
        &setup.path("mnt2"),
        &config,
        &setup.path("loci2.log"),
    );
    let expected = walk_tree_of_layout(&setup);
    let actual = sha256_file(&mount.dir.join("big/huge.bin"));
    assert_eq!(actual, expected);
}

/// The sha256 of big/huge.bin as the fixture generated it.
fn walk_tree_of_layout(setup: &Setup) -> String {
    sha256_file(&setup.layout_file("big/huge.bin"))
}

impl Setup {
    /// A file of the original image, extracted from its layer tars (the
    /// topmost layer holding it wins).
    fn layout_file(&self, path: &str) -> PathBuf {
        let out = self.path("extracted");
        if !out.exists() {
            std::fs::create_dir_all(&out).unwrap();
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(self.layout.join("index.json")).unwrap())
                    .unwrap();
            let blob = |d: &str| {
                self.layout
                    .join("blobs/sha256")
                    .join(d.strip_prefix("sha256:").unwrap())
            };
            let manifest: serde_json::Value = serde_json::from_slice(
                &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
            )
            .unwrap();
            for layer in manifest["layers"].as_array().unwrap() {
                let file = blob(layer["digest"].as_str().unwrap());
                let media = layer["mediaType"].as_str().unwrap();
                let flag = if media.ends_with("gzip") {
                    "-z"
                } else if media.ends_with("zstd") {
                    "--zstd"
                } else {
                    "-f-"
                };
                let mut cmd = Command::new("tar");
                cmd.arg("-x").arg("-C").arg(&out).arg("--no-same-owner");
                if flag != "-f-" {
                    cmd.arg(flag);
                }
                cmd.arg("-f")
                    .arg(&file)
                    .args(["--exclude", "*/null", "--exclude", "*/fifo"]);
                let _ = cmd.status();
            }
        }
        out.join(path)
    }
}

/// The token the scheduler of these tests accepts.
const SCHEDULER_TOKEN: &str = "mount-e2e-token";

/// POSTs JSON to the scheduler, with its token; returns status and body.
fn post_json(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(SCHEDULER_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    })
}

fn get_json(url: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
}

#[test]
fn a_mount_reports_its_warm_cache_and_the_scheduler_places_there() {
    let test = "a_mount_reports_its_warm_cache_and_the_scheduler_places_there";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    let image = setup.converted();
    let config = setup.path("scheduler.toml");
    let tokens = setup.path("scheduler-token");
    std::fs::write(&tokens, format!("{SCHEDULER_TOKEN}\n")).unwrap();
    // Node reports and changes need the token; the cluster view is open.
    std::fs::write(
        &config,
        format!("[[functions]]\nname = \"f\"\nimage = \"{image}\"\ncpu_millis = 1\nmemory_mib = 1\nconcurrency = 1\ntimeout_s = 60\n\n[access]\ntoken_file = {tokens:?}\nopen_reads = true\n"),
    )
    .unwrap();
    let mut cmd = loci();
    cmd.args(["scheduler", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config);
    let scheduler = Daemon::spawn(cmd, setup.path("scheduler.log"));
    let base = format!("http://{}", scheduler.listening_address("the scheduler"));

    let node_config = setup.config("node", 30);
    let mut cmd = loci();
    cmd.args(["mount", "--plain-http", "--config"])
        .arg(&node_config)
        .args([
            "--scheduler",
            &base,
            "--scheduler-token-file",
            tokens.to_str().unwrap(),
            "--node-id",
            "warm-node",
            "--report-interval-secs",
            "1",
        ])
        .arg(&image)
        .arg(setup.path("mnt"));
    std::fs::create_dir_all(setup.path("mnt")).unwrap();
    let mount = Daemon::spawn(cmd, setup.path("loci.log"));
    let mnt = setup.path("mnt");
    let start = Instant::now();
    while !is_mounted(&mnt) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            mount.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The real node's own report, then a twin with the same resources but a
    // cold cache, reported by hand.
    let warm = |cluster: &serde_json::Value| {
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == "warm-node")
            .cloned()
    };
    let start = Instant::now();
    let node = loop {
        if let Some(node) = warm(&get_json(&format!("{base}/v1/cluster"))) {
            break node;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the mount never reported"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        node["capacity"]["cpu_millis"].as_u64().unwrap() >= 1000,
        "{node}"
    );

    // Both cold: the twin, with more room free, gets the instance.
    let (status, _) = post_json(&format!("{base}/v1/reports"), json_twin(&node));
    assert_eq!(status, 200);
    let (status, placement) = post_json(
        &format!("{base}/v1/place"),
        serde_json::json!({"function": "f"}),
    );
    assert_eq!(
        (status, placement["node_id"].as_str()),
        (200, Some("cold-node")),
        "{placement}"
    );

    walk_tree(&mnt); // warm the cache: every chunk of the image
                     // Place until the report after the warm-up has arrived and both nodes
                     // have room; the warm node must win against its cold twin.
    let start = Instant::now();
    let placed = loop {
        let twin = json_twin(&node);
        let (status, _) = post_json(&format!("{base}/v1/reports"), twin);
        assert_eq!(status, 200);
        Command::new("kill")
            .arg("-USR1")
            .arg(mount.child.id().to_string())
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (status, placement) = post_json(
            &format!("{base}/v1/place"),
            serde_json::json!({"function": "f"}),
        );
        if status == 200 && placement["node_id"] == "warm-node" {
            break placement;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never placed on the warm node: {status} {placement}"
        );
    };
    assert_eq!(placed["image"], image.as_str());
}

/// A cold node with the same resources as `node`.
fn json_twin(node: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "node_id": "cold-node",
        "capacity": node["capacity"],
        "used": {"cpu_millis": 0, "memory_mib": 0},
        "instances": [],
        "images": [],
    })
}

/// A plain `loci mount` does not hand the image's author the host:
/// `nosuid,nodev`, and only root (its owner) may read it; `--allow-other`
/// lets other users in.
#[test]
fn a_plain_mount_is_nosuid_nodev_and_roots_alone() {
    let test = "a_plain_mount_is_nosuid_nodev_and_roots_alone";
    let mut needs = NEEDS.to_vec();
    needs.push("setpriv");
    if !require(test, &needs, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    // The work dir must be traversable for the other user to get as far
    // as the mount.
    std::fs::set_permissions(
        setup.work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let as_nobody = |dir: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(dir.join("etc/hello.txt"))
            .output()
            .unwrap()
    };
    for (extra, others_read) in [(None, false), (Some("--allow-other"), true)] {
        let dir = setup.path(if others_read { "open" } else { "plain" });
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = loci();
        cmd.args(["mount", "--plain-http", "--config"])
            .arg(setup.config(if others_read { "open" } else { "plain" }, 30));
        cmd.args(extra).arg(setup.converted()).arg(&dir);
        let mut mount = LociMount::start_with(cmd, &dir, &setup.path("mount.log"));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let options = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
            .and_then(|l| l.split(' ').nth(3))
            .unwrap()
            .to_string();
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{options}"
        );
        assert!(!std::fs::read_to_string(dir.join("etc/hello.txt"))
            .unwrap()
            .is_empty());
        let out = as_nobody(&dir);
        assert_eq!(out.status.success(), others_read, "{extra:?}: {out:?}");
        mount.stop();
    }
}

/// `umount DIR` from outside ends `loci mount` as SIGTERM does: it exits
/// 0, saying so, instead of waiting for a signal with nothing mounted.
#[test]
fn an_outside_umount_ends_the_mount() {
    let test = "an_outside_umount_ends_the_mount";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    let mut mount = setup.mount("outside");
    assert!(!std::fs::read_to_string(mount.dir.join("etc/hello.txt"))
        .unwrap()
        .is_empty());
    let status = Command::new("umount").arg(&mount.dir).status().unwrap();
    assert!(status.success(), "umount: {status}");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = mount.daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "loci mount still running 10 s after umount:\n{}",
            mount.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = mount.daemon.log_text();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("was unmounted from outside"), "{log}");
    // fuser's own unmount at the session's end fails then (EINVAL) and
    // says so; that is expected here and not shown.
    assert!(!log.contains("Unmount failed"), "{log}");
    assert!(!is_mounted(&mount.dir));
}

/// Asked for a file's inode flags (overlayfs does it on every copy-up),
/// a mount answers ENOTTY, "no such ioctl here", as the kernel's own
/// flagless filesystems do, and says nothing about it in its log (fuser's
/// default answer logged a warning per call).
#[test]
fn a_request_for_file_flags_is_answered_enotty_without_a_warning() {
    let test = "a_request_for_file_flags_is_answered_enotty_without_a_warning";
    if !require(test, NEEDS, true) || !require_fuse(test) {
        return;
    }
    let setup = Setup::new(&[]);
    let mut mount = setup.mount("ioctl");
    // _IOR('f', 1, long): FS_IOC_GETFLAGS on 64-bit Linux.
    const FS_IOC_GETFLAGS: u64 = 0x8008_6601;
    let file = std::fs::File::open(mount.dir.join("etc/hello.txt")).unwrap();
    let mut flags: libc::c_long = 0;
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            FS_IOC_GETFLAGS as _,
            &mut flags,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    drop(file);
    assert_eq!((rc, errno), (-1, Some(libc::ENOTTY)));
    assert!(mount.stop().success(), "{}", mount.daemon.log_text());
    let log = mount.daemon.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
}
