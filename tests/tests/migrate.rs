//! `vzmigrate` between two "hosts" on one machine: the test's own network namespace (host A)
//! and a second one joined to it by a veth pair (host B), each with its own `$VZ_DIR` and
//! cgroup root; B runs the destination daemon. See `tests::ve_harness` for the trial setup.

const TWO_HOSTS: &str = r#"
VB="$WORK/b"; CGB="$VZ_CGROUP/b"
b() { VZ_DIR="$VB" VZ_CGROUP="$CGB" "$@"; }
# Host B: a network namespace held by a sleeping process (same mounts and cgroups as A).
unshare --net sleep 100000 &
HB=$!
until_true 5 test -e /proc/$HB/ns/net || fail "host B"
on_b() { nsenter --net=/proc/$HB/ns/net env VZ_DIR="$VB" VZ_CGROUP="$CGB" "$@"; }
sleep 0.1
ip link add va type veth peer name vb netns $HB && ip addr add 10.98.0.1/24 dev va && ip link set va up || fail "veth"
on_b sh -c 'ip link set lo up && ip addr add 10.98.0.2/24 dev vb && ip link set vb up' || fail "host B network"
fa=$("$BIN/vzmigrate" keygen) || fail "keygen A"
fb=$(b "$BIN/vzmigrate" keygen) || fail "keygen B"
[ ${#fa} = 64 ] || fail "fingerprint: $fa"
"$BIN/vzmigrate" trust "$fb" || fail "trust B"
b "$BIN/vzmigrate" trust "$fa" || fail "trust A"
"$BIN/vzmigrate" trust nonsense 2>/dev/null && fail "a bad fingerprint was accepted"
# Not through on_b: a function in the background is a subshell, and $! would be its PID.
nsenter --net=/proc/$HB/ns/net env VZ_DIR="$VB" VZ_CGROUP="$CGB" "$BIN/vzmigrate" --listen 10.98.0.2:4422 > "$WORK/daemon.log" 2>&1 &
DAEMON=$!
sleep 0.5
"#;

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
/// destination that does not trust the source (refused in the TLS handshake).
const REFUSALS: &str = r#"
vz create 121 --command "$LOOP" || fail "create"
vz start 121 || fail "start"
b "$BIN/vzctl" create 121 || fail "create 121 on B"
out=$("$BIN/vzmigrate" 10.98.0.2 121 2>&1) && fail "migration to a host where CTID 121 exists succeeded"
echo "$out" | grep -q "CTID 121 exists" || fail "the refusal does not say why: $out"
status_is 121 running || fail "a refused migration left VE 121 $(vz status 121)"
b "$BIN/vzctl" destroy 121 || fail "destroy 121 on B"
# A stranger: a third identity B does not trust.
VC="$WORK/c"; VZ_DIR="$VC" "$BIN/vzmigrate" keygen >/dev/null || fail "keygen C"
VZ_DIR="$VC" "$BIN/vzmigrate" trust "$fb" || fail "C trusts B"
mkdir -p "$VC/conf" && cp "$VZ_DIR/conf/121.conf" "$VC/conf/" 
out=$(VZ_DIR="$VC" VZ_CGROUP="$VZ_CGROUP" "$BIN/vzmigrate" 10.98.0.2 121 2>&1) && fail "an untrusted source was served"
echo "stranger: $out"
[ "$(b "$BIN/vzctl" status 121)" = "VE 121 absent" ] || fail "an untrusted source left something on B"
status_is 121 running || fail "VE 121 after the stranger: $(vz status 121)"
grep -q "refused\|failed" "$WORK/daemon.log" || fail "the daemon did not report the refused connection: $(cat $WORK/daemon.log)"
kill -0 %1 2>/dev/null || true
echo OK
"#;

/// The destination daemon is killed in the middle of a migration: the VE runs on the source
/// as before; the daemon's next start removes what had arrived; a new migration succeeds.
const DESTINATION_KILLED: &str = r#"
vz create 122 --command "$LOOP" || fail "create"
mkdir -p "$VZ_DIR/private/122/upper/root"
head -c 200M /dev/urandom > "$VZ_DIR/private/122/upper/root/big" || fail "big file"
vz start 122 || fail "start"
until_true 10 vz exec 122 test -s /tmp/count || fail "the loop does not run"
"$BIN/vzmigrate" 10.98.0.2 122 > "$WORK/m.out" 2>&1 &
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
"$BIN/vzmigrate" 10.98.0.2 122 || fail "the migration after the daemon's restart: $(cat $WORK/daemon2.log)"
[ "$(b "$BIN/vzctl" status 122)" = "VE 122 running" ] || fail "VE 122 on B after the second try"
cmp "$VB/private/122/upper/root/big" "$VZ_DIR/private/122/upper/root/big" 2>/dev/null
status_is 122 absent || fail "VE 122 still on A"
echo OK
"#;

fn main() {
    tests::ve_harness::run_trials(vec![
        (
            "migrate_offline_back_and_forth",
            format!("{TWO_HOSTS}\n{MIGRATE_BACK_AND_FORTH}"),
        ),
        (
            "migrate_refusals_leave_the_ve_running",
            format!("{TWO_HOSTS}\n{REFUSALS}"),
        ),
        (
            "migrate_destination_killed_midway",
            format!("{TWO_HOSTS}\n{DESTINATION_KILLED}"),
        ),
    ])
}
