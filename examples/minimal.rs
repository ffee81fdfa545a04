//! Step 4 of docs/learn.md: the smallest correct echo loop (mio and slab).
//! Adds what step 3 lost: unwritten bytes wait, in order, for WRITABLE, and
//! nothing is read meanwhile (backpressure); half-close. Still wrong: it
//! trusts clients (no limits, fairness, deadlines, shutdown; src/ has them):
//! `cargo run --release -p echoloop-loadgen -- hold --addr 127.0.0.1:7007 -c 1000 --idle 600`
//! holds 1000 idle descriptors until it quits. Run: `cargo run --example minimal`.
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

// Connections use their slab key as token; the listener, a key no slab uses.
const LISTENER: Token = Token(usize::MAX - 1);

struct Conn {
    stream: TcpStream,
    // Read but not yet written back, oldest first. While any waits we read
    // nothing more (backpressure) and wait for WRITABLE instead of READABLE.
    pending: Vec<u8>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("minimal: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let mut poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let mut listener = TcpListener::bind(listen_arg()?)?;
    registry.register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?); // a line: flushed
    let (mut conns, mut events) = (Slab::<Conn>::new(), Events::with_capacity(256));
    let mut buf = vec![0u8; 64 * 1024]; // one read buffer for every connection
    let mut accept_due = false; // the listener is ready, or accept failed
    loop {
        // Out of descriptors, accept fails and the clients still queued raise
        // no event: retry after every turn (a closed connection frees one),
        // at least every 100 ms. src/server/accept.rs backs off 10 ms to 1 s instead.
        let timeout = accept_due.then(|| Duration::from_millis(100));
        match poll.poll(&mut events, timeout) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let (token, key) = (event.token(), event.token().0);
            // Events are hints: skip one for a connection closed earlier in
            // this batch (only accept reuses keys, and it runs after it).
            let Some(conn) = conns.get_mut(key) else {
                accept_due |= token == LISTENER; // a key no slab uses
                continue;
            };
            let was_writing = !conn.pending.is_empty();
            let mut keep = drive(conn, &mut buf).unwrap_or(false);
            // WRITABLE only while bytes wait, or idle sockets wake us for
            // nothing; re-register only on a change, as it costs a syscall.
            let writing = !conn.pending.is_empty();
            if keep && writing != was_writing {
                let want = match writing {
                    true => Interest::WRITABLE,
                    false => Interest::READABLE,
                };
                keep = registry.reregister(&mut conn.stream, token, want).is_ok();
            }
            if !keep {
                // Finished or failed: deregister, then drop (close) the socket.
                let _ = registry.deregister(&mut conns.remove(key).stream);
            }
        }
        if accept_due {
            accept_due = accept(&listener, &mut conns, &registry).is_err();
        }
    }
}

/// Accepts until WouldBlock: one edge may stand for many waiting clients.
fn accept(listener: &TcpListener, conns: &mut Slab<Conn>, registry: &Registry) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let entry = conns.vacant_entry();
                registry.register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                let pending = Vec::new(); // allocates nothing until used
                entry.insert(Conn { stream, pending });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e), // e.g. EMFILE: out of descriptors
        }
    }
}

/// Echoes all it can now. Ok(true) keeps the connection, Ok(false) ends it.
fn drive(conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        // 1. Write back what waits, oldest first. A non-blocking write may
        //    take part of it or none; what it did not take stays, in order.
        while !conn.pending.is_empty() {
            match conn.stream.write(&conn.pending) {
                Ok(n) => drop(conn.pending.drain(..n)),
                // The peer's window is full: wait for WRITABLE, read no more.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // 2. Read until WouldBlock: edge-triggered readiness will not remind
        //    us of bytes left in the socket. (src/ writes straight from the
        //    shared buffer and copies only what the socket did not take.)
        match conn.stream.read(buf) {
            Ok(0) => {
                // FIN: the peer sends no more but may still read. All it sent
                // is written back (we read only when nothing waits): our FIN.
                conn.stream.shutdown(Shutdown::Write)?;
                return Ok(false);
            }
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `[--listen] IP:PORT`, by default 127.0.0.1:7007.
fn listen_arg() -> io::Result<SocketAddr> {
    let args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let text = match args.strip_prefix("--listen ").unwrap_or(&args) {
        "" => "127.0.0.1:7007",
        text => text,
    };
    let usage = format!("'{text}' is not IP:PORT (usage: minimal [--listen] IP:PORT)");
    let bad = io::Error::new(ErrorKind::InvalidInput, usage);
    text.parse().map_err(|_| bad)
}
