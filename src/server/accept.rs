//! Accepting connections: the listeners, accept until `WouldBlock` or the
//! per-turn limit, the connection limit, and what happens when the process
//! runs out of descriptors.
//!
//! * `bind` and `adopt` add listeners; `register` (in `mod.rs`) registers
//!   them with the host's registry.
//! * A listener event calls `accept`: at most `accepts_per_turn` connections.
//!   The edge is then spent, so a listener that hit the limit is marked and
//!   `accept_due` (from `handle_timeout`) revisits it next turn.
//! * `admit` applies the connection limit (over it, or during shutdown, a
//!   connection is accepted and closed at once, so its client is told), then
//!   gives the socket a slab slot, a new generation and READABLE interest.
//! * Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM), `back_off` pauses
//!   accepting for 10 ms, doubling up to 1 s, and warns once per episode;
//!   `close` (in `drive.rs`) ends the pause early, as it just freed one.
//!
//! What happens to a connection once admitted is in `drive.rs`.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use super::drive::{with_urgent, REG_READ};
use super::{EchoServer, SharedLimit};
use crate::connection::Connection;
use crate::token::MAX_LISTENERS;

/// On Linux an accepted socket inherits TCP_NODELAY from its listener, so
/// setting it once on the listener saves one `setsockopt` per connection
/// (one of eight syscalls per connect-echo-close cycle in the churn cell).
/// Elsewhere each accepted socket gets it. Test: `accepted_sockets_have_nodelay`.
const NODELAY_INHERITED: bool = cfg!(target_os = "linux");

/// Also inherited on Linux: SO_OOBINLINE, which keeps a TCP urgent byte in
/// the stream so that it is echoed like any other (RFC 862: every byte).
const OOBINLINE_INHERITED: bool = cfg!(target_os = "linux");

/// First pause after the process runs out of descriptors on accept.
const BACKOFF_START: Duration = Duration::from_millis(10);
/// The pause doubles on each failed retry, up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How an accept round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accepted {
    Drained,
    Limit,
    OutOfDescriptors,
}

pub(super) struct Listener {
    // None once shutdown has begun: the listening socket is closed.
    pub(super) socket: Option<TcpListener>,
    pub(super) addr: SocketAddr,
    pub(super) registered: bool,
    // The per-turn accept limit was reached with connections maybe left in
    // the backlog; the edge is spent, so we revisit without a new event.
    pub(super) more: bool,
}

/// Out of descriptors on accept: wait for a timer or a closed connection.
pub(super) struct Backoff {
    pub(super) since: Instant,
    pub(super) until: Instant,
    pub(super) delay: Duration,
    // A connection closed, so a descriptor is free: retry now.
    pub(super) retry_now: bool,
    // With a shared limit: the loops' close count when this episode began;
    // once it moves, another loop freed a descriptor.
    pub(super) closes_seen: Option<u64>,
}

impl EchoServer {
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
        self.adopt(super::reuseport::listening(addr, false)?)
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

    /// The addresses this server listens on, in the order they were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Accepts until the backlog is empty or this turn's limit is reached.
    pub(super) fn accept(
        &mut self,
        registry: &Registry,
        index: usize,
        now: Instant,
    ) -> io::Result<Accepted> {
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
        // Shared with other loops: one atomic step at admit, one at close.
        let over_shared = || self.shared.as_ref().is_some_and(|s| !s.try_acquire());
        if self.conns.len() >= self.config.max_connections
            || self.shutdown.is_some()
            || over_shared()
        {
            self.stats.rejected += 1;
            if !self.over_limit_warned {
                warn!(
                    "connection limit ({}) reached: closing new connections at once",
                    self.limit()
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
                self.release_shared();
                return;
            }
        }
        let now_ms = self.clock.millis(now);
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
            self.release_shared();
            return;
        }
        let mut conn = Connection::new(stream);
        conn.generation = generation;
        conn.registered = REG_READ;
        conn.last_active = now_ms as u32;
        entry.insert(conn);
        self.stats.accepted += 1;
        self.watch_idle(key, generation, now_ms);
        debug!("connection {key}: accepted from {peer}");
    }

    pub(super) fn back_off(&mut self, now: Instant, err: &io::Error) {
        match self.backoff.as_mut() {
            Some(backoff) => {
                backoff.delay = backoff.delay.saturating_mul(2).min(BACKOFF_MAX);
                backoff.until = now.checked_add(backoff.delay).unwrap_or(now);
                backoff.retry_now = false;
                backoff.closes_seen = self.shared.as_ref().map(SharedLimit::closes);
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
                    closes_seen: self.shared.as_ref().map(SharedLimit::closes),
                });
            }
        }
    }

    // Accept where this turn left connections in a backlog, or where the
    // back-off has ended. The listener's edge may have fired while we were
    // backed off; queued connections won't raise another, so accept now.
    pub(super) fn accept_due(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        let retrying = match self.backoff.as_ref() {
            Some(backoff) if backoff.retry_now || now >= backoff.until => true,
            // Another loop sharing our descriptor table closed one.
            Some(backoff) if self.closed_elsewhere(backoff) => true,
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
}

impl EchoServer {
    /// The connection limit in force: the shared one if there is one.
    pub(super) fn limit(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(self.config.max_connections, SharedLimit::max)
    }

    /// Connections open under [`EchoServer::limit`]: over every loop when shared.
    pub(super) fn open_under_limit(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(self.conns.len(), SharedLimit::active)
    }

    /// A connection left (or never made it past admit): give its shared slot back.
    pub(super) fn release_shared(&self) {
        if let Some(shared) = &self.shared {
            shared.release();
        }
    }

    pub(super) fn closed_elsewhere(&self, backoff: &Backoff) -> bool {
        match (&self.shared, backoff.closes_seen) {
            (Some(shared), Some(seen)) => shared.closes() != seen,
            _ => false,
        }
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
    use crate::config::Config;
    use crate::server::tests::{accept_one, server_with_listener};
    use std::net::TcpStream as StdStream;

    #[test]
    fn accepted_sockets_have_nodelay() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_listener(&poll, Config::default());
        let _client = StdStream::connect(addr).unwrap();
        let (key, _) = accept_one(&mut server, &poll);
        assert!(server.conns[key].stream_mut().nodelay().unwrap());
    }
}
