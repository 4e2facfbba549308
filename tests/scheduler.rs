//! Integration tests of `loci scheduler` and `loci sim`: real HTTP calls to
//! a running scheduler on 127.0.0.1, and runs of the `loci` binary.

use chrono::{Timelike, Utc};
use loci::scheduler::config::SchedulerConfig;
use loci::scheduler::server::serve;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOCI: &str = env!("CARGO_BIN_EXE_loci");

/// A running scheduler, stopped when dropped: either the library's server
/// on a real TCP listener on 127.0.0.1 (most tests), or the `loci` binary.
struct Scheduler {
    base: String,
    http: reqwest::Client,
    /// Holds the token file.
    _tokens: Option<tempfile::TempDir>,
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
    _process: Option<KillOnDrop>,
}

/// Kills a spawned `loci` when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    file
}

/// The token the tests' schedulers accept (see [`with_access`]).
const TOKEN: &str = "test-token-6f1c";

/// `toml` with an `[access]` section naming a token file (in `dir`) that
/// holds [`TOKEN`], and `extra` access lines.
fn with_access(toml: &str, dir: &std::path::Path, extra: &str) -> String {
    let file = dir.join("tokens");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    format!("{toml}\n[access]\ntoken_file = {file:?}\n{extra}\n")
}

/// A client that sends [`TOKEN`] with every request.
fn authorized_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn start(toml: &str) -> Scheduler {
    let tokens = tempfile::tempdir().unwrap();
    let config =
        SchedulerConfig::load(config_file(&with_access(toml, tokens.path(), "")).path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    Scheduler {
        base: format!("http://{addr}"),
        http: authorized_client(),
        _tokens: Some(tokens),
        _stop: Some(stop),
        _process: None,
    }
}

impl Scheduler {
    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn post_raw(&self, path: &str, body: String) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, &body).await;
        assert_eq!(status, StatusCode::OK, "{path} {body} -> {answer}");
        answer
    }

    async fn report(&self, node: &str, cpu_millis: u32, images: &[(&str, f64)]) -> Value {
        let images: Vec<Value> = images
            .iter()
            .map(|(image, f)| json!({"image": image, "chunks_cached": f, "trace_cached": f}))
            .collect();
        self.ok(
            "/v1/reports",
            json!({
                "node_id": node,
                "capacity": {"cpu_millis": cpu_millis, "memory_mib": 16384},
                "used": {"cpu_millis": 0, "memory_mib": 0},
                "instances": [],
                "images": images,
            }),
        )
        .await
    }

    /// Polls `GET /v1/functions/{name}` until `check` holds or 10 s pass.
    async fn wait_for_function(&self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, summary) = self.get(&format!("/v1/functions/{name}")).await;
            assert_eq!(status, StatusCode::OK);
            if check(&summary) {
                return summary;
            }
            assert!(
                Instant::now() < deadline,
                "condition never held; last {summary}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const FUNCTION_F: &str = r#"
[[functions]]
name = "f"
image = "img-a"
cpu_millis = 1000
memory_mib = 512
concurrency = 2
timeout_s = 1
"#;

#[tokio::test]
async fn placement_goes_where_the_image_is_warm_and_never_beyond_capacity() {
    let s = start(FUNCTION_F).await;
    s.report("cold", 8000, &[]).await;
    s.report("warm", 2000, &[("img-a", 1.0)]).await;
    for _ in 0..2 {
        let p = s.ok("/v1/place", json!({"function": "f"})).await;
        assert_eq!(p["node_id"], "warm", "{p}");
        assert_eq!(p["warm_fraction"], 1.0);
    }
    let third = s.ok("/v1/place", json!({"function": "f"})).await;
    assert_eq!(
        third["node_id"], "cold",
        "the warm node has no CPU left: {third}"
    );
    let orders = s.report("warm", 2000, &[("img-a", 1.0)]).await;
    assert_eq!(orders["start"].as_array().unwrap().len(), 2, "{orders}");
    assert_eq!(orders["start"][0]["image"], "img-a");
    let again = s.report("warm", 2000, &[("img-a", 1.0)]).await;
    assert!(
        again["start"].as_array().unwrap().is_empty(),
        "orders are delivered once"
    );
    // The cold node's 8 CPUs hold 7 more; the 11th instance has nowhere to go.
    for _ in 0..7 {
        s.ok("/v1/place", json!({"function": "f"})).await;
    }
    let (status, body) = s.post("/v1/place", &json!({"function": "f"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no node has 1000 mCPU"),
        "{body}"
    );
}

#[tokio::test]
async fn routing_picks_the_least_loaded_warm_instance_and_starts_one_when_all_are_full() {
    let s = start(FUNCTION_F).await;
    s.report("n1", 8000, &[]).await;
    let a = s.ok("/v1/route", json!({"function": "f"})).await;
    assert!(
        a["cold_start"].is_object(),
        "first invocation starts an instance: {a}"
    );
    let b = s.ok("/v1/route", json!({"function": "f"})).await;
    assert_eq!(
        (b["instance_id"].clone(), b["in_flight"].clone()),
        (a["instance_id"].clone(), json!(2))
    );
    assert!(b["cold_start"].is_null());
    let c = s.ok("/v1/route", json!({"function": "f"})).await;
    assert!(
        c["cold_start"].is_object(),
        "both slots taken (concurrency 2): {c}"
    );
    assert_ne!(c["instance_id"], a["instance_id"]);
    s.ok("/v1/complete", json!({"invocation_id": a["invocation_id"]}))
        .await;
    s.ok("/v1/complete", json!({"invocation_id": b["invocation_id"]}))
        .await;
    // First instance: 0 in flight, second: 1. Least in-flight wins, twice.
    let d = s.ok("/v1/route", json!({"function": "f"})).await;
    assert_eq!(d["instance_id"], a["instance_id"]);
    let e = s.ok("/v1/route", json!({"function": "f"})).await;
    assert_eq!(
        e["instance_id"], a["instance_id"],
        "tie on load: the older instance"
    );
    let g = s.ok("/v1/route", json!({"function": "f"})).await;
    assert_eq!(
        (g["instance_id"].clone(), g["in_flight"].clone()),
        (c["instance_id"].clone(), json!(2))
    );
    let done = s
        .ok("/v1/complete", json!({"invocation_id": g["invocation_id"]}))
        .await;
    assert_eq!(done["in_flight"], 1);
}

#[tokio::test]
async fn invocations_past_their_timeout_get_the_instance_killed() {
    let s = start(&format!("reconcile_interval_ms = 100\n{FUNCTION_F}")).await;
    s.report("n1", 8000, &[]).await;
    let r = s.ok("/v1/route", json!({"function": "f"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stop = loop {
        let orders = s.report("n1", 8000, &[]).await;
        if let Some(stop) = orders["stop"].as_array().and_then(|a| a.first()).cloned() {
            break stop;
        }
        assert!(Instant::now() < deadline, "no kill order");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stop["instance_id"], r["instance_id"]);
    assert_eq!(stop["reason"], "timeout");
    let (status, body) = s
        .post(
            "/v1/complete",
            &json!({"invocation_id": r["invocation_id"]}),
        )
        .await;
    // The caller learns the invocation failed with its instance.
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["field"], "invocation_id");
    assert!(
        body["error"].as_str().unwrap().contains("Timeout"),
        "{body}"
    );
}

#[tokio::test]
async fn a_silent_node_is_lost_then_dead_and_its_instances_kept_until_then() {
    let s = start(&format!(
        "node_timeout_ms = 600\nnode_dead_ms = 2000\nreconcile_interval_ms = 100\n{FUNCTION_F}"
    ))
    .await;
    s.report("doomed", 8000, &[("img-a", 1.0)]).await;
    s.report("survivor", 8000, &[]).await;
    let p = s.ok("/v1/place", json!({"function": "f"})).await;
    assert_eq!(p["node_id"], "doomed");
    let node = |cluster: &Value, id: &str| {
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .cloned()
            .unwrap()
    };
    // Lost: nothing new goes there, its instance is kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s.report("survivor", 8000, &[]).await;
        let (_, cluster) = s.get("/v1/cluster").await;
        let doomed = node(&cluster, "doomed");
        if doomed["alive"] == false {
            assert_eq!(doomed["instances"], 1, "{doomed}");
            break;
        }
        assert!(Instant::now() < deadline, "node never lost");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let routed = s.ok("/v1/route", json!({"function": "f"})).await;
    assert_ne!(
        routed["instance_id"], p["instance_id"],
        "not routed to a lost node"
    );
    s.ok(
        "/v1/complete",
        json!({"invocation_id": routed["invocation_id"]}),
    )
    .await;
    assert_eq!(
        s.ok("/v1/place", json!({"function": "f"})).await["node_id"],
        "survivor"
    );
    // Dead: its instance is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s.report("survivor", 8000, &[]).await;
        let (_, cluster) = s.get("/v1/cluster").await;
        if node(&cluster, "doomed")["instances"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "node never dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The survivor's two are left (it reported just before).
    let (_, summary) = s.get("/v1/functions/f").await;
    assert_eq!(summary["on_demand_instances"], 2, "{summary}");
    // A dead node that reports again is back, empty.
    s.report("doomed", 8000, &[("img-a", 1.0)]).await;
    let p = s.ok("/v1/place", json!({"function": "f"})).await;
    assert_eq!(p["node_id"], "doomed");
}

/// A function instance as a test plays it: HTTP on 127.0.0.1 that answers
/// a POST with its body, after `sleep N` seconds when the body says so.
async fn fake_instance() -> String {
    async fn answer(body: String) -> String {
        if let Some(secs) = body.strip_prefix("sleep ") {
            tokio::time::sleep(Duration::from_secs(secs.trim().parse().unwrap())).await;
        }
        format!("echo: {body}")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    endpoint
}

impl Scheduler {
    /// A report from a node agent (`starts_instances`) running `running`.
    async fn agent_report(&self, node: &str, running: Value) -> Value {
        self.ok(
            "/v1/reports",
            json!({
                "node_id": node,
                "capacity": {"cpu_millis": 8000, "memory_mib": 16384},
                "used": {"cpu_millis": 0, "memory_mib": 0},
                "running": running,
                "starts_instances": true,
            }),
        )
        .await
    }

    /// An agent's long poll for orders.
    async fn poll_orders(&self, node: &str, wait_ms: u64) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/nodes/{node}/orders"),
            &json!({"wait_ms": wait_ms}),
        )
        .await
    }

    /// `POST /v1/invoke/{function}`: status, body text, and whether the
    /// answer says the invocation started an instance.
    async fn invoke(&self, function: &str, body: &str) -> (StatusCode, String, Option<bool>) {
        let response = self
            .http
            .post(format!("{}/v1/invoke/{function}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let cold = response
            .headers()
            .get("x-loci-cold-start")
            .map(|v| v == "true");
        (status, response.text().await.unwrap(), cold)
    }
}

const FUNCTION_ECHO: &str = r#"
[[functions]]
name = "echo"
image = "img-e"
cpu_millis = 500
memory_mib = 128
concurrency = 2
timeout_s = 2
start_timeout_s = 30
command = ["python3", "-m", "server"]
"#;

/// The loop closed without containerd: an invocation places an instance,
/// its start order reaches the polling agent at once, the invocation waits
/// until the agent says the instance is ready and is then proxied to it;
/// at the timeout the caller gets a 504, the instance a kill order, and the
/// other invocation on it a 502 naming why, before its own timeout.
#[tokio::test]
async fn invocations_are_proxied_to_instances_their_agent_made_ready() {
    let s =
        std::sync::Arc::new(start(&format!("reconcile_interval_ms = 100\n{FUNCTION_ECHO}")).await);
    s.agent_report("n1", json!([])).await;
    let (status, orders) = s.poll_orders("n1", 0).await;
    assert_eq!(
        (status, orders["start"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );

    let first = tokio::spawn({
        let s = s.clone();
        async move { s.invoke("echo", "hello").await }
    });
    let asked = Instant::now();
    let (status, orders) = s.poll_orders("n1", 10_000).await;
    assert_eq!(status, StatusCode::OK, "{orders}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the start order waited {:?} instead of reaching the polling agent",
        asked.elapsed()
    );
    let order = &orders["start"][0];
    assert_eq!(order["function"], "echo");
    assert_eq!(order["command"], json!(["python3", "-m", "server"]));
    assert_eq!(order["start_timeout_s"], 30);
    let id = order["instance_id"].clone();
    // Longer than the function's 2 s timeout: waiting for a start is not
    // running past it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        !first.is_finished(),
        "the invocation waits for its instance to be ready"
    );
    s.agent_report(
        "n1",
        json!([{"instance_id": id, "function": "echo", "ready": false}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !first.is_finished(),
        "a starting instance gets no invocation"
    );

    let endpoint = fake_instance().await;
    s.agent_report(
        "n1",
        json!([{"instance_id": id, "function": "echo", "ready": true, "endpoint": endpoint}]),
    )
    .await;
    let (status, body, cold) = first.await.unwrap();
    assert_eq!(
        (status, body.as_str(), cold),
        (StatusCode::OK, "echo: hello", Some(true))
    );
    let (status, body, cold) = s.invoke("echo", "again").await;
    assert_eq!(
        (status, body.as_str(), cold),
        (StatusCode::OK, "echo: again", Some(false))
    );

    // Two slow invocations on the one instance (concurrency 2): the first
    // runs past the 2 s timeout; the second, sent later, fails with it.
    let slow = tokio::spawn({
        let s = s.clone();
        async move { s.invoke("echo", "sleep 30").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = Instant::now();
    let (status, body, _) = s.invoke("echo", "sleep 30").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("ran past the function's timeout"), "{body}");
    assert!(
        sent.elapsed() < Duration::from_millis(1_800),
        "failed when its instance was killed, not at its own timeout: {:?}",
        sent.elapsed()
    );
    let (status, body, _) = slow.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("timeout of 2 s"), "{body}");
    let (_, orders) = s.poll_orders("n1", 1_000).await;
    assert_eq!(orders["stop"][0]["instance_id"], id, "{orders}");
    assert_eq!(orders["stop"][0]["reason"], "timeout");

    let (_, cluster) = s.get("/v1/cluster").await;
    assert_eq!(cluster["starts"]["ready"], 1, "{cluster}");
    assert!(
        cluster["starts"]["p50_ms"].as_u64().unwrap() >= 2_500,
        "{cluster}"
    );
}

/// A caller that hangs up ends its invocation: it does not run past the
/// function's timeout and take the instance (and whatever else runs on it)
/// down with it.
#[tokio::test]
async fn a_caller_that_hangs_up_ends_its_invocation() {
    let s = start(&format!("reconcile_interval_ms = 100\n{FUNCTION_ECHO}")).await;
    s.agent_report("n1", json!([])).await;
    let placed = s.ok("/v1/place", json!({"function": "echo"})).await;
    let id = placed["instance_id"].clone();
    let endpoint = fake_instance().await;
    s.agent_report(
        "n1",
        json!([{"instance_id": id, "function": "echo", "ready": true, "endpoint": endpoint}]),
    )
    .await;
    let impatient = s
        .http
        .post(format!("{}/v1/invoke/echo", s.base))
        .body("sleep 30")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(impatient.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, orders) = s.poll_orders("n1", 0).await;
    assert_eq!(
        orders["stop"],
        json!([]),
        "nothing ran past the timeout: {orders}"
    );
    let (_, summary) = s.get("/v1/functions/echo").await;
    assert_eq!(summary["in_flight"], 0, "{summary}");
    let (status, body, cold) = s.invoke("echo", "still here").await;
    assert_eq!(
        (status, body.as_str(), cold),
        (StatusCode::OK, "echo: still here", Some(false))
    );
}

/// What a node agent reports is reconciled with what the scheduler wants:
/// an instance it does not know is ordered stopped; one that stops being
/// reported has exited (its invocations fail, naming that); one not ready
/// within its start timeout is stopped. Orders are only for known nodes.
#[tokio::test]
async fn agent_reports_are_reconciled_with_what_the_scheduler_wants() {
    let s = start(&format!(
        "reconcile_interval_ms = 100\n{}",
        FUNCTION_ECHO.replace("start_timeout_s = 30", "start_timeout_s = 1")
    ))
    .await;
    let (status, body) = s.poll_orders("stranger", 0).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let orders = s
        .agent_report(
            "n1",
            json!([{"instance_id": 999, "function": "echo", "ready": false}]),
        )
        .await;
    assert_eq!(orders["stop"][0]["instance_id"], 999, "{orders}");
    assert_eq!(orders["stop"][0]["reason"], "unwanted");

    let endpoint = fake_instance().await;
    let placed = s.ok("/v1/place", json!({"function": "echo"})).await;
    let id = placed["instance_id"].clone();
    s.agent_report(
        "n1",
        json!([{"instance_id": id, "function": "echo", "ready": true, "endpoint": endpoint}]),
    )
    .await;
    let routed = s.ok("/v1/route", json!({"function": "echo"})).await;
    assert_eq!(routed["instance_id"], id);
    s.agent_report("n1", json!([])).await;
    let (status, body) = s
        .post(
            "/v1/complete",
            &json!({"invocation_id": routed["invocation_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Exited"), "{body}");
    s.wait_for_function("echo", |f| f["on_demand_instances"] == 0)
        .await;

    // Placed, its start order taken by a poll whose agent never saw it:
    // ordered again while the node does not report it, and stopped at its
    // start timeout.
    let placed = s.ok("/v1/place", json!({"function": "echo"})).await;
    let (_, taken) = s.poll_orders("n1", 0).await;
    assert_eq!(taken["start"][0]["instance_id"], placed["instance_id"]);
    let again = s.agent_report("n1", json!([])).await;
    assert_eq!(
        again["start"][0]["instance_id"], placed["instance_id"],
        "{again}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answers = Vec::new();
    loop {
        let (_, orders) = s.poll_orders("n1", 500).await;
        answers.push(orders);
        let stops: Vec<Value> = answers
            .iter()
            .flat_map(|o| o["stop"].as_array().cloned().unwrap_or_default())
            .collect();
        if let Some(stop) = stops
            .iter()
            .find(|o| o["instance_id"] == placed["instance_id"])
        {
            assert_eq!(stop["reason"], "start_failed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stop order for a start that never finished"
        );
        answers.push(s.agent_report("n1", json!([])).await);
    }
    let (_, cluster) = s.get("/v1/cluster").await;
    assert_eq!(cluster["starts"]["failed"], 1, "{cluster}");

    // Endpoints are the reporting node's own address or listed hosts.
    let (status, body) = s
        .post(
            "/v1/reports",
            &json!({
                "node_id": "n1",
                "capacity": {"cpu_millis": 8000, "memory_mib": 16384},
                "used": {"cpu_millis": 0, "memory_mib": 0},
                "running": [{"instance_id": 5, "function": "echo", "ready": true,
                             "endpoint": "http://169.254.169.254:80"}],
                "starts_instances": true,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "running[0].endpoint");
}

fn function_with_policy(name: &str, policy: Value) -> Value {
    json!({"name": name, "image": "img-p", "cpu_millis": 100, "memory_mib": 64, "policy": policy})
}

#[tokio::test]
async fn fixed_and_scheduled_policies_keep_their_instances_ready() {
    let s = start("reconcile_interval_ms = 100").await;
    s.report("n1", 16000, &[]).await;
    s.ok(
        "/v1/functions",
        function_with_policy("fixed", json!({"kind": "fixed", "instances": 3})),
    )
    .await;
    s.wait_for_function("fixed", |f| f["reserved_instances"] == 3)
        .await;

    // A window open now in Tokyo, and one that opened 8 hours ago for 2 hours.
    let tokyo_hour = Utc::now().with_timezone(&chrono_tz::Asia::Tokyo).hour();
    let window = |hour: u32, instances: u32| json!({"cron": format!("0 {hour} * * *"), "duration_minutes": 120, "instances": instances});
    let open = json!({"kind": "scheduled", "timezone": "Asia/Tokyo", "baseline": 1,
        "windows": [window(tokyo_hour, 4)]});
    let closed = json!({"kind": "scheduled", "timezone": "Asia/Tokyo", "baseline": 1,
        "windows": [window((tokyo_hour + 16) % 24, 4)]});
    s.ok("/v1/functions", function_with_policy("open", open))
        .await;
    s.ok("/v1/functions", function_with_policy("closed", closed))
        .await;
    s.wait_for_function("open", |f| f["reserved_instances"] == 4)
        .await;
    s.wait_for_function("closed", |f| f["reserved_instances"] == 1)
        .await;

    // Shrinking a fixed reservation retires idle instances, ordered to the node.
    s.ok(
        "/v1/functions",
        function_with_policy("fixed", json!({"kind": "fixed", "instances": 1})),
    )
    .await;
    s.wait_for_function("fixed", |f| f["reserved_instances"] == 1)
        .await;
    let orders = s.report("n1", 16000, &[]).await;
    let started = orders["start"].as_array().unwrap().len();
    assert_eq!(
        started,
        3 + 4 + 1 - 2,
        "the two retired before their start was fetched are not started: {orders}"
    );
    assert!(orders["stop"].as_array().unwrap().is_empty(), "{orders}");
}

#[tokio::test]
async fn utilisation_and_hybrid_policies_follow_load_within_bounds() {
    let s = start("reconcile_interval_ms = 100").await;
    s.report("n1", 16000, &[]).await;
    let utilisation =
        json!({"kind": "utilisation", "target": 0.5, "min": 1, "max": 6, "scale_down_delay_s": 1});
    s.ok(
        "/v1/functions",
        function_with_policy("u", utilisation.clone()),
    )
    .await;
    s.wait_for_function("u", |f| f["reserved_instances"] == 1)
        .await;
    let mut invocations = Vec::new();
    for _ in 0..4 {
        invocations
            .push(s.ok("/v1/route", json!({"function": "u"})).await["invocation_id"].clone());
    }
    // 4 in flight at 50% target wants 8, bounded at 6.
    s.wait_for_function("u", |f| f["reserved_instances"] == 6)
        .await;
    for id in invocations {
        s.ok("/v1/complete", json!({"invocation_id": id})).await;
    }
    // Down slowly (after the 1 s stabilisation window) to the min bound.
    let summary = s
        .wait_for_function("u", |f| f["reserved_instances"] == 1)
        .await;
    assert_eq!(summary["in_flight"], 0);

    let hybrid = json!({"kind": "hybrid",
        "scheduled": {"timezone": "UTC", "baseline": 2, "windows": []},
        "utilisation": {"target": 1.0, "min": 0, "max": 10, "scale_down_delay_s": 1}});
    s.ok("/v1/functions", function_with_policy("h", hybrid))
        .await;
    s.wait_for_function("h", |f| {
        f["reserved_instances"] == 2 && f["policy"] == "hybrid"
    })
    .await;
    let mut invocations = Vec::new();
    for _ in 0..5 {
        invocations
            .push(s.ok("/v1/route", json!({"function": "h"})).await["invocation_id"].clone());
    }
    s.wait_for_function("h", |f| f["reserved_instances"] == 5)
        .await;
    for id in invocations {
        s.ok("/v1/complete", json!({"invocation_id": id})).await;
    }
    s.wait_for_function("h", |f| f["reserved_instances"] == 2)
        .await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_service_keeps_serving() {
    let s = start(FUNCTION_F).await;
    let (status, body) = s.post_raw("/v1/reports", "{not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );

    let report = |images: Value| {
        json!({"node_id": "n1", "capacity": {"cpu_millis": 4000, "memory_mib": 4096},
               "used": {"cpu_millis": 0, "memory_mib": 0}, "images": images})
    };
    let (status, body) = s
        .post(
            "/v1/reports",
            &report(json!([{"image": "x", "chunks_cached": 0.5, "trace_cached": 1.5}])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "images[0].trace_cached", "{body}");
    let (status, body) = s
        .post(
            "/v1/reports",
            &report(json!([{"image": "x", "chunks_cached": "lots", "trace_cached": 1}])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "images[0].chunks_cached", "{body}");
    let (status, body) = s.post("/v1/reports", &json!({"node_id": "n1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing field `capacity`"),
        "{body}"
    );

    let (status, body) = s.post("/v1/route", &json!({"function": "nobody"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (body["field"].clone(), body["error"].clone()),
        (json!("function"), json!("unknown function \"nobody\""))
    );
    let (status, body) = s
        .post("/v1/place", &json!({"function": "f", "replicas": 3}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `replicas`"),
        "{body}"
    );

    let impossible = json!({"kind": "utilisation", "target": 0.7, "min": 5, "max": 2});
    let (status, body) = s
        .post("/v1/functions", &function_with_policy("g", impossible))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "policy.min", "{body}");
    assert_eq!(body["error"], "policy.min: 5 exceeds max 2");
    let bad_zone = json!({"kind": "scheduled", "timezone": "Mars/Olympus", "windows": []});
    let (_, body) = s
        .post("/v1/functions", &function_with_policy("g", bad_zone))
        .await;
    assert_eq!(body["field"], "policy.timezone", "{body}");
    let (status, _) = s.get("/v1/functions/g").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a rejected function is not registered"
    );

    // Still serving, and serving correctly.
    let health = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    s.report("n1", 4000, &[]).await;
    let p = s.ok("/v1/place", json!({"function": "f"})).await;
    assert_eq!(p["node_id"], "n1");
}

#[tokio::test]
async fn kubernetes_extender_filters_by_capacity_and_prefers_warm_nodes() {
    let s = start("").await;
    s.report("warm", 2000, &[("registry.example/app:1", 1.0)])
        .await;
    s.report("cold", 8000, &[]).await;
    let pod = |cpu: &str| {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "registry.example/app:1", "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}
        ]}})
    };
    let names = json!(["warm", "cold", "not-a-loci-node"]);
    let filtered = s
        .ok("/k8s/filter", json!({"pod": pod("4"), "nodenames": names}))
        .await;
    assert_eq!(
        filtered["nodenames"],
        json!(["cold", "not-a-loci-node"]),
        "{filtered}"
    );
    assert!(filtered["failedNodes"]["warm"]
        .as_str()
        .unwrap()
        .contains("needs 4000 mCPU"));

    let scores = s
        .ok(
            "/k8s/prioritize",
            json!({"pod": pod("500m"), "nodenames": names}),
        )
        .await;
    let score = |host: &str| {
        scores
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap()["score"]
            .as_i64()
            .unwrap()
    };
    assert!(score("warm") > score("cold"), "{scores}");
    assert!(score("warm") <= 10);
    assert_eq!(score("not-a-loci-node"), 0);

    // Without nodeCacheCapable, whole Node objects come and go back.
    let nodes = json!({"kind": "NodeList", "apiVersion": "v1", "items": [
        {"metadata": {"name": "warm"}}, {"metadata": {"name": "cold"}}]});
    let filtered = s
        .ok("/k8s/filter", json!({"pod": pod("4"), "nodes": nodes}))
        .await;
    assert_eq!(
        filtered["nodes"]["items"],
        json!([{"metadata": {"name": "cold"}}]),
        "{filtered}"
    );
    assert_eq!(filtered["nodes"]["kind"], "NodeList");

    let (status, body) = s
        .post(
            "/k8s/prioritize",
            &json!({"pod": pod("a lot"), "nodenames": names}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["field"], "pod.spec.containers[0].resources.requests.cpu",
        "{body}"
    );
}

#[tokio::test]
async fn the_binary_serves_the_functions_of_its_config_file() {
    let tokens = tempfile::tempdir().unwrap();
    let config = config_file(&with_access(FUNCTION_F, tokens.path(), ""));
    let mut child = Command::new(LOCI)
        .args([
            "--log",
            "warn",
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn loci scheduler");
    let stdout = child.stdout.take().unwrap();
    let process = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ");
    let addr = addr.unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let s = Scheduler {
        base: format!("http://{addr}"),
        http: authorized_client(),
        _tokens: Some(tokens),
        _stop: None,
        _process: Some(process),
    };
    s.report("n1", 4000, &[("img-a", 1.0)]).await;
    let placed = s.ok("/v1/place", json!({"function": "f"})).await;
    assert_eq!(placed["node_id"], "n1");
    assert_eq!(placed["image"], "img-a");
}

#[test]
fn a_config_with_impossible_bounds_is_refused_at_startup() {
    let config = config_file(&format!(
        "{FUNCTION_F}\n[functions.policy]\nkind = \"utilisation\"\ntarget = 0.7\nmin = 5\nmax = 2\n"
    ));
    let out = Command::new(LOCI)
        .args(["scheduler", "--listen", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("functions[0].policy.min: 5 exceeds max 2"),
        "{stderr}"
    );
}

#[test]
fn sim_reports_one_json_row_per_policy_and_placement() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("pareto.png");
    // The plot needs a font (Debian's fonts-dejavu-core, which CI installs).
    let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists();
    let require = std::env::var_os("LOCI_REQUIRE_SYSTEM_TESTS").is_some();
    let draw = font || require;
    if !draw {
        eprintln!("skipping the plot: no DejaVu Sans (install fonts-dejavu-core)");
    }
    let plot_args: Vec<&str> = if draw {
        vec!["--plot", plot.to_str().unwrap()]
    } else {
        vec![]
    };
    let out = Command::new(LOCI)
        .args([
            "--log",
            "warn",
            "sim",
            "--generate",
            "--seed",
            "5",
            "--invocations",
            "5000",
            "--functions",
            "20",
            "--nodes",
            "10",
            "--keep-alive-sweep-min",
            "5,10,60",
            "--json",
        ])
        .args(&plot_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    // The keep-alive baseline and the histogram policy once per swept
    // keep-alive, the four others once; each with and without cache-aware
    // placement.
    assert_eq!(rows.len(), (3 + 3 + 4) * 2);
    for policy in ["keep-alive", "histogram"] {
        let swept: Vec<u64> = rows
            .iter()
            .filter(|r| r["policy"] == policy && r["cache_aware"] == true)
            .map(|r| r["keep_alive_s"].as_u64().unwrap())
            .collect();
        assert_eq!(swept, [300, 600, 3600], "{policy}");
    }
    if draw {
        let png = std::fs::read(&plot).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }
    let kinds: Vec<(&str, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["policy"].as_str().unwrap(),
                r["cache_aware"].as_bool().unwrap(),
            )
        })
        .collect();
    for policy in ["fixed", "scheduled", "utilisation", "hybrid"] {
        assert!(
            kinds.contains(&(policy, true)) && kinds.contains(&(policy, false)),
            "{kinds:?}"
        );
    }
    for r in &rows {
        for field in [
            "cold_starts",
            "instance_seconds",
            "idle_instance_seconds",
            "p50_start_ms",
            "p99_start_ms",
            "p999_start_ms",
            "placements_per_s",
            "cold_start_pct_p75",
            "cold_start_pct_p99",
            "wasted_vs_keep_alive_10min",
        ] {
            assert!(
                r[field].as_f64().is_some_and(|v| v >= 0.0),
                "{field} in {r}"
            );
        }
        // Only the second of the two generated days is measured.
        let measured = r["invocations"].as_u64().unwrap();
        assert!((1000..4000).contains(&measured), "{measured} of 5000");
    }
    // One day cannot be both the history and what is measured.
    let out = Command::new(LOCI)
        .args([
            "sim",
            "--generate",
            "--invocations",
            "500",
            "--functions",
            "5",
        ])
        .args(["--hours", "24", "--nodes", "2", "--policies", "fixed"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--train-hours"), "{stderr}");
}

#[test]
fn sim_refuses_unsorted_and_negative_traces_naming_the_line() {
    for (csv, expected) in [
        (
            "timestamp_ms,function,duration_ms\n100,a,5\n50,a,5\n",
            "line 3: timestamp_ms: 50 is earlier than the previous line's 100",
        ),
        (
            "timestamp_ms,function,duration_ms\n-100,a,5\n",
            "line 2: timestamp_ms: -100 is negative",
        ),
    ] {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(csv.as_bytes()).unwrap();
        let out = Command::new(LOCI)
            .args(["sim", "--trace"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// Every call that changes state, and node reports, need a token from the
/// token file; the file is read again when it changes (rotation without a
/// restart); the health check is open, and the read-only views only where
/// the configuration opens them.
#[tokio::test]
async fn calls_without_a_valid_token_are_refused_and_tokens_rotate() {
    let s = start(FUNCTION_F).await;
    let token_file = s._tokens.as_ref().unwrap().path().join("tokens");
    let anonymous = reqwest::Client::new();
    let call = |client: &reqwest::Client, method: &str, path: &str, token: Option<&str>| {
        let mut request = match method {
            "GET" => client.get(format!("{}{path}", s.base)),
            _ => client
                .post(format!("{}{path}", s.base))
                .header("content-type", "application/json")
                .body(json!({"function": "f"}).to_string()),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status() }
    };
    for (method, path) in [
        ("POST", "/v1/place"),
        ("POST", "/v1/reports"),
        ("POST", "/v1/invoke/f"),
        ("POST", "/v1/nodes/n1/orders"),
        ("GET", "/v1/cluster"),
    ] {
        assert_eq!(
            call(&anonymous, method, path, None).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            call(&anonymous, method, path, Some("wrong")).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    assert_eq!(
        call(&anonymous, "GET", "/healthz", None).await,
        StatusCode::OK
    );
    assert_eq!(
        call(&anonymous, "GET", "/v1/cluster", Some(TOKEN)).await,
        StatusCode::OK
    );
    // Rotation: the new token is listed beside the old, then alone.
    std::fs::write(&token_file, format!("{TOKEN}\nrotated-token\n")).unwrap();
    assert_eq!(
        call(&anonymous, "GET", "/v1/cluster", Some("rotated-token")).await,
        StatusCode::OK
    );
    std::fs::write(&token_file, "rotated-token\n").unwrap();
    assert_eq!(
        call(&anonymous, "GET", "/v1/cluster", Some(TOKEN)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&anonymous, "GET", "/v1/cluster", Some("rotated-token")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn open_reads_leave_the_views_open_but_not_the_changes() {
    let tokens = tempfile::tempdir().unwrap();
    let toml = with_access(FUNCTION_F, tokens.path(), "open_reads = true");
    let config = SchedulerConfig::load(config_file(&toml).path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, config, std::future::pending()));
    let anonymous = reqwest::Client::new();
    let cluster = anonymous
        .get(format!("http://{addr}/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(cluster.status(), StatusCode::OK);
    let place = anonymous
        .post(format!("http://{addr}/v1/place"))
        .header("content-type", "application/json")
        .body(json!({"function": "f"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(place.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn the_binary_refuses_to_serve_an_api_anyone_could_drive() {
    let out = Command::new(LOCI)
        .args(["scheduler", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access: token_file is not set"), "{stderr}");
}
