//! `--threads N` runs N shared-nothing loops behind one port per address.
//! Black-box over loopback: the spread, shutdown of every loop, the second
//! signal, a failed listener, port 0 with both families, `--threads auto`
//! and the summed counters. (The exact connection limit over several loops
//! is in limits.rs, the command line's errors in cli.rs.)
#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Polls the stats until `done` holds for the log (bounded).
fn stats_until(server: &Server, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.request_stats();
        if done(&log) || Instant::now() > deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_loops_serve_many_connections_and_both_hold_some() {
    let server = Server::start(&["--threads", "2"]);
    let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(server.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        ping(c, format!("hello {i}").as_bytes());
    }
    let log = stats_until(&server, |log| {
        log_field(log, "stats:", "active") == Some(200)
    });
    assert_eq!(log_field(&log, "stats:", "active"), Some(200), "{log}");
    assert_eq!(log_field(&log, "stats:", "accepted"), Some(200), "{log}");
    let loops = per_loop(&log).expect("active_per_loop in the stats line");
    assert_eq!(loops.len(), 2, "{log}");
    assert_eq!(loops.iter().sum::<u64>(), 200, "{log}");
    // Hashing spreads 200 connections unevenly but never all to one loop
    // (chance 2^-199).
    assert!(loops.iter().all(|&n| n > 0), "one loop got nothing: {log}");
    // Everyone is still served.
    for (i, c) in clients.iter_mut().enumerate() {
        ping(c, format!("again {i}").as_bytes());
    }
}

#[test]
fn shutdown_drains_every_loop_then_fin_and_exit_0() {
    const CLIENTS: usize = 8;
    const TOTAL: usize = 4 << 20; // far more than the kernel's buffers
    for round in 0..2 {
        let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "30"]);
        let addr = server.addr();
        // Idle connections beside the transfers, so both loops surely have
        // some to drain (all 72 in one loop: chance 2^-71).
        let mut idle: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
        for c in &mut idle {
            ping(c, b"idle");
        }
        let halfway = Arc::new(AtomicUsize::new(0));
        // Each client sends half its stream, then waits for the signal to
        // be sent before the rest: every transfer spans the signal.
        let signalled = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let halfway = halfway.clone();
                let signalled = signalled.clone();
                thread::spawn(move || {
                    let stream = connect(addr);
                    let seed = (round * 100 + i) as u64;
                    let mut writer = stream.try_clone().unwrap();
                    let sender = thread::spawn(move || {
                        let mut pattern = Pattern::new(seed);
                        let mut buf = vec![0u8; 100_000];
                        let mut sent = 0;
                        while sent < TOTAL {
                            if sent >= TOTAL / 2 {
                                let give_up = Instant::now() + Duration::from_secs(30);
                                while !signalled.load(Ordering::SeqCst) {
                                    assert!(Instant::now() < give_up, "no signal");
                                    thread::sleep(Duration::from_millis(1));
                                }
                            }
                            let end = if sent < TOTAL / 2 { TOTAL / 2 } else { TOTAL };
                            let n = buf.len().min(end - sent);
                            pattern.fill(&mut buf[..n]);
                            writer.write_all(&buf[..n]).expect("send");
                            sent += n;
                        }
                    });
                    let got = read_verified(&stream, seed, TOTAL / 2);
                    halfway.fetch_add(1, Ordering::SeqCst);
                    // The rest of the stream continues its pattern.
                    let mut rest = Pattern::new(seed);
                    let mut skip = vec![0u8; got];
                    rest.fill(&mut skip);
                    let mut expected = vec![0u8; 64 * 1024];
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut received = got;
                    let mut reader = &stream;
                    while received < TOTAL {
                        let want = buf.len().min(TOTAL - received);
                        let n = read_some(&mut reader, &mut buf[..want]).expect("read echo");
                        assert!(n > 0, "EOF after {received} of {TOTAL} bytes");
                        rest.fill(&mut expected[..n]);
                        assert!(buf[..n] == expected[..n], "mismatch near {received}");
                        received += n;
                    }
                    sender.join().unwrap();
                    finish_sending(&stream);
                    // Every byte came back: now an orderly FIN, not a reset.
                    let mut tail = [0u8; 16];
                    match read_some(&mut reader, &mut tail) {
                        Ok(0) => {}
                        other => panic!("expected FIN after the echo, got {other:?}"),
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while halfway.load(Ordering::SeqCst) < CLIENTS {
            assert!(Instant::now() < deadline, "transfers did not start");
            thread::sleep(Duration::from_millis(5));
        }
        let log = server.request_stats();
        let loops = per_loop(&log).unwrap();
        assert_eq!(loops.iter().sum::<u64>(), (CLIENTS + 64) as u64, "{log}");
        assert!(loops.iter().all(|&n| n > 0), "a loop had nothing: {log}");
        server.signal(libc::SIGTERM);
        signalled.store(true, Ordering::SeqCst);
        // Idle clients that finish get an orderly FIN in every loop.
        for c in &mut idle {
            finish_sending(c);
            let mut buf = [0u8; 8];
            match read_some(c, &mut buf) {
                Ok(0) => {}
                other => panic!("expected FIN on an idle connection, got {other:?}"),
            }
        }
        drop(idle);
        for c in clients {
            c.join().expect("client");
        }
        let status = server
            .wait_for_exit(Duration::from_secs(20))
            .expect("server exits after draining");
        assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
        let log = server.stderr();
        assert_eq!(
            log_field(&log, "shutdown complete:", "closed_with_reset"),
            Some(0),
            "{log}"
        );
        assert_eq!(
            log_field(&log, "shutdown complete:", "bytes_out"),
            Some((CLIENTS * TOTAL + 64 * 4) as u64),
            "{log}"
        );
    }
}

#[test]
fn a_second_signal_closes_every_loop_at_once() {
    let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "60"]);
    let mut clients: Vec<TcpStream> = (0..40).map(|_| connect(server.addr())).collect();
    for c in &mut clients {
        ping(c, b"here");
    }
    let log = stats_until(&server, |log| {
        log_field(log, "stats:", "active") == Some(40)
    });
    assert!(per_loop(&log).unwrap().iter().all(|&n| n > 0), "{log}");
    // The clients never send FIN, so the first signal alone would wait for
    // them up to the 60 s deadline.
    server.signal(libc::SIGTERM);
    assert!(server.log_contains("shutting down"));
    // Still serving every one of them after the first signal.
    for c in &mut clients {
        ping(c, b"still here");
    }
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(10))
        .expect("second signal ends it");
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
    for c in &mut clients {
        assert!(sees_close(c), "a connection survived the second signal");
    }
    let log = server.stderr();
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_by_shutdown"),
        Some(40),
        "{log}"
    );
}

#[test]
fn port_zero_works_with_several_loops_and_both_families() {
    let ipv6 = TcpListener::bind("[::1]:0").is_ok();
    let mut args = vec!["--threads", "3", "--listen", "127.0.0.1:0"];
    if ipv6 {
        args.extend(["--listen", "[::1]:0"]);
    }
    let server = Server::start(&args);
    assert_eq!(server.addrs.len(), if ipv6 { 2 } else { 1 });
    let mut clients = Vec::new();
    for addr in &server.addrs {
        assert_ne!(addr.port(), 0);
        // The port is really ours: nobody else may bind it now.
        assert!(TcpListener::bind(addr).is_err(), "{addr} is not taken");
        for i in 0..60 {
            let mut c = connect(*addr);
            ping(&mut c, format!("{addr} {i}").as_bytes());
            clients.push(c);
        }
    }
    let n = clients.len() as u64;
    let log = stats_until(&server, |log| log_field(log, "stats:", "active") == Some(n));
    assert_eq!(log_field(&log, "stats:", "accepted"), Some(n), "{log}");
    assert_eq!(per_loop(&log).unwrap().len(), 3, "{log}");
}

#[test]
fn the_counters_add_up_over_the_loops() {
    let mut server = Server::start(&["--threads", "2", "--stats-interval", "0.2"]);
    let mut expected_bytes = 0u64;
    for i in 0..50usize {
        let mut c = connect(server.addr());
        let msg = vec![i as u8; 100 + i * 37];
        ping(&mut c, &msg);
        expected_bytes += msg.len() as u64;
        finish_sending(&c);
        assert!(read_to_end(&mut c).is_empty());
    }
    let log = stats_until(&server, |log| {
        log_field(log, "stats:", "closed_by_peer") == Some(50)
    });
    for (key, want) in [
        ("accepted", 50),
        ("active", 0),
        ("closed_by_peer", 50),
        ("bytes_in", expected_bytes),
        ("bytes_out", expected_bytes),
    ] {
        assert_eq!(log_field(&log, "stats:", key), Some(want), "{key}: {log}");
    }
    assert_eq!(per_loop(&log).unwrap(), vec![0, 0], "{log}");
    // --stats-interval logs the same one summed line, with no signal.
    let before = server.stderr().matches("stats:").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stderr().matches("stats:").count() < before + 2 {
        assert!(Instant::now() < deadline, "no periodic stats line");
        thread::sleep(Duration::from_millis(20));
    }
    let log = server.stderr();
    assert_eq!(
        log_field(&log, "stats:", "bytes_out"),
        Some(expected_bytes),
        "{log}"
    );
    assert_eq!(per_loop(&log).unwrap(), vec![0, 0], "{log}");
    server.signal(libc::SIGINT);
    let status = server.wait_for_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
    let log = server.stderr();
    assert_eq!(
        log_field(&log, "shutdown complete:", "bytes_out"),
        Some(expected_bytes),
        "{log}"
    );
    assert_eq!(
        log_field(&log, "shutdown complete:", "loops"),
        Some(2),
        "{log}"
    );
}

#[test]
fn threads_0_and_auto_use_the_available_cores() {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    for value in ["0", "auto"] {
        let mut server = Server::start(&["--threads", value]);
        let mut c = connect(server.addr());
        ping(&mut c, b"auto");
        let said = format!("(--threads auto: {cores} available core");
        assert!(server.log_contains(&said), "{}", server.stderr());
        let log = server.request_stats();
        if cores > 1 {
            assert_eq!(per_loop(&log).map(|l| l.len()), Some(cores), "{log}");
        }
        server.signal(libc::SIGTERM);
        drop(c);
        let status = server.wait_for_exit(Duration::from_secs(10)).expect("exit");
        assert_eq!(status.code(), Some(0));
    }
}

/// Reads to EOF, checking every byte against `seed`'s pattern; the count.
fn read_until_eof_verified(mut stream: &TcpStream, seed: u64) -> usize {
    let mut pattern = Pattern::new(seed);
    let (mut buf, mut expected) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut received = 0;
    loop {
        let n = read_some(&mut stream, &mut buf).expect("read echo");
        if n == 0 {
            return received;
        }
        pattern.fill(&mut expected[..n]);
        assert!(buf[..n] == expected[..n], "mismatch after {received} bytes");
        received += n;
    }
}

/// Makes one of the server's listening sockets on `port` fail the way a
/// real listener failure would: duplicates it into this process
/// (`pidfd_getfd`, Linux 5.6+, needs ptrace rights over the server) and
/// shuts it down for reading, so the loop that owns it gets `EINVAL` from
/// `accept`. Err (with the reason) where the kernel or rights do not allow.
fn break_a_listener(pid: i32, port: u16) -> Result<(), String> {
    let fd = *listening_fds(pid, port)
        .map_err(|e| e.to_string())?
        .first()
        .ok_or("no listening socket found")?;
    // SAFETY: plain syscalls on descriptors we own or name by number; the
    // duplicate is closed before returning.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
        }
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        let err = std::io::Error::last_os_error();
        libc::close(pidfd);
        if dup < 0 {
            return Err(format!("pidfd_getfd: {err}"));
        }
        let rc = libc::shutdown(dup, libc::SHUT_RD);
        let err = std::io::Error::last_os_error();
        libc::close(dup);
        if rc != 0 {
            return Err(format!("shutdown: {err}"));
        }
    }
    Ok(())
}

#[test]
fn a_failed_listener_shuts_every_loop_down_and_exits_1() {
    // The deadline is far: every client here closes, so none may be reset,
    // however slow the machine.
    let mut server = Server::start(&["--threads", "2", "--shutdown-timeout", "60"]);
    let addr = server.addr();
    // Transfers larger than the kernel's buffers are under way on both
    // loops when one loop's listener fails: each must still be echoed in
    // full, then end with our FIN.
    let clients: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
    let log = stats_until(&server, |log| {
        log_field(log, "stats:", "active") == Some(16)
    });
    assert_eq!(log_field(&log, "stats:", "active"), Some(16), "{log}");
    // Each client streams until told to stop, a while after the failure,
    // then sends FIN; it starts reading its echo only then, so the server
    // holds pending bytes on every connection across the failure.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let (stop, reading) = (stop.clone(), stop.clone());
            let seed = 500 + i as u64;
            let writer = stream.try_clone().unwrap();
            let sender = thread::spawn(move || {
                let (mut writer, mut pattern) = (writer, Pattern::new(seed));
                let (mut chunk, mut sent) = (vec![0u8; 65536], 0usize);
                while !stop.load(Ordering::Relaxed) {
                    pattern.fill(&mut chunk);
                    writer.write_all(&chunk).expect("send");
                    sent += chunk.len();
                }
                finish_sending(&writer);
                sent
            });
            thread::spawn(move || {
                while !reading.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(5));
                }
                let echoed = read_until_eof_verified(&stream, seed);
                let sent = sender.join().expect("sender");
                assert_eq!(echoed, sent, "client {i}: echo cut short");
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    let broken = break_a_listener(server.pid(), addr.port());
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for (i, w) in workers.into_iter().enumerate() {
        w.join().unwrap_or_else(|_| panic!("client {i} lost bytes"));
    }
    if let Err(why) = broken {
        eprintln!("skipped: cannot make a listener fail here ({why})");
        return;
    }
    let status = server
        .wait_for_exit(Duration::from_secs(20))
        .expect("the other loop did not shut down");
    assert_eq!(status.code(), Some(1), "stderr: {}", server.stderr());
    let log = server.stderr();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("echoloop: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("listener failed"), "{log}");
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_by_shutdown"),
        Some(16),
        "{log}"
    );
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_with_reset"),
        Some(0),
        "{log}"
    );
}
