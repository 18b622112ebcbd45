//! Recreating an IPC namespace's contents inside a new, empty IPC namespace: every SysV
//! object with the same id (the wanted id is written to `kernel.{shm,sem,msg}_next_id` before
//! each creation, as CRIU does), key, creator, owner and mode; segment contents from the page
//! store; semaphore values; messages in order with their types; POSIX message queues with
//! their attributes, owner, mode and messages in order; then the namespace's sysctls.
//!
//! [`restore_ipc_ns`] runs in a single-threaded process that is in the new namespace (the
//! VE's init, before it forks): it changes its effective ids for a moment to create each object
//! as its creator (`cuid`/`cgid` count in permission checks and cannot be set otherwise).
//! Limits that the creation needs beyond the dumped sysctls (a queue's `qbytes` above
//! `msgmnb`, ...; without `CAP_SYS_RESOURCE` nothing may exceed them) are raised while objects
//! are created, and every sysctl is set to its dumped value at the end.
//!
//! Segments that were `IPC_RMID`ed while attached are created as `IPC_PRIVATE` segments (their
//! key was already reset to `IPC_PRIVATE` by the removal) and must stay until the restored
//! processes have attached them again: [`finish_ipc_ns`] removes them then.
//!
//! Not restored: semaphore undo adjustments (see `cpt::ipc`), `sempid`, the pids and times of
//! last operations, and `shm_atime`/`shm_dtime`; none can be set by any interface.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use images_format::ipc::IpcImage;
use images_format::mm::{PageOwner, PagemapEntry};
use images_format::PAGE_SIZE;
use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use sys::ipc as sysipc;
use sys::SysError;

use crate::memory::ChunkCache;
use crate::RestoreError;

const PAGE: u64 = PAGE_SIZE as u64;
/// The kernel's limits on semaphores per set and POSIX queue sizes (SEMMSL_MAX is 32000,
/// HARD_MSGMAX 65536, HARD_MSGSIZEMAX 16 MiB).
const SEMMSL_MAX: usize = 32000;
const MQ_HARD_MSGMAX: i64 = 65536;
const MQ_HARD_MSGSIZEMAX: i64 = 16 << 20;

fn bad(what: impl std::fmt::Display) -> RestoreError {
    RestoreError::Invalid(format!("IPC namespace: {what}"))
}

fn failed(what: String) -> impl FnOnce(SysError) -> RestoreError {
    move |e| RestoreError::Invalid(format!("IPC namespace: cannot restore {what}: {e}"))
}

/// Checks the record and its pagemap entries before anything is created: ids, keys, sizes,
/// message types and sizes, queue names, and that every `SysvShm` page lies in its segment.
pub fn validate(img: &IpcImage, entries: &[PagemapEntry]) -> Result<(), RestoreError> {
    let mut sizes = HashMap::new();
    let mut keys = HashSet::new();
    for s in &img.shm {
        if s.id < 0 || sizes.insert(s.id, s.size).is_some() {
            return Err(bad(format!(
                "shared memory id {} is invalid or repeated",
                s.id
            )));
        }
        if s.perm.key != 0 && !keys.insert(s.perm.key) {
            return Err(bad(format!(
                "shared memory key {:#x} is repeated",
                s.perm.key
            )));
        }
        if s.size == 0 || s.size > 1 << 47 {
            return Err(bad(format!(
                "shared memory segment {} has size {}",
                s.id, s.size
            )));
        }
    }
    for e in entries {
        let PageOwner::SysvShm(id) = e.owner else {
            continue;
        };
        let end = e.addr.saturating_add(e.nr_pages as u64 * PAGE);
        let ok = sizes.get(&id).is_some_and(|&size| {
            e.addr % PAGE == 0 && e.nr_pages > 0 && end <= size.div_ceil(PAGE) * PAGE
        });
        if !ok {
            return Err(bad(format!(
                "pages at {:#x} x{} of shared memory segment {id} lie outside any segment",
                e.addr, e.nr_pages
            )));
        }
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for s in &img.sem {
        if s.id < 0 || !ids.insert(s.id) || (s.perm.key != 0 && !keys.insert(s.perm.key)) {
            return Err(bad(format!(
                "semaphore set {} has a repeated id or key",
                s.id
            )));
        }
        if s.values.is_empty() || s.values.len() > SEMMSL_MAX || s.values.iter().any(|&v| v > 32767)
        {
            return Err(bad(format!(
                "semaphore set {} has {} semaphores or a value above 32767",
                s.id,
                s.values.len()
            )));
        }
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for q in &img.msg {
        if q.id < 0 || !ids.insert(q.id) || (q.perm.key != 0 && !keys.insert(q.perm.key)) {
            return Err(bad(format!(
                "message queue {} has a repeated id or key",
                q.id
            )));
        }
        if let Some(m) = q
            .messages
            .iter()
            .find(|m| m.mtype <= 0 || m.data.len() > sysipc::MAX_MESSAGE)
        {
            return Err(bad(format!(
                "message queue {}: a message of type {} and {} bytes",
                q.id,
                m.mtype,
                m.data.len()
            )));
        }
    }
    let mut names = HashSet::new();
    for q in &img.mqueues {
        if q.name.is_empty()
            || q.name.len() > 255
            || q.name.contains('/')
            || q.name.contains('\0')
            || q.name == "."
            || q.name == ".."
            || !names.insert(q.name.as_str())
        {
            return Err(bad(format!("POSIX message queue name {:?}", q.name)));
        }
        if !(1..=MQ_HARD_MSGMAX).contains(&q.maxmsg)
            || !(1..=MQ_HARD_MSGSIZEMAX).contains(&q.msgsize)
            || q.messages.len() as i64 > q.maxmsg
            || q.messages.iter().any(|m| m.data.len() as i64 > q.msgsize)
        {
            return Err(bad(format!(
                "POSIX message queue /{}: {} messages for maxmsg {} msgsize {}",
                q.name,
                q.messages.len(),
                q.maxmsg,
                q.msgsize
            )));
        }
    }
    Ok(())
}

fn kernel(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys/kernel").join(name)
}

fn mqueue(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys/fs/mqueue").join(name)
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), RestoreError> {
    std::fs::write(path, value).map_err(|e| {
        RestoreError::Invalid(format!(
            "IPC namespace: cannot write {value:?} to {}: {e}",
            path.display()
        ))
    })
}

fn read_sysctl(path: &Path) -> Result<String, RestoreError> {
    std::fs::read_to_string(path).map_err(|e| {
        RestoreError::Invalid(format!(
            "IPC namespace: cannot read {}: {e}",
            path.display()
        ))
    })
}

/// Writes `value` unless the sysctl already holds it.
fn set_sysctl(path: &Path, value: &str) -> Result<(), RestoreError> {
    let cur = read_sysctl(path)?;
    if cur.split_whitespace().eq(value.split_whitespace()) {
        return Ok(());
    }
    write_sysctl(path, value)
}

/// Runs `f` with effective ids `uid`/`gid`, so that an object created by `f` records them as
/// its creator. The process must be single-threaded (set*id act on the calling thread).
fn as_creator<T>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> Result<T, SysError>,
) -> Result<T, RestoreError> {
    let ids = |e: Errno| RestoreError::Invalid(format!("IPC namespace: change effective ids: {e}"));
    let u = nix::unistd::getresuid().map_err(ids)?;
    let g = nix::unistd::getresgid().map_err(ids)?;
    if u.effective.as_raw() == uid && g.effective.as_raw() == gid {
        return f().map_err(|e| RestoreError::Invalid(e.to_string()));
    }
    nix::unistd::setresgid(g.real, Gid::from_raw(gid), g.saved).map_err(ids)?;
    if let Err(e) = nix::unistd::setresuid(u.real, Uid::from_raw(uid), u.saved) {
        let _ = nix::unistd::setresgid(g.real, g.effective, g.saved);
        return Err(ids(e));
    }
    let r = f();
    // Back to root (the real and saved ids are still 0), which brings the capabilities back.
    nix::unistd::setresuid(u.real, u.effective, u.saved).map_err(ids)?;
    nix::unistd::setresgid(g.real, g.effective, g.saved).map_err(ids)?;
    r.map_err(|e| RestoreError::Invalid(e.to_string()))
}

/// Refuses a namespace that holds anything: this must be the VE's fresh one, never the host's.
fn check_empty() -> Result<(), RestoreError> {
    let (_, shm) = sysipc::shm_info().map_err(failed("shared memory (SHM_INFO)".into()))?;
    let (_, sem) = sysipc::sem_info().map_err(failed("semaphores (SEM_INFO)".into()))?;
    let (_, msg) = sysipc::msg_info().map_err(failed("message queues (MSG_INFO)".into()))?;
    let mnt = sysipc::mqueue_fs().map_err(failed("POSIX message queues".into()))?;
    let mut dir = nix::dir::Dir::openat(
        &mnt,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .map_err(|e| bad(format!("cannot list POSIX message queues: {e}")))?;
    let mq = dir
        .iter()
        .flatten()
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .count();
    if shm + sem + msg + mq as u64 != 0 {
        return Err(bad(format!(
            "the IPC namespace to restore into is not empty ({shm} segments, {sem} semaphore \
             sets, {msg} message queues, {mq} POSIX queues): restore runs in a new one"
        )));
    }
    Ok(())
}

/// Raises the limits the objects need beyond the dumped sysctls, for the time of creation.
fn raise_limits(img: &IpcImage) -> Result<(), RestoreError> {
    let s = &img.sysctls;
    let pages: u64 = img.shm.iter().map(|x| x.size.div_ceil(PAGE)).sum();
    let max = |a: u64, b: u64| a.max(b).to_string();
    let cur = |p: &Path| -> Result<u64, RestoreError> {
        Ok(read_sysctl(p)?
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    };
    let biggest_seg = img.shm.iter().map(|x| x.size).max().unwrap_or(0);
    let count = |n: usize| n as u64;
    for (name, need, dumped) in [
        ("shmmax", biggest_seg, s.shmmax),
        ("shmall", pages, s.shmall),
        ("shmmni", count(img.shm.len()), s.shmmni),
        (
            "msgmax",
            img.msg
                .iter()
                .flat_map(|q| &q.messages)
                .map(|m| m.data.len() as u64)
                .max()
                .unwrap_or(0),
            s.msgmax,
        ),
        (
            "msgmnb",
            img.msg
                .iter()
                .map(|q| {
                    q.qbytes
                        .max(q.messages.iter().map(|m| m.data.len() as u64).sum())
                })
                .max()
                .unwrap_or(0),
            s.msgmnb,
        ),
        ("msgmni", count(img.msg.len()), s.msgmni),
    ] {
        let p = kernel(name);
        let here = cur(&p)?;
        if need > here || dumped > here {
            write_sysctl(&p, &max(need, dumped.max(here)))?;
        }
    }
    let nsems: Vec<u64> = img.sem.iter().map(|x| x.values.len() as u64).collect();
    let sem = [
        s.sem[0].max(nsems.iter().copied().max().unwrap_or(0)),
        s.sem[1].max(nsems.iter().sum()),
        s.sem[2],
        s.sem[3].max(count(img.sem.len())),
    ];
    set_sysctl(
        &kernel("sem"),
        &sem.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
    )?;
    for (name, need, dumped) in [
        ("queues_max", count(img.mqueues.len()), s.mq_queues_max),
        (
            "msg_max",
            img.mqueues
                .iter()
                .map(|q| q.maxmsg as u64)
                .max()
                .unwrap_or(0),
            s.mq_msg_max,
        ),
        (
            "msgsize_max",
            img.mqueues
                .iter()
                .map(|q| q.msgsize as u64)
                .max()
                .unwrap_or(0),
            s.mq_msgsize_max,
        ),
    ] {
        let p = mqueue(name);
        let here = cur(&p)?;
        if need > here || dumped > here {
            write_sysctl(&p, &max(need, dumped.max(here)))?;
        }
    }
    Ok(())
}

/// Every sysctl to its dumped value; `shm_rmid_forced` last, once no segment is at risk.
fn final_sysctls(img: &IpcImage) -> Result<(), RestoreError> {
    let s = &img.sysctls;
    for (name, v) in [
        ("shmmax", s.shmmax),
        ("shmall", s.shmall),
        ("shmmni", s.shmmni),
        ("msgmax", s.msgmax),
        ("msgmnb", s.msgmnb),
        ("msgmni", s.msgmni),
    ] {
        set_sysctl(&kernel(name), &v.to_string())?;
    }
    set_sysctl(
        &kernel("sem"),
        &s.sem
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    )?;
    for (name, v) in [
        ("queues_max", s.mq_queues_max),
        ("msg_max", s.mq_msg_max),
        ("msgsize_max", s.mq_msgsize_max),
        ("msg_default", s.mq_msg_default),
        ("msgsize_default", s.mq_msgsize_default),
    ] {
        set_sysctl(&mqueue(name), &v.to_string())?;
    }
    for (name, v) in [
        ("shm_next_id", s.shm_next_id),
        ("msg_next_id", s.msg_next_id),
        ("sem_next_id", s.sem_next_id),
    ] {
        set_sysctl(&kernel(name), &v.to_string())?;
    }
    set_sysctl(&kernel("shm_rmid_forced"), &s.shm_rmid_forced.to_string())
}

/// Checks that the kernel gave the id asked through `*_next_id`.
fn same_id(what: &str, want: i32, got: i32) -> Result<(), RestoreError> {
    if want != got {
        return Err(bad(format!(
            "{what} {want} was created with id {got} (is the namespace fresh?)"
        )));
    }
    Ok(())
}

/// Recreates the contents of `img` in the calling process's IPC namespace, which must be new
/// and empty (checked). `entries` is the image's pagemap (only `SysvShm` entries are used) and
/// `chunks` reads its page store. Single-threaded callers only (see [`as_creator`]).
pub fn restore_ipc_ns(
    img: &IpcImage,
    entries: &[PagemapEntry],
    chunks: &mut ChunkCache<'_>,
) -> Result<(), RestoreError> {
    validate(img, entries)?;
    check_empty()?;
    raise_limits(img)?;

    for s in &img.shm {
        let what = format!("shared memory segment {} (key {:#x})", s.id, s.perm.key);
        write_sysctl(&kernel("shm_next_id"), &s.id.to_string())?;
        let id = as_creator(s.perm.cuid, s.perm.cgid, || {
            sysipc::shmget(
                s.perm.key,
                s.size,
                sysipc::IPC_CREAT | sysipc::IPC_EXCL | (s.perm.mode & 0o777) as i32,
            )
        })
        .map_err(|e| bad(format!("cannot create {what}: {e}")))?;
        same_id("shared memory segment", s.id, id)?;
        let mine: Vec<&PagemapEntry> = entries
            .iter()
            .filter(|e| e.owner == PageOwner::SysvShm(s.id))
            .collect();
        if !mine.is_empty() {
            let att =
                sysipc::ShmAttachment::attach(s.id, s.size, true).map_err(failed(what.clone()))?;
            for e in mine {
                let chunk = chunks.get(e.loc.chunk)?;
                let start = e.loc.offset as usize;
                let data = chunk
                    .get(start..start + e.nr_pages as usize * PAGE_SIZE)
                    .ok_or_else(|| {
                        bad(format!(
                            "pages of {what} at {:#x} point past the end of chunk {}",
                            e.addr, e.loc.chunk
                        ))
                    })?;
                att.write_at(e.addr, data).map_err(failed(what.clone()))?;
            }
        }
        sysipc::shm_set_perm(s.id, s.perm.uid, s.perm.gid, s.perm.mode)
            .map_err(failed(what.clone()))?;
        if s.locked() {
            sysipc::shm_lock(s.id).map_err(failed(what))?;
        }
    }

    for s in &img.sem {
        let what = format!("semaphore set {} (key {:#x})", s.id, s.perm.key);
        write_sysctl(&kernel("sem_next_id"), &s.id.to_string())?;
        let id = as_creator(s.perm.cuid, s.perm.cgid, || {
            sysipc::semget(
                s.perm.key,
                s.values.len() as i32,
                sysipc::IPC_CREAT | sysipc::IPC_EXCL | (s.perm.mode & 0o777) as i32,
            )
        })
        .map_err(|e| bad(format!("cannot create {what}: {e}")))?;
        same_id("semaphore set", s.id, id)?;
        sysipc::sem_setall(s.id, &s.values).map_err(failed(what.clone()))?;
        sysipc::sem_set_perm(s.id, s.perm.uid, s.perm.gid, s.perm.mode).map_err(failed(what))?;
    }

    for q in &img.msg {
        let what = format!("message queue {} (key {:#x})", q.id, q.perm.key);
        write_sysctl(&kernel("msg_next_id"), &q.id.to_string())?;
        let id = as_creator(q.perm.cuid, q.perm.cgid, || {
            sysipc::msgget(
                q.perm.key,
                sysipc::IPC_CREAT | sysipc::IPC_EXCL | (q.perm.mode & 0o777) as i32,
            )
        })
        .map_err(|e| bad(format!("cannot create {what}: {e}")))?;
        same_id("message queue", q.id, id)?;
        let total: u64 = q.messages.iter().map(|m| m.data.len() as u64).sum();
        let room = q.qbytes.max(total);
        sysipc::msg_set(q.id, q.perm.uid, q.perm.gid, q.perm.mode, room)
            .map_err(failed(what.clone()))?;
        for (i, m) in q.messages.iter().enumerate() {
            sysipc::msgsnd(q.id, m.mtype, &m.data, sysipc::IPC_NOWAIT)
                .map_err(failed(format!("{what}, message {i}")))?;
        }
        if room != q.qbytes {
            sysipc::msg_set(q.id, q.perm.uid, q.perm.gid, q.perm.mode, q.qbytes)
                .map_err(failed(what))?;
        }
    }

    for q in &img.mqueues {
        let what = format!("POSIX message queue /{}", q.name);
        let attr = sysipc::MqAttr::new(q.maxmsg, q.msgsize);
        let fd = sysipc::mq_open(
            &q.name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0o600,
            Some(&attr),
        )
        .map_err(failed(what.clone()))?;
        let sys_err = |op: &'static str| move |source| SysError::Syscall { op, source };
        for m in &q.messages {
            sysipc::mq_send(fd.as_fd(), &m.data, m.prio).map_err(failed(what.clone()))?;
        }
        nix::unistd::fchown(&fd, Some(Uid::from_raw(q.uid)), Some(Gid::from_raw(q.gid)))
            .map_err(sys_err("fchown"))
            .map_err(failed(what.clone()))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(q.mode & 0o7777))
            .map_err(sys_err("fchmod"))
            .map_err(failed(what))?;
    }

    final_sysctls(img)
}

/// Removes (`IPC_RMID`) the segments that were removed while attached when dumped. Call it in
/// the VE's IPC namespace once every restored process has attached its segments (after the
/// memory of every process is restored, before the tree is released): a segment left
/// unattached is destroyed at once. See [`finish_ipc_ns_of`] for a caller outside it.
pub fn finish_ipc_ns(img: &IpcImage) -> Result<(), RestoreError> {
    for s in img.shm.iter().filter(|s| s.removed()) {
        sysipc::shm_remove(s.id).map_err(failed(format!(
            "removal of shared memory segment {} (it was IPC_RMIDed while attached)",
            s.id
        )))?;
    }
    Ok(())
}

/// [`finish_ipc_ns`] in the IPC namespace of task `pid` (e.g. the restored VE's init), from a
/// short-lived thread that joins it: usable by the multi-threaded restorer.
pub fn finish_ipc_ns_of(pid: i32, img: &IpcImage) -> Result<(), RestoreError> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = std::fs::File::open(&path).map_err(|e| bad(format!("cannot open {path}: {e}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC)
                    .map_err(|e| bad(format!("cannot join {path}: {e}")))?;
                finish_ipc_ns(img)
            })
            .join()
            .unwrap_or_else(|_| Err(bad("the IPC finishing thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use images_format::ipc::{IpcPerm, MsgQueue, PosixMqueue, ShmSegment, SysvMessage};
    use images_format::pagestore::PageLoc;

    fn seg(id: i32, key: i32, size: u64) -> ShmSegment {
        ShmSegment {
            id,
            perm: IpcPerm {
                key,
                ..Default::default()
            },
            size,
            nattch: 0,
            cpid: 0,
            lpid: 0,
        }
    }

    fn entry(id: i32, addr: u64, nr_pages: u32) -> PagemapEntry {
        PagemapEntry {
            owner: PageOwner::SysvShm(id),
            addr,
            nr_pages,
            loc: PageLoc {
                chunk: 0,
                offset: 0,
            },
        }
    }

    fn refused(img: &IpcImage, entries: &[PagemapEntry], what: &str) {
        let e = validate(img, entries).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }

    #[test]
    fn validate_accepts_a_sane_record_and_refuses_bad_ones() {
        let mut img = IpcImage {
            shm: vec![seg(1, 5, 3 * PAGE + 1), seg(2, 0, PAGE), seg(3, 0, PAGE)],
            ..Default::default()
        };
        validate(&img, &[entry(1, 0, 4), entry(2, 0, 1)]).unwrap();
        refused(&img, &[entry(1, PAGE, 4)], "outside any segment");
        refused(&img, &[entry(9, 0, 1)], "outside any segment");
        refused(&img, &[entry(1, 1, 1)], "outside any segment");
        img.shm.push(seg(1, 0, PAGE));
        refused(&img, &[], "repeated");
        img.shm.pop();
        img.shm.push(seg(4, 5, PAGE));
        refused(&img, &[], "key 0x5 is repeated");
        img.shm.pop();
        img.msg.push(MsgQueue {
            id: 1,
            perm: IpcPerm::default(),
            qbytes: 10,
            messages: vec![SysvMessage {
                mtype: 0,
                data: vec![],
            }],
        });
        refused(&img, &[], "type 0");
        img.msg.clear();
        for name in ["", "a/b", ".."] {
            img.mqueues = vec![PosixMqueue {
                name: name.into(),
                uid: 0,
                gid: 0,
                mode: 0o600,
                maxmsg: 1,
                msgsize: 1,
                messages: vec![],
            }];
            refused(&img, &[], "POSIX message queue name");
        }
        img.mqueues[0].name = "q".into();
        img.mqueues[0].maxmsg = 0;
        refused(&img, &[], "maxmsg 0");
    }
}
