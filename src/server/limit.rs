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
use std::sync::Arc;
use std::time::Duration;

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

    /// How many times the servers consulted this limit: acquires (admitted
    /// or refused), releases and back-off close checks. Constant while
    /// established connections only echo — that is what a test asserts.
    pub fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::Relaxed)
    }
}
