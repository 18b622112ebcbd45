//! Checks on a decoded image made before any process is created: a crafted or damaged image
//! is refused with a message, never half-restored.

use std::collections::HashSet;

use images_format::mm::{PageOwner, VmaKind};
use images_format::pstree::ProcState;

use crate::{Images, RestoreError};

const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const PAGE: u64 = 4096;

fn bad(msg: String) -> RestoreError {
    RestoreError::Invalid(msg)
}

pub fn validate(img: &Images) -> Result<(), RestoreError> {
    let inv = img.dir.inventory();
    if inv.arch != std::env::consts::ARCH {
        return Err(bad(format!(
            "dumped on {}, this is {}",
            inv.arch,
            std::env::consts::ARCH
        )));
    }
    let here = sys::syscalls::xcr0();
    if inv.xsave_features & !here != 0 {
        return Err(bad(format!(
            "the image uses CPU xsave features {:#x}, this CPU enables only {here:#x}",
            inv.xsave_features
        )));
    }
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 << 20);
    let procs = &img.pstree.processes;
    if procs.is_empty() {
        return Err(bad("the process tree is empty".into()));
    }
    if procs[0].pid != img.pstree.root_pid || procs[0].ppid != 0 {
        return Err(bad("the first process of the tree must be its root".into()));
    }
    let mut pids = HashSet::new();
    let mut tids = HashSet::new();
    for (i, p) in procs.iter().enumerate() {
        if p.pid <= 0 || p.pid >= pid_max {
            return Err(bad(format!("PID {} is out of range (1..{pid_max})", p.pid)));
        }
        if !pids.insert(p.pid) {
            return Err(bad(format!("PID {} appears twice", p.pid)));
        }
        if i > 0 && !procs[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(bad(format!(
                "process {} has parent {} that comes later or not at all",
                p.pid, p.ppid
            )));
        }
        match p.state {
            ProcState::Alive => {
                if p.threads.first() != Some(&p.pid) {
                    return Err(bad(format!(
                        "process {}: its first thread must be itself",
                        p.pid
                    )));
                }
                for &t in &p.threads {
                    if t <= 0
                        || t >= pid_max
                        || !tids.insert(t)
                        || (t != p.pid && pids.contains(&t))
                    {
                        return Err(bad(format!(
                            "process {}: thread ID {t} is out of range or taken twice",
                            p.pid
                        )));
                    }
                }
                let core = img.core.processes.iter().find(|c| c.pid == p.pid);
                let Some(core) = core else {
                    return Err(bad(format!("process {} has no core record", p.pid)));
                };
                if core.threads.len() != p.threads.len() {
                    return Err(bad(format!(
                        "process {}: thread count differs between pstree and core",
                        p.pid
                    )));
                }
                if core.sigactions.len() != 64 {
                    return Err(bad(format!(
                        "process {}: {} signal dispositions, expected 64",
                        p.pid,
                        core.sigactions.len()
                    )));
                }
                for t in &core.threads {
                    if t.xsave.is_empty() || t.xsave.len() > 16 << 10 {
                        return Err(bad(format!(
                            "thread {}: xsave area of {} bytes",
                            t.tid,
                            t.xsave.len()
                        )));
                    }
                    if t.pending
                        .iter()
                        .chain(core.shared_pending.iter())
                        .any(|s| s.raw.len() != 128)
                    {
                        return Err(bad(format!("thread {}: malformed pending signal", t.tid)));
                    }
                }
            }
            ProcState::Zombie { .. } => {
                if !p.threads.is_empty() {
                    return Err(bad(format!("zombie {} has threads", p.pid)));
                }
            }
        }
    }
    for m in &img.mm.processes {
        if !pids.contains(&m.pid) {
            return Err(bad(format!("memory record of unknown process {}", m.pid)));
        }
        let mut prev_end = 0;
        for v in &m.vmas {
            if v.start % PAGE != 0
                || v.end % PAGE != 0
                || v.start >= v.end
                || v.end > TASK_SIZE
                || v.start < prev_end
            {
                return Err(bad(format!(
                    "process {}: memory area {:#x}-{:#x} is misaligned, empty, overlapping or in kernel range",
                    m.pid, v.start, v.end
                )));
            }
            if let VmaKind::SharedAnon { id } = v.kind {
                if !img.mm.shmem.iter().any(|o| o.id == id) {
                    return Err(bad(format!(
                        "process {}: shared area refers to unknown object {id}",
                        m.pid
                    )));
                }
            }
            prev_end = v.end;
        }
    }
    for e in &img.pagemap.entries {
        let covered = match e.owner {
            PageOwner::Process(pid) => {
                img.mm
                    .processes
                    .iter()
                    .find(|m| m.pid == pid)
                    .is_some_and(|m| {
                        let end = e.addr.saturating_add(e.nr_pages as u64 * PAGE);
                        m.vmas.iter().any(|v| v.start <= e.addr && end <= v.end)
                    })
            }
            PageOwner::Shmem(id) => img.mm.shmem.iter().any(|o| {
                o.id == id
                    && e.addr.saturating_add(e.nr_pages as u64 * PAGE)
                        <= o.size.div_ceil(PAGE) * PAGE
            }),
            // Checked against the segments of the ipc record by `crate::ipc::validate`.
            PageOwner::SysvShm(_) => true,
            // Checked against the files of the tmpfs record by `crate::tmpfs::validate`.
            PageOwner::TmpfsFile(_) => true,
        };
        if !covered || e.nr_pages == 0 || e.addr % PAGE != 0 {
            return Err(bad(format!(
                "pagemap entry {:?} at {:#x} is outside its memory",
                e.owner, e.addr
            )));
        }
        // Chunk numbers run through the page stores of the image and its parents.
        let Some(c) = img.chain.chunk_desc(e.loc.chunk) else {
            return Err(bad(format!(
                "pagemap entry at {:#x} names chunk {} of {}",
                e.addr,
                e.loc.chunk,
                img.chain.chunk_count()
            )));
        };
        if e.loc.offset as u64 + e.nr_pages as u64 * PAGE > c.raw_len as u64 {
            return Err(bad(format!(
                "pagemap entry at {:#x} runs past chunk {}",
                e.addr, e.loc.chunk
            )));
        }
    }
    let ndesc = img.files.descs.len();
    for (i, d) in img.files.descs.iter().enumerate() {
        if d.id as usize != i {
            return Err(bad(format!("file description {} is out of order", d.id)));
        }
    }
    for t in &img.files.tables {
        let mut seen = HashSet::new();
        for e in &t.fds {
            if e.fd < 0 || e.fd >= 1 << 20 || !seen.insert(e.fd) || e.desc as usize >= ndesc {
                return Err(bad(format!(
                    "process {}: descriptor {} is invalid or duplicated",
                    t.pid, e.fd
                )));
            }
        }
    }
    Ok(())
}
