//! VE snapshots: `vzctl snapshot`, `snapshot-list`, `rollback` and `snapshot-delete`.
//!
//! A snapshot holds the VE's memory and files of one instant. On a running VE, the memory
//! image is dumped with the tree stopped and its network locked (`ops::dump_locked`); at
//! that same instant a read-only btrfs snapshot of the private area is taken, which costs
//! the same whatever the private area holds (btrfs shares the extents; it only writes out
//! the subvolume's dirty data first), and then the VE goes on. A stopped VE gets a snapshot
//! of its files only. That is why the private area must be a btrfs subvolume: on btrfs,
//! `vzctl create` makes `$VZ_DIR/private/CTID` one. (The subvolume is the whole private
//! area, not `upper` alone: overlayfs renames from its `work` directory into `upper`, and
//! btrfs refuses renames between subvolumes.)
//!
//! ```text
//! $VZ_DIR/private/snapshots/CTID/NAME/meta.toml   name, parent, time, figures
//! $VZ_DIR/private/snapshots/CTID/NAME/private     read-only snapshot of private/CTID
//! $VZ_DIR/private/snapshots/CTID/NAME/memory      the memory image (running VEs only)
//! $VZ_DIR/private/snapshots/CTID/NAME/ve.conf     the VE's config at that time
//! $VZ_DIR/private/snapshots/CTID/.current         the snapshot the VE's state descends from
//! $VZ_DIR/private/snapshots/CTID/.tmp-*           work in progress (removed if abandoned)
//! ```
//!
//! Snapshots form a tree: each records its parent, the snapshot the VE's state descended
//! from when it was taken (the last one taken or rolled back to). Deleting one gives its
//! children its parent; btrfs keeps whatever extents the others still share.
//!
//! A rollback kills the VE (its current state is discarded), swaps in a writable snapshot of
//! the snapshot's files atomically (`RENAME_EXCHANGE`), restores the config and, when the
//! snapshot has memory, restores the VE from it: it runs as it was at the snapshot. A
//! snapshot without memory (taken of a stopped VE) leaves the VE stopped, as it was then.
//!
//! Failures: a snapshot that fails lets the VE go on as it was and leaves nothing behind; a
//! rollback prepares the new private area before it touches the VE, and a failure before the
//! swap leaves the VE's files as they were. Each operation holds `.lock`; work left by a
//! killed `vzctl` is removed by the next command that reads the VE's status.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sys::btrfs;

use crate::ops::{self, Status};
use crate::{io_err, net, Layout, Result, VeError};

const META: &str = "meta.toml";
const MEMORY: &str = "memory";
const FILES: &str = "private";
const CONF: &str = "ve.conf";
const CURRENT: &str = ".current";
const LOCK: &str = ".lock";
const STAGING: &str = ".tmp-";
/// In the private area's top (beside `upper`, out of the VE's sight) from a rollback's swap
/// until its config is back: the snapshot's name, for the recovery of a killed rollback.
const ROLLBACK_MARK: &str = ".rollback";
const MAX_NAME: usize = 64;

/// What `meta.toml` records of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: String,
    /// The snapshot the VE's state descended from when this one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// Whether it holds a memory image (the VE was running).
    pub memory: bool,
    /// How long the VE was stopped for it (0 for a stopped VE).
    pub frozen_ms: f64,
}

/// Figures of one snapshot (`vzctl snapshot --json`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStats {
    pub ctid: u32,
    pub name: String,
    pub parent: Option<String>,
    pub memory: bool,
    /// From the VE's tree fully stopped to it let go (0 for a stopped VE).
    pub frozen_ms: f64,
    /// The btrfs snapshot of the private area, within `frozen_ms`.
    pub fs_snapshot_ms: f64,
    pub total_ms: f64,
    /// The memory dump's own figures (a running VE).
    pub dump: Option<cpt::DumpStats>,
}

/// One snapshot in `vzctl snapshot-list`, in tree order (each after its parent).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    /// Levels below a root of the tree.
    pub depth: usize,
    pub created_unix: u64,
    pub created: String,
    pub memory: bool,
    pub frozen_ms: f64,
    /// The VE's current state descends from this one.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotList {
    pub ctid: u32,
    pub current: Option<String>,
    pub snapshots: Vec<SnapshotInfo>,
}

/// Figures of one rollback (`vzctl rollback --json`).
#[derive(Debug, Clone, Serialize)]
pub struct RollbackStats {
    pub ctid: u32,
    pub name: String,
    /// The snapshot had memory: the VE runs again as it was then.
    pub memory: bool,
    pub running: bool,
    pub total_ms: f64,
    pub restore: Option<rst::RestoreStats>,
}

fn failed(ctid: u32, what: impl Into<String>) -> VeError {
    VeError::Failed {
        ctid,
        what: what.into(),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// An error of the `sys` crate with its whole chain, after `what`.
fn sys_failed(ctid: u32, what: String) -> impl FnOnce(sys::SysError) -> VeError {
    move |e| failed(ctid, format!("{what}: {}", chain(&e)))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Makes the private area of a new VE: a btrfs subvolume when `$VZ_DIR/private` is on btrfs
/// (snapshots need one), else nothing (the caller makes plain directories).
pub fn create_private_area(layout: &Layout, ctid: u32) -> Result<()> {
    let private = layout.private(ctid);
    if private.exists() {
        return Ok(());
    }
    let Some(parent) = private.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(parent).map_err(io_err(ctid, "create", parent))?;
    if btrfs::is_btrfs(parent).unwrap_or(false) {
        btrfs::create_subvolume(&private).map_err(sys_failed(
            ctid,
            format!(
                "create the private area {} as a subvolume",
                private.display()
            ),
        ))?;
    }
    Ok(())
}

/// Snapshot names: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
fn check_name(ctid: u32, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(failed(
            ctid,
            format!(
                "bad snapshot name {name:?}: up to {MAX_NAME} letters, digits, '.', '_' or '-', \
                 not starting with '.' or '-'"
            ),
        ))
    }
}

/// Refuses a private area that cannot be snapshotted, saying why and what is needed.
fn check_btrfs(layout: &Layout, ctid: u32) -> Result<()> {
    let private = layout.private(ctid);
    if !private.is_dir() {
        return Err(failed(
            ctid,
            format!("its private area {} is missing", private.display()),
        ));
    }
    let on_btrfs = btrfs::is_btrfs(&private)
        .map_err(sys_failed(ctid, format!("statfs {}", private.display())))?;
    if !on_btrfs {
        return Err(failed(
            ctid,
            format!(
                "snapshots need the private area on btrfs, and {} is on {}: put $VZ_DIR/private \
                 ({}) on a btrfs file system and create the VE there",
                private.display(),
                btrfs::fs_type_name(&private),
                layout.vz_dir.join("private").display()
            ),
        ));
    }
    let subvolume = btrfs::is_subvolume(&private)
        .map_err(sys_failed(ctid, format!("stat {}", private.display())))?;
    if !subvolume {
        return Err(failed(
            ctid,
            format!(
                "snapshots need the private area {} to be a btrfs subvolume, and it is a plain \
                 directory on btrfs (the VE was created before its private area was on btrfs): \
                 create the VE anew on btrfs, or make the directory a subvolume",
                private.display()
            ),
        ));
    }
    Ok(())
}

/// The VE's snapshot lock, held for the whole of an operation (released when the process
/// ends, however it ends).
struct Lock(#[allow(dead_code)] Flock<File>);

fn lock(layout: &Layout, ctid: u32, wait: bool) -> Result<Option<Lock>> {
    let dir = layout.snapshots(ctid);
    std::fs::create_dir_all(&dir).map_err(io_err(ctid, "create", &dir))?;
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(ctid, "open", &path))?;
    let how = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, how) {
        Ok(l) => Ok(Some(Lock(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(failed(ctid, format!("lock {}: {e}", path.display()))),
    }
}

/// Removes `path`: subvolumes in it by the btrfs ioctl (a read-only one cannot be emptied
/// file by file), the rest as usual.
fn remove_tree(ctid: u32, path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path).map_err(io_err(ctid, "remove", path));
    }
    if btrfs::is_subvolume(path).unwrap_or(false) {
        return btrfs::delete_subvolume(path).map_err(sys_failed(
            ctid,
            format!("delete subvolume {}", path.display()),
        ));
    }
    for entry in std::fs::read_dir(path).map_err(io_err(ctid, "read", path))? {
        let entry = entry.map_err(io_err(ctid, "read", path))?;
        remove_tree(ctid, &entry.path())?;
    }
    std::fs::remove_dir(path).map_err(io_err(ctid, "remove", path))
}

/// Removes work in progress left in the snapshot directory (the caller holds the lock).
fn remove_staging(layout: &Layout, ctid: u32) -> Result<()> {
    let dir = layout.snapshots(ctid);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING) {
            tracing::warn!(ctid, path = %e.path().display(), "removing an abandoned snapshot operation's work");
            remove_tree(ctid, &e.path())?;
        }
    }
    Ok(())
}

/// Undoes what a `vzctl` killed in the middle of a snapshot operation left, unless one is
/// running. Called before the VE's status is read: a snapshot's memory image left complete
/// in staging would otherwise make the dump's recovery kill the VE (as it finishes a killed
/// `vzctl chkpnt`); without it, the VE goes on.
pub(crate) fn recover_interrupted(layout: &Layout, ctid: u32) {
    let dir = layout.snapshots(ctid);
    let abandoned = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(STAGING));
    if !abandoned {
        return;
    }
    match lock(layout, ctid, false) {
        Ok(Some(_lock)) => {
            if let Err(e) = finish_swapped_rollback(layout, ctid) {
                tracing::warn!(ctid, %e, "cannot finish an interrupted rollback");
            }
            if let Err(e) = remove_staging(layout, ctid) {
                tracing::warn!(ctid, %e, "cannot remove an abandoned snapshot operation's work");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(ctid, %e, "cannot lock the VE's snapshots"),
    }
}

/// A rollback killed after its swap: its private area is the snapshot's already; the config
/// and the current snapshot follow (the VE stays stopped: its memory is not restored).
fn finish_swapped_rollback(layout: &Layout, ctid: u32) -> Result<()> {
    let mark = layout.private(ctid).join(ROLLBACK_MARK);
    let Ok(name) = std::fs::read_to_string(&mark) else {
        return Ok(());
    };
    let name = name.trim();
    check_name(ctid, name)?;
    let conf = layout.snapshots(ctid).join(name).join(CONF);
    let text = std::fs::read(&conf).map_err(io_err(ctid, "read", &conf))?;
    write_atomic(ctid, &layout.conf(ctid), &text)?;
    set_current(layout, ctid, Some(name))?;
    tracing::warn!(
        ctid,
        name,
        "an interrupted rollback was finished (the VE is stopped)"
    );
    std::fs::remove_file(&mark).map_err(io_err(ctid, "remove", &mark))
}

fn read_meta(layout: &Layout, ctid: u32, name: &str) -> Result<SnapshotMeta> {
    let dir = layout.snapshots(ctid).join(name);
    let path = dir.join(META);
    if !path.is_file() {
        return Err(failed(
            ctid,
            format!("no snapshot named {name:?} (see vzctl snapshot-list {ctid})"),
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(ctid, "read", &path))?;
    let meta: SnapshotMeta = toml::from_str(&text).map_err(|e| VeError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if meta.name != name {
        return Err(VeError::Config {
            path,
            reason: format!("it names snapshot {:?}, not {name:?}", meta.name),
        });
    }
    Ok(meta)
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(ctid: u32, path: &Path, text: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io_err(ctid, "write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(ctid, "rename", path))
}

fn write_meta(ctid: u32, dir: &Path, meta: &SnapshotMeta) -> Result<()> {
    let text = toml::to_string(meta).map_err(|e| failed(ctid, format!("encode {META}: {e}")))?;
    write_atomic(ctid, &dir.join(META), text.as_bytes())
}

fn current(layout: &Layout, ctid: u32) -> Option<String> {
    let text = std::fs::read_to_string(layout.snapshots(ctid).join(CURRENT)).ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn set_current(layout: &Layout, ctid: u32, name: Option<&str>) -> Result<()> {
    let path = layout.snapshots(ctid).join(CURRENT);
    match name {
        Some(n) => write_atomic(ctid, &path, format!("{n}\n").as_bytes()),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(ctid, "remove", &path)(e))
            }
            _ => Ok(()),
        },
    }
}

/// The memory part of a snapshot, kept in this one function: dumps the running VE into
/// `dir` and returns with its tree still stopped and its network locked, for the file
/// system to be snapshotted at the same instant. The dump is a background one
/// (`cpt::dump_cow`): the tree is stopped only for its small state, its memory is
/// write-protected and copied by `Dumped::copy` once the VE runs again, each page before the
/// VE first writes it, so the VE is not stopped for a time that grows with its memory.
fn dump_memory(layout: &Layout, ctid: u32, dir: &Path) -> Result<ops::Dumped> {
    ops::dump_locked(
        layout,
        ctid,
        dir,
        None,
        true,
        None,
        "only a running or stopped VE can be snapshotted (resume a suspended one first)",
    )
}

/// Lets a VE held by [`dump_memory`] go on: `Ok` resumes it, `Err` (the snapshot failed)
/// resumes it too, as the failed dump would. Either way its network is unlocked.
fn let_go(ctid: u32, dumped: ops::Dumped, ok: bool) -> Result<()> {
    let cfg = dumped.cfg;
    let r = if ok {
        dumped
            .frozen
            .finish(cpt::FinalState::LeaveRunning)
            .map_err(|source| VeError::Dump { ctid, source })
    } else {
        // Dropping the held tree resumes it.
        drop(dumped.frozen);
        Ok(())
    };
    if net::configured(&cfg) {
        let unlocked = net::unlock(ctid, &cfg);
        return r.and(unlocked);
    }
    r
}

/// What [`take`] made in the staging directory.
struct Taken {
    memory: Option<cpt::DumpStats>,
    frozen_ms: f64,
    fs_snapshot_ms: f64,
}

/// Takes the memory (a running VE) and the files into `staging`.
fn take(layout: &Layout, ctid: u32, running: bool, staging: &Path) -> Result<Taken> {
    let private = layout.private(ctid);
    let files = staging.join(FILES);
    let fs_snapshot = |t: Instant| -> Result<f64> {
        btrfs::snapshot(&private, &files, true).map_err(sys_failed(
            ctid,
            format!(
                "snapshot the private area {} into {}",
                private.display(),
                files.display()
            ),
        ))?;
        Ok(ms(t))
    };
    if !running {
        let fs_snapshot_ms = fs_snapshot(Instant::now())?;
        return Ok(Taken {
            memory: None,
            frozen_ms: 0.0,
            fs_snapshot_ms,
        });
    }
    // Most dirty data is written out while the VE still runs: the snapshot, which writes out
    // what is left, then keeps the VE stopped for less.
    if let Ok(dir) = File::open(&private) {
        if let Err(e) = nix::unistd::syncfs(&dir) {
            tracing::warn!(ctid, %e, "syncfs of the private area before the snapshot");
        }
    }
    // A background copy that loses a race with the VE (a process exits, memory is unmapped
    // before its pages are copied) spoils that instant: memory and files are taken again.
    let mut attempt = 1;
    loop {
        match take_running(ctid, layout, staging, &fs_snapshot) {
            Err(VeError::Dump {
                source: e @ cpt::DumpError::CowRace { .. },
                ..
            }) if attempt < cpt::COW_ATTEMPTS => {
                tracing::warn!(ctid, attempt, error = %e, "the snapshot's memory copy lost a race; taking it again");
                remove_tree(ctid, &staging.join(MEMORY))?;
                remove_tree(ctid, &files)?;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// One attempt of [`take`] on a running VE: memory (its copy completed after the VE is let
/// go) and files of one instant.
fn take_running(
    ctid: u32,
    layout: &Layout,
    staging: &Path,
    fs_snapshot: &dyn Fn(Instant) -> Result<f64>,
) -> Result<Taken> {
    let mut dumped = dump_memory(layout, ctid, &staging.join(MEMORY))?;
    let copy = dumped.copy.take();
    let stopped = Instant::now();
    let fs = if sys::fault::hit("snapshot.after-dump") {
        Err(failed(ctid, sys::fault::message("snapshot.after-dump")))
    } else {
        fs_snapshot(Instant::now())
    };
    let mut stats = dumped.stats.clone();
    match fs {
        Ok(fs_snapshot_ms) => {
            let_go(ctid, dumped, true)?;
            let frozen_ms = stats.frozen_ms + ms(stopped);
            // The VE runs again; its memory of the instant is copied now (dropping the copy
            // on an error removes the image and clears the protection).
            match copy {
                Some(copy) => {
                    // Its figures count from the dump's start to the image committed.
                    stats = copy
                        .complete()
                        .map_err(|source| VeError::Dump { ctid, source })?;
                }
                None => stats.total_ms += ms(stopped),
            }
            stats.frozen_ms = frozen_ms;
            Ok(Taken {
                memory: Some(stats),
                frozen_ms,
                fs_snapshot_ms,
            })
        }
        Err(e) => {
            drop(copy);
            let_go(ctid, dumped, false)?;
            Err(e)
        }
    }
}

/// `vzctl snapshot CTID --name NAME`: memory (a running VE) and files of one instant.
pub fn snapshot(layout: &Layout, ctid: u32, name: &str) -> Result<SnapshotStats> {
    let t0 = Instant::now();
    check_name(ctid, name)?;
    let status = ops::status(layout, ctid)?;
    let running = match status {
        Status::Absent => return Err(VeError::NoSuchVe { ctid }),
        Status::Running => true,
        Status::Stopped | Status::Dumped => false,
        Status::Suspended => {
            return Err(VeError::WrongStatus {
                ctid,
                status,
                what: "resume it before taking a snapshot".into(),
            })
        }
    };
    check_btrfs(layout, ctid)?;
    let _lock = lock(layout, ctid, true)?;
    let dir = layout.snapshots(ctid);
    let dest = dir.join(name);
    if dest.exists() {
        return Err(failed(
            ctid,
            format!(
                "a snapshot named {name:?} exists already ({})",
                dest.display()
            ),
        ));
    }
    remove_staging(layout, ctid)?;
    let staging = dir.join(format!("{STAGING}snapshot-{name}"));
    std::fs::create_dir(&staging).map_err(io_err(ctid, "create", &staging))?;
    let parent = current(layout, ctid);
    let conf = layout.conf(ctid);
    let made = std::fs::copy(&conf, staging.join(CONF))
        .map_err(io_err(ctid, "copy", &conf))
        .and_then(|_| take(layout, ctid, running, &staging))
        .and_then(|taken| {
            let meta = SnapshotMeta {
                name: name.to_string(),
                parent: parent.clone(),
                created_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                memory: taken.memory.is_some(),
                frozen_ms: taken.frozen_ms,
            };
            write_meta(ctid, &staging, &meta)?;
            std::fs::rename(&staging, &dest).map_err(io_err(ctid, "rename into place", &dest))?;
            Ok(taken)
        });
    let taken = match made {
        Ok(t) => t,
        Err(e) => {
            if let Err(r) = remove_tree(ctid, &staging) {
                tracing::warn!(ctid, %r, "cannot remove a failed snapshot's work");
            }
            return Err(e);
        }
    };
    set_current(layout, ctid, Some(name))?;
    Ok(SnapshotStats {
        ctid,
        name: name.to_string(),
        parent,
        memory: taken.memory.is_some(),
        frozen_ms: taken.frozen_ms,
        fs_snapshot_ms: taken.fs_snapshot_ms,
        total_ms: ms(t0),
        dump: taken.memory,
    })
}

/// Memory and files of a running VE taken at one instant, like a snapshot but outside the
/// VE's snapshot tree (no name, no parent, `.current` untouched): the consistent source of a
/// backup of a running VE. It lives in the snapshot directory's staging (`.tmp-capture-PID`)
/// and holds the VE's snapshot lock until dropped, which removes it; a capture left by a
/// killed `vzctl` is removed by the next command, as any staging is.
pub struct Capture {
    ctid: u32,
    dir: PathBuf,
    /// How long the VE was stopped for it.
    pub frozen_ms: f64,
    _lock: Lock,
}

impl Capture {
    /// The VE's files (its overlay's upper layer) at the instant.
    pub fn upper(&self) -> PathBuf {
        self.dir.join(FILES).join("upper")
    }

    /// The memory image of the instant.
    pub fn image(&self) -> PathBuf {
        self.dir.join(MEMORY)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(self.ctid, &self.dir) {
            tracing::warn!(ctid = self.ctid, %e, "cannot remove a capture");
        }
    }
}

/// Whether the VE's private area is a btrfs subvolume, so [`capture`] and [`snapshot`] work;
/// `Err` says why not.
pub fn supported(layout: &Layout, ctid: u32) -> Result<()> {
    check_btrfs(layout, ctid)
}

/// Takes a running VE's memory and files at one instant (see [`Capture`]); the VE goes on.
pub fn capture(layout: &Layout, ctid: u32) -> Result<Capture> {
    check_btrfs(layout, ctid)?;
    let lock = lock(layout, ctid, true)?.ok_or_else(|| failed(ctid, "lock its snapshots"))?;
    let dir = layout
        .snapshots(ctid)
        .join(format!("{STAGING}capture-{}", std::process::id()));
    remove_tree(ctid, &dir)?;
    std::fs::create_dir(&dir).map_err(io_err(ctid, "create", &dir))?;
    match take(layout, ctid, true, &dir) {
        Ok(taken) => Ok(Capture {
            ctid,
            dir,
            frozen_ms: taken.frozen_ms,
            _lock: lock,
        }),
        Err(e) => {
            let _ = remove_tree(ctid, &dir);
            Err(e)
        }
    }
}

/// Every snapshot of the VE, in tree order.
pub fn list(layout: &Layout, ctid: u32) -> Result<SnapshotList> {
    if !layout.conf(ctid).exists() {
        return Err(VeError::NoSuchVe { ctid });
    }
    let dir = layout.snapshots(ctid);
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().join(META).is_file() {
                continue;
            }
            all.push(read_meta(layout, ctid, &name)?);
        }
    }
    all.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
    let current = current(layout, ctid);
    let known: std::collections::HashSet<String> = all.iter().map(|m| m.name.clone()).collect();
    let mut out = Vec::new();
    // Roots: no parent, or a parent that is gone.
    let mut stack: Vec<(&SnapshotMeta, usize)> = all
        .iter()
        .filter(|m| m.parent.as_ref().is_none_or(|p| !known.contains(p)))
        .rev()
        .map(|m| (m, 0))
        .collect();
    while let Some((m, depth)) = stack.pop() {
        out.push(SnapshotInfo {
            name: m.name.clone(),
            parent: m.parent.clone(),
            depth,
            created_unix: m.created_unix,
            created: utc(m.created_unix),
            memory: m.memory,
            frozen_ms: m.frozen_ms,
            current: current.as_deref() == Some(m.name.as_str()),
        });
        stack.extend(
            all.iter()
                .filter(|c| c.parent.as_deref() == Some(m.name.as_str()))
                .rev()
                .map(|c| (c, depth + 1)),
        );
    }
    Ok(SnapshotList {
        ctid,
        current,
        snapshots: out,
    })
}

/// Checks a snapshot's memory image as `vzcpt verify` does (headers, checksums of every file
/// and page chunk, consistency), before the rollback discards the VE's current state.
fn verify_memory(ctid: u32, dir: &Path) -> Result<()> {
    let check = || -> std::result::Result<(), rst::RestoreError> {
        let img = rst::Images::load(dir)?;
        rst::validate::validate(&img)?;
        Ok(img
            .dir
            .page_store(&img.pagemap.store)
            .and_then(|s| s.verify_all())?)
    };
    check().map_err(|e| {
        failed(
            ctid,
            format!(
                "the snapshot's memory image {} is damaged (nothing was changed): {}",
                dir.display(),
                chain(&e)
            ),
        )
    })
}

/// `vzctl rollback CTID NAME`: the VE's files, config and (if the snapshot has them) running
/// processes as they were at snapshot NAME; its current state is discarded.
pub fn rollback(layout: &Layout, ctid: u32, name: &str) -> Result<RollbackStats> {
    let t0 = Instant::now();
    check_name(ctid, name)?;
    let status = ops::status(layout, ctid)?;
    if status == Status::Absent {
        return Err(VeError::NoSuchVe { ctid });
    }
    check_btrfs(layout, ctid)?;
    let _lock = lock(layout, ctid, true)?;
    let meta = read_meta(layout, ctid, name)?;
    let snap = layout.snapshots(ctid).join(name);
    remove_staging(layout, ctid)?;
    let conf_text =
        std::fs::read(snap.join(CONF)).map_err(io_err(ctid, "read", snap.join(CONF)))?;
    if meta.memory {
        verify_memory(ctid, &snap.join(MEMORY))?;
    }
    // The new private area is made first: until the swap, the VE is untouched.
    let fresh = layout
        .snapshots(ctid)
        .join(format!("{STAGING}rollback-{name}"));
    btrfs::snapshot(&snap.join(FILES), &fresh, false).map_err(sys_failed(
        ctid,
        format!("make a writable copy of snapshot {name:?}"),
    ))?;
    let discard_fresh = |e: VeError| {
        if let Err(r) = remove_tree(ctid, &fresh) {
            tracing::warn!(ctid, %r, "cannot remove the rollback's work");
        }
        e
    };
    if sys::fault::hit("rollback.before-kill") {
        return Err(discard_fresh(failed(
            ctid,
            sys::fault::message("rollback.before-kill"),
        )));
    }
    // The current state goes: the VE is killed (nothing of it may run on), a dump of it
    // (status dumped) removed with the addresses it kept locked.
    match status {
        Status::Running | Status::Suspended => {
            ops::kill_now(layout, ctid).map_err(discard_fresh)?
        }
        Status::Dumped => {
            let dump = layout.dump(ctid);
            std::fs::remove_dir_all(&dump)
                .map_err(io_err(ctid, "remove the image", &dump))
                .map_err(discard_fresh)?;
            if let Ok(cfg) = ops::load_config(layout, ctid) {
                net::teardown(ctid, &cfg);
            }
        }
        Status::Stopped | Status::Absent => {}
    }
    let private = layout.private(ctid);
    let mark = fresh.join(ROLLBACK_MARK);
    std::fs::write(&mark, name)
        .map_err(io_err(ctid, "write", &mark))
        .map_err(discard_fresh)?;
    btrfs::exchange(&private, &fresh)
        .map_err(sys_failed(
            ctid,
            "swap in the snapshot's private area (the VE is stopped, its files unchanged)".into(),
        ))
        .map_err(discard_fresh)?;
    // `fresh` holds the discarded private area now.
    let _ = sys::fault::hit("rollback.after-swap");
    write_atomic(ctid, &layout.conf(ctid), &conf_text)?;
    set_current(layout, ctid, Some(name))?;
    let mark = private.join(ROLLBACK_MARK);
    std::fs::remove_file(&mark).map_err(io_err(ctid, "remove", &mark))?;
    if let Err(e) = remove_tree(ctid, &fresh) {
        // Removed by the next snapshot operation.
        tracing::warn!(ctid, %e, "cannot delete the discarded private area yet");
    }
    let restore = if meta.memory {
        let r = ops::restore(layout, ctid, Some(&snap.join(MEMORY))).map_err(|e| {
            failed(
                ctid,
                format!(
                    "files and config are back as at snapshot {name:?}, but restoring its \
                     memory failed, so the VE is stopped: {}",
                    chain(&e)
                ),
            )
        })?;
        Some(r)
    } else {
        None
    };
    Ok(RollbackStats {
        ctid,
        name: name.to_string(),
        memory: meta.memory,
        running: restore.is_some(),
        total_ms: ms(t0),
        restore,
    })
}

/// `vzctl snapshot-delete CTID NAME`: its children get its parent; what they share with it
/// stays on disk (btrfs extents), the rest is freed.
pub fn delete(layout: &Layout, ctid: u32, name: &str) -> Result<()> {
    check_name(ctid, name)?;
    if !layout.conf(ctid).exists() {
        return Err(VeError::NoSuchVe { ctid });
    }
    let _lock = lock(layout, ctid, true)?;
    let meta = read_meta(layout, ctid, name)?;
    let dir = layout.snapshots(ctid);
    remove_staging(layout, ctid)?;
    for child in list(layout, ctid)?.snapshots {
        if child.parent.as_deref() == Some(name) {
            let mut m = read_meta(layout, ctid, &child.name)?;
            m.parent = meta.parent.clone();
            write_meta(ctid, &dir.join(&child.name), &m)?;
        }
    }
    if current(layout, ctid).as_deref() == Some(name) {
        set_current(layout, ctid, meta.parent.as_deref())?;
    }
    let doomed = dir.join(format!("{STAGING}delete-{name}"));
    std::fs::rename(dir.join(name), &doomed).map_err(io_err(ctid, "rename", &doomed))?;
    remove_tree(ctid, &doomed)
}

/// Removes every snapshot of the VE and its private area when that is a subvolume (for
/// `vzctl destroy`, on a stopped VE).
pub fn destroy_all(layout: &Layout, ctid: u32) -> Result<()> {
    let dir = layout.snapshots(ctid);
    if dir.is_dir() {
        let _lock = lock(layout, ctid, true)?;
        for e in std::fs::read_dir(&dir)
            .map_err(io_err(ctid, "read", &dir))?
            .flatten()
        {
            if e.file_name() != LOCK {
                remove_tree(ctid, &e.path())?;
            }
        }
    }
    if dir.is_dir() {
        std::fs::remove_dir_all(&dir).map_err(io_err(ctid, "remove", &dir))?;
    }
    let private = layout.private(ctid);
    if btrfs::is_subvolume(&private).unwrap_or(false) {
        btrfs::delete_subvolume(&private).map_err(sys_failed(
            ctid,
            format!("delete subvolume {}", private.display()),
        ))?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["before-upgrade", "a", "v1.2_x", &"x".repeat(MAX_NAME)] {
            assert!(check_name(1, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(check_name(1, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn meta_round_trip() {
        let m = SnapshotMeta {
            name: "a".into(),
            parent: None,
            created_unix: 5,
            memory: true,
            frozen_ms: 1.5,
        };
        let back: SnapshotMeta = toml::from_str(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(back.parent, None);
        assert!(back.memory);
    }
}
