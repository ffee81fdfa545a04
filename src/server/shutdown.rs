//! The shutdown state, and the rule it keeps.
//!
//! The promise: **an orderly FIN from the server means every byte the
//! client sent was echoed.** During shutdown our FIN therefore goes out only
//! after the client's FIN and the echo of every byte before it, exactly as
//! outside shutdown. The server cannot see bytes still in the client's send
//! queue (a Nagle tail, a segment waiting for retransmission, a zero-window
//! stall), so a client that has merely been quiet is never taken as
//! finished. At the deadline every connection still open is reset: only a
//! reset says "cut short". A client that never closes therefore holds
//! shutdown until `shutdown_timeout`, and then sees a reset.
//!
//! `EchoServer::begin_shutdown` (in `mod.rs`) closes the listeners and UDP
//! sockets and drives every connection once more; `handle_timeout` resets
//! what is left once [`Shutdown::passed`]. Whether a close ends in a FIN or
//! a reset is decided where connections close (`connections.rs`).

use std::time::{Duration, Instant};

/// Whether shutdown has begun, and its deadline.
#[derive(Debug, Default)]
pub(super) struct Shutdown {
    begun: bool,
    // None before shutdown, or if the timeout is too far away to be an
    // `Instant`.
    deadline: Option<Instant>,
}

impl Shutdown {
    /// Begins shutdown at `now`; false if it had begun already.
    pub(super) fn begin(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.begun {
            return false;
        }
        self.begun = true;
        self.deadline = now.checked_add(timeout);
        true
    }

    pub(super) fn has_begun(&self) -> bool {
        self.begun
    }

    /// When connections still open will be reset.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True once the deadline has passed at `now`.
    pub(super) fn passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }
}
