//! A verifying load generator for any TCP echo server.
//!
//! One thread, one mio loop, many connections. Every connection sends its own
//! pseudo-random byte stream (a window into a shared random table, starting at
//! a per-connection offset) and checks every echoed byte against it, so a
//! server that loses, duplicates, reorders or mixes bytes is caught.
//!
//! Modes: `pingpong` (N connections, S-byte messages, D in flight), `stream`
//! (continuous send and receive), `churn` (connect, echo, close, repeat),
//! `hold` (open N, keep them, K active) and `once` (send one message, print
//! the reply). Runs end with resets (SO_LINGER 0) so no TIME_WAIT is left.

pub mod tokio_peer;

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// Command line of the load generator.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Verifying load generator for TCP echo servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: ModeArgs,
}

/// Options shared by every load mode.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Echo server address.
    #[arg(long, default_value = "127.0.0.1:7007")]
    pub addr: SocketAddr,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ...
    /// (each has its own ephemeral ports). Ignored for IPv6 targets.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Most connects in progress at once while opening connections.
    #[arg(long, default_value_t = 256)]
    pub max_connecting: usize,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The load modes.
#[derive(Debug, Subcommand)]
pub enum ModeArgs {
    /// N connections each keep D messages of S bytes in flight; latency is
    /// the time from sending a message to receiving its last echoed byte.
    Pingpong {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, short = 'c', default_value_t = 100)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
        /// Messages in flight per connection (pipeline depth).
        #[arg(long, short = 'd', default_value_t = 1)]
        depth: usize,
    },
    /// N connections send and receive continuously in S-byte writes.
    Stream {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'c', default_value_t = 10)]
        conns: usize,
        #[arg(long, short = 's', default_value_t = 65536)]
        size: usize,
    },
    /// P clients each connect, echo S bytes, close (reset), and repeat.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Clients working in parallel.
        #[arg(long, short = 'p', default_value_t = 50)]
        parallel: usize,
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
    },
    /// Open N connections and keep them; after --idle seconds, K of them do
    /// ping-pong for --duration. Prints `held N` once all are open.
    Hold {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'c', default_value_t = 10_000)]
        conns: usize,
        /// Connections that do ping-pong once all are open.
        #[arg(long, short = 'k', default_value_t = 0)]
        active: usize,
        /// Seconds to stay idle once all are open.
        #[arg(long, default_value_t = 1.0)]
        idle: f64,
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
    },
    /// Send one message (the argument, or standard input), print the reply,
    /// exit 1 if it differs. The first check users reach for.
    Once {
        #[arg(long, default_value = "127.0.0.1:7007")]
        addr: SocketAddr,
        /// The message; standard input when absent.
        message: Option<String>,
    },
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub mode: String,
    pub conns: usize,
    pub size: usize,
    pub depth: usize,
    pub seconds: f64,
    /// Messages echoed completely during the measured window.
    pub msgs: u64,
    /// Echoed bytes received during the measured window.
    pub bytes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Connections that failed (refused, reset, early EOF).
    pub errors: u64,
    /// Echoed bytes that differed from what was sent.
    pub mismatches: u64,
    /// Connections open at the peak.
    pub held: usize,
    /// Messages echoed over the whole traffic phase (warm-up and drain
    /// included), to divide a server's syscall count by.
    pub total_msgs: u64,
}

impl Report {
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.seconds.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"conns\":{},\"size\":{},\"depth\":{},\"seconds\":{:.3},\"msgs\":{},\
             \"bytes\":{},\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.2},\"p50_us\":{},\"p99_us\":{},\
             \"p999_us\":{},\"max_us\":{},\"errors\":{},\"mismatches\":{},\"held\":{},\"total_msgs\":{}}}",
            self.mode,
            self.conns,
            self.size,
            self.depth,
            self.seconds,
            self.msgs,
            self.bytes,
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors,
            self.mismatches,
            self.held,
            self.total_msgs
        )
    }

    /// A short human-readable table.
    pub fn to_text(&self) -> String {
        format!(
            "mode {} conns {} size {} depth {}\n  {:.0} msgs/s, {:.1} MB/s over {:.2} s ({} msgs)\n  \
             latency p50 {} us, p99 {} us, p99.9 {} us, max {} us\n  errors {}, mismatches {}, held {}",
            self.mode,
            self.conns,
            self.size,
            self.depth,
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.seconds,
            self.msgs,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors,
            self.mismatches,
            self.held
        )
    }
}

/// Runs the command line `args` (without the program name) and returns the
/// process exit code: 0 on a clean run, 1 on errors or mismatches.
pub fn main_with_args<I: IntoIterator<Item = String>>(args: I) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once("loadgen".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    let (json, result) = match cli.mode {
        ModeArgs::Once { addr, message } => return once(addr, message),
        ModeArgs::Pingpong {
            common,
            conns,
            size,
            depth,
        } => {
            let plan = Plan::new(Kind::PingPong, &common, conns, size, depth.max(1));
            (common.json, run(plan))
        }
        ModeArgs::Stream {
            common,
            conns,
            size,
        } => (
            common.json,
            run(Plan::new(Kind::Stream, &common, conns, size, 1)),
        ),
        ModeArgs::Churn {
            common,
            parallel,
            size,
        } => (
            common.json,
            run(Plan::new(Kind::Churn, &common, parallel, size, 1)),
        ),
        ModeArgs::Hold {
            common,
            conns,
            active,
            idle,
            size,
        } => {
            let mut plan = Plan::new(Kind::Hold, &common, conns, size, 1);
            plan.active = active.min(conns);
            plan.idle = Duration::from_secs_f64(idle.max(0.0));
            (common.json, run(plan))
        }
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

/// `once`: connect, send, print what came back, compare.
fn once(addr: SocketAddr, message: Option<String>) -> i32 {
    let message = match message {
        Some(m) => m.into_bytes(),
        None => {
            let mut all = Vec::new();
            if let Err(e) = io::stdin().read_to_end(&mut all) {
                eprintln!("loadgen: error: reading stdin: {e}");
                return 1;
            }
            all
        }
    };
    let result = (|| -> io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let msg = message.clone();
        let sender = std::thread::spawn(move || -> io::Result<()> {
            let mut writer = writer;
            writer.write_all(&msg)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        while reply.len() < message.len() {
            match stream.read(&mut buf)? {
                0 => break,
                n => reply.extend_from_slice(&buf[..n]),
            }
        }
        sender
            .join()
            .map_err(|_| io::Error::other("sender panicked"))??;
        Ok(reply)
    })();
    match result {
        Ok(reply) => {
            let _ = io::stdout().write_all(&reply);
            if !reply.ends_with(b"\n") && io::stdout().is_terminal() {
                println!();
            }
            if reply == message {
                0
            } else {
                eprintln!(
                    "loadgen: reply differs: sent {} bytes, got {}",
                    message.len(),
                    reply.len()
                );
                1
            }
        }
        Err(e) => {
            eprintln!("loadgen: error: {addr}: {e}");
            1
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PingPong,
    Stream,
    Churn,
    Hold,
}

#[derive(Debug, Clone)]
struct Plan {
    kind: Kind,
    addr: SocketAddr,
    conns: usize,
    size: usize,
    depth: usize,
    active: usize,
    idle: Duration,
    warmup: Duration,
    duration: Duration,
    sources: u8,
    max_connecting: usize,
}

impl Plan {
    fn new(kind: Kind, c: &Common, conns: usize, size: usize, depth: usize) -> Plan {
        Plan {
            kind,
            addr: c.addr,
            conns: conns.max(1),
            size: size.max(1),
            depth,
            active: conns,
            idle: Duration::ZERO,
            warmup: Duration::from_secs_f64(c.warmup.max(0.0)),
            duration: Duration::from_secs_f64(c.duration.max(0.01)),
            sources: c.sources.max(1),
            max_connecting: c.max_connecting.max(1),
        }
    }
}

/// The shared random table every connection's byte stream is cut from:
/// byte `i` of connection `c` is `table[(offset(c) + i) % PERIOD]`. The table
/// is longer than the period by one maximal chunk, so any chunk is one slice.
struct PatternTable {
    table: Vec<u8>,
}

const PERIOD: usize = (1 << 20) + 7; // not a power of two: chunks drift across it
const MAX_CHUNK: usize = 256 * 1024;

impl PatternTable {
    fn new() -> PatternTable {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let table = (0..PERIOD + MAX_CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect::<Vec<u8>>();
        // Make the tail repeat the head, so slices wrap seamlessly.
        let mut table = table;
        let (head, tail) = table.split_at_mut(PERIOD);
        tail.copy_from_slice(&head[..MAX_CHUNK]);
        PatternTable { table }
    }

    /// `n <= MAX_CHUNK` bytes of the stream starting at `offset + pos`.
    fn slice(&self, offset: u64, pos: u64, n: usize) -> &[u8] {
        let start = ((offset + pos) % PERIOD as u64) as usize;
        &self.table[start..start + n]
    }

    fn matches(&self, offset: u64, pos: u64, data: &[u8]) -> bool {
        data.chunks(MAX_CHUNK).enumerate().all(|(i, chunk)| {
            chunk == self.slice(offset, pos + (i * MAX_CHUNK) as u64, chunk.len())
        })
    }
}

struct Client {
    stream: TcpStream,
    offset: u64,
    connected: bool,
    // Bytes written, bytes we want written by now, bytes echoed back.
    tx: u64,
    goal: u64,
    rx: u64,
    // When each message in flight was issued (ping-pong and hold).
    issued: VecDeque<Instant>,
    started: Instant,
    active: bool,
}

struct Stats {
    msgs: u64,
    total_msgs: u64,
    bytes: u64,
    errors: u64,
    mismatches: u64,
    hist: Histogram<u64>,
}

/// Runs one load plan to completion.
fn run(plan: Plan) -> io::Result<Report> {
    let table = PatternTable::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut clients: Slab<Client> = Slab::with_capacity(plan.conns);
    // 64 KiB: stays in L2 while the kernel copies into it and memcmp reads
    // it back; a 256 KiB buffer made stream runs about 25 % slower here.
    let mut buf = vec![0u8; 64 * 1024];
    let mut stats = Stats {
        msgs: 0,
        total_msgs: 0,
        bytes: 0,
        errors: 0,
        mismatches: 0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
    };
    let mut next_offset: u64 = 0x9E37_79B9;
    let mut opened = 0usize; // connects started and not failed
    let mut connected = 0usize;
    let mut failed_connects = 0u64;

    // Phase 1: open the connections, a bounded number of connects at a time.
    let bar = progress_bar(plan.conns as u64, plan.conns >= 1000, "connecting");
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while connected < plan.conns {
        while opened < plan.conns && opened - connected < plan.max_connecting {
            open_one(&poll, &mut clients, &plan, opened, &mut next_offset)?;
            opened += 1;
        }
        if Instant::now() > open_deadline {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("only {connected} of {} connections opened", plan.conns),
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            if client.connected {
                continue;
            }
            match connect_outcome(&client.stream) {
                Some(Ok(())) => {
                    client.connected = true;
                    connected += 1;
                }
                None => {}
                Some(Err(e)) => {
                    // Retried: a refused or reset connect under a storm of
                    // connects is the server's backlog, not a wrong echo.
                    failed_connects += 1;
                    if failed_connects > 1000 {
                        return Err(io::Error::other(format!(
                            "too many failed connects, last: {e}"
                        )));
                    }
                    close(&poll, &mut clients, key);
                    opened -= 1;
                }
            }
        }
        if let Some(bar) = &bar {
            bar.set_position(connected as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let held = clients.len();
    if plan.kind == Kind::Hold {
        println!("held {held}");
        let _ = io::stdout().flush();
        let idle_until = Instant::now() + plan.idle;
        while Instant::now() < idle_until {
            poll.poll(
                &mut events,
                Some(idle_until.saturating_duration_since(Instant::now())),
            )?;
            for event in events.iter() {
                // An idle connection should hear nothing: EOF is an error.
                if event.is_read_closed() || event.is_error() {
                    stats.errors += 1;
                }
            }
        }
    }

    // Phase 2: traffic. Each active client gets its first goal.
    let now = Instant::now();
    let active = if plan.kind == Kind::Hold {
        plan.active
    } else {
        clients.len()
    };
    for (_, client) in clients.iter_mut().take(active) {
        client.active = true;
        client.started = now;
        issue_initial(client, &plan, now);
    }
    let keys: Vec<usize> = clients
        .iter()
        .filter(|(_, c)| c.active)
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        pump(
            key,
            &mut clients,
            &table,
            &mut buf,
            &plan,
            &mut stats,
            false,
            true,
            now,
        );
    }
    let measure_from = Instant::now() + plan.warmup;
    let measure_until = measure_from + plan.duration;
    let mut measuring = false;
    let mut running = true;
    let drain_deadline = measure_until + Duration::from_secs(10);
    let total_ms = (plan.warmup + plan.duration).as_millis() as u64;
    let bar = progress_bar(total_ms, plan.duration >= Duration::from_secs(5), "running");
    let traffic_started = Instant::now();
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            stats.hist.reset();
            stats.msgs = 0;
            stats.bytes = 0;
        }
        if running && now >= measure_until {
            running = false;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            // Stop issuing; let what is in flight come back and be verified.
            for (_, c) in clients.iter_mut() {
                if plan.kind == Kind::Stream {
                    c.goal = c.tx;
                }
            }
        }
        if !running {
            let outstanding = clients
                .iter()
                .any(|(_, c)| c.active && c.connected && c.rx < c.tx);
            if !outstanding || now >= drain_deadline {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        let now = Instant::now();
        for event in events.iter() {
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            if !client.connected {
                // Churn: a connect finished (or failed).
                match connect_outcome(&client.stream) {
                    Some(Ok(())) => {
                        client.connected = true;
                        client.active = true;
                        issue_initial(client, &plan, now);
                    }
                    None => continue,
                    Some(Err(_)) => {
                        stats.errors += 1;
                        close(&poll, &mut clients, key);
                        if running {
                            open_one(&poll, &mut clients, &plan, 0, &mut next_offset)?;
                        }
                        continue;
                    }
                }
            }
            if !client.active {
                if event.is_read_closed() || event.is_error() {
                    stats.errors += 1;
                    close(&poll, &mut clients, key);
                }
                continue;
            }
            let record = measuring && running;
            let finished = pump(
                key,
                &mut clients,
                &table,
                &mut buf,
                &plan,
                &mut stats,
                record,
                running,
                now,
            );
            if finished {
                // Churn: one cycle done; reset the connection and open another.
                close(&poll, &mut clients, key);
                if running {
                    open_one(&poll, &mut clients, &plan, 0, &mut next_offset)?;
                }
            }
        }
        if let (Some(bar), true) = (&bar, running) {
            bar.set_position(now.saturating_duration_since(traffic_started).as_millis() as u64);
        }
    }
    // End with resets so no TIME_WAIT is left behind for the next run.
    let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
    for key in keys {
        close(&poll, &mut clients, key);
    }
    let h = &stats.hist;
    Ok(Report {
        mode: format!("{:?}", plan.kind).to_lowercase(),
        conns: if plan.kind == Kind::Hold {
            plan.active
        } else {
            plan.conns
        },
        size: plan.size,
        depth: plan.depth,
        seconds: plan.duration.as_secs_f64(),
        msgs: stats.msgs,
        bytes: stats.bytes,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        errors: stats.errors,
        mismatches: stats.mismatches,
        held,
        total_msgs: stats.total_msgs,
    })
}

/// A progress bar on stderr, only on a terminal and only for long phases.
fn progress_bar(len: u64, long: bool, what: &'static str) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() || !long {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_message(what);
    Some(bar)
}

fn issue_initial(client: &mut Client, plan: &Plan, now: Instant) {
    match plan.kind {
        Kind::PingPong | Kind::Hold => {
            for _ in 0..plan.depth {
                client.goal += plan.size as u64;
                client.issued.push_back(now);
            }
        }
        Kind::Stream => client.goal = stream_window(plan),
        Kind::Churn => {
            client.goal = plan.size as u64;
            client.issued.push_back(client.started);
        }
    }
}

/// Stream mode keeps this many bytes beyond what has come back in flight.
fn stream_window(plan: &Plan) -> u64 {
    (plan.size as u64 * 4).max(1 << 20)
}

/// Writes what is owed and reads what has come back, for one client.
/// Returns true when a churn cycle is complete.
#[allow(clippy::too_many_arguments)]
fn pump(
    key: usize,
    clients: &mut Slab<Client>,
    table: &PatternTable,
    buf: &mut [u8],
    plan: &Plan,
    stats: &mut Stats,
    record: bool,
    running: bool,
    now: Instant,
) -> bool {
    let client = &mut clients[key];
    // Ping-pong writes every owed message in one call (pipelining, as
    // redis-benchmark -P does); stream writes S-byte pieces.
    let chunk = if plan.kind == Kind::Stream {
        plan.size.min(MAX_CHUNK)
    } else {
        MAX_CHUNK
    };
    // One pass reads until the socket is empty, then writes what that
    // owes and returns: a client must not keep the loop to itself.
    let mut drained = false;
    loop {
        // Write what we owe.
        while client.tx < client.goal {
            let n = ((client.goal - client.tx) as usize).min(chunk);
            match client
                .stream
                .write(table.slice(client.offset, client.tx, n))
            {
                Ok(w) => client.tx += w as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    stats.errors += 1;
                    client.active = false;
                    return plan.kind == Kind::Churn;
                }
            }
        }
        if drained {
            return false;
        }
        // Read what came back.
        let n = match client.stream.read(buf) {
            Ok(0) => {
                stats.errors += 1;
                client.active = false;
                return plan.kind == Kind::Churn;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                stats.errors += 1;
                client.active = false;
                return plan.kind == Kind::Churn;
            }
        };
        if client.rx + n as u64 > client.tx || !table.matches(client.offset, client.rx, &buf[..n]) {
            stats.mismatches += 1;
            client.active = false;
            return plan.kind == Kind::Churn;
        }
        let before = client.rx;
        client.rx += n as u64;
        if record {
            stats.bytes += n as u64;
        }
        let size = plan.size as u64;
        match plan.kind {
            Kind::PingPong | Kind::Hold => {
                // Each message boundary crossed completes one message.
                let done = client.rx / size - before / size;
                stats.total_msgs += done;
                for _ in 0..done {
                    if let Some(at) = client.issued.pop_front() {
                        if record {
                            stats.msgs += 1;
                            let _ =
                                stats.hist.record(
                                    now.saturating_duration_since(at).as_micros().max(1) as u64,
                                );
                        }
                    }
                    if running {
                        client.goal += size;
                        client.issued.push_back(now);
                    }
                }
            }
            Kind::Stream => {
                stats.total_msgs += client.rx / size - before / size;
                if record {
                    stats.msgs += client.rx / size - before / size;
                }
                if running {
                    client.goal = client.rx + stream_window(plan);
                }
            }
            Kind::Churn => {
                if client.rx >= size {
                    stats.total_msgs += 1;
                    if record {
                        stats.msgs += 1;
                        let _ = stats.hist.record(
                            now.saturating_duration_since(client.started)
                                .as_micros()
                                .max(1) as u64,
                        );
                    }
                    return true;
                }
            }
        }
        // On Linux a short read means the socket is empty for now; the
        // echo of what we write next raises a new edge.
        drained = n < buf.len();
    }
}

/// Starts one non-blocking connect, from source address 127.0.0.(1 + i % sources).
fn open_one(
    poll: &Poll,
    clients: &mut Slab<Client>,
    plan: &Plan,
    i: usize,
    next_offset: &mut u64,
) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(plan.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if plan.addr.is_ipv4() && plan.addr.ip().is_loopback() && plan.sources > 1 {
        // Pick the source address but let connect() pick the port, so each
        // source has the whole ephemeral range per destination.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` for the given length only.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % plan.sources as usize) as u8);
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    }
    match socket.connect(&plan.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::from_std(socket.into());
    let entry = clients.vacant_entry();
    poll.registry().register(
        &mut stream,
        Token(entry.key()),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    *next_offset = next_offset
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    entry.insert(Client {
        stream,
        offset: *next_offset % PERIOD as u64,
        connected: false,
        tx: 0,
        goal: 0,
        rx: 0,
        issued: VecDeque::new(),
        started: Instant::now(),
        active: false,
    });
    Ok(())
}

/// How a non-blocking connect ended: `None` while it is still in progress.
fn connect_outcome(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(None) if stream.peer_addr().is_ok() => Some(Ok(())),
        Ok(None) => None,
        Ok(Some(e)) | Err(e) => Some(Err(e)),
    }
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT for the next run.
fn close(poll: &Poll, clients: &mut Slab<Client>, key: usize) {
    if !clients.contains(key) {
        return;
    }
    let mut client = clients.remove(key);
    let _ = poll.registry().deregister(&mut client.stream);
    let socket = socket2::SockRef::from(&client.stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
}
