//! The command line an operator meets: `--help`, usage errors (exit 2)
//! and start-up errors (exit 1) on one line that says what is wrong, with
//! nothing on stdout; the `listening on` lines, printed only once every
//! address is bound (IPv4 and IPv6 at once, a port in use, several loops,
//! UDP); the largest values each option accepts; and the log lines.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use common::*;

/// Runs echoloop with `args` to its end (bounded), both outputs captured.
fn run(args: &[&str]) -> Output {
    Command::new(server_bin())
        .args(args)
        .output_within()
        .unwrap()
}

#[test]
fn help_explains_every_option() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--listen",
        "--max-connections",
        "--max-pending",
        "--shutdown-timeout",
        "--idle-timeout",
        "--stats-interval",
        "--accepts-per-turn",
        "--budget",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
    assert!(help.contains("default"));
}

#[test]
fn bad_options_are_rejected_without_a_panic() {
    for args in [
        &["--listen", "not-an-address"][..],
        &["--listen", "127.0.0.1"],
        &["--max-pending", "0"],
        &["--max-pending", "lots"],
        &["--shutdown-timeout", "-1"],
        &["--max-connections", "many"],
        &["--no-such-option"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // The usage error names the option it is about.
        assert!(
            stderr.starts_with("error: ") && stderr.contains(args[0]),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn a_negative_value_says_what_is_wrong() {
    for option in [
        "--idle-timeout",
        "--shutdown-timeout",
        "--stats-interval",
        "--max-connections",
        "--max-pending",
    ] {
        let out = run(&[option, "-1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option}: {stderr}");
        assert!(
            !stderr.contains("unexpected argument"),
            "{option}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("'-1' for '{option}")),
            "{option}: {stderr}"
        );
    }
}

#[test]
fn huge_values_are_refused_at_parse_time() {
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
        // Bounded (`output_within`): a build that accepts the value keeps
        // running.
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--listen", "127.0.0.1:0"])
            .collect();
        let out = run(&args);
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

/// The largest value of every option works. The bug: an idle deadline
/// computed from the largest `--idle-timeout` wrapped around, and
/// connections were closed as idle after 0.4 s.
#[test]
fn the_largest_accepted_values_work() {
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
    // Longer than the wrapped deadline was (not asserted: a correct
    // server never closes this connection as idle).
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
fn a_port_out_of_range_says_so() {
    let out = run(&["--listen", "127.0.0.1:99999"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("port 99999 is out of range"), "{stderr}");
    let out = run(&["--listen", "[::1]:70000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("port 70000 is out of range"), "{stderr}");
}

#[test]
fn an_ipv6_address_without_brackets_is_a_usage_error_that_says_so() {
    for option in ["--udp", "--listen"] {
        let out = run(&[option, "::1:80"]);
        assert_eq!(out.status.code(), Some(2), "{option}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("brackets") && err.contains("[::1]:80"),
            "{option}: {err}"
        );
        assert!(!err.contains("out of range"), "{option}: {err}");
    }
}

#[test]
fn bad_thread_counts_are_usage_errors() {
    for value in ["-1", "1025", "abc", "", "1.5", "99999999999999999999999"] {
        let out = run(&["--threads", value, "--listen", "127.0.0.1:0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {stderr}");
        assert!(stderr.contains("--threads"), "{value:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{value:?} printed a listening line");
    }
}

#[test]
fn bad_udp_values_are_usage_errors() {
    for bad in [
        "nonsense",
        "127.0.0.1",
        "127.0.0.1:99999",
        "localhost:7",
        "",
    ] {
        let out = run(&["--listen", "127.0.0.1:0", "--udp", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--udp {bad:?}: {stderr}");
        assert!(out.stdout.is_empty());
        assert!(stderr.contains("--udp"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    for bad in ["0", "-1", "10000001", "many"] {
        let out = run(&["--udp", "127.0.0.1:0", "--udp-rate-limit", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--udp-rate-limit {bad}");
        assert!(
            stderr.starts_with(&format!(
                "error: invalid value '{bad}' for '--udp-rate-limit"
            )),
            "{stderr}"
        );
    }
    let out = run(&["--udp"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("a value is required for '--udp"),
        "{stderr}"
    );
}

#[test]
fn listens_on_ipv4_and_ipv6_at_once() {
    let server = Server::start(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    assert_eq!(server.addrs.len(), 2);
    assert!(server.addrs[1].is_ipv6());
    for addr in &server.addrs {
        match std::net::TcpStream::connect(addr) {
            Ok(mut c) => {
                c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                ping(&mut c, b"dual stack");
            }
            // A machine without IPv6 loopback cannot test the second half.
            Err(e) if addr.is_ipv6() => eprintln!("skipping IPv6 check: {e}"),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

#[test]
fn no_listening_line_until_every_address_is_bound() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let error = exits_1_with_one_error_line(&["--listen", "127.0.0.1:0", "--listen", &taken]);
    assert!(
        error.starts_with("echoloop: error: cannot listen on"),
        "{error}"
    );
}

#[test]
fn a_port_in_use_is_one_clear_error_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let out = run(&["--listen", &addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert!(errors[0].contains(&addr.to_string()), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"));
}

/// Runs echoloop with `args`, expecting exit 1, nothing on stdout and one
/// error line naming `addr`.
fn fails_with_one_line(args: &[&str], addr: SocketAddr) {
    let error = exits_1_with_one_error_line(args);
    assert!(
        error.starts_with(&format!("echoloop: error: cannot listen on {addr}: ")),
        "{error}"
    );
}

#[test]
fn a_port_in_use_is_one_clear_error_line_with_two_loops() {
    // Taken by a plain listener.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    fails_with_one_line(&["--threads", "2", "--listen", &addr.to_string()], addr);
    // Taken by another echoloop with two loops (whose sockets have
    // SO_REUSEPORT): it must not silently share the port with us.
    let first = Server::start(&["--threads", "2"]);
    let addr = first.addr();
    for threads in ["2", "1"] {
        fails_with_one_line(&["--threads", threads, "--listen", &addr.to_string()], addr);
    }
    // The second address of several: still nothing printed.
    let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
    fails_with_one_line(
        &[
            "--threads",
            "2",
            "--listen",
            &free.to_string(),
            "--listen",
            &addr.to_string(),
        ],
        addr,
    );
    // The first server was not disturbed.
    let mut c = connect(addr);
    ping(&mut c, b"still mine");
}

/// A UDP socket bound to `addr`, with SO_REUSEPORT if asked.
fn bound_udp(addr: SocketAddr, reuseport: bool) -> UdpSocket {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None).unwrap();
    socket.set_reuse_port(reuseport).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.into()
}

#[test]
fn a_udp_port_in_use_is_one_error_line_and_nothing_printed() {
    // One loop, and two: the reuseport group must not join a taken port,
    // not even one whose holder set SO_REUSEPORT itself (same user: the
    // kernel would let a plain reuseport bind share it).
    for (taken, threads, reuseport) in [
        ("127.0.0.1:0", "1", false),
        ("[::1]:0", "1", false),
        ("127.0.0.1:0", "2", false),
        ("127.0.0.1:0", "2", true),
    ] {
        let taken = bound_udp(taken.parse().unwrap(), reuseport);
        let addr = taken.local_addr().unwrap();
        let error = exits_1_with_one_error_line(&[
            "--listen",
            "127.0.0.1:0",
            "--udp",
            &addr.to_string(),
            "--threads",
            threads,
        ]);
        assert_eq!(
            error,
            format!("echoloop: error: cannot listen on udp {addr}: Address already in use (os error 98)")
        );
    }
}

#[test]
fn a_connection_limit_the_descriptors_cannot_hold_is_warned() {
    let server = Server::start_with_ulimit(
        "ulimit -n 64",
        &["--listen", "127.0.0.1:0", "--max-connections", "1000"],
    );
    assert!(
        server.log_contains("--max-connections 1000 cannot be reached"),
        "{}",
        server.stderr()
    );
    // The default under the same limit is the documented rule: half of it.
    let server = Server::start_with_ulimit("ulimit -n 64", &["--listen", "127.0.0.1:0"]);
    assert!(
        server.log_contains("max connections 32 (open-files limit 64)"),
        "{}",
        server.stderr()
    );
}

#[test]
fn raising_the_open_files_limit_is_logged() {
    // A soft limit below the hard one is raised, and the log says so.
    let server = Server::start_with_ulimit(
        "ulimit -Sn 256 && ulimit -Hn 512",
        &["--listen", "127.0.0.1:0"],
    );
    assert!(
        server.log_contains("raised the open-files limit from 256 to 512"),
        "{}",
        server.stderr()
    );
}

#[test]
fn logs_speak_plainly() {
    let mut server = Server::start(&["--shutdown-timeout", "0"]);
    let mut client = connect(server.addr());
    ping(&mut client, b"one");
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(10))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    let log = server.stderr();
    assert!(
        log.contains("shutting down: 1 connection to flush, at most 0 s"),
        "{log}"
    );
    assert!(log.contains("shutdown timeout 0 s"), "{log}");
    assert!(
        !log.contains("1 connections") && !log.contains("0ns"),
        "{log}"
    );
}
