//! Shutdown keeps the promise: after SIGINT/SIGTERM every byte a client
//! sent is echoed, and our orderly FIN goes out only after the client's FIN
//! and the echo of everything before it; a client still open at the
//! deadline (or at a second signal) is reset, never sent a FIN after a
//! truncated echo. Races are repeated inside each test; one test runs its
//! trials beside CPU hogs, one over a shaped slow link.
//!
//! `ECHOLOOP_TRIALS=N` sets how many trials the shutdown race runs (default
//! 6); `benches/shutdown-race.sh` runs it with more and prints the tally.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What one client saw after the signal.
#[derive(Debug, Default)]
struct Outcome {
    sent: usize,
    echoed: usize,
    reset: bool,
}

impl Outcome {
    /// The one thing that must never happen: an orderly FIN after an echo
    /// that is shorter than what was sent.
    fn clean_fin_truncated(&self) -> bool {
        !self.reset && self.echoed < self.sent
    }
}

/// Writes pattern bytes without reading until the socket's `send` has made
/// no progress for 150 ms (megabytes sit in our send buffer, in flight and
/// in the server's buffers: the whole pipeline is full), then sends FIN.
/// A single short pause is not enough on a loaded machine: the server may
/// simply not have run yet, and then the pipeline still has room.
fn fill_then_half_close(addr: SocketAddr, seed: u64) -> (TcpStream, usize) {
    const STALL: Duration = Duration::from_millis(150);
    let stream = connect(addr);
    stream.set_nonblocking(true).unwrap();
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    let mut carry = 0; // bytes of `chunk` generated but not yet accepted
    let mut progress_at = Instant::now();
    // Bounded whatever the server does.
    let give_up = Instant::now() + Duration::from_secs(10);
    while progress_at.elapsed() < STALL && Instant::now() < give_up {
        if carry == 0 {
            pattern.fill(&mut chunk);
            carry = chunk.len();
        }
        let from = chunk.len() - carry;
        match (&stream).write(&chunk[from..]) {
            Ok(n) => {
                sent += n;
                carry -= n;
                progress_at = Instant::now();
            }
            // The server may still be draining us: look again shortly.
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("fill: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    (stream, sent)
}

/// Reads until EOF or error, checking the pattern; returns bytes echoed and
/// whether the connection ended with a reset (or any error) instead of FIN.
fn read_until_end(mut stream: &TcpStream, seed: u64) -> (usize, bool) {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let mut echoed = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (echoed, false),
            Ok(n) => {
                pattern.fill(&mut expected[..n]);
                assert!(buf[..n] == expected[..n], "corrupt echo near byte {echoed}");
                echoed += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no FIN nor reset after {echoed} bytes within the read timeout")
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionReset, "after {echoed} bytes");
                return (echoed, true);
            }
        }
    }
}

/// A client on `stream` that writes and reads at once until told to stop,
/// then sends FIN and reads to the end.
fn streaming_client(stream: TcpStream, seed: u64, stop: Arc<AtomicBool>) -> Outcome {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut pattern = Pattern::new(seed);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            pattern.fill(&mut chunk);
            if writer.write_all(&chunk).is_err() {
                return (sent, true);
            }
            sent += chunk.len();
        }
        let failed = writer.shutdown(Shutdown::Write).is_err();
        (sent, failed)
    });
    let (echoed, reset) = read_until_end(&stream, seed);
    let (sent, send_failed) = sender.join().unwrap();
    Outcome {
        sent,
        echoed,
        reset: reset || send_failed,
    }
}

/// Waits (up to 20 s) until the server has accepted `n` connections that
/// are still open. A connection the kernel has completed but the server
/// has not yet accepted when shutdown begins is reset by the kernel as the
/// listener closes, before any rule of ours: a test that means an accepted
/// client waits for this before it signals.
fn wait_until_accepted(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.stats_line();
        if stat(&stats, "active") >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} connections never accepted: {stats}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn trials() -> usize {
    std::env::var("ECHOLOOP_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(6)
}

/// The race: half-closed clients with megabytes in the pipeline and
/// clients still streaming when SIGTERM comes; every client must get back
/// every byte and then an orderly FIN. Returns the tally line.
fn shutdown_race(trials: usize, hogs: usize) -> String {
    let _hogs = CpuHogs::start(hogs);
    let (mut clients, mut bytes, mut lost, mut truncated, mut resets) = (0, 0usize, 0usize, 0, 0);
    for trial in 0..trials {
        // The deadline is far: every client here closes, so none may be
        // reset, however slow the machine.
        let mut server = Server::start(&["--shutdown-timeout", "60"]);
        let addr = server.addr();
        let seed = 1000 * trial as u64;
        // Clients that stop writing once their send blocks, then half-close.
        let fillers: Vec<_> = (0..2 + trial % 3)
            .map(|i| fill_then_half_close(addr, seed + i as u64))
            .collect();
        // Clients still streaming when the signal comes (connected here,
        // so that a thread started late cannot meet a closed listener).
        let stop = Arc::new(AtomicBool::new(false));
        let streamers: Vec<_> = (0..2)
            .map(|i| {
                let stop = stop.clone();
                let stream = connect(addr);
                thread::spawn(move || streaming_client(stream, seed + 100 + i, stop))
            })
            .collect();
        wait_until_accepted(&server, (fillers.len() + streamers.len()) as u64);
        thread::sleep(Duration::from_millis(100)); // streaming meanwhile (not asserted)
        server.signal(libc::SIGTERM);
        // Streamers stop right after the signal; fillers start reading
        // 0 to 200 ms after it.
        stop.store(true, Ordering::Relaxed);
        let delay = Duration::from_millis((trial as u64 * 37) % 201);
        thread::sleep(delay);
        let mut outcomes: Vec<Outcome> = fillers
            .iter()
            .enumerate()
            .map(|(i, (stream, sent))| {
                let (echoed, reset) = read_until_end(stream, seed + i as u64);
                Outcome {
                    sent: *sent,
                    echoed,
                    reset,
                }
            })
            .collect();
        outcomes.extend(streamers.into_iter().map(|s| s.join().unwrap()));
        for (i, o) in outcomes.iter().enumerate() {
            clients += 1;
            bytes += o.sent;
            lost += o.sent.saturating_sub(o.echoed);
            truncated += usize::from(o.clean_fin_truncated());
            resets += usize::from(o.reset);
            assert!(
                !o.reset && o.echoed == o.sent,
                "trial {trial} (read after {delay:?}), client {i}: sent {}, echoed {}, reset {}",
                o.sent,
                o.echoed,
                o.reset
            );
        }
        let status = server
            .wait_for_exit(Duration::from_secs(60))
            .expect("server did not exit once every client had closed");
        assert_eq!(status.code(), Some(0), "trial {trial}");
    }
    format!(
        "shutdown race: {trials} trials, {clients} clients, {bytes} bytes sent, {lost} bytes \
         lost, {truncated} clean-FIN truncations, {resets} unexpected resets ({hogs} CPU hogs)"
    )
}

#[test]
fn sigterm_echoes_every_byte_sent_before_the_signal_then_fins() {
    println!("{}", shutdown_race(trials(), 0));
}

#[test]
fn sigterm_echoes_every_byte_then_fins_on_a_busy_machine() {
    println!("{}", shutdown_race(trials().div_ceil(2), 2));
}

#[test]
fn a_transfer_cut_short_at_the_deadline_is_reset_not_fin() {
    // A client that never reads: when the shutdown timeout ends its flush,
    // bytes are left unechoed, so it must see a reset, never a FIN.
    let mut server = Server::start(&["--shutdown-timeout", "0.5"]);
    let (stream, sent) = fill_then_half_close(server.addr(), 7);
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    let (echoed, reset) = read_until_end(&stream, 7);
    assert!(
        echoed == sent || reset,
        "{echoed} of {sent} bytes and then a FIN: silent truncation"
    );
}

#[test]
fn a_client_still_open_at_the_deadline_is_reset_and_counted() {
    // It has sent everything and had it back, but never sent FIN: only a
    // reset says the server, not the client, ended it.
    let mut server = Server::start(&["--shutdown-timeout", "0.3"]);
    let mut idle = connect(server.addr());
    ping(&mut idle, b"all echoed, never closed");
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("server did not exit at its deadline");
    assert_eq!(status.code(), Some(0));
    let mut buf = [0u8; 8];
    let err = read_some(&mut idle, &mut buf).expect_err("an orderly FIN, not a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let log = server.stderr();
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_with_reset"),
        Some(1),
        "{log}"
    );
}

/// The bug: during shutdown a connection quiet for 250 ms (nothing read,
/// nothing pending, nothing in its receive queue) was sent our FIN, so a
/// client whose last write came later (a starved thread, a retransmission)
/// read a clean EOF after a truncated echo.
#[test]
fn a_last_write_after_a_pause_is_echoed_before_our_fin() {
    for trial in 0..3 {
        let mut server = Server::start(&["--shutdown-timeout", "60"]);
        let mut client = connect(server.addr());
        let mut pattern = Pattern::new(trial);
        let mut first = vec![0u8; 1000];
        pattern.fill(&mut first);
        client.write_all(&first).unwrap();
        wait_until_accepted(&server, 1);
        server.signal(libc::SIGTERM);
        assert!(server.log_contains("shutting down"));
        // Longer than any "quiet" rule a server might guess with.
        thread::sleep(Duration::from_millis(600));
        let mut last = vec![0u8; 1000];
        pattern.fill(&mut last);
        client
            .write_all(&last)
            .expect("the server took our FIN-less pause as the end");
        finish_sending(&client);
        let (echoed, reset) = read_until_end(&client, trial);
        assert!(
            echoed == 2000 && !reset,
            "trial {trial}: {echoed} of 2000 bytes echoed, reset {reset}"
        );
        let status = server.wait_for_exit(Duration::from_secs(30));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    }
}

#[test]
fn sigterm_echoes_everything_then_fins_after_the_clients_fin() {
    let mut server = Server::start(&["--shutdown-timeout", "60"]);
    let addr = server.addr();
    let mut idle = connect(addr);
    let busy = connect(addr);
    let total = 4 * 1024 * 1024;
    let mut data = vec![0u8; total];
    Pattern::new(11).fill(&mut data);
    // Everything is sent before the client's FIN; much of it is still in
    // kernel buffers or pending when the signal arrives.
    let mut writer = busy.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        finish_sending(&writer);
    });
    wait_until_accepted(&server, 2);
    thread::sleep(Duration::from_millis(300)); // let the pipeline fill (not asserted)
    assert_eq!(listening_fds(server.pid(), addr.port()).unwrap().len(), 1);
    server.signal(libc::SIGTERM);
    assert!(server.log_contains("shutting down"));
    // New connections are refused from now on: the server holds no
    // listening socket (asked of /proc: a connect to the freed port could
    // reach whoever binds it next).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening_fds(server.pid(), addr.port()).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "still listening during shutdown");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read_verified(&busy, 11, total), total);
    sender.join().unwrap();
    let mut busy = busy;
    assert_eq!(
        read_to_end(&mut busy),
        Vec::<u8>::new(),
        "FIN after the echo"
    );
    // The idle client finishes too: its FIN is answered with ours.
    finish_sending(&idle);
    assert_eq!(read_to_end(&mut idle), Vec::<u8>::new());
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("server did not exit once every client had closed");
    assert_eq!(status.code(), Some(0));
    let log = server.stderr();
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_with_reset"),
        Some(0),
        "{log}"
    );
}

#[test]
fn shutdown_timeout_bounds_a_client_that_never_reads() {
    let mut server = Server::start(&["--shutdown-timeout", "1"]);
    let _stuck = flood_without_reading(server.addr());
    server.signal(libc::SIGINT);
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    assert!(server.log_contains("shutdown complete"));
}

#[test]
fn a_signal_right_after_the_listening_line_is_a_graceful_shutdown() {
    // The signal handler must be in place before the line is printed.
    for trial in 0..100 {
        let mut server = Server::start(&[]);
        server.signal(libc::SIGTERM);
        let status = server
            .wait_for_exit(Duration::from_secs(10))
            .expect("server did not exit");
        assert_eq!(status.code(), Some(0), "trial {trial}: {status:?}");
    }
}

/// Two SIGTERMs, the second sent as soon as the kernel has delivered the
/// first: the server must count two, whatever its loops were doing.
fn two_signals_back_to_back(threads: &str) {
    for trial in 0..10 {
        let mut server = Server::start(&["--threads", threads, "--shutdown-timeout", "600"]);
        // Never closes: the first signal alone would wait for the deadline.
        let mut open = connect(server.addr());
        ping(&mut open, b"here");
        server.signal_delivered(libc::SIGTERM);
        server.signal(libc::SIGTERM);
        let status = server
            .wait_for_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("trial {trial}: the second signal was lost"));
        assert_eq!(status.code(), Some(0), "trial {trial}");
        let log = server.stderr();
        assert!(log.contains("second signal"), "trial {trial}: {log}");
        let mut buf = [0u8; 8];
        let err = read_some(&mut open, &mut buf).expect_err("a FIN for a client cut short");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "trial {trial}");
    }
}

/// The bug: the second of two back-to-back signals was read as the same
/// wake-up's signal and dropped (with two loops nearly always): the server
/// waited out the whole shutdown timeout.
#[test]
fn two_signals_back_to_back_close_at_once() {
    two_signals_back_to_back("1");
}

#[test]
fn two_signals_back_to_back_close_every_loop_at_once() {
    two_signals_back_to_back("2");
}

#[test]
fn a_second_signal_closes_at_once_while_a_client_never_reads() {
    let mut server = Server::start(&["--shutdown-timeout", "120"]);
    let _stuck = flood_without_reading(server.addr());
    server.signal(libc::SIGTERM);
    assert!(server.log_contains("shutting down"));
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("second signal ignored");
    assert_eq!(status.code(), Some(0));
}

/// A client that writes until the server closes it and never reads; returns
/// once the server's buffers for it are full.
fn flood_without_reading(addr: SocketAddr) -> TcpStream {
    let stuck = connect(addr);
    let mut writer = stuck.try_clone().unwrap();
    thread::spawn(move || {
        let chunk = vec![1u8; 64 * 1024];
        // Ends with an error once the server closes the connection.
        while writer.write_all(&chunk).is_ok() {}
    });
    thread::sleep(Duration::from_millis(300));
    stuck
}

/// Runs `scenario` on a thread of its own inside a new network namespace
/// whose loopback has MTU 1500 and is shaped to 40 kbit/s (the processes
/// and sockets that thread creates live there). `None` if namespaces or
/// `tc` are not available here (not root, no iproute2).
fn on_slow_link<T: Send + 'static>(scenario: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace,
        // which no other thread uses.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: cannot make a network namespace ({}); run as root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let steps = [
            "ip link set lo mtu 1500 up",
            "tc qdisc replace dev lo root handle 1: htb default 10",
            "tc class add dev lo parent 1: classid 1:10 htb rate 40kbit ceil 40kbit \
             burst 1600 cburst 1600",
        ];
        for step in steps {
            let words: Vec<&str> = step.split_whitespace().collect();
            let ok = Command::new(words[0])
                .args(&words[1..])
                .output_within()
                .is_ok_and(|out| out.status.success());
            if !ok {
                eprintln!("skipped: `{step}` failed (needs iproute2's ip and tc, as root)");
                return None;
            }
        }
        Some(scenario())
    })
    .join()
    .expect("slow-link scenario")
}

/// The bug, as seen on a slow link: the last ~100 bytes of a 3,000-byte
/// write (a Nagle tail waiting for an ACK) arrived after 250 ms of quiet,
/// so the server's quiet rule sent a clean FIN after 2,896 bytes. Now a
/// client that closes gets all 3,000 and then FIN; one that stays open is
/// reset at the deadline.
#[test]
fn on_a_slow_link_a_fin_always_follows_the_whole_echo() {
    let outcomes = on_slow_link(|| {
        let mut outcomes = Vec::new();
        for trial in 0..3u64 {
            for closes in [true, false] {
                let timeout = if closes { "60" } else { "3" };
                let mut server = Server::start(&["--shutdown-timeout", timeout]);
                let mut client = connect(server.addr());
                // Accepted (a connection still in the listen queue at
                // shutdown is reset by the kernel, before any rule of ours).
                ping(&mut client, b"?");
                let mut data = vec![0u8; 3000];
                Pattern::new(trial).fill(&mut data);
                client.write_all(&data).unwrap();
                server.signal_delivered(libc::SIGTERM);
                if closes {
                    finish_sending(&client);
                }
                let (echoed, reset) = read_until_end(&client, trial);
                let status = server.wait_for_exit(Duration::from_secs(60));
                assert_eq!(status.and_then(|s| s.code()), Some(0));
                outcomes.push((closes, echoed, reset));
            }
        }
        outcomes
    });
    let Some(outcomes) = outcomes else { return };
    for (closes, echoed, reset) in outcomes {
        if closes {
            assert!(
                echoed == 3000 && !reset,
                "a closing client got {echoed} of 3000 bytes, reset {reset}"
            );
        } else {
            assert!(
                reset,
                "a client that never closed got a FIN after {echoed} of 3000 bytes"
            );
        }
    }
}
