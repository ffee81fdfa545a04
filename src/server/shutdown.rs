//! Orderly shutdown: stop accepting, echo what clients send until each
//! client has sent its FIN and had everything back, and reset what is left
//! at the deadline.
//!
//! The rule that keeps the promise (an orderly FIN means every byte was
//! echoed): during shutdown our FIN goes out only after the client's FIN
//! and the echo of every byte before it, exactly as outside shutdown. The
//! server cannot see bytes still in the client's send queue (a Nagle tail, a
//! segment waiting for retransmission, a zero-window stall), so a client
//! that has merely been quiet is never taken as finished. At the deadline
//! every connection still open is reset (`close_all`): only a reset says
//! "cut short". A client that never closes therefore holds shutdown until
//! `shutdown_timeout`, and then sees a reset.
//!
//! `begin_shutdown` closes the listeners and queues every connection once;
//! `handle_timeout` (in `mod.rs`) calls `close_all` at the deadline.
//! Whether a close ends in a FIN or a reset is decided by `close` in
//! `drive.rs`. The binary's signals are in `src/bin/echoloop/`.

use std::time::Instant;

use log::info;
use mio::Registry;

use super::drive::Reason;
use super::EchoServer;
use crate::config::{human_duration, plural};

/// Shutdown in progress.
pub(super) struct Shutdown {
    // None if the timeout is too far away to be an `Instant`.
    pub(super) deadline: Option<Instant>,
}

impl EchoServer {
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
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.bind("127.0.0.1:0".parse().unwrap())?;
    /// server.register(poll.registry())?;
    /// let now = Instant::now();
    /// server.begin_shutdown(poll.registry(), now);
    /// // No connections: finished at once, and the port is closed.
    /// assert!(server.is_finished());
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// // Nothing left to wait for (with connections, the deadline would
    /// // bound the sleep).
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
        // Datagrams have no connection to drain: stop reading UDP at once.
        self.close_udp(registry);
        if let Some(backoff) = self.backoff.take() {
            self.stats.backed_off += now.saturating_duration_since(backoff.since);
        }
        // Every connection is driven once more, so one whose FIN and last
        // bytes are already here finishes now, not on an edge that has
        // already fired.
        for key in self.keys() {
            self.queue(key);
        }
    }

    /// Ends shutdown now: stops accepting if that has not happened yet, then
    /// resets every connection still open (SO_LINGER 0, counted in
    /// `closed_with_reset`): its client did not finish, so it must see an
    /// error rather than a FIN that would claim everything was echoed. Used
    /// when the shutdown timeout passes, and by the binary on a second
    /// SIGINT or SIGTERM. Afterwards [`EchoServer::is_finished`] is true.
    ///
    /// Work: one close per connection, O(connections).
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
        self.shutdown.is_some() && self.conns.is_empty()
    }
}
