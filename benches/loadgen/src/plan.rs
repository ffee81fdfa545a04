//! What one run does: the mode, its sizes and timings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{Connections, Target, Timing};
use crate::progress::Meter;
use crate::Close;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PingPong,
    Pipelined,
    Stream,
    Churn,
    Hold,
}

impl Kind {
    /// The mode's name on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::PingPong => "pingpong",
            Kind::Pipelined => "pipelined",
            Kind::Stream => "stream",
            Kind::Churn => "churn",
            Kind::Hold => "hold",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) conns: usize,
    pub(crate) size: usize,
    pub(crate) depth: usize,
    pub(crate) active: usize,
    pub(crate) idle: Duration,
    // `hold`: how long to wait for the probes' echoes.
    pub(crate) probe_timeout: Duration,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) sources: u8,
    pub(crate) max_connecting: usize,
    pub(crate) close: Close,
    // Open loop: messages per second over all the shares' connections.
    pub(crate) rate: Option<f64>,
    // Threads to split the connections over, which share this is, and the
    // index of its first connection among all the shares' (`total`).
    pub(crate) threads: usize,
    pub(crate) part: usize,
    pub(crate) first: usize,
    pub(crate) total: usize,
    // What the progress bar shows, summed over the shares.
    pub(crate) meter: Arc<Meter>,
}

impl Plan {
    pub(crate) fn new(
        kind: Kind,
        target: &Target,
        timing: &Timing,
        connections: &Connections,
    ) -> Plan {
        Plan {
            kind,
            addr: target.addr,
            conns: 1,
            size: 1,
            depth: 1,
            active: 1,
            idle: Duration::ZERO,
            probe_timeout: Duration::ZERO,
            warmup: Duration::from_secs_f64(timing.warmup.max(0.0)),
            duration: Duration::from_secs_f64(timing.duration.max(0.01)),
            sources: target.sources.max(1),
            max_connecting: connections.max_connecting.max(1),
            close: connections.close,
            threads: usize::from(connections.threads),
            rate: None,
            part: 0,
            first: 0,
            total: 1,
            meter: Arc::default(),
        }
    }

    /// The plan with `conns` connections (all active) of `size`-byte
    /// messages, `depth` in flight.
    pub(crate) fn sized(self, conns: usize, size: usize, depth: usize) -> Plan {
        Plan {
            conns: conns.max(1),
            total: conns.max(1),
            active: conns.max(1),
            size: size.max(1),
            depth,
            ..self
        }
    }
}
