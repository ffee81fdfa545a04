//! The traffic phase of a share: every active client pumps its messages
//! until the measured window ends, then what is in flight drains.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::client::connect_outcome;
use crate::close;
use crate::part::Part;
use crate::plan::Kind;
use crate::progress::Phase;
use crate::pump::{issue_initial, pump, Pass};

/// How long what is in flight at the end of the window may take to come
/// back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the traffic phase stands.
struct Window {
    measure_from: Instant,
    measure_until: Instant,
    /// Past the warm-up: the counters and histogram count.
    measuring: bool,
    /// Before the end of the window: clients issue new messages.
    running: bool,
}

impl Part {
    /// Runs the traffic: warm-up, the measured window, then the drain.
    pub(crate) fn traffic(&mut self) -> io::Result<()> {
        let mut ready = self.start_traffic();
        let measure_from = Instant::now() + self.plan.warmup;
        let mut window = Window {
            measure_from,
            measure_until: measure_from + self.plan.duration,
            measuring: false,
            running: true,
        };
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
                    .any(|(_, c)| c.active && c.connected && c.rx < c.tx);
                if !outstanding || now >= drain_deadline {
                    return Ok(());
                }
            }
            let wait = if ready.is_empty() {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            self.poll.poll(&mut self.events, Some(wait))?;
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
            self.plan.meter.add_done(self.stats.total_msgs - shown);
            shown = self.stats.total_msgs;
        }
    }

    /// Gives the active clients their first goal and first pass; returns
    /// the clients that have more to read.
    fn start_traffic(&mut self) -> VecDeque<usize> {
        let now = Instant::now();
        let plan = &self.plan;
        // In `hold`, only connections verified by echo carry traffic.
        let held = self
            .clients
            .iter_mut()
            .filter(|(_, c)| c.verified || plan.kind != Kind::Hold);
        let mut keys = Vec::with_capacity(plan.active);
        for (key, client) in held.take(plan.active) {
            client.active = true;
            client.started = now;
            issue_initial(client, plan, now);
            keys.push(key);
        }
        self.plan.active = keys.len();
        // Clients whose pass stopped with bytes left to read: no new edge
        // may come for them, so they get another pass next turn.
        let mut ready = VecDeque::new();
        for key in keys {
            let client = &mut self.clients[key];
            let pass = pump(
                client,
                &self.table,
                &mut self.buf,
                &self.plan,
                &mut self.stats,
                false,
                true,
                now,
            );
            if pass == Pass::Yielded {
                ready.push_back(key);
            }
        }
        ready
    }

    /// Starts measuring after the warm-up and stops issuing at the end of
    /// the window.
    fn advance(&mut self, window: &mut Window, now: Instant) {
        if !window.measuring && now >= window.measure_from {
            window.measuring = true;
            self.stats.hist.reset();
            self.stats.msgs = 0;
            self.stats.bytes = 0;
        }
        if window.running && now >= window.measure_until {
            window.running = false;
            self.plan.meter.set_phase(Phase::Closing);
            // Stop issuing; let what is in flight come back and be verified.
            if self.plan.kind == Kind::Stream {
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
        let record = window.measuring && running;
        let pass = pump(
            client,
            &self.table,
            &mut self.buf,
            &self.plan,
            &mut self.stats,
            record,
            running,
            now,
        );
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
