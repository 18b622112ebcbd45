//! Background (copy-on-write) memory dump: the tree is stopped only for its small state, its
//! private anonymous memory is copied after it runs again, and the image still holds that
//! memory exactly as it was at the frozen instant (as QEMU's background snapshot does).
//!
//! Before the stop ([`Prearmed`]): every process gets a userfaultfd (created inside it by a
//! remote syscall during a short stop, taken with `pidfd_getfd`, closed there: see
//! `track::take_userfaultfd`) in *synchronous* write-protect mode, able to catch the kernel's
//! own writes too (`read(2)` into a buffer, the kernel's rseq updates): not
//! `UFFD_USER_MODE_ONLY`, so the process needs `CAP_SYS_PTRACE` (or
//! `vm.unprivileged_userfaultfd`). Then, while the tree runs, its readable private anonymous
//! areas are registered and write-protected (a page-table walk that costs tens of ms a GiB),
//! and a thread lets every write fault through at once, clearing that page's protection.
//!
//! While the tree is stopped ([`CowPlan`]), once every injected syscall is done (until then
//! a task running injected code may fault, and the thread above must still serve it):
//! - each readable private anonymous area is registered (again: a no-op for those registered
//!   before), its pages that hold data (present or swapped, not the zero page) are listed by
//!   one `PAGEMAP_SCAN`, and those of them that are not write-protected (written since, or in
//!   an area new since) are protected now: so the stop's work no longer grows with the
//!   protected memory, only with what changed since. The listed pages, and only those, are
//!   copied later: pages empty then are empty in the image, whatever the tree writes there.
//!   A process new since (or execed) gets its userfaultfd now.
//! - Areas the kernel refuses to register, private file mappings (their copied-on-write pages
//!   are few), shared memory, tmpfs and the rest are stored while stopped, as by a plain dump.
//!
//! After the thaw ([`CowCopy::complete`]) a copier (the calling thread) reads the noted pages
//! with `process_vm_readv` in runs of up to 4 MiB, smallest processes first, and clears the
//! protection of each run once read; a fault thread reads the write faults: a page not copied
//! yet is copied first (its contents are still those of the frozen instant: the writer is
//! blocked), then its protection is cleared, which wakes the writer. A third thread stores
//! the pages (`pagesink`). The image is committed once every noted page is stored.
//!
//! Every read is checked against the frozen instant: right after it, under the same lock the
//! fault thread takes, `PAGEMAP_SCAN` on the `/proc/PID/pagemap` opened while stopped (bound
//! to that address space: after an exec it sees none) must report each page still present or
//! swapped *and still write-protected*. A page that lost its protection without passing
//! through us was unmapped, discarded (`madvise(MADV_DONTNEED)`), moved (`mremap`) or
//! replaced, or its process exited or execed: its frozen contents are gone, and the copy
//! fails with an error naming the task and the address (the partial image is removed, the
//! tree runs on). A forked child does not inherit the registration (no `EVENT_FORK`): its
//! writes go to its own copies, the parent's pages stay protected.
//!
//! Closing the userfaultfds (at the end, on any error, or when the dumper dies) unregisters
//! every area, clears every protection and wakes every blocked writer: a dead dumper never
//! leaves the tree hung.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use images_format::mm::{PageOwner, PagemapEntry, PagemapImage};
use images_format::pagestore::{PageStoreWriter, CHUNK_SIZE};
use images_format::{ImageWriter, PageBuf, PAGE_SIZE};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use sys::uffd::{self, ScanRequest};
use sys::SysError;
use tracing::{debug, info};

use crate::pagesink::{self, Job, PageSink};
use crate::proc::MapsLine;
use crate::{DumpError, DumpStats};

const PAGE: u64 = PAGE_SIZE as u64;
/// Most pages read at once: one page-store chunk, the size `process_vm_readv` likes best.
const MAX_RUN: usize = CHUNK_SIZE / PAGE_SIZE;
/// Fault messages read at once.
const MSGS: usize = 64;

/// Pages `[addr, addr + n pages)` that held data at the frozen instant, and which of them are
/// copied already.
struct Run {
    addr: u64,
    n: usize,
    copied: Vec<u64>,
}

impl Run {
    fn new(addr: u64, n: usize) -> Run {
        Run {
            addr,
            n,
            copied: vec![0; n.div_ceil(64)],
        }
    }

    fn is_copied(&self, i: usize) -> bool {
        self.copied[i / 64] & (1 << (i % 64)) != 0
    }

    fn mark(&mut self, from: usize, to: usize) {
        for i in from..to {
            self.copied[i / 64] |= 1 << (i % 64);
        }
    }

    /// The first maximal range of pages not copied yet, from page `from` on.
    fn next_uncopied(&self, from: usize) -> Option<(usize, usize)> {
        let first = (from..self.n).find(|&i| !self.is_copied(i))?;
        let end = (first..self.n)
            .find(|&i| self.is_copied(i))
            .unwrap_or(self.n);
        Some((first, end))
    }
}

/// One process whose memory is copied in the background.
struct CowProcess {
    host_pid: i32,
    image_pid: i32,
    uffd: OwnedFd,
    /// `/proc/PID/pagemap` opened while stopped: it stays bound to that address space.
    pagemap: File,
    /// Sorted by address, disjoint. The copier and the fault thread take turns on it.
    runs: Mutex<Vec<Run>>,
    pages: u64,
}

/// What is set up while the tree is stopped: the userfaultfds and the pages to copy later.
#[derive(Default)]
pub struct CowPlan {
    uffds: HashMap<i32, OwnedFd>,
    /// Set up before the stop (see [`Prearmed`]); its release thread is stopped at the first
    /// [`CowPlan::arm`], once the tree is stopped.
    prearmed: Option<Prearmed>,
    processes: Vec<CowProcess>,
    /// Pages left to the background copy.
    pub pages_deferred: u64,
    /// Pages of the areas looked at (as `MemStats::pages_scanned` counts them).
    pub pages_scanned: u64,
}

fn task_err(pid: i32, what: impl Into<String>, e: &SysError) -> DumpError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        src = inner.source();
    }
    DumpError::Task {
        pid,
        what: what.into(),
        reason,
    }
}

impl CowPlan {
    /// A plan that takes over the userfaultfds (and protections) of `prearmed`.
    pub fn with_prearmed(prearmed: Option<Prearmed>) -> CowPlan {
        CowPlan {
            prearmed,
            ..Default::default()
        }
    }

    /// Gives stopped process `pid` its userfaultfd (synchronous write protection): the one it
    /// got before the stop if it is still its address space's, else a new one. Must run
    /// while it can still execute injected syscalls (before its cgroup is frozen around it).
    pub fn arm(&mut self, pid: i32) -> Result<(), DumpError> {
        if let Some(pre) = self.prearmed.as_mut() {
            if let Some((st, fd)) = pre.uffds.remove(&pid) {
                if start_time(pid) == Some(st) && mm_alive(&fd) {
                    self.uffds.insert(pid, fd);
                    return Ok(());
                }
            }
        }
        let fd = crate::track::take_userfaultfd(pid, false).map_err(|e| match e {
            DumpError::Task { pid, reason, .. } if reason.contains("EPERM") => DumpError::Task {
                pid,
                what: "a userfaultfd for the background copy".into(),
                reason: format!(
                    "{reason} (catching the kernel's writes too needs CAP_SYS_PTRACE in the \
                     task or vm.unprivileged_userfaultfd=1; dump without --cow)"
                ),
            },
            e => e,
        })?;
        uffd::api(&fd, 0).map_err(|e| task_err(pid, "a userfaultfd (UFFDIO_API)", &e))?;
        self.uffds.insert(pid, fd);
        Ok(())
    }

    /// Takes over a readable private anonymous area of stopped process `pid` (recorded as
    /// `image_pid`): notes its pages holding data, registers it and write-protects it.
    /// `Ok(false)`: the area cannot be protected (the kernel refused to register it), the
    /// caller stores it now.
    pub fn defer_area(
        &mut self,
        pid: i32,
        image_pid: i32,
        m: &MapsLine,
    ) -> Result<bool, DumpError> {
        if let Some(pre) = self.prearmed.as_mut() {
            // Every injected syscall is done: no task of the tree runs any more, so no write
            // can fault, and a page released from here on would escape the scan below. (Until
            // now a task running injected code could write, e.g. the kernel updating its
            // rseq area on the way back to user mode, and must not wait for nobody.)
            pre.stop_releasing();
        }
        let Some(fd) = self.uffds.get(&pid) else {
            return Ok(false);
        };
        let at = match self.processes.iter().position(|p| p.host_pid == pid) {
            Some(i) => i,
            None => {
                let path = format!("/proc/{pid}/pagemap");
                let pagemap = File::open(&path).map_err(|source| DumpError::Io {
                    op: "open",
                    path: path.into(),
                    source,
                })?;
                let uffd = fd.try_clone().map_err(|source| DumpError::Io {
                    op: "duplicate the userfaultfd of",
                    path: format!("/proc/{pid}").into(),
                    source,
                })?;
                self.processes.push(CowProcess {
                    host_pid: pid,
                    image_pid,
                    uffd,
                    pagemap,
                    runs: Mutex::new(Vec::new()),
                    pages: 0,
                });
                self.processes.len() - 1
            }
        };
        let p = &mut self.processes[at];
        let t = Instant::now();
        self.pages_scanned += (m.end - m.start) / PAGE;
        // The pages holding data now (present or swapped, not the shared zero page, not a
        // guard): one `PAGEMAP_SCAN` walk, far cheaper than reading the pagemap entries.
        let held = uffd::scan(&p.pagemap, m.start, m.end, &HOLDS_DATA)
            .map_err(|e| task_err(pid, format!("pages at {:#x}-{:#x}", m.start, m.end), &e))?;
        let mut runs: Vec<Run> = Vec::new();
        for r in &held {
            let mut at = r.start;
            while at < r.end {
                let n = (((r.end - at) / PAGE) as usize).min(MAX_RUN);
                match runs.last_mut() {
                    // Regions differ by their protection only: one run if they touch.
                    Some(last)
                        if last.addr + last.n as u64 * PAGE == at && last.n + n <= MAX_RUN =>
                    {
                        *last = Run::new(last.addr, last.n + n)
                    }
                    _ => runs.push(Run::new(at, n)),
                }
                at += n as u64 * PAGE;
            }
        }
        let scanned = t.elapsed();
        if runs.is_empty() {
            // Nothing to copy: whatever is written there later is not of the frozen instant.
            return Ok(true);
        }
        // Registering again what is registered already (before the stop) changes nothing.
        if let Err(e) = uffd::register_wp(&p.uffd, m.start, m.end - m.start) {
            debug!(
                pid,
                area = format!("{:#x}-{:#x}", m.start, m.end),
                error = %e,
                "area not registered for write protection: stored while stopped"
            );
            return Ok(false);
        }
        let registered = t.elapsed();
        // Only the pages holding data and not protected yet: all of them for an area new
        // since the protection made before the stop, those written since for the others. A
        // page-table walk: about 0.3 µs a page on this (loaded, virtual) machine, tens of ms
        // a GiB, when it is the whole area.
        for r in held
            .iter()
            .filter(|r| r.categories & uffd::PAGE_IS_WRITTEN != 0)
        {
            uffd::writeprotect(&p.uffd, r.start, r.end - r.start, true).map_err(|e| {
                task_err(
                    pid,
                    format!("write protection of {:#x}-{:#x}", r.start, r.end),
                    &e,
                )
            })?;
        }
        let pages: u64 = runs.iter().map(|r| r.n as u64).sum();
        debug!(
            pid,
            area = format!("{:#x}-{:#x}", m.start, m.end),
            pages,
            scan_us = scanned.as_micros() as u64,
            register_us = (registered - scanned).as_micros() as u64,
            protect_us = (t.elapsed() - registered).as_micros() as u64,
            "area left to the background copy"
        );
        p.pages += pages;
        self.pages_deferred += pages;
        p.runs
            .get_mut()
            .map_err(|_| DumpError::Tree("a background copy lock was poisoned".into()))?
            .extend(runs);
        Ok(true)
    }
}

/// `/proc/PID/stat` field 22 (start time in clock ticks): tells a reused PID.
fn start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the address space a userfaultfd was made in still exists (not after an exec):
/// `UFFDIO_WRITEPROTECT` says `ESRCH` before looking at the range, so clearing the
/// protection of a page nobody maps (the lowest `mmap` may map) tells.
fn mm_alive(fd: &OwnedFd) -> bool {
    let low = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65536)
        .next_multiple_of(PAGE)
        .max(PAGE);
    !matches!(
        uffd::writeprotect(fd, low, PAGE, false),
        Err(SysError::Syscall {
            source: Errno::ESRCH,
            ..
        })
    )
}

/// The costly part of the protection, done before the stop: every process gets its
/// userfaultfd (the tree stopped a moment for the injected syscalls, as `track` does) and
/// its private anonymous areas are registered and write-protected while the tree runs. A
/// write meanwhile faults, and a thread lets it through at once (clearing that page's
/// protection). At the stop, [`CowPlan::arm`] takes the descriptors over and
/// [`CowPlan::defer_area`] protects only the pages written since, and areas new since. So
/// the stop no longer walks every page table entry to protect it.
pub struct Prearmed {
    /// By host PID: (start time, descriptor).
    uffds: HashMap<i32, (u64, OwnedFd)>,
    stop: std::sync::Arc<AtomicBool>,
    releaser: Option<std::thread::JoinHandle<()>>,
    /// How long the tree was stopped for it.
    pub stopped_ms: f64,
}

impl Prearmed {
    /// Arms the tree of `target` (see the type's docs). Every failure lets the tree go.
    pub fn arm(target: &crate::Target) -> Result<Prearmed, DumpError> {
        let t0 = Instant::now();
        let frozen = match target {
            crate::Target::Tree(pid) => crate::seize::Frozen::seize_tree(sys::Pid::from_raw(*pid))?,
            crate::Target::Cgroup(path) => {
                crate::seize::Frozen::seize_cgroup(&crate::freeze::Freezer::for_cgroup(path)?)?
            }
        };
        frozen.block_signals()?;
        let mut uffds = HashMap::new();
        for p in frozen.alive() {
            let pid = p.pid.as_raw();
            let Some(st) = start_time(pid) else { continue };
            let fd = crate::track::take_userfaultfd(pid, false)?;
            uffd::api(&fd, 0).map_err(|e| task_err(pid, "a userfaultfd (UFFDIO_API)", &e))?;
            uffds.insert(pid, (st, fd));
        }
        frozen.finish(crate::FinalState::LeaveRunning)?;
        let stopped_ms = ms(t0);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut fds = Vec::new();
        for (&pid, (_, fd)) in &uffds {
            fds.push((
                pid,
                fd.try_clone().map_err(|source| DumpError::Io {
                    op: "duplicate the userfaultfd of",
                    path: format!("/proc/{pid}").into(),
                    source,
                })?,
            ));
        }
        let releasing = stop.clone();
        let releaser = std::thread::Builder::new()
            .name("cow-release".into())
            .spawn(move || release_all(&fds, &releasing))
            .map_err(|source| DumpError::Io {
                op: "start the release thread for",
                path: "the background copy".into(),
                source,
            })?;
        let pre = Prearmed {
            uffds,
            stop,
            releaser: Some(releaser),
            stopped_ms,
        };
        // Registered and protected while the tree runs. An area the kernel refuses, or one
        // that changes meanwhile, is handled at the stop.
        for (&pid, (_, fd)) in &pre.uffds {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                continue;
            };
            for m in crate::proc::parse_maps(&text).unwrap_or_default() {
                let anon = matches!(m.path.as_str(), "" | "[heap]" | "[stack]")
                    || m.path.starts_with("[anon:");
                if m.shared || !m.read || !anon {
                    continue;
                }
                let len = m.end - m.start;
                if uffd::register_wp(fd, m.start, len).is_ok() {
                    let _ = uffd::writeprotect(fd, m.start, len, true);
                }
            }
        }
        debug!(
            processes = pre.uffds.len(),
            stopped_ms, "background copy prearmed"
        );
        Ok(pre)
    }

    /// Stops the release thread (idempotent). Faults queued after it are served by the copy.
    fn stop_releasing(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.releaser.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prearmed {
    fn drop(&mut self) {
        self.stop_releasing();
    }
}

/// Before the stop: lets every write fault through at once.
fn release_all(fds: &[(i32, OwnedFd)], stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut polled: Vec<PollFd> = fds
            .iter()
            .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut polled, PollTimeout::from(10u16)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "release thread: poll failed");
                return;
            }
        }
        let ready: Vec<bool> = polled
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        for ((pid, fd), _) in fds.iter().zip(ready).filter(|(_, r)| *r) {
            let msgs = match uffd::read_msgs(fd, MSGS) {
                Ok(m) => m,
                Err(e) => {
                    debug!(pid, error = %e, "release thread: read failed");
                    continue;
                }
            };
            for m in msgs.iter().filter(|m| m.is_wp_fault()) {
                let page = m.address & !(PAGE - 1);
                if let Err(e) = uffd::writeprotect(fd, page, PAGE, false) {
                    debug!(pid, page, error = %e, "cannot clear write protection");
                    let _ = uffd::wake(fd, page, PAGE);
                }
            }
        }
    }
}

/// Pages that hold data: present or swapped (a swap entry that is no page, such as a
/// guard, left out), not the shared zero page.
const HOLDS_DATA: ScanRequest = ScanRequest {
    flags: 0,
    category_inverted: uffd::PAGE_IS_PFNZERO | uffd::PAGE_IS_GUARD,
    category_mask: uffd::PAGE_IS_PFNZERO | uffd::PAGE_IS_GUARD,
    category_anyof_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED,
    return_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED | uffd::PAGE_IS_WRITTEN,
};

/// The rest of a background dump, once the tree runs again: see [`CowCopy::complete`].
pub struct CowCopy {
    pub(crate) writer: ImageWriter,
    pub(crate) store: PageStoreWriter,
    /// Entries of the pages stored while stopped.
    pub(crate) entries: Vec<PagemapEntry>,
    pub(crate) compress: Option<i32>,
    pub(crate) plan: CowPlan,
    pub(crate) stats: DumpStats,
    /// When the dump began (before the seize).
    pub(crate) t0: Instant,
}

/// What the copier and the fault thread share.
struct Shared<'a> {
    processes: &'a [CowProcess],
    sink: &'a PageSink,
    /// Set by either side on an error: the other stops too.
    abort: AtomicBool,
    /// Set by the copier once every page is stored.
    done: AtomicBool,
    copied: AtomicU64,
    ahead_of_writes: AtomicU64,
}

/// Pages still present or swapped and still write-protected (not written): what the frozen
/// instant left there and nobody replaced.
const FROZEN: ScanRequest = ScanRequest {
    flags: 0,
    category_inverted: uffd::PAGE_IS_WRITTEN,
    category_mask: uffd::PAGE_IS_WRITTEN,
    category_anyof_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED,
    return_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED,
};

/// Why pages could not be copied, when their frozen contents left the address space.
const GONE: &str = "it was unmapped, discarded, moved or replaced (or the task exited or execed)";

fn lost(pid: i32, addr: u64, n: usize, why: &str) -> DumpError {
    DumpError::CowRace {
        pid,
        what: format!("memory at {addr:#x} ({n} pages) in the background copy (--cow)"),
        reason: format!(
            "{why} before it was copied, so the image cannot hold the frozen instant; \
             dump again, or without --cow"
        ),
    }
}

impl CowProcess {
    /// Reads `n` pages at `addr` into `buf` and checks they are still those of the frozen
    /// instant. Called with `runs` locked, so the fault thread cannot let a writer change them.
    fn read_frozen(&self, addr: u64, n: usize, buf: &mut [u8]) -> Result<(), DumpError> {
        let len = n * PAGE_SIZE;
        let pid = self.host_pid;
        let got = match process_vm_readv(
            nix::unistd::Pid::from_raw(pid),
            &mut [IoSliceMut::new(&mut buf[..len])],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        ) {
            Ok(got) => got,
            Err(Errno::ESRCH) => return Err(lost(pid, addr, n, "the task exited")),
            Err(Errno::EFAULT) => 0,
            Err(e) => {
                return Err(DumpError::Task {
                    pid,
                    what: format!("memory at {addr:#x} ({len} bytes)"),
                    reason: format!("process_vm_readv: {e}"),
                })
            }
        };
        if got != len {
            return Err(lost(pid, addr, n, GONE));
        }
        let kept = match uffd::scan(&self.pagemap, addr, addr + len as u64, &FROZEN) {
            Ok(r) => r.iter().map(|r| (r.end - r.start) / PAGE).sum::<u64>(),
            // The address space is gone (exit or exec).
            Err(_) => 0,
        };
        if kept != n as u64 {
            return Err(lost(pid, addr, n, GONE));
        }
        Ok(())
    }

    /// Clears the write protection of `[addr, addr + len)`, waking its blocked writers. A
    /// range the layout no longer has is only woken.
    fn release(&self, addr: u64, len: u64) {
        if let Err(e) = uffd::writeprotect(&self.uffd, addr, len, false) {
            debug!(pid = self.host_pid, addr, error = %e, "cannot clear write protection");
            let _ = uffd::wake(&self.uffd, addr, len);
        }
    }
}

fn poisoned() -> DumpError {
    DumpError::Tree("a background copy lock was poisoned".into())
}

/// Gives an unused buffer back to the sink's circulation (a job of no pages).
fn recycle(sink: &PageSink, buf: PageBuf) -> Result<(), DumpError> {
    sink.send(Job {
        owner: PageOwner::Process(0),
        addr: 0,
        n: 0,
        drop_zero: true,
        buf,
    })
}

/// The copier: every noted page of every process, smallest processes first (a short-lived
/// process is more likely to be copied before it exits).
fn copy_all(sh: &Shared<'_>) -> Result<(), DumpError> {
    let mut order: Vec<&CowProcess> = sh.processes.iter().collect();
    order.sort_by_key(|p| p.pages);
    let mut spare: Option<PageBuf> = None;
    let total: u64 = sh.processes.iter().map(|p| p.pages).sum();
    let mut halfway = false;
    for p in order {
        let nruns = p.runs.lock().map_err(|_| poisoned())?.len();
        for r in 0..nruns {
            let mut from = 0;
            loop {
                if sh.abort.load(Ordering::Relaxed) {
                    return Err(DumpError::Tree(
                        "the background copy stopped (see the fault thread's error)".into(),
                    ));
                }
                let mut buf = match spare.take() {
                    Some(b) => b,
                    None => sh.sink.buffer()?,
                };
                let mut runs = p.runs.lock().map_err(|_| poisoned())?;
                let run = &mut runs[r];
                let Some((first, end)) = run.next_uncopied(from) else {
                    spare = Some(buf);
                    break;
                };
                let addr = run.addr + first as u64 * PAGE;
                let n = end - first;
                p.read_frozen(addr, n, &mut buf)?;
                run.mark(first, end);
                p.release(addr, n as u64 * PAGE);
                drop(runs);
                sh.copied.fetch_add(n as u64, Ordering::Relaxed);
                sh.sink.send(Job {
                    owner: PageOwner::Process(p.image_pid),
                    addr,
                    n,
                    drop_zero: true,
                    buf,
                })?;
                from = end;
                // Tests kill the dumper (or fail the dump) here, with half the memory copied
                // and the tree running.
                if !halfway && sh.copied.load(Ordering::Relaxed) * 2 >= total {
                    halfway = true;
                    if sys::fault::hit("dump.cow-halfway") {
                        return Err(DumpError::Tree(sys::fault::message("dump.cow-halfway")));
                    }
                }
            }
        }
    }
    if let Some(b) = spare {
        recycle(sh.sink, b)?;
    }
    Ok(())
}

/// Serves one write fault of process `p` at `page`: copies the page first if it is noted and
/// not copied yet, then lets the writer go.
fn serve_fault(
    sh: &Shared<'_>,
    p: &CowProcess,
    page: u64,
    spare: &mut Option<PageBuf>,
) -> Result<(), DumpError> {
    let find = |runs: &[Run]| -> Option<(usize, usize)> {
        let i = runs.partition_point(|r| r.addr + r.n as u64 * PAGE <= page);
        let run = runs.get(i).filter(|r| r.addr <= page)?;
        let k = ((page - run.addr) / PAGE) as usize;
        (!run.is_copied(k)).then_some((i, k))
    };
    let needed = find(&p.runs.lock().map_err(|_| poisoned())?).is_some();
    if needed {
        let mut buf = match spare.take() {
            Some(b) => b,
            None => sh.sink.buffer()?,
        };
        let mut runs = p.runs.lock().map_err(|_| poisoned())?;
        if let Some((i, k)) = find(&runs) {
            p.read_frozen(page, 1, &mut buf)?;
            runs[i].mark(k, k + 1);
            p.release(page, PAGE);
            drop(runs);
            sh.copied.fetch_add(1, Ordering::Relaxed);
            sh.ahead_of_writes.fetch_add(1, Ordering::Relaxed);
            return sh.sink.send(Job {
                owner: PageOwner::Process(p.image_pid),
                addr: page,
                n: 1,
                drop_zero: true,
                buf,
            });
        }
        *spare = Some(buf);
    }
    // Copied already (by the copier, which released it, or a fault served before): the
    // writer may be waiting still if it faulted before the release.
    p.release(page, PAGE);
    Ok(())
}

/// The fault thread: serves write faults until the copier is done (or either side failed).
fn serve_faults(sh: &Shared<'_>) -> Result<(), DumpError> {
    let mut spare: Option<PageBuf> = None;
    let result = (|| {
        while !sh.done.load(Ordering::Relaxed) && !sh.abort.load(Ordering::Relaxed) {
            let mut fds: Vec<PollFd> = sh
                .processes
                .iter()
                .map(|p| PollFd::new(p.uffd.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::from(20u16)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    return Err(DumpError::Tree(format!(
                        "poll on the background copy's userfaultfds: {e}"
                    )))
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            for (p, _) in sh.processes.iter().zip(ready).filter(|(_, r)| *r) {
                let msgs = uffd::read_msgs(&p.uffd, MSGS)
                    .map_err(|e| task_err(p.host_pid, "write faults (userfaultfd)", &e))?;
                for m in msgs.iter().filter(|m| m.is_wp_fault()) {
                    serve_fault(sh, p, m.address & !(PAGE - 1), &mut spare)?;
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        sh.abort.store(true, Ordering::Relaxed);
    }
    if let Some(b) = spare {
        let _ = recycle(sh.sink, b);
    }
    result
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl CowCopy {
    /// Pages left to the background copy.
    pub fn pages_to_copy(&self) -> u64 {
        self.plan.pages_deferred
    }

    /// Copies the memory left to the background (the tree must run again: call it right
    /// after `Frozen::finish(FinalState::LeaveRunning)`, whose end is taken as the thaw for
    /// `frozen_ms`), serving the tree's write faults meanwhile, then writes the pagemap and
    /// commits the image. Any error removes the partial image; the userfaultfds are closed
    /// in every case, which lets every blocked writer go.
    pub fn complete(self) -> Result<DumpStats, DumpError> {
        let CowCopy {
            writer,
            mut store,
            mut entries,
            compress,
            plan,
            mut stats,
            t0,
        } = self;
        stats.frozen_ms = ms(t0);
        let t_copy = Instant::now();
        let CowPlan {
            uffds,
            processes,
            pages_deferred,
            ..
        } = plan;
        // The processes hold their own duplicates.
        drop(uffds);
        let (sink, writer_end) = pagesink::channel(compress.is_none())?;
        let mut copied = 0;
        let mut ahead = 0;
        let (result, stored) = std::thread::scope(|outer| {
            let storing = outer.spawn(|| writer_end.run(&mut store));
            let result = {
                let sink = sink;
                let sh = Shared {
                    processes: &processes,
                    sink: &sink,
                    abort: AtomicBool::new(false),
                    done: AtomicBool::new(false),
                    copied: AtomicU64::new(0),
                    ahead_of_writes: AtomicU64::new(0),
                };
                let r = std::thread::scope(|inner| {
                    let faults = inner.spawn(|| serve_faults(&sh));
                    let copier = copy_all(&sh);
                    if copier.is_err() {
                        sh.abort.store(true, Ordering::Relaxed);
                    }
                    sh.done.store(true, Ordering::Relaxed);
                    let served = faults.join().unwrap_or_else(|_| {
                        Err(DumpError::Tree("the fault thread panicked".into()))
                    });
                    // The copier's error is the cause when both failed.
                    copier.and(served)
                });
                copied = sh.copied.load(Ordering::Relaxed);
                ahead = sh.ahead_of_writes.load(Ordering::Relaxed);
                r
            };
            let stored = storing
                .join()
                .unwrap_or_else(|_| Err(DumpError::Tree("the page writer thread panicked".into())));
            (result, stored)
        });
        // Closing the userfaultfds unregisters the areas and lets any blocked writer go.
        drop(processes);
        let stored = stored?;
        result?;
        if copied != pages_deferred {
            return Err(DumpError::Tree(format!(
                "the background copy stored {copied} of {pages_deferred} pages"
            )));
        }
        entries.extend(stored.entries);
        stats.pages_stored += stored.pages_stored;
        stats.zero_pages_skipped += stored.zero_pages_skipped;
        stats.cow_pages_copied = copied;
        stats.cow_pages_ahead_of_writes = ahead;
        stats.cow_copy_ms = ms(t_copy);
        let index = store.finish()?;
        stats.pages_bytes_stored = index.chunks.iter().map(|c| c.stored_len as u64).sum();
        let mut writer = writer;
        writer.write(&PagemapImage {
            store: index,
            entries,
        })?;
        writer.commit()?;
        stats.total_ms = ms(t0);
        info!(?stats, "background dump complete");
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncopied_ranges_of_a_run() {
        let mut r = Run::new(0x10000, 130);
        assert_eq!(r.next_uncopied(0), Some((0, 130)));
        r.mark(3, 5);
        r.mark(64, 65);
        r.mark(129, 130);
        assert_eq!(r.next_uncopied(0), Some((0, 3)));
        assert_eq!(r.next_uncopied(3), Some((5, 64)));
        assert_eq!(r.next_uncopied(64), Some((65, 129)));
        assert_eq!(r.next_uncopied(129), None);
        r.mark(0, 130);
        assert_eq!(r.next_uncopied(0), None);
        assert!(r.is_copied(77));
    }
}
