//! An SVG chart of a run's latency distributions (`--svg FILE`): the share of streams whose
//! time to first token, and whose whole stream, took at most x milliseconds.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use plotters::prelude::*;

/// Draws the cumulative distributions of `ttft` and `total` (both sorted) to `path`.
pub fn latency_cdf(
    path: &Path,
    label: &str,
    ttft: &[Duration],
    total: &[Duration],
) -> anyhow::Result<()> {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let x_max = total
        .iter()
        .chain(ttft)
        .map(ms)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{label}: latency distribution"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..1.0)
        .context("drawing the chart")?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("share of streams at or below")
        .draw()
        .context("drawing the chart")?;
    for (values, name, color) in [
        (ttft, "time to first token", &BLUE),
        (total, "whole stream", &RED),
    ] {
        let n = values.len().max(1) as f64;
        // At most 2,000 points a curve: every k-th of the sorted values.
        let step = (values.len() / 2_000).max(1);
        let points = values
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, d)| (ms(d), (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color))
            .context("drawing the chart")?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("drawing the chart")?;
    root.present().context("writing the chart")?;
    Ok(())
}
