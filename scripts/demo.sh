#!/usr/bin/env bash
# The vzcpt demo: a real program prints a counter; vzcpt dumps it (killing it), shows it is
# gone, restores it with the same PID, and the counter goes on from where it was.
# Needs root (ptrace, clone3 with set_tid). Builds vzcpt first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (vzcpt uses ptrace and clone3 set_tid)" >&2; exit 1; }
cargo build --release -q -p cli --bin vzcpt
VZCPT=$PWD/target/release/vzcpt
work=$(mktemp -d /tmp/vzcpt-demo.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The program: a bash loop printing a counter every 0.2 s (a process tree: bash + sleep).
setsid bash -c 'i=0; while true; do echo "counter $i"; i=$((i+1)); sleep 0.2; done' \
    >"$work/counter.log" 2>&1 </dev/null &
pid=$!
sleep 1.5
echo "== running as PID $pid:"; tail -n 3 "$work/counter.log"

echo "== vzcpt dump -t $pid -D $work/img"
"$VZCPT" dump -t "$pid" -D "$work/img"
wait "$pid" 2>/dev/null || true
last=$(tail -n 1 "$work/counter.log")
if kill -0 "$pid" 2>/dev/null; then echo "still running?!" >&2; exit 1; fi
echo "== PID $pid is gone; last line: $last"
sleep 1
echo "== still the same last line after 1 s: $(tail -n 1 "$work/counter.log")"

echo "== vzcpt restore -D $work/img --detach"
newpid=$("$VZCPT" restore -D "$work/img" --detach)
echo "== restored as PID $newpid; the counter goes on:"
sleep 1.2
tail -n 6 "$work/counter.log"
next=$(grep -n -F -x "$last" "$work/counter.log" | cut -d: -f1)
expect="counter $(( ${last#counter } + 1 ))"
if sed -n "$((next + 1))p" "$work/counter.log" | grep -q -x "$expect"; then
    echo "== OK: '$last' was followed by '$expect' after the restore"
else
    echo "== FAILED: the line after '$last' is not '$expect'" >&2; exit 1
fi
