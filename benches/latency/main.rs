//! `cargo bench --bench latency`: latency against load, open loop (no
//! coordinated omission), for echoloop and the tokio peer.
//!
//! For each server — echoloop with 1 loop, echoloop `--threads 2`, tokio
//! `current_thread`, tokio `multi_thread` with 2 workers — the curve first
//! finds the saturation rate: the closed-loop throughput of `pingpong -c C
//! -s 64` (median of the trials). Then it runs the open-loop load
//! generator (`pingpong --rate R`, wrk2's model: one message in flight per
//! connection, a message due while the previous is out waits, and its
//! latency counts from its scheduled time) at 10, 25, 50, 75, 90 and 100 %
//! of that server's saturation, servers alternating cell by cell, and
//! takes the median of the trials of each cell. One-loop servers are pinned
//! to core 0 and the load generator to core 1; two-loop servers and a
//! two-thread load generator share both cores unpinned, as in the matrix.
//!
//! Writes, per connection count C, `latency-C.svg` (p50, p99 and p99.9
//! against the achieved rate, log y axis), and `latency.md` (the table)
//! and `latency-results.json` (every cell): to `docs/` for a full run, to
//! `target/echoloop-bench/latency/` for `--quick` or with `--out DIR`.
//!
//! ```text
//! cargo bench --bench latency                          # the curve, C = 1000, ~12 min
//! cargo bench --bench latency -- --quick               # smoke run, under a minute
//! cargo bench --bench latency -- --conns 100,1000 --trials 5 --duration 10
//! cargo bench --bench latency -- --only echoloop       # servers whose name has it
//! cargo bench --bench latency -- tail                  # 18,000 idle + 100 / 1,000 active
//! ```
//!
//! `tail` measures the tail at many connections: a second load generator
//! process holds 18,000 idle connections (each verified by echo), then
//! 100 and then 1,000 active connections run open loop at `--tail-rate`
//! (20,000 msgs/s): 19,000 connections in all at most, which leaves the
//! server (limit 20,000 descriptors) room for its own. echoloop with 1
//! loop against tokio `current_thread`. `ECHOLOOP_BENCH_QUICK=1` is
//! `--quick`.

mod curve;
mod output;
#[allow(dead_code)]
#[path = "../matrix/server.rs"]
mod server;
mod tail;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use server::{placed, Peer, Server, LOAD_CORE};

/// A server configuration on the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setup {
    pub(crate) peer: Peer,
    /// Loops (tokio workers); the load generator gets as many threads.
    pub(crate) threads: usize,
}

impl Setup {
    pub(crate) fn name(self) -> String {
        match (self.peer, self.threads) {
            (Peer::Echoloop, 1) => "echoloop 1 loop".to_string(),
            (Peer::Echoloop, n) => format!("echoloop {n} loops"),
            (Peer::Tokio, 1) => "tokio current_thread".to_string(),
            (Peer::Tokio, n) => format!("tokio multi_thread {n}"),
        }
    }
}

/// The four servers on the curve.
pub(crate) const SETUPS: [Setup; 4] = [
    Setup {
        peer: Peer::Echoloop,
        threads: 1,
    },
    Setup {
        peer: Peer::Tokio,
        threads: 1,
    },
    Setup {
        peer: Peer::Echoloop,
        threads: 2,
    },
    Setup {
        peer: Peer::Tokio,
        threads: 2,
    },
];

/// The fractions of the saturation rate the curve is measured at.
pub(crate) const FRACTIONS: [f64; 6] = [0.10, 0.25, 0.50, 0.75, 0.90, 1.00];

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) tail: bool,
    pub(crate) conns: Vec<usize>,
    pub(crate) trials: usize,
    pub(crate) duration: f64,
    pub(crate) warmup: f64,
    pub(crate) fractions: Vec<f64>,
    pub(crate) only: Option<String>,
    pub(crate) tail_rate: f64,
    pub(crate) tail_held: usize,
    pub(crate) out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var_os("ECHOLOOP_BENCH_QUICK").is_some_and(|v| v != "0");
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut opts = Options {
            tail: false,
            conns: vec![1000],
            trials: if quick { 1 } else { 3 },
            duration: if quick { 1.0 } else { 5.0 },
            warmup: if quick { 0.3 } else { 1.0 },
            fractions: if quick {
                vec![0.10, 0.50, 0.90]
            } else {
                FRACTIONS.to_vec()
            },
            only: None,
            tail_rate: 20_000.0,
            tail_held: 18_000,
            out: if quick {
                manifest.join("target/echoloop-bench/latency")
            } else {
                manifest.join("docs")
            },
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |what: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{arg} needs {what}"))
            };
            let number = |text: String| -> Result<f64, String> {
                text.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("{text} is not a positive number"))
            };
            match arg.as_str() {
                "latency" | "curve" | "--quick" | "--bench" => {}
                "tail" => opts.tail = true,
                "--conns" => {
                    opts.conns = value("N[,N...]")?
                        .split(',')
                        .map(|n| n.parse::<usize>().map_err(|e| format!("--conns {n}: {e}")))
                        .collect::<Result<_, _>>()?
                }
                "--trials" => opts.trials = number(value("N")?)? as usize,
                "--duration" => opts.duration = number(value("SECS")?)?,
                "--warmup" => opts.warmup = value("SECS")?.parse().map_err(|_| "--warmup SECS")?,
                "--only" => opts.only = Some(value("TEXT")?),
                "--tail-rate" => opts.tail_rate = number(value("R")?)?,
                "--tail-held" => opts.tail_held = number(value("N")?)? as usize,
                "--out" => opts.out = PathBuf::from(value("DIR")?),
                other => {
                    return Err(format!(
                        "unknown argument {other}; use [tail] --quick, --conns N[,N], --trials N, \
                         --duration SECS, --warmup SECS, --only TEXT, --tail-rate R, \
                         --tail-held N, --out DIR"
                    ))
                }
            }
        }
        opts.trials = opts.trials.max(1);
        Ok(opts)
    }

    /// The servers to measure.
    pub(crate) fn setups(&self) -> Vec<Setup> {
        SETUPS
            .into_iter()
            .filter(|s| {
                self.only
                    .as_ref()
                    .is_none_or(|o| s.name().contains(o.as_str()))
            })
            .collect()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The same executable is also the load generator and the tokio peer.
    if args.first().map(String::as_str) == Some("loadgen") {
        std::process::exit(echoloop_loadgen::main_with_args(args[1..].to_vec()));
    }
    let opts = Options::parse(&args).unwrap_or_else(|e| {
        eprintln!("latency: {e}");
        std::process::exit(2);
    });
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("latency: needs 2 cores (server on one, load on the other)");
        std::process::exit(1);
    }
    if let Err(e) = std::fs::create_dir_all(&opts.out) {
        eprintln!("latency: {}: {e}", opts.out.display());
        std::process::exit(1);
    }
    let result = if opts.tail {
        tail::run(&opts)
    } else {
        curve::run(&opts)
    };
    if let Err(e) = result {
        eprintln!("latency: {e}");
        std::process::exit(1);
    }
}

/// Runs the load generator (this executable's `loadgen` mode) once with
/// `args` and `--json` against `addr`, pinned to the load core when it runs
/// one thread; returns its report.
pub(crate) fn load(addr: SocketAddr, threads: usize, args: &[String]) -> Result<Load, String> {
    let mut cmd = placed(own_path()?, LOAD_CORE, threads);
    cmd.arg("loadgen")
        .args(args)
        .args(["--addr", &addr.to_string(), "--json", "--close", "reset"]);
    if threads > 1 {
        cmd.args(["--threads", &threads.to_string()]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("start the load generator: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("the load generator printed no report: {stdout}"))?;
    let json: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    Ok(Load { json })
}

/// One load generator report.
pub(crate) struct Load {
    pub(crate) json: serde_json::Value,
}

impl Load {
    /// A number from the report; NaN if absent.
    pub(crate) fn get(&self, name: &str) -> f64 {
        self.json[name].as_f64().unwrap_or(f64::NAN)
    }

    /// The report says the asked rate was not offered.
    pub(crate) fn behind(&self) -> bool {
        self.json["behind_schedule"].as_bool().unwrap_or(false)
    }

    /// Errors and mismatches together.
    pub(crate) fn faults(&self) -> f64 {
        self.get("errors") + self.get("mismatches")
    }
}

/// This executable (the load generator and the tokio peer too).
pub(crate) fn own_path() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("own path: {e}"))
}

/// Starts a server for `setup` and gives it a moment to settle.
pub(crate) fn start(setup: Setup) -> Server {
    let server = Server::start(setup.peer, setup.threads, false);
    std::thread::sleep(Duration::from_millis(100));
    server
}

/// A load generator process holding `n` idle connections to `addr`
/// (`hold`, each verified by echo), started on the load core; returns once
/// it has printed its `held` line, with the count held.
pub(crate) fn hold(addr: SocketAddr, n: usize) -> Result<(Child, usize), String> {
    let mut child = server::pinned(own_path()?, LOAD_CORE)
        .args(["loadgen", "hold", "--addr", &addr.to_string()])
        .args(["-c", &n.to_string(), "--idle", "86400", "--close", "reset"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start hold: {e}"))?;
    let stdout = child.stdout.take().ok_or("hold: no stdout")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("held ") {
            let held = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return Ok((child, held));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("hold ended before holding".to_string())
}
