//! Incremental dumps (`vzcpt dump --track-mem` / `--parent`), on a real process: a Python
//! program keeps rewriting random pages of a 64 MiB area, each page holding its index and
//! the sequence number of its last write, with a table of those numbers in another area and
//! the last number in a third. Ten dumps are made while it runs (the first full, each next
//! one with the previous as parent); every image of the chain is then restored in a fresh
//! PID namespace, where the program checks itself when told (every page equal to what its
//! table says, the table's highest number the last one written) and exits 0 only if all
//! holds: a page restored from the wrong image of the chain, or a table from another
//! instant than the pages, fails it. The sequence number each restored copy reports must
//! grow along the chain. Increments must store far fewer pages than the full image; the
//! merged chain restores the same state as its last image; `vzcpt verify` checks the whole
//! chain, and a chain with a damaged or a missing parent is refused by verify and by restore
//! (which starts nothing). A parent of another tree is refused; a parent whose tracking is
//! gone gives a correct (compared page by page) increment. Dumpers killed before and after
//! their commit never make a later increment miss a write.
//!
//! Each trial is a bash script run as PID 1 of its own PID namespace (`tests::script`).

use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; exit 1; }
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
cat > "$WORK/writer.py" <<'PY'
import mmap, os, random, struct, sys, time
work = sys.argv[1]
N, PG = 16384, 4096
# Private anonymous memory (Python maps -1 shared by default).
data = mmap.mmap(-1, N * PG, flags=mmap.MAP_PRIVATE)
table = mmap.mmap(-1, N * 8, flags=mmap.MAP_PRIVATE)
meta = mmap.mmap(-1, PG, flags=mmap.MAP_PRIVATE)
def page(i, s):
    word = struct.pack('<Q', (i * 2654435761 + s * 40503) & 0xffffffffffffffff)
    return struct.pack('<QQ', i, s) + word * 510
seq = 0
for i in range(N):
    seq += 1
    data[i * PG:(i + 1) * PG] = page(i, seq)
    struct.pack_into('<Q', table, i * 8, seq)
struct.pack_into('<Q', meta, 0, seq)
def verify():
    last = struct.unpack_from('<Q', meta, 0)[0]
    bad, top = 0, 0
    for i in range(N):
        t = struct.unpack_from('<Q', table, i * 8)[0]
        top = max(top, t)
        if data[i * PG:(i + 1) * PG] != page(i, t):
            bad += 1
    ok = bad == 0 and top == last
    with open(os.path.join(work, 'result'), 'w') as f:
        f.write('%s %d %d\n' % ('PASS' if ok else 'FAIL', last, bad))
    os.unlink(os.path.join(work, 'go'))
    sys.exit(0 if ok else 1)
rng = random.Random(7)
open(os.path.join(work, 'ready'), 'w').close()
go = os.path.join(work, 'go')
while True:
    for _ in range(20):
        i = rng.randrange(N)
        seq += 1
        data[i * PG:(i + 1) * PG] = page(i, seq)
        struct.pack_into('<Q', table, i * 8, seq)
        struct.pack_into('<Q', meta, 0, seq)
    if os.path.exists(go):
        verify()
    time.sleep(0.005)
PY
start_writer() {
    rm -f "$WORK/ready"
    (cd "$WORK" && { [ -z "${CG:-}" ] || echo $BASHPID >"$CG/cgroup.procs"; } \
        && exec python3 writer.py "$WORK" </dev/null >/dev/null 2>>"$WORK/writer.err") &
    W=$!
    for _ in $(seq 100); do [ -e "$WORK/ready" ] && break; sleep 0.1; done
    [ -e "$WORK/ready" ] || fail "the writer did not start: $(cat "$WORK/writer.err")"
}
# The tracking keepers running (vzcpt __track-keeper).
keepers() { for k in $(pgrep -x vzcpt); do tr '\0' ' ' </proc/$k/cmdline 2>/dev/null | grep -q __track-keeper && echo $k; done; }
# Tells the writer (original or restored) to check itself; prints its sequence number.
check_result() {
    r=$(cat "$WORK/result" 2>/dev/null)
    case "$r" in PASS*) echo "$r" | cut -d' ' -f2 ;; *) fail "$1: the writer says '$r'" ;; esac
}
# Restores image $1 in a fresh PID namespace and has the copy check itself.
restore_check() {
    rm -f "$WORK/result"; touch "$WORK/go"
    timeout 120 unshare --pid --fork --mount-proc --kill-child "$VZCPT" restore -D "$1" \
        >"$WORK/restore.out" 2>&1 || fail "restore of $1 failed ($?): $(tail -5 "$WORK/restore.out")"
    check_result "copy restored from $1"
}
"#;

/// The chain of ten, each restored; merge; verify; damaged and missing parents.
const CHAIN: &str = r#"
start_writer
cd "$WORK"
for n in $(seq 0 9); do
    sleep 0.3
    if [ $n = 0 ]; then
        "$VZCPT" dump -t $W -D img.0 --leave-running --track-mem --json >d.0.json 2>d.0.err \
            || fail "dump 0: $(cat d.0.err)"
    else
        "$VZCPT" dump -t $W -D img.$n --leave-running --track-mem --parent img.$((n-1)) --json \
            >d.$n.json 2>d.$n.err || fail "dump $n: $(cat d.$n.err)"
    fi
done
[ "$(keepers | wc -l)" = 1 ] || fail "keepers running after the chain: $(keepers)"
full=$(json d.0.json pages_stored)
[ "$full" -gt 16000 ] || fail "the full dump stored only $full pages"
for n in $(seq 1 9); do
    s=$(json d.$n.json pages_stored); p=$(json d.$n.json pages_in_parent)
    t=$(json d.$n.json parent_tracked); u=$(json d.$n.json pages_untracked)
    echo "increment $n: $s pages stored, $p in the parent, tracked $t, untracked $u"
    [ "$t" = True ] || fail "increment $n did not use the parent's tracking"
    [ $((s * 2)) -lt "$full" ] || fail "increment $n stored $s pages, the full image $full"
    [ "$p" -gt 8000 ] || fail "increment $n left only $p pages to its parent"
    grep -q '"parent":"../img.'$((n-1))'"' <("$VZCPT" show -D img.$n --json) \
        || fail "img.$n does not name ../img.$((n-1)) as its parent"
done
# A parent whose tracking is gone (img.3's keeper was ended by dump 4): compared page by page.
"$VZCPT" dump -t $W -D img.fb --leave-running --parent img.3 --json >d.fb.json 2>d.fb.err \
    || fail "dump against an untracked parent: $(cat d.fb.err)"
[ "$(json d.fb.json parent_tracked)" = False ] || fail "img.3's keeper was still trusted"
grep -q "without written-page tracking" d.fb.err || fail "no log line tells: $(cat d.fb.err)"
[ "$(json d.fb.json pages_untracked)" -gt 16000 ] || fail "untracked pages: $(cat d.fb.json)"
[ "$(json d.fb.json pages_in_parent)" -gt 500 ] || fail "nothing equal to img.3: $(cat d.fb.json)"
[ "$(json d.fb.json pages_in_parent)" = "$(json d.fb.json pages_same_as_parent)" ] \
    || fail "pages left to an untracked parent without comparing them: $(cat d.fb.json)"
# A parent of another tree is refused, and that tree keeps running.
sleep 1000 & S=$!
out=$("$VZCPT" dump -t $S -D img.other --leave-running --parent img.9 2>&1) \
    && fail "a dump with another tree's image as parent succeeded"
echo "$out" | grep -q "another tree" || fail "the refusal does not say why: $out"
[ -e img.other ] && fail "an image was left by the refused dump"
kill -0 $S || fail "the other tree died"
kill $S
# The original checks itself and exits.
rm -f result; touch go
wait $W || fail "the original writer failed: $(cat result)"
last=$(check_result original)
prev=0
for n in $(seq 0 9) fb; do
    seq=$(restore_check img.$n)
    echo "img.$n restored at sequence $seq"
    [ "$seq" -gt "$prev" ] || fail "img.$n restored at $seq, not after the image before ($prev)"
    [ "$seq" -le "$last" ] || fail "img.$n restored at $seq, after the original's end ($last)"
    [ $n = 9 ] && seq9=$seq
    prev=$seq
done
"$VZCPT" verify -D img.9 || fail "verify of the chain failed"
"$VZCPT" merge -D img.9 -o merged || fail "merge failed"
[ -e merged/parent-pages ] && fail "the merged image still refers to a parent"
"$VZCPT" show -D merged --json | grep -q '"parent":null' || fail "the merged image names a parent"
[ "$(restore_check merged)" = "$seq9" ] || fail "the merged image restores another state than img.9"
# A damaged parent: verify and restore refuse the chain, restore starts nothing.
mkdir bad && cp -a img.[0-9] bad/
python3 - bad/img.4/pages <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(4096 + 100); b = f.read(1); f.seek(4096 + 100); f.write(bytes([b[0] ^ 0xff]))
PY
out=$("$VZCPT" verify -D bad/img.9 2>&1) && fail "verify accepted a chain with a damaged parent"
echo "$out" | grep -q "img.4" || fail "verify does not name the damaged image: $out"
out=$(timeout 60 unshare --pid --fork --mount-proc --kill-child "$VZCPT" restore -D bad/img.9 2>&1) \
    && fail "restore accepted a chain with a damaged parent"
echo "$out" | grep -q "img.4" || fail "restore does not name the damaged image: $out"
pgrep -x python3 >/dev/null && fail "a refused restore started a process"
# A missing parent.
rm -r bad/img.5
out=$("$VZCPT" verify -D bad/img.9 2>&1) && fail "verify accepted a chain with a missing parent"
echo "$out" | grep -q "img.5" || fail "verify does not name the missing parent: $out"
out=$(timeout 60 unshare --pid --fork --mount-proc --kill-child "$VZCPT" restore -D bad/img.9 2>&1) \
    && fail "restore accepted a chain with a missing parent"
echo "$out" | grep -q "img.5" || fail "restore does not name the missing parent: $out"
pgrep -x python3 >/dev/null && fail "a refused restore started a process"
echo OK
"#;

/// Dumpers killed after arming: before the commit (the next increment against the same
/// parent is still tracked and correct) and after the commit but before re-arming (the next
/// increment finds the areas held by an older descriptor and compares them whole; the one
/// after is tracked again). Every image restores to a consistent, later state; the keepers
/// go when the tree does; the tree never sees a descriptor of theirs.
const KILLED_DUMPERS: &str = r#"
start_writer
cd "$WORK"
fds=$(ls /proc/$W/fd | wc -l)
dump() { # NAME PARENT [ENV]
    n=$1; p=$2; shift 2
    env "$@" "$VZCPT" dump -t $W -D $n --leave-running --track-mem ${p:+--parent $p} --json \
        >$n.json 2>$n.err
}
dump img.0 "" || fail "dump 0: $(cat img.0.err)"
sleep 0.3
dump img.1 img.0 VZCPT_FAULT=dump.before-commit:kill && fail "the dumper was not killed"
[ -e img.1 ] && fail "a dumper killed before its commit left an image"
kill -0 $W || fail "the writer died with the dumper"
for _ in $(seq 50); do [ "$(sed 's/.*) //' /proc/$W/stat | cut -c1)" != t ] && break; sleep 0.1; done
sleep 0.3
dump img.2 img.0 || fail "dump 2: $(cat img.2.err)"
[ "$(json img.2.json parent_tracked)" = True ] || fail "img.0's tracking was lost: $(cat img.2.json)"
[ "$(json img.2.json pages_untracked)" = 0 ] || fail "img.2 untracked pages: $(cat img.2.json)"
sleep 0.3
dump img.3 img.2 VZCPT_FAULT=dump.before-rearm:kill && fail "the dumper was not killed"
[ -e img.3 ] || fail "the image committed before the kill is missing"
sleep 0.3
dump img.4 img.3 || fail "dump 4: $(cat img.4.err)"
[ "$(json img.4.json pages_untracked)" -gt 16000 ] \
    || fail "img.4 trusted tracking never re-armed: $(cat img.4.json)"
sleep 0.3
dump img.5 img.4 || fail "dump 5: $(cat img.5.err)"
[ "$(json img.5.json pages_untracked)" = 0 ] || fail "img.5 is not tracked again: $(cat img.5.json)"
[ $(( $(json img.5.json pages_stored) * 2 )) -lt "$(json img.0.json pages_stored)" ] \
    || fail "img.5 is not small: $(cat img.5.json)"
[ "$(ls /proc/$W/fd | wc -l)" = "$fds" ] || fail "the writer has $(ls /proc/$W/fd | wc -l) descriptors, had $fds"
[ -n "$(keepers)" ] || fail "no tracking keeper is running"
rm -f result; touch go
wait $W || fail "the original writer failed: $(cat result)"
last=$(check_result original)
for _ in $(seq 50); do [ -z "$(keepers)" ] && break; sleep 0.1; done
[ -z "$(keepers)" ] || fail "keepers outlived the tree: $(keepers)"
prev=0
for n in 0 2 3 4 5; do
    seq=$(restore_check img.$n)
    echo "img.$n restored at sequence $seq"
    [ "$seq" -gt "$prev" ] && [ "$seq" -le "$last" ] || fail "img.$n restored at $seq (before: $prev, end: $last)"
    prev=$seq
done
echo OK
"#;

/// The same through the cgroup v2 freezer (`--cgroup`): the tree is armed while it can
/// still run remote syscalls, then frozen; three increments stay small and the last one
/// restores to a consistent state.
const CGROUP: &str = r#"
CG="$CGROOT/vzcpt-incr-$$-$RANDOM"
mkdir "$CG" || fail "mkdir $CG"
trap 'echo 1 > "$CG/cgroup.kill" 2>/dev/null; sleep 0.3; rmdir "$CG" 2>/dev/null' EXIT
start_writer
cd "$WORK"
"$VZCPT" dump --cgroup "$CG" -D img.0 --leave-running --track-mem --json >d.0.json 2>d.0.err \
    || fail "dump 0: $(cat d.0.err)"
for n in 1 2 3; do
    sleep 0.3
    "$VZCPT" dump --cgroup "$CG" -D img.$n --leave-running --track-mem --parent img.$((n-1)) \
        --json >d.$n.json 2>d.$n.err || fail "dump $n: $(cat d.$n.err)"
    [ "$(json d.$n.json pages_untracked)" = 0 ] || fail "increment $n: $(cat d.$n.json)"
    [ $(( $(json d.$n.json pages_stored) * 2 )) -lt "$(json d.0.json pages_stored)" ] \
        || fail "increment $n is not small: $(cat d.$n.json)"
done
grep -q "^frozen 0" "$CG/cgroup.events" || fail "the cgroup stays frozen"
rm -f result; touch go
wait $W || fail "the original writer failed: $(cat result)"
check_result original >/dev/null
restore_check img.3 >/dev/null
echo OK
"#;

fn run_script(name: &str, body: &str, env: Vec<(&str, String)>) -> Result<(), Failed> {
    tests::script::Script {
        name,
        prefix: "incremental",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &[],
        env,
        timeout_s: 600,
    }
    .run()
    .map_err(Failed::from)
}

/// The same chain through `vzctl` on a real VE (`vzctl chkpnt --leave-running --track-mem
/// --parent`): the writer runs as the VE's program; ten checkpoints while it runs, each an
/// increment of the one before and far smaller than the first; then the VE is stopped and
/// restored from images of the chain (the first, a middle one, the last), each time checking
/// its whole memory and reporting a sequence number that grows along the chain.
const VE_CHAIN: &str = r#"
C=171
vz create $C --command "exec python3 /root/writer.py /root" >/dev/null || fail "create"
R="$VZ_DIR/private/$C/upper/root"
mkdir -p "$R" && cp "$WORK/writer.py" "$R/" || fail "install the writer"
vz start $C >/dev/null || fail "start"
until_true 30 test -e "$R/ready" || fail "the writer did not start in the VE"
IMG="$WORK/chain"; mkdir -p "$IMG"
prev=""; full=0
for i in 0 1 2 3 4 5 6 7 8 9; do
    args="--leave-running --track-mem"
    [ -n "$prev" ] && args="$args --parent $prev"
    out=$(vz chkpnt $C --dumpfile "$IMG/$i" $args --json) || fail "chkpnt $i: $out"
    stored=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pages_stored"])')
    if [ $i = 0 ]; then full=$stored
    else
        echo "$out" | python3 -c 'import json,sys; d = json.load(sys.stdin); sys.exit(0 if d["pages_in_parent"] > 0 and d.get("parent_tracked") else 1)' \
            || fail "increment $i is not tracked against its parent: $out"
        [ "$stored" -lt $((full / 2)) ] || fail "increment $i stored $stored pages (the full image $full)"
    fi
    status_is $C running || fail "chkpnt $i did not leave the VE running: $(vz status $C)"
    prev="$IMG/$i"
    sleep 0.3
done
vz stop $C --timeout 2 >/dev/null || fail "stop"
last=0
for i in 0 5 9; do
    vz restore $C --dumpfile "$IMG/$i" >/dev/null || fail "restore image $i of the chain"
    status_is $C running || fail "after restoring image $i: $(vz status $C)"
    # Through the VE's root: the overlay may not see a change made in its upper layer behind
    # its back. (The writer removes /root/go itself once it has checked.)
    vz exec $C rm -f /root/result || fail "image $i: remove the last result"
    vz exec $C touch /root/go || fail "image $i: tell the writer to check"
    until_true 60 test -s "$R/result" || fail "image $i: the restored writer gave no result"
    read -r verdict seq bad < "$R/result"
    [ "$verdict" = PASS ] || fail "image $i: the restored memory is wrong ($bad bad pages)"
    [ "$seq" -gt "$last" ] || fail "image $i: sequence $seq is not past the earlier image's $last"
    last=$seq
    until_true 10 status_is $C stopped || vz stop $C --timeout 1 >/dev/null 2>&1
    echo "image $i: PASS at sequence $seq"
done
echo OK
"#;

fn main() {
    let args = Arguments::from_args();
    let mut skip = None;
    if !nix::unistd::geteuid().is_root() {
        skip = Some("needs root (ptrace, namespaces, userfaultfd)".to_string());
    } else if Command::new("python3").arg("-V").output().is_err() {
        skip = Some("needs python3".to_string());
    }
    let cg2 = std::path::PathBuf::from("/sys/fs/cgroup/unified");
    let no_cg2 = (!cg2.join("cgroup.procs").exists())
        .then(|| "no cgroup v2 hierarchy at /sys/fs/cgroup/unified".to_string());
    let scripts: Vec<(&str, &str, Option<String>)> = vec![
        ("chain_of_ten_restored_merged_verified", CHAIN, None),
        ("killed_dumpers_never_lose_a_write", KILLED_DUMPERS, None),
        ("cgroup_v2_increments", CGROUP, no_cg2),
    ];
    let ve_skip = tests::ve_harness::skip_reason();
    let ve_trial = {
        let reason = skip.clone().or(ve_skip);
        let ignored = reason.is_some();
        Trial::test(
            "ve_chain_through_vzctl_restored_at_three_points",
            move || {
                if let Some(r) = reason {
                    return Err(format!("skipped: {r}").into());
                }
                tests::ve_harness::run_script_for(
                    "ve_chain_through_vzctl_restored_at_three_points",
                    &format!("{PRELUDE}\n{VE_CHAIN}"),
                    300,
                )
                .map_err(Into::into)
            },
        )
        .with_ignored_flag(ignored)
    };
    let trials = scripts
        .into_iter()
        .map(|(name, body, own_skip)| {
            let reason = skip.clone().or(own_skip);
            let env = vec![("CGROOT", cg2.display().to_string())];
            let ignored = reason.is_some();
            Trial::test(name, move || {
                if let Some(r) = reason {
                    return Err(format!("skipped: {r}").into());
                }
                run_script(name, body, env)
            })
            .with_ignored_flag(ignored)
        })
        .chain(std::iter::once(ve_trial))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
