//! One connection's turn in the loop: drive its echo, derive its interest,
//! queue it for the next turn when it used its read budget, and close it.
//!
//! The echo itself (reads, partial writes, backpressure, half-close) is
//! `Connection::drive` in `connection.rs`, which never sees a `Registry`;
//! this file is what the loop does around it. `close` is the one place that
//! deregisters a socket, and the one place that decides between an orderly
//! FIN and a reset. Events reach `drive` through `route` in `route.rs`, and
//! queued connections through `handle_timeout` in `mod.rs`.

use std::time::Duration;

use log::{debug, trace};
use mio::{Interest, Registry};

use super::{EchoServer, Hints};
use crate::connection::Progress;

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
    /// Echoes on the connection at `key` if `generation` still names it (a
    /// stale event or queue entry is ignored), then closes it or updates
    /// its interest.
    ///
    /// This is the loop's hot path: one slab look-up, and every field used
    /// through that one `conn` until it is closed or re-registered (with
    /// `self.conns[key]` at each step it was 3 look-ups with bounds checks;
    /// part of 331 -> 256 instructions per message, benches/instructions.sh).
    #[inline(always)]
    pub(super) fn drive(
        &mut self,
        registry: &Registry,
        key: usize,
        generation: u16,
        hints: Hints,
        ms: u32,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return trace_stale(key);
        };
        if conn.generation != generation {
            return trace_stale(key);
        }
        // No further edge will announce a FIN behind the data, nor the
        // bytes behind an urgent mark: read on to the end.
        if hints.read_to_end {
            conn.peer_closing();
        }
        let progress = match conn.drive(&mut self.scratch, &self.limits) {
            Ok(progress) => progress,
            Err(err) => {
                debug!("connection {key}: closed after error: {err}");
                return self.close(registry, key, Reason::Error);
            }
        };
        if self.tracing {
            trace_drive(key, progress, conn.pending_len());
        }
        self.stats.count(&progress);
        // For the idle and shutdown rules. `ms` was read off the clock once
        // for the whole batch, so this is one store, made whatever the
        // options (asked per event, the clock cost 12 instructions per
        // message with --idle-timeout: 160 -> 152; a flag that skipped it
        // without saved 3 of 151).
        if progress.bytes_in + progress.bytes_out > 0 {
            conn.last_active = ms;
        }
        // Derive interest from state and act only on change: `wants_just`
        // is the common case (reading, nothing pending, registered for READ)
        // as one compare, and everything else is `update_interest`, out of
        // line so that the hot loop keeps its registers (145.3 -> 141.4
        // instructions per message).
        // A connection that just paused (`progress.paused`) has PAUSED set,
        // so it always takes the second way, which counts the pause
        // (137.3 -> 135.3).
        debug_assert!(!progress.paused || conn.is_paused());
        if !conn.wants_just(REG_READ | REG_WRITE, REG_READ)
            && !self.update_interest(registry, key, progress.paused)
        {
            return;
        }
        if progress.more {
            self.stats.budget_yields += 1;
            self.queue(key);
        }
    }

    /// Counts the pause its drive started (`paused`), then re-registers
    /// the connection at `key` if the interest its state derives differs
    /// from what mio has, or closes it if it is done; false if it was
    /// closed.
    ///
    /// A connection that is done wants nothing (its read side is closed and
    /// nothing is pending: our FIN goes only after the last byte), while a
    /// registered one always wants something, so the check for "done" can
    /// wait until the interest differs (232 -> 227 instructions per message).
    #[cold]
    #[inline(never)]
    fn update_interest(&mut self, registry: &Registry, key: usize, paused: bool) -> bool {
        if paused {
            self.stats.backpressure_pauses += 1;
        }
        let conn = &mut self.conns[key];
        let want = conn.wanted();
        if want.map_or(0, interest_bits) == conn.registered & (REG_READ | REG_WRITE) {
            return true;
        }
        if conn.is_done() {
            debug!("connection {key}: closed by peer, all echoed");
            let reason = match self.shutdown {
                Some(_) => Reason::Shutdown,
                None => Reason::Peer,
            };
            self.close(registry, key, reason);
            return false;
        }
        // Only a connection that is done wants nothing.
        if let Some(want) = want {
            let token = self.tokens.connection(key, conn.generation);
            if let Err(err) = registry.reregister(conn.stream_mut(), token, with_urgent(want)) {
                debug!("connection {key}: closed, reregister failed: {err}");
                self.close(registry, key, Reason::Error);
                return false;
            }
            conn.registered = interest_bits(want) | (conn.registered & QUEUED);
        }
        true
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
        // A FIN means "everything was echoed". A connection that is not done
        // when shutdown ends it was cut short; one closed idle with bytes
        // pending or unread would make the kernel choose (it resets) or send
        // a FIN after a truncated echo: reset on purpose.
        let reset = match reason {
            Reason::Peer => false,
            Reason::Error => true,
            Reason::Shutdown => !conn.is_done(),
            Reason::Idle => {
                conn.pending_len() > 0 || unread(conn.stream_mut()).map_or(true, |n| n > 0)
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

/// The one trace line per connection event. Out of line and behind the
/// level check (`tracing`), so that with tracing off it costs a test
/// (it was two lines per event, with their arguments built in place: 256 ->
/// 238 instructions per message together with stamping after the echo).
#[cold]
#[inline(never)]
fn trace_drive(key: usize, progress: Progress, pending: usize) {
    trace!("connection {key}: {progress:?}, {pending} pending");
}

/// The trace line of a stale event, out of line like `trace_drive`: a
/// `trace!` in the loop made it load the log level on every event (the
/// syscalls may write memory, so the load cannot be hoisted), about 2
/// instructions per message (135.3 -> 134.3).
#[cold]
#[inline(never)]
pub(super) fn trace_stale(key: usize) {
    trace!("connection {key}: stale event ignored");
}

/// Bytes waiting in a socket's receive queue (FIONREAD). Only on the idle
/// close path, never per message.
fn unread(stream: &mut mio::net::TcpStream) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass, and the
    // descriptor is open for as long as `stream` is borrowed.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
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

/// The `REG_*` bits of an interest (off the hot path: only when the
/// interest may have changed).
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
