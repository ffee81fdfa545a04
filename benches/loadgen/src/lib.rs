//! A verifying load generator for any TCP echo server.
//!
//! One thread, one mio loop, many connections. Every connection sends its own
//! pseudo-random byte stream (a window into a shared random table, starting at
//! a per-connection offset) and checks every echoed byte against it, so a
//! server that loses, duplicates, reorders or mixes bytes is caught.
//!
//! Modes: `pingpong` (N connections, S-byte messages, D in flight),
//! `pipelined` (the same with 16 in flight, or open loop sending on
//! schedule whatever is in flight), `stream` (continuous send and
//! receive), `churn` (connect, echo, close, repeat), `hold` (open N, verify
//! each by echo, keep them, K active), `udp` (N sockets ping-pong
//! datagrams) and `once` (send one message, print the reply). `--rate`
//! runs `pingpong`, `pipelined` and `udp` open loop (`schedule.rs`).
//! `tokio-echo` and `tokio-udp-echo` run the tokio peer servers instead.
//! Connections end as `--close` says: an orderly FIN by default, or a
//! reset.
//!
//! Where things live: `cli.rs` the command line; `plan.rs` what a run does;
//! `part.rs` one thread's run (open, hold, traffic, close, report) and
//! `threads.rs` several of them merged; `traffic.rs` the traffic loop,
//! `pump.rs` one client's pass and `schedule.rs` the open-loop schedule;
//! `client.rs` a connection's state and opening one; `pattern.rs` the bytes
//! sent; `hold.rs` the probes and the idle phase; `close.rs` FIN or reset;
//! `udp.rs` the UDP mode; `report.rs` the report; `progress.rs` the bar;
//! `sys.rs` the raw OS calls; `once.rs` and `tokio_peer.rs` the smoke test
//! and the peers.

mod cli;
mod client;
mod close;
mod hold;
mod once;
mod part;
mod pattern;
mod plan;
mod progress;
mod pump;
mod report;
mod schedule;
mod sys;
mod threads;
mod tokio_peer;
mod traffic;
mod udp;

use std::io;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, ModeArgs};
use plan::{Kind, Plan};
use progress::{Label, Progress};

use close::Close;
use report::Report;

/// Runs the command line `args` (without the program name) and returns the
/// process exit code: 0 on a clean run, 1 on errors or mismatches, 2 on a
/// usage error. `tokio-echo` returns only if the server fails.
/// The median of the finite values; NaN if there are none. For the benches
/// that report medians of several runs (`benches/matrix`, `benches/latency`).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

pub fn main_with_args<I: IntoIterator<Item = String>>(args: I) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once("loadgen".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    // Every mode but `once` may open thousands of sockets (the tokio peers
    // accept them), so each starts with the limit the server gives itself.
    if !matches!(cli.mode, ModeArgs::Once { .. }) {
        if let Err(e) = sys::raise_open_files_limit() {
            eprintln!("loadgen: warning: could not raise the open-files limit: {e}");
        }
    }
    let (json, result) = match cli.mode {
        ModeArgs::Once { addr, message } => return once::once(addr, message),
        ModeArgs::TokioEcho { listen, threads } => {
            return match tokio_peer::serve(listen, usize::from(threads)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadgen: tokio-echo: {listen}: {e}");
                    1
                }
            };
        }
        ModeArgs::TokioUdpEcho { listen } => {
            return match tokio_peer::serve_udp(listen) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadgen: tokio-udp-echo: {listen}: {e}");
                    1
                }
            };
        }
        mode => run_load(mode),
    };
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.to_text());
            }
            i32::from(report.errors > 0 || report.mismatches > 0)
        }
        Err(err) => {
            eprintln!("loadgen: error: {err}");
            1
        }
    }
}

/// Runs a load mode; returns whether the report is JSON, and the report.
fn run_load(mode: ModeArgs) -> (bool, io::Result<Report>) {
    let kind = match mode {
        ModeArgs::Pipelined { .. } => Kind::Pipelined,
        _ => Kind::PingPong,
    };
    match mode {
        ModeArgs::Udp {
            target,
            conns,
            size,
            timeout,
            open_loop,
            timing,
        } => {
            let mut plan = udp::UdpPlan::new(&target, &timing, conns, size, timeout);
            plan.rate = open_loop.rate;
            let progress = Progress::start(
                Label {
                    mode: "udp",
                    unit: "msgs/s",
                    conns: 0,
                    traffic: plan.warmup + plan.duration,
                },
                timing.json,
            );
            plan.meter = progress.meter();
            (timing.json, udp::run(&plan))
        }
        // The same plan for both; they differ in how a connection paces
        // its messages (`Kind`).
        ModeArgs::Pingpong {
            target,
            conns,
            size,
            depth,
            open_loop,
            timing,
            connections,
        }
        | ModeArgs::Pipelined {
            target,
            conns,
            size,
            depth,
            open_loop,
            timing,
            connections,
        } => {
            let mut plan = Plan::new(kind, &target, &timing, &connections);
            plan = plan.sized(conns, size, depth.max(1));
            plan.rate = open_loop.rate;
            (timing.json, run_with_progress(plan, timing.json))
        }
        ModeArgs::Stream {
            target,
            conns,
            size,
            timing,
            connections,
        } => {
            let plan =
                Plan::new(Kind::Stream, &target, &timing, &connections).sized(conns, size, 1);
            (timing.json, run_with_progress(plan, timing.json))
        }
        ModeArgs::Churn {
            target,
            parallel,
            size,
            timing,
            connections,
        } => {
            let plan =
                Plan::new(Kind::Churn, &target, &timing, &connections).sized(parallel, size, 1);
            (timing.json, run_with_progress(plan, timing.json))
        }
        ModeArgs::Hold {
            target,
            conns,
            active,
            idle,
            size,
            probe_timeout,
            timing,
            connections,
        } => {
            let mut plan =
                Plan::new(Kind::Hold, &target, &timing, &connections).sized(conns, size, 1);
            plan.active = active.min(conns);
            plan.idle = Duration::from_secs_f64(idle.max(0.0));
            plan.probe_timeout = Duration::from_secs_f64(probe_timeout.max(0.0));
            (timing.json, run_with_progress(plan, timing.json))
        }
        ModeArgs::Once { .. } | ModeArgs::TokioEcho { .. } | ModeArgs::TokioUdpEcho { .. } => {
            unreachable!("not a load mode")
        }
    }
}

/// Runs a TCP plan with a progress bar (on a terminal, without `--json`).
fn run_with_progress(mut plan: Plan, json: bool) -> io::Result<Report> {
    let progress = Progress::start(
        Label {
            mode: plan.kind.name(),
            unit: match plan.kind {
                Kind::Churn => "conns/s",
                _ => "msgs/s",
            },
            conns: plan.conns as u64,
            traffic: plan.warmup + plan.duration,
        },
        json,
    );
    plan.meter = progress.meter();
    threads::run(plan)
}
