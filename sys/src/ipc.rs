//! SysV IPC (shared memory, semaphores, message queues) and POSIX message queues, by raw
//! syscalls on the kernel's own 64-bit structures (`struct shmid64_ds` and friends of x86-64),
//! so that no libc layout or `semun` varargs convention is involved. (x86-64 always uses the
//! 64-bit structures; it refuses commands with the `IPC_64` flag that other ABIs pass.)
//!
//! Ids and keys are plain integers: an invalid id makes a call fail with `EINVAL`/`EIDRM`,
//! it cannot touch memory. The only mapping here is [`ShmAttachment`], which owns its address
//! range until dropped.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::{sys_err, Pid, Result, SysError};

pub const IPC_PRIVATE: i32 = 0;
pub const IPC_CREAT: i32 = 0o1000;
pub const IPC_EXCL: i32 = 0o2000;
pub const IPC_NOWAIT: i32 = 0o4000;
const IPC_RMID: i32 = 0;
const IPC_SET: i32 = 1;
const IPC_STAT: i32 = 2;
const SHM_LOCK: i32 = 11;
const SHM_INFO: i32 = 14;
const SHM_STAT_ANY: i32 = 15;
const SEM_INFO: i32 = 19;
const SEM_STAT_ANY: i32 = 20;
const GETPID: i32 = 11;
const GETALL: i32 = 13;
const SETALL: i32 = 17;
const MSG_INFO: i32 = 12;
const MSG_STAT_ANY: i32 = 13;
pub const MSG_NOERROR: i32 = 0o10000;
const MSG_COPY: i32 = 0o40000;
pub const SHM_RDONLY: i32 = 0o10000;
pub const SHM_REMAP: i32 = 0o40000;
pub const SHM_EXEC: i32 = 0o100000;
/// Largest message this module reads or writes (the kernel's own limit is `msgmax`, at most
/// `INT_MAX`; POSIX messages are at most 16 MiB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// `struct ipc64_perm` (x86-64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Ipc64Perm {
    key: i32,
    uid: u32,
    gid: u32,
    cuid: u32,
    cgid: u32,
    mode: u32,
    seq: u16,
    pad2: u16,
    unused1: u64,
    unused2: u64,
}

/// `struct shmid64_ds` (x86-64, asm-generic).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Shmid64Ds {
    perm: Ipc64Perm,
    segsz: u64,
    atime: i64,
    dtime: i64,
    ctime: i64,
    cpid: i32,
    lpid: i32,
    nattch: u64,
    unused4: u64,
    unused5: u64,
}

/// `struct semid64_ds` (x86-64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Semid64Ds {
    perm: Ipc64Perm,
    otime: i64,
    unused1: u64,
    ctime: i64,
    unused2: u64,
    nsems: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct msqid64_ds` (x86-64, asm-generic).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Msqid64Ds {
    perm: Ipc64Perm,
    stime: i64,
    rtime: i64,
    ctime: i64,
    cbytes: u64,
    qnum: u64,
    qbytes: u64,
    lspid: i32,
    lrpid: i32,
    unused4: u64,
    unused5: u64,
}

/// Owner, creator and mode of an IPC object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcPerm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

impl From<&Ipc64Perm> for IpcPerm {
    fn from(p: &Ipc64Perm) -> Self {
        IpcPerm {
            key: p.key,
            uid: p.uid,
            gid: p.gid,
            cuid: p.cuid,
            cgid: p.cgid,
            mode: p.mode,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmStat {
    pub id: i32,
    pub perm: IpcPerm,
    pub size: u64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemStat {
    pub id: i32,
    pub perm: IpcPerm,
    pub nsems: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgStat {
    pub id: i32,
    pub perm: IpcPerm,
    pub qnum: u64,
    pub qbytes: u64,
    pub cbytes: u64,
}

fn result(op: &'static str, r: libc::c_long) -> Result<i64> {
    Errno::result(r).map_err(sys_err(op))
}

// ---- shared memory ----

fn shmctl(op: &'static str, id: i32, cmd: i32, buf: &mut Shmid64Ds) -> Result<i64> {
    // SAFETY: `buf` is a valid, writable `struct shmid64_ds` of the kernel's x86-64 layout;
    // the kernel reads or writes exactly that struct (the *_INFO commands write a smaller one).
    let r = unsafe { libc::syscall(libc::SYS_shmctl, id, cmd, buf as *mut Shmid64Ds) };
    result(op, r)
}

/// `shmctl(SHM_INFO)`: the highest index in use in the caller's IPC namespace (-1 if none)
/// and the number of segments.
pub fn shm_info() -> Result<(i32, u64)> {
    // struct shm_info is an int and five unsigned longs: 48 bytes, less than Shmid64Ds.
    let mut buf = Shmid64Ds::default();
    let max = shmctl("shmctl(SHM_INFO)", 0, SHM_INFO, &mut buf)?;
    Ok((max as i32, buf.perm.key as u32 as u64))
}

/// `shmctl(SHM_STAT_ANY)` of index `index`: `None` if no segment has that index.
pub fn shm_stat_index(index: i32) -> Result<Option<ShmStat>> {
    let mut buf = Shmid64Ds::default();
    match shmctl("shmctl(SHM_STAT_ANY)", index, SHM_STAT_ANY, &mut buf) {
        Ok(id) => Ok(Some(shm_stat_of(id as i32, &buf))),
        Err(SysError::Syscall {
            source: Errno::EINVAL | Errno::EIDRM,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn shm_stat_of(id: i32, d: &Shmid64Ds) -> ShmStat {
    ShmStat {
        id,
        perm: IpcPerm::from(&d.perm),
        size: d.segsz,
        cpid: d.cpid,
        lpid: d.lpid,
        nattch: d.nattch,
    }
}

/// `shmctl(IPC_STAT)` of segment `id`.
pub fn shm_stat(id: i32) -> Result<ShmStat> {
    let mut buf = Shmid64Ds::default();
    shmctl("shmctl(IPC_STAT)", id, IPC_STAT, &mut buf)?;
    Ok(shm_stat_of(id, &buf))
}

/// `shmget(2)`.
pub fn shmget(key: i32, size: u64, flags: i32) -> Result<i32> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_shmget, key, size, flags) };
    result("shmget", r).map(|v| v as i32)
}

/// `shmctl(IPC_SET)`: owner and permission bits (the low 9 bits of `mode`).
pub fn shm_set_perm(id: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let mut buf = Shmid64Ds::default();
    buf.perm.uid = uid;
    buf.perm.gid = gid;
    buf.perm.mode = mode & 0o777;
    shmctl("shmctl(IPC_SET)", id, IPC_SET, &mut buf).map(drop)
}

/// `shmctl(IPC_RMID)`.
pub fn shm_remove(id: i32) -> Result<()> {
    let mut buf = Shmid64Ds::default();
    shmctl("shmctl(IPC_RMID)", id, IPC_RMID, &mut buf).map(drop)
}

/// `shmctl(SHM_LOCK)`.
pub fn shm_lock(id: i32) -> Result<()> {
    let mut buf = Shmid64Ds::default();
    shmctl("shmctl(SHM_LOCK)", id, SHM_LOCK, &mut buf).map(drop)
}

/// An attachment of a SysV segment in this process, at an address the kernel chose; detached
/// on drop. Its memory is reached only through copies ([`Self::read_at`], [`Self::write_at`]):
/// other processes may change it at any time, so no Rust reference to it is ever made.
#[derive(Debug)]
pub struct ShmAttachment {
    addr: u64,
    len: u64,
    writable: bool,
}

impl ShmAttachment {
    /// `shmat(id, NULL, SHM_RDONLY or 0)`; `size` is the segment's size.
    pub fn attach(id: i32, size: u64, writable: bool) -> Result<Self> {
        let flags = if writable { 0 } else { SHM_RDONLY };
        // SAFETY: with a null address the kernel picks a free range, so no existing mapping of
        // this program is replaced; the range is owned by the returned value until drop.
        let r = unsafe { libc::syscall(libc::SYS_shmat, id, 0usize, flags) };
        let addr = result("shmat", r)? as u64;
        Ok(ShmAttachment {
            addr,
            len: size.div_ceil(4096) * 4096,
            writable,
        })
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length of the mapping: the segment's size rounded up to pages.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: u64, len: usize) -> Result<()> {
        if off.checked_add(len as u64).is_none_or(|end| end > self.len) {
            return Err(SysError::Invalid {
                op: "shm attachment",
                reason: format!(
                    "{len} bytes at {off:#x} are outside the {} mapped",
                    self.len
                ),
            });
        }
        Ok(())
    }

    /// Copies bytes at `off` into `buf`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: [addr, addr + len) is mapped readable for as long as `self` lives (only
        // drop detaches it) and the range was checked to be inside it. The copy is raw:
        // concurrent writers in other processes can only make the bytes read unspecified.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.addr + off) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` to `off`; the attachment must be writable.
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        if !self.writable {
            return Err(SysError::Invalid {
                op: "shm attachment",
                reason: "attached read-only".into(),
            });
        }
        // SAFETY: [addr, addr + len) is mapped writable (attached without SHM_RDONLY) for as
        // long as `self` lives, and the range was checked to be inside it. No Rust reference
        // to the shared memory exists.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr + off) as *mut u8, data.len())
        };
        Ok(())
    }
}

impl Drop for ShmAttachment {
    fn drop(&mut self) {
        // SAFETY: `addr` is the attachment this value owns; nothing else refers to it.
        unsafe { libc::syscall(libc::SYS_shmdt, self.addr as usize) };
    }
}

// ---- semaphores ----

fn semctl(op: &'static str, id: i32, num: i32, cmd: i32, arg: usize) -> Result<i64> {
    // SAFETY: callers pass as `arg` either an integer or a pointer to a buffer of the size the
    // command writes or reads (checked at each call site).
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, num, cmd, arg) };
    result(op, r)
}

/// `semctl(SEM_INFO)`: the highest index in use (-1 if none) and the number of sets.
pub fn sem_info() -> Result<(i32, u64)> {
    // struct seminfo is ten ints.
    let mut buf = [0i32; 10];
    let max = semctl(
        "semctl(SEM_INFO)",
        0,
        0,
        SEM_INFO,
        buf.as_mut_ptr() as usize,
    )?;
    // semusz (the eighth int): the number of sets in use, when asked with SEM_INFO.
    Ok((max as i32, buf[7] as u32 as u64))
}

fn sem_stat_of(id: i32, d: &Semid64Ds) -> SemStat {
    SemStat {
        id,
        perm: IpcPerm::from(&d.perm),
        nsems: d.nsems,
    }
}

/// `semctl(SEM_STAT_ANY)` of index `index`: `None` if no set has that index.
pub fn sem_stat_index(index: i32) -> Result<Option<SemStat>> {
    let mut buf = Semid64Ds::default();
    let p = &mut buf as *mut Semid64Ds as usize;
    match semctl("semctl(SEM_STAT_ANY)", index, 0, SEM_STAT_ANY, p) {
        Ok(id) => Ok(Some(sem_stat_of(id as i32, &buf))),
        Err(SysError::Syscall {
            source: Errno::EINVAL | Errno::EIDRM,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `semctl(IPC_STAT)` of set `id`.
pub fn sem_stat(id: i32) -> Result<SemStat> {
    let mut buf = Semid64Ds::default();
    let p = &mut buf as *mut Semid64Ds as usize;
    semctl("semctl(IPC_STAT)", id, 0, IPC_STAT, p)?;
    Ok(sem_stat_of(id, &buf))
}

/// `semget(2)`.
pub fn semget(key: i32, nsems: i32, flags: i32) -> Result<i32> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_semget, key, nsems, flags) };
    result("semget", r).map(|v| v as i32)
}

/// `semctl(GETALL)`: the values of the set's `nsems` semaphores (asked with IPC_STAT first,
/// so the buffer is large enough whatever `nsems` says).
pub fn sem_getall(id: i32) -> Result<Vec<u16>> {
    let nsems = sem_stat(id)?.nsems as usize;
    let mut vals = vec![0u16; nsems];
    semctl("semctl(GETALL)", id, 0, GETALL, vals.as_mut_ptr() as usize)?;
    Ok(vals)
}

/// `semctl(SETALL)`: `values` must have one entry per semaphore of the set.
pub fn sem_setall(id: i32, values: &[u16]) -> Result<()> {
    let nsems = sem_stat(id)?.nsems as usize;
    if nsems != values.len() {
        return Err(SysError::Invalid {
            op: "semctl(SETALL)",
            reason: format!(
                "set {id} has {nsems} semaphores, {} values given",
                values.len()
            ),
        });
    }
    // The kernel reads exactly nsems values, checked equal to values.len() just above.
    semctl("semctl(SETALL)", id, 0, SETALL, values.as_ptr() as usize).map(drop)
}

/// `semctl(GETPID)` of semaphore `num`.
pub fn sem_getpid(id: i32, num: i32) -> Result<i32> {
    semctl("semctl(GETPID)", id, num, GETPID, 0).map(|v| v as i32)
}

/// `semctl(IPC_SET)`: owner and permission bits.
pub fn sem_set_perm(id: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let mut buf = Semid64Ds::default();
    buf.perm.uid = uid;
    buf.perm.gid = gid;
    buf.perm.mode = mode & 0o777;
    let p = &mut buf as *mut Semid64Ds as usize;
    semctl("semctl(IPC_SET)", id, 0, IPC_SET, p).map(drop)
}

/// `semctl(IPC_RMID)`.
pub fn sem_remove(id: i32) -> Result<()> {
    semctl("semctl(IPC_RMID)", id, 0, IPC_RMID, 0).map(drop)
}

/// `semop(2)` with IPC_NOWAIT added to every operation: (semaphore, op, flags).
pub fn semop_nowait(id: i32, ops: &[(u16, i16, i16)]) -> Result<()> {
    let bufs: Vec<libc::sembuf> = ops
        .iter()
        .map(|&(num, op, flg)| libc::sembuf {
            sem_num: num,
            sem_op: op,
            sem_flg: flg | IPC_NOWAIT as i16,
        })
        .collect();
    // SAFETY: the kernel reads bufs.len() `struct sembuf` from `bufs`, which lives until return.
    let r = unsafe { libc::syscall(libc::SYS_semop, id, bufs.as_ptr(), bufs.len()) };
    result("semop", r).map(drop)
}

// ---- message queues ----

fn msgctl(op: &'static str, id: i32, cmd: i32, buf: &mut Msqid64Ds) -> Result<i64> {
    // SAFETY: `buf` is a valid, writable `struct msqid64_ds`; MSG_INFO writes a smaller one.
    let r = unsafe { libc::syscall(libc::SYS_msgctl, id, cmd, buf as *mut Msqid64Ds) };
    result(op, r)
}

fn msg_stat_of(id: i32, d: &Msqid64Ds) -> MsgStat {
    MsgStat {
        id,
        perm: IpcPerm::from(&d.perm),
        qnum: d.qnum,
        qbytes: d.qbytes,
        cbytes: d.cbytes,
    }
}

/// `msgctl(MSG_INFO)`: the highest index in use (-1 if none) and the number of queues.
pub fn msg_info() -> Result<(i32, u64)> {
    // struct msginfo is seven ints and a short: 32 bytes.
    let mut buf = Msqid64Ds::default();
    let max = msgctl("msgctl(MSG_INFO)", 0, MSG_INFO, &mut buf)?;
    // msgpool: the number of queues in use, when asked with MSG_INFO (first int).
    Ok((max as i32, buf.perm.key as u32 as u64))
}

/// `msgctl(MSG_STAT_ANY)` of index `index`: `None` if no queue has that index.
pub fn msg_stat_index(index: i32) -> Result<Option<MsgStat>> {
    let mut buf = Msqid64Ds::default();
    match msgctl("msgctl(MSG_STAT_ANY)", index, MSG_STAT_ANY, &mut buf) {
        Ok(id) => Ok(Some(msg_stat_of(id as i32, &buf))),
        Err(SysError::Syscall {
            source: Errno::EINVAL | Errno::EIDRM,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `msgctl(IPC_STAT)` of queue `id`.
pub fn msg_stat(id: i32) -> Result<MsgStat> {
    let mut buf = Msqid64Ds::default();
    msgctl("msgctl(IPC_STAT)", id, IPC_STAT, &mut buf)?;
    Ok(msg_stat_of(id, &buf))
}

/// `msgget(2)`.
pub fn msgget(key: i32, flags: i32) -> Result<i32> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_msgget, key, flags) };
    result("msgget", r).map(|v| v as i32)
}

/// `msgctl(IPC_SET)`: owner, permission bits and byte limit.
pub fn msg_set(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<()> {
    let mut buf = Msqid64Ds::default();
    buf.perm.uid = uid;
    buf.perm.gid = gid;
    buf.perm.mode = mode & 0o777;
    buf.qbytes = qbytes;
    msgctl("msgctl(IPC_SET)", id, IPC_SET, &mut buf).map(drop)
}

/// `msgctl(IPC_RMID)`.
pub fn msg_remove(id: i32) -> Result<()> {
    let mut buf = Msqid64Ds::default();
    msgctl("msgctl(IPC_RMID)", id, IPC_RMID, &mut buf).map(drop)
}

/// `msgsnd(2)` of one message (`mtype` > 0).
pub fn msgsnd(id: i32, mtype: i64, data: &[u8], flags: i32) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + data.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(data);
    // SAFETY: `buf` is a `struct msgbuf` (long mtype, then data.len() bytes); the kernel reads
    // 8 + data.len() bytes from it.
    let r = unsafe { libc::syscall(libc::SYS_msgsnd, id, buf.as_ptr(), data.len(), flags) };
    result("msgsnd", r).map(drop)
}

fn msgrcv_raw(
    op: &'static str,
    id: i32,
    max: usize,
    mtype: i64,
    flags: i32,
) -> Result<(i64, Vec<u8>)> {
    let max = max.min(MAX_MESSAGE);
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: `buf` has room for a `struct msgbuf` with `max` bytes of text; the kernel writes
    // at most 8 + max bytes.
    let r = unsafe { libc::syscall(libc::SYS_msgrcv, id, buf.as_mut_ptr(), max, mtype, flags) };
    let n = result(op, r)? as usize;
    let t = i64::from_ne_bytes(buf[..8].try_into().unwrap_or([0; 8]));
    buf.truncate(8 + n.min(max));
    buf.drain(..8);
    Ok((t, buf))
}

/// `msgrcv(MSG_COPY)`: a copy of the message at position `index` of the queue, which stays
/// in the queue. `max` bounds the size (the kernel also caps it at the namespace's `msgmax`).
pub fn msg_copy(id: i32, index: u64, max: usize) -> Result<(i64, Vec<u8>)> {
    msgrcv_raw(
        "msgrcv(MSG_COPY)",
        id,
        max,
        index as i64,
        MSG_COPY | IPC_NOWAIT,
    )
}

/// `msgrcv(2)` (consuming), without waiting.
pub fn msgrcv_nowait(id: i32, max: usize, mtype: i64) -> Result<(i64, Vec<u8>)> {
    msgrcv_raw("msgrcv", id, max, mtype, IPC_NOWAIT)
}

// ---- POSIX message queues ----

/// `struct mq_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqAttr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
    reserved: [i64; 4],
}

impl MqAttr {
    pub fn new(maxmsg: i64, msgsize: i64) -> Self {
        MqAttr {
            maxmsg,
            msgsize,
            ..Default::default()
        }
    }
}

fn mq_name(name: &str) -> Result<CString> {
    // The syscall takes the name without glibc's leading slash.
    CString::new(name.trim_start_matches('/')).map_err(|_| SysError::Invalid {
        op: "mq_open",
        reason: format!("queue name {name:?} holds a NUL byte"),
    })
}

/// `mq_open(2)` (the syscall: `name` without a leading `/`, or with it, both are accepted).
pub fn mq_open(name: &str, oflag: i32, mode: u32, attr: Option<&MqAttr>) -> Result<OwnedFd> {
    let c = mq_name(name)?;
    let a = attr.map_or(std::ptr::null(), |a| a as *const MqAttr);
    // SAFETY: `c` is a NUL-terminated string and `a` null or a valid `struct mq_attr`, both
    // living until the call returns; the result is a new descriptor owned by nobody else.
    let r = unsafe { libc::syscall(libc::SYS_mq_open, c.as_ptr(), oflag, mode, a) };
    let fd = result("mq_open", r)?;
    // SAFETY: `fd` is a freshly returned descriptor owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mq_unlink(2)`.
pub fn mq_unlink(name: &str) -> Result<()> {
    let c = mq_name(name)?;
    // SAFETY: `c` is a NUL-terminated string living until the call returns.
    let r = unsafe { libc::syscall(libc::SYS_mq_unlink, c.as_ptr()) };
    result("mq_unlink", r).map(drop)
}

/// `mq_getattr(3)` of a queue descriptor (also one opened through an mqueue mount).
pub fn mq_getattr(fd: impl AsFd) -> Result<MqAttr> {
    let mut a = MqAttr::default();
    // SAFETY: the kernel writes one `struct mq_attr` into `a`; no new attributes are given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd.as_fd().as_raw_fd(),
            std::ptr::null::<MqAttr>(),
            &mut a as *mut MqAttr,
        )
    };
    result("mq_getattr", r)?;
    Ok(a)
}

/// `mq_timedsend(2)` without a timeout (the descriptor decides whether it blocks).
pub fn mq_send(fd: impl AsFd, data: &[u8], prio: u32) -> Result<()> {
    // SAFETY: the kernel reads data.len() bytes from `data`; no timeout pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedsend,
            fd.as_fd().as_raw_fd(),
            data.as_ptr(),
            data.len(),
            prio,
            std::ptr::null::<libc::timespec>(),
        )
    };
    result("mq_send", r).map(drop)
}

/// `mq_timedreceive(2)` without a timeout into `buf` (at least the queue's msgsize):
/// (length, priority).
pub fn mq_receive(fd: impl AsFd, buf: &mut [u8]) -> Result<(usize, u32)> {
    let mut prio: u32 = 0;
    // SAFETY: the kernel writes at most buf.len() bytes into `buf` and one u32 into `prio`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedreceive,
            fd.as_fd().as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut prio as *mut u32,
            std::ptr::null::<libc::timespec>(),
        )
    };
    Ok((result("mq_receive", r)? as usize, prio))
}

/// A detached mount of the calling thread's IPC namespace's mqueue filesystem
/// (`fsopen("mqueue")` + `fsmount`), attached nowhere: it lists the namespace's POSIX queues
/// without touching any mount namespace, and goes away when the descriptor is closed.
pub fn mqueue_fs() -> Result<OwnedFd> {
    const FSCONFIG_CMD_CREATE: u32 = 6;
    // SAFETY: NUL-terminated literal; the result is a new descriptor owned by us alone.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, c"mqueue".as_ptr(), 0u32) };
    // SAFETY: freshly returned descriptor.
    let fsfd = unsafe { OwnedFd::from_raw_fd(result("fsopen(mqueue)", r)? as i32) };
    // SAFETY: integer arguments and null key/value, as FSCONFIG_CMD_CREATE wants.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    result("fsconfig(FSCONFIG_CMD_CREATE)", r)?;
    // SAFETY: integer arguments (FSMOUNT_CLOEXEC); the result is a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fsfd.as_raw_fd(), 1u32, 0u32) };
    let m = result("fsmount(mqueue)", r)?;
    // SAFETY: freshly returned descriptor owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

/// `kcmp(KCMP_SYSVSEM)`: whether two tasks have the same SysV semaphore undo list (two tasks
/// that never made a `SEM_UNDO` operation both have none, which compares equal).
pub fn kcmp_same_sysvsem(pid1: Pid, pid2: Pid) -> Result<bool> {
    const KCMP_SYSVSEM: i32 = 6;
    // SAFETY: integer-only syscall.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            KCMP_SYSVSEM,
            0,
            0,
        )
    };
    Ok(result("kcmp(KCMP_SYSVSEM)", r)? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<Ipc64Perm>(), 48);
        assert_eq!(std::mem::size_of::<Shmid64Ds>(), 112);
        assert_eq!(std::mem::size_of::<Semid64Ds>(), 104);
        assert_eq!(std::mem::size_of::<Msqid64Ds>(), 120);
        assert_eq!(std::mem::size_of::<MqAttr>(), 64);
    }
}
