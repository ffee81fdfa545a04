//! UDP echo, the other half of RFC 862: "when a datagram is received, the
//! data from it is sent back in an answering datagram". Same loop, same
//! token range, no connection and so nothing to drain.
//!
//! * `EchoServer::bind_udp` and `adopt_udp` add sockets, registered
//!   READABLE only: a reply the socket will not take right now is dropped
//!   and counted, never queued (UDP promises no delivery, and an echo
//!   server must not buffer without bound).
//! * An event calls [`Udp::serve`]: receive until `WouldBlock`, at most
//!   [`UDP_DATAGRAMS_PER_TURN`] datagrams. The edge is then spent, so a
//!   socket that used its budget is marked and [`Udp::serve_due`] (from
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
//! * Shutdown closes the UDP sockets at once ([`Udp::close`]).
//!
//! One `recvfrom` and one `sendto` per datagram, on purpose: batching them
//! with `recvmmsg`/`sendmmsg` was measured (the matrix's `udp` cell) and
//! bought nothing beyond noise: the kernel's UDP path and, on loopback, the
//! delivery to the peer dominate, not the syscall entry.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, trace, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry};

use super::rate::SourceLimit;
use super::stats::UdpCounts;
use crate::token::{Tokens, MAX_LISTENERS};

/// Most UDP sockets one server can hold (they use the listeners' slots, see
/// `token.rs`).
pub(super) const MAX_UDP_SOCKETS: usize = MAX_LISTENERS;

/// Datagrams one UDP socket may receive per loop turn before TCP
/// connections and other sockets get their turn: 64, like the accepts per
/// listener. A 64-datagram burst of 64 B costs ~64 recv/send pairs (tens of
/// microseconds), so TCP connections wait at most that long behind a flood;
/// the socket is revisited the next turn without a new event.
pub(super) const UDP_DATAGRAMS_PER_TURN: usize = 64;

/// Size of the UDP receive buffer: larger than any datagram IPv4 or IPv6
/// can carry without jumbograms (65,507 and 65,527 bytes of payload).
/// Allocated once, with the first UDP socket; the shared TCP read buffer is
/// `read_buffer` bytes and may be as small as 1 byte, so it is not used.
const UDP_BUFFER: usize = 65_536;

/// Whether a datagram gets a reply.
enum Verdict {
    Answer,
    // From port 0, a reflecting service's port, or one of ours.
    RefusedPort,
    // Its source IP is over `Config::udp_rate_limit`.
    OverRate,
}

/// One UDP socket of ours.
struct Endpoint {
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
pub(super) struct Udp {
    tokens: Tokens,
    endpoints: Vec<Endpoint>,
    buf: Vec<u8>,
    // The first refused datagram is logged at warn (a loop or reflection
    // attempt is worth knowing about); the rest only counted.
    refused_warned: bool,
    // Some with `Config::udp_rate_limit`: one table for every loop sharing
    // the server's limits.
    limit: Option<Arc<SourceLimit>>,
    closed: bool,
    counts: UdpCounts,
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
pub(super) fn refused_source_port(port: u16) -> bool {
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

impl Udp {
    pub(super) fn new(tokens: Tokens, limit: Option<Arc<SourceLimit>>) -> Udp {
        Udp {
            tokens,
            endpoints: Vec::new(),
            buf: Vec::new(),
            refused_warned: false,
            limit,
            closed: false,
            counts: UdpCounts::default(),
        }
    }

    /// Adds a socket (see `EchoServer::adopt_udp`); allocates the receive
    /// buffer with the first.
    pub(super) fn adopt(&mut self, socket: UdpSocket) -> io::Result<SocketAddr> {
        self.check_room()?;
        let addr = socket.local_addr()?;
        if self.buf.is_empty() {
            self.buf = vec![0; UDP_BUFFER];
        }
        self.endpoints.push(Endpoint {
            socket: Some(socket),
            addr,
            registered: false,
            more: false,
        });
        Ok(addr)
    }

    /// `InvalidInput` if no other socket may be added.
    pub(super) fn check_room(&self) -> io::Result<()> {
        if self.endpoints.len() >= MAX_UDP_SOCKETS || self.closed {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("at most {MAX_UDP_SOCKETS} UDP sockets, and none after shutdown"),
            ));
        }
        Ok(())
    }

    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.addr).collect()
    }

    /// Registers every socket not registered yet (READABLE only).
    pub(super) fn register(&mut self, registry: &Registry) -> io::Result<()> {
        for (index, endpoint) in self.endpoints.iter_mut().enumerate() {
            if let (Some(socket), false) = (endpoint.socket.as_mut(), endpoint.registered) {
                registry.register(socket, self.tokens.udp(index), Interest::READABLE)?;
                endpoint.registered = true;
            }
        }
        Ok(())
    }

    /// Echoes up to [`UDP_DATAGRAMS_PER_TURN`] datagrams on socket `index`.
    /// Work: at most that many `recvfrom` and `sendto` calls.
    pub(super) fn serve(&mut self, index: usize, now: Instant) {
        let Some(socket) = self.endpoints.get(index).and_then(|e| e.socket.as_ref()) else {
            return;
        };
        let mut more = true;
        for _ in 0..UDP_DATAGRAMS_PER_TURN {
            // The datagram's real length even when it did not fit, so a
            // truncated datagram is never mistaken for a whole one.
            let (len, from) = match crate::sys::recv_datagram(socket, &mut self.buf) {
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
                    self.counts.errors += 1;
                    continue;
                }
            };
            self.counts.datagrams_in += 1;
            self.counts.bytes_in += len as u64;
            if len > self.buf.len() {
                trace!("udp {index}: {len}-byte datagram truncated, dropped");
                self.counts.truncated += 1;
                continue;
            }
            // IP sources only (a UDP socket of ours receives no other kind).
            let Some(source) = from.as_socket() else {
                self.counts.refused += 1;
                continue;
            };
            match self.verdict(source, now) {
                Verdict::Answer => {}
                Verdict::RefusedPort => {
                    let port = source.port();
                    if !self.refused_warned {
                        self.refused_warned = true;
                        warn!(
                            "udp {index}: not answering a datagram from {source} (source port \
                             {port} could start a reflection loop); further ones are only counted"
                        );
                    }
                    trace!("udp {index}: datagram from port {port} refused");
                    self.counts.refused += 1;
                    continue;
                }
                Verdict::OverRate => {
                    trace!("udp {index}: {source} over the rate limit, not answered");
                    self.counts.rate_limited += 1;
                    continue;
                }
            }
            let sent = loop {
                match socket.send_to(&self.buf[..len], source) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    result => break result,
                }
            };
            match sent {
                Ok(n) => {
                    self.counts.datagrams_out += 1;
                    self.counts.bytes_out += n as u64;
                }
                // WouldBlock, ENOBUFS, an ICMP error for this peer: the
                // reply is dropped, never queued.
                Err(e) => {
                    trace!("udp {index}: reply dropped: {e}");
                    self.counts.dropped += 1;
                }
            }
        }
        if more {
            self.counts.yields += 1;
        }
        if let Some(endpoint) = self.endpoints.get_mut(index) {
            endpoint.more = more;
        }
    }

    /// Whether a datagram from `source` may be answered: not from a
    /// reflecting port or one of ours, and not over the rate limit.
    fn verdict(&self, source: SocketAddr, now: Instant) -> Verdict {
        let port = source.port();
        if refused_source_port(port) || self.endpoints.iter().any(|e| e.addr.port() == port) {
            return Verdict::RefusedPort;
        }
        match &self.limit {
            Some(limit) if !limit.allow(source.ip(), now) => Verdict::OverRate,
            _ => Verdict::Answer,
        }
    }

    /// True if a socket used its budget last turn: poll must not sleep.
    pub(super) fn more(&self) -> bool {
        self.endpoints.iter().any(|e| e.more)
    }

    /// Serves the sockets that used their budget last turn.
    pub(super) fn serve_due(&mut self, now: Instant) {
        for index in 0..self.endpoints.len() {
            if self.endpoints[index].more {
                self.serve(index, now);
            }
        }
    }

    /// Deregisters and closes every socket (shutdown: a datagram has no
    /// connection to drain). Work: one `epoll_ctl` and one close per socket.
    pub(super) fn close(&mut self, registry: &Registry) {
        self.closed = true;
        for endpoint in &mut self.endpoints {
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

    pub(super) fn counts(&self) -> UdpCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Token;
    use std::net::UdpSocket as StdUdp;
    use std::time::Duration;

    fn udp_with_socket() -> (Udp, SocketAddr) {
        let mut udp = Udp::new(Tokens::new(Token(100)).unwrap(), None);
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = udp.adopt(socket).unwrap();
        (udp, addr)
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
        let (mut udp, addr) = udp_with_socket();
        let c = client();
        let burst = UDP_DATAGRAMS_PER_TURN * 2 + 5;
        for i in 0..burst {
            c.send_to(&(i as u32).to_be_bytes(), addr).unwrap();
        }
        // Everything queued at the socket (loopback delivers at once; the
        // turns below stop only at WouldBlock, bounded by the count).
        let started = Instant::now();
        while udp.counts.datagrams_out < burst as u64 {
            assert!(started.elapsed() < Duration::from_secs(10), "not served");
            udp.serve(0, Instant::now());
            if udp.counts.datagrams_out == UDP_DATAGRAMS_PER_TURN as u64 {
                assert!(udp.more(), "budget used: revisit next turn");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(udp.counts.yields >= 2);
        let mut got = [0u8; 8];
        for i in 0..burst {
            let (n, from) = c.recv_from(&mut got).unwrap();
            assert_eq!((n, from), (4, addr));
            assert_eq!(got[..4], (i as u32).to_be_bytes(), "in order on loopback");
        }
    }

    #[test]
    fn a_datagram_that_did_not_fit_is_counted_and_never_echoed_cut() {
        let (mut udp, addr) = udp_with_socket();
        // No datagram on loopback exceeds the real buffer, so shrink it.
        udp.buf.truncate(100);
        let c = client();
        c.send_to(&[1u8; 200], addr).unwrap();
        c.send_to(&[2u8; 100], addr).unwrap();
        let started = Instant::now();
        while udp.counts.datagrams_in < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "not received");
            udp.serve(0, Instant::now());
        }
        assert_eq!((udp.counts.truncated, udp.counts.datagrams_out), (1, 1));
        assert_eq!(
            udp.counts.bytes_in, 300,
            "a truncated datagram counts its real length"
        );
        let mut got = [0u8; 300];
        let (n, _) = c.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], &[2u8; 100][..], "only the whole one came back");
    }

    #[test]
    fn a_closed_endpoint_serves_nothing_and_takes_no_socket() {
        let poll = mio::Poll::new().unwrap();
        let (mut udp, _) = udp_with_socket();
        udp.register(poll.registry()).unwrap();
        udp.close(poll.registry());
        // Nothing to serve, no panic on a late event.
        udp.serve(0, Instant::now());
        udp.serve(99, Instant::now());
        let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(udp.adopt(socket).is_err());
    }
}
