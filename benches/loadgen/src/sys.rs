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
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
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

/// A timerfd: a descriptor that becomes readable when a one-shot timer
/// expires, so an open-loop schedule wakes the mio loop to the microsecond
/// (epoll's own timeout counts whole milliseconds).
pub(crate) struct Timer {
    fd: std::os::fd::OwnedFd,
}

impl Timer {
    /// A disarmed timer on the monotonic clock (the clock `Instant` reads).
    /// Also asks for the finest timer slack for this thread, so the kernel
    /// does not batch our wake-ups by its default 50 us.
    pub(crate) fn new() -> io::Result<Timer> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes no pointers; a negative result is an
        // error, anything else a descriptor we now own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Timer {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Arms the timer to expire once, `after` from now (at least 1 ns:
    /// zero would disarm it).
    pub(crate) fn set(&self, after: std::time::Duration) -> io::Result<()> {
        let after = after.max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: timerfd_settime reads `spec` and writes nothing (the old
        // value pointer is null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads (and so clears) the expirations; nothing to read is fine.
    pub(crate) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: read writes at most 8 bytes into `count`.
        unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
