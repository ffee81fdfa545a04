//! One load connection's state, the counters a run keeps, and opening a
//! connection.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use slab::Slab;

use crate::pattern::PERIOD;
use crate::plan::Plan;
use crate::schedule::Schedule;
use crate::sys;

pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    pub(crate) offset: u64,
    pub(crate) connected: bool,
    // Bytes written, bytes we want written by now, bytes echoed back.
    pub(crate) tx: u64,
    pub(crate) goal: u64,
    pub(crate) rx: u64,
    // When each message in flight was issued (ping-pong and hold).
    pub(crate) issued: VecDeque<Instant>,
    pub(crate) started: Instant,
    pub(crate) active: bool,
    // Stream mode's latency sample: a write in flight, as the byte count
    // that completes its echo and when it was written. One at a time.
    pub(crate) mark: Option<(u64, Instant)>,
    // Open loop (`--rate`): when this connection's messages are due, and
    // how many are due so far (the loop moves it on as their times come).
    pub(crate) schedule: Option<Schedule>,
    pub(crate) due: u64,
    // Counted as an error or mismatch: closed with a reset.
    pub(crate) failed: bool,
    // `hold`: the probe came back, every byte verified.
    pub(crate) verified: bool,
    // Sent our FIN (`--close fin`); waiting for the server's EOF.
    pub(crate) closing: bool,
}

impl Client {
    /// Stops traffic on a connection that erred or mismatched.
    pub(crate) fn fail(&mut self) {
        self.active = false;
        self.failed = true;
    }
}

pub(crate) struct Stats {
    pub(crate) msgs: u64,
    pub(crate) total_msgs: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: u64,
    pub(crate) mismatches: u64,
    // `--close fin` closes that ended in a reset or timed out.
    pub(crate) unclean_closes: u64,
    pub(crate) hist: Histogram<u64>,
    // Open loop: messages scheduled in the window, those of them written
    // before it ended, and the longest a message was written after its
    // scheduled time.
    pub(crate) scheduled: u64,
    pub(crate) sent: u64,
    pub(crate) max_send_lag: Duration,
}

impl Stats {
    pub(crate) fn new() -> io::Result<Stats> {
        Ok(Stats {
            msgs: 0,
            total_msgs: 0,
            bytes: 0,
            errors: 0,
            mismatches: 0,
            unclean_closes: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
            scheduled: 0,
            sent: 0,
            max_send_lag: Duration::ZERO,
        })
    }
}

/// Starts one non-blocking connect, from source address 127.0.0.(1 + i % sources).
pub(crate) fn open(
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
        schedule: None,
        due: 0,
        failed: false,
        verified: false,
        closing: false,
    });
    Ok(())
}

/// How a non-blocking connect ended: `None` while it is still in progress.
pub(crate) fn connect_outcome(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(None) if stream.peer_addr().is_ok() => Some(Ok(())),
        Ok(None) => None,
        Ok(Some(e)) | Err(e) => Some(Err(e)),
    }
}
