//! One client's pass: write what it owes, read and verify what came back,
//! and count the messages that completed.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use crate::client::{Client, Stats};
use crate::pattern::{PatternTable, MAX_CHUNK};
use crate::plan::{Kind, Plan};

/// What a pass needs besides the client: the share's table, read buffer,
/// plan and counters.
pub(crate) struct Ctx<'a> {
    pub(crate) table: &'a PatternTable,
    pub(crate) buf: &'a mut [u8],
    pub(crate) plan: &'a Plan,
    pub(crate) stats: &'a mut Stats,
}

/// When a pass happens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    /// The turn's clock.
    pub(crate) now: Instant,
    /// Closed loop: completed messages count (past the warm-up, before the
    /// end of the window).
    pub(crate) record: bool,
    /// Before the end of the window: closed-loop clients issue new messages.
    pub(crate) running: bool,
    /// The measured window: open-loop messages count when their scheduled
    /// time falls in it.
    pub(crate) window: (Instant, Instant),
}

/// Gives a client its first goal as traffic starts (or as a churn
/// connect completes).
pub(crate) fn issue_initial(client: &mut Client, plan: &Plan, now: Instant) {
    if client.schedule.is_some() {
        // Open loop: the schedule issues; the timers say when.
        return;
    }
    match plan.kind {
        Kind::PingPong | Kind::Pipelined | Kind::Hold => {
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

/// Open loop: owes every message due so far; pingpong holds back all but
/// `depth` in flight (they wait, their latency counting), pipelined sends
/// each at its time whatever is in flight.
pub(crate) fn owe_due(client: &mut Client, plan: &Plan) {
    let size = plan.size as u64;
    let due = match plan.kind {
        Kind::Pipelined => client.due,
        _ => client.due.min(client.rx / size + plan.depth as u64),
    };
    client.goal = client.goal.max(due * size);
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
pub(crate) fn pump(client: &mut Client, ctx: &mut Ctx, at: &Moment) -> Pass {
    // A failed client ends a churn cycle; in other modes it just stops.
    let failed = if ctx.plan.kind == Kind::Churn {
        Pass::Finished
    } else {
        Pass::Blocked
    };
    // One pass reads until the socket is empty, then writes what that
    // owes and returns; a client must not keep the loop to itself, so a
    // pass that never finds the socket empty stops after READS_PER_PASS.
    let mut drained = false;
    for _ in 0..READS_PER_PASS {
        if write_owed(client, ctx, at).is_err() {
            ctx.stats.errors += 1;
            client.fail();
            return failed;
        }
        if drained {
            return Pass::Blocked;
        }
        let n = match client.stream.read(ctx.buf) {
            Ok(0) => {
                ctx.stats.errors += 1;
                client.fail();
                return failed;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Pass::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                ctx.stats.errors += 1;
                client.fail();
                return failed;
            }
        };
        let data = &ctx.buf[..n];
        if client.rx + n as u64 > client.tx || !ctx.table.matches(client.offset, client.rx, data) {
            ctx.stats.mismatches += 1;
            client.fail();
            return failed;
        }
        let before = client.rx;
        client.rx += n as u64;
        if echoed(client, ctx, at, before) {
            return Pass::Finished;
        }
        // On Linux a short read means the socket is empty for now; the
        // echo of what we write next raises a new edge.
        drained = n < ctx.buf.len();
    }
    Pass::Yielded
}

/// Writes what the client owes until the socket would block.
fn write_owed(client: &mut Client, ctx: &mut Ctx, at: &Moment) -> Result<(), ()> {
    // Ping-pong writes every owed message in one call (pipelining, as
    // redis-benchmark -P does); stream writes S-byte pieces.
    let chunk = match ctx.plan.kind {
        Kind::Stream => ctx.plan.size.min(MAX_CHUNK),
        _ => MAX_CHUNK,
    };
    while client.tx < client.goal {
        let n = ((client.goal - client.tx) as usize).min(chunk);
        match client
            .stream
            .write(ctx.table.slice(client.offset, client.tx, n))
        {
            Ok(w) => {
                let before = client.tx;
                client.tx += w as u64;
                if ctx.plan.kind == Kind::Stream && client.mark.is_none() {
                    // A fresh clock, not `now`: one pass of a busy stream
                    // can last long enough to see this echo.
                    client.mark = Some((client.tx, Instant::now()));
                }
                if client.schedule.is_some() {
                    sent_on_schedule(client, ctx, at, before);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Open loop: counts the messages whose last byte just went out, and how
/// late each went against its schedule.
fn sent_on_schedule(client: &Client, ctx: &mut Ctx, at: &Moment, before: u64) {
    let Some(schedule) = client.schedule else {
        return;
    };
    let size = ctx.plan.size as u64;
    let written = Instant::now();
    for k in before / size..client.tx / size {
        let due = schedule.at(k);
        ctx.stats.max_send_lag = ctx.stats.max_send_lag.max(written - due.min(written));
        if due >= at.window.0 && due < at.window.1 && written < at.window.1 {
            ctx.stats.sent += 1;
        }
    }
}

/// Counts what `rx` moving on from `before` completed and issues what that
/// owes; true when a churn cycle is complete.
fn echoed(client: &mut Client, ctx: &mut Ctx, at: &Moment, before: u64) -> bool {
    let (plan, stats) = (ctx.plan, &mut *ctx.stats);
    let size = plan.size as u64;
    let done = client.rx / size - before / size;
    if at.record && client.schedule.is_none() {
        stats.bytes += client.rx - before;
    }
    match plan.kind {
        Kind::PingPong | Kind::Pipelined | Kind::Hold => {
            stats.total_msgs += done;
            if let Some(schedule) = client.schedule {
                for k in before / size..client.rx / size {
                    // Open loop: from the scheduled time; the window is
                    // the schedule's too, so the drain still counts.
                    let due = schedule.at(k);
                    if due >= at.window.0 && due < at.window.1 {
                        stats.msgs += 1;
                        stats.bytes += size;
                        record(stats, at.now, due);
                    }
                }
                if at.running {
                    owe_due(client, plan);
                }
                return false;
            }
            for _ in 0..done {
                if let Some(issued) = client.issued.pop_front() {
                    if at.record {
                        stats.msgs += 1;
                        record(stats, at.now, issued);
                    }
                }
                if at.running {
                    client.goal += size;
                    client.issued.push_back(at.now);
                }
            }
        }
        Kind::Stream => {
            stats.total_msgs += done;
            if at.record {
                stats.msgs += done;
            }
            if let Some((end, written)) = client.mark {
                if client.rx >= end {
                    client.mark = None;
                    if at.record {
                        record(stats, Instant::now(), written);
                    }
                }
            }
            if at.running {
                client.goal = client.rx + stream_window(plan);
            }
        }
        Kind::Churn => {
            if client.rx >= size {
                stats.total_msgs += 1;
                if at.record {
                    stats.msgs += 1;
                    record(stats, at.now, client.started);
                }
                return true;
            }
        }
    }
    false
}

/// Records the latency from `from` to `now` in microseconds (at least 1).
fn record(stats: &mut Stats, now: Instant, from: Instant) {
    let us = now.saturating_duration_since(from).as_micros().max(1);
    let _ = stats.hist.record(u64::try_from(us).unwrap_or(u64::MAX));
}
