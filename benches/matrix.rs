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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_CORE: usize = 0;
const LOAD_CORE: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Peer {
    Echoloop,
    Tokio,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Echoloop => "echoloop",
            Peer::Tokio => "tokio",
        }
    }
}

struct Cell {
    name: String,
    args: Vec<String>,
    /// Server loops (tokio workers) and load generator threads; 1 is the
    /// pinned layout, more runs everything unpinned.
    threads: usize,
    /// For multi-loop cells: the name of the 1-loop cell they scale.
    scales: Option<&'static str>,
    /// Connections, for the chart (ping-pong depth-1 cells only).
    chart_conns: Option<usize>,
    /// Measure idle memory per connection (hold cell).
    hold: bool,
    /// Count server syscalls per message.
    syscalls: bool,
    /// UDP echo: the servers get a UDP socket and the load its address.
    udp: bool,
}

fn cells() -> Vec<Cell> {
    let cell = |name: &str, args: &[&str], chart_conns, hold, syscalls| Cell {
        name: name.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        threads: 1,
        scales: None,
        chart_conns,
        hold,
        syscalls,
        udp: false,
    };
    let mut cells = vec![
        cell(
            "pingpong 64B x1",
            &["pingpong", "-c", "1", "-s", "64"],
            Some(1),
            false,
            false,
        ),
        cell(
            "pingpong 64B x100",
            &["pingpong", "-c", "100", "-s", "64"],
            Some(100),
            false,
            true,
        ),
        cell(
            "pingpong 64B x1000",
            &["pingpong", "-c", "1000", "-s", "64"],
            Some(1000),
            false,
            false,
        ),
        cell(
            "pingpong 64B x10000",
            &["pingpong", "-c", "10000", "-s", "64"],
            Some(10000),
            false,
            false,
        ),
        cell(
            "pipelined 64B x1000 depth 16",
            &["pingpong", "-c", "1000", "-s", "64", "-d", "16"],
            None,
            false,
            false,
        ),
        cell(
            "stream 64KiB x10",
            &["stream", "-c", "10", "-s", "65536"],
            None,
            false,
            false,
        ),
        cell(
            "churn 64B, 50 parallel",
            &["churn", "-p", "50", "-s", "64"],
            None,
            false,
            false,
        ),
        cell(
            "hold 19000, 100 active",
            &[
                "hold", "-c", "19000", "-k", "100", "--idle", "1", "-s", "64",
            ],
            None,
            true,
            false,
        ),
    ];
    // UDP echo (issue 12): 100 sockets, one 64 B datagram in flight each,
    // against the tokio peer's `UdpSocket` loop on current_thread.
    cells.push(Cell {
        udp: true,
        ..cell(
            "udp 64B x100",
            &["udp", "-c", "100", "-s", "64"],
            None,
            false,
            false,
        )
    });
    // Multi-loop cells: 2, 4, 8, ... loops up to the machine's cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scaled: [(&'static str, &[&str]); 2] = [
        (
            "pingpong 64B x1000",
            &["pingpong", "-c", "1000", "-s", "64"],
        ),
        (
            "pipelined 64B x1000 depth 16",
            &["pingpong", "-c", "1000", "-s", "64", "-d", "16"],
        ),
    ];
    let mut threads = 2;
    while threads <= cores.max(2) {
        for (base, args) in scaled {
            let mut c = cell(
                &format!("{threads} loops: {base}"),
                args,
                None,
                false,
                false,
            );
            c.threads = threads;
            c.scales = Some(base);
            cells.push(c);
        }
        threads *= 2;
    }
    cells
}

/// One measurement's numbers.
#[derive(Clone, Debug, Default)]
struct Sample {
    msgs_per_sec: f64,
    mb_per_sec: f64,
    p99_us: f64,
    errors: f64,
    mismatches: f64,
    idle_bytes_per_conn: Option<f64>,
    /// Server syscalls in the whole window ÷ messages.
    syscalls_per_msg: Option<f64>,
    /// The same with connection set-up and tear-down subtracted.
    syscalls_steady: Option<f64>,
    /// Server CPU time (user + system) per echoed message, in microseconds:
    /// efficiency even where the load generator is the bottleneck.
    cpu_us_per_msg: f64,
}

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
        let points = chart_points_from_json(&text);
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

/// `program` pinned to `core` when it runs one thread, unpinned otherwise.
fn placed(program: PathBuf, core: usize, threads: usize) -> Command {
    match threads {
        1 => pinned(program, core),
        _ => Command::new(program),
    }
}

/// A command pinned to one core.
fn pinned(program: impl Into<PathBuf>, core: usize) -> Command {
    let mut cmd = Command::new(program.into());
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `peer` with `threads` loops (tokio workers): pinned to
    /// `SERVER_CORE` for one, unpinned for more. With `udp`, it serves UDP
    /// echo too, and `addr` is the UDP one.
    fn start(peer: Peer, threads: usize, udp: bool) -> Server {
        let n = threads.to_string();
        let mut cmd = match peer {
            Peer::Echoloop => {
                let mut cmd = placed(env!("CARGO_BIN_EXE_echoloop").into(), SERVER_CORE, threads);
                cmd.args(["--listen", "127.0.0.1:0"])
                    .env("RUST_LOG", "warn");
                if udp {
                    cmd.args(["--udp", "127.0.0.1:0"]);
                }
                if threads > 1 {
                    cmd.args(["--threads", &n]);
                }
                cmd
            }
            Peer::Tokio => {
                let mut cmd = placed(
                    std::env::current_exe().expect("own path"),
                    SERVER_CORE,
                    threads,
                );
                if udp {
                    cmd.args(["loadgen", "tokio-udp-echo", "--listen", "127.0.0.1:0"]);
                } else {
                    cmd.args(["loadgen", "tokio-echo", "--listen", "127.0.0.1:0"]);
                    cmd.args(["--threads", &n]);
                }
                cmd
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let prefix = if udp {
            "listening on udp "
        } else {
            "listening on "
        };
        // echoloop prints its TCP line before the UDP one.
        while !line.starts_with(prefix) {
            line.clear();
            if stdout.read_line(&mut line).expect("read listening line") == 0 {
                panic!("{} printed no {prefix:?} line", peer.name());
            }
        }
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{} printed {line:?}", peer.name()));
        Server { child, addr }
    }

    /// User plus system CPU time so far, in microseconds.
    fn cpu_us(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let Some(end) = stat.rfind(')') else {
            return f64::NAN;
        };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks * 1e6 / hz
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure(cell: &Cell, peer: Peer, have_perf: bool, duration: f64) -> Sample {
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

struct LoadRun {
    json: String,
    /// Server CPU time during the run, microseconds.
    cpu_us: f64,
    syscalls: Option<f64>,
    idle_bytes_per_conn: Option<f64>,
}

impl LoadRun {
    fn field(&self, name: &str) -> f64 {
        json_field(&self.json, name)
    }
}

/// The number after `"name":` in a flat JSON object; NaN if absent.
fn json_field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    json.find(&key)
        .and_then(|at| json[at + key.len()..].split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs the load generator once against `server`, optionally under perf.
fn run_load(server: &Server, cell: &Cell, duration: f64, perf: bool, rss_empty: u64) -> LoadRun {
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
    let mut json = String::new();
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
            json = line;
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

fn median(mut values: Vec<f64>) -> f64 {
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

struct Report {
    markdown: String,
    json: String,
    chart: Vec<(usize, f64, f64)>,
}

impl Report {
    fn new(
        cells: &[Cell],
        results: &BTreeMap<(usize, Peer), Vec<Sample>>,
        runs: usize,
        took: Duration,
    ) -> Report {
        let mut md = format!(
            "Medians of {runs} alternating runs; server pinned to core {SERVER_CORE}, load generator to core {LOAD_CORE}.\n\n\
             | cell | echoloop msgs/s | tokio msgs/s | ratio | echoloop MB/s | tokio MB/s | echoloop p99 us | tokio p99 us | server CPU us/msg echoloop / tokio | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        let mut json = String::from("{\"cells\":[");
        let mut chart = Vec::new();
        let mut extras = String::new();
        // Per cell: echoloop and tokio msgs/s, then their CPU us/msg.
        let mut summary: Vec<[f64; 4]> = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let get = |peer, f: fn(&Sample) -> f64| -> f64 {
                median(
                    results
                        .get(&(i, peer))
                        .map_or(vec![], |s| s.iter().map(f).collect()),
                )
            };
            let opt = |peer, f: fn(&Sample) -> Option<f64>| -> Option<f64> {
                let v: Vec<f64> = results
                    .get(&(i, peer))
                    .map_or(vec![], |s| s.iter().filter_map(f).collect());
                (!v.is_empty()).then(|| median(v))
            };
            let (e_msgs, t_msgs) = (
                get(Peer::Echoloop, |s| s.msgs_per_sec),
                get(Peer::Tokio, |s| s.msgs_per_sec),
            );
            let (e_mb, t_mb) = (
                get(Peer::Echoloop, |s| s.mb_per_sec),
                get(Peer::Tokio, |s| s.mb_per_sec),
            );
            let (e_p99, t_p99) = (
                get(Peer::Echoloop, |s| s.p99_us),
                get(Peer::Tokio, |s| s.p99_us),
            );
            let errors: f64 = results
                .iter()
                .filter(|((c, _), _)| *c == i)
                .flat_map(|(_, s)| s.iter().map(|x| x.errors + x.mismatches))
                .sum();
            let ratio = e_msgs / t_msgs;
            let (e_cpu, t_cpu) = (
                get(Peer::Echoloop, |s| s.cpu_us_per_msg),
                get(Peer::Tokio, |s| s.cpu_us_per_msg),
            );
            summary.push([e_msgs, t_msgs, e_cpu, t_cpu]);
            md.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {:.3} / {:.3} | {:.0} |\n",
                cell.name, e_msgs, t_msgs, ratio, e_mb, t_mb, e_p99, t_p99, e_cpu, t_cpu, errors
            ));
            let e_idle = opt(Peer::Echoloop, |s| s.idle_bytes_per_conn);
            let t_idle = opt(Peer::Tokio, |s| s.idle_bytes_per_conn);
            if let (Some(e), Some(t)) = (e_idle, t_idle) {
                extras.push_str(&format!(
                    "- Idle memory per connection at 19,000 connections (server RSS held − RSS empty, ÷ 19,000): echoloop {e:.1} B, tokio {t:.1} B\n"
                ));
            }
            let e_sys = opt(Peer::Echoloop, |s| s.syscalls_per_msg);
            let t_sys = opt(Peer::Tokio, |s| s.syscalls_per_msg);
            let e_steady = opt(Peer::Echoloop, |s| s.syscalls_steady);
            let t_steady = opt(Peer::Tokio, |s| s.syscalls_steady);
            if let (Some(e), Some(t), Some(es), Some(ts)) = (e_sys, t_sys, e_steady, t_steady) {
                extras.push_str(&format!(
                    "- Server syscalls per echoed message, {} (perf raw_syscalls:sys_enter): \
                     steady state (set-up and tear-down of the 100 connections subtracted) echoloop {es:.3}, tokio {ts:.3}; \
                     whole window echoloop {e:.3}, tokio {t:.3}\n",
                    cell.name
                ));
            }
            if let Some(conns) = cell.chart_conns {
                chart.push((conns, e_msgs, t_msgs));
            }
            json.push_str(&format!(
                "{}{{\"cell\":\"{}\",\"echoloop_msgs_per_sec\":{:.1},\"tokio_msgs_per_sec\":{:.1},\"ratio\":{:.3},\
                 \"echoloop_mb_per_sec\":{:.2},\"tokio_mb_per_sec\":{:.2},\"echoloop_p99_us\":{:.0},\"tokio_p99_us\":{:.0},\
                 \"errors\":{:.0},\"echoloop_cpu_us_per_msg\":{:.4},\"tokio_cpu_us_per_msg\":{:.4},\"echoloop_idle_bytes_per_conn\":{},\"tokio_idle_bytes_per_conn\":{},\
                 \"echoloop_syscalls_per_msg\":{},\"tokio_syscalls_per_msg\":{},\
                 \"echoloop_syscalls_steady\":{},\"tokio_syscalls_steady\":{}}}",
                if i == 0 { "" } else { "," },
                cell.name,
                e_msgs,
                t_msgs,
                ratio,
                e_mb,
                t_mb,
                e_p99,
                t_p99,
                errors,
                e_cpu,
                t_cpu,
                json_num(e_idle),
                json_num(t_idle),
                json_num(e_sys),
                json_num(t_sys),
                json_num(e_steady),
                json_num(t_steady)
            ));
        }
        json.push_str(&format!(
            "],\"runs\":{runs},\"seconds\":{:.0}}}",
            took.as_secs_f64()
        ));
        md.push('\n');
        md.push_str(&extras);
        md.push_str(&scaling_table(cells, &summary));
        Report {
            markdown: md,
            json,
            chart,
        }
    }
}

/// The scaling table: each multi-loop cell beside the pinned 1-loop cell it
/// scales (when that ran too); empty without multi-loop cells.
fn scaling_table(cells: &[Cell], summary: &[[f64; 4]]) -> String {
    let mut bases: Vec<&str> = Vec::new();
    for base in cells.iter().filter_map(|c| c.scales) {
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    if bases.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nScaling: N loops (`echoloop --threads N`) against tokio `multi_thread` with N workers, \
         the load generator with N threads, nothing pinned; the 1-loop rows are the pinned cells \
         above (server on core 0, load generator on core 1). On a 2-core machine the N-loop rows \
         share both cores between servers and load generator, so they show what the layout costs \
         there, not what more cores would give.\n\n\
         | workload | loops | echoloop msgs/s | tokio msgs/s | ratio | server CPU us/msg echoloop / tokio |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for base in bases {
        let rows = cells
            .iter()
            .zip(summary)
            .filter(|(c, _)| (c.threads == 1 && c.name == base) || c.scales == Some(base));
        for (cell, [e, t, ec, tc]) in rows {
            md.push_str(&format!(
                "| {base} | {} | {e:.0} | {t:.0} | {:.2} | {ec:.3} / {tc:.3} |\n",
                cell.threads,
                e / t
            ));
        }
    }
    md
}

fn json_num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or("null".to_string(), |x| format!("{x:.3}"))
}

/// The chart's points from a results.json written by `Report::new`.
fn chart_points_from_json(text: &str) -> Vec<(usize, f64, f64)> {
    let cells = cells();
    text.split("{\"cell\":\"")
        .skip(1)
        .filter_map(|obj| {
            let name = obj.split('"').next()?;
            let conns = cells.iter().find(|c| c.name == name)?.chart_conns?;
            Some((
                conns,
                json_field(obj, "echoloop_msgs_per_sec"),
                json_field(obj, "tokio_msgs_per_sec"),
            ))
        })
        .collect()
}

/// Throughput against connection count, both servers, log-scale x axis.
fn draw_chart(
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
