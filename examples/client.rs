//! The beginner article's client, in Rust: point it at any step of
//! docs/learn.md (or at echoloop itself) and it prints the echo.
//!
//! What it adds: the other end. Connect, send one message, `shutdown(Write)`
//! to say "that is all" (the server then reads 0 and can finish), read the
//! echo until the server closes too, print it and exit 0. Any error: one
//! line on stderr, exit 1.
//!
//! What is still wrong: it trusts the server. Blocking calls without
//! timeouts wait as long as the server makes them wait, which is what makes
//! step 1's flaw visible: while another client is connected to step 1
//! (`nc 127.0.0.1 8888` in another terminal), `cargo run --example client`
//! waits until that client leaves.
//!
//! Usage: `cargo run --example client -- [IP:PORT [MESSAGE]]`
//! (defaults 127.0.0.1:8888 and "Hello, world").
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    if let Err(e) = run() {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8888".to_string());
    let message = args.next().unwrap_or_else(|| "Hello, world".to_string());
    if let Some(extra) = args.next() {
        let usage = format!("unexpected '{extra}' (usage: client [IP:PORT [MESSAGE]])");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, usage));
    }
    let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
    let mut stream = TcpStream::connect(&addr).map_err(with_addr)?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut echo = Vec::new();
    stream.read_to_end(&mut echo)?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(&echo)?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}
