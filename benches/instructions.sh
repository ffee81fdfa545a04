#!/usr/bin/env bash
# User-space instructions per echoed message, counted by valgrind's callgrind,
# for echoloop and the tokio current_thread peer in one run.
#
#   bash benches/instructions.sh [SECONDS] [ECHOLOOP OPTION ...]
#   bash benches/instructions.sh 5                      # default options
#   bash benches/instructions.sh 5 --idle-timeout 60    # with idle deadlines
#
# Each server runs under callgrind (pinned to core 0; the load generator to
# core 1) and gets ping-pong 64 B x 100 connections twice: a short run and a
# SECONDS run. Counters are zeroed before and dumped after each run, so each
# dump is counted once, and the figure is
#
#   (instructions of the long run - instructions of the short run)
#   / (messages of the long run - messages of the short run)
#
# which charges connection set-up and tear-down to neither. Connections end
# with resets (--close reset), as in the matrix. Instructions are
# a count, not a time: the figure repeats on a busy machine. Callgrind slows
# the server about 50x, so it, not the load generator, is the bottleneck.
# Installs valgrind if it is missing (Debian). KEEP_DUMPS=DIR keeps the dumps
# for `callgrind_annotate --inclusive=yes DIR/echoloop/cg.out.2` (the long
# run). MAX_INSTRUCTIONS=N makes the script fail (exit 1) when echoloop needs
# more than N per message: a regression guard that does not depend on the
# machine's speed or load (the figure repeats within about 1 %).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
shift || true
extra=("$@")
short=0.3

if ! command -v callgrind_control >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release -q -p echoloop -p echoloop-loadgen
load=target/release/echoloop-loadgen
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    if [ -n "${KEEP_DUMPS:-}" ]; then mkdir -p "$KEEP_DUMPS" && cp -r "$work"/. "$KEEP_DUMPS"/; fi
    rm -rf "$work"
}
trap cleanup EXIT

# measure NAME COMMAND...: prints "NAME instructions-per-message".
measure() {
    local name=$1
    shift
    local out="$work/$name"
    mkdir -p "$out"
    # Uncompressed names, so that each dump can be annotated on its own.
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
        --compress-strings=no --compress-pos=no \
        "$@" >"$out/stdout" 2>"$out/stderr" &
    pid=$!
    for _ in $(seq 600); do grep -q '^listening on' "$out/stdout" 2>/dev/null && break; sleep 0.1; done
    local addr
    addr=$(sed -n 's/^listening on //p' "$out/stdout" | head -1)
    [ -n "$addr" ] || { echo "$name did not start:" >&2; cat "$out/stderr" >&2; exit 1; }
    local results=()
    local part=0
    for run in "$short" "$secs"; do
        callgrind_control -z "$pid" >/dev/null 2>&1
        local msgs
        msgs=$(taskset -c 1 "$load" pingpong --addr "$addr" -c 100 -s 64 -d 1 \
            --warmup 0 --duration "$run" --close reset --json | sed 's/.*"total_msgs":\([0-9]*\).*/\1/')
        callgrind_control -d "$pid" >/dev/null 2>&1
        # Dump number N holds what was counted since the zeroing above, and
        # only that: its summary is read once.
        part=$((part + 1))
        local dump="$out/cg.out.$part"
        [ -f "$dump" ] || { echo "$name: no callgrind dump $dump" >&2; exit 1; }
        local instr
        instr=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
        results+=("$instr" "$msgs")
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    awk -v name="$name" -v i1="${results[0]}" -v m1="${results[1]}" \
        -v i2="${results[2]}" -v m2="${results[3]}" 'BEGIN {
        printf "%-10s %8.1f instructions per message  (%d instructions / %d messages)\n",
            name, (i2 - i1) / (m2 - m1), i2 - i1, m2 - m1
    }' | tee "$work/$name.figure"
}

echo "ping-pong 64 B x 100 connections, ${secs} s under callgrind; echoloop options: ${extra[*]:-(defaults)}"
measure echoloop target/release/echoloop --listen 127.0.0.1:0 "${extra[@]}"
measure tokio "$load" tokio-echo --listen 127.0.0.1:0

if [ -n "${MAX_INSTRUCTIONS:-}" ]; then
    figure=$(awk '{print $2}' "$work/echoloop.figure")
    if awk -v f="$figure" -v max="$MAX_INSTRUCTIONS" 'BEGIN { exit !(f > max) }'; then
        echo "FAIL: echoloop needs $figure instructions per message, more than MAX_INSTRUCTIONS=$MAX_INSTRUCTIONS" >&2
        exit 1
    fi
    echo "ok: echoloop $figure <= MAX_INSTRUCTIONS=$MAX_INSTRUCTIONS"
fi
