//! UDP echo, the other half of RFC 862: "when a datagram is received, the
//! data from it is sent back in an answering datagram". Same loop, same
//! token range, no connection and so nothing to drain.
//!
//! * `bind_udp` and `adopt_udp` add sockets; `register` (in `mod.rs`)
//!   registers them, READABLE only: a reply the socket will not take right
//!   now is dropped and counted, never queued (UDP promises no delivery, and
//!   an echo server must not buffer without bound).
//! * An event calls `serve_udp`: receive until `WouldBlock`, at most
//!   [`UDP_DATAGRAMS_PER_TURN`] datagrams. The edge is then spent, so a
//!   socket that used its budget is marked and `udp_due` (from
//!   `handle_timeout`) revisits it next turn, while `poll_timeout` returns
//!   zero: a UDP flood cannot starve TCP connections, nor they it.
//! * Every datagram is received whole: the buffer holds 65,536 bytes, more
//!   than the largest datagram (65,507 bytes over IPv4, 65,527 over IPv6).
//!   `MSG_TRUNC` makes the kernel report a larger one's real length anyway
//!   (an IPv6 jumbogram on a link with a huge MTU); it is counted as
//!   truncated and never echoed.
//! * Reflection protection: a datagram whose source port is 0, one of ours,
//!   or that of a service known to answer or amplify is refused
//!   ([`refused_source_port`]).
//! * With `Config::udp_rate_limit`, replies to one source IP are limited
//!   per second (`rate.rs`).
//! * Shutdown closes the UDP sockets at once (`close_udp`, from
//!   `begin_shutdown`).
//!
//! One `recvfrom` and one `sendto` per datagram, on purpose: batching them
//! with `recvmmsg`/`sendmmsg` (16 per call) was measured and bought nothing
//! (server CPU 3.87 against 3.92 µs per datagram at 64 B × 100 sockets,
//! within noise): the kernel's UDP path and, on loopback, the delivery to
//! the peer dominate, not the syscall entry.

use std::io::{self, ErrorKind};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, trace, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry};
use socket2::SockRef;

use super::rate::SourceLimit;
use super::EchoServer;
use crate::token::MAX_LISTENERS;

/// Most UDP sockets one server can hold (they use the listeners' slots, see
/// [`crate::token`]).
pub const MAX_UDP_SOCKETS: usize = MAX_LISTENERS;

/// Datagrams one UDP socket may receive per loop turn before TCP
/// connections and other sockets get their turn: 64, like the accepts per
/// listener. A 64-datagram burst of 64 B costs ~64 recv/send pairs (tens of
/// microseconds), so TCP connections wait at most that long behind a flood;
/// the socket is revisited the next turn without a new event.
pub const UDP_DATAGRAMS_PER_TURN: usize = 64;

/// Size of the UDP receive buffer: larger than any datagram IPv4 or IPv6
/// can carry without jumbograms (65,507 and 65,527 bytes of payload).
/// Allocated once, with the first UDP socket; the shared TCP read buffer is
/// `read_buffer` bytes and may be as small as 1 byte, so it is not used.
pub const UDP_BUFFER: usize = 65_536;

/// One UDP socket of ours.
pub(super) struct Endpoint {
    // None once shutdown has begun: the socket is closed.
    socket: Option<UdpSocket>,
    addr: SocketAddr,
    registered: bool,
    // The per-turn budget was used with datagrams maybe left; the edge is
    // spent, so we revisit without a new event.
    more: bool,
}

/// The UDP sockets and their one receive buffer (empty until a socket is
/// added, so a TCP-only server pays nothing).
#[derive(Default)]
pub(super) struct Udp {
    endpoints: Vec<Endpoint>,
    buf: Vec<u8>,
    // The first refused datagram is logged at warn (a loop or reflection
    // attempt is worth knowing about); the rest only counted.
    refused_warned: bool,
    // Some when `Config::udp_rate_limit` is set (allocated with the first
    // socket; one table for every loop sharing a `SharedLimit`).
    limit: Option<Arc<SourceLimit>>,
}

/// True if a datagram from `port` must not be answered. An echo server that
/// answers a forged source address can be aimed at another service that
/// answers every datagram, and the two then bounce packets forever (the
/// classic echo/chargen loop), or it can be used to hide the attacker
/// behind us. Refused source ports:
///
/// * 0: not a valid source port; a reply could not be addressed anyway.
/// * 7 echo, 9 discard, 13 daytime, 17 qotd, 19 chargen, 37 time: the
///   RFC 862-867 "small services" of inetd, which answer (or, discard, may
///   be an echo in disguise) any datagram: the echo/chargen ping-pong.
/// * 53 DNS, 69 TFTP, 111 portmap, 123 NTP, 137 NetBIOS name, 138 NetBIOS
///   datagram, 161 SNMP, 162 SNMP trap, 389 CLDAP, 427 SLP, 520 RIP,
///   1434 MS-SQL browser, 1900 SSDP, 3283 Apple Remote Desktop, 3702
///   WS-Discovery, 5353 mDNS, 5683 CoAP, 10001 Ubiquiti discovery, 11211
///   memcached: the UDP services listed as reflection and amplification
///   vectors (US-CERT TA14-017A and its updates). Each answers a datagram
///   with one or more datagrams, so a forged request naming it as source
///   would start a loop between it and us; none of them is a legitimate
///   echo client.
///
/// Datagrams from our own UDP ports are refused too (by the caller): that
/// is either our own reply coming back (a forged source address naming us)
/// or another echo server on the same port elsewhere. Source addresses
/// that would fan a reply out need no check here: the kernel drops
/// datagrams from multicast or broadcast sources (martians) before they
/// reach a socket, and a reply to a subnet broadcast address fails with
/// `EACCES` (we never set `SO_BROADCAST`) and is counted as dropped.
pub fn refused_source_port(port: u16) -> bool {
    matches!(
        port,
        0 | 7
            | 9
            | 13
            | 17
            | 19
            | 37
            | 53
            | 69
            | 111
            | 123
            | 137
            | 138
            | 161
            | 162
            | 389
            | 427
            | 520
            | 1434
            | 1900
            | 3283
            | 3702
            | 5353
            | 5683
            | 10001
            | 11211
    )
}

impl EchoServer {
    /// Binds a UDP socket of its own to `addr` and returns the bound address
    /// (with the real port when `addr` had port 0).
    ///
    /// IPv6 sockets are IPv6-only, so `[::]:P` and `0.0.0.0:P` can both be
    /// bound. No `SO_REUSEADDR` (for UDP on Linux it would let a second
    /// socket share the port silently). Call [`EchoServer::register`]
    /// afterwards.
    ///
    /// # Errors
    /// The bind's error (address in use, not available), or `InvalidInput`
    /// past [`MAX_UDP_SOCKETS`] sockets or after shutdown began.
    ///
    /// ```
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.bind_udp("127.0.0.1:0".parse().unwrap())?;
    /// assert_ne!(addr.port(), 0);
    /// assert_eq!(server.udp_addrs(), vec![addr]);
    /// assert!(server.local_addrs().is_empty()); // TCP listeners only
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind_udp(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.udp_room()?;
        self.adopt_udp(super::reuseport::udp_bound(addr, false)?)
    }

    /// Adopts a UDP socket the host bound itself (for instance one of
    /// several bound with `SO_REUSEPORT`, one per loop) and returns its
    /// address. It must be non-blocking (as every `mio::net::UdpSocket` is)
    /// and unconnected. Allocates the UDP receive buffer ([`UDP_BUFFER`]
    /// bytes) with the first socket. Call [`EchoServer::register`]
    /// afterwards.
    ///
    /// # Errors
    /// `InvalidInput` past [`MAX_UDP_SOCKETS`] sockets or after shutdown
    /// began; the error of `local_addr`.
    ///
    /// ```
    /// let socket = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap())?;
    /// let mut server = echoloop::EchoServer::new(Default::default(), mio::Token(0));
    /// let addr = server.adopt_udp(socket)?;
    /// assert_eq!(server.udp_addrs(), vec![addr]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn adopt_udp(&mut self, socket: UdpSocket) -> io::Result<SocketAddr> {
        self.udp_room()?;
        let addr = socket.local_addr()?;
        if self.udp.buf.is_empty() {
            self.udp.buf = vec![0; UDP_BUFFER];
            self.udp.limit = self.config.udp_rate_limit.map(|rate| match &self.shared {
                Some(shared) => shared.udp_rate_table(rate),
                None => Arc::new(SourceLimit::new(rate, Instant::now())),
            });
        }
        self.udp.endpoints.push(Endpoint {
            socket: Some(socket),
            addr,
            registered: false,
            more: false,
        });
        Ok(addr)
    }

    /// The addresses of the UDP sockets, in the order they were added.
    /// ([`EchoServer::local_addrs`] lists the TCP listeners.)
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.endpoints.iter().map(|e| e.addr).collect()
    }

    fn udp_room(&self) -> io::Result<()> {
        if self.udp.endpoints.len() >= MAX_UDP_SOCKETS || self.shutdown.is_some() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("at most {MAX_UDP_SOCKETS} UDP sockets, and none after shutdown"),
            ));
        }
        Ok(())
    }

    /// Registers every UDP socket not registered yet (READABLE only).
    pub(super) fn register_udp(&mut self, registry: &Registry) -> io::Result<()> {
        for (index, endpoint) in self.udp.endpoints.iter_mut().enumerate() {
            if let (Some(socket), false) = (endpoint.socket.as_mut(), endpoint.registered) {
                registry.register(socket, self.tokens.udp(index), Interest::READABLE)?;
                endpoint.registered = true;
            }
        }
        Ok(())
    }

    /// Echoes up to [`UDP_DATAGRAMS_PER_TURN`] datagrams on one socket.
    /// Work: at most that many `recvfrom` and `sendto` calls.
    pub(super) fn serve_udp(&mut self, index: usize, now: Instant) {
        let Udp {
            endpoints,
            buf,
            refused_warned,
            limit,
        } = &mut self.udp;
        let Some(socket) = endpoints.get(index).and_then(|e| e.socket.as_ref()) else {
            return;
        };
        let socket = SockRef::from(socket);
        let stats = &mut self.stats;
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and
        // `recvfrom` only writes initialised bytes into it, so `buf` stays
        // fully initialised.
        let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let mut more = true;
        for _ in 0..UDP_DATAGRAMS_PER_TURN {
            // MSG_TRUNC: the result is the datagram's real length even when
            // it did not fit, so a truncated datagram is never mistaken for
            // a whole one.
            let (len, from) = match socket.recv_from_with_flags(uninit, libc::MSG_TRUNC) {
                Ok(received) => received,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // An ICMP error queued for an earlier reply (port
                // unreachable, ...): about one peer, not this socket.
                Err(e) => {
                    trace!("udp {index}: receive error: {e}");
                    stats.udp_errors += 1;
                    continue;
                }
            };
            stats.udp_datagrams_in += 1;
            stats.udp_bytes_in += len as u64;
            if len > buf.len() {
                trace!("udp {index}: {len}-byte datagram truncated, dropped");
                stats.udp_truncated += 1;
                continue;
            }
            // IP sources only (a UDP socket of ours receives no other kind).
            let source = from.as_socket();
            let port = source.map_or(0, |a| a.port());
            if refused_source_port(port) || endpoints.iter().any(|e| e.addr.port() == port) {
                if !*refused_warned {
                    *refused_warned = true;
                    warn!(
                        "udp {index}: not answering a datagram from {} (source port {port} \
                         could start a reflection loop); further ones are only counted",
                        source.map_or_else(|| "?".to_string(), |a| a.to_string())
                    );
                }
                trace!("udp {index}: datagram from port {port} refused");
                stats.udp_refused += 1;
                continue;
            }
            if let (Some(limit), Some(source)) = (limit.as_ref(), source) {
                if !limit.allow(source.ip(), now) {
                    trace!("udp {index}: {source} over the rate limit, not answered");
                    stats.udp_rate_limited += 1;
                    continue;
                }
            }
            let sent = loop {
                match socket.send_to(&buf[..len], &from) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    result => break result,
                }
            };
            match sent {
                Ok(n) => {
                    stats.udp_datagrams_out += 1;
                    stats.udp_bytes_out += n as u64;
                }
                // WouldBlock, ENOBUFS, an ICMP error for this peer: the
                // reply is dropped, never queued.
                Err(e) => {
                    trace!("udp {index}: reply dropped: {e}");
                    stats.udp_dropped += 1;
                }
            }
        }
        if more {
            stats.udp_yields += 1;
        }
        if let Some(endpoint) = self.udp.endpoints.get_mut(index) {
            endpoint.more = more;
        }
    }

    /// True if a UDP socket used its budget last turn: poll must not sleep.
    pub(super) fn udp_more(&self) -> bool {
        self.udp.endpoints.iter().any(|e| e.more)
    }

    /// Serves the UDP sockets that used their budget last turn.
    pub(super) fn udp_due(&mut self, now: Instant) {
        for index in 0..self.udp.endpoints.len() {
            if self.udp.endpoints[index].more {
                self.serve_udp(index, now);
            }
        }
    }

    /// Deregisters and closes every UDP socket (shutdown: a datagram has no
    /// connection to drain). Work: one `epoll_ctl` and one close per socket.
    pub(super) fn close_udp(&mut self, registry: &Registry) {
        for endpoint in &mut self.udp.endpoints {
            if let Some(mut socket) = endpoint.socket.take() {
                if endpoint.registered {
                    // Ignored: the socket is closed right after either way.
                    let _ = registry.deregister(&mut socket);
                }
                debug!("udp {}: closed", endpoint.addr);
            }
            endpoint.more = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Hints;
    use super::*;
    use crate::config::Config;
    use mio::Token;
    use std::net::UdpSocket as StdUdp;
    use std::time::Duration;

    fn server_with_udp(poll: &mio::Poll) -> (EchoServer, SocketAddr) {
        let mut server = EchoServer::new(Config::default(), Token(100));
        let addr = server.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        server.register(poll.registry()).unwrap();
        (server, addr)
    }

    fn client() -> StdUdp {
        let c = StdUdp::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    #[test]
    fn refuses_reflecting_ports_and_answers_ephemeral_ones() {
        for port in [0, 7, 9, 13, 17, 19, 37, 53, 123, 1900, 11211] {
            assert!(refused_source_port(port), "port {port}");
        }
        for port in [1024, 7007, 40000, 65535] {
            assert!(!refused_source_port(port), "port {port}");
        }
    }

    #[test]
    fn a_burst_over_the_budget_is_served_over_several_turns() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_udp(&poll);
        let c = client();
        let burst = UDP_DATAGRAMS_PER_TURN * 2 + 5;
        for i in 0..burst {
            c.send_to(&(i as u32).to_be_bytes(), addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        server.serve_udp(0, Instant::now());
        assert_eq!(
            server.stats().udp_datagrams_out,
            UDP_DATAGRAMS_PER_TURN as u64
        );
        assert!(server.udp_more(), "budget used: revisit next turn");
        assert_eq!(
            server.poll_timeout(std::time::Instant::now()),
            Some(Duration::ZERO)
        );
        server.udp_due(Instant::now());
        server.udp_due(Instant::now());
        assert!(!server.udp_more(), "drained");
        assert_eq!(server.stats().udp_datagrams_out, burst as u64);
        assert_eq!(server.stats().udp_yields, 2);
        let mut got = [0u8; 8];
        for i in 0..burst {
            let (n, from) = c.recv_from(&mut got).unwrap();
            assert_eq!((n, from), (4, addr));
            assert_eq!(got[..4], (i as u32).to_be_bytes(), "in order on loopback");
        }
    }

    #[test]
    fn a_datagram_that_did_not_fit_is_counted_and_never_echoed_cut() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, addr) = server_with_udp(&poll);
        // No datagram on loopback exceeds the real buffer, so shrink it.
        server.udp.buf.truncate(100);
        let c = client();
        c.send_to(&[1u8; 200], addr).unwrap();
        c.send_to(&[2u8; 100], addr).unwrap();
        server.serve_udp(0, Instant::now());
        let stats = server.stats();
        assert_eq!((stats.udp_truncated, stats.udp_datagrams_out), (1, 1));
        assert_eq!(
            stats.udp_bytes_in, 300,
            "a truncated datagram counts its real length"
        );
        let mut got = [0u8; 300];
        let (n, _) = c.recv_from(&mut got).unwrap();
        assert_eq!(
            &got[..n],
            &[2u8; 100][..],
            "only the whole datagram came back"
        );
    }

    #[test]
    fn events_under_the_udp_token_of_any_base_are_served() {
        let poll = mio::Poll::new().unwrap();
        let mut server = EchoServer::new(Config::default(), Token(5000));
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.adopt_udp(socket).unwrap();
        server.register(poll.registry()).unwrap();
        let token = server.tokens.udp(0);
        assert!(server.owns(token) && token != server.tokens.listener(0));
        let c = client();
        c.send_to(b"via token", addr).unwrap();
        server
            .handle_token(
                poll.registry(),
                token,
                Hints::default(),
                std::time::Instant::now(),
            )
            .unwrap();
        let mut got = [0u8; 16];
        let (n, from) = c.recv_from(&mut got).unwrap();
        assert_eq!((&got[..n], from), (&b"via token"[..], addr));
    }

    #[test]
    fn shutdown_closes_udp_sockets_and_does_not_wait_for_them() {
        let poll = mio::Poll::new().unwrap();
        let (mut server, _) = server_with_udp(&poll);
        server.begin_shutdown(poll.registry(), std::time::Instant::now());
        assert!(server.is_finished());
        assert!(server.udp.endpoints.iter().all(|e| e.socket.is_none()));
        // Nothing to serve, no panic on a late event.
        server.serve_udp(0, Instant::now());
        server.serve_udp(99, Instant::now());
        assert!(server.bind_udp("127.0.0.1:0".parse().unwrap()).is_err());
    }
}
