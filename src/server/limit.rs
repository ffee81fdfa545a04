//! What several servers on several threads share: one connection limit and
//! the news that a descriptor was freed.
//!
//! A host that runs N loops (one [`EchoServer`] per thread, see the crate
//! docs) gives every server a clone of one [`SharedLimit`]. The servers touch
//! it only when a connection is admitted or closed and, while out of
//! descriptors, once per back-off check — never per message: the echo path
//! takes no lock and no atomic. A server without a `SharedLimit` (the
//! default, one loop) counts its own slab and uses no atomic at all.
//!
//! Why the close news: the loops share one descriptor table, so a loop that
//! backed off because `accept` failed with EMFILE can accept again as soon
//! as *any* loop closes a connection, not only itself. A backed-off server
//! with a shared limit therefore sleeps at most [`SHARED_RETRY_CHECK`] and
//! compares the shared close count with the one it saw when it backed off.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::rate::SourceLimit;

#[cfg(doc)]
use super::EchoServer;

/// While backed off for lack of descriptors, a server that shares a limit
/// looks this often whether another loop closed a connection: 10 ms, the
/// first back-off step, so sharing never makes a retry later than alone.
pub const SHARED_RETRY_CHECK: Duration = Duration::from_millis(10);

/// A connection limit shared by several [`EchoServer`]s (one per loop
/// thread): at most `max` connections open over all of them, exactly.
///
/// Cloning is cheap (an `Arc`); every clone is the same limit. Give each
/// server its clone with [`EchoServer::with_shared_limit`]. Over the limit a
/// server accepts and closes at once, as with its own limit.
///
/// Cost: one atomic read-modify-write when a connection is admitted (or
/// refused) and one when it closes, plus [`SharedLimit::operations`]'s
/// counter beside each; none per message.
///
/// ```
/// use echoloop::server::SharedLimit;
/// let limit = SharedLimit::new(2);
/// let other = limit.clone();
/// assert!(limit.try_acquire());
/// assert!(other.try_acquire());
/// assert!(!limit.try_acquire(), "two of two in use, over both clones");
/// other.release();
/// assert_eq!((limit.active(), limit.closes()), (1, 1));
/// ```
#[derive(Debug, Clone)]
pub struct SharedLimit {
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
    // Every acquire, release and close check, so a test can prove the
    // shared state is touched only at accept and close.
    operations: AtomicU64,
    // The UDP rate limit's table, made by the first server that needs it,
    // so that a source's replies are limited over every loop together.
    udp_rate: OnceLock<Arc<SourceLimit>>,
}

impl SharedLimit {
    /// A limit of `max` connections over every server that shares it.
    ///
    /// ```
    /// assert_eq!(echoloop::server::SharedLimit::new(8).max(), 8);
    /// ```
    pub fn new(max: usize) -> SharedLimit {
        SharedLimit {
            inner: Arc::new(Inner {
                max,
                active: AtomicUsize::new(0),
                closes: AtomicU64::new(0),
                operations: AtomicU64::new(0),
                udp_rate: OnceLock::new(),
            }),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Takes one connection slot if one is free; false at the limit. The
    /// check and the increment are one atomic step, so N loops accepting at
    /// the same moment never exceed `max` together.
    pub fn try_acquire(&self) -> bool {
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
        let max = self.inner.max;
        self.inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back one slot taken by [`SharedLimit::try_acquire`] (the
    /// connection closed) and counts the close. Never goes below zero.
    pub fn release(&self) {
        self.release_many(1);
    }

    /// Gives back `n` slots at once (a server dropped with `n` connections).
    pub fn release_many(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                Some(a.saturating_sub(n))
            });
        self.inner.closes.fetch_add(n as u64, Ordering::Release);
    }

    /// Connections open now over all servers.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Connections closed so far over all servers. A server backed off for
    /// lack of descriptors retries once this has moved.
    pub fn closes(&self) -> u64 {
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
        self.inner.closes.load(Ordering::Acquire)
    }

    /// The UDP rate limit's table for every server sharing this limit, made
    /// with `rate` by the first server that asks (servers sharing a limit
    /// are meant to share a config).
    pub(super) fn udp_rate_table(&self, rate: u32) -> Arc<SourceLimit> {
        self.inner
            .udp_rate
            .get_or_init(|| Arc::new(SourceLimit::new(rate, Instant::now())))
            .clone()
    }

    /// How many times the servers consulted this limit: acquires (admitted
    /// or refused), releases and back-off close checks. Constant while
    /// established connections only echo — that is what a test asserts.
    pub fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::TcpStream as StdStream;
    use std::time::Instant;

    use mio::Token;

    use super::*;
    use crate::config::Config;
    use crate::server::tests::accept_one;
    use crate::server::EchoServer;

    fn sharing(poll: &mio::Poll, limit: &SharedLimit) -> (EchoServer, std::net::SocketAddr) {
        let mut server = EchoServer::with_shared_limit(Config::default(), Token(0), limit.clone());
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        (server, addr)
    }

    #[test]
    fn a_backed_off_server_retries_once_another_loop_closes() {
        let poll = mio::Poll::new().unwrap();
        let limit = SharedLimit::new(10);
        let (mut server, addr) = sharing(&poll, &limit);
        let now = Instant::now();
        // As if accept had failed with EMFILE a few times: the timer's next
        // retry is a second away.
        server.back_off(now, &io::Error::from_raw_os_error(libc::EMFILE));
        server.backoff.as_mut().unwrap().until = now + Duration::from_secs(1);
        let _waiting = StdStream::connect(addr).unwrap();
        assert!(server.poll_timeout(now).unwrap() <= SHARED_RETRY_CHECK);
        // Nobody closed anything: still backed off, nothing accepted.
        let later = now + Duration::from_millis(20);
        server.handle_timeout(poll.registry(), later).unwrap();
        assert!(server.backoff.is_some());
        assert_eq!(server.stats().accepted, 0);
        // Another loop closes a connection: a descriptor is free.
        assert!(limit.try_acquire());
        limit.release();
        let later = now + Duration::from_millis(30);
        for _ in 0..100 {
            server.handle_timeout(poll.registry(), later).unwrap();
            if server.stats().accepted == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(server.backoff.is_none(), "still backed off");
        assert_eq!(server.stats().accepted, 1);
    }

    #[test]
    fn a_failed_retry_waits_for_the_next_close() {
        let poll = mio::Poll::new().unwrap();
        let limit = SharedLimit::new(10);
        let (mut server, _addr) = sharing(&poll, &limit);
        let now = Instant::now();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        server.back_off(now, &emfile);
        limit.release_many(1);
        assert!(server.closed_elsewhere(server.backoff.as_ref().unwrap()));
        // The retry failed again: that close is spent.
        server.back_off(now, &emfile);
        assert!(!server.closed_elsewhere(server.backoff.as_ref().unwrap()));
    }

    #[test]
    fn the_limit_counts_over_servers_and_a_dropped_server_gives_its_slots_back() {
        let poll = mio::Poll::new().unwrap();
        let limit = SharedLimit::new(3);
        let (mut a, addr_a) = sharing(&poll, &limit);
        let (mut b, addr_b) = sharing(&poll, &limit);
        let _a1 = StdStream::connect(addr_a).unwrap();
        accept_one(&mut a, &poll);
        let _b1 = StdStream::connect(addr_b).unwrap();
        accept_one(&mut b, &poll);
        let _b2 = StdStream::connect(addr_b).unwrap();
        accept_one(&mut b, &poll);
        assert_eq!(limit.active(), 3);
        // A fourth, on either server, is over the shared limit.
        let _a2 = StdStream::connect(addr_a).unwrap();
        let before = a.stats().rejected;
        for _ in 0..100 {
            a.handle_timeout(poll.registry(), Instant::now()).unwrap();
            let listener = a.tokens.listener(0);
            a.handle_token(
                poll.registry(),
                listener,
                Default::default(),
                Instant::now(),
            )
            .unwrap();
            if a.stats().rejected > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((a.stats().rejected, a.stats().active), (1, 1));
        drop(b);
        assert_eq!(limit.active(), 1);
    }
}
