//! The smallest complete, correct echo loop with mio and slab.
//!
//! Run it with `cargo run --example minimal -- --listen 127.0.0.1:7007`
//! and talk to it with `nc 127.0.0.1 7007`. Read it top to bottom: every
//! rule of readiness I/O it relies on is said where it is used. It leaves
//! out what the library adds (limits, timeouts, signals, fairness).
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

// Connections use their slab key as token; the listener takes a key no slab
// will ever hand out.
const LISTENER: Token = Token(usize::MAX - 1);

struct Conn {
    stream: TcpStream,
    // Bytes read but not yet written back: what a partial write left over.
    pending: Vec<u8>,
    // The peer sent FIN (a read returned 0): it will send nothing more.
    peer_done: bool,
}

fn main() -> io::Result<()> {
    let addr = listen_arg()?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?);

    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024]; // one read buffer for every connection
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                // mio is edge-triggered: one event may stand for many waiting
                // connections, and no new event comes for them. Accept until
                // WouldBlock says the backlog is empty.
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let entry = conns.vacant_entry();
                            let token = Token(entry.key());
                            if poll
                                .registry()
                                .register(&mut stream, token, Interest::READABLE)
                                .is_ok()
                            {
                                entry.insert(Conn {
                                    stream,
                                    pending: Vec::new(),
                                    peer_done: false,
                                });
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // e.g. out of descriptors: try again on the next event.
                            eprintln!("accept failed: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let key = event.token().0;
            // Events are hints: this one may be for a connection closed earlier
            // in this batch (skip it) or whose key was reused (driving the new
            // connection once more is harmless: drive() tolerates no data).
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let was_writing = !conn.pending.is_empty();
            let mut keep = drive(conn, &mut buf).unwrap_or(false);
            // WRITABLE only while something is pending; otherwise every idle
            // connection would be woken for "you can write". While pending we
            // also stop reading: that is backpressure.
            let writing = !conn.pending.is_empty();
            if keep && writing != was_writing {
                let interest = if writing {
                    Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                keep = poll
                    .registry()
                    .reregister(&mut conn.stream, event.token(), interest)
                    .is_ok();
            }
            if !keep {
                // Finished or failed: only this connection is closed.
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            } // dropping the stream closes the socket
        }
    }
}

/// Echoes all it can now. Ok(true) keeps the connection, Ok(false) ends it.
fn drive(conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    // 1. Flush what an earlier write left over, before anything newer.
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(n) => drop(conn.pending.drain(..n)),
            // The peer's window is full: wait for a WRITABLE event.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // 2. All echoed. If the peer is done, send our FIN and finish.
    if conn.peer_done {
        conn.stream.shutdown(Shutdown::Write)?;
        return Ok(false);
    }
    // 3. Read until WouldBlock: edge-triggered readiness will not remind us of
    //    bytes we leave in the socket. Each chunk is written back at once.
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => {
                // Read of 0: the peer half-closed. Deliver the rest, then FIN.
                conn.peer_done = true;
                return drive(conn, buf);
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            match conn.stream.write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if sent < n {
            // A partial write: the socket took only part. Keep the rest, in
            // order, and stop reading until it is flushed (backpressure).
            conn.pending.extend_from_slice(&buf[sent..n]);
            return Ok(true);
        }
    }
}

/// `--listen ADDR`, parsed by hand to stay dependency-free.
fn listen_arg() -> io::Result<SocketAddr> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = match args.as_slice() {
        [] => "127.0.0.1:7007",
        [flag, addr] if flag == "--listen" => addr,
        _ => {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "usage: minimal [--listen IP:PORT]",
            ))
        }
    };
    text.parse()
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, format!("'{text}' is not IP:PORT")))
}
