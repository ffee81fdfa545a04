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
//! See the cost: with it running (`cargo run --release --example step2_threads`),
//! hold 1,000 idle connections, opened in ten batches of 100 a second apart
//! (one burst of 1,000 would overflow the kernel's queue of connections
//! waiting for `accept`, which std's `TcpListener` makes 128 long):
//! `for i in $(seq 10); do cargo run -q --release -p echoloop-loadgen -- hold --addr 127.0.0.1:7007 -c 100 --idle 60 --duration 0 & sleep 1; done`
//! Then `grep -E 'Threads|VmRSS|VmSize' /proc/$(pgrep -x step2_threads)/status`
//! shows 1,001 threads, and per connection about 10 KiB more resident
//! memory and 3 MiB more address space.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::thread;

mod listen;

fn main() {
    let addr = listen::addr("step2_threads");
    if let Err(e) = run(addr) {
        eprintln!("step2_threads: {e}");
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
