//! The transport of a migration: QUIC (quinn) with TLS 1.3 (rustls), both sides
//! authenticated by pinned certificates. Each host has a key and a self-signed certificate
//! (`vzmigrate keygen`, in `$VZ_DIR/migrate/`); each trusts the SHA-256 fingerprints of its
//! peers' certificates listed in `$VZ_DIR/migrate/trusted` (`vzmigrate trust FP`). A peer
//! whose certificate is not trusted fails the TLS handshake: no stream of it is ever read.
//!
//! Messages are `proto` frames on QUIC streams: the header is read and checked (kind, cap)
//! before its payload is allocated.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::{FrameHeader, Message, HEADER_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{MigrateError, Result};

/// The name the client asks for; certificates are pinned, not checked against names.
const SERVER_NAME: &str = "vzmigrate";
const ALPN: &[u8] = b"vzmigrate/1";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MigrateError + 'a {
    move |source| MigrateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 of a certificate (DER), as lowercase hex.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
    d.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A host's key and certificate.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// Where the identity of `$VZ_DIR` lives.
    pub fn dir(vz_dir: &Path) -> PathBuf {
        vz_dir.join("migrate")
    }

    /// Makes a new key and self-signed certificate in `dir` (the key readable by root only);
    /// an existing one is kept unless `force`.
    pub fn generate(dir: &Path, force: bool) -> Result<Identity> {
        let (cert_p, key_p) = (dir.join("cert.der"), dir.join("key.der"));
        if cert_p.exists() && !force {
            return Err(MigrateError::Keys(format!(
                "{} exists already (keygen --force replaces it)",
                cert_p.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| MigrateError::Keys(format!("generate: {e}")))?;
        let key = ck.key_pair.serialize_der();
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = dir.join("key.der.new");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(&key).map_err(io("write", &tmp))?;
            std::fs::rename(&tmp, &key_p).map_err(io("rename", &key_p))?;
        }
        std::fs::write(&cert_p, ck.cert.der()).map_err(io("write", &cert_p))?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key,
        })
    }

    pub fn load(dir: &Path) -> Result<Identity> {
        let (cert_p, key_p) = (dir.join("cert.der"), dir.join("key.der"));
        let cert = std::fs::read(&cert_p).map_err(|e| {
            MigrateError::Keys(format!(
                "{}: {e} (run vzmigrate keygen first)",
                cert_p.display()
            ))
        })?;
        let key = std::fs::read(&key_p).map_err(io("read", &key_p))?;
        Ok(Identity {
            cert: CertificateDer::from(cert),
            key,
        })
    }
}

/// The fingerprints this host trusts.
#[derive(Debug, Clone, Default)]
pub struct Trust(HashSet<String>);

impl Trust {
    pub fn load(dir: &Path) -> Result<Trust> {
        let p = dir.join("trusted");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read", &p)(e)),
        };
        Ok(Trust(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_lowercase)
                .collect(),
        ))
    }

    /// Adds `fp` to the trust file of `dir`.
    pub fn add(dir: &Path, fp: &str) -> Result<()> {
        let fp = fp.trim().to_lowercase().replace(':', "");
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MigrateError::Keys(format!(
                "{fp:?} is not a SHA-256 fingerprint (64 hex digits)"
            )));
        }
        let mut t = Trust::load(dir)?;
        if t.0.insert(fp) {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            let mut all: Vec<&String> = t.0.iter().collect();
            all.sort();
            let text: String = all.iter().map(|f| format!("{f}\n")).collect();
            let p = dir.join("trusted");
            std::fs::write(&p, text).map_err(io("write", &p))?;
        }
        Ok(())
    }

    pub fn contains(&self, fp: &str) -> bool {
        self.0.contains(fp)
    }

    pub fn from_fingerprints(fps: &[String]) -> Trust {
        Trust(fps.iter().map(|f| f.to_lowercase()).collect())
    }
}

/// Accepts exactly the certificates whose fingerprints are trusted, as server or client.
#[derive(Debug)]
struct Pinned {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        let fp = fingerprint(cert);
        if self.trust.contains(&fp) {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the peer's certificate {fp} is not trusted (vzmigrate trust)"
            )))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Tls(e.to_string())
}

/// A listening endpoint: it accepts only clients with a trusted certificate.
pub fn server(addr: SocketAddr, me: &Identity, trust: Trust) -> Result<quinn::Endpoint> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        trust,
        provider: provider.clone(),
    });
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.key())
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    let socket =
        udp_socket(addr).map_err(|e| MigrateError::Connection(format!("listen on {addr}: {e}")))?;
    endpoint(Some(config), socket)
        .map_err(|e| MigrateError::Connection(format!("listen on {addr}: {e}")))
}

/// Bytes of socket buffer each way: a page stream arrives in bursts of 4 MiB batches, which
/// the default buffer (about 200 KiB) drops in part, and QUIC then slows down as for a
/// congested path. The kernel caps it at net.core.rmem_max/wmem_max.
const UDP_BUFFER: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = std::net::UdpSocket::bind(addr)?;
    // Best effort: a smaller buffer only makes the stream slower.
    let _ = setsockopt(&socket, sockopt::RcvBuf, &UDP_BUFFER);
    let _ = setsockopt(&socket, sockopt::SndBuf, &UDP_BUFFER);
    Ok(socket)
}

fn endpoint(
    server: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

/// A connecting endpoint: it talks only to servers with a trusted certificate.
pub fn client(me: &Identity, trust: Trust) -> Result<quinn::Endpoint> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        trust,
        provider: provider.clone(),
    });
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![me.cert.clone()], me.key())
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls)?;
    // Dual-stack where the host has IPv6, IPv4 only otherwise.
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    let mut ep = udp_socket(v6)
        .or_else(|_| udp_socket(v4))
        .and_then(|s| endpoint(None, s))
        .map_err(|e| MigrateError::Connection(format!("bind: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    ep.set_default_client_config(config);
    Ok(ep)
}

/// Connects to `addr`; fails if the server's certificate is not trusted (or ours is not).
pub async fn connect(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<quinn::Connection> {
    ep.connect(addr, SERVER_NAME)
        .map_err(|e| MigrateError::Connection(format!("connect to {addr}: {e}")))?
        .await
        .map_err(|e| MigrateError::Connection(format!("connect to {addr}: {e}")))
}

/// Sends one message as a frame.
pub async fn send(stream: &mut quinn::SendStream, msg: &Message) -> Result<()> {
    let frame = proto::encode(msg)?;
    send_frame(stream, &frame).await
}

/// Sends a frame made by `proto::encode` (on another thread, say).
pub async fn send_frame(stream: &mut quinn::SendStream, frame: &[u8]) -> Result<()> {
    stream.write_all(frame).await.map_err(|e| {
        let kind = frame
            .first_chunk::<{ proto::HEADER_LEN }>()
            .and_then(|h| proto::FrameHeader::parse(h).ok())
            .map_or_else(|| "a".into(), |h| format!("{:?}", h.kind));
        MigrateError::Connection(format!("send {kind} message: {e}"))
    })
}

/// A peer silent for this long is gone (a cut network, a dead host): the migration fails
/// and each side cleans up. Keep-alives make silence mean exactly that, also while a side
/// is busy dumping or restoring.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    // Room for a few 4 MiB page batches in flight.
    t.stream_receive_window(quinn::VarInt::from_u32(32 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    // Bigger datagrams where the path takes them (jumbo frames, loopback): each carries more
    // page bytes per packet encrypted and per system call. MTU discovery probes up to this
    // and stays at 1200..1452 bytes on a path that drops larger ones.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(u16::MAX);
    t.mtu_discovery_config(Some(mtu));
    // Page streams beside the control stream; a peer opening more is held off by QUIC.
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(crate::streams::MAX_PAGE_STREAMS));
    Arc::new(t)
}

/// How long a frame that has begun may go without a byte of it arriving: a peer that stops in
/// the middle of a message (keeping its connection alive, so QUIC's idle timeout never fires)
/// is dropped after that, rather than holding the daemon for ever.
pub const FRAME_STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of a payload is allocated before its bytes arrive: the rest grows with the data,
/// so a header announcing a frame at its kind's cap (256 MiB for `FinalState`) that never
/// comes costs nothing.
const PAYLOAD_PREALLOC: usize = 1 << 20;

/// One read of a frame already begun, within [`FRAME_STALL_TIMEOUT`].
async fn read_more<T>(
    what: &str,
    read: impl std::future::Future<Output = std::result::Result<Option<T>, quinn::ReadError>>,
) -> Result<T> {
    match tokio::time::timeout(FRAME_STALL_TIMEOUT, read).await {
        Ok(Ok(Some(v))) => Ok(v),
        Ok(Ok(None)) => Err(MigrateError::Connection(format!(
            "receive {what}: the peer ended the stream in the middle of a message"
        ))),
        Ok(Err(e)) => Err(MigrateError::Connection(format!("receive {what}: {e}"))),
        Err(_) => Err(MigrateError::Connection(format!(
            "receive {what}: the peer sent nothing for {} s in the middle of a message",
            FRAME_STALL_TIMEOUT.as_secs()
        ))),
    }
}

/// Receives one message; `None` when the peer finished the stream between messages. Waiting
/// for a message has no limit here (the phases of a migration set their own); once its first
/// byte came, the rest must keep coming (see [`FRAME_STALL_TIMEOUT`]).
pub async fn recv(stream: &mut quinn::RecvStream) -> Result<Option<Message>> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = match stream.read(&mut h).await {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(None),
        Err(e) => return Err(MigrateError::Connection(format!("receive: {e}"))),
    };
    while got < HEADER_LEN {
        got += read_more("a frame header", stream.read(&mut h[got..])).await?;
    }
    let header = FrameHeader::parse(&h)?;
    let len = header.len as usize;
    let what = format!("a {:?} message", header.kind);
    let mut payload = Vec::with_capacity(len.min(PAYLOAD_PREALLOC));
    while payload.len() < len {
        let chunk = read_more(&what, stream.read_chunk(len - payload.len(), true)).await?;
        payload.extend_from_slice(&chunk.bytes);
    }
    Ok(Some(proto::decode_payload(header, &payload)?))
}

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; clients past that are refused at once.
const MAX_HANDSHAKES: usize = 64;

/// Accepts clients on `ep` and yields those that completed the handshake (hence are trusted),
/// in the order they did. Handshakes run side by side, each bounded by [`HANDSHAKE_TIMEOUT`],
/// at most [`MAX_HANDSHAKES`] at once: a client that never finishes its handshake, or a flood
/// of them, does not keep the daemon from serving the others.
pub fn authenticated(ep: quinn::Endpoint) -> tokio::sync::mpsc::Receiver<quinn::Connection> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let peer = inc.remote_address();
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "refused a connection: {MAX_HANDSHAKES} handshakes under way");
                inc.refuse();
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inc).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, "refused a connection: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "refused a connection: no handshake within {HANDSHAKE_TIMEOUT:?}");
                        return;
                    }
                };
                drop(slot);
                let _ = tx.send(conn).await;
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(host: &str) -> Message {
        Message::Hello(proto::Hello {
            version: proto::VERSION,
            engine: "test".into(),
            host: host.into(),
            caps: vec![],
        })
    }

    /// Runs a server that answers one Hello with a HelloAck; returns its address.
    fn serve(me: &Identity, trust: Trust) -> (quinn::Endpoint, SocketAddr) {
        let ep = server("127.0.0.1:0".parse().unwrap(), me, trust).unwrap();
        let addr = ep.local_addr().unwrap();
        let acc = ep.clone();
        tokio::spawn(async move {
            while let Some(inc) = acc.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    let Ok((mut tx, mut rx)) = conn.accept_bi().await else {
                        return;
                    };
                    if let Ok(Some(Message::Hello(h))) = recv(&mut rx).await {
                        let mut ack = h.clone();
                        ack.host = "dst".into();
                        let _ = send(&mut tx, &Message::HelloAck(ack)).await;
                        let _ = tx.finish();
                        let _ = conn.closed().await;
                    }
                });
            }
        });
        (ep, addr)
    }

    async fn exchange(ep: &quinn::Endpoint, addr: SocketAddr) -> Result<Message> {
        let conn = connect(ep, addr).await?;
        let (mut tx, mut rx) = conn
            .open_bi()
            .await
            .map_err(|e| MigrateError::Connection(e.to_string()))?;
        send(&mut tx, &hello("src")).await?;
        let r = recv(&mut rx)
            .await?
            .ok_or(MigrateError::Connection("no reply".into()))?;
        conn.close(0u32.into(), b"done");
        Ok(r)
    }

    #[tokio::test]
    async fn trusted_peers_talk_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = Identity::generate(&dir.path().join("src"), false).unwrap();
        let dst = Identity::generate(&dir.path().join("dst"), false).unwrap();
        let stranger = Identity::generate(&dir.path().join("x"), false).unwrap();
        assert!(Identity::generate(&dir.path().join("src"), false).is_err());
        let (_s, addr) = serve(&dst, Trust::from_fingerprints(&[src.fingerprint()]));

        let ok = client(&src, Trust::from_fingerprints(&[dst.fingerprint()])).unwrap();
        match exchange(&ok, addr).await.unwrap() {
            Message::HelloAck(h) => assert_eq!(h.host, "dst"),
            m => panic!("unexpected reply {m:?}"),
        }

        // A client the server does not trust gets no answer: the handshake fails.
        let c = client(&stranger, Trust::from_fingerprints(&[dst.fingerprint()])).unwrap();
        let e = exchange(&c, addr).await.unwrap_err();
        assert!(matches!(e, MigrateError::Connection(_)), "{e}");

        // A server the client does not trust (a wrong fingerprint) is refused by the client.
        let c = client(&src, Trust::from_fingerprints(&[stranger.fingerprint()])).unwrap();
        let e = exchange(&c, addr).await.unwrap_err().to_string();
        assert!(e.contains("connect"), "{e}");
    }

    #[test]
    fn trust_file_takes_fingerprints_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate(dir.path(), false).unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 64);
        Trust::add(dir.path(), &fp.to_uppercase()).unwrap();
        Trust::add(dir.path(), &fp).unwrap();
        assert!(Trust::add(dir.path(), "abc").is_err());
        let t = Trust::load(dir.path()).unwrap();
        assert!(t.contains(&fp));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("trusted"))
                .unwrap()
                .lines()
                .count(),
            1
        );
        let again = Identity::load(dir.path()).unwrap();
        assert_eq!(again.fingerprint(), fp);
    }
}
