//! Regression tests for issue 8: odd inputs and odd values. (Its shutdown
//! races are in tests/shutdown.rs.)

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn issue_8_huge_values_are_refused_at_parse_time() {
    for args in [
        &["--shutdown-timeout", "1e19"][..],
        &["--stats-interval", "1e19"],
        &["--idle-timeout", "18446744073709552"],
        &["--idle-timeout", "inf"],
        &["--idle-timeout", "NaN"],
        &["--read-buffer", "30000M"],
        &["--max-pending", "99999999999999999999K"],
        &["--budget", "18446744073709551615M"],
        &["--accepts-per-turn", "18446744073709551616"],
        &["--max-connections", "100000000"],
    ] {
        // Bounded: a build that accepts the value keeps running.
        let mut child = Command::new(server_bin())
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: invalid value"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn issue_8_the_largest_accepted_values_work() {
    let mut server = Server::start(&[
        "--shutdown-timeout",
        "86400",
        "--idle-timeout",
        "604800",
        "--stats-interval",
        "86400",
        "--read-buffer",
        "64M",
        "--max-pending",
        "1G",
        "--budget",
        "1G",
    ]);
    let mut client = connect(server.addr());
    ping(&mut client, b"before");
    // A wrapped idle deadline closed connections after 0.4 s.
    thread::sleep(Duration::from_millis(1000));
    ping(&mut client, b"after a second");
    server.signal(libc::SIGTERM);
    finish_sending(&client);
    assert_eq!(read_to_end(&mut client), b"");
    let status = server
        .wait_for_exit(Duration::from_secs(10))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn issue_8_bytes_after_an_urgent_byte_are_echoed_without_waiting() {
    let server = Server::start(&[]);
    for trial in 0..20u8 {
        let mut client = connect(server.addr());
        // A stall shows as a read timeout, well before IO_TIMEOUT.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
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
fn issue_8_a_tiny_max_pending_still_streams_megabytes() {
    let server = Server::start(&["--max-pending", "1"]);
    let total = 8 * 1024 * 1024;
    let echoed = echo_verified(connect(server.addr()), 8, total, &[65536, 1000, 300_000]);
    assert_eq!(echoed, total);
}
