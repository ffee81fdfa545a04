//! One client's pass: write what it owes, read and verify what came back.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use crate::client::{Client, Stats};
use crate::pattern::{PatternTable, MAX_CHUNK};
use crate::plan::{Kind, Plan};

pub(crate) fn issue_initial(client: &mut Client, plan: &Plan, now: Instant) {
    match plan.kind {
        Kind::PingPong | Kind::Hold => {
            for _ in 0..plan.depth {
                client.goal += plan.size as u64;
                client.issued.push_back(now);
            }
        }
        Kind::Stream => client.goal = stream_window(plan),
        Kind::Churn => {
            client.goal = plan.size as u64;
            client.issued.push_back(client.started);
        }
    }
}

/// Stream mode keeps this many bytes beyond what has come back in flight.
fn stream_window(plan: &Plan) -> u64 {
    (plan.size as u64 * 4).max(1 << 20)
}

/// How a pass of [`pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The socket would block (or the client failed): wait for an event.
    Blocked,
    /// [`READS_PER_PASS`] full reads and maybe more to read: pump again
    /// next turn, since no new edge may come.
    Yielded,
    /// Churn: the cycle is complete (or failed); close the connection.
    Finished,
}

/// Full reads one pass may do before it yields, so a client whose echoes
/// never stop coming cannot keep the loop (and the clock checks) to itself.
const READS_PER_PASS: usize = 16;

/// Writes what is owed and reads what has come back, for one client.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pump(
    client: &mut Client,
    table: &PatternTable,
    buf: &mut [u8],
    plan: &Plan,
    stats: &mut Stats,
    record: bool,
    running: bool,
    now: Instant,
) -> Pass {
    // A failed client ends a churn cycle; in other modes it just stops.
    let failed = if plan.kind == Kind::Churn {
        Pass::Finished
    } else {
        Pass::Blocked
    };
    // Ping-pong writes every owed message in one call (pipelining, as
    // redis-benchmark -P does); stream writes S-byte pieces.
    let chunk = if plan.kind == Kind::Stream {
        plan.size.min(MAX_CHUNK)
    } else {
        MAX_CHUNK
    };
    // One pass reads until the socket is empty, then writes what that
    // owes and returns; a client must not keep the loop to itself, so a
    // pass that never finds the socket empty stops after READS_PER_PASS.
    let mut drained = false;
    for _ in 0..READS_PER_PASS {
        // Write what we owe.
        while client.tx < client.goal {
            let n = ((client.goal - client.tx) as usize).min(chunk);
            match client
                .stream
                .write(table.slice(client.offset, client.tx, n))
            {
                Ok(w) => {
                    client.tx += w as u64;
                    if plan.kind == Kind::Stream && client.mark.is_none() {
                        // A fresh clock, not `now`: one pass of a busy
                        // stream can last long enough to see this echo.
                        client.mark = Some((client.tx, Instant::now()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    stats.errors += 1;
                    client.fail();
                    return failed;
                }
            }
        }
        if drained {
            return Pass::Blocked;
        }
        // Read what came back.
        let n = match client.stream.read(buf) {
            Ok(0) => {
                stats.errors += 1;
                client.fail();
                return failed;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Pass::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                stats.errors += 1;
                client.fail();
                return failed;
            }
        };
        if client.rx + n as u64 > client.tx || !table.matches(client.offset, client.rx, &buf[..n]) {
            stats.mismatches += 1;
            client.fail();
            return failed;
        }
        let before = client.rx;
        client.rx += n as u64;
        if record {
            stats.bytes += n as u64;
        }
        let size = plan.size as u64;
        match plan.kind {
            Kind::PingPong | Kind::Hold => {
                // Each message boundary crossed completes one message.
                let done = client.rx / size - before / size;
                stats.total_msgs += done;
                for _ in 0..done {
                    if let Some(at) = client.issued.pop_front() {
                        if record {
                            stats.msgs += 1;
                            let _ =
                                stats.hist.record(
                                    now.saturating_duration_since(at).as_micros().max(1) as u64,
                                );
                        }
                    }
                    if running {
                        client.goal += size;
                        client.issued.push_back(now);
                    }
                }
            }
            Kind::Stream => {
                stats.total_msgs += client.rx / size - before / size;
                if record {
                    stats.msgs += client.rx / size - before / size;
                }
                if let Some((end, at)) = client.mark {
                    if client.rx >= end {
                        client.mark = None;
                        if record {
                            let us = at.elapsed().as_micros().max(1);
                            let _ = stats.hist.record(us as u64);
                        }
                    }
                }
                if running {
                    client.goal = client.rx + stream_window(plan);
                }
            }
            Kind::Churn => {
                if client.rx >= size {
                    stats.total_msgs += 1;
                    if record {
                        stats.msgs += 1;
                        let _ = stats.hist.record(
                            now.saturating_duration_since(client.started)
                                .as_micros()
                                .max(1) as u64,
                        );
                    }
                    return Pass::Finished;
                }
            }
        }
        // On Linux a short read means the socket is empty for now; the
        // echo of what we write next raises a new edge.
        drained = n < buf.len();
    }
    Pass::Yielded
}
