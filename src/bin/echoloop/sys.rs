//! The binary's own OS calls, each a decision for the whole process that
//! the library leaves to its host: the open-files limit, giving freed memory
//! back to the system, signal handlers, and taking the descriptors a
//! supervisor passed on. Every `unsafe` of the binary is here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The process's `RLIMIT_NOFILE`, soft and hard.
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit)
}

/// The soft open-files limit, if there is one.
pub fn open_files_limit() -> Option<u64> {
    let limit = nofile()?;
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Raises the soft open-files limit to the hard limit, so the server can hold
/// as many connections as the system allows, and returns the limit now in
/// force (`None` if unlimited or unknown). Leaves the limit alone on failure.
pub fn raise_open_files_limit() -> Option<u64> {
    if let Some(mut limit) = nofile().filter(|l| l.rlim_cur < l.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads only the struct we pass. On failure the
        // limit stays as it was, which is what we report.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    open_files_limit()
}

/// Freed pending-buffer bytes after which the allocator is asked to give
/// free memory back to the system: after 2,000 clients that never read have
/// left, glibc would otherwise keep their freed 64 KiB buffers resident
/// (tests/memory.rs).
pub const TRIM_AFTER: u64 = 4 << 20;

/// Gives the allocator's free pages back to the system. glibc keeps freed
/// 64 KiB blocks in its heap, where they count as resident unless they sit
/// at its top; `malloc_trim` releases every whole free page. It walks the
/// heap, so it runs once per [`TRIM_AFTER`] bytes freed, never per message.
/// Other allocators return memory on their own.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises the allocator's free lists; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts each delivery of `signal` in `count`, from the signal handler
/// itself (alongside any other handler signal-hook runs for it, in order of
/// registration).
pub fn count_signal(signal: c_int, count: Arc<AtomicUsize>) -> io::Result<()> {
    // SAFETY: the action only adds to an atomic, which is async-signal-safe:
    // no allocation, no lock, no I/O.
    unsafe {
        signal_hook::low_level::register(signal, move || {
            count.fetch_add(1, Ordering::SeqCst);
        })?;
    }
    Ok(())
}

/// Takes ownership of descriptor `fd`, which the process that started us
/// left open for us (socket activation: `LISTEN_FDS` descriptors from fd 3
/// on).
///
/// Call it before the process opens any descriptor of its own, at most once
/// per descriptor: then nothing else in the process owns `fd`.
///
/// # Errors
/// `EBADF` if `fd` is not open.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is a
    // valid argument (a closed one fails with EBADF).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (above), and by this function's contract no
    // other owner exists in this process: it was inherited, is taken once,
    // and nothing has been opened yet that could have received its number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
