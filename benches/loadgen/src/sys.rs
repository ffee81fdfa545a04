//! Every raw OS call the load generator makes that std, mio or socket2 do
//! not offer, and what it says when descriptors run out.

use std::io;
use std::os::fd::AsRawFd;

/// Raises the open-files soft limit to the hard limit, as the server does:
/// every connection is a descriptor, and the usual soft limit (1024) is far
/// below what `hold` and the big ping-pong runs open. Returns the soft limit
/// in force afterwards.
pub(crate) fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(limit.rlim_cur)
}

/// The open-files soft limit now in force, if it can be read.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some(limit.rlim_cur)
}

/// `e` as is, or, when descriptors ran out, an error that says so, with the
/// limit and what to do about it. `open` is how many sockets this run had
/// open when it happened.
pub(crate) fn explain(e: io::Error, open: usize) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let limit = open_files_limit().map_or("unknown".to_string(), |n| n.to_string());
            io::Error::new(
                e.kind(),
                format!(
                    "out of file descriptors with {open} sockets open (open-files limit {limit}, \
                     already raised to the hard limit): raise the hard limit (`ulimit -n N` as \
                     root, or limits.conf) or ask for fewer connections ({e})"
                ),
            )
        }
        Some(libc::ENFILE) => io::Error::new(
            e.kind(),
            format!(
                "the system's file table is full with {open} sockets open here: raise \
                 fs.file-max, or ask for fewer connections; `ulimit -n` is not the limit \
                 that ran out ({e})"
            ),
        ),
        _ => e,
    }
}

/// Lets `connect()` pick the port of a socket bound to an address with port
/// 0 (IP_BIND_ADDRESS_NO_PORT), so each source address has the whole
/// ephemeral range per destination. Best effort: without it, bind picks
/// the port, which only narrows the range.
pub(crate) fn bind_address_no_port(socket: &impl AsRawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length only.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
