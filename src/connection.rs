//! One peer's echo state, over any `Read + Write` stream.
//!
//! A [`Connection`] knows nothing about `mio`, registries or tokens: the loop
//! in `server/` owns those, in a slot around each connection
//! (`server/connections.rs`). That keeps the echo logic testable with a
//! scripted in-memory stream (see the tests at the bottom of this file) and
//! makes the rules of non-blocking I/O visible in one place:
//!
//! * a read that returns `WouldBlock` means "nothing more for now";
//! * a write may take only part of what we offer, and the rest must be kept;
//! * a read of 0 bytes means the peer will send nothing more (half-close);
//! * we stop reading while too much is waiting to be written (backpressure).

use std::io::{self, ErrorKind};

use crate::buffers::{Pending, Scratch};
use crate::stream::Stream;

/// On Linux a read of a stream socket that returns fewer bytes than asked for
/// has emptied the receive queue, and any byte that arrives later raises a new
/// edge. Treating a short read as "drained" saves one `read` returning `EAGAIN`
/// per message: 2 syscalls per echoed message instead of 3
/// (`benches/syscalls.sh`). Elsewhere we read until `WouldBlock`.
/// Exceptions: a FIN queued behind the data raises no new edge, and a read
/// stops at a TCP urgent mark, so once an event said either
/// ([`Connection::read_past_short_reads`]) we read on to the end.
const SHORT_READ_DRAINS: bool = cfg!(target_os = "linux");

/// Limits that shape one [`Connection::drive`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Stop reading once this many bytes are pending (high-water mark).
    pub max_pending: usize,
    /// Resume reading once pending bytes fall to this many (low-water mark).
    pub resume_at: usize,
    /// Bytes one `drive` call may read before yielding to other connections.
    pub budget: usize,
}

/// What one [`Connection::drive`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes read from the peer.
    pub bytes_in: usize,
    /// Bytes written to the peer.
    pub bytes_out: usize,
    /// The read budget ran out while the peer may have more: drive again soon.
    pub more: bool,
    /// This call started a backpressure pause.
    pub paused: bool,
}

/// The readiness a connection wants next: to read, to write, both, or
/// nothing (it is done). A host maps it onto its event loop's interest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants(u8);

impl Wants {
    /// Nothing more: the connection is done and can be closed.
    pub const NOTHING: Wants = Wants(0);
    /// Readable only: the state of an echo connection between messages.
    pub const READ: Wants = Wants(1);
    /// Writable only: pending bytes wait and reading is paused or over.
    pub const WRITE: Wants = Wants(2);
    /// Both: bytes wait to be written and more may be read.
    pub const READ_WRITE: Wants = Wants(3);

    /// True if it wants to read.
    pub fn read(self) -> bool {
        self.0 & Wants::READ.0 != 0
    }

    /// True if it wants to write.
    pub fn write(self) -> bool {
        self.0 & Wants::WRITE.0 != 0
    }
}

// Bits of `Connection::flags`.
const READ_CLOSED: u8 = 1; // the peer sent FIN: read returned 0
const PAUSED: u8 = 2; // backpressure: too much pending, reads stopped
const WRITE_SHUT: u8 = 4; // we shut down our write half (sent our FIN)
const READ_TO_END: u8 = 8; // an event said FIN or urgent data: read to WouldBlock

/// One peer's echo state.
///
/// Small on purpose: the server keeps one per connection, and an idle
/// connection owns no heap memory. With a mio `TcpStream` it is 16 bytes on
/// 64-bit Linux (the descriptor, the pending buffer's pointer, the flags);
/// the server's slot around it makes 24.
// `repr(C)` with the stream first: the loop finds the socket's descriptor
// at the connection's own address rather than keeping a second pointer
// alive across the two syscalls (benches/instructions.sh). Still 16 bytes:
// stream 4, flags 1 (+3 padding), pending 8.
#[derive(Debug)]
#[repr(C)]
pub struct Connection<S> {
    stream: S,
    flags: u8,
    // Some only while bytes are waiting to be written back; never empty.
    pending: Option<Box<Pending>>,
}

impl<S: Stream> Connection<S> {
    /// Wraps a connected, non-blocking stream.
    ///
    /// ```
    /// use echoloop::Connection;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// let (accepted, _) = listener.accept().unwrap();
    /// accepted.set_nonblocking(true).unwrap();
    /// let conn = Connection::new(mio::net::TcpStream::from_std(accepted));
    /// assert_eq!(conn.pending_len(), 0);
    /// # drop(client);
    /// ```
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            flags: 0,
            pending: None,
        }
    }

    /// The underlying stream, e.g. to register it with a `mio::Registry`.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes read from the peer and not yet written back.
    pub fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    /// Bytes of heap this connection's pending buffer holds (its capacity),
    /// 0 when nothing is pending.
    pub fn pending_capacity(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.capacity())
    }

    /// True once the peer has half-closed (a read returned 0).
    pub fn read_closed(&self) -> bool {
        self.flags & READ_CLOSED != 0
    }

    /// True while reading is paused by backpressure.
    pub fn is_paused(&self) -> bool {
        self.flags & PAUSED != 0
    }

    /// True when this connection has nothing left to do: the peer half-closed,
    /// every byte was echoed and our write side was shut down (our FIN).
    pub fn is_done(&self) -> bool {
        self.flags & (READ_CLOSED | WRITE_SHUT) == READ_CLOSED | WRITE_SHUT
    }

    /// Notes that a readiness event reported the peer's FIN or TCP urgent
    /// data. Either may sit behind data in the receive queue and raise no
    /// further edge (a Linux read also stops at the urgent mark), so from
    /// now on reads continue until `WouldBlock` or 0 instead of stopping at
    /// a short read.
    pub fn read_past_short_reads(&mut self) {
        self.flags |= READ_TO_END;
    }

    /// The readiness this connection wants next, derived from its state.
    ///
    /// To read while the peer has not half-closed and reading is not
    /// paused; to write only while bytes are pending, so an idle connection
    /// gets no "you can write" wake-ups. [`Wants::NOTHING`] means it is done
    /// and should be closed.
    #[inline]
    pub fn wants(&self) -> Wants {
        let read = self.flags & (READ_CLOSED | PAUSED) == 0;
        let write = self.pending.is_some();
        Wants(u8::from(read) | u8::from(write) << 1)
    }

    /// Echoes as much as the stream allows right now.
    ///
    /// Writes pending bytes first, then reads into the shared `scratch` buffer
    /// and writes each chunk straight back; only what the stream would not
    /// take is copied into this connection's pending buffer. Stops when the
    /// stream would block, the budget is spent, or backpressure pauses reads.
    /// Once the peer has half-closed and nothing is pending, shuts down the
    /// write side ([`Connection::is_done`] turns true).
    ///
    /// Work: at most `limits.budget` bytes read (plus one buffer), and the
    /// writes that echo them.
    ///
    /// # Errors
    /// Any I/O error other than `WouldBlock` and `Interrupted` (a reset, a
    /// broken pipe): the connection is then unusable and should be closed.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use echoloop::{Connection, Limits, Scratch};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let (accepted, _) = listener.accept()?;
    /// accepted.set_nonblocking(true)?;
    /// let mut conn = Connection::new(mio::net::TcpStream::from_std(accepted));
    /// let mut scratch = Scratch::new(64 * 1024);
    /// let limits = Limits { max_pending: 65536, resume_at: 32768, budget: 262144 };
    /// client.write_all(b"hi")?;
    /// // No event loop here: drive until the bytes have arrived and gone back.
    /// let mut echoed = 0;
    /// while echoed < 2 {
    ///     echoed += conn.drive(&mut scratch, &limits)?.bytes_out;
    /// }
    /// let mut back = [0u8; 2];
    /// client.read_exact(&mut back)?;
    /// assert_eq!(&back, b"hi");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    // Inlined into the loop's event handler: the common path (one read, one
    // write, nothing kept) is small, and the rare ones (`flush`, `keep`,
    // `write_rest`) stay out of line (benches/instructions.sh).
    #[inline(always)]
    pub fn drive(&mut self, scratch: &mut Scratch, limits: &Limits) -> io::Result<Progress> {
        let mut progress = Progress::default();
        // Bytes left over from an earlier call go first. If some are still
        // left after that, the stream would block: no write can succeed
        // before the next writable event, so below, "something is pending"
        // also means "queue new bytes, don't try to write them".
        if self.pending.is_some() {
            progress.bytes_out = self.flush(scratch)?;
        }
        if self.is_paused() {
            if self.pending_len() > limits.resume_at {
                return Ok(progress);
            }
            self.flags &= !PAUSED;
        }
        let mut budget = limits.budget;
        // Whether a short read ends this call (see SHORT_READ_DRAINS): only
        // a WouldBlock, which ends the call anyway, clears READ_TO_END.
        let short_read_drains = SHORT_READ_DRAINS && self.flags & READ_TO_END == 0;
        loop {
            if self.read_closed() {
                // The peer sent everything: once every byte is echoed, our
                // FIN says so (a read of 0 comes back here).
                if self.pending.is_none() {
                    self.shutdown_write()?;
                }
                return Ok(progress);
            }
            if budget == 0 {
                progress.more = true;
                break;
            }
            // While nothing is pending, each chunk goes straight back, so a
            // whole buffer may be read; once bytes are pending, new ones
            // queue behind them and only the room under the cap is read
            // (capping every read by the room would make `--max-pending 1`
            // read one byte at a time). So pending bytes never exceed
            // max(max_pending, read buffer).
            // (Neither the buffer nor the budget is empty here, so only the
            // room can be.)
            let want = match self.pending {
                None => scratch.read.len().min(budget),
                Some(_) => {
                    let room = limits.max_pending.saturating_sub(self.pending_len());
                    if room == 0 {
                        self.pause(&mut progress);
                        break;
                    }
                    scratch.read.len().min(room).min(budget)
                }
            };
            let n = match self.stream.recv(&mut scratch.read[..want]) {
                Ok(0) => {
                    self.flags |= READ_CLOSED;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Past any urgent mark: short reads prove "empty" again.
                    self.flags &= !READ_TO_END;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            progress.bytes_in += n;
            budget -= n; // n <= want <= budget
                         // Echo at once; keep only what the socket would not take. If bytes
                         // are already pending, new ones must queue behind them (order).
            let sent = match self.pending {
                // The usual case, the socket takes it all, is tried here so
                // that it yields `n` without a `Result` to test again;
                // partial writes, `Interrupted` and errors go on in
                // `write_rest`.
                None => match self.stream.send(&scratch.read[..n]) {
                    Ok(sent) if sent == n => n,
                    first => write_rest(&mut self.stream, &scratch.read[..n], first)?,
                },
                Some(_) => 0,
            };
            progress.bytes_out += sent;
            if sent < n {
                self.keep(scratch, sent..n, limits);
                if self.pending_len() >= limits.max_pending {
                    self.pause(&mut progress);
                    break;
                }
            }
            if short_read_drains && n < want {
                break;
            }
        }
        Ok(progress)
    }

    /// Returns this connection's pending buffer to the pool, if it has one
    /// (when the server closes it).
    pub(crate) fn release(&mut self, scratch: &mut Scratch) {
        if let Some(mut pending) = self.pending.take() {
            pending.consume(pending.len());
            scratch.give_back(pending);
        }
    }

    // Sends our FIN: only once the peer's FIN has arrived and every byte
    // before it was echoed (from `drive`), so a FIN always means "all
    // echoed".
    fn shutdown_write(&mut self) -> io::Result<()> {
        if self.flags & WRITE_SHUT == 0 {
            self.flags |= WRITE_SHUT;
            self.stream.shutdown_write()?;
        }
        Ok(())
    }

    fn pause(&mut self, progress: &mut Progress) {
        if !self.is_paused() {
            self.flags |= PAUSED;
            progress.paused = true;
        }
    }

    // Copies `scratch.read[range]`, which the stream would not take, into the
    // pending buffer (taken from the pool when there is none yet). Out of
    // line, like `flush`, so that the common path stays small.
    #[inline(never)]
    fn keep(&mut self, scratch: &mut Scratch, range: std::ops::Range<usize>, limits: &Limits) {
        let spare = &mut scratch.spare;
        let pending = self
            .pending
            .get_or_insert_with(|| spare.pop().unwrap_or_default());
        let bound = limits.max_pending.max(scratch.read.len());
        pending.push(&scratch.read[range], bound);
    }

    // Writes pending bytes until done or the stream would block; a drained
    // buffer goes back to the pool so an idle connection owns no heap memory.
    #[inline(never)]
    fn flush(&mut self, scratch: &mut Scratch) -> io::Result<usize> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(0);
        };
        let sent = write_some(&mut self.stream, pending.unsent())?;
        pending.consume(sent);
        if pending.len() == 0 {
            self.release(scratch);
        }
        Ok(sent)
    }
}

/// Writes as much of `bytes` (never empty) as the stream takes before it
/// would block. The usual case, the stream takes it all at once, returns
/// here; partial writes, `Interrupted` and errors go on in `write_rest`.
#[inline]
fn write_some<W: Stream>(stream: &mut W, bytes: &[u8]) -> io::Result<usize> {
    debug_assert!(!bytes.is_empty());
    match stream.send(bytes) {
        Ok(sent) if sent == bytes.len() => Ok(sent),
        first => write_rest(stream, bytes, first),
    }
}

/// `write_some` after its first `send` returned `first`: out of line, as
/// the rare path.
#[inline(never)]
fn write_rest<W: Stream>(
    stream: &mut W,
    bytes: &[u8],
    first: io::Result<usize>,
) -> io::Result<usize> {
    let mut sent = 0;
    let mut result = first;
    loop {
        match result {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if sent >= bytes.len() {
            break;
        }
        result = stream.send(&bytes[sent..]);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use crate::scripted::{Scripted, Step};

    const LIMITS: Limits = Limits {
        max_pending: 1000,
        resume_at: 500,
        budget: 1 << 20,
    };

    fn conn_with(input: &[u8]) -> Connection<Scripted> {
        Connection::new(Scripted {
            input: input.to_vec(),
            ..Scripted::default()
        })
    }

    #[test]
    fn echoes_a_read_at_once_without_pending() {
        let mut conn = conn_with(b"hello");
        let mut scratch = Scratch::new(64);
        let p = conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"hello");
        assert_eq!((p.bytes_in, p.bytes_out), (5, 5));
        assert_eq!(conn.pending_len(), 0);
        assert_eq!(conn.wants(), Wants::READ);
    }

    #[test]
    fn short_read_counts_as_drained_on_linux() {
        let mut conn = conn_with(b"abc");
        let mut scratch = Scratch::new(64);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        let expected = if SHORT_READ_DRAINS { 1 } else { 2 };
        assert_eq!(conn.stream.read_calls, expected);
    }

    #[test]
    fn a_short_message_costs_one_read_and_one_write() {
        // The lean path's syscall budget: a message that arrives whole and
        // is taken whole is one read (short: the queue is empty) and one
        // write, with no pending buffer and nothing left to flush.
        let mut conn = conn_with(b"ping");
        let mut scratch = Scratch::new(64);
        let p = conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(
            (p.bytes_in, p.bytes_out, p.more, p.paused),
            (4, 4, false, false)
        );
        let reads = if SHORT_READ_DRAINS { 1 } else { 2 };
        assert_eq!(
            (conn.stream.read_calls, conn.stream.write_calls),
            (reads, 1)
        );
        assert!(conn.pending.is_none());
        assert!(scratch.spare.is_empty(), "no pending buffer was taken");
    }

    #[test]
    fn a_partial_first_write_goes_on_until_it_would_block() {
        // The first send is tried inline; what it did not take is retried
        // (after Interrupted too) until the stream would block, then kept.
        let mut conn = conn_with(b"0123456789");
        conn.stream.writes = VecDeque::from([
            Step::Bytes(2),
            Step::Interrupted,
            Step::Bytes(3),
            Step::WouldBlock,
        ]);
        let mut scratch = Scratch::new(64);
        let p = conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(p.bytes_out, 5);
        assert_eq!(conn.stream.output, b"01234");
        assert_eq!(conn.stream.write_calls, 4);
        assert_eq!(conn.pending_len(), 5);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"0123456789");
    }

    #[test]
    fn keeps_the_unwritten_part_of_a_partial_write() {
        let mut conn = conn_with(b"0123456789");
        conn.stream.writes = VecDeque::from([Step::Bytes(3), Step::WouldBlock]);
        let mut scratch = Scratch::new(64);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"012");
        assert_eq!(conn.pending_len(), 7);
        assert_eq!(conn.wants(), Wants::READ_WRITE);
        // The next writable event flushes the rest, and WRITABLE is dropped.
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"0123456789");
        assert_eq!(conn.wants(), Wants::READ);
    }

    #[test]
    fn releases_the_pending_buffer_once_drained() {
        let mut conn = conn_with(b"0123456789");
        conn.stream.writes = VecDeque::from([Step::WouldBlock]);
        let mut scratch = Scratch::new(64);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.pending.is_some());
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.pending.is_none());
        assert_eq!(scratch.spare.len(), 1, "the buffer went back to the pool");
    }

    #[test]
    fn new_bytes_queue_behind_pending_ones() {
        let mut conn = conn_with(b"abcdef");
        conn.stream.reads = VecDeque::from([Step::Bytes(3), Step::Bytes(3)]);
        conn.stream.writes = VecDeque::from([Step::Bytes(1), Step::WouldBlock]);
        let mut scratch = Scratch::new(3);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"a");
        assert_eq!(conn.pending_len(), 5);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"abcdef");
    }

    #[test]
    fn stops_reading_while_buffer_is_full() {
        let input = vec![7u8; 5000];
        let mut conn = conn_with(&input);
        conn.stream.writes = VecDeque::from(vec![Step::WouldBlock; 100]);
        let mut scratch = Scratch::new(256);
        let p = conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(p.paused);
        assert_eq!(conn.pending_len(), LIMITS.max_pending);
        assert_eq!(conn.wants(), Wants::WRITE);
        // Still blocked: no read, no growth.
        let reads = conn.stream.read_calls;
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.read_calls, reads);
        assert_eq!(conn.pending_len(), LIMITS.max_pending);
    }

    #[test]
    fn resumes_reading_below_the_low_water_mark() {
        let input = vec![7u8; 5000];
        let mut conn = conn_with(&input);
        let mut writes = vec![Step::WouldBlock];
        // Draining 400 of 1000 leaves 600, above resume_at (500): still paused.
        writes.push(Step::Bytes(400));
        writes.push(Step::WouldBlock);
        conn.stream.writes = VecDeque::from(writes);
        let mut scratch = Scratch::new(256);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.is_paused());
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.pending_len(), 600);
        assert!(conn.is_paused());
        // Unlimited writes now: everything flows.
        for _ in 0..100 {
            conn.drive(&mut scratch, &LIMITS).unwrap();
            if conn.stream.output.len() == input.len() {
                break;
            }
        }
        assert!(!conn.is_paused());
        assert_eq!(conn.stream.output, input);
    }

    #[test]
    fn half_close_flushes_then_shuts_down_write() {
        let mut conn = conn_with(b"bye");
        conn.stream.eof = true;
        conn.stream.writes = VecDeque::from([Step::WouldBlock]);
        let mut scratch = Scratch::new(2);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.read_closed());
        while !conn.is_done() {
            conn.drive(&mut scratch, &LIMITS).unwrap();
        }
        assert_eq!(conn.stream.output, b"bye");
        assert!(conn.stream.shut);
        assert_eq!(conn.wants(), Wants::NOTHING);
    }

    #[test]
    fn pending_bytes_survive_half_close_until_writable() {
        let mut conn = conn_with(b"data");
        conn.stream.eof = true;
        conn.stream.writes = VecDeque::from([Step::WouldBlock]);
        let mut scratch = Scratch::new(4);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.read_closed());
        assert!(!conn.is_done());
        assert_eq!(conn.wants(), Wants::WRITE);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.is_done());
        assert_eq!(conn.stream.output, b"data");
    }

    #[test]
    fn fin_queued_behind_data_is_read() {
        // Data and FIN arrived together: one edge, and the short read that
        // returns the data must not end reading before the FIN is seen.
        let mut conn = conn_with(b"last words");
        conn.stream.eof = true;
        conn.read_past_short_reads();
        let mut scratch = Scratch::new(64);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert!(conn.read_closed());
        assert!(conn.is_done());
        assert_eq!(conn.stream.output, b"last words");
    }

    #[test]
    fn a_tiny_max_pending_does_not_shrink_reads() {
        // With nothing pending, a read may fill the whole shared buffer: only
        // bytes the socket refused count against the cap.
        let input = vec![7u8; 4 * 64];
        let mut conn = conn_with(&input);
        let mut scratch = Scratch::new(64);
        let limits = Limits {
            max_pending: 1,
            resume_at: 0,
            ..LIMITS
        };
        let p = conn.drive(&mut scratch, &limits).unwrap();
        assert_eq!(p.bytes_in, input.len());
        assert_eq!(conn.stream.output, input);
        // Four full reads and the one that would block, not one read per
        // byte.
        assert!(
            conn.stream.read_calls <= 5,
            "{} reads",
            conn.stream.read_calls
        );
    }

    #[test]
    fn budget_yields_with_data_left() {
        let input = vec![1u8; 1000];
        let mut conn = conn_with(&input);
        let mut scratch = Scratch::new(100);
        let limits = Limits {
            budget: 300,
            ..LIMITS
        };
        let p = conn.drive(&mut scratch, &limits).unwrap();
        assert!(p.more);
        assert_eq!(p.bytes_in, 300);
    }

    #[test]
    fn interrupted_is_retried() {
        let mut conn = conn_with(b"xyz");
        conn.stream.reads = VecDeque::from([Step::Interrupted]);
        conn.stream.writes = VecDeque::from([Step::Interrupted]);
        let mut scratch = Scratch::new(64);
        conn.drive(&mut scratch, &LIMITS).unwrap();
        assert_eq!(conn.stream.output, b"xyz");
    }

    #[test]
    fn errors_are_reported_not_swallowed() {
        let mut conn = conn_with(b"xyz");
        conn.stream.writes = VecDeque::from([Step::Fail]);
        let mut scratch = Scratch::new(64);
        let err = conn.drive(&mut scratch, &LIMITS).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
        let mut conn = conn_with(b"xyz");
        conn.stream.reads = VecDeque::from([Step::Fail]);
        let err = conn.drive(&mut scratch, &LIMITS).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    }

    mod prop {
        use super::*;
        use crate::scripted::drive_checked;
        use proptest::prelude::*;

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                6 => (1usize..700).prop_map(Step::Bytes),
                2 => Just(Step::WouldBlock),
                1 => Just(Step::Interrupted),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Output equals input, pending never exceeds the cap, and the
            /// wanted readiness matches the state after every step.
            #[test]
            fn echo_is_exact_under_random_readiness(
                input in proptest::collection::vec(any::<u8>(), 0..6000),
                reads in proptest::collection::vec(step(), 0..60),
                writes in proptest::collection::vec(step(), 0..60),
                read_size in 1usize..300,
                max_pending in 1usize..2000,
                budget in 1usize..3000,
                eof in any::<bool>(),
            ) {
                let limits = Limits { max_pending, resume_at: max_pending / 2, budget };
                let mut conn = Connection::new(Scripted {
                    input,
                    reads: reads.into(),
                    writes: writes.into(),
                    eof,
                    ..Scripted::default()
                });
                let mut scratch = Scratch::new(read_size);
                // Events are hints: drive repeatedly, as the loop would on
                // each edge, until all input has been echoed.
                let checked = drive_checked(&mut conn, &mut scratch, &limits, 100_000);
                prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
            }
        }
    }
}
