#!/usr/bin/env bash
# Seeds the fuzz corpora (fuzz/corpus/<target>/) from real images: dumps small workloads with
# the built vzcpt (plain and zstd-compressed), and turns each record file, the page store and
# migration frames made from the same images into inputs of the targets that read them.
#
#   fuzz/seed.sh            (as root: the dumps seize processes and make namespaces)
#
# Needs target/debug/vzcpt (cargo build -p cli) and gcc. Everything it starts runs as PID 1 of
# a PID namespace of its own and dies with it; its temporary directory is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VZCPT=${VZCPT:-$ROOT/target/debug/vzcpt}
[ -x "$VZCPT" ] || { echo "seed.sh: $VZCPT is missing (cargo build -p cli)" >&2; exit 1; }
T=$(mktemp -d /tmp/vzcpt-seed.XXXXXX)
INITS=()
cleanup() {
    for p in "${INITS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    umount -l "$T/mnt" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT
C=$ROOT/fuzz/corpus
mkdir -p "$C"

# start NAME CMD...: runs CMD as PID 1 of new PID, IPC, UTS and mount namespaces with its
# control directory in $T/NAME; waits for it to be ready; sets $PID to that init.
start() {
    local name=$1; shift
    mkdir -p "$T/$name"
    VZCPT_CTL="$T/$name" unshare --pid --fork --mount-proc --ipc --uts --mount \
        bash "$T/only-restorable-mounts.sh" "$@" &
    local u=$!
    local n=200
    while [ ! -e "$T/$name/ready" ]; do
        n=$((n - 1)); [ $n -gt 0 ] || { echo "seed.sh: workload $name is not ready" >&2; exit 1; }
        sleep 0.05
    done
    PID=$(cat "/proc/$u/task/$u/children" | awk '{print $1}')
    INITS+=("$PID")
}

# Only mounts the dumper restores stay in the workload's mount namespace (its own copy of
# the host's), then the workload runs.
cat > "$T/only-restorable-mounts.sh" <<'EOF'
awk '$2 != "/" && $3 !~ /^(proc|sysfs|devpts|mqueue|cgroup2|tmpfs)$/ {print $2}' /proc/self/mounts |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
exec "$@"
EOF

# A shell tree in its own namespaces: a tmpfs with files, SysV shm, semaphores and a
# message queue, a pipe with data, an open file, children, a hostname.
cat > "$T/tree.sh" <<'EOF'
set -e
hostname seed-host
mkdir -p /tmp/seed-tmpfs && mount -t tmpfs -o size=1m seedfs /tmp/seed-tmpfs
echo "a tmpfs file" > /tmp/seed-tmpfs/f; mkdir /tmp/seed-tmpfs/d; ln -s f /tmp/seed-tmpfs/l
ipcmk -M 8192 >/dev/null; ipcmk -S 3 >/dev/null; ipcmk -Q >/dev/null
exec 3> "$VZCPT_CTL/open-file"; echo data >&3
( while :; do sleep 1; done ) | ( sleep 100000 ) &
sleep 100000 &
touch "$VZCPT_CTL/ready"
while :; do sleep 1; done
EOF
start tree bash "$T/tree.sh"
"$VZCPT" dump --leave-running -t "$PID" -D "$T/img-tree" >/dev/null
"$VZCPT" dump --leave-running -t "$PID" -D "$T/img-tree-z" --compress=3 >/dev/null
# An incremental pair: track-state and parent-pages records (the keeper ends with the tree).
"$VZCPT" dump --leave-running --track-mem -t "$PID" -D "$T/img-tree-track" >/dev/null
"$VZCPT" dump --leave-running --track-mem --parent "$T/img-tree-track" -t "$PID" -D "$T/img-tree-incr" >/dev/null

# C workloads of the test suite: POSIX timers (the timers record) and a socketpair with
# queued data (unix sockets in the files record).
for w in posix_timers unix_pair; do
    src=$ROOT/tests/workloads/$w.c
    flags=$(sed -n '1s|.*cflags: \(.*\) \*/.*|\1|p' "$src")
    # shellcheck disable=SC2086
    mkdir -p "$T/bin"
    gcc -O1 -o "$T/bin/$w" "$src" -I"$ROOT/tests/workloads" -lpthread $flags
    start "$w" "$T/bin/$w"
    "$VZCPT" dump --leave-running -t "$PID" -D "$T/img-$w" >/dev/null
done

# seed TARGET NAME BYTES-FILE: adds one input.
# Record files are named with '-' (parent-pages), their targets with '_'.
seed() { local d=${1//-/_}; mkdir -p "$C/$d"; cp "$3" "$C/$d/$2"; }
n=0
for img in "$T"/img-*; do
    tag=$(basename "$img")
    for f in "$img"/*; do
        kind=$(basename "$f")
        [ "$kind" = pages ] && continue
        # The record targets take a mode byte: 1 = the bytes are the whole file, 0 = they are
        # the payload (the target writes a valid header for it, so decoding is reached).
        { printf '\x01'; cat "$f"; } > "$T/in"; seed "record_$kind" "$tag-file" "$T/in"
        { printf '\x00'; tail -c +33 "$f"; } > "$T/in"; seed "record_$kind" "$tag-payload" "$T/in"
        n=$((n + 2))
    done
done
# The page store target and the migration frames are made from the same images by the fuzz
# crate itself (it knows their input layouts).
( cd fuzz && cargo run --quiet --example make-seeds -- "$C" "$T"/img-* )
echo "seed.sh: $n record inputs; corpora in $C:"
for d in "$C"/*; do echo "  $(basename "$d"): $(ls "$d" | wc -l)"; done
