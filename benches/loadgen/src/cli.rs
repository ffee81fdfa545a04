//! The command line: one subcommand per mode, each listing only the
//! options that apply to it. Option groups shared by several modes are
//! flattened into each.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Parser, Subcommand};

use crate::Close;

/// Command line of the load generator.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Verifying load generator for TCP echo servers, and the tokio peer server",
    long_about = "Verifying load generator for TCP echo servers, and the tokio peer server.\n\n\
        Every load mode checks every echoed byte, prints a report (or one JSON \
        line with --json) and exits 0 on a clean run, 1 on errors or mismatches, \
        2 on a usage error. TCP connections end with an orderly FIN by default \
        (--close fin); the report says which close was used. The open-files \
        soft limit is raised to the hard limit at start. A progress bar is \
        drawn on stderr when it is a terminal and --json is not given."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: ModeArgs,
}

/// Where the load goes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// Echo server address, as IP:PORT.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7007", value_parser = parse_addr)]
    pub(crate) addr: SocketAddr,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ...
    /// (each has its own ephemeral ports). Ignored for other targets.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) sources: u8,
}

/// How long the traffic runs, and the report's format.
#[derive(Debug, Clone, Args)]
pub(crate) struct Timing {
    /// Seconds to measure (after the warm-up).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Seconds of traffic before measuring starts.
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Print the result as one JSON line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How TCP connections are opened, spread over threads and closed.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connections {
    /// Most connects in progress at once while opening connections.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) max_connecting: usize,
    /// How connections end: at the end of the run (and, for churn, after
    /// each cycle).
    ///
    /// `fin` waits up to 5 s for the server's EOF, then resets; the report
    /// counts closes that ended in a reset or timed out as unclean. `fin`
    /// leaves this side of each connection in TIME_WAIT for a minute;
    /// `reset` leaves nothing, for many back-to-back runs.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Close::Fin)]
    pub(crate) close: Close,
    /// Threads, each with its own mio loop and its share of the
    /// connections (1 to 256); results are merged and every byte is still
    /// verified. Use it to drive a multi-loop server without becoming the
    /// bottleneck.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: u16,
}

/// The open-loop option of the modes that take it.
#[derive(Debug, Clone, Args)]
pub(crate) struct OpenLoop {
    /// Open loop: R messages per second over all connections, as wrk2
    /// sends them. Each connection sends on its own fixed schedule (R/N per
    /// second, phases spread evenly) and latency is measured from each
    /// message's scheduled time to the echo of its last byte, recorded in
    /// an HdrHistogram as is: a stalled server shows up in the
    /// percentiles instead of slowing the load down (no coordinated
    /// omission). Messages scheduled in the warm-up are sent but not
    /// counted; those still unsent when the window ends are not sent. The
    /// report gives the messages scheduled and sent in the window, the
    /// achieved rate, the longest send lag, and BEHIND SCHEDULE
    /// ("behind_schedule": true) when fewer than 99 % of them were sent by
    /// the end of the window: the asked rate was not offered.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
}

/// The subcommands: the load modes, `once`, and the tokio peer servers.
#[derive(Debug, Subcommand)]
pub(crate) enum ModeArgs {
    /// N connections each keep D messages of S bytes in flight.
    ///
    /// Closed loop (default): a connection sends its next message when an
    /// echo completes; latency is from writing a message to receiving its
    /// last echoed byte. With --rate (open loop), messages are due on a
    /// fixed schedule; a connection with D messages in flight holds the
    /// next one back until an echo completes, and that wait counts in its
    /// latency (the queue a slow server builds is the point).
    Pingpong {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long, short = 'c', default_value_t = 100)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
        /// Messages in flight per connection (pipeline depth); with --rate,
        /// the most in flight before a due message waits.
        #[arg(long, short = 'd', default_value_t = 1)]
        depth: usize,
        #[command(flatten)]
        open_loop: OpenLoop,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        connections: Connections,
    },
    /// N connections pipeline messages of S bytes: D in flight each, or,
    /// with --rate, each sent at its scheduled time whatever is in flight.
    ///
    /// Closed loop (default) it is `pingpong -d D` with D = 16. With --rate
    /// (open loop) a connection never waits for an echo before sending:
    /// latency is from each message's scheduled time to the echo of its
    /// last byte, and -d does not apply.
    Pipelined {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long, short = 'c', default_value_t = 100)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
        /// Closed loop: messages in flight per connection.
        #[arg(long, short = 'd', default_value_t = 16)]
        depth: usize,
        #[command(flatten)]
        open_loop: OpenLoop,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        connections: Connections,
    },
    /// N connections send and receive continuously in S-byte writes.
    ///
    /// Each connection keeps at least 1 MiB in flight. Latency is sampled
    /// one write per connection at a time: from the write to the echo of
    /// its last byte, so it includes the wait behind what is in flight.
    Stream {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long, short = 'c', default_value_t = 10)]
        conns: usize,
        /// Bytes per write.
        #[arg(long, short = 's', default_value_t = 65536)]
        size: usize,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        connections: Connections,
    },
    /// P clients each connect, echo S bytes, close, and repeat.
    ///
    /// Connections close as --close says. Reports connections per second
    /// (each one a complete cycle, every byte verified). Latency is from
    /// the start of the connect to the last echoed byte.
    Churn {
        #[command(flatten)]
        target: Target,
        /// Clients working in parallel.
        #[arg(long, short = 'p', default_value_t = 50)]
        parallel: usize,
        /// Bytes echoed per connection.
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        connections: Connections,
    },
    /// Open N connections and keep them; then K of them do ping-pong.
    ///
    /// A connection counts as held only once a probe (one message of -s
    /// bytes) sent on it has been echoed back, every byte verified: a
    /// connect can complete in the kernel while the server never accepts
    /// it. Once every probe is back, failed or --probe-timeout has passed,
    /// prints `held N (verified by echo), F failed, T timed out`, stays
    /// idle for --idle seconds, then K held connections do ping-pong for
    /// --duration. Failed or timed-out probes make the exit status 1. The
    /// report shows N as `conns`, the verified count as `held` and K as
    /// `active`.
    Hold {
        #[command(flatten)]
        target: Target,
        /// Connections to open and hold.
        #[arg(long, short = 'c', default_value_t = 10_000)]
        conns: usize,
        /// Connections that do ping-pong once all are open.
        #[arg(long, short = 'k', default_value_t = 0)]
        active: usize,
        /// Seconds to stay idle once all are open.
        #[arg(long, value_name = "SECS", default_value_t = 1.0)]
        idle: f64,
        /// Message size in bytes, for the probes and the active connections.
        #[arg(long, short = 's', default_value_t = 64)]
        size: usize,
        /// Seconds to wait for the probes' echoes once all are open.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        probe_timeout: f64,
        #[command(flatten)]
        timing: Timing,
        #[command(flatten)]
        connections: Connections,
    },
    /// Send one message, print the reply, exit 1 if it differs.
    ///
    /// The message is the argument, or standard input. Standard output gets
    /// exactly the bytes echoed (`once ... | wc -c` counts them); only when
    /// it is a terminal is a newline added after a reply that does not end
    /// with one. The comparison is of the bytes exactly as sent and
    /// received. The connection ends with a FIN once the message is sent.
    Once {
        /// Echo server address, as IP:PORT.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7007", value_parser = parse_addr)]
        addr: SocketAddr,
        /// The message; standard input when absent.
        message: Option<String>,
    },
    /// N UDP sockets ping-pong S-byte datagrams, one in flight each.
    ///
    /// Every echoed byte is checked (each socket sends its own sequence of
    /// patterns, so a corrupted, truncated or misdelivered datagram is a
    /// mismatch). A datagram not echoed within --timeout is counted lost
    /// and the socket sends the next one (no retransmission). Reports sent,
    /// echoed, lost, msgs/s and latency; exits 1 on mismatches, socket
    /// errors or if nothing was echoed. Runs on one thread.
    Udp {
        #[command(flatten)]
        target: Target,
        /// UDP sockets.
        #[arg(long, short = 'c', default_value_t = 100)]
        conns: usize,
        /// Datagram size in bytes (0 to 65527; 65507 over IPv4).
        #[arg(long, short = 's', default_value_t = 64, value_parser = parse_datagram_size)]
        size: usize,
        /// Milliseconds to wait for an echo before counting it lost.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        timeout: u64,
        /// With --rate, a socket sends each datagram at its scheduled time,
        /// or as soon as the one before it is echoed or lost if that is
        /// later; datagrams in flight when the window ends are not waited
        /// for.
        #[command(flatten)]
        open_loop: OpenLoop,
        #[command(flatten)]
        timing: Timing,
    },
    /// Run the tokio peer UDP echo server (what echoloop --udp is compared with).
    ///
    /// A tokio current_thread loop on one UdpSocket: receive a datagram,
    /// send it back. Prints `listening on udp IP:PORT` once bound.
    TokioUdpEcho {
        /// Address to bind, as IP:PORT. Port 0 picks a free port.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7008", value_parser = parse_addr)]
        listen: SocketAddr,
    },
    /// Run the tokio peer echo server (what echoloop is compared with).
    ///
    /// A tokio current_thread echo server, one task per connection; with
    /// --threads N above 1, tokio's multi_thread runtime with N workers (the
    /// peer of `echoloop --threads N`). Prints `listening on IP:PORT` on
    /// stdout once bound and serves until killed.
    TokioEcho {
        /// Address to listen on, as IP:PORT. Port 0 picks a free port.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7008", value_parser = parse_addr)]
        listen: SocketAddr,
        /// Worker threads: 1 is the current_thread runtime, more the
        /// multi_thread runtime with that many workers (up to 256).
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
    },
}

/// A rate in messages per second: a positive number.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{text}' is not a rate: give messages per second, above 0"
        )),
    }
}

/// A datagram size, 0 to the IPv6 maximum.
fn parse_datagram_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n <= crate::udp::MAX_UDP_PAYLOAD => Ok(n),
        _ => Err(format!(
            "'{text}' is not a datagram size: give 0 to {} (65507 over IPv4)",
            crate::udp::MAX_UDP_PAYLOAD
        )),
    }
}

/// An IP:PORT argument, with a message that says what is wrong.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // "IP:PORT" whose IP parses but whose port does not: say which part.
    if let Some((ip, port)) = text.rsplit_once(':') {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<IpAddr>().is_ok() && port.parse::<u64>().is_ok() {
            return Err(format!("port {port} is out of range (0 to 65535)"));
        }
    }
    Err(format!(
        "'{text}' is not IP:PORT (examples: 127.0.0.1:7007, [::1]:7007)"
    ))
}
