//! The bytes every connection sends: a window into one shared random
//! table, so every echoed byte can be checked without a copy of what was
//! sent.

/// The shared random table every connection's byte stream is cut from:
/// byte `i` of connection `c` is `table[(offset(c) + i) % PERIOD]`. The table
/// is longer than the period by one maximal chunk, so any chunk is one slice.
pub(crate) struct PatternTable {
    table: Vec<u8>,
}

pub(crate) const PERIOD: usize = (1 << 20) + 7; // not a power of two: chunks drift across it
pub(crate) const MAX_CHUNK: usize = 256 * 1024;

impl PatternTable {
    pub(crate) fn new() -> PatternTable {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let table = (0..PERIOD + MAX_CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect::<Vec<u8>>();
        // Make the tail repeat the head, so slices wrap seamlessly.
        let mut table = table;
        let (head, tail) = table.split_at_mut(PERIOD);
        tail.copy_from_slice(&head[..MAX_CHUNK]);
        PatternTable { table }
    }

    /// `n <= MAX_CHUNK` bytes of the stream starting at `offset + pos`.
    pub(crate) fn slice(&self, offset: u64, pos: u64, n: usize) -> &[u8] {
        let start = ((offset + pos) % PERIOD as u64) as usize;
        &self.table[start..start + n]
    }

    /// True if `data` is what a connection at `offset` should receive at `pos`.
    pub(crate) fn matches(&self, offset: u64, pos: u64, data: &[u8]) -> bool {
        data.chunks(MAX_CHUNK).enumerate().all(|(i, chunk)| {
            chunk == self.slice(offset, pos + (i * MAX_CHUNK) as u64, chunk.len())
        })
    }
}
