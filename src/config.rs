//! Limits and sizes, each with a documented default.

use std::time::Duration;

use crate::connection::Limits;
use crate::token::MAX_CONNECTIONS;

/// Default high-water mark of pending bytes per connection: 64 KiB.
///
/// Pending bytes exist only when the peer's socket would not take our echo
/// (it is not reading). 64 KiB is one full read buffer, so a whole read that
/// the socket refuses fits; the kernel's own send buffer (hundreds of KiB on
/// loopback) sits in front of it. Worst case in user space at 19,000
/// connections is 19,000 × 64 KiB ≈ 1.2 GiB.
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024;

/// Default size of the one read buffer shared by all connections: 64 KiB,
/// enough for a loopback socket's usual receive burst in one `read`.
pub const DEFAULT_READ_BUFFER: usize = 64 * 1024;

/// Default bytes one connection may read per loop turn before others are
/// served: 256 KiB (four full reads). Large enough that a bulk stream moves
/// with few loop turns, small enough that one flooding client delays a turn
/// by only a fraction of a millisecond of copying.
pub const DEFAULT_BUDGET: usize = 256 * 1024;

/// Default accepts per listener per loop turn: 64. Established connections
/// keep being echoed during an accept storm (redis accepts up to 1000 per
/// event, HAProxy 4 by default; 64 keeps accept rate high at small cost).
pub const DEFAULT_ACCEPTS_PER_TURN: usize = 64;

/// Default time that shutdown may spend flushing: 5 seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Descriptors kept free beyond the connection limit (for the listeners,
/// the poll instance, logging and the accept that rejects a connection
/// over the limit), at most half of a small open-files limit.
pub const DESCRIPTOR_RESERVE: u64 = 64;

/// The server's limits and sizes.
///
/// ```
/// use std::time::Duration;
/// let config = echoloop::Config {
///     max_connections: 100,
///     idle_timeout: Some(Duration::from_secs(30)),
///     ..echoloop::Config::default()
/// };
/// assert_eq!(config.max_pending, echoloop::config::DEFAULT_MAX_PENDING);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Connections served at once; one more is accepted and closed at once.
    /// Default: [`default_max_connections`].
    pub max_connections: usize,
    /// Pending bytes per connection at which reading pauses (backpressure);
    /// reading resumes once half of it has drained.
    /// Default: [`DEFAULT_MAX_PENDING`].
    pub max_pending: usize,
    /// Size of the read buffer shared by all connections.
    /// Default: [`DEFAULT_READ_BUFFER`].
    pub read_buffer: usize,
    /// Bytes one connection may read per turn. Default: [`DEFAULT_BUDGET`].
    pub budget: usize,
    /// Accepts per listener per turn. Default: [`DEFAULT_ACCEPTS_PER_TURN`].
    pub accepts_per_turn: usize,
    /// Close connections with no traffic for this long. Default: off.
    pub idle_timeout: Option<Duration>,
    /// How long shutdown may flush pending bytes before closing anyway.
    /// Default: [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: default_max_connections(),
            max_pending: DEFAULT_MAX_PENDING,
            read_buffer: DEFAULT_READ_BUFFER,
            budget: DEFAULT_BUDGET,
            accepts_per_turn: DEFAULT_ACCEPTS_PER_TURN,
            idle_timeout: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl Config {
    /// Checks that every limit is usable; the message names the bad one.
    ///
    /// # Errors
    /// A zero size, budget or accept count, or more connections than tokens.
    ///
    /// ```
    /// let bad = echoloop::Config { max_pending: 0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_pending", self.max_pending),
            ("read_buffer", self.read_buffer),
            ("budget", self.budget),
            ("accepts_per_turn", self.accepts_per_turn),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_connections > MAX_CONNECTIONS {
            return Err(format!("max_connections must be at most {MAX_CONNECTIONS}"));
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_pending: self.max_pending,
            resume_at: self.max_pending / 2,
            budget: self.budget,
        }
    }
}

/// The process's soft open-files limit (`RLIMIT_NOFILE`), if it has one.
pub fn open_files_limit() -> Option<u64> {
    let limit = nofile()?;
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The process's `RLIMIT_NOFILE`, soft and hard.
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit)
}

/// Default connection limit: the open-files limit minus a reserve of
/// [`DESCRIPTOR_RESERVE`] (or half the limit, if that is smaller), so running
/// out of descriptors on accept stays the rare path.
/// With no limit it is 1,000,000; it never exceeds [`MAX_CONNECTIONS`].
pub fn default_max_connections() -> usize {
    let derived = match open_files_limit() {
        Some(limit) => limit - DESCRIPTOR_RESERVE.min(limit / 2),
        None => 1_000_000,
    };
    usize::try_from(derived).map_or(MAX_CONNECTIONS, |n| n.min(MAX_CONNECTIONS))
}

/// Raises the soft open-files limit to the hard limit, so the server can hold
/// as many connections as the system allows, and returns the limit now in
/// force (`None` if unlimited or unknown). Leaves the limit alone on failure.
pub fn raise_open_files_limit() -> Option<u64> {
    if let Some(mut limit) = nofile().filter(|l| l.rlim_cur < l.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads only the struct we pass. On failure the
        // limit stays as it was, which is what we report.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    open_files_limit()
}
