//! echoloop: a TCP echo server (RFC 862) on one hand-written, single-threaded
//! mio readiness loop.
//!
//! Every byte received on a connection goes back on that connection, in
//! order, nothing lost and nothing duplicated. The crate is small on purpose:
//! it is a benchmark target, a teaching example of non-blocking I/O, and a
//! guest that programs with their own `mio::Poll` can host.
//!
//! # Embed it or run the binary?
//!
//! * **Run the binary** (`cargo run --release -- --listen 127.0.0.1:7007`) to
//!   point a load generator at it or to read the loop. It owns a `Poll`, the
//!   signals and the logger, and is itself just one host of this API.
//! * **Embed [`EchoServer`]** when your program already runs a `mio::Poll`:
//!   give it a base token, hand it each batch of events with
//!   [`handle_events`](EchoServer::handle_events) (it takes the ones it
//!   [`owns`](EchoServer::owns) and says how many it left to you; or route
//!   them yourself, one by one, to
//!   [`handle_event`](EchoServer::handle_event)), sleep no longer than
//!   [`poll_timeout`](EchoServer::poll_timeout), and call
//!   [`handle_timeout`](EchoServer::handle_timeout) once per turn. It never
//!   creates a `Poll`, a `Waker` or a thread and keeps no global state;
//!   `examples/embed.rs` runs it beside a UDP socket, a waker and a timer.
//! * **Learn from `docs/learn.md`** first: four runnable steps from a
//!   blocking echo server to `examples/minimal.rs`, the same loop in 140
//!   lines with nothing but mio and slab, each step shown failing.
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
//!    its token and ignored ([`token`]).
//! 2. A listener event accepts connections until `WouldBlock` or the per-turn
//!    limit; each new socket gets `TCP_NODELAY` and READABLE interest.
//! 3. A connection event runs [`Connection::drive`]: flush pending bytes, then
//!    read into the shared buffer and write each chunk straight back. Only the
//!    bytes the socket would not take are copied into a pending buffer, and
//!    only then is WRITABLE interest registered.
//! 4. Interest is derived from state and re-registered only when it changes.
//! 5. After the events, [`EchoServer::handle_timeout`] serves connections that
//!    used their read budget, accepts left over, idle deadlines and the
//!    shutdown deadline; [`EchoServer::poll_timeout`] said how long to sleep.
//!
//! In the source, each concern has a file of its own under `src/server/`:
//! `mod.rs` holds the two per-turn calls, `route.rs` routes events, `accept.rs`
//! accepts (and backs off when descriptors run out), `drive.rs` runs one
//! connection's turn around [`Connection::drive`] and is the one place that
//! closes, `deadlines.rs` keeps the idle deadlines, `shutdown.rs` the orderly
//! shutdown, `udp.rs` the UDP echo, and `stats.rs` the counters;
//! `reuseport.rs` and `limit.rs` serve hosts that run several loops
//! (below). `src/stream.rs` says what a connection needs from its socket:
//! on Linux its `recv` and `send` go straight to the kernel (on x86_64 as
//! the bare `syscall` instruction, elsewhere through libc), the two calls
//! each echoed message makes. `src/buffers.rs` keeps the shared read buffer
//! and the pending buffers a connection holds only while bytes wait.
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
//! # Several loops: one per core
//!
//! One loop uses one core. To use more, a host runs N servers on N
//! threads, each with its own `Poll`, its own [`EchoServer`] and its own
//! listening socket per address, all on one port with `SO_REUSEPORT`
//! ([`server::listener_group`]), so the kernel spreads new connections over
//! them. They share nothing per message; a [`server::SharedLimit`] keeps
//! the connection limit exact over all of them and is touched only when a
//! connection is admitted or closed. Each loop stays the single-threaded
//! loop above. The `echoloop` binary's `--threads N` is the worked example
//! (`src/bin/echoloop/loops.rs`: signals handled once on the main thread,
//! each loop woken through its own `Waker`, counters summed with `+=` on
//! [`Stats`]). Two rules: close the listeners of a group together (closing
//! one resets the connections queued on it), and on platforms whose
//! `SO_REUSEPORT` does not balance (anything but Linux here) run one loop.
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use std::io::{Read, Write};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::Instant;
//! use mio::{Events, Poll, Token, Waker};
//! use echoloop::server::{listener_group, SharedLimit};
//! use echoloop::{Config, EchoServer, Stats};
//!
//! const WAKE: Token = Token(0);
//! let limit = SharedLimit::new(1000); // over both loops
//! let group = listener_group("127.0.0.1:0".parse().unwrap(), 2)?;
//! let addr = group[0].local_addr()?;
//! let stop = Arc::new(AtomicBool::new(false));
//! let mut loops = Vec::new();
//! for listener in group {
//!     let poll = Poll::new()?;
//!     let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
//!     let mut server = EchoServer::with_shared_limit(Config::default(), Token(1), limit.clone());
//!     server.adopt(listener)?;
//!     server.register(poll.registry())?;
//!     let stop = stop.clone();
//!     let thread = std::thread::spawn(move || -> std::io::Result<Stats> {
//!         let (mut poll, mut events) = (poll, Events::with_capacity(256));
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
//!     total += thread.join().unwrap()?;
//! }
//! assert_eq!((total.accepted, total.bytes_out), (1, 4));
//! # }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What it deliberately does not do
//!
//! No hidden threads (a host that wants several loops starts them, as
//! above), no async runtime, no TLS, no protocol beyond bytes-in-bytes-out
//! (and datagrams-in-datagrams-out), no configuration files.
//!
//! # UDP echo
//!
//! The other half of RFC 862: [`EchoServer::bind_udp`] (or
//! [`EchoServer::adopt_udp`]) adds a UDP socket to the same loop, under the
//! same token range. Each datagram goes back to its sender as one datagram,
//! byte for byte (0 to 65,507 bytes over IPv4, 65,527 over IPv6), at most
//! [`server::UDP_DATAGRAMS_PER_TURN`] per socket per turn; a reply the
//! socket will not take is dropped and counted, never queued; datagrams
//! from source port 0, from our own ports, or from the ports of services
//! that answer or amplify ([`server::refused_source_port`]) are refused.
//! Several loops each adopt their own UDP socket of one `SO_REUSEPORT`
//! group ([`server::udp_group`]).
#![deny(missing_docs)]

mod buffers;
pub mod config;
pub mod connection;
#[cfg(any(test, feature = "scripted"))]
pub mod scripted;
pub mod server;
mod stream;
pub mod token;

pub use config::Config;
pub use connection::{Connection, HalfClose, Limits, Progress, Scratch, Stream};
pub use server::{EchoServer, Stats};
pub use token::TOKEN_SPAN;
