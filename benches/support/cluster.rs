//! Clusters shared by the scheduler benches: nodes caching random images,
//! functions each with an image of its own.

use loci::scheduler::function::FunctionSpec;
use loci::scheduler::report::ImageCache;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The image of function `f`.
pub fn image(f: usize) -> String {
    format!("img-{f:06}")
}

/// A node's cache: up to `count` distinct random images of the first `of`
/// functions, partly warm (the trace more than the other chunks).
pub fn warm_images(rng: &mut ChaCha8Rng, count: usize, of: usize) -> Vec<ImageCache> {
    (0..count)
        .map(|_| rng.random_range(0..of))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|i| ImageCache {
            image: image(i),
            chunks_cached: rng.random_range(0.0..1.0),
            trace_cached: rng.random_range(0.5..1.0),
        })
        .collect()
}

/// Function `f` (concurrency 1, no policy) with its own image.
pub fn function(
    f: usize,
    cpu_millis: u32,
    memory_mib: u32,
    timeout_s: u64,
    keep_alive_s: u64,
) -> FunctionSpec {
    FunctionSpec {
        name: format!("fn-{f:06}"),
        image: image(f),
        cpu_millis,
        memory_mib,
        concurrency: 1,
        timeout_s,
        keep_alive_s,
        policy: None,
        command: None,
        start_timeout_s: 120,
    }
}
