//! The contents of a VE's IPC namespace: SysV shared memory segments (their pages go to the
//! page store), semaphore sets, message queues, POSIX message queues, and the namespace's IPC
//! sysctls.
//!
//! Everything is read from a dedicated thread that `setns(CLONE_NEWIPC)`s into the namespace:
//! the dumper is multi-threaded, and an IPC namespace switch affects only the calling thread,
//! which then ends. What that thread does to the namespace, and why:
//! - objects are listed by index (`SHM_INFO` + `SHM_STAT_ANY`, and the same for semaphores and
//!   queues), which sees the thread's namespace, and read with `*_STAT` calls;
//! - a segment's pages: the segment is attached read-only for an instant, only to open the
//!   shmem file behind it through `/proc/self/map_files`; then detached, and the file read with
//!   `SEEK_DATA`/`SEEK_HOLE` (holes are neither read nor allocated). A segment `IPC_RMID`ed
//!   while attached (`SHM_DEST`) can still be attached on Linux. The attach updates the
//!   segment's `shm_atime`/`shm_lpid`, which the restore does not keep anyway. While the dump
//!   runs, `kernel.shm_rmid_forced` is set to 0 in the namespace (and put back): with it set,
//!   the detach of an unattached segment would destroy it;
//! - SysV messages are copied with `msgrcv(MSG_COPY)` by position, which leaves them queued
//!   (`kernel.msgmax` is raised for the time of the dump if a queued message is larger);
//! - POSIX queues are listed on a detached mount of the namespace's mqueue filesystem
//!   (`fsopen`/`fsmount`, attached nowhere), and read by receiving every message and sending
//!   them back at once in the same order: the kernel has no way to peek. Priority order and
//!   FIFO order within a priority are kept. A queue with an `mq_notify` registration is refused
//!   (the refill would fire it, and the registration cannot be restored).
//!
//! The VE is frozen meanwhile, so nothing else changes the namespace.
//!
//! Semaphore undo adjustments (`SEM_UNDO`) live in each task and no interface reads them;
//! they are not dumped (nor by CRIU), so a restored task that exits does not undo them. Nor can
//! the dump detect them reliably: `kcmp(KCMP_SYSVSEM)` only tells whether a task has an undo
//! list at all, and every thread created with `CLONE_SYSVSEM` (all glibc threads) gets an empty
//! one. [`has_sem_undo_list`] gives that hint for single-threaded programs.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use images_format::ipc::{
    IpcImage, IpcPerm, IpcSysctls, MsgQueue, PosixMessage, PosixMqueue, SemSet, ShmSegment,
    SysvMessage,
};
use images_format::mm::PageOwner;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sys::ipc as sysipc;
use sys::{Pid, SysError};

use crate::pagesink::PageSink;
use crate::DumpError;

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The IPC namespace of task `pid`, as the inode number of `/proc/PID/ns/ipc`.
pub fn ipc_ns_id(pid: i32) -> Result<u64, DumpError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/ipc"));
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| DumpError::Io {
            op: "stat",
            path,
            source,
        })
}

/// The IPC namespace of the calling thread.
pub fn own_ipc_ns_id() -> Result<u64, DumpError> {
    let path = PathBuf::from("/proc/thread-self/ns/ipc");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| DumpError::Io {
            op: "stat",
            path,
            source,
        })
}

/// Dumps the IPC namespace of task `ns_pid` (a VE's root, frozen): every object into the
/// returned record, every shared memory page into `sink` as `PageOwner::SysvShm(id)` jobs.
/// Refuses the dumper's own namespace (the host's): restoring it would clash with host objects.
pub fn dump_ipc_ns(ns_pid: i32, sink: &PageSink) -> Result<IpcImage, DumpError> {
    let ns_path = PathBuf::from(format!("/proc/{ns_pid}/ns/ipc"));
    let ns = File::open(&ns_path).map_err(|source| DumpError::Io {
        op: "open",
        path: ns_path.clone(),
        source,
    })?;
    let target = ns
        .metadata()
        .map_err(|source| DumpError::Io {
            op: "stat",
            path: ns_path,
            source,
        })?
        .ino();
    if target == own_ipc_ns_id()? {
        return Err(DumpError::Unsupported {
            pid: ns_pid,
            resource: format!("IPC namespace ipc:[{target}]"),
            reason: "it is the dumper's own (the host's): only a VE's own IPC namespace is dumped"
                .into(),
        });
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC).map_err(|e| {
                    DumpError::Task {
                        pid: ns_pid,
                        what: format!("IPC namespace ipc:[{target}]"),
                        reason: format!("setns: {e}"),
                    }
                })?;
                Collector { pid: ns_pid, sink }.collect()
            })
            .join()
            .unwrap_or_else(|_| Err(DumpError::Tree("the IPC dump thread panicked".into())))
    })
}

/// Whether thread `tid` has a SysV semaphore undo list: `kcmp(KCMP_SYSVSEM)` against
/// `reference`, a task known to have none (single-threaded since its exec and never a
/// `SEM_UNDO` operation: a freshly started helper such as `sleep`).
///
/// Only a hint, not a detection of adjustments: the kernel allocates an (empty) undo list for
/// every thread created with `CLONE_SYSVSEM`, which glibc's `pthread_create` uses, so every
/// process that ever had a second thread has one, and a list whose adjustments are all back to
/// zero is kept too. A single-threaded program with a list has most likely used `SEM_UNDO`.
pub fn has_sem_undo_list(tid: i32, reference: i32) -> Result<bool, DumpError> {
    Ok(!sysipc::kcmp_same_sysvsem(
        Pid::from_raw(reference),
        Pid::from_raw(tid),
    )?)
}

fn kernel(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys/kernel").join(name)
}

fn mqueue(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys/fs/mqueue").join(name)
}

/// Reads the numbers of a sysctl file; opened by the calling thread, so its IPC namespace's.
fn read_sysctl(path: &std::path::Path) -> Result<Vec<i128>, DumpError> {
    let text = std::fs::read_to_string(path).map_err(|source| DumpError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    // shmmax and shmall default to nearly u64::MAX, next_id to -1.
    text.split_whitespace()
        .map(|w| w.parse::<i128>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DumpError::Io {
            op: "parse",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

fn read_one(path: PathBuf) -> Result<i128, DumpError> {
    read_sysctl(&path)?
        .first()
        .copied()
        .ok_or_else(|| DumpError::Io {
            op: "parse",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "empty"),
        })
}

fn write_sysctl(path: &std::path::Path, value: &str) -> Result<(), DumpError> {
    std::fs::write(path, value).map_err(|source| DumpError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// A sysctl changed for the time of the dump, put back on drop (on error too).
struct TempSysctl {
    path: PathBuf,
    old: String,
}

impl TempSysctl {
    fn set(path: PathBuf, old: i64, new: i64) -> Result<Self, DumpError> {
        write_sysctl(&path, &new.to_string())?;
        Ok(TempSysctl {
            path,
            old: old.to_string(),
        })
    }
}

impl Drop for TempSysctl {
    fn drop(&mut self) {
        if let Err(e) = write_sysctl(&self.path, &self.old) {
            tracing::error!("cannot put back {}: {e}", self.path.display());
        }
    }
}

fn sysctls() -> Result<IpcSysctls, DumpError> {
    let sem = read_sysctl(&kernel("sem"))?;
    let sem: [i128; 4] = sem.try_into().map_err(|_| DumpError::Io {
        op: "parse",
        path: kernel("sem"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not four numbers"),
    })?;
    let u = |v: i128| v.clamp(0, u64::MAX as i128) as u64;
    let i = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    Ok(IpcSysctls {
        shmmax: u(read_one(kernel("shmmax"))?),
        shmall: u(read_one(kernel("shmall"))?),
        shmmni: u(read_one(kernel("shmmni"))?),
        shm_rmid_forced: u(read_one(kernel("shm_rmid_forced"))?),
        msgmax: u(read_one(kernel("msgmax"))?),
        msgmnb: u(read_one(kernel("msgmnb"))?),
        msgmni: u(read_one(kernel("msgmni"))?),
        sem: sem.map(u),
        shm_next_id: i(read_one(kernel("shm_next_id"))?),
        msg_next_id: i(read_one(kernel("msg_next_id"))?),
        sem_next_id: i(read_one(kernel("sem_next_id"))?),
        mq_queues_max: u(read_one(mqueue("queues_max"))?),
        mq_msg_max: u(read_one(mqueue("msg_max"))?),
        mq_msgsize_max: u(read_one(mqueue("msgsize_max"))?),
        mq_msg_default: u(read_one(mqueue("msg_default"))?),
        mq_msgsize_default: u(read_one(mqueue("msgsize_default"))?),
    })
}

fn perm(p: &sysipc::IpcPerm) -> IpcPerm {
    IpcPerm {
        key: p.key,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode,
    }
}

/// Runs in the thread that joined the namespace.
struct Collector<'a> {
    pid: i32,
    sink: &'a PageSink,
}

impl Collector<'_> {
    fn failed(&self, what: String) -> impl FnOnce(SysError) -> DumpError {
        let pid = self.pid;
        move |e| DumpError::Task {
            pid,
            what,
            reason: e.to_string(),
        }
    }

    fn collect(&self) -> Result<IpcImage, DumpError> {
        let sysctls = sysctls()?;
        let _rmid = if sysctls.shm_rmid_forced != 0 {
            Some(TempSysctl::set(
                kernel("shm_rmid_forced"),
                sysctls.shm_rmid_forced as i64,
                0,
            )?)
        } else {
            None
        };
        let shm = self.segments()?;
        let sem = self.semaphores()?;
        let msg = self.queues(sysctls.msgmax)?;
        let mqueues = self.posix_queues()?;
        Ok(IpcImage {
            sysctls,
            shm,
            sem,
            msg,
            mqueues,
        })
    }

    fn segments(&self) -> Result<Vec<ShmSegment>, DumpError> {
        let (max, _) = sysipc::shm_info().map_err(self.failed("SysV shared memory".into()))?;
        let mut out = Vec::new();
        for idx in 0..=max {
            let Some(st) = sysipc::shm_stat_index(idx)
                .map_err(self.failed(format!("SysV shared memory index {idx}")))?
            else {
                continue;
            };
            self.segment_pages(&st)?;
            out.push(ShmSegment {
                id: st.id,
                perm: perm(&st.perm),
                size: st.size,
                nattch: st.nattch,
                cpid: st.cpid,
                lpid: st.lpid,
            });
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    /// Stores the populated pages of one segment, read through its shmem file.
    fn segment_pages(&self, st: &sysipc::ShmStat) -> Result<(), DumpError> {
        let what = || {
            format!(
                "SysV shared memory segment {} (key {:#x})",
                st.id, st.perm.key
            )
        };
        if st.size == 0 {
            return Ok(());
        }
        let file = {
            let att = sysipc::ShmAttachment::attach(st.id, st.size, false)
                .map_err(self.failed(what()))?;
            let path = format!(
                "/proc/self/map_files/{:x}-{:x}",
                att.addr(),
                att.addr() + att.len()
            );
            File::open(&path).map_err(|source| DumpError::Io {
                op: "open",
                path: path.into(),
                source,
            })?
            // Detached here: the open file keeps the shmem object readable.
        };
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| DumpError::Task {
            pid: self.pid,
            what: what(),
            reason: format!("fstatfs: {e}"),
        })?;
        if fs.filesystem_type().0 as i64 == HUGETLBFS_MAGIC {
            return Err(DumpError::Unsupported {
                pid: self.pid,
                resource: what(),
                reason: "segments on huge pages (SHM_HUGETLB) are not supported".into(),
            });
        }
        crate::pagesink::send_file(
            self.sink,
            &file,
            st.size,
            PageOwner::SysvShm(st.id),
            |reason| DumpError::Task {
                pid: self.pid,
                what: what(),
                reason,
            },
        )?;
        Ok(())
    }

    fn semaphores(&self) -> Result<Vec<SemSet>, DumpError> {
        let (max, _) = sysipc::sem_info().map_err(self.failed("SysV semaphores".into()))?;
        let mut out = Vec::new();
        for idx in 0..=max {
            let Some(st) = sysipc::sem_stat_index(idx)
                .map_err(self.failed(format!("SysV semaphore index {idx}")))?
            else {
                continue;
            };
            let what = format!("SysV semaphore set {} (key {:#x})", st.id, st.perm.key);
            let values = sysipc::sem_getall(st.id).map_err(self.failed(what.clone()))?;
            let pids = (0..values.len() as i32)
                .map(|n| sysipc::sem_getpid(st.id, n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.failed(what))?;
            out.push(SemSet {
                id: st.id,
                perm: perm(&st.perm),
                values,
                pids,
            });
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    fn queues(&self, msgmax: u64) -> Result<Vec<MsgQueue>, DumpError> {
        let (max, _) = sysipc::msg_info().map_err(self.failed("SysV message queues".into()))?;
        let mut stats = Vec::new();
        for idx in 0..=max {
            if let Some(st) = sysipc::msg_stat_index(idx)
                .map_err(self.failed(format!("SysV message queue index {idx}")))?
            {
                stats.push(st);
            }
        }
        // MSG_COPY copies at most msgmax bytes: a message queued before msgmax was lowered
        // needs it raised for the time of the copy.
        let largest = stats.iter().map(|s| s.cbytes).max().unwrap_or(0);
        let _msgmax = if largest > msgmax {
            Some(TempSysctl::set(
                kernel("msgmax"),
                msgmax as i64,
                largest.min(i32::MAX as u64) as i64,
            )?)
        } else {
            None
        };
        let mut out = Vec::new();
        for st in stats {
            let what = || format!("SysV message queue {} (key {:#x})", st.id, st.perm.key);
            let mut messages = Vec::with_capacity(st.qnum.min(1 << 16) as usize);
            for i in 0..st.qnum {
                let (mtype, data) = sysipc::msg_copy(st.id, i, st.cbytes as usize)
                    .map_err(self.failed(format!("{}, message {i}", what())))?;
                messages.push(SysvMessage { mtype, data });
            }
            out.push(MsgQueue {
                id: st.id,
                perm: perm(&st.perm),
                qbytes: st.qbytes,
                messages,
            });
        }
        out.sort_by_key(|q| q.id);
        Ok(out)
    }

    fn posix_queues(&self) -> Result<Vec<PosixMqueue>, DumpError> {
        let mnt = sysipc::mqueue_fs().map_err(self.failed("POSIX message queues".into()))?;
        let mut dir = nix::dir::Dir::openat(
            &mnt,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DumpError::Task {
            pid: self.pid,
            what: "POSIX message queues".into(),
            reason: format!("open the mqueue filesystem: {e}"),
        })?;
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| DumpError::Task {
                pid: self.pid,
                what: "POSIX message queues".into(),
                reason: format!("list the mqueue filesystem: {e}"),
            })?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        names.iter().map(|n| self.posix_queue(&mnt, n)).collect()
    }

    fn posix_queue(&self, mnt: &OwnedFd, name: &str) -> Result<PosixMqueue, DumpError> {
        let what = || format!("POSIX message queue /{name}");
        let fail = |reason: String| DumpError::Task {
            pid: self.pid,
            what: what(),
            reason,
        };
        let fd = nix::fcntl::openat(
            mnt,
            name,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("open: {e}")))?;
        let mut file = File::from(fd);
        let mut status = String::new();
        file.read_to_string(&mut status)
            .map_err(|e| fail(format!("read its status: {e}")))?;
        let notify_pid = status
            .split_whitespace()
            .find_map(|w| w.strip_prefix("NOTIFY_PID:"))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if notify_pid != 0 {
            return Err(DumpError::Unsupported {
                pid: self.pid,
                resource: what(),
                reason: format!("process {notify_pid} is registered for mq_notify on it"),
            });
        }
        let md = file.metadata().map_err(|e| fail(format!("stat: {e}")))?;
        let attr = sysipc::mq_getattr(file.as_fd()).map_err(|e| fail(e.to_string()))?;
        let msgsize = usize::try_from(attr.msgsize)
            .ok()
            .filter(|&s| s <= sysipc::MAX_MESSAGE)
            .ok_or_else(|| fail(format!("message size {} out of range", attr.msgsize)))?;
        let messages = Self::drain_and_refill(&file, msgsize).map_err(|e| fail(e.to_string()))?;
        if messages.len() as i64 != attr.curmsgs {
            return Err(fail(format!(
                "{} messages read, {} queued",
                messages.len(),
                attr.curmsgs
            )));
        }
        Ok(PosixMqueue {
            name: name.to_string(),
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            maxmsg: attr.maxmsg,
            msgsize: attr.msgsize,
            messages,
        })
    }

    /// Receives every message (highest priority first, FIFO within one) and sends them all
    /// back in that order, which rebuilds the same queue. They are sent back before any error
    /// is returned: a failed receive still refills what was taken.
    fn drain_and_refill(file: &File, msgsize: usize) -> Result<Vec<PosixMessage>, SysError> {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; msgsize.max(1)];
        let received = loop {
            match sysipc::mq_receive(file.as_fd(), &mut buf) {
                Ok((n, prio)) => messages.push(PosixMessage {
                    prio,
                    data: buf[..n].to_vec(),
                }),
                Err(SysError::Syscall {
                    source: Errno::EAGAIN,
                    ..
                }) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let mut refill = Ok(());
        for m in &messages {
            if let Err(e) = sysipc::mq_send(file.as_fd(), &m.data, m.prio) {
                tracing::error!(
                    fd = file.as_raw_fd(),
                    "a POSIX message could not be put back: {e}"
                );
                refill = Err(e);
                break;
            }
        }
        received.and(refill).map(|()| messages)
    }
}
