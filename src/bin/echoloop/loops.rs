//! `--threads N`: N shared-nothing loops and the supervisor that speaks for
//! them.
//!
//! ```text
//!  main thread: supervisor Poll          loop thread i (one per --threads)
//!   signals, stats timer, notes    --->   own Poll, own Waker, own EchoServer,
//!      |  Command + waker.wake()          own listener per --listen address
//!      '<---  Note + supervisor waker     turns host::turn, like the single loop
//! ```
//!
//! * **Nothing shared per message.** Each loop is the single loop of
//!   `host.rs` with a mailbox instead of signals. The kernel spreads new
//!   connections over the loops' listeners (`SO_REUSEPORT`,
//!   `echoloop::server::listener_group`); a connection lives and dies in the
//!   loop that accepted it. The loops share one `SharedLimit`, touched only
//!   when a connection is admitted or closed: `--max-connections` is exact
//!   over all loops, and a loop backed off for lack of descriptors sees
//!   another loop's close within 10 ms.
//! * **Signals once, for the process**, here on the main thread: the first
//!   SIGINT/SIGTERM begins shutdown in every loop (each woken through its own
//!   `Waker`), a second closes every loop's connections, SIGUSR1 and
//!   `--stats-interval` ask every loop for its counters and log one line with
//!   their sum and each loop's active connections.
//! * **Counters by asking**: a [`Survey`] sends every loop `Command::Stats`
//!   and waits for every answer; one is out at a time, and whoever wants
//!   counters meanwhile joins it: the stats line, a `--metrics` scrape
//!   (served from the supervisor's `Poll`, answered with the loops' sum once
//!   every loop has replied, or a 503 at the scrape's time limit), and the
//!   watchdog. `WATCHDOG=1` goes out only when every loop has answered a
//!   request made since the last one, so one stuck loop stops it.
//! * **Inherited sockets are shared**: every loop adopts a duplicate of each
//!   socket a supervisor passed (`activation.rs`); the kernel wakes them
//!   all, and the first to accept serves.
//! * **Listeners close together.** Closing one listener of a reuseport
//!   group resets the connections waiting in its accept queue, so a loop
//!   never closes its listener alone while the others accept: only shutdown
//!   closes them, and shutdown is sent to every loop at once. A loop whose
//!   listener fails reports it; the supervisor then shuts every loop down
//!   and the process exits 1 with one error line once they have drained.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use log::{debug, info, warn};
use mio::{Events, Poll, Registry, Token, Waker};

use echoloop::{Config, EchoServer, SharedLimits, Stats};

use crate::host::{self, Outside, StatsTimer, SERVER_BASE};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::options::Args;
use crate::signals::{Command, Signals};

/// The supervisor's tokens; the metrics endpoint's start at METRICS_BASE.
const SIGNALS: Token = Token(0);
const NOTES: Token = Token(1);
const METRICS_BASE: Token = Token(2);
/// A loop's own token for its waker; its server's tokens start after it.
const WAKE: Token = Token(0);

/// What a loop tells the supervisor.
#[derive(Debug)]
enum Note {
    Stats(usize, Stats),
    Failed(usize, String),
    Finished(usize, Stats),
}

/// The supervisor's handle on one loop thread.
struct LoopHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    // Its counters once it has finished.
    last: Option<Stats>,
}

impl LoopHandle {
    fn tell(&self, command: Command) {
        if self.last.is_none() && self.commands.send(command).is_ok() {
            if let Err(err) = self.waker.wake() {
                warn!("cannot wake a loop: {err}");
            }
        }
    }
}

/// One loop, as built on the main thread and moved to its own.
struct Loop {
    index: usize,
    poll: Poll,
    server: EchoServer,
    commands: Receiver<Command>,
    notes: Sender<Note>,
    notify: Arc<Waker>,
}

/// Serves on `threads` loops until every one has finished.
pub fn run(
    config: Config,
    args: &Args,
    threads: usize,
    outside: Outside,
    started: impl FnOnce(&Config),
) -> Result<(), String> {
    let Outside {
        mut signals,
        inherited,
        mut notifier,
    } = outside;
    let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("cannot register signals: {e}"))?;
    let notify = Arc::new(
        Waker::new(poll.registry(), NOTES).map_err(|e| format!("cannot create a waker: {e}"))?,
    );
    let (notes_tx, notes) = mpsc::channel();

    // Every loop is built and every listener bound before a line is
    // printed or a thread started: any failure leaves nothing behind.
    let limits = SharedLimits::new(&config);
    let mut built = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let loop_poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let waker = Waker::new(loop_poll.registry(), WAKE)
            .map_err(|e| format!("cannot create a waker: {e}"))?;
        let (commands_tx, commands) = mpsc::channel();
        built.push(Loop {
            index,
            poll: loop_poll,
            server: EchoServer::with_shared_limits(config.clone(), SERVER_BASE, &limits)
                .map_err(|e| e.to_string())?,
            commands,
            notes: notes_tx.clone(),
            notify: notify.clone(),
        });
        handles.push(LoopHandle {
            commands: commands_tx,
            waker: Arc::new(waker),
            thread: None,
            last: None,
        });
    }
    // One socket per loop and address, one `SO_REUSEPORT` group per
    // address, so the kernel spreads connections and UDP sources over the
    // loops.
    let mut servers: Vec<&mut EchoServer> = built.iter_mut().map(|lp| &mut lp.server).collect();
    inherited.adopt_into(&mut servers)?;
    host::bind_all(&mut servers, args)?;
    let metrics = host::bind_metrics(args, poll.registry(), METRICS_BASE)?;
    // Every loop's group shares one address; the first loop's say which.
    let (tcp, udp) = (built[0].server.local_addrs(), built[0].server.udp_addrs());
    for lp in &mut built {
        lp.server
            .register(lp.poll.registry())
            .map_err(|e| format!("cannot register listeners: {e}"))?;
    }
    for (lp, handle) in built.into_iter().zip(&mut handles) {
        let name = format!("echoloop-{}", lp.index);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || serve_or_report(lp))
            .map_err(|e| format!("cannot start a loop thread: {e}"))?;
        handle.thread = Some(thread);
    }
    host::print_listening(&tcp, &udp)?;
    host::log_metrics_addr(metrics.as_ref());
    started(&config);
    notifier.ready();
    let guests = Guests {
        signals,
        notifier,
        metrics,
    };
    supervise(poll, guests, notes, handles, args)
}

/// What shares the supervisor's `Poll` with the loops' notes.
struct Guests {
    signals: Signals,
    notifier: Notifier,
    metrics: Option<Metrics>,
}

/// The main thread once the loops run: signals, the stats timer, the
/// watchdog, the metrics endpoint and the loops' notes, until every loop
/// has finished.
fn supervise(
    mut poll: Poll,
    guests: Guests,
    notes: Receiver<Note>,
    mut handles: Vec<LoopHandle>,
    args: &Args,
) -> Result<(), String> {
    let Guests {
        mut signals,
        mut notifier,
        mut metrics,
    } = guests;
    let mut events = Events::with_capacity(64);
    let mut stats_timer = StatsTimer::new(args.stats_interval, Instant::now());
    let mut shutting_down = false;
    let mut failure: Option<String> = None;
    let mut survey = Survey::default();
    while handles.iter().any(|h| h.last.is_none()) {
        let timeout = host::own_timers_due_in(&stats_timer, &notifier, metrics.as_ref());
        if let Err(err) = poll.poll(&mut events, timeout) {
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Without a poll nobody hears signals: close everything now.
            failure.get_or_insert(format!("poll failed: {err}"));
            handles.iter().for_each(|h| h.tell(Command::CloseAll));
            break;
        }
        let now = Instant::now();
        let mut shutdown_now = false;
        let mut close_now = false;
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for command in signals.commands() {
                        match command {
                            Command::Stats => survey.ask(&handles, Purpose::Log),
                            // Sent once the notes are read, with a loop's failure.
                            Command::Shutdown => {
                                shutting_down = true;
                                shutdown_now = true;
                            }
                            Command::CloseAll => close_now = true,
                        }
                    }
                }
                NOTES => {} // read below, every turn
                token => match metrics.as_mut().filter(|m| m.owns(token)) {
                    Some(metrics) => metrics.handle_event(poll.registry(), token, now),
                    None => warn!("event for unknown token {}", token.0),
                },
            }
        }
        for note in notes.try_iter() {
            match note {
                Note::Stats(i, stats) => survey.reply(i, stats),
                Note::Failed(i, msg) => {
                    warn!("loop {i}: {msg}; shutting every loop down");
                    failure.get_or_insert(msg);
                    if !shutting_down {
                        shutting_down = true;
                        shutdown_now = true;
                    }
                }
                Note::Finished(i, stats) => {
                    debug!("loop {i}: finished");
                    handles[i].last = Some(stats);
                    survey.finished(i, stats);
                }
            }
        }
        if shutdown_now {
            notifier.stopping();
            handles.iter().for_each(|h| h.tell(Command::Shutdown));
        }
        // After the shutdown, when both came in one wake-up.
        if close_now {
            handles.iter().for_each(|h| h.tell(Command::CloseAll));
        }
        if let Some(metrics) = &mut metrics {
            metrics.handle_timeout(poll.registry(), now);
            if metrics.wants_counters() {
                survey.ask(&handles, Purpose::Scrape);
            }
        }
        if stats_timer.fired(now) {
            survey.ask(&handles, Purpose::Log);
        }
        if notifier.watchdog_fired(now) {
            survey.ask(&handles, Purpose::Watchdog);
        }
        if let Some((replies, wanted)) = survey.complete() {
            let mut total = Stats::default();
            for stats in &replies {
                total += *stats;
            }
            if wanted.log {
                info!("stats: {}", describe(&replies));
                notifier.status(&total);
            }
            if let Some(metrics) = metrics.as_mut().filter(|_| wanted.scrape) {
                metrics.answer(poll.registry(), &total, handles.len());
            }
            if wanted.watchdog {
                notifier.watchdog();
            }
        }
    }
    let mut total = Stats::default();
    for handle in &mut handles {
        if let Some(thread) = handle.thread.take() {
            if thread.join().is_err() {
                failure.get_or_insert("a loop thread panicked".to_string());
            }
        }
        total += handle.last.unwrap_or_default();
    }
    info!("shutdown complete: {total} loops={}", handles.len());
    failure.map_or(Ok(()), Err)
}

/// Who wants the loops' counters.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// The stats line (SIGUSR1, `--stats-interval`) and `STATUS=`.
    Log,
    /// A `--metrics` scrape.
    Scrape,
    /// `WATCHDOG=1`: proof that every loop turns.
    Watchdog,
}

/// The purposes a survey serves.
#[derive(Debug, Clone, Copy, Default)]
struct Wanted {
    log: bool,
    scrape: bool,
    watchdog: bool,
}

/// One request for every loop's counters at a time; whoever wants them
/// while one is out joins it, so a loop is never asked twice at once.
#[derive(Debug, Default)]
struct Survey {
    // One slot per loop while a request is out; a finished loop's slot is
    // filled with its last counters.
    replies: Option<Vec<Option<Stats>>>,
    wanted: Wanted,
}

impl Survey {
    /// Joins the request that is out, or sends a new one to every loop.
    fn ask(&mut self, handles: &[LoopHandle], purpose: Purpose) {
        match purpose {
            Purpose::Log => self.wanted.log = true,
            Purpose::Scrape => self.wanted.scrape = true,
            Purpose::Watchdog => self.wanted.watchdog = true,
        }
        if self.replies.is_none() {
            self.replies = Some(handles.iter().map(|h| h.last).collect());
            handles.iter().for_each(|h| h.tell(Command::Stats));
        }
    }

    /// Loop `index` answered.
    fn reply(&mut self, index: usize, stats: Stats) {
        if let Some(slot) = self.replies.as_mut().and_then(|r| r.get_mut(index)) {
            *slot = Some(stats);
        }
    }

    /// Loop `index` finished with `stats`: it will not answer any more.
    fn finished(&mut self, index: usize, stats: Stats) {
        if let Some(slot) = self.replies.as_mut().and_then(|r| r.get_mut(index)) {
            slot.get_or_insert(stats);
        }
    }

    /// Every loop's counters and what they were asked for, once every loop
    /// has answered; the next `ask` sends a new request.
    fn complete(&mut self) -> Option<(Vec<Stats>, Wanted)> {
        if !self
            .replies
            .as_ref()
            .is_some_and(|r| r.iter().all(Option::is_some))
        {
            return None;
        }
        let replies = self.replies.take()?.into_iter().flatten().collect();
        Some((replies, std::mem::take(&mut self.wanted)))
    }
}

/// The stats line: the loops' counters summed, then each loop's active
/// connections, so an uneven spread shows.
fn describe(per_loop: &[Stats]) -> String {
    let mut total = Stats::default();
    for stats in per_loop {
        total += *stats;
    }
    let active: Vec<String> = per_loop.iter().map(|s| s.active.to_string()).collect();
    format!("{total} active_per_loop=[{}]", active.join(","))
}

/// Runs [`serve`]; should it panic (a bug), tells the supervisor, so the
/// other loops shut down and the process exits 1 instead of waiting for a
/// loop that is gone.
fn serve_or_report(lp: Loop) {
    let (index, notes, notify) = (lp.index, lp.notes.clone(), lp.notify.clone());
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(lp))).is_err() {
        let _ = notes.send(Note::Failed(index, format!("loop {index} panicked")));
        let _ = notes.send(Note::Finished(index, Stats::default()));
        let _ = notify.wake();
    }
}

/// One loop thread: the single loop of `host.rs`, with a mailbox where the
/// signals were. Ends when its server has finished.
fn serve(mut lp: Loop) {
    let mut events = Events::with_capacity(1024);
    let mut trimmed_at = 0;
    let mut failed = false;
    let note = |lp: &Loop, note: Note| {
        if lp.notes.send(note).is_ok() {
            let _ = lp.notify.wake();
        }
    };
    loop {
        let commands = &lp.commands;
        let mut replies = Vec::new();
        let turned = host::turn(
            &mut lp.poll,
            &mut events,
            &mut lp.server,
            &mut trimmed_at,
            None,
            |server: &mut EchoServer, registry: &Registry, token, now| {
                if token != WAKE {
                    warn!("event for unknown token {}", token.0);
                    return;
                }
                for command in commands.try_iter() {
                    replies.extend(command.apply(server, registry, now));
                }
            },
        );
        for stats in replies {
            note(&lp, Note::Stats(lp.index, stats));
        }
        if let Err(msg) = turned {
            if failed {
                // Failing again while draining: give up on the rest.
                lp.server.close_all(lp.poll.registry());
            } else {
                failed = true;
                note(&lp, Note::Failed(lp.index, msg));
                // Our listener is gone anyway; the supervisor tells the
                // other loops to close theirs at the same moment.
                lp.server.begin_shutdown(lp.poll.registry(), Instant::now());
            }
        }
        if lp.server.is_finished() {
            break;
        }
    }
    note(&lp, Note::Finished(lp.index, lp.server.stats()));
}
