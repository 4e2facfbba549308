//! Prometheus metrics of the snapshotter: snapshot operations and errors,
//! active lazy mounts, and, read from the fetchers and the chunk cache at
//! scrape time, bytes fetched per image and layer, cache hits per tier and
//! the fetch latency histogram.

use crate::cache::ChunkCache;
use crate::fetch::Fetcher;
use crate::format::Chunk;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

/// The registration a [`Metrics::layer_mounted`] took the place of, to
/// put back if the mount fails.
pub struct Replaced(Option<Arc<MountedLayer>>);

/// A mounted layer as the metrics see it.
struct MountedLayer {
    fetcher: Arc<Fetcher>,
    /// Its chunk table (TOC order).
    chunks: Arc<[Chunk]>,
    /// The indices of the chunks its image's start trace reads, once the
    /// trace has been found.
    traced: OnceLock<Vec<u32>>,
}

/// Each mounted layer, by image and layer digest.
type LayerFetchers = Arc<Mutex<BTreeMap<(String, String), Arc<MountedLayer>>>>;

/// Every metric the daemon serves.
pub struct Metrics {
    registry: Registry,
    ops: IntCounterVec,
    errors: IntCounterVec,
    mounts: IntGauge,
    refused: IntCounter,
    layers: LayerFetchers,
}

impl Metrics {
    /// Metrics over `cache`, with nothing counted yet.
    pub fn new(cache: Arc<ChunkCache>) -> Metrics {
        let registry = Registry::new();
        let ops = IntCounterVec::new(
            Opts::new(
                "loci_snapshot_operations_total",
                "Snapshot API calls, by operation.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "loci_snapshot_errors_total",
                "Snapshot API calls that returned an error, by operation and gRPC code.",
            ),
            &["op", "code"],
        )
        .expect("valid metric");
        let mounts = IntGauge::new(
            "loci_lazy_mounts_active",
            "Lazily served layers mounted now.",
        )
        .expect("valid metric");
        let refused = IntCounter::new(
            "loci_layers_refused_total",
            "Layers taken out of service because their completed content contradicts their TOC or diff_id.",
        )
        .expect("valid metric");
        let layers = Arc::new(Mutex::new(BTreeMap::new()));
        let fetch = FetchCollector::new(cache, layers.clone());
        for c in [
            Box::new(ops.clone()) as Box<dyn Collector>,
            Box::new(errors.clone()),
            Box::new(mounts.clone()),
            Box::new(refused.clone()),
            Box::new(fetch),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            ops,
            errors,
            mounts,
            refused,
            layers,
        }
    }

    /// A layer's completion found its content is not what its image
    /// claims; the layer is out of service.
    pub fn layer_refused(&self) {
        self.refused.inc();
    }

    /// Counts one call of `op`, failed with `code` if it failed.
    pub fn operation(&self, op: &str, code: Option<tonic::Code>) {
        self.ops.with_label_values(&[op]).inc();
        if let Some(code) = code {
            self.errors
                .with_label_values(&[op, &format!("{code:?}")])
                .inc();
        }
    }

    /// A layer was mounted; its fetcher, and how much of its chunk table
    /// the cache holds, are reported until it is unmounted.
    pub fn layer_mounted(
        &self,
        image: &str,
        layer: &str,
        fetcher: Arc<Fetcher>,
        chunks: Arc<[Chunk]>,
    ) -> Replaced {
        self.mounts.inc();
        let mounted = MountedLayer {
            fetcher,
            chunks,
            traced: OnceLock::new(),
        };
        Replaced(
            self.layers
                .lock()
                .expect("metrics lock")
                .insert((image.to_string(), layer.to_string()), Arc::new(mounted)),
        )
    }

    /// A layer [`layer_mounted`](Self::layer_mounted) registered did not
    /// mount after all: what it replaced (the same layer mounted for
    /// another snapshot) is reported again.
    pub fn layer_mount_failed(&self, image: &str, layer: &str, replaced: Replaced) {
        self.mounts.dec();
        let key = (image.to_string(), layer.to_string());
        let mut layers = self.layers.lock().expect("metrics lock");
        match replaced.0 {
            Some(earlier) => {
                layers.insert(key, earlier);
            }
            None => {
                layers.remove(&key);
            }
        }
    }

    /// The image's start trace reads these chunks (indices into the
    /// layer's chunk table) of a mounted layer: the share of them cached is
    /// reported from now on.
    pub fn layer_traced(&self, image: &str, layer: &str, chunks: Vec<u32>) {
        let layers = self.layers.lock().expect("metrics lock");
        if let Some(mounted) = layers.get(&(image.to_string(), layer.to_string())) {
            let _ = mounted.traced.set(chunks);
        }
    }

    /// A layer was unmounted.
    pub fn layer_unmounted(&self, image: &str, layer: &str) {
        self.mounts.dec();
        self.layers
            .lock()
            .expect("metrics lock")
            .remove(&(image.to_string(), layer.to_string()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

/// Reads fetch and cache statistics when scraped.
struct FetchCollector {
    cache: Arc<ChunkCache>,
    layers: LayerFetchers,
    descs: Vec<Desc>,
}

const LAYER_BYTES: &str = "loci_layer_fetched_bytes_total";
const LAYER_REQUESTS: &str = "loci_layer_fetch_requests_total";
const LAYER_COMPLETION: &str = "loci_layer_completion_bytes_total";
const TRACE_COVERED: &str = "loci_layer_demand_chunks_total";
const CACHE_HITS: &str = "loci_cache_hits_total";
const CACHE_MISSES: &str = "loci_cache_misses_total";
const FETCH_LATENCY: &str = "loci_fetch_latency_seconds";
const DISK_USED: &str = "loci_disk_used_bytes";
const DISK_BOUND: &str = "loci_disk_bound_bytes";
const LAYERS_EVICTED: &str = "loci_completed_layers_evicted_total";
/// The gauge the node agent reads (`agent::warmth`).
pub const IMAGE_CACHED: &str = "loci_image_cached_ratio";

impl FetchCollector {
    fn new(cache: Arc<ChunkCache>, layers: LayerFetchers) -> FetchCollector {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .expect("valid metric")
        };
        FetchCollector {
            cache,
            layers,
            descs: vec![
                desc(LAYER_BYTES, "Bytes fetched from the registry, per image and layer.", &["image", "layer"]),
                desc(LAYER_REQUESTS, "Range requests sent to the registry, per image and layer.", &["image", "layer"]),
                desc(LAYER_COMPLETION, "Bytes fetched by background completion, per image and layer.", &["image", "layer"]),
                desc(TRACE_COVERED, "Chunks on-demand reads fetched while a start trace was followed, per image and layer, by whether the trace held them (traced=\"false\" in numbers says the trace covers little of the start).", &["image", "layer", "traced"]),
                desc(CACHE_HITS, "Chunk reads served by the cache, per tier.", &["tier"]),
                desc(CACHE_MISSES, "Chunk reads the cache could not serve.", &[]),
                desc(FETCH_LATENCY, "Latency of chunk fetches on a cache miss (the sum counts registry request time).", &[]),
                desc(DISK_USED, "Bytes of the disk budget in use, by what holds them: cached chunks, or completed layers (blobs and written-out files).", &["kind"]),
                desc(DISK_BOUND, "The disk budget chunks and completed layers share ([cache] disk_bytes).", &[]),
                desc(LAYERS_EVICTED, "Completed layers evicted for room on disk (their reads went back to the lazy path).", &[]),
                desc(IMAGE_CACHED, "Share of an image's chunks (of=\"chunks\") and of the chunks its start trace reads (of=\"trace\", once the trace is known) in the chunk cache (or kept as fetched, not yet decoded), over its mounted layers: what the node agent reports to the scheduler.", &["image", "of"]),
            ],
        }
    }
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// A sample with these labels and no value yet.
fn labelled(labels: &[(&str, &str)]) -> proto::Metric {
    proto::Metric::from_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = proto::LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    )
}

fn counter(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = labelled(labels);
    let mut c = proto::Counter::default();
    c.set_value(value);
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = labelled(labels);
    let mut g = proto::Gauge::default();
    g.set_value(value);
    m.set_gauge(g);
    m
}

impl Collector for FetchCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let layers = self.layers.lock().expect("metrics lock").clone();
        let mut bytes = Vec::new();
        let mut requests = Vec::new();
        let mut completion = Vec::new();
        let mut demand = Vec::new();
        let mut latency_sum_us = 0u64;
        let mut warmth: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        for ((image, layer), mounted) in &layers {
            let w = warmth.entry(image.as_str()).or_default();
            // A kept frame (a neighbour fetched along, not yet decoded) is
            // read without the registry too: the layer's fetcher counts it.
            let cached = |digest| u64::from(mounted.fetcher.has(digest));
            for chunk in mounted.chunks.iter() {
                w[0] += cached(&chunk.digest);
                w[1] += 1;
            }
            for &i in mounted.traced.get().map(Vec::as_slice).unwrap_or_default() {
                if let Some(chunk) = mounted.chunks.get(i as usize) {
                    w[2] += cached(&chunk.digest);
                    w[3] += 1;
                }
            }
            let fetcher = &mounted.fetcher;
            let s = fetcher.stats.snapshot();
            let labels = [("image", image.as_str()), ("layer", layer.as_str())];
            bytes.push(counter(&labels, s.bytes_fetched as f64));
            requests.push(counter(&labels, s.requests as f64));
            completion.push(counter(&labels, s.completion_bytes as f64));
            for (traced, count) in [
                ("true", s.traced_demand_chunks),
                ("false", s.untraced_demand_chunks),
            ] {
                let labels = [
                    ("image", image.as_str()),
                    ("layer", layer.as_str()),
                    ("traced", traced),
                ];
                demand.push(counter(&labels, count as f64));
            }
            latency_sum_us += fetcher.stats.latency_us_sum.load(Ordering::Relaxed);
        }
        let cache = self.cache.stats();
        let mut histogram = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::new();
        for b in &cache.fetch_latency.buckets {
            cumulative += b.count;
            if let Some(upper) = b.upper {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(upper.as_secs_f64());
                bucket.set_cumulative_count(cumulative);
                buckets.push(bucket);
            }
        }
        histogram.set_bucket(buckets);
        histogram.set_sample_count(cumulative);
        histogram.set_sample_sum(latency_sum_us as f64 / 1e6);
        let mut latency = proto::Metric::default();
        latency.set_histogram(histogram);
        let help = |name: &str| {
            self.descs
                .iter()
                .find(|d| d.fq_name == name)
                .map(|d| d.help.clone())
                .unwrap_or_default()
        };
        vec![
            family(LAYER_BYTES, &help(LAYER_BYTES), MetricType::COUNTER, bytes),
            family(
                LAYER_REQUESTS,
                &help(LAYER_REQUESTS),
                MetricType::COUNTER,
                requests,
            ),
            family(
                LAYER_COMPLETION,
                &help(LAYER_COMPLETION),
                MetricType::COUNTER,
                completion,
            ),
            family(
                TRACE_COVERED,
                &help(TRACE_COVERED),
                MetricType::COUNTER,
                demand,
            ),
            family(
                CACHE_HITS,
                &help(CACHE_HITS),
                MetricType::COUNTER,
                vec![
                    counter(&[("tier", "memory")], cache.memory_hits as f64),
                    counter(&[("tier", "disk")], cache.disk_hits as f64),
                ],
            ),
            family(
                CACHE_MISSES,
                &help(CACHE_MISSES),
                MetricType::COUNTER,
                vec![counter(&[], cache.misses as f64)],
            ),
            family(
                FETCH_LATENCY,
                &help(FETCH_LATENCY),
                MetricType::HISTOGRAM,
                vec![latency],
            ),
            family(
                DISK_USED,
                &help(DISK_USED),
                MetricType::GAUGE,
                vec![
                    gauge(&[("kind", "chunks")], cache.disk_bytes as f64),
                    gauge(&[("kind", "layers")], cache.layers_bytes as f64),
                ],
            ),
            family(
                DISK_BOUND,
                &help(DISK_BOUND),
                MetricType::GAUGE,
                vec![gauge(&[], cache.disk_bound as f64)],
            ),
            family(
                LAYERS_EVICTED,
                &help(LAYERS_EVICTED),
                MetricType::COUNTER,
                vec![counter(&[], cache.layers_evicted as f64)],
            ),
            family(
                IMAGE_CACHED,
                &help(IMAGE_CACHED),
                MetricType::GAUGE,
                warmth
                    .iter()
                    .flat_map(|(image, [cached, total, t_cached, t_total])| {
                        let ratio =
                            |a: &u64, b: &u64| if *b == 0 { 1.0 } else { *a as f64 / *b as f64 };
                        let mut samples = vec![gauge(
                            &[("image", image), ("of", "chunks")],
                            ratio(cached, total),
                        )];
                        if *t_total > 0 {
                            samples.push(gauge(
                                &[("image", image), ("of", "trace")],
                                ratio(t_cached, t_total),
                            ));
                        }
                        samples
                    })
                    .collect(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use crate::digest::Digest;
    use bytes::Bytes;

    fn gauge_value(text: &str, image: &str, of: &str) -> f64 {
        let prefix = format!("{IMAGE_CACHED}{{image=\"{image}\",of=\"{of}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .parse()
            .unwrap()
    }

    fn cache_in(dir: &std::path::Path) -> Arc<ChunkCache> {
        ChunkCache::open(&CacheConfig {
            dir: dir.join("cache"),
            memory_bytes: 1 << 20,
            disk_bytes: 1 << 24,
            disk_min_free_bytes: 0,
            ..CacheConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_cached_ratio_counts_cached_chunks_and_kept_frames_but_not_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let data: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let chunks: Arc<[Chunk]> = data
            .iter()
            .enumerate()
            .map(|(i, d)| Chunk {
                blob_offset: i as u64 * 100,
                compressed_len: 100,
                len: 100,
                digest: Digest::of(d),
            })
            .collect();
        // Chunk 0 cached, chunk 1 kept as a frame, chunks 2 and 3 missing.
        cache.insert_verified(&chunks[0].digest, data[0].clone());
        cache.keep_frame(chunks[1].digest, Bytes::from_static(b"frame"));
        let metrics = Metrics::new(cache.clone());
        let fetcher = Arc::new(Fetcher::new(cache, Default::default()));
        metrics.layer_mounted("img", "layer", fetcher, chunks);
        metrics.layer_traced("img", "layer", vec![1, 2]);
        let text = metrics.render();
        assert_eq!(gauge_value(&text, "img", "chunks"), 0.5);
        assert_eq!(gauge_value(&text, "img", "trace"), 0.5);
    }

    #[test]
    fn a_failed_mount_puts_back_the_same_layer_mounted_before() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let chunk = |data: &[u8]| Chunk {
            blob_offset: 0,
            compressed_len: data.len() as u32,
            len: data.len() as u32,
            digest: Digest::of(data),
        };
        cache.insert_verified(&Digest::of(b"cached"), Bytes::from_static(b"cached"));
        let metrics = Metrics::new(cache.clone());
        let fetcher = || Arc::new(Fetcher::new(cache.clone(), Default::default()));
        let _ = metrics.layer_mounted("img", "layer", fetcher(), vec![chunk(b"cached")].into());
        let replaced =
            metrics.layer_mounted("img", "layer", fetcher(), vec![chunk(b"missing")].into());
        assert_eq!(gauge_value(&metrics.render(), "img", "chunks"), 0.0);
        metrics.layer_mount_failed("img", "layer", replaced);
        assert_eq!(gauge_value(&metrics.render(), "img", "chunks"), 1.0);
    }
}
