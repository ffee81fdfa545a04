//! `udp` mode: N sockets ping-pong datagrams of S bytes with a UDP echo
//! server, one datagram in flight per socket.
//!
//! Datagram `seq` of socket `id` is a slice of the shared pattern table at an
//! offset hashed from `(id, seq)`, so an echo that is corrupted, truncated,
//! or meant for another socket (or another sequence number) differs from
//! what the socket expects. A reply that matches one of the socket's last
//! [`LATE_WINDOW`] timed-out datagrams is a late echo, not a mismatch.
//!
//! With `--rate`, each socket sends on a schedule (see `schedule.rs`): the
//! next datagram goes at its scheduled time, or as soon as the one before
//! it is echoed or lost if that is later, and its latency counts from the
//! schedule. Datagrams still in flight when the window ends are not waited
//! for.
//!
//! Accounting is retransmit-free: a datagram not echoed within `--timeout`
//! is counted as lost and the socket sends its next one. Each datagram is
//! counted in the window it was sent (sent, lost) or echoed (echoed), so
//! sent = echoed + lost to within one datagram per socket at each edge of
//! the window. Exit status 1 on mismatches, socket errors, or no echo at
//! all. For sizes of a few bytes a wrong datagram can match by chance (1 in
//! 256 for one byte); at 16 bytes and more, practically never.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Target, Timing};
use crate::pattern::PatternTable;
use crate::progress::{Meter, Phase};
use crate::schedule::{Schedule, Timers};
use crate::Report;

/// Late echoes recognised per socket: its last this many lost datagrams.
const LATE_WINDOW: usize = 8;

/// Largest datagram over IPv6 (IPv4 allows 65,507).
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// What to run.
#[derive(Debug, Clone)]
pub struct UdpPlan {
    pub addr: SocketAddr,
    pub sockets: usize,
    pub size: usize,
    pub timeout: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub sources: u8,
    /// Open loop: datagrams per second over all sockets.
    pub rate: Option<f64>,
    pub(crate) meter: Arc<Meter>,
}

impl UdpPlan {
    pub(crate) fn new(
        target: &Target,
        timing: &Timing,
        sockets: usize,
        size: usize,
        timeout_ms: u64,
    ) -> UdpPlan {
        UdpPlan {
            addr: target.addr,
            sockets: sockets.max(1),
            size,
            timeout: Duration::from_millis(timeout_ms.max(1)),
            warmup: Duration::from_secs_f64(timing.warmup.max(0.0)),
            duration: Duration::from_secs_f64(timing.duration.max(0.01)),
            sources: target.sources.max(1),
            rate: None,
            meter: Arc::default(),
        }
    }
}

struct Peer {
    socket: UdpSocket,
    id: u64,
    // The datagram in flight: its sequence number and when it was sent;
    // None while it waits: for its scheduled time, or (after a send that
    // would block) for the next sweep.
    seq: u64,
    sent_at: Option<Instant>,
    // Open loop: when this socket's datagrams are due.
    schedule: Option<Schedule>,
    // Sequence numbers of the last datagrams counted as lost.
    lost: [u64; LATE_WINDOW],
    lost_next: usize,
    failed: bool,
}

impl Peer {
    /// Open loop: datagram `seq` is not due yet at `now`.
    fn early(&self, now: Instant) -> bool {
        self.schedule.is_some_and(|s| s.at(self.seq) > now)
    }
}

#[derive(Default)]
struct Counts {
    sent: u64,
    scheduled: u64,
    echoed: u64,
    lost: u64,
    late: u64,
    bytes: u64,
    errors: u64,
    mismatches: u64,
    total_echoed: u64,
    max_send_lag: Duration,
}

/// Where datagram `seq` of socket `id` starts in the pattern table.
fn offset(id: u64, seq: u64) -> u64 {
    // splitmix64 of (id, seq): neighbouring sequence numbers and sockets
    // land far apart.
    let mut z = (id << 40 ^ seq).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One run: the plan, its sockets and what they counted.
struct Run<'a> {
    plan: &'a UdpPlan,
    table: PatternTable,
    buf: Vec<u8>,
    hist: Histogram<u64>,
    c: Counts,
    measure_from: Instant,
    measure_to: Instant,
    timers: Option<Timers>,
}

/// Runs the plan and reports what it measured.
pub fn run(plan: &UdpPlan) -> io::Result<Report> {
    if plan.size > MAX_UDP_PAYLOAD {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "-s {} is larger than a datagram ({MAX_UDP_PAYLOAD} bytes at most)",
                plan.size
            ),
        ));
    }
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let mut run = Run {
        plan,
        table: PatternTable::new(),
        buf: vec![0u8; 65_536],
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
        c: Counts::default(),
        measure_from,
        measure_to: measure_from + plan.duration,
        timers: match plan.rate {
            Some(_) => Some(Timers::new(&poll)?),
            None => None,
        },
    };
    let mut peers = run.open(&poll, started)?;
    let tick = plan.timeout.min(Duration::from_millis(10));
    let mut next_sweep = started;
    plan.meter.set_phase(Phase::Traffic);
    let mut now = started;
    while now < run.measure_to {
        let due_now = match run.timers.as_mut() {
            Some(timers) => timers.arm(now)?,
            None => false,
        };
        let wait = if due_now { Duration::ZERO } else { tick };
        // Interrupted (a signal, a stop and continue): a turn with no
        // events, which left the events empty.
        match poll.poll(&mut events, Some(wait)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => other?,
        }
        now = Instant::now();
        let before = run.c.total_echoed;
        for event in events.iter() {
            if let Some(p) = peers.get_mut(event.token().0) {
                run.receive(p, now);
            }
        }
        plan.meter.add_done(run.c.total_echoed - before);
        run.send_due(&mut peers, now);
        if now >= next_sweep {
            next_sweep = now + tick;
            run.sweep(&mut peers, now);
        }
    }
    Ok(run.report(&peers))
}

impl Run<'_> {
    /// Binds the sockets and sends each one's first datagram (open loop:
    /// schedules it).
    fn open(&mut self, poll: &Poll, started: Instant) -> io::Result<Vec<Peer>> {
        let plan = self.plan;
        let mut peers = Vec::with_capacity(plan.sockets);
        for i in 0..plan.sockets {
            let mut socket =
                UdpSocket::bind(source_for(plan, i)).map_err(|e| crate::sys::explain(e, i))?;
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            let schedule = plan
                .rate
                .map(|rate| Schedule::new(started, i, plan.sockets, rate));
            if let Some(s) = schedule {
                self.c.scheduled += s.before(self.measure_to) - s.before(self.measure_from);
            }
            peers.push(Peer {
                socket,
                id: i as u64,
                seq: 0,
                sent_at: None,
                schedule,
                lost: [u64::MAX; LATE_WINDOW],
                lost_next: 0,
                failed: false,
            });
        }
        for p in &mut peers {
            self.next(p, started);
        }
        Ok(peers)
    }

    /// Sends datagram `p.seq` now, or, open loop, at its scheduled time.
    fn next(&mut self, p: &mut Peer, now: Instant) {
        match (p.schedule, self.timers.as_mut()) {
            (Some(s), Some(timers)) if p.early(now) => {
                p.sent_at = None;
                timers.push(s.at(p.seq), p.id as usize);
            }
            _ => self.send(p, now),
        }
    }

    /// Open loop: sends every datagram whose time has come.
    fn send_due(&mut self, peers: &mut [Peer], now: Instant) {
        let Some(mut timers) = self.timers.take() else {
            return;
        };
        while let Some(i) = timers.pop_due(now) {
            if let Some(p) = peers
                .get_mut(i)
                .filter(|p| !p.failed && p.sent_at.is_none())
            {
                self.send(p, now);
            }
        }
        self.timers = Some(timers);
    }

    /// Retries sends that would block and counts datagrams not echoed in
    /// time as lost, moving their sockets on.
    fn sweep(&mut self, peers: &mut [Peer], now: Instant) {
        let measuring = now >= self.measure_from;
        for p in peers.iter_mut().filter(|p| !p.failed) {
            match p.sent_at {
                // The last send would block: try again.
                None if !p.early(now) => self.send(p, now),
                None => {}
                Some(at) if now.saturating_duration_since(at) >= self.plan.timeout => {
                    if measuring {
                        self.c.lost += 1;
                    }
                    p.lost[p.lost_next] = p.seq;
                    p.lost_next = (p.lost_next + 1) % LATE_WINDOW;
                    p.seq += 1;
                    self.next(p, now);
                }
                Some(_) => {}
            }
        }
    }

    /// Sends datagram `p.seq`; a send that would block is retried next sweep.
    fn send(&mut self, p: &mut Peer, now: Instant) {
        let msg = self.table.slice(offset(p.id, p.seq), 0, self.plan.size);
        match p.socket.send_to(msg, self.plan.addr) {
            Ok(_) => {
                p.sent_at = Some(now);
                let counts = match p.schedule {
                    Some(s) => {
                        let due = s.at(p.seq);
                        self.c.max_send_lag = self.c.max_send_lag.max(now - due.min(now));
                        self.in_window(due)
                    }
                    None => now >= self.measure_from,
                };
                if counts {
                    self.c.sent += 1;
                }
            }
            Err(e)
                if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                p.sent_at = None;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => p.sent_at = None,
            Err(e) => {
                eprintln!("loadgen: udp socket {}: send failed: {e}", p.id);
                self.c.errors += 1;
                p.failed = true;
            }
        }
    }

    /// Open loop: a datagram scheduled at `due` counts.
    fn in_window(&self, due: Instant) -> bool {
        due >= self.measure_from && due < self.measure_to
    }

    /// Reads every datagram waiting on `p`'s socket and checks it.
    fn receive(&mut self, p: &mut Peer, now: Instant) {
        let plan = self.plan;
        loop {
            let (n, from) = match p.socket.recv_from(&mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // An ICMP error (port unreachable: no server): counted once.
                Err(e) => {
                    eprintln!("loadgen: udp socket {}: receive failed: {e}", p.id);
                    self.c.errors += 1;
                    p.failed = true;
                    return;
                }
            };
            if p.failed {
                continue;
            }
            let reply = &self.buf[..n];
            let table = &self.table;
            let expected = |seq: u64| n == plan.size && table.matches(offset(p.id, seq), 0, reply);
            if from != plan.addr {
                self.c.mismatches += 1;
                continue;
            }
            match p.sent_at {
                Some(at) if expected(p.seq) => {
                    // Open loop: from the scheduled time, in the window
                    // the schedule says.
                    let (from, counts) = match p.schedule {
                        Some(s) => (s.at(p.seq), self.in_window(s.at(p.seq))),
                        None => (at, now >= self.measure_from && now < self.measure_to),
                    };
                    if counts {
                        self.c.echoed += 1;
                        self.c.bytes += n as u64;
                        let us = now.saturating_duration_since(from).as_micros().max(1);
                        let _ = self.hist.record(u64::try_from(us).unwrap_or(u64::MAX));
                    }
                    self.c.total_echoed += 1;
                    p.seq += 1;
                    self.next(p, now);
                }
                _ if p.lost.iter().any(|&seq| seq != u64::MAX && expected(seq)) => {
                    if now >= self.measure_from {
                        self.c.late += 1;
                    }
                }
                _ => self.c.mismatches += 1,
            }
        }
    }

    fn report(&self, peers: &[Peer]) -> Report {
        let c = &self.c;
        let mut report = Report {
            mode: "udp".to_string(),
            conns: self.plan.sockets,
            active: peers.iter().filter(|p| !p.failed).count(),
            size: self.plan.size,
            depth: 1,
            seconds: self.plan.duration.as_secs_f64(),
            msgs: c.echoed,
            bytes: c.bytes,
            errors: c.errors + u64::from(c.total_echoed == 0),
            mismatches: c.mismatches,
            held: self.plan.sockets,
            total_msgs: c.total_echoed,
            close: crate::Close::Reset,
            rate: self.plan.rate,
            scheduled: c.scheduled,
            sent: c.sent,
            max_send_lag_us: u64::try_from(c.max_send_lag.as_micros()).unwrap_or(u64::MAX),
            lost: c.lost,
            late: c.late,
            threads: 1,
            ..Report::default()
        };
        report.set_latency(&self.hist);
        report.judge_schedule();
        report
    }
}

/// IPv4 loopback targets: sockets spread over 127.0.0.1 .. 127.0.0.N.
fn source_for(plan: &UdpPlan, i: usize) -> SocketAddr {
    match plan.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let last = 1 + (i % plan.sources as usize) as u8;
            SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0)
        }
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}
