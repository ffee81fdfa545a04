//! Limits and sizes, each with a documented default.

use std::time::Duration;

use crate::connection::Limits;
use crate::token::MAX_CONNECTIONS;

/// Default high-water mark of pending bytes per connection: 64 KiB.
///
/// Pending bytes exist only when the peer's socket would not take our echo
/// (it is not reading). A connection reads at most one read buffer while
/// nothing is pending and only the room under the cap once something is, so
/// its pending bytes, and its pending buffer's capacity, never exceed
/// max(`max_pending`, `read_buffer`): 64 KiB by default, so a whole read
/// that the socket refuses fits. The kernel's own send buffer (hundreds of
/// KiB on loopback) sits in front of it. Worst case in user space at 19,000
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

/// Largest `max_pending`: 1 GiB.
pub const MAX_MAX_PENDING: usize = 1 << 30;
/// Largest `read_buffer`: 64 MiB (it is allocated up front).
pub const MAX_READ_BUFFER: usize = 64 << 20;
/// Largest `budget`: 1 GiB.
pub const MAX_BUDGET: usize = 1 << 30;
/// Largest `accepts_per_turn`: 1,000,000.
pub const MAX_ACCEPTS_PER_TURN: usize = 1_000_000;
/// Longest `idle_timeout`: 7 days. Idle times are kept as 32-bit
/// milliseconds (to keep a connection at 24 bytes), which stay exact up to
/// 24 days.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `shutdown_timeout`: 1 day.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Largest `udp_rate_limit`: 10,000,000 replies per second.
pub const MAX_UDP_RATE_LIMIT: u32 = 10_000_000;

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
    /// How long shutdown waits for clients to send FIN and have everything
    /// echoed; connections still open then are reset.
    /// Default: [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// UDP replies per second to one source IP address: a bucket of this
    /// many, refilled at this rate, which no other source can refill;
    /// datagrams beyond it are not answered (counted as
    /// `udp_rate_limited`). Bounds what a forged source can
    /// aim at one victim, and starves loops through us. Default: off (a
    /// loopback benchmark reaches tens of thousands per source).
    pub udp_rate_limit: Option<u32>,
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
            udp_rate_limit: None,
        }
    }
}

impl Config {
    /// Checks that every limit is usable; the message names the bad one.
    ///
    /// # Errors
    /// A zero size, budget or accept count, a value above its maximum
    /// (`MAX_*` in this module), or more connections than tokens.
    ///
    /// ```
    /// let bad = echoloop::Config { max_pending: 0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("max_pending", self.max_pending, MAX_MAX_PENDING),
            ("read_buffer", self.read_buffer, MAX_READ_BUFFER),
            ("budget", self.budget, MAX_BUDGET),
            (
                "accepts_per_turn",
                self.accepts_per_turn,
                MAX_ACCEPTS_PER_TURN,
            ),
        ];
        for (name, value, max) in sizes {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
            if value > max {
                return Err(format!("{name} must be at most {max}"));
            }
        }
        if self
            .idle_timeout
            .is_some_and(|t| t.is_zero() || t > MAX_IDLE_TIMEOUT)
        {
            return Err(format!(
                "idle_timeout must be more than 0 and at most {}",
                human_duration(MAX_IDLE_TIMEOUT)
            ));
        }
        if self.shutdown_timeout > MAX_SHUTDOWN_TIMEOUT {
            return Err(format!(
                "shutdown_timeout must be at most {}",
                human_duration(MAX_SHUTDOWN_TIMEOUT)
            ));
        }
        if self.max_connections > MAX_CONNECTIONS {
            return Err(format!("max_connections must be at most {MAX_CONNECTIONS}"));
        }
        if self
            .udp_rate_limit
            .is_some_and(|n| n == 0 || n > MAX_UDP_RATE_LIMIT)
        {
            return Err(format!(
                "udp_rate_limit must be from 1 to {MAX_UDP_RATE_LIMIT}"
            ));
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
/// [`DESCRIPTOR_RESERVE`] (64), or half the limit when the limit is under
/// 128 (so 19,936 at 20,000, and 32 at 64), so running out of descriptors on
/// accept stays the rare path. With no limit it is 1,000,000; it never
/// exceeds [`MAX_CONNECTIONS`].
pub fn default_max_connections() -> usize {
    connections_for(open_files_limit())
}

/// The connection limit [`default_max_connections`] derives from an
/// open-files limit (`None`: unlimited).
///
/// ```
/// use echoloop::config::connections_for;
/// assert_eq!(connections_for(Some(20_000)), 19_936);
/// assert_eq!(connections_for(Some(64)), 32);
/// ```
pub fn connections_for(open_files: Option<u64>) -> usize {
    let derived = match open_files {
        Some(limit) => limit - DESCRIPTOR_RESERVE.min(limit / 2),
        None => 1_000_000,
    };
    usize::try_from(derived).map_or(MAX_CONNECTIONS, |n| n.min(MAX_CONNECTIONS))
}

/// "1 connection", "2 connections": a count with its noun.
///
/// ```
/// assert_eq!(echoloop::config::plural(1, "connection"), "1 connection");
/// assert_eq!(echoloop::config::plural(0, "connection"), "0 connections");
/// ```
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration as people write it, for logs and messages.
///
/// ```
/// use std::time::Duration;
/// use echoloop::config::human_duration;
/// assert_eq!(human_duration(Duration::ZERO), "0 s");
/// assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
/// assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
/// assert_eq!(human_duration(Duration::from_secs(86400)), "86400 s");
/// ```
pub fn human_duration(d: Duration) -> String {
    if d.is_zero() {
        "0 s".to_string()
    } else if d < Duration::from_secs(1) && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
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
