//! Soak (issue 6, part 5): 200 checkpoint/restore cycles of one VE, and 20 online migrations
//! back and forth, checking after each step that the VE goes on (its loop's log without a
//! gap) and, against the state after the first step, that the host has leaked nothing:
//! mounts, cgroups, network links, routes and ARP entries, image directories, the
//! destination daemons' descriptors and memory. The figures go to the trial's output and,
//! with `SOAK_FIGURES=FILE`, to FILE (docs/RELIABILITY.md quotes them).

/// `host_state`: one line naming what a leak would grow on this "host" (and B's, when
/// there is a B): mounts, cgroup directories, links, routes, proxy ARP entries, image
/// directories; compared whole, it must not change from cycle to cycle.
const STATE: &str = r#"
host_state() {
    local cgs=$(for h in /sys/fs/cgroup/*/; do find "$h$VZ_CGROUP" -type d 2>/dev/null; done | wc -l)
    echo "mounts=$(wc -l < /proc/self/mountinfo) cgroups=$cgs links=$(ip -o link | wc -l)" \
         "routes=$(ip route | wc -l) proxy=$(ip neigh show proxy | wc -l)" \
         "images=$(ls $VZ_DIR/dump 2>/dev/null | wc -l) netns=$(ls /run/netns 2>/dev/null | wc -l)"
}
note() { echo "$*"; [ -z "${SOAK_FIGURES:-}" ] || echo "$*" >> "$SOAK_FIGURES"; }
# fds PID, rss_kb PID
fds() { ls /proc/$1/fd | wc -l; }
rss_kb() { awk '/^VmRSS/ { print $2 }' /proc/$1/status; }
"#;

/// 200 `vzctl chkpnt` + `vzctl restore` cycles of a VE with a network address.
const CYCLES: &str = r#"
vz create 140 --command "$LOOP" || fail "create"
vz set 140 --ipadd 10.99.5.1 --save || fail "ipadd"
vz start 140 || fail "start"
until_true 10 vz exec 140 test -s /tmp/count || fail "the loop does not run"
vz chkpnt 140 && vz restore 140 || fail "the first cycle"
base=$(host_state)
avail0=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)
t0=$(date +%s%N)
for i in $(seq 2 200); do
    vz chkpnt 140 || fail "chkpnt, cycle $i"
    status_is 140 dumped || fail "cycle $i: $(vz status 140) after chkpnt"
    vz restore 140 || fail "restore, cycle $i"
    if [ $((i % 20)) = 0 ]; then
        now=$(host_state)
        [ "$now" = "$base" ] || fail "cycle $i: the host changed: $now, was $base"
        log_contiguous 140 || fail "cycle $i: the loop's log has a gap"
        status_is 140 running || fail "cycle $i: $(vz status 140)"
    fi
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
last=$(tail -n1 "$VZ_DIR/private/140/upper/root/log")
until_true 5 sh -c "[ \$(tail -n1 $VZ_DIR/private/140/upper/root/log) -gt $last ]" || fail "the loop stopped"
avail1=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)
note "200 cycles of VE 140 (4 processes, an address): $ms ms; host state unchanged: $base; MemAvailable $avail0 -> $avail1 kB"
echo OK
"#;

/// 20 online migrations A->B->A... of a VE, both daemons watched.
const MIGRATIONS: &str = r#"
"$BIN/vzmigrate" --listen 10.98.0.1:4422 > "$WORK/daemon-a.log" 2>&1 &
DAEMON_A=$!
vz create 141 --command "$LOOP" || fail "create"
vz start 141 || fail "start"
until_true 10 vz exec 141 test -s /tmp/count || fail "the loop does not run"
pair_state() { echo "A: $(host_state) B: $(on_b bash -c "$(declare -f host_state); host_state")"; }
move() { # N: one migration, A->B when N is odd
    if [ $(($1 % 2)) = 1 ]; then
        "$BIN/vzmigrate" --online 10.98.0.2 141 > "$WORK/m.out" 2>&1 || fail "migration $1 A->B: $(cat $WORK/m.out)"
        [ "$(b "$BIN/vzctl" status 141)" = "VE 141 running" ] || fail "migration $1: not running on B"
        status_is 141 absent || fail "migration $1: still on A"
        log=$VB/private/141/upper/root/log
    else
        on_b "$BIN/vzmigrate" --online 10.98.0.1 141 > "$WORK/m.out" 2>&1 || fail "migration $1 B->A: $(cat $WORK/m.out)"
        status_is 141 running || fail "migration $1: not running on A"
        [ "$(b "$BIN/vzctl" status 141)" = "VE 141 absent" ] || fail "migration $1: still on B"
        log=$VZ_DIR/private/141/upper/root/log
    fi
    awk 'NR != $1 { bad = 1 } END { exit bad }' "$log" || fail "migration $1: the loop's log has a gap"
}
move 1; move 2
base=$(pair_state)
fa0=$(fds $DAEMON_A); fb0=$(fds $DAEMON); ra0=$(rss_kb $DAEMON_A); rb0=$(rss_kb $DAEMON)
t0=$(date +%s%N)
for n in $(seq 3 22); do
    move $n
    if [ $((n % 2)) = 0 ]; then
        now=$(pair_state)
        [ "$now" = "$base" ] || fail "after migration $n: $now, was $base"
    fi
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
fa1=$(fds $DAEMON_A); fb1=$(fds $DAEMON); ra1=$(rss_kb $DAEMON_A); rb1=$(rss_kb $DAEMON)
[ "$fa1" = "$fa0" ] && [ "$fb1" = "$fb0" ] || fail "the daemons' descriptors went from $fa0/$fb0 to $fa1/$fb1"
# Memory: allocator caches may grow a little; a leak of a migration's pages would not.
[ "$ra1" -lt $((ra0 + 16384)) ] && [ "$rb1" -lt $((rb0 + 16384)) ] || fail "the daemons' RSS went from $ra0/$rb0 to $ra1/$rb1 kB"
note "20 online migrations of VE 141 (A<->B, after 2 to warm up): $ms ms; host states unchanged ($base); daemons' fds $fa0/$fb0 -> $fa1/$fb1, RSS $ra0/$rb0 -> $ra1/$rb1 kB"
echo OK
"#;

fn main() {
    use tests::ve_harness::TWO_HOSTS;
    tests::ve_harness::run_trials_for(
        vec![
            (
                "soak_200_chkpnt_restore_cycles",
                format!("{STATE}\n{CYCLES}"),
            ),
            (
                "soak_20_online_migrations",
                format!("{TWO_HOSTS}\n{STATE}\n{MIGRATIONS}"),
            ),
        ],
        900,
    )
}
