//! Counts and durations as people write them, for log lines. Shared by the
//! library and the binary (which includes this file as its own module), and
//! part of neither's API.

use std::time::Duration;

/// "1 connection", "2 connections": a count with its noun.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration as people write it: "0 s", "250 ms", "1.5 s", "86400 s".
pub fn human_duration(d: Duration) -> String {
    if d.is_zero() {
        "0 s".to_string()
    } else if d < Duration::from_secs(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_plainly() {
        assert_eq!(plural(1, "connection"), "1 connection");
        assert_eq!(plural(0, "connection"), "0 connections");
        assert_eq!(human_duration(Duration::ZERO), "0 s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_secs(86400)), "86400 s");
    }
}
