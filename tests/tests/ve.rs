//! VEs end to end through `vzctl` and `vzlist`: the lifecycle verbs and their refusals, and
//! checkpoint/restore of whole VEs (namespaces, mounts, tmpfs contents, private area, host
//! name, process trees in several sessions), repeatedly.
//!
//! Each trial is a bash script run as PID 1 of its own PID and mount namespaces with its own
//! `$VZ_DIR` and `$VZ_CGROUP`, so trials run side by side like separate hosts: whatever they
//! start dies with them, their VE root mounts vanish with their mount namespace, and their
//! cgroups are removed afterwards whatever happened. The script prints `OK` last.

/// Every verb on a VE, and each refusal with a clear message.
const LIFECYCLE: &str = r#"
vz create 101 --hostname web1 || fail "create"
vz create 101 2>&1 | grep -q "already exists" || fail "second create was not refused"
status_is 101 stopped || fail "status after create: $(vz status 101)"
out=$(vz chkpnt 101 2>&1) && fail "chkpnt of a stopped VE succeeded"
echo "$out" | grep -q "stopped" || fail "chkpnt refusal does not say it is stopped: $out"
vz exec 101 true 2>/dev/null && fail "exec in a stopped VE succeeded"
vz start 101 || fail "start"
status_is 101 running || fail "status after start: $(vz status 101)"
vz start 101 2>/dev/null && fail "second start succeeded"
[ "$(vz exec 101 hostname)" = web1 ] || fail "hostname in the VE: $(vz exec 101 hostname)"
[ "$(vz exec 101 cat /proc/1/comm)" = vzinit ] || fail "PID 1 of the VE is $(vz exec 101 cat /proc/1/comm)"
vz exec 101 ps ax | grep -q vzinit || fail "ps ax in the VE does not show its init"
vz exec 101 sh -c 'exit 3'; [ $? = 3 ] || fail "exec does not pass on the exit status"
out=$(printf 'hostname\nexit 5\n' | vz enter 101 2>/dev/null); rc=$?
[ $rc = 5 ] || fail "enter: the shell's exit status $rc is not 5"
echo "$out" | grep -qx web1 || fail "enter: the shell does not run in the VE: $out"
# Its own /dev, /tmp and loopback; programs of the host run.
vz exec 101 sh -c 'echo x > /dev/null && [ -c /dev/urandom ] && [ -d /dev/pts ] && [ -k /tmp ]' || fail "/dev or /tmp"
vz exec 101 sh -c '[ -c /dev/zero ] && [ -c /dev/full ] && [ -c /dev/random ] && [ -c /dev/tty ] && [ -L /dev/ptmx ] && [ -c /dev/pts/ptmx ]' || fail "the minimal /dev: $(vz exec 101 ls -l /dev)"
for m in /proc /sys /dev /dev/pts /tmp /run; do vz exec 101 mountpoint -q $m || fail "$m is not a mount of its own in the VE"; done
# exec joins the VE's cgroups (v2 and every v1 hierarchy).
vz exec 101 cat /proc/self/cgroup | grep -q "^0::/$VZ_CGROUP/101\$" || fail "exec is not in the VE's cgroup v2: $(vz exec 101 cat /proc/self/cgroup)"
vz exec 101 cat /proc/self/cgroup | grep -q ":memory:/$VZ_CGROUP/101\$" || fail "exec is not in the VE's memory cgroup"
vz exec 101 python3 -c 'import socket; s = socket.create_connection' || fail "python3 does not run in the VE"
vz exec 101 cat /proc/net/dev | grep -q 'lo:' || fail "no loopback in the VE"
[ "$(vz exec 101 cat /proc/net/dev | grep -c ':')" = 1 ] || fail "the VE sees more links than lo"
vz exec 101 sh -c 'echo private > /root/file' || fail "write in the VE"
[ "$(cat $VZ_DIR/private/101/upper/root/file)" = private ] || fail "the file is not in the private area"
[ -e /root/file ] && [ "$(cat /root/file)" = private ] && fail "the VE wrote to the host's /root"
"$BIN/vzlist" | grep -E '^ +101 +[0-9]+ running +web1$' >/dev/null || fail "vzlist: $("$BIN/vzlist")"
"$BIN/vzlist" --json | python3 -c 'import json,sys; v = json.load(sys.stdin)["ves"]; assert v[0]["ctid"] == 101 and v[0]["status"] == "running", v' || fail "vzlist --json"
vz set 101 --memory 256M --pids 100 --cpus 0.5 --save || fail "set"
grep -q 'memory = 268435456' "$VZ_DIR/conf/101.conf" || fail "set --save did not write the config: $(cat $VZ_DIR/conf/101.conf)"
[ "$(cat /sys/fs/cgroup/memory/$VZ_CGROUP/101/memory.limit_in_bytes)" = 268435456 ] || fail "memory limit not applied"
[ "$(cat /sys/fs/cgroup/pids/$VZ_CGROUP/101/pids.max)" = 100 ] || fail "pids limit not applied"
[ "$(cat /sys/fs/cgroup/cpu/$VZ_CGROUP/101/cpu.cfs_quota_us)" = 50000 ] || fail "cpu limit not applied"
vz suspend 101 || fail "suspend"
status_is 101 suspended || fail "status after suspend: $(vz status 101)"
grep -q 'frozen 1' "/sys/fs/cgroup/unified/$VZ_CGROUP/101/cgroup.events" || fail "not frozen"
vz exec 101 true 2>/dev/null && fail "exec in a suspended VE succeeded"
vz resume 101 || fail "resume"
status_is 101 running || fail "status after resume: $(vz status 101)"
vz destroy 101 2>&1 | grep -q "stop it" || fail "destroy of a running VE was not refused"
vz restart 101 || fail "restart"
status_is 101 running || fail "status after restart"
# The init reaps orphans: a background child of an exec'd shell ends up its child, and no zombie stays.
vz exec 101 sh -c 'sleep 0.2 & exit 0' || fail "exec with an orphan"
sleep 0.6
vz exec 101 ps -eo stat=,comm= | grep -q '^Z' && fail "a zombie stays: $(vz exec 101 ps -eo pid,ppid,stat,comm)"
# Stop passes SIGTERM on: a process that traps it leaves a note in the private area.
vz exec 101 sh -c "trap 'echo bye > /root/bye; exit 0' TERM; touch /tmp/trapped; while :; do sleep 0.05; done" &
until_true 10 vz exec 101 test -e /tmp/trapped || fail "the trapping shell does not start"
vz stop 101 || fail "stop"
wait
[ "$(cat "$VZ_DIR/private/101/upper/root/bye" 2>/dev/null)" = bye ] || fail "stop did not send SIGTERM to the VE's processes"
status_is 101 stopped || fail "status after stop: $(vz status 101)"
[ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/101" ] && fail "stop left the VE's cgroup"
grep -q " $VZ_DIR/root/101 " /proc/self/mountinfo && fail "stop left the root mounted"
# Limits are applied at the next start from the config.
vz start 101 || fail "start with limits"
[ "$(cat /sys/fs/cgroup/pids/$VZ_CGROUP/101/pids.max)" = 100 ] || fail "saved pids limit not applied at start"
vz stop 101 || fail "stop"
vz destroy 101 || fail "destroy"
status_is 101 absent || fail "status after destroy: $(vz status 101)"
[ -e "$VZ_DIR/private/101" ] && fail "destroy left the private area"
vz start 101 2>&1 | grep -q "does not exist" || fail "start of a destroyed VE"
echo OK
"#;

/// A VE running a shell loop, checkpointed and restored 10 times: after each restore the
/// count goes on from memory, /tmp (tmpfs) and the private area are as they were, and the
/// host name and PIDs are kept. One round keeps it running (a snapshot) and restores the
/// snapshot after the VE is stopped.
const SHELL_LOOP_CYCLES: &str = r#"
vz create 102 --hostname loop1 --command "$LOOP" || fail "create"
vz start 102 || fail "start"
until_true 5 vz exec 102 test -s /tmp/count || fail "the loop does not run"
# The init and the loop's shell (the loop forks a sleep, and a shell that has just forked,
# every 50 ms: those come and go).
long_lived() { vz exec 102 ps -eo pid=,ppid=,comm= | awk '$2 <= 1 && $3 != "ps" { print $1, $3 }' | sort; }
pids_before=$(long_lived)
vz exec 102 python3 -c 'import ctypes; assert ctypes.CDLL(None).setdomainname(b"example.org", 11) == 0' || fail "setdomainname"
for round in 1 2 3 4 5 6 7 8 9 10; do
    vz chkpnt 102 || fail "chkpnt round $round"
    status_is 102 dumped || fail "status after chkpnt round $round: $(vz status 102)"
    [ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/102" ] && fail "chkpnt left the cgroup (round $round)"
    last=$(tail -n1 "$VZ_DIR/private/102/upper/root/log")
    vz restore 102 || fail "restore round $round"
    status_is 102 running || fail "status after restore round $round: $(vz status 102)"
    [ -d "$VZ_DIR/dump/102" ] && fail "the default image stays after restore (round $round)"
    until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/102/upper/root/log) -gt $last ]" || fail "the loop does not go on after restore round $round"
    log_contiguous 102 || fail "the log has a gap or restarted (round $round): $(tail -n5 $VZ_DIR/private/102/upper/root/log)"
    count=$(vz exec 102 cat /tmp/count)
    [ "$count" -gt "$last" ] || fail "/tmp/count $count is not past $last (round $round)"
    [ "$(vz exec 102 hostname)" = loop1 ] || fail "hostname lost (round $round)"
    [ "$(vz exec 102 cat /proc/sys/kernel/domainname)" = example.org ] || fail "domain name lost (round $round)"
    pids=$(long_lived)
    [ "$pids" = "$pids_before" ] || fail "PIDs changed: [$pids_before] -> [$pids]"
done
vz chkpnt 102 --leave-running --dumpfile "$WORK/snap" || fail "chkpnt --leave-running"
status_is 102 running || fail "a snapshot stopped the VE"
snap=$(tail -n1 "$VZ_DIR/private/102/upper/root/log")
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/102/upper/root/log) -gt $((snap + 3)) ]" || fail "the VE does not go on after a snapshot"
vz stop 102 || fail "stop"
vz restore 102 --dumpfile "$WORK/snap" || fail "restore of the snapshot"
[ -d "$WORK/snap" ] || fail "a --dumpfile image was removed"
until_true 5 vz exec 102 true || fail "exec after the snapshot's restore"
count=$(vz exec 102 cat /tmp/count)
echo "snapshot at $snap, count now $count"
echo OK
"#;

/// A VE whose init has a tree of 10 processes in two sessions and three process groups:
/// after a checkpoint and restore, every PID, parent, group and session is the same.
const TREE_TWO_SESSIONS: &str = r#"
TREE='for i in 1 2 3; do sleep 1000 & done; setsid sh -c "for i in 1 2; do sleep 1000 & done; sh -c \"sleep 1000 & sleep 1000 & wait\" & wait" & wait'
vz create 103 --command "$TREE" || fail "create"
vz start 103 || fail "start"
until_true 5 ve_nproc_at_least 103 12 || fail "the tree is not complete: $(vz exec 103 ps -eo pid,ppid,pgid,sid,comm)"
tree() { vz exec 103 ps -eo pid=,ppid=,pgid=,sid=,comm= | grep -v ' ps$' | sort -n; }
before=$(tree)
n=$(echo "$before" | wc -l)
[ "$n" = 11 ] || fail "expected init + 10 processes, got $n: $before"
[ "$(echo "$before" | awk '{print $4}' | sort -u | wc -l)" = 2 ] || fail "expected 2 sessions: $before"
vz chkpnt 103 || fail "chkpnt"
vz restore 103 || fail "restore"
after=$(tree)
[ "$before" = "$after" ] || fail "tree changed: before
$before
after
$after"
echo OK
"#;

/// Failures leave things as they were: a chkpnt that meets what it cannot dump (a packet socket, a
/// nested PID namespace) leaves the VE running and thawed; a restore over a running VE is refused; a restore that fails leaves
/// the VE absent of the host (no process, cgroup or mount) and its image in place.
const FAILURES: &str = r#"
vz create 104 --command 'exec python3 -c "import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); open(\"/tmp/ready\", \"w\"); time.sleep(1000)"' || fail "create"
vz start 104 || fail "start"
until_true 10 vz exec 104 test -e /tmp/ready || fail "python does not run"
out=$(vz chkpnt 104 2>&1) && fail "chkpnt of a VE with a socket succeeded"
echo "$out" | grep -q socket || fail "the error does not name the socket: $out"
status_is 104 running || fail "a failed chkpnt left the VE $(vz status 104)"
grep -q 'frozen 0' "/sys/fs/cgroup/unified/$VZ_CGROUP/104/cgroup.events" || fail "a failed chkpnt left the VE frozen"
[ -e "$VZ_DIR/dump/104" ] && fail "a failed chkpnt left an image"
vz stop 104 || fail "stop"
# A PID namespace inside the VE: refused, naming it, and the VE goes on.
vz create 106 --command 'unshare --pid --fork sh -c "touch /tmp/ready; exec sleep 1000"' || fail "create 106"
vz start 106 || fail "start 106"
until_true 10 vz exec 106 test -e /tmp/ready || fail "the nested namespace does not start"
out=$(vz chkpnt 106 2>&1) && fail "chkpnt of a VE with a nested PID namespace succeeded"
echo "$out" | grep -q "nested PID namespace" || fail "the error does not name the nested namespace: $out"
status_is 106 running || fail "a failed chkpnt left VE 106 $(vz status 106)"
vz stop 106 || fail "stop 106"
vz create 105 --command "$LOOP" || fail "create 105"
vz start 105 || fail "start 105"
until_true 5 vz exec 105 test -s /tmp/count || fail "the loop does not run"
vz chkpnt 105 --leave-running --dumpfile "$WORK/img" || fail "chkpnt"
out=$(vz restore 105 --dumpfile "$WORK/img" 2>&1) && fail "restore over a running VE succeeded"
echo "$out" | grep -q "running" || fail "the refusal does not say the VE runs: $out"
vz stop 105 || fail "stop 105"
# A restore that fails once the VE's init exists (a file it holds open is gone from the
# private area): nothing of it stays, and the image is still there to try again.
vz create 109 --command 'exec python3 -c "f = open(\"/root/data\"); open(\"/tmp/ready\", \"w\"); import time; time.sleep(1000)"' || fail "create 109"
mkdir -p "$VZ_DIR/private/109/upper/root" && echo data > "$VZ_DIR/private/109/upper/root/data"
vz start 109 || fail "start 109"
until_true 10 vz exec 109 test -e /tmp/ready || fail "109 does not get ready"
vz chkpnt 109 || fail "chkpnt 109"
rm "$VZ_DIR/private/109/upper/root/data"
out=$(vz restore 109 2>&1) && fail "restore without the open file succeeded"
echo "$out" | grep -q "/root/data" || fail "the error does not name the file: $out"
status_is 109 dumped || fail "status after a failed restore: $(vz status 109)"
[ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/109" ] && fail "a failed restore left the cgroup"
grep -q " $VZ_DIR/root/109 " /proc/self/mountinfo && fail "a failed restore left the root mounted"
pgrep -x python3 >/dev/null && fail "a failed restore left a process: $(pgrep -ax python3)"
echo data > "$VZ_DIR/private/109/upper/root/data"
vz restore 109 || fail "restore once the file is back"
vz exec 109 test -e /tmp/ready || fail "109 after its restore"
vz stop 109 || fail "stop 109"
# Damage the image's page store: the restore must fail before anything runs, and clean up.
printf 'XXXX' | dd of="$WORK/img/pages" bs=1 seek=5000 conv=notrunc 2>/dev/null
out=$(vz restore 105 --dumpfile "$WORK/img" 2>&1) && fail "restore of a damaged image succeeded"
echo "$out" | grep -qi "checksum\|crc" || fail "the error does not name the damage: $out"
status_is 105 stopped || fail "status after a failed restore: $(vz status 105)"
[ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/105" ] && fail "a failed restore left the cgroup"
grep -q " $VZ_DIR/root/105 " /proc/self/mountinfo && fail "a failed restore left the root mounted"
echo OK
"#;

/// Two processes of a VE share SysV shared memory (one segment by key, one removed while
/// attached), a semaphore set and a message queue; after a checkpoint and restore the
/// segments are at the same addresses with the same contents and still shared between the
/// two (a write of one is seen by the other), the ids and keys are the same, the semaphore
/// values and the messages (types, order) are as they were, and so is a POSIX message queue
/// (messages by priority).
const SYSV_IPC: &str = r#"
vz create 107 --command 'exec python3 /root/ipc.py' || fail "create"
mkdir -p "$VZ_DIR/private/107/upper/root"
cat > "$VZ_DIR/private/107/upper/root/ipc.py" <<'PY'
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_RMID, IPC_NOWAIT, SETVAL, GETVAL = 0o1000, 0, 0o4000, 16, 12
SIZE = 1 << 20
def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
shm = libc.shmget(0x1234, SIZE, IPC_CREAT | 0o600); check(shm >= 0, "shmget")
addr = libc.shmat(shm, None, 0)
buf = (ctypes.c_char * SIZE).from_address(addr)
buf[0:11] = b"hello world"; buf[700000] = b"Z"
gone = libc.shmget(0, 8192, IPC_CREAT | 0o600)
gaddr = libc.shmat(gone, None, 0)
gbuf = (ctypes.c_char * 8192).from_address(gaddr)
gbuf[5000] = b"R"
libc.shmctl(gone, IPC_RMID, None)
sem = libc.semget(0x2345, 3, IPC_CREAT | 0o600); check(sem >= 0, "semget")
for i, v in enumerate([7, 42, 0]):
    libc.semctl(sem, i, SETVAL, v)
msq = libc.msgget(0x3456, IPC_CREAT | 0o600); check(msq >= 0, "msgget")
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]
for t, text in [(1, b"first"), (5, b"second"), (2, b"third")]:
    m = Msg(t, text)
    check(libc.msgsnd(msq, ctypes.byref(m), len(text), 0) == 0, "msgsnd")
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
mq = libc.mq_open(b"/vzq", os.O_CREAT | os.O_RDWR, 0o600, None); check(mq >= 0, "mq_open")
for prio, text in [(1, b"low"), (9, b"high"), (1, b"low2")]:
    check(libc.mq_send(mq, text, len(text), prio) == 0, "mq_send")
ids = (shm, gone, sem, msq)
if os.fork() == 0:
    # The child mirrors byte 100 into byte 200 of the shared segment, for ever.
    while True:
        buf[200] = buf[100]
        time.sleep(0.01)
open("/tmp/ready", "w").close()
while not os.path.exists("/tmp/check"):
    time.sleep(0.05)
try:
    check(bytes(buf[0:11]) == b"hello world" and buf[700000] == b"Z", "segment contents")
    check(gbuf[5000] == b"R", "contents of the removed segment")
    check((libc.shmget(0x1234, 0, 0), libc.semget(0x2345, 0, 0), libc.msgget(0x3456, 0, 0)) == (shm, sem, msq), "ids by key")
    check([libc.semctl(sem, i, GETVAL) for i in range(3)] == [7, 42, 0], "semaphore values")
    got = []
    for _ in range(3):
        m = Msg()
        n = libc.msgrcv(msq, ctypes.byref(m), 64, 0, IPC_NOWAIT)
        check(n >= 0, "msgrcv")
        got.append((m.mtype, m.mtext[:n]))
    check(got == [(1, b"first"), (5, b"second"), (2, b"third")], "messages: %r" % got)
    got = []
    for _ in range(3):
        b = ctypes.create_string_buffer(8192); prio = ctypes.c_uint()
        n = libc.mq_receive(mq, b, 8192, ctypes.byref(prio))
        check(n >= 0, "mq_receive")
        got.append((prio.value, b.raw[:n]))
    check(got == [(9, b"high"), (1, b"low"), (1, b"low2")], "POSIX queue: %r" % got)
    buf[100] = b"Q"
    time.sleep(0.3)
    check(buf[200] == b"Q", "the segment is not shared with the child any more")
    maps = open("/proc/self/maps").read()
    check(("%x-" % addr) in maps and ("%x-" % gaddr) in maps, "attachments moved")
    open("/tmp/result", "w").write("PASS")
except SystemExit as e:
    open("/tmp/result", "w").write(str(e))
time.sleep(100000)
PY
vz start 107 || fail "start"
until_true 10 vz exec 107 test -e /tmp/ready || fail "the IPC workload does not get ready"
vz exec 107 ipcs | grep -q 0x00001234 || fail "ipcs in the VE does not show the segment"
vz exec 107 sh -c 'echo 32768 > /proc/sys/kernel/msgmnb && echo 100 > /proc/sys/fs/mqueue/msg_max' || fail "set the VE's IPC sysctls"
vz exec 107 test -e /dev/mqueue/vzq || fail "the POSIX queue is not in the VE's mqueue mount"
ipcs -m | grep -q 0x00001234 && fail "the VE's segment is in the host's IPC namespace"
vz chkpnt 107 || fail "chkpnt"
"$BIN/vzcpt" show -D "$VZ_DIR/dump/107" | grep -q '^== ipc' || fail "the image has no ipc record"
vz restore 107 || fail "restore"
[ "$(vz exec 107 cat /proc/sys/kernel/msgmnb)" = 32768 ] || fail "kernel.msgmnb of the VE lost"
[ "$(vz exec 107 cat /proc/sys/fs/mqueue/msg_max)" = 100 ] || fail "fs.mqueue.msg_max of the VE lost"
[ "$(cat /proc/sys/kernel/msgmnb)" = 32768 ] && fail "the VE's sysctl leaked to the host"
vz exec 107 touch /tmp/check || fail "exec"
until_true 10 vz exec 107 test -e /tmp/result || fail "no result"
res=$(vz exec 107 cat /tmp/result)
[ "$res" = PASS ] || fail "after restore: $res"
echo OK
"#;

/// The VE's tmpfs mounts come back whole: every kind of entry in /tmp (nested directories,
/// a sparse file with its hole, empty, setuid and sticky modes, foreign owners, symbolic links
/// dangling or not, hard links, a FIFO, a device node, xattrs, odd names) and a tmpfs mounted
/// inside it, compared by a manifest of everything `lstat`, the data and the holes say; and the
/// mount table is the same (order, options), with a read-only bind mount of the root file system.
const TMPFS_CONTENTS: &str = r#"
vz create 108 || fail "create"
mkdir -p "$VZ_DIR/private/108/upper/root"
cat > "$VZ_DIR/private/108/upper/root/manifest.py" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    dirs.sort()
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        st = os.lstat(p)
        line = [repr(os.path.relpath(p, root)), oct(st.st_mode), st.st_uid, st.st_gid, st.st_nlink,
                st.st_mtime_ns, st.st_rdev if stat.S_ISCHR(st.st_mode) else 0]
        if stat.S_ISLNK(st.st_mode):
            line.append(os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            data = open(p, "rb").read()
            fd = os.open(p, os.O_RDONLY)
            line += [len(data), hashlib.sha256(data).hexdigest(), os.lseek(fd, 0, os.SEEK_HOLE) if data else 0]
            os.close(fd)
            line.append(sorted((a, os.getxattr(p, a)) for a in os.listxattr(p)))
        elif stat.S_ISDIR(st.st_mode):
            line.append(sorted((a, os.getxattr(p, a)) for a in os.listxattr(p)))
        out.append(" ".join(map(str, line)))
inodes = {}
for d, dirs, files in os.walk(root):
    for n in files:
        st = os.lstat(os.path.join(d, n))
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault(st.st_ino, []).append(os.path.relpath(os.path.join(d, n), root))
out.append("links " + repr(sorted(sorted(v) for v in inodes.values())))
print("\n".join(out))
PY
vz start 108 || fail "start"
cat > "$VZ_DIR/private/108/upper/root/fill.sh" <<'SH'
set -e
cd /tmp
mkdir -p a/b/c
echo deep > a/b/c/file
python3 -c 'f = open("sparse", "wb"); f.write(b"x" * 5000); f.seek(3 << 20); f.write(b"end")'
: > empty
echo s > setuid; chmod 4755 setuid
mkdir sticky; chmod 1777 sticky
echo owned > owned; chown 1234:5678 owned
ln -s /nowhere dangling; ln -s a/b/c/file link
echo shared > hard1; ln hard1 a/hard2
mkfifo fifo; mknod null c 1 3
echo x > "odd name
with newline"
python3 -c 'import os; os.setxattr("owned", "user.x", b"xv"); os.setxattr("a", "user.d", b"dv")'
mkdir inner; mount -t tmpfs -o size=1m,mode=700 tmpfs inner; echo in > inner/file
mkdir -p /root/bsrc /root/bdst; echo bound > /root/bsrc/f; mount --bind -o ro /root/bsrc /root/bdst
mount -o remount,bind,ro /root/bdst
SH
vz exec 108 sh /root/fill.sh || fail "fill /tmp"
vz exec 108 python3 /root/manifest.py /tmp > "$WORK/before" || fail "manifest before"
# The mount table without mount ids: point, per-mount options, type, source, super options
# (but overlayfs's uuid=on, which the kernel shows only on the first mount of a new upper layer:
# the VE's root is the host's business, not the image's).
mounts() { vz exec 108 cat /proc/self/mountinfo | sed 's/,uuid=on//' | awk '{ sub(/ - /, " | "); $1 = $2 = $3 = ""; print }'; }
mounts > "$WORK/mounts-before"
grep -q '/root/bdst ro' "$WORK/mounts-before" || fail "no read-only bind mount: $(cat $WORK/mounts-before)"
grep -q "'inner/file'" "$WORK/before" || fail "the manifest misses the nested tmpfs: $(cat $WORK/before)"
grep -q "user.x" "$WORK/before" || fail "xattrs are not in the manifest (tmpfs without user xattrs?)"
vz chkpnt 108 || fail "chkpnt"
vz restore 108 || fail "restore"
vz exec 108 python3 /root/manifest.py /tmp > "$WORK/after" || fail "manifest after"
diff "$WORK/before" "$WORK/after" || fail "/tmp differs after restore"
mounts > "$WORK/mounts-after"
diff "$WORK/mounts-before" "$WORK/mounts-after" || fail "the mount table differs after restore"
[ "$(vz exec 108 cat /root/bdst/f)" = bound ] || fail "the bind mount does not show its source"
vz exec 108 sh -c 'echo x > /root/bdst/g' 2>/dev/null && fail "the bind mount is writable again"
echo OK
"#;

/// A VE with addresses (`--ipadd`, IPv4 and IPv6): reachable from the host through its veth
/// pair; during a checkpoint its addresses are blackholed on the host (dropped, not refused);
/// after the restore its links (same MAC), addresses and routes (one added by hand too) are
/// as they were and it is reachable again.
const NETWORK: &str = r#"
reply() { python3 -c 'import socket, sys; s = socket.create_connection((sys.argv[1], 7007), timeout=3); print(s.recv(100).decode())' "$1"; }
serve() { vz exec 210 python3 -c 'import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 7007)); s.listen(); open("/tmp/listening", "w"); c, a = s.accept(); c.send(b"hello from " + a[0].encode())' & }
vz create 210 --command "$LOOP" || fail "create"
vz set 210 --ipadd 10.99.1.5 --ipadd fd00::5 --save || fail "set --ipadd"
grep -q '10.99.1.5' "$VZ_DIR/conf/210.conf" || fail "ipadd not saved"
vz set 210 --ipadd 10.99.1.6 2>&1 | grep -q "need --save" || fail "a network change without --save was not refused"
vz start 210 || fail "start"
vz exec 210 ip -o addr show dev eth0 | grep -q 'inet 10.99.1.5/32' || fail "no address in the VE: $(vz exec 210 ip addr)"
vz exec 210 ip -o addr show dev eth0 | grep -q 'inet6 fd00::5/128' || fail "no IPv6 address in the VE"
ip route show 10.99.1.5 | grep -q 'dev veth210' || fail "no host route: $(ip route)"
rm -f "$VZ_DIR/private/210/upper/tmp-listening"
serve; until_true 10 vz exec 210 test -e /tmp/listening || fail "the server does not listen"
out=$(reply 10.99.1.5) || fail "cannot reach the VE"
[ "$out" = "hello from 10.99.0.1" ] || fail "reply: $out"
wait
vz exec 210 ip route add 10.200.0.0/16 dev eth0 metric 7 || fail "add a route in the VE"
links() { vz exec 210 ip -o link show dev eth0 | sed 's/.*link\/ether \([^ ]*\).*/\1/'; }
state() { vz exec 210 sh -c 'ip -o addr show dev eth0 | grep -v fe80 | awk "{print \$3, \$4}"; ip route; ip -6 route | grep -v fe80'; }
mac=$(links); before=$(state)
vz chkpnt 210 || fail "chkpnt"
ip route show type blackhole | grep -q 10.99.1.5 || fail "the VE's address is not blackholed while dumped: $(ip route show table all | head)"
vz restore 210 || fail "restore"
[ "$(links)" = "$mac" ] || fail "MAC changed: $mac -> $(links)"
after=$(state)
[ "$before" = "$after" ] || fail "addresses or routes changed:
$before
--
$after"
ip route show 10.99.1.5 | grep -q 'dev veth210' || fail "no host route after restore: $(ip route)"
ip route show type blackhole | grep -q 10.99.1.5 && fail "still blackholed after restore"
vz exec 210 rm -f /tmp/listening
serve; until_true 10 vz exec 210 test -e /tmp/listening || fail "the server does not listen after restore"
out=$(reply 10.99.1.5) || fail "cannot reach the VE after restore"
[ "$out" = "hello from 10.99.0.1" ] || fail "reply after restore: $out"
wait
vz stop 210 || fail "stop"
ip link show veth210 2>/dev/null && fail "stop left the host end"
ip route show 10.99.1.5 | grep -q . && fail "stop left a route: $(ip route show 10.99.1.5)"
echo OK
"#;

/// Inotify watches on the VE's overlay root (which gives no file handles: the dump finds
/// the watched inode by searching the mount) and on a tmpfs come back with their watch
/// descriptors, and report an event made after the restore.
const INOTIFY: &str = r#"
vz create 111 --command 'exec python3 /root/ino.py' || fail "create"
mkdir -p "$VZ_DIR/private/111/upper/root/watched"
cat > "$VZ_DIR/private/111/upper/root/ino.py" <<'PY'
import ctypes, os, time, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
w1 = libc.inotify_add_watch(fd, b"/root/watched", 0x100)  # IN_CREATE
w2 = libc.inotify_add_watch(fd, b"/tmp", 0x100)
open("/tmp/ready", "w").close()
while not os.path.exists("/tmp/go"):
    time.sleep(0.05)
open("/root/watched/new", "w").close()
got = []
deadline = time.time() + 5
while (w1, b"new") not in got and time.time() < deadline:
    b = os.read(fd, 4096)
    off = 0
    while off < len(b):
        wd, mask, cookie, ln = struct.unpack("iIII", b[off:off + 16])
        got.append((wd, b[off + 16:off + 16 + ln].rstrip(b"\0")))
        off += 16 + ln
ok = (w1, b"new") in got and (w2, b"go") in got
open("/root/result", "w").write("PASS" if ok else "FAIL events %r" % got)
time.sleep(100000)
PY
vz start 111 || fail "start"
until_true 10 vz exec 111 test -e /tmp/ready || fail "not ready"
vz chkpnt 111 || fail "chkpnt"
vz restore 111 || fail "restore"
vz exec 111 touch /tmp/go || fail "exec"
until_true 10 test -e "$VZ_DIR/private/111/upper/root/result" || fail "no result"
[ "$(cat $VZ_DIR/private/111/upper/root/result)" = PASS ] || fail "$(cat $VZ_DIR/private/111/upper/root/result)"
echo OK
"#;

/// Bridge mode: the VE's host end joins a bridge of the host, its address keeps its prefix;
/// the host reaches it through the bridge before and after a checkpoint and restore.
const BRIDGE: &str = r#"
ip link add br9 type bridge && ip addr add 10.99.5.1/24 dev br9 && ip link set br9 up || fail "bridge"
vz create 112 --command 'exec python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((\"0.0.0.0\", 7300)); s.listen()
while True:
    c, a = s.accept(); c.send(a[0].encode()); c.close()
"' || fail "create"
vz set 112 --ipadd 10.99.5.2/24 --bridge br9 --save || fail "set"
vz start 112 || fail "start"
ip link show veth112 | grep -q 'master br9' || fail "the host end is not on the bridge: $(ip link show veth112)"
ask() { python3 -c 'import socket; s = socket.create_connection(("10.99.5.2", 7300), timeout=3); print(s.recv(100).decode())'; }
until_true 10 ask || fail "cannot reach the VE through the bridge"
[ "$(ask)" = 10.99.5.1 ] || fail "reply: $(ask)"
vz chkpnt 112 || fail "chkpnt"
vz restore 112 || fail "restore"
ip link show veth112 | grep -q 'master br9' || fail "the new host end is not on the bridge"
until_true 10 ask || fail "cannot reach the VE after restore"
vz exec 112 ip -o addr show dev eth0 | grep -q '10.99.5.2/24' || fail "address after restore: $(vz exec 112 ip -o addr)"
echo OK
"#;

/// A restore that hits the VE's memory limit (lowered after the checkpoint) fails with an
/// error that says so, leaves nothing running and keeps the image; with the limit raised it
/// succeeds.
const MEMORY_LIMIT: &str = r#"
vz create 113 --command 'exec python3 -c "import time; b = bytearray(b\"x\" * (96 << 20)); open(\"/tmp/ready\", \"w\"); time.sleep(100000)"' || fail "create"
vz start 113 || fail "start"
until_true 20 vz exec 113 test -e /tmp/ready || fail "not ready"
vz chkpnt 113 || fail "chkpnt"
vz set 113 --memory 32M --save || fail "set --memory"
out=$(vz restore 113 2>&1) && fail "a restore over the memory limit succeeded"
echo "$out" | grep -q "memory limit" || fail "the error does not name the memory limit: $out"
status_is 113 dumped || fail "status after the failed restore: $(vz status 113)"
[ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/113" ] && fail "the failed restore left the cgroup"
pgrep -x python3 >/dev/null && fail "the failed restore left a process"
vz set 113 --memory 512M --save || fail "raise the limit"
vz restore 113 || fail "restore with room"
vz exec 113 test -e /tmp/ready || fail "the VE after its restore"
echo OK
"#;

/// `--root DIR`: the VE runs on a root of its own (here a minimal one: dash, sleep and their
/// libraries) instead of the host's, with its changes in the private area; it checkpoints and
/// restores like any VE.
const OWN_ROOT: &str = r#"
R="$WORK/rootfs"
mkdir -p "$R/bin" "$R/lib/x86_64-linux-gnu" "$R/lib64" "$R/root" "$R/etc"
cp /bin/dash "$R/bin/sh" && cp /bin/sleep "$R/bin/sleep" || fail "copy programs"
cp /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libgcc_s.so.1 "$R/lib/x86_64-linux-gnu/" || fail "copy libraries"
cp /lib64/ld-linux-x86-64.so.2 "$R/lib64/" || fail "copy the loader"
echo own-root > "$R/marker"
vz create 114 --root "$R" --command 'i=0; while :; do i=$((i+1)); echo $i >> /root/log; sleep 0.05; done' || fail "create --root"
vz start 114 || fail "start"
until_true 10 test -s "$VZ_DIR/private/114/upper/root/log" || fail "the VE on its own root does not run"
[ "$(vz exec 114 sh -c 'read x < /marker; echo $x')" = own-root ] || fail "the VE does not see its root"
vz exec 114 sh -c '[ ! -e /usr/bin/python3 ]' || fail "the VE sees the host's files"
[ -e "$R/root/log" ] && fail "the VE wrote into its base instead of its private area"
last=$(tail -n1 "$VZ_DIR/private/114/upper/root/log")
vz chkpnt 114 || fail "chkpnt"
vz restore 114 || fail "restore"
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/114/upper/root/log) -gt $last ]" || fail "the loop does not go on after restore"
log_contiguous 114 || fail "the log has a gap or restarted"
echo OK
"#;

/// A checkpoint failing at each phase of the dump (failure points: tree seized and TCP in
/// repair mode; pages written; every record written, before the image is put in place):
/// the VE goes on exactly as it was: running, not frozen, no task stopped, every task's
/// blocked-signal mask as before, its network unlocked and its TCP connection working, no
/// image and no temporary directory; then a real checkpoint and restore work.
/// A VE ($C, address $ADDR) whose python serves an echo port and appends a count to
/// /root/log, and a client outside (in the background) that pings it all along until
/// $WORK/stop, then writes PASS or FAIL to $WORK/client. Then `masks`: every task's blocked
/// mask, and `undone POINT`: the VE runs as it was (not frozen, no task stopped, masks as
/// before, network unlocked, no image, no journal, goes on).
const ECHO_VE: &str = r#"
vz create $C --command 'exec python3 /root/echo.py' || fail "create"
vz set $C --ipadd $ADDR --save || fail "ipadd"
mkdir -p "$VZ_DIR/private/$C/upper/root"
cat > "$VZ_DIR/private/$C/upper/root/echo.py" <<'PY'
import socket, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7200)); s.listen()
def count():
    i = 0
    while True:
        i += 1
        open("/root/log", "a").write("%d\n" % i)
        time.sleep(0.05)
threading.Thread(target=count, daemon=True).start()
c, _ = s.accept()
while True:
    b = c.recv(100)
    if not b:
        break
    c.sendall(b)
PY
vz start $C || fail "start"
python3 - "$WORK" "$ADDR" <<'PY' &
import os, socket, sys, time
w = sys.argv[1]
for _ in range(200):
    try:
        s = socket.create_connection((sys.argv[2], 7200), timeout=20); break
    except OSError:
        time.sleep(0.05)
n = 0
try:
    while not os.path.exists(w + "/stop"):
        msg = b"ping %d" % n
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = s.recv(100)
            assert b, "the connection closed"
            got += b
        assert got == msg, (got, msg)
        n += 1
        if n == 1:
            open(w + "/connected", "w").close()
        time.sleep(0.02)
    open(w + "/client", "w").write("PASS %d" % n)
except Exception as e:
    open(w + "/client", "w").write("FAIL %r after %d" % (e, n))
PY
until_true 20 test -e "$WORK/connected" || fail "the client does not connect"
# Every task's blocked mask, sorted (by value: a restore gives the tasks new host PIDs).
masks() { for p in $(cat /sys/fs/cgroup/unified/$VZ_CGROUP/$C/cgroup.procs); do for t in /proc/$p/task/*; do awk '/^SigBlk/ { print $2 }' $t/status; done; done | sort | tr '\n' ' '; }
before=$(masks)
undone() {
    status_is $C running || fail "$1: the VE is $(vz status $C)"
    grep -q 'frozen 0' "/sys/fs/cgroup/unified/$VZ_CGROUP/$C/cgroup.events" || fail "$1: left frozen"
    for p in $(cat /sys/fs/cgroup/unified/$VZ_CGROUP/$C/cgroup.procs); do
        grep -q '^State:.*[tT]' /proc/$p/status && fail "$1: task $p is left stopped"
    done
    [ "$(masks)" = "$before" ] || fail "$1: signal masks changed: $(masks) were $before"
    ls "$VZ_DIR/dump" 2>/dev/null | grep -q "$C" && fail "$1: left in $VZ_DIR/dump: $(ls $VZ_DIR/dump)"
    ip route show $ADDR | grep -q blackhole && fail "$1: the network stays locked"
    local n=$(wc -l < "$VZ_DIR/private/$C/upper/root/log")
    until_true 5 sh -c "[ \$(wc -l < $VZ_DIR/private/$C/upper/root/log) -gt $n ]" || fail "$1: the VE does not go on"
}
"#;

const DUMP_FAILURE_POINTS: &str = r#"
for point in dump.after-seize dump.after-pages dump.before-commit; do
    out=$(VZCPT_FAULT=$point vz chkpnt $C 2>&1) && fail "$point: the checkpoint succeeded"
    echo "$out" | grep -q "$point" || fail "$point: the error does not say where: $out"
    undone "$point"
done
vz chkpnt $C && vz restore $C || fail "a real checkpoint and restore"
touch "$WORK/stop"; wait
case "$(cat $WORK/client)" in PASS*) ;; *) fail "client: $(cat $WORK/client)";; esac
echo OK
"#;

/// `vzctl chkpnt` SIGKILLed at each phase of the dump (failure points with the `kill`
/// action): the next command undoes what it left (see `cpt::journal`) and `vzctl status`
/// tells the truth: running as it was before the image was complete, dumped (and
/// restorable, its client's connection going on) after.
const KILLED_CHKPNT: &str = r#"
for point in dump.after-seize dump.after-pages dump.before-commit; do
    VZCPT_FAULT=$point:kill vz chkpnt $C 2>/dev/null; rc=$?
    [ $rc = 137 ] || fail "$point: vzctl was not killed (exit $rc)"
    undone "killed at $point"
done
VZCPT_FAULT=chkpnt.before-finish:kill vz chkpnt $C 2>/dev/null
status_is $C dumped || fail "killed with the image complete: the VE is $(vz status $C)"
vz restore $C || fail "restore after a killed checkpoint"
undone "restored after a killed checkpoint"
touch "$WORK/stop"; wait
case "$(cat $WORK/client)" in PASS*) ;; *) fail "client: $(cat $WORK/client)";; esac
echo OK
"#;

/// Two processes of a VE connected by TCP over the VE's own loopback, IPv4 and IPv6, each
/// streaming numbered bytes to the other and checking every byte it reads: through two
/// checkpoint/restore cycles and a `--leave-running` snapshot, no byte is lost, doubled or
/// reordered and neither end sees a reset; the connection is the same one (same ports).
const TCP_INSIDE_VE: &str = r#"
vz create 152 --command 'exec python3 /root/tcp2.py' || fail "create"
mkdir -p "$VZ_DIR/private/152/upper/root"
cat > "$VZ_DIR/private/152/upper/root/tcp2.py" <<'PY'
import os, socket, sys, time
def run(family, host, port, tag):
    ls = socket.socket(family); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port)); ls.listen()
    if os.fork() == 0:
        s = socket.create_connection((host, port)); role = "client"
    else:
        s, _ = ls.accept(); role = "server"
    me = s.getsockname()[1], s.getpeername()[1]
    s.setblocking(False)
    sent = got = 0
    while True:
        try:
            sent += s.send(bytes((sent + i) % 251 for i in range(512)))
        except BlockingIOError:
            pass
        try:
            b = s.recv(65536)
            if not b:
                raise SystemExit("%s %s: end of file after %d bytes" % (tag, role, got))
            for x in b:
                if x != got % 251:
                    open("/root/%s-%s" % (tag, role), "w").write("FAIL byte %d" % got); raise SystemExit
                got += 1
        except BlockingIOError:
            pass
        open("/root/%s-%s.tmp" % (tag, role), "w").write("%d %d %d %d" % (got, sent, me[0], me[1]))
        os.rename("/root/%s-%s.tmp" % (tag, role), "/root/%s-%s" % (tag, role))
        time.sleep(0.005)
if os.fork() == 0:
    run(socket.AF_INET6, "::1", 7301, "v6")
run(socket.AF_INET, "127.0.0.1", 7300, "v4")
PY
vz start 152 || fail "start"
R="$VZ_DIR/private/152/upper/root"
ends="v4-client v4-server v6-client v6-server"
until_true 20 sh -c "for e in $ends; do test -s $R/\$e || exit 1; done" || fail "the streams do not start"
got() { cut -d' ' -f1 "$R/$1"; }
ports() { cut -d' ' -f3,4 "$R/$1"; }
declare -A p0; for e in $ends; do p0[$e]=$(ports $e); done
step() { # what: every end reads on, from the same connection
    for e in $ends; do
        grep -q FAIL "$R/$e" && fail "$1: $e: $(cat $R/$e)"
        local n=$(got $e)
        until_true 10 sh -c "[ \$(cut -d' ' -f1 $R/$e) -gt $((n + 4096)) ]" || fail "$1: $e stopped at $(cat $R/$e)"
        [ "$(ports $e)" = "${p0[$e]}" ] || fail "$1: $e is another connection: $(ports $e), was ${p0[$e]}"
    done
    ve_nproc_at_least 152 5 || fail "$1: a process of the VE is gone"
}
step "before"
for i in 1 2; do
    vz chkpnt 152 || fail "chkpnt $i"
    vz restore 152 || fail "restore $i"
    step "restore $i"
done
vz chkpnt 152 --leave-running --dumpfile "$WORK/snap" || fail "snapshot"
step "snapshot"
echo OK
"#;

fn main() {
    tests::ve_harness::run_trials(vec![
        ("tcp_between_two_tasks_of_the_ve", TCP_INSIDE_VE.to_string()),
        (
            "dump_failure_points_leave_the_ve_as_it_was",
            format!("C=150; ADDR=10.99.6.1\n{ECHO_VE}\n{DUMP_FAILURE_POINTS}"),
        ),
        (
            "killed_chkpnt_is_undone_by_the_next_command",
            format!("C=151; ADDR=10.99.6.2\n{ECHO_VE}\n{KILLED_CHKPNT}"),
        ),
        ("lifecycle_verbs_and_refusals", LIFECYCLE.to_string()),
        (
            "shell_loop_ten_chkpnt_restore_cycles",
            SHELL_LOOP_CYCLES.to_string(),
        ),
        ("tree_of_ten_in_two_sessions", TREE_TWO_SESSIONS.to_string()),
        ("failures_leave_ve_as_it_was", FAILURES.to_string()),
        ("sysv_ipc_shared_by_two_processes", SYSV_IPC.to_string()),
        ("tmpfs_contents_kept_whole", TMPFS_CONTENTS.to_string()),
        ("network_links_addresses_routes_kept", NETWORK.to_string()),
        ("inotify_on_overlay_and_tmpfs", INOTIFY.to_string()),
        ("network_bridge_mode", BRIDGE.to_string()),
        (
            "restore_over_the_memory_limit_fails_cleanly",
            MEMORY_LIMIT.to_string(),
        ),
        ("own_root_dir", OWN_ROOT.to_string()),
    ])
}
