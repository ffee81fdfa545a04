//! The learner's path (docs/learn.md): each step's claim, checked over
//! loopback so the lessons cannot silently rot, and the command line every
//! example shares. The examples are built by `example_bin` and run with
//! their output captured; every socket has timeouts and every loop a bound,
//! and nothing here asserts on how long something took.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;

/// The learner's examples that serve, and the one that connects.
const SERVERS: [&str; 4] = ["step1_blocking", "step2_threads", "step3_broken", "minimal"];
const CLIENT: &str = "client";

/// Starts a server example on a free port; it prints `listening on IP:PORT`.
fn start_example(name: &str) -> Server {
    let mut cmd = Command::new(example_bin(name));
    cmd.args(["--listen", "127.0.0.1:0"]);
    Server::spawn(cmd, 1)
}

/// Runs a short-lived example to its end (killed after `COMMAND_LIMIT`),
/// with standard input closed and both outputs captured.
fn run_example(name: &str, args: &[&str]) -> Output {
    Command::new(example_bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output_within()
        .expect("run the example")
}

#[test]
fn step1_serves_a_second_client_only_after_the_first_leaves() {
    let server = start_example("step1_blocking");
    let mut first = connect(server.addr());
    ping(&mut first, b"first");
    // The kernel completes the second connect (it waits in the backlog),
    // but the server is busy in its loop for the first client.
    let mut second = connect(server.addr());
    second.write_all(b"second").unwrap();
    let (log, events) = mpsc::channel();
    let reader_log = log.clone();
    let reader = thread::spawn(move || {
        let mut echo = [0u8; 6];
        second.read_exact(&mut echo).expect("second client's echo");
        reader_log.send("second echoed").unwrap();
        (second, echo)
    });
    // However often the first client is served meanwhile ...
    for i in 0..20 {
        ping(&mut first, format!("first {i}").as_bytes());
    }
    // ... the second one's echo can only come after the first has gone.
    log.send("first leaves").unwrap();
    drop(first);
    let (mut second, echo) = reader.join().expect("reader");
    assert_eq!(&echo, b"second");
    let order: Vec<&str> = events.try_iter().collect();
    assert_eq!(order, ["first leaves", "second echoed"]);
    ping(&mut second, b"now it is my turn");
}

#[test]
fn step2_serves_two_clients_at_once() {
    let server = start_example("step2_threads");
    let mut first = connect(server.addr());
    let mut second = connect(server.addr());
    // Interleaved round trips: step 1 would leave `second` waiting here.
    for i in 0..20 {
        ping(&mut first, format!("first {i}").as_bytes());
        ping(&mut second, format!("second {i}").as_bytes());
    }
    // And two large transfers at once come back intact.
    let addr = server.addr();
    let both: Vec<_> = (0..2u64)
        .map(|seed| thread::spawn(move || echo_verified(connect(addr), seed, 4 << 20, &[65536])))
        .collect();
    for t in both {
        assert_eq!(t.join().unwrap(), 4 << 20);
    }
}

/// The most a socket pair can hold of the echo while the client does not
/// read: the client's largest receive buffer plus the server's largest send
/// buffer (Linux autotuning limits, from /proc; 64 MiB if unreadable).
fn kernel_buffer_bound() -> usize {
    let max = |file: &str| -> Option<usize> {
        let text = std::fs::read_to_string(file).ok()?;
        text.split_whitespace().nth(2)?.parse().ok()
    };
    match (
        max("/proc/sys/net/ipv4/tcp_rmem"),
        max("/proc/sys/net/ipv4/tcp_wmem"),
    ) {
        (Some(r), Some(w)) => r + w,
        _ => 64 << 20,
    }
}

/// Sends `total` bytes (byte i is i % 251) without reading, half-closes,
/// then reads the echo to EOF: returns how many bytes came back, after
/// checking that what came back starts the way the stream did.
fn send_all_then_read(stream: &mut TcpStream, total: usize) -> usize {
    let chunk: Vec<u8> = (0..251 * 261).map(|i| (i % 251) as u8).collect(); // 65,511 B
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        stream
            .write_all(&chunk[..n])
            .expect("send (a correct server stops reading here: backpressure)");
        sent += n;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut received = 0;
    let mut buf = vec![0u8; 65536];
    let mut first = true;
    loop {
        let n = match read_some(stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the echo: {e}"),
        };
        if first {
            // The first bytes were echoed before any buffer filled up.
            assert!(buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8));
            first = false;
        }
        received += n;
    }
    received
}

#[test]
fn step3_loses_bytes_when_the_client_reads_later() {
    let server = start_example("step3_broken");
    // Until the client reads, the echo can only wait in kernel buffers;
    // step 3 drops whatever does not fit. Sizes double until one exceeds
    // those buffers' limits, where the loss is certain, not luck.
    let bound = kernel_buffer_bound();
    let mut total = 4 << 20;
    loop {
        let mut stream = connect(server.addr());
        let received = send_all_then_read(&mut stream, total);
        assert!(received <= total, "more came back than was sent");
        if received < total {
            return; // the defect the lesson is about: bytes went missing
        }
        assert!(
            total <= bound,
            "step 3 echoed all {total} bytes although the kernel can hold at most {bound}"
        );
        total *= 2;
    }
}

#[test]
fn minimal_echoes_a_large_transfer_exactly() {
    let server = start_example("minimal");
    // Larger than every kernel buffer on the way, in chunks from 1 byte to
    // 3 MB, read back concurrently and checked byte by byte.
    let sizes = [1, 7, 1000, 65536, 262_144, 3_000_000, 13];
    let total = 24 << 20;
    assert_eq!(
        echo_verified(connect(server.addr()), 11, total, &sizes),
        total
    );
    // The same client, again: the loop kept it registered correctly.
    let total = 2 << 20;
    let stream = connect(server.addr());
    assert_eq!(echo_verified(stream, 12, total, &[4096]), total);
}

#[test]
fn minimal_echoes_every_byte_over_50_connections_at_once() {
    let server = start_example("minimal");
    // Each client streams its own pattern in chunks from 1 byte to 256 KiB
    // and reads concurrently, so the loop juggles short writes, pending
    // bytes and backpressure for many connections at once.
    let clients: Vec<_> = (0..50u64)
        .map(|i| {
            let addr = server.addr();
            let total = 200_000 + i as usize;
            let sizes = [1, 1000, 100_000, 262_144];
            thread::spawn(move || (total, echo_verified(connect(addr), i, total, &sizes)))
        })
        .collect();
    for c in clients {
        let (total, echoed) = c.join().expect("client");
        assert_eq!(echoed, total);
    }
}

#[test]
fn minimal_flushes_every_byte_then_fin_after_a_half_close() {
    let server = start_example("minimal");
    // Small messages: the FIN often arrives with the data.
    for i in 0..20usize {
        let mut stream = connect(server.addr());
        let msg = vec![i as u8; 1 + i * 97];
        stream.write_all(&msg).unwrap();
        finish_sending(&stream);
        assert_eq!(read_to_end(&mut stream), msg);
    }
    // A large one, sent and half-closed before the client reads anything
    // (a writer thread, so a full window cannot deadlock the test).
    let mut stream = connect(server.addr());
    let total = 8 << 20;
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut data = vec![0u8; total];
        Pattern::new(5).fill(&mut data);
        writer.write_all(&data).unwrap();
        finish_sending(&writer);
    });
    thread::sleep(Duration::from_millis(100)); // let the window fill (not asserted)
    assert_eq!(read_verified(&stream, 5, total), total);
    sender.join().unwrap();
    assert!(read_to_end(&mut stream).is_empty(), "bytes after the echo");
}

#[test]
fn minimal_serves_200_connections_at_once() {
    let server = start_example("minimal");
    let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(server.addr())).collect();
    // Everyone sends before anyone reads: all 200 are open at once.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut msg = vec![0u8; 1000 + i];
        Pattern::new(i as u64).fill(&mut msg);
        c.write_all(&msg).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_verified(c, i as u64, 1000 + i), 1000 + i);
        finish_sending(c);
    }
    for c in &mut clients {
        assert!(read_to_end(c).is_empty());
    }
}

#[test]
fn minimal_stays_short_enough_to_read_in_one_sitting() {
    let source = include_str!("../examples/minimal.rs");
    let lines = source.lines().count();
    assert!(lines <= 170, "examples/minimal.rs has {lines} lines");
}

#[test]
fn minimal_accepts_again_after_descriptors_run_out() {
    // Under 16 descriptors minimal can hold about ten connections; thirty
    // clients connect (the kernel queues the rest) and send one byte each.
    // Accept fails with EMFILE and queued clients raise no new event, so
    // each is served only if minimal retries accepting by itself.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 16 && exec \"$0\" \"$@\"")
        .arg(example_bin("minimal"))
        .args(["--listen", "127.0.0.1:0"]);
    let server = Server::spawn(cmd, 1);
    let clients: Vec<TcpStream> = (0..30u8)
        .map(|i| {
            let mut c = connect(server.addr());
            c.write_all(&[i]).unwrap();
            c
        })
        .collect();
    // In order: each client that leaves frees a descriptor for the next.
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .expect("a queued client was never served");
        assert_eq!(b[0], i as u8);
    }
}

#[test]
fn minimal_prints_each_accept_and_close_on_stderr() {
    let server = start_example("minimal");
    let mut stream = connect(server.addr());
    ping(&mut stream, b"watch the loop");
    finish_sending(&stream);
    assert!(read_to_end(&mut stream).is_empty());
    assert!(
        server.log_contains("closed connection 0"),
        "stderr: {}",
        server.stderr()
    );
    let log = server.stderr();
    let accepted = log.find("accepted 127.0.0.1:").expect("an accept line");
    assert!(accepted < log.find("closed connection 0").unwrap(), "{log}");
}

#[test]
fn the_client_prints_exactly_what_it_sent() {
    let step1 = start_example("step1_blocking");
    let addr = step1.addr().to_string();
    let out = run_example(CLIENT, &["--addr", &addr, "hello from the test"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the test\n"
    );

    let minimal = start_example("minimal");
    let addr = minimal.addr().to_string();
    let out = run_example(CLIENT, &["--addr", &addr]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world\n");
}

#[test]
fn every_example_prints_its_usage_on_help_and_exits_0() {
    for name in SERVERS.into_iter().chain([CLIENT, "embed"]) {
        for flag in ["--help", "-h"] {
            let out = run_example(name, &[flag]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {flag}: {out:?}");
            assert!(out.stderr.is_empty(), "{name} {flag}: {out:?}");
            assert!(
                stdout.starts_with(&format!("usage: {name} ")),
                "{name} {flag}: {stdout}"
            );
            // One default port for the whole guide, as echoloop's own.
            assert!(stdout.contains("127.0.0.1:7007"), "{name} {flag}: {stdout}");
        }
    }
}

/// Runs `name` with `args` and checks that it failed the way the examples
/// promise: exit `code`, nothing on stdout, and one stderr line naming the
/// program and containing `needle` (the message, not its Debug form).
fn fails_with_one_line(name: &str, args: &[&str], code: i32, needle: &str) {
    let out = run_example(name, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{name} {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{name} {args:?}: {out:?}");
    assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr}");
    assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
    assert!(stderr.contains(needle), "{name} {args:?}: {stderr}");
    assert!(!stderr.contains("Custom {"), "Debug output: {stderr}");
}

#[test]
fn every_example_rejects_a_bad_argument_with_one_line_and_exit_2() {
    for name in SERVERS {
        fails_with_one_line(name, &["--lisen", "127.0.0.1:0"], 2, "--lisen");
        fails_with_one_line(name, &["127.0.0.1:0"], 2, "127.0.0.1:0");
        fails_with_one_line(name, &["--listen"], 2, "--listen");
        fails_with_one_line(name, &["--listen", "127.0.0.1:99999"], 2, "is not IP:PORT");
    }
    fails_with_one_line(CLIENT, &["--adr", "127.0.0.1:7007"], 2, "--adr");
    fails_with_one_line(CLIENT, &["--addr", "nowhere"], 2, "is not IP:PORT");
    fails_with_one_line(CLIENT, &["one", "two"], 2, "two");
    fails_with_one_line("embed", &["--lisen", "127.0.0.1:0"], 2, "--lisen");
}

#[test]
fn every_example_reports_a_socket_error_with_one_line_and_exit_1() {
    // A port that is taken: every server fails to listen on it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for name in SERVERS {
        fails_with_one_line(name, &["--listen", &addr], 1, &addr);
    }
    // A port nobody listens on: the client is refused.
    let (_held, refused) = refused_addr();
    let refused = refused.to_string();
    fails_with_one_line(CLIENT, &["--addr", &refused], 1, &refused);
}
