//! `--metrics ADDR`: the counters for Prometheus at `GET /metrics`, served
//! as one more guest in a host's `Poll` (the single loop's, or the
//! supervisor's with `--threads N`): no thread of its own.
//!
//! A scraper cannot cost the echo service more than a bounded amount:
//!
//! * at most [`MAX_SCRAPERS`] connections at once; one more is accepted and
//!   closed at once, and at most [`ACCEPTS_PER_TURN`] are accepted per turn;
//! * a request head of at most [`http::MAX_HEAD`] bytes (431 past it), read
//!   into a buffer of that size at most;
//! * [`TIME_LIMIT`] for the whole connection: request, answer and close;
//! * one response per connection: after it we send our FIN, read and drop
//!   what the scraper still sends (at most [`DRAIN_LIMIT`] bytes) until its
//!   own FIN, then close. Reading to its FIN keeps the kernel from resetting
//!   the connection over unread bytes and losing the response.
//!
//! The host gives the counters: a scrape waits in [`State::Waiting`] until
//! the host calls [`Metrics::answer`] (at once with one loop; once every
//! loop has answered with several). A wait that outlasts the time limit gets
//! a 503.
//!
//! Tokens: the listener at the base token the host gives, scraper slot `i`
//! at `base + 1 + i`.

mod exposition;
mod http;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use echoloop::Stats;

use http::{Route, Status};

/// Most scraper connections open at once.
pub const MAX_SCRAPERS: usize = 4;

/// Longest one scraper connection may stay open, from accept to close.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Most connections accepted per loop turn (the rest wait for the next).
pub const ACCEPTS_PER_TURN: usize = 16;

/// Most bytes read and dropped after the request head before we close.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// The metrics endpoint: its listener and its scrapers.
pub struct Metrics {
    listener: TcpListener,
    base: Token,
    scrapers: [Option<Scraper>; MAX_SCRAPERS],
    // The last accept stopped at ACCEPTS_PER_TURN: more may be waiting,
    // and no new event will say so.
    accept_more: bool,
}

/// One scraper connection.
struct Scraper {
    stream: TcpStream,
    deadline: Instant,
    state: State,
    // What the stream is registered for.
    interest: Interest,
}

/// Where a scraper connection is.
enum State {
    /// Reading the request head; `len() <= MAX_HEAD + 1`.
    Reading(Vec<u8>),
    /// A scrape waiting for the host's counters.
    Waiting,
    /// Sending the response; `sent <= response.len()`.
    Writing { response: Vec<u8>, sent: usize },
    /// Our FIN is sent; reading to the scraper's own.
    Draining { dropped: usize },
}

/// What a turn of a scraper connection leaves to do.
enum Next {
    Keep,
    Close,
}

impl Metrics {
    /// Binds the endpoint's listener to `addr`.
    ///
    /// # Errors
    /// The bind's error (address in use, not available).
    pub fn bind(addr: SocketAddr) -> io::Result<Metrics> {
        Ok(Metrics {
            listener: TcpListener::bind(addr)?,
            base: Token(0),
            scrapers: Default::default(),
            accept_more: false,
        })
    }

    /// The address bound (with the real port when `addr` had port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Registers the listener under `base`; the scrapers will use the next
    /// [`MAX_SCRAPERS`] tokens.
    pub fn register(&mut self, registry: &Registry, base: Token) -> io::Result<()> {
        self.base = base;
        registry.register(&mut self.listener, base, Interest::READABLE)
    }

    /// True if `token` is one of ours.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.base.0 && token.0 - self.base.0 <= MAX_SCRAPERS
    }

    /// Handles one event of ours: accepts, or moves one scraper along.
    pub fn handle_event(&mut self, registry: &Registry, token: Token, now: Instant) {
        match token.0 - self.base.0 {
            0 => self.accept(registry, now),
            n => self.drive(registry, n - 1),
        }
    }

    /// True while a scrape waits for [`Metrics::answer`].
    pub fn wants_counters(&self) -> bool {
        self.scrapers
            .iter()
            .flatten()
            .any(|s| matches!(s.state, State::Waiting))
    }

    /// Answers every waiting scrape with `stats`, the sum over `loops`
    /// loops.
    pub fn answer(&mut self, registry: &Registry, stats: &Stats, loops: usize) {
        let mut response = None;
        for slot in 0..MAX_SCRAPERS {
            let Some(scraper) = &mut self.scrapers[slot] else {
                continue;
            };
            if matches!(scraper.state, State::Waiting) {
                let response = response.get_or_insert_with(|| {
                    let body = exposition::render(stats, loops);
                    http::response(Status::Ok, exposition::CONTENT_TYPE, &body)
                });
                scraper.state = State::Writing {
                    response: response.clone(),
                    sent: 0,
                };
                self.drive(registry, slot);
            }
        }
    }

    /// How long the host may sleep before [`Metrics::handle_timeout`] has
    /// work: accepts left over, or the first scraper's time limit.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        if self.accept_more {
            return Some(Duration::ZERO);
        }
        self.scrapers
            .iter()
            .flatten()
            .map(|s| s.deadline.saturating_duration_since(now))
            .min()
    }

    /// Accepts left over from the last turn and closes every scraper past
    /// its time limit (a scrape still waiting for counters gets a 503 first,
    /// if its socket takes it at once).
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        if self.accept_more {
            self.accept(registry, now);
        }
        for slot in 0..MAX_SCRAPERS {
            let Some(scraper) = &mut self.scrapers[slot] else {
                continue;
            };
            if now < scraper.deadline {
                continue;
            }
            if matches!(scraper.state, State::Waiting) {
                let response = http::error(
                    Status::Unavailable,
                    "the loops did not report their counters in time",
                );
                let _ = scraper.stream.write(&response);
            }
            debug!("metrics: a scraper reached the time limit");
            self.close(registry, slot);
        }
    }

    /// Accepts up to [`ACCEPTS_PER_TURN`] connections: each into a free
    /// slot, or closed at once when none is free.
    fn accept(&mut self, registry: &Registry, now: Instant) {
        self.accept_more = true;
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.accept_more = false;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: the connection waits
                    // in the backlog, retried with the next one's event.
                    warn!("metrics: cannot accept a scraper: {e}");
                    self.accept_more = false;
                    return;
                }
            };
            let Some(slot) = self.scrapers.iter().position(Option::is_none) else {
                debug!("metrics: {MAX_SCRAPERS} scrapers already connected, closing another");
                continue;
            };
            let mut scraper = Scraper {
                stream,
                deadline: now + TIME_LIMIT,
                state: State::Reading(Vec::new()),
                interest: Interest::READABLE,
            };
            let token = Token(self.base.0 + 1 + slot);
            if let Err(e) = registry.register(&mut scraper.stream, token, scraper.interest) {
                warn!("metrics: cannot register a scraper: {e}");
                continue;
            }
            self.scrapers[slot] = Some(scraper);
            // Its request may have come with the handshake: no edge is
            // raised for bytes already there when it was registered.
            self.drive(registry, slot);
        }
    }

    /// Moves the scraper in `slot` as far as its socket allows, then
    /// registers the interest its state needs, or closes it.
    fn drive(&mut self, registry: &Registry, slot: usize) {
        let Some(scraper) = &mut self.scrapers[slot] else {
            return; // a stale event
        };
        match scraper.turn() {
            Next::Close => self.close(registry, slot),
            Next::Keep => {
                let wanted = match scraper.state {
                    State::Writing { .. } => Interest::WRITABLE,
                    _ => Interest::READABLE,
                };
                if wanted != scraper.interest {
                    let token = Token(self.base.0 + 1 + slot);
                    if let Err(e) = registry.reregister(&mut scraper.stream, token, wanted) {
                        debug!("metrics: cannot reregister a scraper: {e}");
                        self.close(registry, slot);
                        return;
                    }
                    scraper.interest = wanted;
                }
            }
        }
    }

    /// Deregisters and closes the scraper in `slot`: the one way one ends.
    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut scraper) = self.scrapers[slot].take() {
            let _ = registry.deregister(&mut scraper.stream);
        }
    }
}

impl Scraper {
    /// Reads, judges and writes until the socket would block or the
    /// connection is done.
    fn turn(&mut self) -> Next {
        let mut chunk = [0u8; 4096];
        loop {
            match &mut self.state {
                State::Reading(head) => {
                    // One byte past the limit tells a long head from a full one.
                    let room = (http::MAX_HEAD + 1 - head.len()).min(chunk.len());
                    let n = match self.stream.read(&mut chunk[..room]) {
                        // It left before finishing its request.
                        Ok(0) => return Next::Close,
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return Next::Close,
                    };
                    head.extend_from_slice(&chunk[..n]);
                    self.state = match http::head_end(head) {
                        Some(end) => match http::route(&head[..end]) {
                            Route::Metrics => State::Waiting,
                            Route::NotFound => reply(http::error(
                                Status::NotFound,
                                "only /metrics is served here",
                            )),
                            Route::MethodNotAllowed => {
                                reply(http::error(Status::MethodNotAllowed, "only GET is allowed"))
                            }
                            Route::BadRequest(why) => reply(http::error(Status::BadRequest, why)),
                        },
                        None if head.len() > http::MAX_HEAD => reply(http::error(
                            Status::HeadTooLarge,
                            "the request head is over 8 KiB",
                        )),
                        None => continue,
                    };
                }
                State::Waiting => return Next::Keep,
                State::Writing { response, sent } => {
                    match self.stream.write(&response[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => return Next::Close,
                    }
                    if *sent == response.len() {
                        if self.stream.shutdown(Shutdown::Write).is_err() {
                            return Next::Close;
                        }
                        self.state = State::Draining { dropped: 0 };
                    }
                }
                State::Draining { dropped } => match self.stream.read(&mut chunk) {
                    Ok(0) => return Next::Close,
                    Ok(n) => {
                        *dropped += n;
                        if *dropped > DRAIN_LIMIT {
                            return Next::Close;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Next::Close,
                },
            }
        }
    }
}

/// The state that sends `response`.
fn reply(response: Vec<u8>) -> State {
    State::Writing { response, sent: 0 }
}
