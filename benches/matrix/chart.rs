//! The throughput chart (docs/throughput.svg): messages per second against
//! connections, both servers.

use std::io::Write;

use crate::cells::cells;

/// The chart's points from a results.json written by `Report::new`:
/// (connections, echoloop msgs/s, tokio msgs/s) for each charted cell.
pub(crate) fn chart_points_from_json(text: &str) -> Result<Vec<(usize, f64, f64)>, String> {
    let results: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let rows = results["cells"]
        .as_array()
        .ok_or("no \"cells\" array in the results")?;
    let cells = cells();
    let number = |row: &serde_json::Value, name: &str| row[name].as_f64().unwrap_or(f64::NAN);
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name = row["cell"].as_str()?;
            let conns = cells.iter().find(|c| c.name == name)?.chart_conns?;
            Some((
                conns,
                number(row, "echoloop_msgs_per_sec"),
                number(row, "tokio_msgs_per_sec"),
            ))
        })
        .collect())
}

/// Throughput against connection count, both servers, log-scale x axis.
pub(crate) fn draw_chart(
    path: &std::path::Path,
    points: &[(usize, f64, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if points.is_empty() {
        return Ok(());
    }
    let max_y = points
        .iter()
        .map(|p| p.1.max(p.2))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let max_x = points.iter().map(|p| p.0).max().unwrap_or(1) as f64 * 2.0;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ping-pong 64 B: messages/s against connections",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.7f64..max_x).log_scale(), 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("messages per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    let series = [("echoloop", 1usize, RED), ("tokio current_thread", 2, BLUE)];
    for (name, which, color) in series {
        let data: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.0 as f64, if which == 1 { p.1 } else { p.2 }))
            .collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    let _ = std::io::stdout().flush();
    Ok(())
}
