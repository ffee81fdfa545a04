//! The tail at many connections: 18,000 idle connections held by a second
//! load generator process, then 100 and 1,000 active ones at a fixed
//! open-loop rate; echoloop (1 loop) against tokio `current_thread`.

use std::collections::BTreeMap;

use crate::output::{self, Point};
use crate::server::Peer;
use crate::{hold, load, start, Load, Options, Setup};

/// The active connection counts beside the held ones.
const ACTIVE: [usize; 2] = [100, 1000];

/// Measures the tail table and writes it.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let setups: Vec<Setup> = [Peer::Echoloop, Peer::Tokio]
        .into_iter()
        .map(|peer| Setup { peer, threads: 1 })
        .filter(|s| {
            opts.only
                .as_ref()
                .is_none_or(|o| s.name().contains(o.as_str()))
        })
        .collect();
    let mut runs: BTreeMap<(usize, usize), Vec<Load>> = BTreeMap::new();
    let mut cell = 0;
    for trial in 0..opts.trials {
        for (a, &active) in ACTIVE.iter().enumerate() {
            for k in 0..setups.len() {
                let i = (k + cell) % setups.len();
                let report = measure(opts, setups[i], active)?;
                eprintln!(
                    "latency tail: {:<22} {} held + {active} active at {:.0}/s trial {}: \
                     achieved {:.0}/s p50 {:.0} p99 {:.0} p99.9 {:.0} p99.99 {:.0} us{}",
                    setups[i].name(),
                    opts.tail_held,
                    opts.tail_rate,
                    trial + 1,
                    report.get("sent_per_sec"),
                    report.get("p50_us"),
                    report.get("p99_us"),
                    report.get("p999_us"),
                    report.get("p9999_us"),
                    if report.behind() { " BEHIND" } else { "" }
                );
                runs.entry((i, a)).or_default().push(report);
            }
            cell += 1;
        }
    }
    let points: Vec<Point> = runs
        .into_iter()
        .map(|((i, a), reports)| {
            Point::from_runs(
                setups[i].name(),
                ACTIVE[a],
                opts.tail_held,
                f64::NAN,
                f64::NAN,
                opts.tail_rate,
                &reports,
            )
        })
        .collect();
    output::write_tail(opts, &points)
}

/// One trial: a fresh server, `tail_held` idle connections from a second
/// process, then `active` connections open loop at `tail_rate`.
fn measure(opts: &Options, setup: Setup, active: usize) -> Result<Load, String> {
    let server = start(setup);
    let (mut holder, held) = hold(server.addr, opts.tail_held)?;
    let result = if held < opts.tail_held {
        Err(format!(
            "{}: only {held} of {} idle connections held (verified by echo)",
            setup.name(),
            opts.tail_held
        ))
    } else {
        let mut args: Vec<String> = ["pingpong", "-s", "64", "-d", "1"].map(String::from).into();
        args.extend(["-c".to_string(), active.to_string()]);
        args.extend(["--rate".to_string(), format!("{:.0}", opts.tail_rate)]);
        args.extend(["--duration".to_string(), opts.duration.to_string()]);
        args.extend(["--warmup".to_string(), opts.warmup.to_string()]);
        load(server.addr, 1, &args)
    };
    let _ = holder.kill();
    let _ = holder.wait();
    result
}
