//! Embedding: echo servers as guests in a host's `mio::Poll`, and
//! examples/embed run as a process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};

use common::*;
use echoloop::{Config, EchoServer, Stats, TOKEN_SPAN};

const HOST_UDP: Token = Token(0);
const HOST_WAKER: Token = Token(1);

struct HostReport {
    a: Stats,
    b: Stats,
    datagrams: usize,
    wakes: usize,
}

/// The host's own sources beside the server: a UDP socket (its address)
/// and a waker, registered under the host's tokens.
fn host_sources(poll: &Poll) -> (UdpSocket, SocketAddr, Arc<Waker>) {
    let mut udp = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    poll.registry()
        .register(&mut udp, HOST_UDP, Interest::READABLE)
        .unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), HOST_WAKER).unwrap());
    (udp, udp_addr, waker)
}

#[test]
fn two_servers_share_one_poll_and_host_events_are_untouched() {
    let mut poll = Poll::new().unwrap();
    let mut a = EchoServer::new(Config::default(), Token(2)).unwrap();
    let mut b = EchoServer::new(Config::default(), Token(2 + TOKEN_SPAN)).unwrap();
    assert!(a.owns(Token(1 + TOKEN_SPAN)) && !a.owns(Token(2 + TOKEN_SPAN)));
    assert!(b.owns(Token(2 + TOKEN_SPAN)) && !b.owns(Token(1 + TOKEN_SPAN)));
    let addr_a = a.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // B adopts a listener the host bound itself, with its own backlog.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr_b = b.adopt(TcpListener::from_std(socket.into())).unwrap();
    a.register(poll.registry()).unwrap();
    b.register(poll.registry()).unwrap();

    let (udp, udp_addr, waker) = host_sources(&poll);
    let stop = Arc::new(AtomicBool::new(false));

    let host_stop = stop.clone();
    let host = thread::spawn(move || {
        let mut events = Events::with_capacity(256);
        let mut report = HostReport {
            a: Stats::default(),
            b: Stats::default(),
            datagrams: 0,
            wakes: 0,
        };
        let give_up = Instant::now() + Duration::from_secs(60);
        while Instant::now() < give_up {
            let now = Instant::now();
            let timeout = [
                a.poll_timeout(now),
                b.poll_timeout(now),
                Some(Duration::from_millis(100)),
            ]
            .into_iter()
            .flatten()
            .min();
            poll_turn(&mut poll, &mut events, timeout);
            let now = Instant::now();
            for event in events.iter() {
                let token = event.token();
                assert!(
                    !(a.owns(token) && b.owns(token)),
                    "token {} owned twice",
                    token.0
                );
                match token {
                    HOST_UDP => {
                        let mut buf = [0u8; 64];
                        while udp.recv_from(&mut buf).is_ok() {
                            report.datagrams += 1;
                        }
                    }
                    HOST_WAKER => {
                        report.wakes += 1;
                        if host_stop.load(Ordering::SeqCst) {
                            a.begin_shutdown(poll.registry(), now);
                            b.begin_shutdown(poll.registry(), now);
                        }
                    }
                    t if a.owns(t) => a.handle_event(poll.registry(), event, now).unwrap(),
                    t if b.owns(t) => b.handle_event(poll.registry(), event, now).unwrap(),
                    t => panic!("event for a token nobody owns: {}", t.0),
                }
            }
            a.handle_timeout(poll.registry(), now).unwrap();
            b.handle_timeout(poll.registry(), now).unwrap();
            if a.is_finished() && b.is_finished() {
                break;
            }
        }
        report.a = a.stats();
        report.b = b.stats();
        report
    });

    // Clients of both servers at once, and datagrams for the host.
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let addr = if i % 2 == 0 { addr_a } else { addr_b };
        clients.push(thread::spawn(move || {
            echo_verified(connect(addr), i, 300_000, &[1000, 70_000])
        }));
    }
    let sender = StdUdp::bind("127.0.0.1:0").unwrap();
    for i in 0..5u8 {
        sender.send_to(&[i; 10], udp_addr).unwrap();
    }
    for c in clients {
        assert_eq!(c.join().unwrap(), 300_000);
    }
    // Ask the host to stop: the servers shut down without any signal.
    stop.store(true, Ordering::SeqCst);
    waker.wake().unwrap();
    let report = host.join().expect("host loop");
    assert_eq!(report.a.accepted, 4);
    assert_eq!(report.b.accepted, 4);
    assert_eq!(report.a.bytes_in, 4 * 300_000);
    assert_eq!(report.b.bytes_out, 4 * 300_000);
    assert_eq!(report.a.closed_by_error + report.b.closed_by_error, 0);
    assert_eq!(
        report.datagrams, 5,
        "the host's own datagrams all reached the host"
    );
    assert_eq!(report.wakes, 1);
}

#[test]
fn handle_events_serves_the_batch_and_leaves_the_hosts_events() {
    // One server and two host sources in one Poll; the host hands each
    // whole batch to `handle_events` and serves only what it reports left.
    let mut poll = Poll::new().unwrap();
    let mut server = EchoServer::new(Config::default(), Token(2)).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.register(poll.registry()).unwrap();
    let (udp, udp_addr, waker) = host_sources(&poll);

    const CLIENTS: u64 = 4;
    const TOTAL: usize = 200_000;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| thread::spawn(move || echo_verified(connect(addr), i, TOTAL, &[64, 5000, 70_000])))
        .collect();
    let sender = StdUdp::bind("127.0.0.1:0").unwrap();
    for i in 0..5u8 {
        sender.send_to(&[i; 10], udp_addr).unwrap();
    }
    waker.wake().unwrap();

    let mut events = Events::with_capacity(256);
    let (mut datagrams, mut wakes, mut reported) = (0, 0, 0);
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        let done = server.stats().bytes_out == CLIENTS * TOTAL as u64;
        if done && datagrams == 5 && wakes == 1 {
            break;
        }
        let timeout = [
            server.poll_timeout(Instant::now()),
            Some(Duration::from_millis(50)),
        ]
        .into_iter()
        .flatten()
        .min();
        poll_turn(&mut poll, &mut events, timeout);
        let now = Instant::now();
        let left = server.handle_events(poll.registry(), &events, now).unwrap();
        let foreign = events.iter().filter(|e| !server.owns(e.token())).count();
        assert_eq!(left, foreign, "the count of events left to the host");
        reported += left;
        for event in events.iter().filter(|e| !server.owns(e.token())) {
            match event.token() {
                HOST_UDP => {
                    let mut buf = [0u8; 64];
                    while udp.recv_from(&mut buf).is_ok() {
                        datagrams += 1;
                    }
                }
                HOST_WAKER => wakes += 1,
                t => panic!("event for a token nobody owns: {}", t.0),
            }
        }
        server.handle_timeout(poll.registry(), now).unwrap();
    }
    for c in clients {
        assert_eq!(c.join().unwrap(), TOTAL);
    }
    assert_eq!(
        datagrams, 5,
        "the host's own datagrams all reached the host"
    );
    assert_eq!(wakes, 1);
    assert!(reported >= 2, "the UDP and waker events were reported");
    let stats = server.stats();
    assert_eq!(stats.accepted, CLIENTS);
    assert_eq!(stats.bytes_in, CLIENTS * TOTAL as u64);
    assert_eq!(stats.closed_by_error, 0);
}

#[test]
fn counters_follow_what_happened() {
    let mut poll = Poll::new().unwrap();
    let mut config = Config::default();
    config.max_connections = 2;
    let (mut server, addr) = embedded_server(&poll, config);
    let mut events = Events::with_capacity(64);
    let mut turn = |server: &mut EchoServer, poll: &mut Poll| {
        host_turn(server, poll, &mut events, Duration::from_millis(50));
    };
    let mut one = connect(addr);
    let two = connect(addr);
    let three = connect(addr);
    one.write_all(b"12345").unwrap();
    drop(two);
    for _ in 0..20 {
        turn(&mut server, &mut poll);
    }
    let stats = server.stats();
    assert_eq!(stats.accepted + stats.rejected, 3);
    assert_eq!(stats.bytes_in, 5);
    assert_eq!(stats.bytes_out, 5);
    assert_eq!(
        stats.active,
        stats.accepted - stats.closed_by_peer - stats.closed_by_error
    );
    three
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    // Whichever of two/three was over the limit was closed at once.
    assert_eq!(stats.rejected, 1);
    let before = server.stats().closed_by_peer;
    one.shutdown(std::net::Shutdown::Write).unwrap();
    for _ in 0..10 {
        turn(&mut server, &mut poll);
    }
    assert_eq!(server.stats().closed_by_peer, before + 1);
}

#[test]
fn the_embed_example_serves_echo_and_its_own_udp() {
    let (mut child, tcp, udp, rx) = start_embed_example();
    let next_line = || {
        rx.recv_timeout(IO_TIMEOUT)
            .expect("a line from the example")
    };
    assert_eq!(
        echo_verified(connect(tcp), 1, 1 << 20, &[4096, 65536]),
        1 << 20
    );
    let socket = StdUdp::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.send_to(b"hi", udp).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = recv_some(&socket, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong: hi");
    // `quit` on stdin wakes the host, which shuts the server down.
    child.stdin.take().unwrap().write_all(b"quit\n").unwrap();
    let last = next_line();
    assert!(last.starts_with("echo server finished"), "{last}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_embed_example_rejects_bad_arguments_with_exit_2() {
    for args in [
        &["--lisen", "127.0.0.1:0"][..],
        &["--listen"][..],
        &["--listen", "not-an-address"][..],
    ] {
        let out = Command::new(example_bin("embed"))
            .args(args)
            .stdin(Stdio::null())
            .output_within()
            .expect("run examples/embed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
        assert!(!stderr.contains("Custom {"), "Debug output: {stderr}");
        // Nothing was bound.
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn the_embed_example_shuts_down_gracefully_on_sigterm() {
    // Standard input stays open (piped, never written), so only the signal
    // can end the example.
    let (mut child, tcp, _udp, rx) = start_embed_example();
    let next_line = || {
        rx.recv_timeout(IO_TIMEOUT)
            .expect("a line from the example")
    };
    let mut client = connect(tcp);
    ping(&mut client, b"before the signal");
    // Sent before the signal, read back after it: shutdown keeps every echo
    // of what was sent, whether the server read it before or after.
    client.write_all(b"in flight").unwrap();
    // SAFETY: kill() only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    finish_sending(&client);
    assert_eq!(read_to_end(&mut client), b"in flight");
    let last = next_line();
    assert!(last.starts_with("echo server finished"), "{last}");
    assert!(last.contains(" closed_by_error=0 "), "{last}");
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the example did not exit");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// Runs examples/embed on ports 0 with standard input piped (kept open) and
/// returns it with its TCP and UDP addresses, read from its first two lines,
/// and the channel of its further stdout lines.
fn start_embed_example() -> (
    std::process::Child,
    SocketAddr,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(example_bin("embed"))
        .args(["--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run examples/embed");
    // Lines arrive through a channel so a silent child fails the test, not hangs it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_addr = |prefix: &str| -> SocketAddr {
        let line = rx
            .recv_timeout(IO_TIMEOUT)
            .expect("a line from the example");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .parse()
            .unwrap()
    };
    let tcp = next_addr("listening on ");
    let udp = next_addr("udp on ");
    (child, tcp, udp, rx)
}
