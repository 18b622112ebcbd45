//! SIGKILL of `vzctl chkpnt`, `vzctl restore` and `vzcpt dump -t` at seeded random moments
//! (issue 6, part 1), and at each kind of injected state of a remote syscall session.
//!
//! Each moment is drawn in `[0, D]`, `D` the measured duration of the command on this machine
//! (so the kills spread over the whole command), from `KILL_SEED` (default below; printed,
//! so a failure can be run again with the same moments). After each kill the rule of
//! DESIGN.md is checked: `vzctl status` tells the truth; a VE said running runs as it was
//! (not frozen, no task stopped, every task's signal mask as before, handlers working, its
//! network unlocked, its outside client's TCP connection echoing on); a VE said dumped is
//! brought back by `vzctl restore` and goes on; nothing is left (journal, restore marker,
//! temporary image, frozen cgroup). A bare tree's dumper killed leaves the tree running as
//! it was. Trials are bash scripts run by the VE harness (`tests::ve_harness`).

/// Default seed of the kill moments.
const DEFAULT_SEED: u64 = 20261123;

/// A VE ($C, address $ADDR) whose python (two processes, two threads in one) serves an echo
/// port, counts into /root/log, checks floating-point results all along, counts SIGUSR1 in
/// handlers (/root/usr1-parent, /root/usr1-child) and keeps SIGUSR2 blocked in one thread;
/// any wrong result goes to /root/FAIL. A client outside echoes through it all along, its
/// count in $WORK/n. Helpers: `masks`, `usr1_works`, `client_goes_on`, `undone WHAT`.
const VE: &str = r#"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
vz create $C --command 'exec python3 /root/echo.py' || fail "create"
vz set $C --ipadd $ADDR --save || fail "ipadd"
R="$VZ_DIR/private/$C/upper/root"
mkdir -p "$R"
cat > "$R/echo.py" <<'PY'
import math, os, signal, socket, threading, time
def fail(what):
    open("/root/FAIL", "a").write(what + "\n")
def put(path, text):
    # Whole or not at all: a reader never sees the file empty.
    open(path + ".tmp", "w").write(text)
    os.replace(path + ".tmp", path)
def handlers(role):
    n = [0]
    def on_usr1(*_):
        n[0] += 1
        put("/root/usr1-" + role, "%d" % n[0])
    signal.signal(signal.SIGUSR1, on_usr1)
def check_fp(role):
    x = 0.5
    while True:
        y = sum(math.sqrt(k + x) for k in range(300))
        z = sum(math.sqrt(k + x) for k in range(300))
        if y != z or abs(y - 3464.16) > 1:
            fail("%s: fp %r %r" % (role, y, z))
        time.sleep(0.003)
if os.fork() == 0:
    handlers("child")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    check_fp("child")
handlers("parent")
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7200)); s.listen()
def count():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    i = 0
    while True:
        i += 1
        open("/root/log", "a").write("%d\n" % i)
        time.sleep(0.05)
threading.Thread(target=count, daemon=True).start()
threading.Thread(target=check_fp, args=("parent",), daemon=True).start()
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
        s = socket.create_connection((sys.argv[2], 7200), timeout=30); break
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
        open(w + "/n.tmp", "w").write("%d" % n)
        os.rename(w + "/n.tmp", w + "/n")
        time.sleep(0.02)
    open(w + "/client", "w").write("PASS %d" % n)
except Exception as e:
    open(w + "/client", "w").write("FAIL %r after %d" % (e, n))
PY
until_true 20 test -s "$WORK/n" || fail "the client does not connect"
cg=/sys/fs/cgroup/unified/$VZ_CGROUP/$C
# Every task's blocked mask, sorted (by value: a restore gives the tasks new host PIDs).
masks() { for p in $(cat $cg/cgroup.procs); do for t in /proc/$p/task/*; do awk '/^SigBlk/ { print $2 }' $t/status; done; done | sort | tr '\n' ' '; }
pythons() { for p in $(cat $cg/cgroup.procs); do [ "$(cat /proc/$p/comm)" = python3 ] && echo $p; done; }
until_true 10 sh -c "[ \$(for p in \$(cat $cg/cgroup.procs); do cat /proc/\$p/comm; done | grep -c python3) = 2 ]" || fail "the VE's two pythons do not start"
sleep 0.3
before=$(masks)
# SIGUSR1 to both pythons: each handler counts it.
usr1_works() {
    local a=$(cat $R/usr1-parent 2>/dev/null || echo 0) b=$(cat $R/usr1-child 2>/dev/null || echo 0)
    for p in $(pythons); do kill -USR1 $p; done
    until_true 5 sh -c "[ \$(cat $R/usr1-parent 2>/dev/null || echo 0) -gt $a ] && [ \$(cat $R/usr1-child 2>/dev/null || echo 0) -gt $b ]"
}
client_goes_on() { local n=$(cat $WORK/n); until_true 10 sh -c "[ \$(cat $WORK/n) -gt $((n + 3)) ]"; }
leftovers() { ls -a "$VZ_DIR/dump" 2>/dev/null | grep -v '^\.\.\?$'; ls -d $WORK/snap* 2>/dev/null; }
undone() {
    status_is $C running || fail "$1: the VE is $(vz status $C)"
    grep -q 'frozen 0' "$cg/cgroup.events" || fail "$1: left frozen"
    for p in $(cat $cg/cgroup.procs); do
        grep -q '^State:.*[tT]' /proc/$p/status && fail "$1: task $p is left stopped"
    done
    [ "$(masks)" = "$before" ] || fail "$1: signal masks changed: $(masks) were $before"
    [ -z "$(leftovers)" ] || fail "$1: left behind: $(leftovers)"
    ip route show $ADDR | grep -q blackhole && fail "$1: the network stays locked"
    local n=$(wc -l < "$R/log")
    until_true 5 sh -c "[ \$(wc -l < $R/log) -gt $n ]" || fail "$1: the VE does not go on"
    usr1_works || fail "$1: a SIGUSR1 handler does not run"
    local c0=$(ms)
    client_goes_on || fail "$1: the client's connection stalls (at $(cat $WORK/n)): $(cat $WORK/client 2>/dev/null)"
    echo "  $1: the client went on within $(( $(ms) - c0 )) ms"
    [ -e "$R/FAIL" ] && fail "$1: the VE's own checks: $(cat $R/FAIL)"
    log_contiguous $C || fail "$1: the log has a gap or restarted"
    return 0
}
"#;

/// `vzctl chkpnt` (kill mode, and `--leave-running`, one after the other) SIGKILLed at each
/// kind of injected state (failure points), then at random moments.
const CHKPNT_KILLS: &str = r#"
undone "before any kill"
for point in remote.parked remote.entry remote.exit remote.batch; do
    VZCPT_FAULT=$point:kill "$BIN/vzctl" chkpnt $C 2>/dev/null; rc=$?
    [ $rc = 137 ] || fail "$point: vzctl was not killed (exit $rc)"
    undone "killed at $point"
done
# How long each takes here (the shorter of two runs: the machine is shared).
dk=999999; dl=999999
for run in 1 2; do
    t0=$(ms); vz chkpnt $C || fail "chkpnt"; t1=$(ms)
    vz restore $C || fail "restore"
    undone "a checkpoint and restore"
    t2=$(ms); vz chkpnt $C --leave-running --dumpfile $WORK/snap || fail "chkpnt --leave-running"; t3=$(ms)
    rm -rf $WORK/snap
    dk=$(( t1 - t0 < dk ? t1 - t0 : dk )); dl=$(( t3 - t2 < dl ? t3 - t2 : dl ))
done
echo "chkpnt takes $dk ms, --leave-running $dl ms: kills in [0, that], seed $SEED"
RANDOM=$SEED
for i in $(seq 1 20); do
    if [ $((i % 2)) = 1 ]; then
        args="chkpnt $C"; d=$(( RANDOM % (dk + 1) ))
    else
        args="chkpnt $C --leave-running --dumpfile $WORK/snap"; d=$(( RANDOM % (dl + 1) ))
    fi
    "$BIN/vzctl" $args 2>/dev/null &
    pid=$!
    sleep $((d / 1000)).$(printf %03d $((d % 1000)))
    kill -9 $pid 2>/dev/null
    wait $pid; rc=$?
    st=$(vz status $C)
    echo "kill $i: $args after $d ms: exit $rc, $st"
    case "$st" in
        *running) ;;
        *dumped)
            [ $((i % 2)) = 1 ] || fail "kill $i: a --leave-running checkpoint left the VE $st"
            vz restore $C || fail "kill $i: restore after a killed checkpoint" ;;
        *) fail "kill $i: status $st" ;;
    esac
    rm -rf $WORK/snap
    undone "kill $i ($args after $d ms, seed $SEED)"
done
touch "$WORK/stop"; wait
case "$(cat $WORK/client)" in PASS*) ;; *) fail "client: $(cat $WORK/client)";; esac
[ -n "${KILLS_VERBOSE:-}" ] && fail "KILLS_VERBOSE set: the moments above"
echo OK
"#;

/// `vzctl restore` SIGKILLed at random moments: the next status says dumped (nothing of the
/// half-restored VE runs) or running (the kill came after the release); either way the VE
/// then goes on from its image without a gap in its log.
const RESTORE_KILLS: &str = r#"
# Processes in another PID namespace than this script's: the VE's (the only one here).
ve_procs() { local me=$(readlink /proc/$$/ns/pid); for p in /proc/[0-9]*; do local ns=$(readlink $p/ns/pid 2>/dev/null) || continue; [ "$ns" != "$me" ] && echo ${p#/proc/}; done; }
vz create $C --command "$LOOP" || fail "create"
vz start $C || fail "start"
until_true 5 test -s "$VZ_DIR/private/$C/upper/root/log" || fail "the loop does not run"
D=999999
for run in 1 2; do
    vz chkpnt $C || fail "chkpnt"
    t0=$(ms); vz restore $C || fail "restore"; t1=$(ms)
    D=$(( t1 - t0 < D ? t1 - t0 : D ))
done
echo "restore takes $D ms: kills in [0, $D] ms, seed $SEED"
RANDOM=$SEED
for i in $(seq 1 10); do
    vz chkpnt $C || fail "chkpnt $i"
    d=$(( RANDOM % (D + 1) ))
    "$BIN/vzctl" restore $C 2>/dev/null &
    pid=$!
    sleep $((d / 1000)).$(printf %03d $((d % 1000)))
    kill -9 $pid 2>/dev/null
    wait $pid; rc=$?
    st=$(vz status $C)
    echo "kill $i: restore after $d ms: exit $rc, $st"
    case "$st" in
        *dumped)
            [ -d "/sys/fs/cgroup/unified/$VZ_CGROUP/$C" ] && fail "kill $i: the cgroup stays: $(cat /sys/fs/cgroup/unified/$VZ_CGROUP/$C/cgroup.procs)"
            ip link show veth$C >/dev/null 2>&1 && fail "kill $i: the host end stays"
            [ -n "$(ve_procs)" ] && fail "kill $i: a process of the VE runs: $(for p in $(ve_procs); do cat /proc/$p/cmdline | tr '\0' ' '; echo; done)"
            ls "$VZ_DIR/dump" | grep -q restoring && fail "kill $i: the restore marker stays"
            vz restore $C || fail "kill $i: restore after a killed restore" ;;
        *running) ;;
        *) fail "kill $i: status $st" ;;
    esac
    status_is $C running || fail "kill $i: $(vz status $C)"
    ls "$VZ_DIR/dump" | grep -q . && fail "kill $i: left in the dump directory: $(ls $VZ_DIR/dump)"
    last=$(tail -n1 "$VZ_DIR/private/$C/upper/root/log")
    until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/$C/upper/root/log) -gt $last ]" || fail "kill $i: the loop does not go on"
    log_contiguous $C || fail "kill $i (after $d ms, seed $SEED): the log has a gap or restarted: $(tail -n4 $VZ_DIR/private/$C/upper/root/log | tr '\n' ' ')"
done
[ -n "${KILLS_VERBOSE:-}" ] && fail "KILLS_VERBOSE set: the moments above"
echo OK
"#;

/// `vzcpt dump -t PID --leave-running` of a bare tree (two processes, three threads, the
/// same checks as the VE's) SIGKILLed at each injected state, then at random moments: the
/// tree runs on as it was: no task stopped, masks as before, handlers working, its own
/// floating-point checks passing. (No journal: a temporary image directory may stay.)
const TREE_KILLS: &str = r#"
# The tree's files on a tmpfs (of this script's mount namespace): its progress must not wait
# for the disk (a truncate on ext4 waits for discards, seconds on a busy host).
mkdir -p "$WORK/t" && mount -t tmpfs tree "$WORK/t" || fail "tmpfs"
IMG=$WORK/img
WORK=$WORK/t
cat > "$WORK/tree.py" <<'PY'
import math, os, signal, sys, threading, time
w = sys.argv[1]
def fail(what):
    open(w + "/FAIL", "a").write(what + "\n")
def put(path, text):
    # Whole or not at all: a reader never sees the file empty.
    open(path + ".tmp", "w").write(text)
    os.replace(path + ".tmp", path)
def handlers(role):
    n = [0]
    def on_usr1(*_):
        n[0] += 1
        put(w + "/usr1-" + role, "%d" % n[0])
    signal.signal(signal.SIGUSR1, on_usr1)
def check_fp(role):
    x = 0.5
    i = 0
    while True:
        y = sum(math.sqrt(k + x) for k in range(300))
        z = sum(math.sqrt(k + x) for k in range(300))
        if y != z or abs(y - 3464.16) > 1:
            fail("%s: fp %r %r" % (role, y, z))
        i += 1
        put(w + "/n-" + role, "%d" % i)
        time.sleep(0.003)
if os.fork() == 0:
    handlers("child")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    check_fp("child")
handlers("parent")
threading.Thread(target=check_fp, args=("thread",), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
check_fp("parent")
PY
python3 "$WORK/tree.py" "$WORK" &
P=$!
until_true 5 sh -c "test -s $WORK/n-child && test -s $WORK/n-thread && test -s $WORK/n-parent" || fail "the tree does not start"
tasks() { for p in $P $(cat /proc/$P/task/*/children); do ls -d /proc/$p/task/* ; done; }
# What each task does: state, wait channel, syscall, signals (for a failure's message).
diag() { for t in $(tasks); do echo "[$t $(awk '/^State|^SigBlk|^SigPnd|^ShdPnd|^TracerPid/ { printf "%s ", $2 }' $t/status) wchan=$(cat $t/wchan) syscall=$(cat $t/syscall)]"; done; }
tmasks() { for t in $(tasks); do awk '/^SigBlk/ { print $2 }' $t/status; done | sort | tr '\n' ' '; }
before=$(tmasks)
tree_as_before() {
    for t in $(tasks); do grep -q '^State:.*[tT]' $t/status && fail "$1: task $t is left stopped"; done
    [ "$(tmasks)" = "$before" ] || fail "$1: signal masks changed: $(tmasks) were $before"
    for r in parent child thread; do
        local n=$(cat $WORK/n-$r)
        until_true 5 sh -c "[ \$(cat $WORK/n-$r) -gt $n ]" || fail "$1: the $r does not go on: $(diag)"
    done
    local a=$(cat $WORK/usr1-parent 2>/dev/null || echo 0) b=$(cat $WORK/usr1-child 2>/dev/null || echo 0)
    kill -USR1 $P $(cat /proc/$P/task/*/children)
    until_true 5 sh -c "[ \$(cat $WORK/usr1-parent 2>/dev/null || echo 0) -gt $a ] && [ \$(cat $WORK/usr1-child 2>/dev/null || echo 0) -gt $b ]" || fail "$1: a SIGUSR1 handler does not run"
    [ -e "$WORK/FAIL" ] && fail "$1: the tree's own checks: $(cat $WORK/FAIL)"
    rm -rf $IMG*
    return 0
}
for point in remote.parked remote.entry remote.exit remote.batch; do
    VZCPT_FAULT=$point:kill "$VZCPT" dump -t $P -D $IMG --leave-running 2>/dev/null; rc=$?
    [ $rc = 137 ] || fail "$point: vzcpt was not killed (exit $rc)"
    tree_as_before "killed at $point"
done
D=999999
for run in 1 2; do
    t0=$(ms); "$VZCPT" dump -t $P -D $IMG --leave-running || fail "dump"; t1=$(ms)
    tree_as_before "a dump"
    D=$(( t1 - t0 < D ? t1 - t0 : D ))
done
echo "dump -t takes $D ms: kills in [0, $D] ms, seed $SEED"
RANDOM=$SEED
for i in $(seq 1 16); do
    d=$(( RANDOM % (D + 1) ))
    "$VZCPT" dump -t $P -D $IMG --leave-running 2>/dev/null &
    pid=$!
    sleep $((d / 1000)).$(printf %03d $((d % 1000)))
    kill -9 $pid 2>/dev/null
    wait $pid; rc=$?
    echo "kill $i: dump -t after $d ms: exit $rc"
    tree_as_before "kill $i (after $d ms, seed $SEED)"
done
[ -n "${KILLS_VERBOSE:-}" ] && fail "KILLS_VERBOSE set: the moments above"
echo OK
"#;

fn main() {
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("kills: KILL_SEED={seed} (set KILL_SEED to draw the same moments again)");
    // Bash's RANDOM takes a 32-bit seed.
    let seed = seed % (1 << 31);
    let helpers = "ms() { echo $(( $(date +%s%N) / 1000000 )); }\n";
    tests::ve_harness::run_trials(vec![
        (
            "chkpnt_killed_at_random_moments",
            format!("SEED={seed}; C=160; ADDR=10.99.7.1\n{VE}\n{CHKPNT_KILLS}"),
        ),
        (
            "restore_killed_at_random_moments",
            format!("SEED={seed}; C=161\n{helpers}{RESTORE_KILLS}"),
        ),
        (
            "bare_tree_dump_killed_at_random_moments",
            format!("SEED={seed}\n{helpers}{TREE_KILLS}"),
        ),
    ])
}
