//! Routing: an event, by its token, to the part that owns it, and what
//! follows from it. Read it as the route of one event:
//!
//! ```text
//!   listener token   -> acceptor.accept -> connections.insert, idle.watch
//!   connection token -> connections.drive (read, write, interest)
//!                         -> close, if it is done or failed
//!   UDP token        -> udp.serve
//! ```
//!
//! A token that names a closed connection (an old generation) is dropped
//! where the connection is looked up, at the cost of one compare.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::trace;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Registry, Token};

use super::connections::{Connections, Driven, Reason};
use super::idle::IdleTimers;
use super::EchoServer;
use crate::token::Target;

impl EchoServer {
    /// Routes one event; `stamp` is `now` on the server's clock, which the
    /// caller reads once for a whole batch.
    // Inlined, with `drive` below, into the batch loop of `handle_events`:
    // the echo path is then one function per event, not three, which saves
    // the calls' register saves and restores (benches/instructions.sh).
    #[inline(always)]
    pub(super) fn route(
        &mut self,
        registry: &Registry,
        token: Token,
        hints: Hints,
        now: Instant,
        stamp: u32,
    ) -> io::Result<()> {
        match self.tokens.decode(token) {
            Some(Target::Connection { key, generation }) => {
                self.drive(registry, key, generation, hints, stamp);
            }
            Some(Target::Listener(index)) => self.accept(registry, index, now, stamp)?,
            Some(Target::Udp(index)) => self.udp.serve(index, now),
            None => trace!("token {}: not ours", token.0),
        }
        Ok(())
    }

    /// One connection's turn, and its close if that turn finished it.
    #[inline(always)]
    pub(super) fn drive(
        &mut self,
        registry: &Registry,
        key: usize,
        generation: u16,
        hints: Hints,
        stamp: u32,
    ) {
        let driven = self
            .conns
            .drive(registry, key, generation, hints.read_to_end, stamp);
        if let Driven::Close(reason) = driven {
            // A connection the peer finished during shutdown counts as
            // closed by the shutdown it completes.
            let reason = match reason {
                Reason::Peer if self.shutdown.has_begun() => Reason::Shutdown,
                other => other,
            };
            self.close(registry, key, reason);
        }
    }

    /// A listener's event: accept, and give each admitted connection a slot
    /// and an idle timer.
    fn accept(
        &mut self,
        registry: &Registry,
        index: usize,
        now: Instant,
        stamp: u32,
    ) -> io::Result<()> {
        let admit = admitter(&mut self.conns, &mut self.idle, registry, now, stamp);
        self.acceptor.accept(index, now, admit)
    }

    /// Accepts left over from the last turn, or after a back-off.
    pub(super) fn accept_due(
        &mut self,
        registry: &Registry,
        now: Instant,
        stamp: u32,
    ) -> io::Result<()> {
        let admit = admitter(&mut self.conns, &mut self.idle, registry, now, stamp);
        self.acceptor.accept_due(now, admit)
    }
}

/// What the acceptor does with each connection it admits: a slot (and
/// registration) in `conns`, and an idle timer.
fn admitter<'a>(
    conns: &'a mut Connections,
    idle: &'a mut IdleTimers,
    registry: &'a Registry,
    now: Instant,
    stamp: u32,
) -> impl FnMut(TcpStream, SocketAddr) -> io::Result<usize> + 'a {
    move |stream, _peer| {
        let (key, generation) = conns.insert(registry, stream, stamp)?;
        let live = conns.len();
        idle.watch(key, generation, now, live, |key, generation| {
            conns.last_active(key, generation).is_some()
        });
        Ok(key)
    }
}

/// What an event said beyond "ready".
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Hints {
    // The peer's FIN has arrived, or TCP urgent data: either way, read to
    // the end (`Connection::read_past_short_reads`).
    read_to_end: bool,
}

impl Hints {
    #[inline]
    pub(super) fn of(event: &Event) -> Hints {
        // `|`, not `||`: both are rare, and one test costs less than two
        // branches on every event.
        Hints {
            read_to_end: event.is_read_closed() | event.is_priority(),
        }
    }
}
