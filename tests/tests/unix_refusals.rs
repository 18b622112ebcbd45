//! Unix sockets the engine refuses, each with a clear error naming the socket and the task,
//! and the tree left running as it was with no image behind: descriptors in flight
//! (`SCM_RIGHTS`), a peer outside the dumped tree (a host daemon's listener, the other end of
//! a socketpair held by a process not dumped), and data sent on a connection its listener has
//! not accepted yet.
//!
//! Each trial is a bash script run as PID 1 of its own PID namespace (whatever it starts dies
//! with it); it prints `OK` last.

use libtest_mimic::{Arguments, Failed, Trial};

const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; exit 1; }
state() { sed 's/.*) //' "/proc/$1/stat" | cut -c1; }
tracer() { awk '$1 == "TracerPid:" { print $2 }' "/proc/$1/status"; }
wait_file() { local n=200; until [ -s "$1" ]; do n=$((n-1)); [ $n -gt 0 ] || fail "no $1"; sleep 0.05; done; }
# refused PID PATTERN...: the dump of PID fails naming the task and every pattern, leaves no
# image, and the tree runs on untraced.
refused() {
    local p=$1; shift
    out=$("$VZCPT" dump -t "$p" -D "$WORK/img" 2>&1) && fail "the dump of $p succeeded"
    echo "dump error: $out"
    echo "$out" | grep -q "task $p" || fail "the error does not name task $p: $out"
    for pat in "$@"; do echo "$out" | grep -q -- "$pat" || fail "the error does not say '$pat': $out"; done
    [ -e "$WORK/img" ] && fail "an image was left behind"
    [ "$(state "$p")" = S ] || fail "task $p is in state $(state "$p") after the failed dump"
    [ "$(tracer "$p")" = 0 ] || fail "task $p is still traced"
}
"#;

const SCM_RIGHTS: &str = r#"
python3 - <<'PY' &
import os, socket, time
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [1])
open(os.environ["WORK"] + "/ready", "w").write("1")
time.sleep(1000)
PY
P=$!
wait_file "$WORK/ready"
refused $P "SCM_RIGHTS" "unix socket"
echo OK
"#;

const OUTSIDE_PEERS: &str = r#"
# A "host daemon" (not dumped) listening on a path; the dumped process is its client.
python3 - <<'PY' &
import os, socket, time
l = socket.socket(socket.AF_UNIX)
l.bind(os.environ["WORK"] + "/daemon.sock")
l.listen()
open(os.environ["WORK"] + "/daemon", "w").write("1")
c, _ = l.accept()
time.sleep(1000)
PY
D=$!
wait_file "$WORK/daemon"
python3 - <<'PY' &
import os, socket, time
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["WORK"] + "/daemon.sock")
open(os.environ["WORK"] + "/client", "w").write("1")
time.sleep(1000)
PY
C=$!
wait_file "$WORK/client"
refused $C "outside the dumped tree" "daemon.sock" "held by process $D"

# The two ends of a socketpair in a parent and its child; only the child is dumped.
python3 - <<'PY' &
import os, socket, time
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close()
    open(os.environ["WORK"] + "/child", "w").write(str(os.getpid()))
    time.sleep(1000)
b.close()
time.sleep(1000)
PY
P=$!
wait_file "$WORK/child"
K=$(cat "$WORK/child")
refused $K "outside the dumped tree" "held by process $P"
echo OK
"#;

const UNACCEPTED_DATA: &str = r#"
python3 - <<'PY' &
import os, socket, time
name = "\0vzcpt-test-unaccepted-%d" % os.getpid()
l = socket.socket(socket.AF_UNIX)
l.bind(name)
l.listen()
c = socket.socket(socket.AF_UNIX)
c.connect(name)
c.send(b"hello before accept")
open(os.environ["WORK"] + "/ready", "w").write("1")
time.sleep(1000)
PY
P=$!
wait_file "$WORK/ready"
refused $P "not accepted yet"
echo OK
"#;

fn run_script(name: &str, body: &str) -> Result<(), Failed> {
    tests::script::Script {
        name,
        prefix: "unix",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &[],
        env: Vec::new(),
        timeout_s: 120,
    }
    .run()
    .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let skip = (!nix::unistd::geteuid().is_root()).then_some("needs root (ptrace, namespaces)");
    let scripts: [(&str, &str); 3] = [
        ("descriptors_in_flight_are_refused", SCM_RIGHTS),
        ("peers_outside_the_tree_are_refused", OUTSIDE_PEERS),
        (
            "data_on_an_unaccepted_connection_is_refused",
            UNACCEPTED_DATA,
        ),
    ];
    let trials = scripts
        .into_iter()
        .map(|(name, body)| {
            if let Some(r) = skip {
                eprintln!("{name}: ignored: {r}");
            }
            Trial::test(name, move || run_script(name, body)).with_ignored_flag(skip.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
