#!/usr/bin/env bash
# User-space memory per idle connection: server RSS with N idle connections
# minus RSS with none, divided by N. The load generator counts a connection
# as held once a 64-byte probe on it has been echoed, so every connection
# was accepted and has carried one message; N is that verified count.
#
#   bash benches/idle-memory.sh [N] [THREADS]   # default 10000 connections, 1 loop
#
# THREADS above 1 runs `echoloop --threads THREADS`; the connections spread
# over its loops (each loop's count is printed from the stats line). The load
# generator holds all N in one process, so N must stay under its open-files
# limit (20,000 here: 19,000 works).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
threads="${2:-1}"
cargo build --release -q -p echoloop -p echoloop-loadgen
out=$(mktemp)
target/release/echoloop --listen 127.0.0.1:0 --threads "$threads" >"$out" 2>"$out.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out" "$out.load" "$out.log"' EXIT
for _ in $(seq 50); do grep -q listening "$out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out" | head -1)
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status"; }
sleep 0.3
empty=$(rss)
target/release/echoloop-loadgen hold --addr "$addr" -c "$n" --idle 3 --duration 0.1 >"$out.load" &
load=$!
for _ in $(seq 600); do grep -q '^held' "$out.load" && break; sleep 0.1; done
sleep 1
held=$(rss)
verified=$(sed -n 's/^held \([0-9]*\).*/\1/p' "$out.load" | head -1)
[ "${verified:-0}" -eq "$n" ] || echo "warning: only ${verified:-0} of $n connections verified by echo" >&2
n=${verified:-$n}
kill -USR1 $pid
sleep 0.3
spread=$(grep -o 'active_per_loop=\[[0-9,]*\]' "$out.log" | tail -1 || true)
wait $load || true
awk -v e="$empty" -v h="$held" -v n="$n" -v t="$threads" -v s="$spread" 'BEGIN {
    printf "RSS empty %d B, with %d idle connections on %d loop(s) %d B: %.1f bytes per connection %s\n", e, n, t, h, (h - e) / n, s
}'
