//! The client of Real Python's "Socket Programming in Python (Guide)", in
//! Rust: point it at any step of docs/learn.md (or at echoloop itself) and
//! it prints the echo.
//!
//! What it adds: the other end. Connect, send one message, `shutdown(Write)`
//! to say "that is all" (the server then reads 0 and can finish), read the
//! echo until the server closes too, print it and exit 0. The article's
//! client reads once, which may return only part of a longer echo; reading
//! until the server closes gets it all. A failure prints one line on stderr
//! and exits 1 (2 for a bad argument).
//!
//! What is still wrong: it trusts the server. Blocking calls without
//! timeouts wait as long as the server makes them wait.
//!
//! Watch it go wrong: run it against step 1 while another client is
//! connected there; the command in `examples/step1_blocking.rs` does that,
//! and this client waits until the other one leaves.
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::exit;

const USAGE: &str =
    "usage: client [--addr IP:PORT] [MESSAGE] (defaults 127.0.0.1:7007 and \"Hello, world\")";

/// What to send, and where.
struct Args {
    addr: SocketAddr,
    message: String,
}

fn main() {
    let args = parse_args();
    if let Err(e) = run(&args) {
        eprintln!("client: {e}");
        exit(1);
    }
}

fn run(args: &Args) -> io::Result<()> {
    let addr = args.addr;
    let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
    let mut stream = TcpStream::connect(addr).map_err(with_addr)?;
    stream.write_all(args.message.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut echo = Vec::new();
    stream.read_to_end(&mut echo)?;
    let mut stdout = io::stdout().lock();
    stdout.write_all(&echo)?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

/// `[--addr IP:PORT] [MESSAGE]`. `--help` prints the usage and exits 0; a
/// bad argument prints one line and exits 2.
fn parse_args() -> Args {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 7007));
    let mut message = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0);
            }
            "--addr" => {
                let Some(text) = args.next() else {
                    usage_error("--addr needs IP:PORT");
                };
                match text.parse() {
                    Ok(parsed) => addr = parsed,
                    Err(_) => usage_error(&format!("--addr: '{text}' is not IP:PORT")),
                }
            }
            option if option.starts_with('-') => {
                usage_error(&format!("unknown option '{option}'"));
            }
            _ if message.is_some() => usage_error(&format!("unexpected '{arg}'")),
            _ => message = Some(arg),
        }
    }
    let message = message.unwrap_or_else(|| "Hello, world".to_string());
    Args { addr, message }
}

fn usage_error(message: &str) -> ! {
    eprintln!("client: {message}; {USAGE}");
    exit(2);
}
