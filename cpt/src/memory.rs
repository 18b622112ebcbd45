//! Address spaces: the areas of `/proc/PID/maps` (flags from `smaps`), the mm fields, auxv and
//! exe, and the pages that must be stored:
//! - private anonymous areas: present (or swapped) pages, zero pages left out;
//! - private file areas: only pages that differ from the file (anonymous copies-on-write);
//! - shared anonymous areas: the object's populated pages, once per object, through
//!   `/proc/PID/map_files` and `SEEK_DATA`/`SEEK_HOLE`;
//! - shared file areas: nothing, the file holds them;
//! - SysV shared memory attachments: nothing, the segment's pages are stored once with the
//!   segment by `crate::ipc`; only in the IPC namespace being dumped (see
//!   [`MemDumper::sysv_ipc_ns`]).
//!
//! Contents are read with `process_vm_readv` in runs of up to one page-store chunk (4 MiB),
//! the size at which it is fastest on this kernel.

use std::collections::HashSet;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use images_format::mm::{MmFields, PageOwner, ParentRun, ProcessMm, ShmemObject, Vma, VmaKind};
use images_format::pagestore::CHUNK_SIZE;
use images_format::track::{SentArea, SentPagesImage};
use images_format::PAGE_SIZE;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::{lseek, Whence};

use crate::pagesink::{Job, PageSink};
use crate::proc::{parse_maps, parse_smaps_vmflags, parse_stat, MapsLine, ProcDir};
use crate::DumpError;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PAGE: u64 = PAGE_SIZE as u64;
/// Swap type of a pagemap swap entry (bits 0-4 of the frame field; zero unless the reader has
/// `CAP_SYS_ADMIN`), and the type the kernel gives PTE markers (the last one).
const PM_SWAP_TYPE: u64 = 0x1f;
const SWP_PTE_MARKER: u64 = 31;

/// Whether a pagemap entry has contents: present, or really swapped out. A PTE marker shows as
/// swapped but holds nothing: the userfaultfd write protection of a page never populated (a
/// tracked area has one on each), a guard region (which reading would fault on).
fn holds_data(e: u64) -> bool {
    e & PM_PRESENT != 0 || (e & PM_SWAP != 0 && e & PM_SWAP_TYPE != SWP_PTE_MARKER)
}

/// Counters of what the memory dump stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemStats {
    /// Time spent in process_vm_readv and in storing pages (checks, copy, write), in ns.
    pub read_ns: u64,
    pub store_ns: u64,
    pub pages_scanned: u64,
    /// Pages left to the parent (`parent_runs`) instead of being stored.
    pub pages_in_parent: u64,
    /// Incremental dumps: present pages of areas without written-page tracking, and pages
    /// read but found equal to the parent's copy (zeroed, so the sink counts them as zero).
    pub pages_untracked: u64,
    pub pages_same_as_parent: u64,
}

pub struct MemDumper<'a> {
    sink: &'a PageSink,
    pub shmem: Vec<ShmemObject>,
    seen_shmem: HashSet<u64>,
    pub stats: MemStats,
    /// The PID the image records for the process being dumped (its PID inside its own PID
    /// namespace when the root is that namespace's init): the owner of its pagemap entries.
    image_pid: i32,
    /// The IPC namespace (`crate::ipc::ipc_ns_id`) whose contents the dump holds, if any: SysV
    /// shared memory attachments are dumped only for segments of that namespace. `None` (a
    /// tree in the host's IPC namespace) makes any attachment an error.
    pub sysv_ipc_ns: Option<u64>,
    /// What a live migration's destination already holds (see `images_format::track`): a
    /// present page of a private anonymous area listed there that was sent and whose write
    /// protection is still set is recorded in `parent_runs` instead of being stored.
    pub sent_pages: Option<&'a SentPagesImage>,
    /// Runs of pages the parent holds, consecutive pages coalesced.
    pub parent_runs: Vec<ParentRun>,
    /// An incremental dump (`--parent`): private anonymous pages not written since the
    /// parent, or equal to its copy, go to `parent_runs` (see `crate::incremental`).
    pub incremental: Option<&'a crate::incremental::Incremental>,
    /// The parent chunk read last, for comparisons.
    parent_cache: crate::incremental::ParentCache,
    /// A background dump (`crate::cow`): readable private anonymous areas are registered
    /// and write-protected instead of read, and copied once the tree runs again.
    pub cow: Option<crate::cow::CowPlan>,
}

fn io(
    op: &'static str,
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.into();
    move |source| DumpError::Io { op, path, source }
}

/// For an area the task cannot read itself (no `r`), `/proc/PID/mem` (opened once per
/// process into `mem`), which reads it anyway; `None` for a readable one.
fn unreadable_area_mem<'m>(
    pid: i32,
    mem: &'m mut Option<File>,
    m: &MapsLine,
) -> Result<Option<&'m File>, DumpError> {
    if m.read {
        return Ok(None);
    }
    if mem.is_none() {
        let path = format!("/proc/{pid}/mem");
        *mem = Some(File::open(&path).map_err(io("open", &path))?);
    }
    Ok(mem.as_ref())
}

/// The area's pagemap entries, one per page.
fn area_pagemap(pid: i32, pagemap: &File, m: &MapsLine) -> Result<Vec<u64>, DumpError> {
    let nr = ((m.end - m.start) / PAGE) as usize;
    let mut raw = vec![0u8; nr * 8];
    pagemap
        .read_exact_at(&mut raw, m.start / PAGE * 8)
        .map_err(io("read", format!("/proc/{pid}/pagemap")))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

fn classify(pid: i32, m: &MapsLine) -> Result<Option<VmaKind>, DumpError> {
    let unsupported = |what: &str| DumpError::Unsupported {
        pid,
        resource: format!("memory area {:#x}-{:#x} {}", m.start, m.end, m.path),
        reason: what.to_string(),
    };
    Ok(Some(match m.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => return Ok(None), // fixed by the kernel in every process
        "" | "[heap]" | "[stack]" if !m.shared => VmaKind::Anon,
        p if p.starts_with("[anon:") && !m.shared => VmaKind::Anon,
        // A shared memfd mapping is the same kind of shmem object; restored processes show
        // theirs as `/memfd:vzcpt-shmem`, so this also makes a restored tree dumpable again.
        p if p.starts_with("[anon_shmem:")
            || (m.shared && p == "/dev/zero (deleted)")
            || (m.shared && p.starts_with("/memfd:") && p.ends_with(" (deleted)")) =>
        {
            VmaKind::SharedAnon { id: m.inode }
        }
        p if p.starts_with("/SYSV") => {
            return Err(unsupported("a private mapping of SysV shared memory"))
        }
        p if p.ends_with(" (deleted)") => {
            return Err(unsupported(
                "mappings of deleted files are not supported yet",
            ))
        }
        p if p.starts_with('/') => VmaKind::File {
            path: p.to_string(),
        },
        _ => return Err(unsupported("unknown kind of mapping")),
    }))
}

impl<'a> MemDumper<'a> {
    pub fn new(sink: &'a PageSink) -> Self {
        Self {
            sink,
            shmem: Vec::new(),
            seen_shmem: HashSet::new(),
            stats: MemStats::default(),
            image_pid: 0,
            sysv_ipc_ns: None,
            sent_pages: None,
            parent_runs: Vec::new(),
            incremental: None,
            parent_cache: Default::default(),
            cow: None,
        }
    }

    /// An attachment of a SysV segment (`/SYSV<key> (deleted)`, inode column = shmid).
    fn sysv_vma(&self, pid: i32, m: &MapsLine) -> Result<VmaKind, DumpError> {
        let shmid = m.inode as i32;
        let resource = format!(
            "SysV shared memory segment {shmid} ({}) mapped at {:#x}-{:#x}",
            m.path
                .trim_end_matches(" (deleted)")
                .trim_start_matches('/'),
            m.start,
            m.end
        );
        let task_ns = crate::ipc::ipc_ns_id(pid)?;
        if self.sysv_ipc_ns != Some(task_ns) {
            let reason = if task_ns == crate::ipc::own_ipc_ns_id()? {
                "it belongs to the host's IPC namespace, which is not dumped: restoring it \
                 would clash with the host's own segments"
                    .to_string()
            } else {
                format!("the task's IPC namespace ipc:[{task_ns}] is not dumped with the tree")
            };
            return Err(DumpError::Unsupported {
                pid,
                resource,
                reason,
            });
        }
        // The segment's size, for the restore to map all of it: the shm file's size.
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let size = std::fs::metadata(&path).map_err(io("stat", &path))?.len();
        Ok(VmaKind::SysvShm { shmid, size })
    }

    /// Dumps one stopped process's address space. `brk` is the current program break (read by a
    /// remote `brk(0)`). The scratch page of the remote syscalls is already gone by then.
    pub fn dump_process(
        &mut self,
        pid: i32,
        image_pid: i32,
        brk: u64,
    ) -> Result<ProcessMm, DumpError> {
        self.image_pid = image_pid;
        let dir = ProcDir::pid(pid);
        let maps_text = dir.read("maps").map_err(io("read", dir.0.join("maps")))?;
        let maps = parse_maps(&maps_text).ok_or_else(|| DumpError::Task {
            pid,
            what: "memory map".into(),
            reason: "cannot parse /proc/PID/maps".into(),
        })?;
        let vmflags =
            parse_smaps_vmflags(&dir.read("smaps").map_err(io("read", dir.0.join("smaps")))?);
        let stat = parse_stat(&dir.read("stat").map_err(io("read", dir.0.join("stat")))?)
            .ok_or_else(|| DumpError::Task {
                pid,
                what: "stat".into(),
                reason: "cannot parse /proc/PID/stat".into(),
            })?;
        let pagemap_path = dir.0.join("pagemap");
        let pagemap = File::open(&pagemap_path).map_err(io("open", &pagemap_path))?;
        // Opened on the first area without PROT_READ: process_vm_readv refuses those, while
        // /proc/PID/mem reads with FOLL_FORCE, as a debugger does.
        let mut mem: Option<File> = None;

        let mut vmas = Vec::new();
        for m in &maps {
            let kind = if m.shared && m.path.starts_with("/SYSV") {
                self.sysv_vma(pid, m)?
            } else {
                let Some(kind) = classify(pid, m)? else {
                    continue;
                };
                kind
            };
            let flags = vmflags.get(&m.start).cloned().unwrap_or_default();
            let mut map_flags = if m.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            } as u32;
            if flags.iter().any(|f| f == "gd") {
                map_flags |= libc::MAP_GROWSDOWN as u32;
            }
            // VM_NORESERVE: restored with MAP_NORESERVE, else a sparse private area is mapped
            // accountable ("ac") and its whole size is charged to the commit limit.
            if flags.iter().any(|f| f == "nr") {
                map_flags |= libc::MAP_NORESERVE as u32;
            }
            let prot = (if m.read { libc::PROT_READ } else { 0 }
                | if m.write { libc::PROT_WRITE } else { 0 }
                | if m.exec { libc::PROT_EXEC } else { 0 }) as u32;
            match &kind {
                VmaKind::Anon
                    if m.read
                        && match self.cow.as_mut() {
                            Some(plan) => plan.defer_area(pid, image_pid, m)?,
                            None => false,
                        } => {}
                VmaKind::Anon if self.incremental.is_some_and(|i| i.has_parent()) => {
                    self.dump_anon_incremental(pid, &pagemap, &mut mem, m)?
                }
                VmaKind::Anon => {
                    let held = self.held_by_parent(pid, &pagemap, m)?;
                    self.dump_pages(pid, &pagemap, &mut mem, m, false, held.as_deref())?
                }
                VmaKind::File { .. } if !m.shared => {
                    self.dump_pages(pid, &pagemap, &mut mem, m, true, None)?
                }
                VmaKind::SharedAnon { id } => self.dump_shmem(pid, m, *id)?,
                _ => {}
            }
            let has = |f: &str| flags.iter().any(|x| x == f);
            let advice = [
                ("dc", libc::MADV_DONTFORK),
                ("dd", libc::MADV_DONTDUMP),
                ("wf", libc::MADV_WIPEONFORK),
                ("hg", libc::MADV_HUGEPAGE),
                ("nh", libc::MADV_NOHUGEPAGE),
            ]
            .into_iter()
            .filter(|(f, _)| has(f))
            .map(|(_, a)| a)
            .collect();
            vmas.push(Vma {
                start: m.start,
                end: m.end,
                prot,
                flags: map_flags,
                offset: m.offset,
                advice,
                locked: has("lo"),
                kind,
            });
        }
        let auxv_raw = dir
            .read_bytes("auxv")
            .map_err(io("read", dir.0.join("auxv")))?;
        let auxv = auxv_raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let exe = dir
            .readlink("exe")
            .map_err(io("readlink", dir.0.join("exe")))?;
        Ok(ProcessMm {
            pid,
            fields: MmFields {
                start_code: stat.start_code,
                end_code: stat.end_code,
                start_data: stat.start_data,
                end_data: stat.end_data,
                start_brk: stat.start_brk,
                brk,
                start_stack: stat.start_stack,
                arg_start: stat.arg_start,
                arg_end: stat.arg_end,
                env_start: stat.env_start,
                env_end: stat.env_end,
            },
            auxv,
            exe,
            vmas,
        })
    }

    /// For a private anonymous area listed in `sent_pages`: per page of the area, whether the
    /// parent holds its current contents (sent, and not written since: its asynchronous write
    /// protection is still set). `None` when nothing is held, including an area that is no
    /// longer under that protection (the tracker is gone, or the area was mapped anew).
    fn held_by_parent(
        &self,
        pid: i32,
        pagemap: &File,
        m: &MapsLine,
    ) -> Result<Option<Vec<bool>>, DumpError> {
        let Some(area) = self
            .sent_pages
            .and_then(|s| s.area(pid, m.start, m.end))
            .filter(|a| a.sent.iter().any(|&w| w != 0))
        else {
            return Ok(None);
        };
        let written = match sys::uffd::scan_written(pagemap, m.start, m.end, false) {
            Ok(w) => w,
            Err(sys::SysError::Syscall {
                source: nix::errno::Errno::EPERM,
                ..
            }) => {
                tracing::warn!(
                    pid,
                    area = format!("{:#x}-{:#x}", m.start, m.end),
                    "area no longer write-protected: stored whole"
                );
                return Ok(None);
            }
            Err(e) => {
                return Err(DumpError::Task {
                    pid,
                    what: format!("written pages at {:#x}-{:#x}", m.start, m.end),
                    reason: format!(
                        "{e}: {}",
                        std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                    ),
                })
            }
        };
        Ok(Some(held_pages(area, &written)))
    }

    /// Records page `addr` of the process being dumped as held by the parent.
    fn hold(&mut self, addr: u64) {
        let owner = PageOwner::Process(self.image_pid);
        self.stats.pages_in_parent += 1;
        if let Some(last) = self.parent_runs.last_mut() {
            if last.owner == owner && last.addr + last.nr_pages as u64 * PAGE == addr {
                last.nr_pages += 1;
                return;
            }
        }
        self.parent_runs.push(ParentRun {
            owner,
            addr,
            nr_pages: 1,
        });
    }

    /// Stores the pages of one private area that the restore cannot get elsewhere; present
    /// pages `held` by the parent are only recorded as parent runs.
    fn dump_pages(
        &mut self,
        pid: i32,
        pagemap: &File,
        mem: &mut Option<File>,
        m: &MapsLine,
        file_backed: bool,
        held: Option<&[bool]>,
    ) -> Result<(), DumpError> {
        let unreadable = unreadable_area_mem(pid, mem, m)?;
        let raw = area_pagemap(pid, pagemap, m)?;
        let nr = raw.len();
        self.stats.pages_scanned += nr as u64;
        let entry = |i: usize| raw[i];
        let in_parent = |i: usize| {
            held.is_some_and(|h| h.get(i).copied().unwrap_or(false)) && entry(i) & PM_PRESENT != 0
        };
        for i in (0..nr).filter(|&i| in_parent(i)) {
            self.hold(m.start + i as u64 * PAGE);
        }
        let wanted = |i: usize| {
            let e = entry(i);
            if in_parent(i) {
                false
            } else if file_backed {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || (e & PM_PRESENT == 0 && holds_data(e))
            } else {
                holds_data(e)
            }
        };
        let max_run = CHUNK_SIZE / PAGE_SIZE;
        let mut i = 0;
        while i < nr {
            if !wanted(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < nr && j - i < max_run && wanted(j) {
                j += 1;
            }
            self.read_run(
                pid,
                unreadable,
                m.start + i as u64 * PAGE,
                j - i,
                !file_backed,
            )?;
            i = j;
        }
        Ok(())
    }

    /// A private anonymous area of an incremental dump (see `crate::incremental`): present
    /// pages not written since the parent are the parent's; written ones (all, when that
    /// is not known) are compared with the parent's copy and stored only if they differ.
    fn dump_anon_incremental(
        &mut self,
        pid: i32,
        pagemap: &File,
        mem: &mut Option<File>,
        m: &MapsLine,
    ) -> Result<(), DumpError> {
        let Some(inc) = self.incremental else {
            return Ok(());
        };
        let unreadable = unreadable_area_mem(pid, mem, m)?;
        let raw = area_pagemap(pid, pagemap, m)?;
        let nr = raw.len();
        self.stats.pages_scanned += nr as u64;
        let entry = |i: usize| raw[i];
        let written = inc.written(pid, pagemap, m.start, m.end)?;
        let mut candidate = vec![written.is_none(); nr];
        if let Some(w) = &written {
            for &(s, e) in w {
                let from = ((s.max(m.start) - m.start) / PAGE) as usize;
                let to = ((e.min(m.end).max(m.start) - m.start) / PAGE) as usize;
                for c in candidate.iter_mut().take(to).skip(from) {
                    *c = true;
                }
            }
        }
        let owner = PageOwner::Process(self.image_pid);
        for (i, c) in candidate.iter_mut().enumerate() {
            if !holds_data(entry(i)) {
                *c = false;
            } else if written.is_none() {
                self.stats.pages_untracked += 1;
            }
        }
        // In address order, so that parent runs coalesce.
        let max_run = CHUNK_SIZE / PAGE_SIZE;
        let mut i = 0;
        while i < nr {
            if !candidate[i] {
                let addr = m.start + i as u64 * PAGE;
                // Not written since the parent: the parent's page, or zero then and now.
                if holds_data(entry(i)) && inc.parent_page(owner, addr).is_some() {
                    self.hold(addr);
                }
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < nr && j - i < max_run && candidate[j] {
                j += 1;
            }
            self.read_run_against_parent(pid, unreadable, m.start + i as u64 * PAGE, j - i)?;
            i = j;
        }
        Ok(())
    }

    /// [`Self::read_run`] for anonymous pages of an incremental dump: pages equal to the
    /// parent's copy are recorded as parent runs and zeroed in the buffer, which the page
    /// sink then leaves out like any zero page.
    fn read_run_against_parent(
        &mut self,
        pid: i32,
        mem: Option<&File>,
        addr: u64,
        n: usize,
    ) -> Result<(), DumpError> {
        let Some(inc) = self.incremental else {
            return Ok(());
        };
        let len = n * PAGE_SIZE;
        let mut owned = self.sink.buffer()?;
        let t = std::time::Instant::now();
        read_pages(pid, mem, addr, &mut owned[..len])?;
        let t2 = std::time::Instant::now();
        self.stats.read_ns += (t2 - t).as_nanos() as u64;
        let owner = PageOwner::Process(self.image_pid);
        let same = crate::incremental::same_as_parent(
            inc,
            &mut self.parent_cache,
            owner,
            addr,
            &owned[..len],
        )?;
        for (k, &s) in same.iter().enumerate() {
            if s {
                owned[k * PAGE_SIZE..(k + 1) * PAGE_SIZE].fill(0);
                self.stats.pages_same_as_parent += 1;
                self.hold(addr + k as u64 * PAGE);
            }
        }
        let r = self.sink.send(Job {
            owner,
            addr,
            n,
            drop_zero: true,
            buf: owned,
        });
        self.stats.store_ns += t2.elapsed().as_nanos() as u64;
        r
    }

    /// Reads `n` pages at `addr` of `pid` and appends them (zero pages dropped when allowed).
    /// `mem` is `/proc/PID/mem`, given for an area without read permission.
    fn read_run(
        &mut self,
        pid: i32,
        mem: Option<&File>,
        addr: u64,
        n: usize,
        drop_zero: bool,
    ) -> Result<(), DumpError> {
        let len = n * PAGE_SIZE;
        let mut owned = self.sink.buffer()?;
        let buf = &mut owned[..len];
        let t = std::time::Instant::now();
        read_pages(pid, mem, addr, buf)?;
        let t2 = std::time::Instant::now();
        self.stats.read_ns += (t2 - t).as_nanos() as u64;
        let r = self.sink.send(Job {
            owner: PageOwner::Process(self.image_pid),
            addr,
            n,
            drop_zero,
            buf: owned,
        });
        self.stats.store_ns += t2.elapsed().as_nanos() as u64;
        r
    }

    /// Stores a shared anonymous object once: its populated ranges, found with
    /// `SEEK_DATA`/`SEEK_HOLE` on the shmem file behind `/proc/PID/map_files`.
    fn dump_shmem(&mut self, pid: i32, m: &MapsLine, id: u64) -> Result<(), DumpError> {
        let size = m.offset + (m.end - m.start);
        if let Some(o) = self.shmem.iter_mut().find(|o| o.id == id) {
            o.size = o.size.max(size);
        }
        if !self.seen_shmem.insert(id) {
            return Ok(());
        }
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let file = File::open(&path).map_err(io("open", &path))?;
        let fsize = file.metadata().map_err(io("stat", &path))?.len();
        self.shmem.push(ShmemObject {
            id,
            size: size.max(fsize),
        });
        let mut off: u64 = 0;
        while off < fsize {
            let data = match lseek(&file, off as i64, Whence::SeekData) {
                Ok(d) => d as u64,
                Err(nix::errno::Errno::ENXIO) => break,
                Err(e) => {
                    return Err(DumpError::Task {
                        pid,
                        what: format!("shared memory {path}"),
                        reason: format!("SEEK_DATA: {e}"),
                    })
                }
            };
            let hole = lseek(&file, data as i64, Whence::SeekHole)
                .map(|h| h as u64)
                .unwrap_or(fsize);
            let mut pos = data & !(PAGE - 1);
            while pos < hole {
                let n = ((hole - pos).div_ceil(PAGE) as usize).min(CHUNK_SIZE / PAGE_SIZE);
                let len = n * PAGE_SIZE;
                let mut buf = self.sink.buffer()?;
                let got = file
                    .read_at(&mut buf[..len], pos)
                    .map_err(io("read", &path))?;
                buf[got..len].fill(0);
                self.sink.send(Job {
                    owner: PageOwner::Shmem(id),
                    addr: pos,
                    n,
                    drop_zero: true,
                    buf,
                })?;
                pos += len as u64;
            }
            off = hole;
        }
        Ok(())
    }
}

/// Reads `buf.len()` bytes at `addr` of `pid`: with `process_vm_readv`, or from `mem`
/// (`/proc/PID/mem`) for an area without read permission.
fn read_pages(pid: i32, mem: Option<&File>, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
    let len = buf.len();
    if let Some(mem) = mem {
        return mem.read_exact_at(buf, addr).map_err(|e| DumpError::Task {
            pid,
            what: format!("memory at {addr:#x} ({len} bytes, not readable)"),
            reason: format!("read /proc/{pid}/mem: {e}"),
        });
    }
    let remote = [RemoteIoVec {
        base: addr as usize,
        len,
    }];
    let got = process_vm_readv(
        nix::unistd::Pid::from_raw(pid),
        &mut [IoSliceMut::new(buf)],
        &remote,
    )
    .map_err(|e| DumpError::Task {
        pid,
        what: format!("memory at {addr:#x} ({len} bytes)"),
        reason: format!("process_vm_readv: {e}"),
    })?;
    if got != len {
        return Err(DumpError::Task {
            pid,
            what: format!("memory at {addr:#x}"),
            reason: format!("process_vm_readv read {got} of {len} bytes"),
        });
    }
    Ok(())
}

/// Per page of `area`: sent and not among the `written` ranges.
fn held_pages(area: &SentArea, written: &[(u64, u64)]) -> Vec<bool> {
    let mut held: Vec<bool> = (0..area.pages()).map(|i| area.is_sent(i)).collect();
    for &(s, e) in written {
        let from = (s.max(area.start) - area.start) / PAGE;
        let to = (e.min(area.end).max(area.start) - area.start) / PAGE;
        for i in from..to {
            if let Some(h) = held.get_mut(i as usize) {
                *h = false;
            }
        }
    }
    held
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn markers_hold_no_data() {
        // As read from /proc/PID/pagemap on this kernel: a present page; the uffd-wp marker
        // of a page never populated (swap flag, uffd-wp bit, type 31, offset 1); a swapped
        // page of swap file 0.
        assert!(holds_data(0x8300_0000_004f_b7e2));
        assert!(!holds_data(0x4200_0000_0000_003f));
        assert!(holds_data(0x4000_0000_0000_0120));
        assert!(!holds_data(0));
    }

    #[test]
    fn written_pages_are_not_held() {
        let area = SentArea {
            start: 0x10000,
            end: 0x10000 + 10 * PAGE,
            sent: vec![0b11_1111_1101],
        };
        let held = held_pages(&area, &[(0x10000 + 3 * PAGE, 0x10000 + 5 * PAGE)]);
        assert_eq!(
            held,
            vec![true, false, true, false, false, true, true, true, true, true]
        );
    }
}
