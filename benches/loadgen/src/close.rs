//! How the load generator ends its connections: an orderly FIN, so the
//! server sees each client finish, or a reset, so nothing is left in
//! TIME_WAIT for the next run.
//!
//! A FIN close is `shutdown(Write)`, then reading until the server's EOF,
//! then `close()`. Bytes that still arrive are checked like any echo. A
//! connection the server resets, or that sees no EOF within [`FIN_TIMEOUT`],
//! is reset and counted as an unclean close.

use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use slab::Slab;

use crate::client::{connect_outcome, Client, Stats};
use crate::pattern::PatternTable;

/// How connections end: at the end of a run, and after each churn cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Close {
    /// Shut down sending, read to the server's EOF, close: the server sees
    /// an orderly close.
    #[default]
    Fin,
    /// SO_LINGER 0, then close: the server sees a reset (an error).
    Reset,
}

/// How long a FIN close waits for the server's EOF before it resets.
pub(crate) const FIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a FIN close stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    /// Our FIN is sent; the server's EOF has not come yet.
    Waiting,
    /// The server's EOF came: dropping the socket now is an orderly close.
    Done,
    /// The server reset the connection, or sent bytes we never sent.
    Failed,
}

/// Starts closing a client as `how` says. Returns true if the client is
/// gone now, false if it is waiting for the server's EOF (then
/// [`settle`] finishes it when its next event comes).
pub(crate) fn begin(
    poll: &Poll,
    clients: &mut Slab<Client>,
    key: usize,
    how: Close,
    table: &PatternTable,
    buf: &mut [u8],
    stats: &mut Stats,
) -> bool {
    let client = &mut clients[key];
    // A connection that already failed (counted as an error) has no
    // orderly close to make.
    if how == Close::Reset || client.failed {
        reset(poll, clients, key);
        return true;
    }
    client.closing = true;
    // A connect still in progress gets its FIN once it completes (see
    // `settle`): the server may have accepted it already.
    if client.connected && !send_fin(client) {
        stats.unclean_closes += 1;
        reset(poll, clients, key);
        return true;
    }
    // The server's EOF may already be queued, with no edge left to tell us.
    settle(poll, clients, key, table, buf, stats)
}

/// Shuts down sending; false if the connection is already gone.
fn send_fin(client: &mut Client) -> bool {
    client.stream.shutdown(Shutdown::Write).is_ok()
}

/// Moves a closing client on: sends the FIN once a pending connect
/// completes, then reads what still arrives; once the server's EOF has come
/// (or the connection failed), removes the client and returns true.
pub(crate) fn settle(
    poll: &Poll,
    clients: &mut Slab<Client>,
    key: usize,
    table: &PatternTable,
    buf: &mut [u8],
    stats: &mut Stats,
) -> bool {
    let client = &mut clients[key];
    if !client.connected {
        match connect_outcome(&client.stream) {
            None => return false,
            // Never connected: there is nothing to close.
            Some(Err(_)) => {
                reset(poll, clients, key);
                return true;
            }
            Some(Ok(())) => {
                client.connected = true;
                if !send_fin(client) {
                    stats.unclean_closes += 1;
                    reset(poll, clients, key);
                    return true;
                }
            }
        }
    }
    match read_to_eof(client, table, buf, stats) {
        Fin::Waiting => false,
        Fin::Done => {
            let mut client = clients.remove(key);
            let _ = poll.registry().deregister(&mut client.stream);
            true
        }
        Fin::Failed => {
            stats.unclean_closes += 1;
            reset(poll, clients, key);
            true
        }
    }
}

/// Closes every client as `how` says; under `Fin`, waits up to
/// [`FIN_TIMEOUT`] for the server's EOFs, then resets the rest.
pub(crate) fn all(
    poll: &mut Poll,
    events: &mut Events,
    clients: &mut Slab<Client>,
    how: Close,
    table: &PatternTable,
    buf: &mut [u8],
    stats: &mut Stats,
) -> io::Result<()> {
    let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
    for key in keys {
        if clients[key].closing {
            // Churn: already waiting for this one's EOF.
            settle(poll, clients, key, table, buf, stats);
        } else {
            begin(poll, clients, key, how, table, buf, stats);
        }
    }
    let deadline = Instant::now() + FIN_TIMEOUT;
    while !clients.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match poll.poll(events, Some(left)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let key = event.token().0;
            if clients.contains(key) {
                settle(poll, clients, key, table, buf, stats);
            }
        }
    }
    // No EOF in time: the server kept these open after our FIN.
    stats.unclean_closes += clients.len() as u64;
    let keys: Vec<usize> = clients.iter().map(|(k, _)| k).collect();
    for key in keys {
        reset(poll, clients, key);
    }
    Ok(())
}

/// Removes a client with a reset (SO_LINGER 0): no TIME_WAIT is left.
pub(crate) fn reset(poll: &Poll, clients: &mut Slab<Client>, key: usize) {
    if !clients.contains(key) {
        return;
    }
    let mut client = clients.remove(key);
    let _ = poll.registry().deregister(&mut client.stream);
    let socket = socket2::SockRef::from(&client.stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
}

/// Reads until the socket would block or ends, checking each byte that
/// still arrives against what this client sent.
fn read_to_eof(
    client: &mut Client,
    table: &PatternTable,
    buf: &mut [u8],
    stats: &mut Stats,
) -> Fin {
    loop {
        match client.stream.read(buf) {
            Ok(0) => return Fin::Done,
            Ok(n) => {
                let late = client.rx + n as u64 > client.tx
                    || !table.matches(client.offset, client.rx, &buf[..n]);
                if late {
                    stats.mismatches += 1;
                    return Fin::Failed;
                }
                client.rx += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Fin::Waiting,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Fin::Failed,
        }
    }
}
