//! The Pareto plot of a sweep: each function's cold-start share (75th
//! percentile across functions) against wasted memory (idle GB-seconds
//! normalised to the 10-minute keep-alive's), the keep-alive baseline as a
//! curve over its keep-alives, the histogram policy as a thin curve over
//! its fallback keep-alives, every other policy as a point; triangles with
//! cache-aware placement, crosses without.

use super::sizing::PolicyKind;
use super::sweep::SweepRow;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Where the plot's font is looked for, unless `LOCI_PLOT_FONT` names one
/// (Debian's fonts-dejavu-core).
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable font.
    #[error("no font for the plot: {0} (install fonts-dejavu-core or set LOCI_PLOT_FONT)")]
    Font(String),
    /// No row can be placed: the baseline's 10-minute row is missing.
    #[error("nothing to plot: run the keep-alive policy too (the axis is relative to its 10-minute row)")]
    NoReference,
    /// Drawing or writing failed.
    #[error("drawing: {0}")]
    Draw(String),
}

/// Registers the font once per process (plotters keeps it for good).
fn font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<String> = match std::env::var("LOCI_PLOT_FONT") {
            Ok(path) => vec![path],
            Err(_) => FONT_PATHS.iter().map(|p| p.to_string()).collect(),
        };
        let (path, bytes) = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
            .ok_or_else(|| format!("none of {} readable", candidates.join(", ")))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a font plotters can read"))
    })
    .clone()
    .map_err(PlotError::Font)
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn policy_color(policy: PolicyKind) -> RGBColor {
    match policy {
        PolicyKind::KeepAlive => RGBColor(60, 60, 60),
        PolicyKind::Fixed => RGBColor(31, 119, 180),
        PolicyKind::Scheduled => RGBColor(44, 160, 44),
        PolicyKind::Utilisation => RGBColor(148, 103, 189),
        PolicyKind::Hybrid => RGBColor(255, 127, 14),
        PolicyKind::Histogram => RGBColor(214, 39, 40),
    }
}

/// Draws the sweep's rows to `path` (PNG, 1000×700).
pub fn pareto(rows: &[SweepRow], path: &Path) -> Result<(), PlotError> {
    let points: Vec<(&SweepRow, f64)> = rows
        .iter()
        .filter_map(|r| r.wasted_vs_keep_alive_10min.map(|w| (r, w.max(1e-3))))
        .collect();
    if points.is_empty() {
        return Err(PlotError::NoReference);
    }
    font()?;
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, w)| {
            (lo.min(w), hi.max(w))
        });
    let y_max = points
        .iter()
        .map(|(r, _)| r.row.cold_start_pct_p75)
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cold starts against wasted memory (lower left is better)",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("wasted memory (idle GB-s) / 10-minute keep-alive's")
        .y_desc("cold-start % of the 75th-percentile function")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    for cache_aware in [true, false] {
        let mut curve: Vec<(f64, f64, u64)> = points
            .iter()
            .filter(|(r, _)| {
                r.row.policy == PolicyKind::KeepAlive && r.row.cache_aware == cache_aware
            })
            .map(|(r, w)| (*w, r.row.cold_start_pct_p75, r.row.keep_alive_s))
            .collect();
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = policy_color(PolicyKind::KeepAlive);
        let style = if cache_aware {
            color.stroke_width(2)
        } else {
            color.mix(0.5).stroke_width(1)
        };
        let label = format!(
            "keep-alive sweep{}",
            if cache_aware { "" } else { " (cache-blind)" }
        );
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|&(x, y, _)| (x, y)),
                style,
            ))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if cache_aware {
            chart
                .draw_series(curve.iter().map(|&(x, y, keep)| {
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 3, color.filled())
                        + Text::new(format!("{} min", keep / 60), (5, -14), ("sans-serif", 12))
                }))
                .map_err(draw_err)?;
        }
    }
    let mut policies: Vec<PolicyKind> = points
        .iter()
        .map(|(r, _)| r.row.policy)
        .filter(|&p| p != PolicyKind::KeepAlive)
        .collect();
    policies.dedup();
    for policy in policies {
        let color = policy_color(policy);
        for cache_aware in [true, false] {
            let style = if cache_aware {
                color.filled()
            } else {
                color.stroke_width(2)
            };
            let mut marks: Vec<(f64, f64)> = points
                .iter()
                .filter(|(r, _)| r.row.policy == policy && r.row.cache_aware == cache_aware)
                .map(|(r, w)| (*w, r.row.cold_start_pct_p75))
                .collect();
            marks.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = format!(
                "{}{}",
                policy.name(),
                if cache_aware { "" } else { " (cache-blind)" }
            );
            if policy.is_keep_alive_swept() && cache_aware {
                chart
                    .draw_series(LineSeries::new(
                        marks.iter().copied(),
                        color.stroke_width(1),
                    ))
                    .map_err(draw_err)?;
            }
            let series = if cache_aware {
                chart.draw_series(marks.iter().map(|&p| TriangleMarker::new(p, 7, style)))
            } else {
                chart.draw_series(marks.iter().map(|&p| Cross::new(p, 5, style)))
            };
            series
                .map_err(draw_err)?
                .label(label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y))
                        + TriangleMarker::new((0, 0), if cache_aware { 6 } else { 0 }, style)
                        + Cross::new((0, 0), if cache_aware { 0 } else { 5 }, style)
                });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::costs::{ColdMode, StartCosts};
    use crate::sim::engine::ClusterParams;
    use crate::sim::generate::{generate, GeneratorParams};
    use crate::sim::sweep::{sweep, SweepPlan};

    #[test]
    fn a_sweep_is_drawn_as_a_png_and_needs_its_reference() {
        let trace = generate(GeneratorParams {
            seed: 2,
            invocations: 5_000,
            functions: 20,
            hours: 48,
        })
        .unwrap();
        let params = ClusterParams {
            nodes: 5,
            cache_images: 4,
            ..ClusterParams::default()
        };
        let costs = StartCosts::defaults(ColdMode::Lazy);
        let plan = |policies| SweepPlan {
            policies,
            keep_alives_s: vec![300, 1200],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pareto.png");
        let alone = sweep(
            &trace,
            86_400_000,
            &costs,
            &params,
            &plan(vec![PolicyKind::Fixed]),
        )
        .unwrap();
        assert!(matches!(pareto(&alone, &path), Err(PlotError::NoReference)));
        let plan = plan(vec![
            PolicyKind::KeepAlive,
            PolicyKind::Histogram,
            PolicyKind::Fixed,
        ]);
        let rows = sweep(&trace, 86_400_000, &costs, &params, &plan).unwrap();
        match pareto(&rows, &path) {
            Err(PlotError::Font(why))
                if std::env::var_os("LOCI_REQUIRE_SYSTEM_TESTS").is_none() =>
            {
                eprintln!("skipped: no font to draw with ({why}); install fonts-dejavu-core");
            }
            other => {
                other.unwrap();
                let png = std::fs::read(&path).unwrap();
                assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
                assert!(png.len() > 10_000, "a drawn chart, not a blank one");
            }
        }
    }
}
