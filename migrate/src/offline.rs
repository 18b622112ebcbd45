//! Offline migration, as vzmigrate did it: check the destination, copy the private area while
//! the VE runs, checkpoint it (it stops), send the image, restore it on the destination,
//! commit. Until the commit, every failure brings the VE back on the source (restored from
//! its image) and removes everything from the destination. The engines drive `vzctl` as a
//! child process for the checkpoint and the restore: `rst` needs a single-threaded caller,
//! and a failed restore then never takes the daemon down.
//!
//! The commit: the source sends `Commit` once the destination says its copy runs, and
//! destroys its own copy when `CommitAck` comes. Without the acknowledgement it keeps its
//! stopped copy and its image (the VE is never running twice, and never lost).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::{
    Abort, CheckReply, CheckRequest, FinalState, FsDone, Hello, ImageChunk, Message, RestoreResult,
    VeConfigMsg,
};
use serde::Serialize;
use ve::Layout;

use crate::precopy::{OnlineOptions, Precopy};
use crate::streams::{PageSenders, StagingWorker};
use crate::transport::{self, Identity, Trust};
use crate::{fsync, MigrateError, Result};

/// Bytes per image chunk message.
const CHUNK: usize = 1 << 20;
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Figures of one migration (`vzmigrate --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ctid: u32,
    pub total_ms: f64,
    /// From the checkpoint's start to the destination's copy running.
    pub downtime_ms: f64,
    pub fs_files: u64,
    pub fs_bytes: u64,
    pub image_bytes: u64,
    pub wire_bytes: u64,
    /// `online` (memory pre-copied while the VE ran) or `offline`.
    pub mode: String,
    /// The pre-copy rounds, in order (online only).
    pub rounds: Vec<crate::precopy::RoundReport>,
    /// Page bytes of the rounds over their bytes on the wire (1.0 without `--compress`).
    pub compression_ratio: f64,
    /// QUIC streams that carried the rounds' pages beside the control stream (0: the
    /// control stream carried them, or offline).
    pub page_streams: usize,
}

fn hello(host: &str) -> Hello {
    Hello {
        version: proto::VERSION,
        engine: env!("CARGO_PKG_VERSION").to_string(),
        host: host.to_string(),
        caps: vec![
            "offline".into(),
            "online".into(),
            "zstd".into(),
            crate::streams::CAP.into(),
        ],
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs `vzctl ARGS` with this host's `$VZ_DIR` and `$VZ_CGROUP`; its stderr on failure.
fn vzctl(layout: &Layout, vzctl: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new(vzctl)
        .args(args)
        .env("VZ_DIR", &layout.vz_dir)
        .env("VZ_CGROUP", &layout.cgroup_name)
        .output()
        .map_err(|e| format!("run {}: {e}", vzctl.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `vzctl` beside the running program.
pub fn vzctl_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vzctl")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("vzctl"))
}

fn conn_err(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Connection(e.to_string())
}

/// Receives the next message, or fails on a closed stream or an `Abort`.
pub(crate) async fn expect(rx: &mut quinn::RecvStream) -> Result<Message> {
    match transport::recv(rx).await? {
        Some(Message::Abort(a)) => Err(MigrateError::Aborted(format!(
            "the peer aborted: {}",
            a.reason
        ))),
        Some(m) => Ok(m),
        None => Err(MigrateError::Connection(
            "the peer closed the stream".into(),
        )),
    }
}

/// A failed send: if the peer stopped reading to say why (an `Abort`), its reason; else `e`.
pub(crate) async fn peer_reason(rx: &mut quinn::RecvStream, e: MigrateError) -> MigrateError {
    match tokio::time::timeout(Duration::from_secs(2), transport::recv(rx)).await {
        Ok(Ok(Some(Message::Abort(a)))) => {
            MigrateError::Aborted(format!("the peer aborted: {}", a.reason))
        }
        _ => e,
    }
}

pub(crate) fn unexpected(m: &Message, wanted: &str) -> MigrateError {
    MigrateError::Connection(format!("expected {wanted}, got a {:?} message", m.kind()))
}

/// The source side: moves running VE `ctid` to `dest`.
/// Told of the progress of a migration: the phase, bytes done and bytes in that phase.
pub type Progress<'a> = &'a dyn Fn(&str, u64, u64);

pub async fn migrate(
    layout: &Layout,
    ctid: u32,
    dest: SocketAddr,
    keep_src: bool,
    online: Option<OnlineOptions>,
    progress: Progress<'_>,
) -> Result<Report> {
    let t0 = Instant::now();
    let vzctl_bin = vzctl_path();
    let status = ve::ops::status(layout, ctid).map_err(|e| MigrateError::Keys(e.to_string()))?;
    if status != ve::Status::Running {
        return Err(MigrateError::Keys(format!(
            "VE {ctid} is {status}: only a running VE is migrated"
        )));
    }
    let dir = Identity::dir(&layout.vz_dir);
    let me = Identity::load(&dir)?;
    let ep = transport::client(&me, Trust::load(&dir)?)?;
    let conn = transport::connect(&ep, dest).await?;
    let (mut tx, mut rx) = conn.open_bi().await.map_err(conn_err)?;
    let mut report = Report {
        ctid,
        mode: if online.is_some() {
            "online"
        } else {
            "offline"
        }
        .into(),
        compression_ratio: 1.0,
        ..Default::default()
    };
    let mut wire = 0u64;
    macro_rules! send {
        ($m:expr) => {{
            let frame = proto::encode(&$m)?;
            wire += frame.len() as u64;
            if let Err(e) = transport::send_frame(&mut tx, &frame).await {
                return Err(peer_reason(&mut rx, e).await);
            }
        }};
    }

    send!(Message::Hello(hello(&hostname())));
    // Page batches go on page streams when the destination takes them.
    let page_streams = match expect(&mut rx).await? {
        Message::HelloAck(h) => {
            proto::negotiate(proto::VERSION, h.version)?;
            h.caps.iter().any(|c| c == crate::streams::CAP)
        }
        m => return Err(unexpected(&m, "HelloAck")),
    };
    let private = layout.upper(ctid);
    send!(Message::CheckRequest(CheckRequest {
        ctid,
        arch: std::env::consts::ARCH.into(),
        xsave_features: sys::syscalls::xcr0(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        needed_bytes: du(&private),
        // What works here; the destination checks those its restore needs.
        features: sys::features::probe_all()
            .into_iter()
            .filter(|f| f.present)
            .map(|f| f.name.to_string())
            .collect(),
    }));
    match expect(&mut rx).await? {
        Message::CheckReply(r) if r.problems.is_empty() => {}
        Message::CheckReply(r) => {
            return Err(MigrateError::Aborted(format!(
                "the destination refuses VE {ctid}: {}",
                r.problems.join("; ")
            )))
        }
        m => return Err(unexpected(&m, "CheckReply")),
    }
    let config = std::fs::read_to_string(layout.conf(ctid)).map_err(|source| MigrateError::Io {
        op: "read",
        path: layout.conf(ctid),
        source,
    })?;
    send!(Message::VeConfig(VeConfigMsg { ctid, config }));

    // The private area while the VE runs. (Offline: the VE's own writes from here until the
    // checkpoint are caught by a second pass after it.)
    let mut msgs = Vec::new();
    let (files, bytes) = fsync::walk(&private, &mut |m| {
        msgs.push(m);
        Ok(())
    })?;
    let area_total: u64 = msgs.iter().map(data_len).sum();
    let mut area_done = 0;
    for m in &msgs {
        area_done += data_len(m);
        send!(m.clone());
        progress("private area", area_done, area_total);
    }
    let first_pass = msgs;
    send!(Message::FsDone(FsDone { files, bytes }));
    report.fs_files = files;
    report.fs_bytes = bytes;

    // Online: memory rounds while the VE runs, until the rest fits the downtime budget.
    let mut precopy = None;
    if let Some(opts) = &online {
        let cgroup =
            ve::ops::cgroup_dir(layout, ctid).map_err(|e| MigrateError::Keys(e.to_string()))?;
        let mut p = Precopy::arm(cgroup).await?;
        let n = opts
            .page_streams
            .min(crate::streams::MAX_PAGE_STREAMS as usize);
        if page_streams && n > 0 {
            p.senders = Some(PageSenders::open(&conn, n).await?);
            report.page_streams = n;
        }
        loop {
            if !p.rounds.is_empty() {
                let pending = p.pending().await?;
                if p.converged(pending, opts) {
                    break;
                }
            }
            let r = p.round(opts, &mut tx, &mut rx, &mut wire, progress).await?;
            if sys::fault::hit("migrate.source.after-round") {
                return Err(MigrateError::Aborted(sys::fault::message(
                    "migrate.source.after-round",
                )));
            }
            tracing::info!(
                round = r.round,
                pages = r.pages,
                ms = r.ms,
                "pre-copy round"
            );
        }
        let raw: u64 = p.rounds.iter().map(|r| r.bytes).sum();
        let sent: u64 = p.rounds.iter().map(|r| r.wire_bytes).sum();
        if sent > 0 {
            report.compression_ratio = raw as f64 / sent as f64;
        }
        report.rounds = p.rounds.clone();
        if let Some(streams) = p.senders.take() {
            streams.finish();
        }
        precopy = Some(p);
    }

    // Checkpoint: the VE stops here.
    let t_down = Instant::now();
    let image = layout.dump(ctid).with_extension("migrate");
    let _ = std::fs::remove_dir_all(&image);
    let image_s = image.to_string_lossy().into_owned();
    let id = ctid.to_string();
    let held = match &mut precopy {
        // Online: the final dump stores only what was written since the last round, and
        // holds the VE stopped (not killed) until the migration commits or aborts.
        Some(p) => {
            let sent = p.sent()?;
            let sent_dir = layout.dump(ctid).with_extension("sent");
            let held = write_sent(&sent_dir, &sent)
                .and_then(|file| Held::start(layout, &vzctl_bin, &id, &image_s, &file));
            p.disarm();
            let _ = std::fs::remove_dir_all(&sent_dir);
            match held {
                Ok(h) => Some(h),
                Err(e) => {
                    let _ = transport::send(&mut tx, &Message::Abort(Abort { reason: e.clone() }))
                        .await;
                    return Err(MigrateError::Aborted(format!(
                        "checkpoint on the source: {e}"
                    )));
                }
            }
        }
        None => {
            if let Err(e) = vzctl(layout, &vzctl_bin, &["chkpnt", &id, "--dumpfile", &image_s]) {
                let _ =
                    transport::send(&mut tx, &Message::Abort(Abort { reason: e.clone() })).await;
                return Err(MigrateError::Aborted(format!(
                    "checkpoint on the source: {e}"
                )));
            }
            None
        }
    };
    // From here until the commit, a failure restores the VE here from its image.
    let outcome: Result<(u64, u64)> = async {
        // The private area again, now that the VE is stopped: only what changed since.
        let mut msgs = Vec::new();
        fsync::walk(&private, &mut |m| {
            msgs.push(m);
            Ok(())
        })?;
        let changes = fsync::delta(&first_pass, msgs);
        let (f, total) = (
            changes.len() as u64,
            changes.iter().map(data_len).sum::<u64>(),
        );
        let mut b = 0;
        for m in changes {
            b += data_len(&m);
            send!(m);
            progress("changes since", b, total);
        }
        send!(Message::FsDone(FsDone { files: f, bytes: b }));
        let mut image_bytes = 0u64;
        let mut records = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&image)
            .map_err(|source| MigrateError::Io {
                op: "read",
                path: image.clone(),
                source,
            })?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = image.join(&name);
            let data = std::fs::read(&path).map_err(|source| MigrateError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            image_bytes += data.len() as u64;
            if data.len() <= CHUNK {
                records.push((name, data));
                continue;
            }
            for (i, piece) in data.chunks(CHUNK).enumerate() {
                send!(Message::ImageChunk(ImageChunk {
                    name: name.clone(),
                    offset: (i * CHUNK) as u64,
                    data: piece.to_vec(),
                }));
                progress("image", (i * CHUNK + piece.len()) as u64, data.len() as u64);
            }
        }
        if sys::fault::hit("migrate.source.before-final-state") {
            return Err(MigrateError::Aborted(sys::fault::message(
                "migrate.source.before-final-state",
            )));
        }
        send!(Message::FinalState(FinalState { records }));
        match expect(&mut rx).await? {
            Message::RestoreResult(r) if r.ok => Ok((image_bytes, wire)),
            Message::RestoreResult(r) => Err(MigrateError::Aborted(format!(
                "restore on the destination failed: {}",
                r.error.unwrap_or_default()
            ))),
            m => Err(unexpected(&m, "RestoreResult")),
        }
    }
    .await;
    let (image_bytes, wire_now) = match outcome {
        Ok(v) => v,
        Err(e) => {
            let _ = transport::send(
                &mut tx,
                &Message::Abort(Abort {
                    reason: e.to_string(),
                }),
            )
            .await;
            let back = match held {
                // The held VE simply goes on (or, should that fail, stays suspended).
                Some(h) => h.end("abort"),
                None => vzctl(
                    layout,
                    &vzctl_bin,
                    &["restore", &id, "--dumpfile", &image_s],
                )
                .map(drop),
            };
            return Err(match back {
                Ok(_) => {
                    let _ = std::fs::remove_dir_all(&image);
                    e
                }
                Err(r) => MigrateError::Aborted(format!(
                    "{e}; and the VE could not be restored on the source ({r}): its image stays in {image_s}"
                )),
            });
        }
    };
    report.downtime_ms = t_down.elapsed().as_secs_f64() * 1000.0;
    report.image_bytes = image_bytes;
    let mut held_after = held;
    // Commit. A held VE learns first that it may never resume on its own: should this
    // process die from here on, the VE stays suspended.
    if let Some(h) = &mut held_after {
        h.say("committing")
            .map_err(|e| MigrateError::Aborted(format!("the held VE: {e}")))?;
    }
    transport::send(&mut tx, &Message::Commit).await?;
    // A crash here: the destination may commit; the VE must never run here again.
    let _ = sys::fault::hit("migrate.source.after-commit-sent");
    let acked = tokio::time::timeout(COMMIT_TIMEOUT, expect(&mut rx)).await;
    if !matches!(acked, Ok(Ok(Message::CommitAck))) {
        if let Some(h) = held_after {
            let _ = h.end("suspend");
            return Err(MigrateError::Aborted(format!(
                "the destination did not acknowledge the commit: VE {ctid} stays suspended here; check the destination before resuming it (vzctl resume) or destroying it"
            )));
        }
        return Err(MigrateError::Aborted(format!(
            "the destination did not acknowledge the commit: VE {ctid} stays stopped here with its image in {image_s}; check the destination before restoring it"
        )));
    }
    if let Some(h) = held_after {
        h.end("commit").map_err(|e| {
            MigrateError::Aborted(format!(
                "the VE runs on the destination; stopping it here failed: {e}"
            ))
        })?;
    }
    let _ = tx.finish();
    conn.close(0u32.into(), b"committed");
    // The close must reach the destination before this process goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    let _ = std::fs::remove_dir_all(&image);
    if !keep_src {
        vzctl(layout, &vzctl_bin, &["destroy", &id]).map_err(|e| {
            MigrateError::Aborted(format!(
                "the VE runs on the destination; destroying it here failed: {e}"
            ))
        })?;
    }
    report.wire_bytes = wire_now + 16;
    report.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}

/// Writes the tracker's `sent-pages` file into `dir` (made anew); returns its path.
fn write_sent(
    dir: &Path,
    sent: &images_format::track::SentPagesImage,
) -> std::result::Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    images_format::replace_record(dir, sent).map_err(|e| e.to_string())?;
    Ok(dir.join(images_format::ImageKind::SentPages.file_name()))
}

/// A VE dumped and held stopped by `vzctl chkpnt --hold`, until told (a line on its stdin)
/// to `commit` (kill it: it runs elsewhere now), `abort` (let it go on) or `suspend` (leave
/// it frozen). Told `committing` first, it stays suspended if its stdin closes without a
/// word (this process died while the destination might have committed); before that, it
/// goes on.
pub(crate) struct Held {
    child: std::process::Child,
}

impl Held {
    fn start(
        layout: &Layout,
        vzctl: &Path,
        id: &str,
        image: &str,
        sent: &Path,
    ) -> std::result::Result<Self, String> {
        use std::io::BufRead;
        let mut child = Command::new(vzctl)
            .args(["chkpnt", id, "--dumpfile", image, "--hold", "--sent-pages"])
            .arg(sent)
            .env("VZ_DIR", &layout.vz_dir)
            .env("VZ_CGROUP", &layout.cgroup_name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("run {}: {e}", vzctl.display()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        if line.trim() == "held" {
            return Ok(Held { child });
        }
        drop(child.stdin.take());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for vzctl chkpnt: {e}"))?;
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }

    fn say(&mut self, word: &str) -> std::result::Result<(), String> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or("vzctl chkpnt --hold has no stdin")?;
        writeln!(stdin, "{word}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("tell vzctl chkpnt --hold to {word}: {e}"))
    }

    /// Tells the holder how to end and waits for it.
    fn end(mut self, word: &str) -> std::result::Result<(), String> {
        self.say(word)?;
        drop(self.child.stdin.take());
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("wait for vzctl chkpnt --hold: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// Bytes of file data a message carries.
fn data_len(m: &Message) -> u64 {
    match m {
        Message::FsFile(f) => f.data.len() as u64,
        _ => 0,
    }
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.len();
                }
            }
        }
    }
    total
}

/// What the destination removes again if the migration does not commit.
struct Incoming<'a> {
    layout: &'a Layout,
    ctid: Option<u32>,
    committed: bool,
}

/// The mark of a migration under way into this host (see [`listen`]).
fn incoming_mark(layout: &Layout, ctid: u32) -> PathBuf {
    Identity::dir(&layout.vz_dir)
        .join("incoming")
        .join(ctid.to_string())
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        let Some(ctid) = self.ctid else { return };
        let mark = incoming_mark(self.layout, ctid);
        let _ = std::fs::remove_dir_all(self.layout.dump(ctid).with_extension("staging"));
        if self.committed {
            let _ = std::fs::remove_dir_all(self.layout.dump(ctid).with_extension("incoming"));
            let _ = std::fs::remove_file(&mark);
            return;
        }
        let id = ctid.to_string();
        let bin = vzctl_path();
        let _ = vzctl(self.layout, &bin, &["stop", &id, "--timeout", "2"]);
        let _ = std::fs::remove_dir_all(self.layout.dump(ctid).with_extension("incoming"));
        if vzctl(self.layout, &bin, &["destroy", &id]).is_err() {
            let _ = std::fs::remove_dir_all(self.layout.private(ctid));
            let _ = std::fs::remove_file(self.layout.conf(ctid));
        }
        let _ = std::fs::remove_file(&mark);
        tracing::warn!(
            ctid,
            "migration not committed: the destination's copy is removed"
        );
    }
}

fn check(layout: &Layout, req: &CheckRequest) -> Vec<String> {
    let mut problems = Vec::new();
    if layout.conf(req.ctid).exists() {
        problems.push(format!("CTID {} exists here", req.ctid));
    }
    if req.arch != std::env::consts::ARCH {
        problems.push(format!(
            "architecture {} here, {} on the source",
            std::env::consts::ARCH,
            req.arch
        ));
    }
    // The kernel facilities a restore of the VE needs, where the source has them (a source
    // without one could not have dumped it the way the restore expects).
    const RESTORE_NEEDS: [&str; 5] = [
        "clone3 with set_tid",
        "PR_SET_MM_MAP",
        "pidfd_open",
        "pidfd_getfd",
        "PTRACE_O_TRACESYSGOOD and seize",
    ];
    let here = sys::features::probe_all();
    for name in req
        .features
        .iter()
        .filter(|n| RESTORE_NEEDS.contains(&n.as_str()))
    {
        if !here.iter().any(|f| f.present && f.name == name) {
            problems.push(format!("this kernel lacks {name}, which the restore needs"));
        }
    }
    let ours = sys::syscalls::xcr0();
    if req.xsave_features & !ours != 0 {
        problems.push(format!(
            "the CPU lacks xsave features {:#x} of the source",
            req.xsave_features & !ours
        ));
    }
    let _ = std::fs::create_dir_all(&layout.vz_dir);
    if let Ok(st) = nix::sys::statvfs::statvfs(&layout.vz_dir) {
        let free = st.blocks_available() * st.fragment_size();
        if free < req.needed_bytes.saturating_mul(2) {
            problems.push(format!(
                "{} bytes free in {}, {} needed",
                free,
                layout.vz_dir.display(),
                req.needed_bytes * 2
            ));
        }
    }
    problems
}

/// A plain file name of the image (no path).
fn image_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(MigrateError::Connection(format!(
            "the peer sent an image file name {name:?}"
        )));
    }
    Ok(name)
}

/// The destination side of one migration, on an accepted connection.
pub async fn receive(layout: &Layout, conn: quinn::Connection) -> Result<u32> {
    let (mut tx, mut rx) = conn.accept_bi().await.map_err(conn_err)?;
    let r = receive_on(layout, &conn, &mut tx, &mut rx).await;
    if let Err(e) = &r {
        // Tell the source why (a full disk, a bad batch ...) before the connection goes (on
        // a dead connection this fails at once); a failure it reported itself needs no answer.
        if !e.to_string().starts_with("the peer aborted") {
            // Stop reading: the source's next write fails at once and it reads this instead.
            let _ = rx.stop(0u32.into());
            let abort = Message::Abort(Abort {
                reason: format!("on the destination: {}", crate::error_chain(e)),
            });
            if transport::send(&mut tx, &abort).await.is_ok() {
                let _ = tx.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
        }
    }
    r
}

async fn receive_on(
    layout: &Layout,
    conn: &quinn::Connection,
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
) -> Result<u32> {
    let mut incoming = Incoming {
        layout,
        ctid: None,
        committed: false,
    };
    // The source sends page batches on page streams when both sides name them.
    let page_streams = match expect(rx).await? {
        Message::Hello(h) => {
            if let Err(e) = proto::negotiate(proto::VERSION, h.version) {
                let _ = transport::send(
                    tx,
                    &Message::Abort(Abort {
                        reason: e.to_string(),
                    }),
                )
                .await;
                return Err(e.into());
            }
            h.caps.iter().any(|c| c == crate::streams::CAP)
        }
        m => return Err(unexpected(&m, "Hello")),
    };
    transport::send(tx, &Message::HelloAck(hello(&hostname()))).await?;
    let req = match expect(rx).await? {
        Message::CheckRequest(r) => r,
        m => return Err(unexpected(&m, "CheckRequest")),
    };
    let problems = check(layout, &req);
    let refused = !problems.is_empty();
    transport::send(tx, &Message::CheckReply(CheckReply { problems })).await?;
    if refused {
        let _ = tx.finish();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        return Err(MigrateError::Aborted(format!("VE {} refused", req.ctid)));
    }
    let ctid = req.ctid;
    // A daemon killed mid-migration leaves this mark: its next start removes the VE.
    let mark = incoming_mark(layout, ctid);
    if let Some(d) = mark.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    std::fs::write(&mark, "").map_err(|source| MigrateError::Io {
        op: "write",
        path: mark.clone(),
        source,
    })?;
    incoming.ctid = Some(ctid);
    let id = ctid.to_string();
    match expect(rx).await? {
        Message::VeConfig(c) if c.ctid == ctid => {
            let cfg: ve::VeConfig = toml_free_parse(&c.config)?;
            ve::ops::create(layout, ctid, &cfg).map_err(|e| MigrateError::Keys(e.to_string()))?;
            std::fs::write(layout.conf(ctid), &c.config).map_err(|source| MigrateError::Io {
                op: "write",
                path: layout.conf(ctid),
                source,
            })?;
        }
        m => return Err(unexpected(&m, "VeConfig")),
    }
    let upper = layout.upper(ctid);
    let image = layout.dump(ctid).with_extension("incoming");
    let _ = std::fs::remove_dir_all(&image);
    std::fs::create_dir_all(&image).map_err(|source| MigrateError::Io {
        op: "create",
        path: image.clone(),
        source,
    })?;
    // Two passes of the private area (while running, then stopped), the memory rounds of an
    // online migration (staged as they come), the image, the rest.
    let mut passes = 0;
    let staging_dir = layout.dump(ctid).with_extension("staging");
    let mut staging: Option<StagingWorker> = None;
    loop {
        let next = match staging.as_ref() {
            // A page stream that fails ends the migration without waiting for the source.
            Some(worker) => tokio::select! {
                m = expect(rx) => m?,
                e = worker.failure() => return Err(e),
            },
            None => expect(rx).await?,
        };
        match next {
            Message::RoundBegin(_) if staging.is_none() => {
                staging = Some(StagingWorker::start(&staging_dir, conn, page_streams)?);
            }
            Message::RoundBegin(_) => {}
            Message::PageBatch(b) => {
                let Some(st) = staging.as_ref() else {
                    return Err(unexpected(&Message::PageBatch(b), "RoundBegin"));
                };
                st.submit(b).await?;
            }
            Message::RoundEnd(r) => {
                let pages_staged = match staging.as_mut() {
                    Some(st) => st.end_round(r.round, r.pages).await?,
                    None if r.pages == 0 => 0,
                    None => return Err(unexpected(&Message::RoundEnd(r), "RoundBegin")),
                };
                transport::send(
                    tx,
                    &Message::RoundAck(proto::RoundAck {
                        round: r.round,
                        pages_staged,
                    }),
                )
                .await?;
            }
            // The second pass (after the checkpoint) writes over the first.
            Message::FsFile(f) => fsync::apply(&upper, &f, passes > 0)?,
            Message::FsDone(_) => passes += 1,
            Message::ImageChunk(c) => {
                let p = image.join(image_name(&c.name)?);
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&p)
                    .map_err(|source| MigrateError::Io {
                        op: "write",
                        path: p.clone(),
                        source,
                    })?;
                f.write_all_at(&c.data, c.offset)
                    .map_err(|source| MigrateError::Io {
                        op: "write",
                        path: p.clone(),
                        source,
                    })?;
            }
            Message::FinalState(fs) => {
                for (name, data) in fs.records {
                    let p = image.join(image_name(&name)?);
                    std::fs::write(&p, data).map_err(|source| MigrateError::Io {
                        op: "write",
                        path: p.clone(),
                        source,
                    })?;
                }
                // The last dump's pages join the staged ones (not while the source waits
                // for nothing: this is part of the downtime, and copies no staged page).
                if let Some(worker) = staging.take() {
                    let m = worker.finish().await?.merge(&image)?;
                    tracing::info!(?m, "staged pages merged");
                }
                let _ = std::fs::remove_dir_all(&staging_dir);
                break;
            }
            m => return Err(unexpected(&m, "FsFile, ImageChunk or FinalState")),
        }
    }
    let t = Instant::now();
    let image_s = image.to_string_lossy().into_owned();
    if sys::fault::hit("migrate.dest.before-restore") {
        return Err(MigrateError::Aborted(sys::fault::message(
            "migrate.dest.before-restore",
        )));
    }
    let restored = vzctl(
        layout,
        &vzctl_path(),
        &["restore", &id, "--dumpfile", &image_s],
    );
    let result = RestoreResult {
        ok: restored.is_ok(),
        error: restored.err(),
        restore_ms: t.elapsed().as_secs_f64() * 1000.0,
    };
    let ok = result.ok;
    transport::send(tx, &Message::RestoreResult(result.clone())).await?;
    if !ok {
        // Let the result reach the source before the connection goes.
        let _ = tx.finish();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        return Err(MigrateError::Aborted(format!(
            "restore failed: {}",
            result.error.unwrap_or_default()
        )));
    }
    match expect(rx).await? {
        Message::Commit => {
            incoming.committed = true;
            let _ = transport::send(tx, &Message::CommitAck).await;
            let _ = tx.finish();
            // The source closes once it has the acknowledgement; do not wait on it for long.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            Ok(ctid)
        }
        m => Err(unexpected(&m, "Commit")),
    }
}

/// The config as the source sent it, checked like a config file.
fn toml_free_parse(text: &str) -> Result<ve::VeConfig> {
    let dir = std::env::temp_dir().join(format!("vzmigrate-conf-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join("incoming.conf");
    std::fs::write(&p, text).map_err(|source| MigrateError::Io {
        op: "write",
        path: p.clone(),
        source,
    })?;
    let r = ve::VeConfig::load(&p).map_err(|e| MigrateError::Keys(e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Removes what migrations interrupted by a crash of this daemon left (their marks say which
/// VEs): none of them was committed, so their sources still have them.
fn clean_interrupted(layout: &Layout) {
    let dir = Identity::dir(&layout.vz_dir).join("incoming");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Some(ctid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        eprintln!("vzmigrate: removing VE {ctid}, left by a migration that never committed");
        drop(Incoming {
            layout,
            ctid: Some(ctid),
            committed: false,
        });
    }
}

/// The destination daemon: accepts trusted sources one connection at a time, for ever.
pub async fn listen(layout: &Layout, addr: SocketAddr) -> Result<()> {
    clean_interrupted(layout);
    let dir = Identity::dir(&layout.vz_dir);
    let me = Identity::load(&dir)?;
    let ep = transport::server(addr, &me, Trust::load(&dir)?)?;
    tracing::info!(%addr, "listening");
    // Handshakes run apart, bounded (see `transport::authenticated`); migrations one by one.
    let mut clients = transport::authenticated(ep);
    while let Some(conn) = clients.recv().await {
        let peer = conn.remote_address();
        match receive(layout, conn).await {
            Ok(ctid) => eprintln!("vzmigrate: VE {ctid} arrived from {peer}"),
            Err(e) => eprintln!("vzmigrate: migration from {peer} failed: {e}"),
        }
    }
    Ok(())
}
