//! A host program that owns its `mio::Poll` and runs the echo service as one
//! guest among its own sources, dispatching events by token:
//!
//! * token 0: a UDP socket the host answers itself (`pong: ` + the datagram);
//! * token 1: a `Waker`, poked by a thread that reads standard input; at EOF
//!   or a line `quit` the host asks the echo server to shut down;
//! * token 2: SIGINT and SIGTERM (signal-hook-mio): the first asks the echo
//!   server to shut down, a second closes every connection at once;
//! * a periodic timer of the host's own (once a second it logs the counters
//!   at debug level), merged with the server's next deadline;
//! * tokens 3 ..: the echo server's range.
//!
//! ```text
//! cargo run --example embed -- --listen 127.0.0.1:7007 --udp 127.0.0.1:7008
//! ```
//! Prints `listening on IP:PORT` and `udp on IP:PORT`, then serves until
//! standard input closes (Ctrl-D), a line `quit`, Ctrl-C or SIGTERM, and
//! exits 0 once every connection is closed. An unknown option exits 2.

use std::io::{self, BufRead, ErrorKind};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use echoloop::{Config, EchoServer};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const ECHO_BASE: Token = Token(3);
const TICK: Duration = Duration::from_secs(1);

const USAGE: &str =
    "usage: embed [--listen IP:PORT] [--udp IP:PORT] (defaults 127.0.0.1:7007 and 127.0.0.1:0)";

/// The command line: where the echo server and the host's UDP socket listen.
struct Args {
    listen: SocketAddr,
    udp: SocketAddr,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("embed: {msg}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // Display, not Debug: the message, not `Custom { kind: ... }`.
        Err(e) => {
            eprintln!("embed: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let (tcp_addr, udp_addr) = (args.listen, args.udp);
    let mut poll = Poll::new()?;

    // The echo server is a guest: it gets a token range and a listener the
    // host bound itself (the host could set its own backlog or inherit one).
    let mut server = EchoServer::new(Config::default(), ECHO_BASE).map_err(io::Error::other)?;
    let listener =
        TcpListener::bind(tcp_addr).map_err(|e| with_context(e, "listen on", tcp_addr))?;
    let tcp = server.adopt(listener)?;
    server.register(poll.registry())?;

    // The host's own sources share the same Poll.
    let mut udp = UdpSocket::bind(udp_addr).map_err(|e| with_context(e, "bind UDP", udp_addr))?;
    poll.registry()
        .register(&mut udp, UDP, Interest::READABLE)?;
    // The host keeps its own handle: if the last one were dropped by the
    // thread, the eventfd would close and the wake-up could be lost.
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let quit = Arc::new(AtomicBool::new(false));
    spawn_stdin_watcher(waker.clone(), quit.clone());
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let mut shutting_down = false;

    println!("listening on {tcp}");
    println!("udp on {}", udp.local_addr()?);

    let mut events = Events::with_capacity(1024);
    let mut next_tick = Instant::now() + TICK;
    let mut datagram = [0u8; 1500];
    loop {
        // Sleep until the earliest of our own timer and the server's deadline.
        let now = Instant::now();
        let ours = next_tick.saturating_duration_since(now);
        let timeout = server.poll_timeout(now).map_or(ours, |t| t.min(ours));
        match poll.poll(&mut events, Some(timeout)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        let now = Instant::now();
        for event in events.iter() {
            match event.token() {
                UDP => answer_udp(&udp, &mut datagram),
                WAKER if quit.load(Ordering::SeqCst) => {
                    shutting_down = true;
                    server.begin_shutdown(poll.registry(), now);
                }
                WAKER => {}
                SIGNALS => {
                    for _ in signals.pending() {
                        if shutting_down {
                            warn!("second signal: closing every connection now");
                            server.close_all(poll.registry());
                        } else {
                            info!("signal: shutting down");
                            shutting_down = true;
                            server.begin_shutdown(poll.registry(), now);
                        }
                    }
                }
                token if server.owns(token) => server.handle_event(poll.registry(), event, now)?,
                token => debug!("event for unknown token {}", token.0),
            }
        }
        server.handle_timeout(poll.registry(), now)?;
        if now >= next_tick {
            debug!("tick: {}", server.stats());
            next_tick = now + TICK;
        }
        if server.is_finished() {
            break;
        }
    }
    println!("echo server finished: {}", server.stats());
    Ok(())
}

/// Answers every waiting datagram; the host's own protocol, not echoloop's.
fn answer_udp(udp: &UdpSocket, buf: &mut [u8]) {
    loop {
        match udp.recv_from(buf) {
            Ok((n, peer)) => {
                let mut reply = b"pong: ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                if let Err(e) = udp.send_to(&reply, peer) {
                    debug!("udp reply to {peer} failed: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("udp receive failed: {e}");
                break;
            }
        }
    }
}

/// Reads standard input on a thread of the host's (not the server's) and pokes
/// the waker when it ends or says `quit`.
fn spawn_stdin_watcher(waker: Arc<Waker>, quit: Arc<AtomicBool>) {
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line {
                Ok(line) if line.trim() == "quit" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        quit.store(true, Ordering::SeqCst);
        if let Err(e) = waker.wake() {
            eprintln!("cannot wake the loop: {e}");
        }
    });
}

/// `e` with what was being done, for a message such as "cannot listen on
/// 127.0.0.1:7007: Address already in use (os error 98)".
fn with_context(e: io::Error, doing: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {doing} {addr}: {e}"))
}

/// Parses `--listen ADDR` and `--udp ADDR` (also `--flag=ADDR`); anything
/// else is an error, so a typo such as `--lisen` is not silently ignored.
/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:7007".parse().unwrap(),
        udp: "127.0.0.1:0".parse().unwrap(),
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--listen" => &mut parsed.listen,
            "--udp" => &mut parsed.udp,
            "-h" | "--help" => return Ok(None),
            _ => return Err(format!("unknown option '{arg}'")),
        };
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value, IP:PORT"))?;
        *slot = value
            .parse()
            .map_err(|_| format!("{flag}: '{value}' is not IP:PORT"))?;
    }
    Ok(Some(parsed))
}
