//! The counters as Prometheus text exposition, format 0.0.4: one family per
//! metric with its `# HELP` and `# TYPE` lines, `_total` on counters, every
//! value the sum over the loops.
//!
//! The table below maps each field of `echoloop::Stats` to one metric (or to
//! one label value of one): a field added to `Stats` needs a row here, and
//! the test at the end fails until it has one.

use std::fmt::Write;

use echoloop::Stats;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A value as the exposition writes it.
enum Value {
    Count(u64),
    Seconds(f64),
}

/// One sample: a metric name, its optional label, its value, and the field
/// of `Stats` it shows (as `Stats`' `Display` names it).
struct Row {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    // Read by the test that every field of `Stats` has a row.
    #[cfg_attr(not(test), allow(dead_code))]
    field: &'static str,
    value: fn(&Stats) -> Value,
}

const CLOSED_HELP: &str = "Connections closed, by reason: peer (the client sent its FIN and \
                           had everything back), error (an I/O error), idle (no traffic for \
                           the idle timeout), shutdown (closed after shutdown began: after \
                           the client's FIN, or reset at the deadline).";
const UNANSWERED_HELP: &str = "UDP datagrams received and not echoed, by reason: dropped (the \
                               socket would not take the reply), refused (source port 0, ours \
                               or a reflecting service's), truncated (larger than the receive \
                               buffer), rate_limited (the source was over --udp-rate-limit).";

/// Rows of one family (same name) are consecutive.
const ROWS: &[Row] = &[
    Row {
        name: "echoloop_connections_accepted_total",
        kind: Kind::Counter,
        help: "Connections accepted and served.",
        label: None,
        field: "accepted",
        value: |s| Value::Count(s.accepted),
    },
    Row {
        name: "echoloop_connections_rejected_total",
        kind: Kind::Counter,
        help: "Connections accepted and reset at once: over the connection limit.",
        label: None,
        field: "rejected",
        value: |s| Value::Count(s.rejected),
    },
    Row {
        name: "echoloop_connections_rejected_per_source_total",
        kind: Kind::Counter,
        help: "Connections accepted and reset at once: their source was over --max-per-source.",
        label: None,
        field: "rejected_per_source",
        value: |s| Value::Count(s.rejected_per_source),
    },
    Row {
        name: "echoloop_connections_open",
        kind: Kind::Gauge,
        help: "Connections open now.",
        label: None,
        field: "active",
        value: |s| Value::Count(s.active),
    },
    Row {
        name: "echoloop_connections_closed_total",
        kind: Kind::Counter,
        help: CLOSED_HELP,
        label: Some(("reason", "peer")),
        field: "closed_by_peer",
        value: |s| Value::Count(s.closed_by_peer),
    },
    Row {
        name: "echoloop_connections_closed_total",
        kind: Kind::Counter,
        help: CLOSED_HELP,
        label: Some(("reason", "error")),
        field: "closed_by_error",
        value: |s| Value::Count(s.closed_by_error),
    },
    Row {
        name: "echoloop_connections_closed_total",
        kind: Kind::Counter,
        help: CLOSED_HELP,
        label: Some(("reason", "idle")),
        field: "closed_by_idle",
        value: |s| Value::Count(s.closed_by_idle),
    },
    Row {
        name: "echoloop_connections_closed_total",
        kind: Kind::Counter,
        help: CLOSED_HELP,
        label: Some(("reason", "shutdown")),
        field: "closed_by_shutdown",
        value: |s| Value::Count(s.closed_by_shutdown),
    },
    Row {
        name: "echoloop_connections_reset_total",
        kind: Kind::Counter,
        help: "Closes (of any reason) done with a reset because bytes remained in either \
               direction or the connection failed.",
        label: None,
        field: "closed_with_reset",
        value: |s| Value::Count(s.closed_with_reset),
    },
    Row {
        name: "echoloop_bytes_in_total",
        kind: Kind::Counter,
        help: "Bytes read from TCP clients.",
        label: None,
        field: "bytes_in",
        value: |s| Value::Count(s.bytes_in),
    },
    Row {
        name: "echoloop_bytes_out_total",
        kind: Kind::Counter,
        help: "Bytes echoed to TCP clients.",
        label: None,
        field: "bytes_out",
        value: |s| Value::Count(s.bytes_out),
    },
    Row {
        name: "echoloop_backpressure_pauses_total",
        kind: Kind::Counter,
        help: "Times a connection stopped reading because too much was pending.",
        label: None,
        field: "backpressure_pauses",
        value: |s| Value::Count(s.backpressure_pauses),
    },
    Row {
        name: "echoloop_accept_backoffs_total",
        kind: Kind::Counter,
        help: "Episodes of running out of descriptors on accept.",
        label: None,
        field: "accept_backoffs",
        value: |s| Value::Count(s.accept_backoffs),
    },
    Row {
        name: "echoloop_accept_backoff_seconds_total",
        kind: Kind::Counter,
        help: "Time spent backed off from accepting, summed over the loops.",
        label: None,
        field: "backed_off_ms",
        value: |s| Value::Seconds(s.backed_off.as_secs_f64()),
    },
    Row {
        name: "echoloop_budget_yields_total",
        kind: Kind::Counter,
        help: "Times a connection used its read budget with data left and yielded to the others.",
        label: None,
        field: "budget_yields",
        value: |s| Value::Count(s.budget_yields),
    },
    Row {
        name: "echoloop_accept_yields_total",
        kind: Kind::Counter,
        help: "Times a listener reached the per-turn accept limit with connections possibly left.",
        label: None,
        field: "accept_yields",
        value: |s| Value::Count(s.accept_yields),
    },
    Row {
        name: "echoloop_accept_errors_total",
        kind: Kind::Counter,
        help: "Accept errors that concerned one incoming connection only.",
        label: None,
        field: "accept_errors",
        value: |s| Value::Count(s.accept_errors),
    },
    Row {
        name: "echoloop_udp_datagrams_in_total",
        kind: Kind::Counter,
        help: "UDP datagrams received (echoed or not).",
        label: None,
        field: "udp_datagrams_in",
        value: |s| Value::Count(s.udp_datagrams_in),
    },
    Row {
        name: "echoloop_udp_datagrams_out_total",
        kind: Kind::Counter,
        help: "UDP datagrams echoed.",
        label: None,
        field: "udp_datagrams_out",
        value: |s| Value::Count(s.udp_datagrams_out),
    },
    Row {
        name: "echoloop_udp_bytes_in_total",
        kind: Kind::Counter,
        help: "Payload bytes of the UDP datagrams received.",
        label: None,
        field: "udp_bytes_in",
        value: |s| Value::Count(s.udp_bytes_in),
    },
    Row {
        name: "echoloop_udp_bytes_out_total",
        kind: Kind::Counter,
        help: "Payload bytes of the UDP datagrams echoed.",
        label: None,
        field: "udp_bytes_out",
        value: |s| Value::Count(s.udp_bytes_out),
    },
    Row {
        name: "echoloop_udp_datagrams_unanswered_total",
        kind: Kind::Counter,
        help: UNANSWERED_HELP,
        label: Some(("reason", "dropped")),
        field: "udp_dropped",
        value: |s| Value::Count(s.udp_dropped),
    },
    Row {
        name: "echoloop_udp_datagrams_unanswered_total",
        kind: Kind::Counter,
        help: UNANSWERED_HELP,
        label: Some(("reason", "refused")),
        field: "udp_refused",
        value: |s| Value::Count(s.udp_refused),
    },
    Row {
        name: "echoloop_udp_datagrams_unanswered_total",
        kind: Kind::Counter,
        help: UNANSWERED_HELP,
        label: Some(("reason", "truncated")),
        field: "udp_truncated",
        value: |s| Value::Count(s.udp_truncated),
    },
    Row {
        name: "echoloop_udp_datagrams_unanswered_total",
        kind: Kind::Counter,
        help: UNANSWERED_HELP,
        label: Some(("reason", "rate_limited")),
        field: "udp_rate_limited",
        value: |s| Value::Count(s.udp_rate_limited),
    },
    Row {
        name: "echoloop_udp_receive_errors_total",
        kind: Kind::Counter,
        help: "Errors receiving on a UDP socket (ICMP errors about earlier replies).",
        label: None,
        field: "udp_errors",
        value: |s| Value::Count(s.udp_errors),
    },
    Row {
        name: "echoloop_udp_yields_total",
        kind: Kind::Counter,
        help: "Times a UDP socket used its per-turn datagram budget and was revisited.",
        label: None,
        field: "udp_yields",
        value: |s| Value::Count(s.udp_yields),
    },
];

/// The exposition of `stats`, summed over `loops` loops: every row of the
/// table, then `echoloop_loops` and `echoloop_build_info`.
pub fn render(stats: &Stats, loops: usize) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let mut family = "";
    for row in ROWS {
        if row.name != family {
            family = row.name;
            header(&mut out, row.name, row.help, row.kind);
        }
        let labels = row.label.map_or(String::new(), |(key, value)| {
            format!("{{{key}=\"{value}\"}}")
        });
        // Writing to a String cannot fail.
        let _ = match (row.value)(stats) {
            Value::Count(n) => writeln!(out, "{}{labels} {n}", row.name),
            Value::Seconds(s) => writeln!(out, "{}{labels} {s}", row.name),
        };
    }
    header(
        &mut out,
        "echoloop_loops",
        "Readiness loops serving (--threads); every other value is their sum.",
        Kind::Gauge,
    );
    let _ = writeln!(out, "echoloop_loops {loops}");
    header(
        &mut out,
        "echoloop_build_info",
        "Always 1; the version of the echoloop binary in its label.",
        Kind::Gauge,
    );
    let _ = writeln!(
        out,
        "echoloop_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format writes it: `\`, `"` and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_stats_has_a_row() {
        // `Stats`' Display names every field, `key=value`.
        let shown = Stats::default().to_string();
        for key in shown
            .split_whitespace()
            .filter_map(|kv| kv.split('=').next())
        {
            assert!(
                ROWS.iter().any(|row| row.field == key),
                "Stats field {key} has no metric"
            );
        }
    }

    #[test]
    fn every_family_has_help_and_type_once_and_counters_end_in_total() {
        let text = render(&Stats::default(), 2);
        for row in ROWS {
            assert_eq!(text.matches(&format!("# HELP {} ", row.name)).count(), 1);
            assert_eq!(text.matches(&format!("# TYPE {} ", row.name)).count(), 1);
            assert_eq!(row.kind == Kind::Counter, row.name.ends_with("_total"));
        }
        assert!(text.contains("\necholoop_loops 2\n"));
        assert!(text.ends_with(&format!(
            "echoloop_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn values_are_the_stats_fields() {
        let mut stats = Stats::default();
        stats.bytes_out = 12_345;
        stats.closed_by_idle = 7;
        stats.backed_off = std::time::Duration::from_millis(1500);
        let text = render(&stats, 1);
        assert!(text.contains("\necholoop_bytes_out_total 12345\n"));
        assert!(text.contains("\necholoop_connections_closed_total{reason=\"idle\"} 7\n"));
        assert!(text.contains("\necholoop_accept_backoff_seconds_total 1.5\n"));
    }
}
