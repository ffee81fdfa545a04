//! Step 2 of the learner's path (docs/learn.md): a thread per connection.
//!
//! What it adds: every accepted client gets its own thread running step 1's
//! blocking echo, so clients no longer wait for each other. It is correct:
//! `write_all` blocks while a client does not read, which stops that thread
//! reading, so TCP flow control slows that client down and nothing is lost.
//!
//! What is still wrong: the cost. Each connection holds an OS thread: a
//! stack (2 MiB reserved, a few pages touched), kernel bookkeeping, and a
//! context switch every time its client sends. Idle clients cost as much as
//! busy ones, and thousands of them cost thousands of threads. The readiness
//! loop (steps 3 and 4) serves them all from one thread instead.
//!
//! See the cost (it is shown, not asserted): with this server running
//! (`cargo run --release --example step2_threads`), hold 5,000 idle
//! connections for a minute,
//! `cargo run --release -p echoloop-loadgen -- hold --addr 127.0.0.1:8888 -c 5000 --idle 60 --duration 1`,
//! and once it prints `held 5000` run `ps -o nlwp,rss,vsz,cmd -C step2_threads`
//! a few times: NLWP (threads) climbs to 5,001 as the server catches up with
//! its backlog. On our machine each connection cost about 10 KiB of RSS and
//! 2 MiB of address space (VSZ), its stack's reservation. Run the same
//! against `cargo run --release --example minimal -- 127.0.0.1:8888` with
//! `ps -o nlwp,rss,vsz,cmd -C minimal`: one thread and about 2 MiB of RSS
//! in all.
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn main() {
    if let Err(e) = run() {
        eprintln!("step2_threads: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let addr = std::env::args().nth(1);
    let addr = addr.as_deref().unwrap_or("127.0.0.1:8888");
    let listener =
        TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept()?;
        // The only change from step 1: serve on a new thread, accept again.
        thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("step2_threads: {peer}: {e}");
            }
        });
    }
}

/// Step 1's echo: everything the client sends, until it closes its side.
fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}
