//! The memory bound holds under clients that never read, and resident
//! memory goes back down once they have gone.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 2000;
const PER_CLIENT: usize = 1024 * 1024;
const MAX_PENDING: usize = 64 * 1024;
/// What a connection may cost beyond its pending bytes: the allocator's
/// header and rounding, the slab entry, the idle check. Measured at
/// about 1 KiB; the bound leaves room for allocator differences.
const SLACK_PER_CONNECTION: u64 = 8 * 1024;

/// Writes up to `PER_CLIENT` bytes to each client without ever reading,
/// until each one's `send` would block. Returns the bytes accepted.
fn fill(clients: &[TcpStream]) -> usize {
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = vec![0usize; clients.len()];
    let mut blocked = vec![false; clients.len()];
    // A few passes: the server drains each socket between them.
    for _ in 0..4 {
        for (i, c) in clients.iter().enumerate() {
            while written[i] < PER_CLIENT {
                let n = chunk.len().min(PER_CLIENT - written[i]);
                match (&*c).write(&chunk[..n]) {
                    Ok(n) => written[i] += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        blocked[i] = true;
                        break;
                    }
                    Err(e) => panic!("client {i}: {e}"),
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    written.iter().sum()
}

/// RSS once it has stopped changing (two equal readings 100 ms apart).
fn settled_rss(server: &Server) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = server.rss();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = server.rss();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Raises this process's soft open-files limit to its hard limit and
/// returns how many clients fit (at most `CLIENTS`).
fn clients_that_fit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return CLIENTS;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    let usable = usize::try_from(limit.rlim_cur.saturating_sub(200)).unwrap_or(CLIENTS);
    usable.min(CLIENTS)
}

#[test]
fn pending_memory_is_bounded_and_given_back() {
    let clients_count = clients_that_fit();
    assert!(
        clients_count >= 500,
        "open-files limit too low for this test"
    );
    let server = Server::start(&["--max-pending", "64K"]);
    let idle = settled_rss(&server);
    let mut rounds = Vec::new();
    for round in 0..2 {
        let clients: Vec<TcpStream> = (0..clients_count)
            .map(|_| {
                let c = connect(server.addr());
                c.set_nonblocking(true).unwrap();
                c
            })
            .collect();
        let sent = fill(&clients);
        // The peak is measured once the server holds all it will: it has
        // answered two requests for its counters in a row with no byte read
        // between them (bounded, not asserted), so a starved server is not
        // measured before it has read.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut read = stat(&server.stats_line(), "bytes_in");
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            let now = stat(&server.stats_line(), "bytes_in");
            if now == read {
                break;
            }
            read = now;
        }
        let peak = settled_rss(&server);
        drop(clients);
        // Wait until the server has closed every connection: a fresh stats
        // line says so (the newest line in the log may still be the answer
        // to an earlier signal, from before these clients left).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = server.stats_line();
            if stat(&stats, "active") == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "connections still open: {stats}");
            thread::sleep(Duration::from_millis(100));
        }
        let after = settled_rss(&server);
        let per_connection = peak.saturating_sub(idle) / clients_count as u64;
        println!(
            "round {round}: {clients_count} clients sent {sent} bytes; RSS idle {} KiB, \
             peak {} KiB ({per_connection} B per connection), after {} KiB",
            idle / 1024,
            peak / 1024,
            after / 1024
        );
        rounds.push((peak, after, per_connection));
    }
    for (round, (_, after, per_connection)) in rounds.iter().enumerate() {
        assert!(
            *per_connection <= MAX_PENDING as u64 + SLACK_PER_CONNECTION,
            "round {round}: {per_connection} B per connection, above the documented bound"
        );
        // Back near idle: the spare-buffer pool (64 × 64 KiB) and the slab
        // may stay, the rest goes back to the system.
        assert!(
            *after <= idle + 16 * 1024 * 1024,
            "round {round}: RSS {} KiB after the clients left (idle {} KiB)",
            after / 1024,
            idle / 1024
        );
    }
}
