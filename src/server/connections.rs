//! The connections: one slot per connection in a slab, each holding the
//! echo state machine (`Connection`, which knows no `mio`) and the loop's
//! bookkeeping around it: when it last had traffic, its generation, the
//! interest mio has for it, whether it is queued for the next turn.
//!
//! * [`Connections::insert`] registers a new connection (READABLE) under a
//!   new generation of its slab key.
//! * [`Connections::drive`] is one connection's turn: echo, count, derive
//!   interest from state and re-register only when it changed, queue the
//!   connection for the next turn if it used its read budget.
//! * [`Connections::close`] is the one place that deregisters a socket and
//!   the one place that decides between an orderly FIN and a reset.
//!
//! The shared read buffer and the pool of pending buffers (`Scratch`) live
//! here and are lent to each connection while it is driven, so an idle
//! connection owns no heap buffer.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use log::{debug, trace};
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;

use super::stats::EchoCounts;
use crate::buffers::Scratch;
use crate::config::Config;
use crate::connection::{Connection, Limits, Progress, Wants};
use crate::token::Tokens;

/// One connection and the loop's bookkeeping around it: 16 + 4 + 2 + 1 + 1
/// = 24 bytes on 64-bit Linux, the whole cost of an idle connection in user
/// space (benches/idle-memory.sh).
#[derive(Debug)]
pub(super) struct Slot {
    conn: Connection<TcpStream>,
    // Milliseconds on the server's clock of the last traffic (idle timers).
    last_active: u32,
    // Tells this connection's tokens from those of the slot's earlier
    // occupants (see `token.rs`).
    generation: u16,
    // The interest mio has for it now.
    registered: Wants,
    // In the ready queue: it used its read budget with data maybe left.
    queued: bool,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The peer half-closed and everything was echoed.
    Peer,
    /// An I/O error (a reset, a broken pipe) or a failed registration.
    Error,
    /// No traffic for the idle timeout.
    Idle,
    /// Shutdown: finished (if done) or cut short at its deadline.
    Shutdown,
}

/// What one connection's turn ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Driven {
    /// Still open (and queued for the next turn if it used its budget).
    Open,
    /// The token named a connection closed since: nothing was done.
    Stale,
    /// It must be closed, for this reason.
    Close(Reason),
}

/// Every connection of one server.
pub(super) struct Connections {
    tokens: Tokens,
    slots: Slab<Slot>,
    next_generation: u16,
    scratch: Scratch,
    limits: Limits,
    // Connections that used their budget with data left: driven again next
    // turn, without waiting for an edge.
    ready: VecDeque<(usize, u16)>,
    counts: EchoCounts,
    // Whether trace logging is on: read once per call from the host
    // (`begin_call`), not per event (benches/instructions.sh).
    tracing: bool,
}

impl Connections {
    /// Allocates the shared read buffer; reserves slab room for up to
    /// 2^20 connections without touching it (pages become resident only as
    /// slots are used, and the slab never moves).
    pub(super) fn new(tokens: Tokens, config: &Config) -> Connections {
        Connections {
            tokens,
            slots: Slab::with_capacity(config.max_connections.min(1 << 20)),
            next_generation: 0,
            scratch: Scratch::new(config.read_buffer),
            limits: config.limits(),
            ready: VecDeque::new(),
            counts: EchoCounts::default(),
            tracing: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Reads what a host's call needs once rather than per event: whether
    /// trace logging is on.
    pub(super) fn begin_call(&mut self) {
        self.tracing = log::log_enabled!(log::Level::Trace);
    }

    /// Registers `stream` for READABLE under a new generation of a free slab
    /// key and keeps it; returns the key and generation.
    pub(super) fn insert(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        stamp: u32,
    ) -> io::Result<(usize, u16)> {
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        // A new generation for each connection, so tokens of the slot's
        // previous occupant (still queued in this batch) no longer match.
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let token = self.tokens.connection(key, generation);
        registry.register(&mut stream, token, interest(Wants::READ))?;
        entry.insert(Slot {
            conn: Connection::new(stream),
            last_active: stamp,
            generation,
            registered: Wants::READ,
            queued: false,
        });
        Ok((key, generation))
    }

    /// One connection's turn: echoes on the connection at `key` if
    /// `generation` still names it, then updates its interest or says it
    /// must be closed. `read_to_end`: the event reported a FIN or urgent
    /// data. `stamp`: now on the server's clock, read once per batch.
    ///
    /// This is the loop's hot path: one slab look-up, one echo, and in the
    /// common case no registration (the interest did not change). Inlined
    /// into `route`, as `Connection::drive` is into it.
    #[inline(always)]
    pub(super) fn drive(
        &mut self,
        registry: &Registry,
        key: usize,
        generation: u16,
        read_to_end: bool,
        stamp: u32,
    ) -> Driven {
        let Some(slot) = self.slots.get_mut(key) else {
            return Driven::Stale;
        };
        if slot.generation != generation {
            return Driven::Stale;
        }
        if read_to_end {
            slot.conn.read_past_short_reads();
        }
        let progress = match slot.conn.drive(&mut self.scratch, &self.limits) {
            Ok(progress) => progress,
            Err(err) => {
                debug!("connection {key}: closed after error: {err}");
                return Driven::Close(Reason::Error);
            }
        };
        if self.tracing {
            trace_drive(key, progress);
        }
        self.counts.bytes_in += progress.bytes_in as u64;
        self.counts.bytes_out += progress.bytes_out as u64;
        if progress.bytes_in + progress.bytes_out > 0 {
            slot.last_active = stamp;
        }
        // Interest is derived from state and registered only on change.
        let wants = slot.conn.wants();
        if wants != slot.registered {
            // A pause stops reading: it always changes the interest.
            if progress.paused {
                self.counts.backpressure_pauses += 1;
            }
            // Only a connection that is done wants nothing: its peer
            // half-closed, every byte was echoed and our FIN is out.
            if wants == Wants::NOTHING {
                debug!("connection {key}: closed by peer, all echoed");
                return Driven::Close(Reason::Peer);
            }
            let token = self.tokens.connection(key, generation);
            if let Err(err) = registry.reregister(slot.conn.stream_mut(), token, interest(wants)) {
                debug!("connection {key}: closed, reregister failed: {err}");
                return Driven::Close(Reason::Error);
            }
            slot.registered = wants;
        }
        if progress.more {
            self.counts.budget_yields += 1;
            if !slot.queued {
                slot.queued = true;
                self.ready.push_back((key, generation));
            }
        }
        Driven::Open
    }

    /// Connections queued for this turn (taken one by one with
    /// [`Connections::take_ready`]: those queued while they are driven wait
    /// for the next turn).
    pub(super) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The next queued connection, if any, now no longer queued.
    pub(super) fn take_ready(&mut self) -> Option<(usize, u16)> {
        let (key, generation) = self.ready.pop_front()?;
        if let Some(slot) = self.slots.get_mut(key) {
            if slot.generation == generation {
                slot.queued = false;
            }
        }
        Some((key, generation))
    }

    /// Queues every connection to be driven once more (shutdown: one whose
    /// FIN and last bytes are already here finishes now, not on an edge
    /// that has already fired).
    pub(super) fn queue_all(&mut self) {
        for (key, slot) in self.slots.iter_mut() {
            if !slot.queued {
                slot.queued = true;
                self.ready.push_back((key, slot.generation));
            }
        }
    }

    /// Closes the connection at `key`: deregisters it, ends it with an
    /// orderly FIN or a reset, gives its pending buffer back and counts it.
    ///
    /// A FIN means "everything was echoed", so:
    /// * `Peer`: it is done, our FIN is already out.
    /// * `Error`: reset.
    /// * `Shutdown`: reset unless it is done (the client finished): one cut
    ///   short at the deadline must not look finished.
    /// * `Idle`: reset if bytes remain pending or unread (closing with
    ///   unread bytes would make the kernel choose, and a FIN after a
    ///   truncated echo is never sent), FIN otherwise.
    pub(super) fn close(&mut self, registry: &Registry, key: usize, reason: Reason) {
        let Some(mut slot) = self.slots.try_remove(key) else {
            return;
        };
        let conn = &mut slot.conn;
        if let Err(err) = registry.deregister(conn.stream_mut()) {
            debug!("connection {key}: deregister failed: {err}");
        }
        let reset = match reason {
            Reason::Peer => false,
            Reason::Error => true,
            Reason::Shutdown => !conn.is_done(),
            Reason::Idle => {
                conn.pending_len() > 0
                    || crate::sys::unread(conn.stream_mut()).map_or(true, |n| n > 0)
            }
        };
        if reset {
            self.counts.closed_with_reset += 1;
            debug!("connection {key}: reset ({reason:?})");
            let linger =
                socket2::SockRef::from(&*conn.stream_mut()).set_linger(Some(Duration::ZERO));
            if let Err(err) = linger {
                debug!("connection {key}: SO_LINGER failed: {err}");
            }
        }
        conn.release(&mut self.scratch);
        let counter = match reason {
            Reason::Peer => &mut self.counts.closed_by_peer,
            Reason::Error => &mut self.counts.closed_by_error,
            Reason::Idle => &mut self.counts.closed_by_idle,
            Reason::Shutdown => &mut self.counts.closed_by_shutdown,
        };
        *counter += 1;
    }

    /// The last-traffic stamp of the connection at `key`, if `generation`
    /// still names it.
    pub(super) fn last_active(&self, key: usize, generation: u16) -> Option<u32> {
        self.slots
            .get(key)
            .filter(|slot| slot.generation == generation)
            .map(|slot| slot.last_active)
    }

    /// The slab keys of every connection.
    pub(super) fn keys(&self) -> Vec<usize> {
        self.slots.iter().map(|(key, _)| key).collect()
    }

    pub(super) fn counts(&self) -> EchoCounts {
        self.counts
    }

    /// Bytes of pending buffers freed (not pooled) so far.
    pub(super) fn freed_buffer_bytes(&self) -> u64 {
        self.scratch.freed
    }
}

/// The trace line of one connection's turn: out of line, so that the hot
/// path only tests a flag (benches/instructions.sh).
#[cold]
#[inline(never)]
fn trace_drive(key: usize, progress: Progress) {
    trace!("connection {key}: {progress:?}");
}

/// mio's interest for `wants` (never NOTHING), plus PRIORITY where urgent
/// data must be noticed (Linux: a read stops at the urgent mark, see
/// `Connection::read_past_short_reads`). PRIORITY costs no syscall: it rides
/// along with registrations made anyway.
fn interest(wants: Wants) -> Interest {
    let interest = match (wants.read(), wants.write()) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let interest = if wants.read() {
        interest.add(Interest::PRIORITY)
    } else {
        interest
    };
    interest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_costs_24_bytes() {
        let slot = std::mem::size_of::<Slot>();
        // mio adds a selector id to each socket in debug builds only.
        let limit = if cfg!(debug_assertions) { 40 } else { 24 };
        assert!(slot <= limit, "a slot grew to {slot} bytes");
    }
}
