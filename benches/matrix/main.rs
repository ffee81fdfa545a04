//! `cargo bench`: the scenario matrix, echoloop against a tokio
//! `current_thread` peer, side by side in one run.
//!
//! Each measurement starts a fresh server pinned to core 0 and the load
//! generator pinned to core 1, and the two servers alternate cell by cell so
//! drift on a noisy machine hits both alike. Medians of `--runs` (default 5)
//! runs are reported with echoloop/peer ratios. Writes `results.json`,
//! `table.md` and `throughput.svg` to `target/echoloop-bench/`.
//!
//! ```text
//! cargo bench --bench matrix                      # the whole matrix, ~6 min
//! cargo bench --bench matrix -- --runs 3 --duration 3
//! cargo bench --bench matrix -- --redraw docs/bench-results.json  # chart only
//! cargo bench --bench matrix -- --runs 1 --duration 1 --only pingpong
//! ```
//! Cells named "N loops: ..." run `echoloop --threads N` against tokio's
//! `multi_thread` runtime with N workers, driven by the load generator with
//! `--threads N`; nothing is pinned there, so on a 2-core machine server
//! and load generator share both cores. They are generated for 2, 4, 8, ...
//! up to the machine's cores, and the scaling table under the matrix sets
//! them beside the pinned 1-loop cells.
//!
//! Server syscalls per message (ping-pong 64 B x 100) are counted with
//! `perf stat -e raw_syscalls:sys_enter` when perf is installed.
//! Load runs end with resets (`loadgen ... --close reset`), so no TIME_WAIT
//! piles up between back-to-back runs; the servers count those connections
//! as closed by error.

mod cells;
mod chart;
mod measure;
mod report;
mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use cells::{cells, Cell};
use chart::{chart_points_from_json, draw_chart};
use measure::{measure, Sample};
use report::Report;
use server::Peer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The same executable is also the load generator and the tokio peer:
    // `matrix loadgen pingpong ...`, `matrix loadgen tokio-echo --listen ADDR`.
    if args.first().map(String::as_str) == Some("loadgen") {
        std::process::exit(echoloop_loadgen::main_with_args(args[1..].to_vec()));
    }
    let opts = Options::parse(&args);
    if let Some(json) = &opts.redraw {
        // Draw the chart again from a results.json, without measuring.
        let text = std::fs::read_to_string(json).expect("read results.json");
        let points = chart_points_from_json(&text).unwrap_or_else(|e| {
            eprintln!("matrix: {json}: {e}");
            std::process::exit(1);
        });
        let out = PathBuf::from(json).with_file_name("throughput.svg");
        draw_chart(&out, &points).expect("draw chart");
        eprintln!("matrix: drew {}", out.display());
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("matrix: needs 2 cores (server on one, load on the other)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let cells: Vec<Cell> = cells()
        .into_iter()
        .filter(|c| {
            opts.only
                .as_ref()
                .is_none_or(|o| c.name.contains(o.as_str()))
        })
        .collect();
    let have_perf = Command::new("perf")
        .args(["stat", "-e", "raw_syscalls:sys_enter", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_perf {
        eprintln!("matrix: perf not usable, syscalls per message not counted (apt-get install linux-perf)");
    }
    let mut results: BTreeMap<(usize, Peer), Vec<Sample>> = BTreeMap::new();
    for run in 0..opts.runs {
        for (i, cell) in cells.iter().enumerate() {
            // Alternate which server goes first, run by run and cell by cell.
            let order = if (run + i) % 2 == 0 {
                [Peer::Echoloop, Peer::Tokio]
            } else {
                [Peer::Tokio, Peer::Echoloop]
            };
            for peer in order {
                let sample = measure(cell, peer, have_perf, opts.duration);
                eprintln!(
                    "run {} {:<30} {:<8} {:>12.0} msgs/s {:>9.1} MB/s p99 {:>7.0} us cpu {:.3} us/msg{}{}{}",
                    run + 1,
                    cell.name,
                    peer.name(),
                    sample.msgs_per_sec,
                    sample.mb_per_sec,
                    sample.p99_us,
                    sample.cpu_us_per_msg,
                    sample.idle_bytes_per_conn.map_or(String::new(), |b| format!(" idle {b:.1} B/conn")),
                    sample.syscalls_per_msg.map_or(String::new(), |s| format!(" {s:.3} syscalls/msg")),
                    sample.syscalls_steady.map_or(String::new(), |s| format!(" ({s:.3} steady)")),
                );
                results.entry((i, peer)).or_default().push(sample);
            }
        }
    }
    let report = Report::new(&cells, &results, opts.runs, started.elapsed());
    println!("{}", report.markdown);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("echoloop-bench");
    std::fs::create_dir_all(&dir).expect("create target/echoloop-bench");
    std::fs::write(dir.join("results.json"), &report.json).expect("write results.json");
    std::fs::write(dir.join("table.md"), &report.markdown).expect("write table.md");
    let chart = dir.join("throughput.svg");
    if let Err(e) = draw_chart(&chart, &report.chart) {
        eprintln!("matrix: chart failed: {e}");
    }
    eprintln!(
        "matrix: wrote {} (results.json, table.md, throughput.svg) in {:.0?}",
        dir.display(),
        started.elapsed()
    );
}

struct Options {
    runs: usize,
    duration: f64,
    only: Option<String>,
    /// Path of a results.json to draw the chart from, instead of measuring.
    redraw: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut opts = Options {
            runs: 5,
            duration: 2.0,
            only: None,
            redraw: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--runs" => opts.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
                "--duration" => {
                    opts.duration = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .expect("--duration SECS")
                }
                "--only" => opts.only = it.next().cloned(),
                "--redraw" => opts.redraw = it.next().cloned(),
                "--bench" => {} // passed by cargo bench
                other => {
                    eprintln!(
                        "matrix: unknown argument {other}; use --runs N, --duration SECS, --only TEXT, --redraw FILE"
                    );
                    std::process::exit(2);
                }
            }
        }
        opts.runs = opts.runs.max(1);
        opts
    }
}
