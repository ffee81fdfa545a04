//! `hold`: a connection counts as held only once a probe sent on it has
//! come back, every byte verified.
//!
//! A connect completes in the kernel before the server accepts it: when the
//! server's accept backlog overflows, or it stops accepting, the client
//! still sees an open connection. So each connection sends one message of
//! `-s` bytes (the first bytes of its stream) and waits up to
//! `--probe-timeout` for the echo. Connections whose probe failed (reset,
//! EOF, wrong bytes) are closed and counted; those still waiting at the
//! timeout are not held: they are counted as timed out, carry no traffic,
//! and are closed with a reset at the end.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use slab::Slab;

use crate::client::{Client, Stats};
use crate::close;
use crate::pattern::PatternTable;
use crate::plan::Plan;

/// What the probes found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// Connections whose probe came back, every byte verified.
    pub(crate) verified: usize,
    /// Connections the server reset or closed, or that echoed wrong bytes.
    pub(crate) failed: usize,
    /// Connections still waiting for their echo at the timeout.
    pub(crate) timed_out: usize,
}

impl Held {
    /// The `held ...` line printed once every probe is settled: it starts
    /// with `held N` (scripts match `^held`).
    pub(crate) fn line(&self) -> String {
        format!(
            "held {} (verified by echo), {} failed, {} timed out",
            self.verified, self.failed, self.timed_out
        )
    }
}

/// Where one connection's probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Waiting,
    Verified,
    /// Reset, EOF or an error: counted as an error.
    Failed,
    /// Bytes that were never sent: counted as a mismatch.
    Mismatched,
}

/// Sends a probe on every connection and waits up to `timeout` for the
/// echoes. Failed connections are removed (counted as errors, or
/// mismatches); the verified ones are marked `verified`.
pub(crate) fn probe(
    poll: &mut Poll,
    events: &mut Events,
    clients: &mut Slab<Client>,
    table: &PatternTable,
    buf: &mut [u8],
    plan: &Plan,
    stats: &mut Stats,
) -> io::Result<Held> {
    let mut held = Held::default();
    let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
    let mut waiting = 0;
    for key in keys {
        clients[key].goal = plan.size as u64;
        waiting += usize::from(settle(poll, clients, key, table, buf, &mut held, stats));
    }
    let deadline = Instant::now() + plan.probe_timeout;
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match poll.poll(events, Some(left.min(Duration::from_millis(100)))) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let key = event.token().0;
            if clients.get(key).is_some_and(|c| !c.verified) {
                waiting -= usize::from(!settle(poll, clients, key, table, buf, &mut held, stats));
            }
        }
    }
    // Still waiting: counted as errors by the caller, so closed with a
    // reset like any failed connection.
    for (_, client) in clients.iter_mut() {
        if !client.verified {
            client.fail();
        }
    }
    held.timed_out = waiting;
    Ok(held)
}

/// Moves one probe on; true while it is still waiting.
fn settle(
    poll: &Poll,
    clients: &mut Slab<Client>,
    key: usize,
    table: &PatternTable,
    buf: &mut [u8],
    held: &mut Held,
    stats: &mut Stats,
) -> bool {
    match step(&mut clients[key], table, buf) {
        Probe::Waiting => true,
        Probe::Verified => {
            clients[key].verified = true;
            held.verified += 1;
            false
        }
        failed => {
            held.failed += 1;
            match failed {
                Probe::Mismatched => stats.mismatches += 1,
                _ => stats.errors += 1,
            }
            close::reset(poll, clients, key);
            false
        }
    }
}

/// Writes what is left of the probe and reads what has come back.
fn step(client: &mut Client, table: &PatternTable, buf: &mut [u8]) -> Probe {
    while client.tx < client.goal {
        let n = (client.goal - client.tx) as usize;
        match client
            .stream
            .write(table.slice(client.offset, client.tx, n))
        {
            Ok(w) => client.tx += w as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Probe::Failed,
        }
    }
    loop {
        let n = match client.stream.read(buf) {
            Ok(0) => return Probe::Failed,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Probe::Waiting,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Probe::Failed,
        };
        if client.rx + n as u64 > client.tx || !table.matches(client.offset, client.rx, &buf[..n]) {
            return Probe::Mismatched;
        }
        client.rx += n as u64;
        if client.rx == client.goal {
            return Probe::Verified;
        }
    }
}

/// Stays idle for `idle`; a held connection should hear nothing, so its
/// EOF or error counts as an error (and the connection as failed).
pub(crate) fn idle(
    poll: &mut Poll,
    events: &mut Events,
    clients: &mut Slab<Client>,
    idle: Duration,
    stats: &mut Stats,
) -> io::Result<()> {
    let until = Instant::now() + idle;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match poll.poll(events, Some(left)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let Some(client) = clients.get_mut(event.token().0) else {
                continue;
            };
            // A connection whose probe timed out is already counted.
            let hung_up = event.is_read_closed() || event.is_error();
            if hung_up && !client.failed {
                stats.errors += 1;
                client.fail();
            }
        }
    }
}
