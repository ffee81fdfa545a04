#!/usr/bin/env bash
# The whole test suite on a busy machine: builds it, starts two busy-loop
# CPU hogs, then runs `cargo test` N times beside them. Prints one line per
# run, `run i/N: ok` or the failing tests followed by their panic messages
# (the log of a failed run is kept under target/under-load/), and a final
# tally; exits 1 if any run failed.
#
#   bash tests/under-load.sh [N]   (default 10)
#
# A test that passes here does not lean on a sleep a starved thread can
# outlast, nor on a timing window a scheduler can miss (STYLE.md, Tests).
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
hogs=2
case "$runs" in
'' | *[!0-9]* | 0)
    echo "usage: bash tests/under-load.sh [N]   (N runs, at least 1)" >&2
    exit 2
    ;;
esac

logs=target/under-load
mkdir -p "$logs"
pids=()
stop_hogs() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    pids=()
}
trap stop_hogs EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Built before the hogs start, so they load the tests, not the compiler.
if ! cargo test --no-run --quiet; then
    echo "build failed" >&2
    exit 1
fi

for _ in $(seq "$hogs"); do
    (while :; do :; done) &
    pids+=($!)
done

# The failing tests of a `cargo test` log: each one's captured output and
# panic message (the blocks between a binary's first `failures:` line and
# its list of names; backtrace frames only in the kept log), and cargo's
# lines naming the binaries to rerun.
failures() {
    awk '
        /^failures:$/ { section++; printing = 0; next }
        section % 2 == 1 && /^---- / { printing = 1 }
        section % 2 == 1 && printing && !/^ +[0-9]+: |^ +at / { print "    " $0 }
        /^error: (test failed|[0-9]+ targets? failed|could not compile)/ { print "    " $0 }
    ' "$1"
}

failed=0
for i in $(seq "$runs"); do
    log="$logs/run-$i.log"
    if cargo test --no-fail-fast >"$log" 2>&1; then
        echo "run $i/$runs: ok"
        rm -f "$log"
    else
        failed=$((failed + 1))
        names=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' |
            paste -sd, - | sed 's/,/, /g')
        echo "run $i/$runs: FAILED: ${names:-no test failed; see $log} (log: $log)"
        details=$(failures "$log")
        if [ -n "$details" ]; then
            echo "$details"
        else
            # Not a test failure (a build error, a crash): the end of the log.
            tail -n 30 "$log" | sed 's/^/    /'
        fi
    fi
done
stop_hogs
echo "under load ($hogs CPU hogs): $((runs - failed)) of $runs runs passed, $failed failed"
[ "$failed" -eq 0 ]
