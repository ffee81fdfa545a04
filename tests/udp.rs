//! UDP echo (RFC 862, the other half) in the same loop, safe to expose:
//! every size, many clients, protected source ports, the rate limit (also
//! over several loops), floods beside TCP, shutdown. Black-box over
//! loopback, every socket with a read timeout. (The command line's UDP
//! errors are in cli.rs, the load generator's `udp` mode in loadgen.rs, the
//! no-allocation-per-datagram test in alloc.rs.)

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Loopback is shared by every test of this file: a UDP flood fills the
/// kernel's per-CPU queue of loopback packets (`net.core.netdev_max_backlog`,
/// drops counted in /proc/net/softnet_stat), and any datagram sent beside
/// it may be dropped. The flood holds this lock alone; every test that
/// counts on each of its datagrams arriving holds it shared.
static LOOPBACK: RwLock<()> = RwLock::new(());

/// Loopback shared with tests that lose nothing (see [`LOOPBACK`]).
fn loopback_without_flood() -> RwLockReadGuard<'static, ()> {
    LOOPBACK.read().unwrap_or_else(|e| e.into_inner())
}

/// Loopback to ourselves, for a flood (see [`LOOPBACK`]).
fn loopback_for_a_flood() -> RwLockWriteGuard<'static, ()> {
    LOOPBACK.write().unwrap_or_else(|e| e.into_inner())
}

/// Starts echoloop with one TCP listener and the given `--udp` addresses;
/// returns it and the bound UDP addresses.
fn start_udp(udp: &[&str], extra: &[&str]) -> (Server, Vec<SocketAddr>) {
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
    for addr in udp {
        cmd.args(["--udp", addr]);
    }
    let server = Server::spawn(cmd, 1 + udp.len());
    let udp_addrs = server.addrs[1..].to_vec();
    (server, udp_addrs)
}

/// Sizes to try up to `max`: every size to 2048, then a sweep with an odd
/// step (so it crosses page and MTU-ish boundaries at different offsets),
/// then the last three sizes.
fn sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=2048).collect();
    v.extend((2049..max).step_by(997));
    v.extend([1472, 1473, 8192, 16384, 32768, 65000, max - 2, max - 1, max]);
    v.sort_unstable();
    v.dedup();
    v
}

fn check_sizes(server: SocketAddr, max: usize) -> usize {
    let c = udp_client_for(server);
    let mut pattern = Pattern::new(max as u64);
    let mut msg = vec![0u8; max];
    let mut buf = vec![0u8; max + 1];
    let sizes = sizes(max);
    for &size in &sizes {
        pattern.fill(&mut msg[..size]);
        let n = udp_round_trip(&c, server, &msg[..size], &mut buf);
        assert_eq!(n, size, "a {size}-byte datagram came back as {n} bytes");
        assert!(
            buf[..n] == msg[..size],
            "a {size}-byte datagram came back changed"
        );
    }
    // One byte more than the protocol allows cannot even be sent.
    let err = c.send_to(&vec![0u8; max + 1], server).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{err}");
    sizes.len()
}

#[test]
fn every_size_up_to_the_maximum_comes_back_exact() {
    let _loopback = loopback_without_flood();
    // A 1-byte TCP read buffer: UDP must still receive whole datagrams.
    let (server, udp) = start_udp(&["127.0.0.1:0", "[::1]:0"], &["--read-buffer", "1"]);
    assert!(udp[0].is_ipv4() && udp[1].is_ipv6());
    let v4 = check_sizes(udp[0], 65_507);
    let v6 = check_sizes(udp[1], 65_527);
    let line = server.stats_line();
    let echoed = (v4 + v6) as u64;
    assert_eq!(stat(&line, "udp_datagrams_in"), echoed, "{line}");
    assert_eq!(stat(&line, "udp_datagrams_out"), echoed, "{line}");
    assert_eq!(stat(&line, "udp_bytes_in"), stat(&line, "udp_bytes_out"));
    for name in ["udp_truncated", "udp_dropped", "udp_refused", "udp_errors"] {
        assert_eq!(stat(&line, name), 0, "{line}");
    }
    // TCP is untouched by all that.
    let mut tcp = connect(server.addr());
    ping(&mut tcp, b"tcp still echoes");
}

#[test]
fn many_clients_at_once_each_get_only_their_own_datagrams() {
    let _loopback = loopback_without_flood();
    let (server, udp) = start_udp(&["127.0.0.1:0"], &[]);
    let addr = udp[0];
    const CLIENTS: u32 = 32;
    const ROUNDS: u32 = 100;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            thread::spawn(move || {
                let c = udp_client_for(addr);
                let mut buf = [0u8; 256];
                for seq in 0..ROUNDS {
                    // Its own id and sequence, then a size that varies per client.
                    let len = 8 + ((id * 7 + seq) % 200) as usize;
                    let mut msg = vec![(id as u8).wrapping_mul(31); len];
                    msg[..4].copy_from_slice(&id.to_be_bytes());
                    msg[4..8].copy_from_slice(&seq.to_be_bytes());
                    let n = udp_round_trip(&c, addr, &msg, &mut buf);
                    assert_eq!(
                        &buf[..n],
                        &msg[..],
                        "client {id} round {seq} got another's datagram"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let line = server.stats_line();
    assert_eq!(stat(&line, "udp_datagrams_out"), (CLIENTS * ROUNDS) as u64);
}

#[test]
fn datagrams_from_protected_source_ports_get_no_answer_and_are_counted() {
    let _loopback = loopback_without_flood();
    let (server, udp) = start_udp(&["127.0.0.1:0"], &[]);
    let addr = udp[0];
    let mut protected = Vec::new();
    for port in [7u16, 9, 13, 17, 19, 37, 53, 123, 1900, 11211] {
        match UdpSocket::bind(("127.0.0.1", port)) {
            Ok(s) => protected.push((port, s)),
            Err(e) => println!("skipping source port {port}: cannot bind it here: {e}"),
        }
    }
    // Our own port on another loopback address: our reply coming back, or
    // another echo server on the same port.
    match UdpSocket::bind(("127.0.0.2", addr.port())) {
        Ok(s) => protected.push((addr.port(), s)),
        Err(e) => println!("skipping our own port from 127.0.0.2: {e}"),
    }
    if protected.is_empty() {
        println!("skipped: no protected source port could be bound (not root?)");
        return;
    }
    for (_, s) in &protected {
        s.send_to(b"loop me", addr).unwrap();
    }
    // An ordinary client's echo, sent after them, proves they were handled.
    let ordinary = udp_client_for(addr);
    let mut buf = [0u8; 64];
    assert_eq!(udp_round_trip(&ordinary, addr, b"marker", &mut buf), 6);
    // Every datagram handled (the marker may overtake a datagram sent
    // before it: loopback packets queue per CPU, and the sending thread may
    // have moved between CPUs).
    let expected_in = protected.len() as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = server.stats_line();
    while stat(&line, "udp_datagrams_in") < expected_in && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        line = server.stats_line();
    }
    // Any answer to them was sent before the server answered our signal
    // and would be waiting by now: a non-blocking read is enough.
    for (port, s) in &protected {
        s.set_nonblocking(true).unwrap();
        match s.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("source port {port} was answered: {other:?}"),
        }
    }
    assert_eq!(stat(&line, "udp_refused"), protected.len() as u64, "{line}");
    assert_eq!(stat(&line, "udp_datagrams_out"), 1, "{line}");
    assert_eq!(stat(&line, "udp_datagrams_in"), expected_in, "{line}");
}

#[test]
fn the_optional_rate_limit_caps_replies_per_source_ip() {
    let _loopback = loopback_without_flood();
    const RATE: u64 = 10;
    let (server, udp) = start_udp(&["127.0.0.1:0"], &["--udp-rate-limit", "10"]);
    let addr = udp[0];
    let started = Instant::now();
    let clients: Vec<UdpSocket> = ["127.0.0.1", "127.0.0.2"]
        .iter()
        .map(|source| UdpSocket::bind((*source, 0)).unwrap())
        .collect();
    for c in &clients {
        for i in 0..50u32 {
            c.send_to(&i.to_be_bytes(), addr).unwrap();
        }
    }
    // Wait until the server has handled all 100; its replies (a send on
    // loopback is delivered before it returns) then wait in our queues.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = server.stats_line();
    while stat(&line, "udp_datagrams_in") < 100 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        line = server.stats_line();
    }
    let elapsed = started.elapsed();
    let mut replies = Vec::new();
    for c in &clients {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let mut got = 0u64;
        while let Ok((n, from)) = c.recv_from(&mut buf) {
            assert_eq!((n, from), (4, addr));
            got += 1;
        }
        replies.push(got);
    }
    // Each source gets its burst, plus what the bucket refilled meanwhile.
    let refill = elapsed.as_millis() as u64 * RATE / 1000 + 1;
    for got in &replies {
        assert!(*got >= RATE && *got <= RATE + refill, "{replies:?} {line}");
    }
    let limited = stat(&line, "udp_rate_limited");
    assert_eq!(limited, 100 - replies.iter().sum::<u64>(), "{line}");
    assert_eq!(stat(&line, "udp_datagrams_in"), 100, "{line}");
}

#[test]
fn a_udp_flood_does_not_stop_tcp_echoes_nor_a_tcp_stream_udp_echoes() {
    let _loopback = loopback_for_a_flood();
    let (server, udp) = start_udp(&["127.0.0.1:0"], &[]);
    let addr = udp[0];
    let stop = Arc::new(AtomicBool::new(false));
    // Four flooders that never read their echoes, bounded in count and time.
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let c = udp_client_for(addr);
                let msg = [0x5a; 64];
                let give_up = Instant::now() + Duration::from_secs(30);
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && sent < 2_000_000 && Instant::now() < give_up
                {
                    if c.send_to(&msg, addr).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    // Let the flood get going, then ping over TCP through it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&server.stats_line(), "udp_datagrams_in") < 1000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let mut tcp = connect(server.addr());
    for i in 0..300u32 {
        ping(&mut tcp, format!("ping {i} through a udp flood").as_bytes());
    }
    let during = server.stats_line();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    assert!(
        stat(&during, "udp_datagrams_in") >= 1000,
        "no flood: {during}"
    );

    // The reverse: a TCP stream larger than the socket buffers does not
    // stop UDP echoes.
    let streamer = {
        let addr = server.addr();
        thread::spawn(move || echo_verified(connect(addr), 12, 64 << 20, &[65536]))
    };
    // UDP may lose a datagram while the flood's backlog is still being
    // drained (the kernel drops it at a full queue), so each ping is sent
    // again after 500 ms, up to 10 times; older echoes are skipped by
    // sequence number.
    let c = udp_client_for(addr);
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    for i in 0..200u32 {
        let mut answered = false;
        for _ in 0..10 {
            c.send_to(&i.to_be_bytes(), addr).unwrap();
            while let Ok((n, from)) = recv_some(&c, &mut buf) {
                assert_eq!((n, from), (4, addr));
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert!(seq <= i, "an echo of something never sent: {seq}");
                if seq == i {
                    answered = true;
                    break;
                }
            }
            if answered {
                break;
            }
        }
        assert!(answered, "ping {i} unanswered 10 times during a TCP stream");
    }
    assert_eq!(streamer.join().unwrap(), 64 << 20);
}

#[test]
fn shutdown_with_udp_exits_0_promptly_and_stops_answering() {
    let _loopback = loopback_without_flood();
    let (mut server, udp) = start_udp(&["127.0.0.1:0", "[::1]:0"], &["--shutdown-timeout", "30"]);
    let c = udp_client_for(udp[0]);
    let mut buf = [0u8; 16];
    for _ in 0..10 {
        udp_round_trip(&c, udp[0], b"before", &mut buf);
    }
    // A TCP client keeps the server in its shutdown until it leaves.
    let mut tcp = connect(server.addr());
    ping(&mut tcp, b"stay a while");
    let udp_sockets = |port| socket_fds(server.pid(), &["udp", "udp6"], port, None).unwrap();
    for addr in &udp {
        assert_eq!(udp_sockets(addr.port()).len(), 1, "{addr}");
    }
    server.signal(libc::SIGTERM);
    assert!(server.log_contains("shutting down"));
    // The UDP sockets close at once (datagrams have nothing to drain): the
    // server holds none any more, so nothing answers there.
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in &udp {
        while !udp_sockets(addr.port()).is_empty() {
            assert!(Instant::now() < deadline, "{addr} still open in shutdown");
            thread::sleep(Duration::from_millis(10));
        }
    }
    // The last TCP client leaves: the server exits within 10 s, not held
    // up by the UDP sockets, nor by the 30 s shutdown timeout.
    finish_sending(&tcp);
    assert!(read_to_end(&mut tcp).is_empty());
    let status = server
        .wait_for_exit(Duration::from_secs(10))
        .expect("server exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    // wait_for_exit has also waited for the stderr reader: the log is
    // complete, its last line the summary.
    let log = server.stderr();
    assert!(log.contains("shutdown complete: "), "{log}");
    let summary = |key| log_field(&log, "shutdown complete:", key);
    assert_eq!(summary("udp_datagrams_in"), Some(10), "{log}");
    assert_eq!(summary("udp_datagrams_out"), Some(10), "{log}");
    assert_eq!(summary("udp_bytes_out"), Some(60), "{log}");
}

#[test]
fn with_two_loops_each_loop_has_its_own_udp_socket_and_every_client_is_answered() {
    let _loopback = loopback_without_flood();
    let (server, udp) = start_udp(&["127.0.0.1:0"], &["--threads", "2"]);
    let addr = udp[0];
    // One `listening on udp` line, but one socket per loop on that port.
    assert_eq!(server.addrs.len(), 2, "one TCP and one UDP line");
    let sockets = socket_fds(server.pid(), &["udp"], addr.port(), None).unwrap();
    assert_eq!(sockets.len(), 2, "a UDP socket per loop");
    // Many sources (the kernel spreads them over the loops by a hash of
    // the source): each gets exactly its own datagrams back.
    const CLIENTS: u32 = 48;
    const ROUNDS: u32 = 20;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            thread::spawn(move || {
                let c = udp_client_for(addr);
                let mut buf = [0u8; 64];
                for seq in 0..ROUNDS {
                    let mut msg = [0u8; 8];
                    msg[..4].copy_from_slice(&id.to_be_bytes());
                    msg[4..].copy_from_slice(&seq.to_be_bytes());
                    let n = udp_round_trip(&c, addr, &msg, &mut buf);
                    assert_eq!(&buf[..n], &msg[..], "client {id} round {seq}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    // The counters are summed over both loops.
    let line = server.stats_line();
    let total = u64::from(CLIENTS * ROUNDS);
    assert_eq!(stat(&line, "udp_datagrams_in"), total, "{line}");
    assert_eq!(stat(&line, "udp_datagrams_out"), total, "{line}");
    assert_eq!(stat(&line, "udp_bytes_out"), total * 8, "{line}");
}

/// The bug: with `--threads 2` each loop kept its own rate-limit table, and
/// the kernel spreads one source's datagrams over the loops by source port,
/// so a source (or a forged victim address) got the limit once per loop.
#[test]
fn the_rate_limit_holds_for_a_source_spread_over_several_loops() {
    let _loopback = loopback_without_flood();
    const RATE: u64 = 20;
    const SOCKETS: usize = 200;
    let (server, udp) = start_udp(
        &["127.0.0.1:0"],
        &["--threads", "2", "--udp-rate-limit", "20"],
    );
    let addr = udp[0];
    // One source IP, many source ports: the kernel's hash spreads them
    // over both loops.
    let clients: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let started = Instant::now();
    for c in &clients {
        c.send_to(b"ping", addr).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = server.stats_line();
    while stat(&line, "udp_datagrams_in") < SOCKETS as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        line = server.stats_line();
    }
    let elapsed = started.elapsed();
    let mut replies = 0u64;
    for c in &clients {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        while c.recv_from(&mut buf).is_ok() {
            replies += 1;
        }
    }
    // One burst, plus what the bucket refilled meanwhile, over both loops.
    let refill = elapsed.as_millis() as u64 * RATE / 1000 + 1;
    assert!(
        replies >= RATE && replies <= RATE + refill,
        "{replies} replies to one source at a limit of {RATE}/s in {elapsed:?}: {line}"
    );
    assert_eq!(stat(&line, "udp_datagrams_in"), SOCKETS as u64, "{line}");
    assert_eq!(
        stat(&line, "udp_rate_limited"),
        SOCKETS as u64 - replies,
        "{line}"
    );
}
