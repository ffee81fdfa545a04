//! Telling a supervisor how we are: systemd's `sd_notify` protocol, written
//! out (it is one datagram per message).
//!
//! When `NOTIFY_SOCKET` is set, each message is one datagram of
//! `KEY=VALUE` lines sent to that unix socket: a path (`/run/...`) or, with a
//! leading `@`, a name in the abstract namespace. We send `READY=1` once every
//! socket is served and the `listening on` lines are out, `STATUS=` with a
//! one-line summary with each stats line, `STOPPING=1` when shutdown begins,
//! and `WATCHDOG=1` every half of `WATCHDOG_USEC` (when `WATCHDOG_PID` is
//! unset or ours). The hosts send the watchdog message from their loops, so a
//! loop that stops turning stops it: the single loop sends it from its own
//! turn, the supervisor of `--threads N` only once every loop has answered a
//! request for its counters sent since the last one.
//!
//! The variables are read once at start and removed. The socket is
//! non-blocking: a supervisor that does not read its socket costs us one
//! failed send, never a stalled loop. A failed message is logged once and is
//! never fatal.

use std::env;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use log::warn;

use echoloop::Stats;

use crate::text::plural;

/// The variables of the protocol, removed once read.
const VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The supervisor's notification socket, if it gave one, and the watchdog's
/// timer.
pub struct Notifier {
    // None: NOTIFY_SOCKET unset or unusable; every message is then skipped.
    target: Option<Target>,
    watchdog: Option<Watchdog>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    // As given, for the one warning.
    name: String,
    // A failure was logged; later ones are not.
    warned: bool,
}

/// When the next `WATCHDOG=1` is due.
struct Watchdog {
    every: Duration,
    next: Instant,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes
    /// them. A socket that cannot be used, or a watchdog value that does not
    /// parse, is logged and ignored. Call it before any thread starts (it
    /// changes the environment).
    pub fn from_env(now: Instant) -> Notifier {
        let [socket, usec, pid] = VARIABLES.map(|name| env::var(name).ok());
        for name in VARIABLES {
            env::remove_var(name);
        }
        let target = socket.and_then(|name| match Target::open(&name) {
            Ok(target) => Some(target),
            Err(e) => {
                warn!("cannot notify the supervisor at NOTIFY_SOCKET={name:?}: {e}");
                None
            }
        });
        let watchdog = target.as_ref().and_then(|_| Watchdog::new(usec, pid, now));
        Notifier { target, watchdog }
    }

    /// `READY=1`: every socket is served.
    pub fn ready(&mut self) {
        self.send("READY=1");
    }

    /// `STATUS=`: a one-line summary of `stats`.
    pub fn status(&mut self, stats: &Stats) {
        if self.target.is_some() {
            self.send(&format!("STATUS={}", summary(stats)));
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }

    /// How long a loop may sleep before the watchdog is due; `None` without a
    /// watchdog.
    pub fn watchdog_due_in(&self, now: Instant) -> Option<Duration> {
        self.watchdog
            .as_ref()
            .map(|w| w.next.saturating_duration_since(now))
    }

    /// Whether the watchdog is due at `now`; if so, the next falls half of
    /// `WATCHDOG_USEC` later. The caller sends [`Notifier::watchdog`] once it
    /// knows its loops are turning.
    pub fn watchdog_fired(&mut self, now: Instant) -> bool {
        match &mut self.watchdog {
            Some(w) if now >= w.next => {
                w.next = now + w.every;
                true
            }
            _ => false,
        }
    }

    /// `WATCHDOG=1`: the loops are turning.
    pub fn watchdog(&mut self) {
        self.send("WATCHDOG=1");
    }

    fn send(&mut self, message: &str) {
        let Some(target) = &mut self.target else {
            return;
        };
        let sent = target.socket.send_to_addr(message.as_bytes(), &target.addr);
        match sent {
            Ok(_) => {}
            Err(e) if !target.warned => {
                target.warned = true;
                warn!(
                    "cannot notify the supervisor at NOTIFY_SOCKET={:?}: {e} (further failures \
                     are not logged)",
                    target.name
                );
            }
            Err(_) => {}
        }
    }
}

impl Target {
    /// An unbound, non-blocking datagram socket and the address `name` says.
    fn open(name: &str) -> io::Result<Target> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a path (/...) or an abstract name (@...)",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Target {
            socket,
            addr,
            name: name.to_string(),
            warned: false,
        })
    }
}

impl Watchdog {
    /// Half of `WATCHDOG_USEC`, first due that long after `now`; none when
    /// unset, for another process, or not a positive number (logged).
    fn new(usec: Option<String>, pid: Option<String>, now: Instant) -> Option<Watchdog> {
        let usec = usec?;
        if let Some(pid) = pid {
            if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        match usec.trim().parse::<u64>() {
            Ok(usec) if usec > 0 => {
                // At least 1 ms: a loop woken more often would do nothing else.
                let every = (Duration::from_micros(usec) / 2).max(Duration::from_millis(1));
                Some(Watchdog {
                    every,
                    next: now.checked_add(every)?,
                })
            }
            _ => {
                warn!("WATCHDOG_USEC={usec:?} is not a positive number of microseconds: ignored");
                None
            }
        }
    }
}

/// "3 connections open, 10 accepted; echoed 1234 bytes, 5 datagrams".
fn summary(stats: &Stats) -> String {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    format!(
        "{} open, {} accepted; echoed {}, {}",
        plural(count(stats.active), "connection"),
        stats.accepted,
        plural(count(stats.bytes_out), "byte"),
        plural(count(stats.udp_datagrams_out), "datagram"),
    )
}
