//! Kubernetes scheduler extender (v1 JSON types): `filter` drops nodes that
//! lack the pod's requested capacity, `prioritize` scores nodes 0..=10 by the
//! same formula `place` uses, so kube-scheduler favours nodes where loci's
//! cache holds the pod's images. Nodes loci has no report for pass the filter
//! and score 0: loci has no opinion about them.

use super::cluster::{ClusterView, NodeFit};
use super::error::FieldError;
use super::report::Resources;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Highest score an extender may give (kube's `MaxExtenderPriority`).
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// kube-scheduler's request to an extender.
#[derive(Debug, Clone, Deserialize)]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    pub pod: Pod,
    /// Candidate nodes, when the extender is not `nodeCacheCapable`.
    #[serde(default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names, when the extender is `nodeCacheCapable`.
    #[serde(default)]
    pub nodenames: Option<Vec<String>>,
}

/// The parts of a `v1.Pod` the extender reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    /// The pod's spec.
    pub spec: PodSpec,
}

/// The parts of a `v1.PodSpec` the extender reads.
#[derive(Debug, Clone, Deserialize)]
pub struct PodSpec {
    /// The pod's containers.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// The parts of a `v1.Container` the extender reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Container {
    /// Image reference.
    #[serde(default)]
    pub image: String,
    /// Requests and limits.
    #[serde(default)]
    pub resources: ContainerResources,
}

/// A container's resource requests and limits, as Kubernetes quantities.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerResources {
    /// Requested resources (what scheduling reserves).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Limits, used when a resource has no request (Kubernetes does the same).
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// A `v1.NodeList`, kept as raw JSON so filtered nodes are echoed unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    /// The nodes.
    #[serde(default)]
    pub items: Vec<Value>,
    /// apiVersion, kind, metadata of the list, echoed back.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// The extender's answer to `filter`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtenderFilterResult {
    /// Nodes that passed, when the request carried `nodes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeList>,
    /// Names of nodes that passed, when the request carried `nodenames`.
    #[serde(rename = "nodenames", skip_serializing_if = "Option::is_none")]
    pub node_names: Option<Vec<String>>,
    /// Nodes that failed, with the reason.
    pub failed_nodes: BTreeMap<String, String>,
    /// Nodes that failed in a way preemption cannot fix (none here: a node
    /// short of capacity may fit after preemption).
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    /// Set when the extender could not decide.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One entry of the `prioritize` answer (`HostPriorityList`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPriority {
    /// Node name.
    pub host: String,
    /// Score in 0..=[`MAX_EXTENDER_PRIORITY`].
    pub score: i64,
}

/// A pod reduced to what placement needs.
struct PodNeeds {
    images: Vec<String>,
    resources: Resources,
}

impl ExtenderArgs {
    fn candidate_names(&self) -> Result<Vec<String>, FieldError> {
        if let Some(names) = &self.nodenames {
            return Ok(names.clone());
        }
        let Some(list) = &self.nodes else {
            return Err(FieldError::new(
                "nodenames",
                "neither nodes nor nodenames given",
            ));
        };
        list.items
            .iter()
            .enumerate()
            .map(|(i, node)| {
                node_name(node).map(str::to_string).ok_or_else(|| {
                    FieldError::new(format!("nodes.items[{i}].metadata.name"), "missing")
                })
            })
            .collect()
    }

    fn pod_needs(&self) -> Result<PodNeeds, FieldError> {
        let mut resources = Resources::default();
        let mut images = Vec::new();
        for (i, c) in self.pod.spec.containers.iter().enumerate() {
            let path = format!("pod.spec.containers[{i}].resources");
            let quantity = |name: &str| match c.resources.requests.get(name) {
                Some(q) => Some((format!("{path}.requests.{name}"), q)),
                None => c
                    .resources
                    .limits
                    .get(name)
                    .map(|q| (format!("{path}.limits.{name}"), q)),
            };
            if let Some((field, q)) = quantity("cpu") {
                resources.cpu_millis +=
                    parse_cpu_millis(q).map_err(|m| FieldError::new(field, m))?;
            }
            if let Some((field, q)) = quantity("memory") {
                resources.memory_mib +=
                    parse_memory_mib(q).map_err(|m| FieldError::new(field, m))?;
            }
            if !c.image.is_empty() {
                images.push(c.image.clone());
            }
        }
        Ok(PodNeeds { images, resources })
    }
}

fn node_name(node: &Value) -> Option<&str> {
    node.get("metadata")?.get("name")?.as_str()
}

/// `filter`: keeps nodes that have the pod's requests free (or that loci
/// knows nothing about).
pub fn filter(view: &ClusterView, args: &ExtenderArgs) -> Result<ExtenderFilterResult, FieldError> {
    let names = args.candidate_names()?;
    let needs = args.pod_needs()?;
    let fits = view.fit_nodes(&names, &needs.images, needs.resources);
    let mut result = ExtenderFilterResult::default();
    let mut passed = Vec::new();
    for (name, fit) in names.iter().zip(&fits) {
        match fit {
            NodeFit::Unfit(free) => {
                result.failed_nodes.insert(
                    name.clone(),
                    format!(
                        "loci: needs {} mCPU / {} MiB, {} mCPU / {} MiB free",
                        needs.resources.cpu_millis,
                        needs.resources.memory_mib,
                        free.cpu_millis,
                        free.memory_mib
                    ),
                );
            }
            NodeFit::Unknown | NodeFit::Fits(_) => passed.push(name.clone()),
        }
    }
    if let Some(list) = &args.nodes {
        let items = list
            .items
            .iter()
            .filter(|n| node_name(n).is_some_and(|name| passed.iter().any(|p| p == name)))
            .cloned()
            .collect();
        result.nodes = Some(NodeList {
            items,
            rest: list.rest.clone(),
        });
    } else {
        result.node_names = Some(passed);
    }
    Ok(result)
}

/// `prioritize`: scores every candidate node 0..=10.
pub fn prioritize(
    view: &ClusterView,
    args: &ExtenderArgs,
) -> Result<Vec<HostPriority>, FieldError> {
    let names = args.candidate_names()?;
    let needs = args.pod_needs()?;
    let fits = view.fit_nodes(&names, &needs.images, needs.resources);
    Ok(names
        .into_iter()
        .zip(fits)
        .map(|(host, fit)| HostPriority {
            host,
            score: match fit {
                NodeFit::Fits(score) => score.clamp(0, MAX_EXTENDER_PRIORITY),
                NodeFit::Unknown | NodeFit::Unfit(_) => 0,
            },
        })
        .collect())
}

/// Splits a Kubernetes quantity into its number and suffix multiplier.
fn parse_quantity(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{q:?} is not a Kubernetes quantity"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return Err(format!("{q:?} has an unknown suffix {suffix:?}")),
    };
    let value = number * multiplier;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{q:?} must be a finite non-negative quantity"));
    }
    Ok(value)
}

/// CPU quantity (`500m`, `2`, `0.5`) in millicores, rounded up.
fn parse_cpu_millis(q: &str) -> Result<u32, String> {
    Ok((parse_quantity(q)? * 1000.0)
        .ceil()
        .min(f64::from(u32::MAX)) as u32)
}

/// Memory quantity (`512Mi`, `1G`, `1048576`) in MiB, rounded up.
fn parse_memory_mib(q: &str) -> Result<u32, String> {
    Ok((parse_quantity(q)? / (1024.0 * 1024.0))
        .ceil()
        .min(f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.25"), Ok(250));
        assert_eq!(parse_memory_mib("512Mi"), Ok(512));
        assert_eq!(parse_memory_mib("1Gi"), Ok(1024));
        assert_eq!(parse_memory_mib("1G"), Ok(954));
        assert!(parse_memory_mib("12 parsecs").is_err());
        assert!(parse_cpu_millis("-1").is_err());
    }

    #[test]
    fn bad_requests_name_the_container_field() {
        let args: ExtenderArgs = serde_json::from_value(serde_json::json!({
            "pod": {"spec": {"containers": [
                {"image": "a", "resources": {"requests": {"cpu": "100m"}}},
                {"image": "b", "resources": {"limits": {"memory": "lots"}}}
            ]}},
            "nodenames": ["n1"]
        }))
        .unwrap();
        let err = args.pod_needs().err().unwrap();
        assert_eq!(err.field, "pod.spec.containers[1].resources.limits.memory");
    }
}
