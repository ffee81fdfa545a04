#!/usr/bin/env bash
# The shutdown race, repeated: each trial starts a server, connects 2-4
# clients that write until their send blocks and then half-close without
# reading, and 2 clients still streaming; sends SIGTERM; the half-closed
# clients start reading 0-200 ms later. Every client must get back every
# byte it sent, then an orderly FIN (never a FIN after a truncated echo, never
# a reset: every client here closes), and the server must exit 0. Prints one
# tally line per run; on a failure, the test's own failure message.
#
#   bash benches/shutdown-race.sh [TRIALS] [HOGS]   (defaults: 30 trials, 0 hogs)
#
# HOGS busy-loop processes run beside it for the whole run (2 on a 2-core
# machine: a busy machine), and are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-30}"
hogs="${2:-0}"
log="$(mktemp)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -f "$log"
}
trap cleanup EXIT
# Built before the hogs start, so they load the race, not the compiler
# (quiet unless the build fails).
cargo test --release --quiet --test shutdown --no-run
for _ in $(seq "$hogs"); do
    (while :; do :; done) &
    pids+=($!)
done
status=0
ECHOLOOP_TRIALS="$trials" cargo test --release --quiet --test shutdown \
    sigterm_echoes_every_byte_sent_before_the_signal_then_fins -- --exact --nocapture \
    >"$log" 2>&1 || status=$?
if [ "$status" -eq 0 ]; then
    grep -E "^shutdown race:" "$log" | sed "s/(0 CPU hogs)/($hogs CPU hogs beside it)/"
else
    # The real failure: the panic message and what led to it.
    grep -v -E "^\s+[0-9]+: |^\s+at " "$log"
fi
exit "$status"
