//! A verifying load generator for any TCP echo server.
//!
//! One thread, one mio loop, many connections. Every connection sends its own
//! pseudo-random byte stream (a window into a shared random table, starting at
//! a per-connection offset) and checks every echoed byte against it, so a
//! server that loses, duplicates, reorders or mixes bytes is caught.
//!
//! Modes: `pingpong` (N connections, S-byte messages, D in flight), `stream`
//! (continuous send and receive), `churn` (connect, echo, close, repeat),
//! `hold` (open N, keep them, K active), `udp` (N sockets ping-pong
//! datagrams, see `udp.rs`) and `once` (send one message, print the reply).
//! `tokio-echo` and `tokio-udp-echo` run the tokio peer servers instead. Connections
//! end as `--close` says: an orderly FIN by default, or a reset.

mod cli;
mod close;
mod hold;
mod once;
mod progress;
mod report;
mod sys;
mod threads;
mod tokio_peer;
mod udp;

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use cli::{Cli, Connections, ModeArgs, Target, Timing};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

pub use close::Close;
use hold::Held;
use progress::{Label, Meter, Phase, Progress};
pub use report::Report;

/// Runs the command line `args` (without the program name) and returns the
/// process exit code: 0 on a clean run, 1 on errors or mismatches, 2 on a
/// usage error. `tokio-echo` returns only if the server fails.
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
        ModeArgs::Udp {
            target,
            conns,
            size,
            timeout,
            timing,
        } => {
            let mut plan = udp::UdpPlan::new(&target, &timing, conns, size, timeout);
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
        ModeArgs::Pingpong {
            target,
            conns,
            size,
            depth,
            timing,
            connections,
        } => {
            let plan = Plan::new(Kind::PingPong, &target, &timing, &connections).sized(
                conns,
                size,
                depth.max(1),
            );
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PingPong,
    Stream,
    Churn,
    Hold,
}

impl Kind {
    /// The mode's name on the command line and in reports.
    fn name(self) -> &'static str {
        match self {
            Kind::PingPong => "pingpong",
            Kind::Stream => "stream",
            Kind::Churn => "churn",
            Kind::Hold => "hold",
        }
    }
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
    // `hold`: how long to wait for the probes' echoes.
    probe_timeout: Duration,
    warmup: Duration,
    duration: Duration,
    sources: u8,
    max_connecting: usize,
    close: Close,
    // Threads to split the connections over, and which share this is.
    threads: usize,
    part: usize,
    // What the progress bar shows, summed over the shares.
    meter: Arc<Meter>,
}

impl Plan {
    fn new(kind: Kind, target: &Target, timing: &Timing, connections: &Connections) -> Plan {
        Plan {
            kind,
            addr: target.addr,
            conns: 1,
            size: 1,
            depth: 1,
            active: 1,
            idle: Duration::ZERO,
            probe_timeout: Duration::ZERO,
            warmup: Duration::from_secs_f64(timing.warmup.max(0.0)),
            duration: Duration::from_secs_f64(timing.duration.max(0.01)),
            sources: target.sources.max(1),
            max_connecting: connections.max_connecting.max(1),
            close: connections.close,
            threads: usize::from(connections.threads),
            part: 0,
            meter: Arc::default(),
        }
    }

    /// The plan with `conns` connections (all active) of `size`-byte
    /// messages, `depth` in flight.
    fn sized(self, conns: usize, size: usize, depth: usize) -> Plan {
        Plan {
            conns: conns.max(1),
            active: conns.max(1),
            size: size.max(1),
            depth,
            ..self
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

    /// True if `data` is what a connection at `offset` should receive at `pos`.
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
    // Stream mode's latency sample: a write in flight, as the byte count
    // that completes its echo and when it was written. One at a time.
    mark: Option<(u64, Instant)>,
    // Counted as an error or mismatch: closed with a reset.
    failed: bool,
    // `hold`: the probe came back, every byte verified.
    verified: bool,
    // Sent our FIN (`--close fin`); waiting for the server's EOF.
    closing: bool,
}

impl Client {
    /// Stops traffic on a connection that erred or mismatched.
    fn fail(&mut self) {
        self.active = false;
        self.failed = true;
    }
}

struct Stats {
    msgs: u64,
    total_msgs: u64,
    bytes: u64,
    errors: u64,
    mismatches: u64,
    // `--close fin` closes that ended in a reset or timed out.
    unclean_closes: u64,
    hist: Histogram<u64>,
}

/// Runs one load plan (or one thread's share of it) to completion. With a
/// `gate`, every share opens its connections, then waits for the others
/// before the traffic starts; the report comes with its latency histogram
/// so the shares can be merged.
fn run_part(plan: Plan, gate: Option<&threads::Gate>) -> io::Result<(Report, Histogram<u64>)> {
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
        unclean_closes: 0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
    };
    let mut next_offset: u64 = 0x9E37_79B9;
    let mut opened = 0usize; // connects started and not failed
    let mut connected = 0usize;
    let mut failed_connects = 0u64;
    // Connects started in all, so churn's new connections rotate over the
    // source addresses too.
    let mut opens = 0usize;

    // Phase 1: open the connections, a bounded number of connects at a time.
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while connected < plan.conns {
        while opened < plan.conns && opened - connected < plan.max_connecting {
            open_one(&poll, &mut clients, &plan, opens, &mut next_offset)?;
            opened += 1;
            opens += 1;
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
                    plan.meter.add_connected(1);
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
                    close::reset(&poll, &mut clients, key);
                    opened -= 1;
                }
            }
        }
    }
    let held = if plan.kind == Kind::Hold {
        let held = hold::probe(
            &mut poll,
            &mut events,
            &mut clients,
            &table,
            &mut buf,
            &plan,
            &mut stats,
        )?;
        stats.errors += held.timed_out as u64;
        plan.meter.add_held(held.verified as u64);
        held
    } else {
        Held {
            verified: clients.len(),
            ..Held::default()
        }
    };
    let held_all = match gate {
        Some(gate) => gate.arrive(held)?,
        None => held,
    };
    if plan.kind == Kind::Hold {
        if plan.part == 0 {
            plan.meter.set_phase(Phase::Idle);
            println!("{}", held_all.line());
            let _ = io::stdout().flush();
        }
        hold::idle(&mut poll, &mut events, &mut clients, plan.idle, &mut stats)?;
    }

    // Phase 2: traffic. Each active client gets its first goal.
    let now = Instant::now();
    let active = if plan.kind == Kind::Hold {
        plan.active
    } else {
        clients.len()
    };
    let held_now = clients
        .iter_mut()
        .filter(|(_, c)| c.verified || plan.kind != Kind::Hold);
    for (_, client) in held_now.take(active) {
        client.active = true;
        client.started = now;
        issue_initial(client, &plan, now);
    }
    let keys: Vec<usize> = clients
        .iter()
        .filter(|(_, c)| c.active)
        .map(|(k, _)| k)
        .collect();
    // Clients whose last pass stopped with bytes left to read: no new edge
    // may come for them, so they get another pass next turn.
    let mut ready: VecDeque<usize> = VecDeque::new();
    for key in keys {
        let pass = pump(
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
        if pass == Pass::Yielded {
            ready.push_back(key);
        }
    }
    // This turn's work: (client, hung up) from the events, then `ready`.
    let mut turn: Vec<(usize, bool)> = Vec::with_capacity(4096);
    let measure_from = Instant::now() + plan.warmup;
    let measure_until = measure_from + plan.duration;
    let mut measuring = false;
    let mut running = true;
    let drain_deadline = measure_until + Duration::from_secs(10);
    plan.meter.set_phase(Phase::Traffic);
    let mut shown = 0; // messages already added to the meter
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
            plan.meter.set_phase(Phase::Closing);
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
        let wait = if ready.is_empty() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        poll.poll(&mut events, Some(wait))?;
        let now = Instant::now();
        turn.clear();
        turn.extend(
            events
                .iter()
                .map(|e| (e.token().0, e.is_read_closed() || e.is_error())),
        );
        // A key may have been reused by a new client since it was queued;
        // an extra pass costs that client one failed read.
        turn.extend(ready.drain(..).map(|key| (key, false)));
        for &(key, hung_up) in &turn {
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            if client.closing {
                // Churn with `--close fin`: waiting for the server's EOF.
                if close::settle(&poll, &mut clients, key, &table, &mut buf, &mut stats) && running
                {
                    open_one(&poll, &mut clients, &plan, opens, &mut next_offset)?;
                    opens += 1;
                }
                continue;
            }
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
                        close::reset(&poll, &mut clients, key);
                        if running {
                            open_one(&poll, &mut clients, &plan, opens, &mut next_offset)?;
                            opens += 1;
                        }
                        continue;
                    }
                }
            }
            if !client.active {
                if hung_up {
                    stats.errors += 1;
                    close::reset(&poll, &mut clients, key);
                }
                continue;
            }
            let record = measuring && running;
            let pass = pump(
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
            if pass == Pass::Yielded {
                ready.push_back(key);
            }
            if pass == Pass::Finished {
                // Churn: one cycle done; close the connection and, once it
                // is closed, open another.
                let closed = close::begin(
                    &poll,
                    &mut clients,
                    key,
                    plan.close,
                    &table,
                    &mut buf,
                    &mut stats,
                );
                if closed && running {
                    open_one(&poll, &mut clients, &plan, opens, &mut next_offset)?;
                    opens += 1;
                }
            }
        }
        plan.meter.add_done(stats.total_msgs - shown);
        shown = stats.total_msgs;
    }
    close::all(
        &mut poll,
        &mut events,
        &mut clients,
        plan.close,
        &table,
        &mut buf,
        &mut stats,
    )?;
    let mut report = Report {
        mode: plan.kind.name().to_string(),
        conns: plan.conns,
        active,
        size: plan.size,
        depth: plan.depth,
        seconds: plan.duration.as_secs_f64(),
        msgs: stats.msgs,
        bytes: stats.bytes,
        p50_us: 0,
        p99_us: 0,
        p999_us: 0,
        max_us: 0,
        latency_samples: 0,
        errors: stats.errors,
        mismatches: stats.mismatches,
        held: held.verified,
        probes_failed: held.failed,
        probes_timed_out: held.timed_out,
        total_msgs: stats.total_msgs,
        close: plan.close,
        unclean_closes: stats.unclean_closes,
        sent: 0,
        lost: 0,
        late: 0,
        threads: 1,
    };
    report.set_latency(&stats.hist);
    Ok((report, stats.hist))
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

/// How a pass of [`pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The socket would block (or the client failed): wait for an event.
    Blocked,
    /// [`READS_PER_PASS`] full reads and maybe more to read: pump again
    /// next turn, since no new edge may come.
    Yielded,
    /// Churn: the cycle is complete (or failed); close the connection.
    Finished,
}

/// Full reads one pass may do before it yields, so a client whose echoes
/// never stop coming cannot keep the loop (and the clock checks) to itself.
const READS_PER_PASS: usize = 16;

/// Writes what is owed and reads what has come back, for one client.
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
) -> Pass {
    let client = &mut clients[key];
    // A failed client ends a churn cycle; in other modes it just stops.
    let failed = if plan.kind == Kind::Churn {
        Pass::Finished
    } else {
        Pass::Blocked
    };
    // Ping-pong writes every owed message in one call (pipelining, as
    // redis-benchmark -P does); stream writes S-byte pieces.
    let chunk = if plan.kind == Kind::Stream {
        plan.size.min(MAX_CHUNK)
    } else {
        MAX_CHUNK
    };
    // One pass reads until the socket is empty, then writes what that
    // owes and returns; a client must not keep the loop to itself, so a
    // pass that never finds the socket empty stops after READS_PER_PASS.
    let mut drained = false;
    for _ in 0..READS_PER_PASS {
        // Write what we owe.
        while client.tx < client.goal {
            let n = ((client.goal - client.tx) as usize).min(chunk);
            match client
                .stream
                .write(table.slice(client.offset, client.tx, n))
            {
                Ok(w) => {
                    client.tx += w as u64;
                    if plan.kind == Kind::Stream && client.mark.is_none() {
                        // A fresh clock, not `now`: one pass of a busy
                        // stream can last long enough to see this echo.
                        client.mark = Some((client.tx, Instant::now()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    stats.errors += 1;
                    client.fail();
                    return failed;
                }
            }
        }
        if drained {
            return Pass::Blocked;
        }
        // Read what came back.
        let n = match client.stream.read(buf) {
            Ok(0) => {
                stats.errors += 1;
                client.fail();
                return failed;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Pass::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                stats.errors += 1;
                client.fail();
                return failed;
            }
        };
        if client.rx + n as u64 > client.tx || !table.matches(client.offset, client.rx, &buf[..n]) {
            stats.mismatches += 1;
            client.fail();
            return failed;
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
                if let Some((end, at)) = client.mark {
                    if client.rx >= end {
                        client.mark = None;
                        if record {
                            let us = at.elapsed().as_micros().max(1);
                            let _ = stats.hist.record(us as u64);
                        }
                    }
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
                    return Pass::Finished;
                }
            }
        }
        // On Linux a short read means the socket is empty for now; the
        // echo of what we write next raises a new edge.
        drained = n < buf.len();
    }
    Pass::Yielded
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
    let open = clients.len();
    let socket = Socket::new(
        Domain::for_address(plan.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| sys::explain(e, open))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if plan.addr.is_ipv4() && plan.addr.ip().is_loopback() && plan.sources > 1 {
        // Pick the source address but let connect() pick the port.
        sys::bind_address_no_port(&socket);
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % plan.sources as usize) as u8);
        socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    }
    match socket.connect(&plan.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(sys::explain(e, open)),
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
        mark: None,
        failed: false,
        verified: false,
        closing: false,
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
