//! Every byte comes back, in order: chunks of every size over many
//! connections, transfers larger than the kernel's buffers, half-closes,
//! urgent data, a tiny `--max-pending`, and clients that never read or
//! reset mid-transfer. Black-box over loopback sockets.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn random_chunks_over_many_connections_echo_every_byte() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let mut seeds = Pattern::new(42);
    for conns in [1usize, 7, 60, 200] {
        let mut clients = Vec::new();
        for c in 0..conns {
            let seed = seeds.next_u64();
            // Chunk sizes from 1 byte to 256 KiB, different per connection.
            let sizes: Vec<usize> = (0..16)
                .map(|i| {
                    let r = Pattern::new(seed ^ i).next_u64();
                    1 + (r as usize) % (256 * 1024)
                })
                .collect();
            // Fewer bytes per connection when there are many of them.
            let total = if conns > 50 {
                96 * 1024
            } else {
                2 * 1024 * 1024
            } + c;
            let stream = connect(addr);
            clients.push(thread::spawn(move || {
                (total, echo_verified(stream, seed, total, &sizes))
            }));
        }
        for client in clients {
            let (total, echoed) = client.join().expect("client");
            assert_eq!(echoed, total);
        }
    }
}

#[test]
fn a_64_mib_stream_comes_back_intact() {
    let server = Server::start(&[]);
    let total = 64 * 1024 * 1024;
    let got = echo_verified(connect(server.addr()), 7, total, &[65536, 1000, 200_000]);
    assert_eq!(got, total);
}

#[test]
fn half_close_delivers_every_pending_byte_then_fin() {
    let server = Server::start(&["--max-pending", "16K"]);
    let mut stream = connect(server.addr());
    let total = 3 * 1024 * 1024;
    // Send everything and half-close before reading anything, so the server
    // holds pending bytes and reads paused when the FIN arrives.
    let writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut writer = writer;
        let mut pattern = Pattern::new(99);
        let mut buf = vec![0u8; total];
        pattern.fill(&mut buf);
        writer.write_all(&buf).unwrap();
        finish_sending(&writer);
    });
    thread::sleep(Duration::from_millis(300)); // let the pipeline fill (not asserted)
    assert_eq!(read_verified(&stream, 99, total), total);
    sender.join().unwrap();
    // Then an orderly FIN, not a reset, and nothing extra.
    assert_eq!(read_to_end(&mut stream), Vec::<u8>::new());
}

#[test]
fn a_client_that_never_reads_does_not_stall_others() {
    let server = Server::start(&["--max-pending", "64K"]);
    let stalled = connect(server.addr());
    let total = 16 * 1024 * 1024;
    // This client sends far more than the socket buffers and our pending cap
    // hold, and reads nothing until the other client is done.
    let writer = stalled.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut writer = writer;
        let mut pattern = Pattern::new(5);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            pattern.fill(&mut chunk);
            writer.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
    });
    thread::sleep(Duration::from_millis(300)); // let the pipeline fill (not asserted)
    let rss_stalled = server.rss();
    let mut other = connect(server.addr());
    for i in 0..200u32 {
        ping(&mut other, format!("ping {i}").as_bytes());
    }
    // Backpressure bounds what the server holds for the stalled client.
    assert!(
        server.rss() < rss_stalled + 8 * 1024 * 1024,
        "server memory grew while a client was stalled"
    );
    assert_eq!(read_verified(&stalled, 5, total), total);
    sender.join().unwrap();
}

#[test]
fn a_reset_mid_transfer_closes_only_that_connection() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let mut healthy = connect(addr);
    ping(&mut healthy, b"before");
    for round in 0..20 {
        let victim = connect(addr);
        let socket = socket2::Socket::from(victim);
        let mut stream: std::net::TcpStream = socket.try_clone().unwrap().into();
        let chunk = vec![round as u8; 200_000];
        let _ = stream.write_all(&chunk[..100_000 + round * 1000]);
        // SO_LINGER 0: close sends RST, with echoes still in flight.
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream);
        drop(socket);
        ping(&mut healthy, format!("after {round}").as_bytes());
    }
    let big = echo_verified(healthy.try_clone().unwrap(), 3, 1 << 20, &[4096]);
    assert_eq!(big, 1 << 20);
}

/// Urgent data (`MSG_OOB`) stays in the stream: the urgent byte is echoed
/// in place, and the bytes after it are echoed without waiting for more
/// (a read stops at the urgent mark; the server must read on past it).
#[test]
fn bytes_after_an_urgent_byte_are_echoed_without_waiting() {
    let server = Server::start(&[]);
    for trial in 0..20u8 {
        // A stall shows as a read timeout: nothing more is sent to wake
        // the server up.
        let mut client = connect(server.addr());
        let before = vec![b'a' + trial % 26; 1000];
        let after = vec![b'z' - trial % 26; 1000];
        client.write_all(&before).unwrap();
        let urgent = [b'!'];
        // SAFETY: send() reads one byte from a live buffer on our own socket.
        let rc =
            unsafe { libc::send(client.as_raw_fd(), urgent.as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(rc, 1, "send MSG_OOB");
        client.write_all(&after).unwrap();
        let mut expected = before.clone();
        expected.push(b'!');
        expected.extend_from_slice(&after);
        let mut back = vec![0u8; expected.len()];
        client
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("trial {trial}: echo stalled: {e}"));
        assert!(
            back == expected,
            "trial {trial}: the urgent byte moved or vanished"
        );
    }
}

#[test]
fn a_tiny_max_pending_still_streams_megabytes() {
    let server = Server::start(&["--max-pending", "1"]);
    let total = 8 * 1024 * 1024;
    let echoed = echo_verified(connect(server.addr()), 8, total, &[65536, 1000, 300_000]);
    assert_eq!(echoed, total);
}
