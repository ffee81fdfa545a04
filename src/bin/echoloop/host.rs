//! The single loop: one `Poll` with the signals and one `EchoServer` in it.
//! This is what `echoloop` runs by default, and the loop to read first; each
//! loop of `--threads N` (`loops.rs`) turns the same [`turn`].

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook::consts::SIGUSR1;
use signal_hook_mio::v1_0::Signals;

use echoloop::{Config, EchoServer};

use crate::options::Args;

/// The host's own token; the echo server's tokens start right after it.
const SIGNALS: Token = Token(0);
pub const SERVER_BASE: Token = Token(1);

/// Serves on one loop until shutdown ends; `started` logs the settings once
/// the `listening on` lines are out.
pub fn run(
    config: Config,
    args: &Args,
    mut signals: Signals,
    started: impl FnOnce(&Config),
) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot register signals: {e}"))?;

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
    print_listening(&bound, &bound_udp)?;
    started(&config);

    let mut events = Events::with_capacity(1024);
    let mut next_stats = args
        .stats_interval
        .and_then(|every| Instant::now().checked_add(every));
    let mut shutting_down = false;
    loop {
        let stats_due = next_stats.map(|at| at.saturating_duration_since(Instant::now()));
        let now = turn(
            &mut poll,
            &mut events,
            &mut server,
            stats_due,
            |server, registry, token, now| {
                if token != SIGNALS {
                    warn!("event for unknown token {}", token.0);
                    return;
                }
                for signal in signals.pending() {
                    if signal == SIGUSR1 {
                        info!("stats: {}", server.stats());
                    } else if shutting_down {
                        warn!("second signal: closing every connection now");
                        server.close_all(registry);
                    } else {
                        shutting_down = true;
                        server.begin_shutdown(registry, now);
                    }
                }
            },
        )?;
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

/// One turn of a loop: sleep in `poll` no longer than the server allows (or
/// `also`), hand the server the events it owns and `own` the host's, then
/// let the server do its timed work. Returns the time the turn ran at.
///
/// # Errors
/// `poll` failed, or a listener did (a connection's failure stays inside).
pub fn turn(
    poll: &mut Poll,
    events: &mut Events,
    server: &mut EchoServer,
    also: Option<Duration>,
    mut own: impl FnMut(&mut EchoServer, &Registry, Token, Instant),
) -> Result<Instant, String> {
    let timeout = [server.poll_timeout(Instant::now()), also]
        .into_iter()
        .flatten()
        .min();
    if let Err(err) = poll.poll(events, timeout) {
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(Instant::now());
        }
        return Err(format!("poll failed: {err}"));
    }
    let now = Instant::now();
    // The whole batch in one call; the host's own few events afterwards.
    let foreign = server
        .handle_events(poll.registry(), events, now)
        .map_err(|e| format!("listener failed: {e}"))?;
    if foreign > 0 {
        for event in events.iter() {
            if !server.owns(event.token()) {
                own(server, poll.registry(), event.token(), now);
            }
        }
    }
    server
        .handle_timeout(poll.registry(), now)
        .map_err(|e| format!("listener failed: {e}"))?;
    Ok(now)
}

/// One `listening on IP:PORT` line per TCP address, then one `listening on
/// udp IP:PORT` line per UDP address, on stdout, flushed: scripts and tests
/// wait for these exact lines.
pub fn print_listening(tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    for local in tcp {
        writeln!(stdout, "listening on {local}").map_err(|e| e.to_string())?;
    }
    for local in udp {
        writeln!(stdout, "listening on udp {local}").map_err(|e| e.to_string())?;
    }
    stdout.flush().map_err(|e| e.to_string())
}
