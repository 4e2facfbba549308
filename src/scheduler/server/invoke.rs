//! `POST /v1/invoke/{function}`: an invocation routed for real. The
//! scheduler picks the instance (the ready one with the fewest invocations
//! in flight, or a new one when all are full), waits for it to be ready if
//! it is starting, sends the request body to its endpoint, and enforces the
//! function's timeout: past it the caller gets a 504, the instance is
//! killed (a reservation policy replaces it), and the other invocations on
//! it get a 502 naming why, at once, not when their callers give up.

use super::{lock, now_ms, ApiError, Shared};
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
        let bell = {
            let mut s = lock(state);
            match s.lifecycle.bell(instance) {
                Some(bell) => bell,
                None if s.view.instance_home(instance).is_some() => return Waited::Unmanaged,
                None => return Waited::Gone,
            }
        };
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        match lock(state).lifecycle.stage(instance) {
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
        let Some(bell) = lock(state).lifecycle.bell(instance) else {
            return;
        };
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        if !matches!(lock(state).lifecycle.stage(instance), Stage::Ready(_)) {
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
/// says why, as the view remembers it.
fn failed(state: &Shared, invocation: InvocationId, instance: InstanceId) -> ApiError {
    let why = match lock(state).view.complete(invocation, now_ms()) {
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
fn timed_out(
    state: &Shared,
    invocation: InvocationId,
    instance: InstanceId,
    timeout: Duration,
) -> ApiError {
    let mut s = lock(state);
    if let Some(r) = s.retire(instance, StopReason::Timeout, now_ms()) {
        tracing::warn!(instance, invocation, function = %r.function, node = %r.node_id, failed_invocations = ?r.failed_invocations, "invocation ran past its timeout: killing its instance");
    }
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
    let (invocation, instance, timeout, cold) = {
        let mut s = lock(&state);
        let id = s.view.function_id(&function)?;
        let timeout = Duration::from_secs(s.view.spec(id).timeout_s);
        let routed = s.view.route(id, now)?;
        if let Some(p) = &routed.cold_start {
            s.order_start(p, now);
        }
        (
            routed.invocation_id,
            routed.instance_id,
            timeout,
            routed.cold_start.is_some(),
        )
    };
    let deadline = Instant::now() + timeout;
    let endpoint = match wait_ready(&state, instance, deadline).await {
        Waited::Ready(endpoint) => endpoint,
        Waited::Unmanaged => {
            let _ = lock(&state).view.complete(invocation, now_ms());
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                error: format!(
                    "function {function:?} was placed on a node without a loci node agent, which says nowhere where it serves: use /v1/route and call the instance yourself"
                ),
                field: None,
            });
        }
        Waited::Gone => return Err(failed(&state, invocation, instance)),
        Waited::TimedOut => return Err(timed_out(&state, invocation, instance, timeout)),
    };
    let answer = tokio::select! {
        answer = tokio::time::timeout_at(deadline, forward(&endpoint, &headers, body)) => answer,
        () = gone(&state, instance) => return Err(failed(&state, invocation, instance)),
    };
    let answer = match answer {
        Err(_) => return Err(timed_out(&state, invocation, instance, timeout)),
        Ok(Err(error)) => {
            let _ = lock(&state).view.complete(invocation, now_ms());
            return Err(bad_gateway(format!(
                "invocation {invocation}: instance {instance} at {endpoint} did not answer: {error}"
            )));
        }
        Ok(Ok(answer)) => answer,
    };
    // An answer that arrived is passed on even if the instance was killed
    // for another invocation's timeout as it came.
    let _ = lock(&state).view.complete(invocation, now_ms());
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
