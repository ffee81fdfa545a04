//! Listening sockets: the one [`EchoServer::bind`] makes, and a group of
//! them on one port for a host that runs several loops
//! ([`listener_group`]), so the kernel spreads new connections over them;
//! the UDP sockets [`EchoServer::bind_udp`] makes, and their group
//! ([`udp_group`]), which spreads datagrams by source.
//!
//! Traps of `SO_REUSEPORT`, and what this file does about each:
//!
//! * **A second process could silently join our port.** Any socket of the
//!   same user with `SO_REUSEPORT` may bind a port whose listeners all have
//!   it, and then takes a share of the connections. So the group is made in
//!   two steps: first a *probe* socket without `SO_REUSEPORT` binds the
//!   address, which fails with `AddrInUse` if anything at all listens there
//!   (reuseport or not) — the same clear error a single loop gets; then the
//!   group's sockets bind beside the probe (both have `SO_REUSEADDR` and the
//!   probe never listens, which Linux allows), and the probe is closed. While
//!   it is bound, no ephemeral port allocation can pick the port either.
//!   Residual race: two processes whose probes both bind before either
//!   group listens (a window of microseconds) can end up in one group;
//!   starting the same server twice at the same instant is the only way.
//! * **Closing one listener of a group resets the connections waiting in its
//!   accept queue** (the kernel does not hand them to the others). Hosts
//!   must close the whole group together (at shutdown), never one loop's
//!   listener while the others keep accepting.
//! * **The spread is a hash** of the connection's addresses and ports, so at
//!   small connection counts the loops are uneven (a few more here, a few
//!   less there); it evens out by the law of large numbers.
//! * **Only Linux balances.** Elsewhere (macOS, older BSDs) `SO_REUSEPORT`
//!   sends every connection to one socket, so [`listener_group`] refuses
//!   more than one. FreeBSD's `SO_REUSEPORT_LB` would do; that is future work.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;

use mio::net::{TcpListener, UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};

#[cfg(doc)]
use super::EchoServer;

/// Backlog of every listener made here.
const BACKLOG: i32 = 1024;

/// Most sockets in one [`listener_group`]: as many as the binary's
/// `--threads` allows.
pub const MAX_GROUP: usize = 1024;

/// True where the kernel spreads connections over a `SO_REUSEPORT` group
/// (Linux); elsewhere [`listener_group`] refuses more than one socket.
pub(super) const REUSEPORT_BALANCES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Binds `n` non-blocking listeners to `addr` that share one port with
/// `SO_REUSEPORT`, one for each loop of a multi-loop host: the kernel hands
/// each new connection to one of them (by a hash of its addresses). With
/// port 0 the first bind picks the port and the others join it; every
/// listener's `local_addr` is the same.
///
/// A port in use — by anything, with `SO_REUSEPORT` or not — is an
/// `AddrInUse` error, as for a single listener (see the module notes for
/// how, and for the residual race). Give each listener to its own
/// [`EchoServer::adopt`]; close them together. IPv6 listeners are
/// IPv6-only; backlog 1024 each; `n == 1` is a plain listener.
///
/// # Errors
/// The bind's error; `InvalidInput` if `n` is 0 or above [`MAX_GROUP`];
/// `Unsupported` for `n > 1` where the kernel does not balance
/// (anything but Linux).
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let group = echoloop::listener_group("127.0.0.1:0".parse().unwrap(), 2)?;
/// let port = group[0].local_addr()?.port();
/// assert_eq!(group[1].local_addr()?.port(), port);
/// // The port is taken now: a plain bind fails, and so does another group.
/// let addr = group[0].local_addr()?;
/// assert!(std::net::TcpListener::bind(addr).is_err());
/// assert!(echoloop::listener_group(addr, 2).is_err());
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn listener_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    check_group_size(n)?;
    if n == 1 {
        return Ok(vec![listening(addr, false)?]);
    }
    // The probe: fails if anything listens on `addr`, and holds the port
    // (and picks it, for port 0) until the group is bound.
    let probe = socket_for(addr)?;
    probe.bind(&addr.into())?;
    let local = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not IP"))?;
    let group = (0..n)
        .map(|_| listening(local, true))
        .collect::<io::Result<Vec<_>>>()?;
    drop(probe);
    Ok(group)
}

/// Binds `n` non-blocking UDP sockets to `addr` that share one port with
/// `SO_REUSEPORT`, one for each loop of a multi-loop host: the kernel hands
/// each datagram to one of them by a hash of its source and destination, so
/// one client's datagrams always reach the same loop. With port 0 the first
/// bind picks the port. Give each socket to its own
/// [`EchoServer::adopt_udp`]. IPv6 sockets are IPv6-only; `n == 1` is a
/// plain socket.
///
/// A port in use is an `AddrInUse` error: a probe socket without any reuse
/// option binds first (it fails if anything at all holds the port) and
/// picks the port for port 0; it is closed just before the group binds.
/// Residual race: another program that binds the port in that instant
/// makes the group's bind fail (the clear error again), or, if it too sets
/// `SO_REUSEPORT` under our user, joins the group.
///
/// # Errors
/// As [`listener_group`].
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let group = echoloop::udp_group("127.0.0.1:0".parse().unwrap(), 2)?;
/// let addr = group[0].local_addr()?;
/// assert_eq!(group[1].local_addr()?, addr);
/// assert!(std::net::UdpSocket::bind(addr).is_err());
/// assert!(echoloop::udp_group(addr, 2).is_err());
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn udp_group(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    check_group_size(n)?;
    let probe = udp_bound(addr, false)?;
    if n == 1 {
        return Ok(vec![probe]);
    }
    let local = probe.local_addr()?;
    drop(probe);
    (0..n).map(|_| udp_bound(local, true)).collect()
}

/// A non-blocking UDP socket bound to `addr` (with `SO_REUSEPORT` if
/// `reuseport`), IPv6-only for IPv6.
pub(super) fn udp_bound(addr: SocketAddr, reuseport: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// 1 to [`MAX_GROUP`] sockets, and more than one only where the kernel
/// balances.
fn check_group_size(n: usize) -> io::Result<()> {
    if n == 0 || n > MAX_GROUP {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("a socket group has 1 to {MAX_GROUP} sockets, not {n}"),
        ));
    }
    if n > 1 && !REUSEPORT_BALANCES {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            "this platform's SO_REUSEPORT does not spread connections over sockets",
        ));
    }
    Ok(())
}

/// A non-blocking listener on `addr` (with `SO_REUSEPORT` if `reuseport`).
pub(super) fn listening(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A TCP socket for `addr` with `SO_REUSEADDR` (a restart need not wait for
/// old connections' TIME_WAIT), IPv6-only for IPv6 so `[::]:P` and
/// `0.0.0.0:P` can both be bound.
fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_refuses_a_taken_one() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(group) = listener_group(addr.parse().unwrap(), 3) else {
                continue; // no IPv6 here
            };
            let local = group[0].local_addr().unwrap();
            assert!(group.iter().all(|l| l.local_addr().unwrap() == local));
            let again = listener_group(local, 2).unwrap_err();
            assert_eq!(again.kind(), ErrorKind::AddrInUse);
        }
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener_group(plain.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(taken.kind(), ErrorKind::AddrInUse);
    }

    #[test]
    fn a_reuseport_listener_of_another_process_is_refused_too() {
        // What a second echoloop with SO_REUSEPORT would have bound.
        let other = listening("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let err = listener_group(other.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
    }

    #[test]
    fn zero_or_too_many_sockets_are_refused() {
        let addr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            listener_group(addr, 0).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            listener_group(addr, MAX_GROUP + 1).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
