#!/usr/bin/env bash
# Runs every fuzz target, one after the other, for SECONDS each (default 60), on the corpora of
# fuzz/seed.sh; prints one line per target (executions, corpus size, coverage) and exits
# non-zero if any target found a crash, a leak, a timeout or an allocation past the limits
# (its input is then in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo fuzz needs unstable flags (-Z sanitizer=address): with the stable toolchain,
# RUSTC_BOOTSTRAP=1 allows them.
set -uo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
ALL=(record_inventory record_pstree record_core record_mm record_pagemap record_files
     record_pipes record_ns record_ipc record_tmpfs record_timers record_parent_pages
     record_sent_pages record_track_state pagestore proto_frame
     proto_message backup_stream)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
export RUSTC_BOOTSTRAP=1
# Most memory one input may take: a record's payload is read whole (up to its cap, 256 MiB,
# but never past the file's length), a page chunk is 4 MiB.
LIMITS=(-rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=20)
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    if cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" "${LIMITS[@]}" \
        -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1)
    echo "$t: $status: ${runs:-no final stats}, $cov, $corp"
    if [ "$status" = FAILED ]; then
        grep -E "panicked|ERROR: |SUMMARY|artifact_prefix|Test unit written" "$log" | head -20
    fi
    rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
