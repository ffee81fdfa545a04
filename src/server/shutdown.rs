//! Orderly shutdown: stop accepting, echo what clients already sent, send
//! each connection our FIN once it has gone quiet, and close what is left at
//! the deadline.
//!
//! `begin_shutdown` closes the listeners and queues every connection once.
//! From then on `handle_timeout` (in `mod.rs`) calls `finish_quiet` every
//! `QUIET_SWEEP`, and `close_all` at the deadline. Whether a close ends in a
//! FIN or a reset is decided by `close` in `drive.rs`, with `unread` from
//! here. The binary's signals are in `src/bin/echoloop/host.rs` (one loop)
//! and `loops.rs` (several).

use std::io;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::net::TcpStream;
use mio::Registry;

use super::deadlines::millis_of;
use super::drive::Reason;
use super::EchoServer;
use crate::config::{human_duration, plural};

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

/// Shutdown in progress.
pub(super) struct Shutdown {
    // None if the timeout is too far away to be an `Instant`.
    pub(super) deadline: Option<Instant>,
    // When to look for quiet connections next.
    pub(super) next_sweep: Instant,
}

impl EchoServer {
    /// Begins an orderly shutdown: stop accepting, close the UDP sockets
    /// (datagrams have nothing to drain), and keep echoing until
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
    /// Work: closes the listeners and UDP sockets and queues every connection for the next
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
        // Datagrams have no connection to drain: stop reading UDP at once.
        self.close_udp(registry);
        if let Some(backoff) = self.backoff.take() {
            self.stats.backed_off += now.saturating_duration_since(backoff.since);
        }
        // Every connection is read once more (bytes may sit in its receive
        // queue with no edge to come), and its quiet period starts now.
        let now_ms = self.clock.millis(now) as u32;
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
    /// may drop the server. UDP sockets never hold it up (shutdown closed
    /// them at once).
    pub fn is_finished(&self) -> bool {
        self.shutdown.is_some() && self.conns.is_empty()
    }

    /// During shutdown: sends our FIN to each connection that has gone
    /// quiet (see [`SHUTDOWN_QUIET`]) and reads again any that has bytes
    /// waiting. Runs every `QUIET_SWEEP`; O(connections) each time, plus one
    /// `ioctl` per connection that is a candidate.
    pub(super) fn finish_quiet(&mut self, registry: &Registry, now: Instant) {
        let Some(shutdown) = self.shutdown.as_mut() else {
            return;
        };
        if now < shutdown.next_sweep || self.conns.is_empty() {
            return;
        }
        shutdown.next_sweep = now.checked_add(QUIET_SWEEP).unwrap_or(now);
        let now_ms = self.clock.millis(now) as u32;
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

/// Bytes waiting in a socket's receive queue (FIONREAD). Only on the
/// shutdown and close paths, never per message.
pub(super) fn unread(stream: &mut TcpStream) -> io::Result<usize> {
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
