#!/usr/bin/env bash
# The shutdown race of issue 8, item 1, repeated: each trial starts a server
# (--shutdown-timeout 3), connects 2-4 clients that write until their send
# blocks and then half-close without reading, and 2 clients still streaming;
# sends SIGTERM; the half-closed clients start reading 0-200 ms later.
# Every client must get back every byte it sent, then an orderly FIN, and the
# server must exit 0. Prints one tally line; exits non-zero on any loss.
#
#   bash benches/shutdown-race.sh [TRIALS]     (default 30; ~1 s per trial)
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-30}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
ECHOLOOP_TRIALS="$trials" cargo test --release --quiet --test issue_8 \
    issue_8_shutdown_echoes_every_byte_sent_before_the_signal_then_fin -- --nocapture \
    >"$log" 2>&1 || status=$?
grep -E "^shutdown race:|panicked|trial [0-9]+" "$log" || cat "$log"
exit "$status"
