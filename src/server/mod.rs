//! The echo service as a guest in a host's `mio::Poll`: [`EchoServer`],
//! composed of parts that each own their state, and the orchestration
//! between them.
//!
//! The host owns the `Poll` and calls, in each turn of its loop:
//!
//! ```text
//!   poll(events, server.poll_timeout(now))       how long may we sleep?
//!   server.handle_events(registry, events, now)  accept / echo, for each
//!                                                event the server owns
//!   (the host's own events, if it said any were left)
//!   server.handle_timeout(registry, now)         leftover work, deadlines
//! ```
//!
//! The parts, one file each, none reaching into another's fields:
//!
//! * `acceptor.rs`: the listeners, accepting (bounded per turn), the
//!   connection limit, and what happens when descriptors run out.
//! * `connections.rs`: the connections in their slots: one connection's
//!   turn (echo, interest, the ready queue) and `close` (FIN or reset).
//! * `idle.rs`: the idle timers and the server's clock.
//! * `udp.rs`: the UDP endpoint (`rate.rs`: its per-source rate limit).
//! * `shutdown.rs`: the shutdown state and the rule it keeps.
//! * `shared.rs`: the limits several loops share.
//! * `stats.rs`: the counters.
//! * `reuseport.rs`: listening sockets, and `SO_REUSEPORT` groups of them.
//!
//! Orchestration, which part hears of an event and in what order, is here
//! and in `route.rs` only: `route.rs` takes an event to its part (accept →
//! connection → read → write → close), this file holds the per-turn calls
//! and the steps that touch several parts (a close, the shutdown).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;
use mio::event::Event;
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Registry, Token};

use crate::config::{Config, ConfigError};
use crate::text::{human_duration, plural};
use crate::token::Tokens;

mod acceptor;
mod connections;
mod idle;
mod rate;
mod reuseport;
mod route;
mod shared;
mod shutdown;
mod stats;
mod udp;

pub use reuseport::{listener_group, udp_group, MAX_GROUP};
pub use shared::SharedLimits;
pub use stats::Stats;

use acceptor::Acceptor;
use connections::{Connections, Reason};
use idle::IdleTimers;
use route::Hints;
use shutdown::Shutdown;
use udp::Udp;

/// A TCP echo server that runs inside a host's `mio::Poll`, and a UDP one
/// for each socket given to [`EchoServer::bind_udp`] or
/// [`EchoServer::adopt_udp`].
///
/// It owns its listeners, UDP sockets and connections, never a `Poll`,
/// `Waker` or thread, and keeps no global state. It uses only tokens in
/// `base .. base + TOKEN_SPAN` (see [`EchoServer::owns`]). Each method does
/// a bounded amount of work, stated on the method. A connection's failure is
/// handled inside; only a listener's failure reaches the host as an error.
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Instant;
/// use mio::{Events, Poll, Token};
/// use echoloop::{Config, EchoServer};
///
/// let mut poll = Poll::new()?;
/// let mut server = EchoServer::new(Config::default(), Token(0))?;
/// let addr = server.bind("127.0.0.1:0".parse()?)?;
/// server.register(poll.registry())?;
///
/// let mut client = std::net::TcpStream::connect(addr)?;
/// client.write_all(b"ping")?;
/// client.set_nonblocking(true)?;
/// let mut events = Events::with_capacity(64);
/// let mut reply = [0u8; 4];
/// let mut got = 0;
/// while got < 4 {
///     poll.poll(&mut events, server.poll_timeout(Instant::now()))?;
///     let now = Instant::now();
///     server.handle_events(poll.registry(), &events, now)?;
///     server.handle_timeout(poll.registry(), now)?;
///     match client.read(&mut reply[got..]) {
///         Ok(n) => got += n,
///         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
///         Err(e) => return Err(e.into()),
///     }
/// }
/// assert_eq!(&reply, b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EchoServer {
    config: Config,
    tokens: Tokens,
    acceptor: Acceptor,
    conns: Connections,
    idle: IdleTimers,
    udp: Udp,
    shutdown: Shutdown,
}

impl EchoServer {
    /// Creates a server with no listeners that will use the tokens from
    /// `base` on (`base .. base + TOKEN_SPAN`).
    ///
    /// Allocates the shared read buffer (`config.read_buffer` bytes) and
    /// nothing per connection; reads the open-files limit only through
    /// `Config::default`.
    ///
    /// # Errors
    /// A [`ConfigError`] if `config` fails [`Config::validate`], or if
    /// `base + TOKEN_SPAN` does not fit in `usize` (field `"base"`).
    ///
    /// ```
    /// let server = echoloop::EchoServer::new(echoloop::Config::default(), mio::Token(0))?;
    /// assert!(server.owns(mio::Token(0)));
    /// let mut bad = echoloop::Config::default();
    /// bad.budget = 0;
    /// assert!(echoloop::EchoServer::new(bad, mio::Token(0)).is_err());
    /// # Ok::<(), echoloop::ConfigError>(())
    /// ```
    pub fn new(config: Config, base: Token) -> Result<EchoServer, ConfigError> {
        let limits = SharedLimits::new(&config);
        EchoServer::build(config, base, limits, false)
    }

    /// Creates a server, like [`EchoServer::new`], that is one of several
    /// loops sharing `limits` (made from the same `config`): at most
    /// `config.max_connections` connections over all of them, and the UDP
    /// rate limit over all of them. The servers touch `limits` only when
    /// they admit or close a connection (see [`SharedLimits`]). Run each
    /// server on its own thread with its own `Poll`; the crate docs show the
    /// whole host.
    ///
    /// # Errors
    /// As [`EchoServer::new`].
    ///
    /// ```
    /// use echoloop::{Config, EchoServer, SharedLimits};
    /// let config = Config::default();
    /// let limits = SharedLimits::new(&config);
    /// let a = EchoServer::with_shared_limits(config.clone(), mio::Token(0), &limits)?;
    /// let b = EchoServer::with_shared_limits(config, mio::Token(0), &limits)?;
    /// assert_eq!(limits.active(), 0);
    /// # drop((a, b));
    /// # Ok::<(), echoloop::ConfigError>(())
    /// ```
    pub fn with_shared_limits(
        config: Config,
        base: Token,
        limits: &SharedLimits,
    ) -> Result<EchoServer, ConfigError> {
        EchoServer::build(config, base, limits.clone(), true)
    }

    fn build(
        config: Config,
        base: Token,
        limits: SharedLimits,
        shared: bool,
    ) -> Result<EchoServer, ConfigError> {
        config.validate()?;
        let tokens = Tokens::new(base).ok_or_else(|| {
            ConfigError::new("base", "token + TOKEN_SPAN must fit in usize".to_string())
        })?;
        Ok(EchoServer {
            udp: Udp::new(tokens, limits.udp_rate()),
            acceptor: Acceptor::new(
                tokens,
                config.accepts_per_turn,
                config.max_connections,
                limits,
                shared,
            ),
            conns: Connections::new(tokens, &config),
            idle: IdleTimers::new(config.idle_timeout, Instant::now()),
            shutdown: Shutdown::default(),
            tokens,
            config,
        })
    }

    /// Binds a listener of its own to `addr` and returns the bound address
    /// (with the real port when `addr` had port 0).
    ///
    /// IPv6 listeners are IPv6-only, so `[::]:P` and `0.0.0.0:P` can both be
    /// bound. Backlog 1024. Call [`EchoServer::register`] afterwards.
    ///
    /// # Errors
    /// The bind's error (address in use, not available), or `InvalidInput`
    /// past 16 listeners or after shutdown began.
    ///
    /// ```
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let addr = server.bind("127.0.0.1:0".parse()?)?;
    /// assert_ne!(addr.port(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.adopt(reuseport::listening(addr, false)?)
    }

    /// Adopts a listener the host bound itself (custom backlog, inherited
    /// socket) and returns its address. It must be non-blocking (as every
    /// `mio::net::TcpListener` is). On Linux this sets TCP_NODELAY and
    /// SO_OOBINLINE on the listener, which accepted sockets inherit. Call
    /// [`EchoServer::register`] afterwards.
    ///
    /// # Errors
    /// `InvalidInput` past 16 listeners or after shutdown began; the error of
    /// `local_addr` or of setting the options.
    ///
    /// ```
    /// let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse()?)?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let addr = server.adopt(listener)?;
    /// assert_eq!(server.local_addrs(), vec![addr]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&mut self, listener: TcpListener) -> io::Result<SocketAddr> {
        self.acceptor.adopt(listener)
    }

    /// Binds a UDP socket of its own to `addr` and returns the bound address
    /// (with the real port when `addr` had port 0).
    ///
    /// IPv6 sockets are IPv6-only. No `SO_REUSEADDR` (for UDP on Linux it
    /// would let a second socket share the port silently). Call
    /// [`EchoServer::register`] afterwards.
    ///
    /// # Errors
    /// The bind's error (address in use, not available), or `InvalidInput`
    /// past 16 sockets or after shutdown began.
    ///
    /// ```
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let addr = server.bind_udp("127.0.0.1:0".parse()?)?;
    /// assert_eq!(server.udp_addrs(), vec![addr]);
    /// assert!(server.local_addrs().is_empty()); // TCP listeners only
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_udp(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.udp.check_room()?;
        self.adopt_udp(reuseport::udp_bound(addr, false)?)
    }

    /// Adopts a UDP socket the host bound itself (for instance one of a
    /// [`udp_group`], one per loop) and returns its address. It must be
    /// non-blocking and unconnected. Allocates the UDP receive buffer (64
    /// KiB) with the first socket. Call [`EchoServer::register`] afterwards.
    ///
    /// Each datagram goes back to its sender as one datagram, byte for byte,
    /// at most 64 per socket per turn; a reply
    /// the socket will not take is dropped and counted, never queued;
    /// datagrams from source port 0, from our own ports, or from the ports
    /// of services that answer or amplify (echo, chargen, DNS, NTP, SSDP,
    /// memcached, ...) are refused and counted.
    ///
    /// # Errors
    /// `InvalidInput` past 16 sockets or after shutdown began; the error of
    /// `local_addr`.
    ///
    /// ```
    /// let socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse()?)?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let addr = server.adopt_udp(socket)?;
    /// assert_eq!(server.udp_addrs(), vec![addr]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt_udp(&mut self, socket: UdpSocket) -> io::Result<SocketAddr> {
        self.udp.adopt(socket)
    }

    /// The addresses of the TCP listeners, in the order they were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.acceptor.local_addrs()
    }

    /// The addresses of the UDP sockets, in the order they were added.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.addrs()
    }

    /// Registers every listener and UDP socket not registered yet with
    /// `registry`.
    ///
    /// Work: one `epoll_ctl` per new listener or UDP socket.
    ///
    /// # Errors
    /// The registry's error; sockets registered before it stay registered.
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        self.acceptor.register(registry)?;
        self.udp.register(registry)
    }

    /// True if `token` is in this server's range: its events are ours.
    #[inline]
    pub fn owns(&self, token: Token) -> bool {
        self.tokens.owns(token)
    }

    /// Handles every event in `events` whose token this server owns, in
    /// order, and returns how many it left to the host: events for tokens
    /// outside its range, which the host then handles itself (when the count
    /// is not 0).
    ///
    /// A listener event accepts up to `accepts_per_turn` connections; a
    /// connection event echoes up to `budget` bytes on that connection; a
    /// UDP socket's event echoes up to 64
    /// datagrams. Events are hints: a stale one (for a connection already
    /// closed, even if its slab slot was reused since) is ignored at the
    /// cost of one compare.
    ///
    /// # Errors
    /// Only a listener's failure (a connection's failure closes it); the
    /// events after it in the batch are then left unhandled.
    ///
    /// ```
    /// use std::time::Instant;
    /// use mio::{Events, Poll, Token, Waker};
    /// use echoloop::{Config, EchoServer};
    ///
    /// const WAKE: Token = Token(0);
    /// let mut poll = Poll::new()?;
    /// let waker = Waker::new(poll.registry(), WAKE)?;
    /// let mut server = EchoServer::new(Config::default(), Token(1))?;
    /// server.bind("127.0.0.1:0".parse()?)?;
    /// server.register(poll.registry())?;
    ///
    /// waker.wake()?;
    /// let mut events = Events::with_capacity(64);
    /// poll.poll(&mut events, server.poll_timeout(Instant::now()))?;
    /// let now = Instant::now();
    /// let left = server.handle_events(poll.registry(), &events, now)?;
    /// assert_eq!(left, 1, "the waker's event is the host's");
    /// for event in events.iter().filter(|e| !server.owns(e.token())) {
    ///     assert_eq!(event.token(), WAKE);
    /// }
    /// server.handle_timeout(poll.registry(), now)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle_events(
        &mut self,
        registry: &Registry,
        events: &Events,
        now: Instant,
    ) -> io::Result<usize> {
        let stamp = self.begin_call(now);
        let mut foreign = 0;
        for event in events.iter() {
            if self.owns(event.token()) {
                self.route(registry, event.token(), Hints::of(event), now, stamp)?;
            } else {
                foreign += 1;
            }
        }
        Ok(foreign)
    }

    /// Handles one event, as [`EchoServer::handle_events`] does for each,
    /// for a host that routes events itself; ignores tokens it does not own.
    ///
    /// # Errors
    /// Only a listener's failure.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now: Instant,
    ) -> io::Result<()> {
        if !self.owns(event.token()) {
            return Ok(());
        }
        let stamp = self.begin_call(now);
        self.route(registry, event.token(), Hints::of(event), now, stamp)
    }

    /// How long the host may sleep before calling
    /// [`EchoServer::handle_timeout`].
    ///
    /// Zero while budgeted work is left over (a connection used its read
    /// budget, a listener its accepts, a UDP socket its datagrams);
    /// otherwise the earliest of the accept back-off, the next idle deadline
    /// and the shutdown deadline; `None` when nothing is due. Work:
    /// O(listeners).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let mut config = echoloop::Config::default();
    /// config.idle_timeout = Some(Duration::from_secs(30));
    /// let server = echoloop::EchoServer::new(config, mio::Token(0))?;
    /// // Nothing to do and no connection to time out: sleep until an event.
    /// assert_eq!(server.poll_timeout(Instant::now()), None);
    /// # Ok::<(), echoloop::ConfigError>(())
    /// ```
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.conns.ready_len() > 0 || self.udp.more() {
            return Some(Duration::ZERO);
        }
        let shutdown = match self.conns.len() {
            0 => None,
            _ => self.shutdown.deadline(),
        };
        [self.acceptor.due(now), self.idle.due(), shutdown]
            .into_iter()
            .flatten()
            .min()
            .map(|due| due.saturating_duration_since(now))
    }

    /// Does the work that is due at `now`: connections that used their read
    /// budget, UDP sockets that used theirs, accepts left over or backed
    /// off, idle closes and the shutdown deadline. Call it once per loop
    /// turn, after the events.
    ///
    /// Work: one budget for each connection queued before the call and each
    /// UDP socket that used its budget, up to `accepts_per_turn` accepts per
    /// listener, up to 1024 idle closes, and at the shutdown deadline one
    /// close per remaining connection.
    ///
    /// # Errors
    /// Only a listener's failure.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        let stamp = self.begin_call(now);
        for _ in 0..self.conns.ready_len() {
            let Some((key, generation)) = self.conns.take_ready() else {
                break;
            };
            self.drive(registry, key, generation, Hints::default(), stamp);
        }
        self.udp.serve_due(now);
        self.accept_due(registry, now, stamp)?;
        for _ in 0..idle::CLOSES_PER_TURN {
            let conns = &self.conns;
            let Some(key) = self
                .idle
                .next_expired(now, |key, generation| conns.last_active(key, generation))
            else {
                break;
            };
            self.close(registry, key, Reason::Idle);
        }
        if self.shutdown.passed(now) {
            self.close_all(registry);
        }
        Ok(())
    }

    /// Begins an orderly shutdown: stop accepting, close the UDP sockets
    /// (datagrams have nothing to drain), and keep echoing until each
    /// client has sent its FIN and had everything back, for up to
    /// `shutdown_timeout`. Calling it again does nothing.
    ///
    /// A connection ends with our orderly FIN only after the client's own
    /// FIN and the echo of every byte before it. A client that stays open
    /// (even one that has gone quiet: bytes may still be on their way) is
    /// reset at the deadline, since only a reset says "cut short" (see
    /// [`EchoServer::close_all`]). So an idle client holds shutdown until
    /// `shutdown_timeout`; a host that wants shutdown shorter sets a shorter
    /// timeout.
    ///
    /// Work: closes the listeners and UDP sockets and queues every
    /// connection for the next [`EchoServer::handle_timeout`],
    /// O(connections).
    ///
    /// ```
    /// use std::time::Instant;
    /// let poll = mio::Poll::new()?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let addr = server.bind("127.0.0.1:0".parse()?)?;
    /// server.register(poll.registry())?;
    /// let now = Instant::now();
    /// server.begin_shutdown(poll.registry(), now);
    /// // No connections: finished at once, and the port is closed.
    /// assert!(server.is_finished());
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// assert_eq!(server.poll_timeout(now), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_shutdown(&mut self, registry: &Registry, now: Instant) {
        if !self.shutdown.begin(now, self.config.shutdown_timeout) {
            return;
        }
        info!(
            "shutting down: {} to flush, at most {}",
            plural(self.conns.len(), "connection"),
            human_duration(self.config.shutdown_timeout)
        );
        self.acceptor.close(registry, now);
        self.udp.close(registry);
        self.conns.queue_all();
    }

    /// Ends shutdown now: stops accepting if that has not happened yet, then
    /// resets every connection still open (SO_LINGER 0, counted in
    /// `closed_with_reset`): its client did not finish, so it must see an
    /// error rather than a FIN that would claim everything was echoed. Used
    /// at the shutdown deadline, and by the binary on a second SIGINT or
    /// SIGTERM. Afterwards [`EchoServer::is_finished`] is true.
    ///
    /// Work: one close per connection, O(connections).
    ///
    /// ```
    /// let poll = mio::Poll::new()?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// server.bind("127.0.0.1:0".parse()?)?;
    /// server.register(poll.registry())?;
    /// server.close_all(poll.registry());
    /// assert!(server.is_finished());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close_all(&mut self, registry: &Registry) {
        self.begin_shutdown(registry, Instant::now());
        let keys = self.conns.keys();
        if !keys.is_empty() {
            info!("resetting {} still open", plural(keys.len(), "connection"));
        }
        for key in keys {
            self.close(registry, key, Reason::Shutdown);
        }
    }

    /// True once shutdown has begun and every connection is closed: the host
    /// may drop the server. UDP sockets never hold it up (shutdown closed
    /// them at once).
    pub fn is_finished(&self) -> bool {
        self.shutdown.has_begun() && self.conns.len() == 0
    }

    /// The counters so far. Work: O(1).
    ///
    /// ```
    /// let server = echoloop::EchoServer::new(Default::default(), mio::Token(0))?;
    /// let stats = server.stats();
    /// assert_eq!((stats.accepted, stats.active, stats.bytes_out), (0, 0, 0));
    /// println!("{stats}"); // accepted=0 rejected=0 active=0 ...
    /// # Ok::<(), echoloop::ConfigError>(())
    /// ```
    pub fn stats(&self) -> Stats {
        Stats::gather(
            self.conns.len(),
            self.acceptor.counts(),
            self.conns.counts(),
            self.udp.counts(),
        )
    }

    /// Bytes of pending buffers the server has freed so far (drained
    /// buffers beyond a pool of 64 kept for reuse).
    ///
    /// The server never asks the allocator to return memory to the system:
    /// that acts on the whole process and is the host's decision. A host
    /// whose allocator keeps freed blocks (glibc) may call its trim function
    /// when this has grown by a few MiB since it last did; the `echoloop`
    /// binary calls `malloc_trim(0)` after every 4 MiB, so memory falls back
    /// near idle after clients that never read have left. Work: O(1).
    pub fn freed_buffer_bytes(&self) -> u64 {
        self.conns.freed_buffer_bytes()
    }

    /// What every call from the host reads once: `now` on the server's
    /// clock (returned, for `last_active` stamps) and the trace level.
    fn begin_call(&mut self, now: Instant) -> u32 {
        self.conns.begin_call();
        self.idle.stamp(now)
    }

    /// Closes the connection at `key` and tells the acceptor its slot is
    /// free: the one way a connection ends.
    fn close(&mut self, registry: &Registry, key: usize, reason: Reason) {
        self.conns.close(registry, key, reason);
        self.acceptor.on_close(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream as StdStream;

    fn server_with_listener(poll: &mio::Poll, config: Config) -> (EchoServer, SocketAddr) {
        let mut server = EchoServer::new(config, Token(100)).unwrap();
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        (server, addr)
    }

    // Accepts one pending connection by routing a listener event.
    fn accept_one(server: &mut EchoServer, poll: &mio::Poll) -> Token {
        let before = server.stats().accepted;
        let (listener, now) = (server.tokens.listener(0), Instant::now());
        for _ in 0..1000 {
            let stamp = server.idle.stamp(now);
            server
                .route(poll.registry(), listener, Hints::default(), now, stamp)
                .unwrap();
            if server.stats().accepted > before {
                let key = *server.conns.keys().last().unwrap();
                let generation = (0..=u16::MAX)
                    .find(|g| server.conns.last_active(key, *g).is_some())
                    .unwrap();
                return server.tokens.connection(key, generation);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nothing accepted");
    }

    fn route(server: &mut EchoServer, poll: &mio::Poll, token: Token) {
        let now = Instant::now();
        let stamp = server.idle.stamp(now);
        server
            .route(poll.registry(), token, Hints::default(), now, stamp)
            .unwrap();
    }

    #[test]
    fn a_stale_token_of_a_reused_slot_is_ignored() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_listener(&poll, Config::default());
        let _a = StdStream::connect(addr).unwrap();
        let token_a = accept_one(&mut server, &poll);
        // A closes (as if its error was handled earlier in this batch)...
        let key_a = server.conns.keys()[0];
        server.close(poll.registry(), key_a, Reason::Error);
        // ...and B, accepted in the same batch, gets the same slab key.
        let mut b = StdStream::connect(addr).unwrap();
        let token_b = accept_one(&mut server, &poll);
        assert_eq!(server.conns.keys(), vec![key_a], "slab reuses the key");
        assert_ne!(token_a, token_b, "but the token differs");
        b.write_all(b"for b only").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // The event queued for A arrives now: it must not touch B.
        route(&mut server, &poll, token_a);
        assert_eq!(server.stats().bytes_in, 0, "stale event drove the newcomer");
        assert_eq!(server.stats().active, 1);
        // B's own event echoes B's bytes.
        route(&mut server, &poll, token_b);
        assert_eq!(server.stats().bytes_in, 10);
    }

    #[test]
    fn a_backpressure_pause_is_counted() {
        let poll = mio::Poll::new().unwrap();
        let config = Config {
            max_pending: 4096,
            read_buffer: 4096,
            ..Config::default()
        };
        let (mut server, addr) = server_with_listener(&poll, config);
        // A client that sends and never reads, with small buffers so the
        // echo backs up soon.
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        client.connect(&addr.into()).unwrap();
        let mut client: StdStream = client.into();
        client.set_nonblocking(true).unwrap();
        let token = accept_one(&mut server, &poll);
        let chunk = [7u8; 16 * 1024];
        let started = Instant::now();
        while server.stats().backpressure_pauses == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never paused");
            let _ = client.write(&chunk);
            route(&mut server, &poll, token);
        }
        assert_eq!(server.stats().backpressure_pauses, 1);
    }

    #[test]
    fn tokens_outside_the_range_are_not_ours() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, _) = server_with_listener(&poll, Config::default());
        assert!(!server.owns(Token(99)));
        assert!(server.owns(Token(100)));
        route(&mut server, &poll, Token(5));
        assert_eq!(server.stats(), Stats::default());
    }

    #[test]
    fn events_under_the_udp_token_of_any_base_are_served() {
        let poll = mio::Poll::new().unwrap();
        let mut server = EchoServer::new(Config::default(), Token(5000)).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.adopt_udp(socket).unwrap();
        server.register(poll.registry()).unwrap();
        let token = server.tokens.udp(0);
        assert!(server.owns(token) && token != server.tokens.listener(0));
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"via token", addr).unwrap();
        while server.stats().udp_datagrams_out == 0 {
            route(&mut server, &poll, token);
        }
        let mut got = [0u8; 16];
        let (n, from) = c.recv_from(&mut got).unwrap();
        assert_eq!((&got[..n], from), (&b"via token"[..], addr));
    }

    #[test]
    fn shutdown_closes_udp_sockets_and_does_not_wait_for_them() {
        let poll = mio::Poll::new().unwrap();
        let mut server = EchoServer::new(Config::default(), Token(0)).unwrap();
        server.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        server.begin_shutdown(poll.registry(), Instant::now());
        assert!(server.is_finished());
        assert!(server.bind_udp("127.0.0.1:0".parse().unwrap()).is_err());
        assert!(server.bind("127.0.0.1:0".parse().unwrap()).is_err());
    }

    #[test]
    fn shared_limits_are_touched_at_admit_and_close_only() {
        let poll = mio::Poll::new().unwrap();
        let config = Config::default();
        let limits = SharedLimits::new(&config);
        let mut server = EchoServer::with_shared_limits(config, Token(100), &limits).unwrap();
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        let mut clients = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..4 {
            clients.push(StdStream::connect(addr).unwrap());
            tokens.push(accept_one(&mut server, &poll));
        }
        let before = limits.operations();
        for round in 0..250u64 {
            for (client, token) in clients.iter_mut().zip(&tokens) {
                client.write_all(&round.to_le_bytes()).unwrap();
                let echoed = server.stats().bytes_out + 8;
                while server.stats().bytes_out < echoed {
                    route(&mut server, &poll, *token);
                }
            }
        }
        assert_eq!(limits.operations(), before, "touched per message");
        assert_eq!(server.stats().bytes_out, 4 * 250 * 8);
        for key in server.conns.keys() {
            server.close(poll.registry(), key, Reason::Peer);
        }
        assert_eq!(limits.operations(), before + 4, "one release per close");
        assert_eq!(limits.active(), 0);
    }

    #[test]
    fn a_bad_base_token_is_an_error_not_a_panic() {
        let err = EchoServer::new(Config::default(), Token(usize::MAX - 10))
            .err()
            .expect("refused");
        assert_eq!(err.field(), "base");
    }
}
