//! The `vzctl` verbs other than `start` (`start.rs`) and the snapshot verbs (`snapshot.rs`):
//! status, create, destroy, stop, exec/enter, suspend, resume, set, chkpnt and restore.

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use serde::Serialize;

use crate::cgroups::VeCgroups;
use crate::start::Setup;
use crate::{fs, io_err, net, Layout, Result, VeConfig, VeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No config: the VE does not exist.
    Absent,
    Stopped,
    Running,
    /// Frozen by `vzctl suspend`.
    Suspended,
    /// Not running, with a checkpoint image in its default place.
    Dumped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Absent => "absent",
            Status::Stopped => "stopped",
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Dumped => "dumped",
        })
    }
}

pub fn load_config(layout: &Layout, ctid: u32) -> Result<VeConfig> {
    let p = layout.conf(ctid);
    if !p.exists() {
        return Err(VeError::NoSuchVe { ctid });
    }
    VeConfig::load(&p)
}

/// The VE's cgroup v2 directory (what the dumper freezes and the page tracker arms).
pub fn cgroup_dir(layout: &Layout, ctid: u32) -> Result<PathBuf> {
    Ok(cgroups(layout, ctid)?.v2()?.to_path_buf())
}

fn cgroups(layout: &Layout, ctid: u32) -> Result<VeCgroups> {
    VeCgroups::of(ctid, &layout.cgroup_path(ctid))
}

/// The VE's status, read from its cgroup and its files.
pub fn status(layout: &Layout, ctid: u32) -> Result<Status> {
    if !layout.conf(ctid).exists() {
        return Ok(Status::Absent);
    }
    let cg = cgroups(layout, ctid)?;
    // First: a snapshot interrupted after its image was complete must not look like a
    // checkpoint that was killing the VE (its staging image goes, so the VE goes on).
    crate::snapshot::recover_interrupted(layout, ctid);
    recover_interrupted_restore(layout, ctid, &cg);
    recover_interrupted_dump(layout, ctid, &cg);
    if !cg.procs().is_empty() {
        return Ok(if cg.frozen() {
            Status::Suspended
        } else {
            Status::Running
        });
    }
    Ok(if layout.dump(ctid).is_dir() {
        Status::Dumped
    } else {
        Status::Stopped
    })
}

fn expect(layout: &Layout, ctid: u32, ok: &[Status], what: &str) -> Result<Status> {
    let s = status(layout, ctid)?;
    if s == Status::Absent {
        return Err(VeError::NoSuchVe { ctid });
    }
    if !ok.contains(&s) {
        return Err(VeError::WrongStatus {
            ctid,
            status: s,
            what: what.into(),
        });
    }
    Ok(s)
}

/// The VE's init (PID 1 inside), as a host PID.
pub fn init_pid(layout: &Layout, ctid: u32) -> Result<i32> {
    for pid in cgroups(layout, ctid)?.procs() {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let nspid: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        if nspid.len() >= 2 && nspid.last() == Some(&"1") {
            return Ok(pid);
        }
    }
    Err(VeError::Failed {
        ctid,
        what: "its init is not running".into(),
    })
}

pub fn create(layout: &Layout, ctid: u32, cfg: &VeConfig) -> Result<()> {
    if ctid == 0 {
        return Err(VeError::Failed {
            ctid,
            what: "CTID 0 is the host".into(),
        });
    }
    if layout.conf(ctid).exists() {
        return Err(VeError::Exists { ctid });
    }
    cfg.validate().map_err(|reason| VeError::Config {
        path: layout.conf(ctid),
        reason,
    })?;
    if let Some(root) = &cfg.root {
        if !root.is_dir() {
            return Err(VeError::Failed {
                ctid,
                what: format!("root {} is not a directory", root.display()),
            });
        }
    }
    // On btrfs the private area is a subvolume, which snapshots need.
    crate::snapshot::create_private_area(layout, ctid)?;
    for d in [layout.upper(ctid), layout.work(ctid), layout.root(ctid)] {
        std::fs::create_dir_all(&d).map_err(io_err(ctid, "create", &d))?;
    }
    cfg.save(&layout.conf(ctid))
}

pub fn destroy(layout: &Layout, ctid: u32) -> Result<()> {
    expect(
        layout,
        ctid,
        &[Status::Stopped, Status::Dumped],
        "stop it before destroying it",
    )?;
    fs::umount_root(layout, ctid)?;
    if let Ok(cfg) = load_config(layout, ctid) {
        net::teardown(ctid, &cfg);
    }
    // Snapshots are read-only subvolumes: only the btrfs ioctl removes them.
    crate::snapshot::destroy_all(layout, ctid)?;
    for d in [layout.dump(ctid), layout.private(ctid), layout.root(ctid)] {
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(io_err(ctid, "remove", &d))?;
        }
    }
    let conf = layout.conf(ctid);
    std::fs::remove_file(&conf).map_err(io_err(ctid, "remove", &conf))
}

/// Stops a running VE: SIGTERM to its init (which passes it on and exits), then after
/// `timeout` everything left is killed; cgroups and mounts are removed.
pub fn stop(layout: &Layout, ctid: u32, timeout: Duration) -> Result<()> {
    expect(
        layout,
        ctid,
        &[Status::Running, Status::Suspended],
        "it is not running",
    )?;
    let cg = cgroups(layout, ctid)?;
    if cg.frozen() {
        cg.set_frozen(false)?;
    }
    if let Ok(init) = init_pid(layout, ctid) {
        let _ = kill(Pid::from_raw(init), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while !cg.procs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    cleanup_stopped(layout, ctid, &cg)?;
    if let Ok(cfg) = load_config(layout, ctid) {
        net::teardown(ctid, &cfg);
    }
    Ok(())
}

/// Kills a running or suspended VE at once (no SIGTERM: nothing of it may run any more, as
/// for a rollback), and removes its cgroups, mounts and network.
pub(crate) fn kill_now(layout: &Layout, ctid: u32) -> Result<()> {
    let cg = cgroups(layout, ctid)?;
    cleanup_stopped(layout, ctid, &cg)?;
    if let Ok(cfg) = load_config(layout, ctid) {
        net::teardown(ctid, &cfg);
    }
    Ok(())
}

fn cleanup_stopped(layout: &Layout, ctid: u32, cg: &VeCgroups) -> Result<()> {
    cg.kill_all(Duration::from_secs(10))?;
    cg.remove()?;
    fs::umount_root(layout, ctid)
}

/// Runs `argv` inside the running VE: in all its namespaces and cgroups, from its root.
/// Returns the exit status as a shell shows it.
pub fn exec(layout: &Layout, ctid: u32, argv: &[String]) -> Result<i32> {
    expect(
        layout,
        ctid,
        &[Status::Running],
        "exec needs a running VE (a suspended one must be resumed)",
    )?;
    if argv.is_empty() {
        return Err(VeError::Failed {
            ctid,
            what: "no command given".into(),
        });
    }
    let init = init_pid(layout, ctid)?;
    let cg = cgroups(layout, ctid)?;
    // The cgroup files are opened here, on the host, and written by the child once it is in the
    // VE, where the host's cgroup mounts are out of sight.
    let procs: Vec<OwnedFd> = cg
        .dirs
        .iter()
        .map(|(_, d)| {
            let p = d.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map(OwnedFd::from)
                .map_err(io_err(ctid, "open", p))
        })
        .collect::<Result<_>>()?;
    let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(init))?;
    // Checked while the host's /proc is still in sight.
    let single = sys::syscalls::SingleThreaded::check()?;
    nix::sched::setns(
        &pidfd,
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(|e| VeError::Failed {
        ctid,
        what: format!("enter its namespaces: {e}"),
    })?;
    let cargs: Vec<std::ffi::CString> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    // vzctl is single-threaded here, so the child may run ordinary code before it execs.
    match sys::syscalls::fork_single_threaded(&single)? {
        ForkResult::Child => {
            for fd in &procs {
                if sys::syscalls::write_raw(fd.as_raw_fd(), b"0").is_err() {
                    eprintln!("vzctl: cannot join the VE's cgroups");
                    std::process::exit(126);
                }
            }
            drop(procs);
            let _ = nix::unistd::chdir("/");
            if sys::syscalls::close_inherited_before_exec(None).is_err() {
                std::process::exit(126);
            }
            let env = [
                std::ffi::CString::new(START_PATH).unwrap_or_default(),
                std::ffi::CString::new("HOME=/root").unwrap_or_default(),
                std::ffi::CString::new(format!(
                    "TERM={}",
                    std::env::var("TERM").unwrap_or_else(|_| "dumb".into())
                ))
                .unwrap_or_default(),
            ];
            let e = nix::unistd::execvpe(&cargs[0], &cargs, &env).unwrap_err();
            eprintln!("vzctl: exec {}: {e}", argv[0]);
            std::process::exit(127);
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(VeError::Failed {
                        ctid,
                        what: format!("wait for the command: {e}"),
                    })
                }
            }
        },
    }
}

const START_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn suspend(layout: &Layout, ctid: u32) -> Result<()> {
    expect(
        layout,
        ctid,
        &[Status::Running],
        "only a running VE can be suspended",
    )?;
    cgroups(layout, ctid)?.set_frozen(true)
}

pub fn resume(layout: &Layout, ctid: u32) -> Result<()> {
    expect(
        layout,
        ctid,
        &[Status::Suspended],
        "only a suspended VE can be resumed",
    )?;
    let cg = cgroups(layout, ctid)?;
    // Held for a migration by a holder that died: the admin says it runs here after all
    // (its sockets leave repair mode and its threads get their masks before it thaws).
    let journal = journal_path(layout, ctid);
    if journal.exists() {
        cpt::journal::recover(&journal, Some(cg.v2()?), true)
            .map_err(|source| VeError::Dump { ctid, source })?;
        let cfg = load_config(layout, ctid)?;
        if net::configured(&cfg) {
            net::unlock(ctid, &cfg)?;
        }
    }
    cg.set_frozen(false)
}

/// Where a checkpoint of VE `ctid` keeps its journal (see `cpt::journal`).
fn journal_path(layout: &Layout, ctid: u32) -> PathBuf {
    layout.vz_dir.join("dump").join(format!("{ctid}.journal"))
}

fn restore_marker(layout: &Layout, ctid: u32) -> PathBuf {
    layout.vz_dir.join("dump").join(format!("{ctid}.restoring"))
}

/// Names the `vzctl restore` under way until it has released the VE (or failed, and
/// cleaned up itself): a restorer killed before that leaves it, with what it built.
struct RestoreMarker(PathBuf);

impl RestoreMarker {
    fn begin(layout: &Layout, ctid: u32) -> Result<Self> {
        let path = restore_marker(layout, ctid);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io_err(ctid, "create", d))?;
        }
        std::fs::write(&path, format!("{}\n", cpt::journal::this_owner()))
            .map_err(io_err(ctid, "write", &path))?;
        Ok(RestoreMarker(path))
    }

    /// The VE is released (it runs): a killed `vzctl` leaves it running, and the image to
    /// remove (`remove`), if any, is removed by the next command. One `write` appending a
    /// line: the shortest step after the release (a line cut short reads as not released).
    fn released(&self, ctid: u32, remove: Option<&Path>) -> Result<()> {
        use std::io::Write;
        let line = format!(
            "released {}\n",
            remove.map_or("-".into(), |p| p.display().to_string())
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.0)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(io_err(ctid, "write", &self.0))
    }
}

impl Drop for RestoreMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A restore whose `vzctl` died before releasing the VE (killed, crashed) left half-built
/// processes (released by the kernel in the restorer's code), the VE's cgroups, root and
/// host network end: all removed here, before the status is read, so the VE is dumped
/// again (its image is removed only after the release) and a new restore can run.
fn recover_interrupted_restore(layout: &Layout, ctid: u32, cg: &VeCgroups) {
    let marker = restore_marker(layout, ctid);
    let Ok(owner) = std::fs::read_to_string(&marker) else {
        return;
    };
    if !cpt::journal::owner_gone(owner.lines().next().unwrap_or("").trim()) {
        return;
    }
    // Only a whole line counts (one cut short by the kill: not released).
    let released = owner
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .find_map(|l| l.strip_prefix("released "));
    if let Some(image) = released {
        // It runs: only the image it was restored from was still to go.
        if image != "-" {
            let _ = std::fs::remove_dir_all(image);
        }
        let _ = std::fs::remove_file(&marker);
        return;
    }
    tracing::warn!(ctid, "a restore was interrupted: what it built is removed");
    let _ = cleanup_stopped(layout, ctid, cg);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &net::host_if(ctid)])
        .output();
    let _ = std::fs::remove_file(&marker);
}

/// A checkpoint whose `vzctl` died halfway (killed, crashed) left the VE stopped or frozen
/// with every signal blocked, its connections in repair mode and its network locked: undone
/// here, before the status is read, so that the status tells the truth. An incomplete image:
/// the VE goes on (running). A complete one: the dumper was letting the VE go (killing it,
/// as `vzctl chkpnt` does): the kill is finished (dumped). A VE held for a migration is left
/// frozen (suspended): its destination may run it; `vzctl resume` or `destroy` decides.
fn recover_interrupted_dump(layout: &Layout, ctid: u32, cg: &VeCgroups) {
    let journal = journal_path(layout, ctid);
    let Ok(dir) = cg.v2() else { return };
    let r = match cpt::journal::recover(&journal, Some(dir), false) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(ctid, %e, "cannot undo an interrupted checkpoint");
            return;
        }
    };
    tracing::warn!(ctid, ?r, "a checkpoint was interrupted: undone");
    if r.hold {
        return;
    }
    let Ok(cfg) = load_config(layout, ctid) else {
        return;
    };
    if r.image_complete && !r.leave_running {
        let _ = cleanup_stopped(layout, ctid, cg);
    } else if net::configured(&cfg) {
        let _ = net::unlock(ctid, &cfg);
    }
}

/// Applies new limits to a running VE and, with `save`, writes them to its config.
pub fn set(layout: &Layout, ctid: u32, cfg: &VeConfig, save: bool) -> Result<()> {
    cfg.validate().map_err(|reason| VeError::Config {
        path: layout.conf(ctid),
        reason,
    })?;
    let s = status(layout, ctid)?;
    if s == Status::Absent {
        return Err(VeError::NoSuchVe { ctid });
    }
    if matches!(s, Status::Running | Status::Suspended) {
        cgroups(layout, ctid)?.apply_limits(cfg)?;
    } else if !save {
        return Err(VeError::WrongStatus {
            ctid,
            status: s,
            what: "without --save a change applies to a running VE only".into(),
        });
    }
    if save {
        cfg.save(&layout.conf(ctid))?;
    }
    Ok(())
}

/// `vzctl chkpnt`: dumps the VE through its cgroup freezer; stops it unless `leave_running`.
/// With `inc`, an incremental dump (`--track-mem`, `--parent`; see `cpt::incremental`).
pub fn chkpnt(
    layout: &Layout,
    ctid: u32,
    dumpfile: Option<&Path>,
    leave_running: bool,
    inc: Option<&cpt::incremental::IncrementalOptions>,
) -> Result<cpt::DumpStats> {
    let dir = dumpfile.map_or_else(|| layout.dump(ctid), Path::to_path_buf);
    let dumped = dump_locked(
        layout,
        ctid,
        &dir,
        None,
        false,
        inc,
        "only a running VE can be checkpointed (resume a suspended one first)",
    )?;
    let final_state = if leave_running {
        cpt::FinalState::LeaveRunning
    } else {
        cpt::FinalState::Kill
    };
    let (cg, cfg, mut stats) = (dumped.cg, dumped.cfg, dumped.stats);
    let mut frozen = dumped.frozen;
    if leave_running {
        // Killed from here on, the VE is resumed, not killed: its image is a snapshot.
        frozen
            .journal_mark("leave-running")
            .map_err(|source| VeError::Dump { ctid, source })?;
    }
    // A crash here: the image is complete, the VE not let go yet (the next command finishes
    // the kill, see `recover_interrupted_dump`).
    let _ = sys::fault::hit("chkpnt.before-finish");
    let finishing = std::time::Instant::now();
    // The journal stays until the network is unlocked or the cgroups removed: a `vzctl`
    // killed before that leaves the rest to the next command.
    let journal = frozen.finish_journaled(final_state).map_err(|source| {
        if net::configured(&cfg) {
            let _ = net::unlock(ctid, &cfg);
        }
        VeError::Dump { ctid, source }
    })?;
    if leave_running {
        if net::configured(&cfg) {
            net::unlock(ctid, &cfg)?;
        }
    } else {
        // The addresses stay blackholed while the VE is dumped, until its restore.
        cleanup_stopped(layout, ctid, &cg)?;
    }
    if let Some(j) = journal {
        j.end();
    }
    // As `cpt::dump` counts it: up to the tree killed or resumed.
    stats.total_ms += finishing.elapsed().as_secs_f64() * 1000.0;
    Ok(stats)
}

/// A VE dumped into a complete image, its tree still stopped, its network locked.
pub(crate) struct Dumped {
    pub(crate) stats: cpt::DumpStats,
    pub(crate) frozen: cpt::seize::Frozen,
    pub(crate) cg: VeCgroups,
    pub(crate) cfg: VeConfig,
    /// A background dump's memory copy, to complete once the tree is let go (the image is
    /// complete only then).
    pub(crate) copy: Option<cpt::cow::CowCopy>,
}

/// What every checkpoint of a running VE does first: checks, locks its network (peers see
/// nothing: their packets are dropped, never refused) and dumps it into `dir`, keeping its
/// tree stopped. A failure unlocks the network and leaves the VE running. With `cow` the
/// memory is not copied yet (see `cpt::dump_cow`): `Dumped::copy` does it once the tree runs.
pub(crate) fn dump_locked(
    layout: &Layout,
    ctid: u32,
    dir: &Path,
    sent_pages: Option<images_format::track::SentPagesImage>,
    cow: bool,
    inc: Option<&cpt::incremental::IncrementalOptions>,
    not_running: &str,
) -> Result<Dumped> {
    expect(layout, ctid, &[Status::Running], not_running)?;
    if dir.exists() {
        return Err(VeError::Failed {
            ctid,
            what: format!("image {} already exists; remove it first", dir.display()),
        });
    }
    let cg = cgroups(layout, ctid)?;
    let cfg = load_config(layout, ctid)?;
    let journal = journal_path(layout, ctid);
    if let Some(d) = journal.parent() {
        std::fs::create_dir_all(d).map_err(io_err(ctid, "create", d))?;
    }
    // The journal exists before the network is locked: a `vzctl` killed from here on
    // leaves one, and the next command unlocks the network (see `recover_interrupted_dump`).
    let early = cpt::journal::Journal::begin(&journal, dir)
        .map_err(|source| VeError::Dump { ctid, source })?;
    if net::configured(&cfg) {
        net::lock(ctid, &cfg)?;
    }
    let opts = cpt::DumpOptions {
        target: cpt::Target::Cgroup(cg.v2()?.to_path_buf()),
        dir: dir.to_path_buf(),
        // Not used: the caller ends the dump.
        final_state: cpt::FinalState::LeaveRunning,
        compress: None,
        // Connections to peers outside the VE survive: the network lock holds their packets
        // off (dropped, not refused) until the restore, as `vzctl chkpnt` always did.
        tcp_established: true,
        sent_pages,
        journal: Some(journal),
        cow,
    };
    let dumped = match (cow, inc) {
        (true, _) => cpt::dump_cow(&opts).map(|(stats, frozen, copy)| (stats, frozen, Some(copy))),
        (false, Some(inc)) => {
            cpt::dump_held_incremental(&opts, inc).map(|(stats, frozen)| (stats, frozen, None))
        }
        (false, None) => cpt::dump_held(&opts).map(|(stats, frozen)| (stats, frozen, None)),
    };
    let (stats, frozen, copy) = dumped.map_err(|source| {
        if net::configured(&cfg) {
            let _ = net::unlock(ctid, &cfg);
        }
        VeError::Dump { ctid, source }
    })?;
    // The dump's own journal took the file over.
    early.handover();
    Ok(Dumped {
        stats,
        frozen,
        cg,
        cfg,
        copy,
    })
}

/// How a VE held by [`chkpnt_hold`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// It runs elsewhere now: killed here, left stopped with its network locked.
    Commit,
    /// The migration failed: it goes on here as before.
    Abort,
    /// Nobody knows where it runs: frozen here (status suspended) for an admin to decide.
    Suspend,
}

/// A VE dumped and held stopped under ptrace by this process (see [`chkpnt_hold`]).
pub struct HeldVe {
    ctid: u32,
    cfg: VeConfig,
    frozen: cpt::seize::Frozen,
    pub stats: cpt::DumpStats,
}

/// Reads a `sent-pages` file (written by vzmigrate's page tracker).
pub fn read_sent_pages(file: &Path) -> Result<images_format::track::SentPagesImage> {
    let fail = |what: String| VeError::Failed { ctid: 0, what };
    let name = images_format::ImageKind::SentPages.file_name();
    match (file.parent(), file.file_name()) {
        (Some(dir), Some(n)) if n == name => {
            images_format::read_record(dir).map_err(|e| fail(e.to_string()))
        }
        _ => Err(fail(format!("{} is not a {name} file", file.display()))),
    }
}

/// `vzctl chkpnt --hold` (vzmigrate's last step of an online migration): dumps the VE like
/// [`chkpnt`], its network locked, but keeps its processes stopped (under ptrace, TCP sockets
/// in repair mode) until [`HeldVe::end`] says whether it runs elsewhere now. With `sent`,
/// pages the destination holds already are referred to, not stored.
pub fn chkpnt_hold(
    layout: &Layout,
    ctid: u32,
    dir: &Path,
    sent: Option<images_format::track::SentPagesImage>,
) -> Result<HeldVe> {
    let mut d = dump_locked(
        layout,
        ctid,
        dir,
        sent,
        false,
        None,
        "only a running VE can be migrated",
    )?;
    if let Err(source) = d.frozen.journal_mark("hold") {
        drop(d.frozen);
        if net::configured(&d.cfg) {
            let _ = net::unlock(ctid, &d.cfg);
        }
        return Err(VeError::Dump { ctid, source });
    }
    // Frozen as well as stopped: should this process die, its tracees are let go, and the
    // freezer keeps them from running until someone decides (the VE shows as suspended).
    if let Err(e) = d.cg.set_frozen(true) {
        drop(d.frozen);
        if net::configured(&d.cfg) {
            let _ = net::unlock(ctid, &d.cfg);
        }
        return Err(e);
    }
    Ok(HeldVe {
        ctid,
        cfg: d.cfg,
        frozen: d.frozen,
        stats: d.stats,
    })
}

impl HeldVe {
    /// The destination may take the VE over from now on: should this process die, the VE
    /// must stay suspended here (the journal says so).
    pub fn committing(&mut self) -> Result<()> {
        let ctid = self.ctid;
        self.frozen
            .journal_mark("committing")
            .map_err(|source| VeError::Dump { ctid, source })
    }

    pub fn end(self, layout: &Layout, how: HoldEnd) -> Result<()> {
        let (ctid, cfg) = (self.ctid, self.cfg);
        let dump = |source| VeError::Dump { ctid, source };
        let cg = cgroups(layout, ctid)?;
        match how {
            HoldEnd::Commit => {
                // Thawed but still stopped under ptrace, then killed (sockets in repair mode
                // vanish without a word to their peers).
                cg.set_frozen(false)?;
                self.frozen.finish(cpt::FinalState::Kill).map_err(dump)?;
                cleanup_stopped(layout, ctid, &cg)?;
                // Its addresses live elsewhere now: no blackhole, no ARP answers here.
                net::teardown(ctid, &cfg);
                Ok(())
            }
            HoldEnd::Abort => {
                cg.set_frozen(false)?;
                self.frozen
                    .finish(cpt::FinalState::LeaveRunning)
                    .map_err(dump)?;
                if net::configured(&cfg) {
                    net::unlock(ctid, &cfg)?;
                }
                Ok(())
            }
            // Let go, but frozen: nothing runs until an admin resumes or destroys it.
            HoldEnd::Suspend => self
                .frozen
                .finish(cpt::FinalState::LeaveFrozen)
                .map_err(dump),
        }
    }
}

/// `vzctl restore`: brings the VE back from its image. The default image is removed once the
/// VE runs again; an image given with `--dumpfile` is the caller's and stays.
pub fn restore(layout: &Layout, ctid: u32, dumpfile: Option<&Path>) -> Result<rst::RestoreStats> {
    expect(
        layout,
        ctid,
        &[Status::Stopped, Status::Dumped],
        "a running VE cannot be restored over",
    )?;
    let dir: PathBuf = dumpfile.map_or_else(|| layout.dump(ctid), Path::to_path_buf);
    if !dir.is_dir() {
        return Err(VeError::Failed {
            ctid,
            what: format!("no image at {}", dir.display()),
        });
    }
    let cfg = load_config(layout, ctid)?;
    let dumped_cgroup = root_cgroup(&dir).map_err(|source| VeError::Restore { ctid, source })?;
    let marker = RestoreMarker::begin(layout, ctid)?;
    let setup = Setup::prepare(layout, ctid, &cfg)?;
    let net_cfg = cfg.clone();
    let net_hook: rst::NetHook = std::sync::Arc::new(move |pid, dumped| {
        net::setup(ctid, &net_cfg, pid, Some(dumped)).map_err(|e| e.to_string())
    });
    let restored = rst::restore(&rst::RestoreOptions {
        dir: dir.clone(),
        detach: true,
        root: Some(layout.root(ctid)),
        cgroup_rewrite: Some((dumped_cgroup, layout.cgroup_path(ctid))),
        net_hook: Some(net_hook),
    })
    .map_err(|source| {
        // The VE stays dumped: its addresses stay locked (blackholed) for the next try.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &net::host_if(ctid)])
            .output();
        // A process the OOM killer took says little by itself ("no such process").
        if setup.cgroups.oom_kills() > 0 {
            return VeError::Failed {
                ctid,
                what: format!(
                    "restore failed: the VE's memory limit ({}) was hit: {source}",
                    cfg.memory
                        .map_or("none set".to_string(), |m| format!("{m} bytes"))
                ),
            };
        }
        VeError::Restore { ctid, source }
    })?;
    // Released: from here on the VE runs, and a killed `vzctl` must not undo it.
    setup.keep();
    let image = dumpfile.is_none().then_some(dir.as_path());
    marker.released(ctid, image)?;
    if let Some(dir) = image {
        std::fs::remove_dir_all(dir).map_err(io_err(ctid, "remove the image", dir))?;
    }
    drop(marker);
    Ok(restored.stats)
}

/// The cgroup v2 path the image's root was dumped in: the VE's cgroup on the dumping host.
fn root_cgroup(dir: &Path) -> std::result::Result<String, rst::RestoreError> {
    let img = images_format::ImageDir::open(dir)?;
    let pstree: images_format::pstree::PstreeImage = img.read()?;
    let core: images_format::core::CoreImage = img.read()?;
    core.processes
        .iter()
        .find(|p| p.pid == pstree.root_pid)
        .and_then(|p| p.cgroups.iter().find(|c| c.controllers.is_empty()))
        .map(|c| c.path.clone())
        .ok_or_else(|| {
            rst::RestoreError::Invalid("the image's root has no cgroup v2 membership".into())
        })
}

/// One row of `vzlist`.
#[derive(Debug, Clone, Serialize)]
pub struct VeInfo {
    pub ctid: u32,
    pub status: Status,
    pub nproc: usize,
    pub hostname: String,
}

pub fn list(layout: &Layout, all: bool) -> Result<Vec<VeInfo>> {
    let mut out = Vec::new();
    for ctid in layout.ctids() {
        let s = status(layout, ctid)?;
        if !all && !matches!(s, Status::Running | Status::Suspended) {
            continue;
        }
        let cfg = load_config(layout, ctid).unwrap_or_default();
        out.push(VeInfo {
            ctid,
            status: s,
            nproc: cgroups(layout, ctid)?.procs().len(),
            hostname: cfg.hostname.unwrap_or_else(|| ctid.to_string()),
        });
    }
    Ok(out)
}
