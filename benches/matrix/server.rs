//! The servers under test, started fresh for each measurement: echoloop or
//! the tokio peer, pinned to one core or not, and what they use (CPU time,
//! resident memory) read from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub(crate) const SERVER_CORE: usize = 0;
pub(crate) const LOAD_CORE: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Peer {
    Echoloop,
    Tokio,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Echoloop => "echoloop",
            Peer::Tokio => "tokio",
        }
    }
}

/// `program` pinned to `core` when it runs one thread, unpinned otherwise.
pub(crate) fn placed(program: PathBuf, core: usize, threads: usize) -> Command {
    match threads {
        1 => pinned(program, core),
        _ => Command::new(program),
    }
}

/// A command pinned to one core.
pub(crate) fn pinned(program: impl Into<PathBuf>, core: usize) -> Command {
    let mut cmd = Command::new(program.into());
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Starts `peer` with `threads` loops (tokio workers): pinned to
    /// `SERVER_CORE` for one, unpinned for more. With `udp`, it serves UDP
    /// echo too, and `addr` is the UDP one.
    pub(crate) fn start(peer: Peer, threads: usize, udp: bool) -> Server {
        let n = threads.to_string();
        let mut cmd = match peer {
            Peer::Echoloop => {
                let mut cmd = placed(env!("CARGO_BIN_EXE_echoloop").into(), SERVER_CORE, threads);
                cmd.args(["--listen", "127.0.0.1:0"])
                    .env("RUST_LOG", "warn");
                if udp {
                    cmd.args(["--udp", "127.0.0.1:0"]);
                }
                if threads > 1 {
                    cmd.args(["--threads", &n]);
                }
                cmd
            }
            Peer::Tokio => {
                let mut cmd = placed(
                    std::env::current_exe().expect("own path"),
                    SERVER_CORE,
                    threads,
                );
                if udp {
                    cmd.args(["loadgen", "tokio-udp-echo", "--listen", "127.0.0.1:0"]);
                } else {
                    cmd.args(["loadgen", "tokio-echo", "--listen", "127.0.0.1:0"]);
                    cmd.args(["--threads", &n]);
                }
                cmd
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let prefix = if udp {
            "listening on udp "
        } else {
            "listening on "
        };
        // echoloop prints its TCP line before the UDP one.
        while !line.starts_with(prefix) {
            line.clear();
            if stdout.read_line(&mut line).expect("read listening line") == 0 {
                panic!("{} printed no {prefix:?} line", peer.name());
            }
        }
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{} printed {line:?}", peer.name()));
        Server { child, addr }
    }

    /// User plus system CPU time so far, in microseconds.
    pub(crate) fn cpu_us(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let Some(end) = stat.rfind(')') else {
            return f64::NAN;
        };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks * 1e6 / hz
    }

    pub(crate) fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
