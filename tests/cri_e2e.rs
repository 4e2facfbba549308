//! The Kubernetes node path: the test plays kubelet over the CRI v1 gRPC
//! API against a real containerd 1.6 with its CRI plugin on and
//! `snapshotter = "loci"`, a realistic Debian image converted by loci, a
//! pause image of the test's own, and real docker-registry instances
//! configured through hosts.toml (one certs.d directory for containerd and
//! loci alike). No docker config on the node: credentials reach loci only
//! as kubelet passes them, through the CRI image proxy.

mod common;

use common::token_issuer::TokenIssuer;
use common::*;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const NEEDS: &[&str] = &["docker-registry", "containerd", "ctr", "runc", "skopeo", "python3"];

/// The Debian image (python3, runs as nobody in /tmp) as an OCI layout.
fn debian_python() -> PathBuf {
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

/// A node: containerd with CRI, the loci snapshotter beside it, and the
/// certs.d directory both read.
struct Node {
    work: tempfile::TempDir,
    certs: PathBuf,
    containerd: Containerd,
    snapshotter: Daemon,
}

impl Node {
    /// `registries` are reached over plain HTTP because their hosts.toml
    /// says so; `sandbox_image` is the pause image; `snapshotter_extra` is
    /// added to loci's `[snapshotter]` table.
    fn start(
        work: tempfile::TempDir,
        registries: &[&str],
        sandbox_image: &str,
        snapshotter_extra: &str,
    ) -> Node {
        let certs = work.path().join("certs.d");
        for registry in registries {
            let dir = certs.join(registry);
            std::fs::create_dir_all(&dir).unwrap();
            // containerd 1.6 wants a [host] table besides `server`.
            std::fs::write(
                dir.join("hosts.toml"),
                format!("server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n"),
            )
            .unwrap();
        }
        let socket = work.path().join("loci.sock");
        let containerd = Containerd::start_cri(
            &format!(
                "[proxy_plugins.loci]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                socket.display()
            ),
            sandbox_image,
            &certs,
        );
        let config = work.path().join("loci.toml");
        write_config(&config, &work.path().join("cache"), 30);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[completion]\nenabled = false\n\n[registry]\nhosts_dir = {:?}\n\n[snapshotter]\ntrusted_keys = [{:?}]\ncontainerd_address = {:?}\n{snapshotter_extra}\n",
            certs,
            signing_key(work.path()).with_extension("key.pub"),
            containerd.socket,
        ));
        std::fs::write(&config, text).unwrap();
        std::fs::create_dir_all(work.path().join("no-docker-config")).unwrap();
        let mut cmd = loci();
        cmd.arg("snapshotter")
            .arg("--address")
            .arg(&socket)
            .arg("--root")
            .arg(work.path().join("root"))
            .arg("--config")
            .arg(&config)
            .env("DOCKER_CONFIG", work.path().join("no-docker-config"));
        let snapshotter = Daemon::spawn(cmd, work.path().join("snapshotter.log"));
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no snapshotter socket:\n{}",
                snapshotter.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Node {
            work,
            certs,
            containerd,
            snapshotter,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn loci_snapshots(&self) -> Vec<String> {
        let out = run(self
            .containerd
            .ctr()
            .args(["snapshots", "--snapshotter", "loci", "ls"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    fn fuse_mounts(&self) -> Vec<String> {
        let root = self.path("root");
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains("fuse") && l.contains(root.to_str().unwrap()))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.containerd.daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("containerd's log, last lines first:\n{}", tail.join("\n"));
        }
        self.snapshotter.stop();
        let root = self.path("root");
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("fd-holder --socket {}", root.display()))
            .status();
        for mount in self.fuse_mounts() {
            if let Some(target) = mount.split(' ').nth(1) {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// The key conversions sign with; its `.pub` is what the node trusts.
fn signing_key(work: &Path) -> PathBuf {
    let key = work.join("sign.key");
    if !key.exists() {
        run(loci().args(["key", "generate", key.to_str().unwrap()]));
    }
    key
}

/// A pause image of busybox that waits for its end, pushed to `registry`.
fn push_pause_image(work: &Path, registry: &str) -> String {
    let layout = work.join("pause");
    build_fixture(
        &layout,
        "pause",
        &["--busybox", "trap 'exit 0' TERM INT; while true; do sleep 1; done"],
    );
    let reference = format!("{registry}/pause:1");
    push_layout(&layout, "pause", &reference);
    reference
}

/// What kubelet does for one pod of one container, as the CRI API asks:
/// pull (through `images`), run the sandbox, create and start the
/// container, wait for it to exit, read its log, and tear it all down.
/// Returns the log's lines and the exit code.
async fn run_pod(
    images: &mut ImageServiceClient<Channel>,
    runtime: &mut RuntimeServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
    args: &[&str],
    logs: &Path,
) -> (Vec<String>, i32) {
    std::fs::create_dir_all(logs).unwrap();
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "loci-pod".into(),
            uid: "uid-loci-pod".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // Host network: the host's UTS namespace, so no hostname of its own.
        log_directory: logs.to_str().unwrap().into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let image_ref = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("PullImage")
        .into_inner()
        .image_ref;
    let pod = runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let container = runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image_ref.clone(),
                    ..Default::default()
                }),
                args: args.iter().map(|a| a.to_string()).collect(),
                log_path: "app.log".into(),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    runtime
        .start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .expect("StartContainer");
    let started = Instant::now();
    let exit_code = loop {
        let status = runtime
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status");
        if status.state == ContainerState::ContainerExited as i32 {
            break status.exit_code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the container did not exit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // CRI's log format: "<time> <stream> <tag> <line>".
    let log = std::fs::read_to_string(logs.join("app.log")).unwrap();
    let lines = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect();
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("RemovePodSandbox");
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image_ref,
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    (lines, exit_code)
}

/// A unix-socket gRPC channel, as kubelet dials its endpoints.
async fn dial(socket: &Path) -> Channel {
    containerd_client::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()))
}

/// Layer digests of a converted image, from `loci inspect --json`.
fn layer_digests(reference: &str, certs: &Path, docker_config: &Path) -> Vec<String> {
    let out = run(loci()
        .args(["inspect", "--json", "--hosts-dir"])
        .arg(certs)
        .arg(reference)
        .env("DOCKER_CONFIG", docker_config));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap().to_string())
        .collect()
}

/// Status codes of the GETs of `digests` in a registry access log.
fn blob_get_statuses(log: &str, digests: &[String]) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("127.0.0.1 - ") && l.contains("\"GET "))
        .filter(|l| digests.iter().any(|d| l.contains(&format!("/blobs/{d}"))))
        .filter_map(|l| l.split("\" ").nth(1)?.split(' ').next().map(str::to_string))
        .collect()
}

#[test]
fn kubelet_runs_a_pod_from_a_lazily_pulled_debian_image_and_removal_leaves_nothing() {
    let test = "kubelet_runs_a_pod_from_a_lazily_pulled_debian_image_and_removal_leaves_nothing";
    if !require(test, NEEDS, true)
        || !require(test, DEBIAN_IMAGE_NEEDS, true)
        || !require_fuse(test)
    {
        return;
    }
    let layout = debian_python();
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let pause = push_pause_image(work.path(), &registry.addr);
    let image = format!("{}/py:loci", registry.addr);
    run(loci()
        .args(["convert", "--plain-http", "--sign-key"])
        .arg(signing_key(work.path()))
        .arg(format!("oci:{}:py3-nobody", layout.display()))
        .arg(&image));
    let node = Node::start(work, &[&registry.addr], &pause, "");
    let layers = layer_digests(&image, &node.certs, &node.path("no-docker-config"));
    let from = registry.daemon.log_text().len();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (lines, exit_code) = runtime.block_on(async {
        let channel = dial(&node.containerd.socket).await;
        let mut images = ImageServiceClient::new(channel.clone());
        let mut cri = RuntimeServiceClient::new(channel);
        run_pod(
            &mut images,
            &mut cri,
            &image,
            None,
            &[
                "python3",
                "-c",
                "import os, json; print('as', os.getuid(), 'in', os.getcwd())",
            ],
            &node.path("pod-logs"),
        )
        .await
    });
    assert_eq!(exit_code, 0, "{lines:?}");
    assert_eq!(lines, ["as 65534 in /tmp"]);

    // Lazy: the converted layers were only ever read by range.
    let statuses = blob_get_statuses(&registry.daemon.log_text()[from..], &layers);
    assert!(!statuses.is_empty(), "no layer reads");
    assert!(
        statuses.iter().all(|s| s == "206"),
        "whole-layer reads: {statuses:?}"
    );
    // Removal leaves the pause image's one layer, no lazy mount.
    let snapshots = node.loci_snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(node.fuse_mounts(), Vec::<String>::new());
}

#[test]
fn credentials_kubelet_passes_reach_lazy_reads_through_the_cri_proxy_as_tokens_expire() {
    let test = "credentials_kubelet_passes_reach_lazy_reads_through_the_cri_proxy_as_tokens_expire";
    if !require(test, NEEDS, true)
        || !require(test, DEBIAN_IMAGE_NEEDS, true)
        || !require_fuse(test)
    {
        return;
    }
    let layout = debian_python();
    let work = tempfile::tempdir().unwrap();
    // The pause image comes from a public registry; the application from
    // a private one with token auth.
    let public = Registry::start();
    let pause = push_pause_image(work.path(), &public.addr);
    let issuer = TokenIssuer::start(work.path(), "kube", "pull-secret-93a");
    let private = Registry::start_configured("", &issuer.registry_auth());
    let image = format!("{}/py:loci", private.addr);
    // The test's own docker config, for converting; the node has none.
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({ "auths": { &private.addr: {
            "auth": base64_of("kube:pull-secret-93a") } } })
        .to_string(),
    )
    .unwrap();
    run(loci()
        .args(["convert", "--plain-http", "--sign-key"])
        .arg(signing_key(work.path()))
        .arg(format!("oci:{}:py3-nobody", layout.display()))
        .arg(&image)
        .env("DOCKER_CONFIG", &docker));
    let proxy = work.path().join("cri-image.sock");
    let node = Node::start(
        work,
        &[&public.addr, &private.addr],
        &pause,
        &format!("cri_image_proxy_address = {proxy:?}"),
    );
    let layers = layer_digests(&image, &node.certs, &docker);
    // Tokens live 5 s from here: the container's reads outlast the first.
    issuer.ttl_secs.store(5, Ordering::SeqCst);
    let from = private.daemon.log_text().len();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let script = r#"
import os, time
print('as', os.getuid(), 'in', os.getcwd(), flush=True)
time.sleep(8)
n = 0
for root, dirs, files in os.walk('/usr/lib/python3.11'):
    for f in files:
        p = os.path.join(root, f)
        if os.path.isfile(p) and not os.path.islink(p):
            open(p, 'rb').read()
            n += 1
print('read', n > 500, flush=True)
"#;
    let (lines, exit_code) = runtime.block_on(async {
        // kubelet: images through the proxy, everything else to containerd.
        let mut images = ImageServiceClient::new(dial(&proxy).await);
        let mut cri = RuntimeServiceClient::new(dial(&node.containerd.socket).await);
        run_pod(
            &mut images,
            &mut cri,
            &image,
            Some(AuthConfig {
                username: "kube".into(),
                password: "pull-secret-93a".into(),
                // As containerd's CRI parses it: a URL.
                server_address: format!("http://{}", private.addr),
                ..Default::default()
            }),
            &["python3", "-c", script],
            &node.path("pod-logs"),
        )
        .await
    });
    assert_eq!(exit_code, 0, "{lines:?}");
    assert_eq!(lines, ["as 65534 in /tmp", "read True"]);

    let log = private.daemon.log_text()[from..].to_string();
    let statuses = blob_get_statuses(&log, &layers);
    assert!(
        statuses.iter().filter(|s| *s == "206").count() > 5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s == "206" || s == "401"),
        "whole-layer reads or failures: {statuses:?}"
    );
    let loci_refused = log
        .lines()
        .filter(|l| l.contains("loci/") && l.contains("/blobs/") && l.contains("\" 401 "))
        .count();
    assert!(
        loci_refused >= 1,
        "loci's token never expired mid-run, so renewal went untested:\n{log}"
    );
    let snapshotter_log = node.snapshotter.log_text();
    assert!(!snapshotter_log.contains("pull-secret-93a"), "a secret was logged");
    assert!(
        snapshotter_log.contains("keeping a CRI pull's credentials"),
        "{snapshotter_log}"
    );
    assert!(issuer.issued.load(Ordering::SeqCst) >= 3);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
