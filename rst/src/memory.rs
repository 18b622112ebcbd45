//! Rebuilding an address space inside a seized builder process, by remote syscalls:
//! 1. unmap everything of the restorer's copy but the syscall page and the vdso/vvar areas;
//! 2. move `[vvar]`, `[vvar_vclock]` and `[vdso]` to their dumped addresses (`mremap`);
//! 3. map every dumped area at its address (anonymous, file, or the shared object's memfd the
//!    restorer prepared and every builder inherited), writable while it is filled;
//! 4. write the stored pages with `process_vm_writev` straight from the page-store chunks;
//! 5. put back the dumped protections and set the mm fields with `PR_SET_MM_MAP`.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use images_format::mm::{PageOwner, PagemapEntry, ProcessMm, ShmemObject, VmaKind};
use images_format::pagestore::PageStoreReader;
use images_format::PAGE_SIZE;
use nix::sys::uio::{process_vm_writev, RemoteIoVec};
use sys::remote::RemoteTask;

use crate::tree::SCRATCH_LEN;
use crate::RestoreError;

const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MMAP_MIN: u64 = 0x1000;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// Shared anonymous objects, created and filled in the restorer before any fork.
pub struct SharedObjects {
    pub fds: HashMap<u64, OwnedFd>,
}

/// Creates one memfd per shared object, sized and filled from the page store.
pub fn prepare_shmem(
    objects: &[ShmemObject],
    entries: &[PagemapEntry],
    store: &PageStoreReader,
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
        let mut chunk = Vec::new();
        let mut loaded = u32::MAX;
        for e in entries.iter().filter(|e| e.owner == PageOwner::Shmem(o.id)) {
            if loaded != e.loc.chunk {
                store.chunk_into(e.loc.chunk, &mut chunk)?;
                loaded = e.loc.chunk;
            }
            let data = page_slice(&chunk, e)?;
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
    store: &PageStoreReader,
    shmem: &SharedObjects,
) -> Result<(), RestoreError> {
    // 1. Everything but the syscall page and the special areas goes.
    let cur = current_maps(host_pid)?;
    let mut keep: Vec<(u64, u64)> = vec![(scratch, scratch + SCRATCH_LEN)];
    let mut specials: HashMap<&str, (u64, u64)> = HashMap::new();
    for (s, e, path) in &cur {
        if matches!(path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]") {
            keep.push((*s, *e));
            specials.insert(
                match path.as_str() {
                    "[vdso]" => "[vdso]",
                    "[vvar]" => "[vvar]",
                    _ => "[vvar_vclock]",
                },
                (*s, *e),
            );
        }
    }
    keep.sort_unstable();
    let mut from = MMAP_MIN;
    for &(s, e) in &keep {
        if s > from {
            rt.syscall_ok("munmap", libc::SYS_munmap, [from, s - from, 0, 0, 0, 0])?;
        }
        from = from.max(e);
    }
    if from < TASK_SIZE {
        rt.syscall_ok(
            "munmap",
            libc::SYS_munmap,
            [from, TASK_SIZE - from, 0, 0, 0, 0],
        )?;
    }

    // 2. Special areas to their dumped addresses, in an order that never overlaps one not moved yet.
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
        rt.syscall_ok("munmap", libc::SYS_munmap, [s, e - s, 0, 0, 0, 0])?;
    }
    // Moving down: lowest first; moving up: highest first.
    moves.sort_by_key(|&(s, _, n)| if n < s { s as i128 } else { -(s as i128) });
    for (s, len, new) in moves {
        if s != new {
            rt.syscall_ok(
                "mremap",
                libc::SYS_mremap,
                [
                    s,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    new,
                    0,
                ],
            )?;
        }
    }

    // 3. Every other area, writable while being filled if it has stored pages.
    let has_pages = |s: u64, e: u64| {
        entries
            .iter()
            .any(|p| p.owner == PageOwner::Process(mm.pid) && p.addr >= s && p.addr < e)
    };
    let mut reprotect = Vec::new();
    for v in &mm.vmas {
        let len = v.end - v.start;
        let fill = has_pages(v.start, v.end);
        let prot = v.prot as u64 | if fill { libc::PROT_WRITE as u64 } else { 0 };
        let flags = v.flags as u64 | libc::MAP_FIXED as u64;
        match &v.kind {
            VmaKind::Anon => {
                rt.syscall_ok(
                    "mmap(anonymous)",
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        prot,
                        flags | libc::MAP_ANONYMOUS as u64,
                        u64::MAX,
                        0,
                    ],
                )?;
            }
            VmaKind::File { path } => {
                let shared_w =
                    v.flags & libc::MAP_SHARED as u32 != 0 && v.prot & libc::PROT_WRITE as u32 != 0;
                let mode = if shared_w {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let fd = remote_open(rt, path, mode)?;
                let r = rt.syscall_ok(
                    "mmap(file)",
                    libc::SYS_mmap,
                    [v.start, len, prot, flags, fd, v.offset],
                );
                rt.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                r.map_err(|e| RestoreError::Memory(format!("map {path} at {:#x}: {e}", v.start)))?;
            }
            VmaKind::SharedAnon { id } => {
                let fd = shmem.fds.get(id).ok_or_else(|| {
                    RestoreError::Memory(format!("shared object {id} is not in the image"))
                })?;
                rt.syscall_ok(
                    "mmap(shared)",
                    libc::SYS_mmap,
                    [
                        v.start,
                        len,
                        v.prot as u64,
                        flags,
                        fd.as_raw_fd() as u64,
                        v.offset,
                    ],
                )?;
            }
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock => {}
        }
        if fill && v.prot & libc::PROT_WRITE as u32 == 0 {
            reprotect.push((v.start, len, v.prot));
        }
    }

    // 4. Pages, a chunk at a time, many runs per process_vm_writev.
    write_pages(host_pid, mm.pid, entries, store)?;

    // 5. Protections and mm fields.
    for (s, len, prot) in reprotect {
        rt.syscall_ok(
            "mprotect",
            libc::SYS_mprotect,
            [s, len, prot as u64, 0, 0, 0],
        )?;
    }
    set_mm_map(rt, mm)
}

fn write_pages(
    host_pid: i32,
    pid: i32,
    entries: &[PagemapEntry],
    store: &PageStoreReader,
) -> Result<(), RestoreError> {
    let mut chunk = Vec::new();
    let mut loaded = u32::MAX;
    let mine: Vec<&PagemapEntry> = entries
        .iter()
        .filter(|e| e.owner == PageOwner::Process(pid))
        .collect();
    let mut i = 0;
    while i < mine.len() {
        let c = mine[i].loc.chunk;
        if loaded != c {
            store.chunk_into(c, &mut chunk)?;
            loaded = c;
        }
        let mut j = i;
        let mut local = Vec::new();
        let mut remote = Vec::new();
        while j < mine.len() && mine[j].loc.chunk == c && local.len() < 1024 {
            let data = page_slice(&chunk, mine[j])?;
            local.push(IoSlice::new(data));
            remote.push(RemoteIoVec {
                base: mine[j].addr as usize,
                len: data.len(),
            });
            j += 1;
        }
        let want: usize = remote.iter().map(|r| r.len).sum();
        let got = process_vm_writev(nix::unistd::Pid::from_raw(host_pid), &local, &remote)
            .map_err(|e| RestoreError::Memory(format!("process_vm_writev into {host_pid}: {e}")))?;
        if got != want {
            return Err(RestoreError::Memory(format!(
                "process_vm_writev wrote {got} of {want} bytes into process {pid}"
            )));
        }
        i = j;
    }
    Ok(())
}

/// Opens `path` inside the task and returns the descriptor number.
pub fn remote_open(rt: &mut RemoteTask, path: &str, flags: i32) -> Result<u64, RestoreError> {
    let mut bytes = path.as_bytes().to_vec();
    bytes.push(0);
    let addr = rt.put(8192, &bytes)?;
    rt.syscall_ok(
        "openat",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            addr,
            (flags | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )
    .map_err(|e| RestoreError::Memory(format!("open {path} in the restored task: {e}")))
}

fn set_mm_map(rt: &mut RemoteTask, mm: &ProcessMm) -> Result<(), RestoreError> {
    let f = &mm.fields;
    let exe_fd = remote_open(rt, &mm.exe, libc::O_RDONLY)?;
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_addr = rt.put(2048, &auxv)?;
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
        auxv_addr,
    ] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let map_addr = rt.put(0, &map)?;
    let r = rt.syscall_ok(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, map_addr, map.len() as u64, 0, 0],
    );
    rt.syscall_ok("close", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
    r?;
    Ok(())
}
