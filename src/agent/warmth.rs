//! How warm the node's chunk cache is for each image, as `loci snapshotter`
//! says on its metrics endpoint (`loci_image_cached_ratio`): the agent
//! reports it so the scheduler places instances where their image is
//! cached. The snapshotter owns the cache; this reads its word, bounded.

use crate::scheduler::report::{check_name, ImageCache, MAX_REPORTED_IMAGES};
use std::collections::BTreeMap;
use std::time::Duration;

/// The gauge's name (see `snapshotter::metrics`).
const GAUGE: &str = "loci_image_cached_ratio";
/// Most bytes of the metrics page read.
const MAX_PAGE_BYTES: usize = 16 << 20;

/// Why the metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WarmthError {
    /// The endpoint did not answer, or not with 200.
    #[error("reading {url}: {why}")]
    Fetch {
        /// The metrics URL.
        url: String,
        /// What went wrong.
        why: String,
    },
}

/// Reads the snapshotter's metrics at `url` and returns each image's
/// cached shares, the warmest first, at most [`MAX_REPORTED_IMAGES`].
pub async fn read(http: &reqwest::Client, url: &str) -> Result<Vec<ImageCache>, WarmthError> {
    let fail = |why: String| WarmthError::Fetch {
        url: url.to_string(),
        why,
    };
    let mut response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("status {}", response.status())));
    }
    let mut page = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if page.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(fail(format!("more than {MAX_PAGE_BYTES} bytes")));
        }
        page.extend_from_slice(&chunk);
    }
    Ok(parse(&String::from_utf8_lossy(&page)))
}

/// The gauge's samples in a Prometheus text page, per image: the share of
/// its chunks cached, and of its trace's (the chunks' share where the
/// trace is not known). Lines that do not parse, names the scheduler would
/// refuse and values outside 0..=1 are skipped.
pub fn parse(page: &str) -> Vec<ImageCache> {
    let mut images: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(GAUGE) else {
            continue;
        };
        let Some((labels, value)) = split_sample(rest) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if !(0.0..=1.0).contains(&value) {
            continue;
        }
        let (Some(image), Some(of)) = (labels.get("image"), labels.get("of")) else {
            continue;
        };
        if check_name("image", image).is_err() {
            continue;
        }
        if images.len() >= 4 * MAX_REPORTED_IMAGES && !images.contains_key(image) {
            continue;
        }
        let entry = images.entry(image.clone()).or_default();
        match of.as_str() {
            "chunks" => entry.0 = Some(value),
            "trace" => entry.1 = Some(value),
            _ => {}
        }
    }
    let mut out: Vec<ImageCache> = images
        .into_iter()
        .filter_map(|(image, (chunks, trace))| {
            let chunks_cached = chunks?;
            Some(ImageCache {
                image,
                chunks_cached,
                trace_cached: trace.unwrap_or(chunks_cached),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.trace_cached
            .total_cmp(&a.trace_cached)
            .then(b.chunks_cached.total_cmp(&a.chunks_cached))
            .then_with(|| a.image.cmp(&b.image))
    });
    out.truncate(MAX_REPORTED_IMAGES);
    out
}

/// `{k="v",...} VALUE` into the labels and the value text.
fn split_sample(rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut chars = rest.char_indices();
    if chars.next()?.1 != '{' {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut key = String::new();
    loop {
        let (i, c) = chars.next()?;
        match c {
            '}' => return Some((labels, &rest[i + 1..])),
            ',' | ' ' => {}
            '=' => {
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    match chars.next()?.1 {
                        '"' => break,
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        other => value.push(other),
                    }
                }
                labels.insert(std::mem::take(&mut key), value);
            }
            other => key.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_read_per_image_warmest_first() {
        let page = "\
# HELP loci_image_cached_ratio Share...
# TYPE loci_image_cached_ratio gauge
loci_image_cached_ratio{image=\"reg/a:1\",of=\"chunks\"} 0.25
loci_image_cached_ratio{image=\"reg/a:1\",of=\"trace\"} 1
loci_image_cached_ratio{image=\"reg/b:1\",of=\"chunks\"} 0.5
loci_image_cached_ratio{image=\"reg/\\\"odd\\\\:1\",of=\"chunks\"} 0.1
loci_layer_fetched_bytes_total{image=\"reg/a:1\",layer=\"sha256:x\"} 12
";
        let images = parse(page);
        let got: Vec<(&str, f64, f64)> = images
            .iter()
            .map(|i| (i.image.as_str(), i.chunks_cached, i.trace_cached))
            .collect();
        assert_eq!(
            got,
            [
                ("reg/a:1", 0.25, 1.0),
                ("reg/b:1", 0.5, 0.5),
                ("reg/\"odd\\:1", 0.1, 0.1)
            ]
        );
    }

    #[test]
    fn what_the_scheduler_would_refuse_is_skipped() {
        let long = "x".repeat(600);
        let page = format!(
            "loci_image_cached_ratio{{image=\"a\",of=\"chunks\"}} 1.5\n\
             loci_image_cached_ratio{{image=\"b\",of=\"chunks\"}} NaN\n\
             loci_image_cached_ratio{{image=\"\",of=\"chunks\"}} 0.5\n\
             loci_image_cached_ratio{{image=\"{long}\",of=\"chunks\"}} 0.5\n\
             loci_image_cached_ratio{{image=\"c\",of=\"chunks\" 0.5\n\
             loci_image_cached_ratio{{image=\"d\",of=\"trace\"}} 0.5\n\
             loci_image_cached_ratio{{image=\"e\",of=\"chunks\"}} 0.75\n"
        );
        let images = parse(&page);
        assert_eq!(images.len(), 1, "{images:?}");
        assert_eq!(images[0].image, "e");
    }

    #[test]
    fn many_images_are_bounded() {
        let page: String = (0..2 * MAX_REPORTED_IMAGES)
            .map(|i| format!("loci_image_cached_ratio{{image=\"i{i}\",of=\"chunks\"}} 0.5\n"))
            .collect();
        assert_eq!(parse(&page).len(), MAX_REPORTED_IMAGES);
    }
}
