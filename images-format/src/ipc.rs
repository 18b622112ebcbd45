//! Records of an IPC namespace's contents: SysV shared memory segments, semaphore sets and
//! message queues, POSIX message queues, and the namespace's IPC sysctls.
//!
//! Shared memory contents are not in this record: their non-zero pages are in the page store,
//! under [`PageOwner::SysvShm`](crate::mm::PageOwner::SysvShm) entries of the pagemap (offsets
//! into the segment), like shared anonymous memory. Messages are small by construction (a SysV
//! queue holds at most `msgmnb` bytes, a POSIX queue `maxmsg * msgsize`) and stay here.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

/// `SHM_DEST` in `IpcPerm::mode`: the segment was `IPC_RMID`ed while attached.
pub const SHM_DEST: u32 = 0o1000;
/// `SHM_LOCKED` in `IpcPerm::mode`: the segment is locked in memory (`SHM_LOCK`).
pub const SHM_LOCKED: u32 = 0o2000;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct IpcImage {
    pub sysctls: IpcSysctls,
    /// Sorted by id.
    pub shm: Vec<ShmSegment>,
    pub sem: Vec<SemSet>,
    pub msg: Vec<MsgQueue>,
    /// Sorted by name.
    pub mqueues: Vec<PosixMqueue>,
}

impl Image for IpcImage {
    const KIND: ImageKind = ImageKind::Ipc;
}

/// The per-namespace IPC sysctls (`/proc/sys/kernel/*`, `/proc/sys/fs/mqueue/*`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IpcSysctls {
    pub shmmax: u64,
    pub shmall: u64,
    pub shmmni: u64,
    pub shm_rmid_forced: u64,
    pub msgmax: u64,
    pub msgmnb: u64,
    pub msgmni: u64,
    /// `kernel.sem`: semmsl, semmns, semopm, semmni.
    pub sem: [u64; 4],
    /// `kernel.{shm,msg,sem}_next_id`: -1 unless someone (a checkpointer inside the VE) set them.
    pub shm_next_id: i64,
    pub msg_next_id: i64,
    pub sem_next_id: i64,
    pub mq_queues_max: u64,
    pub mq_msg_max: u64,
    pub mq_msgsize_max: u64,
    pub mq_msg_default: u64,
    pub mq_msgsize_default: u64,
}

/// `struct ipc64_perm` minus what cannot be set back (the sequence number is part of the id).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcPerm {
    /// `IPC_PRIVATE` (0) for private objects and for segments removed while attached.
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    /// The creator's ids: they count in permission checks, so the restore creates the object
    /// with these effective ids.
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits, plus [`SHM_DEST`] and [`SHM_LOCKED`] for segments.
    pub mode: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShmSegment {
    pub id: i32,
    pub perm: IpcPerm,
    /// Size in bytes as asked at creation (not rounded to pages).
    pub size: u64,
    /// Attachments when dumped (informational: restored attachments count themselves).
    pub nattch: u64,
    pub cpid: i32,
    pub lpid: i32,
}

impl ShmSegment {
    /// `IPC_RMID`ed while attached: it lives until its last detach.
    pub fn removed(&self) -> bool {
        self.perm.mode & SHM_DEST != 0
    }

    pub fn locked(&self) -> bool {
        self.perm.mode & SHM_LOCKED != 0
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SemSet {
    pub id: i32,
    pub perm: IpcPerm,
    /// `semval` of every semaphore (`GETALL`).
    pub values: Vec<u16>,
    /// `sempid` of every semaphore (`GETPID`); informational, the kernel offers no way to set it.
    pub pids: Vec<i32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MsgQueue {
    pub id: i32,
    pub perm: IpcPerm,
    pub qbytes: u64,
    /// Queue order.
    pub messages: Vec<SysvMessage>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SysvMessage {
    pub mtype: i64,
    pub data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PosixMqueue {
    /// Name without the leading `/`.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    /// Receive order (highest priority first, FIFO within a priority).
    pub messages: Vec<PosixMessage>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PosixMessage {
    pub prio: u32,
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, FormatError};
    use std::path::Path;

    fn sample() -> IpcImage {
        let perm = IpcPerm {
            key: 0x1234,
            uid: 1,
            gid: 2,
            cuid: 3,
            cgid: 4,
            mode: 0o640 | SHM_DEST,
        };
        IpcImage {
            sysctls: IpcSysctls {
                shmmax: u64::MAX >> 8,
                sem: [32000, 1024000000, 500, 32000],
                shm_next_id: -1,
                ..Default::default()
            },
            shm: vec![ShmSegment {
                id: 98309,
                perm,
                size: 12388,
                nattch: 1,
                cpid: 10,
                lpid: 11,
            }],
            sem: vec![SemSet {
                id: 0,
                perm,
                values: vec![0, 1, 65535],
                pids: vec![0, 5, 6],
            }],
            msg: vec![MsgQueue {
                id: 42,
                perm,
                qbytes: 30000,
                messages: vec![
                    SysvMessage {
                        mtype: 5,
                        data: b"hello".to_vec(),
                    },
                    SysvMessage {
                        mtype: i64::MAX,
                        data: vec![],
                    },
                ],
            }],
            mqueues: vec![PosixMqueue {
                name: "q".into(),
                uid: 0,
                gid: 0,
                mode: 0o600,
                maxmsg: 10,
                msgsize: 8192,
                messages: vec![PosixMessage {
                    prio: 31,
                    data: vec![0; 100],
                }],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let img = sample();
        assert!(img.shm[0].removed());
        assert!(!img.shm[0].locked());
        let b = encode(&img).unwrap();
        assert_eq!(decode::<IpcImage>(&b, Path::new("ipc")).unwrap(), img);
        let empty = IpcImage::default();
        let b = encode(&empty).unwrap();
        assert_eq!(decode::<IpcImage>(&b, Path::new("ipc")).unwrap(), empty);
    }

    #[test]
    fn truncated_and_damaged_records_are_errors() {
        let b = encode(&sample()).unwrap();
        for cut in 0..b.len() {
            let e = decode::<IpcImage>(&b[..cut], Path::new("/img/ipc")).unwrap_err();
            assert!(e.to_string().contains("/img/ipc"), "{e}");
        }
        // A message length far beyond the payload: refused, not allocated.
        let mut huge = b.clone();
        let pos = b.windows(5).position(|w| w == b"hello").unwrap() - 1;
        huge[pos] = 0xff;
        huge.splice(pos + 1..pos + 1, [0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode::<IpcImage>(&huge, Path::new("ipc")),
            Err(FormatError::Decode { .. })
        ));
    }
}
