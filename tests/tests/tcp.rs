//! TCP connections to a peer outside the dumped tree, and the sockets a dump refuses.
//!
//! Each trial is a bash script run as PID 1 of its own PID namespace and in a network
//! namespace of its own (with `lo` up), so that whatever it starts dies with it and its ports
//! clash with nothing. The script prints `OK` last; any other end is a failure with its output.

use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

/// Helpers every script gets. `$VZCPT` is the binary, `$WORK` a fresh directory.
const PRELUDE: &str = r#"
set -u
fail() { echo "FAIL: $*"; exit 1; }
field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
state() { sed 's/.*) //' "/proc/$1/stat" | cut -c1; }
wait_file() { for _ in $(seq 200); do [ -e "$1" ] && return 0; sleep 0.05; done; fail "no $1"; }
ip link set lo up || fail "cannot bring lo up"
"#;

/// The peer outside the tree: sends numbered lines while `$WORK/go` exists, checks that every
/// byte comes back echoed in order, and keeps `$WORK/status` = "SENT ECHOED ERROR".
const PEER_PY: &str = r#"
import os, select, socket, time
work = os.environ["WORK"]
L = socket.socket()
L.bind(("127.0.0.1", 0))
L.listen(1)
open(work + "/port.tmp", "w").write(str(L.getsockname()[1]))
os.rename(work + "/port.tmp", work + "/port")
c, _ = L.accept()
sent, echoed, err, i, next_send = b"", 0, "", 0, 0.0
def status():
    open(work + "/status.tmp", "w").write("%d %d %s\n" % (len(sent), echoed, err))
    os.rename(work + "/status.tmp", work + "/status")
while not err:
    now = time.time()
    if os.path.exists(work + "/go") and now >= next_send:
        line = ("line %d %s\n" % (i, "x" * (i % 50))).encode()
        i += 1
        c.sendall(line)
        sent += line
        next_send = now + 0.02
    if select.select([c], [], [], 0.01)[0]:
        try:
            d = c.recv(65536)
        except OSError as e:
            d, err = b"", "recv: %s" % e
        if not err and not d:
            err = "end-of-stream"
        elif sent[echoed:echoed + len(d)] != d:
            err = "echo-differs-at-%d" % echoed
        echoed += len(d)
    status()
time.sleep(1000)
"#;

/// The dumped tree: one process connected to the peer that echoes what it reads, but reads
/// only while `$WORK/read` exists (so bytes wait in its receive queue at dump time).
const TREE_PY: &str = r#"
import os, select, socket, time
work = os.environ["WORK"]
s = socket.create_connection(("127.0.0.1", int(open(work + "/port").read())))
open(work + "/tree-ready", "w").close()
while True:
    if os.path.exists(work + "/read") and select.select([s], [], [], 0.02)[0]:
        d = s.recv(65536)
        if not d:
            raise SystemExit("the peer closed")
        s.sendall(d)
    else:
        time.sleep(0.02)
"#;

/// A connection to a peer outside the tree: a dump without `--tcp-established` fails naming
/// it and leaves the tree running with the connection working; with it, the tree is dumped
/// and killed without the peer noticing, restored, and the stream goes on: the bytes that
/// waited in the tree's receive queue and every later byte come back to the peer, in order,
/// without a reset.
const OUTSIDE_PEER: &str = r#"
printf '%s' "$PEER_PY" > "$WORK/peer.py"
printf '%s' "$TREE_PY" > "$WORK/tree.py"
python3 "$WORK/peer.py" > "$WORK/peer.log" 2>&1 &
wait_file "$WORK/port"
PORT=$(cat "$WORK/port")
python3 "$WORK/tree.py" > "$WORK/tree.log" 2>&1 &
T=$!
wait_file "$WORK/tree-ready"
status() { cat "$WORK/status"; }
# Stream a while, then stop reading in the tree while the peer still sends, then go quiet.
stream_then_queue() {
    touch "$WORK/read" "$WORK/go"; sleep 0.5
    rm -f "$WORK/read"; sleep 0.3
    rm -f "$WORK/go"; sleep 0.4
}
stream_then_queue
read s1 e1 err1 < <(status)
[ -z "$err1" ] || fail "peer: $err1 before any dump"
[ "$s1" -gt "$e1" ] || fail "no bytes wait in the tree's queue ($s1 sent, $e1 echoed)"

out=$("$VZCPT" dump -t $T -D "$WORK/img0" 2>&1) && fail "a dump without --tcp-established succeeded"
echo "$out" | grep -q -- "--tcp-established" || fail "the error does not name the option: $out"
echo "$out" | grep -q "TCP connection 127.0.0.1:[0-9]* -> 127.0.0.1:$PORT" || fail "the error does not name the connection: $out"
echo "$out" | grep -q "task $T" || fail "the error does not name task $T: $out"
[ -e "$WORK/img0" ] && fail "a partial image was left"
[ "$(field $T TracerPid)" = 0 ] || fail "the tree is still traced"
[ "$(state $T)" = S ] || fail "the tree is in state $(state $T)"
# The connection still works: the queued bytes and new ones come back.
touch "$WORK/read" "$WORK/go"; sleep 0.5; rm -f "$WORK/go"; sleep 0.5
read s2 e2 err2 < <(status)
[ -z "$err2" ] || fail "peer after the refused dump: $err2"
[ "$s2" = "$e2" ] && [ "$s2" -gt "$s1" ] || fail "after the refused dump: $s2 sent, $e2 echoed"

stream_then_queue
read s3 e3 err3 < <(status)
[ "$s3" -gt "$e3" ] || fail "no bytes wait in the tree's queue before the dump ($s3 sent, $e3 echoed)"
"$VZCPT" dump -t $T -D "$WORK/img" --tcp-established > "$WORK/dump.out" 2>&1 || fail "dump --tcp-established: $(cat $WORK/dump.out)"
wait $T 2>/dev/null
kill -0 $T 2>/dev/null && fail "the tree survived the dump"
"$VZCPT" show -D "$WORK/img" > "$WORK/show.txt" || fail "show"
grep -q "established (peer outside): .* receive seq [0-9]* ([1-9][0-9]* bytes queued)" "$WORK/show.txt" || fail "the image has no outside connection with queued bytes: $(grep TCP $WORK/show.txt)"
sleep 0.5
read s4 e4 err4 < <(status)
[ -z "$err4" ] || fail "the peer saw '$err4' when the tree was killed"
"$VZCPT" restore -D "$WORK/img" --detach --pidfile "$WORK/pid" > "$WORK/restore.out" 2>&1 || fail "restore: $(cat $WORK/restore.out)"
[ "$(cat $WORK/pid)" = "$T" ] || fail "restored as PID $(cat $WORK/pid), dumped $T"
touch "$WORK/read" "$WORK/go"; sleep 1; rm -f "$WORK/go"
for _ in $(seq 100); do
    read s5 e5 err5 < <(status)
    [ -n "$err5" ] && fail "peer after restore: $err5"
    [ "$s5" = "$e5" ] && break
    sleep 0.1
done
[ "$s5" = "$e5" ] || fail "after restore: $s5 bytes sent, $e5 echoed"
[ "$s5" -gt "$s4" ] || fail "nothing was sent after the restore ($s4, then $s5)"
ss -tn state established 2>/dev/null | grep -q ":$PORT" || [ ! -x "$(command -v ss)" ] || fail "no established connection to port $PORT after restore"
echo OK
"#;

/// Sockets the dump refuses, each named, beside an established connection of the tree: the
/// tree goes on, its connection out of repair mode with its options.
const REFUSED: &str = r#"
cat > "$WORK/mixed.py" <<'EOF'
import os, socket, sys, time
work, kind = os.environ["WORK"], sys.argv[1]
L = socket.socket()
L.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
L.bind(("127.0.0.1", 0))
L.listen(4)
a = socket.create_connection(L.getsockname())
b, _ = L.accept()
if kind == "raw":
    extra = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
elif kind == "genl":
    extra = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
elif kind == "backlog":
    extra = socket.create_connection(L.getsockname())
elif kind == "halfclosed":
    c = socket.create_connection(L.getsockname())
    d, _ = L.accept()
    c.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
open(work + "/ready-" + kind, "w").close()
n = 0
while True:
    a.sendall(b"x")
    assert b.recv(1) == b"x"
    n += 1
    st = "%d %d %d\n" % (n, b.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), b.getsockopt(socket.IPPROTO_TCP, 19))
    open(work + "/st.tmp", "w").write(st)
    os.rename(work + "/st.tmp", work + "/st-" + kind)
    time.sleep(0.05)
EOF
for kind in raw genl backlog halfclosed; do
    case $kind in
        raw) want="raw IPv4 socket";;
        genl) want="NETLINK_GENERIC";;
        backlog) want="accept queue";;
        halfclosed) want="FIN_WAIT2\|CLOSE_WAIT";;
    esac
    python3 "$WORK/mixed.py" $kind > "$WORK/$kind.log" 2>&1 &
    P=$!
    wait_file "$WORK/st-$kind"
    out=$("$VZCPT" dump -t $P -D "$WORK/img-$kind" --tcp-established 2>&1) && fail "$kind: the dump succeeded"
    echo "$out" | grep -q "$want" || fail "$kind: the error does not say '$want': $out"
    echo "$out" | grep -q "task $P" || fail "$kind: the error does not name task $P: $out"
    [ -e "$WORK/img-$kind" ] && fail "$kind: a partial image was left"
    [ "$(field $P TracerPid)" = 0 ] || fail "$kind: still traced"
    read n1 _ < "$WORK/st-$kind"
    sleep 0.5
    read n2 reuse repair < "$WORK/st-$kind"
    [ "$n2" -gt "$n1" ] || fail "$kind: the connection stopped after the failed dump ($n1, $n2): $(cat $WORK/$kind.log)"
    [ "$reuse" = 1 ] || fail "$kind: SO_REUSEADDR of the accepted socket is $reuse after the failed dump"
    [ "$repair" = 0 ] || fail "$kind: the socket stayed in repair mode"
    kill $P; wait $P 2>/dev/null
done
echo OK
"#;

fn run_script(name: &str, body: &str) -> Result<(), Failed> {
    tests::script::Script {
        name,
        prefix: "tcp",
        body: format!("{PRELUDE}\n{body}"),
        unshare: &["--net"],
        env: vec![
            ("PEER_PY", PEER_PY.to_string()),
            ("TREE_PY", TREE_PY.to_string()),
        ],
        timeout_s: 120,
    }
    .run()
    .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let mut skip = None;
    if !nix::unistd::geteuid().is_root() {
        skip = Some("needs root (ptrace, namespaces, TCP_REPAIR)".to_string());
    } else if Command::new("python3").arg("-V").output().is_err() {
        skip = Some("needs python3".to_string());
    } else if Command::new("ip").arg("-V").output().is_err() {
        skip = Some("needs ip(8) to bring lo up".to_string());
    }
    let scripts: Vec<(&str, &str)> = vec![
        (
            "outside_peer_needs_tcp_established_and_goes_on_after_restore",
            OUTSIDE_PEER,
        ),
        (
            "refused_sockets_are_named_and_leave_the_tree_running",
            REFUSED,
        ),
    ];
    let trials = scripts
        .into_iter()
        .map(|(name, body)| {
            let reason = skip.clone();
            let ignored = reason.is_some();
            if let Some(r) = &reason {
                eprintln!("{name}: ignored: {r}");
            }
            Trial::test(name, move || {
                if let Some(r) = reason {
                    return Err(format!("skipped: {r}").into());
                }
                run_script(name, body)
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
