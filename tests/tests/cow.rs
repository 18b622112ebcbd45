//! Background (copy-on-write) dumps, `vzcpt dump --leave-running --cow`, on a real process
//! that rewrites its memory all the time (`tests/bench/cowwriter.c`, compiled when the tests
//! start): its memory is laid out so that an image not of one instant is detected by the
//! process itself once restored. The process must go on running during the copy (write
//! faults served), a dumper SIGKILLed halfway through the copy must leave it running and
//! unblocked and no image, a copy failing halfway the same, and the options that cannot go
//! with `--cow` are refused.
//!
//! Each trial is a bash script run as PID 1 of its own PID namespace (`tests::script`), so
//! whatever it starts dies with it. Timing (the frozen time) is printed, never asserted: the
//! benchmark measures it (`vzcpt-bench`, docs/BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

/// Helpers every script gets: `$VZCPT`, `$WORK`, `$COWWRITER` (the program).
const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; [ -f "$WORK/wl.err" ] && tail -5 "$WORK/wl.err"; exit 1; }
field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
state() { sed 's/.*) //' "/proc/$1/stat" | cut -c1; }
export VZCPT_CTL="$WORK/ctl"
mkdir -p "$VZCPT_CTL"
# start MIB [ENV...]: the writer in the background; P is its PID once it is ready.
start() {
    local mib=$1; shift
    env "$@" "$COWWRITER" "$mib" 2>>"$WORK/wl.err" &
    P=$!
    for _ in $(seq 600); do [ -e "$VZCPT_CTL/ready" ] && return 0; sleep 0.1; done
    fail "the writer did not get ready"
}
SEQ=0
# check: asks the running writer (original or restored) to verify its memory; must PASS.
check() {
    SEQ=$((SEQ + 1))
    echo $SEQ > "$VZCPT_CTL/.check" && mv "$VZCPT_CTL/.check" "$VZCPT_CTL/check"
    for _ in $(seq 600); do
        if grep -q "^$SEQ " "$VZCPT_CTL/result" 2>/dev/null; then
            grep -q "^$SEQ PASS" "$VZCPT_CTL/result" || fail "check $SEQ ($1): $(cat "$VZCPT_CTL/result")"
            return 0
        fi
        sleep 0.05
    done
    fail "check $SEQ ($1): no answer"
}
progress() { local v; v=$(cat "$VZCPT_CTL/progress" 2>/dev/null); echo $((10#${v:-0})); }
# moves: the writer finishes generations (it is not blocked).
moves() {
    local a; a=$(progress)
    for _ in $(seq 200); do [ "$(progress)" -gt "$a" ] && return 0; sleep 0.05; done
    fail "the writer made no progress ($1): generation $(progress)"
}
json() { python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }
"#;

/// The image of a process rewriting its memory all the time is one instant: restored, the
/// process finds its memory consistent. The copy ran while the process wrote (write faults
/// served, the process moved on meanwhile).
fn frozen_instant(mib: u32, env: &str) -> String {
    format!(
        r#"
start {mib} {env}
check "before the dump"
out=$("$VZCPT" dump -t $P -D "$WORK/img" --leave-running --cow --json 2>"$WORK/dump.err") \
    || fail "dump --cow: $(cat "$WORK/dump.err")"
copied=$(echo "$out" | json cow_pages_copied)
ahead=$(echo "$out" | json cow_pages_ahead_of_writes)
frozen=$(echo "$out" | json frozen_ms)
attempts=$(echo "$out" | json cow_attempts)
echo "{mib} MiB: frozen $frozen ms, $copied pages copied in the background, $ahead ahead of a write, attempt $attempts"
[ "$copied" -ge $(( {mib} * 256 * 9 / 10 )) ] || fail "only $copied pages copied in the background"
[ "$ahead" -gt 0 ] || fail "no write fault was served: the writer did not run during the copy"
kill -0 $P || fail "the writer died"
[ "$(field $P TracerPid)" = 0 ] || fail "the writer is still traced"
moves "after the dump"
check "the original after the dump"
"$VZCPT" verify -D "$WORK/img" || fail "verify"
kill -9 $P; wait $P 2>/dev/null
R=$("$VZCPT" restore -D "$WORK/img" --detach 2>"$WORK/restore.err") || fail "restore: $(cat "$WORK/restore.err")"
check "restored from the background dump"
kill -9 $R
echo OK
"#
    )
}

/// A cgroup v2 (as a VE is dumped), the writer forking children that rewrite their copies,
/// compressed page chunks: the restored writer finds its memory of one instant; the cgroup is
/// thawed after the dump.
const CGROUP_COMPRESSED: &str = r#"
CG="/sys/fs/cgroup/unified/vzcpt-cow-$$-$RANDOM"
mkdir "$CG" || fail "mkdir $CG"
trap 'echo 1 > "$CG/cgroup.kill" 2>/dev/null; sleep 0.3; rmdir "$CG" 2>/dev/null' EXIT
sh -c 'echo $$ > "$0/cgroup.procs" && exec env WL_FORK=1 "$1" 64' "$CG" "$COWWRITER" 2>>"$WORK/wl.err" &
P=$!
for _ in $(seq 600); do [ -e "$VZCPT_CTL/ready" ] && break; sleep 0.1; done
[ -e "$VZCPT_CTL/ready" ] || fail "the writer did not get ready"
check "before the dump"
out=$("$VZCPT" dump --cgroup "$CG" -D "$WORK/img" --leave-running --cow --compress --json 2>"$WORK/dump.err") \
    || fail "dump --cow: $(cat "$WORK/dump.err")"
echo "$out"
grep -q "^frozen 0" "$CG/cgroup.events" || fail "the cgroup stays frozen: $(cat "$CG/cgroup.events")"
moves "after the dump"
check "the original after the dump"
"$VZCPT" verify -D "$WORK/img" || fail "verify"
echo 1 > "$CG/cgroup.kill"
for _ in $(seq 100); do [ -z "$(cat "$CG/cgroup.procs")" ] && break; sleep 0.05; done
wait $P 2>/dev/null
# The restore makes the cgroup again (restoring into the one just killed fails, with or
# without --cow: a matter of the restore, not of this test).
for _ in $(seq 100); do rmdir "$CG" 2>/dev/null && break; sleep 0.05; done
R=$("$VZCPT" restore -D "$WORK/img" --detach 2>"$WORK/restore.err") || fail "restore: $(cat "$WORK/restore.err")"
check "restored from the background dump of the cgroup"
echo OK
"#;

/// Pages replaced (mremap over them) before the copy reached them: the dump (after its
/// attempts, each spoilt the same way) fails naming the task and the memory, leaves no image,
/// and the writer runs on; or, when the copy got there first, the image is one instant like
/// any other. Three dumps in a row, either way each.
const REMAPPED: &str = r#"
start 64 WL_REMAP=1
for n in 1 2 3; do
    if "$VZCPT" dump -t $P -D "$WORK/img$n" --leave-running --cow 2>"$WORK/dump.err"; then
        echo "dump $n: complete (the copy passed the replaced pages before they were replaced)"
        "$VZCPT" verify -D "$WORK/img$n" || fail "verify"
        KEEP=$n
    else
        grep -q "unmapped, discarded, moved or replaced" "$WORK/dump.err" \
            || fail "unexpected error: $(cat "$WORK/dump.err")"
        grep -q "task $P" "$WORK/dump.err" || fail "the error does not name task $P: $(cat "$WORK/dump.err")"
        echo "dump $n: refused: $(cat "$WORK/dump.err")"
        [ -e "$WORK/img$n" ] && fail "an image was left"
        ls "$WORK" | grep -q tmp && fail "a temporary image directory was left: $(ls "$WORK")"
    fi
    kill -0 $P || fail "the writer died"
    moves "after dump $n"
    check "after dump $n"
done
kill -9 $P; wait $P 2>/dev/null
if [ -n "${KEEP:-}" ]; then
    R=$("$VZCPT" restore -D "$WORK/img$KEEP" --detach 2>"$WORK/restore.err") || fail "restore: $(cat "$WORK/restore.err")"
    check "restored from dump $KEEP"
    kill -9 $R
fi
echo OK
"#;

/// The dumper SIGKILLed (`kill` action of a failure point) with half the memory copied: the
/// writer runs on, unblocked (it was blocked on a write fault more often than not), no image.
const KILLED_DUMPER: &str = r#"
start 128
VZCPT_FAULT=dump.cow-halfway:kill "$VZCPT" dump -t $P -D "$WORK/img" --leave-running --cow \
    2>"$WORK/dump.err" && fail "the dump survived its kill"
grep -q "dump.cow-halfway" "$WORK/dump.err" || fail "the failure point was not reached: $(cat "$WORK/dump.err")"
[ -e "$WORK/img" ] && fail "an image was left"
kill -0 $P || fail "the writer died"
[ "$(field $P TracerPid)" = 0 ] || fail "the writer is still traced"
moves "after the dumper was killed"
moves "a second generation"
[ "$(state $P)" = D ] && fail "the writer is stuck in state D"
check "after the dumper was killed"
# A second background dump of the same process works (nothing was left registered).
rm -rf "$WORK"/img.tmp-*
"$VZCPT" dump -t $P -D "$WORK/img2" --leave-running --cow 2>"$WORK/dump2.err" \
    || fail "a second dump: $(cat "$WORK/dump2.err")"
moves "after the second dump"
kill -9 $P; wait $P 2>/dev/null
R=$("$VZCPT" restore -D "$WORK/img2" --detach 2>"$WORK/restore.err") || fail "restore: $(cat "$WORK/restore.err")"
check "restored from the second dump"
kill -9 $R
echo OK
"#;

/// The copy failing halfway (after the thaw): a clear error, no image and no temporary
/// directory, the writer runs on.
const FAILED_COPY: &str = r#"
start 128
out=$(VZCPT_FAULT=dump.cow-halfway "$VZCPT" dump -t $P -D "$WORK/img" --leave-running --cow 2>&1) \
    && fail "the dump succeeded"
echo "$out" | grep -q "dump.cow-halfway" || fail "unexpected error: $out"
[ -e "$WORK/img" ] && fail "an image was left"
ls "$WORK" | grep -q tmp && fail "a temporary image directory was left: $(ls "$WORK")"
kill -0 $P || fail "the writer died"
[ "$(field $P TracerPid)" = 0 ] || fail "the writer is still traced"
moves "after the failed dump"
check "after the failed dump"
kill -9 $P; wait $P 2>/dev/null
echo OK
"#;

/// `--cow` needs `--leave-running` and refuses `--parent`, before touching the process.
const REFUSALS: &str = r#"
start 8
blk=$(field $P SigBlk)
out=$("$VZCPT" dump -t $P -D "$WORK/img" --cow 2>&1) && fail "--cow without --leave-running was accepted"
echo "$out" | grep -q -- "--leave-running" || fail "the refusal does not say why: $out"
out=$("$VZCPT" dump -t $P -D "$WORK/img" --cow --leave-stopped 2>&1) && fail "--cow --leave-stopped was accepted"
mkdir -p "$WORK/parent"
out=$("$VZCPT" dump -t $P -D "$WORK/img" --cow --leave-running --parent "$WORK/parent" 2>&1) \
    && fail "--cow --parent was accepted"
echo "$out" | grep -q -- "--parent" || fail "the refusal does not say why: $out"
[ -e "$WORK/img" ] && fail "an image was left"
[ "$(field $P SigBlk)" = "$blk" ] || fail "the writer's signal mask changed"
[ "$(field $P TracerPid)" = 0 ] || fail "the writer is traced"
moves "after the refusals"
kill -9 $P; wait $P 2>/dev/null
echo OK
"#;

/// Builds the writer once per test process.
fn build_writer() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tests::paths::profile_dir().join("test-work");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let out = dir.join(format!("cowwriter-{}", std::process::id()));
    let st = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-I"])
        .arg(src.join("workloads"))
        .arg("-o")
        .arg(&out)
        .arg(src.join("bench/cowwriter.c"))
        .status()
        .map_err(|e| format!("run cc: {e}"))?;
    if !st.success() {
        return Err("cc failed for tests/bench/cowwriter.c".into());
    }
    Ok(out)
}

fn run(name: &str, body: &str, writer: &Path) -> Result<(), Failed> {
    tests::script::Script {
        name,
        prefix: "cow",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &[],
        env: vec![("COWWRITER", writer.to_string_lossy().into_owned())],
        timeout_s: 240,
    }
    .run()
    .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let mut skip = None;
    if !nix::unistd::geteuid().is_root() {
        skip = Some("needs root (ptrace, namespaces, userfaultfd)".to_string());
    } else if Command::new("python3").arg("-V").output().is_err() {
        skip = Some("needs python3".to_string());
    }
    let writer = match &skip {
        Some(_) => PathBuf::new(),
        None => match build_writer() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    };
    let scripts: Vec<(&str, String)> = vec![
        ("frozen_instant_64mib", frozen_instant(64, "")),
        ("frozen_instant_256mib", frozen_instant(256, "")),
        (
            "frozen_instant_while_forking",
            frozen_instant(64, "WL_FORK=1"),
        ),
        (
            "frozen_instant_with_kernel_writes",
            frozen_instant(64, "WL_KERNEL_WRITES=1"),
        ),
        ("replaced_pages_fail_the_copy_clearly", REMAPPED.into()),
        ("cgroup_forking_writer_compressed", CGROUP_COMPRESSED.into()),
        (
            "killed_dumper_leaves_the_process_running",
            KILLED_DUMPER.into(),
        ),
        ("failed_copy_leaves_no_image", FAILED_COPY.into()),
        ("refused_options", REFUSALS.into()),
    ];
    let trials = scripts
        .into_iter()
        .map(|(name, body)| {
            let writer = writer.clone();
            let t = Trial::test(name, move || run(name, &body, &writer));
            match &skip {
                Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
                None => t,
            }
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let _ = std::fs::remove_file(&writer);
    conclusion.exit();
}
