#!/usr/bin/env bash
# Server syscalls per echoed message, ping-pong 64 B x 100 connections.
#
#   bash benches/syscalls.sh [SECONDS]
#
# Starts echoloop pinned to core 0 and the load generator pinned to core 1,
# counts the server's syscalls with `perf stat -e raw_syscalls:sys_enter`
# (or `strace -c -f` where perf is missing; strace slows the server, so its
# figure is an upper bound), and divides by the messages the load generator
# saw echoed. A 0.05 s run with the same 100 connections is subtracted first,
# so connection set-up and tear-down are not charged to messages.
# Connections end with resets (--close reset), as in the matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
cargo build --release -q -p echoloop -p echoloop-loadgen
server=target/release/echoloop
load=target/release/echoloop-loadgen

taskset -c 0 "$server" --listen 127.0.0.1:0 >/tmp/echoloop-syscalls.out 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening /tmp/echoloop-syscalls.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' /tmp/echoloop-syscalls.out | head -1)

count() { # duration -> "syscalls messages"
    local out; out=$(mktemp)
    if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
        perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$out" & local counter=$!
    else
        strace -c -f -p "$pid" -o "$out" & local counter=$!
    fi
    sleep 0.3
    local msgs
    msgs=$(taskset -c 1 "$load" pingpong --addr "$addr" -c 100 -s 64 --warmup 0 --duration "$1" \
        --close reset --json |
        sed 's/.*"total_msgs":\([0-9]*\).*/\1/')
    sleep 0.1
    kill -INT "$counter"; wait "$counter" 2>/dev/null || true
    local calls
    calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1} /^100.00/ {print $4}' "$out" | head -1)
    [ -z "$calls" ] && calls=$(awk '$NF=="total" {print $(NF-2)}' "$out")
    rm -f "$out"
    echo "$calls $msgs"
}

read -r base_calls base_msgs < <(count 0.05)
read -r calls msgs < <(count "$secs")
awk -v c="$calls" -v m="$msgs" -v bc="$base_calls" -v bm="$base_msgs" 'BEGIN {
    printf "whole window: %d syscalls / %d messages = %.3f per message\n", c, m, c / m
    printf "steady state (minus set-up/tear-down run): %.3f per message\n", (c - bc) / (m - bm)
}'
