//! Step 4 of the learner's path (docs/learn.md): the smallest correct
//! readiness loop, with mio and a slab and nothing else.
//!
//! What it adds: what step 3 lost. Bytes a write did not take wait in
//! `Conn::pending`, in order; meanwhile the loop reads nothing more from that
//! client (backpressure) and asks for WRITABLE instead of READABLE. The
//! client's FIN is answered with ours once all is echoed (half-close).
//! Accept runs until WouldBlock and is retried when it fails. Each accept
//! and close is printed on stderr, so you can watch the loop.
//!
//! What is still wrong: it trusts its clients. Nothing bounds how many may
//! connect, how long one may stay idle or how long one may keep the loop
//! busy, and Ctrl-C drops every connection mid-echo.
//!
//! Watch it go wrong: with it running (`cargo run --release --example minimal`),
//! `cargo run --release -p echoloop-loadgen -- hold --addr 127.0.0.1:7007 -c 100 --idle 600 &`
//! holds 100 idle clients; `ls /proc/$(pgrep -x minimal)/fd | wc -l` counts
//! a descriptor for each until the load generator quits.
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::exit;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

mod listen;

// A connection's token is its slab key; the listener's, a key no slab reaches.
const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    // Read but not yet written back, oldest first. While any waits we read
    // nothing more (backpressure) and wait for WRITABLE instead of READABLE.
    pending: Vec<u8>,
}

fn main() {
    let addr = listen::addr("minimal");
    if let Err(e) = run(addr) {
        eprintln!("minimal: {e}");
        exit(1);
    }
}

fn run(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let mut listener =
        TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?); // a whole line: flushed
    let mut conns = Slab::new();
    let mut buf = vec![0u8; 64 * 1024]; // one read buffer, lent to each connection
    let mut accept_due = false; // clients may be waiting in the listener's queue
    loop {
        // Out of descriptors, accept fails, and the clients still queued
        // raise no new event: retry after every turn (a closed connection
        // frees a descriptor) and at least every 100 ms.
        let timeout = accept_due.then_some(Duration::from_millis(100));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                // Accept after the batch: a key freed in this batch must not
                // go to a new client while events for the old one follow.
                accept_due = true;
            } else {
                let key = event.token().0;
                serve(key, &mut conns, &mut buf, poll.registry());
            }
        }
        if accept_due {
            accept_due = accept(&listener, &mut conns, poll.registry()).is_err();
        }
    }
}

/// Accepts until WouldBlock: one event may stand for many waiting clients.
fn accept(listener: &TcpListener, conns: &mut Slab<Conn>, registry: &Registry) -> io::Result<()> {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e), // e.g. EMFILE: out of file descriptors
        };
        let entry = conns.vacant_entry();
        registry.register(&mut stream, Token(entry.key()), Interest::READABLE)?;
        eprintln!("accepted {peer} as connection {}", entry.key());
        let pending = Vec::new(); // allocates nothing until bytes wait
        entry.insert(Conn { stream, pending });
    }
}

/// Handles an event of connection `key`: echoes all it can, asks for the
/// readiness it needs next, and closes it once it is finished or failed.
fn serve(key: usize, conns: &mut Slab<Conn>, buf: &mut [u8], registry: &Registry) {
    // Events are hints: this one may be for a connection closed earlier in
    // this batch (its key is not reused before the batch ends).
    let Some(conn) = conns.get_mut(key) else {
        return;
    };
    let was_writing = !conn.pending.is_empty();
    let mut open = drive(conn, buf).unwrap_or(false); // an error closes this one only
    let writing = !conn.pending.is_empty();
    if open && writing != was_writing {
        // WRITABLE only while bytes wait, or every idle socket would wake the
        // loop; re-register only on a change, as each costs a system call.
        let interest = if writing {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        open = registry
            .reregister(&mut conn.stream, Token(key), interest)
            .is_ok();
    }
    if !open {
        // Deregister, then drop the socket, which closes it.
        let mut conn = conns.remove(key);
        let _ = registry.deregister(&mut conn.stream);
        eprintln!("closed connection {key}");
    }
}

/// Echoes all it can now: writes what waits, then reads until WouldBlock.
/// Ok(true) while the connection stays open, Ok(false) once it is finished.
fn drive(conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        // 1. Write back what waits, oldest first. A non-blocking write may
        //    take part of it or none; what it did not take stays, in order.
        while !conn.pending.is_empty() {
            match conn.stream.write(&conn.pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => drop(conn.pending.drain(..n)),
                // The client's window is full: wait for WRITABLE, read no more.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // 2. Read until WouldBlock: edge-triggered readiness will not remind
        //    us of bytes left in the socket.
        match conn.stream.read(buf) {
            Ok(0) => {
                // The client's FIN: it sends no more but may still read. All
                // it sent is written back (we read only when nothing waits),
                // so answer with our FIN.
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
