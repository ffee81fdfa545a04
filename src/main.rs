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
    self, DEFAULT_ACCEPTS_PER_TURN, DEFAULT_BUDGET, DEFAULT_MAX_PENDING, DEFAULT_READ_BUFFER,
};
use echoloop::{Config, EchoServer};

/// The host's own token; the echo server's tokens start right after it.
const SIGNALS: Token = Token(0);
const SERVER_BASE: Token = Token(1);

/// A TCP echo server (RFC 862) on one single-threaded mio readiness loop.
///
/// Every byte received on a connection is sent back on that connection, in
/// order. Prints `listening on IP:PORT` on stdout for each listener once it is
/// bound. SIGINT or SIGTERM stops accepting, echoes what clients already sent,
/// flushes for up to --shutdown-timeout, closes each connection with a FIN and
/// exits 0; a second signal closes at once. SIGUSR1 logs the counters. Logs
/// go to stderr; set RUST_LOG (error, warn, info, debug, trace) to change the
/// level, `info` by default.
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

    /// Most connections served at once; one more is accepted and closed at
    /// once. [default: the open-files limit minus a reserve of 64]
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    max_connections: Option<usize>,

    /// Pending bytes per connection at which reading pauses until the client
    /// reads (backpressure); reading resumes below half of it. Accepts K/M
    /// suffixes (KiB, MiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PENDING, value_parser = parse_bytes)]
    max_pending: usize,

    /// Seconds that shutdown may spend flushing before it closes connections
    /// anyway (also the bound when a client never reads). Fractions allowed.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    shutdown_timeout: Duration,

    /// Close connections with no traffic in either direction for this many
    /// seconds. [default: off]
    #[arg(long, value_name = "SECS", value_parser = parse_secs_positive)]
    idle_timeout: Option<Duration>,

    /// Log the counters every this many seconds. [default: off]
    #[arg(long, value_name = "SECS", value_parser = parse_secs_positive)]
    stats_interval: Option<Duration>,

    /// Connections accepted per listener per loop turn, so established
    /// connections keep being served during an accept storm.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ACCEPTS_PER_TURN, value_parser = parse_positive)]
    accepts_per_turn: usize,

    /// Size of the one read buffer all connections share. Accepts K/M
    /// suffixes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_READ_BUFFER, value_parser = parse_bytes)]
    read_buffer: usize,

    /// Bytes one connection may read per loop turn before the others are
    /// served (fairness). Accepts K/M suffixes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUDGET, value_parser = parse_bytes)]
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
    let open_files = config::raise_open_files_limit();
    let config = Config {
        max_connections: args
            .max_connections
            .unwrap_or_else(config::default_max_connections),
        max_pending: args.max_pending,
        budget: args.budget,
        read_buffer: args.read_buffer,
        accepts_per_turn: args.accepts_per_turn,
        idle_timeout: args.idle_timeout,
        shutdown_timeout: args.shutdown_timeout,
    };
    config.validate()?;

    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    let mut server = EchoServer::new(config.clone(), SERVER_BASE);
    let mut stdout = io::stdout().lock();
    for addr in &args.listen {
        let local = server
            .bind(*addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // Scripts and tests wait for this exact line.
        writeln!(stdout, "listening on {local}").map_err(|e| e.to_string())?;
    }
    stdout.flush().map_err(|e| e.to_string())?;
    drop(stdout);
    server
        .register(poll.registry())
        .map_err(|e| format!("cannot register listeners: {e}"))?;
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .map_err(|e| format!("cannot set up signals: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot register signals: {e}"))?;

    info!(
        "echoloop {}: max connections {} (open-files limit {}), max pending {} bytes, \
         budget {} bytes, {} accepts per turn, idle timeout {}, shutdown timeout {:?}",
        env!("CARGO_PKG_VERSION"),
        config.max_connections,
        open_files.map_or("unlimited".to_string(), |n| n.to_string()),
        config.max_pending,
        config.budget,
        config.accepts_per_turn,
        config
            .idle_timeout
            .map_or("off".to_string(), |t| format!("{t:?}")),
        config.shutdown_timeout,
    );

    let mut events = Events::with_capacity(1024);
    let mut next_stats = args.stats_interval.map(|every| Instant::now() + every);
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
                next_stats = Some(now + every);
            }
        }
        if server.is_finished() {
            break;
        }
    }
    info!("shutdown complete: {}", server.stats());
    Ok(())
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("'{text}' is not IP:PORT (examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:0)")
    })
}

fn parse_count(text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not a whole number"))
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match parse_count(text)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

fn parse_bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let scale: usize = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "'{text}' is not a byte count (examples: 65536, 64K, 1M)"
            ))
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count (examples: 65536, 64K, 1M)"))?;
    match n.checked_mul(scale) {
        Some(0) => Err("must be at least 1 byte".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is too large")),
    }
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{text}' is not a usable number of seconds"))
}

fn parse_secs_positive(text: &str) -> Result<Duration, String> {
    match parse_secs(text)? {
        Duration::ZERO => Err("must be more than 0 seconds".to_string()),
        d => Ok(d),
    }
}
