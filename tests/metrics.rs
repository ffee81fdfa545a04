//! `--metrics`: the counters as Prometheus text at `GET /metrics`, checked
//! by the real `promtool`, scraped by a real `prometheus` while clients echo,
//! and refused or cut off for anything else: other paths and methods,
//! malformed or oversized requests, slow and excess scrapers. A test whose
//! program is missing says so and skips; `.ci/run` installs them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The exposition's content type, format 0.0.4.
const CONTENT_TYPE: &str = "Content-Type: text/plain; version=0.0.4; charset=utf-8";

/// Every metric name the exposition has (docs/operations.md lists them).
const NAMES: &[&str] = &[
    "echoloop_connections_accepted_total",
    "echoloop_connections_rejected_total",
    "echoloop_connections_rejected_per_source_total",
    "echoloop_connections_open",
    "echoloop_connections_closed_total",
    "echoloop_connections_reset_total",
    "echoloop_bytes_in_total",
    "echoloop_bytes_out_total",
    "echoloop_backpressure_pauses_total",
    "echoloop_accept_backoffs_total",
    "echoloop_accept_backoff_seconds_total",
    "echoloop_budget_yields_total",
    "echoloop_accept_yields_total",
    "echoloop_accept_errors_total",
    "echoloop_udp_datagrams_in_total",
    "echoloop_udp_datagrams_out_total",
    "echoloop_udp_bytes_in_total",
    "echoloop_udp_bytes_out_total",
    "echoloop_udp_datagrams_unanswered_total",
    "echoloop_udp_receive_errors_total",
    "echoloop_udp_yields_total",
    "echoloop_loops",
    "echoloop_build_info",
];

/// A scrape: status 200 with the exposition's content type; the body.
fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(CONTENT_TYPE), "{head}");
    String::from_utf8(body).expect("utf-8 exposition")
}

/// The value of the sample named exactly `sample` (with its labels).
fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
}

/// Sends `request` as it is, reads to the server's close, and returns the
/// status code and head.
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send request");
    let (status, head, _) = http_response(&read_to_end(&mut stream));
    (status, head)
}

#[test]
fn metrics_on_port_0_are_logged_on_stderr_and_pass_promtool() {
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0"]);
    let mut server = Server::spawn(cmd, 2);
    let metrics = server.metrics_addr();
    assert_ne!(metrics.port(), 0);
    let mut stream = connect(server.addr());
    ping(&mut stream, b"twelve bytes");
    finish_sending(&stream);
    assert!(read_to_end(&mut stream).is_empty());
    let client = udp_client_for(server.addrs[1]);
    let mut buf = [0u8; 16];
    udp_round_trip(&client, server.addrs[1], b"dgram", &mut buf);

    let text = scrape(metrics);
    for name in NAMES {
        for comment in ["HELP", "TYPE"] {
            let line = format!("# {comment} {name} ");
            assert!(
                text.lines().any(|l| l.starts_with(&line)),
                "no {comment} for {name}"
            );
        }
    }
    assert_eq!(sample(&text, "echoloop_connections_accepted_total"), 1.0);
    assert_eq!(sample(&text, "echoloop_bytes_out_total"), 12.0);
    assert_eq!(sample(&text, "echoloop_udp_datagrams_out_total"), 1.0);
    assert_eq!(
        sample(&text, "echoloop_connections_closed_total{reason=\"peer\"}"),
        1.0
    );
    assert_eq!(sample(&text, "echoloop_connections_open"), 0.0);
    assert_eq!(sample(&text, "echoloop_loops"), 1.0);
    let build = format!(
        "echoloop_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), 1.0);

    if let Some(promtool) = outside_program("promtool", "prometheus") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        let mut stdin = check.stdin.take().expect("promtool stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
        drop(stdin);
        let out = check.wait_with_output().expect("promtool output");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool check metrics: {said}");
        assert!(said.trim().is_empty(), "promtool check metrics: {said}");
    }
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_for_exit(Duration::from_secs(60))
        .is_some_and(|s| s.success()));
}

#[test]
fn anything_but_get_metrics_gets_its_status_and_a_close() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let cases: &[(&[u8], u16)] = &[
        (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET / HTTP/1.0\r\n\r\n", 404),
        (
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            405,
        ),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /metrics SPDY/3\r\nHost: x\r\n\r\n", 400),
    ];
    for (request, expected) in cases {
        let (status, head) = exchange(metrics, request);
        let shown = String::from_utf8_lossy(request);
        assert_eq!(status, *expected, "{shown:?}: {head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        if *expected == 405 {
            assert!(head.contains("\r\nAllow: GET"), "{head}");
        }
    }
    // A head over the cap is refused once the cap is passed, not read on.
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
    huge.resize(9 * 1024, b'a');
    let (status, head) = exchange(metrics, &huge);
    assert_eq!(status, 431, "{head}");
    // And the endpoint still serves.
    scrape(metrics);
}

#[test]
fn slow_and_excess_scrapers_cannot_stall_echo_and_are_cut_off() {
    const SLOTS: usize = 4;
    const EXCESS: usize = 20;
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    // Each holds a slot with half a request and never finishes it.
    let slow: Vec<TcpStream> = (0..SLOTS)
        .map(|_| {
            let mut stream = connect(metrics);
            stream.write_all(b"GET /metr").expect("half a request");
            stream
        })
        .collect();
    // Accepted after them (the backlog is first come, first served), and
    // closed at once: no slot is free.
    for _ in 0..EXCESS {
        let mut extra = connect(metrics);
        assert!(sees_close(&mut extra), "an excess scraper was kept");
    }
    let mut echo = connect(server.addr());
    for round in 0..100u32 {
        ping(&mut echo, &round.to_be_bytes());
    }
    // The time limit closes the slow ones (within the read timeout), and
    // then the endpoint serves again.
    for mut stream in slow {
        assert!(sees_close(&mut stream), "a slow scraper was never cut off");
    }
    scrape(metrics);
    ping(&mut echo, b"still echoing");
}

#[test]
fn with_threads_a_scrape_waits_for_every_loop_and_sums_them() {
    const CLIENTS: u64 = 8;
    let mut server = Server::start(&["--metrics", "127.0.0.1:0", "--threads", "2"]);
    let metrics = server.metrics_addr();
    for _ in 0..CLIENTS {
        let mut stream = connect(server.addr());
        ping(&mut stream, &[7u8; 100]);
        finish_sending(&stream);
        assert!(read_to_end(&mut stream).is_empty());
    }
    let text = scrape(metrics);
    assert_eq!(
        sample(&text, "echoloop_connections_accepted_total"),
        CLIENTS as f64
    );
    assert_eq!(
        sample(&text, "echoloop_bytes_out_total"),
        (CLIENTS * 100) as f64
    );
    assert_eq!(sample(&text, "echoloop_loops"), 2.0);
    // Several scrapes at once are answered from one round of questions.
    let scrapers: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || scrape(metrics)))
        .collect();
    for scraper in scrapers {
        let text = scraper.join().expect("scraper");
        assert_eq!(sample(&text, "echoloop_loops"), 2.0);
    }
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_for_exit(Duration::from_secs(60))
        .is_some_and(|s| s.success()));
}

#[test]
fn a_metrics_address_in_use_is_one_error_line_and_nothing_printed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let error =
        exits_1_with_one_error_line(&["--listen", "127.0.0.1:0", "--metrics", addr.as_str()]);
    assert!(
        error.contains(&format!("cannot serve metrics on {addr}")),
        "{error}"
    );
}

#[test]
fn help_lists_metrics_and_explains_supervisors() {
    let out = Command::new(server_bin())
        .arg("--help")
        .output_within()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for said in [
        "--metrics <ADDR>",
        "http://ADDR/metrics",
        "LISTEN_FDS",
        "replace the default",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        assert!(help.contains(said), "--help lacks {said:?}:\n{help}");
    }
}

/// A prometheus server of the test's, killed (by its PID) on drop.
struct Prometheus {
    child: Child,
    log: Arc<Mutex<String>>,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` on a free port with `config`, its data in `dir`,
    /// and waits until it is ready; tries other ports while the one picked
    /// turns out to be taken.
    fn start(program: &Path, dir: &Path, config: &Path) -> Prometheus {
        for attempt in 1..=5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut child = Command::new(program)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start prometheus");
            let log = Arc::new(Mutex::new(String::new()));
            let sink = log.clone();
            let mut pipe = child.stderr.take().expect("stderr");
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            });
            let mut prometheus = Prometheus { child, log, addr };
            match prometheus.wait_until_ready() {
                Ok(()) => return prometheus,
                Err(why) => println!("attempt {attempt}: {why}"),
            }
        }
        panic!("prometheus could not start on a free port in 5 attempts");
    }

    /// Waits (up to 60 s) until `/-/ready` answers 200; an error if the
    /// process exits first.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.is_ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("prometheus exited ({status}):\n{}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 60 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_ready(&self) -> bool {
        let Ok(stream) = TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let mut stream = stream;
        let request = format!("GET /-/ready HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        let mut response = Vec::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_end(&mut response).is_ok()
            && response.starts_with(b"HTTP/1.0 200")
    }

    /// The value of the instant query `query`, if it has one sample, and
    /// that sample's labels.
    fn query(&self, query: &str) -> Option<(f64, serde_json::Value)> {
        let (status, head, body) = http_get(self.addr, &format!("/api/v1/query?query={query}"));
        assert_eq!(status, 200, "{head}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("query JSON");
        let result = json["data"]["result"].as_array()?;
        let first = result.first()?;
        let value = first["value"][1].as_str()?.parse().ok()?;
        Some((value, first["metric"].clone()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_a_live_server_and_sees_the_echoed_bytes_rise() {
    let Some(program) = outside_program("prometheus", "prometheus") else {
        return;
    };
    const CLIENTS: usize = 3;
    let mut server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: echoloop\n    static_configs:\n      \
             - targets: ['{metrics}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let prometheus = Prometheus::start(&program, dir.path(), &config);

    // Load while prometheus watches: a few clients echoing, bounded in
    // count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, addr) = (stop.clone(), server.addr());
            thread::spawn(move || {
                let mut stream = connect(addr);
                let started = Instant::now();
                let message = [i as u8; 1024];
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(90) {
                        break;
                    }
                    ping(&mut stream, &message);
                    thread::sleep(Duration::from_millis(1));
                }
                finish_sending(&stream);
                assert!(read_to_end(&mut stream).is_empty());
            })
        })
        .collect();

    let mut first = None;
    let mut risen = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while risen.is_none() && Instant::now() < deadline {
        if let Some((value, _)) = prometheus.query("echoloop_bytes_out_total") {
            match first {
                None if value > 0.0 => first = Some(value),
                Some(before) if value > before => risen = Some((before, value)),
                _ => {}
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    let build = prometheus.query("echoloop_build_info");
    let log = prometheus.log();
    drop(prometheus);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let Some((before, after)) = risen else {
        panic!("prometheus never saw echoloop_bytes_out_total rise (first {first:?}):\n{log}");
    };
    assert!(before > 0.0 && after > before);
    let (_, labels) = build.expect("echoloop_build_info in prometheus");
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["job"], "echoloop");
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_for_exit(Duration::from_secs(60))
        .is_some_and(|s| s.success()));
}
