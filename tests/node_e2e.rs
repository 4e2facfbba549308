//! The scheduler's loop closed on a real node: `loci scheduler`, `loci
//! node` beside `loci snapshotter` and a real containerd 1.6 with runc, and
//! a function whose image is the debootstrap-built Debian image with
//! python3, converted by loci, serving HTTP with a few lines of Python run
//! by its bare command name. Invocations go through the scheduler.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NEEDS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
];

const TOKEN: &str = "node-e2e-token-41d2";

/// The function's server, as a user would write it into the config: an
/// echo on `$PORT` that sleeps first when asked to (`sleep N`).
const SERVER: &str = r#"
import http.server, os, time
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, data):
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(b'ok')
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        if body.startswith(b'sleep '):
            time.sleep(float(body[6:]))
        self.reply(b'echo: ' + body)
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), Handler).serve_forever()
"#;

/// The scheduler's config: `echo` on demand (four invocations at once on
/// an instance), `kept` with two instances reserved; 3 s timeouts; a node
/// that misses 2 s of reports is lost, 6 s dead.
fn scheduler_config(image: &str, tokens: &Path) -> String {
    let function = |name: &str, extra: &str| {
        format!(
            "[[functions]]\nname = \"{name}\"\nimage = \"{image}\"\ncpu_millis = 250\nmemory_mib = 256\ntimeout_s = 3\nstart_timeout_s = 60\ncommand = [\"python3\", \"-c\", '''{SERVER}''']\n{extra}\n"
        )
    };
    format!(
        "node_timeout_ms = 2000\nnode_dead_ms = 6000\nreconcile_interval_ms = 200\n\n{}{}[access]\ntoken_file = {tokens:?}\n",
        function("echo", "concurrency = 4"),
        function("kept", "policy = { kind = \"fixed\", instances = 2 }"),
    )
}

struct Cluster {
    work: tempfile::TempDir,
    _registry: Registry,
    snapshotter: Daemon,
    containerd: Containerd,
    scheduler: Daemon,
    agent: Option<Daemon>,
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    ports: (u16, u16),
    /// The snapshotter's metrics, which the agent reads its cache from.
    metrics: String,
}

impl Cluster {
    fn start() -> Cluster {
        let layout = debian_python_image();
        let work = tempfile::tempdir().unwrap();
        let registry = Registry::start();
        let image = format!("{}/py:loci", registry.addr);
        run(loci()
            .args(["convert", "--plain-http", "--sign-key"])
            .arg(signing_key(work.path()))
            .arg(format!("oci:{}:py3-nobody", layout.display()))
            .arg(&image));
        write_snapshotter_config(work.path(), &registry.addr, "");
        let snapshotter = spawn_snapshotter_at(work.path(), &[]);
        let metrics = format!("http://{}/metrics", metrics_address(&snapshotter));
        let containerd = Containerd::start(&format!(
            "[proxy_plugins.loci]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            work.path().join("loci.sock").display()
        ));

        let tokens = work.path().join("tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
        let sched_config = work.path().join("scheduler.toml");
        std::fs::write(&sched_config, scheduler_config(&image, &tokens)).unwrap();
        let mut cmd = loci();
        cmd.args(["scheduler", "--listen", "127.0.0.1:0", "--config"])
            .arg(&sched_config);
        let scheduler = Daemon::spawn(cmd, work.path().join("scheduler.log"));
        let addr = scheduler.listening_address("the scheduler");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        let first = free_port();
        let mut cluster = Cluster {
            work,
            _registry: registry,
            snapshotter,
            containerd,
            scheduler,
            agent: None,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
            ports: (first, first.saturating_add(50)),
            metrics,
        };
        cluster.start_agent();
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// `loci node` as an operator starts it beside the snapshotter.
    fn start_agent(&mut self) {
        let mut cmd = loci();
        cmd.args(["node", "--scheduler", &self.base, "--token-file"])
            .arg(self.path("tokens"))
            .args(["--node-id", "node-a", "--address"])
            .arg(&self.containerd.socket)
            .args(["--namespace", &self.containerd.namespace, "--plain-http"])
            .args(["--ports", &format!("{}-{}", self.ports.0, self.ports.1)])
            .args(["--cpu-millis", "2000", "--memory-mib", "4096"])
            .args(["--report-interval-secs", "1"])
            .args(["--snapshotter-metrics", &self.metrics]);
        let n = std::fs::read_dir(self.work.path()).unwrap().count();
        self.agent = Some(Daemon::spawn(cmd, self.path(&format!("agent-{n}.log"))));
    }

    fn stop_agent(&mut self) -> String {
        let mut agent = self.agent.take().expect("an agent runs");
        agent.stop();
        agent.log_text()
    }

    fn get(&self, path: &str) -> Value {
        self.runtime.block_on(async {
            let response = self
                .http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "GET {path}");
            response.json().await.unwrap()
        })
    }

    /// Sends `body` to `function` through the scheduler: status, body,
    /// instance id, whether it started cold, and how long it took.
    fn invoke(&self, function: &str, body: &str) -> Invoked {
        self.runtime
            .block_on(invoke(&self.http, &self.base, function, body))
    }

    /// The ids of the instances of `function` whose tasks run, as
    /// containerd lists them.
    fn running_tasks(&self) -> BTreeSet<u64> {
        let out = run(self.containerd.ctr().args(["task", "list"]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.contains("RUNNING"))
            .filter_map(|l| {
                l.split_whitespace()
                    .next()?
                    .strip_prefix("loci-instance-")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Waits until `check` holds of `GET /v1/cluster`, or panics with the
    /// logs after `within`.
    fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let cluster = self.get("/v1/cluster");
            if check(&cluster) {
                return cluster;
            }
            if start.elapsed() > within {
                panic!(
                    "{what}: not within {within:?}; cluster {cluster}\nagent log:\n{}\nscheduler log:\n{}",
                    self.agent.as_ref().map(Daemon::log_text).unwrap_or_default(),
                    self.scheduler.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The reserved instances of `kept` are up, their agent says ready.
    fn kept_ready(&self, within: Duration) -> BTreeSet<u64> {
        let start = Instant::now();
        loop {
            let ready = self.ready_instances("kept");
            if ready.len() == 2 {
                return ready;
            }
            assert!(
                start.elapsed() < within,
                "kept never had 2 ready instances (has {ready:?}):\nagent log:\n{}\nscheduler log:\n{}",
                self.agent.as_ref().map(Daemon::log_text).unwrap_or_default(),
                self.scheduler.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ids of `function`'s instances that answer invocations: asked of the
    /// function's instances themselves through the scheduler, concurrency 1
    /// sending each of two simultaneous invocations to another instance.
    fn ready_instances(&self, function: &str) -> BTreeSet<u64> {
        let summary = self.get(&format!("/v1/functions/{function}"));
        if summary["reserved_instances"] != 2 {
            return BTreeSet::new();
        }
        let cluster = self.get("/v1/cluster");
        if cluster["starts"]["ready"].as_u64().unwrap_or(0) < 2 {
            return BTreeSet::new();
        }
        self.runtime.block_on(async {
            let (a, b) = tokio::join!(
                invoke(&self.http, &self.base, function, "sleep 0.5"),
                invoke(&self.http, &self.base, function, "sleep 0.5")
            );
            if a.status != StatusCode::OK || b.status != StatusCode::OK || a.cold || b.cold {
                return BTreeSet::new();
            }
            [a.instance, b.instance].into_iter().flatten().collect()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        // Instances outlive their agent: remove them before containerd goes.
        for id in self.running_tasks() {
            let name = format!("loci-instance-{id}");
            let _ = self
                .containerd
                .ctr()
                .args(["task", "kill", "-s", "SIGKILL", &name])
                .output();
        }
        std::thread::sleep(Duration::from_millis(300));
        let out = self
            .containerd
            .ctr()
            .args(["container", "list", "-q"])
            .output();
        for name in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = self
                .containerd
                .ctr()
                .args(["task", "delete", "-f", name])
                .output();
            let _ = self
                .containerd
                .ctr()
                .args(["container", "delete", name])
                .output();
        }
        self.snapshotter.stop();
        release_snapshotter_root(&self.path("root"));
    }
}

struct Invoked {
    status: StatusCode,
    body: String,
    instance: Option<u64>,
    cold: bool,
    took: Duration,
}

async fn invoke(http: &reqwest::Client, base: &str, function: &str, body: &str) -> Invoked {
    let start = Instant::now();
    let response = http
        .post(format!("{base}/v1/invoke/{function}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let instance = header("x-loci-instance").and_then(|v| v.parse().ok());
    let cold = header("x-loci-cold-start").as_deref() == Some("true");
    let status = response.status();
    let body = response.text().await.unwrap();
    Invoked {
        status,
        body,
        instance,
        cold,
        took: start.elapsed(),
    }
}

#[test]
fn the_scheduler_starts_routes_kills_and_reconciles_instances_through_a_node_agent() {
    let test = "the_scheduler_starts_routes_kills_and_reconciles_instances_through_a_node_agent";
    if !require(test, NEEDS, true)
        || !require(test, DEBIAN_IMAGE_NEEDS, true)
        || !require_fuse(test)
    {
        return;
    }
    let mut cluster = Cluster::start();

    // The reservation policy's two instances start lazily and answer.
    let kept = cluster.kept_ready(Duration::from_secs(120));
    assert!(
        kept.is_subset(&cluster.running_tasks()),
        "{kept:?} run in containerd"
    );
    let lazy = cluster.containerd.snapshots("loci");
    assert!(
        !lazy.is_empty(),
        "the instances' roots come from the loci snapshotter"
    );
    // The agent reports what the snapshotter's cache holds of the image.
    let view = cluster.wait_for("the image reported warm", Duration::from_secs(15), |c| {
        c["nodes"][0]["warm_images"] == 1
    });
    eprintln!("node after the first starts: {}", view["nodes"][0]);
    let page = cluster.runtime.block_on(async {
        reqwest::get(&cluster.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let cached: f64 = page
        .lines()
        .find(|l| l.starts_with("loci_image_cached_ratio{") && l.contains("of=\"chunks\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no cached share of the image in the metrics:\n{page}"));
    assert!(
        cached > 0.0 && cached < 1.0,
        "a lazy start caches part of the image: {cached}"
    );

    // An invocation of the on-demand function starts an instance for
    // itself, waits for it, and is answered by it; the next one is warm.
    let first = cluster.invoke("echo", "hello");
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::OK, "echo: hello")
    );
    assert!(first.cold, "the first invocation started an instance");
    let echo = first.instance.expect("the answer names its instance");
    let second = cluster.invoke("echo", "again");
    assert_eq!(
        (second.status, second.body.as_str()),
        (StatusCode::OK, "echo: again")
    );
    assert_eq!((second.cold, second.instance), (false, Some(echo)));
    eprintln!(
        "echo: cold invocation {:?}, warm {:?}",
        first.took, second.took
    );

    // A slow invocation is killed at the 3 s timeout; another one on the
    // same instance fails with it at once, saying why.
    let (slow, other) = cluster.runtime.block_on(async {
        let slow = invoke(&cluster.http, &cluster.base, "echo", "sleep 30");
        let other = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            invoke(&cluster.http, &cluster.base, "echo", "sleep 30").await
        };
        tokio::join!(slow, other)
    });
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.body);
    assert!(slow.took < Duration::from_secs(5), "{:?}", slow.took);
    assert_eq!(other.status, StatusCode::BAD_GATEWAY, "{}", other.body);
    assert!(
        other.body.contains("ran past the function's timeout"),
        "{}",
        other.body
    );
    assert!(
        other.took < Duration::from_millis(2_800),
        "failed with the instance: {:?}",
        other.took
    );
    let start = Instant::now();
    while cluster.running_tasks().contains(&echo) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the killed instance still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A reserved instance killed at its timeout is replaced.
    let killed = cluster.invoke("kept", "sleep 30");
    assert_eq!(
        killed.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        killed.body
    );
    let replaced = cluster.kept_ready(Duration::from_secs(60));
    assert_eq!(
        kept.intersection(&replaced).count(),
        1,
        "one of {kept:?} replaced: {replaced:?}"
    );

    // Its agent away past the node timeout, the node is lost but its
    // instances are kept; the restarted agent finds them and reports them,
    // and the same instances answer again.
    let log = cluster.stop_agent();
    cluster.wait_for("the node is lost", Duration::from_secs(15), |c| {
        c["nodes"][0]["alive"] == false && c["nodes"][0]["instances"] == 2
    });
    assert!(
        replaced.is_subset(&cluster.running_tasks()),
        "instances outlive their agent"
    );
    cluster.start_agent();
    let after = cluster.kept_ready(Duration::from_secs(30));
    assert_eq!(
        after, replaced,
        "the same instances after the node came back\n{log}"
    );

    // Away past the dead timeout, its instances are dropped; when its
    // agent returns, it reports them, they are stopped as unwanted, and the
    // policy starts new ones.
    cluster.stop_agent();
    cluster.wait_for("the node is dead", Duration::from_secs(20), |c| {
        c["nodes"][0]["alive"] == false && c["nodes"][0]["instances"] == 0
    });
    let orphans = cluster.running_tasks();
    assert!(replaced.is_subset(&orphans), "{orphans:?}");
    cluster.start_agent();
    let renewed = cluster.kept_ready(Duration::from_secs(60));
    assert!(
        renewed.is_disjoint(&orphans),
        "new instances: {renewed:?}, old: {orphans:?}"
    );
    let start = Instant::now();
    while !cluster.running_tasks().is_disjoint(&orphans) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "unwanted instances still run: {:?}\n{}",
            cluster.running_tasks(),
            cluster.scheduler.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cluster.scheduler.log_text().contains("does not have there"));

    let cluster_view = cluster.get("/v1/cluster");
    let starts = &cluster_view["starts"];
    eprintln!("starts through the agent: {starts}");
    assert!(starts["ready"].as_u64().unwrap() >= 5, "{starts}");
}
