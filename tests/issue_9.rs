//! Regression tests for issue 9: the command line a newcomer meets.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(server_bin())
        .args(args)
        .output_within()
        .unwrap()
}

#[test]
fn issue_9_a_negative_value_says_what_is_wrong() {
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
fn issue_9_a_port_out_of_range_says_so() {
    let out = run(&["--listen", "127.0.0.1:99999"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("port 99999 is out of range"), "{stderr}");
    let out = run(&["--listen", "[::1]:70000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("port 70000 is out of range"));
}

#[test]
fn issue_9_no_listening_line_until_every_address_is_bound() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let error = exits_1_with_one_error_line(&["--listen", "127.0.0.1:0", "--listen", &taken]);
    assert!(
        error.starts_with("echoloop: error: cannot listen on"),
        "{error}"
    );
}

#[test]
fn issue_9_a_connection_limit_the_descriptors_cannot_hold_is_warned() {
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
fn issue_9_raising_the_open_files_limit_is_logged() {
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
fn issue_9_logs_speak_plainly() {
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
