//! Open loop (`--rate R`): every connection sends on a fixed schedule, the
//! way wrk2 does, so a slow server cannot slow the load down and hide its
//! stalls (coordinated omission).
//!
//! Over all connections, message slots are R per second: slot `i` is due at
//! `start + i / R`. Connection `g` of `N` takes slots `g, g + N, g + 2N, ...`,
//! so each sends R/N per second and their phases are spread evenly. Latency
//! is measured from a message's scheduled time, not from when it was
//! written: time a message spends waiting to be sent (behind a slow echo, a
//! full socket buffer, or a late generator) counts against the server,
//! as it would for a real client.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

use crate::sys::Timer;

/// The poll token of the schedule's timer (slab keys never reach it).
pub(crate) const TIMER: Token = Token(usize::MAX);

/// When one connection's messages are due: message `k` at
/// `start + phase + k * interval`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    start: Instant,
    // Nanoseconds from `start` to message 0, and between messages (>= 1).
    phase_ns: u64,
    interval_ns: u64,
}

impl Schedule {
    /// Connection `index` of `conns` sharing `rate` messages per second.
    pub(crate) fn new(start: Instant, index: usize, conns: usize, rate: f64) -> Schedule {
        Schedule {
            start,
            phase_ns: (index as f64 * 1e9 / rate).round() as u64,
            interval_ns: (conns as f64 * 1e9 / rate).round().max(1.0) as u64,
        }
    }

    /// When message `k` is due.
    pub(crate) fn at(&self, k: u64) -> Instant {
        let ns = self
            .phase_ns
            .saturating_add(k.saturating_mul(self.interval_ns));
        self.start + Duration::from_nanos(ns)
    }

    /// How many messages are due strictly before `t`.
    pub(crate) fn before(&self, t: Instant) -> u64 {
        let elapsed = t.saturating_duration_since(self.start).as_nanos();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        match elapsed.checked_sub(self.phase_ns) {
            None | Some(0) => 0,
            Some(past) => (past - 1) / self.interval_ns + 1,
        }
    }

    /// How many messages are due at or before `t`.
    pub(crate) fn by(&self, t: Instant) -> u64 {
        self.before(t + Duration::from_nanos(1))
    }
}

/// The next due time of every scheduled connection, and a timerfd armed
/// for the earliest, so the loop wakes when a message is due.
pub(crate) struct Timers {
    // (due, client key); one entry per connection with messages to come.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    timer: Timer,
    // When the timerfd is set to expire, if it is.
    armed: Option<Instant>,
}

impl Timers {
    /// An empty set, its timer registered with `poll` as [`TIMER`].
    pub(crate) fn new(poll: &Poll) -> io::Result<Timers> {
        let timer = Timer::new()?;
        poll.registry().register(
            &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&timer)),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Timers {
            heap: BinaryHeap::new(),
            timer,
            armed: None,
        })
    }

    /// Wakes the loop for client `key` at `due`.
    pub(crate) fn push(&mut self, due: Instant, key: usize) {
        self.heap.push(Reverse((due, key)));
    }

    /// The next client whose time has come by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.heap.peek() {
            Some(Reverse((due, _))) if *due <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// Arms the timer for the earliest due time unless it is armed for
    /// that time or sooner already (one syscall per wake-up at most);
    /// returns true if something is due by `now` (poll should not wait).
    pub(crate) fn arm(&mut self, now: Instant) -> io::Result<bool> {
        if self.armed.is_some_and(|at| at <= now) {
            // Expired: read it, so its next expiry is a new edge.
            self.timer.clear();
            self.armed = None;
        }
        let Some(Reverse((due, _))) = self.heap.peek() else {
            return Ok(false);
        };
        if *due <= now {
            return Ok(true);
        }
        // A wake-up at or before `due` is set already: that turn re-arms.
        if self.armed.is_none_or(|at| at > *due) {
            self.timer.set(*due - now)?;
            self.armed = Some(*due);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spread_over_the_connections() {
        let start = Instant::now();
        // 1000 msgs/s over 4 connections: each every 4 ms, 1 ms apart.
        let s: Vec<Schedule> = (0..4).map(|g| Schedule::new(start, g, 4, 1000.0)).collect();
        assert_eq!(s[1].at(0) - start, Duration::from_millis(1));
        assert_eq!(s[1].at(2) - start, Duration::from_millis(9));
        let t = start + Duration::from_millis(9);
        assert_eq!(s[1].by(t), 3);
        assert_eq!(s[1].before(t), 2);
        // Over all connections, one slot per millisecond: 0..=9 by 9 ms.
        assert_eq!(s.iter().map(|c| c.by(t)).sum::<u64>(), 10);
        assert_eq!(s[0].before(start), 0);
        assert_eq!(s[0].by(start), 1);
    }
}
