//! Written-page tracking for live migration's memory pre-copy.
//!
//! [`Tracker::arm`] gives every process of a running VE a userfaultfd with asynchronous write
//! protection: created inside the process by a remote `userfaultfd(2)`, taken out with
//! `pidfd_getfd`, closed in the process again, so the process never sees it. Each
//! [`Tracker::round`] then, while the VE runs:
//! - registers every private anonymous readable area not tracked yet, write-protects it whole
//!   and only then reads its present pages (a write racing with the read clears the protection
//!   of its page, so the page is reported again next round: nothing is lost);
//! - for the areas already tracked, asks `PAGEMAP_SCAN` for the pages written since the last
//!   round, protecting them again in the same walk, and reads those.
//!
//! An area whose bounds changed (a heap that grew, a split by `mprotect`) keeps what it knew
//! for the pages it shares with the areas of the previous round, as long as they are still
//! under protection (`PM_SCAN_CHECK_WPASYNC`): a range that lost it (unmapped and mapped again,
//! moved by `mremap`) is sent whole again. So a sent page whose protection is still set is a
//! page whose contents the destination holds: [`Tracker::sent`] lists them for the final dump
//! (`DumpOptions::sent_pages`), which checks the protection once more while the VE is frozen.
//!
//! Processes that appear later (a fork, whose child inherits neither the registration nor the
//! protection) are armed at the next round (the cgroup is frozen for that moment); processes
//! that exec lose their address space and are armed again. The tracker must stay alive until
//! the final dump is done: dropping it closes the userfaultfds, which unregisters every area
//! and clears every protection (every page then counts as written).

use std::collections::HashSet;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use images_format::mm::PageOwner;
use images_format::track::{SentArea, SentPagesImage, SentProcess};
use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use sys::remote::RemoteTask;
use sys::uffd::{self, ScanRequest};
use sys::{Pid, SysError};
use tracing::{debug, warn};

use crate::freeze::Freezer;
use crate::proc::{parse_maps, parse_status, status_numbers, MapsLine};
use crate::seize::{FinalState, Frozen};
use crate::DumpError;

const PAGE: u64 = images_format::PAGE_SIZE as u64;
/// Most pages given to `emit` at once.
pub const MAX_EMIT_PAGES: usize = 1024;

/// What one [`Tracker::round`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundStats {
    pub pages: u64,
    pub bytes: u64,
    /// Areas registered in this round (sent whole, or their new parts).
    pub areas_new: u64,
    /// Processes tracked at the end of the round.
    pub processes: usize,
}

/// One tracked area and which of its pages the destination holds.
#[derive(Debug, Clone)]
struct Area {
    start: u64,
    end: u64,
    sent: Vec<u64>,
}

impl Area {
    fn new(start: u64, end: u64) -> Area {
        let pages = (end - start) / PAGE;
        Area {
            start,
            end,
            sent: vec![0; pages.div_ceil(64) as usize],
        }
    }

    fn index(&self, addr: u64) -> usize {
        ((addr - self.start) / PAGE) as usize
    }

    fn is_sent(&self, addr: u64) -> bool {
        let i = self.index(addr);
        self.sent[i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks the pages of `[from, to)` (inside the area) sent or not.
    fn mark(&mut self, from: u64, to: u64, sent: bool) {
        let mut a = from;
        while a < to {
            let i = self.index(a);
            if sent {
                self.sent[i / 64] |= 1 << (i % 64);
            } else {
                self.sent[i / 64] &= !(1 << (i % 64));
            }
            a += PAGE;
        }
    }

    /// Takes over what `old` knew about the pages of `[from, to)`.
    fn inherit(&mut self, old: &Area, from: u64, to: u64) {
        let mut a = from;
        while a < to {
            if old.is_sent(a) {
                self.mark(a, a + PAGE, true);
            }
            a += PAGE;
        }
    }
}

/// One armed process.
struct Tracked {
    host_pid: i32,
    /// Its PID as the VE sees it (last `NSpid` field): the owner given to `emit`.
    ve_pid: i32,
    /// Start time (`/proc/PID/stat` field 22): tells a reused PID from the armed process.
    start_time: u64,
    uffd: OwnedFd,
    /// Registered areas, by address, disjoint.
    areas: Vec<Area>,
    /// Bounds of areas the kernel refused to register: left to the final dump.
    refused: HashSet<(u64, u64)>,
}

/// How a process's round ended.
enum Outcome {
    Done,
    /// The process is gone.
    Gone,
    /// Its address space is not the one its userfaultfd belongs to any more (it execed):
    /// arm it again.
    Stale,
}

/// Tracks the pages a VE writes, round after round. See the module docs.
pub struct Tracker {
    cgroup: PathBuf,
    processes: Vec<Tracked>,
    /// Processes that could not be armed, by (host PID, start time): left to the final dump.
    unarmed: HashSet<(i32, u64)>,
    buf: Vec<u8>,
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

fn task_err(pid: i32, what: &str, e: &SysError) -> DumpError {
    DumpError::Task {
        pid,
        what: what.to_string(),
        reason: sys_reason(e),
    }
}

fn errno_of(e: &SysError) -> Option<Errno> {
    match e {
        SysError::Syscall { source, .. } | SysError::Ptrace { source, .. } => Some(*source),
        SysError::RemoteSyscall { errno, .. } => Some(*errno),
        _ => None,
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// `/proc/PID/stat` field 22 (start time in clock ticks).
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The PID of `pid` in its own PID namespace (the last `NSpid` field).
fn ve_pid(pid: i32) -> Result<i32, DumpError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| DumpError::Io {
        op: "read",
        path: path.into(),
        source,
    })?;
    Ok(status_numbers(&parse_status(&text), "NSpid")
        .last()
        .map_or(pid, |&v| v as i32))
}

/// The areas a round tracks: private anonymous (heap, stack, anonymous mappings) and readable.
pub(crate) fn trackable(m: &MapsLine) -> bool {
    !m.shared
        && m.read
        && (matches!(m.path.as_str(), "" | "[heap]" | "[stack]") || m.path.starts_with("[anon:"))
}

/// Present pages that are not the shared zero page: what a first send reads.
const PRESENT_DATA: ScanRequest = ScanRequest {
    flags: 0,
    category_inverted: uffd::PAGE_IS_PFNZERO,
    category_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_PFNZERO,
    category_anyof_mask: 0,
    return_mask: uffd::PAGE_IS_PRESENT,
};

/// Pages written since last protected (the zero page left out: it holds nothing to send),
/// protected again in the same walk if `protect`; fails with `EPERM` where a page is not under
/// asynchronous write protection.
fn written_request(protect: bool) -> ScanRequest {
    ScanRequest {
        flags: uffd::PM_SCAN_CHECK_WPASYNC
            | if protect {
                uffd::PM_SCAN_WP_MATCHING
            } else {
                0
            },
        category_inverted: uffd::PAGE_IS_PFNZERO,
        category_mask: uffd::PAGE_IS_WRITTEN | uffd::PAGE_IS_PFNZERO,
        category_anyof_mask: 0,
        return_mask: uffd::PAGE_IS_WRITTEN,
    }
}

fn scan_ranges(
    pagemap: &File,
    from: u64,
    to: u64,
    req: &ScanRequest,
) -> sys::Result<Vec<(u64, u64)>> {
    Ok(uffd::scan(pagemap, from, to, req)?
        .into_iter()
        .map(|r| (r.start, r.end))
        .collect())
}

/// `[start, end)` minus the (sorted, disjoint) `covered` ranges.
fn gaps(start: u64, end: u64, covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(s, e) in covered {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// Creates a userfaultfd inside stopped process `pid` and takes it out. The descriptor is
/// closed in the process before this returns, whatever happens after its creation.
/// `user_mode_only` (enough for asynchronous protection) needs no privilege; without it (a
/// synchronous reader must also catch the kernel's own writes, e.g. `read(2)` into a
/// protected buffer) the process needs `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd`.
pub(crate) fn take_userfaultfd(pid: i32, user_mode_only: bool) -> Result<OwnedFd, DumpError> {
    let what = "a userfaultfd";
    let pidfd =
        sys::syscalls::pidfd_open(Pid::from_raw(pid)).map_err(|e| task_err(pid, what, &e))?;
    let mut remote = RemoteTask::at_rip(Pid::from_raw(pid)).map_err(|e| task_err(pid, what, &e))?;
    let mut flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    if user_mode_only {
        flags |= uffd::UFFD_USER_MODE_ONLY;
    }
    let fd = match remote.syscall_ok("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = remote.finish();
            return Err(task_err(pid, what, &e));
        }
    };
    let taken = sys::syscalls::pidfd_getfd(&pidfd, fd as i32);
    let closed = remote.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    let finished = remote.finish();
    let uffd = taken.map_err(|e| task_err(pid, what, &e))?;
    closed.map_err(|e| task_err(pid, what, &e))?;
    finished.map_err(|e| task_err(pid, what, &e))?;
    Ok(uffd)
}

/// Arms one stopped process: its userfaultfd, with asynchronous write protection enabled.
fn arm_process(pid: i32) -> Result<Tracked, DumpError> {
    let start_time =
        start_time(pid).ok_or_else(|| DumpError::Tree(format!("task {pid} is gone")))?;
    let ve_pid = ve_pid(pid)?;
    let uffd = take_userfaultfd(pid, true)?;
    uffd::api(
        &uffd,
        uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED,
    )
    .map_err(|e| task_err(pid, "asynchronous write protection (UFFDIO_API)", &e))?;
    Ok(Tracked {
        host_pid: pid,
        ve_pid,
        start_time,
        uffd,
        areas: Vec::new(),
        refused: HashSet::new(),
    })
}

/// [`arm_process`] for `--track-mem` (`crate::incremental`): the process's userfaultfd with
/// asynchronous write protection and its start time; registering is left to the caller.
pub(crate) fn arm_for_keeper(pid: i32) -> Result<(OwnedFd, u64), DumpError> {
    let t = arm_process(pid)?;
    Ok((t.uffd, t.start_time))
}

/// What a process's areas look like now, or `None` if it is gone (or a zombie).
fn read_maps(pid: i32) -> Result<Option<Vec<MapsLine>>, DumpError> {
    let path = format!("/proc/{pid}/maps");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(source) => {
            return Err(DumpError::Io {
                op: "read",
                path: path.into(),
                source,
            })
        }
    };
    if text.is_empty() {
        return Ok(None);
    }
    let maps = parse_maps(&text).ok_or_else(|| DumpError::Task {
        pid,
        what: "memory map".into(),
        reason: "cannot parse /proc/PID/maps".into(),
    })?;
    Ok(Some(maps))
}

fn open_pagemap(pid: i32) -> Result<Option<File>, DumpError> {
    let path = format!("/proc/{pid}/pagemap");
    match File::open(&path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(source) => Err(DumpError::Io {
            op: "open",
            path: path.into(),
            source,
        }),
    }
}

/// Present data pages of `[from, to)`.
fn count_present(pid: i32, pagemap: &File, from: u64, to: u64) -> Result<u64, DumpError> {
    match scan_ranges(pagemap, from, to, &PRESENT_DATA) {
        Ok(r) => Ok(uffd::pages_in(&r)),
        // The area went away meanwhile.
        Err(e) if matches!(errno_of(&e), Some(Errno::ESRCH) | Some(Errno::EFAULT)) => Ok(0),
        Err(e) => Err(task_err(pid, &format!("pages at {from:#x}-{to:#x}"), &e)),
    }
}

/// What [`Tracker::round`] gives pages to: (owner, address of the first page, the pages).
pub type Emit<'e> = dyn FnMut(PageOwner, u64, &[u8]) -> Result<(), DumpError> + 'e;

impl Tracked {
    /// Whether the address space the userfaultfd belongs to still exists (it is gone once
    /// the process execs). `UFFDIO_REGISTER` fails with `ENOMEM` then, like for other
    /// reasons; `UFFDIO_WRITEPROTECT` says `ESRCH` before looking at the range, so one on a
    /// page nobody maps (the lowest page `mmap` may map, and only unprotecting it) tells.
    fn mm_alive(&self) -> bool {
        let low = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(65536)
            .next_multiple_of(PAGE)
            .max(PAGE);
        !matches!(
            uffd::writeprotect(&self.uffd, low, PAGE, false),
            Err(e) if errno_of(&e) == Some(Errno::ESRCH)
        )
    }

    /// Reads the pages of `ranges` (inside `area`) and gives them to `emit`, at most
    /// [`MAX_EMIT_PAGES`] at a time, marking each page sent once emitted. Pages that cannot be
    /// read (the area changed meanwhile) stay unsent. `Ok(false)`: the process is gone.
    fn send(
        &self,
        area: &mut Area,
        ranges: &[(u64, u64)],
        buf: &mut [u8],
        emit: &mut Emit<'_>,
        stats: &mut RoundStats,
    ) -> Result<bool, DumpError> {
        for &(from, to) in ranges {
            let mut at = from;
            while at < to {
                let len = ((to - at) as usize).min(MAX_EMIT_PAGES * PAGE as usize);
                let remote = [RemoteIoVec {
                    base: at as usize,
                    len,
                }];
                let got = match process_vm_readv(
                    Pid::from_raw(self.host_pid),
                    &mut [IoSliceMut::new(&mut buf[..len])],
                    &remote,
                ) {
                    Ok(n) => n,
                    Err(Errno::ESRCH) => return Ok(false),
                    Err(Errno::EFAULT) => 0,
                    Err(e) => {
                        return Err(DumpError::Task {
                            pid: self.host_pid,
                            what: format!("memory at {at:#x} ({len} bytes)"),
                            reason: format!("process_vm_readv: {e}"),
                        })
                    }
                };
                let whole = got / PAGE as usize * PAGE as usize;
                if whole > 0 {
                    emit(PageOwner::Process(self.ve_pid), at, &buf[..whole])?;
                    area.mark(at, at + whole as u64, true);
                    stats.pages += whole as u64 / PAGE;
                    stats.bytes += whole as u64;
                }
                if whole < len {
                    // Unmapped or protected meanwhile: the next round sees the new layout.
                    debug!(
                        pid = self.host_pid,
                        addr = at + whole as u64,
                        "memory no longer readable"
                    );
                    break;
                }
                at += len as u64;
            }
        }
        Ok(true)
    }

    /// One round for this process: see [`Tracker::round`].
    fn round(
        &mut self,
        buf: &mut [u8],
        emit: &mut Emit<'_>,
        stats: &mut RoundStats,
    ) -> Result<Outcome, DumpError> {
        let pid = self.host_pid;
        if start_time(pid) != Some(self.start_time) {
            return Ok(Outcome::Gone);
        }
        let Some(maps) = read_maps(pid)? else {
            return Ok(Outcome::Gone);
        };
        let Some(pagemap) = open_pagemap(pid)? else {
            return Ok(Outcome::Gone);
        };
        let old = std::mem::take(&mut self.areas);
        let mut areas = Vec::new();
        for m in maps.iter().filter(|m| trackable(m)) {
            let (start, end) = (m.start, m.end);
            if self.refused.contains(&(start, end)) {
                continue;
            }
            let mut area = Area::new(start, end);
            // Parts of the previous round's areas: scanned for what was written since.
            let mut fresh = Vec::new();
            let mut covered = Vec::new();
            for o in old.iter().filter(|o| o.start < end && start < o.end) {
                let (from, to) = (o.start.max(start), o.end.min(end));
                covered.push((from, to));
                match scan_ranges(&pagemap, from, to, &written_request(true)) {
                    Ok(written) => {
                        area.inherit(o, from, to);
                        for &(s, e) in &written {
                            area.mark(s, e, false);
                        }
                        if !self.send(&mut area, &written, buf, emit, stats)? {
                            return Ok(Outcome::Gone);
                        }
                    }
                    // No longer under protection: replaced by a new mapping, or moved.
                    Err(e) if errno_of(&e) == Some(Errno::EPERM) => fresh.push((from, to)),
                    Err(e) if errno_of(&e) == Some(Errno::ESRCH) => return Ok(Outcome::Gone),
                    Err(e) => {
                        return Err(task_err(
                            pid,
                            &format!("written pages at {from:#x}-{to:#x}"),
                            &e,
                        ))
                    }
                }
            }
            fresh.extend(gaps(start, end, &covered));
            fresh.sort_unstable();
            if !fresh.is_empty() {
                match uffd::register_wp(&self.uffd, start, end - start) {
                    Ok(()) => {}
                    // The userfaultfd's address space is gone: the process execed.
                    Err(_) if !self.mm_alive() => return Ok(Outcome::Stale),
                    Err(e) => {
                        warn!(
                            pid,
                            area = format!("{start:#x}-{end:#x}"),
                            error = sys_reason(&e),
                            "area not tracked: the final dump stores it whole"
                        );
                        self.refused.insert((start, end));
                        continue;
                    }
                }
                stats.areas_new += 1;
                let mut lost = false;
                for &(from, to) in &fresh {
                    // Protect first, then read: a write in between is reported next round.
                    match uffd::writeprotect(&self.uffd, from, to - from, true) {
                        Ok(()) => {}
                        Err(e) if errno_of(&e) == Some(Errno::ESRCH) => return Ok(Outcome::Stale),
                        Err(e) => {
                            // The layout changed since maps was read: next round.
                            debug!(pid, error = sys_reason(&e), "cannot write-protect");
                            lost = true;
                            break;
                        }
                    }
                    let present = match scan_ranges(&pagemap, from, to, &PRESENT_DATA) {
                        Ok(p) => p,
                        Err(e) if errno_of(&e) == Some(Errno::ESRCH) => return Ok(Outcome::Gone),
                        Err(e) => {
                            return Err(task_err(
                                pid,
                                &format!("present pages at {from:#x}-{to:#x}"),
                                &e,
                            ))
                        }
                    };
                    if !self.send(&mut area, &present, buf, emit, stats)? {
                        return Ok(Outcome::Gone);
                    }
                }
                if lost {
                    continue;
                }
            }
            areas.push(area);
        }
        self.areas = areas;
        Ok(Outcome::Done)
    }

    /// What the next round would send for this process, touching nothing.
    fn pending(&self) -> Result<u64, DumpError> {
        let pid = self.host_pid;
        if start_time(pid) != Some(self.start_time) {
            return Ok(0);
        }
        let (Some(maps), Some(pagemap)) = (read_maps(pid)?, open_pagemap(pid)?) else {
            return Ok(0);
        };
        let mut pages = 0;
        for m in maps.iter().filter(|m| trackable(m)) {
            let (start, end) = (m.start, m.end);
            if self.refused.contains(&(start, end)) {
                continue;
            }
            let mut covered = Vec::new();
            for o in self.areas.iter().filter(|o| o.start < end && start < o.end) {
                let (from, to) = (o.start.max(start), o.end.min(end));
                covered.push((from, to));
                pages += match scan_ranges(&pagemap, from, to, &written_request(false)) {
                    Ok(w) => uffd::pages_in(&w),
                    Err(e) if errno_of(&e) == Some(Errno::EPERM) => {
                        count_present(pid, &pagemap, from, to)?
                    }
                    Err(e) if errno_of(&e) == Some(Errno::ESRCH) => return Ok(0),
                    Err(e) => {
                        return Err(task_err(
                            pid,
                            &format!("written pages at {from:#x}-{to:#x}"),
                            &e,
                        ))
                    }
                };
            }
            for (from, to) in gaps(start, end, &covered) {
                pages += count_present(pid, &pagemap, from, to)?;
            }
        }
        Ok(pages)
    }
}

impl Tracker {
    /// Freezes the cgroup (v2 dir, as [`crate::Target::Cgroup`] takes), seizes its tasks, gives
    /// each process a userfaultfd with asynchronous write protection (created by a remote
    /// syscall, taken with `pidfd_getfd`, closed in the process), and resumes the tree. Every
    /// failure resumes the tree untouched. Must be called from one thread (ptrace).
    pub fn arm(cgroup: &Path) -> Result<Tracker, DumpError> {
        let freezer = Freezer::for_cgroup(cgroup)?;
        let frozen = Frozen::seize_cgroup(&freezer)?;
        frozen.block_signals()?;
        let mut processes = Vec::new();
        for p in frozen.alive() {
            // An error drops `frozen` (the tree resumes) and the descriptors taken so far
            // (nothing was registered with them yet).
            processes.push(arm_process(p.pid.as_raw())?);
        }
        frozen.finish(FinalState::LeaveRunning)?;
        debug!(processes = processes.len(), "tracker armed");
        Ok(Tracker {
            cgroup: cgroup.to_path_buf(),
            processes,
            unarmed: HashSet::new(),
            buf: vec![0; MAX_EMIT_PAGES * PAGE as usize],
        })
    }

    /// The cgroup's processes that are neither tracked nor known to be unarmable, by
    /// (host PID, start time).
    fn newcomers(&self) -> Result<Vec<(i32, u64)>, DumpError> {
        let freezer = Freezer::for_cgroup(&self.cgroup)?;
        Ok(freezer
            .processes()?
            .into_iter()
            .filter_map(|pid| Some((pid, start_time(pid)?)))
            .filter(|&(pid, st)| {
                !self.unarmed.contains(&(pid, st))
                    && !self
                        .processes
                        .iter()
                        .any(|p| p.host_pid == pid && p.start_time == st)
            })
            .collect())
    }

    /// Arms the processes that appeared since the last round (the cgroup frozen a moment).
    /// One that cannot be armed is left to the final dump; a tree that cannot be seized now
    /// is tried again next round.
    fn arm_newcomers(&mut self) -> Result<(), DumpError> {
        let new = self.newcomers()?;
        if new.is_empty() {
            return Ok(());
        }
        let freezer = Freezer::for_cgroup(&self.cgroup)?;
        let frozen = match Frozen::seize_cgroup(&freezer) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot seize the VE to track its new processes; next round");
                return Ok(());
            }
        };
        if let Err(e) = frozen.block_signals() {
            warn!(error = %e, "cannot block the signals of the VE's tasks; next round");
            return Ok(());
        }
        for p in frozen.alive() {
            let pid = p.pid.as_raw();
            let Some(&(_, st)) = new.iter().find(|(n, _)| *n == pid) else {
                continue;
            };
            match arm_process(pid) {
                Ok(t) if t.start_time == st => self.processes.push(t),
                Ok(_) => {}
                Err(e) => {
                    warn!(pid, error = %e, "process not tracked: the final dump stores it whole");
                    self.unarmed.insert((pid, st));
                }
            }
        }
        frozen.finish(FinalState::LeaveRunning)
    }

    /// One pre-copy round while the VE runs (see the module docs): new processes are armed,
    /// new or changed areas registered, protected and sent whole, and tracked areas send the
    /// pages written since the previous round. `emit` gets (owner = the PID as the VE sees
    /// it, address of the first page, the pages' bytes: contiguous, at most
    /// [`MAX_EMIT_PAGES`] pages). An error of `emit` ends the round with that error (what
    /// the process being sent knew is dropped: its areas are sent whole again next round).
    /// When new processes must be armed the cgroup is frozen and seized within this call, so
    /// like [`Tracker::arm`] it must not be split across threads (any one thread per call).
    pub fn round(&mut self, emit: &mut Emit<'_>) -> Result<RoundStats, DumpError> {
        self.arm_newcomers()?;
        let mut stats = RoundStats::default();
        let mut buf = std::mem::take(&mut self.buf);
        let mut i = 0;
        let result = loop {
            let Some(p) = self.processes.get_mut(i) else {
                break Ok(());
            };
            match p.round(&mut buf, emit, &mut stats) {
                Ok(Outcome::Done) => i += 1,
                Ok(Outcome::Gone) => {
                    debug!(pid = p.host_pid, "tracked process gone");
                    self.processes.remove(i);
                }
                // Armed again at the next round, as a newcomer.
                Ok(Outcome::Stale) => {
                    debug!(pid = p.host_pid, "tracked process execed");
                    self.processes.remove(i);
                }
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        result?;
        stats.processes = self.processes.len();
        Ok(stats)
    }

    /// Pages the next round would send, without sending or protecting anything: written pages
    /// of tracked areas, plus present pages of areas and processes not tracked yet.
    pub fn pending_pages(&mut self) -> Result<u64, DumpError> {
        let mut pages = 0;
        for p in &self.processes {
            pages += p.pending()?;
        }
        for (pid, _) in self.newcomers()? {
            let (Some(maps), Some(pagemap)) = (read_maps(pid)?, open_pagemap(pid)?) else {
                continue;
            };
            for m in maps.iter().filter(|m| trackable(m)) {
                pages += count_present(pid, &pagemap, m.start, m.end)?;
            }
        }
        Ok(pages)
    }

    /// What the destination holds, for the final dump (`DumpOptions::sent_pages`).
    pub fn sent(&self) -> SentPagesImage {
        SentPagesImage {
            processes: self
                .processes
                .iter()
                .map(|p| SentProcess {
                    host_pid: p.host_pid,
                    areas: p
                        .areas
                        .iter()
                        .map(|a| SentArea {
                            start: a.start,
                            end: a.end,
                            sent: a.sent.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Host PIDs of the processes tracked now.
    pub fn tracked_pids(&self) -> Vec<i32> {
        self.processes.iter().map(|p| p.host_pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_of_covered_ranges() {
        assert_eq!(gaps(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(gaps(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(
            gaps(0, 100, &[(10, 20), (20, 30), (50, 60)]),
            vec![(0, 10), (30, 50), (60, 100)]
        );
    }

    #[test]
    fn area_bits_carry_over() {
        let mut old = Area::new(0x10000, 0x10000 + 100 * PAGE);
        old.mark(0x10000 + 3 * PAGE, 0x10000 + 70 * PAGE, true);
        let mut new = Area::new(0x10000 + 50 * PAGE, 0x10000 + 200 * PAGE);
        new.inherit(&old, new.start, old.end);
        assert!(new.is_sent(0x10000 + 50 * PAGE) && new.is_sent(0x10000 + 69 * PAGE));
        assert!(!new.is_sent(0x10000 + 70 * PAGE) && !new.is_sent(0x10000 + 199 * PAGE));
        new.mark(0x10000 + 60 * PAGE, 0x10000 + 61 * PAGE, false);
        assert!(!new.is_sent(0x10000 + 60 * PAGE));
        let img = SentArea {
            start: new.start,
            end: new.end,
            sent: new.sent.clone(),
        };
        assert!(img.is_sent(0) && img.is_sent(19) && !img.is_sent(10) && !img.is_sent(20));
    }
}
