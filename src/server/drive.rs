//! One connection's turn in the loop: drive its echo, derive its interest,
//! queue it for the next turn when it used its read budget, and close it.
//!
//! The echo itself (reads, partial writes, backpressure, half-close) is
//! `Connection::drive` in `connection.rs`, which never sees a `Registry`;
//! this file is what the loop does around it. `close` is the one place that
//! deregisters a socket, and the one place that decides between an orderly
//! FIN and a reset. Events reach `drive` through `handle_event` in `mod.rs`,
//! and queued connections through `handle_timeout`.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, trace};
use mio::{Interest, Registry};

use super::shutdown::unread;
use super::EchoServer;

// Bits of `Connection::registered`: the interest mio currently has for the
// connection, and whether it sits in the ready queue.
pub(super) const REG_READ: u8 = 1;
pub(super) const REG_WRITE: u8 = 2;
pub(super) const QUEUED: u8 = 4;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reason {
    Peer,
    Error,
    Idle,
    Shutdown,
}

impl EchoServer {
    /// Echoes on one connection, then closes it or updates its interest.
    pub(super) fn drive(&mut self, registry: &Registry, key: usize, now: Instant) {
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

    pub(super) fn queue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.registered & QUEUED == 0 {
            conn.registered |= QUEUED;
            self.ready.push_back((key, conn.generation));
        }
    }

    // Deregister before dropping a socket; this is the one place that does
    // it, and the one place that decides between FIN and reset.
    pub(super) fn close(&mut self, registry: &Registry, key: usize, reason: Reason) {
        let mut conn = self.conns.remove(key);
        self.release_shared();
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
        let limit = self.limit();
        if self.open_under_limit() < limit - limit / 10 {
            self.over_limit_warned = false;
        }
        // A descriptor was just freed: if accept ran out of them, retry now.
        if let Some(backoff) = self.backoff.as_mut() {
            backoff.retry_now = true;
        }
    }
}

/// `interest` plus PRIORITY where urgent data must be noticed (Linux: a
/// read stops at the urgent mark, see `Connection::urgent_data`). Costs no
/// syscall: it rides along with registrations made anyway.
pub(super) fn with_urgent(interest: Interest) -> Interest {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let interest = if interest.is_readable() {
        interest.add(Interest::PRIORITY)
    } else {
        interest
    };
    interest
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
