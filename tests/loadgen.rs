//! The load generator (benches/loadgen): every mode against echoloop (one
//! loop and two, TCP and UDP) and the tokio peers, against broken echo
//! servers it must catch, open loop (`--rate`), and its command line.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

/// Runs the load generator's binary with `args` (bounded, standard input
/// closed) and returns its exit code; its output is captured, and shown
/// with the test's own if the test fails. Load modes get `--json`: the
/// progress bar is drawn when stderr is a terminal, and never with `--json`.
fn loadgen(args: &[&str]) -> i32 {
    let load_mode = ["pingpong", "pipelined", "stream", "churn", "hold", "udp"];
    let quiet = args.first().is_some_and(|m| load_mode.contains(m)) && !args.contains(&"--help");
    let json = quiet.then_some("--json");
    let args: Vec<&str> = args.iter().copied().chain(json).collect();
    let (code, stdout) = loadgen_process(&args);
    print!("{stdout}");
    code
}

/// Runs the load generator's binary with `args`, which must be a usage
/// error: exit 2, nothing on stdout, and clap's one `error:` line saying
/// what is wrong (it contains `says`).
fn usage_error(args: &[&str], says: &str) {
    let out = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .output_within()
        .expect("run the load generator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(says),
        "{args:?}: expected an error line with {says:?}, got:\n{stderr}"
    );
}

/// The load generator's help for `args` (which end in `--help`, or are
/// `help MODE`): exit 0, the usage on stdout, nothing on stderr.
fn help_text(args: &[&str]) -> String {
    let out = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .output_within()
        .expect("run the load generator");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
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
                        if seen.is_multiple_of(every) {
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
    run(&["pipelined", "-c", "20", "-s", "100"]);
    run(&["pingpong", "-c", "20", "--rate", "1000"]);
    run(&["pipelined", "-c", "20", "--rate", "1000", "--threads", "2"]);
    run(&["stream", "-c", "4", "-s", "65536"]);
    run(&["churn", "-p", "10", "-s", "64"]);
    run(&["hold", "-c", "300", "-k", "10", "--idle", "0.1"]);
    assert_eq!(loadgen(&["once", "--addr", &addr, "hello, echo"]), 0);
}

/// The load generator's `--threads` (each thread its own loop and share of
/// the connections, every byte verified, results merged) against both
/// multi-threaded servers: echoloop with two loops and tokio's
/// multi_thread peer with two workers.
#[test]
fn threads_drive_both_multi_threaded_servers() {
    let echoloop = Server::start(&["--threads", "2"]);
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["tokio-echo", "--threads", "2", "--listen", "127.0.0.1:0"]);
    let tokio = Server::spawn(cmd, 1);
    for addr in [echoloop.addr(), tokio.addr()] {
        for mode in [
            &["pingpong", "-c", "50", "-d", "4"][..],
            &["stream", "-c", "4"],
        ] {
            let target = addr.to_string();
            let args: Vec<&str> = mode
                .iter()
                .copied()
                .chain(["--threads", "2", "--duration", "0.3", "--warmup", "0.1"])
                .chain(["--addr", &target])
                .collect();
            let (code, json) = loadgen_json(&args);
            assert_eq!(code, 0, "{mode:?} {addr}: {json}");
            for (name, want) in [("threads", 2), ("errors", 0), ("mismatches", 0)] {
                assert_eq!(json_number(&json, name), want, "{mode:?} {addr}: {json}");
            }
            let conns = if mode[0] == "pingpong" { 50 } else { 4 };
            assert_eq!(json_number(&json, "conns"), conns, "{json}");
            assert!(json_number(&json, "msgs") > 0, "no traffic: {json}");
        }
    }
    // The echoloop under test really ran two loops.
    let log = echoloop.request_stats();
    assert_eq!(per_loop(&log).map(|l| l.len()), Some(2), "{log}");
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
    let (_held, addr) = refused_addr();
    let addr = addr.to_string();
    assert_eq!(loadgen(&["once", "--addr", &addr, "anyone?"]), 1);
}

/// The value of `name=` in the server's `shutdown complete: ...` log line.
fn final_stat(log: &str, name: &str) -> u64 {
    log_field(log, "shutdown complete:", name)
        .unwrap_or_else(|| panic!("no {name} in a 'shutdown complete' line in:\n{log}"))
}

#[test]
fn tokio_echo_is_a_listed_subcommand_with_help() {
    for args in [&["tokio-echo", "--help"][..], &["help", "tokio-echo"]] {
        let help = help_text(args);
        assert!(help.contains("Usage: loadgen tokio-echo"), "{help}");
        assert!(help.contains("--listen"), "{help}");
    }
    usage_error(
        &["tokio-echo", "--listen", "nowhere"],
        "'nowhere' is not IP:PORT",
    );
    usage_error(&["tokio-echo", "--bogus"], "unexpected argument '--bogus'");
    let help = help_text(&["--help"]);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("tokio-echo")),
        "tokio-echo is not listed in --help:\n{help}"
    );
}

#[test]
fn tokio_echo_on_port_0_says_where_it_listens_and_echoes() {
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["tokio-echo", "--listen", "127.0.0.1:0"]);
    // Waits for `listening on IP:PORT` and parses the address.
    let peer = Server::spawn(cmd, 1);
    assert_ne!(peer.addr().port(), 0);
    assert_eq!(
        echo_verified(connect(peer.addr()), 7, 1 << 20, &[1, 4096, 65536]),
        1 << 20
    );
    let addr = peer.addr().to_string();
    assert_eq!(loadgen(&["once", "--addr", &addr, "tokio"]), 0);
}

/// Piped, `once` prints exactly the echoed bytes: no newline is added.
#[test]
fn once_prints_exactly_the_echoed_bytes() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    for message in ["hello", "line\n", "two\nlines"] {
        assert_eq!(
            loadgen_process(&["once", "--addr", &addr, message]),
            (0, message.to_string())
        );
    }
    // From standard input too, bytes that are not text included.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let mut child = Command::new(loadgen_bin())
        .args(["once", "--addr", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the load generator");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.clone();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("once output");
    writer.join().expect("writer").expect("write stdin");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == bytes, "{} bytes back", out.stdout.len());
}

#[test]
fn stream_latency_is_measured_or_not_shown() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    let stream = [
        "stream",
        "--addr",
        &addr,
        "-c",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ];
    let (code, text) = loadgen_process(&stream);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("p50 0 us"), "{text}");
    assert!(
        text.contains("latency p50") || text.contains("latency: no samples"),
        "{text}"
    );
    let (code, line) = loadgen_json(&stream);
    assert_eq!(code, 0, "{line}");
    // A percentile is 0 only when nothing was measured.
    assert_eq!(
        json_number(&line, "p50_us") == 0,
        json_number(&line, "latency_samples") == 0,
        "{line}"
    );
}

#[test]
fn hold_reports_connections_verified_by_echo() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    let hold = [
        "hold",
        "--addr",
        &addr,
        "-c",
        "300",
        "-k",
        "10",
        "--idle",
        "0.1",
        "--duration",
        "0.2",
        "--warmup",
        "0",
    ];
    let (code, text) = loadgen_process(&hold);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines()
            .any(|l| l == "held 300 (verified by echo), 0 failed, 0 timed out"),
        "{text}"
    );
    assert!(text.contains("mode hold conns 300 active 10"), "{text}");
    let (code, line) = loadgen_json(&hold);
    assert_eq!(code, 0, "{line}");
    assert_eq!(json_number(&line, "conns"), 300);
    assert_eq!(json_number(&line, "held"), 300);
    assert_eq!(json_number(&line, "probes_failed"), 0);
    assert_eq!(json_number(&line, "probes_timed_out"), 0);
    assert_eq!(json_number(&line, "active"), 10);
}

/// An echo server that accepts (and echoes on) its first `accepted`
/// connections and then accepts no more; later connects still complete in
/// the kernel's queue. The listener lives as long as the returned value.
fn server_that_stops_accepting(accepted: usize) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = listener.try_clone().unwrap();
    thread::spawn(move || {
        for stream in acceptor.incoming().take(accepted) {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (listener, addr)
}

/// A connection the server never accepted is not held, though its connect
/// completed: only the probes that came back count.
#[test]
fn hold_counts_only_connections_whose_probe_is_echoed() {
    let (_listener, addr) = server_that_stops_accepting(5);
    let addr = addr.to_string();
    let hold = [
        "hold",
        "--addr",
        &addr,
        "-c",
        "20",
        "--idle",
        "0",
        "--duration",
        "0.1",
        "--probe-timeout",
        "5",
        "--close",
        "reset",
        "--json",
    ];
    let (code, stdout) = loadgen_process(&hold);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "held 5 (verified by echo), 0 failed, 15 timed out"),
        "{stdout}"
    );
    let line = json_line(&stdout).unwrap_or_default();
    assert_eq!(json_number(line, "held"), 5, "{line}");
    assert_eq!(json_number(line, "probes_timed_out"), 15, "{line}");
    assert_eq!(json_number(line, "conns"), 20, "{line}");
}

#[test]
fn fin_close_is_an_orderly_close_for_the_server() {
    let mut server = Server::start(&[]);
    let addr = server.addr().to_string();
    let short = [
        "--addr",
        &addr,
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--close",
        "fin",
    ];
    let run = |mode: &[&str]| {
        let args: Vec<&str> = mode.iter().chain(short.iter()).copied().collect();
        assert_eq!(loadgen(&args), 0, "loadgen {args:?} failed");
    };
    run(&["pingpong", "-c", "20", "-s", "64", "-d", "4"]);
    run(&["stream", "-c", "2", "-s", "65536"]);
    run(&["churn", "-p", "5", "-s", "64"]);
    run(&["hold", "-c", "100", "-k", "5", "--idle", "0.1"]);
    assert_eq!(loadgen(&["once", "--addr", &addr, "bye"]), 0);
    // Each run returned after the server's EOF on every connection, so the
    // server has counted every close by now.
    server.signal(libc::SIGTERM);
    let status = server
        .wait_for_exit(Duration::from_secs(30))
        .expect("server exits after SIGTERM");
    assert!(status.success());
    let log = server.stderr();
    let accepted = final_stat(&log, "accepted");
    // pingpong 20, stream 2, churn at least 5, hold 100, once 1.
    let at_least = 20 + 2 + 5 + 100 + 1;
    assert!(accepted >= at_least, "{log}");
    assert_eq!(final_stat(&log, "closed_by_error"), 0, "{log}");
    assert_eq!(final_stat(&log, "closed_with_reset"), 0, "{log}");
    assert_eq!(final_stat(&log, "closed_by_peer"), accepted, "{log}");
}

#[test]
fn the_report_says_which_close_was_used() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    for (how, says) in [
        ("fin", "closed with fin, 0 unclean"),
        ("reset", "closed with reset"),
    ] {
        let (code, text) = loadgen_process(&[
            "pingpong",
            "--addr",
            &addr,
            "-c",
            "5",
            "--duration",
            "0.1",
            "--warmup",
            "0",
            "--close",
            how,
        ]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(says), "{text}");
    }
    // The default is fin.
    let (_, text) = loadgen_process(&[
        "pingpong",
        "--addr",
        &addr,
        "-c",
        "5",
        "--duration",
        "0.1",
        "--warmup",
        "0",
    ]);
    assert!(text.contains("closed with fin"), "{text}");
}

/// Runs the load generator's binary under the shell's `ulimit` commands;
/// returns its exit code, stdout and stderr.
fn loadgen_under_ulimit(ulimit: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
        .arg(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .output_within()
        .expect("run the load generator");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let code = out.status.code().expect("exit code");
    (code, text(&out.stdout), text(&out.stderr))
}

/// `hold` of 200 connections on `addr`, let go at once.
fn hold_200(addr: &str) -> [&str; 9] {
    [
        "hold",
        "--addr",
        addr,
        "-c",
        "200",
        "--idle",
        "0",
        "--duration",
        "0.1",
    ]
}

#[test]
fn raises_its_open_files_soft_limit_to_the_hard_limit() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    // 200 connections under a soft limit of 64 (the hard limit is left).
    let (code, stdout, stderr) = loadgen_under_ulimit("ulimit -S -n 64", &hold_200(&addr));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(held_line(&stdout), Some(200), "{stdout}");
}

#[test]
fn running_out_of_descriptors_says_so_with_a_ulimit_hint() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    // Soft and hard limit 64: nothing to raise.
    let (code, stdout, stderr) = loadgen_under_ulimit("ulimit -n 64", &hold_200(&addr));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("out of file descriptors"), "{stderr}");
    assert!(stderr.contains("ulimit -n"), "{stderr}");
}

/// The count on the `held N ...` line the load generator prints in `hold`
/// mode.
fn held_line(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with("held "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn each_mode_lists_only_the_options_that_apply_to_it() {
    let tcp = ["--close", "--threads", "--max-connecting"];
    for (mode, has, lacks) in [
        (
            "pingpong",
            &["--depth", "--conns"][..],
            &["--parallel", "--timeout"][..],
        ),
        ("stream", &["--conns", "--size"], &["--depth", "--parallel"]),
        ("churn", &["--parallel", "--size"], &["--conns", "--depth"]),
        ("hold", &["--active", "--idle"], &["--depth", "--parallel"]),
        ("udp", &["--timeout", "--sources"], &tcp),
        ("once", &["--addr"], &["--duration", "--json", "--close"]),
    ] {
        let (code, help) = loadgen_process(&[mode, "--help"]);
        assert_eq!(code, 0, "{mode}: {help}");
        for option in has {
            assert!(
                help.contains(option),
                "{mode} --help lacks {option}:\n{help}"
            );
        }
        for option in lacks {
            assert!(
                !help.contains(option),
                "{mode} --help lists {option}:\n{help}"
            );
        }
        if mode != "udp" && mode != "once" {
            for option in tcp {
                assert!(help.contains(option), "{mode} --help lacks {option}");
            }
        }
    }
    // An option of another mode is a usage error.
    usage_error(
        &["udp", "--threads", "2"],
        "unexpected argument '--threads'",
    );
    usage_error(&["churn", "--depth", "2"], "unexpected argument '--depth'");
}

#[test]
fn churn_reports_connections_per_second() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    let churn = [
        "churn",
        "--addr",
        &addr,
        "-p",
        "4",
        "--duration",
        "0.3",
        "--warmup",
        "0",
    ];
    let (code, text) = loadgen_process(&churn);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(" conns/s, "), "{text}");
    let (code, line) = loadgen_json(&churn);
    assert_eq!(code, 0, "{line}");
    // Each connection is one complete cycle: the same count, per second.
    assert!(line.contains("\"conns_per_sec\":"), "{line}");
    assert_eq!(
        json_float(&line, "conns_per_sec"),
        json_float(&line, "msgs_per_sec"),
        "{line}"
    );
}

/// The number after `"name":` in the load generator's JSON line, which
/// may be a fraction.
fn json_float(json: &str, name: &str) -> f64 {
    let value: serde_json::Value = serde_json::from_str(json).expect("a JSON line");
    value[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} is not a number in {json}"))
}

// ---------------------------------------------------------------------
// The `udp` mode and the tokio UDP peer.

#[test]
fn udp_runs_clean_against_echoloop_and_the_tokio_peer() {
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0"]);
    cmd.args(["--udp", "127.0.0.1:0", "--udp", "[::1]:0"]);
    // One `listening on` line for TCP, then one per UDP address.
    let server = Server::spawn(cmd, 3);
    let udp = &server.addrs[1..];
    let mut tokio = Command::new(loadgen_bin());
    tokio.args(["tokio-udp-echo", "--listen", "127.0.0.1:0"]);
    let tokio = Server::spawn(tokio, 1);
    let targets = [
        udp[0].to_string(),
        udp[1].to_string(),
        tokio.addr().to_string(),
    ];
    for (addr, conns, size) in [
        (&targets[0], "20", "64"),
        (&targets[0], "2", "0"),
        (&targets[0], "2", "65507"),
        (&targets[1], "4", "65527"),
        (&targets[2], "20", "64"),
    ] {
        let args = [
            "udp",
            "--addr",
            addr,
            "-c",
            conns,
            "-s",
            size,
            "--duration",
            "0.4",
            "--warmup",
            "0.1",
        ];
        let (code, json) = loadgen_json(&args);
        assert_eq!(code, 0, "loadgen {args:?}: {json}");
        assert_eq!(json_number(&json, "mismatches"), 0, "{json}");
        assert_eq!(json_number(&json, "errors"), 0, "{json}");
        assert!(json_number(&json, "msgs") > 0, "{json}");
        assert!(
            json_number(&json, "sent") >= json_number(&json, "lost"),
            "{json}"
        );
    }
}

/// A UDP echo peer on a thread that damages its replies: `corrupt` flips a
/// byte in every 50th datagram; otherwise every 50th reply goes to the
/// previous datagram's sender instead.
fn bad_udp_peer(corrupt: bool) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut previous = None;
        for i in 1u64.. {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let mut to = from;
            if i % 50 == 0 {
                if corrupt {
                    buf[n / 2] ^= 0x5a;
                } else if let Some(p) = previous.filter(|p| *p != from) {
                    to = p;
                }
            }
            previous = Some(from);
            let _ = socket.send_to(&buf[..n], to);
        }
    });
    addr
}

#[test]
fn udp_catches_a_corrupting_or_misdelivering_peer() {
    for corrupt in [true, false] {
        let addr = bad_udp_peer(corrupt).to_string();
        let args = [
            "udp",
            "--addr",
            &addr,
            "-c",
            "8",
            "-s",
            "64",
            "--duration",
            "0.4",
            "--warmup",
            "0",
        ];
        let (code, json) = loadgen_json(&args);
        assert_eq!(code, 1, "corrupt={corrupt}: {json}");
        assert!(json_number(&json, "mismatches") > 0, "{json}");
    }
    // Nobody there: nothing echoed is an error, not a clean run.
    // A socket that never reads: no other can answer on its port.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone = silent.local_addr().unwrap().to_string();
    let (code, _) = loadgen_json(&[
        "udp",
        "--addr",
        &gone,
        "-c",
        "1",
        "--duration",
        "0.2",
        "--timeout",
        "50",
    ]);
    assert_eq!(code, 1);
}

#[test]
fn udp_and_the_tokio_udp_peer_have_help_and_refuse_bad_values() {
    let help = help_text(&["udp", "--help"]);
    assert!(help.contains("Usage: loadgen udp"), "{help}");
    let help = help_text(&["tokio-udp-echo", "--help"]);
    assert!(help.contains("Usage: loadgen tokio-udp-echo"), "{help}");
    usage_error(
        &["udp", "-s", "65528"],
        "'65528' is not a datagram size: give 0 to 65527",
    );
    usage_error(&["udp", "-s", "-1"], "'-1'");
    usage_error(&["udp", "--addr", "nowhere"], "'nowhere' is not IP:PORT");
    usage_error(
        &["tokio-udp-echo", "--listen", "nowhere"],
        "'nowhere' is not IP:PORT",
    );
}

// ---------------------------------------------------------------------
// Open loop (`--rate`).

/// The load generator's JSON line, parsed.
fn json_value(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Every latency field is there, and they are in order.
fn assert_percentiles(json: &serde_json::Value) {
    let fields = [
        "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us",
    ];
    let values: Vec<u64> = fields
        .iter()
        .map(|f| {
            json[f]
                .as_u64()
                .unwrap_or_else(|| panic!("no {f} in {json}"))
        })
        .collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{json}");
}

/// Runs the load generator with `--json` and returns its report, parsed.
fn open_loop_run(args: &[&str]) -> (i32, serde_json::Value) {
    let (code, line) = loadgen_json(args);
    (code, json_value(&line))
}

#[test]
fn open_loop_schedules_the_asked_rate_and_verifies_every_byte() {
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0"]);
    // One `listening on` line each for TCP and UDP.
    let server = Server::spawn(cmd, 2);
    let addr = server.addrs[0].to_string();
    let udp = server.addrs[1].to_string();
    // 2000 msgs/s for 1 s (after a warm-up that is not counted).
    for (mode, target) in [("pingpong", &addr), ("pipelined", &addr), ("udp", &udp)] {
        let args = [
            mode,
            "--addr",
            target,
            "-c",
            "10",
            "--rate",
            "2000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ];
        let (code, json) = open_loop_run(&args);
        assert_eq!(code, 0, "{mode}: {json}");
        assert_eq!(json["errors"], 0, "{mode}: {json}");
        assert_eq!(json["mismatches"], 0, "{mode}: {json}");
        assert_eq!(json["rate"], 2000.0, "{json}");
        // The schedule itself: 2000 slots in the window, whatever the load.
        let scheduled = json["scheduled"].as_u64().unwrap_or(0);
        assert!((1999..=2001).contains(&scheduled), "{mode}: {json}");
        let msgs = json["msgs"].as_u64().unwrap_or(0);
        let sent = json["sent"].as_u64().unwrap_or(0);
        assert!(msgs > 0 && sent > 0 && sent <= scheduled, "{mode}: {json}");
        // Either about the asked count went out, or the report says not.
        let behind = json["behind_schedule"].as_bool().expect("behind_schedule");
        assert!(
            behind || sent * 100 >= scheduled * 99 - 100,
            "{mode}: {json}"
        );
        if mode != "udp" {
            // TCP waits for what it sent: every message sent is echoed.
            assert!(msgs >= sent, "{mode}: {json}");
        }
        assert_eq!(json["latency_samples"], msgs, "{json}");
        assert!(json["sent_per_sec"].as_f64().is_some(), "{json}");
        assert_percentiles(&json);
    }
}

#[test]
fn the_report_has_every_percentile_closed_and_open_loop() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    for rate in [None, Some("500")] {
        let mut args = vec![
            "pingpong",
            "--addr",
            &addr,
            "-c",
            "4",
            "--duration",
            "0.3",
            "--warmup",
            "0",
        ];
        args.extend(rate.iter().flat_map(|r| ["--rate", r]));
        let (code, json) = open_loop_run(&args);
        assert_eq!(code, 0, "{json}");
        assert_percentiles(&json);
        assert_eq!(json["rate"].is_null(), rate.is_none(), "{json}");
        let (code, text) = loadgen_process(&args);
        assert_eq!(code, 0, "{text}");
        for label in ["p50 ", "p90 ", "p99 ", "p99.9 ", "p99.99 ", "max "] {
            assert!(text.contains(label), "no {label:?} in:\n{text}");
        }
        assert_eq!(text.contains("open loop at 500 msgs/s"), rate.is_some());
    }
}

/// An echo server (a thread per connection) where every connection, once
/// the server has echoed `after` bytes in all, holds its next echo back for
/// `stall`, once.
fn stalling_server(after: u64, stall: Duration) -> SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let echoed = echoed.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stalled = false;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if !stalled && echoed.fetch_add(n as u64, Ordering::SeqCst) >= after {
                        stalled = true;
                        thread::sleep(stall);
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

/// Coordinated omission: a server that stalls for 300 ms shows it in the
/// open loop's p99, because every message scheduled during the stall waits
/// and its latency counts from its schedule. (A closed loop sends nothing
/// while it waits, so the stall is one sample per connection: its max.)
#[test]
fn a_stalled_server_shows_in_the_open_loop_tail() {
    let stall = Duration::from_millis(300);
    // Pipelined: each connection sends on schedule whatever is in flight.
    let addr = stalling_server(50 * 64, stall).to_string();
    let args = [
        "pipelined",
        "--addr",
        &addr,
        "-c",
        "4",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--close",
        "reset",
    ];
    let (code, json) = open_loop_run(&args);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["mismatches"], 0, "{json}");
    // The messages scheduled in the first 100 ms of each connection's
    // stall (about 10 % of the run) waited at least 200 ms.
    assert!(json["p99_us"].as_u64().unwrap_or(0) >= 200_000, "{json}");
    assert_percentiles(&json);

    // Closed loop against the same kind of server: the stall is there, in
    // the max.
    let addr = stalling_server(50 * 64, stall).to_string();
    let args = [
        "pingpong",
        "--addr",
        &addr,
        "-c",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--close",
        "reset",
    ];
    let (code, json) = open_loop_run(&args);
    assert_eq!(code, 0, "{json}");
    assert!(json["max_us"].as_u64().unwrap_or(0) >= 300_000, "{json}");
}

#[test]
fn an_impossible_rate_is_reported_behind_schedule() {
    let server = Server::start(&[]);
    let addr = server.addr().to_string();
    // A billion messages a second: no generator here sends that.
    let args = [
        "pipelined",
        "--addr",
        &addr,
        "-c",
        "2",
        "--rate",
        "1e9",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--close",
        "reset",
    ];
    let (code, json) = open_loop_run(&args);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["behind_schedule"], true, "{json}");
    assert_eq!(json["mismatches"], 0, "{json}");
    let scheduled = json["scheduled"].as_u64().unwrap_or(0);
    assert!(json["sent"].as_u64().unwrap_or(0) < scheduled, "{json}");
    let (_, text) = loadgen_process(&args);
    assert!(text.contains("BEHIND SCHEDULE"), "{text}");
}

#[test]
fn rate_is_refused_where_it_does_not_apply_or_is_not_a_rate() {
    usage_error(&["stream", "--rate", "100"], "unexpected argument '--rate'");
    usage_error(&["churn", "--rate", "100"], "unexpected argument '--rate'");
    usage_error(&["pingpong", "--rate", "0"], "'0' is not a rate");
    usage_error(&["pingpong", "--rate", "-5"], "'-5'");
    usage_error(&["udp", "--rate", "fast"], "'fast' is not a rate");
}
