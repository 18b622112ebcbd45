//! `vzctl backup` and `vzctl restore-backup`: a VE (config, private area, checkpoint image) as
//! one stream, zstd-compressed, optionally encrypted and authenticated with a key file.
//!
//! Layers, outside in: [`stream`] (header, chunks each sealed with ChaCha20-Poly1305 in the
//! STREAM construction, or CRC-checked when not encrypted), zstd, and [`archive`] (records:
//! manifest, config, one node per file, end).
//!
//! What a backup holds depends on the VE's status when it is taken:
//! - stopped: config and private area; the restored VE is stopped (`vzctl start`);
//! - dumped (`vzctl chkpnt`): also its image; the restored VE is dumped (`vzctl restore`);
//! - running, its private area a btrfs subvolume: memory and files of one instant, as a
//!   snapshot takes them (`snapshot::capture`: the VE stopped only for its memory dump and a
//!   read-only btrfs snapshot), then read from that capture while the VE goes on;
//! - running, its private area not on btrfs: it is checkpointed with `--leave-running` into a
//!   temporary image and goes on, then its private area is copied WHILE IT RUNS: the files
//!   are not those of the instant of the memory image (a file written meanwhile may be newer
//!   than the memory that wrote it); the figures say `live`, and a warning is logged;
//! - suspended (frozen): refused; resume it, or checkpoint it.
//!
//! Restore is all or nothing: everything goes into staging directories beside their final
//! places (`$VZ_DIR/private/.restore-CTID-PID`, `$VZ_DIR/dump/.restore-CTID-PID`), and only
//! once the whole stream is verified (its last chunk authenticated, nothing after it) are they
//! renamed into place and the config written, last (a VE exists once its config does). A
//! failure removes the staging directories: no VE is created. This works for a pipe as for
//! a file, so a file is not read twice.
//!
//! What depends on the CTID is fixed at restore: the image's cgroup is rewritten to the new
//! VE's (`vzctl restore` reads the dumped one from the image), its root is the new VE's
//! mount point, its veth is named after the new CTID. The config is restored as it was,
//! IP addresses included: restoring beside the original on one host, change them first
//! (`vzctl set NEW --ipdel all --ipadd ... --save`) before the VE runs.

pub mod archive;
pub mod stream;

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ops::{self, Status};
use crate::{Layout, VeConfig, VeError};
use archive::{ArchiveWriter, Area, Extractor, Manifest, Record};
pub use stream::KeyMaterial;
use stream::{ChunkReader, ChunkWriter, Header};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a vzcpt backup (bad magic)")]
    NotABackup,
    #[error(
        "backup format {major}.{minor} is not readable by this vzctl (it reads {}.0 to {}.{})",
        stream::MAJOR,
        stream::MAJOR,
        stream::MINOR
    )]
    Version { major: u16, minor: u16 },
    #[error("the backup is encrypted: give its key with --encrypt-key FILE")]
    NeedKey,
    #[error("the backup is not encrypted, but a key was given (--encrypt-key): refusing an unauthenticated backup where an authenticated one is expected")]
    NotEncrypted,
    #[error("authentication failed at chunk {index}: {}", if *index == 0 { "wrong key, or the backup was altered" } else { "the backup was altered (or chunks were reordered or replaced)" })]
    Auth { index: u32 },
    #[error("checksum mismatch at chunk {index}: the backup is damaged")]
    Checksum { index: u32 },
    #[error(
        "the backup is truncated: it ends after {chunks} complete chunks, without its final chunk"
    )]
    Truncated { chunks: u32 },
    #[error("the backup has trailing data after its final chunk")]
    Trailing,
    #[error("bad backup: {0}")]
    Invalid(String),
    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot {what} {path}")]
    Source {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {path}")]
    Target {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the backup failed")]
    Read(#[source] io::Error),
    #[error("writing the backup failed")]
    Write(#[source] io::Error),
    #[error(transparent)]
    Ve(#[from] VeError),
}

/// An `io::Error` from the backup's input: a [`BackupError`] raised below (a chunk that fails
/// its check) comes back as itself.
pub(crate) fn from_io_read(e: io::Error) -> BackupError {
    match e.get_ref().is_some_and(|i| i.is::<BackupError>()) {
        true => match e.into_inner().map(|i| i.downcast::<BackupError>()) {
            Some(Ok(b)) => *b,
            _ => BackupError::Invalid("an error that lost its kind".into()),
        },
        false if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::InvalidData => {
            // zstd's own complaints about a frame (cannot happen past verified chunks unless
            // the writer was broken).
            BackupError::Invalid(format!("decompression: {e}"))
        }
        false => BackupError::Read(e),
    }
}

pub(crate) fn from_io_write(e: io::Error) -> BackupError {
    BackupError::Write(e)
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// What a backup is made of: the snapshot work (issue 7, part 1) gives a read-only snapshot
/// of the upper directory and the image taken at the same frozen instant.
#[derive(Debug, Clone)]
pub struct Source {
    pub ctid: u32,
    /// The VE's config file.
    pub config: PathBuf,
    /// The directory holding the VE's own files (the overlay's upper directory, or a
    /// snapshot of it).
    pub private: PathBuf,
    /// The checkpoint image, if the backup should hold one.
    pub image: Option<PathBuf>,
    /// The files may change while they are read (the VE runs): files that vanish are left
    /// out, files that shrink are padded, and the manifest says so.
    pub live: bool,
}

#[derive(Default)]
pub struct BackupOptions {
    pub key: Option<KeyMaterial>,
    /// zstd level (1..=19); 0 stores the archive uncompressed.
    pub compress: i32,
}

pub const DEFAULT_COMPRESS: i32 = 3;

/// Where `vzctl backup` writes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Standard output (a pipe).
    Stdout,
    /// This file, written under a temporary name and renamed when complete; must not exist.
    File(PathBuf),
    /// `DIR/CTID-YYYYmmdd-HHMMSS.vzb` (UTC; `-N` added should the name be taken), and with
    /// `keep` the older backups of that CTID in DIR beyond the newest `keep` are deleted.
    Dir { dir: PathBuf, keep: Option<usize> },
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupStats {
    pub ctid: u32,
    /// The file written (none for standard output).
    pub path: Option<PathBuf>,
    /// The VE's status when the backup was taken.
    pub status: Status,
    pub has_image: bool,
    pub live: bool,
    pub encrypted: bool,
    pub compress: i32,
    pub nodes: u64,
    /// Bytes of regular files (private area and image).
    pub file_bytes: u64,
    /// The archive before compression.
    pub archive_bytes: u64,
    /// What was written, header and chunk framing included.
    pub written_bytes: u64,
    /// Time of the checkpoint of a running VE (part of `total_ms`).
    pub checkpoint_ms: f64,
    pub total_ms: f64,
    /// archive_bytes / total time.
    pub mb_per_s: f64,
    /// Files that shrank while a live backup read them (padded with zeros).
    pub changed_while_read: Vec<String>,
    /// Older backups deleted by `keep`.
    pub pruned: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreBackupStats {
    pub ctid: u32,
    /// The CTID the backup was taken of.
    pub from_ctid: u32,
    /// The restored VE's status: dumped (with an image) or stopped.
    pub status: Status,
    pub created: u64,
    pub live: bool,
    pub nodes: u64,
    pub file_bytes: u64,
    pub read_bytes: u64,
    pub total_ms: f64,
}

/// Reads a key file: exactly 32 bytes, readable by its owner only.
pub fn read_key(path: &Path) -> Result<KeyMaterial> {
    use std::os::unix::fs::MetadataExt;
    let key_err = |reason: String| BackupError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| key_err(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(key_err(format!(
            "mode {:o} lets others read it; chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| key_err(e.to_string()))?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        key_err(format!(
            "it must hold exactly 32 bytes, it holds {} (make one with `vzctl backup-keygen FILE`)",
            bytes.len()
        ))
    })?;
    Ok(KeyMaterial(key))
}

/// `vzctl backup-keygen FILE`: 32 random bytes, mode 0600; an existing file is refused.
pub fn keygen(path: &Path) -> Result<()> {
    use ring::rand::SecureRandom;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| BackupError::Invalid("no random numbers from the system".into()))?;
    let io = |e: io::Error| BackupError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)
}

/// Counts what goes through.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Packer<W: Write> {
    Zstd(zstd::Encoder<'static, ChunkWriter<W>>),
    Raw(ChunkWriter<W>),
}

impl<W: Write> Write for Packer<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Packer::Zstd(z) => z.write(b),
            Packer::Raw(c) => c.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Packer::Zstd(z) => z.flush(),
            Packer::Raw(c) => c.flush(),
        }
    }
}

impl<W: Write> Packer<W> {
    fn finish(self) -> io::Result<(W, u64)> {
        match self {
            Packer::Zstd(z) => z.finish()?.finish(),
            Packer::Raw(c) => c.finish(),
        }
    }
}

/// Writes the backup of `src` to `out`; returns `out` and the figures (without the path,
/// status and times the caller knows better).
pub fn write_backup<W: Write>(
    src: &Source,
    out: W,
    opts: &BackupOptions,
) -> Result<(W, BackupStats)> {
    if !(0..=19).contains(&opts.compress) {
        return Err(BackupError::Invalid(format!(
            "compression level {} is not in 0..=19",
            opts.compress
        )));
    }
    let config = std::fs::read_to_string(&src.config).map_err(|e| BackupError::Source {
        path: src.config.clone(),
        what: "read".into(),
        source: e,
    })?;
    let cfg: VeConfig = VeConfig::load(&src.config)?;
    let header = Header::new(opts.key.is_some(), opts.compress > 0)?;
    let chunks = ChunkWriter::new(out, header, opts.key.as_ref()).map_err(from_io_write)?;
    let packer = if opts.compress > 0 {
        Packer::Zstd(zstd::Encoder::new(chunks, opts.compress).map_err(from_io_write)?)
    } else {
        Packer::Raw(chunks)
    };
    let mut w = ArchiveWriter::new(
        Counting {
            inner: packer,
            bytes: 0,
        },
        src.live,
    );
    w.record(&Record::Manifest(Manifest {
        ctid: src.ctid,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        engine: concat!("vzctl ", env!("CARGO_PKG_VERSION")).into(),
        hostname: cfg.hostname.clone(),
        has_image: src.image.is_some(),
        live: src.live,
    }))?;
    w.record(&Record::Config(config))?;
    w.add_tree(Area::Private, &src.private)?;
    if let Some(img) = &src.image {
        w.add_tree(Area::Image, img)?;
    }
    w.end()?;
    let archive_bytes = w.out.bytes;
    let (nodes, file_bytes, changed) = (w.nodes, w.file_bytes, w.changed_while_read);
    let (out, written) = w.out.inner.finish().map_err(from_io_write)?;
    Ok((
        out,
        BackupStats {
            ctid: src.ctid,
            path: None,
            status: Status::Stopped,
            has_image: src.image.is_some(),
            live: src.live,
            encrypted: opts.key.is_some(),
            compress: opts.compress,
            nodes,
            file_bytes,
            archive_bytes,
            written_bytes: written,
            checkpoint_ms: 0.0,
            total_ms: 0.0,
            mb_per_s: 0.0,
            changed_while_read: changed,
            pruned: Vec::new(),
        },
    ))
}

/// Removes a directory tree when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// `vzctl backup`: see the module's notes for what each status gives.
pub fn backup(
    layout: &Layout,
    ctid: u32,
    dest: &Destination,
    opts: &BackupOptions,
) -> Result<BackupStats> {
    let started = Instant::now();
    let status = ops::status(layout, ctid)?;
    let (image, live, tmp_image) = match status {
        Status::Absent => return Err(VeError::NoSuchVe { ctid }.into()),
        Status::Stopped => (None, false, RemoveOnDrop(None)),
        Status::Dumped => (Some(layout.dump(ctid)), false, RemoveOnDrop(None)),
        Status::Running => (None, true, RemoveOnDrop(None)),
        Status::Suspended => {
            return Err(VeError::WrongStatus {
                ctid,
                status,
                what: "a frozen VE cannot be checkpointed for its backup: resume it, or stop or checkpoint it first".into(),
            }
            .into())
        }
    };
    // Checked before the checkpoint, so a bad target costs nothing.
    let target = resolve(dest, ctid)?;
    // A running VE: its memory and files of one instant when its private area is a btrfs
    // subvolume (a capture, as a snapshot takes them; the VE is stopped only for that);
    // otherwise a `--leave-running` checkpoint, and the files copied while it runs (`live`).
    let mut checkpoint_ms = 0.0;
    let mut capture = None;
    let mut tmp_image = tmp_image;
    let mut live = live;
    let (mut private, mut image) = (layout.upper(ctid), image);
    if status == Status::Running {
        let t = Instant::now();
        match crate::snapshot::supported(layout, ctid) {
            Ok(()) => {
                let c = crate::snapshot::capture(layout, ctid)?;
                (private, image, live) = (c.upper(), Some(c.image()), false);
                capture = Some(c);
            }
            Err(why) => {
                tracing::warn!(
                    ctid,
                    %why,
                    "backup of a running VE without a snapshot: its files are copied while it runs, not at the instant of its memory image"
                );
                let tmp = layout
                    .vz_dir
                    .join("dump")
                    .join(format!(".backup-{ctid}-{}", std::process::id()));
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|e| BackupError::Target {
                        path: tmp.clone(),
                        what: "remove the stale".into(),
                        source: e,
                    })?;
                }
                tmp_image = RemoveOnDrop(Some(tmp.clone()));
                ops::chkpnt(layout, ctid, Some(&tmp), true, None)?;
                image = Some(tmp);
            }
        }
        checkpoint_ms = t.elapsed().as_secs_f64() * 1000.0;
    }
    let src = Source {
        ctid,
        config: layout.conf(ctid),
        private,
        image,
        live,
    };
    let mut stats = write_to(&src, dest, target, opts)?;
    drop(tmp_image);
    drop(capture);
    stats.status = status;
    stats.checkpoint_ms = checkpoint_ms;
    stats.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    stats.mb_per_s = stats.archive_bytes as f64 / 1e6 / (stats.total_ms / 1000.0).max(1e-6);
    Ok(stats)
}

/// Backs up `src` (for example a snapshot: a read-only copy of the upper directory and the
/// image taken at one frozen instant) to `dest`, pruning with `keep` as [`backup`] does.
/// `status` of the figures is left as `Stopped`; the caller knows better.
pub fn backup_source(
    src: &Source,
    dest: &Destination,
    opts: &BackupOptions,
) -> Result<BackupStats> {
    let started = Instant::now();
    let target = resolve(dest, src.ctid)?;
    let mut stats = write_to(src, dest, target, opts)?;
    stats.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    stats.mb_per_s = stats.archive_bytes as f64 / 1e6 / (stats.total_ms / 1000.0).max(1e-6);
    Ok(stats)
}

/// The file a destination names (none for standard output); refused if it exists.
fn resolve(dest: &Destination, ctid: u32) -> Result<Option<PathBuf>> {
    let target = match dest {
        Destination::Stdout => None,
        Destination::File(p) => Some(p.clone()),
        Destination::Dir { dir, .. } => Some(dir.join(free_name(dir, ctid, SystemTime::now())?)),
    };
    if let Some(p) = &target {
        if p.exists() {
            return Err(BackupError::Target {
                path: p.clone(),
                what: "write the backup to".into(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "it exists; remove it first"),
            });
        }
    }
    Ok(target)
}

/// Writes the backup to `target` (from [`resolve`]), then prunes a directory destination.
fn write_to(
    src: &Source,
    dest: &Destination,
    target: Option<PathBuf>,
    opts: &BackupOptions,
) -> Result<BackupStats> {
    let mut stats = match &target {
        None => {
            let out = io::stdout().lock();
            write_backup(src, io::BufWriter::with_capacity(1 << 20, out), opts)
                .and_then(|(mut w, s)| w.flush().map(|()| s).map_err(from_io_write))?
        }
        Some(path) => write_file(src, path, opts)?,
    };
    stats.path = target;
    if let Destination::Dir {
        dir,
        keep: Some(keep),
    } = dest
    {
        stats.pruned = prune(dir, src.ctid, *keep)?;
    }
    Ok(stats)
}

/// Writes under a temporary name beside `path`, synced, then renamed to `path`.
fn write_file(src: &Source, path: &Path, opts: &BackupOptions) -> Result<BackupStats> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| BackupError::Target {
        path: path.to_path_buf(),
        what: "write the backup to".into(),
        source: io::Error::other("not a file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let target_err = |what: &str, p: &Path, e: io::Error| BackupError::Target {
        path: p.to_path_buf(),
        what: what.into(),
        source: e,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| target_err("create", &tmp, e))?;
    // Removes the temporary name, whether the backup made it to `path` or not.
    let _guard = RemoveOnDrop(Some(tmp.clone()));
    let (w, stats) = write_backup(src, io::BufWriter::with_capacity(1 << 20, f), opts)?;
    let f = w
        .into_inner()
        .map_err(|e| target_err("write", &tmp, e.into_error()))?;
    f.sync_all().map_err(|e| target_err("sync", &tmp, e))?;
    // Refuses to replace a file that appeared meanwhile.
    std::fs::hard_link(&tmp, path).map_err(|e| target_err("write the backup to", path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(stats)
}

/// `CTID-YYYYmmdd-HHMMSS.vzb` for `time` in UTC.
pub fn backup_file_name(ctid: u32, time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{ctid}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}.vzb",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The name for a new backup in `dir`: two in one second get `-1`, `-2`, ...
fn free_name(dir: &Path, ctid: u32, now: SystemTime) -> Result<String> {
    if !dir.is_dir() {
        return Err(BackupError::Target {
            path: dir.to_path_buf(),
            what: "write backups into".into(),
            source: io::Error::other("not a directory"),
        });
    }
    let base = backup_file_name(ctid, now);
    let stem = base.trim_end_matches(".vzb");
    for n in 0..1000 {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{stem}-{n}.vzb")
        };
        if !dir.join(&name).exists() {
            return Ok(name);
        }
    }
    Err(BackupError::Target {
        path: dir.join(base),
        what: "find a free name for".into(),
        source: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// The order of a backup file of `ctid` by its name (date, time, sequence), if it is one.
pub fn backup_order(ctid: u32, name: &str) -> Option<(u64, u64, u64)> {
    let rest = name
        .strip_prefix(&format!("{ctid}-"))?
        .strip_suffix(".vzb")?;
    let mut parts = rest.split('-');
    let date = parts.next()?;
    let time = parts.next()?;
    let seq = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    if parts.next().is_some()
        || date.len() != 8
        || time.len() != 6
        || !date.bytes().chain(time.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((date.parse().ok()?, time.parse().ok()?, seq))
}

/// Deletes the backups of `ctid` in `dir` (named as [`backup_file_name`] makes them) but the
/// newest `keep`; other files are never touched.
pub fn prune(dir: &Path, ctid: u32, keep: usize) -> Result<Vec<PathBuf>> {
    let list_err = |e: io::Error| BackupError::Target {
        path: dir.to_path_buf(),
        what: "list".into(),
        source: e,
    };
    let mut found: Vec<((u64, u64, u64), PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(list_err)? {
        let e = e.map_err(list_err)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(order) = backup_order(ctid, &name) {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                found.push((order, e.path()));
            }
        }
    }
    found.sort();
    let n = found.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, p) in found.into_iter().take(n) {
        std::fs::remove_file(&p).map_err(|e| BackupError::Target {
            path: p.clone(),
            what: "remove the old backup".into(),
            source: e,
        })?;
        removed.push(p);
    }
    Ok(removed)
}

enum Unpacker<R: Read> {
    Zstd(zstd::Decoder<'static, BufReader<ChunkReader<R>>>),
    Raw(ChunkReader<R>),
}

impl<R: Read> Read for Unpacker<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Unpacker::Zstd(z) => z.read(b),
            Unpacker::Raw(c) => c.read(b),
        }
    }
}

impl<R: Read> Unpacker<R> {
    fn chunks(&self) -> &ChunkReader<R> {
        match self {
            Unpacker::Zstd(z) => z.get_ref().get_ref(),
            Unpacker::Raw(c) => c,
        }
    }
}

/// What [`verify_stream`] and [`restore_backup`] learn from a stream.
struct StreamContents {
    manifest: Manifest,
    config: Option<VeConfig>,
    nodes: u64,
    file_bytes: u64,
    read_bytes: u64,
}

/// Reads and checks a whole stream; each node goes to `extract` when given.
fn read_stream<R: Read>(
    input: R,
    key: Option<&KeyMaterial>,
    mut extract: Option<&mut Extractor>,
) -> Result<StreamContents> {
    let chunks = ChunkReader::new(input, key)?;
    let mut r = if chunks.header().zstd() {
        let mut d = zstd::Decoder::new(chunks).map_err(from_io_read)?;
        // The writer's windows are at most 8 MiB (level 19); refuse a frame asking for more
        // than 128 MiB of memory.
        d.window_log_max(27).map_err(from_io_read)?;
        Unpacker::Zstd(d)
    } else {
        Unpacker::Raw(chunks)
    };
    let mut config = None;
    let (manifest, nodes, file_bytes) = archive::read_archive(
        &mut r,
        |_| Ok(()),
        |text| {
            let cfg: VeConfig = toml::from_str(text).map_err(|e| {
                BackupError::Invalid(format!("its config: {}", e.to_string().trim()))
            })?;
            cfg.validate()
                .map_err(|e| BackupError::Invalid(format!("its config: {e}")))?;
            config = Some(cfg);
            Ok(())
        },
        |node, data| match extract.as_deref_mut() {
            Some(x) => x.node(node, data),
            None => {
                if let archive::Kind::File { size } = node.kind {
                    let n =
                        io::copy(&mut data.take(size), &mut io::sink()).map_err(from_io_read)?;
                    if n < size {
                        return Err(BackupError::Invalid("file data ends early".into()));
                    }
                }
                Ok(())
            }
        },
    )?;
    if !r.chunks().complete {
        return Err(BackupError::Invalid(
            "the archive ended before the stream's final chunk".into(),
        ));
    }
    Ok(StreamContents {
        manifest,
        config,
        nodes,
        file_bytes,
        read_bytes: r.chunks().read,
    })
}

/// Checks a whole backup (every chunk, the archive's structure) without writing anything.
pub fn verify(input: impl Read, key: Option<&KeyMaterial>) -> Result<(Manifest, u64, u64)> {
    let r = read_stream(input, key, None)?;
    Ok((r.manifest, r.nodes, r.file_bytes))
}

/// `vzctl restore-backup`: creates VE `ctid` (which must not exist) from the backup read from
/// `input`; nothing is created unless the whole backup verifies.
pub fn restore_backup(
    layout: &Layout,
    ctid: u32,
    input: impl Read,
    key: Option<&KeyMaterial>,
) -> Result<RestoreBackupStats> {
    let started = Instant::now();
    if ctid == 0 {
        return Err(VeError::Failed {
            ctid,
            what: "CTID 0 is the host".into(),
        }
        .into());
    }
    let absent = |layout: &Layout| -> Result<()> {
        if layout.conf(ctid).exists() || layout.private(ctid).exists() || layout.dump(ctid).exists()
        {
            return Err(VeError::Exists { ctid }.into());
        }
        Ok(())
    };
    absent(layout)?;
    let tag = format!(".restore-{ctid}-{}", std::process::id());
    let private_parent = layout.vz_dir.join("private");
    let dump_parent = layout.vz_dir.join("dump");
    for d in [&private_parent, &dump_parent, &layout.conf_dir()] {
        std::fs::create_dir_all(d).map_err(|e| BackupError::Target {
            path: d.clone(),
            what: "create".into(),
            source: e,
        })?;
    }
    let staging = private_parent.join(&tag);
    let staging_image = dump_parent.join(&tag);
    // On btrfs the private area is a subvolume, as `vzctl create` makes it (snapshots need
    // one); renamed into place like a directory.
    if sys::btrfs::is_btrfs(&private_parent).unwrap_or(false) {
        sys::btrfs::create_subvolume(&staging).map_err(|e| {
            BackupError::Invalid(format!(
                "cannot create the subvolume {}: {e}",
                staging.display()
            ))
        })?;
    } else {
        std::fs::create_dir(&staging).map_err(|e| BackupError::Target {
            path: staging.clone(),
            what: "create".into(),
            source: e,
        })?;
    }
    let mut guard_private = RemoveOnDrop(Some(staging.clone()));
    let mut guard_image = RemoveOnDrop(Some(staging_image.clone()));
    let mut x = Extractor::new(staging.join("upper"), Some(staging_image.clone()));
    let r = read_stream(input, key, Some(&mut x))?;
    x.finish()?;
    if !x.has(Area::Private) {
        return Err(BackupError::Invalid("it holds no private area".into()));
    }
    if r.manifest.has_image != x.has(Area::Image) {
        return Err(BackupError::Invalid(
            "its manifest announces an image it does not hold".into(),
        ));
    }
    let cfg = r
        .config
        .ok_or_else(|| BackupError::Invalid("it holds no config".into()))?;
    let work = staging.join("work");
    std::fs::create_dir(&work).map_err(|e| BackupError::Target {
        path: work,
        what: "create".into(),
        source: e,
    })?;
    // Everything verified: into place, the config last.
    absent(layout)?;
    let move_err = |from: &Path, to: &Path, e: io::Error| BackupError::Target {
        path: to.to_path_buf(),
        what: format!("move {} to", from.display()),
        source: e,
    };
    std::fs::rename(&staging, layout.private(ctid))
        .map_err(|e| move_err(&staging, &layout.private(ctid), e))?;
    guard_private.0 = Some(layout.private(ctid));
    if r.manifest.has_image {
        std::fs::rename(&staging_image, layout.dump(ctid))
            .map_err(|e| move_err(&staging_image, &layout.dump(ctid), e))?;
        guard_image.0 = Some(layout.dump(ctid));
    }
    std::fs::create_dir_all(layout.root(ctid)).map_err(|e| BackupError::Target {
        path: layout.root(ctid),
        what: "create".into(),
        source: e,
    })?;
    cfg.save(&layout.conf(ctid))?;
    guard_private.0 = None;
    guard_image.0 = None;
    Ok(RestoreBackupStats {
        ctid,
        from_ctid: r.manifest.ctid,
        status: if r.manifest.has_image {
            Status::Dumped
        } else {
            Status::Stopped
        },
        created: r.manifest.created,
        live: r.manifest.live,
        nodes: r.nodes,
        file_bytes: r.file_bytes,
        read_bytes: r.read_bytes,
        total_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests;
