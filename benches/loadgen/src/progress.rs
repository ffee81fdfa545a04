//! The progress bar: on a terminal only, a labelled bar with the elapsed
//! time and the live rate, fed by counters every load thread adds to.
//!
//! The load loops only add to atomics ([`Meter`]); one ticker thread reads
//! them five times a second and draws, so drawing never slows a loop and
//! `--threads N` shows one bar for the whole run.

use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the bar is redrawn and the rate measured.
const TICK: Duration = Duration::from_millis(200);

/// What the run is doing, as the bar shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Connecting = 0,
    Idle = 1,
    Traffic = 2,
    Closing = 3,
}

/// Counters the load loops add to; one per run, shared by its threads.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    phase: AtomicU8,
    /// Connections open (in `hold`: verified by echo).
    connected: AtomicU64,
    /// `hold`: connections verified by echo.
    held: AtomicU64,
    /// Messages echoed (churn: connections completed) since traffic began.
    done: AtomicU64,
    stop: AtomicBool,
}

impl Meter {
    /// Moves the bar on to `phase`; phases only move forward (the load
    /// threads reach each at slightly different times).
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Connecting,
            1 => Phase::Idle,
            2 => Phase::Traffic,
            _ => Phase::Closing,
        }
    }

    pub(crate) fn add_connected(&self, n: u64) {
        self.connected.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_held(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_done(&self, n: u64) {
        if n > 0 {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// What the bar says about a run.
pub(crate) struct Label {
    /// The mode, shown before the bar.
    pub(crate) mode: &'static str,
    /// What the traffic rate counts: "msgs/s", or "conns/s" for churn.
    pub(crate) unit: &'static str,
    /// Connections to open.
    pub(crate) conns: u64,
    /// Warm-up and measured window together.
    pub(crate) traffic: Duration,
}

/// The bar and its ticker thread; the bar is cleared when this is dropped.
pub(crate) struct Progress {
    meter: Arc<Meter>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// A bar on stderr when stderr is a terminal and the report is not
    /// `--json`; otherwise counters nobody reads.
    pub(crate) fn start(label: Label, json: bool) -> Progress {
        let meter = Arc::new(Meter::default());
        let ticker = (!json && io::stderr().is_terminal()).then(|| {
            let meter = meter.clone();
            thread::spawn(move || tick(&meter, &label))
        });
        Progress { meter, ticker }
    }

    /// The counters for the load loops.
    pub(crate) fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.meter.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// The ticker thread: redraws the bar every [`TICK`] until told to stop.
fn tick(meter: &Meter, label: &Label) {
    let style = ProgressStyle::with_template("{prefix:>9} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(label.conns)
        .with_style(style)
        .with_prefix(label.mode);
    // The last tick: when, in which phase, and the phase's count then.
    let mut last = (Instant::now(), Phase::Connecting, 0u64);
    let mut traffic_from = None;
    while !meter.stop.load(Ordering::Relaxed) {
        thread::sleep(TICK);
        let now = Instant::now();
        let phase = meter.phase();
        let count = match phase {
            Phase::Connecting | Phase::Idle => meter.connected.load(Ordering::Relaxed),
            Phase::Traffic | Phase::Closing => meter.done.load(Ordering::Relaxed),
        };
        let since = if phase == last.1 { last.2 } else { 0 };
        let rate = count.saturating_sub(since) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, phase, count);
        match phase {
            Phase::Connecting => {
                bar.set_position(count);
                bar.set_message(format!("connecting, {rate:.0} conns/s"));
            }
            Phase::Idle => {
                bar.set_position(label.conns);
                let held = meter.held.load(Ordering::Relaxed);
                bar.set_message(format!("holding {held} verified by echo, idle"));
            }
            Phase::Traffic => {
                let started = *traffic_from.get_or_insert_with(|| {
                    bar.set_length(label.traffic.as_millis() as u64);
                    now
                });
                bar.set_position(now.duration_since(started).as_millis() as u64);
                bar.set_message(format!("{rate:.0} {}", label.unit));
            }
            Phase::Closing => bar.set_message("closing"),
        }
    }
    bar.finish_and_clear();
}
