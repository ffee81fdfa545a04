//! `udp` mode: N sockets ping-pong datagrams of S bytes with a UDP echo
//! server, one datagram in flight per socket.
//!
//! Datagram `seq` of socket `id` is a slice of the shared pattern table at an
//! offset hashed from `(id, seq)`, so an echo that is corrupted, truncated,
//! or meant for another socket (or another sequence number) differs from
//! what the socket expects. A reply that matches one of the socket's last
//! [`LATE_WINDOW`] timed-out datagrams is a late echo, not a mismatch.
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
            meter: Arc::default(),
        }
    }
}

struct Peer {
    socket: UdpSocket,
    id: u64,
    // The datagram in flight: its sequence number and when it was sent;
    // None if the last send would block (retried next turn).
    seq: u64,
    sent_at: Option<Instant>,
    // Sequence numbers of the last datagrams counted as lost.
    lost: [u64; LATE_WINDOW],
    lost_next: usize,
    failed: bool,
}

#[derive(Default)]
struct Counts {
    sent: u64,
    echoed: u64,
    lost: u64,
    late: u64,
    bytes: u64,
    errors: u64,
    mismatches: u64,
    total_echoed: u64,
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
    let table = PatternTable::new();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut peers = Vec::with_capacity(plan.sockets);
    for i in 0..plan.sockets {
        let mut socket =
            UdpSocket::bind(source_for(plan, i)).map_err(|e| crate::sys::explain(e, i))?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        peers.push(Peer {
            socket,
            id: i as u64,
            seq: 0,
            sent_at: None,
            lost: [u64::MAX; LATE_WINDOW],
            lost_next: 0,
            failed: false,
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    let mut c = Counts::default();
    let mut buf = vec![0u8; 65_536];
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let measure_to = measure_from + plan.duration;
    let mut now = started;
    for p in &mut peers {
        send(p, plan, &table, now, now >= measure_from, &mut c);
    }
    let mut next_sweep = now;
    plan.meter.set_phase(Phase::Traffic);
    while now < measure_to {
        let tick = plan.timeout.min(Duration::from_millis(10));
        poll.poll(&mut events, Some(tick))?;
        now = Instant::now();
        let measuring = now >= measure_from && now < measure_to;
        let before = c.total_echoed;
        for event in events.iter() {
            let p = &mut peers[event.token().0];
            receive(p, plan, &table, &mut buf, now, measuring, &mut hist, &mut c);
        }
        plan.meter.add_done(c.total_echoed - before);
        if now >= next_sweep {
            next_sweep = now + tick;
            for p in peers.iter_mut().filter(|p| !p.failed) {
                match p.sent_at {
                    // The last send would block: try again.
                    None => send(p, plan, &table, now, measuring, &mut c),
                    Some(at) if now.saturating_duration_since(at) >= plan.timeout => {
                        if measuring {
                            c.lost += 1;
                        }
                        p.lost[p.lost_next] = p.seq;
                        p.lost_next = (p.lost_next + 1) % LATE_WINDOW;
                        p.seq += 1;
                        send(p, plan, &table, now, measuring, &mut c);
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let mut report = Report {
        mode: "udp".to_string(),
        conns: plan.sockets,
        active: peers.iter().filter(|p| !p.failed).count(),
        size: plan.size,
        depth: 1,
        seconds: plan.duration.as_secs_f64(),
        msgs: c.echoed,
        bytes: c.bytes,
        p50_us: 0,
        p99_us: 0,
        p999_us: 0,
        max_us: 0,
        latency_samples: 0,
        errors: c.errors + u64::from(c.total_echoed == 0),
        mismatches: c.mismatches,
        held: plan.sockets,
        probes_failed: 0,
        probes_timed_out: 0,
        total_msgs: c.total_echoed,
        close: crate::Close::Reset,
        unclean_closes: 0,
        sent: c.sent,
        lost: c.lost,
        late: c.late,
        threads: 1,
    };
    report.set_latency(&hist);
    Ok(report)
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

/// Sends datagram `p.seq`; a send that would block is retried next sweep.
fn send(
    p: &mut Peer,
    plan: &UdpPlan,
    table: &PatternTable,
    now: Instant,
    measuring: bool,
    c: &mut Counts,
) {
    let msg = table.slice(offset(p.id, p.seq), 0, plan.size);
    match p.socket.send_to(msg, plan.addr) {
        Ok(_) => {
            p.sent_at = Some(now);
            if measuring {
                c.sent += 1;
            }
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) => {
            p.sent_at = None;
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => p.sent_at = None,
        Err(e) => {
            eprintln!("loadgen: udp socket {}: send failed: {e}", p.id);
            c.errors += 1;
            p.failed = true;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn receive(
    p: &mut Peer,
    plan: &UdpPlan,
    table: &PatternTable,
    buf: &mut [u8],
    now: Instant,
    measuring: bool,
    hist: &mut Histogram<u64>,
    c: &mut Counts,
) {
    loop {
        let (n, from) = match p.socket.recv_from(buf) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // An ICMP error (port unreachable: no server): counted once.
            Err(e) => {
                eprintln!("loadgen: udp socket {}: receive failed: {e}", p.id);
                c.errors += 1;
                p.failed = true;
                return;
            }
        };
        if p.failed {
            continue;
        }
        let reply = &buf[..n];
        let expected = |seq: u64| n == plan.size && table.matches(offset(p.id, seq), 0, reply);
        if from != plan.addr {
            c.mismatches += 1;
            continue;
        }
        match p.sent_at {
            Some(at) if expected(p.seq) => {
                if measuring {
                    c.echoed += 1;
                    c.bytes += n as u64;
                    let _ =
                        hist.record(now.saturating_duration_since(at).as_micros().max(1) as u64);
                }
                c.total_echoed += 1;
                p.seq += 1;
                send(p, plan, table, now, measuring, c);
            }
            _ if p.lost.iter().any(|&seq| seq != u64::MAX && expected(seq)) => {
                if measuring {
                    c.late += 1;
                }
            }
            _ => c.mismatches += 1,
        }
    }
}
