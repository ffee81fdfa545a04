//! The command line: every option, its default and maximum, and the parsers
//! that refuse bad values with a message that says what is wrong (clap
//! turns those into exit status 2).

use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use echoloop::{Config, MAX_GROUP};

use crate::text::plural;

/// Where the kernel spreads a `SO_REUSEPORT` group's connections over its
/// sockets, so that more than one loop is worth running.
const REUSEPORT_BALANCES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// A TCP echo server (RFC 862) on single-threaded mio readiness loops.
///
/// Every byte received on a connection is sent back on that connection, in
/// order. With --udp, each datagram is also sent back to its sender as one
/// datagram (never to source port 0 or the ports of reflecting services like
/// echo, chargen, DNS, NTP). Once every socket is bound it prints `listening
/// on IP:PORT` on stdout, one line per listener, then `listening on udp
/// IP:PORT` per UDP socket. SIGINT or SIGTERM stops accepting and keeps
/// echoing; a connection gets our orderly FIN only after the client's own
/// FIN and the echo of everything before it, so a FIN always means "every
/// byte was echoed". Connections still open when --shutdown-timeout runs
/// out are reset (an idle client that never closes holds shutdown until
/// then); then the server exits 0. A second signal resets every connection
/// at once. SIGUSR1 logs the counters. Logs go to stderr; set RUST_LOG
/// (error, warn, info, debug, trace) to change the level, `info` by default.
///
/// With --threads N it runs N such loops, one per thread, each with its own
/// listening socket per address (SO_REUSEPORT spreads new connections over
/// them); they share nothing per message. Signals and counters are handled
/// once for the process.
///
/// Under a supervisor: started with systemd's socket activation (LISTEN_PID
/// our pid, LISTEN_FDS, optional LISTEN_FDNAMES) it serves the sockets passed
/// from fd 3 on, listening TCP sockets and bound UDP sockets over IPv4 or
/// IPv6 (anything else is an error), with the same `listening on` lines.
/// They replace the default --listen address; --listen and --udp given on
/// the command line are bound beside them. With --threads N every loop
/// serves each inherited socket (the kernel wakes them all; the first to
/// accept serves). With NOTIFY_SOCKET set (a path, or @name for the abstract
/// namespace) it sends READY=1 once serving, STATUS= with each stats line,
/// STOPPING=1 when shutdown begins and, with WATCHDOG_USEC, WATCHDOG=1 every
/// half of it from the loops themselves. See docs/operations.md.
///
/// Usage errors exit 2, runtime errors (address in use, ...) exit 1 with one
/// `echoloop: error:` line.
#[derive(Debug, Parser)]
#[command(name = "echoloop", version, about, long_about)]
pub struct Args {
    /// Address to listen on, as IP:PORT ([::1]:PORT for IPv6). Repeat the
    /// option to listen on several addresses. Port 0 picks a free port.
    /// Sockets passed by a supervisor replace the default.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:7007",
        value_parser = parse_addr
    )]
    pub listen: Vec<SocketAddr>,

    /// Also serve UDP echo on this address, as IP:PORT ([::1]:PORT for
    /// IPv6). Repeat for several (at most 16). Off by default. Replies that
    /// the socket will not take are dropped, and datagrams from port 0 or
    /// the well-known ports of reflecting services are not answered.
    #[arg(long = "udp", value_name = "ADDR", value_parser = parse_addr)]
    pub udp: Vec<SocketAddr>,

    /// Most UDP replies per second to one source IP address (a burst of N,
    /// refilled at N per second), whatever other sources send and over all
    /// loops; datagrams beyond it are not answered and are counted
    /// (udp_rate_limited). 1 to 10,000,000. [default: off]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count_up_to(Config::MAX_UDP_RATE_LIMIT as usize))]
    pub udp_rate_limit: Option<usize>,

    /// Most connections served at once (1 to 16,777,200); one more is
    /// accepted and reset at once. [default: the open-files limit minus 64,
    /// or half of it when the limit is under 128]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count_up_to(Config::MAX_CONNECTIONS))]
    pub max_connections: Option<usize>,

    /// Most connections at once from one source: one IPv4 address, or one
    /// IPv6 /64 prefix. One more is accepted and reset at once and counted
    /// (rejected_per_source); exact over all loops. 1 to 16,777,200.
    /// [default: off]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count_up_to(Config::MAX_CONNECTIONS))]
    pub max_per_source: Option<usize>,

    /// Pending bytes per connection at which reading pauses until the client
    /// reads (backpressure); reading resumes below half of it. Accepts K/M/G
    /// suffixes (KiB, MiB, GiB); at most 1G.
    #[arg(long, value_name = "BYTES", default_value_t = Config::DEFAULT_MAX_PENDING,
          allow_negative_numbers = true, value_parser = bytes_up_to(Config::MAX_MAX_PENDING))]
    pub max_pending: usize,

    /// Seconds that shutdown may spend echoing before it resets the
    /// connections still open: clients that have not sent FIN, or never
    /// read their echo. 0 resets them at once. Fractions allowed; 0 to 86400.
    #[arg(long, value_name = "SECS", default_value = "5", allow_negative_numbers = true,
          value_parser = secs_up_to(Config::MAX_SHUTDOWN_TIMEOUT, true))]
    pub shutdown_timeout: Duration,

    /// Close connections with no traffic in either direction for this many
    /// seconds (more than 0, at most 604800 = 7 days). [default: off]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true,
          value_parser = secs_up_to(Config::MAX_IDLE_TIMEOUT, false))]
    pub idle_timeout: Option<Duration>,

    /// Log the counters every this many seconds (more than 0, at most 86400).
    /// [default: off]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true,
          value_parser = secs_up_to(MAX_STATS_INTERVAL, false))]
    pub stats_interval: Option<Duration>,

    /// Serve the counters for Prometheus at http://ADDR/metrics (text format
    /// 0.0.4), as IP:PORT; port 0 picks a free port. Served by the loop
    /// itself, no thread of its own (with --threads N by the supervisor
    /// thread, which sums every loop's counters). Logs `metrics on
    /// http://IP:PORT/metrics` once bound. At most 4 scrapers at once, 5
    /// seconds each. [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,

    /// Connections accepted per listener per loop turn, so established
    /// connections keep being served during an accept storm (1 to 1,000,000).
    #[arg(long, value_name = "N", default_value_t = Config::DEFAULT_ACCEPTS_PER_TURN,
          allow_negative_numbers = true, value_parser = count_up_to(Config::MAX_ACCEPTS_PER_TURN))]
    pub accepts_per_turn: usize,

    /// Size of the one read buffer all connections share. Accepts K/M/G
    /// suffixes; at most 64M.
    #[arg(long, value_name = "BYTES", default_value_t = Config::DEFAULT_READ_BUFFER,
          allow_negative_numbers = true, value_parser = bytes_up_to(Config::MAX_READ_BUFFER))]
    pub read_buffer: usize,

    /// Bytes one connection may read per loop turn before the others are
    /// served (fairness). Accepts K/M/G suffixes; at most 1G.
    #[arg(long, value_name = "BYTES", default_value_t = Config::DEFAULT_BUDGET,
          allow_negative_numbers = true, value_parser = bytes_up_to(Config::MAX_BUDGET))]
    pub budget: usize,

    /// Readiness loops (threads) to run, each with its own listening socket
    /// per address; the kernel spreads new connections over them. 1 to
    /// 1024, or 0 or `auto` for one per available core. Above 1 needs Linux.
    #[arg(long, value_name = "N", default_value = "1", allow_negative_numbers = true,
          value_parser = parse_threads)]
    pub threads: Threads,

    /// True when --listen was not given: its default is in `listen`.
    #[arg(skip)]
    pub listen_is_default: bool,
}

impl Args {
    /// Parses the command line (exiting with clap's message and status on a
    /// usage error), noting whether --listen was given.
    pub fn from_command_line() -> Args {
        let matches = Args::command().get_matches();
        let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        args.listen_is_default = matches.value_source("listen") == Some(ValueSource::DefaultValue);
        args
    }
}

/// `--threads`: a number of loops, or one per available core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Exactly this many loops.
    Count(usize),
    /// `0` or `auto`: `std::thread::available_parallelism`.
    Auto,
}

/// Most `--threads`: 1024 loops (each costs a thread, a poll instance, a
/// waker and a socket per address).
pub const MAX_THREADS: usize = MAX_GROUP;

impl Threads {
    /// The number of loops to run and how it was chosen, for the start-up
    /// log ("--threads 2", "--threads auto: 2 available cores").
    pub fn resolve(self) -> (usize, String) {
        match self {
            Threads::Count(n) => (n, format!("--threads {n}")),
            Threads::Auto => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if !REUSEPORT_BALANCES {
                    return (
                        1,
                        format!("--threads auto: {cores} cores, 1 loop off Linux"),
                    );
                }
                let n = cores.min(MAX_THREADS);
                (
                    n,
                    format!("--threads auto: {}", plural(cores, "available core")),
                )
            }
        }
    }
}

/// `--threads`: 1 to [`MAX_THREADS`], or `0`/`auto`; above 1 only where
/// SO_REUSEPORT spreads connections (Linux).
fn parse_threads(text: &str) -> Result<Threads, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Threads::Auto);
    }
    let range =
        format!("give a whole number from 1 to {MAX_THREADS}, or 0 or auto for one per core");
    let n: usize = text.parse().map_err(|_| {
        if text.starts_with('-') {
            format!("'{text}' is negative: {range}")
        } else {
            format!("'{text}' is not a number of threads: {range}")
        }
    })?;
    match n {
        0 => Ok(Threads::Auto),
        n if n > MAX_THREADS => Err(format!("{n} is out of range: {range}")),
        n if n > 1 && !REUSEPORT_BALANCES => Err(format!(
            "{n} loops need Linux: this platform's SO_REUSEPORT does not spread \
             connections over listeners (give 1)"
        )),
        n => Ok(Threads::Count(n)),
    }
}

/// Longest `--stats-interval`: 1 day.
pub const MAX_STATS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    const EXAMPLES: &str = "examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:0";
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // An IPv6 address without brackets: its colons hide the port ("::1:80"
    // is itself a valid IPv6 address), so say how to write it.
    if !text.starts_with('[') && text.matches(':').count() > 1 {
        let example = match text.rsplit_once(':') {
            Some((host, port))
                if host.parse::<std::net::Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() =>
            {
                format!("[{host}]:{port}")
            }
            _ => "[::1]:7007".to_string(),
        };
        return Err(format!(
            "'{text}' is not IP:PORT: write IPv6 addresses in brackets, as {example}"
        ));
    }
    // Say what is wrong when only the port is: "127.0.0.1:99999".
    if let Some((host, port)) = text.rsplit_once(':') {
        let host_ok = host.parse::<std::net::IpAddr>().is_ok()
            || host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
        if host_ok && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("port {port} is out of range (0 to 65535)"));
        }
    }
    Err(format!("'{text}' is not IP:PORT ({EXAMPLES})"))
}

/// A whole number from 1 to `max`.
fn count_up_to(max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text| {
        let n: usize = text.trim().parse().map_err(|_| {
            if text.trim().starts_with('-') {
                format!("'{text}' is negative: give a whole number from 1 to {max}")
            } else {
                format!("'{text}' is not a whole number from 1 to {max}")
            }
        })?;
        if n == 0 || n > max {
            return Err(format!(
                "{n} is out of range: give a whole number from 1 to {max}"
            ));
        }
        Ok(n)
    }
}

/// A byte count with an optional K, M or G suffix (KiB, MiB, GiB), from 1 to `max`.
fn bytes_up_to(max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |text| {
        let bad = || format!("'{text}' is not a byte count (examples: 65536, 64K, 1M)");
        let lower = text.trim().to_ascii_lowercase();
        let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => lower.split_at(at),
            None => (lower.as_str(), ""),
        };
        let scale: usize = match unit {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        let limit = format!("at most {} ({max} bytes)", show_bytes(max));
        let n: usize = digits.parse().map_err(|_| {
            if digits.is_empty() {
                bad()
            } else {
                // Only digits, so the number is too large for usize.
                format!("'{text}' is too large: give {limit}")
            }
        })?;
        match n.checked_mul(scale) {
            Some(0) => Err("must be at least 1 byte".to_string()),
            Some(bytes) if bytes <= max => Ok(bytes),
            _ => Err(format!("'{text}' is too large: give {limit}")),
        }
    }
}

/// "64M", "1G", "65536": a size as it may be typed back.
fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// Seconds (fractions allowed) from 0, or from just above 0 when
/// `zero_ok` is false, up to `max`.
fn secs_up_to(max: Duration, zero_ok: bool) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| {
        let range = if zero_ok {
            format!("0 to {} seconds", max.as_secs())
        } else {
            format!("more than 0 and at most {} seconds", max.as_secs())
        };
        let secs: f64 = text
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| !s.is_nan())
            .ok_or_else(|| format!("'{text}' is not a number of seconds: give {range}"))?;
        if secs < 0.0 {
            return Err(format!("'{text}' is negative: give {range}"));
        }
        if secs > max.as_secs_f64() || (secs == 0.0 && !zero_ok) {
            return Err(format!("'{text}' is out of range: give {range}"));
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{text}' is out of range: give {range}"))
    }
}
