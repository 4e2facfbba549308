//! The HTTP/JSON service (`loci scheduler`): node reports in, orders out;
//! placement, routing and completion for the platform; the Kubernetes
//! extender pair; and a background loop that detects timeouts and node loss,
//! retires idle instances and applies reservation policies.
//!
//! Bad input gets a 400 (404 for unknown names) with a JSON body
//! `{"error": "...", "field": "..."}` naming the field, and the service keeps
//! serving.

mod invoke;

use super::access::{AccessConfig, Tokens};
use super::cluster::InstanceId;
use super::cluster::{
    ClusterView, FunctionSummary, NodeSummary, Placement, PlacementStats, RetiredInstance, Routed,
};
use super::config::SchedulerConfig;
use super::error::{FieldError, SchedulerError};
use super::extender::{self, ExtenderArgs, ExtenderFilterResult, HostPriority};
use super::function::FunctionSpec;
use super::lifecycle::{Lifecycle, StartStats};
use super::report::{check_name, NodeOrders, NodeReport, StartOrder, StopOrder, StopReason};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// The service state, in two halves with a lock each, so that node agents'
/// polls and invocations waiting for or watching their instance do not
/// queue behind placement and routing: the cluster view, and what node
/// agents were ordered and did. Work that spans both takes the view first.
struct Service {
    view: Mutex<ClusterView>,
    agents: Mutex<Agents>,
    node_timeout_ms: u64,
    node_dead_ms: u64,
    /// Hosts instance endpoints may name besides the reporting node's own
    /// address (`[access] instance_hosts`).
    instance_hosts: Vec<String>,
}

/// The orders waiting for each node and what node agents did with the
/// instances they were given.
#[derive(Default)]
struct Agents {
    orders: HashMap<String, NodeOrders>,
    /// Rung when a node has new orders, for its agent's long poll.
    order_bells: HashMap<String, Arc<Notify>>,
    /// Nodes whose daemon starts instances (`starts_instances`).
    agent_nodes: HashSet<String>,
    lifecycle: Lifecycle,
}

type Shared = Arc<Service>;

/// Takes a lock even if a handler panicked holding it: handlers do not
/// panic on bad input (it is validated first); should one anyway, keep
/// answering rather than fail every later request.
fn take<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cluster view alone.
fn view(state: &Shared) -> MutexGuard<'_, ClusterView> {
    take(&state.view)
}

/// The agents' half alone (never taken before the view by the same task).
fn agents(state: &Shared) -> MutexGuard<'_, Agents> {
    take(&state.agents)
}

/// Both halves, the view first.
fn both(state: &Shared) -> Both<'_> {
    let view = take(&state.view);
    let agents = take(&state.agents);
    Both {
        view,
        agents,
        node_timeout_ms: state.node_timeout_ms,
        node_dead_ms: state.node_dead_ms,
    }
}

/// Both halves held, for work that spans them.
struct Both<'a> {
    view: MutexGuard<'a, ClusterView>,
    agents: MutexGuard<'a, Agents>,
    node_timeout_ms: u64,
    node_dead_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agents {
    fn orders_for(&mut self, node: &str) -> &mut NodeOrders {
        if let Some(bell) = self.order_bells.get(node) {
            // A permit is kept when nobody waits: the next poll returns at once.
            bell.notify_one();
        }
        self.orders.entry(node.to_string()).or_default()
    }

    /// An instance left the view: its node is told to stop it (unless it
    /// never got the start), and invocations waiting on it look again.
    fn stopped(&mut self, r: &RetiredInstance) {
        self.lifecycle.gone(r.instance_id);
        let orders = self.orders_for(&r.node_id);
        // An instance never started by its node needs no stop: drop the start.
        let before = orders.start.len();
        orders.start.retain(|s| s.instance_id != r.instance_id);
        if orders.start.len() == before {
            orders.stop.push(StopOrder {
                instance_id: r.instance_id,
                function: r.function.clone(),
                reason: r.reason,
            });
        }
    }
}

impl Both<'_> {
    /// Orders the new instance started on its node, and follows its start
    /// when the node's agent reports on it.
    fn order_start(&mut self, p: &Placement, now: u64) {
        let Ok(id) = self.view.function_id(&p.function) else {
            return;
        };
        let spec = self.view.spec(id);
        let order = StartOrder {
            instance_id: p.instance_id,
            function: p.function.clone(),
            image: p.image.clone(),
            resources: p.resources,
            command: spec.command.clone().unwrap_or_default(),
            start_timeout_s: spec.start_timeout_s,
        };
        if self.agents.agent_nodes.contains(&p.node_id) {
            self.agents.lifecycle.placed(&p.node_id, order.clone(), now);
        }
        self.agents.orders_for(&p.node_id).start.push(order);
    }

    /// Retires an instance for `reason`, if the view still has it.
    fn retire(
        &mut self,
        instance: InstanceId,
        reason: StopReason,
        now: u64,
    ) -> Option<RetiredInstance> {
        let r = self.view.retire(instance, reason, now)?;
        self.agents.stopped(&r);
        Some(r)
    }

    /// Takes in what a node agent says it runs: ready instances become
    /// routable, instances that stopped running leave the view (their
    /// invocations fail), instances the view does not have on that node
    /// are ordered stopped (a node or the scheduler restarted), and starts
    /// the node does not know of are ordered again (their order was lost).
    fn reconcile(&mut self, report: &NodeReport, now: u64) {
        if !report.starts_instances {
            self.agents.agent_nodes.remove(&report.node_id);
            return;
        }
        self.agents.agent_nodes.insert(report.node_id.clone());
        let mut runs = HashSet::new();
        for r in &report.running {
            let ours = self
                .view
                .instance_home(r.instance_id)
                .is_some_and(|(node, f)| node == report.node_id && f == r.function);
            if !ours {
                let orders = self.agents.orders_for(&report.node_id);
                if !orders.stop.iter().any(|s| s.instance_id == r.instance_id) {
                    tracing::warn!(node = %report.node_id, instance = r.instance_id, function = %r.function, "node runs an instance the scheduler does not have there: stopping it");
                    orders.stop.push(StopOrder {
                        instance_id: r.instance_id,
                        function: r.function.clone(),
                        reason: StopReason::Unwanted,
                    });
                }
                continue;
            }
            runs.insert(r.instance_id);
            if let (true, Some(endpoint)) = (r.ready, &r.endpoint) {
                if let Some(took) = self.agents.lifecycle.ready(r.instance_id, endpoint, now) {
                    self.view.set_ready(r.instance_id);
                    tracing::info!(node = %report.node_id, instance = r.instance_id, function = %r.function, %endpoint, start_ms = took, "instance ready");
                }
            }
        }
        for order in self
            .agents
            .lifecycle
            .unreported_starts(&report.node_id, &runs)
        {
            let orders = self.agents.orders_for(&report.node_id);
            if !orders
                .start
                .iter()
                .any(|s| s.instance_id == order.instance_id)
            {
                tracing::debug!(node = %report.node_id, instance = order.instance_id, "node does not know a start it was ordered: ordering it again");
                orders.start.push(order);
            }
        }
        for id in self.agents.lifecycle.node_runs(&report.node_id, runs) {
            if let Some(r) = self.retire(id, StopReason::Exited, now) {
                tracing::warn!(node = %r.node_id, instance = id, function = %r.function, failed_invocations = ?r.failed_invocations, "instance exited on its node");
            }
        }
    }

    /// One pass of the background loop.
    fn tick(&mut self, now: u64) {
        for r in self.view.kill_timed_out(now) {
            tracing::warn!(instance = r.instance_id, function = %r.function, node = %r.node_id, failed_invocations = ?r.failed_invocations, "invocation ran past its timeout: killing instance; its invocations fail (410 on completion)");
            self.agents.stopped(&r);
        }
        for id in self.agents.lifecycle.take_expired_starts(now) {
            if let Some(r) = self.retire(id, StopReason::StartFailed, now) {
                tracing::warn!(instance = id, function = %r.function, node = %r.node_id, "instance not ready within its start timeout: stopping it");
            }
        }
        for lost in self
            .view
            .expire_lost_nodes(now, self.node_timeout_ms, self.node_dead_ms)
        {
            if !lost.dead {
                tracing::warn!(node = %lost.node_id, instances = lost.instances.len(), invocations = lost.invocations, "node stopped reporting: lost; nothing new goes there, its instances are kept until it is dead");
                continue;
            }
            tracing::warn!(node = %lost.node_id, instances = lost.instances.len(), invocations = lost.invocations, "node dead: its instances are dropped");
            for &id in &lost.instances {
                self.agents.lifecycle.gone(id);
            }
            self.agents.lifecycle.forget_node(&lost.node_id);
            self.agents.orders.remove(&lost.node_id);
            self.agents.order_bells.remove(&lost.node_id);
            self.agents.agent_nodes.remove(&lost.node_id);
        }
        for r in self.view.retire_idle(now) {
            tracing::debug!(instance = r.instance_id, function = %r.function, "idle past keep-alive: retiring");
            self.agents.stopped(&r);
        }
        let changes = self.view.reconcile_reservations(now);
        for p in &changes.started {
            tracing::info!(instance = p.instance_id, function = %p.function, node = %p.node_id, warm = p.warm_fraction, "reserved instance placed");
            self.order_start(p, now);
        }
        for r in &changes.stopped {
            tracing::info!(instance = r.instance_id, function = %r.function, "reservation shrank: retiring");
            self.agents.stopped(r);
        }
    }
}

/// Invocations are sent to the endpoints nodes report: each must be the
/// reporting node's own address, or a host the configuration lists, so a
/// report cannot point the scheduler at anything else on its network.
fn check_endpoint_hosts(
    report: &NodeReport,
    peer: IpAddr,
    allowed: &[String],
) -> Result<(), FieldError> {
    for (i, r) in report.running.iter().enumerate() {
        let Some(endpoint) = &r.endpoint else {
            continue;
        };
        // Validated already: an http URL with a host.
        let Ok(url) = reqwest::Url::parse(endpoint) else {
            continue;
        };
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let own = host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == peer.to_canonical());
        let listed = allowed
            .iter()
            .any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host));
        if !own && !listed {
            return Err(FieldError::new(
                format!("running[{i}].endpoint"),
                format!(
                    "{endpoint:?} is neither the reporting node's address ({peer}) nor in [access] instance_hosts"
                ),
            ));
        }
    }
    Ok(())
}

/// An error answer: status plus `{"error", "field"}`.
struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.error,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<SchedulerError> for ApiError {
    fn from(err: SchedulerError) -> Self {
        let status = match err {
            SchedulerError::Invalid(_) => StatusCode::BAD_REQUEST,
            SchedulerError::UnknownFunction(_) | SchedulerError::UnknownInvocation(_) => {
                StatusCode::NOT_FOUND
            }
            SchedulerError::NoCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SchedulerError::InvocationFailed { .. } => StatusCode::GONE,
        };
        ApiError {
            status,
            field: err.field().map(str::to_string),
            error: err.to_string(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        SchedulerError::Invalid(err).into()
    }
}

/// Decodes a JSON body, naming the path of the offending field on error
/// (`images[2].chunks_cached`), which axum's own `Json` does only in text.
fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("invalid JSON body: {}", err.inner()),
            field: (path != ".").then_some(path),
        }
    })
}

/// `POST /v1/place` and `/v1/route` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionRequest {
    function: String,
}

/// `POST /v1/complete` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    invocation_id: u64,
}

#[derive(Serialize)]
struct Completed {
    instance_id: u64,
    in_flight: u32,
}

#[derive(Serialize)]
struct ClusterSummary {
    nodes: Vec<NodeSummary>,
    functions: Vec<FunctionSummary>,
    placement: PlacementStats,
    /// Starts node agents carried out: from decision to ready.
    starts: StartStats,
}

async fn post_report(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Json<NodeOrders>, ApiError> {
    let report: NodeReport = decode(&body)?;
    let now = now_ms();
    check_endpoint_hosts(&report, peer.ip(), &state.instance_hosts)?;
    let mut s = both(&state);
    s.view.apply_report(&report, now)?;
    s.reconcile(&report, now);
    tracing::debug!(node = %report.node_id, images = report.images.len(), running = report.running.len(), "report");
    Ok(Json(
        s.agents.orders.remove(&report.node_id).unwrap_or_default(),
    ))
}

async fn post_function(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<FunctionSummary>, ApiError> {
    let spec: FunctionSpec = decode(&body)?;
    let mut view = view(&state);
    let id = view.register_function(spec)?;
    let summary = view.function_summary(id);
    tracing::info!(function = %summary.name, policy = ?summary.policy, "function registered");
    Ok(Json(summary))
}

async fn get_function(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<FunctionSummary>, ApiError> {
    let view = view(&state);
    let id = view.function_id(&name)?;
    Ok(Json(view.function_summary(id)))
}

async fn post_place(State(state): State<Shared>, body: Bytes) -> Result<Json<Placement>, ApiError> {
    let request: FunctionRequest = decode(&body)?;
    let mut s = both(&state);
    let id = s.view.function_id(&request.function)?;
    let now = now_ms();
    let placement = s.view.place(id, false, now)?;
    s.order_start(&placement, now);
    Ok(Json(placement))
}

async fn post_route(State(state): State<Shared>, body: Bytes) -> Result<Json<Routed>, ApiError> {
    let request: FunctionRequest = decode(&body)?;
    let mut s = both(&state);
    let id = s.view.function_id(&request.function)?;
    let now = now_ms();
    let routed = s.view.route(id, now)?;
    if let Some(p) = &routed.cold_start {
        s.order_start(p, now);
    }
    Ok(Json(routed))
}

async fn post_complete(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<Completed>, ApiError> {
    let request: CompleteRequest = decode(&body)?;
    let (instance_id, in_flight) = view(&state).complete(request.invocation_id, now_ms())?;
    Ok(Json(Completed {
        instance_id,
        in_flight,
    }))
}

/// `POST /v1/nodes/{node}/orders` body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OrdersRequest {
    /// How long to wait for an order when none is waiting, at most
    /// [`MAX_ORDER_WAIT_MS`].
    #[serde(default)]
    wait_ms: u64,
}

/// Longest a node agent's poll for orders is held open.
const MAX_ORDER_WAIT_MS: u64 = 60_000;

/// A node agent's long poll: its waiting orders at once, or the first that
/// is given within `wait_ms`, or none. Only for nodes that have reported
/// as node agents. Takes only the agents' lock.
async fn post_orders(
    State(state): State<Shared>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Json<NodeOrders>, ApiError> {
    check_name("node", &node)?;
    let request: OrdersRequest = if body.is_empty() {
        OrdersRequest::default()
    } else {
        decode(&body)?
    };
    let wait = Duration::from_millis(request.wait_ms.min(MAX_ORDER_WAIT_MS));
    let bell = {
        let mut s = agents(&state);
        if !s.agent_nodes.contains(&node) {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                error: format!("node {node:?} has not reported as a node agent: report (with starts_instances) before polling for orders"),
                field: Some("node".into()),
            });
        }
        if let Some(orders) = s.orders.remove(&node) {
            if !orders.start.is_empty() || !orders.stop.is_empty() {
                return Ok(Json(orders));
            }
        }
        s.order_bells.entry(node.clone()).or_default().clone()
    };
    let _ = tokio::time::timeout(wait, bell.notified()).await;
    Ok(Json(
        agents(&state).orders.remove(&node).unwrap_or_default(),
    ))
}

async fn get_cluster(State(state): State<Shared>) -> Json<ClusterSummary> {
    let s = both(&state);
    Json(ClusterSummary {
        nodes: s.view.node_summaries(),
        functions: s
            .view
            .function_ids()
            .map(|id| s.view.function_summary(id))
            .collect(),
        placement: s.view.placement_stats(),
        starts: s.agents.lifecycle.stats(),
    })
}

async fn post_filter(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<ExtenderFilterResult>, ApiError> {
    let args: ExtenderArgs = decode(&body)?;
    Ok(Json(extender::filter(&view(&state), &args)?))
}

async fn post_prioritize(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Json<Vec<HostPriority>>, ApiError> {
    let args: ExtenderArgs = decode(&body)?;
    Ok(Json(extender::prioritize(&view(&state), &args)?))
}

/// Serves the scheduler on `listener` until `shutdown` resolves. The
/// configuration must be valid (see [`SchedulerConfig::validate`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let gate = Arc::new(Gate::from_config(&config.access)?);
    let mut view = ClusterView::new(config.scoring);
    for spec in config.functions {
        view.register_function(spec)?;
    }
    // Ids after any a previous run of the service gave (milliseconds since
    // the epoch, times 1024: a thousand placements a millisecond before
    // the next run's ids could meet these).
    view.number_instances_from(now_ms().saturating_mul(1024));
    let state: Shared = Arc::new(Service {
        view: Mutex::new(view),
        agents: Mutex::new(Agents::default()),
        node_timeout_ms: config.node_timeout_ms,
        node_dead_ms: config.node_dead_ms,
        instance_hosts: config.access.instance_hosts.clone(),
    });
    let ticker = {
        let state = state.clone();
        let period = Duration::from_millis(config.reconcile_interval_ms);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                both(&state).tick(now_ms());
            }
        })
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/reports", post(post_report))
        .route("/v1/functions", post(post_function))
        .route("/v1/functions/{name}", get(get_function))
        .route("/v1/place", post(post_place))
        .route("/v1/route", post(post_route))
        .route("/v1/complete", post(post_complete))
        .route("/v1/nodes/{node}/orders", post(post_orders))
        .route("/v1/invoke/{function}", post(invoke::post_invoke))
        .route("/v1/cluster", get(get_cluster))
        .route("/k8s/filter", post(post_filter))
        .route("/k8s/prioritize", post(post_prioritize))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(gate, check_token));
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    ticker.abort();
    served.map_err(ServeError::Io)
}

/// The API's door: which calls need a token, and the tokens.
struct Gate {
    /// None: no token asked (`access.insecure_no_token`).
    tokens: Option<Tokens>,
    open_reads: bool,
}

impl Gate {
    fn from_config(access: &AccessConfig) -> Result<Gate, ServeError> {
        let tokens = match (&access.token_file, access.insecure_no_token) {
            (Some(path), _) => Some(Tokens::open(path).map_err(ServeError::Access)?),
            (None, true) => {
                tracing::warn!("access.insecure_no_token: anyone who reaches the scheduler may place, route and report");
                None
            }
            (None, false) => {
                return Err(ServeError::Access(
                    "token_file is not set: the API would take orders from anyone who reaches it (set insecure_no_token = true for a private loopback)".into(),
                ))
            }
        };
        Ok(Gate {
            tokens,
            open_reads: access.open_reads,
        })
    }

    /// Whether a request needs no token: the health check, and the
    /// read-only views when they are open.
    fn open(&self, method: &axum::http::Method, path: &str) -> bool {
        path == "/healthz"
            || (self.open_reads && (method == axum::http::Method::GET || path.starts_with("/k8s/")))
    }
}

/// Lets a request through if it needs no token or carries an accepted
/// `Authorization: Bearer` token; else 401, before its body is read.
async fn check_token(
    State(gate): State<Arc<Gate>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tokens) = &gate.tokens else {
        return next.run(request).await;
    };
    if gate.open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens.allows(token) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": "a valid bearer token is required" })),
        )
            .into_response(),
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The access settings cannot be used.
    #[error("access: {0}")]
    Access(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] FieldError),
    /// The listener failed.
    #[error("serving HTTP: {0}")]
    Io(std::io::Error),
}
