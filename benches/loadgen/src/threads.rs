//! `--threads N`: one plan split over N threads, each with its own mio loop
//! and its own share of the connections (and so its own verification of
//! every byte), then the shares' results merged into one report.
//!
//! The shares start their traffic together: each opens its connections,
//! then waits at a [`Gate`] for the others, so every share measures the
//! same window (to within the few milliseconds the gate takes). In `hold`
//! mode the first share prints `held N` with the total once all are open.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::hold::Held;
use crate::part::run_part;
use crate::plan::Plan;
use crate::Report;

/// How long a share waits for the others to open their connections.
const GATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the shares wait for each other after connecting.
pub(crate) struct Gate {
    shares: usize,
    arrived: AtomicUsize,
    verified: AtomicUsize,
    failed: AtomicUsize,
    timed_out: AtomicUsize,
    // A share failed: nobody waits for it.
    aborted: AtomicBool,
}

impl Gate {
    /// Adds this share's `held` connections and waits for every share;
    /// returns the connections held over all of them.
    ///
    /// # Errors
    /// Another share failed, or they did not all arrive in time.
    pub(crate) fn arrive(&self, held: Held) -> io::Result<Held> {
        self.verified.fetch_add(held.verified, Ordering::SeqCst);
        self.failed.fetch_add(held.failed, Ordering::SeqCst);
        self.timed_out.fetch_add(held.timed_out, Ordering::SeqCst);
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + GATE_TIMEOUT;
        while self.arrived.load(Ordering::SeqCst) < self.shares {
            if self.aborted.load(Ordering::SeqCst) {
                return Err(io::Error::other("another load thread failed"));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("load threads did not all connect in time"));
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(Held {
            verified: self.verified.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            timed_out: self.timed_out.load(Ordering::SeqCst),
        })
    }
}

/// Runs `plan` on `plan.threads` threads (fewer if there are fewer
/// connections) and merges their reports.
pub(crate) fn run(plan: Plan) -> io::Result<Report> {
    let shares = plan.threads.clamp(1, plan.conns.max(1));
    if shares == 1 {
        return run_part(plan, None).map(|(report, _)| report);
    }
    let gate = Gate {
        shares,
        arrived: AtomicUsize::new(0),
        verified: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        timed_out: AtomicUsize::new(0),
        aborted: AtomicBool::new(false),
    };
    let results: Vec<io::Result<(Report, Histogram<u64>)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..shares)
            .map(|part| {
                let mut share = plan.clone();
                share.part = part;
                share.conns = split(plan.conns, shares, part);
                share.first = (0..part).map(|p| split(plan.conns, shares, p)).sum();
                share.active = split(plan.active, shares, part).min(share.conns);
                let gate = &gate;
                scope.spawn(move || {
                    let result = run_part(share, Some(gate));
                    if result.is_err() {
                        gate.aborted.store(true, Ordering::SeqCst);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a load thread panicked")))
            })
            .collect()
    });
    let mut merged: Option<(Report, Histogram<u64>)> = None;
    for result in results {
        let (report, hist) = result?;
        match merged.as_mut() {
            None => merged = Some((report, hist)),
            Some((total, all)) => {
                all.add(&hist).map_err(io::Error::other)?;
                total.conns += report.conns;
                total.active += report.active;
                total.msgs += report.msgs;
                total.bytes += report.bytes;
                total.errors += report.errors;
                total.mismatches += report.mismatches;
                total.held += report.held;
                total.probes_failed += report.probes_failed;
                total.probes_timed_out += report.probes_timed_out;
                total.total_msgs += report.total_msgs;
                total.unclean_closes += report.unclean_closes;
                total.scheduled += report.scheduled;
                total.sent += report.sent;
                total.max_send_lag_us = total.max_send_lag_us.max(report.max_send_lag_us);
            }
        }
    }
    let (mut report, hist) = merged.ok_or_else(|| io::Error::other("no load thread ran"))?;
    report.threads = shares;
    report.set_latency(&hist);
    report.judge_schedule();
    Ok(report)
}

/// Share `part` of `total` split over `shares` as evenly as whole numbers go.
fn split(total: usize, shares: usize, part: usize) -> usize {
    total / shares + usize::from(part < total % shares)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn shares_add_up_to_the_total() {
        for total in [0, 1, 7, 1000, 19_000] {
            for shares in 1..=5 {
                let sum: usize = (0..shares).map(|p| split(total, shares, p)).sum();
                assert_eq!(sum, total);
            }
        }
    }
}
