//! The harness of the VE tests (`tests/ve.rs`, `tests/services.rs`): each trial is a bash
//! script run as PID 1 of its own PID, mount and network namespaces with its own `$VZ_DIR` and
//! `$VZ_CGROUP`, so trials run side by side like separate hosts: whatever they start dies with
//! them, their mounts and network vanish with their namespaces, and their cgroups are removed
//! afterwards whatever happened. A script passes when it prints `OK` last.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A second "host" for migration scripts: host B is a network namespace joined to this one
/// (host A, 10.98.0.1) by a veth pair, at 10.98.0.2, with its own `$VZ_DIR` ($VB) and cgroup
/// root; `b CMD` runs CMD with B's settings, `on_b CMD` also in B's network namespace; the
/// hosts trust each other's key and B's daemon listens ($DAEMON).
pub const TWO_HOSTS: &str = r#"
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

/// Helpers every script gets; `$BIN` holds vzctl, vzlist, vzinit and vzcpt, `$WORK` is a fresh
/// directory.
pub const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; exit 1; }
# This "host" has its own network namespace: loopback and one address of its own.
ip link set lo up && ip addr add 10.99.0.1/32 dev lo || fail "cannot set up the host network namespace"
vz() { "$BIN/vzctl" "$@"; }
# Stops every VE of this "host" when the script ends, however it ends.
cleanup() { for c in $(ls "$VZ_DIR/conf" 2>/dev/null | sed -n 's/\.conf$//p'); do vz stop "$c" --timeout 1 >/dev/null 2>&1; done; }
trap cleanup EXIT
# in_ve CTID CMD...: run inside the VE, fail the trial on error.
in_ve() { local c=$1; shift; vz exec "$c" "$@" || fail "vzctl exec $c $* exited $?"; }
# until_true SECONDS CMD...: retry until it succeeds.
until_true() { local n=$(( $1 * 20 )); shift; while ! "$@" >/dev/null 2>&1; do n=$((n-1)); [ $n -gt 0 ] || return 1; sleep 0.05; done; }
status_is() { [ "$(vz status "$1")" = "VE $1 $2" ]; }
# ve_runs CTID PATTERN: a process of the VE has PATTERN in its command line.
ve_runs() { vz exec "$1" ps -eo args= | grep -q "$2"; }
# ve_nproc_at_least CTID N
ve_nproc_at_least() { [ "$(vz exec "$1" ps -e --no-headers | wc -l)" -ge "$2" ]; }
# A shell loop that counts in memory and writes the count to tmpfs (/tmp) and to the private
# area (/root/log, one line per step): after a restore the log must go on without a gap.
LOOP='i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo $i >> /root/log; sleep 0.05; done'
# log_contiguous CTID: /root/log is 1, 2, 3, ... with nothing lost or repeated.
log_contiguous() { awk 'NR != $1 { bad = 1 } END { exit bad }' "$VZ_DIR/private/$1/upper/root/log"; }
"#;

/// Why VE trials cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".to_string());
    }
    if !Path::new("/sys/fs/cgroup/unified/cgroup.freeze").exists()
        && !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
    {
        return Some("needs cgroup v2 at /sys/fs/cgroup/unified (the VE freezer)".to_string());
    }
    if !std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("overlay")
    {
        return Some("needs overlayfs (the VE root)".to_string());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2 (ip)".to_string());
    }
    None
}

pub fn bins() -> anyhow::Result<PathBuf> {
    let vzctl = crate::paths::cli_bin("vzctl")?;
    for b in ["vzlist", "vzinit", "vzmigrate", "vzcpt"] {
        crate::paths::cli_bin(b)?;
    }
    Ok(vzctl.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Removes `$VZ_CGROUP` and everything below it in every hierarchy (killing what is left).
pub fn remove_cgroups(name: &str) {
    let Ok(hiers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hiers.flatten() {
        let top = h.path().join(name);
        if top.is_dir() {
            remove_tree(&top);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn run_script(name: &str, body: &str) -> Result<(), String> {
    run_script_for(name, body, 180)
}

/// [`run_script`] with its own time limit (the soak runs minutes).
pub fn run_script_for(name: &str, body: &str, timeout_s: u32) -> Result<(), String> {
    let bin = bins().map_err(|e| format!("{e:#}"))?;
    let cgroup = format!("vzt-{name}-{}", std::process::id());
    let r = crate::script::Script {
        name,
        prefix: "ve",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &["--net"],
        env: vec![
            ("BIN", bin.to_string_lossy().into_owned()),
            ("VZ_DIR", "{WORK}/vz".to_string()),
            ("VZ_CGROUP", cgroup.clone()),
        ],
        timeout_s,
    }
    .run();
    remove_cgroups(&cgroup);
    r
}

/// Runs `scripts` (name, bash body) as the trials of a test binary, each ignored with the
/// reason when VE trials cannot run here.
pub fn run_trials(scripts: Vec<(&'static str, String)>) -> ! {
    run_trials_for(scripts, 180)
}

/// [`run_trials`] with a time limit per trial.
pub fn run_trials_for(scripts: Vec<(&'static str, String)>, timeout_s: u32) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let skip = skip_reason();
    let trials = scripts
        .into_iter()
        .map(|(name, body)| {
            if let Some(r) = &skip {
                eprintln!("{name}: ignored: {r}");
            }
            libtest_mimic::Trial::test(name, move || {
                run_script_for(name, &body, timeout_s).map_err(Into::into)
            })
            .with_ignored_flag(skip.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
