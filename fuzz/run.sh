#!/usr/bin/env bash
# Runs the connection fuzz target for a bounded time (default 60 s).
#   bash fuzz/run.sh [SECONDS]
# Uses cargo-fuzz (installed from crates.io if missing). The stable toolchain
# has no sanitizer support, so it fuzzes with coverage but without ASan
# (`-s none`); the target's own checks are what it hunts for.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
RUSTC_BOOTSTRAP=1 cargo fuzz run fuzz_connection -s none -- -max_total_time="$secs" -rss_limit_mb=2048
