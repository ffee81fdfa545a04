//! A scripted in-memory stream for testing [`Connection`] without sockets.
//!
//! Built for this crate's unit and property tests, and for other crates
//! (the fuzz target) with the `scripted` feature.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

use crate::{Connection, HalfClose, Limits, Scratch, Stream};

/// What the scripted stream does on its next read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Deliver (read) or accept (write) up to this many bytes, at least 1.
    Bytes(usize),
    /// Fail with `WouldBlock`.
    WouldBlock,
    /// Fail with `Interrupted`.
    Interrupted,
    /// Fail with a reset (read) or broken pipe (write).
    Fail,
}

/// An in-memory stream that follows a script. When a script runs out,
/// reads deliver what is left (then `WouldBlock`, or 0 once `eof` is set)
/// and writes take everything.
#[derive(Debug, Default)]
pub struct Scripted {
    /// Bytes the peer sends.
    pub input: Vec<u8>,
    /// How many of `input` were read.
    pub read_pos: usize,
    /// Script for the next reads.
    pub reads: VecDeque<Step>,
    /// Script for the next writes.
    pub writes: VecDeque<Step>,
    /// The peer half-closes after `input`.
    pub eof: bool,
    /// Bytes written back to the peer.
    pub output: Vec<u8>,
    /// Our write side was shut down.
    pub shut: bool,
    /// Calls to `read` so far.
    pub read_calls: usize,
    /// Calls to `write` so far.
    pub write_calls: usize,
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_calls += 1;
        let left = self.input.len() - self.read_pos;
        let limit = match self.reads.pop_front().unwrap_or(Step::Bytes(usize::MAX)) {
            Step::WouldBlock => return Err(ErrorKind::WouldBlock.into()),
            Step::Interrupted => return Err(ErrorKind::Interrupted.into()),
            Step::Fail => return Err(ErrorKind::ConnectionReset.into()),
            Step::Bytes(n) => n,
        };
        if left == 0 {
            return if self.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = limit.min(left).min(buf.len()).max(1);
        buf[..n].copy_from_slice(&self.input[self.read_pos..self.read_pos + n]);
        self.read_pos += n;
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_calls += 1;
        if self.shut {
            return Err(io::Error::other("write after shutdown"));
        }
        match self.writes.pop_front().unwrap_or(Step::Bytes(usize::MAX)) {
            Step::WouldBlock => Err(ErrorKind::WouldBlock.into()),
            Step::Interrupted => Err(ErrorKind::Interrupted.into()),
            Step::Fail => Err(ErrorKind::BrokenPipe.into()),
            Step::Bytes(n) => {
                let n = n.min(buf.len()).max(1);
                self.output.extend_from_slice(&buf[..n]);
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Scripted {}

impl HalfClose for Scripted {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shut = true;
        Ok(())
    }
}

/// Drives `conn` as the loop would on each edge, up to `max_drives` times,
/// until it is done or (without EOF) has echoed all input. After every step
/// it checks that pending bytes (and the pending buffer's capacity) never
/// exceed max(`limits.max_pending`, the read buffer) and that
/// [`Connection::wants`] matches the state. At the end it checks that the
/// output equals the input and that the write side was shut down exactly when
/// the peer half-closed. Scripted `Fail` steps end it early with `Ok`.
///
/// # Errors
/// A description of the first broken rule.
pub fn drive_checked(
    conn: &mut Connection<Scripted>,
    scratch: &mut Scratch,
    limits: &Limits,
    max_drives: usize,
) -> Result<(), String> {
    for _ in 0..max_drives {
        if conn.drive(scratch, limits).is_err() {
            return Ok(()); // a scripted failure: the loop would close it
        }
        let pending = conn.pending_len();
        let bound = limits.max_pending.max(scratch.read_len());
        if pending > bound || conn.pending_capacity() > bound {
            return Err(format!(
                "{pending} bytes pending in {} of capacity, bound {bound}",
                conn.pending_capacity()
            ));
        }
        let reading = !conn.read_closed() && !conn.is_paused() && !conn.is_done();
        let wanted = conn.wants();
        if wanted.write() != (pending > 0) {
            return Err(format!("wanted {wanted:?} with {pending} bytes pending"));
        }
        if wanted.read() != reading {
            return Err(format!("wanted {wanted:?} while reading={reading}"));
        }
        let done = conn.is_done();
        let stream = conn.stream_mut();
        if !stream.input.starts_with(&stream.output) {
            return Err("output is not a prefix of the input".to_string());
        }
        let echoed_all = stream.output.len() == stream.input.len();
        if done || (!stream.eof && echoed_all) {
            break;
        }
    }
    let done = conn.is_done();
    let stream = conn.stream_mut();
    if stream.output != stream.input {
        return Err(format!(
            "echoed {} of {} bytes",
            stream.output.len(),
            stream.input.len()
        ));
    }
    if done != stream.eof || stream.shut != stream.eof {
        return Err(format!(
            "done={done} shut={} eof={}",
            stream.shut, stream.eof
        ));
    }
    Ok(())
}
