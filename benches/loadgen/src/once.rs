//! `once`: send one message, print the reply, compare. The first check
//! users reach for.

use std::io::{self, ErrorKind, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// How long `once` waits for the server's EOF after the whole reply.
const EOF_WAIT: Duration = Duration::from_secs(5);

/// `once`: connect, send, print what came back, compare.
pub(crate) fn once(addr: SocketAddr, message: Option<String>) -> i32 {
    let message = match message {
        Some(m) => m.into_bytes(),
        None => {
            let mut all = Vec::new();
            if let Err(e) = io::stdin().read_to_end(&mut all) {
                eprintln!("loadgen: error: reading stdin: {e}");
                return 1;
            }
            all
        }
    };
    let result = (|| -> io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let msg = message.clone();
        let sender = std::thread::spawn(move || -> io::Result<()> {
            let mut writer = writer;
            writer.write_all(&msg)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        while reply.len() < message.len() {
            match stream.read(&mut buf)? {
                0 => break,
                n => reply.extend_from_slice(&buf[..n]),
            }
        }
        // Then the server's EOF, for an orderly close (and any bytes it
        // sends beyond the message count as a difference). A server that
        // keeps the connection open after our FIN is waited for briefly.
        stream.set_read_timeout(Some(EOF_WAIT))?;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // The reply is complete; how the server ends is not the
                // echo's business.
                Err(_) => break,
            }
        }
        sender
            .join()
            .map_err(|_| io::Error::other("sender panicked"))??;
        Ok(reply)
    })();
    match result {
        Ok(reply) => {
            // Exactly the reply, so `once ... | wc -c` counts what came
            // back; on a terminal a newline after it (unless it ends with
            // one), so the prompt starts on its own line.
            let mut out = io::stdout().lock();
            let _ = out.write_all(&reply);
            if out.is_terminal() && !reply.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
            drop(out);
            if reply == message {
                0
            } else {
                eprintln!(
                    "loadgen: reply differs: sent {} bytes, got {}",
                    message.len(),
                    reply.len()
                );
                1
            }
        }
        Err(e) => {
            eprintln!("loadgen: error: {addr}: {e}");
            1
        }
    }
}
