//! The node report: the public contract between a loci node daemon (the
//! node agent `loci node`, or `loci mount --scheduler` for one image) and
//! `loci scheduler`.
//!
//! A daemon sends a [`NodeReport`] to `POST {scheduler}/v1/reports`
//! periodically and whenever its cache or its instances change; [`report_to`]
//! does that. The answer is the node's [`NodeOrders`]: instances the
//! scheduler wants started there (placements, reservations) and stopped
//! (timeouts, retirements, instances it does not know). A node agent also
//! waits for its orders at `POST {scheduler}/v1/nodes/{node}/orders`, so an
//! order reaches it when it is given, not at the next report.
//! A report stays small whatever the cache holds: at most
//! [`MAX_REPORTED_IMAGES`] images and [`MAX_REPORTED_FUNCTIONS`] functions,
//! so a daemon with a larger cache reports its most recently used images.

use super::error::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

/// Most images one report may describe (the daemon sends its most recently
/// used ones); bounds the report to a few tens of KiB.
pub const MAX_REPORTED_IMAGES: usize = 512;
/// Most functions one report may list running instances for.
pub const MAX_REPORTED_FUNCTIONS: usize = 1024;
/// Longest node id, function or image name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 512;
/// Most instances one report may say the node runs.
pub const MAX_REPORTED_INSTANCES: usize = 4096;
/// Longest instance endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 256;

/// One node's state as its loci daemon sees it. Serialized as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Stable node name (the Kubernetes node name where there is one).
    pub node_id: String,
    /// What the node can give to instances.
    pub capacity: Resources,
    /// What is in use on the node now, by anything.
    pub used: Resources,
    /// Running instances per function.
    #[serde(default)]
    pub instances: Vec<FunctionInstances>,
    /// How much of each known image is in the node's chunk cache.
    #[serde(default)]
    pub images: Vec<ImageCache>,
    /// The instances a node agent runs, each by the id the scheduler gave
    /// it: how the scheduler learns that one is ready or has exited, and
    /// finds the ones it no longer wants (after a restart of either side).
    /// Empty for a daemon that runs no instances.
    #[serde(default)]
    pub running: Vec<RunningInstance>,
    /// This daemon starts the instances ordered to it and reports them in
    /// `running`: the scheduler waits for their readiness and sends them
    /// invocations. Otherwise the platform starts instances itself, and
    /// they count as ready when placed.
    #[serde(default)]
    pub starts_instances: bool,
}

/// One instance a node agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningInstance {
    /// The id from the instance's [`StartOrder`].
    pub instance_id: u64,
    /// The function it serves.
    pub function: String,
    /// Its readiness check passed: invocations may be sent to `endpoint`.
    pub ready: bool,
    /// Where it serves HTTP, `http://HOST:PORT`; required once ready.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// CPU and memory, the two resources placement checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl Resources {
    /// True when `need` fits into `self` on both resources.
    pub fn fits(&self, need: Resources) -> bool {
        need.cpu_millis <= self.cpu_millis && need.memory_mib <= self.memory_mib
    }
}

/// How many instances of one function a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInstances {
    /// Function name.
    pub function: String,
    /// Instances running on the node.
    pub count: u32,
}

/// Cache state of one image on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageCache {
    /// Image reference, as functions name it.
    pub image: String,
    /// Fraction (0..=1) of the image's chunks that are cached.
    pub chunks_cached: f64,
    /// Fraction (0..=1) of the image's start trace (the chunks read while
    /// the container starts) that is cached; what start latency depends on.
    pub trace_cached: f64,
}

impl NodeReport {
    /// Checks bounds and ranges, naming the first offending field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("node_id", &self.node_id)?;
        if self.capacity.cpu_millis == 0 {
            return Err(FieldError::new("capacity.cpu_millis", "must be positive"));
        }
        if self.capacity.memory_mib == 0 {
            return Err(FieldError::new("capacity.memory_mib", "must be positive"));
        }
        if self.used.cpu_millis > self.capacity.cpu_millis {
            return Err(FieldError::new(
                "used.cpu_millis",
                format!(
                    "{} exceeds capacity.cpu_millis {}",
                    self.used.cpu_millis, self.capacity.cpu_millis
                ),
            ));
        }
        if self.used.memory_mib > self.capacity.memory_mib {
            return Err(FieldError::new(
                "used.memory_mib",
                format!(
                    "{} exceeds capacity.memory_mib {}",
                    self.used.memory_mib, self.capacity.memory_mib
                ),
            ));
        }
        if self.instances.len() > MAX_REPORTED_FUNCTIONS {
            return Err(FieldError::new(
                "instances",
                format!(
                    "{} entries, at most {MAX_REPORTED_FUNCTIONS} allowed",
                    self.instances.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, entry) in self.instances.iter().enumerate() {
            check_name(&format!("instances[{i}].function"), &entry.function)?;
            if !seen.insert(entry.function.as_str()) {
                return Err(FieldError::new(
                    format!("instances[{i}].function"),
                    format!("{:?} is listed twice", entry.function),
                ));
            }
        }
        if self.images.len() > MAX_REPORTED_IMAGES {
            return Err(FieldError::new(
                "images",
                format!(
                    "{} entries, at most {MAX_REPORTED_IMAGES} allowed",
                    self.images.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, entry) in self.images.iter().enumerate() {
            check_name(&format!("images[{i}].image"), &entry.image)?;
            if !seen.insert(entry.image.as_str()) {
                return Err(FieldError::new(
                    format!("images[{i}].image"),
                    format!("{:?} is listed twice", entry.image),
                ));
            }
            check_fraction(&format!("images[{i}].chunks_cached"), entry.chunks_cached)?;
            check_fraction(&format!("images[{i}].trace_cached"), entry.trace_cached)?;
        }
        if self.running.len() > MAX_REPORTED_INSTANCES {
            return Err(FieldError::new(
                "running",
                format!(
                    "{} entries, at most {MAX_REPORTED_INSTANCES} allowed",
                    self.running.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, entry) in self.running.iter().enumerate() {
            check_name(&format!("running[{i}].function"), &entry.function)?;
            if !seen.insert(entry.instance_id) {
                return Err(FieldError::new(
                    format!("running[{i}].instance_id"),
                    format!("{} is listed twice", entry.instance_id),
                ));
            }
            match &entry.endpoint {
                Some(endpoint) => check_endpoint(&format!("running[{i}].endpoint"), endpoint)?,
                None if entry.ready => {
                    return Err(FieldError::new(
                        format!("running[{i}].endpoint"),
                        "a ready instance needs an endpoint",
                    ))
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Checks that an instance endpoint is `http://HOST[:PORT]` and nothing
/// more: the scheduler sends invocations there, so no credentials, path or
/// query ride along, and no other scheme.
pub fn check_endpoint(field: &str, endpoint: &str) -> Result<(), FieldError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "{} bytes long, at most {MAX_ENDPOINT_LEN} allowed",
                endpoint.len()
            ),
        ));
    }
    let bad = |why: &str| FieldError::new(field, format!("{endpoint:?}: {why}"));
    let url = reqwest::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(bad("must be http://HOST:PORT"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    // Checked on the text as well as on the parsed URL: the text is what
    // invocations are sent to, and parsing normalises (`/x/..` is `/`).
    let after_scheme = endpoint.get("http://".len()..).unwrap_or_default();
    if !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || after_scheme.contains(['@', '?', '#', '/', '\\'])
        || !endpoint.starts_with("http://")
    {
        return Err(bad("must be http://HOST[:PORT], nothing more"));
    }
    Ok(())
}

/// Checks that a name is non-empty and not longer than [`MAX_NAME_LEN`].
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{} bytes long, at most {MAX_NAME_LEN} allowed", name.len()),
        ));
    }
    Ok(())
}

fn check_fraction(field: &str, value: f64) -> Result<(), FieldError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(FieldError::new(
            field,
            format!("must be within 0..=1, got {value}"),
        ));
    }
    Ok(())
}

/// What the scheduler asks a node to do, returned for each report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeOrders {
    /// Instances to start (reserved by a policy).
    pub start: Vec<StartOrder>,
    /// Instances to stop.
    pub stop: Vec<StopOrder>,
}

/// Start one instance of a function on the reporting node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartOrder {
    /// Scheduler-assigned instance id; used in later orders and routes.
    pub instance_id: u64,
    /// Function the instance serves.
    pub function: String,
    /// Image to start it from.
    pub image: String,
    /// Resources reserved for it (the agent makes them its limits).
    pub resources: Resources,
    /// The command to run instead of the image's own; empty for the
    /// image's Entrypoint and Cmd. It serves HTTP on `$PORT`.
    #[serde(default)]
    pub command: Vec<String>,
    /// How long it may take to become ready before it counts as failed.
    #[serde(default = "default_start_timeout_s")]
    pub start_timeout_s: u64,
}

/// The start timeout a function without one gets.
pub fn default_start_timeout_s() -> u64 {
    120
}

/// Stop one instance on the reporting node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopOrder {
    /// The instance to stop.
    pub instance_id: u64,
    /// Function it served.
    pub function: String,
    /// Why it must go.
    pub reason: StopReason,
}

/// Why the scheduler stops an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An invocation on it ran past the function's timeout: kill it.
    Timeout,
    /// It sat idle past its keep-alive, or its reservation was reduced.
    Retired,
    /// Its node stopped reporting and was dropped (no order is sent: the
    /// reason is for the invocations that failed with it).
    NodeLost,
    /// Its process ended on the node (crashed, or exited by itself).
    Exited,
    /// It did not pass its readiness check within its start timeout.
    StartFailed,
    /// Its node runs it but the scheduler does not want it (a node or the
    /// scheduler came back after a restart): stop it.
    Unwanted,
}

/// Why [`report_to`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportSendError {
    /// The report would be rejected; it was not sent.
    #[error("invalid report: {0}")]
    Invalid(#[from] FieldError),
    /// The scheduler could not be reached or answered garbage.
    #[error("sending report to {url}: {source}")]
    Http {
        /// Where the report went.
        url: String,
        /// The transport or decoding error.
        source: reqwest::Error,
    },
    /// The scheduler refused the report.
    #[error("scheduler at {url} refused the report with {status}: {body}")]
    Refused {
        /// Where the report went.
        url: String,
        /// HTTP status of the answer.
        status: u16,
        /// Error body of the answer.
        body: String,
    },
}

/// Sends `report` to the scheduler at `scheduler_url` (e.g.
/// `http://sched:7070`) and returns the orders for this node. Validates
/// first, so a daemon learns about a bad report without a round trip.
pub async fn report_to(
    scheduler_url: &str,
    report: &NodeReport,
    token: Option<&str>,
) -> Result<NodeOrders, ReportSendError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    report.validate()?;
    let url = format!("{}/v1/reports", scheduler_url.trim_end_matches('/'));
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client with only a timeout set always builds")
    });
    let http = |source| ReportSendError::Http {
        url: url.clone(),
        source,
    };
    let mut request = client.post(&url).json(report);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(http)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(ReportSendError::Refused {
            url,
            status: status.as_u16(),
            body,
        });
    }
    response.json().await.map_err(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> NodeReport {
        NodeReport {
            node_id: "n1".into(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mib: 8192,
            },
            used: Resources {
                cpu_millis: 1000,
                memory_mib: 1024,
            },
            instances: vec![FunctionInstances {
                function: "f".into(),
                count: 2,
            }],
            images: vec![ImageCache {
                image: "img".into(),
                chunks_cached: 0.5,
                trace_cached: 1.0,
            }],
            running: vec![RunningInstance {
                instance_id: 7,
                function: "f".into(),
                ready: true,
                endpoint: Some("http://127.0.0.1:8080".into()),
            }],
            starts_instances: true,
        }
    }

    #[test]
    fn a_sane_report_validates() {
        assert_eq!(report().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_fraction_is_named() {
        let mut r = report();
        r.images[0].trace_cached = 1.5;
        let err = r.validate().unwrap_err();
        assert_eq!(err.field, "images[0].trace_cached");
    }

    #[test]
    fn use_beyond_capacity_is_named() {
        let mut r = report();
        r.used.memory_mib = 9000;
        assert_eq!(r.validate().unwrap_err().field, "used.memory_mib");
    }

    #[test]
    fn oversized_reports_are_refused() {
        let mut r = report();
        r.images = (0..=MAX_REPORTED_IMAGES)
            .map(|i| ImageCache {
                image: format!("i{i}"),
                chunks_cached: 0.0,
                trace_cached: 0.0,
            })
            .collect();
        assert_eq!(r.validate().unwrap_err().field, "images");
    }

    #[test]
    fn duplicate_images_are_refused() {
        let mut r = report();
        r.images.push(r.images[0].clone());
        assert_eq!(r.validate().unwrap_err().field, "images[1].image");
    }

    #[test]
    fn endpoints_must_be_plain_host_and_port() {
        let cases = [
            ("http://10.0.0.2:8080", true),
            ("http://[::1]:80", true),
            ("https://10.0.0.2:8080", false),
            ("http://10.0.0.2", true),
            ("http://:80", false),
            ("http://user:pw@10.0.0.2:80", false),
            ("http://10.0.0.2:80/admin", false),
            ("http://10.0.0.2:80/?q", false),
            ("file:///etc/passwd", false),
            ("http://10.0.0.2:80/x/..", false),
            ("http://10.0.0.2:80/", false),
            ("HTTP://10.0.0.2:80", false),
            ("http://10.0.0.2:80\\x", false),
            ("not a url", false),
        ];
        for (endpoint, ok) in cases {
            let mut r = report();
            r.running[0].endpoint = Some(endpoint.into());
            let checked = r.validate();
            assert_eq!(checked.is_ok(), ok, "{endpoint}: {checked:?}");
            if !ok {
                assert_eq!(checked.unwrap_err().field, "running[0].endpoint");
            }
        }
        let mut r = report();
        r.running[0].endpoint = Some(format!("http://{}.example:80", "a".repeat(300)));
        assert_eq!(r.validate().unwrap_err().field, "running[0].endpoint");
    }

    #[test]
    fn running_instances_are_checked() {
        let mut r = report();
        r.running[0].endpoint = None;
        assert_eq!(r.validate().unwrap_err().field, "running[0].endpoint");
        r.running[0].ready = false;
        assert_eq!(
            r.validate(),
            Ok(()),
            "a starting instance has no endpoint yet"
        );
        r.running.push(r.running[0].clone());
        assert_eq!(r.validate().unwrap_err().field, "running[1].instance_id");
        r.running = (0..=MAX_REPORTED_INSTANCES as u64)
            .map(|i| RunningInstance {
                instance_id: i,
                function: "f".into(),
                ready: false,
                endpoint: None,
            })
            .collect();
        assert_eq!(r.validate().unwrap_err().field, "running");
    }

    #[tokio::test]
    async fn report_to_validates_before_sending() {
        let mut r = report();
        r.node_id.clear();
        // Port 9 (discard) on loopback: never contacted since validation fails first.
        let err = report_to("http://127.0.0.1:9", &r, None).await.unwrap_err();
        assert!(
            matches!(err, ReportSendError::Invalid(ref e) if e.field == "node_id"),
            "{err}"
        );
    }
}
