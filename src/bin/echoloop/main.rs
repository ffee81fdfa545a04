//! The `echoloop` command: parse, log, bind, loop. It is one host of the
//! library's public API, with nothing the API does not offer to any host.
//!
//! Read it in this order:
//!
//! * `main.rs` (this file): start-up — the options, the logger, the signals,
//!   the open-files limit and the [`Config`]; then one loop or several.
//! * `host.rs`: **the single loop**, what runs by default (`--threads 1`):
//!   one `Poll` holding the signals and one `EchoServer`.
//! * `loops.rs`: `--threads N`: N copies of that loop on N threads, each
//!   with its own `Poll`, `Waker`, `EchoServer` and listeners, and the
//!   supervisor on the main thread that handles signals and counters for
//!   all of them.
//! * `options.rs`: the command line and its parsers.
//! * `signals.rs`: SIGINT, SIGTERM and SIGUSR1, counted one by one.
//! * `activation.rs`: sockets passed by a supervisor (`LISTEN_FDS`).
//! * `notify.rs`: telling the supervisor we are ready, how we are, that we
//!   stop, and that the loops turn (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
//! * `metrics/`: `--metrics`, the counters for Prometheus, a guest in the
//!   host's `Poll` beside the signals.
//! * `sys.rs`: the process-wide OS calls the library leaves to its host
//!   (the open-files limit, giving freed memory back, taking inherited
//!   descriptors).
#![deny(unsafe_code)]

mod activation;
mod host;
mod loops;
mod metrics;
mod notify;
mod options;
mod signals;
#[allow(unsafe_code)]
mod sys;
#[path = "../../text.rs"]
mod text;

use std::process::ExitCode;
use std::time::Instant;

use log::{info, warn};

use echoloop::Config;

use activation::Inherited;
use notify::Notifier;
use options::Args;
use signals::Signals;
use text::{human_duration, plural};

fn main() -> ExitCode {
    let args = Args::from_command_line();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("echoloop: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> Result<(), String> {
    // The supervisor's descriptors before the process opens any of its own
    // (their numbers are fixed), and its variables before any thread starts
    // (both remove theirs from the environment).
    let inherited = Inherited::from_env()?;
    let notifier = Notifier::from_env(Instant::now());
    if !inherited.is_empty() && args.listen_is_default {
        args.listen.clear();
    }
    // Signals next: from here on SIGINT/SIGTERM only queue a wake-up, so a
    // signal sent the moment a script reads `listening on` is handled as a
    // graceful shutdown instead of killing the process.
    let signals = Signals::new().map_err(|e| format!("cannot set up signals: {e}"))?;
    let (threads, how) = args.threads.resolve();

    let soft_limit = sys::open_files_limit();
    let open_files = sys::raise_open_files_limit();
    if open_files != soft_limit {
        info!(
            "raised the open-files limit from {} to {}",
            describe_limit(soft_limit),
            describe_limit(open_files)
        );
    }
    // Each loop beyond the first holds a poll instance, a waker, one socket
    // per TCP and UDP address and a duplicate of each inherited socket; the
    // supervisor a poll instance and a waker; --metrics a listener and its
    // scrapers.
    let extra_descriptors = match threads {
        1 => 0,
        n => (n - 1) * (2 + args.listen.len() + args.udp.len() + inherited.len()) + 2,
    } + args.metrics.map_or(0, |_| 1 + metrics::MAX_SCRAPERS);
    // The library's default reads the limit just raised.
    let reachable = Config::default()
        .max_connections
        .saturating_sub(extra_descriptors);
    if let Some(wanted) = args.max_connections.filter(|&n| n > reachable) {
        warn!(
            "--max-connections {wanted} cannot be reached: the open-files limit of {} leaves \
             room for fewer (the default here would be {reachable}); accepts will back off \
             while descriptors run out",
            describe_limit(open_files)
        );
    }
    let mut config = Config::default();
    config.max_connections = args.max_connections.unwrap_or(reachable).max(1);
    config.max_pending = args.max_pending;
    config.budget = args.budget;
    config.read_buffer = args.read_buffer;
    config.accepts_per_turn = args.accepts_per_turn;
    config.idle_timeout = args.idle_timeout;
    config.shutdown_timeout = args.shutdown_timeout;
    config.max_per_source = args.max_per_source;
    config.udp_rate_limit = args
        .udp_rate_limit
        .map(|n| u32::try_from(n).unwrap_or(Config::MAX_UDP_RATE_LIMIT));
    config.validate().map_err(|e| e.to_string())?;
    // Stated whenever there is more than one loop or `auto` chose the count.
    let loops = (threads > 1 || args.threads == options::Threads::Auto)
        .then(|| format!("{} ({how}), ", plural(threads, "loop")));
    let started = |config: &Config| {
        info!(
            "echoloop {}: {}max connections {} (open-files limit {}), max pending {} bytes, \
             budget {} bytes, {} accepts per turn, idle timeout {}, shutdown timeout {}",
            env!("CARGO_PKG_VERSION"),
            loops.as_deref().unwrap_or(""),
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
    };
    let outside = host::Outside {
        signals,
        inherited,
        notifier,
    };
    if threads == 1 {
        host::run(config, &args, outside, started)
    } else {
        loops::run(config, &args, threads, outside, started)
    }
}

fn describe_limit(limit: Option<u64>) -> String {
    limit.map_or("unlimited".to_string(), |n| n.to_string())
}
