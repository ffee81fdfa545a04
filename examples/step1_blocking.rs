//! Step 1 of the learner's path (docs/learn.md): the echo server of Real
//! Python's "Socket Programming in Python (Guide)", in Rust.
//!
//! What it adds: the echo itself, in a dozen lines. Bind, accept a
//! client, then `read` up to 1024 bytes and `write_all` them back until
//! `read` returns 0 (the client closed its side). Blocking calls: each one
//! waits until it can finish, so the code reads top to bottom like the
//! protocol. The article's server exits after its one client; this one
//! accepts the next.
//!
//! What is still wrong: one client at a time. While the loop is inside
//! `serve` for the first client, nobody calls `accept`; a second client's
//! connect succeeds (the kernel queues it in the listen backlog) but its
//! bytes are not echoed until the first client leaves.
//!
//! Watch it go wrong: with it running (`cargo run --release --example step1_blocking`),
//! hold one connection for ten seconds and start a client two seconds in:
//! `cargo run --release -p echoloop-loadgen -- hold --addr 127.0.0.1:7007 -c 1 --idle 10 --duration 0 & sleep 2; cargo run --release --example client`
//! prints `Hello, world` only when the held connection leaves, about eight
//! seconds later.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::exit;

mod listen;

fn main() {
    let addr = listen::addr("step1_blocking");
    if let Err(e) = run(addr) {
        eprintln!("step1_blocking: {e}");
        exit(1);
    }
}

fn run(addr: SocketAddr) -> io::Result<()> {
    let listener =
        TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept()?;
        // One client's error ends that client only.
        if let Err(e) = serve(stream) {
            eprintln!("step1_blocking: {peer}: {e}");
        }
    }
}

/// Echoes everything the client sends until it closes its side.
fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?; // waits until bytes (or FIN) arrive
        if n == 0 {
            return Ok(()); // the client is done; dropping `stream` closes it
        }
        stream.write_all(&buf[..n])?; // waits until the kernel took all of it
    }
}
