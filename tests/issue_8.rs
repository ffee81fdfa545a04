//! Regression tests for issue 8: odd inputs and odd values. (Its shutdown
//! races are in tests/shutdown.rs.)

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

#[test]
fn issue_8_bytes_after_an_urgent_byte_are_echoed_without_waiting() {
    let server = Server::start(&[]);
    for trial in 0..20u8 {
        let mut client = connect(server.addr());
        // A stall shows as a read timeout, well before IO_TIMEOUT.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let before = vec![b'a' + trial % 26; 1000];
        let after = vec![b'z' - trial % 26; 1000];
        client.write_all(&before).unwrap();
        let urgent = [b'!'];
        // SAFETY: send() reads one byte from a live buffer on our own socket.
        let rc =
            unsafe { libc::send(client.as_raw_fd(), urgent.as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(rc, 1, "send MSG_OOB");
        client.write_all(&after).unwrap();
        let mut expected = before.clone();
        expected.push(b'!');
        expected.extend_from_slice(&after);
        let mut back = vec![0u8; expected.len()];
        client
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("trial {trial}: echo stalled: {e}"));
        assert!(
            back == expected,
            "trial {trial}: the urgent byte moved or vanished"
        );
    }
}

#[test]
fn issue_8_a_tiny_max_pending_still_streams_megabytes() {
    let server = Server::start(&["--max-pending", "1"]);
    let total = 8 * 1024 * 1024;
    let echoed = echo_verified(connect(server.addr()), 8, total, &[65536, 1000, 300_000]);
    assert_eq!(echoed, total);
}
