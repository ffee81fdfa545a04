//! One measurement: a fresh server, one load generator run against it (or
//! two, for syscalls per message), and what it measured.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cells::Cell;
use crate::server::{placed, Peer, Server, LOAD_CORE};

/// One measurement's numbers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) msgs_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: f64,
    pub(crate) mismatches: f64,
    pub(crate) idle_bytes_per_conn: Option<f64>,
    /// Server syscalls in the whole window ÷ messages.
    pub(crate) syscalls_per_msg: Option<f64>,
    /// The same with connection set-up and tear-down subtracted.
    pub(crate) syscalls_steady: Option<f64>,
    /// Server CPU time (user + system) per echoed message, in microseconds:
    /// efficiency even where the load generator is the bottleneck.
    pub(crate) cpu_us_per_msg: f64,
}

pub(crate) fn measure(cell: &Cell, peer: Peer, have_perf: bool, duration: f64) -> Sample {
    let server = Server::start(peer, cell.threads, cell.udp);
    std::thread::sleep(Duration::from_millis(100));
    let rss_empty = server.rss();
    let count = cell.syscalls && have_perf;
    // Syscalls per message: connection set-up and tear-down are per
    // connection, not per message, so a very short run with the same
    // connections is subtracted from the real one (the slope), and the
    // whole-window ratio is kept too.
    let baseline = count.then(|| run_load(&server, cell, 0.05, true, rss_empty));
    let run = run_load(&server, cell, duration, count, rss_empty);
    let total = run.field("total_msgs");
    let (syscalls_per_msg, syscalls_steady) = match (run.syscalls, baseline) {
        (Some(s), Some(base)) if total > 0.0 => {
            let (s0, m0) = (base.syscalls.unwrap_or(0.0), base.field("total_msgs"));
            let steady = (total > m0 && m0.is_finite()).then(|| (s - s0) / (total - m0));
            (Some(s / total), steady)
        }
        _ => (None, None),
    };
    Sample {
        msgs_per_sec: run.field("msgs_per_sec"),
        mb_per_sec: run.field("mb_per_sec"),
        p99_us: run.field("p99_us"),
        errors: run.field("errors"),
        mismatches: run.field("mismatches"),
        idle_bytes_per_conn: run.idle_bytes_per_conn,
        syscalls_per_msg,
        syscalls_steady,
        cpu_us_per_msg: run.cpu_us / total,
    }
}

pub(crate) struct LoadRun {
    /// The load generator's JSON report (Null if it printed none).
    json: serde_json::Value,
    /// Server CPU time during the run, microseconds.
    cpu_us: f64,
    syscalls: Option<f64>,
    idle_bytes_per_conn: Option<f64>,
}

impl LoadRun {
    /// A number from the report; NaN if absent.
    pub(crate) fn field(&self, name: &str) -> f64 {
        self.json[name].as_f64().unwrap_or(f64::NAN)
    }
}

/// Runs the load generator once against `server`, optionally under perf.
pub(crate) fn run_load(
    server: &Server,
    cell: &Cell,
    duration: f64,
    perf: bool,
    rss_empty: u64,
) -> LoadRun {
    let mut args: Vec<String> = vec!["loadgen".into()];
    args.extend(cell.args.iter().cloned());
    args.extend(["--duration".into(), duration.to_string()]);
    args.extend(["--addr".into(), server.addr.to_string(), "--json".into()]);
    // Resets, not the load generator's default FIN: the churn cell opens
    // tens of thousands of connections a run and the runs follow each other
    // within seconds, so FIN closes would leave the load generator's side
    // of each in TIME_WAIT and run out of ports. Every cell closes the same
    // way, so the figures stay comparable with each other and earlier runs.
    if !cell.udp {
        args.extend(["--close".into(), "reset".into()]);
    }
    if cell.threads > 1 {
        args.extend(["--threads".into(), cell.threads.to_string()]);
    }
    if perf {
        // Count the whole traffic phase against every message it echoed.
        args.extend(["--warmup".into(), "0".into()]);
    }
    let perf = perf.then(|| {
        let out = std::env::temp_dir().join(format!("echoloop-perf-{}", std::process::id()));
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(server.child.id().to_string())
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start perf");
        std::thread::sleep(Duration::from_millis(300));
        (child, out)
    });
    let cpu_before = server.cpu_us();
    let mut load = placed(
        std::env::current_exe().expect("own path"),
        LOAD_CORE,
        cell.threads,
    );
    let mut load = load
        .args(&args[..])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start loadgen");
    let mut idle_bytes_per_conn = None;
    let mut json = serde_json::Value::Null;
    for line in BufReader::new(load.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
    {
        if let Some(n) = line.strip_prefix("held ") {
            // `held N (verified by echo), ...`: N connections echoed a probe.
            let held: f64 = n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            if cell.hold && held > 0.0 {
                std::thread::sleep(Duration::from_millis(300));
                idle_bytes_per_conn = Some((server.rss().saturating_sub(rss_empty)) as f64 / held);
            }
        } else if line.starts_with('{') {
            json = serde_json::from_str(&line).unwrap_or_else(|e| {
                eprintln!("matrix: the load generator printed bad JSON ({e}): {line}");
                serde_json::Value::Null
            });
        }
    }
    let _ = load.wait();
    // Let the server finish closing the connections inside the window.
    std::thread::sleep(Duration::from_millis(100));
    let cpu_us = server.cpu_us() - cpu_before;
    let syscalls = perf.and_then(|(mut child, out)| {
        // SAFETY: kill() sends SIGINT to our own perf child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        text.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.trim().parse::<f64>().ok())
    });
    LoadRun {
        json,
        cpu_us,
        syscalls,
        idle_bytes_per_conn,
    }
}
