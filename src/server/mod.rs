//! The echo service as a guest in a host's `mio::Poll`: listeners, the slab of
//! connections, accept, event routing, deadlines and close.
//!
//! The host owns the `Poll` and calls, in each turn of its loop:
//!
//! ```text
//!   poll(events, server.poll_timeout(now))       how long may we sleep?
//!   for each event the server owns:
//!       server.handle_event(registry, event, now)  accept / echo
//!   server.handle_timeout(registry, now)           leftover work, deadlines
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::config::{human_duration, plural, Config};
use crate::connection::{Connection, Limits, Progress, Scratch};
use crate::token::{Target, Tokens, MAX_LISTENERS};

/// On Linux an accepted socket inherits TCP_NODELAY from its listener, so
/// setting it once on the listener saves one `setsockopt` per connection
/// (one of eight syscalls per connect-echo-close cycle in the churn cell).
/// Elsewhere each accepted socket gets it. Test: `accepted_sockets_have_nodelay`.
const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

/// Also inherited on Linux: SO_OOBINLINE, which keeps a TCP urgent byte in
/// the stream so that it is echoed like any other (RFC 862: every byte).
const OOBINLINE_INHERITED: bool = cfg!(target_os = "linux");

/// During shutdown, a connection that has had nothing to read and nothing
/// to write for this long, and has nothing in its receive queue, is sent our
/// FIN. Bytes a client wrote before the signal are then long past: on
/// loopback or a LAN they arrive within a round trip or a delayed ACK
/// (40 ms), and while our receive queue is empty the client's kernel has an
/// open window to send them. The socket stays open until the client's own
/// FIN (or the deadline), so nothing it sends after is met by a surprise.
pub const SHUTDOWN_QUIET: Duration = Duration::from_millis(250);
/// How often shutdown looks for quiet connections.
const QUIET_SWEEP: Duration = Duration::from_millis(50);

/// First pause after the process runs out of descriptors on accept.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// The pause doubles on each failed retry, up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Stale idle checks tolerated beyond twice the live connections before
/// the idle heap is compacted.
const IDLE_SLACK: usize = 1024;
/// Idle connections closed per `handle_timeout` call at most; more wait for
/// the next turn (and make `poll_timeout` return zero meanwhile).
const IDLE_CLOSES_PER_TURN: usize = 1024;

// Bits of `Connection::registered`: the interest mio currently has for the
// connection, and whether it sits in the ready queue.
const REG_READ: u8 = 1;
const REG_WRITE: u8 = 2;
const QUEUED: u8 = 4;

/// Counters of what the server did, from [`EchoServer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once: over the limit or shutting down.
    pub rejected: u64,
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
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} rejected={} active={} closed_by_peer={} closed_by_error={} \
             closed_by_idle={} closed_by_shutdown={} closed_with_reset={} bytes_in={} bytes_out={} \
             backpressure_pauses={} accept_backoffs={} backed_off_ms={} budget_yields={} \
             accept_yields={} accept_errors={}",
            self.accepted,
            self.rejected,
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
        )
    }
}

/// How an accept round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    Drained,
    Limit,
    OutOfDescriptors,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy)]
enum Reason {
    Peer,
    Error,
    Idle,
    Shutdown,
}

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
    // A connection closed, so a descriptor is free: retry now.
    retry_now: bool,
}

/// Shutdown in progress.
struct Shutdown {
    // None if the timeout is too far away to be an `Instant`.
    deadline: Option<Instant>,
    // When to look for quiet connections next.
    next_sweep: Instant,
}

/// A deadline in the idle queue. Lazy: a connection's traffic only updates
/// its `last_active`; when the entry comes due we look again.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct IdleCheck {
    due_ms: u64,
    key: u32,
    generation: u16,
}

/// A TCP echo server that runs inside a host's `mio::Poll`.
///
/// It owns its listeners and connections, never a `Poll`, `Waker` or thread.
/// It uses only tokens in `base .. base + TOKEN_SPAN` (see
/// [`EchoServer::owns`]). Each method does a bounded amount of work, stated
/// on the method. A connection's failure is handled inside; only a
/// listener's failure reaches the host as an error.
///
/// ```
/// use std::time::Instant;
/// use mio::{Events, Poll, Token};
/// use echoloop::{Config, EchoServer};
///
/// let mut poll = Poll::new()?;
/// let mut server = EchoServer::new(Config::default(), Token(0));
/// let addr = server.bind("127.0.0.1:0".parse().unwrap())?;
/// server.register(poll.registry())?;
///
/// let mut client = std::net::TcpStream::connect(addr)?;
/// # use std::io::{Read, Write};
/// client.write_all(b"ping")?;
/// let mut events = Events::with_capacity(64);
/// let mut reply = [0u8; 4];
/// client.set_nonblocking(true)?;
/// let mut got = 0;
/// while got < 4 {
///     poll.poll(&mut events, server.poll_timeout(Instant::now()))?;
///     let now = Instant::now();
///     for event in events.iter() {
///         server.handle_event(poll.registry(), event, now)?;
///     }
///     server.handle_timeout(poll.registry(), now)?;
///     match client.read(&mut reply[got..]) {
///         Ok(n) => got += n,
///         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
///         Err(e) => return Err(e),
///     }
/// }
/// assert_eq!(&reply, b"ping");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct EchoServer {
    config: Config,
    limits: Limits,
    tokens: Tokens,
    listeners: Vec<Listener>,
    conns: Slab<Connection<TcpStream>>,
    scratch: Scratch,
    // Connections that used their budget with data left: served next turn.
    ready: VecDeque<(usize, u16)>,
    idle: BinaryHeap<Reverse<IdleCheck>>,
    epoch: Instant,
    next_generation: u16,
    backoff: Option<Backoff>,
    // Some once shutdown has begun: connections get our FIN once the peer
    // finished or went quiet, and are closed at the deadline.
    shutdown: Option<Shutdown>,
    over_limit_warned: bool,
    stats: Stats,
}

impl EchoServer {
    /// Creates a server with no listeners that will use tokens from `base`.
    ///
    /// Allocates the shared read buffer (`config.read_buffer` bytes) and
    /// nothing per connection.
    ///
    /// # Panics
    /// If `config` fails [`Config::validate`], or `base + TOKEN_SPAN` does not
    /// fit in `usize`: both are programming errors of the host.
    ///
    /// ```
    /// let server = echoloop::EchoServer::new(echoloop::Config::default(), mio::Token(0));
    /// assert!(server.owns(mio::Token(0)));
    /// ```
    pub fn new(config: Config, base: Token) -> EchoServer {
        if let Err(msg) = config.validate() {
            panic!("invalid echoloop config: {msg}");
        }
        let tokens = Tokens::new(base).expect("base token + TOKEN_SPAN must fit in usize");
        let slots = config.max_connections.min(1 << 20);
        EchoServer {
            limits: config.limits(),
            scratch: Scratch::new(config.read_buffer),
            config,
            tokens,
            listeners: Vec::new(),
            // Reserved, not touched: pages become resident only as slots are
            // used, and the slab never moves (no copy, no doubling spike).
            conns: Slab::with_capacity(slots),
            ready: VecDeque::new(),
            idle: BinaryHeap::new(),
            epoch: Instant::now(),
            next_generation: 0,
            backoff: None,
            shutdown: None,
            over_limit_warned: false,
            stats: Stats::default(),
        }
    }

    /// Binds a listener of its own to `addr` and returns the bound address
    /// (with the real port when `addr` had port 0).
    ///
    /// IPv6 listeners are IPv6-only, so `[::]:P` and `0.0.0.0:P` can both be
    /// bound. Backlog 1024. Call [`EchoServer::register`] afterwards.
    ///
    /// # Errors
    /// The bind's error (address in use, not available), or `InvalidInput`
    /// past `MAX_LISTENERS` listeners.
    ///
    /// ```
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.bind("127.0.0.1:0".parse().unwrap())?;
    /// assert_ne!(addr.port(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        self.adopt(TcpListener::from_std(socket.into()))
    }

    /// Adopts a listener the host bound itself (custom backlog, inherited
    /// socket) and returns its address. It must be non-blocking (as every
    /// `mio::net::TcpListener` is). On Linux this sets TCP_NODELAY on the
    /// listener, which accepted sockets inherit. Call
    /// [`EchoServer::register`] afterwards.
    ///
    /// # Errors
    /// `InvalidInput` past `MAX_LISTENERS` listeners or after shutdown began;
    /// the error of `local_addr`.
    ///
    /// ```
    /// let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.adopt(listener)?;
    /// assert_eq!(server.local_addrs(), vec![addr]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn adopt(&mut self, listener: TcpListener) -> io::Result<SocketAddr> {
        if self.listeners.len() >= MAX_LISTENERS || self.shutdown.is_some() {
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

    /// Registers every listener not registered yet with `registry`.
    ///
    /// Work: one `epoll_ctl` per new listener.
    ///
    /// # Errors
    /// The registry's error; listeners registered before it stay registered.
    ///
    /// ```
    /// let poll = mio::Poll::new()?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(10));
    /// server.bind("127.0.0.1:0".parse().unwrap())?;
    /// server.register(poll.registry())?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        for (index, listener) in self.listeners.iter_mut().enumerate() {
            if let (Some(socket), false) = (listener.socket.as_mut(), listener.registered) {
                let token = self.tokens.listener(index);
                registry.register(socket, token, Interest::READABLE)?;
                listener.registered = true;
            }
        }
        Ok(())
    }

    /// The addresses this server listens on, in the order they were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// True if `token` is in this server's range: route its events here.
    pub fn owns(&self, token: Token) -> bool {
        self.tokens.owns(token)
    }

    /// The tokens this server may use: `base .. base + TOKEN_SPAN`.
    pub fn token_range(&self) -> std::ops::Range<usize> {
        self.tokens.range()
    }

    /// Handles one event for a token this server owns; ignores others.
    ///
    /// A listener event accepts up to `accepts_per_turn` connections; a
    /// connection event echoes up to `budget` bytes on that connection.
    /// Events are hints: a stale one (for a connection already closed, even if
    /// its slab slot was reused since) is ignored at no cost.
    ///
    /// # Errors
    /// Only a listener's failure; a connection's failure closes it.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now: Instant,
    ) -> io::Result<()> {
        trace!(
            "token {}: readable={} writable={} read_closed={}",
            event.token().0,
            event.is_readable(),
            event.is_writable(),
            event.is_read_closed(),
        );
        let hints = Hints {
            read_closed: event.is_read_closed(),
            urgent: event.is_priority(),
        };
        self.handle_token(registry, event.token(), hints, now)
    }

    fn handle_token(
        &mut self,
        registry: &Registry,
        token: Token,
        hints: Hints,
        now: Instant,
    ) -> io::Result<()> {
        match self.tokens.decode(token) {
            Some(Target::Listener(index)) => {
                trace!("listener {index}: ready");
                if self.backoff.is_none() {
                    self.accept(registry, index, now)?;
                }
            }
            Some(Target::Connection { key, generation }) => match self.current(key, generation) {
                Some(conn) => {
                    // No further edge will announce this FIN: remember it
                    // (see `Connection::peer_closing`).
                    if hints.read_closed {
                        conn.peer_closing();
                    }
                    if hints.urgent {
                        conn.urgent_data();
                    }
                    self.drive(registry, key, now);
                }
                None => trace!("connection {key}: stale event ignored"),
            },
            None => trace!("token {}: not ours", token.0),
        }
        Ok(())
    }

    /// How long the host may sleep before calling [`EchoServer::handle_timeout`].
    ///
    /// Zero while budgeted work is left over (a connection yielded, a listener
    /// hit its accept limit); otherwise the earliest of the accept back-off,
    /// the next idle deadline and the shutdown deadline; `None` when nothing
    /// is due. Work: O(listeners).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let config = echoloop::Config { idle_timeout: Some(Duration::from_secs(30)), ..Default::default() };
    /// let server = echoloop::EchoServer::new(config, mio::Token(0));
    /// // Nothing to do and no connection to time out: sleep until an event.
    /// assert_eq!(server.poll_timeout(Instant::now()), None);
    /// ```
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let retry_now = self.backoff.as_ref().is_some_and(|b| b.retry_now);
        let accept_more = self.backoff.is_none() && self.listeners.iter().any(|l| l.more);
        if !self.ready.is_empty() || retry_now || accept_more {
            return Some(Duration::ZERO);
        }
        let idle = self
            .idle
            .peek()
            .and_then(|Reverse(check)| self.epoch.checked_add(Duration::from_millis(check.due_ms)));
        let (deadline, sweep) = match &self.shutdown {
            Some(shutdown) if !self.conns.is_empty() => {
                (shutdown.deadline, Some(shutdown.next_sweep))
            }
            _ => (None, None),
        };
        [
            self.backoff.as_ref().map(|b| b.until),
            idle,
            deadline,
            sweep,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|due| due.saturating_duration_since(now))
    }

    /// Does the work that is due at `now`: connections that yielded their
    /// budget, accepts left over or backed off, idle closes and the shutdown
    /// deadline. Call it once per loop turn, after the events.
    ///
    /// Work: one budget for each connection queued before the call, up to
    /// `accepts_per_turn` accepts per listener, up to 1024 idle closes, and
    /// at the shutdown deadline one close per remaining connection.
    ///
    /// # Errors
    /// Only a listener's failure.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        for _ in 0..self.ready.len() {
            let Some((key, generation)) = self.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.current(key, generation) {
                conn.registered &= !QUEUED;
                self.drive(registry, key, now);
            }
        }
        self.accept_due(registry, now)?;
        self.close_idle(registry, now);
        let deadline = self.shutdown.as_ref().and_then(|s| s.deadline);
        if deadline.is_some_and(|deadline| now >= deadline) {
            self.close_all(registry);
        } else {
            self.finish_quiet(registry, now);
        }
        Ok(())
    }

    /// Begins an orderly shutdown: stop accepting, and keep echoing until
    /// each client has everything back, for up to `shutdown_timeout`.
    /// Calling it again does nothing.
    ///
    /// A connection ends with an orderly FIN only when every byte it sent has
    /// been echoed: after the client's own FIN, or once it has been quiet for
    /// [`SHUTDOWN_QUIET`] (nothing read, nothing pending, nothing in its
    /// receive queue) — then our FIN goes out and the socket stays open until
    /// the client's FIN, so bytes still in flight are never met by a reset.
    /// A short read proves nothing here: the client may have more in flight.
    /// At the deadline, connections still open are closed, with a reset if
    /// bytes remain in either direction (see [`EchoServer::close_all`]).
    ///
    /// Work: closes the listeners and queues every connection for the next
    /// [`EchoServer::handle_timeout`], O(connections).
    ///
    /// ```
    /// use std::time::Instant;
    /// let poll = mio::Poll::new()?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.bind("127.0.0.1:0".parse().unwrap())?;
    /// server.register(poll.registry())?;
    /// let now = Instant::now();
    /// server.begin_shutdown(poll.registry(), now);
    /// // No connections: finished at once, and the port is closed.
    /// assert!(server.is_finished());
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// // Nothing left to wait for (with connections, the deadline and the
    /// // quiet checks would bound the sleep).
    /// assert_eq!(server.poll_timeout(now), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn begin_shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        info!(
            "shutting down: {} to flush, at most {}",
            plural(self.conns.len(), "connection"),
            human_duration(self.config.shutdown_timeout)
        );
        self.shutdown = Some(Shutdown {
            deadline: now.checked_add(self.config.shutdown_timeout),
            next_sweep: now.checked_add(SHUTDOWN_QUIET).unwrap_or(now),
        });
        for listener in &mut self.listeners {
            if let Some(mut socket) = listener.socket.take() {
                if listener.registered {
                    // Ignored: the socket is closed right after either way.
                    let _ = registry.deregister(&mut socket);
                }
            }
            listener.more = false;
        }
        if let Some(backoff) = self.backoff.take() {
            self.stats.backed_off += now.saturating_duration_since(backoff.since);
        }
        // Every connection is read once more (bytes may sit in its receive
        // queue with no edge to come), and its quiet period starts now.
        let now_ms = self.millis(now) as u32;
        for key in self.keys() {
            self.conns[key].last_active = now_ms;
            self.queue(key);
        }
    }

    /// Ends shutdown now: stops accepting if that has not happened yet, then
    /// closes every connection. One with bytes left in either direction
    /// (pending echoes, or unread bytes in its receive queue) is reset
    /// (SO_LINGER 0), so its client sees an error rather than a FIN after a
    /// truncated echo; the others get an orderly FIN after what the kernel
    /// still holds for them. Used when the shutdown timeout passes, and by
    /// the binary on a second SIGINT or SIGTERM. Afterwards
    /// [`EchoServer::is_finished`] is true.
    ///
    /// Work: one `ioctl` and one close per connection, O(connections).
    ///
    /// ```
    /// use std::time::Instant;
    /// let poll = mio::Poll::new()?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// server.bind("127.0.0.1:0".parse().unwrap())?;
    /// server.register(poll.registry())?;
    /// server.close_all(poll.registry());
    /// assert!(server.is_finished());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn close_all(&mut self, registry: &Registry) {
        if self.shutdown.is_none() {
            self.begin_shutdown(registry, Instant::now());
        }
        let keys = self.keys();
        if !keys.is_empty() {
            info!("closing {} now", plural(keys.len(), "connection"));
        }
        for key in keys {
            self.close(registry, key, Reason::Shutdown);
        }
    }

    /// True once shutdown has begun and every connection is closed: the host
    /// may drop the server.
    pub fn is_finished(&self) -> bool {
        self.shutdown.is_some() && self.conns.is_empty()
    }

    /// The counters so far. Work: O(1).
    ///
    /// ```
    /// let server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let stats = server.stats();
    /// assert_eq!((stats.accepted, stats.active, stats.bytes_out), (0, 0, 0));
    /// println!("{stats}"); // accepted=0 rejected=0 active=0 ...
    /// ```
    pub fn stats(&self) -> Stats {
        Stats {
            active: self.conns.len() as u64,
            ..self.stats
        }
    }

    /// Accepts until the backlog is empty or this turn's limit is reached.
    fn accept(&mut self, registry: &Registry, index: usize, now: Instant) -> io::Result<Accepted> {
        for _ in 0..self.config.accepts_per_turn {
            let Some(socket) = self.listeners[index].socket.as_ref() else {
                return Ok(Accepted::Drained);
            };
            match socket.accept() {
                Ok((stream, peer)) => self.admit(registry, stream, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.listeners[index].more = false;
                    return Ok(Accepted::Drained);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if out_of_descriptors(&e) => {
                    self.back_off(now, &e);
                    return Ok(Accepted::OutOfDescriptors);
                }
                Err(e) if concerns_one_connection(&e) => {
                    debug!("listener {index}: accept failed for one connection: {e}");
                    self.stats.accept_errors += 1;
                }
                Err(e) => return Err(e),
            }
        }
        // The limit for this turn is reached; more may be waiting.
        self.listeners[index].more = true;
        self.stats.accept_yields += 1;
        Ok(Accepted::Limit)
    }

    fn admit(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) {
        if self.conns.len() >= self.config.max_connections || self.shutdown.is_some() {
            self.stats.rejected += 1;
            if !self.over_limit_warned {
                warn!(
                    "connection limit ({}) reached: closing new connections at once",
                    self.config.max_connections
                );
                self.over_limit_warned = true;
            }
            debug!("{peer}: rejected, over the connection limit");
            return; // dropping `stream` closes it
        }
        // Echo replies are small and immediate: don't let Nagle hold them.
        // On Linux the socket inherited TCP_NODELAY from the listener.
        if !NODELAY_INHERITED {
            if let Err(err) = stream.set_nodelay(true) {
                debug!("{peer}: closed, TCP_NODELAY failed: {err}");
                self.stats.accept_errors += 1;
                return;
            }
        }
        let now_ms = self.millis(now);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // A new generation for each connection, so tokens of the slot's
        // previous occupant (still queued in this batch) no longer match.
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let token = self.tokens.connection(key, generation);
        if let Err(err) = registry.register(&mut stream, token, with_urgent(Interest::READABLE)) {
            debug!("{peer}: closed, register failed: {err}");
            self.stats.accept_errors += 1;
            return;
        }
        let mut conn = Connection::new(stream);
        conn.generation = generation;
        conn.registered = REG_READ;
        conn.last_active = now_ms as u32;
        entry.insert(conn);
        self.stats.accepted += 1;
        if let Some(timeout) = self.config.idle_timeout {
            self.idle.push(Reverse(IdleCheck {
                due_ms: now_ms.saturating_add(millis_of(timeout)),
                key: key as u32,
                generation,
            }));
            self.compact_idle();
        }
        debug!("connection {key}: accepted from {peer}");
    }

    /// Echoes on one connection, then closes it or updates its interest.
    fn drive(&mut self, registry: &Registry, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let progress = match conn.drive(&mut self.scratch, &self.limits) {
            Ok(progress) => progress,
            Err(err) => {
                debug!("connection {key}: closed after error: {err}");
                return self.close(registry, key, Reason::Error);
            }
        };
        trace!(
            "connection {key}: {progress:?}, {} pending",
            self.conns[key].pending_len()
        );
        self.count(&progress);
        let timed = self.config.idle_timeout.is_some() || self.shutdown.is_some();
        if progress.bytes_in + progress.bytes_out > 0 && timed {
            let now_ms = self.millis(now) as u32;
            self.conns[key].last_active = now_ms;
        }
        if self.conns[key].is_done() {
            debug!("connection {key}: closed by peer, all echoed");
            let reason = match self.shutdown {
                Some(_) => Reason::Shutdown,
                None => Reason::Peer,
            };
            return self.close(registry, key, reason);
        }
        if progress.more {
            self.stats.budget_yields += 1;
            self.queue(key);
        }
        if let Err(err) = self.update_interest(registry, key) {
            debug!("connection {key}: closed, reregister failed: {err}");
            self.close(registry, key, Reason::Error);
        }
    }

    fn count(&mut self, progress: &Progress) {
        self.stats.bytes_in += progress.bytes_in as u64;
        self.stats.bytes_out += progress.bytes_out as u64;
        if progress.paused {
            self.stats.backpressure_pauses += 1;
        }
    }

    // Derive interest from state and re-register only on change.
    fn update_interest(&mut self, registry: &Registry, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        let (want, bits) = match conn.wanted() {
            Some(want) => (want, interest_bits(want)),
            // Nothing to read or write: only a connection that is done wants
            // nothing, and it was closed above.
            None => return Ok(()),
        };
        if bits != conn.registered & (REG_READ | REG_WRITE) {
            let token = self.tokens.connection(key, conn.generation);
            registry.reregister(conn.stream_mut(), token, with_urgent(want))?;
            conn.registered = bits | (conn.registered & QUEUED);
        }
        Ok(())
    }

    fn queue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.registered & QUEUED == 0 {
            conn.registered |= QUEUED;
            self.ready.push_back((key, conn.generation));
        }
    }

    // Deregister before dropping a socket; this is the one place that does
    // it, and the one place that decides between FIN and reset.
    fn close(&mut self, registry: &Registry, key: usize, reason: Reason) {
        let mut conn = self.conns.remove(key);
        if let Err(err) = registry.deregister(conn.stream_mut()) {
            debug!("connection {key}: deregister failed: {err}");
        }
        // A FIN means "everything was echoed". Closing with bytes unread
        // would make the kernel choose (it resets), and closing with bytes
        // pending would send a FIN after a truncated echo: reset on purpose.
        let reset = match reason {
            Reason::Peer => false,
            Reason::Error => true,
            Reason::Idle | Reason::Shutdown => {
                !conn.is_done()
                    && (conn.pending_len() > 0 || unread(conn.stream_mut()).map_or(true, |n| n > 0))
            }
        };
        if reset {
            self.stats.closed_with_reset += 1;
            debug!("connection {key}: reset, bytes left in flight");
            if let Err(err) =
                socket2::SockRef::from(&*conn.stream_mut()).set_linger(Some(Duration::ZERO))
            {
                debug!("connection {key}: SO_LINGER failed: {err}");
            }
        }
        conn.release(&mut self.scratch);
        let counter = match reason {
            Reason::Peer => &mut self.stats.closed_by_peer,
            Reason::Error => &mut self.stats.closed_by_error,
            Reason::Idle => &mut self.stats.closed_by_idle,
            Reason::Shutdown => &mut self.stats.closed_by_shutdown,
        };
        *counter += 1;
        // A new episode of "limit reached" is warned about only once the
        // server has had real room again, so churn at the limit cannot spam.
        if self.conns.len() < self.config.max_connections - self.config.max_connections / 10 {
            self.over_limit_warned = false;
        }
        // A descriptor was just freed: if accept ran out of them, retry now.
        if let Some(backoff) = self.backoff.as_mut() {
            backoff.retry_now = true;
        }
    }

    fn back_off(&mut self, now: Instant, err: &io::Error) {
        match self.backoff.as_mut() {
            Some(backoff) => {
                backoff.delay = backoff.delay.saturating_mul(2).min(BACKOFF_MAX);
                backoff.until = now.checked_add(backoff.delay).unwrap_or(now);
                backoff.retry_now = false;
                debug!(
                    "accept: still out of descriptors, next try in {:?}",
                    backoff.delay
                );
            }
            None => {
                warn!(
                    "accept: out of descriptors ({err}) with {} connections; \
                     pausing accepts until one closes or {BACKOFF_START:?} pass",
                    self.conns.len()
                );
                self.stats.accept_backoffs += 1;
                self.backoff = Some(Backoff {
                    since: now,
                    until: now.checked_add(BACKOFF_START).unwrap_or(now),
                    delay: BACKOFF_START,
                    retry_now: false,
                });
            }
        }
    }

    // Accept where this turn left connections in a backlog, or where the
    // back-off has ended. The listener's edge may have fired while we were
    // backed off; queued connections won't raise another, so accept now.
    fn accept_due(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        let retrying = match self.backoff.as_ref() {
            Some(backoff) if backoff.retry_now || now >= backoff.until => true,
            Some(_) => return Ok(()),
            None => false,
        };
        for index in 0..self.listeners.len() {
            if retrying || self.listeners[index].more {
                if let Accepted::OutOfDescriptors = self.accept(registry, index, now)? {
                    return Ok(()); // `back_off` extended the episode
                }
            }
        }
        if let Some(backoff) = self.backoff.take() {
            self.stats.backed_off += now.saturating_duration_since(backoff.since);
            info!("accept: descriptors available again");
        }
        Ok(())
    }

    fn close_idle(&mut self, registry: &Registry, now: Instant) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        let timeout_ms = millis_of(timeout);
        let now_ms = self.millis(now);
        let mut closed = 0;
        while closed < IDLE_CLOSES_PER_TURN {
            match self.idle.peek() {
                Some(Reverse(check)) if check.due_ms <= now_ms => {}
                _ => break,
            }
            let Some(Reverse(check)) = self.idle.pop() else {
                break;
            };
            let key = check.key as usize;
            // That connection may be gone, its slot maybe reused.
            let Some(conn) = self.current(key, check.generation) else {
                continue;
            };
            let idle_ms = u64::from((now_ms as u32).wrapping_sub(conn.last_active));
            if idle_ms >= timeout_ms {
                debug!("connection {key}: closed after {idle_ms} ms idle");
                self.close(registry, key, Reason::Idle);
                closed += 1;
            } else {
                // Traffic since this check was queued: look again when the
                // connection could next be idle long enough.
                self.idle.push(Reverse(IdleCheck {
                    due_ms: now_ms.saturating_add(timeout_ms - idle_ms),
                    ..check
                }));
            }
        }
    }

    // Checks of closed connections stay in the heap until they come due.
    // Under churn with a long timeout they could pile up, so once they
    // outnumber live connections the heap is rebuilt without them: each
    // rebuild removes at least half, so the cost per connection stays O(1).
    fn compact_idle(&mut self) {
        if self.idle.len() <= 2 * self.conns.len() + IDLE_SLACK {
            return;
        }
        let conns = &self.conns;
        self.idle.retain(|Reverse(check)| {
            conns
                .get(check.key as usize)
                .is_some_and(|conn| conn.generation == check.generation)
        });
    }

    /// The connection at `key` if it is still the one `generation` names:
    /// the one check that keeps stale tokens and queue entries harmless.
    fn current(&mut self, key: usize, generation: u16) -> Option<&mut Connection<TcpStream>> {
        self.conns
            .get_mut(key)
            .filter(|conn| conn.generation == generation)
    }

    fn keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(key, _)| key).collect()
    }

    fn millis(&self, now: Instant) -> u64 {
        millis_of(now.saturating_duration_since(self.epoch))
    }

    /// During shutdown: sends our FIN to each connection that has gone
    /// quiet (see [`SHUTDOWN_QUIET`]) and reads again any that has bytes
    /// waiting. Runs every `QUIET_SWEEP`; O(connections) each time, plus one
    /// `ioctl` per connection that is a candidate.
    fn finish_quiet(&mut self, registry: &Registry, now: Instant) {
        let Some(shutdown) = self.shutdown.as_mut() else {
            return;
        };
        if now < shutdown.next_sweep || self.conns.is_empty() {
            return;
        }
        shutdown.next_sweep = now.checked_add(QUIET_SWEEP).unwrap_or(now);
        let now_ms = self.millis(now) as u32;
        let quiet_ms = millis_of(SHUTDOWN_QUIET) as u32;
        for key in self.keys() {
            let conn = &mut self.conns[key];
            let quiet = now_ms.wrapping_sub(conn.last_active) >= quiet_ms;
            if !quiet || conn.write_shut() || conn.pending_len() > 0 || conn.is_paused() {
                continue;
            }
            match unread(conn.stream_mut()) {
                Ok(0) => {
                    if let Err(err) = conn.shutdown_write() {
                        debug!("connection {key}: shutdown failed: {err}");
                        self.close(registry, key, Reason::Error);
                    } else {
                        debug!("connection {key}: quiet, FIN sent");
                    }
                }
                // Bytes wait with no edge to announce them: read them.
                Ok(_) => self.queue(key),
                Err(err) => {
                    debug!("connection {key}: closed, FIONREAD failed: {err}");
                    self.close(registry, key, Reason::Error);
                }
            }
        }
    }
}

/// What an event said beyond "ready".
#[derive(Debug, Clone, Copy, Default)]
struct Hints {
    // The peer's FIN has arrived.
    read_closed: bool,
    // TCP urgent data has arrived.
    urgent: bool,
}

/// `interest` plus PRIORITY where urgent data must be noticed (Linux: a
/// read stops at the urgent mark, see `Connection::urgent_data`). Costs no
/// syscall: it rides along with registrations made anyway.
fn with_urgent(interest: Interest) -> Interest {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let interest = if interest.is_readable() {
        interest.add(Interest::PRIORITY)
    } else {
        interest
    };
    interest
}

/// Bytes waiting in a socket's receive queue (FIONREAD). Only on the
/// shutdown and close paths, never per message.
fn unread(stream: &mut TcpStream) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass, and the
    // descriptor is open for as long as `stream` is borrowed.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn interest_bits(interest: Interest) -> u8 {
    let mut bits = 0;
    if interest.is_readable() {
        bits |= REG_READ;
    }
    if interest.is_writable() {
        bits |= REG_WRITE;
    }
    bits
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
    use std::io::Write;
    use std::net::TcpStream as StdStream;

    fn server_with_listener(poll: &mio::Poll, config: Config) -> (EchoServer, SocketAddr) {
        let mut server = EchoServer::new(config, Token(100));
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        (server, addr)
    }

    // Accepts one pending connection by handling a listener event.
    fn accept_one(server: &mut EchoServer, poll: &mio::Poll) -> (usize, Token) {
        let before = server.stats().accepted;
        for _ in 0..1000 {
            let listener = server.tokens.listener(0);
            server
                .handle_token(poll.registry(), listener, Hints::default(), Instant::now())
                .unwrap();
            if server.stats().accepted > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (key, conn) = server.conns.iter().last().expect("accepted a connection");
        (key, server.tokens.connection(key, conn.generation))
    }

    #[test]
    fn stale_token_of_a_reused_slot_is_ignored() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_listener(&poll, Config::default());
        let _a = StdStream::connect(addr).unwrap();
        let (key_a, token_a) = accept_one(&mut server, &poll);
        // A closes (as if its error was handled earlier in this batch)...
        server.close(poll.registry(), key_a, Reason::Error);
        // ...and B, accepted in the same batch, gets the same slab key.
        let mut b = StdStream::connect(addr).unwrap();
        let (key_b, token_b) = accept_one(&mut server, &poll);
        assert_eq!(key_a, key_b, "slab reuses the freed key");
        assert_ne!(token_a, token_b, "but the token differs");
        b.write_all(b"for b only").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // The event queued for A arrives now: it must not touch B.
        server
            .handle_token(poll.registry(), token_a, Hints::default(), Instant::now())
            .unwrap();
        assert_eq!(server.stats().bytes_in, 0, "stale event drove the newcomer");
        assert_eq!(server.stats().active, 1);
        // B's own event echoes B's bytes.
        server
            .handle_token(poll.registry(), token_b, Hints::default(), Instant::now())
            .unwrap();
        assert_eq!(server.stats().bytes_in, 10);
    }

    #[test]
    fn idle_checks_of_closed_connections_do_not_pile_up() {
        let poll = mio::Poll::new().unwrap();
        let config = Config {
            idle_timeout: Some(Duration::from_secs(3600)),
            ..Config::default()
        };
        let (mut server, addr) = server_with_listener(&poll, config);
        for _ in 0..(IDLE_SLACK + 200) {
            let _client = StdStream::connect(addr).unwrap();
            let (key, _) = accept_one(&mut server, &poll);
            server.close(poll.registry(), key, Reason::Peer);
        }
        assert!(
            server.idle.len() <= IDLE_SLACK + 1,
            "{} idle checks for {} connections",
            server.idle.len(),
            server.conns.len()
        );
    }

    #[test]
    fn accepted_sockets_have_nodelay() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_listener(&poll, Config::default());
        let _client = StdStream::connect(addr).unwrap();
        let (key, _) = accept_one(&mut server, &poll);
        assert!(server.conns[key].stream_mut().nodelay().unwrap());
    }

    #[test]
    fn tokens_outside_the_range_are_not_ours() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, _) = server_with_listener(&poll, Config::default());
        assert!(!server.owns(Token(99)));
        assert!(server.owns(Token(100)));
        server
            .handle_token(poll.registry(), Token(5), Hints::default(), Instant::now())
            .unwrap();
        assert_eq!(server.stats(), Stats::default());
    }

    #[test]
    fn slab_entry_is_small() {
        let entry = std::mem::size_of::<Connection<TcpStream>>();
        println!(
            "connection {entry} bytes, stream {}, slab entry {}",
            std::mem::size_of::<TcpStream>(),
            std::mem::size_of::<Slab<Connection<TcpStream>>>()
        );
        // mio adds a selector id to each socket in debug builds only.
        let limit = if cfg!(debug_assertions) { 32 } else { 24 };
        assert!(entry <= limit, "connection grew to {entry} bytes");
    }
}
