//! The peer users would pick instead of echoloop: a tokio `current_thread`
//! echo server, one task per connection with a 4 KiB buffer each, written
//! the way tokio's own echo example is. With more than one thread it runs on
//! tokio's `multi_thread` runtime with that many workers (work-stealing,
//! one listener), the peer of `echoloop --threads N`. For UDP, one
//! `UdpSocket` loop on `current_thread` (receive, send back).

use std::fmt::Display;
use std::io::{self, Write};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::Runtime;

/// Binds `addr`, prints `listening on IP:PORT` on stdout (flushed) and
/// serves forever: `loadgen tokio-echo --listen ADDR [--threads N]`; one
/// thread is the `current_thread` runtime, more the `multi_thread` runtime
/// with `threads` workers.
///
/// # Errors
/// Creating the runtime, binding or writing the line failed.
pub fn serve(addr: SocketAddr, threads: usize) -> io::Result<()> {
    runtime(threads)?.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        announce(listener.local_addr()?)?;
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("tokio-echo: accept failed: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// Binds a UDP socket to `addr`, prints `listening on udp IP:PORT` on
/// stdout (flushed) and echoes every datagram to its sender forever:
/// `loadgen tokio-udp-echo --listen ADDR`. The buffer holds any datagram.
///
/// # Errors
/// Creating the runtime, binding or writing the line failed.
pub fn serve_udp(addr: SocketAddr) -> io::Result<()> {
    runtime(1)?.block_on(async move {
        let socket = UdpSocket::bind(addr).await?;
        announce(format_args!("udp {}", socket.local_addr()?))?;
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                // An ICMP error about an earlier reply: keep serving.
                Err(_) => continue,
            };
            let _ = socket.send_to(&buf[..n], from).await;
        }
    })
}

/// The `current_thread` runtime for one thread, otherwise the
/// `multi_thread` runtime with `threads` workers; I/O enabled either way.
fn runtime(threads: usize) -> io::Result<Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
    }
}

/// Prints `listening on {what}` on stdout and flushes it: scripts and tests
/// wait for this exact line.
fn announce(what: impl Display) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {what}")?;
    stdout.flush()
}
