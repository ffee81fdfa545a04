//! Every raw OS call that std, mio and socket2 do not offer, and every
//! `unsafe` block of the crate (the crate root denies `unsafe_code`
//! everywhere else).
//!
//! * `recv` and `send`: the two calls of each echoed message, made through
//!   mio's `try_io` (which keeps mio's readiness contract on every backend)
//!   as one libc call each, with `MSG_NOSIGNAL` on send so that a peer's
//!   reset is an `EPIPE` error, never a SIGPIPE.
//! * `unread`: bytes in a socket's receive queue (`FIONREAD`).
//! * `recv_datagram`: a UDP receive that reports a datagram's real length
//!   even when it did not fit (`MSG_TRUNC`).
//! * `open_files_limit`: the soft `RLIMIT_NOFILE`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;

use mio::net::{TcpStream, UdpSocket};
use socket2::{SockAddr, SockRef};

/// Reads into `buf`, as `Read::read` on the stream would: `recv(fd, buf,
/// len, 0)`, once.
///
/// One libc call instead of std's layers under mio's `Read` (benches/
/// instructions.sh counts the difference, a few instructions per message).
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    stream.try_io(|| {
        // SAFETY: the descriptor is open while `stream` is borrowed, and the
        // kernel writes at most `buf.len()` bytes into `buf`, which we hold
        // mutably for the call.
        let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        byte_count(n)
    })
}

/// Writes from `buf`, as `Write::write` would: `send(fd, buf, len,
/// MSG_NOSIGNAL)`, once.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn send(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    stream.try_io(|| {
        // SAFETY: as in `recv`; the kernel only reads `buf.len()` bytes.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        byte_count(n)
    })
}

/// A libc byte count, or the error in `errno` for a negative one.
#[cfg(target_os = "linux")]
#[inline]
fn byte_count(n: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Bytes waiting in a socket's receive queue (`FIONREAD`). Only on close
/// paths, never per message.
pub(crate) fn unread(stream: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass, and the
    // descriptor is open for as long as `stream` is borrowed.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Receives one datagram into `buf` and returns its real length (which is
/// more than `buf.len()` if it did not fit: `MSG_TRUNC`) and its source.
pub(crate) fn recv_datagram(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and
    // `recvfrom` only writes initialised bytes into it, so `buf` stays
    // fully initialised.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    socket.try_io(|| SockRef::from(socket).recv_from_with_flags(uninit, libc::MSG_TRUNC))
}

/// The process's soft open-files limit (`RLIMIT_NOFILE`), if it has one.
pub(crate) fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}
