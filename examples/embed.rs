//! A host program that owns its `mio::Poll` and runs the echo service as one
//! guest among its own sources, dispatching events by token:
//!
//! * token 0: a UDP socket the host answers itself (`pong: ` + the datagram);
//! * token 1: a `Waker`, poked by a thread that reads standard input; at EOF
//!   or a line `quit` the host asks the echo server to shut down;
//! * a periodic timer of the host's own (once a second it logs the counters
//!   at debug level), merged with the server's next deadline;
//! * tokens 2 ..: the echo server's range.
//!
//! ```text
//! cargo run --example embed -- --listen 127.0.0.1:7007 --udp 127.0.0.1:7008
//! ```
//! Prints `listening on IP:PORT` and `udp on IP:PORT`, then serves until
//! standard input closes (Ctrl-D) and exits once every connection is closed.

use std::io::{self, BufRead, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};

use echoloop::{Config, EchoServer};

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const ECHO_BASE: Token = Token(2);
const TICK: Duration = Duration::from_secs(1);

fn main() -> io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let tcp_addr = arg("--listen", "127.0.0.1:7007")?;
    let udp_addr = arg("--udp", "127.0.0.1:0")?;

    let mut poll = Poll::new()?;

    // The echo server is a guest: it gets a token range and a listener the
    // host bound itself (the host could set its own backlog or inherit one).
    let mut server = EchoServer::new(Config::default(), ECHO_BASE);
    let tcp = server.adopt(TcpListener::bind(tcp_addr)?)?;
    server.register(poll.registry())?;

    // The host's own sources share the same Poll.
    let mut udp = UdpSocket::bind(udp_addr)?;
    poll.registry()
        .register(&mut udp, UDP, Interest::READABLE)?;
    // The host keeps its own handle: if the last one were dropped by the
    // thread, the eventfd would close and the wake-up could be lost.
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let quit = Arc::new(AtomicBool::new(false));
    spawn_stdin_watcher(waker.clone(), quit.clone());

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
                WAKER if quit.load(Ordering::SeqCst) => server.begin_shutdown(poll.registry(), now),
                WAKER => {}
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

/// The value after `flag`, or `default`.
fn arg(flag: &str, default: &str) -> io::Result<SocketAddr> {
    let args: Vec<String> = std::env::args().collect();
    let text = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str);
    text.parse().map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("{flag}: '{text}' is not IP:PORT"),
        )
    })
}
