//! A per-source rate limit for UDP replies (`Config::udp_rate_limit`): a
//! token bucket per source IP address, in a fixed table, so nothing is
//! allocated per datagram and memory does not grow with the number of
//! sources.
//!
//! The guarantee: **no sequence of datagrams, from any mix of sources, gets
//! one source IP more than `rate` replies in a burst and `rate` per second
//! after it.** That is what bounds what a forged source can aim at a victim,
//! and it cuts a loop through us (two echo servers bounced against each
//! other) down to that rate.
//!
//! How it holds:
//!
//! * Each source address hashes to one of [`SOURCES`] buckets, and every
//!   source that hashes there *shares* that bucket. A collision can only
//!   make the limit stricter for the sources involved, never looser: no
//!   source can refill a bucket for another by taking turns with it.
//! * The hash is keyed with a random per-process key (std's `RandomState`,
//!   SipHash), so an attacker cannot pick addresses that collide with a
//!   victim's (to starve it) without seeing our replies.
//! * Several loops (`--threads`) share one table through
//!   [`SharedLimits`](super::SharedLimits), and each bucket is one atomic word
//!   updated with compare-and-swap: a source whose datagrams the kernel
//!   spreads over several loops (by source port) still gets `rate` in all.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Buckets in the table (a power of two): 4,096 × 8 bytes = 32 KiB,
/// allocated with the first UDP socket when the limit is on.
pub(super) const SOURCES: usize = 4096;
const _: () = assert!(SOURCES.is_power_of_two());

/// A bucket is one `u64`: the milliseconds (since the table's epoch) of its
/// last refill in the high bits, the replies left in the low
/// `TOKEN_BITS`. 24 bits hold the largest rate (10,000,000); 40 bits of
/// milliseconds last 34 years.
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
const _: () = assert!(crate::Config::MAX_UDP_RATE_LIMIT as u64 <= TOKEN_MASK);

/// The table of buckets, shared by every loop that serves UDP.
#[derive(Debug)]
pub(super) struct SourceLimit {
    rate: u32,
    epoch: Instant,
    key: RandomState,
    // Each: refill time << TOKEN_BITS | tokens, tokens <= rate.
    buckets: Box<[AtomicU64]>,
}

impl SourceLimit {
    /// A table whose buckets start full, with a fresh random key.
    pub(super) fn new(rate: u32, epoch: Instant) -> SourceLimit {
        let rate = rate.clamp(1, TOKEN_MASK as u32);
        let full = u64::from(rate);
        SourceLimit {
            rate,
            epoch,
            key: RandomState::new(),
            buckets: (0..SOURCES).map(|_| AtomicU64::new(full)).collect(),
        }
    }

    /// The bucket `ip` shares with every source that hashes to it.
    pub(super) fn slot(&self, ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        self.key.hash_one(key) as usize & (SOURCES - 1)
    }

    /// Takes one reply from `ip`'s bucket at `now`; false if it is empty.
    pub(super) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX)
            .min(u64::MAX >> TOKEN_BITS);
        let bucket = &self.buckets[self.slot(ip)];
        let mut old = bucket.load(Ordering::Relaxed);
        loop {
            let (at_ms, tokens) = refill(old >> TOKEN_BITS, old & TOKEN_MASK, now_ms, self.rate);
            if tokens == 0 {
                return false;
            }
            let new = at_ms << TOKEN_BITS | (tokens - 1);
            match bucket.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => old = seen,
            }
        }
    }
}

/// A bucket's refill time and tokens after refilling it at `now_ms`, at
/// `rate` tokens per second, up to `rate`.
fn refill(at_ms: u64, tokens: u64, now_ms: u64, rate: u32) -> (u64, u64) {
    let rate = u64::from(rate);
    let elapsed = now_ms.saturating_sub(at_ms);
    let earned = elapsed.saturating_mul(rate) / 1000;
    if earned == 0 {
        return (at_ms, tokens);
    }
    let total = tokens.saturating_add(earned);
    if total >= rate {
        // Full: time spent full earns nothing.
        return (now_ms, rate);
    }
    // Keep the fraction of a token earned so far: advance the refill time
    // only by what `earned` paid for (earned < rate here, so no overflow;
    // the advance is at most `elapsed`).
    (at_ms + earned * 1000 / rate, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(epoch: Instant, ms: u64) -> Instant {
        epoch + Duration::from_millis(ms)
    }

    #[test]
    fn a_source_gets_a_burst_then_the_rate() {
        let epoch = Instant::now();
        let limit = SourceLimit::new(10, epoch);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_ne!(limit.slot(a), limit.slot(b), "pick another pair");
        assert_eq!(
            (0..20).filter(|_| limit.allow(a, at(epoch, 1000))).count(),
            10
        );
        // Another source has its own bucket.
        assert_eq!(
            (0..20).filter(|_| limit.allow(b, at(epoch, 1000))).count(),
            10
        );
        // 100 ms later: one more for `a`; a second later: a full bucket.
        assert_eq!(
            (0..20).filter(|_| limit.allow(a, at(epoch, 1100))).count(),
            1
        );
        assert_eq!(
            (0..20).filter(|_| limit.allow(a, at(epoch, 5000))).count(),
            10
        );
        // Time going backwards (a host may pass any `now`) earns nothing.
        assert!(!limit.allow(a, epoch));
    }

    #[test]
    fn refills_keep_the_fraction_of_a_token() {
        // 10 per second, asked every 150 ms (1.5 tokens each time): over
        // 3 s a drained source earns 30 replies, not one per ask (20).
        let epoch = Instant::now();
        let limit = SourceLimit::new(10, epoch);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!((0..10).filter(|_| limit.allow(a, epoch)).count(), 10);
        let allowed: usize = (1..=20u64)
            .map(|i| {
                (0..2)
                    .filter(|_| limit.allow(a, at(epoch, i * 150)))
                    .count()
            })
            .sum();
        assert_eq!(allowed, 30);
    }

    /// The bug: a bucket whose key differed was replaced by a full one, so
    /// a forged victim address alternated with a second source that hashed
    /// to the same bucket refilled it on every datagram (40 replies in a
    /// millisecond at a limit of 5).
    #[test]
    fn a_colliding_neighbour_cannot_refill_a_victims_bucket() {
        let epoch = Instant::now();
        let limit = SourceLimit::new(5, epoch);
        let victim: IpAddr = "198.51.100.1".parse().unwrap();
        let neighbour = (1..=u32::MAX)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .find(|ip| limit.slot(*ip) == limit.slot(victim))
            .expect("a colliding address");
        let mut to_victim = 0;
        for _ in 0..40 {
            to_victim += usize::from(limit.allow(victim, epoch));
            limit.allow(neighbour, epoch);
        }
        assert!(to_victim <= 5, "{to_victim} replies aimed at the victim");
    }

    #[test]
    fn the_key_differs_between_tables() {
        // Random keys: the same addresses spread differently, so a
        // collision found against one process says nothing about another.
        let epoch = Instant::now();
        let (one, two) = (SourceLimit::new(1, epoch), SourceLimit::new(1, epoch));
        let ips: Vec<IpAddr> = (1..=64u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        let differ = ips.iter().filter(|ip| one.slot(**ip) != two.slot(**ip));
        assert!(differ.count() > 0);
    }

    #[test]
    fn loops_sharing_the_table_share_each_sources_budget() {
        let epoch = Instant::now();
        let limit = std::sync::Arc::new(SourceLimit::new(1000, epoch));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..1000).filter(|_| limit.allow(ip, epoch)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000, "exactly one bucket's worth over four loops");
    }
}
