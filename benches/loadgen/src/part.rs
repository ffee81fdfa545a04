//! One load plan (or one thread's share of it) from start to report:
//! open the connections, hold them (`hold`), run the traffic, close.

use std::io::{self, ErrorKind, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll};
use slab::Slab;

use crate::client::{self, connect_outcome, Client, Stats};
use crate::hold::{self, Held};
use crate::pattern::PatternTable;
use crate::plan::{Kind, Plan};
use crate::progress::Phase;
use crate::threads::Gate;
use crate::{close, Report};

/// How long opening all the connections may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// Failed connects tolerated while opening (each is retried).
const MAX_FAILED_CONNECTS: u64 = 1000;

/// One share's loop and everything it owns.
pub(crate) struct Part {
    pub(crate) plan: Plan,
    pub(crate) poll: Poll,
    pub(crate) events: Events,
    pub(crate) clients: Slab<Client>,
    pub(crate) table: PatternTable,
    // 64 KiB: stays in L2 while the kernel copies into it and memcmp reads
    // it back; a 256 KiB buffer made stream runs about 25 % slower here.
    pub(crate) buf: Vec<u8>,
    pub(crate) stats: Stats,
    // The seed of the next connection's offset into the pattern table.
    next_offset: u64,
    // Connects started in all, so churn's new connections rotate over the
    // source addresses too.
    opens: usize,
}

/// Runs one load plan (or one thread's share of it) to completion. With a
/// `gate`, every share opens its connections, then waits for the others
/// before the traffic starts; the report comes with its latency histogram
/// so the shares can be merged.
pub(crate) fn run_part(plan: Plan, gate: Option<&Gate>) -> io::Result<(Report, Histogram<u64>)> {
    let mut part = Part::new(plan)?;
    part.open_all()?;
    let held = part.hold(gate)?;
    part.traffic()?;
    close::all(
        &mut part.poll,
        &mut part.events,
        &mut part.clients,
        part.plan.close,
        &part.table,
        &mut part.buf,
        &mut part.stats,
    )?;
    Ok(part.report(held))
}

impl Part {
    fn new(plan: Plan) -> io::Result<Part> {
        Ok(Part {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            clients: Slab::with_capacity(plan.conns),
            table: PatternTable::new(),
            buf: vec![0u8; 64 * 1024],
            stats: Stats::new()?,
            next_offset: 0x9E37_79B9,
            opens: 0,
            plan,
        })
    }

    /// Starts one more connect.
    pub(crate) fn open_one(&mut self) -> io::Result<()> {
        client::open(
            &self.poll,
            &mut self.clients,
            &self.plan,
            self.opens,
            &mut self.next_offset,
        )?;
        self.opens += 1;
        Ok(())
    }

    /// Opens `plan.conns` connections, a bounded number of connects at a
    /// time; a connect that fails is retried.
    fn open_all(&mut self) -> io::Result<()> {
        let mut opened = 0usize; // connects started and not failed
        let mut connected = 0usize;
        let mut failed_connects = 0u64;
        let deadline = Instant::now() + OPEN_TIMEOUT;
        while connected < self.plan.conns {
            while opened < self.plan.conns && opened - connected < self.plan.max_connecting {
                self.open_one()?;
                opened += 1;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("only {connected} of {} connections opened", self.plan.conns),
                ));
            }
            // Interrupted (a signal, a stop and continue): look again.
            match self
                .poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))
            {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => other?,
            }
            for event in self.events.iter() {
                let key = event.token().0;
                let Some(client) = self.clients.get_mut(key) else {
                    continue;
                };
                if client.connected {
                    continue;
                }
                match connect_outcome(&client.stream) {
                    Some(Ok(())) => {
                        client.connected = true;
                        connected += 1;
                        self.plan.meter.add_connected(1);
                    }
                    None => {}
                    Some(Err(e)) => {
                        // Retried: a refused or reset connect under a storm
                        // of connects is the server's backlog, not a wrong
                        // echo.
                        failed_connects += 1;
                        if failed_connects > MAX_FAILED_CONNECTS {
                            return Err(io::Error::other(format!(
                                "too many failed connects, last: {e}"
                            )));
                        }
                        close::reset(&self.poll, &mut self.clients, key);
                        opened -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// `hold`: probes every connection, waits for the other shares, prints
    /// the `held` line (first share) and stays idle. Other modes count
    /// every open connection as held and only wait for the other shares.
    fn hold(&mut self, gate: Option<&Gate>) -> io::Result<Held> {
        let held = if self.plan.kind == Kind::Hold {
            let held = hold::probe(
                &mut self.poll,
                &mut self.events,
                &mut self.clients,
                &self.table,
                &mut self.buf,
                &self.plan,
                &mut self.stats,
            )?;
            self.stats.errors += held.timed_out as u64;
            self.plan.meter.add_held(held.verified as u64);
            held
        } else {
            Held {
                verified: self.clients.len(),
                ..Held::default()
            }
        };
        let held_all = match gate {
            Some(gate) => gate.arrive(held)?,
            None => held,
        };
        if self.plan.kind == Kind::Hold {
            if self.plan.part == 0 {
                self.plan.meter.set_phase(Phase::Idle);
                println!("{}", held_all.line());
                let _ = io::stdout().flush();
            }
            hold::idle(
                &mut self.poll,
                &mut self.events,
                &mut self.clients,
                self.plan.idle,
                &mut self.stats,
            )?;
        }
        Ok(held)
    }

    /// This share's report, with its latency histogram.
    fn report(self, held: Held) -> (Report, Histogram<u64>) {
        let plan = &self.plan;
        let stats = self.stats;
        let mut report = Report {
            mode: plan.kind.name().to_string(),
            conns: plan.conns,
            active: plan.active,
            size: plan.size,
            depth: plan.depth,
            seconds: plan.duration.as_secs_f64(),
            msgs: stats.msgs,
            bytes: stats.bytes,
            errors: stats.errors,
            mismatches: stats.mismatches,
            held: held.verified,
            probes_failed: held.failed,
            probes_timed_out: held.timed_out,
            total_msgs: stats.total_msgs,
            close: plan.close,
            unclean_closes: stats.unclean_closes,
            threads: 1,
            rate: plan.rate,
            scheduled: stats.scheduled,
            sent: stats.sent,
            max_send_lag_us: u64::try_from(stats.max_send_lag.as_micros()).unwrap_or(u64::MAX),
            ..Report::default()
        };
        report.set_latency(&stats.hist);
        report.judge_schedule();
        (report, stats.hist)
    }
}
