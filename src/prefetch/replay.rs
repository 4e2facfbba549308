//! Replaying a trace: the traced chunks fetched in trace order, neighbours
//! coalesced into large range requests, a bounded number in flight, and
//! always behind on-demand reads.

use super::trace::Trace;
use crate::fetch::{Fetcher, RemoteLayer};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a trace is replayed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Replay traces found for mounted images.
    pub enabled: bool,
    /// Requests in flight, prefetch and on-demand together: prefetch
    /// keeps this many less the on-demand reads waiting (at least one).
    pub max_in_flight: usize,
    /// Trace accesses planned together: their chunks are sorted and
    /// coalesced per layer, so a window becomes a few large requests.
    pub window: usize,
    /// Largest prefetch request. Requests in flight share the link, so a
    /// request's first bytes arrive only as fast as all of them: smaller
    /// ones deliver what the start reads first, first (a trace-ordered
    /// layer would otherwise be a few 8 MiB requests that all end
    /// together, near the end of the replay).
    pub max_request_bytes: u64,
    /// The snapshotter records the first start of each image on this node
    /// (its lazily served layers' reads) and publishes it as the image's
    /// trace if it has none: traces from production starts, without a
    /// separate recording run. Needs push rights to the registry.
    pub record_starts: bool,
    /// How long a recorded start lasts, from its first read.
    pub record_window_secs: u64,
    /// Replay a trace's pack (its chunks recompressed in access order)
    /// before its layers.
    pub replay_packs: bool,
    /// Largest request for a trace's pack. A pack is already in the order
    /// the start reads it, so one stream delivers it in that order:
    /// several smaller requests sharing the link would each bring their
    /// first frames early and their last ones late, and a chunk of a
    /// request not sent yet is fetched from its layer by the read that
    /// wants it. The fetcher holds a request's body until it is done.
    pub pack_request_bytes: u64,
    /// Pack requests in flight (on-demand reads of what the pack lacks go
    /// beside them).
    pub pack_in_flight: usize,
    /// zstd level of the packs this node publishes with its traces (0:
    /// none). Recompressing costs CPU once per published trace, and every
    /// cold start fetches the result: at 19, about 20 CPU-s (spread over
    /// the cores) for the 47 MB of chunks a JVM start reads, 8 % fewer
    /// bytes than at 9 (1.5 CPU-s) and 7 % fewer than at 14.
    pub pack_level: i32,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            max_in_flight: 8,
            window: 256,
            max_request_bytes: 1 << 20,
            record_starts: false,
            record_window_secs: 30,
            replay_packs: true,
            pack_request_bytes: 32 << 20,
            pack_in_flight: 1,
            pack_level: 19,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrefetchReport {
    /// Traced chunks.
    pub traced: usize,
    /// Chunks found already cached (not fetched).
    pub already_cached: usize,
    /// Range requests sent.
    pub requests: usize,
    /// Requests that failed (their chunks are left to on-demand reads).
    pub failed: usize,
    /// Stopped early because the cache's disk tier is full.
    pub stopped_cache_full: bool,
    /// Traced chunks asked of the trace's pack.
    pub from_pack: usize,
    /// Range requests sent for the pack.
    pub pack_requests: usize,
    /// A pack request failed: the rest came from the layers.
    pub pack_failed: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// `run` (chunk indexes in blob order) cut into runs spanning at most
/// `max_bytes` of the blob each (a chunk larger than that alone).
fn split_run(layer: &RemoteLayer, run: Vec<u32>, max_bytes: u64) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut start = 0u64;
    for i in run {
        let chunk = &layer.chunks[i as usize];
        let end = chunk.blob_offset + u64::from(chunk.compressed_len);
        match out.last_mut() {
            Some(current) if end - start <= max_bytes => current.push(i),
            _ => {
                start = chunk.blob_offset;
                out.push(vec![i]);
            }
        }
    }
    out
}

/// A window of the trace as requests: per layer, its chunks not cached
/// in blob order, grouped into runs of one request each, in the order the
/// window first needs them.
fn plan_window(
    fetcher: &Fetcher,
    layers: &[RemoteLayer],
    window: &[super::trace::Access],
    config: &PrefetchConfig,
    from_pack: bool,
    report: &mut PrefetchReport,
) -> Vec<(usize, Vec<u32>)> {
    let mut runs = Vec::new();
    for (layer_index, layer) in layers.iter().enumerate() {
        let mut chunks: Vec<u32> = window
            .iter()
            .filter(|a| a.layer as usize == layer_index)
            .map(|a| a.chunk)
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        let before = chunks.len();
        chunks.retain(|&c| !fetcher.has(&layer.chunks[c as usize].digest));
        report.already_cached += before - chunks.len();
        let layer_runs = match from_pack {
            true => fetcher.runs_within(layer, &chunks, config.max_request_bytes),
            false => fetcher
                .runs(layer, &chunks)
                .into_iter()
                .flat_map(|run| split_run(layer, run, config.max_request_bytes))
                .collect(),
        };
        runs.extend(layer_runs.into_iter().map(|run| (layer_index, run)));
    }
    let first_use = |&(layer, ref run): &(usize, Vec<u32>)| {
        window
            .iter()
            .position(|a| a.layer as usize == layer && run.contains(&a.chunk))
            .unwrap_or(usize::MAX)
    };
    runs.sort_by_key(first_use);
    runs
}

/// Replays `trace` (already validated against `layers`) into the cache:
/// from its pack first when it has a usable one, then from the layers
/// whatever that did not bring.
pub async fn prefetch(
    fetcher: Arc<Fetcher>,
    layers: Arc<Vec<RemoteLayer>>,
    trace: Trace,
    config: PrefetchConfig,
) -> PrefetchReport {
    let started = Instant::now();
    fetcher.follow_trace(
        trace
            .accesses
            .iter()
            .map(|a| layers[a.layer as usize].chunks[a.chunk as usize].digest),
    );
    let mut report = PrefetchReport {
        traced: trace.accesses.len(),
        ..PrefetchReport::default()
    };
    if let Some(pack) = trace.pack.as_ref().filter(|_| config.replay_packs) {
        let tables: Vec<&[crate::format::Chunk]> = layers.iter().map(|l| &l.chunks[..]).collect();
        match trace.check_pack(&tables) {
            // A complete layer's chunks are read from its local blob, by
            // their offsets in it.
            Ok(()) if !fetcher.is_complete() => {
                let (pack_layers, accesses) = super::pack::pack_layers(&trace, pack, &layers);
                report.from_pack = accesses.len();
                let mut from_pack = PrefetchReport::default();
                let shape = PrefetchConfig {
                    max_in_flight: config.pack_in_flight,
                    max_request_bytes: config.pack_request_bytes,
                    ..config.clone()
                };
                replay(
                    &fetcher,
                    &pack_layers,
                    &accesses,
                    &shape,
                    true,
                    &mut from_pack,
                )
                .await;
                report.pack_requests = from_pack.requests;
                report.pack_failed = from_pack.failed > 0;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "not replaying the trace's pack; replaying from the layers")
            }
        }
    }
    replay(
        &fetcher,
        &layers,
        &trace.accesses,
        &config,
        false,
        &mut report,
    )
    .await;
    report.elapsed = started.elapsed();
    tracing::info!(
        traced = report.traced,
        from_pack = report.from_pack,
        pack_requests = report.pack_requests,
        pack_failed = report.pack_failed,
        already_cached = report.already_cached,
        requests = report.requests,
        failed = report.failed,
        stopped_cache_full = report.stopped_cache_full,
        secs = format!("{:.2}", report.elapsed.as_secs_f64()),
        "prefetch finished"
    );
    report
}

/// Fetches the chunks of `accesses` (of `layers`) not cached yet, in
/// access order, into the cache. With `from_pack`, `layers` are a trace's
/// pack (see [`Fetcher::fetch_foreign_run`]) and nothing more is sent once
/// a request failed: what it did not bring is left for the layers.
async fn replay(
    fetcher: &Arc<Fetcher>,
    layers: &Arc<Vec<RemoteLayer>>,
    accesses: &[super::trace::Access],
    config: &PrefetchConfig,
    from_pack: bool,
    report: &mut PrefetchReport,
) {
    // One pipeline across windows: the next window is planned when the
    // last one's requests are all sent, not when they have all arrived, so
    // the link never idles at a window's end.
    let mut windows = accesses.chunks(config.window.max(1));
    let mut pending = Vec::new().into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        // On-demand reads go first: each one waiting takes a prefetch
        // request's place on the link, down to one prefetch request (one
        // alone would leave the link idle for a round trip each time).
        let limit = config
            .max_in_flight
            .saturating_sub(fetcher.demand_in_flight())
            .max(1);
        while in_flight.len() < limit {
            let (layer, mut run) = match pending.next() {
                Some(next) if !(from_pack && report.failed > 0) => next,
                Some(_) => break,
                None => {
                    if report.stopped_cache_full || (from_pack && report.failed > 0) {
                        break;
                    }
                    let Some(window) = windows.next() else {
                        break;
                    };
                    if fetcher.cache().disk_full() {
                        report.stopped_cache_full = true;
                        break;
                    }
                    pending =
                        plan_window(fetcher, layers, window, config, from_pack, report).into_iter();
                    continue;
                }
            };
            // On-demand reads since the window was planned may have
            // brought some of the run: the request then spans only what
            // is still missing, and counts the rest as cached.
            let before = run.len();
            run.retain(|&c| !fetcher.has(&layers[layer].chunks[c as usize].digest));
            report.already_cached += before - run.len();
            if run.is_empty() {
                continue;
            }
            let fetcher = fetcher.clone();
            let layers = layers.clone();
            report.requests += 1;
            tracing::debug!(
                first = run[0],
                last = run[run.len() - 1],
                chunks = run.len(),
                "prefetch request"
            );
            in_flight.push(async move {
                match from_pack {
                    true => fetcher.fetch_foreign_run(&layers[layer], &run).await,
                    false => fetcher.fetch_run(&layers[layer], &run).await.map(drop),
                }
            });
        }
        if in_flight.is_empty() {
            break;
        }
        if let Some(Err(e)) = in_flight.next().await {
            report.failed += 1;
            if from_pack {
                tracing::warn!(error = %e, "a request for the trace's pack failed; replaying the rest from the layers");
            } else {
                tracing::warn!(error = %e, "prefetch request failed; on-demand reads will fetch those chunks");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::format::Chunk;

    #[test]
    fn runs_are_cut_at_the_request_size_without_splitting_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<Chunk> = [
            (0u64, 400u32),
            (400, 400),
            (800, 400),
            (1200, 2000),
            (3200, 100),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(blob_offset, compressed_len))| Chunk {
            blob_offset,
            compressed_len,
            len: compressed_len,
            digest: Digest::of(&[i as u8]),
        })
        .collect();
        let layer = RemoteLayer {
            store: crate::image::ImageStore::Layout {
                layout: crate::image::OciLayout::open(dir.path(), true).unwrap(),
                tag: "t".into(),
            },
            digest: Digest::of(b"blob"),
            chunks: chunks.into(),
        };
        // (cap, runs)
        let cases: &[(u64, &[&[u32]])] = &[
            (1 << 20, &[&[0, 1, 2, 3, 4]]),
            (1000, &[&[0, 1], &[2], &[3], &[4]]),
            (1200, &[&[0, 1, 2], &[3], &[4]]),
            (100, &[&[0], &[1], &[2], &[3], &[4]]),
        ];
        for (cap, want) in cases {
            let got = split_run(&layer, vec![0, 1, 2, 3, 4], *cap);
            let want: Vec<Vec<u32>> = want.iter().map(|r| r.to_vec()).collect();
            assert_eq!(got, want, "cap {cap}");
        }
    }
}
