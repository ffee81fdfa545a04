//! What a [`Connection`](crate::Connection) needs from its stream: a read,
//! a write, and shutting down the write half on its own.
//!
//! Any `Read + Write` stream works through the defaults (the scripted stream
//! of the tests does). A mio `TcpStream` on Linux overrides `recv` and `send`
//! to call the OS directly, because the echo path makes exactly one of each
//! per message and std's layers cost more than the call itself.

use std::io::{self, Read, Write};

/// A stream whose write half can be shut down on its own.
///
/// After the peer half-closes, the echo server delivers every pending byte and
/// then shuts down its own write side, so the peer sees an orderly FIN.
pub trait HalfClose {
    /// Shuts down the write half (`shutdown(SHUT_WR)` for a socket).
    ///
    /// # Errors
    /// Whatever the underlying stream reports, e.g. `NotConnected`.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

/// The stream a [`Connection`](crate::Connection) echoes on.
///
/// `recv` and `send` mean exactly `Read::read` and `Write::write` (the
/// defaults); a stream may override them with a cheaper path to the same
/// call. Implement it with an empty block for any other stream:
///
/// ```
/// struct Loopback(Vec<u8>);
/// # impl std::io::Read for Loopback {
/// #     fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> { Ok(0) }
/// # }
/// # impl std::io::Write for Loopback {
/// #     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.extend_from_slice(b); Ok(b.len()) }
/// #     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
/// # }
/// # impl echoloop::HalfClose for Loopback {
/// #     fn shutdown_write(&mut self) -> std::io::Result<()> { Ok(()) }
/// # }
/// impl echoloop::connection::Stream for Loopback {}
/// let conn = echoloop::Connection::new(Loopback(Vec::new()));
/// assert_eq!(conn.pending_len(), 0);
/// ```
pub trait Stream: Read + Write + HalfClose {
    /// Reads into `buf`, as `Read::read`.
    ///
    /// # Errors
    /// As `Read::read`: `WouldBlock` when nothing is there yet.
    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    /// Writes from `buf`, as `Write::write`.
    ///
    /// # Errors
    /// As `Write::write`: `WouldBlock` when the stream takes nothing now.
    #[inline]
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }
}

impl HalfClose for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

// `Read::read` on a mio `TcpStream` goes mio -> std -> libc: about 24
// instructions per call in mio and std besides libc's own (profile at 437
// per message), against about 5 for this direct call, which the loop can
// also inline. The same calls as std (`read` is recv without flags on a
// connected socket), with the same flags (MSG_NOSIGNAL on send, so a
// peer's reset is an EPIPE error, never a SIGPIPE).
#[cfg(target_os = "linux")]
impl Stream for mio::net::TcpStream {
    #[inline(always)]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open while `self` lives, and the kernel
        // writes at most `buf.len()` bytes into `buf`, which we borrow
        // mutably for the call.
        unsafe { sys::recv(self.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }
    }

    #[inline(always)]
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; the kernel only reads `buf.len()` bytes of `buf`.
        unsafe { sys::send(self.as_raw_fd(), buf.as_ptr(), buf.len()) }
    }
}

/// `recv(fd, buf, len, 0)` and `send(fd, buf, len, MSG_NOSIGNAL)`, as the
/// echo path makes them: one of each per message.
///
/// On x86_64 Linux they are the bare `syscall` instruction (read, which is
/// recv without flags, and sendto with no address, which is what glibc's
/// send does), inlined
/// into the loop: no call through the PLT, no `errno` (the error is the
/// negative return), and none of glibc's cancellation-point bookkeeping,
/// which only matters to threads cancelled with `pthread_cancel`, and
/// echoloop never cancels a thread. About 9 instructions per message
/// (benches/instructions.sh). Elsewhere they are libc's functions.
#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::os::fd::RawFd;

    /// # Safety
    /// `buf` is valid for writes of `len` bytes.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
        // read(fd, buf, len): on a connected stream socket, recv with no
        // flags is read (recv(2): "With a zero flags argument, recv() is
        // generally equivalent to read(2)"), and three arguments instead of
        // recvfrom's six leave r10, r8 and r9 to the loop: no zeroing, and
        // no reload of what the loop kept there (141.4 -> 139.2 instructions
        // per message).
        let ret: isize;
        // SAFETY: per the function's contract; the kernel writes at most
        // `len` bytes at `buf`, and preserves every register but rax, rcx,
        // r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") libc::SYS_read as isize => ret,
                in("rdi") fd as isize,
                in("rsi") buf as usize,
                in("rdx") len,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        result(ret)
    }

    /// # Safety
    /// `buf` is valid for reads of `len` bytes.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn send(fd: RawFd, buf: *const u8, len: usize) -> io::Result<usize> {
        // sendto(fd, buf, len, MSG_NOSIGNAL, NULL, 0)
        let flags = libc::MSG_NOSIGNAL as usize;
        result(syscall6(libc::SYS_sendto, fd, buf as usize, len, flags))
    }

    /// The x86_64 Linux system call convention: number in rax, arguments
    /// in rdi, rsi, rdx, r10, r8, r9 (here the last two are NULL / 0), the
    /// result in rax; the instruction clobbers rcx and r11.
    ///
    /// # Safety
    /// The call must be a socket call whose pointer argument is valid for
    /// `len` bytes, as the callers above promise.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn syscall6(nr: libc::c_long, fd: RawFd, buf: usize, len: usize, flags: usize) -> isize {
        let ret: isize;
        // SAFETY: per the function's contract; the kernel touches no other
        // memory of ours and preserves every register but rax, rcx, r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") fd as isize,
                in("rsi") buf,
                in("rdx") len,
                in("r10") flags,
                in("r8") 0usize,
                in("r9") 0usize,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// A raw return: a byte count, or -errno (-4095..-1).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn result(ret: isize) -> io::Result<usize> {
        if ret < 0 {
            return Err(error(ret));
        }
        Ok(ret as usize)
    }

    // Out of line, so that the common path is one test and one branch
    // (built in place, the error cost 4 instructions on every call).
    #[cold]
    #[inline(never)]
    #[cfg(target_arch = "x86_64")]
    fn error(ret: isize) -> io::Error {
        // -4095 <= ret < 0: the negation fits in an i32.
        io::Error::from_raw_os_error(-ret as i32)
    }

    /// # Safety
    /// `buf` is valid for writes of `len` bytes.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub(super) unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
        // SAFETY: per the function's contract.
        let n = unsafe { libc::recv(fd, buf.cast(), len, 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// # Safety
    /// `buf` is valid for reads of `len` bytes.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub(super) unsafe fn send(fd: RawFd, buf: *const u8, len: usize) -> io::Result<usize> {
        // SAFETY: per the function's contract.
        let n = unsafe { libc::send(fd, buf.cast(), len, libc::MSG_NOSIGNAL) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
impl Stream for mio::net::TcpStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::{Shutdown, TcpListener, TcpStream as StdStream};
    use std::time::{Duration, Instant};

    // A connected pair: a blocking std client and the accepted side as a
    // non-blocking mio stream, as the server holds it.
    fn pair() -> (StdStream, mio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (client, mio::net::TcpStream::from_std(accepted))
    }

    // `recv` until it returns something other than WouldBlock, for at most
    // 5 s (the bytes are on loopback, so this is a few microseconds).
    fn recv_ready(stream: &mut mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match stream.recv(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn issue_10_direct_recv_and_send_behave_as_read_and_write() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; 16];
        // Nothing there yet: WouldBlock, as `Read::read` says it.
        let err = server.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        client.write_all(b"hello").unwrap();
        assert_eq!(recv_ready(&mut server, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(server.send(b"back").unwrap(), 4);
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"back");
        // The peer's FIN reads as 0, as from `Read::read`.
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(recv_ready(&mut server, &mut buf).unwrap(), 0);
    }

    #[test]
    fn issue_10_send_to_a_reset_peer_is_an_error_not_a_signal() {
        let (client, mut server) = pair();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client); // a reset
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match server.send(b"lost") {
                Err(e) if e.kind() != ErrorKind::WouldBlock => break e,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                other => panic!("send kept succeeding: {other:?}"),
            }
        };
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }
}
