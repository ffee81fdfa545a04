//! The counters: [`Stats`], what `EchoServer::stats` returns and the binary
//! logs as its `stats:` line. Each part of the server keeps the counters of
//! what it decides (the acceptor its [`AcceptCounts`], the connections their
//! [`EchoCounts`], the UDP endpoint its [`UdpCounts`]), and `stats` gathers
//! them into one [`Stats`]. `+=` sums the counters of several loops.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

/// Counters of what the server did, from
/// [`EchoServer::stats`](crate::EchoServer::stats).
///
/// More counters may come: read the fields you need, and build one with
/// `Stats::default()` (then `+=` to sum several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and reset at once: over the connection limit.
    pub rejected: u64,
    /// Connections accepted and reset at once: their source was over
    /// `Config::max_per_source`.
    pub rejected_per_source: u64,
    /// Connections open now.
    pub active: u64,
    /// Closed after the peer half-closed and every byte was echoed.
    pub closed_by_peer: u64,
    /// Closed after an I/O error (reset, broken pipe).
    pub closed_by_error: u64,
    /// Closed after no traffic for the idle timeout.
    pub closed_by_idle: u64,
    /// Closed by shutdown.
    pub closed_by_shutdown: u64,
    /// Closes (of any kind above) done with a reset (SO_LINGER 0) because
    /// bytes remained in either direction or the connection failed: the
    /// peer sees an error, never a FIN after a truncated echo.
    pub closed_with_reset: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Times a connection's reading paused because too much was pending.
    pub backpressure_pauses: u64,
    /// Episodes of running out of descriptors on accept.
    pub accept_backoffs: u64,
    /// Time spent backed off from accepting.
    pub backed_off: Duration,
    /// Times a connection used its read budget with data left and yielded.
    pub budget_yields: u64,
    /// Times a listener reached the per-turn accept limit with connections
    /// possibly left in its backlog (revisited next turn).
    pub accept_yields: u64,
    /// Accept errors that concerned one incoming connection only.
    pub accept_errors: u64,
    /// UDP datagrams received (every one: echoed, dropped, refused,
    /// truncated or rate-limited, so
    /// `in = out + dropped + refused + truncated + rate_limited`).
    pub udp_datagrams_in: u64,
    /// UDP datagrams echoed (handed to the kernel).
    pub udp_datagrams_out: u64,
    /// Payload bytes of the UDP datagrams received (a truncated one counts
    /// with its real length).
    pub udp_bytes_in: u64,
    /// Payload bytes of the UDP datagrams echoed.
    pub udp_bytes_out: u64,
    /// UDP replies dropped because the socket would not take them
    /// (`WouldBlock`, `ENOBUFS`) or the send failed: never queued.
    pub udp_dropped: u64,
    /// UDP datagrams not answered because of their source port (0, a
    /// reflecting service, or one of ours; see
    /// the UDP section of the crate docs).
    pub udp_refused: u64,
    /// UDP datagrams larger than the receive buffer: counted, never echoed.
    pub udp_truncated: u64,
    /// UDP datagrams not answered because their source IP was over
    /// `Config::udp_rate_limit`.
    pub udp_rate_limited: u64,
    /// Errors receiving on a UDP socket (ICMP errors about earlier replies);
    /// the socket keeps serving.
    pub udp_errors: u64,
    /// Times a UDP socket used its per-turn datagram budget and was
    /// revisited next turn.
    pub udp_yields: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} rejected={} rejected_per_source={} active={} closed_by_peer={} \
             closed_by_error={} closed_by_idle={} closed_by_shutdown={} closed_with_reset={} \
             bytes_in={} bytes_out={} \
             backpressure_pauses={} accept_backoffs={} backed_off_ms={} budget_yields={} \
             accept_yields={} accept_errors={} udp_datagrams_in={} udp_datagrams_out={} \
             udp_bytes_in={} udp_bytes_out={} udp_dropped={} udp_refused={} udp_truncated={} \
             udp_rate_limited={} udp_errors={} udp_yields={}",
            self.accepted,
            self.rejected,
            self.rejected_per_source,
            self.active,
            self.closed_by_peer,
            self.closed_by_error,
            self.closed_by_idle,
            self.closed_by_shutdown,
            self.closed_with_reset,
            self.bytes_in,
            self.bytes_out,
            self.backpressure_pauses,
            self.accept_backoffs,
            self.backed_off.as_millis(),
            self.budget_yields,
            self.accept_yields,
            self.accept_errors,
            self.udp_datagrams_in,
            self.udp_datagrams_out,
            self.udp_bytes_in,
            self.udp_bytes_out,
            self.udp_dropped,
            self.udp_refused,
            self.udp_truncated,
            self.udp_rate_limited,
            self.udp_errors,
            self.udp_yields,
        )
    }
}

/// Sums counters, e.g. of several loops into one line for the process.
/// Every field adds (`active` too: the connections open over all of them).
///
/// ```
/// use echoloop::Stats;
/// let mut a = Stats::default();
/// a.accepted = 3;
/// let mut b = Stats::default();
/// b.accepted = 2;
/// let mut total = a;
/// total += b;
/// assert_eq!(total.accepted, 5);
/// assert_eq!(total, a + b);
/// ```
impl AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        // Listed field by field with no `..`: a new counter does not compile
        // until it is summed here too.
        let Stats {
            accepted,
            rejected,
            rejected_per_source,
            active,
            closed_by_peer,
            closed_by_error,
            closed_by_idle,
            closed_by_shutdown,
            closed_with_reset,
            bytes_in,
            bytes_out,
            backpressure_pauses,
            accept_backoffs,
            backed_off,
            budget_yields,
            accept_yields,
            accept_errors,
            udp_datagrams_in,
            udp_datagrams_out,
            udp_bytes_in,
            udp_bytes_out,
            udp_dropped,
            udp_refused,
            udp_truncated,
            udp_rate_limited,
            udp_errors,
            udp_yields,
        } = other;
        self.accepted += accepted;
        self.rejected += rejected;
        self.rejected_per_source += rejected_per_source;
        self.active += active;
        self.closed_by_peer += closed_by_peer;
        self.closed_by_error += closed_by_error;
        self.closed_by_idle += closed_by_idle;
        self.closed_by_shutdown += closed_by_shutdown;
        self.closed_with_reset += closed_with_reset;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.backpressure_pauses += backpressure_pauses;
        self.accept_backoffs += accept_backoffs;
        self.backed_off = self.backed_off.saturating_add(backed_off);
        self.budget_yields += budget_yields;
        self.accept_yields += accept_yields;
        self.accept_errors += accept_errors;
        self.udp_datagrams_in += udp_datagrams_in;
        self.udp_datagrams_out += udp_datagrams_out;
        self.udp_bytes_in += udp_bytes_in;
        self.udp_bytes_out += udp_bytes_out;
        self.udp_dropped += udp_dropped;
        self.udp_refused += udp_refused;
        self.udp_truncated += udp_truncated;
        self.udp_rate_limited += udp_rate_limited;
        self.udp_errors += udp_errors;
        self.udp_yields += udp_yields;
    }
}

/// `a + b`: see the `AddAssign` impl.
impl Add for Stats {
    type Output = Stats;
    fn add(mut self, other: Stats) -> Stats {
        self += other;
        self
    }
}

/// What the acceptor counts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AcceptCounts {
    pub(super) accepted: u64,
    pub(super) rejected: u64,
    pub(super) rejected_per_source: u64,
    pub(super) accept_backoffs: u64,
    pub(super) backed_off: Duration,
    pub(super) accept_yields: u64,
    pub(super) accept_errors: u64,
}

/// What the connections count: bytes, pauses, yields and closes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EchoCounts {
    pub(super) closed_by_peer: u64,
    pub(super) closed_by_error: u64,
    pub(super) closed_by_idle: u64,
    pub(super) closed_by_shutdown: u64,
    pub(super) closed_with_reset: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) backpressure_pauses: u64,
    pub(super) budget_yields: u64,
}

/// What the UDP endpoint counts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UdpCounts {
    pub(super) datagrams_in: u64,
    pub(super) datagrams_out: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) dropped: u64,
    pub(super) refused: u64,
    pub(super) truncated: u64,
    pub(super) rate_limited: u64,
    pub(super) errors: u64,
    pub(super) yields: u64,
}

impl Stats {
    /// The parts' counters as one `Stats`, with `active` connections open.
    pub(super) fn gather(
        active: usize,
        accept: AcceptCounts,
        echo: EchoCounts,
        udp: UdpCounts,
    ) -> Stats {
        Stats {
            accepted: accept.accepted,
            rejected: accept.rejected,
            rejected_per_source: accept.rejected_per_source,
            active: active as u64,
            closed_by_peer: echo.closed_by_peer,
            closed_by_error: echo.closed_by_error,
            closed_by_idle: echo.closed_by_idle,
            closed_by_shutdown: echo.closed_by_shutdown,
            closed_with_reset: echo.closed_with_reset,
            bytes_in: echo.bytes_in,
            bytes_out: echo.bytes_out,
            backpressure_pauses: echo.backpressure_pauses,
            accept_backoffs: accept.accept_backoffs,
            backed_off: accept.backed_off,
            budget_yields: echo.budget_yields,
            accept_yields: accept.accept_yields,
            accept_errors: accept.accept_errors,
            udp_datagrams_in: udp.datagrams_in,
            udp_datagrams_out: udp.datagrams_out,
            udp_bytes_in: udp.bytes_in,
            udp_bytes_out: udp.bytes_out,
            udp_dropped: udp.dropped,
            udp_refused: udp.refused,
            udp_truncated: udp.truncated,
            udp_rate_limited: udp.rate_limited,
            udp_errors: udp.errors,
            udp_yields: udp.yields,
        }
    }
}
