//! The `echoloop` command: parse, log, bind, loop. It is one host of the
//! library's public API, with nothing the API does not offer to any host.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use log::{info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use echoloop::config::{
    self, human_duration, DEFAULT_ACCEPTS_PER_TURN, DEFAULT_BUDGET, DEFAULT_MAX_PENDING,
    DEFAULT_READ_BUFFER, MAX_ACCEPTS_PER_TURN, MAX_BUDGET, MAX_IDLE_TIMEOUT, MAX_MAX_PENDING,
    MAX_READ_BUFFER, MAX_SHUTDOWN_TIMEOUT, MAX_UDP_RATE_LIMIT,
};
use echoloop::token::MAX_CONNECTIONS;
use echoloop::{Config, EchoServer};

/// The host's own token; the echo server's tokens start right after it.
const SIGNALS: Token = Token(0);
const SERVER_BASE: Token = Token(1);

/// A TCP echo server (RFC 862) on one single-threaded mio readiness loop.
///
/// Every byte received on a connection is sent back on that connection, in
/// order. With --udp, each datagram is also sent back to its sender as one
/// datagram (never to source port 0 or the ports of reflecting services like
/// echo, chargen, DNS, NTP). Once every socket is bound it prints `listening
/// on IP:PORT` on stdout, one line per listener, then `listening on udp
/// IP:PORT` per UDP socket. SIGINT or SIGTERM stops accepting and echoes
/// everything clients sent; each connection gets an orderly FIN once the client
/// has sent its own FIN (or been quiet for 250 ms with nothing left to echo),
/// and a reset if bytes would otherwise be lost when --shutdown-timeout runs
/// out; then the server exits 0. A second signal closes every connection at
/// once. SIGUSR1 logs the counters. Logs go to stderr; set RUST_LOG (error,
/// warn, info, debug, trace) to change the level, `info` by default.
///
/// Usage errors exit 2, runtime errors (address in use, ...) exit 1 with one
/// `echoloop: error:` line.
#[derive(Debug, Parser)]
#[command(name = "echoloop", version, about, long_about)]
struct Args {
    /// Address to listen on, as IP:PORT ([::1]:PORT for IPv6). Repeat the
    /// option to listen on several addresses. Port 0 picks a free port.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:7007",
        value_parser = parse_addr
    )]
    listen: Vec<SocketAddr>,

    /// Also serve UDP echo on this address, as IP:PORT ([::1]:PORT for
    /// IPv6). Repeat for several (at most 16). Off by default. Replies that
    /// the socket will not take are dropped, and datagrams from port 0 or
    /// the well-known ports of reflecting services are not answered.
    #[arg(long = "udp", value_name = "ADDR", value_parser = parse_addr)]
    udp: Vec<SocketAddr>,

    /// Most UDP replies per second to one source IP address (a burst of N,
    /// refilled at N per second); datagrams beyond it are not answered and
    /// are counted (udp_rate_limited). 1 to 10,000,000. [default: off]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count_up_to(MAX_UDP_RATE_LIMIT as usize))]
    udp_rate_limit: Option<usize>,

    /// Most connections served at once (1 to 16,777,200); one more is
    /// accepted and closed at once. [default: the open-files limit minus 64,
    /// or half of it when the limit is under 128]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = count_up_to(MAX_CONNECTIONS))]
    max_connections: Option<usize>,

    /// Pending bytes per connection at which reading pauses until the client
    /// reads (backpressure); reading resumes below half of it. Accepts K/M/G
    /// suffixes (KiB, MiB, GiB); at most 1G.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PENDING,
          allow_negative_numbers = true, value_parser = bytes_up_to(MAX_MAX_PENDING))]
    max_pending: usize,

    /// Seconds that shutdown may spend echoing before it resets the
    /// connections still open (also the bound when a client never reads).
    /// Fractions allowed; 0 to 86400.
    #[arg(long, value_name = "SECS", default_value = "5", allow_negative_numbers = true,
          value_parser = secs_up_to(MAX_SHUTDOWN_TIMEOUT, true))]
    shutdown_timeout: Duration,

    /// Close connections with no traffic in either direction for this many
    /// seconds (more than 0, at most 604800 = 7 days). [default: off]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true,
          value_parser = secs_up_to(MAX_IDLE_TIMEOUT, false))]
    idle_timeout: Option<Duration>,

    /// Log the counters every this many seconds (more than 0, at most 86400).
    /// [default: off]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true,
          value_parser = secs_up_to(MAX_STATS_INTERVAL, false))]
    stats_interval: Option<Duration>,

    /// Connections accepted per listener per loop turn, so established
    /// connections keep being served during an accept storm (1 to 1,000,000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ACCEPTS_PER_TURN,
          allow_negative_numbers = true, value_parser = count_up_to(MAX_ACCEPTS_PER_TURN))]
    accepts_per_turn: usize,

    /// Size of the one read buffer all connections share. Accepts K/M/G
    /// suffixes; at most 64M.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_READ_BUFFER,
          allow_negative_numbers = true, value_parser = bytes_up_to(MAX_READ_BUFFER))]
    read_buffer: usize,

    /// Bytes one connection may read per loop turn before the others are
    /// served (fairness). Accepts K/M/G suffixes; at most 1G.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUDGET,
          allow_negative_numbers = true, value_parser = bytes_up_to(MAX_BUDGET))]
    budget: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("echoloop: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // Signals first: from here on SIGINT/SIGTERM only queue a wake-up, so a
    // signal sent the moment a script reads `listening on` is handled as a
    // graceful shutdown instead of killing the process.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .map_err(|e| format!("cannot set up signals: {e}"))?;
    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot register signals: {e}"))?;

    let soft_limit = config::open_files_limit();
    let open_files = config::raise_open_files_limit();
    if open_files != soft_limit {
        info!(
            "raised the open-files limit from {} to {}",
            describe_limit(soft_limit),
            describe_limit(open_files)
        );
    }
    let reachable = config::connections_for(open_files);
    if let Some(wanted) = args.max_connections.filter(|&n| n > reachable) {
        warn!(
            "--max-connections {wanted} cannot be reached: the open-files limit of {} leaves \
             room for fewer (the default here would be {reachable}); accepts will back off \
             while descriptors run out",
            describe_limit(open_files)
        );
    }
    let config = Config {
        max_connections: args.max_connections.unwrap_or(reachable),
        max_pending: args.max_pending,
        budget: args.budget,
        read_buffer: args.read_buffer,
        accepts_per_turn: args.accepts_per_turn,
        idle_timeout: args.idle_timeout,
        shutdown_timeout: args.shutdown_timeout,
        udp_rate_limit: args
            .udp_rate_limit
            .map(|n| u32::try_from(n).unwrap_or(MAX_UDP_RATE_LIMIT)),
    };
    config.validate()?;

    // Bind every address before printing any line: a script waiting for
    // `listening on` must never be told about a server that then exits.
    let mut server = EchoServer::new(config.clone(), SERVER_BASE);
    let mut bound = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let local = server
            .bind(*addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        bound.push(local);
    }
    let mut bound_udp = Vec::with_capacity(args.udp.len());
    for addr in &args.udp {
        let local = server
            .bind_udp(*addr)
            .map_err(|e| format!("cannot listen on udp {addr}: {e}"))?;
        bound_udp.push(local);
    }
    server
        .register(poll.registry())
        .map_err(|e| format!("cannot register listeners: {e}"))?;
    let mut stdout = io::stdout().lock();
    for local in &bound {
        // Scripts and tests wait for this exact line.
        writeln!(stdout, "listening on {local}").map_err(|e| e.to_string())?;
    }
    for local in &bound_udp {
        writeln!(stdout, "listening on udp {local}").map_err(|e| e.to_string())?;
    }
    stdout.flush().map_err(|e| e.to_string())?;
    drop(stdout);

    info!(
        "echoloop {}: max connections {} (open-files limit {}), max pending {} bytes, \
         budget {} bytes, {} accepts per turn, idle timeout {}, shutdown timeout {}",
        env!("CARGO_PKG_VERSION"),
        config.max_connections,
        describe_limit(open_files),
        config.max_pending,
        config.budget,
        config.accepts_per_turn,
        config
            .idle_timeout
            .map_or("off".to_string(), human_duration),
        human_duration(config.shutdown_timeout),
    );

    let mut events = Events::with_capacity(1024);
    let mut next_stats = args
        .stats_interval
        .and_then(|every| Instant::now().checked_add(every));
    let mut shutting_down = false;
    loop {
        let now = Instant::now();
        let stats_due = next_stats.map(|at| at.saturating_duration_since(now));
        let timeout = [server.poll_timeout(now), stats_due]
            .into_iter()
            .flatten()
            .min();
        if let Err(err) = poll.poll(&mut events, timeout) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll failed: {err}"));
        }
        let now = Instant::now();
        for event in events.iter() {
            if event.token() == SIGNALS {
                for signal in signals.pending() {
                    if signal == SIGUSR1 {
                        info!("stats: {}", server.stats());
                    } else if shutting_down {
                        warn!("second signal: closing every connection now");
                        server.close_all(poll.registry());
                    } else {
                        shutting_down = true;
                        server.begin_shutdown(poll.registry(), now);
                    }
                }
            } else if server.owns(event.token()) {
                server
                    .handle_event(poll.registry(), event, now)
                    .map_err(|e| format!("listener failed: {e}"))?;
            } else {
                warn!("event for unknown token {}", event.token().0);
            }
        }
        server
            .handle_timeout(poll.registry(), now)
            .map_err(|e| format!("listener failed: {e}"))?;
        if let (Some(at), Some(every)) = (next_stats, args.stats_interval) {
            if now >= at {
                info!("stats: {}", server.stats());
                next_stats = now.checked_add(every);
            }
        }
        if server.is_finished() {
            break;
        }
    }
    info!("shutdown complete: {}", server.stats());
    Ok(())
}

/// Longest `--stats-interval`: 1 day.
const MAX_STATS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn describe_limit(limit: Option<u64>) -> String {
    limit.map_or("unlimited".to_string(), |n| n.to_string())
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    const EXAMPLES: &str = "examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:0";
    if let Ok(addr) = text.parse() {
        return Ok(addr);
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
