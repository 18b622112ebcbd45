//! `vzmigrate` between two "hosts" on one machine: the test's own network namespace (host A)
//! and a second one joined to it by a veth pair (host B), each with its own `$VZ_DIR` and
//! cgroup root; B runs the destination daemon. See `tests::ve_harness` for the trial setup.

use tests::ve_harness::TWO_HOSTS;

/// A VE running a shell loop moves from A to B and back, five times: each time it runs on the
/// other host from where it was (memory, /tmp, its private area) and is gone from the first;
/// the figures are printed as JSON.
const MIGRATE_BACK_AND_FORTH: &str = r#"
# A runs a daemon too, for the way back.
"$BIN/vzmigrate" --listen 10.98.0.1:4422 > "$WORK/daemon-a.log" 2>&1 &
vz create 120 --hostname mover --command "$LOOP" || fail "create"
mkdir -p "$VZ_DIR/private/120/upper/root" && echo private > "$VZ_DIR/private/120/upper/root/note"
vz start 120 || fail "start"
until_true 10 vz exec 120 test -s /tmp/count || fail "the loop does not run"
check_runs_on() { # DIR NAME: VE 120 runs there, from where it was
    local dir=$1 last=$2
    until_true 5 sh -c "[ \$(tail -n1 $dir/private/120/upper/root/log) -gt $last ]" || fail "the loop does not go on ($dir)"
    awk 'NR != $1 { bad = 1 } END { exit bad }' "$dir/private/120/upper/root/log" || fail "the log has a gap or restarted ($dir)"
    [ "$(cat "$dir/private/120/upper/root/note")" = private ] || fail "the private area did not move ($dir)"
}
for trip in 1 2 3 4 5; do
    last=$(tail -n1 "$VZ_DIR/private/120/upper/root/log")
    out=$("$BIN/vzmigrate" --json 10.98.0.2 120 2>&1) || fail "migrate A->B (trip $trip): $out $(cat $WORK/daemon.log)"
    echo "trip $trip A->B: $out"
    echo "$out" | python3 -c 'import json,sys; r = json.load(sys.stdin); assert r["downtime_ms"] > 0 and r["image_bytes"] > 0, r' || fail "report: $out"
    status_is 120 absent || fail "VE 120 is still on A: $(vz status 120)"
    [ "$(b "$BIN/vzctl" status 120)" = "VE 120 running" ] || fail "VE 120 on B: $(b "$BIN/vzctl" status 120)"
    [ "$(b "$BIN/vzctl" exec 120 hostname)" = mover ] || fail "hostname on B"
    [ "$(b "$BIN/vzctl" exec 120 cat /tmp/count)" -ge "$last" ] || fail "/tmp did not move"
    check_runs_on "$VB" "$last"
    last=$(tail -n1 "$VB/private/120/upper/root/log")
    out=$(on_b "$BIN/vzmigrate" --json 10.98.0.1 120 2>&1) || fail "migrate B->A (trip $trip): $out $(cat $WORK/daemon-a.log)"
    echo "trip $trip B->A: $out"
    [ "$(b "$BIN/vzctl" status 120)" = "VE 120 absent" ] || fail "VE 120 is still on B"
    status_is 120 running || fail "VE 120 on A: $(vz status 120)"
    check_runs_on "$VZ_DIR" "$last"
done
echo OK
"#;

/// Refusals leave the VE running on the source: a destination where the CTID exists, and a
/// destination that does not trust the source (refused in the TLS handshake). Offline and
/// online (`$MODE`).
const REFUSALS: &str = r#"
vz create 121 --command "$LOOP" || fail "create"
vz start 121 || fail "start"
b "$BIN/vzctl" create 121 || fail "create 121 on B"
out=$("$BIN/vzmigrate" $MODE 10.98.0.2 121 2>&1) && fail "migration to a host where CTID 121 exists succeeded"
echo "$out" | grep -q "CTID 121 exists" || fail "the refusal does not say why: $out"
status_is 121 running || fail "a refused migration left VE 121 $(vz status 121)"
b "$BIN/vzctl" destroy 121 || fail "destroy 121 on B"
# A stranger: a third identity B does not trust.
VC="$WORK/c"; VZ_DIR="$VC" "$BIN/vzmigrate" keygen >/dev/null || fail "keygen C"
VZ_DIR="$VC" "$BIN/vzmigrate" trust "$fb" || fail "C trusts B"
mkdir -p "$VC/conf" && cp "$VZ_DIR/conf/121.conf" "$VC/conf/" 
out=$(VZ_DIR="$VC" VZ_CGROUP="$VZ_CGROUP" "$BIN/vzmigrate" $MODE 10.98.0.2 121 2>&1) && fail "an untrusted source was served"
echo "stranger: $out"
[ "$(b "$BIN/vzctl" status 121)" = "VE 121 absent" ] || fail "an untrusted source left something on B"
status_is 121 running || fail "VE 121 after the stranger: $(vz status 121)"
grep -q "refused\|failed" "$WORK/daemon.log" || fail "the daemon did not report the refused connection: $(cat $WORK/daemon.log)"
kill -0 %1 2>/dev/null || true
echo OK
"#;

/// The destination daemon is killed in the middle of a migration: the VE runs on the source
/// as before; the daemon's next start removes what had arrived; a new migration succeeds.
/// Offline and online (`$MODE`).
const DESTINATION_KILLED: &str = r#"
vz create 122 --command "$LOOP" || fail "create"
mkdir -p "$VZ_DIR/private/122/upper/root"
head -c 200M /dev/urandom > "$VZ_DIR/private/122/upper/root/big" || fail "big file"
vz start 122 || fail "start"
until_true 10 vz exec 122 test -s /tmp/count || fail "the loop does not run"
"$BIN/vzmigrate" $MODE 10.98.0.2 122 > "$WORK/m.out" 2>&1 &
M=$!
until_true 20 test -e "$VB/migrate/incoming/122" || fail "the migration does not start: $(cat $WORK/m.out)"
kill -9 $DAEMON
wait $M && fail "the migration succeeded without its destination"
echo "source: $(cat $WORK/m.out)"
status_is 122 running || fail "VE 122 on the source after the destination died: $(vz status 122)"
last=$(tail -n1 "$VZ_DIR/private/122/upper/root/log")
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/122/upper/root/log) -gt $last ]" || fail "the VE does not go on on the source"
[ -e "$VB/conf/122.conf" ] || echo "(nothing of VE 122 had arrived on B)"
on_b "$BIN/vzmigrate" --listen 10.98.0.2:4422 > "$WORK/daemon2.log" 2>&1 &
until_true 10 sh -c "[ ! -e $VB/migrate/incoming/122 ]" || fail "the restarted daemon did not clean up: $(cat $WORK/daemon2.log)"
[ "$(b "$BIN/vzctl" status 122)" = "VE 122 absent" ] || fail "VE 122 left on B: $(b "$BIN/vzctl" status 122)"
[ -e "$VB/private/122" ] && fail "the private area of VE 122 was left on B"
"$BIN/vzmigrate" $MODE 10.98.0.2 122 || fail "the migration after the daemon's restart: $(cat $WORK/daemon2.log)"
[ "$(b "$BIN/vzctl" status 122)" = "VE 122 running" ] || fail "VE 122 on B after the second try"
cmp "$VB/private/122/upper/root/big" "$VZ_DIR/private/122/upper/root/big" 2>/dev/null
status_is 122 absent || fail "VE 122 still on A"
echo OK
"#;

/// Online migration of a VE whose program keeps writing its memory (64 MiB, about 2 MB/s) and
/// checks all of it every half second against what it wrote: A to B with the default budget,
/// then back with a budget so small that the rounds run to their limit, compressed. After each
/// move the program goes on and its checks find every page as it left it.
const ONLINE: &str = r#"
vz create 123 --hostname writer --command "python3 /root/mw.py" || fail "create"
mkdir -p "$VZ_DIR/private/123/upper/root"
cat > "$VZ_DIR/private/123/upper/root/mw.py" <<'PY'
import os, random, struct, time
PAGES = 16384
buf = bytearray(PAGES * 4096)
gen = [0] * PAGES
page = lambda i, g: struct.pack("<QQ", i, g) * 256
for i in range(PAGES):
    buf[i * 4096:(i + 1) * 4096] = page(i, 0)
log = open("/root/memlog", "a", buffering=1)
log.write("ready\n")
checks = 0
last = time.monotonic()
while True:
    for _ in range(5):
        i = random.randrange(PAGES)
        gen[i] += 1
        buf[i * 4096:(i + 1) * 4096] = page(i, gen[i])
    time.sleep(0.01)
    if time.monotonic() - last > 0.5:
        bad = [i for i in range(PAGES) if buf[i * 4096:(i + 1) * 4096] != page(i, gen[i])]
        checks += 1
        log.write(("BAD %d pages, first %d" % (len(bad), bad[0]) if bad else "ok %d %d" % (checks, sum(gen))) + "\n")
        last = time.monotonic()
PY
vz start 123 || fail "start"
log_a="$VZ_DIR/private/123/upper/root/memlog"
log_b="$VB/private/123/upper/root/memlog"
until_true 20 grep -q '^ok' "$log_a" || fail "the writer does not run: $(cat $log_a)"
checks_go_on() { # LOG: two more good checks after now, none bad
    local n=$(grep -c '^ok' "$1")
    until_true 10 sh -c "[ \$(grep -c '^ok' $1) -ge $((n + 2)) ]" || fail "the writer's checks do not go on: $(tail -3 $1)"
    grep BAD "$1" && fail "the writer found its memory changed"
    return 0
}
out=$("$BIN/vzmigrate" --online --json 10.98.0.2 123 2>&1) || fail "online A->B: $out $(cat $WORK/daemon.log)"
echo "A->B: $out"
echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
assert r["mode"] == "online", r
assert r["page_streams"] == 4, "the pages did not go over the page streams"
assert len(r["rounds"]) >= 1 and r["rounds"][0]["pages"] >= 16384, r["rounds"]
assert r["image_bytes"] < r["rounds"][0]["bytes"], "the last dump stored the whole memory again"
' || fail "report A->B"
status_is 123 absent || fail "VE 123 is still on A: $(vz status 123)"
[ "$(b "$BIN/vzctl" status 123)" = "VE 123 running" ] || fail "VE 123 on B: $(b "$BIN/vzctl" status 123)"
checks_go_on "$log_b"
"$BIN/vzmigrate" --listen 10.98.0.1:4422 > "$WORK/daemon-a.log" 2>&1 &
sleep 0.5
out=$(on_b "$BIN/vzmigrate" --online --downtime-ms 0 --max-rounds 3 --compress --json 10.98.0.1 123 2>&1) || fail "online B->A: $out $(cat $WORK/daemon-a.log)"
echo "B->A: $out"
echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
# At most the limit (3 rounds after the first); fewer only when nothing was left to send.
assert 2 <= len(r["rounds"]) <= 4, r["rounds"]
assert r["compression_ratio"] > 2, r["compression_ratio"]
assert all(x["pages"] > 0 for x in r["rounds"]), r["rounds"]
' || fail "report B->A"
[ "$(b "$BIN/vzctl" status 123)" = "VE 123 absent" ] || fail "VE 123 is still on B"
status_is 123 running || fail "VE 123 on A: $(vz status 123)"
checks_go_on "$log_a"
ls "$VB/dump" "$VZ_DIR/dump" 2>/dev/null | grep -q staging && fail "a staging area was left"
echo OK
"#;

/// Failures injected at chosen phases of an online migration; after each the VE runs on the
/// source as before (its loop goes on without a gap) and the destination holds nothing:
/// the restore failing on the destination (a real restore, stopped by a failure point just
/// before its processes would run), the network cut during the pre-copy (the link goes down),
/// the destination's disk full (its dump directory on a 16 MiB tmpfs), and the source failing
/// after a round. Last, the source is killed right after sending the commit: the VE runs on
/// the destination and its source copy stays suspended, never running twice.
const ONLINE_FAILURES: &str = r#"
vz create 124 --command "$LOOP" || fail "create"
mkdir -p "$VZ_DIR/private/124/upper/root"
vz start 124 || fail "start"
until_true 10 vz exec 124 test -s /tmp/count || fail "the loop does not run"
nothing_on_b() {
    until_true 15 sh -c "[ \"\$(VZ_DIR=$VB VZ_CGROUP=$CGB $BIN/vzctl status 124)\" = 'VE 124 absent' ]" || fail "$1: VE 124 left on B: $(b "$BIN/vzctl" status 124)"
    until_true 15 sh -c "! ls $VB/dump 2>/dev/null | grep -q 124" || fail "$1: images left on B: $(ls $VB/dump)"
    [ -e "$VB/private/124" ] && fail "$1: the private area was left on B"
    return 0
}
runs_on_a() {
    status_is 124 running || fail "$1: VE 124 on A is $(vz status 124)"
    local last=$(tail -n1 "$VZ_DIR/private/124/upper/root/log")
    until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/124/upper/root/log) -gt $last ]" || fail "$1: the loop does not go on on A"
    log_contiguous 124 || fail "$1: the loop's log has a gap or restarted"
}
restart_daemon() { # ENV...: B's daemon again, with these variables
    kill $DAEMON; wait $DAEMON 2>/dev/null
    nsenter --net=/proc/$HB/ns/net env VZ_DIR="$VB" VZ_CGROUP="$CGB" "$@" "$BIN/vzmigrate" --listen 10.98.0.2:4422 >> "$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    sleep 0.5
}

# 1. The restore fails on the destination.
restart_daemon VZCPT_FAULT=restore.before-release
out=$("$BIN/vzmigrate" --online 10.98.0.2 124 2>&1) && fail "migrated although the restore failed"
echo "restore failed: $out"
echo "$out" | grep -q "restore.before-release" || fail "the error does not say the restore failed: $out"
runs_on_a "restore failed"; nothing_on_b "restore failed"

# 2. The network is cut during the pre-copy (a slow link, so the rounds take a while).
restart_daemon
tc qdisc add dev va root tbf rate 40mbit burst 64kb latency 400ms || fail "tc"
vz exec 124 sh -c 'head -c 48M /dev/urandom > /dev/shm/fill' || fail "fill"
"$BIN/vzmigrate" --online 10.98.0.2 124 > "$WORK/cut.out" 2>&1 &
M=$!
until_true 20 sh -c "ls $VB/dump 2>/dev/null | grep -q staging" || fail "the pre-copy does not start: $(cat $WORK/cut.out)"
ip link set va down
wait $M && fail "migrated through a cut network"
echo "network cut: $(cat $WORK/cut.out)"
ip link set va up; tc qdisc del dev va root
runs_on_a "network cut"; nothing_on_b "network cut"

# 3. The destination's disk fills up.
mkdir -p "$VB/dump" && mount -t tmpfs -o size=16m tmpfs "$VB/dump" || fail "small tmpfs"
# Started through a shell that exits at once: the holder's parent becomes the VE's init.
vz exec 124 sh -c 'python3 -c "import os, time; b = os.urandom(32 << 20); open(\"/tmp/held\", \"w\"); time.sleep(10**6)" >/dev/null 2>&1 &'
until_true 10 vz exec 124 test -e /tmp/held || fail "the memory holder"
out=$("$BIN/vzmigrate" --online 10.98.0.2 124 2>&1) && fail "migrated to a full disk"
echo "disk full: $out"
echo "$out" | grep -qi "no space left" || fail "the error does not say the disk is full: $out"
nothing_on_b "disk full"; umount "$VB/dump" || fail "umount"
runs_on_a "disk full"

# 4. The source fails after a pre-copy round.
out=$(VZCPT_FAULT=migrate.source.after-round "$BIN/vzmigrate" --online 10.98.0.2 124 2>&1) && fail "migrated through a failure point"
echo "$out" | grep -q after-round || fail "source failure: $out"
runs_on_a "source failure"; nothing_on_b "source failure"

# 5. The source dies right after sending the commit.
VZCPT_FAULT=migrate.source.after-commit-sent:kill "$BIN/vzmigrate" --online 10.98.0.2 124 > "$WORK/kill.out" 2>&1 && fail "the source was not killed"
until_true 10 sh -c "[ \"\$(VZ_DIR=$VB VZ_CGROUP=$CGB $BIN/vzctl status 124)\" = 'VE 124 running' ]" || fail "VE 124 on B after the commit: $(b "$BIN/vzctl" status 124) $(cat $WORK/kill.out)"
until_true 10 status_is 124 suspended || fail "the source's copy after its death: $(vz status 124)"
echo OK
"#;

/// Three hosts on one LAN (a bridge in A; B and a client host C joined to it): redis runs in a
/// VE whose address (10.98.0.50) A announces; a client on C writes 1000 keys over one
/// connection, the VE moves to B online (while C keeps asking), and over the same connection
/// every key is there and new writes work; A no longer answers for the address, B does.
const REDIS_ONE_LAN: &str = r#"
command -v redis-server >/dev/null || fail "redis-server is not installed"
ip link add br0 type bridge && ip link set br0 up && ip addr add 10.98.0.1/24 dev br0 || fail "bridge"
VB="$WORK/b"; CGB="$VZ_CGROUP/b"
b() { VZ_DIR="$VB" VZ_CGROUP="$CGB" "$@"; }
unshare --net sleep 100000 &
HB=$!
unshare --net sleep 100000 &
HC=$!
until_true 5 test -e /proc/$HC/ns/net || fail "hosts"
sleep 0.1
on_b() { nsenter --net=/proc/$HB/ns/net env VZ_DIR="$VB" VZ_CGROUP="$CGB" "$@"; }
on_c() { nsenter --net=/proc/$HC/ns/net "$@"; }
ip link add va type veth peer name vb netns $HB && ip link set va master br0 up || fail "veth B"
ip link add vac type veth peer name vc netns $HC && ip link set vac master br0 up || fail "veth C"
on_b sh -c 'ip link set lo up && ip addr add 10.98.0.2/24 dev vb && ip link set vb up' || fail "B network"
on_c sh -c 'ip link set lo up && ip addr add 10.98.0.3/24 dev vc && ip link set vc up' || fail "C network"
fb=$(b "$BIN/vzmigrate" keygen) && fa=$("$BIN/vzmigrate" keygen) || fail "keygen"
"$BIN/vzmigrate" trust "$fb" && b "$BIN/vzmigrate" trust "$fa" || fail "trust"
nsenter --net=/proc/$HB/ns/net env VZ_DIR="$VB" VZ_CGROUP="$CGB" "$BIN/vzmigrate" --listen 10.98.0.2:4422 > "$WORK/daemon.log" 2>&1 &
cat > "$WORK/client.py" <<'PY'
import os, socket, sys, time
w = sys.argv[1]
for _ in range(400):
    try:
        s = socket.create_connection(("10.98.0.50", 6379), timeout=30)
        break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rb")
port = s.getsockname()[1]
def cmd(c):
    s.sendall(c.encode() + b"\r\n")
    return f.readline()
def get(k):
    s.sendall(("GET %s\r\n" % k).encode())
    n = f.readline()
    return f.readline().strip().decode() if n.startswith(b"$") and n != b"$-1\r\n" else None
try:
    for i in range(1000):
        assert cmd("SET key%d value%d" % (i, i)) == b"+OK\r\n"
    open(w + "/written", "w").close()
    # Asks all along, through the migration.
    n = 0
    while not os.path.exists(w + "/moved"):
        assert get("key%d" % (n % 1000)) == "value%d" % (n % 1000), "key%d" % (n % 1000)
        n += 1
        time.sleep(0.005)
    bad = [i for i in range(1000) if get("key%d" % i) != "value%d" % i]
    assert not bad, "keys lost: %r" % bad[:5]
    assert cmd("SET after migration") == b"+OK\r\n" and get("after") == "migration"
    assert s.getsockname()[1] == port
    open(w + "/client", "w").write("PASS %d reads during the move" % n)
except Exception as e:
    open(w + "/client", "w").write("FAIL %r" % (e,))
PY
vz create 125 --command 'exec redis-server --bind 0.0.0.0 --port 6379 --save "" --appendonly no --protected-mode no --daemonize no' || fail "create"
vz set 125 --ipadd 10.98.0.50 --save || fail "ipadd"
vz start 125 || fail "start"
ip neigh show proxy | grep -q "10.98.0.50 dev br0" || fail "A does not announce the VE: $(ip neigh show proxy)"
on_c python3 "$WORK/client.py" "$WORK" &
until_true 30 test -e "$WORK/written" || fail "the client did not write its keys: $(cat $WORK/client 2>/dev/null)"
out=$("$BIN/vzmigrate" --online --json 10.98.0.2 125 2>&1) || fail "migrate: $out $(cat $WORK/daemon.log)"
echo "redis: $out"
touch "$WORK/moved"; wait %4 2>/dev/null
until_true 30 test -s "$WORK/client" || fail "the client hangs"
case "$(cat $WORK/client)" in PASS*) ;; *) fail "client: $(cat $WORK/client)";; esac
ip neigh show proxy | grep -q 10.98.0.50 && fail "A still answers for the VE's address"
on_b ip neigh show proxy | grep -q "10.98.0.50 dev vb" || fail "B does not announce the VE: $(on_b ip neigh show proxy)"
[ "$(b "$BIN/vzctl" status 125)" = "VE 125 running" ] || fail "VE 125 on B"
status_is 125 absent || fail "VE 125 on A: $(vz status 125)"
echo "client: $(cat $WORK/client)"
echo OK
"#;

fn main() {
    tests::ve_harness::run_trials(vec![
        (
            "migrate_online_memory_writer",
            format!("{TWO_HOSTS}\n{ONLINE}"),
        ),
        (
            "migrate_online_redis_with_a_client_on_the_lan",
            REDIS_ONE_LAN.to_string(),
        ),
        (
            "migrate_online_failures_leave_the_ve_on_the_source",
            format!("{TWO_HOSTS}\n{ONLINE_FAILURES}"),
        ),
        (
            "migrate_offline_back_and_forth",
            format!("{TWO_HOSTS}\n{MIGRATE_BACK_AND_FORTH}"),
        ),
        (
            "migrate_refusals_leave_the_ve_running",
            format!("MODE=\n{TWO_HOSTS}\n{REFUSALS}"),
        ),
        (
            "migrate_online_refusals_leave_the_ve_running",
            format!("MODE=--online\n{TWO_HOSTS}\n{REFUSALS}"),
        ),
        (
            "migrate_destination_killed_midway",
            format!("MODE=\n{TWO_HOSTS}\n{DESTINATION_KILLED}"),
        ),
        (
            "migrate_online_destination_killed_midway",
            format!("MODE=--online\n{TWO_HOSTS}\n{DESTINATION_KILLED}"),
        ),
    ])
}
