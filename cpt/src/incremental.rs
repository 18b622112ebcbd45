//! Incremental dumps: `--track-mem` keeps written-page tracking armed in the tree between
//! dumps, and `--parent DIR` stores only the pages written since the parent.
//!
//! Tracking: every dump with `--track-mem` gives each process a new userfaultfd with
//! asynchronous write protection (a remote `userfaultfd(2)`, as [`crate::track`] does), hands
//! them to a small keeper process outside the tree (`vzcpt __track-keeper`, detached, which
//! takes them from the dumper with `pidfd_getfd` and exits when every tracked process is gone
//! or when a later dump ends it), names the keeper and the descriptors in the image's
//! `track-state` record, and only once the image is committed, the tree still frozen, ends
//! the parent's keeper (whose descriptors are then closed, which unregisters their areas) and
//! registers and write-protects every private anonymous area with the new descriptors. A dump
//! that fails, or a dumper killed anywhere, leaves the protection relative to an older image:
//! the next increment is bigger, never wrong.
//!
//! A dump with `--parent` takes the parent keeper's descriptors (`pidfd_getfd`) for the
//! processes the `track-state` record names (same PID and start time, keeper alive with its
//! start time). For each private anonymous area it first registers the range with that very
//! descriptor: `EBUSY` means another dump's descriptor owns it now (a sibling increment, say),
//! so its written bits say nothing about this parent and the area counts as untracked; a
//! range that was not registered any more gets registered with no page protected, so every
//! page reads as written. Then `PAGEMAP_SCAN` gives the pages written since the parent.
//! Present pages not written are the parent's (a parent run when the chain holds them, else
//! they were zero then and still are). Written pages, and every present page of an untracked
//! area or process, are read and compared with the parent's copy: equal pages become parent
//! runs too, the others are stored.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use images_format::chain::{Chain, ChainStore, ChunkSource};
use images_format::mm::PageOwner;
use images_format::pagestore::{PageLoc, CHUNK_SIZE};
use images_format::track::{TrackStateImage, TrackedProcess};
use images_format::{ImageKind, PageBuf};
use nix::errno::Errno;
use serde::Serialize;
use sys::{uffd, Pid, SysError};
use tracing::{info, warn};

use crate::proc::parse_maps;
use crate::track::{arm_for_keeper, start_time, trackable};
use crate::DumpError;

/// The hidden subcommand a binary that dumps with `--track-mem` must hand to [`keeper_main`].
pub const KEEPER_ARG: &str = "__track-keeper";
const PAGE: u64 = images_format::PAGE_SIZE as u64;

/// What `vzcpt dump --track-mem --parent DIR` asks for.
#[derive(Debug, Clone, Default)]
pub struct IncrementalOptions {
    /// Leave written-page tracking armed after the dump, for a later `parent`.
    pub track_mem: bool,
    /// Store only the pages written since this image (or differing from it).
    pub parent: Option<PathBuf>,
    /// The binary run as keeper with [`KEEPER_ARG`] (default: this very executable).
    pub keeper_exe: Option<PathBuf>,
}

/// Figures of an incremental dump, in `vzcpt dump --json` (flattened into the dump's).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IncrementalStats {
    /// Whether the parent's tracking could be used (its keeper alive).
    pub parent_tracked: bool,
    /// Processes whose written pages were known / not known since the parent.
    pub processes_tracked: usize,
    pub processes_untracked: usize,
    /// Present pages of areas without tracking, compared with the parent page by page.
    pub pages_untracked: u64,
    /// Pages written since the parent (or untracked) found equal to the parent's copy.
    pub pages_same_as_parent: u64,
    /// Processes left tracked after this dump (`--track-mem`).
    pub processes_armed: usize,
}

struct Parent {
    chain: Chain,
    store: ChainStore,
    /// What the inventory records: the parent relative to the image's directory.
    recorded: String,
}

struct Keeper {
    pid: i32,
    pidfd: OwnedFd,
}

/// State of one incremental dump; see the module docs.
pub struct Incremental {
    opts: IncrementalOptions,
    parent: Option<Parent>,
    old_keeper: Option<Keeper>,
    /// Keepers named by older images of the chain and still alive (a dumper killed before
    /// it ended its parent's keeper leaves one): ended with the parent's, else their
    /// descriptors would keep the areas registered and block the new ones.
    older_keepers: Vec<Keeper>,
    /// The parent keeper's descriptors, by (host PID, start time).
    old: HashMap<(i32, u64), OwnedFd>,
    /// This dump's new descriptors, by host PID, with the start time.
    new: HashMap<i32, (u64, OwnedFd)>,
    new_keeper: Option<Keeper>,
    armed: Vec<TrackedProcess>,
    committed: bool,
    pub stats: IncrementalStats,
}

fn parent_err(path: &Path, reason: impl std::fmt::Display) -> DumpError {
    DumpError::Parent {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn sys_reason(e: &SysError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn errno_of(e: &SysError) -> Option<Errno> {
    match e {
        SysError::Syscall { source, .. } | SysError::Ptrace { source, .. } => Some(*source),
        SysError::RemoteSyscall { errno, .. } => Some(*errno),
        _ => None,
    }
}

/// The keeper `pid` if it is alive, started at `start`, and is a keeper.
fn open_keeper(pid: i32, start: u64) -> Option<Keeper> {
    let is_keeper = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| c.split(|&b| b == 0).any(|a| a == KEEPER_ARG.as_bytes()))
            .unwrap_or(false)
    };
    if pid <= 0 || start_time(pid) != Some(start) || !is_keeper(pid) {
        return None;
    }
    let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(pid)).ok()?;
    // Checked again with the pidfd held: it cannot be another process now.
    (start_time(pid) == Some(start)).then_some(Keeper { pid, pidfd })
}

/// Ends a keeper and waits (up to 5 s) until it is gone, its descriptors closed.
fn end_keeper(k: &Keeper) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    match sys::syscalls::pidfd_send_signal(&k.pidfd, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => {}
        Err(e) if errno_of(&e) == Some(Errno::ESRCH) => return true,
        Err(e) => {
            warn!(
                keeper = k.pid,
                error = sys_reason(&e),
                "cannot end the tracking keeper"
            );
            return false;
        }
    }
    let mut fds = [PollFd::new(k.pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(5000u16)), Ok(n) if n > 0)
}

impl Incremental {
    /// Opens the parent chain (refusing a missing, damaged or foreign one) and takes the
    /// parent keeper's descriptors. Called before the tree is frozen. `dir` is the image
    /// being made.
    pub fn prepare(opts: &IncrementalOptions, dir: &Path) -> Result<Incremental, DumpError> {
        let mut inc = Incremental {
            opts: opts.clone(),
            parent: None,
            old_keeper: None,
            older_keepers: Vec::new(),
            old: HashMap::new(),
            new: HashMap::new(),
            new_keeper: None,
            armed: Vec::new(),
            committed: false,
            stats: IncrementalStats::default(),
        };
        let Some(ppath) = &opts.parent else {
            return Ok(inc);
        };
        let chain = Chain::open(ppath).map_err(|e| parent_err(ppath, error_chain(&e)))?;
        let store = chain
            .store()
            .map_err(|e| parent_err(ppath, error_chain(&e)))?;
        // Relative to the new image's directory (which does not exist yet: its parent does,
        // or will be created where the path says).
        let base = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
            None => std::env::current_dir().map_err(|e| parent_err(ppath, e))?,
        };
        let me = base.join(dir.file_name().unwrap_or_default());
        let recorded = images_format::chain::relative_path(&me, ppath)
            .map_err(|e| parent_err(ppath, e))?
            .to_string_lossy()
            .into_owned();
        let track: Option<TrackStateImage> = if chain.top().has(ImageKind::TrackState) {
            Some(
                chain
                    .top()
                    .read()
                    .map_err(|e| parent_err(ppath, error_chain(&e)))?,
            )
        } else {
            None
        };
        match &track {
            None => info!(
                parent = %ppath.display(),
                "the parent was dumped without --track-mem: every present page is compared \
                 with the parent's copy"
            ),
            Some(t) => match open_keeper(t.keeper_pid, t.keeper_start_time) {
                None => info!(
                    parent = %ppath.display(),
                    keeper = t.keeper_pid,
                    "the parent's tracking keeper is gone (a later dump took over, or the \
                     tree stopped): every present page is compared with the parent's copy"
                ),
                Some(k) => {
                    for p in &t.processes {
                        if start_time(p.host_pid) != Some(p.start_time) {
                            continue;
                        }
                        match sys::syscalls::pidfd_getfd(&k.pidfd, p.keeper_fd) {
                            Ok(fd) => {
                                inc.old.insert((p.host_pid, p.start_time), fd);
                            }
                            Err(e) => warn!(
                                pid = p.host_pid,
                                error = sys_reason(&e),
                                "cannot take the tracking descriptor from the keeper"
                            ),
                        }
                    }
                    inc.stats.parent_tracked = true;
                    inc.old_keeper = Some(k);
                }
            },
        }
        for img in chain.images.iter().skip(1) {
            if !img.dir.has(ImageKind::TrackState) {
                continue;
            }
            if let Ok(t) = img.dir.read::<TrackStateImage>() {
                if let Some(k) = open_keeper(t.keeper_pid, t.keeper_start_time) {
                    inc.older_keepers.push(k);
                }
            }
        }
        inc.parent = Some(Parent {
            chain,
            store,
            recorded,
        });
        Ok(inc)
    }

    /// Says (a warning) when the increment could not use written-page tracking for part of
    /// the tree: those pages were compared with the parent's copy instead.
    pub fn report(&self) {
        if self.parent.is_none() || self.stats.pages_untracked == 0 {
            return;
        }
        let why = if self.stats.parent_tracked {
            "processes or areas new, restarted or mapped anew since the parent"
        } else {
            "the parent has no live tracking (dumped without --track-mem, or a later dump \
             took over, or its keeper is gone)"
        };
        warn!(
            pages = self.stats.pages_untracked,
            processes_untracked = self.stats.processes_untracked,
            "pages without written-page tracking since the parent ({why}): compared with the \
             parent's copy, stored if they differ"
        );
    }

    /// Refuses a parent that is not an image of this tree. `root_pid`: this image's.
    pub fn check_root(&self, root_pid: i32) -> Result<(), DumpError> {
        if let Some(p) = &self.parent {
            let inv = p.chain.top().inventory();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(u64::MAX);
            if inv.created_unix_ms > now {
                return Err(parent_err(
                    p.chain.top().path(),
                    "it was made after this dump began (clock set back?)",
                ));
            }
            if inv.root_pid != root_pid {
                return Err(parent_err(
                    p.chain.top().path(),
                    format!(
                        "it is an image of another tree (root PID {}, this tree's is {root_pid})",
                        inv.root_pid
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether pages are compared with a parent.
    pub fn has_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// The parent directory as the inventory records it.
    pub fn parent_recorded(&self) -> Option<&str> {
        self.parent.as_ref().map(|p| p.recorded.as_str())
    }

    /// Gives stopped process `pid` a new userfaultfd for `--track-mem` (while remote syscalls
    /// can still run in it). A process that cannot be armed is left untracked, with a warning.
    pub fn arm(&mut self, pid: i32) {
        if !self.opts.track_mem {
            return;
        }
        match arm_for_keeper(pid) {
            Ok((fd, st)) => {
                self.new.insert(pid, (st, fd));
            }
            Err(e) => warn!(
                pid,
                error = %e,
                "process not tracked: the next increment compares all its pages"
            ),
        }
    }

    /// The pages of `[start, end)` of `pid` written since the parent, or `None` when that is
    /// not known (see the module docs).
    pub fn written(
        &self,
        pid: i32,
        pagemap: &File,
        start: u64,
        end: u64,
    ) -> Result<Option<Vec<(u64, u64)>>, DumpError> {
        let Some(st) = start_time(pid) else {
            return Ok(None);
        };
        let Some(fd) = self.old.get(&(pid, st)) else {
            return Ok(None);
        };
        if let Err(e) = uffd::register_wp(fd, start, end - start) {
            tracing::debug!(
                pid,
                area = format!("{start:#x}-{end:#x}"),
                error = sys_reason(&e),
                "area not tracked since the parent"
            );
            return Ok(None);
        }
        match uffd::scan_written(pagemap, start, end, false) {
            Ok(w) => Ok(Some(w)),
            Err(e) if errno_of(&e) == Some(Errno::EPERM) => Ok(None),
            Err(e) => Err(DumpError::Task {
                pid,
                what: format!("written pages at {start:#x}-{end:#x}"),
                reason: sys_reason(&e),
            }),
        }
    }

    /// Whether `pid`'s written pages may be known (counted once per process by the caller).
    pub fn is_tracked(&self, pid: i32) -> bool {
        start_time(pid).is_some_and(|st| self.old.contains_key(&(pid, st)))
    }

    /// Where the parent chain holds page `addr` of `owner`.
    pub fn parent_page(&self, owner: PageOwner, addr: u64) -> Option<PageLoc> {
        self.parent.as_ref()?.chain.find(owner, addr)
    }

    /// Reads chunk `chunk` of the parent chain.
    pub fn parent_chunk(&self, chunk: u32, out: &mut PageBuf) -> Result<usize, DumpError> {
        let p = self
            .parent
            .as_ref()
            .ok_or_else(|| DumpError::Tree("no parent image".into()))?;
        p.store
            .chunk_into(chunk, out)
            .map_err(|e| parent_err(p.chain.top().path(), error_chain(&e)))
    }

    /// For `--track-mem`, before the image is committed: starts the new keeper with this
    /// dump's descriptors and returns the `track-state` record naming it. `processes`: the
    /// tree's live processes as (host PID, image PID).
    pub fn start_keeper(
        &mut self,
        processes: &[(i32, i32)],
    ) -> Result<Option<TrackStateImage>, DumpError> {
        if !self.opts.track_mem {
            return Ok(None);
        }
        // `keeper_fd` holds the dumper's own descriptor number until the keeper answers.
        let mut chosen: Vec<TrackedProcess> = Vec::new();
        for &(pid, image_pid) in processes {
            let Some((st, fd)) = self.new.get(&pid) else {
                continue;
            };
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .ok()
                .and_then(|t| parse_maps(&t))
                .unwrap_or_default();
            let areas = maps
                .iter()
                .filter(|m| trackable(m))
                .map(|m| (m.start, m.end))
                .collect();
            chosen.push(TrackedProcess {
                host_pid: pid,
                start_time: *st,
                image_pid,
                keeper_fd: fd.as_raw_fd(),
                areas,
            });
        }
        if chosen.is_empty() {
            warn!("no process could be tracked: no keeper, the next increment compares every page");
            return Ok(None);
        }
        let exe = match &self.opts.keeper_exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().map_err(|e| DumpError::Io {
                op: "find the executable to run as tracking keeper",
                path: "/proc/self/exe".into(),
                source: e,
            })?,
        };
        let fds: Vec<String> = chosen.iter().map(|c| c.keeper_fd.to_string()).collect();
        let pids: Vec<String> = chosen
            .iter()
            .map(|c| format!("{}:{}", c.host_pid, c.start_time))
            .collect();
        let mut child = Command::new(&exe)
            .arg(KEEPER_ARG)
            .arg(std::process::id().to_string())
            .arg(fds.join(","))
            .arg(pids.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| DumpError::Io {
                op: "start the tracking keeper",
                path: exe.clone(),
                source: e,
            })?;
        let keeper_err = |reason: String| DumpError::Tree(format!("tracking keeper: {reason}"));
        let out = child.stdout.take();
        // The launcher exits at once, leaving the keeper detached (its own session).
        let status = child.wait().map_err(|e| keeper_err(e.to_string()))?;
        if !status.success() {
            return Err(keeper_err(format!("the launcher failed: {status}")));
        }
        let mut line = String::new();
        if let Some(out) = out {
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| keeper_err(e.to_string()))?;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let parsed: Option<(i32, Vec<i32>)> = (|| {
            if words.first() != Some(&"ready") {
                return None;
            }
            let pid = words.get(1)?.parse().ok()?;
            let nums = words[2..]
                .iter()
                .map(|w| w.parse().ok())
                .collect::<Option<Vec<i32>>>()?;
            Some((pid, nums))
        })();
        let Some((kpid, kfds)) = parsed.filter(|(_, f)| f.len() == chosen.len()) else {
            return Err(keeper_err(format!(
                "unexpected answer {:?}",
                line.trim_end()
            )));
        };
        let kstart = start_time(kpid).ok_or_else(|| keeper_err("it exited at once".into()))?;
        let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(kpid))
            .map_err(|e| keeper_err(sys_reason(&e)))?;
        self.new_keeper = Some(Keeper { pid: kpid, pidfd });
        self.armed = chosen
            .into_iter()
            .zip(kfds)
            .map(|(p, kfd)| TrackedProcess {
                keeper_fd: kfd,
                ..p
            })
            .collect();
        self.stats.processes_armed = self.armed.len();
        Ok(Some(TrackStateImage {
            keeper_pid: kpid,
            keeper_start_time: kstart,
            processes: self.armed.clone(),
        }))
    }

    /// Once the image is committed, the tree still frozen: ends the parent's keeper (and
    /// drops its descriptors, which unregisters their areas), then registers and protects
    /// every area with this dump's descriptors. Never fails the dump (the image is in
    /// place): what cannot be armed only makes the next increment bigger.
    pub fn after_commit(&mut self) {
        self.committed = true;
        if !self.opts.track_mem {
            return;
        }
        let older = std::mem::take(&mut self.older_keepers);
        for k in self.old_keeper.take().into_iter().chain(older) {
            if !end_keeper(&k) {
                warn!(
                    keeper = k.pid,
                    "an older tracking keeper did not end: tracking not re-armed, the next \
                     increment compares every page"
                );
                return;
            }
        }
        self.old.clear();
        for p in &self.armed {
            let Some((_, fd)) = self.new.get(&p.host_pid) else {
                continue;
            };
            for &(s, e) in &p.areas {
                let r = uffd::register_wp(fd, s, e - s)
                    .and_then(|()| uffd::writeprotect(fd, s, e - s, true));
                if let Err(err) = r {
                    warn!(
                        pid = p.host_pid,
                        area = format!("{s:#x}-{e:#x}"),
                        error = sys_reason(&err),
                        "area not tracked: the next increment compares all its pages"
                    );
                }
            }
        }
        info!(
            processes = self.armed.len(),
            "written-page tracking armed for the next increment"
        );
    }
}

impl Drop for Incremental {
    fn drop(&mut self) {
        // A dump that failed before its commit leaves no keeper of its own behind.
        if !self.committed {
            if let Some(k) = &self.new_keeper {
                end_keeper(k);
            }
        }
    }
}

/// The keeper (`<binary> __track-keeper DUMPER FDS PIDS`). Run by the dumper, it starts
/// itself again detached (`--detached`, the launcher exits at once), which then takes
/// descriptors `FDS` (comma-separated) of process `DUMPER` with `pidfd_getfd`, prints
/// `ready PID FD...` (its PID and their numbers in it) and holds them until every process
/// of `PIDS` (`pid:start_time`, comma-separated) is gone, or until it is killed.
pub fn keeper_main(args: &[String]) -> i32 {
    match keeper(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{KEEPER_ARG}: {e}");
            1
        }
    }
}

fn keeper(args: &[String]) -> Result<(), String> {
    let detached = args.iter().any(|a| a == "--detached");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--detached").collect();
    let [dumper, fds, pids] = rest[..] else {
        return Err("usage: __track-keeper DUMPER_PID FD,... PID:START,...".into());
    };
    if !detached {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        Command::new(exe)
            .arg(KEEPER_ARG)
            .arg("--detached")
            .args([dumper, fds, pids])
            .current_dir("/")
            .spawn()
            .map_err(|e| format!("start the detached keeper: {e}"))?;
        return Ok(());
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let dumper: i32 = dumper.parse().map_err(|_| "bad dumper PID".to_string())?;
    let dumper_fd = sys::syscalls::pidfd_open(Pid::from_raw(dumper)).map_err(|e| sys_reason(&e))?;
    let mut held = Vec::new();
    for f in fds.split(',').filter(|s| !s.is_empty()) {
        let n: i32 = f.parse().map_err(|_| format!("bad descriptor {f}"))?;
        held.push(sys::syscalls::pidfd_getfd(&dumper_fd, n).map_err(|e| sys_reason(&e))?);
    }
    drop(dumper_fd);
    let mut watched = Vec::new();
    for p in pids.split(',').filter(|s| !s.is_empty()) {
        let (pid, st) = p
            .split_once(':')
            .ok_or_else(|| format!("bad process {p}"))?;
        let (pid, st): (i32, u64) = (
            pid.parse().map_err(|_| format!("bad PID {pid}"))?,
            st.parse().map_err(|_| format!("bad start time {st}"))?,
        );
        if let Ok(fd) = sys::syscalls::pidfd_open(Pid::from_raw(pid)) {
            if start_time(pid) == Some(st) {
                watched.push(fd);
            }
        }
    }
    let nums: Vec<String> = held.iter().map(|f| f.as_raw_fd().to_string()).collect();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {} {}", std::process::id(), nums.join(" "))
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    // Nothing more goes to the dumper's pipe: point stdout at /dev/null.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = sys::syscalls::dup_onto(&null, 1, false);
    }
    while !watched.is_empty() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut pfds: Vec<PollFd> = watched
            .iter()
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        let gone: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut i = 0;
        watched.retain(|_| {
            let keep = !gone[i];
            i += 1;
            keep
        });
    }
    drop(held);
    Ok(())
}

/// The parent chunks read last, for comparisons: a few, since the pages of one area come
/// from several images of the chain in turn.
#[derive(Default)]
pub struct ParentCache {
    /// (global chunk, raw length, data), the most recently used last.
    slots: Vec<(u32, usize, PageBuf)>,
}

const PARENT_CACHE_SLOTS: usize = 8;

impl ParentCache {
    fn get(&mut self, inc: &Incremental, chunk: u32) -> Result<(&[u8], usize), DumpError> {
        if let Some(k) = self.slots.iter().position(|s| s.0 == chunk) {
            let slot = self.slots.remove(k);
            self.slots.push(slot);
        } else {
            let mut buf = if self.slots.len() >= PARENT_CACHE_SLOTS {
                self.slots.remove(0).2
            } else {
                PageBuf::new(CHUNK_SIZE)?
            };
            let len = inc.parent_chunk(chunk, &mut buf)?;
            self.slots.push((chunk, len, buf));
        }
        let (_, len, buf) = self
            .slots
            .last()
            .ok_or_else(|| DumpError::Tree("empty cache".into()))?;
        Ok((&buf[..], *len))
    }
}

/// Per page of `data` (pages at `addr` of `owner`): whether the parent holds the very same
/// contents.
pub fn same_as_parent(
    inc: &Incremental,
    cache: &mut ParentCache,
    owner: PageOwner,
    addr: u64,
    data: &[u8],
) -> Result<Vec<bool>, DumpError> {
    let n = data.len() / PAGE as usize;
    let mut same = vec![false; n];
    for (i, s) in same.iter_mut().enumerate() {
        let Some(loc) = inc.parent_page(owner, addr + i as u64 * PAGE) else {
            continue;
        };
        let (buf, len) = cache.get(inc, loc.chunk)?;
        let off = loc.offset as usize;
        if off + PAGE as usize <= len {
            let mine = &data[i * PAGE as usize..(i + 1) * PAGE as usize];
            *s = &buf[off..off + PAGE as usize] == mine;
        }
    }
    Ok(same)
}
