//! The buffers a connection borrows or owns: the loop's one shared read
//! buffer with its pool of spare pending buffers ([`Scratch`]), and a
//! connection's [`Pending`] bytes (read, not yet echoed), which exist only
//! while something is pending, so an idle connection owns no heap buffer.
//! When and how they are used is `connection.rs`; this file is their
//! bookkeeping: growth bounded by the cap, reuse, and giving memory back.

/// Spare pending buffers kept for reuse, so that a steady stream of partial
/// writes does not allocate. Beyond this, drained buffers are freed (and
/// counted in `Scratch::freed`, so that a host can ask its allocator to give
/// the memory back to the system: the binary does, see `EchoServer::
/// freed_buffer_bytes`).
const SPARE_BUFFERS: usize = 64;

/// Bytes read but not yet echoed, for one connection.
///
/// Exists only while something is pending; an idle connection owns none.
#[derive(Debug, Default)]
pub struct Pending {
    // Bytes in start..buf.len() are read but not yet written back.
    // start <= buf.len()
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub(crate) fn unsent(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Appends `bytes`; the capacity never exceeds `bound` unless the unsent
    /// bytes themselves need more.
    pub(crate) fn push(&mut self, bytes: &[u8], bound: usize) {
        // Move the unsent tail to the front before growing, so the buffer's
        // capacity stays near the high-water mark instead of creeping upward.
        if self.start > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            // Double as a Vec would, but never past the bound: a doubled
            // 64 KiB buffer would hold 128 KiB for a 64 KiB cap.
            let target = needed.max(self.buf.capacity().saturating_mul(2).min(bound));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
}

/// Buffers owned by the loop and lent to a connection while it is driven.
///
/// One read buffer serves every connection, so memory per idle connection does
/// not include a read buffer; spare pending buffers are pooled for reuse.
#[derive(Debug)]
pub struct Scratch {
    pub(crate) read: Vec<u8>,
    // Boxed because connections hold a `Box<Pending>` (one pointer, not a
    // 24-byte Vec), and a box moves between pool and connection as it is.
    #[allow(clippy::vec_box)]
    pub(crate) spare: Vec<Box<Pending>>,
    // Bytes of pending buffers freed (not pooled) so far.
    pub(crate) freed: u64,
}

impl Scratch {
    /// Creates a scratch area whose read buffer holds `read_size` bytes.
    ///
    /// # Panics
    /// Panics if `read_size` is 0.
    ///
    /// ```
    /// let scratch = echoloop::Scratch::new(64 * 1024);
    /// # drop(scratch);
    /// ```
    pub fn new(read_size: usize) -> Scratch {
        assert!(read_size > 0, "the read buffer must hold at least one byte");
        Scratch {
            read: vec![0; read_size],
            spare: Vec::new(),
            freed: 0,
        }
    }

    /// Size of the read buffer.
    pub fn read_len(&self) -> usize {
        self.read.len()
    }

    pub(crate) fn give_back(&mut self, pending: Box<Pending>) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(pending);
            return;
        }
        self.freed = self.freed.saturating_add(pending.capacity() as u64);
    }
}
