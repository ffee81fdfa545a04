//! The curve: each server's saturation rate, then open-loop latency at
//! fractions of it, servers alternating cell by cell.

use std::collections::BTreeMap;

use echoloop_loadgen::median;

use crate::output::{self, Point};
use crate::{load, start, Load, Options, Setup};

/// Measures the curve for every connection count and writes the results.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let setups = opts.setups();
    if setups.is_empty() {
        return Err("--only matches no server".to_string());
    }
    let mut points = Vec::new();
    for &conns in &opts.conns {
        let saturation = saturation(opts, &setups, conns)?;
        points.extend(fractions(opts, &setups, conns, &saturation)?);
        output::chart(opts, conns, &points)?;
    }
    output::write(opts, &points)
}

/// The closed-loop arguments: `pingpong -c C -s 64`, one in flight each.
fn closed_loop(opts: &Options, conns: usize) -> Vec<String> {
    let mut args: Vec<String> = ["pingpong", "-s", "64", "-d", "1"].map(String::from).into();
    args.extend(["-c".to_string(), conns.to_string()]);
    args.extend(timing(opts));
    args
}

fn timing(opts: &Options) -> [String; 4] {
    [
        "--duration".to_string(),
        opts.duration.to_string(),
        "--warmup".to_string(),
        opts.warmup.to_string(),
    ]
}

/// Each server's closed-loop throughput (median of the trials), in msgs/s.
fn saturation(opts: &Options, setups: &[Setup], conns: usize) -> Result<Vec<f64>, String> {
    let mut runs = vec![Vec::new(); setups.len()];
    for trial in 0..opts.trials {
        for k in 0..setups.len() {
            // Alternate which server goes first, trial by trial.
            let i = (k + trial) % setups.len();
            let server = start(setups[i]);
            let report = load(server.addr, setups[i].threads, &closed_loop(opts, conns))?;
            let rate = report.get("msgs_per_sec");
            eprintln!(
                "latency: {conns} conns, {:<22} saturation trial {}: {rate:.0} msgs/s closed loop",
                setups[i].name(),
                trial + 1
            );
            runs[i].push(rate);
        }
    }
    Ok(runs.into_iter().map(median).collect())
}

/// The open-loop cells at the fractions of each server's saturation.
fn fractions(
    opts: &Options,
    setups: &[Setup],
    conns: usize,
    saturation: &[f64],
) -> Result<Vec<Point>, String> {
    let mut runs: BTreeMap<(usize, usize), Vec<Load>> = BTreeMap::new();
    let mut cell = 0;
    for trial in 0..opts.trials {
        for (f, fraction) in opts.fractions.iter().enumerate() {
            for k in 0..setups.len() {
                // Servers alternate cell by cell, so drift hits all alike.
                let i = (k + cell) % setups.len();
                let rate = (saturation[i] * fraction).max(1.0);
                let mut args: Vec<String> =
                    ["pingpong", "-s", "64", "-d", "1"].map(String::from).into();
                args.extend(["-c".to_string(), conns.to_string()]);
                args.extend(["--rate".to_string(), format!("{rate:.0}")]);
                args.extend(timing(opts));
                let server = start(setups[i]);
                let report = load(server.addr, setups[i].threads, &args)?;
                drop(server);
                eprintln!(
                    "latency: {conns} conns, {:<22} {:>3.0} % ({rate:.0}/s) trial {}: \
                     achieved {:.0}/s p50 {:.0} p99 {:.0} p99.9 {:.0} us{}",
                    setups[i].name(),
                    fraction * 100.0,
                    trial + 1,
                    report.get("sent_per_sec"),
                    report.get("p50_us"),
                    report.get("p99_us"),
                    report.get("p999_us"),
                    if report.behind() { " BEHIND" } else { "" }
                );
                runs.entry((i, f)).or_default().push(report);
            }
            cell += 1;
        }
    }
    let mut points = Vec::new();
    for ((i, f), reports) in runs {
        let fraction = opts.fractions[f];
        points.push(Point::from_runs(
            setups[i].name(),
            conns,
            0,
            fraction,
            saturation[i],
            (saturation[i] * fraction).max(1.0),
            &reports,
        ));
    }
    Ok(points)
}
