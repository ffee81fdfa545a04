//! The traffic phase of a share: every active client pumps its messages
//! until the measured window ends, then what is in flight drains. Closed
//! loop, a client issues its next message when an echo completes; open
//! loop (`--rate`), when the schedule says (see `schedule.rs`).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::client::connect_outcome;
use crate::close;
use crate::part::Part;
use crate::plan::Kind;
use crate::progress::Phase;
use crate::pump::{issue_initial, owe_due, pump, Ctx, Moment, Pass};
use crate::schedule::{Schedule, Timers};

/// How long what is in flight at the end of the window may take to come
/// back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a turn waits for events when nothing is due sooner.
const TURN_WAIT: Duration = Duration::from_millis(50);

/// Where the traffic phase stands.
struct Window {
    measure_from: Instant,
    measure_until: Instant,
    /// Past the warm-up: the counters and histogram count.
    measuring: bool,
    /// Before the end of the window: clients issue new messages.
    running: bool,
}

impl Window {
    /// A pass's view of it at `now`.
    fn moment(&self, now: Instant) -> Moment {
        Moment {
            now,
            record: self.measuring && self.running,
            running: self.running,
            window: (self.measure_from, self.measure_until),
        }
    }
}

impl Part {
    /// Runs the traffic: warm-up, the measured window, then the drain.
    pub(crate) fn traffic(&mut self) -> io::Result<()> {
        let start = Instant::now();
        let measure_from = start + self.plan.warmup;
        let mut window = Window {
            measure_from,
            measure_until: measure_from + self.plan.duration,
            measuring: false,
            running: true,
        };
        let mut timers = match self.plan.rate {
            Some(_) => Some(Timers::new(&self.poll)?),
            None => None,
        };
        let mut ready = self.start_traffic(&window, start, timers.as_mut());
        let drain_deadline = window.measure_until + DRAIN_TIMEOUT;
        // This turn's work: (client, hung up) from the events, then `ready`.
        let mut turn: Vec<(usize, bool)> = Vec::with_capacity(4096);
        self.plan.meter.set_phase(Phase::Traffic);
        let mut shown = 0; // messages already added to the meter
        loop {
            let now = Instant::now();
            self.advance(&mut window, now);
            if !window.running {
                let outstanding = self
                    .clients
                    .iter()
                    .any(|(_, c)| c.active && c.connected && c.rx < c.goal);
                if !outstanding || now >= drain_deadline {
                    return Ok(());
                }
            }
            // The schedule ends with the window; the drain waits for echoes.
            let due_now = match timers.as_mut().filter(|_| window.running) {
                Some(timers) => timers.arm(now)?,
                None => false,
            };
            let wait = if ready.is_empty() && !due_now {
                TURN_WAIT
            } else {
                Duration::ZERO
            };
            // Interrupted (a signal, a stop and continue): a turn with no
            // events, which left the events empty.
            match self.poll.poll(&mut self.events, Some(wait)) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => other?,
            }
            let now = Instant::now();
            turn.clear();
            turn.extend(
                self.events
                    .iter()
                    .map(|e| (e.token().0, e.is_read_closed() || e.is_error())),
            );
            // A key may have been reused by a new client since it was
            // queued; an extra pass costs that client one failed read.
            turn.extend(ready.drain(..).map(|key| (key, false)));
            for &(key, hung_up) in &turn {
                if self.handle(key, hung_up, &window, now)? == Pass::Yielded {
                    ready.push_back(key);
                }
            }
            if let Some(timers) = timers.as_mut().filter(|_| window.running) {
                self.send_due(timers, &window, now, &mut ready);
            }
            self.plan.meter.add_done(self.stats.total_msgs - shown);
            shown = self.stats.total_msgs;
        }
    }

    /// Gives the active clients their first goal (open loop: their
    /// schedule) and first pass; returns the clients that have more to
    /// read.
    fn start_traffic(
        &mut self,
        window: &Window,
        start: Instant,
        mut timers: Option<&mut Timers>,
    ) -> VecDeque<usize> {
        let now = Instant::now();
        let plan = &self.plan;
        // In `hold`, only connections verified by echo carry traffic.
        let held = self
            .clients
            .iter_mut()
            .filter(|(_, c)| c.verified || plan.kind != Kind::Hold);
        let mut keys = Vec::with_capacity(plan.active);
        for (i, (key, client)) in held.take(plan.active).enumerate() {
            client.active = true;
            client.started = now;
            if let (Some(rate), Some(timers)) = (plan.rate, timers.as_deref_mut()) {
                let schedule = Schedule::new(start, plan.first + i, plan.total, rate);
                client.schedule = Some(schedule);
                self.stats.scheduled +=
                    schedule.before(window.measure_until) - schedule.before(window.measure_from);
                timers.push(schedule.at(0), key);
            }
            issue_initial(client, plan, now);
            keys.push(key);
        }
        self.plan.active = keys.len();
        // Clients whose pass stopped with bytes left to read: no new edge
        // may come for them, so they get another pass next turn.
        let mut ready = VecDeque::new();
        let moment = window.moment(now);
        let mut ctx = Ctx {
            table: &self.table,
            buf: &mut self.buf,
            plan: &self.plan,
            stats: &mut self.stats,
        };
        for key in keys {
            if pump(&mut self.clients[key], &mut ctx, &moment) == Pass::Yielded {
                ready.push_back(key);
            }
        }
        ready
    }

    /// Open loop: moves every client whose next message is due by `now` on
    /// to all its due messages (up to the end of the window) and sends.
    fn send_due(
        &mut self,
        timers: &mut Timers,
        window: &Window,
        now: Instant,
        ready: &mut VecDeque<usize>,
    ) {
        let moment = window.moment(now);
        let mut ctx = Ctx {
            table: &self.table,
            buf: &mut self.buf,
            plan: &self.plan,
            stats: &mut self.stats,
        };
        while let Some(key) = timers.pop_due(now) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            let Some(schedule) = client.schedule.filter(|_| client.active) else {
                continue;
            };
            // The schedule ends with the window.
            let last = schedule.before(window.measure_until);
            client.due = schedule.by(now).min(last);
            if client.due < last {
                timers.push(schedule.at(client.due), key);
            }
            owe_due(client, ctx.plan);
            if pump(client, &mut ctx, &moment) == Pass::Yielded {
                ready.push_back(key);
            }
        }
    }

    /// Starts measuring after the warm-up and stops issuing at the end of
    /// the window.
    fn advance(&mut self, window: &mut Window, now: Instant) {
        if !window.measuring && now >= window.measure_from {
            window.measuring = true;
            // Open loop counts by schedule, from the start: a message due
            // at the window's start may be echoed before this turn.
            if self.plan.rate.is_none() {
                self.stats.hist.reset();
                self.stats.msgs = 0;
                self.stats.bytes = 0;
            }
        }
        if window.running && now >= window.measure_until {
            window.running = false;
            self.plan.meter.set_phase(Phase::Closing);
            // Stop issuing; let what is in flight come back and be verified.
            // Open loop, messages not sent by now stay unsent: they count
            // against `sent`, and the drain stays bounded by what is in
            // flight.
            if self.plan.kind == Kind::Stream || self.plan.rate.is_some() {
                for (_, c) in self.clients.iter_mut() {
                    c.goal = c.tx;
                }
            }
        }
    }

    /// One client's event (or another pass): a churn close or connect
    /// finishing, a hang-up, or traffic.
    fn handle(
        &mut self,
        key: usize,
        hung_up: bool,
        window: &Window,
        now: Instant,
    ) -> io::Result<Pass> {
        let running = window.running;
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(Pass::Blocked);
        };
        if client.closing {
            // Churn with `--close fin`: waiting for the server's EOF.
            let closed = close::settle(
                &self.poll,
                &mut self.clients,
                key,
                &self.table,
                &mut self.buf,
                &mut self.stats,
            );
            if closed && running {
                self.open_one()?;
            }
            return Ok(Pass::Blocked);
        }
        if !client.connected {
            // Churn: a connect finished (or failed).
            match connect_outcome(&client.stream) {
                Some(Ok(())) => {
                    client.connected = true;
                    client.active = true;
                    issue_initial(client, &self.plan, now);
                }
                None => return Ok(Pass::Blocked),
                Some(Err(_)) => {
                    self.stats.errors += 1;
                    close::reset(&self.poll, &mut self.clients, key);
                    if running {
                        self.open_one()?;
                    }
                    return Ok(Pass::Blocked);
                }
            }
        }
        if !client.active {
            // Held idle (or failed already): a hang-up is an error, once.
            if hung_up && !client.failed {
                self.stats.errors += 1;
                close::reset(&self.poll, &mut self.clients, key);
            }
            return Ok(Pass::Blocked);
        }
        let mut ctx = Ctx {
            table: &self.table,
            buf: &mut self.buf,
            plan: &self.plan,
            stats: &mut self.stats,
        };
        let pass = pump(client, &mut ctx, &window.moment(now));
        if pass == Pass::Finished {
            // Churn: one cycle done; close the connection and, once it is
            // closed, open another.
            let closed = close::begin(
                &self.poll,
                &mut self.clients,
                key,
                self.plan.close,
                &self.table,
                &mut self.buf,
                &mut self.stats,
            );
            if closed && running {
                self.open_one()?;
            }
        }
        Ok(pass)
    }
}
