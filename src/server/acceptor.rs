//! The acceptor: the listeners, accepting (at most `accepts_per_turn` per
//! listener per turn), the connection limit, and what happens when the
//! process runs out of descriptors.
//!
//! * A listener event runs [`Acceptor::accept`]: accept until `WouldBlock`
//!   or the per-turn limit. The edge is then spent, so a listener that hit
//!   the limit is marked and [`Acceptor::accept_due`] revisits it next turn.
//! * Admission: over the connection limit (this loop's, or the one
//!   [`SharedLimits`] keeps over all loops), or over `max_per_source` for its
//!   source, a connection is accepted and reset at once, so its client is
//!   told instead of waiting in the backlog; the first refusal of an
//!   episode is warned about.
//! * **Out of descriptors** (EMFILE, ENFILE, ENOBUFS, ENOMEM on accept):
//!   accepting again at once would fail the same way and spin, so accepting
//!   pauses for 10 ms, doubling up to 1 s, warned once per episode. Any
//!   close ([`Acceptor::on_close`]) ends the pause at once, as it just freed
//!   a descriptor; with limits shared by several loops, so does another
//!   loop's close, looked for every [`SHARED_RETRY_CHECK`]. Connections
//!   queued in the backlog meanwhile raise no new edge, so the retry
//!   accepts without one.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use super::shared::{SharedLimits, Source, SHARED_RETRY_CHECK};
use super::stats::AcceptCounts;
use crate::token::{Tokens, MAX_LISTENERS};

/// On Linux an accepted socket inherits TCP_NODELAY from its listener, so
/// setting it once on the listener saves one `setsockopt` per connection.
/// Elsewhere each accepted socket gets it. Test:
/// `accepted_sockets_have_nodelay`.
const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

/// Also inherited on Linux: SO_OOBINLINE, which keeps a TCP urgent byte in
/// the stream so that it is echoed like any other (RFC 862: every byte).
const OOBINLINE_INHERITED: bool = cfg!(target_os = "linux");

/// First pause after the process runs out of descriptors on accept.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// The pause doubles on each failed retry, up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

struct Listener {
    // None once shutdown has begun: the listening socket is closed.
    socket: Option<TcpListener>,
    addr: SocketAddr,
    registered: bool,
    // The per-turn accept limit was reached with connections maybe left in
    // the backlog; the edge is spent, so we revisit without a new event.
    more: bool,
}

/// Out of descriptors on accept: wait for a timer or a closed connection.
struct Backoff {
    since: Instant,
    until: Instant,
    delay: Duration,
    // A connection of ours closed, so a descriptor is free: retry now.
    retry_now: bool,
    // The loops' close count when this episode began or last retried;
    // once it moves, another loop freed a descriptor.
    closes_seen: u64,
}

/// How an accept round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Drained,
    Limit,
    OutOfDescriptors,
}

/// The listeners and the rules of admission.
pub(super) struct Acceptor {
    tokens: Tokens,
    listeners: Vec<Listener>,
    accepts_per_turn: usize,
    // This loop's own cap, and the limits over every loop.
    max_connections: usize,
    limits: SharedLimits,
    // Whether other loops share `limits` (and so its close news).
    shared: bool,
    // Connections this loop admitted and has not closed yet.
    open: usize,
    // With `max_per_source`: the source of each open connection, by slab
    // key (8 bytes per slot, only when the limit is on).
    sources: Vec<Option<Source>>,
    backoff: Option<Backoff>,
    // The current episode of "limit reached" was warned about.
    over_limit_warned: bool,
    // A source over `max_per_source` was warned about (once).
    over_source_warned: bool,
    closed: bool,
    counts: AcceptCounts,
}

impl Acceptor {
    pub(super) fn new(
        tokens: Tokens,
        accepts_per_turn: usize,
        max_connections: usize,
        limits: SharedLimits,
        shared: bool,
    ) -> Acceptor {
        Acceptor {
            tokens,
            listeners: Vec::new(),
            accepts_per_turn,
            max_connections,
            limits,
            shared,
            open: 0,
            sources: Vec::new(),
            backoff: None,
            over_limit_warned: false,
            over_source_warned: false,
            closed: false,
            counts: AcceptCounts::default(),
        }
    }

    /// Adds a listener (see `EchoServer::adopt`).
    pub(super) fn adopt(&mut self, listener: TcpListener) -> io::Result<SocketAddr> {
        if self.listeners.len() >= MAX_LISTENERS || self.closed {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("at most {MAX_LISTENERS} listeners, and none after shutdown"),
            ));
        }
        let addr = listener.local_addr()?;
        if NODELAY_INHERITED {
            socket2::SockRef::from(&listener).set_nodelay(true)?;
        }
        if OOBINLINE_INHERITED {
            socket2::SockRef::from(&listener).set_out_of_band_inline(true)?;
        }
        self.listeners.push(Listener {
            socket: Some(listener),
            addr,
            registered: false,
            more: false,
        });
        Ok(addr)
    }

    pub(super) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Registers the listeners not registered yet.
    pub(super) fn register(&mut self, registry: &Registry) -> io::Result<()> {
        for (index, listener) in self.listeners.iter_mut().enumerate() {
            if let (Some(socket), false) = (listener.socket.as_mut(), listener.registered) {
                registry.register(socket, self.tokens.listener(index), Interest::READABLE)?;
                listener.registered = true;
            }
        }
        Ok(())
    }

    /// Closes every listener (shutdown): no more accepts. Closing all of a
    /// loop's listeners together matters with `SO_REUSEPORT` groups (see
    /// `reuseport.rs`).
    pub(super) fn close(&mut self, registry: &Registry, now: Instant) {
        self.closed = true;
        for listener in &mut self.listeners {
            if let Some(mut socket) = listener.socket.take() {
                if listener.registered {
                    // Ignored: the socket is closed right after either way.
                    let _ = registry.deregister(&mut socket);
                }
            }
            listener.more = false;
        }
        self.end_backoff(now);
    }

    /// A listener's event: accepts up to `accepts_per_turn` connections and
    /// hands each admitted one to `admit`, which registers it and returns
    /// its key (an error closes it). Ignored while backed off.
    ///
    /// # Errors
    /// The listener's own failure (not one connection's).
    pub(super) fn accept(
        &mut self,
        index: usize,
        now: Instant,
        admit: impl FnMut(TcpStream, SocketAddr) -> io::Result<usize>,
    ) -> io::Result<()> {
        trace!("listener {index}: ready");
        if self.backoff.is_none() {
            self.round(index, now, admit)?;
        }
        Ok(())
    }

    /// Accepts where the last turn left connections in a backlog, or where
    /// the back-off has ended (the listener's edge may have fired while we
    /// were backed off; queued connections won't raise another).
    ///
    /// # Errors
    /// A listener's own failure.
    pub(super) fn accept_due(
        &mut self,
        now: Instant,
        mut admit: impl FnMut(TcpStream, SocketAddr) -> io::Result<usize>,
    ) -> io::Result<()> {
        let retrying = match &self.backoff {
            Some(backoff) if self.may_retry(backoff, now) => true,
            Some(_) => return Ok(()),
            None => false,
        };
        for index in 0..self.listeners.len() {
            let wanted = retrying || self.listeners[index].more;
            if wanted && self.round(index, now, &mut admit)? == Round::OutOfDescriptors {
                return Ok(()); // `back_off` extended the episode
            }
        }
        if self.backoff.is_some() {
            self.end_backoff(now);
            info!("accept: descriptors available again");
        }
        Ok(())
    }

    /// When `accept_due` next has work: now (`Duration::ZERO` from
    /// `poll_timeout`) for a listener left with more, or the back-off's end
    /// (sooner with shared limits, to see other loops' closes).
    pub(super) fn due(&self, now: Instant) -> Option<Instant> {
        match &self.backoff {
            Some(backoff) if backoff.retry_now => Some(now),
            Some(backoff) if self.shared => {
                Some(backoff.until.min(now.checked_add(SHARED_RETRY_CHECK)?))
            }
            Some(backoff) => Some(backoff.until),
            None => self.listeners.iter().any(|l| l.more).then_some(now),
        }
    }

    /// The connection this loop admitted under slab `key` has closed: its
    /// slots are free again, and so is a descriptor.
    pub(super) fn on_close(&mut self, key: usize) {
        self.open = self.open.saturating_sub(1);
        self.limits.release(1);
        if let Some(source) = self.sources.get_mut(key).and_then(Option::take) {
            self.limits.release_source(source);
        }
        // A new episode of "limit reached" is warned about only once the
        // server has had real room again, so churn at the limit cannot spam.
        let limit = self.limit();
        if self.open_under_limit() < limit - limit / 10 {
            self.over_limit_warned = false;
        }
        if let Some(backoff) = self.backoff.as_mut() {
            backoff.retry_now = true;
        }
    }

    pub(super) fn counts(&self) -> AcceptCounts {
        let mut counts = self.counts;
        if let Some(backoff) = &self.backoff {
            counts.backed_off = counts.backed_off.saturating_add(backoff.since.elapsed());
        }
        counts
    }

    /// One round on listener `index`: accept until the backlog is empty,
    /// this turn's limit is reached, or descriptors run out.
    fn round(
        &mut self,
        index: usize,
        now: Instant,
        mut admit: impl FnMut(TcpStream, SocketAddr) -> io::Result<usize>,
    ) -> io::Result<Round> {
        for _ in 0..self.accepts_per_turn {
            let Some(socket) = self.listeners[index].socket.as_ref() else {
                return Ok(Round::Drained);
            };
            match socket.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, &mut admit),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.listeners[index].more = false;
                    return Ok(Round::Drained);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if out_of_descriptors(&e) => {
                    self.back_off(now, &e);
                    return Ok(Round::OutOfDescriptors);
                }
                Err(e) if concerns_one_connection(&e) => {
                    debug!("listener {index}: accept failed for one connection: {e}");
                    self.counts.accept_errors += 1;
                }
                Err(e) => return Err(e),
            }
        }
        // The limit for this turn is reached; more may be waiting.
        self.listeners[index].more = true;
        self.counts.accept_yields += 1;
        Ok(Round::Limit)
    }

    /// Admits an accepted connection under the limits, or resets it at once.
    fn admit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        admit: &mut impl FnMut(TcpStream, SocketAddr) -> io::Result<usize>,
    ) {
        if self.open >= self.max_connections || !self.limits.try_acquire() {
            self.counts.rejected += 1;
            if !self.over_limit_warned {
                warn!(
                    "connection limit ({}) reached: closing new connections at once",
                    self.limit()
                );
                self.over_limit_warned = true;
            }
            debug!("{peer}: rejected, over the connection limit");
            return reset(stream);
        }
        let source = Source::of(peer.ip());
        if !self.limits.try_acquire_source(source) {
            self.limits.release(1);
            self.counts.rejected_per_source += 1;
            if !self.over_source_warned {
                warn!(
                    "{} reached --max-per-source: closing its new connections at once \
                     (further sources over it are only counted)",
                    peer.ip()
                );
                self.over_source_warned = true;
            }
            debug!("{peer}: rejected, over the limit per source");
            return reset(stream);
        }
        // Echo replies are small and immediate: don't let Nagle hold them.
        // On Linux the socket inherited TCP_NODELAY from the listener.
        let admitted = if NODELAY_INHERITED {
            admit(stream, peer)
        } else {
            stream.set_nodelay(true).and_then(|()| admit(stream, peer))
        };
        match admitted {
            Ok(key) => {
                self.open += 1;
                self.counts.accepted += 1;
                if self.limits.limits_sources() {
                    if self.sources.len() <= key {
                        self.sources.resize(key + 1, None);
                    }
                    self.sources[key] = Some(source);
                }
                debug!("connection {key}: accepted from {peer}");
            }
            Err(err) => {
                debug!("{peer}: closed, setting up failed: {err}");
                self.counts.accept_errors += 1;
                self.limits.release(1);
                self.limits.release_source(source);
            }
        }
    }

    fn back_off(&mut self, now: Instant, err: &io::Error) {
        let closes_seen = if self.shared { self.limits.closes() } else { 0 };
        match self.backoff.as_mut() {
            Some(backoff) => {
                backoff.delay = backoff.delay.saturating_mul(2).min(BACKOFF_MAX);
                backoff.until = now.checked_add(backoff.delay).unwrap_or(now);
                backoff.retry_now = false;
                backoff.closes_seen = closes_seen;
                debug!(
                    "accept: still out of descriptors, next try in {:?}",
                    backoff.delay
                );
            }
            None => {
                warn!(
                    "accept: out of descriptors ({err}) with {} connections; \
                     pausing accepts until one closes or {BACKOFF_START:?} pass",
                    self.open
                );
                self.counts.accept_backoffs += 1;
                self.backoff = Some(Backoff {
                    since: now,
                    until: now.checked_add(BACKOFF_START).unwrap_or(now),
                    delay: BACKOFF_START,
                    retry_now: false,
                    closes_seen,
                });
            }
        }
    }

    /// A retry is due: a close of ours, the timer, or another loop's close.
    fn may_retry(&self, backoff: &Backoff, now: Instant) -> bool {
        backoff.retry_now
            || now >= backoff.until
            || (self.shared && self.limits.closes() != backoff.closes_seen)
    }

    fn end_backoff(&mut self, now: Instant) {
        if let Some(backoff) = self.backoff.take() {
            self.counts.backed_off = self
                .counts
                .backed_off
                .saturating_add(now.saturating_duration_since(backoff.since));
        }
    }

    /// The connection limit in force: the shared one when it is tighter.
    fn limit(&self) -> usize {
        self.max_connections.min(self.limits.max_connections())
    }

    /// Connections open under [`Acceptor::limit`]: over every loop when
    /// shared.
    fn open_under_limit(&self) -> usize {
        if self.shared {
            self.limits.active()
        } else {
            self.open
        }
    }
}

impl Drop for Acceptor {
    // Connections dropped with the server give their shared slots back, so
    // the other loops may use them.
    fn drop(&mut self) {
        self.limits.release(self.open);
    }
}

/// Closes a connection refused at admission with a reset (SO_LINGER 0):
/// it was cut short before anything was echoed, and only a reset says so.
fn reset(stream: TcpStream) {
    if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        debug!("SO_LINGER on a refused connection failed: {err}");
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or system is out of a
/// resource; accepting again at once would fail the same way.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors that `accept` reports for one incoming connection (it was reset
/// before we took it, or Linux passes on a network error of that connection).
fn concerns_one_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::PermissionDenied
    ) || matches!(
        err.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENONET
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mio::Token;
    use std::net::TcpStream as StdStream;

    fn acceptor(limits: &SharedLimits, shared: bool) -> (Acceptor, SocketAddr) {
        let tokens = Tokens::new(Token(0)).unwrap();
        let mut acceptor = Acceptor::new(tokens, 64, 1000, limits.clone(), shared);
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = acceptor.adopt(listener).unwrap();
        (acceptor, addr)
    }

    fn limits(max: usize) -> SharedLimits {
        SharedLimits::new(&Config {
            max_connections: max,
            ..Config::default()
        })
    }

    // Accept rounds until one connection was admitted (bounded).
    fn accept_one(acceptor: &mut Acceptor, kept: &mut Vec<TcpStream>) {
        let before = acceptor.counts.accepted + acceptor.counts.rejected;
        for _ in 0..1000 {
            acceptor
                .accept_due(Instant::now(), |stream, _| {
                    kept.push(stream);
                    Ok(kept.len())
                })
                .unwrap();
            acceptor
                .accept(0, Instant::now(), |stream, _| {
                    kept.push(stream);
                    Ok(kept.len())
                })
                .unwrap();
            if acceptor.counts.accepted + acceptor.counts.rejected > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nothing accepted");
    }

    #[test]
    fn accepted_sockets_have_nodelay() {
        let (mut acceptor, addr) = acceptor(&limits(10), false);
        let _client = StdStream::connect(addr).unwrap();
        let mut kept = Vec::new();
        accept_one(&mut acceptor, &mut kept);
        assert!(kept[0].nodelay().unwrap());
    }

    #[test]
    fn a_backed_off_acceptor_retries_once_another_loop_closes() {
        let limits = limits(10);
        let (mut acceptor, addr) = acceptor(&limits, true);
        let now = Instant::now();
        // As if accept had failed with EMFILE a few times: the timer's next
        // retry is a second away.
        acceptor.back_off(now, &io::Error::from_raw_os_error(libc::EMFILE));
        acceptor.backoff.as_mut().unwrap().until = now + Duration::from_secs(1);
        let _waiting = StdStream::connect(addr).unwrap();
        assert!(acceptor.due(now).unwrap() <= now + SHARED_RETRY_CHECK);
        let mut kept = Vec::new();
        let mut admit = |stream, _| {
            kept.push(stream);
            Ok(0)
        };
        // Nobody closed anything: still backed off, nothing accepted.
        acceptor
            .accept_due(now + Duration::from_millis(20), &mut admit)
            .unwrap();
        assert!(acceptor.backoff.is_some());
        assert_eq!(acceptor.counts.accepted, 0);
        // Another loop closes a connection: a descriptor is free.
        assert!(limits.try_acquire());
        limits.release(1);
        for _ in 0..100 {
            acceptor
                .accept_due(now + Duration::from_millis(30), &mut admit)
                .unwrap();
            if acceptor.counts.accepted == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(acceptor.backoff.is_none(), "still backed off");
        assert_eq!(acceptor.counts.accepted, 1);
    }

    #[test]
    fn a_failed_retry_waits_for_the_next_close() {
        let limits = limits(10);
        let (mut acceptor, _addr) = acceptor(&limits, true);
        let now = Instant::now();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        acceptor.back_off(now, &emfile);
        limits.release(1);
        let backoff = acceptor.backoff.as_ref().unwrap();
        assert!(acceptor.may_retry(backoff, now));
        // The retry failed again: that close is spent.
        acceptor.back_off(now, &emfile);
        let backoff = acceptor.backoff.as_ref().unwrap();
        assert!(!acceptor.may_retry(backoff, now));
    }

    #[test]
    fn the_limit_counts_over_loops_and_a_dropped_acceptor_gives_its_slots_back() {
        let limits = limits(3);
        let (mut a, addr_a) = acceptor(&limits, true);
        let (mut b, addr_b) = acceptor(&limits, true);
        let mut kept = Vec::new();
        let _a1 = StdStream::connect(addr_a).unwrap();
        accept_one(&mut a, &mut kept);
        let _b1 = StdStream::connect(addr_b).unwrap();
        accept_one(&mut b, &mut kept);
        let _b2 = StdStream::connect(addr_b).unwrap();
        accept_one(&mut b, &mut kept);
        assert_eq!(limits.active(), 3);
        // A fourth, on either loop, is over the shared limit.
        let _a2 = StdStream::connect(addr_a).unwrap();
        accept_one(&mut a, &mut kept);
        assert_eq!((a.counts.accepted, a.counts.rejected), (1, 1));
        drop(b);
        assert_eq!(limits.active(), 1);
    }
}
