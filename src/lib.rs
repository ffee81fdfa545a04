//! echoloop: a TCP echo server (RFC 862) on one hand-written, single-threaded
//! mio readiness loop, as a guest in your own `mio::Poll`.
//!
//! Every byte received on a connection goes back on that connection, in
//! order; an orderly FIN from the server means every byte was echoed, and
//! anything cut short ends with a reset. The crate depends on mio, slab,
//! log, socket2 and libc only, creates no thread, `Poll` or `Waker`, keeps
//! no global state, and never installs a logger.
//!
//! # The smallest host
//!
//! Give the server a base token, hand it each batch of events, sleep no
//! longer than it asks, and call `handle_timeout` once per turn:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Instant;
//! use mio::{Events, Poll, Token};
//! use echoloop::{Config, EchoServer};
//!
//! let mut poll = Poll::new()?;
//! let mut server = EchoServer::new(Config::default(), Token(0))?;
//! let addr = server.bind("127.0.0.1:0".parse()?)?;
//! server.register(poll.registry())?;
//!
//! let mut client = std::net::TcpStream::connect(addr)?;
//! client.write_all(b"hello")?;
//! client.shutdown(std::net::Shutdown::Write)?; // that is all
//!
//! let mut events = Events::with_capacity(256);
//! client.set_nonblocking(true)?;
//! let mut echoed = Vec::new();
//! while !server.is_finished() {
//!     poll.poll(&mut events, server.poll_timeout(Instant::now()))?;
//!     let now = Instant::now();
//!     // The events it owns; it returns how many were the host's.
//!     server.handle_events(poll.registry(), &events, now)?;
//!     server.handle_timeout(poll.registry(), now)?;
//!     // (The client, in the same thread: take what came back so far.)
//!     match client.read_to_end(&mut echoed) {
//!         // Our FIN: everything came back. Shut down: nothing else to do.
//!         Ok(_) => server.begin_shutdown(poll.registry(), now),
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! assert_eq!(echoed, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A host with sources of its own gives the server a base token past them
//! (the server uses `base .. base + TOKEN_SPAN`, see [`EchoServer::owns`])
//! and handles the events [`EchoServer::handle_events`] left to it;
//! `examples/embed.rs` runs it beside a UDP socket, a waker and a timer.
//!
//! # Several loops: one per core
//!
//! One loop uses one core. To use more, a host runs N servers on N
//! threads, each with its own `Poll`, its own [`EchoServer`] and its own
//! listening socket per address, all on one port with `SO_REUSEPORT`
//! ([`listener_group`]), so the kernel spreads new connections over them.
//! They share nothing per message; [`SharedLimits`] keeps the connection
//! limit exact over all of them and is touched only when a connection is
//! admitted or closed. Close the listeners of a group together (closing one
//! resets the connections queued on it); on platforms whose `SO_REUSEPORT`
//! does not balance (anything but Linux here) run one loop. The `echoloop`
//! binary's `--threads N` is the worked example (`src/bin/echoloop/`).
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use std::io::{Read, Write};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Instant;
//! use mio::{Events, Poll, Token, Waker};
//! use echoloop::{listener_group, Config, EchoServer, SharedLimits, Stats};
//!
//! const WAKE: Token = Token(0);
//! let config = Config::default();
//! let limits = SharedLimits::new(&config); // over both loops
//! let group = listener_group("127.0.0.1:0".parse()?, 2)?;
//! let addr = group[0].local_addr()?;
//! let stop = Arc::new(AtomicBool::new(false));
//! let mut loops = Vec::new();
//! for listener in group {
//!     let mut poll = Poll::new()?;
//!     let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
//!     let mut server = EchoServer::with_shared_limits(config.clone(), Token(1), &limits)?;
//!     server.adopt(listener)?;
//!     server.register(poll.registry())?;
//!     let stop = stop.clone();
//!     let thread = std::thread::spawn(move || -> std::io::Result<Stats> {
//!         let mut events = Events::with_capacity(256);
//!         loop {
//!             poll.poll(&mut events, server.poll_timeout(Instant::now()))?;
//!             let now = Instant::now();
//!             // The batch in one call; only the waker's event is left.
//!             if server.handle_events(poll.registry(), &events, now)? > 0
//!                 && stop.load(Ordering::Acquire)
//!             {
//!                 server.begin_shutdown(poll.registry(), now);
//!             }
//!             server.handle_timeout(poll.registry(), now)?;
//!             if server.is_finished() {
//!                 return Ok(server.stats());
//!             }
//!         }
//!     });
//!     loops.push((waker, thread));
//! }
//! let mut client = std::net::TcpStream::connect(addr)?;
//! client.write_all(b"ping")?;
//! let mut reply = [0u8; 4];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"ping");
//! drop(client);
//! // Shut every loop down at once: the group's listeners close together.
//! stop.store(true, Ordering::Release);
//! let mut total = Stats::default();
//! for (waker, thread) in loops {
//!     waker.wake()?;
//!     total += thread.join().expect("loop thread")?;
//! }
//! assert_eq!((total.accepted, total.bytes_out), (1, 4));
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The loop, step by step
//!
//! ```text
//!            +-----------------------------------------------+
//!  poll() -->| events (hints)                                |
//!            |   listener token  -> accept until WouldBlock  |
//!            |                      (or accepts_per_turn)    |
//!            |   connection token -> Connection::drive       |
//!            +-----------------------------------------------+
//!
//!  Connection::drive, with the loop's one read buffer lent to it:
//!
//!   socket --read--> [ shared 64 KiB read buffer ] --write--> socket
//!                              |  what the socket would not take
//!                              v
//!                    [ this connection's pending buffer ]  (exists only
//!                              |                            while non-empty)
//!                              +--flush on WRITABLE--> socket
//! ```
//!
//! 1. `poll` returns readiness events. They are hints: a connection is driven
//!    in both directions until each would block, so a spurious event costs at
//!    most one failed read, and a stale one (for a connection closed earlier in
//!    the batch, its slab slot maybe reused) is recognised by the generation in
//!    its token and ignored.
//! 2. A listener event accepts connections until `WouldBlock` or the per-turn
//!    limit; each new socket gets `TCP_NODELAY` and READABLE interest.
//! 3. A connection event runs [`Connection::drive`]: flush pending bytes, then
//!    read into the shared buffer and write each chunk straight back. Only the
//!    bytes the socket would not take are copied into a pending buffer, and
//!    only then is WRITABLE interest registered.
//! 4. Interest is derived from state ([`Connection::wants`]) and
//!    re-registered only when it changes.
//! 5. After the events, [`EchoServer::handle_timeout`] serves connections that
//!    used their read budget, accepts left over, idle deadlines and the
//!    shutdown deadline; [`EchoServer::poll_timeout`] said how long to sleep.
//!
//! In the source, `src/server/` holds the parts of [`EchoServer`], one file
//! each (the acceptor, the connections, the idle timers, the UDP endpoint,
//! shutdown, the shared limits, the counters), composed in `mod.rs` and
//! `route.rs`; `src/connection.rs` is the echo state machine, which knows no
//! `mio` type; `src/sys.rs` holds every raw OS call and every `unsafe`.
//!
//! # Rules of readiness I/O this crate follows
//!
//! * Readiness is edge-triggered: an event says "something changed", once. So
//!   read (and accept) until `WouldBlock`, or you may never hear of the rest.
//!   `examples/minimal.rs` does exactly that.
//! * `WouldBlock` means "done for now", `Interrupted` means "try again".
//! * An optimisation this crate adds on Linux: a read that returns less than
//!   the buffer already proves the queue empty, which saves the `EAGAIN` read
//!   per message. Two exceptions make it read on to `WouldBlock` anyway: an
//!   event that says the peer closed (a FIN queued behind the data raises no
//!   new edge) and urgent data (a read stops at the urgent mark; sockets get
//!   `SO_OOBINLINE`, so the urgent byte is echoed in place like any other).
//! * A write may take only part of the buffer: keep the rest, in order.
//! * Ask for WRITABLE only while something is pending, or every idle socket
//!   wakes the loop.
//! * Stop reading when too much is pending (backpressure): TCP flow control
//!   then slows the sender, and memory stays bounded.
//! * A read of 0 bytes is the peer's FIN: deliver what is pending, then shut
//!   down the write side. An orderly FIN from us always means "everything
//!   was echoed"; a connection cut short is reset (`SO_LINGER 0`) instead.
//! * Deregister before closing, in one place.
//!
//! # UDP echo
//!
//! The other half of RFC 862: [`EchoServer::bind_udp`] (or
//! [`EchoServer::adopt_udp`]) adds a UDP socket to the same loop, under the
//! same token range. Each datagram goes back to its sender as one datagram,
//! byte for byte (0 to 65,507 bytes over IPv4, 65,527 over IPv6); a reply
//! the socket will not take is dropped and counted, never queued; datagrams
//! from source port 0, from our own ports, or from the ports of services
//! that answer or amplify are refused. Several loops each adopt their own
//! UDP socket of one `SO_REUSEPORT` group ([`udp_group`]).
//!
//! # What it deliberately does not do
//!
//! No hidden threads (a host that wants several loops starts them, as
//! above), no async runtime, no TLS, no protocol beyond bytes-in-bytes-out
//! (and datagrams-in-datagrams-out), no configuration files, no allocator
//! calls on the host's behalf ([`EchoServer::freed_buffer_bytes`]).
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod buffers;
mod config;
mod connection;
#[cfg(any(test, feature = "scripted"))]
pub mod scripted;
mod server;
mod stream;
#[allow(unsafe_code)]
mod sys;
mod text;
mod token;

pub use buffers::Scratch;
pub use config::{Config, ConfigError};
pub use connection::{Connection, Limits, Progress, Wants};
pub use server::{listener_group, udp_group, EchoServer, SharedLimits, Stats, MAX_GROUP};
pub use stream::{HalfClose, Stream};
pub use token::TOKEN_SPAN;
