//! The limits that hold over every loop of a process: one connection limit,
//! the connections per source, the news that a descriptor was freed, and
//! the UDP rate limit's table.
//!
//! A host that runs N loops (one [`EchoServer`] per thread, see the crate
//! docs) gives every server a clone of one [`SharedLimits`]. The servers
//! touch it only when a connection is admitted or closed, when a UDP reply
//! is rate-limited, and, while out of descriptors, once per back-off check:
//! never per TCP message. A server made with [`EchoServer::new`] has limits
//! of its own.
//!
//! Why the close news: the loops share one descriptor table, so a loop that
//! backed off because `accept` failed with EMFILE can accept again as soon
//! as *any* loop closes a connection, not only itself. A backed-off server
//! with shared limits therefore sleeps at most [`SHARED_RETRY_CHECK`] and
//! compares the shared close count with the one it saw when it backed off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::rate::SourceLimit;
use crate::config::Config;

#[cfg(doc)]
use super::EchoServer;

/// While backed off for lack of descriptors, a server with shared limits
/// looks this often whether another loop closed a connection: 10 ms, the
/// first back-off step, so sharing never makes a retry later than alone.
pub(super) const SHARED_RETRY_CHECK: Duration = Duration::from_millis(10);

/// Limits shared by several [`EchoServer`]s, one per loop thread: at most
/// `max_connections` open over all of them, and `max_per_source` from one
/// source, exactly, and at most `udp_rate_limit` UDP replies per second to
/// one source over all of them.
///
/// Cloning is cheap (an `Arc`); every clone is the same limits. Give each
/// server its clone with [`EchoServer::with_shared_limits`], and the servers
/// the same [`Config`] this was made from.
///
/// Cost: one atomic read-modify-write when a connection is admitted (or
/// refused) and one when it closes, and with `max_per_source` one lock of
/// the per-source table each time; none per TCP message. With a UDP rate
/// limit, one compare-and-swap per datagram.
///
/// ```
/// let mut config = echoloop::Config::default();
/// config.max_connections = 2;
/// let limits = echoloop::SharedLimits::new(&config);
/// assert_eq!(limits.max_connections(), 2);
/// assert_eq!(limits.active(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct SharedLimits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    // Connections open over all servers; active <= max.
    active: AtomicUsize,
    // Connections closed over all servers, ever: the "a descriptor was
    // freed" news for backed-off servers.
    closes: AtomicU64,
    // Some when the config has a UDP rate limit.
    udp_rate: Option<Arc<SourceLimit>>,
    // With `max_per_source`: the limit, and the connections open now from
    // each source that has any (so at most one entry per open connection,
    // whatever the number of sources that ever connected).
    per_source: Option<(usize, Mutex<HashMap<Source, usize>>)>,
    // Every acquire, release and close check, so a test can prove the
    // shared state is touched only at accept and close.
    #[cfg(test)]
    operations: AtomicU64,
}

impl SharedLimits {
    /// Limits for servers that run `config`: its `max_connections` over all
    /// of them, and its `udp_rate_limit` (a table of 32 KiB, when set).
    pub fn new(config: &Config) -> SharedLimits {
        let udp_rate = config
            .udp_rate_limit
            .map(|rate| Arc::new(SourceLimit::new(rate, Instant::now())));
        SharedLimits {
            inner: Arc::new(Inner {
                max: config.max_connections,
                active: AtomicUsize::new(0),
                closes: AtomicU64::new(0),
                udp_rate,
                per_source: config
                    .max_per_source
                    .map(|max| (max, Mutex::new(HashMap::new()))),
                #[cfg(test)]
                operations: AtomicU64::new(0),
            }),
        }
    }

    /// The connection limit over every server sharing these limits.
    pub fn max_connections(&self) -> usize {
        self.inner.max
    }

    /// Connections open now over every server sharing these limits.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Takes one connection slot if one is free; false at the limit. The
    /// check and the increment are one atomic step, so N loops accepting at
    /// the same moment never exceed the limit together.
    pub(super) fn try_acquire(&self) -> bool {
        self.count_operation();
        let max = self.inner.max;
        self.inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `n` slots taken by [`SharedLimits::try_acquire`] (their
    /// connections closed) and counts the closes. Never goes below zero.
    pub(super) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.count_operation();
        let _ = self
            .inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_sub(n))
            });
        self.inner.closes.fetch_add(n as u64, Ordering::Release);
    }

    /// Takes one of `source`'s slots if it has one free; always true without
    /// `max_per_source`.
    pub(super) fn try_acquire_source(&self, source: Source) -> bool {
        let Some((max, table)) = &self.inner.per_source else {
            return true;
        };
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        let open = table.entry(source).or_insert(0);
        if *open >= *max {
            if *open == 0 {
                table.remove(&source);
            }
            return false;
        }
        *open += 1;
        true
    }

    /// Gives back a slot of `source` taken by
    /// [`SharedLimits::try_acquire_source`].
    pub(super) fn release_source(&self, source: Source) {
        let Some((_, table)) = &self.inner.per_source else {
            return;
        };
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = table.get_mut(&source) {
            *open -= 1;
            if *open == 0 {
                table.remove(&source);
            }
        }
    }

    /// True when connections are limited per source.
    pub(super) fn limits_sources(&self) -> bool {
        self.inner.per_source.is_some()
    }

    /// Connections closed so far over all servers. A server backed off for
    /// lack of descriptors retries once this has moved.
    pub(super) fn closes(&self) -> u64 {
        self.count_operation();
        self.inner.closes.load(Ordering::Acquire)
    }

    /// The UDP rate limit's table, if the config had one.
    pub(super) fn udp_rate(&self) -> Option<Arc<SourceLimit>> {
        self.inner.udp_rate.clone()
    }

    #[inline]
    fn count_operation(&self) {
        #[cfg(test)]
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the servers consulted these limits.
    #[cfg(test)]
    pub(super) fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::Relaxed)
    }
}

/// Where a connection comes from, for `max_per_source`: an IPv4 address,
/// or the /64 prefix of an IPv6 one (an IPv6 host usually has a whole /64 to
/// pick addresses from). An IPv4 address, also one mapped into IPv6, is
/// kept under the `ffff:ffff::/32` prefix, which is multicast space and so
/// never the prefix of a real TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(u64);

impl Source {
    pub(super) fn of(ip: IpAddr) -> Source {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => Source(0xffff_ffff_0000_0000 | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => Source((u128::from(v6) >> 64) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> SharedLimits {
        SharedLimits::new(&Config {
            max_connections: max,
            ..Config::default()
        })
    }

    #[test]
    fn the_limit_holds_over_every_clone() {
        let limit = limits(2);
        let other = limit.clone();
        assert!(limit.try_acquire());
        assert!(other.try_acquire());
        assert!(!limit.try_acquire(), "two of two in use, over both clones");
        other.release(1);
        assert_eq!((limit.active(), limit.closes()), (1, 1));
        limit.release(5);
        assert_eq!(limit.active(), 0, "never below zero");
    }

    #[test]
    fn a_source_holds_at_most_its_share_and_the_table_forgets_idle_sources() {
        let limits = SharedLimits::new(&Config {
            max_per_source: Some(2),
            ..Config::default()
        });
        let a = Source::of("192.0.2.1".parse().unwrap());
        let b = Source::of("::ffff:192.0.2.2".parse().unwrap());
        assert!(limits.try_acquire_source(a) && limits.try_acquire_source(a));
        assert!(!limits.try_acquire_source(a), "a third from one address");
        assert!(limits.try_acquire_source(b), "another address has its own");
        limits.release_source(a);
        assert!(limits.try_acquire_source(a), "a close gives the slot back");
        // A hostile spread of sources that each leave costs nothing after.
        for i in 0..10_000u32 {
            let source = Source::of(IpAddr::from((0x7f00_0000 + i).to_be_bytes()));
            assert!(limits.try_acquire_source(source));
            limits.release_source(source);
        }
        let (_, table) = limits.inner.per_source.as_ref().unwrap();
        assert_eq!(table.lock().unwrap().len(), 2, "one entry per open source");
    }

    #[test]
    fn ipv6_addresses_of_one_64_prefix_are_one_source() {
        let one = Source::of("2001:db8:1:2::1".parse().unwrap());
        let same = Source::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let other = Source::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(one, same);
        assert_ne!(one, other);
        let v4 = Source::of("10.0.0.1".parse().unwrap());
        let mapped = Source::of("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(v4, mapped);
    }
}
