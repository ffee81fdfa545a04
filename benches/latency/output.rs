//! The curve's points (medians of the trials), the markdown tables, the
//! results JSON and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use echoloop_loadgen::median;

use crate::{Load, Options};

/// One cell: medians over its trials.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub(crate) server: String,
    /// Active connections, and (tail) idle ones held beside them.
    pub(crate) conns: usize,
    pub(crate) held: usize,
    /// Curve: the fraction of the saturation rate asked, and that rate.
    pub(crate) fraction: f64,
    pub(crate) saturation: f64,
    pub(crate) rate: f64,
    /// Messages per second sent on schedule in the window.
    pub(crate) achieved: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) p9999_us: f64,
    pub(crate) max_us: f64,
    /// Trials, those that fell behind schedule, and errors or mismatches
    /// over all of them.
    pub(crate) trials: usize,
    pub(crate) behind: usize,
    pub(crate) faults: f64,
}

impl Point {
    pub(crate) fn from_runs(
        server: String,
        conns: usize,
        held: usize,
        fraction: f64,
        saturation: f64,
        rate: f64,
        runs: &[Load],
    ) -> Point {
        let med = |name: &str| median(runs.iter().map(|r| r.get(name)).collect());
        Point {
            server,
            conns,
            held,
            fraction,
            saturation,
            rate,
            achieved: med("sent_per_sec"),
            p50_us: med("p50_us"),
            p90_us: med("p90_us"),
            p99_us: med("p99_us"),
            p999_us: med("p999_us"),
            p9999_us: med("p9999_us"),
            max_us: med("max_us"),
            trials: runs.len(),
            behind: runs.iter().filter(|r| r.behind()).count(),
            faults: runs.iter().map(Load::faults).sum(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.server,
            "conns": self.conns,
            "held": self.held,
            "fraction": self.fraction,
            "saturation_msgs_per_sec": self.saturation.round(),
            "rate": self.rate.round(),
            "achieved_msgs_per_sec": self.achieved.round(),
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "p9999_us": self.p9999_us,
            "max_us": self.max_us,
            "trials": self.trials,
            "behind_schedule_trials": self.behind,
            "errors": self.faults,
        })
    }

    /// The latency columns of a table row.
    fn latencies(&self) -> String {
        format!(
            "{:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.p9999_us, self.max_us
        )
    }

    /// "2 of 3" when trials fell behind schedule, else "".
    fn behind_note(&self) -> String {
        match self.behind {
            0 => String::new(),
            n => format!("{n} of {}", self.trials),
        }
    }
}

/// How the numbers were taken, for the top of each table.
fn preamble(opts: &Options) -> String {
    format!(
        "Open loop (`loadgen pingpong -s 64 --rate R`: one message in flight per connection, \
         latency from each message's scheduled time, HdrHistogram), medians of {} trial(s) of \
         {} s after {} s of warm-up; servers alternate cell by cell; 1-loop servers pinned to \
         core 0 and the load generator to core 1, 2-loop servers and a 2-thread load generator \
         unpinned. Latencies in microseconds. \"behind\": trials in which fewer than 99 % of \
         the scheduled messages were sent in the window (the asked rate was not offered).\n\n",
        opts.trials, opts.duration, opts.warmup
    )
}

/// Writes the curve's table (printed too) and results JSON.
pub(crate) fn write(opts: &Options, points: &[Point]) -> Result<(), String> {
    let mut md = preamble(opts);
    md.push_str(
        "| conns | server | load | saturation msgs/s | asked msgs/s | achieved msgs/s | p50 | \
         p90 | p99 | p99.9 | p99.99 | max | behind | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} % | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} |",
            p.conns,
            p.server,
            p.fraction * 100.0,
            p.saturation,
            p.rate,
            p.achieved,
            p.latencies(),
            p.behind_note(),
            p.faults
        );
    }
    save(opts, "latency.md", "latency-results.json", &md, points)
}

/// Writes the tail table (printed too) and its results JSON.
pub(crate) fn write_tail(opts: &Options, points: &[Point]) -> Result<(), String> {
    let mut md = preamble(opts);
    md.push_str(
        "| server | idle held | active | asked msgs/s | achieved msgs/s | p50 | p90 | p99 | \
         p99.9 | p99.99 | max | behind | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.0} |",
            p.server,
            p.held,
            p.conns,
            p.rate,
            p.achieved,
            p.latencies(),
            p.behind_note(),
            p.faults
        );
    }
    save(
        opts,
        "latency-tail.md",
        "latency-tail-results.json",
        &md,
        points,
    )
}

fn save(
    opts: &Options,
    md_name: &str,
    json_name: &str,
    md: &str,
    points: &[Point],
) -> Result<(), String> {
    println!("{md}");
    let json = serde_json::json!({
        "trials": opts.trials,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "points": points.iter().map(Point::json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    for (name, body) in [(md_name, md), (json_name, text.as_str())] {
        let path = opts.out.join(name);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!(
        "latency: wrote {md_name} and {json_name} to {}",
        opts.out.display()
    );
    Ok(())
}

/// `latency-C.svg`: p50, p99 and p99.9 against the achieved rate for the
/// points with `conns` connections, one colour per server, log y axis.
pub(crate) fn chart(opts: &Options, conns: usize, points: &[Point]) -> Result<(), String> {
    let path = opts.out.join(format!("latency-{conns}.svg"));
    draw(&path, conns, points).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("latency: drew {}", path.display());
    Ok(())
}

/// Reads one percentile of a point.
type Percentile = fn(&Point) -> f64;

fn draw(path: &Path, conns: usize, points: &[Point]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let points: Vec<&Point> = points.iter().filter(|p| p.conns == conns).collect();
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let max_x = points
        .iter()
        .map(|p| p.achieved)
        .filter(|v| finite(*v))
        .fold(1.0, f64::max)
        * 1.1;
    let (lo, hi) = points
        .iter()
        .flat_map(|p| [p.p50_us, p.p99_us, p.p999_us])
        .filter(|v| finite(*v))
        .fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo == f64::MAX { 1.0 } else { lo };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("open-loop latency against load, {conns} connections, 64 B"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, ((lo * 0.7)..(hi * 1.5)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("achieved messages per second")
        .y_desc("latency, microseconds (log)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let colours = [RED, BLUE, MAGENTA, CYAN, GREEN, BLACK];
    let mut servers: Vec<&str> = Vec::new();
    for p in &points {
        if !servers.contains(&p.server.as_str()) {
            servers.push(&p.server);
        }
    }
    let percentiles: [(&str, Percentile, u32); 3] = [
        ("p50", |p| p.p50_us, 1),
        ("p99", |p| p.p99_us, 2),
        ("p99.9", |p| p.p999_us, 3),
    ];
    for (s, server) in servers.iter().enumerate() {
        let colour = colours[s % colours.len()];
        for (label, value, width) in percentiles {
            // In the order of the load asked: past saturation the achieved
            // rate falls back, and the line shows it.
            let data: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.server == *server)
                .map(|p| (p.achieved, value(p)))
                .filter(|(x, y)| finite(*x) && finite(*y))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), colour.stroke_width(width)))?
                .label(format!("{server} {label}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width))
                });
            chart.draw_series(
                data.into_iter()
                    .map(|p| Circle::new(p, 2 + width, colour.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
