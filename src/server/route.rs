//! Routing: the events a host hands over, one at a time
//! ([`EchoServer::handle_event`]) or a whole batch
//! ([`EchoServer::handle_events`]), go by token to their room: a
//! connection's turn (`drive.rs`), a listener's accepts (`accept.rs`) or a
//! UDP socket's datagrams (`udp.rs`). A token that names a closed
//! connection (an old generation) is dropped here at the cost of one
//! compare. This is the hottest loop of the server: the comments say what
//! each shortcut saves, in instructions per message.

use std::io;
use std::time::Instant;

use log::trace;
use mio::event::Event;
use mio::{Events, Registry, Token};

use super::EchoServer;
use crate::token::Target;

#[cfg(doc)]
use super::UDP_DATAGRAMS_PER_TURN;

impl EchoServer {
    /// Handles one event for a token this server owns; ignores others.
    ///
    /// A listener event accepts up to `accepts_per_turn` connections; a
    /// connection event echoes up to `budget` bytes on that connection; a
    /// UDP socket's event echoes up to [`UDP_DATAGRAMS_PER_TURN`] datagrams.
    /// Events are hints: a stale one (for a connection already closed, even if
    /// its slab slot was reused since) is ignored at no cost.
    ///
    /// # Errors
    /// Only a listener's failure; a connection's failure closes it.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now: Instant,
    ) -> io::Result<()> {
        self.handle_token(registry, event.token(), Hints::of(event), now)
    }

    /// Handles every event in `events` whose token this server owns, in
    /// order, as [`EchoServer::handle_event`] would one by one, and returns
    /// how many it left to the host: events for tokens outside its range,
    /// which the host then routes itself (when the count is not 0).
    ///
    /// This is the cheaper way to hand over a batch: one call per `poll`
    /// instead of one per event, so the host's loop does no routing, no
    /// [`owns`](EchoServer::owns) check and no error mapping per event
    /// (with `handle_token` inlined into this loop: 202 -> 169 instructions
    /// per message, benches/instructions.sh).
    ///
    /// Work: as [`EchoServer::handle_event`] for each owned event.
    ///
    /// # Errors
    /// Only a listener's failure; the events after it in the batch are then
    /// left unhandled.
    ///
    /// ```
    /// use std::time::Instant;
    /// use mio::{Events, Interest, Poll, Token, Waker};
    /// use echoloop::{Config, EchoServer};
    ///
    /// const WAKE: Token = Token(0);
    /// let mut poll = Poll::new()?;
    /// let waker = Waker::new(poll.registry(), WAKE)?;
    /// let mut server = EchoServer::new(Config::default(), Token(1));
    /// server.bind("127.0.0.1:0".parse().unwrap())?;
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
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle_events(
        &mut self,
        registry: &Registry,
        events: &Events,
        now: Instant,
    ) -> io::Result<usize> {
        let mut foreign = 0;
        let ms = self.begin_call(now);
        for event in events.iter() {
            if self.owns(event.token()) {
                self.route(registry, event.token(), Hints::of(event), now, ms)?;
            } else {
                foreign += 1;
            }
        }
        Ok(foreign)
    }

    pub(super) fn handle_token(
        &mut self,
        registry: &Registry,
        token: Token,
        hints: Hints,
        now: Instant,
    ) -> io::Result<()> {
        let ms = self.begin_call(now);
        self.route(registry, token, hints, now, ms)
    }

    /// What every call from the host reads once rather than per event: the
    /// time on the server's clock (for `last_active`), which it returns,
    /// and whether trace logging is on (`tracing`; read per event, it cost
    /// 3 instructions per message: 148.4 -> 145.3).
    #[inline]
    pub(super) fn begin_call(&mut self, now: Instant) -> u32 {
        self.tracing = log::log_enabled!(log::Level::Trace);
        self.clock.millis(now) as u32
    }

    /// Routes one event; `ms` is `now` on the server's clock, which the
    /// caller reads once for a whole batch.
    #[inline(always)]
    fn route(
        &mut self,
        registry: &Registry,
        token: Token,
        hints: Hints,
        now: Instant,
        ms: u32,
    ) -> io::Result<()> {
        match self.tokens.decode(token) {
            Some(Target::Connection { key, generation }) => {
                self.drive(registry, key, generation, hints, ms);
            }
            Some(Target::Listener(index)) => {
                trace_listener(index);
                if self.backoff.is_none() {
                    self.accept(registry, index, now)?;
                }
            }
            Some(Target::Udp(index)) => self.serve_udp(index, now),
            None => trace_not_ours(token),
        }
        Ok(())
    }
}

// Out of line, as `drive::trace_stale` says why.
#[cold]
#[inline(never)]
fn trace_listener(index: usize) {
    trace!("listener {index}: ready");
}

#[cold]
#[inline(never)]
fn trace_not_ours(token: Token) {
    trace!("token {}: not ours", token.0);
}

/// What an event said beyond "ready".
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Hints {
    // The peer's FIN has arrived, or TCP urgent data: either way, read to
    // the end (`Connection::peer_closing`, `Connection::urgent_data`).
    pub(super) read_to_end: bool,
}

impl Hints {
    // One flag and `|`: both are rare, and one test in the hot path is
    // cheaper than two (149.5 -> 148.4 instructions per message).
    #[inline(always)]
    fn of(event: &Event) -> Hints {
        Hints {
            read_to_end: event.is_read_closed() | event.is_priority(),
        }
    }
}
