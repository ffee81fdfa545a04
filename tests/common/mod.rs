//! Helpers shared by the black-box tests: start a server process, talk to it
//! over loopback with timeouts, and make verifiable byte patterns.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Every socket in the tests gets this timeout, so a bug fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The server binary under test: this package's `echoloop`, or the one
/// named by `ECHOLOOP_BIN` (to show a regression test failing on an older
/// build).
pub fn server_bin() -> PathBuf {
    std::env::var_os("ECHOLOOP_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_echoloop")),
        PathBuf::from,
    )
}

/// An example binary, built by this call if needed (once per test process):
/// `cargo build --example NAME` with the cargo, profile and target
/// directory of this test binary, so a filtered run on a clean `target/`
/// (`cargo test --test embed`) works as well as plain `cargo test`.
pub fn example_bin(name: &str) -> PathBuf {
    cargo_built(&["--example", name])
        .join("examples")
        .join(name)
}

/// The load generator's binary (`benches/loadgen`), built by this call if
/// needed, the same way as [`example_bin`].
pub fn loadgen_bin() -> PathBuf {
    cargo_built(&["-p", "echoloop-loadgen", "--bin", "echoloop-loadgen"]).join("echoloop-loadgen")
}

/// Runs `cargo build --quiet ARGS` once per test process with this test
/// binary's cargo, profile and target directory; returns target/<profile>.
fn cargo_built(what: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    // `dir` is target/<profile>; its parent is the target directory.
    let release = dir.ends_with("release");
    let target_dir = dir.parent().expect("target directory").to_path_buf();
    let key = what.join(" ");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&key) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet"])
            .args(what)
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        // Captured: nothing of it shows among passing tests.
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build {key} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(key);
    }
    dir
}

/// A running server process, killed on drop if still running.
pub struct Server {
    child: Child,
    pub addrs: Vec<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    // Disconnected once the stderr reader has read to the end of the pipe.
    stderr_done: mpsc::Receiver<()>,
}

impl Server {
    /// Starts the echoloop binary with `args`, listening on 127.0.0.1:0
    /// unless `args` has a `--listen`.
    pub fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(server_bin());
        cmd.args(args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let listeners = args.iter().filter(|a| **a == "--listen").count().max(1);
        Server::spawn(cmd, listeners)
    }

    /// Starts the echoloop binary with `args` (which must include one
    /// `--listen`) under the shell's `ulimit` commands, e.g. `"ulimit -n 64"`.
    pub fn start_with_ulimit(ulimit: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
            .arg(server_bin())
            .args(args);
        Server::spawn(cmd, 1)
    }

    /// Spawns `cmd` and waits for `listeners` lines `listening on IP:PORT`
    /// or `listening on udp IP:PORT`, in the order printed.
    pub fn spawn(mut cmd: Command, listeners: usize) -> Server {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start server");
        let Readers {
            stdout: rx,
            stderr,
            stderr_done,
        } = read_output(&mut child);
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("no 'listening on' line; stderr: {}", stderr.lock().unwrap())
                });
            // `listening on udp IP:PORT` lines follow the TCP ones.
            let addr = line
                .strip_prefix("listening on ")
                .map(|a| a.strip_prefix("udp ").unwrap_or(a))
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"));
            addrs.push(addr.parse().expect("listening address"));
        }
        Server {
            child,
            addrs,
            stderr,
            stderr_done,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to 10 s for `needle` to appear in the server's stderr.
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGUSR1 and waits (up to 10 s) for one more `stats:` line in
    /// the log; returns the whole log.
    pub fn request_stats(&self) -> String {
        let before = self.stderr().matches("stats:").count();
        self.signal(libc::SIGUSR1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let log = self.stderr();
            if log.matches("stats:").count() > before {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("no stats line after SIGUSR1; stderr: {}", self.stderr());
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill() only sends a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `limit` for the process to exit, then (up to 5 s more)
    /// for its stderr to be read to the end, so `stderr()` holds its last
    /// lines: the reader thread may lag behind the exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(5));
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// User plus system CPU time of the process so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields overall.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Resident memory of the process in bytes, from /proc.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects with read and write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A deterministic byte pattern per seed (xorshift), so every echoed byte
/// can be checked without keeping a copy of what was sent.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// Sends `total` pattern bytes in chunks drawn from `chunk_sizes` (cycled)
/// while another thread reads them back and checks each byte; returns the
/// bytes verified. Panics on any mismatch, early EOF or timeout.
pub fn echo_verified(stream: TcpStream, seed: u64, total: usize, chunk_sizes: &[usize]) -> usize {
    let mut writer = stream.try_clone().unwrap();
    let sizes = chunk_sizes.to_vec();
    let sender = thread::spawn(move || {
        let mut pattern = Pattern::new(seed);
        let mut sent = 0;
        let mut buf = Vec::new();
        for size in sizes.iter().cycle() {
            if sent >= total {
                break;
            }
            let n = (*size).min(total - sent);
            buf.resize(n, 0);
            pattern.fill(&mut buf);
            writer.write_all(&buf).expect("send");
            sent += n;
        }
    });
    let received = read_verified(&stream, seed, total);
    sender.join().expect("sender");
    received
}

/// Reads exactly `total` bytes and checks them against the pattern.
pub fn read_verified(mut stream: &TcpStream, seed: u64, total: usize) -> usize {
    let mut pattern = Pattern::new(seed);
    let mut expected = vec![0u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < total {
        let want = buf.len().min(total - received);
        let n = read_some(&mut stream, &mut buf[..want]).expect("read echo");
        assert!(n > 0, "EOF after {received} of {total} bytes");
        pattern.fill(&mut expected[..n]);
        if buf[..n] != expected[..n] {
            let at = (0..n).find(|&i| buf[i] != expected[i]).unwrap();
            panic!("mismatch at byte {}", received + at);
        }
        received += n;
    }
    received
}

/// One request and its echo.
pub fn ping(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("ping write");
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).expect("ping read");
    assert_eq!(back, msg);
}

/// True if the peer closed (EOF or reset) within the socket's read timeout;
/// false if data arrived or the read timed out.
pub fn sees_close(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match read_some(stream, &mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Reads to EOF and returns everything.
pub fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read to end");
    all
}

/// Half-closes our side.
pub fn finish_sending(stream: &TcpStream) {
    stream.shutdown(Shutdown::Write).expect("shutdown write");
}

/// An in-process echo server bound to 127.0.0.1:0 and registered with `poll`.
pub fn embedded_server(
    poll: &mio::Poll,
    config: echoloop::Config,
) -> (echoloop::EchoServer, SocketAddr) {
    let mut server = echoloop::EchoServer::new(config, mio::Token(0)).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.register(poll.registry()).unwrap();
    (server, addr)
}

/// One turn of a host loop that runs only `server`: poll for up to
/// `timeout`, hand the events to the server, then its deadlines. A poll
/// interrupted by a signal is an empty turn.
pub fn host_turn(
    server: &mut echoloop::EchoServer,
    poll: &mut mio::Poll,
    events: &mut mio::Events,
    timeout: Duration,
) {
    poll_turn(poll, events, Some(timeout));
    let now = Instant::now();
    server.handle_events(poll.registry(), events, now).unwrap();
    server.handle_timeout(poll.registry(), now).unwrap();
}

/// Longest a command run to completion by a test may take before it is
/// killed and the test fails (instead of hanging CI).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// `Command::output` with a bound: a process that should exit at once (a
/// usage error, a port in use) but keeps running because of a bug fails the
/// test after [`COMMAND_LIMIT`] instead of hanging it.
pub trait OutputWithin {
    /// Runs to completion like `output()`; panics (after killing it) if the
    /// process is still running after [`COMMAND_LIMIT`].
    fn output_within(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::io::Result<std::process::Output> {
        // Both captured, as `output()` does by default.
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} still running after {COMMAND_LIMIT:?}: killed");
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(std::process::Output {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        })
    }
}

/// The number after ` key=` in the last line of `log` that contains
/// `prefix` (e.g. "stats:" or "shutdown complete:"), or None.
pub fn log_field(log: &str, prefix: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(prefix))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()?.parse().ok()
}

// Reads that an interruption does not end.

/// `read`, again if interrupted. A read on a socket with a timeout fails
/// with `Interrupted` when this process is stopped and continued (a
/// debugger, a cgroup freezer), even with no signal handler installed; that
/// is no answer from the peer.
pub fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `poll` for a host loop's turn: an interrupted poll (a signal, a stop and
/// continue) is a turn with no events.
pub fn poll_turn(poll: &mut mio::Poll, events: &mut mio::Events, timeout: Option<Duration>) {
    match poll.poll(events, timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
        Err(e) => panic!("poll: {e}"),
    }
}

/// `recv_from`, again if interrupted (see [`read_some`]).
pub fn recv_some(
    socket: &std::net::UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match socket.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

// Ports and sockets, as the kernel has them.

/// A loopback address where no one listens, and no one can while the
/// returned socket lives: it holds the port (bound, never listening, without
/// SO_REUSEADDR), so a connect there is refused. A port found by binding
/// and dropping a listener may be taken by another test before it is used.
pub fn refused_addr() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind a port");
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// The descriptors of process `pid` that are TCP sockets listening on
/// `port` (IPv4 or IPv6).
pub fn listening_fds(pid: i32, port: u16) -> std::io::Result<Vec<i32>> {
    socket_fds(pid, &["tcp", "tcp6"], port, Some("0A"))
}

/// The descriptors of process `pid` that are sockets on local `port` in
/// the /proc/net `tables` of its network namespace ("tcp", "tcp6", "udp",
/// "udp6"), in `state` if given (as /proc shows it: "0A" is listening),
/// matched by inode with its open descriptors. Asking /proc what a process
/// holds is exact where a connect or a datagram to a freed port could reach
/// whoever binds it next. Err if /proc cannot be read (the process is gone).
pub fn socket_fds(
    pid: i32,
    tables: &[&str],
    port: u16,
    state: Option<&str>,
) -> std::io::Result<Vec<i32>> {
    let suffix = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in tables {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        inodes.extend(
            text.lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() > 9 && f[1].ends_with(&suffix))
                .filter(|f| state.is_none_or(|state| f[3] == state))
                .map(|f| f[9].to_string()),
        );
    }
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'));
        if inode.is_some_and(|inode| inodes.iter().any(|i| i == inode)) {
            if let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                fds.push(fd);
            }
        }
    }
    Ok(fds)
}

// Counters, as tests of several topics read them.

impl Server {
    /// The server's counters now: sends SIGUSR1 and returns the `stats:`
    /// line it logs in answer (waiting up to 10 s for it).
    pub fn stats_line(&self) -> String {
        let log = self.request_stats();
        let line = log.lines().rev().find(|l| l.contains("stats:"));
        line.unwrap_or_default().to_string()
    }
}

/// `name`'s value in the `stats:` line `line`; panics if it has none.
pub fn stat(line: &str, name: &str) -> u64 {
    log_field(line, "stats:", name).unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// Each loop's active connections from the last `stats:` line in `log`
/// (`active_per_loop=[A,B]`, logged when the server runs several loops).
pub fn per_loop(log: &str) -> Option<Vec<u64>> {
    let line = log.lines().rev().find(|l| l.contains("stats:"))?;
    let list = line.split("active_per_loop=[").nth(1)?.split(']').next()?;
    list.split(',').map(|n| n.parse().ok()).collect()
}

/// Runs echoloop with `args`, expecting exit 1, nothing on stdout and
/// exactly one stderr line containing "error"; returns that line for the
/// caller's own check.
pub fn exits_1_with_one_error_line(args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .args(args)
        .output_within()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed {:?} before failing",
        String::from_utf8_lossy(&out.stdout)
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    errors[0].to_string()
}

/// Runs the load generator's binary with `args` (stdin closed, bounded by
/// [`COMMAND_LIMIT`]); returns its exit code and stdout. Its stderr is
/// passed on to the test's own (captured) output.
pub fn loadgen_process(args: &[&str]) -> (i32, String) {
    let out = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .output_within()
        .expect("run the load generator");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().expect("exit code");
    (code, String::from_utf8(out.stdout).expect("utf-8 output"))
}

/// [`loadgen_process`] with `--json` added: its exit code and JSON line
/// (empty if it printed none).
pub fn loadgen_json(args: &[&str]) -> (i32, String) {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let (code, stdout) = loadgen_process(&args);
    (code, json_line(&stdout).unwrap_or_default().to_string())
}

/// The load generator's JSON line in `stdout`: the first starting with `{`.
pub fn json_line(stdout: &str) -> Option<&str> {
    stdout.lines().find(|l| l.starts_with('{'))
}

/// The integer after `"name":` in the load generator's JSON line.
pub fn json_number(json: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {json:?}"))
        + key.len();
    json[at..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not an integer in {json}"))
}

/// How long a UDP reply may take before the test fails (loopback, loaded
/// machine).
pub const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A UDP socket on loopback of `server`'s family, with a read timeout.
pub fn udp_client_for(server: SocketAddr) -> std::net::UdpSocket {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let c = std::net::UdpSocket::bind(local).expect("bind client");
    c.set_read_timeout(Some(UDP_REPLY_TIMEOUT)).unwrap();
    c
}

/// Sends `msg` and returns the one reply's length (asserting it came from
/// `server`).
pub fn udp_round_trip(
    c: &std::net::UdpSocket,
    server: SocketAddr,
    msg: &[u8],
    buf: &mut [u8],
) -> usize {
    let sent = c.send_to(msg, server).expect("send datagram");
    assert_eq!(sent, msg.len());
    let (n, from) = recv_some(c, buf)
        .unwrap_or_else(|e| panic!("no echo of a {}-byte datagram: {e}", msg.len()));
    assert_eq!(from, server, "reply from the wrong address");
    n
}

/// Busy-loop threads that keep the machine's cores loaded while they live,
/// so a test can check that a race keeps its promise on a busy machine.
/// They stop when this is dropped.
pub struct CpuHogs {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl CpuHogs {
    /// Starts `n` spinning threads.
    pub fn start(n: usize) -> CpuHogs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Sends `signal` and waits (up to 10 s) until the kernel has delivered
    /// it: no longer pending for the process. Two signals sent back to back
    /// before the first is delivered are merged by the kernel into one; a
    /// test that means two sends the second only after this returns.
    pub fn signal_delivered(&self, signal: i32) {
        self.signal(signal);
        let bit = 1u64 << (signal - 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
            let pending = status
                .lines()
                .filter(|l| l.starts_with("ShdPnd:") || l.starts_with("SigPnd:"))
                .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
                .fold(0, |all, mask| all | mask);
            if pending & bit == 0 {
                return;
            }
            thread::yield_now();
        }
        panic!("signal {signal} still pending after 10 s");
    }
}

/// The path of `program` on `PATH`, or None after printing a line that says
/// the test is skipped and which Debian package brings it (`.ci/run`
/// installs them, so CI never skips).
pub fn outside_program(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        println!("skipped: {program} is not installed (Debian package {package})");
    }
    found
}

/// A port on 127.0.0.1 that was free a moment ago, for a program that
/// cannot be told to pick its own (port 0). Another process may take it
/// before the program binds it: callers retry with a new one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("echoloop-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP/1.0 GET of `target` (path and query) from `addr`, read to the
/// server's close: the status code, the head (status line and headers, as
/// text) and the body. HTTP/1.0 so no server answers in chunks.
pub fn http_get(addr: SocketAddr, target: &str) -> (u16, String, Vec<u8>) {
    let mut stream = connect(addr);
    let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    http_response(&read_to_end(&mut stream))
}

/// Splits a whole HTTP response into its status code, head and body.
pub fn http_response(bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, bytes[end + 4..].to_vec())
}

/// Output lines the server process printed so far, split by stream, while
/// the test waits for a cue on stderr (see [`Server::spawn_on_cue`]).
struct Readers {
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_done: mpsc::Receiver<()>,
}

/// Starts threads that read `child`'s stdout (line by line, into a
/// channel) and stderr (into a shared string).
fn read_output(child: &mut Child) -> Readers {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let pipe = child.stderr.take().expect("stderr");
    let (done_tx, stderr_done) = mpsc::channel::<()>();
    thread::spawn(move || {
        let _done = done_tx; // dropped at the end of the pipe
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    Readers {
        stdout: lines,
        stderr,
        stderr_done,
    }
}

impl Server {
    /// Spawns `cmd`, waits (up to 20 s) for `cue` on its stderr, calls
    /// `then`, and waits for `listeners` `listening on` lines as
    /// [`Server::spawn`] does. For a supervisor that binds the sockets
    /// itself and starts the server only once a client comes
    /// (`systemd-socket-activate`): `then` is that client. Returns the
    /// stderr if the process exits before the cue (its port was taken, say).
    pub fn spawn_on_cue(
        mut cmd: Command,
        cue: &str,
        then: impl FnOnce(),
        listeners: usize,
    ) -> Result<Server, String> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start server");
        let readers = read_output(&mut child);
        let stderr = || {
            readers
                .stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stderr().contains(cue) {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let _ = readers.stderr_done.recv_timeout(Duration::from_secs(5));
                return Err(format!("exited ({status}) before {cue:?}: {}", stderr()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no {cue:?} within 20 s; stderr: {}", stderr());
            }
            thread::sleep(Duration::from_millis(10));
        }
        then();
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let Ok(line) = readers.stdout.recv_timeout(Duration::from_secs(20)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'listening on' line; stderr: {}", stderr());
            };
            let addr = line
                .strip_prefix("listening on ")
                .map(|a| a.strip_prefix("udp ").unwrap_or(a))
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"));
            addrs.push(addr.parse().expect("listening address"));
        }
        Ok(Server {
            child,
            addrs,
            stderr: readers.stderr,
            stderr_done: readers.stderr_done,
        })
    }

    /// The metrics address from the `metrics on http://IP:PORT/metrics`
    /// log line, waiting up to 10 s for it.
    pub fn metrics_addr(&self) -> SocketAddr {
        assert!(
            self.log_contains("metrics on http://"),
            "no metrics line; stderr: {}",
            self.stderr()
        );
        let log = self.stderr();
        let at = log.find("metrics on http://").expect("metrics line") + "metrics on http://".len();
        log[at..]
            .split("/metrics")
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in the metrics line: {log}"))
    }
}
