//! Rebuilding an address space inside a seized builder process, by remote syscalls:
//! 1. unmap everything of the restorer's copy but the syscall page and the vdso/vvar areas;
//! 2. move `[vvar]`, `[vvar_vclock]` and `[vdso]` to their dumped addresses (`mremap`);
//! 3. map every dumped area at its address (anonymous, file, or the shared object's memfd the
//!    restorer prepared and every builder inherited), writable while it is filled;
//! 4. write the stored pages with `process_vm_writev` straight from the page-store chunks;
//! 5. put back the dumped protections and set the mm fields with `PR_SET_MM_MAP`.
//!
//! SysV shared memory attachments are made by a remote `shmat` of the segment, which the
//! VE's IPC namespace already holds (see `crate::ipc`); see [`sysv_attach_calls`].

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use images_format::chain::ChunkSource;
use images_format::mm::{PageOwner, PagemapEntry, ProcessMm, ShmemObject, Vma, VmaKind};
use images_format::pagestore::CHUNK_SIZE;
use images_format::{PageBuf, PAGE_SIZE};
use nix::sys::uio::{process_vm_writev, RemoteIoVec};
use sys::remote::{Call, RemoteTask};

use crate::arena::Arena;

use crate::tree::SCRATCH_LEN;
use crate::RestoreError;

const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MMAP_MIN: u64 = 0x1000;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// The last chunk read from the page store, decoded. Processes are restored in the order
/// their pages were dumped, so consecutive processes mostly need the same chunk: one slot
/// avoids reading and checksumming a chunk again for each of them.
pub struct ChunkCache<'a> {
    store: &'a dyn ChunkSource,
    index: u32,
    data: PageBuf,
    len: usize,
}

impl<'a> ChunkCache<'a> {
    /// `store`: one image's page store, or a chain's (`images_format::chain::ChainStore`).
    pub fn new(store: &'a dyn ChunkSource) -> Result<Self, RestoreError> {
        Ok(Self {
            store,
            index: u32::MAX,
            data: PageBuf::new(CHUNK_SIZE)?,
            len: 0,
        })
    }

    pub fn get(&mut self, i: u32) -> Result<&[u8], RestoreError> {
        if self.index != i {
            self.index = u32::MAX;
            self.len = self.store.chunk_into(i, &mut self.data)?;
            self.index = i;
        }
        Ok(&self.data[..self.len])
    }
}

/// Shared anonymous objects, created and filled in the restorer before any fork.
pub struct SharedObjects {
    pub fds: HashMap<u64, OwnedFd>,
}

/// Creates one memfd per shared object, sized and filled from the page store.
pub fn prepare_shmem(
    objects: &[ShmemObject],
    entries: &[PagemapEntry],
    chunks: &mut ChunkCache<'_>,
    fd_base: i32,
) -> Result<SharedObjects, RestoreError> {
    use std::os::unix::fs::FileExt;
    let mut fds = HashMap::new();
    for (i, o) in objects.iter().enumerate() {
        let fd =
            nix::sys::memfd::memfd_create(c"vzcpt-shmem", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| {
                RestoreError::Memory(format!("memfd_create for shared object {}: {e}", o.id))
            })?;
        let fd = crate::files::move_fd_high(&fd, fd_base + i as i32)?;
        let file = std::fs::File::from(fd);
        file.set_len(o.size)
            .map_err(|e| RestoreError::Memory(format!("size shared object {}: {e}", o.id)))?;
        for e in entries.iter().filter(|e| e.owner == PageOwner::Shmem(o.id)) {
            let data = page_slice(chunks.get(e.loc.chunk)?, e)?;
            file.write_all_at(data, e.addr).map_err(|err| {
                RestoreError::Memory(format!("fill shared object {}: {err}", o.id))
            })?;
        }
        fds.insert(o.id, OwnedFd::from(file));
    }
    Ok(SharedObjects { fds })
}

fn page_slice<'a>(chunk: &'a [u8], e: &PagemapEntry) -> Result<&'a [u8], RestoreError> {
    let start = e.loc.offset as usize;
    let len = e.nr_pages as usize * PAGE_SIZE;
    chunk.get(start..start + len).ok_or_else(|| {
        RestoreError::Memory(format!(
            "pagemap entry at {:#x} points past the end of chunk {}",
            e.addr, e.loc.chunk
        ))
    })
}

fn special_name(k: &VmaKind) -> Option<&'static str> {
    match k {
        VmaKind::Vdso => Some("[vdso]"),
        VmaKind::Vvar => Some("[vvar]"),
        VmaKind::VvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

/// Current areas of the builder: (start, end, path).
fn current_maps(pid: i32) -> Result<Vec<(u64, u64, String)>, RestoreError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| RestoreError::Memory(format!("read /proc/{pid}/maps: {e}")))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (s, e) = it.next()?.split_once('-')?;
            let path = it.nth(4).unwrap_or("").to_string();
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
                path,
            ))
        })
        .collect())
}

pub fn restore_mm(
    rt: &mut RemoteTask,
    host_pid: i32,
    scratch: u64,
    mm: &ProcessMm,
    entries: &[PagemapEntry],
    chunks: &mut ChunkCache<'_>,
    shmem: &SharedObjects,
) -> Result<(), RestoreError> {
    // 1. Everything but the syscall page and the special areas goes; the special areas move to
    //    their dumped addresses. One batch.
    let cur = current_maps(host_pid)?;
    let mut keep: Vec<(u64, u64)> = vec![(scratch, scratch + SCRATCH_LEN)];
    let mut specials: HashMap<&str, (u64, u64)> = HashMap::new();
    for (s, e, path) in &cur {
        let name = match path.as_str() {
            "[vdso]" => "[vdso]",
            "[vvar]" => "[vvar]",
            "[vvar_vclock]" => "[vvar_vclock]",
            _ => continue,
        };
        keep.push((*s, *e));
        specials.insert(name, (*s, *e));
    }
    keep.sort_unstable();
    let mut calls = Vec::new();
    let mut from = MMAP_MIN;
    for &(s, e) in &keep {
        if s > from {
            calls.push(Call::new("munmap", libc::SYS_munmap, &[from, s - from]));
        }
        from = from.max(e);
    }
    if from < TASK_SIZE {
        calls.push(Call::new(
            "munmap",
            libc::SYS_munmap,
            &[from, TASK_SIZE - from],
        ));
    }
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (cur_start, len, new_start)
    for v in &mm.vmas {
        if let Some(name) = special_name(&v.kind) {
            let (s, e) = specials.remove(name).ok_or_else(|| {
                RestoreError::Memory(format!(
                    "this kernel gives no {name} area, the image has one"
                ))
            })?;
            if e - s != v.end - v.start {
                return Err(RestoreError::Memory(format!(
                    "{name} is {} bytes here and {} in the image (another kernel?)",
                    e - s,
                    v.end - v.start
                )));
            }
            moves.push((s, e - s, v.start));
        }
    }
    for (_, (s, e)) in specials.drain() {
        calls.push(Call::new("munmap", libc::SYS_munmap, &[s, e - s]));
    }
    // Moving down: lowest first; moving up: highest first; so no area lands on one not moved yet.
    moves.sort_by_key(|&(s, _, n)| if n < s { s as i128 } else { -(s as i128) });
    for (s, len, new) in moves {
        if s != new {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            calls.push(Call::new(
                "mremap",
                libc::SYS_mremap,
                &[s, len, len, flags, new],
            ));
        }
    }
    rt.batch(&calls)?;

    // 2. Each file mapped (and the executable) opened once. One batch.
    let mut arena = Arena::new();
    let mut files: Vec<(String, i32)> = Vec::new();
    for v in &mm.vmas {
        if let VmaKind::File { path } = &v.kind {
            let shared_w =
                v.flags & libc::MAP_SHARED as u32 != 0 && v.prot & libc::PROT_WRITE as u32 != 0;
            let mode = if shared_w {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            if !files.iter().any(|(p, m)| p == path && *m == mode) {
                files.push((path.clone(), mode));
            }
        }
    }
    files.push((mm.exe.clone(), libc::O_RDONLY));
    let mut calls = Vec::new();
    for (path, mode) in &files {
        let addr = arena.cstr(rt, path)?;
        calls.push(Call::new(
            "openat",
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, addr, (mode | libc::O_CLOEXEC) as u64],
        ));
    }
    let fds = rt.batch_raw(&calls)?;
    let close_all = |rt: &mut RemoteTask, fds: &[i64]| {
        let closes: Vec<Call> = fds
            .iter()
            .filter(|&&fd| fd >= 0)
            .map(|&fd| Call::new("close", libc::SYS_close, &[fd as u64]))
            .collect();
        let _ = rt.batch_raw(&closes);
    };
    if let Some(i) = fds.iter().position(|&r| r < 0) {
        close_all(rt, &fds);
        return Err(RestoreError::Memory(format!(
            "cannot open {} in the restored process: {}",
            files[i].0,
            nix::errno::Errno::from_raw(-fds[i] as i32).desc()
        )));
    }
    let fd_of = |path: &str, mode: i32| -> u64 {
        files
            .iter()
            .position(|(p, m)| p == path && *m == mode)
            .map(|i| fds[i] as u64)
            .unwrap_or(u64::MAX)
    };

    // SysV attachments first: one of a segment partly unmapped is made whole, then trimmed.
    let sysv = sysv_attach_calls(&mm.vmas, &[(scratch, scratch + SCRATCH_LEN)])?;
    if let Err(e) = rt.batch(&sysv) {
        close_all(rt, &fds);
        return Err(RestoreError::Memory(format!(
            "SysV shared memory attachments: {e}"
        )));
    }

    // 3. Every area at its address, writable while it is filled if it has stored pages. One batch.
    let has_pages = |s: u64, e: u64| {
        entries
            .iter()
            .any(|p| p.owner == PageOwner::Process(mm.pid) && p.addr >= s && p.addr < e)
    };
    let mut reprotect = Vec::new();
    let mut calls = Vec::new();
    let mut what = Vec::new();
    for v in &mm.vmas {
        let len = v.end - v.start;
        let fill = has_pages(v.start, v.end);
        let prot = v.prot as u64 | if fill { libc::PROT_WRITE as u64 } else { 0 };
        let flags = v.flags as u64 | libc::MAP_FIXED as u64;
        match &v.kind {
            VmaKind::Anon => calls.push(Call::new(
                "mmap",
                libc::SYS_mmap,
                &[
                    v.start,
                    len,
                    prot,
                    flags | libc::MAP_ANONYMOUS as u64,
                    u64::MAX,
                    0,
                ],
            )),
            VmaKind::File { path } => {
                let shared_w =
                    v.flags & libc::MAP_SHARED as u32 != 0 && v.prot & libc::PROT_WRITE as u32 != 0;
                let fd = fd_of(
                    path,
                    if shared_w {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    },
                );
                calls.push(Call::new(
                    "mmap",
                    libc::SYS_mmap,
                    &[v.start, len, prot, flags, fd, v.offset],
                ));
            }
            VmaKind::SharedAnon { id } => {
                let fd = shmem.fds.get(id).ok_or_else(|| {
                    RestoreError::Memory(format!("shared object {id} is not in the image"))
                })?;
                calls.push(Call::new(
                    "mmap",
                    libc::SYS_mmap,
                    &[
                        v.start,
                        len,
                        v.prot as u64,
                        flags,
                        fd.as_raw_fd() as u64,
                        v.offset,
                    ],
                ));
            }
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::SysvShm { .. } => {
                continue
            }
        }
        what.push(v);
        if fill && v.prot & libc::PROT_WRITE as u32 == 0 {
            reprotect.push((v.start, len, v.prot));
        }
    }
    let maps = rt.batch_raw(&calls)?;
    if let Some(i) = maps.iter().position(|&r| (-4095..0).contains(&r)) {
        close_all(rt, &fds);
        let v = what[i];
        return Err(RestoreError::Memory(format!(
            "cannot map {:#x}-{:#x} ({:?}): {}",
            v.start,
            v.end,
            v.kind,
            nix::errno::Errno::from_raw(-maps[i] as i32).desc()
        )));
    }

    // 4. Pages, a chunk at a time, many runs per process_vm_writev.
    write_pages(host_pid, mm.pid, entries, chunks)?;

    // 5. Protections, mm fields, descriptors closed. One batch.
    let mut arena = Arena::new();
    let mut calls: Vec<Call> = reprotect
        .iter()
        .map(|&(s, len, prot)| Call::new("mprotect", libc::SYS_mprotect, &[s, len, prot as u64]))
        .collect();
    // Advice and locks once the pages are in: MADV_DONTFORK and friends only matter from now
    // on, and mlock would otherwise fault in pages about to be overwritten.
    for v in &mm.vmas {
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock) {
            continue; // the kernel's own, moved as they are
        }
        let len = v.end - v.start;
        for &a in &v.advice {
            calls.push(Call::new(
                "madvise",
                libc::SYS_madvise,
                &[v.start, len, a as u64],
            ));
        }
        if v.locked {
            calls.push(Call::new("mlock", libc::SYS_mlock, &[v.start, len]));
        }
    }
    let f = &mm.fields;
    let auxv = arena.words(rt, &mm.auxv)?;
    let exe_fd = fd_of(&mm.exe, libc::O_RDONLY);
    let mut map = Vec::with_capacity(104);
    for v in [
        f.start_code,
        f.end_code,
        f.start_data,
        f.end_data,
        f.start_brk,
        f.brk,
        f.start_stack,
        f.arg_start,
        f.arg_end,
        f.env_start,
        f.env_end,
        auxv,
    ] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    map.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let map_addr = arena.put(rt, &map)?;
    calls.push(Call::new(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, map_addr, map.len() as u64],
    ));
    let r = rt.batch(&calls);
    close_all(rt, &fds);
    r?;
    Ok(())
}

/// The remote calls that attach every SysV segment of `vmas` as dumped. The areas of one
/// attachment share the segment and the address it was attached at (`start - offset`):
/// - all of the segment still mapped (the usual case, possibly split by `mprotect`):
///   `shmat` at that address, then `mprotect` of the areas whose protection differs;
/// - parts unmapped or moved: `shmat` at a staging address free in the dumped layout (and
///   outside `busy`), each area `mremap`ped from there to its place, the rest unmapped.
///
/// `shmat` maps read-only unless an area is writable, and executable if one is.
/// The kernel's `shmdt` finds an attachment by `vm_start - vm_pgoff`, which stays as dumped.
pub fn sysv_attach_calls(vmas: &[Vma], busy: &[(u64, u64)]) -> Result<Vec<Call>, RestoreError> {
    // (shmid, attach address, segment size) and the areas of that attachment.
    type Attachment<'v> = ((i32, u64, u64), Vec<&'v Vma>);
    let mut groups: Vec<Attachment<'_>> = Vec::new();
    for v in vmas {
        let VmaKind::SysvShm { shmid, size } = v.kind else {
            continue;
        };
        let base = v.start.checked_sub(v.offset).ok_or_else(|| {
            RestoreError::Memory(format!(
                "SysV area {:#x}-{:#x} has offset {:#x} beyond its start",
                v.start, v.end, v.offset
            ))
        })?;
        match groups.iter_mut().find(|(k, _)| k.0 == shmid && k.1 == base) {
            Some((_, g)) => g.push(v),
            None => groups.push(((shmid, base, size), vec![v])),
        }
    }
    let mut taken: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    taken.extend_from_slice(busy);
    taken.sort_unstable();
    let mut calls = Vec::new();
    for ((shmid, base, size), mut areas) in groups {
        let seg_len = size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
        areas.sort_by_key(|v| v.start);
        let prot_of =
            |v: &Vma| v.prot as u64 & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let writable = areas.iter().any(|v| v.prot & libc::PROT_WRITE as u32 != 0);
        let exec = areas.iter().any(|v| v.prot & libc::PROT_EXEC as u32 != 0);
        let flags = if writable { 0 } else { sys::ipc::SHM_RDONLY }
            | if exec { sys::ipc::SHM_EXEC } else { 0 };
        let attach_prot = libc::PROT_READ as u64
            | if writable { libc::PROT_WRITE as u64 } else { 0 }
            | if exec { libc::PROT_EXEC as u64 } else { 0 };
        let whole = areas.first().is_some_and(|v| v.start == base)
            && areas.windows(2).all(|w| w[0].end == w[1].start)
            && areas.last().is_some_and(|v| v.end == base + seg_len);
        if whole {
            calls.push(Call::new(
                "shmat",
                libc::SYS_shmat,
                &[shmid as u64, base, flags as u64],
            ));
        } else {
            let stage = free_range(&taken, seg_len).ok_or_else(|| {
                RestoreError::Memory(format!(
                    "no room to stage SysV segment {shmid} ({seg_len} bytes)"
                ))
            })?;
            taken.push((stage, stage + seg_len));
            taken.sort_unstable();
            calls.push(Call::new(
                "shmat",
                libc::SYS_shmat,
                &[shmid as u64, stage, flags as u64],
            ));
            for v in &areas {
                let len = v.end - v.start;
                if v.offset + len > seg_len {
                    return Err(RestoreError::Memory(format!(
                        "SysV area {:#x}-{:#x} runs past the end of segment {shmid}",
                        v.start, v.end
                    )));
                }
                calls.push(Call::new(
                    "mremap",
                    libc::SYS_mremap,
                    &[
                        stage + v.offset,
                        len,
                        len,
                        (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                        v.start,
                    ],
                ));
            }
            calls.push(Call::new("munmap", libc::SYS_munmap, &[stage, seg_len]));
        }
        for v in &areas {
            if prot_of(v) != attach_prot {
                calls.push(Call::new(
                    "mprotect",
                    libc::SYS_mprotect,
                    &[v.start, v.end - v.start, prot_of(v)],
                ));
            }
        }
    }
    Ok(calls)
}

/// A page-aligned range of `len` bytes above 4 GiB that overlaps none of `taken` (sorted).
fn free_range(taken: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut at: u64 = 1 << 32;
    for &(s, e) in taken {
        if e <= at {
            continue;
        }
        if s >= at + len {
            break;
        }
        at = e.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
    }
    (at + len <= TASK_SIZE).then_some(at)
}

fn write_pages(
    host_pid: i32,
    pid: i32,
    entries: &[PagemapEntry],
    chunks: &mut ChunkCache<'_>,
) -> Result<(), RestoreError> {
    let mine: Vec<&PagemapEntry> = entries
        .iter()
        .filter(|e| e.owner == PageOwner::Process(pid))
        .collect();
    // Runs of entries that share a chunk (entries are in dump order, so chunks ascend).
    let mut groups: Vec<&[&PagemapEntry]> = Vec::new();
    let mut i = 0;
    while i < mine.len() {
        let mut j = i;
        while j < mine.len() && mine[j].loc.chunk == mine[i].loc.chunk {
            j += 1;
        }
        groups.push(&mine[i..j]);
        i = j;
    }
    if groups.len() < 4 {
        for g in groups {
            let chunk = chunks.get(g[0].loc.chunk)?;
            write_group(host_pid, pid, g, chunk)?;
        }
        return Ok(());
    }
    // Many chunks: two threads, each reading a chunk and writing it into the process. Most of
    // the time goes to the kernel allocating and zeroing the process's fresh pages, which
    // runs on both CPUs at once. process_vm_writev needs ptrace access, not the tracer thread.
    let store = chunks.store;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let groups = &groups;
    let next = &next;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(move || -> Result<(), RestoreError> {
                    let mut buf = PageBuf::new(CHUNK_SIZE)?;
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(g) = groups.get(k) else {
                            return Ok(());
                        };
                        let n = store.chunk_into(g[0].loc.chunk, &mut buf)?;
                        write_group(host_pid, pid, g, &buf[..n])?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(RestoreError::Memory("a page writer thread panicked".into()))
                })
            })
            .collect::<Result<Vec<()>, RestoreError>>()
    })?;
    Ok(())
}

/// Writes the runs of one chunk into the process, up to 1024 runs per process_vm_writev.
fn write_group(
    host_pid: i32,
    pid: i32,
    group: &[&PagemapEntry],
    chunk: &[u8],
) -> Result<(), RestoreError> {
    for part in group.chunks(1024) {
        let mut local = Vec::with_capacity(part.len());
        let mut remote = Vec::with_capacity(part.len());
        for e in part {
            let data = page_slice(chunk, e)?;
            local.push(IoSlice::new(data));
            remote.push(RemoteIoVec {
                base: e.addr as usize,
                len: data.len(),
            });
        }
        let want: usize = remote.iter().map(|r| r.len).sum();
        let got = process_vm_writev(nix::unistd::Pid::from_raw(host_pid), &local, &remote)
            .map_err(|e| RestoreError::Memory(format!("process_vm_writev into {host_pid}: {e}")))?;
        if got != want {
            return Err(RestoreError::Memory(format!(
                "process_vm_writev wrote {got} of {want} bytes into process {pid}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysv(start: u64, end: u64, prot: i32, offset: u64, shmid: i32, size: u64) -> Vma {
        Vma {
            start,
            end,
            prot: prot as u32,
            flags: libc::MAP_SHARED as u32,
            offset,
            advice: Vec::new(),
            locked: false,
            kind: VmaKind::SysvShm { shmid, size },
        }
    }

    #[test]
    fn free_range_skips_taken_areas() {
        let g = 1u64 << 32;
        assert_eq!(free_range(&[], 0x3000), Some(g));
        assert_eq!(free_range(&[(g, g + 0x2000)], 0x3000), Some(g + 0x2000));
        assert_eq!(
            free_range(
                &[(g + 0x1000, g + 0x2000), (g + 0x4000, g + 0x5000)],
                0x2000
            ),
            Some(g + 0x2000)
        );
        assert_eq!(free_range(&[(0, TASK_SIZE)], 0x1000), None);
    }

    #[test]
    fn whole_attachment_is_one_shmat_and_its_mprotects() {
        let size = 3 * 4096 + 10;
        let vmas = [
            sysv(
                0x10000,
                0x11000,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
                7,
                size,
            ),
            sysv(0x11000, 0x14000, libc::PROT_READ, 0x1000, 7, size),
        ];
        let calls = sysv_attach_calls(&vmas, &[]).unwrap();
        let names: Vec<_> = calls.iter().map(|c| c.name).collect();
        assert_eq!(names, ["shmat", "mprotect"]);
        assert!(matches!(calls[0].args[1], sys::remote::Arg::Imm(0x10000)));
        assert!(matches!(calls[0].args[2], sys::remote::Arg::Imm(0)));
    }

    #[test]
    fn partial_attachment_is_staged_and_moved() {
        let size = 4 * 4096;
        let vmas = [sysv(0x20000, 0x22000, libc::PROT_READ, 0x1000, 3, size)];
        let calls = sysv_attach_calls(&vmas, &[]).unwrap();
        let names: Vec<_> = calls.iter().map(|c| c.name).collect();
        assert_eq!(names, ["shmat", "mremap", "munmap"]);
        assert!(matches!(
            calls[0].args[2],
            sys::remote::Arg::Imm(f) if f == sys::ipc::SHM_RDONLY as u64
        ));
        // Past the segment's end: refused.
        let bad = [sysv(0x20000, 0x30000, libc::PROT_READ, 0x1000, 3, size)];
        assert!(sysv_attach_calls(&bad, &[]).is_err());
    }
}
