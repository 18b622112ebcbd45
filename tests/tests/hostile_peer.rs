//! Hostile peers against a real `vzmigrate --listen` daemon: clients without a certificate or
//! with one the daemon does not trust, a flood of connections, handshakes left half open, a
//! trusted peer stalling in the middle of a frame, frames over their kind's cap. After each the
//! daemon is up, answers a trusted Hello quickly, its RSS has not grown past a bound, the VE
//! running on its host is untouched, and a real migration still goes through.
//!
//! Each trial is two "hosts" as in `tests/migrate.rs` (host B, in a network namespace of its
//! own, runs the daemon). The hostile client is this test binary itself, run by the trial's
//! script as `hostile_peer hostile-client SCENARIO ...`: a raw QUIC client (quinn + rustls)
//! that does what the scenario says and checks how the daemon answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{FrameHeader, Hello, Kind, Message, HEADER_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// After `ve_harness::TWO_HOSTS`: a VE on the daemon's host and the scenario helpers.
const HOSTILE_HOSTS: &str = r#"
# A VE runs on the daemon's host: no hostile peer may touch it.
b "$BIN/vzctl" create 130 --command "$LOOP" || fail "create 130 on B"
b "$BIN/vzctl" start 130 || fail "start 130 on B"
until_true 10 test -s "$VB/private/130/upper/root/log" || fail "VE 130 does not run on B"
conf130=$(md5sum < "$VB/conf/130.conf")
# hostile SCENARIO: the raw client, as a trusted peer (A's key) where the scenario needs one.
# Its figures also go to $HOSTILE_FIGURES when set (docs/RELIABILITY.md quotes them).
note() { echo "$*"; [ -z "${HOSTILE_FIGURES:-}" ] || echo "$*" >> "$HOSTILE_FIGURES"; }
hostile() {
    local out
    out=$("$HOSTILE" hostile-client "$1" 10.98.0.2:4422 "$DAEMON" "$VZ_DIR/migrate") || fail "scenario $1: $out; daemon: $(tail -n 20 $WORK/daemon.log)"
    [ "$1" = hello ] || note "$out"
}
# untouched: the daemon is up, answers a trusted Hello, and VE 130 on B runs as it was.
untouched() {
    kill -0 $DAEMON 2>/dev/null || fail "the daemon died: $(tail -n 20 $WORK/daemon.log)"
    hostile hello
    [ "$(b "$BIN/vzctl" status 130)" = "VE 130 running" ] || fail "VE 130 on B: $(b "$BIN/vzctl" status 130)"
    [ "$(md5sum < "$VB/conf/130.conf")" = "$conf130" ] || fail "the config of VE 130 changed"
    local last; last=$(tail -n1 "$VB/private/130/upper/root/log")
    until_true 5 sh -c "[ \$(tail -n1 $VB/private/130/upper/root/log) -gt $last ]" || fail "VE 130 stopped counting"
    [ -e "$VB/migrate/incoming/130" ] && fail "a migration of VE 130 is under way on B"
    return 0
}
rss() { awk '/^VmRSS/ {print $2}' /proc/$DAEMON/status; }
untouched
RSS0=$(rss)
"#;

/// Clients without a certificate, with an untrusted one, and 200 of them at once: each is
/// refused in the handshake and never gets a frame read.
const UNAUTHENTICATED: &str = r#"
hostile no-cert
untouched
hostile untrusted-key
untouched
hostile flood
untouched
RSS1=$(rss)
note "daemon RSS: $RSS0 kB before, $RSS1 kB after 200 refused connections"
[ "$RSS1" -lt $((RSS0 + 32768)) ] || fail "the daemon's RSS grew from $RSS0 to $RSS1 kB"
echo OK
"#;

/// Handshakes started and never finished (the client's first datagram only) must not keep
/// the daemon from serving others: each was waited for in turn, 30 s apiece.
const HALF_OPEN: &str = r#"
hostile half-open
untouched
RSS1=$(rss)
note "daemon RSS: $RSS0 kB before, $RSS1 kB after 50 half-open handshakes"
[ "$RSS1" -lt $((RSS0 + 32768)) ] || fail "the daemon's RSS grew from $RSS0 to $RSS1 kB"
echo OK
"#;

/// A trusted peer that stops in the middle of a frame (keeping its connection alive) is
/// dropped by the daemon, which then serves others; frames over their kind's cap are refused
/// before their payload is read; a peer that asks for the CTID of the VE running there is
/// refused and its later messages change nothing; then a real migration goes through.
const TRUSTED_BUT_HOSTILE: &str = r#"
hostile stall-mid-frame
untouched
hostile oversized
untouched
hostile big-frame-stall
untouched
hostile taken-ctid
untouched
hostile page-streams
untouched
[ -e "$VB/conf/141.conf" ] && fail "VE 141 of the page-stream peer was left on B"
RSS1=$(rss)
note "daemon RSS: $RSS0 kB before, $RSS1 kB after"
[ "$RSS1" -lt $((RSS0 + 65536)) ] || fail "the daemon's RSS grew from $RSS0 to $RSS1 kB"
vz create 131 --command "$LOOP" || fail "create 131"
vz start 131 || fail "start 131"
until_true 10 vz exec 131 test -s /tmp/count || fail "VE 131 does not run"
out=$("$BIN/vzmigrate" 10.98.0.2 131 2>&1) || fail "a migration after the hostile peers: $out $(tail -n 20 $WORK/daemon.log)"
[ "$(b "$BIN/vzctl" status 131)" = "VE 131 running" ] || fail "VE 131 on B: $(b "$BIN/vzctl" status 131)"
status_is 131 absent || fail "VE 131 is still on A"
untouched
echo OK
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hostile-client") {
        std::process::exit(client_main(&args[2..]));
    }
    let me = std::env::current_exe().expect("the path of this test binary");
    let pre = format!(
        "HOSTILE={}\n{}\n{HOSTILE_HOSTS}",
        shell_quote(&me),
        tests::ve_harness::TWO_HOSTS
    );
    tests::ve_harness::run_trials(vec![
        (
            "hostile_unauthenticated_peers_are_refused",
            format!("{pre}\n{UNAUTHENTICATED}"),
        ),
        (
            "hostile_half_open_handshakes_do_not_block_the_daemon",
            format!("{pre}\n{HALF_OPEN}"),
        ),
        (
            "hostile_trusted_peer_stalls_and_oversized_frames",
            format!("{pre}\n{TRUSTED_BUT_HOSTILE}"),
        ),
    ])
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

// ---- The hostile client ----

type R<T> = Result<T, String>;

/// How long a trusted Hello may take to be answered while hostile peers are about.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// How long the daemon may take to drop a peer stalled in the middle of a frame.
const STALL_DROPPED_WITHIN: Duration = Duration::from_secs(60);

struct Ctx {
    daemon: SocketAddr,
    daemon_pid: i32,
    trusted_dir: PathBuf,
}

fn client_main(args: &[String]) -> i32 {
    let [scenario, addr, pid, dir] = args else {
        eprintln!("usage: hostile_peer hostile-client SCENARIO ADDR DAEMON_PID TRUSTED_KEY_DIR");
        return 2;
    };
    let ctx = Ctx {
        daemon: match addr.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{addr}: {e}");
                return 2;
            }
        },
        daemon_pid: pid.parse().unwrap_or(0),
        trusted_dir: PathBuf::from(dir),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let r = rt.block_on(async {
        match scenario.as_str() {
            "hello" => trusted_hello(&ctx)
                .await
                .map(|t| format!("answered in {t:?}")),
            "no-cert" => refused(&ctx, Auth::None).await,
            "untrusted-key" => refused(&ctx, Auth::Untrusted).await,
            "flood" => flood(&ctx).await,
            "half-open" => half_open(&ctx).await,
            "stall-mid-frame" => stall_mid_frame(&ctx).await,
            "oversized" => oversized(&ctx).await,
            "big-frame-stall" => big_frame_stall(&ctx).await,
            "taken-ctid" => taken_ctid(&ctx).await,
            "page-streams" => page_streams(&ctx).await,
            s => Err(format!("no scenario {s}")),
        }
    });
    match r {
        Ok(what) => {
            println!("{scenario}: {what}");
            0
        }
        Err(e) => {
            println!("FAIL: {scenario}: {e}");
            1
        }
    }
}

/// The daemon's resident set, in kB.
fn rss_kb(pid: i32) -> R<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("the daemon ({pid}): {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

#[derive(Clone, Copy)]
enum Auth {
    /// No client certificate at all.
    None,
    /// A fresh self-signed certificate the daemon has never seen.
    Untrusted,
    /// Host A's key, which the daemon trusts.
    Trusted,
}

/// Accepts whatever certificate the daemon shows: a hostile client does not care.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(ctx: &Ctx, auth: Auth, keep_alive: bool) -> R<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut crypto = match auth {
        Auth::None => builder.with_no_client_auth(),
        Auth::Untrusted => {
            let ck = rcgen::generate_simple_self_signed(vec!["vzmigrate".to_string()])
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
            builder
                .with_client_auth_cert(vec![ck.cert.der().clone()], key)
                .map_err(|e| e.to_string())?
        }
        Auth::Trusted => {
            let read = |n: &str| {
                std::fs::read(ctx.trusted_dir.join(n))
                    .map_err(|e| format!("{}: {e}", ctx.trusted_dir.join(n).display()))
            };
            let cert = CertificateDer::from(read("cert.der")?);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read("key.der")?));
            builder
                .with_client_auth_cert(vec![cert], key)
                .map_err(|e| e.to_string())?
        }
    };
    // The daemon's protocol name: without it the handshake fails before the certificates.
    crypto.alpn_protocols = vec![b"vzmigrate/1".to_vec()];
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    if keep_alive {
        // A peer that keeps its connection alive while sending nothing useful: the QUIC idle
        // timeout never fires for it.
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_secs(1)));
        config.transport_config(Arc::new(t));
    }
    Ok(config)
}

fn endpoint() -> R<quinn::Endpoint> {
    quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).map_err(|e| format!("bind: {e}"))
}

async fn connect(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    auth: Auth,
    keep_alive: bool,
) -> R<quinn::Connection> {
    let cfg = client_config(ctx, auth, keep_alive)?;
    let c = ep
        .connect_with(cfg, ctx.daemon, "vzmigrate")
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .map_err(|_| "the handshake took over 10 s".to_string())?
        .map_err(|e| format!("handshake: {e}"))
}

fn frame(m: &Message) -> Vec<u8> {
    proto::encode(m).expect("encode a message")
}

fn hello_msg() -> Message {
    Message::Hello(Hello {
        version: proto::VERSION,
        engine: "hostile".into(),
        host: "hostile".into(),
        caps: vec![],
    })
}

/// Reads one frame; `Ok(None)` when the daemon ends the stream or the connection.
async fn read_frame(rx: &mut quinn::RecvStream) -> R<Option<Message>> {
    let mut h = [0u8; HEADER_LEN];
    if rx.read_exact(&mut h).await.is_err() {
        return Ok(None);
    }
    let header = FrameHeader::parse(&h).map_err(|e| format!("the daemon sent {e}"))?;
    let mut payload = vec![0u8; header.len as usize];
    if rx.read_exact(&mut payload).await.is_err() {
        return Ok(None);
    }
    proto::decode_payload(header, &payload)
        .map(Some)
        .map_err(|e| format!("the daemon sent {e}"))
}

/// A trusted Hello, answered by a HelloAck within [`HELLO_WITHIN`]; returns how long it took.
async fn trusted_hello(ctx: &Ctx) -> R<Duration> {
    let t = Instant::now();
    let ep = endpoint()?;
    let r = tokio::time::timeout(HELLO_WITHIN, async {
        let conn = connect(ctx, &ep, Auth::Trusted, false).await?;
        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
        tx.write_all(&frame(&hello_msg()))
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_frame(&mut rx).await?;
        conn.close(0u32.into(), b"hello done");
        match reply {
            Some(Message::HelloAck(h)) if h.version == proto::VERSION => Ok(()),
            other => Err(format!("a Hello was answered with {other:?}")),
        }
    })
    .await
    .map_err(|_| format!("no HelloAck within {HELLO_WITHIN:?}"))?;
    r?;
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    Ok(t.elapsed())
}

/// An unauthenticated client: whatever the handshake says on its side (in TLS 1.3 the client
/// may finish before the server has checked its certificate), no frame of the daemon ever
/// comes, and the connection is closed.
async fn refused_once(ctx: &Ctx, ep: &quinn::Endpoint, auth: Auth) -> R<()> {
    let cfg = client_config(ctx, auth, false)?;
    let c = ep
        .connect_with(cfg, ctx.daemon, "vzmigrate")
        .map_err(|e| format!("connect: {e}"))?;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        let conn = match c.await {
            Ok(c) => c,
            Err(_) => return Ok(()),
        };
        let Ok((mut tx, mut rx)) = conn.open_bi().await else {
            return Ok(());
        };
        let _ = tx.write_all(&frame(&hello_msg())).await;
        match read_frame(&mut rx).await {
            Ok(None) | Err(_) => Ok(()),
            Ok(Some(m)) => Err(format!("an unauthenticated client got {:?}", m.kind())),
        }
    })
    .await;
    outcome.map_err(|_| "the connection was neither refused nor closed in 20 s".to_string())?
}

async fn refused(ctx: &Ctx, auth: Auth) -> R<String> {
    let ep = endpoint()?;
    let t = Instant::now();
    refused_once(ctx, &ep, auth).await?;
    Ok(format!("refused in {:?}", t.elapsed()))
}

/// 200 connections at once, half without a certificate, half with an untrusted one.
async fn flood(ctx: &Ctx) -> R<String> {
    let rss0 = rss_kb(ctx.daemon_pid)?;
    let t = Instant::now();
    let ep = endpoint()?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let auth = if i % 2 == 0 {
            Auth::None
        } else {
            Auth::Untrusted
        };
        let ctx = Ctx {
            daemon: ctx.daemon,
            daemon_pid: ctx.daemon_pid,
            trusted_dir: ctx.trusted_dir.clone(),
        };
        let ep = ep.clone();
        tasks.spawn(async move { refused_once(&ctx, &ep, auth).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let rss1 = rss_kb(ctx.daemon_pid)?;
    let hello = trusted_hello(ctx).await?;
    Ok(format!(
        "200 refused in {:?}; daemon RSS {rss0} -> {rss1} kB; a trusted Hello then took {hello:?}",
        t.elapsed()
    ))
}

/// 50 handshakes of which the daemon gets only the client's first datagram (through a relay
/// that forwards that one and drops the rest): each waits on the daemon's side for a client
/// that never answers. A trusted Hello must still be answered at once.
async fn half_open(ctx: &Ctx) -> R<String> {
    const N: usize = 50;
    let mut relays = Vec::new();
    let mut pending = Vec::new();
    let ep = endpoint()?;
    for _ in 0..N {
        let relay = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = relay.local_addr().map_err(|e| e.to_string())?.port();
        let relay = Arc::new(relay);
        let r = relay.clone();
        let daemon = ctx.daemon;
        relays.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut first = true;
            // The client's first datagram (its Initial, with the ClientHello) goes on; every
            // later one, and everything the daemon answers, is dropped.
            while let Ok((n, from)) = r.recv_from(&mut buf).await {
                if first && from != daemon {
                    first = false;
                    let _ = r.send_to(&buf[..n], daemon).await;
                }
            }
        }));
        let cfg = client_config(ctx, Auth::Trusted, false)?;
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        pending.push(
            ep.connect_with(cfg, to, "vzmigrate")
                .map_err(|e| e.to_string())?,
        );
        // One at a time, so that the daemon queues them in this order before the Hello.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = trusted_hello(ctx).await.map_err(|e| {
        format!("with {N} half-open handshakes at the daemon: {e} (handshakes must not be waited for one by one)")
    })?;
    for r in relays {
        r.abort();
    }
    drop(pending);
    Ok(format!(
        "a trusted Hello took {took:?} with {N} half-open handshakes"
    ))
}

/// Sends `bytes` on a new stream of a trusted connection (kept alive) and returns both.
async fn trusted_stream(
    ctx: &Ctx,
    ep: &quinn::Endpoint,
    bytes: &[u8],
) -> R<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = connect(ctx, ep, Auth::Trusted, true).await?;
    let (mut tx, rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    tx.write_all(bytes).await.map_err(|e| e.to_string())?;
    Ok((conn, tx, rx))
}

/// Waits until the daemon ends the connection (or the stream); fails after `within`.
async fn dropped_within(
    conn: &quinn::Connection,
    rx: &mut quinn::RecvStream,
    within: Duration,
) -> R<Duration> {
    let t = Instant::now();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                _ = conn.closed() => return,
                r = rx.read(&mut buf) => match r {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
            }
        }
    })
    .await
    .map_err(|_| format!("the daemon did not drop the connection within {within:?}"))?;
    Ok(t.elapsed())
}

/// Half a Hello frame, then nothing, the connection kept alive. While it stalls, a trusted
/// Hello is waited for; the daemon must drop the stalled peer and then serve the other.
async fn stall_mid_frame(ctx: &Ctx) -> R<String> {
    let ep = endpoint()?;
    let f = frame(&hello_msg());
    let (conn, _tx, mut rx) = trusted_stream(ctx, &ep, &f[..HEADER_LEN + 3]).await?;
    let dropped = dropped_within(&conn, &mut rx, STALL_DROPPED_WITHIN).await?;
    let hello = trusted_hello(ctx).await?;
    Ok(format!(
        "the stalled peer was dropped after {dropped:?}; a trusted Hello then took {hello:?}"
    ))
}

/// Headers whose length is over their kind's cap, as the first frame: the connection is
/// dropped at once, nothing allocated for the payload.
async fn oversized(ctx: &Ctx) -> R<String> {
    let ep = endpoint()?;
    let mut took = Vec::new();
    for kind in [Kind::Hello, Kind::FsFile, Kind::FinalState, Kind::PageBatch] {
        let mut h = FrameHeader { kind, len: 0 }.to_bytes();
        h[4..8].copy_from_slice(&kind.max_len().saturating_add(1).to_le_bytes());
        let (conn, _tx, mut rx) = trusted_stream(ctx, &ep, &h).await?;
        took.push(dropped_within(&conn, &mut rx, Duration::from_secs(5)).await?);
    }
    // And an unknown kind, and a bad magic.
    for h in [[0x4d, 0x56, 0xff, 0x7f, 1, 0, 0, 0], [0u8; 8]] {
        let (conn, _tx, mut rx) = trusted_stream(ctx, &ep, &h).await?;
        took.push(dropped_within(&conn, &mut rx, Duration::from_secs(5)).await?);
    }
    Ok(format!("each dropped, in {took:?}"))
}

/// The biggest frame a kind allows (FinalState: 256 MiB) announced as the first message, a
/// MiB of it sent, then a stall: the daemon must not keep that memory, nor the peer.
async fn big_frame_stall(ctx: &Ctx) -> R<String> {
    let rss0 = rss_kb(ctx.daemon_pid)?;
    let ep = endpoint()?;
    let h = FrameHeader {
        kind: Kind::FinalState,
        len: Kind::FinalState.max_len(),
    }
    .to_bytes();
    let mut bytes = h.to_vec();
    bytes.extend(std::iter::repeat_n(0x41u8, 1 << 20));
    let (conn, _tx, mut rx) = trusted_stream(ctx, &ep, &bytes).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_mid = rss_kb(ctx.daemon_pid)?;
    let dropped = dropped_within(&conn, &mut rx, STALL_DROPPED_WITHIN).await?;
    let rss1 = rss_kb(ctx.daemon_pid)?;
    if rss_mid > rss0 + 64 * 1024 {
        return Err(format!(
            "RSS went from {rss0} to {rss_mid} kB for a frame announced, not sent"
        ));
    }
    Ok(format!(
        "dropped after {dropped:?}; daemon RSS {rss0} -> {rss_mid} (stalled) -> {rss1} kB"
    ))
}

/// A trusted peer asks for the CTID of the VE running on the daemon's host: refused; the
/// config and the private area it sends anyway change nothing (the script checks the VE).
async fn taken_ctid(ctx: &Ctx) -> R<String> {
    let ep = endpoint()?;
    let conn = connect(ctx, &ep, Auth::Trusted, false).await?;
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let send = |m: Message| frame(&m);
    tx.write_all(&send(hello_msg()))
        .await
        .map_err(|e| e.to_string())?;
    match read_frame(&mut rx).await? {
        Some(Message::HelloAck(_)) => {}
        m => return Err(format!("Hello answered with {m:?}")),
    }
    tx.write_all(&send(Message::CheckRequest(proto::CheckRequest {
        ctid: 130,
        arch: std::env::consts::ARCH.into(),
        xsave_features: 0,
        kernel: "hostile".into(),
        needed_bytes: 0,
        features: vec![],
    })))
    .await
    .map_err(|e| e.to_string())?;
    let problems = match read_frame(&mut rx).await? {
        Some(Message::CheckReply(r)) => r.problems,
        m => return Err(format!("CheckRequest answered with {m:?}")),
    };
    if !problems.iter().any(|p| p.contains("130")) {
        return Err(format!("CTID 130 was not refused: {problems:?}"));
    }
    // Go on as if accepted: a config that would replace the VE's, a file over its private area.
    let _ = tx
        .write_all(&send(Message::VeConfig(proto::VeConfigMsg {
            ctid: 130,
            config: "command = \"true\"\n".into(),
        })))
        .await;
    let _ = tx
        .write_all(&send(Message::FsFile(proto::FsFile {
            path: b"root/log".to_vec(),
            kind: proto::FsKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            xattrs: vec![],
            size: 6,
            offset: 0,
            data: b"owned\n".to_vec(),
        })))
        .await;
    let _ = tx.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(format!("refused: {problems:?}"))
}

/// Sends `m` on `tx`, as a frame.
async fn put(tx: &mut quinn::SendStream, m: Message) -> R<()> {
    tx.write_all(&frame(&m)).await.map_err(|e| e.to_string())
}

/// A trusted peer starts an online migration of a free CTID (141) with page streams, then
/// misuses them: it opens more page streams than the daemon allows (QUIC holds the extra ones
/// off), sends a control message on a page stream, or a batch of a round that is not under
/// way. Each time the daemon aborts the migration with a reason naming the misuse and keeps
/// nothing of it (the script checks no VE 141 is left).
async fn page_streams(ctx: &Ctx) -> R<String> {
    let mut seen = Vec::new();
    for case in ["control-message-on-a-page-stream", "batch-of-another-round"] {
        let ep = endpoint()?;
        let conn = connect(ctx, &ep, Auth::Trusted, true).await?;
        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
        put(
            &mut tx,
            Message::Hello(Hello {
                version: proto::VERSION,
                engine: "hostile".into(),
                host: "hostile".into(),
                caps: vec!["online".into(), "page-streams".into()],
            }),
        )
        .await?;
        match read_frame(&mut rx).await? {
            Some(Message::HelloAck(h)) if h.caps.iter().any(|c| c == "page-streams") => {}
            m => return Err(format!("Hello answered with {m:?} (no page-streams)")),
        }
        put(
            &mut tx,
            Message::CheckRequest(proto::CheckRequest {
                ctid: 141,
                arch: std::env::consts::ARCH.into(),
                xsave_features: 0,
                kernel: "hostile".into(),
                needed_bytes: 0,
                features: vec![],
            }),
        )
        .await?;
        match read_frame(&mut rx).await? {
            Some(Message::CheckReply(r)) if r.problems.is_empty() => {}
            m => return Err(format!("CheckRequest answered with {m:?}")),
        }
        put(
            &mut tx,
            Message::VeConfig(proto::VeConfigMsg {
                ctid: 141,
                config: "command = \"true\"\n".into(),
            }),
        )
        .await?;
        put(
            &mut tx,
            Message::FsDone(proto::FsDone { files: 0, bytes: 0 }),
        )
        .await?;
        put(
            &mut tx,
            Message::RoundBegin(proto::RoundBegin { round: 0, pages: 0 }),
        )
        .await?;
        let batch = |round| {
            Message::PageBatch(proto::PageBatch {
                round,
                owner: proto::PageOwner::Process(1),
                runs: vec![(0x10000, 1)],
                compressed: false,
                data: vec![0x5a; 4096],
            })
        };
        let mut streams = Vec::new();
        for _ in 0..migrate::streams::MAX_PAGE_STREAMS {
            let s = tokio::time::timeout(Duration::from_secs(5), conn.open_uni())
                .await
                .map_err(|_| "opening an allowed page stream took over 5 s".to_string())?
                .map_err(|e| e.to_string())?;
            streams.push(s);
        }
        // One past the limit: QUIC does not let it open while the others are.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await {
            return Err(format!(
                "a page stream past the limit of {} opened",
                migrate::streams::MAX_PAGE_STREAMS
            ));
        }
        // A good batch first, on the first stream.
        put(&mut streams[0], batch(0)).await?;
        let bad = match case {
            "control-message-on-a-page-stream" => hello_msg(),
            _ => batch(5),
        };
        put(&mut streams[1], bad).await?;
        let reason = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match read_frame(&mut rx).await? {
                    Some(Message::Abort(a)) => return Ok(a.reason),
                    Some(_) => {}
                    None => return Err("the daemon ended the stream without an Abort".to_string()),
                }
            }
        })
        .await
        .map_err(|_| format!("{case}: no Abort within 10 s"))??;
        let wanted = match case {
            "control-message-on-a-page-stream" => "page stream carried a Hello",
            _ => "batch of round 5",
        };
        if !reason.contains(wanted) {
            return Err(format!(
                "{case}: the reason {reason:?} does not say {wanted:?}"
            ));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        seen.push(format!("{case}: {reason}"));
    }
    Ok(seen.join("; "))
}
