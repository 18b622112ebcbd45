//! The command-line contract, and nothing lost when a dump or a restore fails: a failed dump leaves the tree running as it
//! was (not stopped, not traced, same signal mask, cgroup thawed) and no image behind; a failed
//! restore leaves no process it created. And a restore in the foreground ends as its root
//! does: it exits with the root's status (128 + signal when killed); `--detach` prints the
//! root's PID; `--compress=LEVEL` is honoured; `vzcpt check` lists every facility; private file
//! mappings store only their modified pages.
//!
//! Each trial is a bash script run as PID 1 of its own PID namespace, so whatever it starts
//! dies with it. The script prints `OK` last; any other end is a failure with its output.

use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

/// Helpers every script gets. `$VZCPT` is the binary, `$WORK` a fresh directory.
const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; exit 1; }
field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
state() { sed 's/.*) //' "/proc/$1/stat" | cut -c1; }
# The workload processes of this namespace (the scripts run `sleep` and `python3`).
others() { pgrep -x 'sleep|python3' | while read -r p; do echo "$p $(cat /proc/$p/comm 2>/dev/null)"; done; }
"#;

/// A dump that meets a resource it cannot handle (a packet socket) fails naming it and the task, and
/// leaves the process exactly as it was.
const DUMP_UNSUPPORTED: &str = r#"
python3 -c 'import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); time.sleep(1000)' &
P=$!
# Python may take a while to start on a loaded machine: wait for its socket.
until ls -l /proc/$P/fd 2>/dev/null | grep -q 'socket:'; do kill -0 $P 2>/dev/null || fail "the socket holder died"; sleep 0.05; done
blk=$(field $P SigBlk)
out=$("$VZCPT" dump -t $P -D "$WORK/img" 2>&1) && fail "dump of a process with a socket succeeded"
echo "$out" | grep -q "socket" || fail "the error does not name the socket: $out"
echo "$out" | grep -q "$P" || fail "the error does not name task $P: $out"
[ -e "$WORK/img" ] && fail "a partial image was left in $WORK/img"
ls "$WORK" | grep -q tmp && fail "a temporary image directory was left: $(ls $WORK)"
kill -0 $P || fail "the process died"
[ "$(state $P)" = S ] || fail "the process is in state $(state $P), not S (sleeping)"
[ "$(field $P TracerPid)" = 0 ] || fail "the process is still traced"
[ "$(field $P SigBlk)" = "$blk" ] || fail "blocked mask $(field $P SigBlk), was $blk"
kill $P; wait $P
echo OK
"#;

/// An epoll registration whose target descriptor was closed after `epoll_ctl` (the file kept
/// open at another number) cannot be made again: the dump fails naming the descriptor, the
/// epoll and the task, and leaves the process running.
const DUMP_EPOLL_CLOSED_TARGET: &str = r#"
python3 -c '
import os, select, time
ep = select.epoll()
r, w = os.pipe()
ep.register(r, select.EPOLLIN)
keep = os.dup(r)
os.close(r)
print(r, ep.fileno(), flush=True)
time.sleep(1000)' > "$WORK/fds" &
P=$!
until [ -s "$WORK/fds" ]; do kill -0 $P 2>/dev/null || fail "the epoll holder died"; sleep 0.05; done
read -r T E < "$WORK/fds"
out=$("$VZCPT" dump -t $P -D "$WORK/img" 2>&1) && fail "dump of an epoll with a closed target succeeded"
echo "$out" | grep -q "descriptor $T registered in this epoll" || fail "the error does not name descriptor $T: $out"
echo "$out" | grep -q "fd $E (anon_inode:\[eventpoll\])" || fail "the error does not name epoll fd $E: $out"
echo "$out" | grep -q "task $P" || fail "the error does not name task $P: $out"
[ -e "$WORK/img" ] && fail "a partial image was left in $WORK/img"
kill -0 $P || fail "the process died"
[ "$(field $P TracerPid)" = 0 ] || fail "the process is still traced"
kill $P; wait $P
echo OK
"#;

/// The same through the cgroup freezer: the cgroup is thawed again after the failed dump.
const DUMP_UNSUPPORTED_CGROUP: &str = r#"
CG="$CGROOT/vzcpt-fail-$$-$RANDOM"
mkdir "$CG" || fail "mkdir $CG"
trap 'echo 1 > "$CG/cgroup.kill" 2>/dev/null; sleep 0.2; rmdir "$CG" 2>/dev/null' EXIT
sh -c 'echo $$ > "$0/cgroup.procs" && exec python3 -c "import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); time.sleep(1000)"' "$CG" &
P=$!
# Python may take a while to start on a loaded machine: wait for its socket.
until ls -l /proc/$P/fd 2>/dev/null | grep -q 'socket:'; do kill -0 $P 2>/dev/null || fail "the socket holder died"; sleep 0.05; done
out=$("$VZCPT" dump --cgroup "$CG" -D "$WORK/img" 2>&1) && fail "dump of a cgroup with a socket succeeded"
echo "$out" | grep -q "socket" || fail "the error does not name the socket: $out"
[ -e "$WORK/img" ] && fail "a partial image was left"
grep -q "^frozen 0" "$CG/cgroup.events" || fail "the cgroup stays frozen: $(cat $CG/cgroup.events)"
[ "$(state $P)" = S ] || fail "the process is in state $(state $P)"
[ "$(field $P TracerPid)" = 0 ] || fail "the process is still traced"
echo OK
"#;

/// A restore whose PIDs are taken (the original still runs) fails before creating anything.
const RESTORE_PID_TAKEN: &str = r#"
sleep 1000 &
P=$!
"$VZCPT" dump --leave-running -t $P -D "$WORK/img" || fail "dump"
before=$(others | sort)
out=$("$VZCPT" restore -D "$WORK/img" --detach 2>&1) && fail "restore over a running original succeeded"
echo "$out" | grep -q "$P" || fail "the error does not name PID $P: $out"
after=$(others | sort)
[ "$before" = "$after" ] || fail "processes changed: before [$before] after [$after]"
echo OK
"#;

/// A restore that fails after the tree exists (the working directory of the process is gone)
/// kills every process it created: the PIDs are free again and nothing of the tree runs.
const RESTORE_FAILS_MIDWAY: &str = r#"
mkdir "$WORK/cwd"
bash -c 'cd "$0" && sleep 1000 & cd "$0" && exec sleep 1000' "$WORK/cwd" &
P=$!
sleep 0.3
"$VZCPT" dump -t $P -D "$WORK/img" || fail "dump"
wait $P 2>/dev/null
rmdir "$WORK/cwd"
before=$(others | sort)
out=$("$VZCPT" restore -D "$WORK/img" --detach 2>&1) && fail "restore without the working directory succeeded"
echo "$out" | grep -q "working directory" || fail "the error does not name the working directory: $out"
sleep 0.2
after=$(others | sort)
[ "$before" = "$after" ] || fail "processes left: before [$before] after [$after]"
[ -e /proc/$P ] && fail "PID $P is still taken: $(cat /proc/$P/stat)"
echo OK
"#;

/// `vzcpt restore` without `--detach` waits for the root and exits with its status.
const RESTORE_EXIT_STATUS: &str = r#"
bash -c 'sleep 1; exit 7' &
P=$!
sleep 0.3
"$VZCPT" dump -t $P -D "$WORK/img1" || fail "dump"
wait $P 2>/dev/null
"$VZCPT" restore -D "$WORK/img1"; rc=$?
[ $rc = 7 ] || fail "restore exited with $rc, the root exited with 7"
bash -c 'sleep 1; kill -TERM $$' &
P=$!
sleep 0.3
"$VZCPT" dump -t $P -D "$WORK/img2" || fail "dump"
wait $P 2>/dev/null
"$VZCPT" restore -D "$WORK/img2"; rc=$?
[ $rc = 143 ] || fail "restore exited with $rc, the root was killed by SIGTERM (143)"
echo OK
"#;

/// The same through the v1 freezer: `freezer.state` is THAWED again after the failed dump.
const DUMP_UNSUPPORTED_CGROUP_V1: &str = r#"
CG="$CGROOT_V1/vzcpt-fail-$$-$RANDOM"
mkdir "$CG" || fail "mkdir $CG"
trap 'for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 $p; done; sleep 0.2; rmdir "$CG" 2>/dev/null' EXIT
sh -c 'echo $$ > "$0/cgroup.procs" && exec python3 -c "import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); time.sleep(1000)"' "$CG" &
P=$!
# Python may take a while to start on a loaded machine: wait for its socket.
until ls -l /proc/$P/fd 2>/dev/null | grep -q 'socket:'; do kill -0 $P 2>/dev/null || fail "the socket holder died"; sleep 0.05; done
out=$("$VZCPT" dump --cgroup "$CG" -D "$WORK/img" 2>&1) && fail "dump of a cgroup with a socket succeeded"
echo "$out" | grep -q "socket" || fail "the error does not name the socket: $out"
[ -e "$WORK/img" ] && fail "a partial image was left"
[ "$(cat $CG/freezer.state)" = THAWED ] || fail "the cgroup stays $(cat $CG/freezer.state)"
[ "$(state $P)" = S ] || fail "the process is in state $(state $P)"
[ "$(field $P TracerPid)" = 0 ] || fail "the process is still traced"
echo OK
"#;

/// `--detach` prints the root's PID (and `--pidfile` holds it); `--compress=LEVEL` takes the
/// level and refuses one zstd does not have.
const DETACH_AND_COMPRESS_LEVEL: &str = r#"
sleep 1000 &
P=$!
out=$("$VZCPT" dump -t $P -D "$WORK/img2" --compress=99 2>&1) && fail "--compress=99 was accepted"
echo "$out" | grep -q "99" || fail "the error does not name the level: $out"
[ -e "$WORK/img2" ] && fail "a refused dump left an image"
kill -0 $P || fail "a refused dump killed the process"
"$VZCPT" dump -t $P -D "$WORK/img" --compress=19 || fail "dump --compress=19"
wait $P 2>/dev/null
"$VZCPT" verify -D "$WORK/img" || fail "verify"
"$VZCPT" show -D "$WORK/img" --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["inventory"]["compressed"] else 1)' \
    || fail "show --json does not say the image is compressed"
"$VZCPT" dump -t $P -D "$WORK/img3" 2>/dev/null && fail "dump of a dead PID succeeded"
printed=$("$VZCPT" restore -D "$WORK/img" --detach --pidfile "$WORK/pidfile") || fail "restore --detach"
[ "$printed" = "$P" ] || fail "restore --detach printed '$printed', the root is $P"
[ "$(cat $WORK/pidfile)" = "$P" ] || fail "the pidfile says '$(cat $WORK/pidfile)', the root is $P"
[ "$(cat /proc/$P/comm)" = sleep ] || fail "PID $P is not the restored sleep"
echo OK
"#;

/// A dump into a file system that fills up (a 2 MiB tmpfs, for 16 MiB of memory) fails with
/// a clear error, leaves no partial image and the process running as it was.
const DUMP_TO_FULL_FS: &str = r#"
mkdir "$WORK/small"
mount -t tmpfs -o size=2m tmpfs "$WORK/small" || fail "mount a small tmpfs"
python3 -c 'import sys, time; b = bytearray(b"x" * (16 << 20)); open(sys.argv[1], "w"); time.sleep(1000)' "$WORK/ready" &
P=$!
until [ -e "$WORK/ready" ]; do kill -0 $P 2>/dev/null || fail "the memory holder died"; sleep 0.05; done
out=$("$VZCPT" dump -t $P -D "$WORK/small/img" 2>&1) && fail "a dump into a full file system succeeded"
echo "$out" | grep -qi "no space" || fail "the error does not say the disk is full: $out"
[ -z "$(ls -A $WORK/small)" ] || fail "a partial image was left: $(ls -A $WORK/small)"
kill -0 $P || fail "the process died"
[ "$(state $P)" = S ] || fail "the process is in state $(state $P)"
[ "$(field $P TracerPid)" = 0 ] || fail "the process is still traced"
kill $P; wait $P 2>/dev/null
umount "$WORK/small"
echo OK
"#;

/// `vzcpt check` lists every facility the engine uses, present or missing, as text and JSON.
const CHECK_LISTS_FACILITIES: &str = r#"
"$VZCPT" check --json > "$WORK/check.json" || fail "check --json exited $?"
python3 - "$WORK/check.json" <<'PY' || fail "check --json: $(cat $WORK/check.json)"
import json, sys
f = json.load(open(sys.argv[1]))["features"]
names = {x["name"] for x in f}
for need in ["clone3 with set_tid", "PR_SET_MM_MAP", "kcmp", "process_vm_readv"]:
    assert need in names, need
assert all(isinstance(x["present"], bool) for x in f)
PY
n=$("$VZCPT" check | grep -cE ' (present|missing) ')
[ "$n" -ge 4 ] || fail "check lists $n facilities"
echo OK
"#;

/// A private file mapping stores only its modified pages: 256 pages mapped and read, 2 written.
const PRIVATE_FILE_ONLY_MODIFIED: &str = r#"
head -c 1048576 /dev/urandom > "$WORK/data"
python3 -c '
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
s = sum(m[i] for i in range(0, len(m), 4096))
m[5 * 4096] = (m[5 * 4096] + 1) % 256
m[77 * 4096 + 9] = (m[77 * 4096 + 9] + 1) % 256
time.sleep(1000)
' "$WORK/data" &
P=$!
sleep 1
"$VZCPT" dump -t $P -D "$WORK/img" --leave-running || fail "dump"
kill -9 $P
"$VZCPT" show -D "$WORK/img" --json > "$WORK/show.json" || fail "show"
python3 - "$WORK/show.json" "$WORK/data" <<'PY' || fail "pages stored for the file mapping are not exactly the 2 modified ones"
import json, sys
img = json.load(open(sys.argv[1]))
vmas = [v for p in img["mm"]["processes"] for v in p["vmas"]
        if isinstance(v["kind"], dict) and v["kind"].get("File", {}).get("path") == sys.argv[2]]
assert len(vmas) == 1, vmas
v = vmas[0]
stored = sum(e["nr_pages"] for e in img["pagemap"]["entries"] if v["start"] <= e["addr"] < v["end"])
print("pages stored for the 256-page private file mapping:", stored)
assert stored == 2, stored
PY
echo OK
"#;

fn run_script(name: &str, body: &str, env: &[(&str, String)]) -> Result<(), Failed> {
    tests::script::Script {
        name,
        prefix: "cli",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &[],
        env: env.to_vec(),
        timeout_s: 120,
    }
    .run()
    .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let mut skip = None;
    if !nix::unistd::geteuid().is_root() {
        skip = Some("needs root (ptrace, namespaces)".to_string());
    } else if Command::new("python3").arg("-V").output().is_err() {
        skip = Some("needs python3".to_string());
    }
    let cg2 = PathBuf::from("/sys/fs/cgroup/unified");
    let cg1 = PathBuf::from("/sys/fs/cgroup/freezer");
    let scripts: Vec<(&str, &str, Option<String>)> = vec![
        (
            "dump_unsupported_resource_leaves_tree_running",
            DUMP_UNSUPPORTED,
            None,
        ),
        (
            "dump_unsupported_in_cgroup_leaves_cgroup_thawed",
            DUMP_UNSUPPORTED_CGROUP,
            (!cg2.join("cgroup.freeze").exists() && !cg2.join("cgroup.procs").exists())
                .then(|| "no cgroup v2 hierarchy at /sys/fs/cgroup/unified".to_string()),
        ),
        (
            "dump_epoll_with_closed_target_fails_naming_it",
            DUMP_EPOLL_CLOSED_TARGET,
            None,
        ),
        (
            "restore_with_taken_pid_starts_nothing",
            RESTORE_PID_TAKEN,
            None,
        ),
        (
            "restore_failing_midway_kills_what_it_created",
            RESTORE_FAILS_MIDWAY,
            None,
        ),
        (
            "restore_exits_with_the_roots_status",
            RESTORE_EXIT_STATUS,
            None,
        ),
        (
            "dump_unsupported_in_cgroup_v1_leaves_it_thawed",
            DUMP_UNSUPPORTED_CGROUP_V1,
            (!cg1.join("freezer.state").exists() && !cg1.join("cgroup.procs").exists())
                .then(|| "no cgroup v1 freezer at /sys/fs/cgroup/freezer".to_string()),
        ),
        (
            "restore_detach_prints_pid_and_compress_takes_a_level",
            DETACH_AND_COMPRESS_LEVEL,
            None,
        ),
        ("check_lists_each_facility", CHECK_LISTS_FACILITIES, None),
        (
            "dump_to_a_full_file_system_fails_cleanly",
            DUMP_TO_FULL_FS,
            None,
        ),
        (
            "private_file_mapping_stores_only_modified_pages",
            PRIVATE_FILE_ONLY_MODIFIED,
            None,
        ),
    ];
    let trials = scripts
        .into_iter()
        .map(|(name, body, own_skip)| {
            let reason = skip.clone().or(own_skip);
            let ignored = reason.is_some();
            if let Some(r) = &reason {
                eprintln!("{name}: ignored: {r}");
            }
            let env = vec![
                ("CGROOT", cg2.display().to_string()),
                ("CGROOT_V1", cg1.display().to_string()),
            ];
            Trial::test(name, move || {
                if let Some(r) = reason {
                    return Err(format!("skipped: {r}").into());
                }
                run_script(name, body, &env)
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
