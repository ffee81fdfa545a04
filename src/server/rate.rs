//! A per-source rate limit for UDP replies (`Config::udp_rate_limit`): a
//! token bucket per source IP address, in a fixed table, so nothing is
//! allocated per datagram and memory does not grow with the number of
//! sources.
//!
//! Each source address hashes to one of [`SOURCES`] buckets holding up to
//! `rate` tokens, refilled at `rate` per second; a reply takes one. Two
//! sources that share a bucket take turns owning it (the newcomer starts
//! with a full bucket), so a collision can only make the limit looser,
//! never silence a source that stays under it. What it buys: a forged
//! source aims at most `rate` replies per second at one victim, and a loop
//! through us (two echo servers bounced against each other) is cut down to
//! that rate, losing a circulating datagram at each refusal.

use std::net::IpAddr;

/// Buckets in the table (a power of two): 4,096 × 32 bytes = 128 KiB,
/// allocated with the first UDP socket when the limit is on.
pub(super) const SOURCES: usize = 4096;
const _: () = assert!(SOURCES.is_power_of_two());

#[derive(Clone, Copy)]
struct Bucket {
    // The source IP as a 128-bit number (IPv4 mapped into IPv6); 0 (the
    // unspecified address, never a source) marks an unused bucket.
    key: u128,
    // Milliseconds (server clock) of the last refill.
    at_ms: u64,
    // Replies left; at most `rate`.
    tokens: u32,
}

pub(super) struct SourceLimit {
    rate: u32,
    buckets: Box<[Bucket]>,
}

impl SourceLimit {
    pub(super) fn new(rate: u32) -> SourceLimit {
        let empty = Bucket {
            key: 0,
            at_ms: 0,
            tokens: 0,
        };
        SourceLimit {
            rate: rate.max(1),
            buckets: vec![empty; SOURCES].into_boxed_slice(),
        }
    }

    /// Takes one reply from `ip`'s bucket at `now_ms`; false if it is empty.
    pub(super) fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let key = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let folded = (key as u64) ^ ((key >> 64) as u64);
        // Fibonacci hashing: the top log2(SOURCES) bits of the product.
        let slot = (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SOURCES.trailing_zeros()))
            as usize;
        let rate = self.rate;
        let bucket = &mut self.buckets[slot];
        if bucket.key != key {
            *bucket = Bucket {
                key,
                at_ms: now_ms,
                tokens: rate,
            };
        } else {
            let elapsed = now_ms.saturating_sub(bucket.at_ms);
            let earned = elapsed.saturating_mul(u64::from(rate)) / 1000;
            if earned > 0 {
                let tokens = u64::from(bucket.tokens) + earned;
                if tokens >= u64::from(rate) {
                    // Full: time spent full earns nothing.
                    bucket.tokens = rate;
                    bucket.at_ms = now_ms;
                } else {
                    // Keep the fraction of a token earned so far: advance
                    // the refill time only by what `earned` paid for
                    // (earned < rate here, so no overflow; <= elapsed).
                    bucket.tokens = tokens as u32;
                    bucket.at_ms += earned * 1000 / u64::from(rate);
                }
            }
        }
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_a_burst_then_the_rate() {
        let mut limit = SourceLimit::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!((0..20).filter(|_| limit.allow(a, 1000)).count(), 10);
        // Another source has its own bucket.
        assert_eq!((0..20).filter(|_| limit.allow(b, 1000)).count(), 10);
        // 100 ms later: one more for `a`; a second later: a full bucket.
        assert_eq!((0..20).filter(|_| limit.allow(a, 1100)).count(), 1);
        assert_eq!((0..20).filter(|_| limit.allow(a, 5000)).count(), 10);
        // Time going backwards (it never does) earns nothing, breaks nothing.
        assert!(!limit.allow(a, 0));
    }

    #[test]
    fn refills_keep_the_fraction_of_a_token() {
        // 10 per second, asked every 150 ms (1.5 tokens each time): over
        // 3 s a drained source earns 30 replies, not one per ask (20).
        let mut limit = SourceLimit::new(10);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!((0..10).filter(|_| limit.allow(a, 0)).count(), 10);
        let allowed: usize = (1..=20u64)
            .map(|i| (0..2).filter(|_| limit.allow(a, i * 150)).count())
            .sum();
        assert_eq!(allowed, 30);
    }

    #[test]
    fn many_sources_fit_in_the_fixed_table() {
        let mut limit = SourceLimit::new(1);
        for i in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761)));
            // A new source always gets its first reply: a collision
            // renews the bucket for it rather than silencing it.
            assert!(limit.allow(ip, 0), "source {ip} silenced by a collision");
        }
        assert_eq!(limit.buckets.len(), SOURCES);
    }
}
