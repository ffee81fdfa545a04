//! The matrix's results: medians per cell, the markdown table, the
//! results.json and the chart's points.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cells::Cell;
use crate::measure::Sample;
use crate::server::{Peer, LOAD_CORE, SERVER_CORE};
use echoloop_loadgen::median;

/// One server's medians in one cell.
struct PeerMedians {
    msgs: f64,
    mb: f64,
    p99: f64,
    /// Server CPU microseconds per message.
    cpu: f64,
    idle: Option<f64>,
    sys: Option<f64>,
    steady: Option<f64>,
}

impl PeerMedians {
    fn of(results: &BTreeMap<(usize, Peer), Vec<Sample>>, cell: usize, peer: Peer) -> PeerMedians {
        let samples = results.get(&(cell, peer)).map_or(&[][..], Vec::as_slice);
        let get = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let opt = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        PeerMedians {
            msgs: get(|s| s.msgs_per_sec),
            mb: get(|s| s.mb_per_sec),
            p99: get(|s| s.p99_us),
            cpu: get(|s| s.cpu_us_per_msg),
            idle: opt(|s| s.idle_bytes_per_conn),
            sys: opt(|s| s.syscalls_per_msg),
            steady: opt(|s| s.syscalls_steady),
        }
    }
}

pub(crate) struct Report {
    pub(crate) markdown: String,
    pub(crate) json: String,
    pub(crate) chart: Vec<(usize, f64, f64)>,
}

impl Report {
    pub(crate) fn new(
        cells: &[Cell],
        results: &BTreeMap<(usize, Peer), Vec<Sample>>,
        runs: usize,
        took: Duration,
    ) -> Report {
        let mut md = format!(
            "Medians of {runs} alternating runs; server pinned to core {SERVER_CORE}, load generator to core {LOAD_CORE}.\n\n\
             | cell | echoloop msgs/s | tokio msgs/s | ratio | echoloop MB/s | tokio MB/s | echoloop p99 us | tokio p99 us | server CPU us/msg echoloop / tokio | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        let mut rows = Vec::new();
        let mut chart = Vec::new();
        let mut extras = String::new();
        // Per cell: echoloop and tokio msgs/s, then their CPU us/msg.
        let mut summary: Vec<[f64; 4]> = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let e = PeerMedians::of(results, i, Peer::Echoloop);
            let t = PeerMedians::of(results, i, Peer::Tokio);
            let errors: f64 = results
                .iter()
                .filter(|((c, _), _)| *c == i)
                .flat_map(|(_, s)| s.iter().map(|x| x.errors + x.mismatches))
                .sum();
            let ratio = e.msgs / t.msgs;
            summary.push([e.msgs, t.msgs, e.cpu, t.cpu]);
            md.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {:.3} / {:.3} | {:.0} |\n",
                cell.name, e.msgs, t.msgs, ratio, e.mb, t.mb, e.p99, t.p99, e.cpu, t.cpu, errors
            ));
            if let (Some(e), Some(t)) = (e.idle, t.idle) {
                extras.push_str(&format!(
                    "- Idle memory per connection at 19,000 connections (server RSS held − RSS empty, ÷ 19,000): echoloop {e:.1} B, tokio {t:.1} B\n"
                ));
            }
            if let (Some(es), Some(ts), Some(e), Some(t)) = (e.steady, t.steady, e.sys, t.sys) {
                extras.push_str(&format!(
                    "- Server syscalls per echoed message, {} (perf raw_syscalls:sys_enter): \
                     steady state (set-up and tear-down of the 100 connections subtracted) echoloop {es:.3}, tokio {ts:.3}; \
                     whole window echoloop {e:.3}, tokio {t:.3}\n",
                    cell.name
                ));
            }
            if let Some(conns) = cell.chart_conns {
                chart.push((conns, e.msgs, t.msgs));
            }
            let r3 = |v: Option<f64>| v.map(|v| round(v, 3));
            rows.push(serde_json::json!({
                "cell": cell.name,
                "echoloop_msgs_per_sec": round(e.msgs, 1),
                "tokio_msgs_per_sec": round(t.msgs, 1),
                "ratio": round(ratio, 3),
                "echoloop_mb_per_sec": round(e.mb, 2),
                "tokio_mb_per_sec": round(t.mb, 2),
                "echoloop_p99_us": round(e.p99, 0),
                "tokio_p99_us": round(t.p99, 0),
                "errors": errors,
                "echoloop_cpu_us_per_msg": round(e.cpu, 4),
                "tokio_cpu_us_per_msg": round(t.cpu, 4),
                "echoloop_idle_bytes_per_conn": r3(e.idle),
                "tokio_idle_bytes_per_conn": r3(t.idle),
                "echoloop_syscalls_per_msg": r3(e.sys),
                "tokio_syscalls_per_msg": r3(t.sys),
                "echoloop_syscalls_steady": r3(e.steady),
                "tokio_syscalls_steady": r3(t.steady),
            }));
        }
        let json = serde_json::json!({
            "cells": rows,
            "runs": runs,
            "seconds": took.as_secs(),
        });
        md.push('\n');
        md.push_str(&extras);
        md.push_str(&scaling_table(cells, &summary));
        Report {
            markdown: md,
            json: serde_json::to_string(&json).unwrap_or_default(),
            chart,
        }
    }
}

/// The scaling table: each multi-loop cell beside the pinned 1-loop cell it
/// scales (when that ran too); empty without multi-loop cells.
pub(crate) fn scaling_table(cells: &[Cell], summary: &[[f64; 4]]) -> String {
    let mut bases: Vec<&str> = Vec::new();
    for base in cells.iter().filter_map(|c| c.scales) {
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    if bases.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nScaling: N loops (`echoloop --threads N`) against tokio `multi_thread` with N workers, \
         the load generator with N threads, nothing pinned; the 1-loop rows are the pinned cells \
         above (server on core 0, load generator on core 1). On a 2-core machine the N-loop rows \
         share both cores between servers and load generator, so they show what the layout costs \
         there, not what more cores would give.\n\n\
         | workload | loops | echoloop msgs/s | tokio msgs/s | ratio | server CPU us/msg echoloop / tokio |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for base in bases {
        let rows = cells
            .iter()
            .zip(summary)
            .filter(|(c, _)| (c.threads == 1 && c.name == base) || c.scales == Some(base));
        for (cell, [e, t, ec, tc]) in rows {
            md.push_str(&format!(
                "| {base} | {} | {e:.0} | {t:.0} | {:.2} | {ec:.3} / {tc:.3} |\n",
                cell.threads,
                e / t
            ));
        }
    }
    md
}

/// `v` rounded to `digits` decimals, for a results file people read; NaN
/// and infinities stay as they are (serde_json writes them as null).
fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}
