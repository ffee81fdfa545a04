//! Under a supervisor, with the real outside programs of Debian's `systemd`
//! package: sockets passed by `systemd-socket-activate` (TCP, UDP, several,
//! named, with --threads), descriptors we refuse, the `NOTIFY_SOCKET`
//! messages read from a datagram socket the test binds (a path, and an
//! abstract name that `systemd-notify` reaches too), and the unit files in
//! `deploy/` checked by `systemd-analyze`. A test whose program is missing
//! says so and skips; `.ci/run` installs them.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

fn socket_activate() -> Option<PathBuf> {
    outside_program("systemd-socket-activate", "systemd")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A UDP port of 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind udp")
        .port()
}

/// What `systemd-socket-activate` binds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Datagram,
}

/// echoloop `args` under `systemd-socket-activate`, which binds `sockets`
/// sockets of `kind` on free ports of 127.0.0.1 (plus `supervisor_args`,
/// e.g. `--fdname`) and starts echoloop once `first_contact` has reached the
/// first port; waits for `listeners` `listening on` lines. A port taken in
/// the meantime makes the supervisor exit: then it is tried again on others.
fn activated(
    supervisor: &Path,
    kind: Kind,
    sockets: usize,
    supervisor_args: &[&str],
    args: &[&str],
    listeners: usize,
    first_contact: &mut dyn FnMut(u16),
) -> (Server, Vec<u16>) {
    for attempt in 1..=5 {
        let ports: Vec<u16> = (0..sockets)
            .map(|_| match kind {
                Kind::Stream => free_port(),
                Kind::Datagram => free_udp_port(),
            })
            .collect();
        let mut cmd = Command::new(supervisor);
        if kind == Kind::Datagram {
            cmd.arg("--datagram");
        }
        for port in &ports {
            cmd.arg(format!("--listen=127.0.0.1:{port}"));
        }
        cmd.args(supervisor_args).arg(server_bin()).args(args);
        // It logs one line per socket, the last one last.
        let cue = format!(
            "Listening on 127.0.0.1:{} as {}.",
            ports[sockets - 1],
            2 + sockets
        );
        match Server::spawn_on_cue(cmd, &cue, || first_contact(ports[0]), listeners) {
            Ok(server) => return (server, ports),
            Err(log) => println!("attempt {attempt}: {log}"),
        }
    }
    panic!("systemd-socket-activate found no free ports in 5 attempts");
}

/// Sends `total` pattern bytes (seed `seed`) on `stream` and checks their
/// echo, keeping the connection open.
fn echo_some(stream: &TcpStream, seed: u64, total: usize) {
    let copy = stream.try_clone().expect("clone stream");
    assert_eq!(echo_verified(copy, seed, total, &[1000, 65536, 7]), total);
}

/// Half-closes and expects our FIN after nothing more: everything was
/// echoed, and the end is orderly, not a reset.
fn finish_cleanly(mut stream: TcpStream) {
    finish_sending(&stream);
    assert!(read_to_end(&mut stream).is_empty(), "bytes after the echo");
}

/// Waits for a clean exit after the SIGTERM already sent; returns the log.
fn exits_0(server: &mut Server) -> String {
    let status = server
        .wait_for_exit(Duration::from_secs(60))
        .expect("exit after SIGTERM");
    let log = server.stderr();
    assert!(status.success(), "{status}: {log}");
    log
}

#[test]
fn an_inherited_listener_is_served_beside_an_explicit_udp_and_sigterm_loses_nothing() {
    let Some(supervisor) = socket_activate() else {
        return;
    };
    const CLIENTS: usize = 4;
    let mut first = None;
    let (mut server, ports) = activated(
        &supervisor,
        Kind::Stream,
        1,
        &[],
        &["--udp", "127.0.0.1:0", "--shutdown-timeout", "60"],
        2,
        &mut |port| first = Some(connect(loopback(port))),
    );
    // The inherited listener replaced the default --listen; the --udp given
    // is bound beside it.
    assert_eq!(server.addrs[0], loopback(ports[0]));
    let udp = server.addrs[1];
    assert_ne!(udp.port(), 7007);
    let client = udp_client_for(udp);
    let mut buf = [0u8; 64];
    assert_eq!(udp_round_trip(&client, udp, b"udp beside", &mut buf), 10);
    assert!(server.log_contains(&format!("inherited fd 3: 127.0.0.1:{}", ports[0])));

    let mut streams = vec![first.take().expect("the first client")];
    streams.extend((1..CLIENTS).map(|_| connect(server.addr())));
    for (seed, stream) in streams.iter().enumerate() {
        echo_some(stream, seed as u64, 64 * 1024);
    }
    server.signal_delivered(libc::SIGTERM);
    assert!(server.log_contains("shutting down"), "{}", server.stderr());
    // Shutdown keeps echoing each client to its own FIN.
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(seed, stream)| {
            thread::spawn(move || {
                echo_some(&stream, 100 + seed as u64, 256 * 1024);
                finish_cleanly(stream);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    let log = exits_0(&mut server);
    let total = (CLIENTS * (64 + 256) * 1024) as u64;
    assert_eq!(
        log_field(&log, "shutdown complete:", "bytes_out"),
        Some(total)
    );
    // Closed after shutdown began, each after its client's FIN.
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_by_shutdown"),
        Some(CLIENTS as u64)
    );
    assert_eq!(
        log_field(&log, "shutdown complete:", "closed_with_reset"),
        Some(0)
    );
}

#[test]
fn an_inherited_udp_socket_echoes_datagrams() {
    let Some(supervisor) = socket_activate() else {
        return;
    };
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.set_read_timeout(Some(UDP_REPLY_TIMEOUT)).unwrap();
    let (mut server, ports) = activated(&supervisor, Kind::Datagram, 1, &[], &[], 1, &mut |port| {
        client.send_to(b"wake up", loopback(port)).expect("send");
    });
    let addr = server.addr();
    assert_eq!(addr, loopback(ports[0]));
    // The datagram that started the server waited in the socket.
    let mut buf = vec![0u8; 65536];
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("echo of the first datagram");
    assert_eq!((&buf[..n], from), (&b"wake up"[..], addr));
    for size in [1, 1472, 65507] {
        let mut msg = vec![0u8; size];
        Pattern::new(size as u64).fill(&mut msg);
        assert_eq!(udp_round_trip(&client, addr, &msg, &mut buf), size);
        assert!(buf[..size] == msg[..], "{size}-byte datagram changed");
    }
    assert!(server.log_contains(&format!("inherited fd 3: udp 127.0.0.1:{}", ports[0])));
    server.signal(libc::SIGTERM);
    let log = exits_0(&mut server);
    assert_eq!(
        log_field(&log, "shutdown complete:", "udp_datagrams_out"),
        Some(4)
    );
}

#[test]
fn several_named_inherited_listeners_and_an_explicit_listen_are_all_served() {
    let Some(supervisor) = socket_activate() else {
        return;
    };
    let mut first = None;
    let (mut server, ports) = activated(
        &supervisor,
        Kind::Stream,
        2,
        &["--fdname=first:second"],
        &["--listen", "127.0.0.1:0"],
        3,
        &mut |port| first = Some(connect(loopback(port))),
    );
    // Inherited first, in descriptor order, then the command line's.
    assert_eq!(server.addrs[..2], [loopback(ports[0]), loopback(ports[1])]);
    let mut streams = vec![first.take().expect("the first client")];
    streams.extend(server.addrs[1..].iter().map(|addr| connect(*addr)));
    for mut stream in streams {
        ping(&mut stream, b"to every socket");
        finish_cleanly(stream);
    }
    for (fd, name, port) in [(3, "first", ports[0]), (4, "second", ports[1])] {
        let said = format!("inherited fd {fd} ({name}): 127.0.0.1:{port}");
        assert!(
            server.log_contains(&said),
            "no {said:?}: {}",
            server.stderr()
        );
    }
    server.signal(libc::SIGTERM);
    let log = exits_0(&mut server);
    assert_eq!(log_field(&log, "shutdown complete:", "accepted"), Some(3));
}

#[test]
fn with_threads_every_loop_serves_the_one_inherited_listener() {
    let Some(supervisor) = socket_activate() else {
        return;
    };
    const CLIENTS: usize = 8;
    let mut first = None;
    let (mut server, ports) = activated(
        &supervisor,
        Kind::Stream,
        1,
        &[],
        &["--threads", "2"],
        1,
        &mut |port| first = Some(connect(loopback(port))),
    );
    assert_eq!(server.addr(), loopback(ports[0]));
    let mut streams = vec![first.take().expect("the first client")];
    streams.extend((1..CLIENTS).map(|_| connect(server.addr())));
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(seed, stream)| {
            thread::spawn(move || {
                echo_some(&stream, seed as u64, 128 * 1024);
                finish_cleanly(stream);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    server.signal(libc::SIGTERM);
    let log = exits_0(&mut server);
    assert_eq!(
        log_field(&log, "shutdown complete:", "accepted"),
        Some(CLIENTS as u64)
    );
    assert_eq!(log_field(&log, "shutdown complete:", "loops"), Some(2));
}

/// echoloop `args` started by bash (whose redirections take descriptors
/// above 9, unlike POSIX sh) with `fd` of this process as its fd 3 (or
/// /dev/null) and the activation variables naming it, as a supervisor would.
fn with_fd_3(fd: Option<i32>, args: &[&str]) -> Command {
    let redirect = match fd {
        None => "3</dev/null".to_string(),
        Some(3) => String::new(),
        Some(fd) => format!("3<&{fd} {fd}<&-"),
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\" {redirect}"
        ))
        .arg(server_bin())
        .args(args);
    cmd
}

/// Runs `cmd` to its end and expects exit 1, nothing on stdout and one
/// `echoloop: error:` line, which it returns.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output_within().expect("run echoloop");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "printed before failing: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("echoloop: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

#[test]
fn a_descriptor_that_is_not_a_socket_is_refused_with_one_error() {
    let error = refused(&mut with_fd_3(None, &["--listen", "127.0.0.1:0"]));
    assert!(error.contains("inherited fd 3 is not a socket"), "{error}");
}

#[test]
fn sockets_we_do_not_serve_are_refused_with_one_error() {
    use socket2::{Domain, Socket, Type};
    let not_listening = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    not_listening.bind(&loopback(0).into()).unwrap();
    let connected_udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    connected_udp.bind(&loopback(0).into()).unwrap();
    connected_udp.connect(&loopback(9).into()).unwrap();
    let seqpacket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    for (socket, why) in [
        (&not_listening, "is a TCP socket that is not listening"),
        (&connected_udp, "is a connected UDP socket"),
        (&seqpacket, "family AF_UNIX"),
    ] {
        // Inherited by this one child only while it starts: other tests'
        // children may inherit it meanwhile, which costs them nothing.
        socket.set_cloexec(false).unwrap();
        let fd = socket.as_raw_fd();
        let error = refused(&mut with_fd_3(Some(fd), &["--listen", "127.0.0.1:0"]));
        socket.set_cloexec(true).unwrap();
        assert!(
            error.contains("inherited fd 3 ") && error.contains(why),
            "{error}"
        );
    }
}

#[test]
fn a_unix_socket_from_the_supervisor_is_refused_with_one_error() {
    let Some(supervisor) = socket_activate() else {
        return;
    };
    let dir = TempDir::new("unix-activation");
    let path = dir.path().join("echo.sock");
    let mut cmd = Command::new(supervisor);
    cmd.arg(format!("--listen={}", path.display()))
        .arg(server_bin());
    let cue = format!("Listening on {} as 3.", path.display());
    let mut server = Server::spawn_on_cue(
        cmd,
        &cue,
        || drop(UnixStream::connect(&path).expect("connect")),
        0,
    )
    .expect("systemd-socket-activate listening");
    let status = server.wait_for_exit(Duration::from_secs(60)).expect("exit");
    let log = server.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("echoloop: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("inherited fd 3 is a socket of family AF_UNIX"),
        "{log}"
    );
}

#[test]
fn sockets_for_another_process_are_ignored_and_the_command_line_is_served() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=1 LISTEN_FDS=1; exec \"$0\" \"$@\" 3</dev/null")
        .arg(server_bin())
        .args(["--listen", "127.0.0.1:0"]);
    let mut server = Server::spawn(cmd, 1);
    let mut stream = connect(server.addr());
    ping(&mut stream, b"still here");
    finish_cleanly(stream);
    assert!(server.log_contains("LISTEN_PID=1 names another process"));
    server.signal(libc::SIGTERM);
    exits_0(&mut server);
}

/// The next message on the notification socket (failing after the socket's
/// read timeout).
fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8(buf[..n].to_vec()).expect("utf-8 notification"),
            // A socket with a receive timeout is never restarted after a
            // signal (signal(7)).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no notification: {e} ({:?})", e.kind()),
        }
    }
}

/// Reads notifications until one has the line `wanted`, at most `limit`
/// of them; returns those read.
fn messages_until(socket: &UnixDatagram, wanted: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..limit {
        let message = next_message(socket);
        let done = message.lines().any(|line| line == wanted);
        seen.push(message);
        if done {
            return seen;
        }
    }
    panic!("no {wanted:?} in {limit} notifications: {seen:?}");
}

/// A datagram socket bound where NOTIFY_SOCKET will point, with a timeout.
fn notify_socket(addr: &UnixAddr) -> UnixDatagram {
    let socket = UnixDatagram::bind_addr(addr).expect("bind the notification socket");
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket
}

#[test]
fn a_notify_socket_hears_ready_status_watchdog_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify");
    let socket = notify_socket(&UnixAddr::from_pathname(&path).unwrap());
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--stats-interval", "0.2"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let mut server = Server::spawn(cmd, 1);
    assert_eq!(next_message(&socket), "READY=1", "ready comes first");
    let mut stream = connect(server.addr());
    ping(&mut stream, b"counted");
    finish_cleanly(stream);
    let mut watchdogs = 0;
    let mut status_seen = false;
    for _ in 0..1000 {
        let message = next_message(&socket);
        watchdogs += usize::from(message == "WATCHDOG=1");
        status_seen |=
            message == "STATUS=0 connections open, 1 accepted; echoed 7 bytes, 0 datagrams";
        if watchdogs >= 3 && status_seen {
            break;
        }
    }
    assert!(watchdogs >= 3 && status_seen, "{watchdogs} watchdogs");
    server.signal(libc::SIGTERM);
    messages_until(&socket, "STOPPING=1", 1000);
    exits_0(&mut server);
}

#[test]
fn with_threads_an_abstract_notify_socket_hears_ready_and_the_loops_watchdog() {
    let name = format!("echoloop-test-notify-{}", std::process::id());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = notify_socket(&addr);
    // The real systemd-notify reaches the test's socket by the same name.
    if let Some(notify) = outside_program("systemd-notify", "systemd") {
        let out = Command::new(notify)
            .args(["--no-block", "--ready"])
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .output_within()
            .expect("run systemd-notify");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(next_message(&socket), "READY=1");
    }
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--threads", "2"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID");
    let mut server = Server::spawn(cmd, 1);
    assert_eq!(next_message(&socket), "READY=1", "ready comes first");
    for _ in 0..3 {
        assert_eq!(next_message(&socket), "WATCHDOG=1");
    }
    let mut stream = connect(server.addr());
    ping(&mut stream, b"both loops turn");
    finish_cleanly(stream);
    server.signal(libc::SIGTERM);
    messages_until(&socket, "STOPPING=1", 1000);
    exits_0(&mut server);
}

#[test]
fn an_unreachable_notify_socket_is_logged_once_and_never_fatal() {
    let dir = TempDir::new("notify-nobody");
    let mut cmd = Command::new(server_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--stats-interval", "0.1"])
        .env("NOTIFY_SOCKET", dir.path().join("nobody-reads-here"))
        .env("WATCHDOG_USEC", "100000")
        .env_remove("WATCHDOG_PID");
    let mut server = Server::spawn(cmd, 1);
    let mut stream = connect(server.addr());
    ping(&mut stream, b"serving anyway");
    // Each stats line also fails to send its STATUS=.
    let mut lines = 0;
    while lines < 3 {
        lines = server.request_stats().matches("stats:").count();
    }
    finish_cleanly(stream);
    server.signal(libc::SIGTERM);
    let log = exits_0(&mut server);
    assert_eq!(
        log.matches("cannot notify the supervisor").count(),
        1,
        "{log}"
    );
}

/// The unit files with ExecStart pointing at the binary under test, in a
/// temp dir (systemd-analyze checks that the program exists).
fn units_in(dir: &Path) -> (PathBuf, PathBuf) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let service = std::fs::read_to_string(deploy.join("echoloop.service")).expect("service");
    assert!(service.contains("ExecStart=/usr/local/bin/echoloop "));
    let service = service.replace(
        "ExecStart=/usr/local/bin/echoloop ",
        &format!("ExecStart={} ", server_bin().display()),
    );
    let (socket_path, service_path) = (dir.join("echoloop.socket"), dir.join("echoloop.service"));
    std::fs::copy(deploy.join("echoloop.socket"), &socket_path).expect("copy socket unit");
    std::fs::File::create(&service_path)
        .and_then(|mut f| f.write_all(service.as_bytes()))
        .expect("write service unit");
    (socket_path, service_path)
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify_and_security() {
    let Some(analyze) = outside_program("systemd-analyze", "systemd") else {
        return;
    };
    let dir = TempDir::new("units");
    let (socket, service) = units_in(dir.path());
    let text = std::fs::read_to_string(&service).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE=",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "no {line}");
    }
    let out = Command::new(&analyze)
        .arg("verify")
        .args([&socket, &service])
        .output_within()
        .expect("run systemd-analyze verify");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warns: {said}"
    );
    // Exposure 2.0 or less on systemd's 0-10 scale ("OK" starts above).
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&service)
        .output_within()
        .expect("run systemd-analyze security");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn malformed_activation_variables_and_missing_descriptors_are_one_error() {
    let cases = [
        (
            "export LISTEN_PID=$$ LISTEN_FDS=two",
            "LISTEN_FDS=\"two\" is not a number",
        ),
        (
            "export LISTEN_PID=me LISTEN_FDS=1",
            "LISTEN_PID=\"me\" is not a process id",
        ),
        (
            "export LISTEN_PID=$$",
            "LISTEN_PID is set but LISTEN_FDS is not",
        ),
        (
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b",
            "LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS is 1",
        ),
        (
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec 3<&-",
            "inherited fd 3 is not open",
        ),
    ];
    for (setup, why) in cases {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{setup}; exec \"$0\" \"$@\""))
            .arg(server_bin())
            .args(["--listen", "127.0.0.1:0"]);
        let error = refused(&mut cmd);
        assert!(error.contains(why), "{setup}: {error}");
    }
}
