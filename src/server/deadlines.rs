//! Idle deadlines: with an idle timeout, a connection that has had no
//! traffic in either direction for that long is closed.
//!
//! The deadlines are lazy. Traffic only stamps the connection's
//! `last_active` (one timestamp per event, no heap work). Each connection has
//! one `IdleCheck` in a min-heap; when it comes due, `close_idle` looks
//! again, and either closes the connection or pushes the check back to when
//! it could next be idle long enough. Checks of closed connections are
//! skipped by their generation and swept out by `compact_idle`.
//! `poll_timeout` (in `mod.rs`) sleeps no longer than `idle_due`. Times are
//! milliseconds since the server's epoch (`millis`).

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use log::debug;
use mio::Registry;

use super::drive::Reason;
use super::EchoServer;

/// Stale idle checks tolerated beyond twice the live connections before
/// the idle heap is compacted.
const IDLE_SLACK: usize = 1024;
/// Idle connections closed per `handle_timeout` call at most; more wait for
/// the next turn (and make `poll_timeout` return zero meanwhile).
const IDLE_CLOSES_PER_TURN: usize = 1024;

/// A deadline in the idle queue. Lazy: a connection's traffic only updates
/// its `last_active`; when the entry comes due we look again.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IdleCheck {
    due_ms: u64,
    key: u32,
    generation: u16,
}

impl EchoServer {
    /// Queues the first idle check of a new connection, when there is an
    /// idle timeout.
    pub(super) fn watch_idle(&mut self, key: usize, generation: u16, now_ms: u64) {
        if let Some(timeout) = self.config.idle_timeout {
            self.idle.push(Reverse(IdleCheck {
                due_ms: now_ms.saturating_add(millis_of(timeout)),
                key: key as u32,
                generation,
            }));
            self.compact_idle();
        }
    }

    /// When the earliest idle check comes due, if there is one.
    pub(super) fn idle_due(&self) -> Option<Instant> {
        self.idle.peek().and_then(|Reverse(check)| {
            self.clock
                .epoch
                .checked_add(Duration::from_millis(check.due_ms))
        })
    }

    pub(super) fn close_idle(&mut self, registry: &Registry, now: Instant) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        let timeout_ms = millis_of(timeout);
        // The turn's clock, already read by `handle_timeout` for this `now`
        // (computed again, it cost about 1.5 instructions per message with
        // --idle-timeout 60: 137.8 -> 137.1).
        let now_ms = self.clock.millis(now);
        let mut closed = 0;
        while closed < IDLE_CLOSES_PER_TURN {
            match self.idle.peek() {
                Some(Reverse(check)) if check.due_ms <= now_ms => {}
                _ => break,
            }
            let Some(Reverse(check)) = self.idle.pop() else {
                break;
            };
            let key = check.key as usize;
            // That connection may be gone, its slot maybe reused.
            let Some(conn) = self.current(key, check.generation) else {
                continue;
            };
            let idle_ms = u64::from((now_ms as u32).wrapping_sub(conn.last_active));
            if idle_ms >= timeout_ms {
                debug!("connection {key}: closed after {idle_ms} ms idle");
                self.close(registry, key, Reason::Idle);
                closed += 1;
            } else {
                // Traffic since this check was queued: look again when the
                // connection could next be idle long enough.
                self.idle.push(Reverse(IdleCheck {
                    due_ms: now_ms.saturating_add(timeout_ms - idle_ms),
                    ..check
                }));
            }
        }
    }

    // Checks of closed connections stay in the heap until they come due.
    // Under churn with a long timeout they could pile up, so once they
    // outnumber live connections the heap is rebuilt without them: each
    // rebuild removes at least half, so the cost per connection stays O(1).
    fn compact_idle(&mut self) {
        if self.idle.len() <= 2 * self.conns.len() + IDLE_SLACK {
            return;
        }
        let conns = &self.conns;
        self.idle.retain(|Reverse(check)| {
            conns
                .get(check.key as usize)
                .is_some_and(|conn| conn.generation == check.generation)
        });
    }
}

/// The server's epoch, and the milliseconds since it at the `now` seen last.
///
/// A host passes one `now` to every event of a turn, so the milliseconds
/// are computed once per turn: stamping `last_active` cost about 83
/// instructions per message before (522 with `--idle-timeout 60` against
/// 439 without), then 9 with a two-word compare per event (222 against
/// 213; benches/instructions.sh); `handle_events` now reads the clock once
/// per batch and the hot path only stores it.
#[derive(Debug)]
pub(super) struct Clock {
    pub(super) epoch: Instant,
    seen: Instant,
    seen_ms: u64,
}

impl Clock {
    pub(super) fn new(epoch: Instant) -> Clock {
        Clock {
            epoch,
            seen: epoch,
            seen_ms: 0,
        }
    }

    pub(super) fn since_epoch(&self, now: Instant) -> u64 {
        millis_of(now.saturating_duration_since(self.epoch))
    }

    /// As `since_epoch`, computed again only when `now` changed.
    #[inline]
    pub(super) fn millis(&mut self, now: Instant) -> u64 {
        if now != self.seen {
            self.seen = now;
            self.seen_ms = self.since_epoch(now);
        }
        self.seen_ms
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
pub(super) fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::tests::{accept_one, server_with_listener};
    use std::net::TcpStream as StdStream;

    #[test]
    fn issue_10_clock_computes_again_only_when_now_changes() {
        let epoch = Instant::now();
        let mut clock = Clock::new(epoch);
        let t1 = epoch + Duration::from_millis(1500);
        assert_eq!(clock.millis(t1), 1500);
        assert_eq!(clock.millis(t1), 1500, "same now, same answer");
        let t2 = epoch + Duration::from_millis(2750);
        assert_eq!(clock.millis(t2), 2750, "a new now is computed again");
        // Back at the epoch (where the cache starts): 0 again.
        assert_eq!(clock.millis(epoch), 0);
        assert_eq!(clock.since_epoch(t2), 2750);
    }

    #[test]
    fn idle_checks_of_closed_connections_do_not_pile_up() {
        let poll = mio::Poll::new().unwrap();
        let config = Config {
            idle_timeout: Some(Duration::from_secs(3600)),
            ..Config::default()
        };
        let (mut server, addr) = server_with_listener(&poll, config);
        for _ in 0..(IDLE_SLACK + 200) {
            let _client = StdStream::connect(addr).unwrap();
            let (key, _) = accept_one(&mut server, &poll);
            server.close(poll.registry(), key, Reason::Peer);
        }
        assert!(
            server.idle.len() <= IDLE_SLACK + 1,
            "{} idle checks for {} connections",
            server.idle.len(),
            server.conns.len()
        );
    }
}
