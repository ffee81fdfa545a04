//! The idle timers: with an idle timeout, a connection that has had no
//! traffic in either direction for that long is closed. And the server's
//! clock, which the timers and the connections' `last_active` stamps read.
//!
//! The timers are lazy. Traffic only stamps the connection's `last_active`
//! (one store per event, no heap work). Each connection has one `Check` in
//! a min-heap; when it comes due, [`IdleTimers::next_expired`] looks at the
//! connection's stamp again and either reports it idle or pushes the check
//! back to when it could next be idle long enough. Checks of closed
//! connections are skipped by their generation and swept out once they
//! outnumber the live ones. Times are milliseconds since the server's epoch.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Stale checks tolerated beyond twice the live connections before the heap
/// is compacted.
const SLACK: usize = 1024;
/// Idle connections closed per turn at most; more wait for the next turn
/// (and make `poll_timeout` return zero meanwhile).
pub(super) const CLOSES_PER_TURN: usize = 1024;

/// A deadline in the heap: when to look at the connection `key` (if it is
/// still `generation`) again.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Check {
    due_ms: u64,
    key: u32,
    generation: u16,
}

/// The idle deadlines of every connection, and the clock they run on.
#[derive(Debug)]
pub(super) struct IdleTimers {
    // None: no idle timeout, and the heap stays empty.
    timeout_ms: Option<u64>,
    heap: BinaryHeap<Reverse<Check>>,
    clock: Clock,
}

impl IdleTimers {
    pub(super) fn new(timeout: Option<Duration>, epoch: Instant) -> IdleTimers {
        IdleTimers {
            timeout_ms: timeout.map(millis_of),
            heap: BinaryHeap::new(),
            clock: Clock::new(epoch),
        }
    }

    /// `now` in milliseconds on the server's clock, as a connection's
    /// `last_active` stamp (it wraps after 49 days; the idle timeout is at
    /// most 7, so differences stay exact).
    #[inline]
    pub(super) fn stamp(&mut self, now: Instant) -> u32 {
        self.clock.millis(now) as u32
    }

    /// Starts watching a new connection, if there is an idle timeout;
    /// `is_live` says which older checks still name a live connection.
    pub(super) fn watch(
        &mut self,
        key: usize,
        generation: u16,
        now: Instant,
        live: usize,
        is_live: impl Fn(usize, u16) -> bool,
    ) {
        let Some(timeout_ms) = self.timeout_ms else {
            return;
        };
        let now_ms = self.clock.millis(now);
        self.heap.push(Reverse(Check {
            due_ms: now_ms.saturating_add(timeout_ms),
            key: key as u32,
            generation,
        }));
        // Checks of closed connections stay until they come due. Under
        // churn with a long timeout they could pile up, so once they
        // outnumber live connections the heap is rebuilt without them: each
        // rebuild removes at least half, so the cost per connection stays
        // O(1).
        if self.heap.len() > 2 * live + SLACK {
            self.heap
                .retain(|Reverse(check)| is_live(check.key as usize, check.generation));
        }
    }

    /// When the earliest check comes due, if there is one.
    pub(super) fn due(&self) -> Option<Instant> {
        let Reverse(check) = self.heap.peek()?;
        self.clock
            .epoch
            .checked_add(Duration::from_millis(check.due_ms))
    }

    /// The next connection idle for the whole timeout at `now`, if any:
    /// pops the checks that are due, asks `last_active` for the stamp of the
    /// connection each names (`None` if it is gone), and pushes back the
    /// checks of connections that had traffic since.
    pub(super) fn next_expired(
        &mut self,
        now: Instant,
        last_active: impl Fn(usize, u16) -> Option<u32>,
    ) -> Option<usize> {
        let timeout_ms = self.timeout_ms?;
        let now_ms = self.clock.millis(now);
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(check)| check.due_ms <= now_ms)
        {
            let Reverse(check) = self.heap.pop()?;
            let key = check.key as usize;
            let Some(stamp) = last_active(key, check.generation) else {
                continue; // closed since; its slot maybe reused
            };
            let idle_ms = u64::from((now_ms as u32).wrapping_sub(stamp));
            if idle_ms >= timeout_ms {
                return Some(key);
            }
            // Traffic since this check was queued: look again when the
            // connection could next be idle long enough.
            self.heap.push(Reverse(Check {
                due_ms: now_ms.saturating_add(timeout_ms - idle_ms),
                ..check
            }));
        }
        None
    }
}

/// The server's epoch, and the milliseconds since it at the `now` seen last.
///
/// A host passes one `now` to every event of a turn, so the milliseconds
/// are computed once per turn and the hot path only stores them
/// (benches/instructions.sh with `--idle-timeout 60`).
#[derive(Debug)]
struct Clock {
    epoch: Instant,
    seen: Instant,
    seen_ms: u64,
}

impl Clock {
    fn new(epoch: Instant) -> Clock {
        Clock {
            epoch,
            seen: epoch,
            seen_ms: 0,
        }
    }

    /// Milliseconds from the epoch to `now`, computed again only when `now`
    /// changed.
    #[inline]
    fn millis(&mut self, now: Instant) -> u64 {
        if now != self.seen {
            self.seen = now;
            self.seen_ms = millis_of(now.saturating_duration_since(self.epoch));
        }
        self.seen_ms
    }
}

/// Whole milliseconds in `d`, saturating at `u64::MAX`.
fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_computes_again_only_when_now_changes() {
        let epoch = Instant::now();
        let mut clock = Clock::new(epoch);
        let t1 = epoch + Duration::from_millis(1500);
        assert_eq!(clock.millis(t1), 1500);
        assert_eq!(clock.millis(t1), 1500, "same now, same answer");
        let t2 = epoch + Duration::from_millis(2750);
        assert_eq!(clock.millis(t2), 2750, "a new now is computed again");
        // Back at the epoch (where the cache starts): 0 again.
        assert_eq!(clock.millis(epoch), 0);
    }

    #[test]
    fn a_connection_with_traffic_is_looked_at_again_later() {
        let epoch = Instant::now();
        let mut idle = IdleTimers::new(Some(Duration::from_secs(10)), epoch);
        idle.watch(3, 1, epoch, 1, |_, _| true);
        assert_eq!(idle.due(), Some(epoch + Duration::from_secs(10)));
        // Active 4 s in: not idle at 10 s, due again at 14 s.
        let at_10 = epoch + Duration::from_secs(10);
        assert_eq!(idle.next_expired(at_10, |_, _| Some(4000)), None);
        assert_eq!(idle.due(), Some(epoch + Duration::from_secs(14)));
        let at_14 = epoch + Duration::from_secs(14);
        assert_eq!(idle.next_expired(at_14, |_, _| Some(4000)), Some(3));
        // A closed connection's check names nothing.
        idle.watch(5, 2, at_14, 1, |_, _| true);
        let at_30 = epoch + Duration::from_secs(30);
        assert_eq!(idle.next_expired(at_30, |_, _| None), None);
    }

    #[test]
    fn checks_of_closed_connections_do_not_pile_up() {
        let epoch = Instant::now();
        let mut idle = IdleTimers::new(Some(Duration::from_secs(3600)), epoch);
        for key in 0..(SLACK + 200) {
            // Each connection closes before the next is accepted.
            idle.watch(key, 1, epoch, 1, |k, _| k == key);
        }
        assert!(idle.heap.len() <= SLACK + 2, "{} checks", idle.heap.len());
    }
}
