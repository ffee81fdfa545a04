//! One-off bugs, each test named for the behaviour it guards and its doc
//! comment saying what the bug was. Black-box over loopback sockets.

mod common;

use std::io::Write;

use common::*;

/// The bug: data immediately followed by FIN often reaches the server as
/// one readiness edge. The server took the short read that returned the
/// data as "drained" and waited for another edge, which a FIN queued
/// behind data never raises: the FIN was never read, so the client got its
/// echo but never the server's FIN.
#[test]
fn data_and_fin_arriving_together_get_the_echo_then_fin() {
    let server = Server::start(&[]);
    for i in 0..300 {
        let mut c = connect(server.addr());
        let msg = format!("message {i} then FIN");
        c.write_all(msg.as_bytes()).unwrap();
        finish_sending(&c);
        assert_eq!(read_to_end(&mut c), msg.as_bytes(), "round {i}");
    }
}
