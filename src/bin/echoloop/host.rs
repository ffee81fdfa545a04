//! The single loop: one `Poll` with the signals, one `EchoServer` and, with
//! `--metrics`, the metrics endpoint in it. This is what `echoloop` runs by
//! default, and the loop to read first; each loop of `--threads N`
//! (`loops.rs`) turns the same [`turn`], and binds, carries out signals'
//! commands and times `--stats-interval` with the helpers below it
//! ([`bind_all`], [`Command::apply`], [`StatsTimer`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Poll, Registry, Token};

use echoloop::{listener_group, udp_group, Config, EchoServer, Stats, TOKEN_SPAN};

use crate::activation::Inherited;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::options::Args;
use crate::signals::{Command, Signals};
use crate::sys;

/// The host's own token; the echo server's tokens start right after it,
/// and the metrics endpoint's right after the server's range.
const SIGNALS: Token = Token(0);
pub const SERVER_BASE: Token = Token(1);
const METRICS_BASE: Token = Token(SERVER_BASE.0 + TOKEN_SPAN);

/// What `main` set up for the process before any loop: the signals, and
/// what a supervisor gave (its sockets, its notification socket).
pub struct Outside {
    pub signals: Signals,
    pub inherited: Inherited,
    pub notifier: Notifier,
}

/// Serves on one loop until shutdown ends; `started` logs the settings once
/// the `listening on` lines are out.
pub fn run(
    config: Config,
    args: &Args,
    outside: Outside,
    started: impl FnOnce(&Config),
) -> Result<(), String> {
    let Outside {
        mut signals,
        inherited,
        mut notifier,
    } = outside;
    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("cannot register signals: {e}"))?;

    // Bind every address before printing any line: a script waiting for
    // `listening on` must never be told about a server that then exits.
    let mut server = EchoServer::new(config.clone(), SERVER_BASE).map_err(|e| e.to_string())?;
    inherited.adopt_into(&mut [&mut server])?;
    bind_all(&mut [&mut server], args)?;
    let mut metrics = bind_metrics(args, poll.registry(), METRICS_BASE)?;
    server
        .register(poll.registry())
        .map_err(|e| format!("cannot register listeners: {e}"))?;
    print_listening(&server.local_addrs(), &server.udp_addrs())?;
    log_metrics_addr(metrics.as_ref());
    started(&config);
    notifier.ready();

    let mut events = Events::with_capacity(1024);
    let mut stats_timer = StatsTimer::new(args.stats_interval, Instant::now());
    let mut trimmed_at = 0;
    loop {
        let also = own_timers_due_in(&stats_timer, &notifier, metrics.as_ref());
        let now = turn(
            &mut poll,
            &mut events,
            &mut server,
            &mut trimmed_at,
            also,
            |server, registry, token, now| {
                if token == SIGNALS {
                    for command in signals.commands() {
                        if command == Command::Shutdown {
                            notifier.stopping();
                        }
                        if let Some(stats) = command.apply(server, registry, now) {
                            info!("stats: {stats}");
                            notifier.status(&stats);
                        }
                    }
                } else if let Some(metrics) = metrics.as_mut().filter(|m| m.owns(token)) {
                    metrics.handle_event(registry, token, now);
                } else {
                    warn!("event for unknown token {}", token.0);
                }
            },
        )?;
        if let Some(metrics) = &mut metrics {
            metrics.handle_timeout(poll.registry(), now);
            if metrics.wants_counters() {
                metrics.answer(poll.registry(), &server.stats(), 1);
            }
        }
        if stats_timer.fired(now) {
            let stats = server.stats();
            info!("stats: {stats}");
            notifier.status(&stats);
        }
        // Sent from this loop's own turn: a loop that stops turning stops
        // the watchdog, and the supervisor restarts us.
        if notifier.watchdog_fired(now) {
            notifier.watchdog();
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

/// Binds and registers the `--metrics` endpoint under `base`, if asked for.
///
/// # Errors
/// `cannot serve metrics on ADDR: ...`.
pub fn bind_metrics(
    args: &Args,
    registry: &Registry,
    base: Token,
) -> Result<Option<Metrics>, String> {
    let Some(addr) = args.metrics else {
        return Ok(None);
    };
    let error = |e: io::Error| format!("cannot serve metrics on {addr}: {e}");
    let mut metrics = Metrics::bind(addr).map_err(error)?;
    metrics.register(registry, base).map_err(error)?;
    Ok(Some(metrics))
}

/// How long a host may sleep before its own timers want it: the stats
/// line, the watchdog and the metrics guest's deadlines.
pub fn own_timers_due_in(
    stats_timer: &StatsTimer,
    notifier: &Notifier,
    metrics: Option<&Metrics>,
) -> Option<Duration> {
    let now = Instant::now();
    [
        stats_timer.due_in(now),
        notifier.watchdog_due_in(now),
        metrics.and_then(|m| m.due_in(now)),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// `metrics on http://IP:PORT/metrics` on stderr, after the `listening on`
/// lines: stdout stays the echo sockets' alone, for the scripts that read it.
pub fn log_metrics_addr(metrics: Option<&Metrics>) {
    match metrics.map(Metrics::local_addr) {
        Some(Ok(addr)) => info!("metrics on http://{addr}/metrics"),
        Some(Err(e)) => warn!("metrics: cannot read the bound address: {e}"),
        None => {}
    }
}
