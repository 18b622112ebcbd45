//! Real services in VEs, with clients outside them (in the test "host's" own network
//! namespace), through `vzctl chkpnt` + `vzctl restore` and through `--leave-running`
//! snapshots: redis, nginx, PostgreSQL, a Python asyncio server; and the network lock: a peer streaming
//! into a VE during its checkpoint and restore loses no byte and sees no reset.
//! See `tests::ve_harness` for how each trial runs.

/// A Python module for the clients (in `$WORK`): connecting while the VE's server comes up,
/// and waiting at a named step until the script says go.
const CLIENT_LIB: &str = r#"
cat > "$WORK/vzt.py" <<'PY'
import os, socket, time
def connect(host, port, tries=200):
    for _ in range(tries):
        try:
            return socket.create_connection((host, port), timeout=30)
        except OSError:
            time.sleep(0.05)
    raise SystemExit("cannot connect to %s:%d" % (host, port))
def wait(work, name):
    open(work + "/" + name, "w").close()
    while not os.path.exists(work + "/go-" + name):
        time.sleep(0.05)
PY
"#;

/// A client outside the VE streams numbered bytes into a server in the VE without pause,
/// through a checkpoint and restore and through a snapshot; the server checks every byte it
/// gets. Neither side may see a reset, a gap or a repeat.
const STREAM_THROUGH_LOCK: &str = r#"
mkdir -p "$WORK/c"
vz create 401 --command 'exec python3 /root/sink.py' || fail "create"
vz set 401 --ipadd 10.99.4.1 --save || fail "ipadd"
mkdir -p "$VZ_DIR/private/401/upper/root"
cat > "$VZ_DIR/private/401/upper/root/sink.py" <<'PY'
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7100)); s.listen()
c, _ = s.accept()
n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    for x in b:
        if x != n % 251:
            open("/root/result", "w").write("FAIL byte %d is %d, expected %d" % (n, x, n % 251)); raise SystemExit
        n += 1
open("/root/result", "w").write("PASS %d" % n)
PY
vz start 401 || fail "start"
PYTHONPATH="$WORK" python3 - "$WORK/c" <<'PY' &
import socket, sys, time, os
d = sys.argv[1]
import vzt
s = vzt.connect("10.99.4.1", 7100)
buf = bytes(i % 251 for i in range(251 * 64))
sent = 0
open(d + "/streaming", "w").close()
try:
    while not os.path.exists(d + "/stop"):
        off = sent % 251
        s.sendall(buf[off:off + 4096])
        sent += 4096
        time.sleep(0.001)
    s.shutdown(socket.SHUT_WR)
    open(d + "/client", "w").write("SENT %d" % sent)
except OSError as e:
    open(d + "/client", "w").write("ERROR %s after %d bytes" % (e, sent))
PY
until_true 10 test -e "$WORK/c/streaming" || fail "the client does not stream"
sleep 0.3
vz chkpnt 401 || fail "chkpnt"
sleep 0.5
vz restore 401 || fail "restore"
sleep 0.5
vz chkpnt 401 --leave-running --dumpfile "$WORK/snap" || fail "chkpnt --leave-running"
sleep 0.5
touch "$WORK/c/stop"; wait
client=$(cat "$WORK/c/client")
case "$client" in SENT*) ;; *) fail "client: $client" ;; esac
until_true 20 test -e "$VZ_DIR/private/401/upper/root/result" || fail "the server gives no result"
result=$(cat "$VZ_DIR/private/401/upper/root/result")
[ "$result" = "PASS ${client#SENT }" ] || fail "server: $result, client: $client"
echo "$client through a checkpoint, a restore and a snapshot"
echo OK
"#;

/// redis-server in a VE; a client outside holds one connection: keys written before the
/// checkpoint are read after the restore over the same connection; a snapshot later, it
/// goes on serving.
const REDIS: &str = r#"
command -v redis-server >/dev/null || fail "redis-server is not installed"
vz create 402 --command 'exec redis-server --bind 0.0.0.0 --port 6379 --save "" --appendonly no --protected-mode no --daemonize no' || fail "create"
vz set 402 --ipadd 10.99.4.2 --save || fail "ipadd"
vz start 402 || fail "start"
PYTHONPATH="$WORK" python3 - "$WORK" <<'PY' &
import socket, sys, time, os
w = sys.argv[1]
import vzt
s = vzt.connect("10.99.4.2", 6379)
f = s.makefile("rb")
port = s.getsockname()[1]
def cmd(c):
    s.sendall(c.encode() + b"\r\n")
    return f.readline()
def get(k):
    s.sendall(("GET %s\r\n" % k).encode())
    n = f.readline()
    return f.readline().strip().decode() if n.startswith(b"$") and n != b"$-1\r\n" else None
def wait(name):
    vzt.wait(w, name)
try:
    for i in range(1000):
        assert cmd("SET key%d value%d" % (i, i)) == b"+OK\r\n"
    wait("written")
    bad = [i for i in range(1000) if get("key%d" % i) != "value%d" % i]
    assert not bad, "keys lost after restore: %r" % bad[:5]
    assert cmd("SET after restore") == b"+OK\r\n"
    wait("restored")
    assert get("after") == "restore" and get("key999") == "value999"
    assert s.getsockname()[1] == port
    open(w + "/client", "w").write("PASS")
except Exception as e:
    open(w + "/client", "w").write("FAIL %r" % (e,))
PY
until_true 20 test -e "$WORK/written" || fail "the client did not write its keys"
vz chkpnt 402 || fail "chkpnt"
vz restore 402 || fail "restore"
touch "$WORK/go-written"
until_true 20 test -e "$WORK/restored" || fail "the client gets no answer after restore: $(cat $WORK/client 2>/dev/null)"
vz chkpnt 402 --leave-running --dumpfile "$WORK/snap" || fail "snapshot"
touch "$WORK/go-restored"; wait
[ "$(cat $WORK/client)" = PASS ] || fail "client: $(cat $WORK/client)"
echo OK
"#;

/// nginx in a VE serving a static file; a client outside keeps one HTTP/1.1 connection alive
/// and fetches again on it after the restore, and after a snapshot.
const NGINX: &str = r#"
command -v nginx >/dev/null || fail "nginx is not installed"
vz create 403 --command 'exec nginx -c /root/nginx.conf' || fail "create"
vz set 403 --ipadd 10.99.4.3 --save || fail "ipadd"
mkdir -p "$VZ_DIR/private/403/upper/root/www"
head -c 20000 /dev/urandom | base64 > "$VZ_DIR/private/403/upper/root/www/page.txt"
cat > "$VZ_DIR/private/403/upper/root/nginx.conf" <<'CONF'
daemon off;
master_process on;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 1000;
    server { listen 80; root /root/www; }
}
CONF
vz start 403 || fail "start"
PYTHONPATH="$WORK" python3 - "$WORK" "$VZ_DIR/private/403/upper/root/www/page.txt" <<'PY' &
import socket, sys, time, os
w, page = sys.argv[1], open(sys.argv[2], "rb").read()
import vzt
s = vzt.connect("10.99.4.3", 80)
f = s.makefile("rb")
def fetch():
    s.sendall(b"GET /page.txt HTTP/1.1\r\nHost: ve\r\n\r\n")
    status = f.readline()
    length = None
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        if h.lower().startswith(b"content-length:"):
            length = int(h.split(b":")[1])
    body = f.read(length)
    assert status.startswith(b"HTTP/1.1 200"), status
    assert body == page, "body differs"
def wait(name):
    vzt.wait(w, name)
try:
    fetch()
    wait("fetched")
    fetch()
    wait("restored")
    fetch()
    open(w + "/client", "w").write("PASS")
except Exception as e:
    open(w + "/client", "w").write("FAIL %r" % (e,))
PY
until_true 20 test -e "$WORK/fetched" || fail "the first fetch failed: $(cat $WORK/client 2>/dev/null)"
vz chkpnt 403 || fail "chkpnt"
vz restore 403 || fail "restore"
touch "$WORK/go-fetched"
until_true 20 test -e "$WORK/restored" || fail "no fetch after restore: $(cat $WORK/client 2>/dev/null)"
vz chkpnt 403 --leave-running --dumpfile "$WORK/snap" || fail "snapshot"
touch "$WORK/go-restored"; wait
[ "$(cat $WORK/client)" = PASS ] || fail "client: $(cat $WORK/client)"
echo OK
"#;

/// A Python asyncio server (epoll, its self-pipe socketpair, timers through call_later) with
/// a client outside: the server's ticks go on and it answers on the same connection.
const ASYNCIO: &str = r#"
vz create 404 --command 'exec python3 /root/srv.py' || fail "create"
vz set 404 --ipadd 10.99.4.4 --save || fail "ipadd"
mkdir -p "$VZ_DIR/private/404/upper/root"
cat > "$VZ_DIR/private/404/upper/root/srv.py" <<'PY'
import asyncio
ticks = 0
def tick(loop):
    global ticks
    ticks += 1
    loop.call_later(0.01, tick, loop)
async def serve(r, w):
    while line := await r.readline():
        w.write(b"%s ticks=%d\n" % (line.strip(), ticks))
        await w.drain()
async def main():
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, tick, loop)
    srv = await asyncio.start_server(serve, "0.0.0.0", 7200)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
vz start 404 || fail "start"
PYTHONPATH="$WORK" python3 - "$WORK" <<'PY' &
import socket, sys, time, os
w = sys.argv[1]
import vzt
s = vzt.connect("10.99.4.4", 7200)
f = s.makefile("rb")
def ask(word):
    s.sendall(word.encode() + b"\n")
    a, t = f.readline().split()
    assert a == word.encode(), a
    return int(t.split(b"=")[1])
def wait(name):
    vzt.wait(w, name)
try:
    t1 = ask("one")
    wait("asked")
    t2 = ask("two")
    time.sleep(0.2)
    t3 = ask("three")
    assert t1 < t2 < t3, (t1, t2, t3)
    open(w + "/client", "w").write("PASS")
except Exception as e:
    open(w + "/client", "w").write("FAIL %r" % (e,))
PY
until_true 20 test -e "$WORK/asked" || fail "no first answer: $(cat $WORK/client 2>/dev/null)"
vz chkpnt 404 || fail "chkpnt"
vz restore 404 || fail "restore"
vz chkpnt 404 --leave-running --dumpfile "$WORK/snap" || fail "snapshot"
touch "$WORK/go-asked"; wait
[ "$(cat $WORK/client)" = PASS ] || fail "client: $(cat $WORK/client)"
echo OK
"#;

/// PostgreSQL (postmaster and its workers: shared memory, pipes, unix and TCP sockets,
/// signals) in a VE; a psql session outside holds an open transaction across the checkpoint
/// and restore: its uncommitted row is there, and it commits.
const POSTGRES: &str = r#"
PGB=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGB/postgres" ] && command -v psql >/dev/null || fail "PostgreSQL is not installed"
id postgres >/dev/null || fail "no postgres user"
vz create 405 --command "exec setpriv --reuid postgres --regid postgres --init-groups $PGB/postgres -D /var/lib/pgt -c listen_addresses=* -c unix_socket_directories=/tmp -c shared_buffers=16MB" || fail "create"
vz set 405 --ipadd 10.99.4.5 --save || fail "ipadd"
D="$VZ_DIR/private/405/upper/var/lib/pgt"
mkdir -p "$D" && chown postgres:postgres "$D" && chmod 700 "$D"
# The data directory lives in the private area, owned by postgres: its parents must let it in.
chmod 755 "$WORK" "$VZ_DIR" "$VZ_DIR/private" "$VZ_DIR/private/405" "$VZ_DIR/private/405/upper"
setpriv --reuid postgres --regid postgres --init-groups "$PGB/initdb" -D "$D" -A trust > "$WORK/initdb.log" 2>&1 || fail "initdb: $(tail -3 $WORK/initdb.log)"
echo "host all all 0.0.0.0/0 trust" >> "$D/pg_hba.conf"
vz start 405 || fail "start"
until_true 20 psql -h 10.99.4.5 -U postgres -c 'select 1' || fail "postgres does not answer"
coproc PSQL { psql -h 10.99.4.5 -U postgres -q -A -t 2>&1; }
echo "create table t(x int); begin; insert into t values (42); select 'inserted', pg_backend_pid();" >&"${PSQL[1]}"
read -t 20 line <&"${PSQL[0]}" || fail "no answer from the session"
case "$line" in inserted*) ;; *) fail "insert: $line" ;; esac
[ "$(vz exec 405 ps -e --no-headers -o comm | grep -c postgres)" -ge 5 ] || fail "postgres workers: $(vz exec 405 ps -e -o pid,comm)"
vz chkpnt 405 || fail "chkpnt"
vz restore 405 || fail "restore"
echo "select count(*) from t, pg_backend_pid() p; commit; select x from t;" >&"${PSQL[1]}"
read -t 20 a <&"${PSQL[0]}" || fail "the session does not answer after restore"
read -t 20 b <&"${PSQL[0]}" || fail "no answer to the select after commit"
[ "$a" = 1 ] && [ "$b" = 42 ] || fail "after restore: '$a' '$b' (expected the uncommitted row in the transaction, then 42 committed)"
[ "$(psql -h 10.99.4.5 -U postgres -A -t -c 'select x from t')" = 42 ] || fail "a new session does not see the committed row"
vz chkpnt 405 --leave-running --dumpfile "$WORK/snap" || fail "snapshot"
[ "$(psql -h 10.99.4.5 -U postgres -A -t -c 'select count(*) from t')" = 1 ] || fail "postgres does not serve after the snapshot"
echo OK
"#;

fn main() {
    tests::ve_harness::run_trials(vec![
        (
            "stream_through_network_lock",
            format!("{CLIENT_LIB}\n{STREAM_THROUGH_LOCK}"),
        ),
        (
            "redis_with_outside_client",
            format!("{CLIENT_LIB}\n{REDIS}"),
        ),
        ("nginx_keepalive_client", format!("{CLIENT_LIB}\n{NGINX}")),
        ("python_asyncio_server", format!("{CLIENT_LIB}\n{ASYNCIO}")),
        (
            "postgres_open_transaction",
            format!("{CLIENT_LIB}\n{POSTGRES}"),
        ),
    ])
}
