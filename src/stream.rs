//! What a [`Connection`](crate::Connection) needs from its stream: a read,
//! a write, and shutting down the write half on its own.
//!
//! Any `Read + Write` stream works through the defaults (the scripted stream
//! of the tests does). A mio `TcpStream` on Linux makes each of `recv` and
//! `send` one libc call through mio's `try_io` (`sys.rs`), because the echo
//! path makes exactly one of each per message.

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
/// impl echoloop::Stream for Loopback {}
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

#[cfg(target_os = "linux")]
impl Stream for mio::net::TcpStream {
    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::recv(self, buf)
    }

    #[inline]
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send(self, buf)
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
    fn recv_and_send_behave_as_read_and_write() {
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
    fn send_to_a_reset_peer_is_an_error_not_a_signal() {
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
