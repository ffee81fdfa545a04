//! What a run measured, as a short table or one JSON line.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Close;

/// What a run measured. Its JSON line has these fields plus the rates
/// (`msgs_per_sec`, `mb_per_sec`; `conns_per_sec` for churn; open loop,
/// `sent_per_sec`, the rate achieved: messages of the window sent by its
/// end, per second).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: String,
    /// Connections: per run (pingpong, stream), held (hold) or working in
    /// parallel (churn).
    pub conns: usize,
    /// Connections that carried traffic (hold: `-k`; otherwise all).
    pub active: usize,
    pub size: usize,
    pub depth: usize,
    pub seconds: f64,
    /// Messages echoed completely during the measured window (open loop:
    /// the messages scheduled in the window that were echoed, drain
    /// included).
    pub msgs: u64,
    /// Echoed bytes received during the measured window.
    pub bytes: u64,
    /// Latency percentiles and maximum, in microseconds: closed loop from
    /// writing a message, open loop from its scheduled time, to the echo of
    /// its last byte.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    /// Latencies measured; 0 means the percentiles above mean nothing.
    pub latency_samples: u64,
    /// Connections that failed (refused, reset, early EOF).
    pub errors: u64,
    /// Echoed bytes that differed from what was sent.
    pub mismatches: u64,
    /// Connections open at the peak; in `hold`, those verified by echo.
    pub held: usize,
    /// `hold`: connections whose probe failed (reset, EOF, wrong bytes).
    pub probes_failed: usize,
    /// `hold`: connections whose probe was not echoed in time.
    pub probes_timed_out: usize,
    /// Messages echoed over the whole traffic phase (warm-up and drain
    /// included), to divide a server's syscall count by.
    pub total_msgs: u64,
    /// How the connections were closed.
    pub close: Close,
    /// Under `--close fin`: closes that ended in a reset or timed out.
    pub unclean_closes: u64,
    /// Open loop (`--rate`): the asked messages per second over all
    /// connections; null for a closed loop.
    pub rate: Option<f64>,
    /// Open loop: messages scheduled in the measured window.
    pub scheduled: u64,
    /// `udp` mode: datagrams sent during the measured window. Open loop:
    /// messages scheduled in the window and sent before it ended. 0
    /// otherwise.
    pub sent: u64,
    /// Open loop: the longest a message was sent after its scheduled time
    /// (the generator's own delays, a full socket buffer, or a ping-pong
    /// message waiting for the echo ahead of it), in microseconds.
    pub max_send_lag_us: u64,
    /// Open loop: fewer than 99 % of the messages scheduled in the window
    /// were sent by its end, so the asked rate was not offered: the
    /// generator fell behind (or, pingpong, the echoes came too slowly to
    /// send what waited). Latency still counts from the schedule.
    pub behind_schedule: bool,
    /// `udp` mode: datagrams not echoed within `--timeout` (0 otherwise).
    pub lost: u64,
    /// `udp` mode: echoes that arrived after their datagram was counted lost.
    pub late: u64,
    /// Load generator threads whose results were merged.
    pub threads: usize,
}

impl Report {
    /// Fills the latency fields (percentiles, max, samples) from `h`.
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        self.p50_us = h.value_at_quantile(0.5);
        self.p90_us = h.value_at_quantile(0.9);
        self.p99_us = h.value_at_quantile(0.99);
        self.p999_us = h.value_at_quantile(0.999);
        self.p9999_us = h.value_at_quantile(0.9999);
        self.max_us = h.max();
        self.latency_samples = h.len();
    }

    /// Open loop: sets `behind_schedule` from what was scheduled and sent
    /// (one message of slack for a handful of messages).
    pub fn judge_schedule(&mut self) {
        self.behind_schedule =
            self.rate.is_some() && (self.sent as f64) < self.scheduled as f64 * 0.99 - 1.0;
    }

    /// Open loop: messages sent per second.
    pub fn sent_per_sec(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.seconds.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// Churn: connections per second, each a complete verified cycle.
    pub fn conns_per_sec(&self) -> Option<f64> {
        (self.mode == "churn").then(|| self.msgs_per_sec())
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(flatten)]
            report: &'a Report,
            msgs_per_sec: f64,
            mb_per_sec: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            sent_per_sec: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            conns_per_sec: Option<f64>,
        }
        let line = Line {
            report: self,
            msgs_per_sec: self.msgs_per_sec(),
            mb_per_sec: self.mb_per_sec(),
            sent_per_sec: self.rate.map(|_| self.sent_per_sec()),
            conns_per_sec: self.conns_per_sec(),
        };
        serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A short human-readable table.
    pub fn to_text(&self) -> String {
        let shape = match self.mode.as_str() {
            "pingpong" | "pipelined" => format!(
                "conns {} size {} depth {}",
                self.conns, self.size, self.depth
            ),
            "churn" => format!("parallel {} size {}", self.conns, self.size),
            "udp" => format!("sockets {} size {}", self.conns, self.size),
            "hold" => format!(
                "conns {} active {} size {}",
                self.conns, self.active, self.size
            ),
            _ => format!("conns {} size {}", self.conns, self.size),
        };
        let latency = if self.latency_samples == 0 {
            "latency: no samples".to_string()
        } else {
            format!(
                "latency {}p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, p99.99 {} us, \
                 max {} us ({} samples)",
                if self.rate.is_some() {
                    "from schedule "
                } else {
                    ""
                },
                self.p50_us,
                self.p90_us,
                self.p99_us,
                self.p999_us,
                self.p9999_us,
                self.max_us,
                self.latency_samples
            )
        };
        let close = match self.close {
            _ if self.mode == "udp" => format!(
                "sent {}, echoed {}, lost {} ({} echoed late)",
                self.sent, self.msgs, self.lost, self.late
            ),
            Close::Fin => format!("closed with fin, {} unclean", self.unclean_closes),
            Close::Reset => "closed with reset".to_string(),
        };
        let shape = match self.threads {
            1 => shape,
            n => format!("{shape}, {n} threads"),
        };
        let rate = match self.conns_per_sec() {
            Some(conns) => format!(
                "{conns:.0} conns/s, {:.1} MB/s over {:.2} s ({} connections)",
                self.mb_per_sec(),
                self.seconds,
                self.msgs
            ),
            None => format!(
                "{:.0} msgs/s, {:.1} MB/s over {:.2} s ({} msgs)",
                self.msgs_per_sec(),
                self.mb_per_sec(),
                self.seconds,
                self.msgs
            ),
        };
        let schedule = match self.rate {
            Some(rate) => format!(
                "\n  open loop at {rate:.0} msgs/s: {} scheduled, {} sent in the window \
                 (achieved {:.0} msgs/s), max send lag {} us{}",
                self.scheduled,
                self.sent,
                self.sent_per_sec(),
                self.max_send_lag_us,
                if self.behind_schedule {
                    "\n  BEHIND SCHEDULE: the asked rate was not offered; see --help"
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        format!(
            "mode {} {shape}\n  {rate}{schedule}\n  {latency}\n  errors {}, mismatches {}, held {}, {close}",
            self.mode, self.errors, self.mismatches, self.held
        )
    }
}
