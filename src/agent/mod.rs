//! The node agent (`loci node`): carries out the scheduler's orders on its
//! node. It starts instances through containerd (roots from the loci
//! snapshotter, so a start is lazy), checks that each answers HTTP on its
//! port, stops and kills them, and tells the scheduler what runs and what
//! is ready: at once when something changes, and periodically. Orders
//! reach it by a long poll, when they are given. Instances outlive the
//! agent: a restarted agent finds them by their labels and reports them,
//! and the scheduler stops the ones it no longer wants.

pub mod runtime;
pub mod warmth;

use crate::node::{host_resources, scheduler_token, CpuSampler};
use crate::registry::RegistryOptions;
use crate::scheduler::report::{
    report_to, ImageCache, NodeOrders, NodeReport, Resources, RunningInstance, StartOrder,
    StopOrder, StopReason,
};
use runtime::{Containerd, Launch};
use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Everything the agent is told at start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The scheduler's URL, e.g. `http://sched:7070`.
    pub scheduler_url: String,
    /// File holding the bearer token (first line; re-read for each call).
    pub token_file: Option<PathBuf>,
    /// This node's id in reports.
    pub node_id: String,
    /// Where instances run.
    pub containerd: Containerd,
    /// How images are pulled (plain HTTP, hosts directory, credentials).
    pub registry: RegistryOptions,
    /// `http://HOST` the scheduler reaches instances at (see
    /// [`advertised_base`]); each instance's port is added.
    pub endpoint_base: String,
    /// Ports instances are given, one each.
    pub ports: RangeInclusive<u16>,
    /// What instances may use; None for the whole host.
    pub capacity: Option<Resources>,
    /// Time between reports when nothing changes.
    pub report_interval: Duration,
    /// The snapshotter's metrics URL (`http://127.0.0.1:PORT/metrics`),
    /// for how warm its cache is for each image; None: no images reported.
    pub snapshotter_metrics: Option<String>,
    /// Instances started at once; the others wait their turn, first
    /// ordered first (starting all of a burst at once makes every one of
    /// them as late as the last).
    pub max_concurrent_starts: usize,
}

/// How long a stopped instance is given to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the scheduler is asked to hold a poll for orders open.
const ORDER_WAIT: Duration = Duration::from_secs(30);
/// Time between readiness probes of a starting instance.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Longest a starting instance keeps its start turn while it is probed.
const PROBE_WITH_TURN: Duration = Duration::from_secs(10);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The containers it runs could not be listed at start.
    #[error("finding the instances this node runs")]
    List(#[source] runtime::RuntimeError),
}

struct Instance {
    function: String,
    port: u16,
    resources: Resources,
    /// Its container has been created and started (until then, a missing
    /// task is not an exit).
    launched: bool,
    ready: bool,
    stopping: bool,
}

struct Agent {
    config: AgentConfig,
    instances: Mutex<HashMap<u64, Instance>>,
    /// Images pulled into containerd by this agent; the lock is held for a
    /// pull so one image is pulled once.
    pulled: tokio::sync::Mutex<HashSet<String>>,
    /// Rung when an instance appears, becomes ready or goes.
    changed: Notify,
    /// Turns to start an instance (create it, wait until it answers).
    start_turns: tokio::sync::Semaphore,
    http: reqwest::Client,
}

/// Runs the agent until `shutdown` resolves. Instances keep running when it
/// stops.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let turns = config.max_concurrent_starts.max(1);
    let agent = Arc::new(Agent {
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a reqwest client without TLS settings always builds"),
        config,
        instances: Mutex::new(HashMap::new()),
        pulled: tokio::sync::Mutex::new(HashSet::new()),
        changed: Notify::new(),
        start_turns: tokio::sync::Semaphore::new(turns),
    });
    agent.adopt().await?;
    let reports = tokio::spawn(agent.clone().report_loop());
    let orders = tokio::spawn(agent.clone().order_loop());
    shutdown.await;
    reports.abort();
    orders.abort();
    tracing::info!("node agent stopping; its instances keep running");
    Ok(())
}

/// `{scheduler}/v1/nodes/{node}/orders`, the node id escaped as a path
/// segment.
fn orders_url(scheduler: &str, node: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(scheduler).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|()| format!("{scheduler} cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "nodes", node, "orders"]);
    Ok(url)
}

/// The endpoint base the scheduler is told, `http://HOST`, checked as the
/// scheduler checks it (an IPv6 address is bracketed).
pub fn advertised_base(host: &str) -> Result<String, String> {
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]"),
        Err(_) => host.to_string(),
    };
    let base = format!("http://{host}");
    crate::scheduler::report::check_endpoint("--advertise-host", &format!("{base}:1"))
        .map_err(|e| e.to_string())?;
    Ok(base)
}

impl Agent {
    fn instances(&self) -> MutexGuard<'_, HashMap<u64, Instance>> {
        self.instances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes over the instances a previous run of the agent started: the
    /// running ones are probed and reported, the rest removed.
    async fn adopt(self: &Arc<Self>) -> Result<(), AgentError> {
        let found = self
            .config
            .containerd
            .list()
            .await
            .map_err(AgentError::List)?;
        for f in found {
            if !f.running {
                tracing::info!(
                    instance = f.instance_id,
                    "removing an instance that exited while the agent was away"
                );
                if let Err(e) = self.config.containerd.remove(f.instance_id).await {
                    tracing::warn!(instance = f.instance_id, error = %e, "removing it failed");
                }
                continue;
            }
            tracing::info!(instance = f.instance_id, function = %f.function, port = f.port, "found a running instance");
            self.instances().insert(
                f.instance_id,
                Instance {
                    function: f.function,
                    port: f.port,
                    resources: Resources::default(),
                    launched: true,
                    ready: false,
                    stopping: false,
                },
            );
            let agent = self.clone();
            tokio::spawn(async move {
                agent
                    .probe_until_ready(f.instance_id, f.port, Duration::from_secs(10))
                    .await
            });
        }
        Ok(())
    }

    /// The images' warmth from the snapshotter, or none (logged) if it
    /// cannot be read.
    async fn images(&self) -> Vec<ImageCache> {
        let Some(url) = &self.config.snapshotter_metrics else {
            return Vec::new();
        };
        match warmth::read(&self.http, url).await {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(error = %e, "the snapshotter's cache could not be read: reporting no images");
                Vec::new()
            }
        }
    }

    fn build_report(&self, cpu: &mut CpuSampler, images: Vec<ImageCache>) -> NodeReport {
        let (host_capacity, _) = host_resources(cpu);
        let capacity = self.config.capacity.unwrap_or(host_capacity);
        let instances = self.instances();
        let mut used = Resources::default();
        let mut running: Vec<RunningInstance> = instances
            .iter()
            .filter(|(_, i)| !i.stopping)
            .map(|(&id, i)| {
                used.cpu_millis = used.cpu_millis.saturating_add(i.resources.cpu_millis);
                used.memory_mib = used.memory_mib.saturating_add(i.resources.memory_mib);
                RunningInstance {
                    instance_id: id,
                    function: i.function.clone(),
                    ready: i.ready,
                    endpoint: i
                        .ready
                        .then(|| format!("{}:{}", self.config.endpoint_base, i.port)),
                }
            })
            .collect();
        running.sort_by_key(|r| r.instance_id);
        running.truncate(crate::scheduler::report::MAX_REPORTED_INSTANCES);
        NodeReport {
            node_id: self.config.node_id.clone(),
            capacity,
            used: Resources {
                cpu_millis: used.cpu_millis.min(capacity.cpu_millis),
                memory_mib: used.memory_mib.min(capacity.memory_mib),
            },
            instances: Vec::new(),
            images,
            running,
            starts_instances: true,
        }
    }

    /// Reports every interval and whenever an instance changes; carries
    /// out the orders each answer brings.
    async fn report_loop(self: Arc<Self>) {
        let mut cpu = CpuSampler::default();
        // Warmth is read at most once an interval: the reports an instance's
        // start or readiness sends at once carry the last reading, so a
        // burst of starts does not make the snapshotter walk every chunk
        // while it serves them.
        let mut images: Option<(Instant, Vec<ImageCache>)> = None;
        loop {
            self.notice_exits().await;
            if images
                .as_ref()
                .is_none_or(|(read, _)| read.elapsed() >= self.config.report_interval)
            {
                images = Some((Instant::now(), self.images().await));
            }
            let warmth = images.as_ref().map(|(_, i)| i.clone()).unwrap_or_default();
            let report = self.build_report(&mut cpu, warmth);
            let token = scheduler_token(self.config.token_file.as_deref());
            match report_to(&self.config.scheduler_url, &report, token.as_deref()).await {
                Ok(orders) => self.carry_out(orders),
                Err(e) => {
                    tracing::warn!(scheduler = %self.config.scheduler_url, error = %e, "report failed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.report_interval) => {}
                _ = self.changed.notified() => {}
            }
        }
    }

    /// Polls for orders, held open by the scheduler until it has some.
    async fn order_loop(self: Arc<Self>) {
        let url = match orders_url(&self.config.scheduler_url, &self.config.node_id) {
            Ok(url) => url,
            Err(e) => {
                tracing::error!(scheduler = %self.config.scheduler_url, error = %e, "no orders can be polled: the scheduler URL does not parse");
                return;
            }
        };
        loop {
            let token = scheduler_token(self.config.token_file.as_deref());
            let mut request = self
                .http
                .post(url.clone())
                .timeout(ORDER_WAIT + Duration::from_secs(10))
                .json(&serde_json::json!({ "wait_ms": ORDER_WAIT.as_millis() as u64 }));
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let polled = match request.send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<NodeOrders>().await.map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            match polled {
                Ok(orders) => self.carry_out(orders),
                Err(e) => {
                    // Not known yet (no report has arrived) or unreachable.
                    tracing::debug!(error = %e, "polling for orders failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn carry_out(self: &Arc<Self>, orders: NodeOrders) {
        for order in orders.start {
            tokio::spawn(self.clone().start(order));
        }
        for order in orders.stop {
            tokio::spawn(self.clone().stop(order));
        }
    }

    /// The lowest port of the range no instance has and nothing listens on.
    fn free_port(&self, taken: &HashMap<u64, Instance>) -> Option<u16> {
        let used: HashSet<u16> = taken.values().map(|i| i.port).collect();
        self.config.ports.clone().find(|port| {
            !used.contains(port) && std::net::TcpListener::bind(("0.0.0.0", *port)).is_ok()
        })
    }

    async fn start(self: Arc<Self>, order: StartOrder) {
        let id = order.instance_id;
        let port = {
            let mut instances = self.instances();
            if instances.contains_key(&id) {
                return;
            }
            let Some(port) = self.free_port(&instances) else {
                tracing::error!(instance = id, function = %order.function, "no free port left in the agent's range: not starting it");
                return;
            };
            instances.insert(
                id,
                Instance {
                    function: order.function.clone(),
                    port,
                    resources: order.resources,
                    launched: false,
                    ready: false,
                    stopping: false,
                },
            );
            port
        };
        self.changed.notify_one();
        let Ok(turn) = self.start_turns.acquire().await else {
            return;
        };
        if !self.instances().contains_key(&id) {
            return; // stopped while it waited for its turn
        }
        let clock = Instant::now();
        let launched = async {
            self.pull(&order.image).await?;
            self.config
                .containerd
                .start(&Launch {
                    instance_id: id,
                    function: &order.function,
                    image: &order.image,
                    command: &order.command,
                    port,
                    resources: order.resources,
                })
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = launched {
            tracing::error!(instance = id, function = %order.function, image = %order.image, %error, "starting the instance failed");
            let _ = self.config.containerd.remove(id).await;
            self.instances().remove(&id);
            self.changed.notify_one();
            return;
        }
        let still_wanted = match self.instances().get_mut(&id) {
            Some(i) => {
                i.launched = true;
                true
            }
            None => false,
        };
        if !still_wanted {
            // Stopped while it was being created: the stop removed nothing.
            let _ = self.config.containerd.remove(id).await;
            return;
        }
        tracing::info!(instance = id, function = %order.function, port, launch_ms = clock.elapsed().as_millis() as u64, "instance started; waiting for it to answer");
        // The turn covers the program's own start, but not for long: an
        // instance that never answers must not hold back every other start.
        let within = Duration::from_secs(order.start_timeout_s);
        if !self
            .probe_until_ready(id, port, within.min(PROBE_WITH_TURN))
            .await
        {
            drop(turn);
            if !self
                .probe_until_ready(id, port, within.saturating_sub(PROBE_WITH_TURN))
                .await
            {
                tracing::warn!(
                    instance = id,
                    port,
                    "instance did not answer within its start timeout"
                );
            }
        }
    }

    /// Pulls an image through the loci snapshotter, once per agent run.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let mut pulled = self.pulled.lock().await;
        if pulled.contains(image) {
            return Ok(());
        }
        let c = &self.config.containerd;
        let report = crate::pull::pull(&c.address, &c.namespace, image, &self.config.registry)
            .await
            .map_err(|e| crate::error_chain::chain(&e).to_string())?;
        tracing::info!(
            image,
            lazy = report.lazy_layers,
            unpacked = report.unpacked_layers,
            "image pulled"
        );
        pulled.insert(image.to_string());
        Ok(())
    }

    /// Sends GET / to the instance until it answers with anything HTTP (it
    /// is ready: true), it goes, or `within` passes (false; past its start
    /// timeout the scheduler counts the start as failed and stops it).
    async fn probe_until_ready(&self, id: u64, port: u16, within: Duration) -> bool {
        let url = format!("http://127.0.0.1:{port}/");
        let until = Instant::now() + within;
        while Instant::now() < until {
            if !self.instances().contains_key(&id) {
                return false;
            }
            let answered = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok();
            if answered {
                if let Some(i) = self.instances().get_mut(&id) {
                    i.ready = true;
                }
                tracing::info!(instance = id, port, "instance ready");
                self.changed.notify_one();
                return true;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        false
    }

    /// Stops an instance: SIGTERM and a grace period when it is retired,
    /// SIGKILL at once when it is killed (timeout) or failed.
    async fn stop(self: Arc<Self>, order: StopOrder) {
        let id = order.instance_id;
        let launched = match self.instances().get_mut(&id) {
            Some(i) => {
                i.stopping = true;
                i.launched
            }
            None => true,
        };
        self.changed.notify_one();
        let c = &self.config.containerd;
        if launched {
            let graceful = matches!(order.reason, StopReason::Retired | StopReason::Unwanted);
            if graceful && c.signal(id, "SIGTERM").await.is_ok() {
                let until = Instant::now() + STOP_GRACE;
                while Instant::now() < until {
                    match c.still_running().await {
                        Ok(tasks) if tasks.get(&id) != Some(&true) => break,
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            if let Err(e) = c.remove(id).await {
                tracing::warn!(instance = id, error = %e, "removing the instance failed");
            }
        }
        tracing::info!(instance = id, function = %order.function, reason = ?order.reason, "instance stopped");
        self.instances().remove(&id);
        self.changed.notify_one();
    }

    /// Removes instances whose task has ended by itself, so the next report
    /// tells the scheduler they exited.
    async fn notice_exits(&self) {
        let watched: Vec<u64> = self
            .instances()
            .iter()
            .filter(|(_, i)| i.launched && !i.stopping)
            .map(|(&id, _)| id)
            .collect();
        if watched.is_empty() {
            return;
        }
        let tasks = match self.config.containerd.still_running().await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::warn!(error = %e, "listing tasks failed");
                return;
            }
        };
        for id in watched {
            if tasks.get(&id) == Some(&true) {
                continue;
            }
            let gone = self
                .instances()
                .get(&id)
                .is_some_and(|i| i.launched && !i.stopping);
            if gone {
                tracing::warn!(instance = id, "instance exited");
                self.instances().remove(&id);
                let _ = self.config.containerd.remove(id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_hosts_are_checked_and_ipv6_bracketed() {
        assert_eq!(advertised_base("10.0.0.17").unwrap(), "http://10.0.0.17");
        assert_eq!(advertised_base("fd00::1").unwrap(), "http://[fd00::1]");
        assert_eq!(
            advertised_base("node-17.example").unwrap(),
            "http://node-17.example"
        );
        for bad in ["", "a/b", "user@host", "h?x", "h:1"] {
            assert!(advertised_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_orders_url_escapes_the_node_id() {
        let url = orders_url("http://sched:7070/", "node a/b").unwrap();
        assert_eq!(
            url.as_str(),
            "http://sched:7070/v1/nodes/node%20a%2Fb/orders"
        );
        let url = orders_url("http://sched:7070/base", "n").unwrap();
        assert_eq!(url.as_str(), "http://sched:7070/base/v1/nodes/n/orders");
    }
}
