#!/usr/bin/env bash
# User-space memory per idle connection: server RSS with N idle connections
# minus RSS with none, divided by N.
#
#   bash benches/idle-memory.sh [N]      # default 10000
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
cargo build --release -q -p echoloop -p echoloop-loadgen
out=$(mktemp)
target/release/echoloop --listen 127.0.0.1:0 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out" "$out.load"' EXIT
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
wait $load || true
awk -v e="$empty" -v h="$held" -v n="$n" 'BEGIN {
    printf "RSS empty %d B, with %d idle connections %d B: %.1f bytes per connection\n", e, n, h, (h - e) / n
}'
