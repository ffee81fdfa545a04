//! The load generator (benches/loadgen) against echoloop, and against broken
//! echo servers it must catch.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;

use common::*;

fn loadgen(args: &[&str]) -> i32 {
    echoloop_loadgen::main_with_args(args.iter().map(|s| s.to_string()))
}

/// An echo server on a thread that corrupts one byte in every `every`.
fn corrupting_server(every: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = 0usize;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for b in &mut buf[..n] {
                        seen += 1;
                        if seen % every == 0 {
                            *b ^= 0x5A;
                        }
                    }
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn every_mode_runs_clean_against_echoloop() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    let short = ["--addr", &addr, "--duration", "0.3", "--warmup", "0.1"];
    let run = |mode: &[&str]| {
        let args: Vec<&str> = mode.iter().chain(short.iter()).copied().collect();
        assert_eq!(loadgen(&args), 0, "loadgen {args:?} failed");
    };
    run(&["pingpong", "-c", "50", "-s", "64"]);
    run(&["pingpong", "-c", "20", "-s", "1000", "-d", "8"]);
    run(&["stream", "-c", "4", "-s", "65536"]);
    run(&["churn", "-p", "10", "-s", "64"]);
    run(&["hold", "-c", "300", "-k", "10", "--idle", "0.1"]);
    assert_eq!(loadgen(&["once", "--addr", &addr, "hello, echo"]), 0);
}

#[test]
fn mismatched_echoes_fail_the_run() {
    let addr = corrupting_server(100_000).to_string();
    let stream = [
        "stream",
        "--addr",
        &addr,
        "-c",
        "2",
        "-s",
        "65536",
        "--duration",
        "0.3",
    ];
    assert_eq!(loadgen(&stream), 1, "a corrupted stream was not noticed");
    let once = corrupting_server(3).to_string();
    assert_eq!(loadgen(&["once", "--addr", &once, "abcdef"]), 1);
}

#[test]
fn a_server_that_is_not_there_fails_the_smoke_test() {
    // Bind and drop to find a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(loadgen(&["once", "--addr", &addr, "anyone?"]), 1);
}
