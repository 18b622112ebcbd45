//! VE snapshots end to end through `vzctl snapshot`, `snapshot-list`, `rollback` and
//! `snapshot-delete` (issue 7, part 1): memory and files of one instant, rolled back
//! together; the snapshot tree; refusals and failures that leave the VE as it was.
//!
//! Each trial is a VE trial (see `tests::ve_harness`: its own PID, mount and network
//! namespaces, `$VZ_DIR` and cgroups) that first makes its own btrfs: a sparse file, formatted
//! with `mkfs.btrfs` and loop-mounted on `$VZ_DIR/private`; the mount (and with it the loop
//! device, which autoclears) goes when the trial ends, however it ends. Trials are ignored,
//! with the reason, where btrfs or `mkfs.btrfs` is missing (`.ci/run` installs btrfs-progs).

use std::path::Path;
use std::process::Command;

/// Every trial starts with its own btrfs under `$VZ_DIR/private`.
const BTRFS: &str = r#"
truncate -s 1G "$WORK/btrfs.img" || fail "truncate"
mkfs.btrfs -q "$WORK/btrfs.img" >/dev/null 2>&1 || fail "mkfs.btrfs"
mkdir -p "$VZ_DIR/private"
mount -o loop "$WORK/btrfs.img" "$VZ_DIR/private" || fail "mount the btrfs image"
trap 'cleanup; umount -l "$VZ_DIR/private" 2>/dev/null' EXIT
# The VE's log in its private area, and its last line.
log_of() { echo "$VZ_DIR/private/$1/upper/root/log"; }
last() { tail -n1 "$(log_of "$1")"; }
# json EXPR: evaluates EXPR (a Python expression over `d`, the JSON on stdin).
json() { python3 -c "import json, sys; d = json.load(sys.stdin); r = ($1); print(r) if r is not True else None; sys.exit(0 if r else 1)"; }
subvolumes() { btrfs subvolume list "$VZ_DIR/private" | wc -l; }
"#;

/// A running VE (a shell loop counting in memory and logging each count to its private area)
/// is snapshotted; files and memory change; the rollback brings both back as they were at the
/// snapshot: the log goes on from the count in memory without a gap or a repeat (memory and
/// files were taken at one instant), a file made later is gone, a deleted one is back. Then a
/// snapshot of the stopped VE (files only), whose rollback leaves it stopped; `destroy`
/// removes every subvolume.
const ROLLBACK: &str = r#"
vz create 301 --command "$LOOP" || fail "create"
[ "$(stat -c %i "$VZ_DIR/private/301")" = 256 ] || fail "the private area on btrfs is not a subvolume"
vz start 301 || fail "start"
until_true 5 vz exec 301 test -s /tmp/count || fail "the loop does not run"
in_ve 301 sh -c 'echo one > /root/keep; echo here > /root/del'
out=$(vz snapshot 301 --name s1 --json) || fail "snapshot: $out"
echo "snapshot: $out"
echo "$out" | json 'd["memory"] is True and d["name"] == "s1" and d["parent"] is None and 0 < d["frozen_ms"] < 5000 and d["fs_snapshot_ms"] <= d["frozen_ms"] and d["dump"]["processes"] >= 2 and d["dump"]["cow_pages_copied"] > 0' || fail "snapshot --json (memory copied after the thaw): $out"
status_is 301 running || fail "the snapshot did not leave the VE running: $(vz status 301)"
[ -z "$(ls -A "$VZ_DIR/private/snapshots/301" | grep '^\.tmp-')" ] || fail "work left: $(ls -A "$VZ_DIR/private/snapshots/301")"
[ "$(stat -c %i "$VZ_DIR/private/snapshots/301/s1/private")" = 256 ] || fail "the snapshot's files are not a subvolume"
btrfs property get -ts "$VZ_DIR/private/snapshots/301/s1/private" ro | grep -q 'ro=true' || fail "the snapshot's files are not read-only"
snap=$(grep -c . "$VZ_DIR/private/snapshots/301/s1/private/upper/root/log")
until_true 5 sh -c "[ \$(tail -n1 $(log_of 301)) -gt $((snap + 20)) ]" || fail "the VE does not go on after the snapshot"
log_contiguous 301 || fail "the snapshot broke the log"
in_ve 301 sh -c 'echo two > /root/keep; rm /root/del; echo new > /root/new'
before=$(last 301)
out=$(vz rollback 301 s1 --json) || fail "rollback: $out"
echo "$out" | json 'd["memory"] is True and d["running"] is True' || fail "rollback --json: $out"
status_is 301 running || fail "status after the rollback: $(vz status 301)"
# Memory: the count goes on from the snapshot's value, not from the later one.
until_true 5 vz exec 301 test -s /tmp/count || fail "no count after the rollback"
count=$(vz exec 301 cat /tmp/count)
[ "$count" -lt "$before" ] || fail "the count in memory ($count) was not rolled back (it was $before)"
[ "$count" -ge "$snap" ] || fail "the count in memory ($count) is older than the snapshot's log ($snap)"
until_true 5 sh -c "[ \$(tail -n1 $(log_of 301)) -gt $((snap + 5)) ]" || fail "the loop does not go on after the rollback"
# Files and memory of one instant: the log goes on from the snapshot's last line.
log_contiguous 301 || fail "the log has a gap or a repeat after the rollback: $(sed -n "$((snap - 2)),$((snap + 3))p" "$(log_of 301)")"
[ "$(vz exec 301 cat /root/keep)" = one ] || fail "a changed file was not rolled back"
[ "$(vz exec 301 cat /root/del)" = here ] || fail "a deleted file is not back"
vz exec 301 test -e /root/new && fail "a file made after the snapshot is still there"
out=$(vz snapshot-list 301 --json) || fail "snapshot-list"
echo "$out" | json 'd["current"] == "s1" and [s["name"] for s in d["snapshots"]] == ["s1"]' || fail "snapshot-list: $out"
# A stopped VE: files only; its rollback leaves it stopped.
vz stop 301 || fail "stop"
out=$(vz snapshot 301 --name stopped --json) || fail "snapshot of a stopped VE: $out"
echo "$out" | json 'd["memory"] is False and d["parent"] == "s1" and d["frozen_ms"] == 0' || fail "snapshot of a stopped VE --json: $out"
[ -e "$VZ_DIR/private/snapshots/301/stopped/memory" ] && fail "a stopped VE's snapshot has memory"
vz start 301 || fail "start after the stopped snapshot"
in_ve 301 sh -c 'echo three > /root/keep'
out=$(vz rollback 301 stopped --json) || fail "rollback to the stopped snapshot: $out"
echo "$out" | json 'd["running"] is False' || fail "rollback --json: $out"
status_is 301 stopped || fail "a files-only rollback did not leave the VE stopped: $(vz status 301)"
[ "$(cat "$VZ_DIR/private/301/upper/root/keep")" = one ] || fail "files-only rollback: keep is $(cat "$VZ_DIR/private/301/upper/root/keep")"
vz start 301 || fail "start after a files-only rollback"
vz stop 301 || fail "stop"
[ "$(subvolumes)" = 3 ] || fail "expected 3 subvolumes (the VE's and 2 snapshots): $(btrfs subvolume list "$VZ_DIR/private")"
vz destroy 301 || fail "destroy"
sync
[ "$(subvolumes)" = 0 ] || fail "destroy left subvolumes: $(btrfs subvolume list "$VZ_DIR/private")"
[ -e "$VZ_DIR/private/snapshots/301" ] && fail "destroy left the snapshots"
echo OK
"#;

/// A backup of a running VE whose private area is on btrfs takes memory and files at one
/// instant (a capture, outside the snapshot tree): restored under a new CTID, its log goes on
/// from the count in its memory without a gap or a repeat. The capture leaves nothing behind.
const BACKUP_OF_ONE_INSTANT: &str = r#"
vz create 305 --command "$LOOP" || fail "create"
vz start 305 || fail "start"
until_true 5 sh -c "[ \$(tail -n1 $(log_of 305) 2>/dev/null || echo 0) -gt 20 ]" || fail "the loop does not run"
out=$(vz backup 305 --to "$WORK/305.vzb" --json) || fail "backup: $out"
echo "backup: $out"
echo "$out" | json 'd["live"] is False and d["has_image"] is True' || fail "backup --json: $out"
status_is 305 running || fail "the backup did not leave the VE running: $(vz status 305)"
[ -z "$(ls -A "$VZ_DIR/private/snapshots/305" | grep '^\.tmp-')" ] || fail "the capture was left: $(ls -A "$VZ_DIR/private/snapshots/305")"
out=$(vz snapshot-list 305 --json) || fail "snapshot-list"
echo "$out" | json 'd["snapshots"] == [] and d["current"] is None' || fail "the capture joined the snapshot tree: $out"
[ "$(subvolumes)" = 1 ] || fail "subvolumes left: $(btrfs subvolume list "$VZ_DIR/private")"
vz restore-backup 306 --from "$WORK/305.vzb" || fail "restore-backup"
status_is 306 dumped || fail "the copy: $(vz status 306)"
[ "$(stat -c %i "$VZ_DIR/private/306")" = 256 ] || fail "the restored private area is not a subvolume"
vz restore 306 || fail "restore the copy"
first=$(last 306)
until_true 5 sh -c "[ \$(tail -n1 $(log_of 306)) -gt $((first + 5)) ]" || fail "the copy does not go on"
log_contiguous 306 || fail "the copy's log has a gap or a repeat (files and memory not of one instant): $(tail -n 20 "$(log_of 306)" | tr '\n' ' ')"
vz stop 306 || fail "stop 306"
vz stop 305 || fail "stop 305"
vz snapshot 306 --name after-restore || fail "a snapshot of the restored VE"
echo OK
"#;

/// A tree of snapshots: a -> b -> c taken while the VE runs; deleting b gives c the parent a
/// and rolling back to c still brings its files and memory back; a rollback to a and a
/// snapshot d make a branch; deleting a root leaves its children as roots. A rollback whose
/// memory restore fails leaves the snapshot's files and the VE stopped, and says so.
const TREE: &str = r#"
vz create 302 --command "$LOOP" || fail "create"
vz start 302 || fail "start"
until_true 5 vz exec 302 test -s /tmp/count || fail "the loop does not run"
for s in a b c; do
    in_ve 302 sh -c "echo $s > /root/stage"
    vz snapshot 302 --name $s || fail "snapshot $s"
    sleep 0.3
done
in_ve 302 sh -c 'echo after > /root/stage'
out=$(vz snapshot-list 302 --json) || fail "snapshot-list"
echo "$out" | json '[(s["name"], s["parent"], s["depth"]) for s in d["snapshots"]] == [("a", None, 0), ("b", "a", 1), ("c", "b", 2)] and d["current"] == "c"' || fail "the tree: $out"
vz snapshot-list 302 | grep -q '^\*     c ' || fail "snapshot-list text: $(vz snapshot-list 302)"
vz snapshot-delete 302 b || fail "delete b"
[ -e "$VZ_DIR/private/snapshots/302/b" ] && fail "b is still there"
out=$(vz snapshot-list 302 --json)
echo "$out" | json '[(s["name"], s["parent"]) for s in d["snapshots"]] == [("a", None), ("c", "a")]' || fail "the tree after deleting b: $out"
before=$(last 302)
vz rollback 302 c || fail "rollback to c"
[ "$(vz exec 302 cat /root/stage)" = c ] || fail "rollback to c: stage is $(vz exec 302 cat /root/stage)"
until_true 5 sh -c "[ \$(tail -n1 $(log_of 302)) -gt 3 ]" || fail "the loop does not go on after the rollback to c"
log_contiguous 302 || fail "the log after the rollback to c"
[ "$(vz exec 302 cat /tmp/count)" -lt "$before" ] || fail "the memory was not rolled back to c"
vz rollback 302 a || fail "rollback to a"
[ "$(vz exec 302 cat /root/stage)" = a ] || fail "rollback to a: stage is $(vz exec 302 cat /root/stage)"
log_contiguous 302 || fail "the log after the rollback to a"
vz snapshot 302 --name d || fail "snapshot d"
out=$(vz snapshot-list 302 --json)
echo "$out" | json '[(s["name"], s["parent"], s["depth"]) for s in d["snapshots"]] == [("a", None, 0), ("c", "a", 1), ("d", "a", 1)] and d["current"] == "d"' || fail "the branch: $out"
vz snapshot-delete 302 a || fail "delete a"
out=$(vz snapshot-list 302 --json)
echo "$out" | json '[(s["name"], s["parent"]) for s in d["snapshots"]] == [("c", None), ("d", None)] and d["current"] == "d"' || fail "after deleting the root: $out"
vz rollback 302 c || fail "rollback to c after deleting a"
[ "$(vz exec 302 cat /root/stage)" = c ] || fail "rollback to c again: stage is $(vz exec 302 cat /root/stage)"
log_contiguous 302 || fail "the log after the second rollback to c"
# The restore of the memory failing after the swap: the files are c's, the VE stopped, and
# the message says so; the next rollback brings it back running.
in_ve 302 sh -c 'echo later > /root/stage'
out=$(VZCPT_FAULT=restore.before-release vz rollback 302 d 2>&1) && fail "the failure point did not fail the restore"
echo "$out" | grep -q "files and config are back as at snapshot \"d\".*the VE is stopped" || fail "the message: $out"
status_is 302 stopped || fail "after a failed restore the VE is $(vz status 302)"
[ "$(cat "$VZ_DIR/private/302/upper/root/stage")" = a ] || fail "after a failed restore: stage is $(cat "$VZ_DIR/private/302/upper/root/stage")"
[ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/302" ] && fail "a failed restore left the cgroup"
vz rollback 302 d || fail "rollback after the failed restore"
status_is 302 running || fail "the rollback after a failed restore: $(vz status 302)"
log_contiguous 302 || fail "the log after the rollback to d"
echo OK
"#;

/// Refusals, each with a clear message and nothing changed: a private area not on btrfs, a
/// plain directory on btrfs, unknown and taken names, bad names, a suspended VE. A snapshot
/// failing after the memory dump, and one whose vzctl is killed there, leave the VE running
/// as it was and no snapshot behind. A rollback failing before the kill, and one to a
/// snapshot whose memory image is damaged, leave the VE running with its files; one whose
/// vzctl is killed after the swap is finished by the next command (files and config).
const REFUSALS: &str = r#"
# Not on btrfs: another "host" whose private area is a tmpfs.
mkdir -p "$WORK/plain/private" && mount -t tmpfs tmpfs "$WORK/plain/private" || fail "tmpfs"
VZ_DIR="$WORK/plain" vz create 310 || fail "create on tmpfs"
out=$(VZ_DIR="$WORK/plain" vz snapshot 310 --name x 2>&1) && fail "a snapshot on tmpfs succeeded"
echo "$out" | grep -q "$WORK/plain/private/310 is on tmpfs" || fail "the refusal does not name the path and its file system: $out"
echo "$out" | grep -q "btrfs" || fail "the refusal does not say btrfs is needed: $out"
umount "$WORK/plain/private"
# A plain directory on btrfs (a VE whose private area existed before).
mkdir -p "$VZ_DIR/private/311"
vz create 311 || fail "create 311"
out=$(vz snapshot 311 --name x 2>&1) && fail "a snapshot of a plain directory succeeded"
echo "$out" | grep -q "not a btrfs subvolume\|to be a btrfs subvolume" || fail "the refusal does not say subvolume: $out"
vz create 312 --command "$LOOP" || fail "create 312"
vz start 312 || fail "start 312"
until_true 5 vz exec 312 test -s /tmp/count || fail "the loop does not run"
vz snapshot 312 --name one || fail "snapshot"
out=$(vz snapshot 312 --name one 2>&1) && fail "a taken name was accepted"
echo "$out" | grep -q "exists already" || fail "the refusal does not say the name is taken: $out"
for bad in ../x .x "a b" -x; do
    out=$(vz snapshot 312 --name="$bad" 2>&1) && fail "bad name $bad accepted"
    echo "$out" | grep -q "bad snapshot name" || fail "bad name $bad: $out"
done
out=$(vz rollback 312 nosuch 2>&1) && fail "rollback to an unknown snapshot succeeded"
echo "$out" | grep -q 'no snapshot named "nosuch"' || fail "unknown name: $out"
out=$(vz snapshot-delete 312 nosuch 2>&1) && fail "delete of an unknown snapshot succeeded"
echo "$out" | grep -q 'no snapshot named "nosuch"' || fail "unknown name: $out"
out=$(vz snapshot 399 --name x 2>&1) && fail "a snapshot of an absent VE succeeded"
echo "$out" | grep -q "does not exist" || fail "absent VE: $out"
vz suspend 312 || fail "suspend"
out=$(vz snapshot 312 --name frozen 2>&1) && fail "a snapshot of a suspended VE succeeded"
echo "$out" | grep -q "resume" || fail "suspended VE: $out"
vz resume 312 || fail "resume"
status_is 312 running || fail "after the refusals: $(vz status 312)"
# A failure after the memory dump: the VE goes on, nothing is left.
out=$(VZCPT_FAULT=snapshot.after-dump vz snapshot 312 --name failed 2>&1) && fail "the failure point did not fail the snapshot"
echo "$out" | grep -q "snapshot.after-dump" || fail "the failure is not reported: $out"
status_is 312 running || fail "a failed snapshot left the VE $(vz status 312)"
grep -q 'frozen 0' "/sys/fs/cgroup/unified/$VZ_CGROUP/312/cgroup.events" || fail "a failed snapshot left the VE frozen"
n=$(last 312); until_true 5 sh -c "[ \$(tail -n1 $(log_of 312)) -gt $((n + 3)) ]" || fail "the VE does not go on after a failed snapshot"
[ -n "$(ls -A "$VZ_DIR/private/snapshots/312" | grep -v '^\.lock$\|^\.current$\|^one$')" ] && fail "a failed snapshot left: $(ls -A "$VZ_DIR/private/snapshots/312")"
[ "$(subvolumes)" = 2 ] || fail "a failed snapshot left a subvolume: $(btrfs subvolume list "$VZ_DIR/private")"
# vzctl killed after the memory dump, the VE held: the next command lets it go on.
VZCPT_FAULT=snapshot.after-dump:kill vz snapshot 312 --name killed >/dev/null 2>&1 && fail "the killed snapshot succeeded"
status_is 312 running || fail "after a killed snapshot the VE is $(vz status 312)"
grep -q 'frozen 0' "/sys/fs/cgroup/unified/$VZ_CGROUP/312/cgroup.events" || fail "a killed snapshot left the VE frozen"
n=$(last 312); until_true 5 sh -c "[ \$(tail -n1 $(log_of 312)) -gt $((n + 3)) ]" || fail "the VE does not go on after a killed snapshot"
log_contiguous 312 || fail "the log after the killed snapshot"
ls -A "$VZ_DIR/private/snapshots/312" | grep -q '^\.tmp-\|^killed$' && fail "a killed snapshot left: $(ls -A "$VZ_DIR/private/snapshots/312")"
[ "$(vz snapshot-list 312 --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["snapshots"]))')" = 1 ] || fail "snapshot-list after the failures: $(vz snapshot-list 312)"
vz snapshot 312 --name two || fail "a snapshot after the failures"
# A rollback failing before it discards anything: the VE goes on untouched.
in_ve 312 sh -c 'echo now > /root/mark'
out=$(VZCPT_FAULT=rollback.before-kill vz rollback 312 two 2>&1) && fail "the failure point did not fail the rollback"
echo "$out" | grep -q "rollback.before-kill" || fail "the rollback's failure is not reported: $out"
status_is 312 running || fail "a failed rollback left the VE $(vz status 312)"
[ "$(vz exec 312 cat /root/mark)" = now ] || fail "a failed rollback changed the files"
n=$(last 312); until_true 5 sh -c "[ \$(tail -n1 $(log_of 312)) -gt $((n + 3)) ]" || fail "the VE does not go on after a failed rollback"
ls -A "$VZ_DIR/private/snapshots/312" | grep -q '^\.tmp-' && fail "a failed rollback left: $(ls -A "$VZ_DIR/private/snapshots/312")"
# A damaged memory image is found before the VE is touched.
printf 'XXXX' | dd of="$VZ_DIR/private/snapshots/312/two/memory/pages" bs=1 seek=5000 conv=notrunc 2>/dev/null
out=$(vz rollback 312 two 2>&1) && fail "a rollback to a damaged image succeeded"
echo "$out" | grep -q "damaged" || fail "the refusal does not say the image is damaged: $out"
status_is 312 running || fail "a refused rollback left the VE $(vz status 312)"
[ "$(vz exec 312 cat /root/mark)" = now ] || fail "a refused rollback changed the files"
log_contiguous 312 || fail "the log after the refused rollbacks"
# vzctl killed right after the swap: the next command finishes the rollback of the files and
# the config (the VE stays stopped); a second rollback brings the memory back too.
vz snapshot 312 --name three || fail "snapshot three"
vz set 312 --hostname changed --save || fail "set --hostname"
in_ve 312 sh -c 'echo later > /root/mark'
VZCPT_FAULT=rollback.after-swap:kill vz rollback 312 three >/dev/null 2>&1 && fail "the killed rollback succeeded"
status_is 312 stopped || fail "after a killed rollback the VE is $(vz status 312)"
grep -q changed "$VZ_DIR/conf/312.conf" && fail "a killed rollback did not finish with the config"
[ "$(cat "$VZ_DIR/private/312/upper/root/mark")" = now ] || fail "a killed rollback: mark is $(cat "$VZ_DIR/private/312/upper/root/mark")"
ls -A "$VZ_DIR/private/312" "$VZ_DIR/private/snapshots/312" | grep -q '^\.tmp-\|^\.rollback' && fail "a killed rollback left: $(ls -A "$VZ_DIR/private/312" "$VZ_DIR/private/snapshots/312")"
vz snapshot-list 312 --json | json 'd["current"] == "three"' || fail "the current snapshot after a killed rollback"
[ "$(subvolumes)" = 4 ] || fail "a killed rollback left a subvolume: $(btrfs subvolume list "$VZ_DIR/private")"
vz rollback 312 three || fail "rollback after the killed one"
status_is 312 running || fail "the second rollback did not restore the memory"
until_true 5 sh -c "[ \$(tail -n1 $(log_of 312)) -gt $((n + 3)) ]" || fail "the VE does not go on after the second rollback"
log_contiguous 312 || fail "the log after the second rollback"
echo OK
"#;

/// A VE with an address, serving a count kept in memory over TCP: a rollback brings the
/// count back to its value at the snapshot, with the listening socket and the VE's network
/// (no blackhole left on the host) as they were.
const NETWORK: &str = r#"
vz create 303 --command 'exec python3 /root/srv.py' || fail "create"
mkdir -p "$VZ_DIR/private/303/upper/root"
cat > "$VZ_DIR/private/303/upper/root/srv.py" <<'PY'
import socket
n = 0
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7007))
s.listen()
open("/tmp/listening", "w").close()
while True:
    c, _ = s.accept()
    n += 1
    c.send(str(n).encode())
    c.close()
PY
vz set 303 --ipadd 10.99.1.7 --save || fail "set --ipadd"
vz start 303 || fail "start"
until_true 10 vz exec 303 test -e /tmp/listening || fail "the server does not listen"
ask() { python3 -c 'import socket; s = socket.create_connection(("10.99.1.7", 7007), timeout=3); print(s.recv(100).decode())'; }
[ "$(ask)" = 1 ] && [ "$(ask)" = 2 ] || fail "the server does not count"
vz snapshot 303 --name two || fail "snapshot"
[ "$(ask)" = 3 ] || fail "the server after the snapshot"
[ "$(ask)" = 4 ] || fail "the server after the snapshot"
vz rollback 303 two || fail "rollback"
ip route show type blackhole | grep -q 10.99.1.7 && fail "the address stays blackholed after the rollback"
[ "$(ask)" = 3 ] || fail "the count in memory was not rolled back"
echo OK
"#;

/// Why snapshot trials cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if let Some(r) = tests::ve_harness::skip_reason() {
        return Some(r);
    }
    if !std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("btrfs")
    {
        return Some("needs btrfs in the kernel (snapshots of the private area)".into());
    }
    if Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("needs mkfs.btrfs (Debian: btrfs-progs) for the trials' own btrfs".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("needs loop devices (/dev/loop-control) to mount a btrfs image".into());
    }
    None
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let skip = skip_reason();
    let trials = [
        ("snapshot_rollback_brings_back_memory_and_files", ROLLBACK),
        ("snapshot_tree_delete_and_rollback_to_any", TREE),
        ("snapshot_refusals_failures_and_kills", REFUSALS),
        ("snapshot_rollback_of_a_networked_ve", NETWORK),
        (
            "backup_of_a_running_ve_is_of_one_instant",
            BACKUP_OF_ONE_INSTANT,
        ),
    ]
    .into_iter()
    .map(|(name, body)| {
        if let Some(r) = &skip {
            eprintln!("{name}: ignored: {r}");
        }
        let body = format!("{BTRFS}\n{body}");
        libtest_mimic::Trial::test(name, move || {
            tests::ve_harness::run_script(name, &body).map_err(Into::into)
        })
        .with_ignored_flag(skip.is_some())
    })
    .collect();
    libtest_mimic::run(&args, trials).exit()
}
