//! The echo service as a guest in a host's `mio::Poll`: the [`EchoServer`]
//! and its fields, event routing, and the calls that tell the host what next.
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
//! A host that routes events itself calls `handle_event` for each event the
//! server [`owns`](EchoServer::owns) instead.
//!
//! This file holds the server's fields and the per-turn calls (what is due,
//! how long the host may sleep); each concern has a room beside it, and
//! each adds its own `impl EchoServer` block:
//!
//! * `route.rs`: events in, by token, to the room below that owns them.
//! * `accept.rs`: listeners, accepting (bounded per turn), the connection
//!   limit, and what happens when descriptors run out (the back-off).
//! * `drive.rs`: one connection's turn: echo, interest, the ready queue of
//!   connections that used their budget, and `close` (FIN or reset).
//! * `deadlines.rs`: idle deadlines and their lazy heap.
//! * `shutdown.rs`: orderly shutdown: FIN after the client's, reset at the
//!   deadline.
//! * `udp.rs`: UDP echo: datagrams in, replies out or dropped, reflection
//!   protection, a per-turn datagram budget; `rate.rs` its optional
//!   per-source rate limit.
//! * `stats.rs`: the counters.
//! * `reuseport.rs`: listening sockets, and a `SO_REUSEPORT` group of them
//!   on one port for a host that runs several loops (its traps).
//! * `limit.rs`: what servers on several threads share (one connection
//!   limit, the news that a descriptor was freed); unused by one loop.
//!
//! The echo itself is `Connection::drive` in `connection.rs`, which never
//! sees a `Registry`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Connection, Limits, Scratch};
use crate::token::Tokens;

mod accept;
mod deadlines;
mod drive;
mod limit;
mod rate;
mod reuseport;
mod route;
mod shutdown;
mod stats;
mod udp;

pub use limit::{SharedLimit, SHARED_RETRY_CHECK};
pub use reuseport::{listener_group, udp_group, MAX_GROUP, REUSEPORT_BALANCES};
pub use stats::Stats;
pub use udp::{refused_source_port, MAX_UDP_SOCKETS, UDP_BUFFER, UDP_DATAGRAMS_PER_TURN};

use accept::{Backoff, Listener};
use deadlines::{Clock, IdleCheck};
use drive::QUEUED;
use route::Hints;
use shutdown::Shutdown;
use udp::Udp;

/// A TCP echo server that runs inside a host's `mio::Poll`, and a UDP one
/// for each socket given to [`EchoServer::bind_udp`] or
/// [`EchoServer::adopt_udp`].
///
/// It owns its listeners, UDP sockets and connections, never a `Poll`,
/// `Waker` or thread.
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
    clock: Clock,
    next_generation: u16,
    backoff: Option<Backoff>,
    // Some once shutdown has begun: connections get our FIN once the peer
    // finished and everything was echoed; the rest are reset at the deadline.
    shutdown: Option<Shutdown>,
    over_limit_warned: bool,
    // UDP sockets and their receive buffer (empty without UDP).
    udp: Udp,
    // Some when this server is one of several loops sharing one limit.
    shared: Option<SharedLimit>,
    // `log_enabled!(Trace)`, read once per call from the host rather than
    // once per event (148.4 -> 145.3 instructions per message).
    tracing: bool,
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
            clock: Clock::new(Instant::now()),
            next_generation: 0,
            backoff: None,
            shutdown: None,
            over_limit_warned: false,
            udp: Udp::default(),
            shared: None,
            tracing: false,
            stats: Stats::default(),
        }
    }

    /// Creates a server, like [`EchoServer::new`], that is one of several
    /// loops sharing `limit`: at most `limit.max()` connections over all of
    /// them (and at most `config.max_connections` in this one). The servers
    /// touch `limit` only when they admit or close a connection, and a
    /// server backed off for lack of descriptors also notices the others'
    /// closes (see [`SharedLimit`]). Run each server on its own thread with
    /// its own `Poll`; the crate docs show the whole host.
    ///
    /// # Panics
    /// As [`EchoServer::new`].
    ///
    /// ```
    /// use echoloop::server::SharedLimit;
    /// use echoloop::{Config, EchoServer};
    /// let limit = SharedLimit::new(8);
    /// let a = EchoServer::with_shared_limit(Config::default(), mio::Token(0), limit.clone());
    /// let b = EchoServer::with_shared_limit(Config::default(), mio::Token(0), limit.clone());
    /// assert_eq!(limit.active(), 0);
    /// # drop((a, b));
    /// ```
    pub fn with_shared_limit(config: Config, base: Token, limit: SharedLimit) -> EchoServer {
        let mut server = EchoServer::new(config, base);
        server.shared = Some(limit);
        server
    }

    /// Registers every listener and UDP socket not registered yet with
    /// `registry`.
    ///
    /// Work: one `epoll_ctl` per new listener or UDP socket.
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
        self.register_udp(registry)
    }

    /// True if `token` is in this server's range: route its events here.
    #[inline]
    pub fn owns(&self, token: Token) -> bool {
        self.tokens.owns(token)
    }

    /// The tokens this server may use: `base .. base + TOKEN_SPAN`.
    pub fn token_range(&self) -> std::ops::Range<usize> {
        self.tokens.range()
    }

    /// How long the host may sleep before calling [`EchoServer::handle_timeout`].
    ///
    /// Zero while budgeted work is left over (a connection yielded, a listener
    /// hit its accept limit, a UDP socket its datagram budget); otherwise the earliest of the accept back-off,
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
        if !self.ready.is_empty() || retry_now || accept_more || self.udp_more() {
            return Some(Duration::ZERO);
        }
        let idle = self.idle_due();
        // Without a back-off or a shutdown, only the idle deadline can be
        // set: no need to compare it with the others (per turn; with
        // --idle-timeout 60, 136.2 -> 135.7 instructions per message).
        if self.backoff.is_none() && self.shutdown.is_none() {
            return idle.map(|due| due.saturating_duration_since(now));
        }
        let deadline = match &self.shutdown {
            Some(shutdown) if !self.conns.is_empty() => shutdown.deadline,
            _ => None,
        };
        // Sharing the descriptor table: look for other loops' closes soon.
        let shared_check = match (&self.backoff, &self.shared) {
            (Some(_), Some(_)) => now.checked_add(SHARED_RETRY_CHECK),
            _ => None,
        };
        [
            self.backoff.as_ref().map(|b| b.until),
            shared_check,
            idle,
            deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|due| due.saturating_duration_since(now))
    }

    /// Does the work that is due at `now`: connections that yielded their
    /// budget, UDP sockets that used theirs, accepts left over or backed off, idle closes and the shutdown
    /// deadline. Call it once per loop turn, after the events.
    ///
    /// Work: one budget for each connection queued before the call and each
    /// UDP socket that used its budget, up to
    /// `accepts_per_turn` accepts per listener, up to 1024 idle closes, and
    /// at the shutdown deadline one close per remaining connection.
    ///
    /// # Errors
    /// Only a listener's failure.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        let ms = self.begin_call(now);
        for _ in 0..self.ready.len() {
            let Some((key, generation)) = self.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.current(key, generation) {
                conn.registered &= !QUEUED;
                self.drive(registry, key, generation, Hints::default(), ms);
            }
        }
        self.udp_due(now);
        self.accept_due(registry, now)?;
        self.close_idle(registry, now);
        let deadline = self.shutdown.as_ref().and_then(|s| s.deadline);
        if deadline.is_some_and(|deadline| now >= deadline) {
            self.close_all(registry);
        }
        Ok(())
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
}

impl Drop for EchoServer {
    // Connections dropped with the server give their shared slots back, so
    // the other loops may use them.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.release_many(self.conns.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::drive::Reason;
    use super::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream as StdStream};

    // Shared with the tests of the other rooms.
    pub(super) fn server_with_listener(
        poll: &mio::Poll,
        config: Config,
    ) -> (EchoServer, SocketAddr) {
        let mut server = EchoServer::new(config, Token(100));
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        (server, addr)
    }

    // Accepts one pending connection by handling a listener event.
    pub(super) fn accept_one(server: &mut EchoServer, poll: &mio::Poll) -> (usize, Token) {
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

    // The pause is counted off the common path (`update_interest`), which
    // every pausing drive must reach: the counter still sees each pause.
    #[test]
    fn issue_10_backpressure_pause_is_counted() {
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
        let (key, token) = accept_one(&mut server, &poll);
        let chunk = [7u8; 16 * 1024];
        let started = Instant::now();
        while server.stats().backpressure_pauses == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never paused");
            let _ = client.write(&chunk);
            server
                .handle_token(poll.registry(), token, Hints::default(), Instant::now())
                .unwrap();
        }
        assert_eq!(server.stats().backpressure_pauses, 1);
        assert!(server.conns[key].is_paused());
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
