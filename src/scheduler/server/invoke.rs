//! `POST /v1/invoke/{function}`: an invocation routed for real. The
//! scheduler picks the instance (the ready one with the fewest invocations
//! in flight, or a new one when all are full), waits for it to be ready if
//! it is starting (up to the function's start timeout, which does not count
//! against its timeout), sends the request body to its endpoint, and
//! enforces the function's timeout: past it the caller gets a 504, the
//! instance is killed (a reservation policy replaces it), and the other
//! invocations on it get a 502 naming why, at once, not when their callers
//! give up. A caller that goes away ends its invocation.

use super::{agents, both, now_ms, view, ApiError, Shared};
use crate::scheduler::cluster::{InstanceId, InvocationId};
use crate::scheduler::error::SchedulerError;
use crate::scheduler::lifecycle::Stage;
use crate::scheduler::report::StopReason;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

/// Largest response an instance may send back through the scheduler.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Ends the invocation when dropped, unless something else did: a caller
/// that hangs up (axum drops the handler) leaves no invocation in flight
/// to run past its timeout and take the instance down with it.
struct InFlight {
    state: Shared,
    invocation: InvocationId,
    ended: bool,
}

impl InFlight {
    /// The invocation's end is someone else's now (it failed with its
    /// instance, or the instance was retired for it).
    fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            let _ = view(&self.state).complete(self.invocation, now_ms());
        }
    }
}

enum Waited {
    Ready(String),
    /// The instance runs on a node without an agent: nobody told the
    /// scheduler where it serves.
    Unmanaged,
    Gone,
    TimedOut,
}

/// Waits until `instance` is ready, gone, or `deadline` passes.
async fn wait_ready(state: &Shared, instance: InstanceId, deadline: Instant) -> Waited {
    loop {
        // Its own statement: the agents' lock is let go before the view's
        // is taken below (the view is always locked first).
        let bell = agents(state).lifecycle.bell(instance);
        let Some(bell) = bell else {
            // Not followed by the agents' half: either on a node without an
            // agent (the view has it) or gone.
            return match view(state).instance_home(instance) {
                Some(_) => Waited::Unmanaged,
                None => Waited::Gone,
            };
        };
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        match agents(state).lifecycle.stage(instance) {
            Stage::Ready(endpoint) => return Waited::Ready(endpoint),
            Stage::Gone => return Waited::Gone,
            Stage::Starting => {}
        }
        if tokio::time::timeout_at(deadline, rung).await.is_err() {
            return Waited::TimedOut;
        }
    }
}

/// Resolves when `instance` is no longer ready (stopped, killed, exited).
async fn gone(state: &Shared, instance: InstanceId) {
    loop {
        let Some(bell) = agents(state).lifecycle.bell(instance) else {
            return;
        };
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        if !matches!(agents(state).lifecycle.stage(instance), Stage::Ready(_)) {
            return;
        }
        rung.await;
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a reqwest client without TLS settings always builds")
    })
}

/// What came back from the instance.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Vec<u8>,
}

async fn forward(endpoint: &str, headers: &HeaderMap, body: Bytes) -> Result<Answer, String> {
    let mut request = client().post(format!("{endpoint}/")).body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    let mut response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "its response is larger than the {MAX_RESPONSE_BYTES} bytes the scheduler passes on"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

fn bad_gateway(error: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        error,
        field: None,
    }
}

/// The invocation ended without an answer because its instance went:
/// says why, as the view remembers it. One the background loop found past
/// its deadline and killed its instance for gets the timeout, as if this
/// handler's own clock had run out first.
fn failed(guard: InFlight, instance: InstanceId, timeout: Duration) -> ApiError {
    let (state, invocation) = (guard.state.clone(), guard.invocation);
    guard.ended();
    let why = match view(&state).complete(invocation, now_ms()) {
        Err(SchedulerError::InvocationFailed { overdue: true, .. }) => {
            return timeout_error(invocation, instance, timeout)
        }
        Err(SchedulerError::InvocationFailed { reason, .. }) => reason_text(reason),
        _ => "it stopped".to_string(),
    };
    bad_gateway(format!(
        "invocation {invocation} failed: its instance {instance} is gone ({why})"
    ))
}

fn reason_text(reason: StopReason) -> String {
    match reason {
        StopReason::Timeout => "killed: an invocation on it ran past the function's timeout".into(),
        StopReason::Retired => "retired".into(),
        StopReason::NodeLost => "its node stopped reporting".into(),
        StopReason::Exited => "its process exited".into(),
        StopReason::StartFailed => "it was not ready within the start timeout".into(),
        StopReason::Unwanted => "stopped by reconciliation".into(),
    }
}

/// Past the function's timeout: the instance is killed (if the background
/// loop has not done it already), and the caller learns so.
fn timed_out(guard: InFlight, instance: InstanceId, timeout: Duration) -> ApiError {
    let (state, invocation) = (guard.state.clone(), guard.invocation);
    guard.ended();
    let mut s = both(&state);
    if let Some(r) = s.retire(instance, StopReason::Timeout, now_ms()) {
        tracing::warn!(instance, invocation, function = %r.function, node = %r.node_id, failed_invocations = ?r.failed_invocations, "invocation ran past its timeout: killing its instance");
    }
    timeout_error(invocation, instance, timeout)
}

/// The caller's answer for an invocation that ran past its timeout.
fn timeout_error(invocation: InvocationId, instance: InstanceId, timeout: Duration) -> ApiError {
    ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        error: format!(
            "invocation {invocation} ran past the function's timeout of {} s: its instance {instance} was killed",
            timeout.as_secs()
        ),
        field: None,
    }
}

/// `POST /v1/invoke/{function}`: routes the body to an instance and
/// returns its answer (status, body, content type), with headers naming
/// the instance, the invocation, and whether it started cold.
pub(super) async fn post_invoke(
    State(state): State<Shared>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let (guard, instance, timeout, start_timeout, cold) = {
        let mut s = both(&state);
        let id = s.view.function_id(&function)?;
        let spec = s.view.spec(id);
        let timeout = Duration::from_secs(spec.timeout_s);
        let start_timeout = Duration::from_secs(spec.start_timeout_s);
        let routed = s.view.route(id, now)?;
        if let Some(p) = &routed.cold_start {
            s.order_start(p, now);
        }
        let guard = InFlight {
            state: state.clone(),
            invocation: routed.invocation_id,
            ended: false,
        };
        let cold = routed.cold_start.is_some();
        (guard, routed.instance_id, timeout, start_timeout, cold)
    };
    let invocation = guard.invocation;
    // A start that does not finish is stopped by the background loop at
    // its start timeout, which wakes this wait; the margin is for its tick.
    let start_deadline = Instant::now() + start_timeout + Duration::from_secs(5);
    let endpoint = match wait_ready(&state, instance, start_deadline).await {
        Waited::Ready(endpoint) => endpoint,
        Waited::Unmanaged => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                error: format!(
                    "function {function:?} was placed on a node without a loci node agent, which says nowhere where it serves: use /v1/route and call the instance yourself"
                ),
                field: None,
            });
        }
        Waited::Gone => return Err(failed(guard, instance, timeout)),
        Waited::TimedOut => {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: format!(
                    "invocation {invocation}: instance {instance} was not ready within the function's start timeout of {} s",
                    start_timeout.as_secs()
                ),
                field: None,
            })
        }
    };
    // The function's timeout counts from here: waiting for a start is not
    // running.
    let deadline = Instant::now() + timeout;
    let answer = tokio::select! {
        answer = tokio::time::timeout_at(deadline, forward(&endpoint, &headers, body)) => answer,
        () = gone(&state, instance) => return Err(failed(guard, instance, timeout)),
    };
    let answer = match answer {
        Err(_) => return Err(timed_out(guard, instance, timeout)),
        Ok(Err(error)) => {
            return Err(bad_gateway(format!(
                "invocation {invocation}: instance {instance} at {endpoint} did not answer: {error}"
            )));
        }
        Ok(Ok(answer)) => answer,
    };
    // An answer that arrived is passed on even if the instance was killed
    // for another invocation's timeout as it came; the guard ends it.
    drop(guard);
    let mut response = (answer.status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = answer.content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert("x-loci-instance", HeaderValue::from(instance));
    headers.insert("x-loci-invocation", HeaderValue::from(invocation));
    headers.insert(
        "x-loci-cold-start",
        HeaderValue::from_static(if cold { "true" } else { "false" }),
    );
    Ok(response)
}
