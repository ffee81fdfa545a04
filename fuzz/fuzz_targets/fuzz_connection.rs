//! Fuzzes the connection state machine over a scripted stream: random input,
//! short reads and writes, `WouldBlock`, `Interrupted` and failures, random
//! limits. Every run must echo input exactly, never exceed the pending cap,
//! and want the right interest after every step (`drive_checked`).
#![no_main]

use echoloop::scripted::{drive_checked, Scripted, Step};
use echoloop::{Connection, Limits, Scratch};
use libfuzzer_sys::fuzz_target;

fn step(byte: u8) -> Step {
    match byte {
        0..=199 => Step::Bytes(1 + byte as usize * 5),
        200..=229 => Step::WouldBlock,
        230..=252 => Step::Interrupted,
        _ => Step::Fail,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let read_size = 1 + head[0] as usize * 4;
    let max_pending = 1 + usize::from(u16::from_le_bytes([head[1], head[2]])) % 8192;
    let budget = 1 + usize::from(u16::from_le_bytes([head[3], head[4]]));
    let eof = head[5] & 1 == 1;
    let (reads, rest) = rest.split_at((head[6] as usize % 64).min(rest.len()));
    let (writes, input) = rest.split_at((head[7] as usize % 64).min(rest.len()));
    let limits = Limits {
        max_pending,
        resume_at: max_pending / 2,
        budget,
    };
    let mut conn = Connection::new(Scripted {
        input: input.to_vec(),
        reads: reads.iter().copied().map(step).collect(),
        writes: writes.iter().copied().map(step).collect(),
        eof,
        ..Scripted::default()
    });
    let mut scratch = Scratch::new(read_size);
    if let Err(broken) = drive_checked(&mut conn, &mut scratch, &limits, 1_000_000) {
        panic!("{broken}");
    }
});
