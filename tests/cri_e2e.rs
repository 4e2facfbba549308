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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The start command of the tests' containers, typed as a user would.
const PRINT_WHO: &str = "import os, json; print('as', os.getuid(), 'in', os.getcwd())";

const NEEDS: &[&str] = &[
    "docker-registry",
    "containerd",
    "ctr",
    "runc",
    "skopeo",
    "python3",
];

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
        let snapshotter = spawn_snapshotter(work.path());
        reach_snapshotter(&containerd, &snapshotter);
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

    /// Stops the snapshotter (SIGTERM, as systemd would) and starts it
    /// again; returns how long its socket took to appear.
    fn restart_snapshotter(&mut self) -> Duration {
        self.snapshotter.stop();
        let started = Instant::now();
        self.snapshotter = spawn_snapshotter(self.work.path());
        started.elapsed()
    }

    /// The lazy (FUSE) mounts under the snapshotter's root.
    fn fuse_mounts(&self) -> Vec<String> {
        mounts_under(&self.path("root"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.containerd.daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("containerd's log, last lines first:\n{}", tail.join("\n"));
            let exited = self.snapshotter.child.try_wait().ok().flatten();
            let log = self.snapshotter.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "the snapshotter's log (exited: {exited:?}), last lines first:\n{}",
                tail.join("\n")
            );
        }
        self.snapshotter.stop();
        release_snapshotter_root(&self.path("root"));
    }
}

/// Waits until containerd reaches the snapshotter through its proxy
/// plugin, as a node's readiness check would. containerd dialled the
/// socket at its start, before the snapshotter was there, and gRPC fails
/// calls at once with that dial's error until its backoff (a second or
/// more) lets it dial again: a CI run saw the first PullImage refused so.
fn reach_snapshotter(containerd: &Containerd, snapshotter: &Daemon) {
    let start = Instant::now();
    loop {
        let out = containerd
            .ctr()
            .args(["snapshots", "--snapshotter", "loci", "ls"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "containerd never reached the snapshotter: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            snapshotter.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `loci snapshotter` with the node's config, no docker config in
/// its environment.
fn spawn_snapshotter(work: &Path) -> Daemon {
    spawn_snapshotter_at(work, &[("DOCKER_CONFIG", &work.join("no-docker-config"))])
}

/// A pause image of busybox that waits for its end, pushed to `registry`.
fn push_pause_image(work: &Path, registry: &str) -> String {
    let layout = work.join("pause");
    build_fixture(
        &layout,
        "pause",
        &[
            "--busybox",
            "trap 'exit 0' TERM INT; while true; do sleep 1; done",
        ],
    );
    let reference = format!("{registry}/pause:1");
    push_layout(&layout, "pause", &reference);
    reference
}

/// What kubelet does, as the CRI API asks it: images through `images`
/// (containerd, or the loci proxy), pods and containers through `runtime`.
struct Kubelet {
    images: ImageServiceClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
    sandbox: PodSandboxConfig,
    logs: PathBuf,
}

impl Kubelet {
    async fn new(images: &Path, runtime: &Path, logs: &Path) -> Kubelet {
        std::fs::create_dir_all(logs).unwrap();
        Kubelet {
            images: ImageServiceClient::new(dial(images).await),
            runtime: RuntimeServiceClient::new(dial(runtime).await),
            sandbox: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "loci-pod".into(),
                    uid: "uid-loci-pod".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                // Host network: the host's UTS namespace, so no hostname.
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
            },
            logs: logs.to_path_buf(),
        }
    }

    /// PullImage; returns the image reference containers are created from.
    async fn pull(&mut self, image: &str, auth: Option<AuthConfig>) -> String {
        self.images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: Some(self.sandbox.clone()),
            })
            .await
            .expect("PullImage")
            .into_inner()
            .image_ref
    }

    async fn run_sandbox(&mut self) -> String {
        self.runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id
    }

    /// CreateContainer `name` running `args` from `image_ref`.
    async fn create(
        &mut self,
        pod: &str,
        name: &str,
        image_ref: &str,
        args: &[&str],
    ) -> Result<String, tonic::Status> {
        Ok(self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: image_ref.into(),
                        ..Default::default()
                    }),
                    args: args.iter().map(|a| a.to_string()).collect(),
                    log_path: format!("{name}.log"),
                    linux: Some(LinuxContainerConfig::default()),
                    ..Default::default()
                }),
                sandbox_config: Some(self.sandbox.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    async fn start(&mut self, container: &str) {
        self.runtime
            .start_container(StartContainerRequest {
                container_id: container.into(),
            })
            .await
            .expect("StartContainer");
    }

    /// Waits for the container `name` to exit; its log lines (CRI's
    /// format: "<time> <stream> <tag> <line>") and exit code.
    async fn wait(&mut self, container: &str, name: &str) -> (Vec<String>, i32) {
        let started = Instant::now();
        let exit_code = loop {
            let status = self
                .runtime
                .container_status(ContainerStatusRequest {
                    container_id: container.into(),
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
        let log = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap();
        let lines = log
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
            .collect();
        (lines, exit_code)
    }

    /// StopPodSandbox, RemovePodSandbox, RemoveImage.
    async fn tear_down(&mut self, pod: &str, image_ref: &str) {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .expect("StopPodSandbox");
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .expect("RemovePodSandbox");
        self.images
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: image_ref.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("RemoveImage");
    }

    /// One pod of one container, start to removal: its log and exit code.
    async fn run_pod(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
        args: &[&str],
    ) -> (Vec<String>, i32) {
        let image_ref = self.pull(image, auth).await;
        let pod = self.run_sandbox().await;
        let container = self
            .create(&pod, "app", &image_ref, args)
            .await
            .expect("CreateContainer");
        self.start(&container).await;
        let result = self.wait(&container, "app").await;
        self.tear_down(&pod, &image_ref).await;
        result
    }
}

/// A registry holding the pause image and the Debian python image as
/// loci converted and signed it: the work dir, the registry, the pause
/// image's and the converted image's references.
fn converted_debian_python() -> (tempfile::TempDir, Registry, String, String) {
    let layout = debian_python_image();
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let pause = push_pause_image(work.path(), &registry.addr);
    let image = format!("{}/py:loci", registry.addr);
    run(loci()
        .args(["convert", "--plain-http", "--sign-key"])
        .arg(signing_key(work.path()))
        .arg(format!("oci:{}:py3-nobody", layout.display()))
        .arg(&image));
    (work, registry, pause, image)
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
    let (work, registry, pause, image) = converted_debian_python();
    let node = Node::start(work, &[&registry.addr], &pause, "");
    let layers = layer_digests(&image, &node.certs, &node.path("no-docker-config"));
    let from = registry.daemon.log_text().len();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (lines, exit_code) = runtime.block_on(async {
        let socket = &node.containerd.socket;
        let mut kubelet = Kubelet::new(socket, socket, &node.path("pod-logs")).await;
        kubelet
            .run_pod(&image, None, &["python3", "-c", PRINT_WHO])
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
    let snapshots = node.containerd.snapshots("loci");
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
    let layout = debian_python_image();
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
            "auth": base64(b"kube:pull-secret-93a") } } })
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
        let socket = &node.containerd.socket;
        let mut kubelet = Kubelet::new(&proxy, socket, &node.path("pod-logs")).await;
        kubelet
            .run_pod(
                &image,
                Some(AuthConfig {
                    username: "kube".into(),
                    password: "pull-secret-93a".into(),
                    // As containerd's CRI parses it: a URL.
                    server_address: format!("http://{}", private.addr),
                    ..Default::default()
                }),
                &["python3", "-c", script],
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
    assert!(
        !snapshotter_log.contains("pull-secret-93a"),
        "a secret was logged"
    );
    assert!(
        snapshotter_log.contains("keeping a CRI pull's credentials"),
        "{snapshotter_log}"
    );
    assert!(issuer.issued.load(Ordering::SeqCst) >= 3);
}

/// containerd redials a proxy snapshotter with backoff: after a restart,
/// kubelet's next call that needs the snapshotter fails until containerd
/// reconnects. The daemon answers on its socket before it has served its
/// lazy layers again; this measures how long until a CreateContainer in
/// a running pod succeeds, and runs that container off the recovered lazy
/// layers while the first container keeps running.
#[test]
fn cri_calls_succeed_again_soon_after_a_snapshotter_restart() {
    let test = "cri_calls_succeed_again_soon_after_a_snapshotter_restart";
    if !require(test, NEEDS, true)
        || !require(test, DEBIAN_IMAGE_NEEDS, true)
        || !require_fuse(test)
    {
        return;
    }
    let (work, registry, pause, image) = converted_debian_python();
    let mut node = Node::start(work, &[&registry.addr], &pause, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = node.containerd.socket.clone();
    let mut kubelet =
        runtime.block_on(async { Kubelet::new(&socket, &socket, &node.path("pod-logs")).await });
    let (image_ref, pod) = runtime.block_on(async {
        let image_ref = kubelet.pull(&image, None).await;
        let pod = kubelet.run_sandbox().await;
        let long = kubelet
            .create(
                &pod,
                "long",
                &image_ref,
                &["python3", "-c", "import time; time.sleep(600)"],
            )
            .await
            .expect("CreateContainer");
        kubelet.start(&long).await;
        (image_ref, pod)
    });

    let socket_after = node.restart_snapshotter();
    let restarted = Instant::now() - socket_after;
    let (created, attempts) = runtime.block_on(async {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match kubelet
                .create(&pod, "after", &image_ref, &["python3", "-c", PRINT_WHO])
                .await
            {
                Ok(id) => break (id, attempts),
                Err(status) => {
                    assert!(
                        restarted.elapsed() < Duration::from_secs(30),
                        "CreateContainer still failing 30 s after the restart: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let first_success = restarted.elapsed();
    eprintln!(
        "snapshotter restart: socket after {:.3} s, first successful CreateContainer after {:.3} s ({attempts} attempts)",
        socket_after.as_secs_f64(),
        first_success.as_secs_f64()
    );
    let (lines, exit_code) = runtime.block_on(async {
        kubelet.start(&created).await;
        let result = kubelet.wait(&created, "after").await;
        kubelet.tear_down(&pod, &image_ref).await;
        result
    });
    assert_eq!(
        (lines, exit_code),
        (vec!["as 65534 in /tmp".to_string()], 0)
    );
    assert!(socket_after < Duration::from_secs(5), "{socket_after:?}");
}
