//! SIGINT, SIGTERM and SIGUSR1, counted one by one.
//!
//! A wake-up through signal-hook-mio's pipe says "some signal came", and
//! its `pending()` yields each kind of signal at most once per wake-up: two
//! SIGTERMs that arrive before the loop reads the pipe look like one. So
//! each delivery is also counted by a handler of our own, an atomic add
//! (async-signal-safe), registered before the pipe's so that the count is
//! up to date by the time the pipe wakes the loop. The loop compares the
//! counts with those it has acted on: two delivered signals always make
//! two commands.
//!
//! The one limit nothing in user space can lift: when a second signal is
//! sent before the kernel has delivered the first (both pending at once),
//! the kernel merges them into one delivery, and the process sees one.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::warn;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// What the signals ask of the servers; with `--threads N` the supervisor
/// sends it to every loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The first SIGINT or SIGTERM: begin a graceful shutdown.
    Shutdown,
    /// The second: reset every connection still open, now.
    CloseAll,
    /// SIGUSR1: log the counters.
    Stats,
}

/// The process's signals: a pipe that wakes a `Poll`, and per-kind counts
/// of deliveries.
pub struct Signals {
    wake: signal_hook_mio::v1_0::Signals,
    // Deliveries of SIGINT or SIGTERM, and of SIGUSR1, counted by the
    // handlers; `*_seen` is how many of each were acted on.
    stops: Arc<AtomicUsize>,
    stats: Arc<AtomicUsize>,
    stops_seen: usize,
    stats_seen: usize,
}

impl Signals {
    /// Installs the handlers. From here on SIGINT and SIGTERM no longer end
    /// the process: they are counted and wake the `Poll` this is
    /// registered with.
    pub fn new() -> io::Result<Signals> {
        let stops = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(AtomicUsize::new(0));
        for (signal, count) in [(SIGINT, &stops), (SIGTERM, &stops), (SIGUSR1, &stats)] {
            crate::sys::count_signal(signal, count.clone())?;
        }
        // Registered after the counters, so they run first.
        let wake = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
        Ok(Signals {
            wake,
            stops,
            stats,
            stops_seen: 0,
            stats_seen: 0,
        })
    }

    /// Registers the wake-up pipe under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.wake, token, Interest::READABLE)
    }

    /// The commands for the signals delivered since the last call, in
    /// order: the first SIGINT/SIGTERM begins shutdown, the second closes
    /// every connection (logged here, once for the process), later ones
    /// add nothing; any number of SIGUSR1 since the last call ask for the
    /// counters once.
    pub fn commands(&mut self) -> Vec<Command> {
        // Empty the pipe; the counts say what came.
        self.wake.pending().for_each(drop);
        let mut commands = Vec::new();
        let stops = self.stops.load(Ordering::SeqCst);
        for delivery in self.stops_seen + 1..=stops {
            match delivery {
                1 => commands.push(Command::Shutdown),
                2 => {
                    warn!("second signal: closing every connection now");
                    commands.push(Command::CloseAll);
                }
                _ => {}
            }
        }
        self.stops_seen = stops;
        let stats = self.stats.load(Ordering::SeqCst);
        if stats != self.stats_seen {
            self.stats_seen = stats;
            commands.push(Command::Stats);
        }
        commands
    }
}
