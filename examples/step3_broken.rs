//! STEP 3: DELIBERATELY WRONG. IT LOSES BYTES. DO NOT COPY THIS LOOP.
//!
//! Step 3 of the learner's path (docs/learn.md): a first non-blocking
//! readiness loop, written the way copied code usually is. Nothing in the
//! library or the `echoloop` binary uses it; step 4 (`minimal.rs`) fixes it.
//!
//! What it adds: one thread serves every client. The sockets are
//! non-blocking and registered with mio's `Poll`; `poll` sleeps until some
//! socket is ready, and each ready socket is read until `WouldBlock` ("no
//! more for now"), because mio's readiness is edge-triggered: it reports a
//! change once and will not remind us of bytes left unread.
//!
//! What is wrong: the write. A non-blocking `write` takes only what fits in
//! the kernel's send buffer: part of the bytes (a short write) or none
//! (`WouldBlock`) when the client reads slower than it sends. This loop
//! writes once and forgets the rest, so bytes vanish from the middle of the
//! stream. (Retrying the write in a loop instead would spin, and blocking
//! would stall every other client.) The fix is to keep the unwritten rest,
//! in order, stop reading until it is flushed, and ask for WRITABLE
//! readiness to learn when to flush: step 4.
//!
//! Watch it go wrong: start it (`cargo run --release --example step3_broken`),
//! then send 64 MiB through it with the load generator, which checks the echo:
//! `head -c 64M /dev/urandom | cargo run --release -p echoloop-loadgen -- once --addr 127.0.0.1:7007 | wc -c`
//! prints fewer than 67108864 bytes and `loadgen: reply differs: sent 67108864 bytes, got ...`.
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::exit;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

mod listen;

const LISTENER: Token = Token(0);

fn main() {
    let addr = listen::addr("step3_broken");
    if let Err(e) = run(addr) {
        eprintln!("step3_broken: {e}");
        exit(1);
    }
}

fn run(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener =
        TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut conns = HashMap::new();
    let mut next_token = 1;
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                // Accept until WouldBlock: one event may stand for many clients.
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let token = Token(next_token);
                            next_token += 1;
                            poll.registry()
                                .register(&mut stream, token, Interest::READABLE)?;
                            conns.insert(token, stream);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e), // also crude: ends the server
                    }
                }
                continue;
            }
            let Some(stream) = conns.get_mut(&event.token()) else {
                continue;
            };
            let mut open = true;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => open = false, // the client closed its side
                    Ok(n) => match stream.write(&buf[..n]) {
                        // WRONG: `k` may be less than `n`, and the bytes
                        // buf[k..n] are dropped here without a word.
                        Ok(_k) => continue,
                        // WRONG: the socket took nothing; all n bytes are lost.
                        Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                        Err(_) => open = false,
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {} // drained for now
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => open = false,
                }
                break;
            }
            if !open {
                if let Some(mut stream) = conns.remove(&event.token()) {
                    poll.registry().deregister(&mut stream)?;
                }
            }
        }
    }
}
