//! VE backups end to end through `vzctl backup` and `vzctl restore-backup` (issue 7, part 3):
//! stopped and dumped VEs restored under a new CTID with their files (every kind of node the
//! private area holds, overlay whiteouts and opaque directories included) and memory state;
//! encrypted round trips; damaged, truncated, wrongly keyed backups refused with nothing
//! created; a running VE piped from `backup --to -` into `restore-backup --from -`; `--keep`.
//!
//! Each trial is a bash script run as PID 1 of its own namespaces with its own `$VZ_DIR` and
//! `$VZ_CGROUP` (see `tests::ve_harness`). The script prints `OK` last.

/// Helpers of these trials.
const HELPERS: &str = r#"
# tree_of DIR: every node below DIR with type, mode, owner, size, mtime, device, link target,
# link count, xattrs and a hash of its contents, one line each, sorted.
tree_of() {
python3 - "$1" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    for n in [""] + dirs + files if d == root else dirs + files:
        p = os.path.join(d, n) if n else d
        if n == "" and d != root: continue
        st = os.lstat(p)
        x = sorted((k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False))
        h = hashlib.sha256(open(p, "rb").read()).hexdigest()[:16] if stat.S_ISREG(st.st_mode) else ""
        l = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
        mt = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
        # Whiteouts share one inode with the overlay's work directory: links of files only.
        nl = st.st_nlink if stat.S_ISREG(st.st_mode) else 0
        out.append(f"{os.path.relpath(p, root)} {oct(st.st_mode)} {st.st_uid}:{st.st_gid} {size} {mt} {st.st_rdev} {l} {nl} {x} {h}")
# The init is a hard link of the installed vzinit when on its file system: one name in here.
print("\n".join(sorted(o for o in out if not o.startswith(".vz/vzinit "))))
PY
}
# nothing_of CTID: no trace of a VE that a refused restore-backup must not have created.
nothing_of() {
    status_is $1 absent || return 1
    [ ! -e "$VZ_DIR/private/$1" ] && [ ! -e "$VZ_DIR/dump/$1" ] && [ ! -e "$VZ_DIR/conf/$1.conf" ] || return 1
    ! ls -A "$VZ_DIR/private" "$VZ_DIR/dump" 2>/dev/null | grep -q 'restore-'
}
# refused CTID PATTERN CMD...: CMD fails, says PATTERN, and VE CTID does not exist after it.
refused() {
    local c=$1 pat=$2; shift 2
    out=$("$@" 2>&1) && fail "accepted: $*"
    echo "$out" | grep -qi -- "$pat" || fail "$* did not say '$pat': $out"
    nothing_of $c || fail "$* left something of VE $c: $(ls -A $VZ_DIR/private $VZ_DIR/dump $VZ_DIR/conf)"
}
# flip FILE OFFSET: changes one byte.
flip() { python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x20]))' "$1" "$2"; }
"#;

/// A VE with files of every kind is backed up stopped, then dumped with its memory image
/// (a shell counting in memory), and each backup restored under a new CTID: its private area
/// is the same node for node, it starts (stopped) or goes on counting (dumped), beside the
/// original.
const STOPPED_AND_DUMPED: &str = r#"
vz create 201 --hostname bk1 --command "$LOOP" || fail "create"
vz start 201 || fail "start"
until_true 5 vz exec 201 test -s /tmp/count || fail "the loop does not run"
in_ve 201 sh -c 'mkdir -p /root/d && echo hello > /root/d/f && ln /root/d/f /root/d/hard && ln -s f /root/d/sym && mkfifo /root/d/fifo'
in_ve 201 sh -c 'chown 12:34 /root/d/f && chmod 4711 /root/d/f && touch -h -d 2001-02-03 /root/d/sym'
in_ve 201 python3 -c 'import os; os.setxattr("/root/d/f", "user.colour", b"blue"); os.mknod("/root/d/null", 0o20644, os.makedev(1, 3)); open("/root/d/big", "wb").write(os.urandom(3 << 20))'
# A file and a directory of the base layer removed, the directory made anew: an overlay
# whiteout (char 0:0) and an opaque directory (trusted.overlay.opaque) in the private area.
in_ve 201 sh -c 'rm /etc/hostname && rm -rf /etc/default && mkdir /etc/default && echo mine > /etc/default/only'
upper="$VZ_DIR/private/201/upper"
[ -c "$upper/etc/hostname" ] || fail "no whiteout in the private area: $(ls -l $upper/etc)"
vz stop 201 || fail "stop"
vz backup 201 --to "$WORK/stopped.vzb" || fail "backup of a stopped VE"
[ -s "$WORK/stopped.vzb" ] || fail "no backup file"
ls -A "$WORK" | grep -q '\.tmp' && fail "a temporary file stays: $(ls -A $WORK)"
refused 202 "exists" vz backup 201 --to "$WORK/stopped.vzb"
vz restore-backup 202 --from "$WORK/stopped.vzb" || fail "restore-backup of the stopped VE"
status_is 202 stopped || fail "status of 202: $(vz status 202)"
[ "$(tree_of "$VZ_DIR/private/202/upper")" = "$(tree_of "$upper")" ] || fail "the private area differs:
$(diff <(tree_of "$upper") <(tree_of "$VZ_DIR/private/202/upper"))"
refused 0 "already exists" vz restore-backup 201 --from "$WORK/stopped.vzb"
vz start 202 || fail "start 202"
[ "$(vz exec 202 hostname)" = bk1 ] || fail "hostname of 202"
[ "$(vz exec 202 cat /root/d/hard)" = hello ] || fail "the file in 202"
vz exec 202 test -e /etc/hostname && fail "the whiteout does not hide /etc/hostname in 202"
[ "$(vz exec 202 ls /etc/default)" = only ] || fail "the opaque directory shows the base's files: $(vz exec 202 ls /etc/default)"
vz stop 202 || fail "stop 202"
# Dumped: its memory goes with it. (A new log: the count starts again at 1.)
rm "$upper/root/log"
vz start 201 || fail "start again"
until_true 5 vz exec 201 test -s /tmp/count || fail "the loop does not run again"
sleep 0.3
vz chkpnt 201 || fail "chkpnt"
last=$(tail -n1 "$upper/root/log")
vz backup 201 --to "$WORK/dumped.vzb" --json > "$WORK/stats.json" || fail "backup of a dumped VE"
python3 -c 'import json,sys; s = json.load(open(sys.argv[1])); assert s["status"] == "dumped" and s["has_image"] and not s["live"] and s["written_bytes"] > 0, s' "$WORK/stats.json" || fail "backup --json: $(cat $WORK/stats.json)"
vz restore-backup 203 --from "$WORK/dumped.vzb" || fail "restore-backup of the dumped VE"
status_is 203 dumped || fail "status of 203: $(vz status 203)"
vz restore 203 || fail "restore 203 from its restored image"
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/203/upper/root/log) -gt $last ]" || fail "203 does not go on counting"
log_contiguous 203 || fail "203's count did not go on from memory: $(tail -n3 $VZ_DIR/private/203/upper/root/log)"
[ "$(vz exec 203 cat /tmp/count)" -gt "$last" ] || fail "/tmp/count of 203"
[ "$(vz exec 203 hostname)" = bk1 ] || fail "hostname of 203"
vz exec 203 cat /proc/self/cgroup | grep -q "^0::/$VZ_CGROUP/203\$" || fail "203 is not in its own cgroup: $(vz exec 203 cat /proc/self/cgroup)"
# On another "host" (its own $VZ_DIR and cgroup root), the original's files out of reach: the
# image must refer to nothing of VE 201 or of this host's $VZ_DIR.
mv "$VZ_DIR/private/201" "$WORK/away-201" || fail "move 201's private area away"
b() { VZ_DIR="$WORK/b" VZ_CGROUP="$VZ_CGROUP/b" "$BIN/vzctl" "$@"; }
b restore-backup 204 --from "$WORK/dumped.vzb" || fail "restore-backup on host B"
b restore 204 || fail "restore 204 on host B"
until_true 5 sh -c "[ \$(tail -n1 $WORK/b/private/204/upper/root/log) -gt $last ]" || fail "204 does not go on counting"
awk 'NR != $1 { bad = 1 } END { exit bad }' "$WORK/b/private/204/upper/root/log" || fail "204's count did not go on from memory"
b exec 204 cat /proc/self/cgroup | grep -q "^0::/$VZ_CGROUP/b/204\$" || fail "204 is not in host B's cgroup: $(b exec 204 cat /proc/self/cgroup)"
b stop 204 || fail "stop 204"
mv "$WORK/away-201" "$VZ_DIR/private/201" || fail "move 201's private area back"
# The original comes back too, beside 203.
vz restore 201 || fail "restore of the original"
until_true 5 sh -c "[ \$(tail -n1 $upper/root/log) -gt $last ]" || fail "201 does not go on"
log_contiguous 201 || fail "201's log"
echo OK
"#;

/// Encrypted backups: a key from `backup-keygen`; a wrong key, no key, a key for a plain
/// backup, a changed byte (header, middle, end), a cut, trailing garbage: each refused with
/// its reason and no VE created; then the intact one restores and runs.
const ENCRYPTED_AND_REFUSALS: &str = r#"
vz backup-keygen "$WORK/key" || fail "keygen"
[ "$(stat -c %s "$WORK/key")" = 32 ] && [ "$(stat -c %a "$WORK/key")" = 600 ] || fail "key file: $(ls -l $WORK/key)"
refused 0 "exists" vz backup-keygen "$WORK/key"
head -c32 /dev/urandom > "$WORK/wrong" && chmod 600 "$WORK/wrong"
head -c31 /dev/urandom > "$WORK/short" && chmod 600 "$WORK/short"
vz create 211 --hostname enc1 --command "$LOOP" || fail "create"
vz start 211 || fail "start"
until_true 5 vz exec 211 test -s /tmp/count || fail "the loop does not run"
in_ve 211 python3 -c 'import os; open("/root/big", "wb").write(os.urandom(3 << 20))'
vz chkpnt 211 || fail "chkpnt"
last=$(tail -n1 "$VZ_DIR/private/211/upper/root/log")
refused 0 "32 bytes" vz backup 211 --to "$WORK/x.vzb" --encrypt-key "$WORK/short"
[ -e "$WORK/x.vzb" ] && fail "a refused backup left a file"
vz backup 211 --to "$WORK/enc.vzb" --encrypt-key "$WORK/key" || fail "encrypted backup"
vz backup 211 --to "$WORK/plain.vzb" --compress 0 || fail "plain backup"
grep -q enc1 "$WORK/enc.vzb" && fail "the encrypted backup shows the config in clear"
grep -q enc1 "$WORK/plain.vzb" || fail "the uncompressed plain backup does not hold the config"
refused 212 "wrong key" vz restore-backup 212 --from "$WORK/enc.vzb" --encrypt-key "$WORK/wrong"
refused 212 "encrypted: give its key" vz restore-backup 212 --from "$WORK/enc.vzb"
refused 212 "not encrypted" vz restore-backup 212 --from "$WORK/plain.vzb" --encrypt-key "$WORK/key"
size=$(stat -c %s "$WORK/enc.vzb")
for at in 13 $((size / 2)) $((size - 3)); do
    cp "$WORK/enc.vzb" "$WORK/bad.vzb" && flip "$WORK/bad.vzb" $at
    refused 212 "authentication failed\|header" vz restore-backup 212 --from "$WORK/bad.vzb" --encrypt-key "$WORK/key"
done
head -c $((size - 100)) "$WORK/enc.vzb" > "$WORK/cut.vzb"
refused 212 "truncated" vz restore-backup 212 --from "$WORK/cut.vzb" --encrypt-key "$WORK/key"
# Cut at a chunk boundary: the first chunk alone is a well-formed, authentic prefix.
head -c $((64 + 4 + 1048576 + 16)) "$WORK/enc.vzb" > "$WORK/cut.vzb"
refused 212 "truncated" vz restore-backup 212 --from "$WORK/cut.vzb" --encrypt-key "$WORK/key"
{ cat "$WORK/enc.vzb"; echo garbage; } > "$WORK/long.vzb"
refused 212 "trailing" vz restore-backup 212 --from "$WORK/long.vzb" --encrypt-key "$WORK/key"
psize=$(stat -c %s "$WORK/plain.vzb")
cp "$WORK/plain.vzb" "$WORK/bad.vzb" && flip "$WORK/bad.vzb" $((psize / 2))
refused 212 "checksum" vz restore-backup 212 --from "$WORK/bad.vzb"
refused 212 "not a vzcpt backup" vz restore-backup 212 --from /etc/passwd
vz restore-backup 212 --from "$WORK/enc.vzb" --encrypt-key "$WORK/key" || fail "restore of the intact encrypted backup"
vz restore 212 || fail "restore 212"
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/212/upper/root/log) -gt $last ]" || fail "212 does not go on counting"
log_contiguous 212 || fail "212's count did not go on from memory"
cmp "$VZ_DIR/private/211/upper/root/big" "$VZ_DIR/private/212/upper/root/big" || fail "a 3 MiB file differs"
vz restore-backup 213 --from "$WORK/plain.vzb" || fail "restore of the plain backup"
status_is 213 dumped || fail "213: $(vz status 213)"
echo OK
"#;

/// A running VE backed up into a pipe (checkpointed with --leave-running, it goes on) and
/// restored from it under a new CTID; `--keep 2` in a directory leaves the two newest
/// backups of that VE and nothing else is touched.
const PIPE_LIVE_AND_KEEP: &str = r#"
vz backup-keygen "$WORK/key" || fail "keygen"
vz create 221 --hostname live1 --command "$LOOP" || fail "create"
vz start 221 || fail "start"
until_true 5 vz exec 221 test -s /tmp/count || fail "the loop does not run"
refused 0 "not running\|does not exist" vz backup 229 --to "$WORK/none.vzb"
set -o pipefail
vz backup 221 --to - --encrypt-key "$WORK/key" | vz restore-backup 222 --from - --encrypt-key "$WORK/key" || fail "backup | restore-backup"
set +o pipefail
status_is 221 running || fail "the backup stopped the running VE: $(vz status 221)"
status_is 222 dumped || fail "222: $(vz status 222)"
n=$(tail -n1 "$VZ_DIR/private/221/upper/root/log")
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/221/upper/root/log) -gt $((n + 3)) ]" || fail "221 does not go on after its backup"
log_contiguous 221 || fail "221's log after its backup"
ls -A "$VZ_DIR/dump" | grep -q backup && fail "the temporary image stays: $(ls -A $VZ_DIR/dump)"
vz restore 222 || fail "restore 222"
c1=$(vz exec 222 cat /tmp/count)
sleep 0.5
[ "$(vz exec 222 cat /tmp/count)" -gt "$c1" ] || fail "222 does not count on from $c1: $(vz exec 222 cat /tmp/count)"
[ "$(vz exec 222 hostname)" = live1 ] || fail "hostname of 222"
vz suspend 221 || fail "suspend"
refused 0 "suspended" vz backup 221 --to "$WORK/frozen.vzb"
vz resume 221 || fail "resume"
# --keep
vz stop 221 || fail "stop"
mkdir "$WORK/bk" && touch "$WORK/bk/notes.txt" "$WORK/bk/2210-20200101-000000.vzb" "$WORK/bk/22-20200101-000000.vzb"
refused 0 "keep needs --to DIR" vz backup 221 --to "$WORK/one.vzb" --keep 2
names=""
for i in 1 2 3; do
    vz backup 221 --to "$WORK/bk" --keep 2 --json > "$WORK/s$i.json" || fail "backup $i into a directory"
    names="$names $(python3 -c 'import json,sys,os; print(os.path.basename(json.load(open(sys.argv[1]))["path"]))' "$WORK/s$i.json")"
done
echo "$names" | tr ' ' '\n' | grep -qE '^221-[0-9]{8}-[0-9]{6}(-[0-9]+)?\.vzb$' || fail "names: $names"
set -- $names
left=$(ls "$WORK/bk" | grep '^221-' | sort | tr '\n' ' ')
[ "$left" = "$(printf '%s\n' $2 $3 | sort | tr '\n' ' ')" ] || fail "--keep 2 left [$left] of [$names]"
for f in notes.txt 2210-20200101-000000.vzb 22-20200101-000000.vzb; do [ -e "$WORK/bk/$f" ] || fail "--keep removed $f"; done
vz restore-backup 223 --from "$WORK/bk/$3" || fail "restore of the newest kept backup"
status_is 223 stopped || fail "223: $(vz status 223)"
echo OK
"#;

fn main() {
    tests::ve_harness::run_trials(vec![
        (
            "backup_stopped_and_dumped_restored_under_new_ctids",
            format!("{HELPERS}\n{STOPPED_AND_DUMPED}"),
        ),
        (
            "backup_encrypted_and_damaged_ones_refused",
            format!("{HELPERS}\n{ENCRYPTED_AND_REFUSALS}"),
        ),
        (
            "backup_running_ve_through_a_pipe_and_keep",
            format!("{HELPERS}\n{PIPE_LIVE_AND_KEEP}"),
        ),
    ])
}
