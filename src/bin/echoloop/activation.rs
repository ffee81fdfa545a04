//! Sockets from a supervisor: systemd's socket activation (`sd_listen_fds`).
//!
//! A supervisor that binds our sockets itself (systemd with a `.socket`
//! unit, `systemd-socket-activate`) starts us with descriptors open from fd 3
//! on and says so in the environment: `LISTEN_PID` (which process they are
//! for: ours, or they are not for us), `LISTEN_FDS` (how many) and, when it
//! names them, `LISTEN_FDNAMES` (colon-separated). They are read once, before
//! the process opens any descriptor of its own, and removed from the
//! environment so that nothing we might start takes them for its own.
//!
//! Each descriptor must be a listening TCP socket or a bound, unconnected UDP
//! socket, over IPv4 or IPv6 (told apart by `SO_DOMAIN`, `SO_TYPE` and
//! `SO_PROTOCOL`); anything else is refused with one error before anything
//! is served. Each is made non-blocking and close-on-exec, then handed to
//! the servers with `EchoServer::adopt`/`adopt_udp`, the way any host
//! passes a socket it bound itself.
//!
//! With several loops (`--threads N`) an inherited socket cannot join a new
//! `SO_REUSEPORT` group, so every loop gets a duplicate of the one socket:
//! the kernel wakes every loop's `Poll` when connections or datagrams
//! arrive, and whichever loop accepts (or receives) first serves them.
//! Closing one loop's duplicate closes nothing while the others hold theirs.

use std::env;
use std::io::{self, ErrorKind};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::RawFd;

use log::{info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use echoloop::EchoServer;

use crate::sys;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The variables of the protocol, removed once read.
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The sockets the supervisor passed on, checked and ready to adopt.
#[derive(Debug, Default)]
pub struct Inherited {
    tcp: Vec<(Origin, TcpListener)>,
    udp: Vec<(Origin, UdpSocket)>,
}

/// Which inherited descriptor a socket was, for messages.
#[derive(Debug)]
struct Origin {
    fd: RawFd,
    name: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "inherited fd {} ({name})", self.fd),
            None => write!(f, "inherited fd {}", self.fd),
        }
    }
}

impl Inherited {
    /// Takes the descriptors named by `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`, and removes the three variables. None when
    /// `LISTEN_PID` is unset; none, with a warning, when it names another
    /// process (they were meant for it).
    ///
    /// Call it first in `main`, before any thread starts (it changes the
    /// environment) and before any descriptor is opened (see
    /// [`sys::take_inherited`]).
    ///
    /// # Errors
    /// One message for the first variable that does not parse, or the first
    /// descriptor that is not open, not a socket, not listening, connected,
    /// or not TCP or UDP over IPv4 or IPv6.
    pub fn from_env() -> Result<Inherited, String> {
        let [pid, fds, names] = VARIABLES.map(|name| env::var(name).ok());
        for name in VARIABLES {
            env::remove_var(name);
        }
        let Some(pid) = pid else {
            return Ok(Inherited::default());
        };
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
        if pid != std::process::id() {
            warn!(
                "LISTEN_PID={pid} names another process (we are {}): its sockets are not ours, \
                 ignoring them",
                std::process::id()
            );
            return Ok(Inherited::default());
        }
        let count = fds.ok_or("LISTEN_PID is set but LISTEN_FDS is not")?;
        let count: RawFd = count
            .trim()
            .parse()
            .ok()
            .filter(|&n: &RawFd| (0..=RawFd::MAX - FIRST_FD).contains(&n))
            .ok_or_else(|| format!("LISTEN_FDS={count:?} is not a number of descriptors"))?;
        let names: Vec<Option<String>> = match names {
            Some(names) if count > 0 => {
                let names: Vec<Option<String>> = names
                    .split(':')
                    .map(|name| Some(name.to_string()).filter(|n| !n.is_empty()))
                    .collect();
                if names.len() != count as usize {
                    return Err(format!(
                        "LISTEN_FDNAMES names {} descriptors but LISTEN_FDS is {count}",
                        names.len()
                    ));
                }
                names
            }
            _ => vec![None; count as usize],
        };
        // Every descriptor is owned (and so closed on return) before any is
        // checked.
        let mut taken = Vec::with_capacity(names.len());
        for (fd, name) in (FIRST_FD..).zip(names) {
            let origin = Origin { fd, name };
            match sys::take_inherited(fd) {
                Ok(owned) => taken.push((origin, Socket::from(owned))),
                Err(e) => return Err(format!("{origin} is not open: {e}")),
            }
        }
        let mut inherited = Inherited::default();
        for (origin, socket) in taken {
            match check(&socket).map_err(|why| format!("{origin} {why}"))? {
                Kind::Tcp => inherited.tcp.push((origin, socket.into())),
                Kind::Udp => inherited.udp.push((origin, socket.into())),
            }
        }
        Ok(inherited)
    }

    /// True when the supervisor passed no socket.
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    /// How many sockets the supervisor passed.
    pub fn len(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    /// Hands every socket to every server: the socket itself to the last,
    /// a duplicate of it to each other (see the module notes), TCP listeners
    /// first, each kind in descriptor order. Logs one line that says which
    /// descriptor became which socket.
    ///
    /// # Errors
    /// `cannot serve inherited fd N: ...` for the first socket that cannot be
    /// duplicated or adopted (past 16 of a kind).
    pub fn adopt_into(self, servers: &mut [&mut EchoServer]) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let mut described = Vec::with_capacity(self.len());
        for (origin, listener) in self.tcp {
            let error = |e: io::Error| format!("cannot serve {origin}: {e}");
            described.push(format!("{origin}: {}", show_addr(listener.local_addr())));
            for server in copies(servers.len(), listener, TcpListener::try_clone)
                .map_err(error)?
                .into_iter()
                .zip(servers.iter_mut())
                .map(|(copy, server)| server.adopt(mio::net::TcpListener::from_std(copy)))
            {
                server.map_err(error)?;
            }
        }
        for (origin, socket) in self.udp {
            let error = |e: io::Error| format!("cannot serve {origin}: {e}");
            described.push(format!("{origin}: udp {}", show_addr(socket.local_addr())));
            for server in copies(servers.len(), socket, UdpSocket::try_clone)
                .map_err(error)?
                .into_iter()
                .zip(servers.iter_mut())
                .map(|(copy, server)| server.adopt_udp(mio::net::UdpSocket::from_std(copy)))
            {
                server.map_err(error)?;
            }
        }
        info!("sockets from the supervisor: {}", described.join(", "));
        Ok(())
    }
}

/// What an inherited socket is, once it passed the checks.
enum Kind {
    Tcp,
    Udp,
}

/// Checks that `socket` is one we serve and makes it non-blocking and
/// close-on-exec; the error completes "inherited fd N ...".
fn check(socket: &Socket) -> Result<Kind, String> {
    let kind = socket.r#type().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => "is not a socket".to_string(),
        _ => format!("cannot be read as a socket: {e}"),
    })?;
    let failed = |what: &str, e: io::Error| format!("cannot be checked ({what}): {e}");
    let domain = socket.domain().map_err(|e| failed("SO_DOMAIN", e))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(format!(
            "is a socket of family {domain:?}: echoloop serves TCP and UDP over IPv4 and IPv6"
        ));
    }
    let protocol = socket.protocol().map_err(|e| failed("SO_PROTOCOL", e))?;
    let kind = match (kind, protocol) {
        (Type::STREAM, Some(Protocol::TCP)) => {
            if !socket
                .is_listener()
                .map_err(|e| failed("SO_ACCEPTCONN", e))?
            {
                return Err("is a TCP socket that is not listening".to_string());
            }
            Kind::Tcp
        }
        (Type::DGRAM, Some(Protocol::UDP)) => {
            match socket.peer_addr() {
                Err(e) if e.kind() == ErrorKind::NotConnected => {}
                Err(e) => return Err(failed("getpeername", e)),
                Ok(_) => return Err("is a connected UDP socket".to_string()),
            }
            let bound = socket.local_addr().map_err(|e| failed("getsockname", e))?;
            if bound.as_socket().is_none_or(|a| a.port() == 0) {
                return Err("is a UDP socket that is not bound".to_string());
            }
            Kind::Udp
        }
        (kind, protocol) => {
            let protocol = protocol.map_or("unknown".to_string(), |p| format!("{p:?}"));
            return Err(format!(
                "is a socket of type {kind:?} and protocol {protocol}: echoloop serves TCP \
                 listeners and UDP sockets"
            ));
        }
    };
    socket
        .set_nonblocking(true)
        .map_err(|e| failed("O_NONBLOCK", e))?;
    socket
        .set_cloexec(true)
        .map_err(|e| failed("FD_CLOEXEC", e))?;
    Ok(kind)
}

/// `n` handles on `socket`: `n - 1` duplicates, then the socket itself.
fn copies<S>(n: usize, socket: S, dup: fn(&S) -> io::Result<S>) -> io::Result<Vec<S>> {
    let mut all = (1..n)
        .map(|_| dup(&socket))
        .collect::<io::Result<Vec<S>>>()?;
    all.push(socket);
    Ok(all)
}

fn show_addr(addr: io::Result<std::net::SocketAddr>) -> String {
    addr.map_or_else(|e| format!("(address unknown: {e})"), |a| a.to_string())
}
