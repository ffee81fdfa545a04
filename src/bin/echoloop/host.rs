//! The single loop: one `Poll` with the signals and one `EchoServer` in it.
//! This is what `echoloop` runs by default, and the loop to read first; each
//! loop of `--threads N` (`loops.rs`) turns the same [`turn`], and binds,
//! carries out signals' commands and times `--stats-interval` with the
//! helpers below it ([`bind_all`], [`Command::apply`], [`StatsTimer`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Poll, Registry, Token};

use echoloop::{listener_group, udp_group, Config, EchoServer, Stats};

use crate::options::Args;
use crate::signals::{Command, Signals};
use crate::sys;

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
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("cannot register signals: {e}"))?;

    // Bind every address before printing any line: a script waiting for
    // `listening on` must never be told about a server that then exits.
    let mut server = EchoServer::new(config.clone(), SERVER_BASE).map_err(|e| e.to_string())?;
    bind_all(&mut [&mut server], args)?;
    server
        .register(poll.registry())
        .map_err(|e| format!("cannot register listeners: {e}"))?;
    print_listening(&server.local_addrs(), &server.udp_addrs())?;
    started(&config);

    let mut events = Events::with_capacity(1024);
    let mut stats_timer = StatsTimer::new(args.stats_interval, Instant::now());
    let mut trimmed_at = 0;
    loop {
        let now = turn(
            &mut poll,
            &mut events,
            &mut server,
            &mut trimmed_at,
            stats_timer.due_in(Instant::now()),
            |server, registry, token, now| {
                if token != SIGNALS {
                    warn!("event for unknown token {}", token.0);
                    return;
                }
                for command in signals.commands() {
                    if let Some(stats) = command.apply(server, registry, now) {
                        info!("stats: {stats}");
                    }
                }
            },
        )?;
        if stats_timer.fired(now) {
            info!("stats: {}", server.stats());
        }
        if server.is_finished() {
            break;
        }
    }
    info!("shutdown complete: {}", server.stats());
    Ok(())
}

/// Binds every `--listen` and then every `--udp` address once for each of
/// `servers` and hands each server one socket per address. With one server
/// these are plain sockets (as `EchoServer::bind` and `bind_udp` make); with
/// several, one `SO_REUSEPORT` group per address, so the kernel spreads
/// connections and datagram sources over the servers' loops.
///
/// # Errors
/// `cannot listen on ADDR: ...` (or `cannot listen on udp ADDR: ...`) for the
/// first address that cannot be bound or adopted, for instance past
/// 16 sockets of a kind.
pub fn bind_all(servers: &mut [&mut EchoServer], args: &Args) -> Result<(), String> {
    for addr in &args.listen {
        let tcp_error = |e: io::Error| format!("cannot listen on {addr}: {e}");
        let group = listener_group(*addr, servers.len()).map_err(tcp_error)?;
        for (server, listener) in servers.iter_mut().zip(group) {
            server.adopt(listener).map_err(tcp_error)?;
        }
    }
    for addr in &args.udp {
        let udp_error = |e: io::Error| format!("cannot listen on udp {addr}: {e}");
        let group = udp_group(*addr, servers.len()).map_err(udp_error)?;
        for (server, socket) in servers.iter_mut().zip(group) {
            server.adopt_udp(socket).map_err(udp_error)?;
        }
    }
    Ok(())
}

/// One turn of a loop: sleep in `poll` no longer than the server allows (or
/// `also`), hand the server the events it owns and `own` the host's, then
/// let the server do its timed work, and give freed memory back to the
/// system when enough has been freed (`trimmed_at`: the server's
/// `freed_buffer_bytes` at the last trim). Returns the time the turn ran at.
///
/// # Errors
/// `poll` failed, or a listener did (a connection's failure stays inside).
pub fn turn(
    poll: &mut Poll,
    events: &mut Events,
    server: &mut EchoServer,
    trimmed_at: &mut u64,
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
    let freed = server.freed_buffer_bytes();
    if freed - *trimmed_at >= sys::TRIM_AFTER {
        *trimmed_at = freed;
        sys::return_free_memory();
    }
    Ok(now)
}

impl Command {
    /// Carries the command out on one server; `Stats` returns its counters
    /// for the caller to log or send on.
    pub fn apply(
        self,
        server: &mut EchoServer,
        registry: &Registry,
        now: Instant,
    ) -> Option<Stats> {
        match self {
            Command::Shutdown => server.begin_shutdown(registry, now),
            Command::CloseAll => server.close_all(registry),
            Command::Stats => return Some(server.stats()),
        }
        None
    }
}

/// The `--stats-interval` timer: when the next stats line is due.
pub struct StatsTimer {
    every: Option<Duration>,
    // None: no interval, or it would overflow `Instant`.
    next: Option<Instant>,
}

impl StatsTimer {
    /// The first line falls `every` after `now`; `None` never fires.
    pub fn new(every: Option<Duration>, now: Instant) -> Self {
        let next = every.and_then(|every| now.checked_add(every));
        StatsTimer { every, next }
    }

    /// How long a loop may sleep before the next line is due.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.next.map(|at| at.saturating_duration_since(now))
    }

    /// Whether a line is due at `now`; if so, the next falls `every` later.
    pub fn fired(&mut self, now: Instant) -> bool {
        match (self.next, self.every) {
            (Some(at), Some(every)) if now >= at => {
                self.next = now.checked_add(every);
                true
            }
            _ => false,
        }
    }
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
