//! The node daemon's report to the scheduler: what this node can run, what
//! it runs, and how warm its chunk cache is for each image it serves.
//!
//! The cache is shared by every image on the node, so an image's warm
//! fraction is measured against the cache itself (which of the image's
//! chunks it holds), not against what this process fetched.

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::scheduler::access::read_tokens;
use crate::scheduler::report::{report_to, ImageCache, NodeReport, Resources};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// An image this node serves, as the scheduler knows it.
#[derive(Clone, Debug)]
pub struct ServedImage {
    /// The reference functions name the image by.
    pub image: String,
    /// Every chunk of the image (all layers).
    pub chunks: Vec<Digest>,
    /// The chunks its recorded start reads, when a trace exists; without
    /// one, every chunk counts as needed at start.
    pub trace: Option<Vec<Digest>>,
}

fn fraction_cached(cache: &ChunkCache, chunks: &[Digest]) -> f64 {
    if chunks.is_empty() {
        return 1.0;
    }
    let cached = chunks.iter().filter(|d| cache.contains(d)).count();
    cached as f64 / chunks.len() as f64
}

/// Samples /proc/stat so CPU use is measured over the interval between two
/// reports (the load average counts waiting tasks, not CPU in use).
#[derive(Default)]
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Busy share of all CPUs since the previous call (0 on the first).
    fn busy_share(&mut self) -> f64 {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let share = match self.last {
            Some((last_total, last_idle)) if total > last_total => {
                let busy = (total - last_total).saturating_sub(idle.saturating_sub(last_idle));
                busy as f64 / (total - last_total) as f64
            }
            _ => 0.0,
        };
        self.last = Some((total, idle));
        share
    }
}

/// Builds the report for `images` as the cache holds them now. At most the
/// scheduler's bound of images is described.
pub fn build_report(
    node_id: &str,
    cache: &ChunkCache,
    images: &[ServedImage],
    cpu: &mut CpuSampler,
) -> NodeReport {
    let (capacity, used) = host_resources(cpu);
    NodeReport {
        node_id: node_id.to_string(),
        capacity,
        used,
        instances: Vec::new(),
        images: images
            .iter()
            .take(crate::scheduler::report::MAX_REPORTED_IMAGES)
            .map(|img| {
                let chunks_cached = fraction_cached(cache, &img.chunks);
                ImageCache {
                    image: img.image.clone(),
                    chunks_cached,
                    trace_cached: img
                        .trace
                        .as_ref()
                        .map_or(chunks_cached, |t| fraction_cached(cache, t)),
                }
            })
            .collect(),
        running: Vec::new(),
        starts_instances: false,
    }
}

/// Capacity (all CPUs and memory) and use (CPU busy since the last report,
/// memory not available), read from /proc.
pub fn host_resources(cpu: &mut CpuSampler) -> (Resources, Resources) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let busy = cpu.busy_share();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let total_mib = (field("MemTotal:") / 1024) as u32;
    let available_mib = (field("MemAvailable:") / 1024) as u32;
    let capacity = Resources {
        cpu_millis: cpus * 1000,
        memory_mib: total_mib,
    };
    let used = Resources {
        cpu_millis: (busy * f64::from(capacity.cpu_millis)) as u32,
        memory_mib: total_mib.saturating_sub(available_mib),
    };
    (capacity, used)
}

/// Where and how a node reports to the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerLink {
    /// The scheduler's URL.
    pub url: String,
    /// This node's id in reports.
    pub node_id: String,
    /// Time between reports.
    pub interval: Duration,
    /// File holding the bearer token reports carry (read for each report,
    /// so a rotated token is picked up).
    pub token_file: Option<std::path::PathBuf>,
}

/// The bearer token a node sends the scheduler: the first in its token
/// file, read at each call so a rotated token is picked up without a
/// restart. None without a file, or (with a warning) when it holds none.
pub fn scheduler_token(file: Option<&std::path::Path>) -> Option<String> {
    let path = file?;
    let first = read_tokens(path).and_then(|tokens| tokens.into_iter().next());
    if first.is_none() {
        tracing::warn!(file = %path.display(), "no scheduler token readable in the token file");
    }
    first
}

/// Sends a report every `interval`, and at once whenever `now` is notified
/// (on demand), until the task is dropped. Failures are logged and retried
/// at the next tick: the node keeps serving whatever the scheduler does.
pub async fn report_loop(
    link: SchedulerLink,
    cache: Arc<ChunkCache>,
    images: Vec<ServedImage>,
    now: Arc<Notify>,
) {
    let mut cpu = CpuSampler::default();
    let url = &link.url;
    loop {
        let report = build_report(&link.node_id, &cache, &images, &mut cpu);
        let token = scheduler_token(link.token_file.as_deref());
        match report_to(url, &report, token.as_deref()).await {
            Ok(_) => {
                tracing::debug!(scheduler = %url, images = report.images.len(), "reported")
            }
            Err(e) => tracing::warn!(scheduler = %url, error = %e, "report failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(link.interval) => {}
            _ = now.notified() => {}
        }
    }
}
