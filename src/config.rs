//! Limits and sizes, each with a documented default and maximum, and the
//! typed error a bad value gives.

use std::fmt;
use std::time::Duration;

use crate::connection::Limits;
use crate::token::MAX_CONNECTIONS;

/// The server's limits and sizes.
///
/// Start from [`Config::default`] and set the fields you need; more fields
/// may come, so build it that way rather than listing every field.
/// [`EchoServer::new`](crate::EchoServer::new) checks it
/// ([`Config::validate`]).
///
/// ```
/// use std::time::Duration;
/// let mut config = echoloop::Config::default();
/// config.max_connections = 100;
/// config.idle_timeout = Some(Duration::from_secs(30));
/// assert!(config.validate().is_ok());
/// assert_eq!(config.max_pending, echoloop::Config::DEFAULT_MAX_PENDING);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Connections served at once; one more is accepted and closed at once.
    /// Default: the open-files limit minus a reserve of 64 descriptors, or
    /// half of it when the limit is under 128 (so 19,936 at 20,000); with no
    /// limit 1,000,000. At most [`Config::MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Pending bytes per connection at which reading pauses (backpressure);
    /// reading resumes once half of it has drained. A connection's pending
    /// bytes, and its pending buffer's capacity, never exceed
    /// max(`max_pending`, `read_buffer`). Default:
    /// [`Config::DEFAULT_MAX_PENDING`].
    pub max_pending: usize,
    /// Size of the read buffer shared by all connections, allocated up
    /// front. Default: [`Config::DEFAULT_READ_BUFFER`].
    pub read_buffer: usize,
    /// Bytes one connection may read per turn before others are served.
    /// Default: [`Config::DEFAULT_BUDGET`].
    pub budget: usize,
    /// Accepts per listener per turn. Default:
    /// [`Config::DEFAULT_ACCEPTS_PER_TURN`].
    pub accepts_per_turn: usize,
    /// Close connections with no traffic for this long. Default: off.
    pub idle_timeout: Option<Duration>,
    /// How long shutdown waits for clients to send FIN and have everything
    /// echoed; connections still open then are reset. Default:
    /// [`Config::DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// UDP replies per second to one source IP address: a bucket of this
    /// many, refilled at this rate, which no other source can refill;
    /// datagrams beyond it are not answered (counted as
    /// `udp_rate_limited`). Bounds what a forged source can aim at one
    /// victim, and starves loops through us. Default: off (a loopback
    /// benchmark reaches tens of thousands per source).
    pub udp_rate_limit: Option<u32>,
    /// Connections at once from one source: one IPv4 address, or one IPv6
    /// /64 prefix (what one host or one customer usually has). One more is
    /// accepted and reset at once and counted as `rejected_per_source`; its
    /// slot comes back when a connection of that source closes. Default:
    /// off. At most [`Config::MAX_CONNECTIONS`].
    pub max_per_source: Option<usize>,
}

impl Config {
    /// Default `max_pending`: 64 KiB. Pending bytes exist only when the
    /// peer is not reading its echo; the kernel's send buffer (hundreds of
    /// KiB on loopback) sits in front of them. Worst case in user space at
    /// 19,000 connections: 19,000 × 64 KiB ≈ 1.2 GiB.
    pub const DEFAULT_MAX_PENDING: usize = 64 * 1024;
    /// Default `read_buffer`: 64 KiB, a loopback socket's usual receive
    /// burst in one `read`.
    pub const DEFAULT_READ_BUFFER: usize = 64 * 1024;
    /// Default `budget`: 256 KiB (four full reads). Large enough that a bulk
    /// stream moves with few loop turns, small enough that one flooding
    /// client delays a turn by only a fraction of a millisecond of copying.
    pub const DEFAULT_BUDGET: usize = 256 * 1024;
    /// Default `accepts_per_turn`: 64. Established connections keep being
    /// echoed during an accept storm (redis accepts up to 1000 per event,
    /// HAProxy 4 by default; 64 keeps the accept rate high at small cost).
    pub const DEFAULT_ACCEPTS_PER_TURN: usize = 64;
    /// Default `shutdown_timeout`: 5 seconds.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    /// Largest `max_connections`: the connections one server's tokens can
    /// name (16,777,200).
    pub const MAX_CONNECTIONS: usize = MAX_CONNECTIONS;
    /// Largest `max_pending`: 1 GiB.
    pub const MAX_MAX_PENDING: usize = 1 << 30;
    /// Largest `read_buffer`: 64 MiB (it is allocated up front).
    pub const MAX_READ_BUFFER: usize = 64 << 20;
    /// Largest `budget`: 1 GiB.
    pub const MAX_BUDGET: usize = 1 << 30;
    /// Largest `accepts_per_turn`: 1,000,000.
    pub const MAX_ACCEPTS_PER_TURN: usize = 1_000_000;
    /// Longest `idle_timeout`: 7 days. Idle times are kept as 32-bit
    /// milliseconds (to keep a connection at 24 bytes), exact up to 24 days.
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Longest `shutdown_timeout`: 1 day.
    pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// Largest `udp_rate_limit`: 10,000,000 replies per second.
    pub const MAX_UDP_RATE_LIMIT: u32 = 10_000_000;

    /// Checks that every limit is usable.
    ///
    /// Work: a few comparisons.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field: a zero size, budget or
    /// accept count, a value above its maximum (`Config::MAX_*`), or a zero
    /// idle timeout or rate.
    ///
    /// ```
    /// let mut bad = echoloop::Config::default();
    /// bad.max_pending = 0;
    /// let err = bad.validate().unwrap_err();
    /// assert_eq!(err.field(), "max_pending");
    /// assert_eq!(err.to_string(), "max_pending must be from 1 to 1073741824");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("max_pending", self.max_pending, Config::MAX_MAX_PENDING),
            ("read_buffer", self.read_buffer, Config::MAX_READ_BUFFER),
            ("budget", self.budget, Config::MAX_BUDGET),
            (
                "accepts_per_turn",
                self.accepts_per_turn,
                Config::MAX_ACCEPTS_PER_TURN,
            ),
        ];
        for (field, value, max) in counts {
            if value == 0 || value > max {
                return Err(ConfigError::new(field, format!("must be from 1 to {max}")));
            }
        }
        if self.max_connections > Config::MAX_CONNECTIONS {
            return Err(ConfigError::new(
                "max_connections",
                format!("must be at most {}", Config::MAX_CONNECTIONS),
            ));
        }
        if self
            .max_per_source
            .is_some_and(|n| n == 0 || n > Config::MAX_CONNECTIONS)
        {
            return Err(ConfigError::new(
                "max_per_source",
                format!("must be from 1 to {}", Config::MAX_CONNECTIONS),
            ));
        }
        if self
            .idle_timeout
            .is_some_and(|t| t.is_zero() || t > Config::MAX_IDLE_TIMEOUT)
        {
            return Err(ConfigError::new(
                "idle_timeout",
                format!(
                    "must be more than 0 and at most {} s",
                    Config::MAX_IDLE_TIMEOUT.as_secs()
                ),
            ));
        }
        if self.shutdown_timeout > Config::MAX_SHUTDOWN_TIMEOUT {
            return Err(ConfigError::new(
                "shutdown_timeout",
                format!(
                    "must be at most {} s",
                    Config::MAX_SHUTDOWN_TIMEOUT.as_secs()
                ),
            ));
        }
        if self
            .udp_rate_limit
            .is_some_and(|n| n == 0 || n > Config::MAX_UDP_RATE_LIMIT)
        {
            return Err(ConfigError::new(
                "udp_rate_limit",
                format!("must be from 1 to {}", Config::MAX_UDP_RATE_LIMIT),
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

impl Default for Config {
    /// The defaults of each field's documentation. Reads the process's
    /// open-files limit (one `getrlimit`) for `max_connections`.
    fn default() -> Config {
        Config {
            max_connections: connections_for(crate::sys::open_files_limit()),
            max_pending: Config::DEFAULT_MAX_PENDING,
            read_buffer: Config::DEFAULT_READ_BUFFER,
            budget: Config::DEFAULT_BUDGET,
            accepts_per_turn: Config::DEFAULT_ACCEPTS_PER_TURN,
            idle_timeout: None,
            shutdown_timeout: Config::DEFAULT_SHUTDOWN_TIMEOUT,
            udp_rate_limit: None,
            max_per_source: None,
        }
    }
}

/// Descriptors kept free beyond the default connection limit (for the
/// listeners, the poll instance, logging and the accept that rejects a
/// connection over the limit), at most half of a small open-files limit.
const DESCRIPTOR_RESERVE: u64 = 64;

/// The default connection limit for an open-files limit (`None`: none).
fn connections_for(open_files: Option<u64>) -> usize {
    let derived = match open_files {
        Some(limit) => limit - DESCRIPTOR_RESERVE.min(limit / 2),
        None => 1_000_000,
    };
    usize::try_from(derived).map_or(MAX_CONNECTIONS, |n| n.min(MAX_CONNECTIONS))
}

/// A [`Config`] value that cannot be used, from [`Config::validate`] or
/// [`EchoServer::new`](crate::EchoServer::new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: String) -> ConfigError {
        ConfigError { field, problem }
    }

    /// The field at fault, as named in [`Config`] (or `"base"` for a base
    /// token too close to `usize::MAX`).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_a_reserve() {
        assert_eq!(connections_for(Some(20_000)), 19_936);
        assert_eq!(connections_for(Some(64)), 32);
        assert_eq!(connections_for(None), 1_000_000);
        assert_eq!(connections_for(Some(u64::MAX)), MAX_CONNECTIONS);
    }

    #[test]
    fn every_bad_value_names_its_field() {
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 10] = [
            ("max_pending", |c| c.max_pending = 0),
            ("read_buffer", |c| {
                c.read_buffer = Config::MAX_READ_BUFFER + 1
            }),
            ("budget", |c| c.budget = 0),
            ("accepts_per_turn", |c| c.accepts_per_turn = 0),
            ("max_connections", |c| c.max_connections = usize::MAX),
            ("idle_timeout", |c| c.idle_timeout = Some(Duration::ZERO)),
            ("idle_timeout", |c| {
                c.idle_timeout = Some(Duration::from_secs(u64::MAX))
            }),
            ("shutdown_timeout", |c| {
                c.shutdown_timeout = Duration::from_secs(86_401)
            }),
            ("udp_rate_limit", |c| c.udp_rate_limit = Some(0)),
            ("max_per_source", |c| c.max_per_source = Some(0)),
        ];
        for (field, spoil) in cases {
            let mut config = Config::default();
            spoil(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
        assert!(Config::default().validate().is_ok());
    }
}
