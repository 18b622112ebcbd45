//! Records of open files: one entry per open file description (shared between descriptors
//! and processes exactly as it was), and each process's descriptor table pointing at them.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FilesImage {
    pub descs: Vec<FileDesc>,
    pub tables: Vec<FdTable>,
}

impl Image for FilesImage {
    const KIND: ImageKind = ImageKind::Files;
}

/// An open file description.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileDesc {
    pub id: u32,
    /// `O_*` status and access flags as fdinfo shows them, without `O_CLOEXEC`.
    pub flags: u32,
    pub pos: u64,
    pub kind: FileKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FileKind {
    /// A regular file, by path. `unlinked_contents` holds the whole file when it was deleted
    /// while open; restore recreates it and unlinks it again.
    Regular {
        path: String,
        mode: u32,
        unlinked_contents: Option<Vec<u8>>,
    },
    Directory {
        path: String,
    },
    /// A character device of the memory class (null, zero, full, random, urandom).
    CharDevice {
        path: String,
        rdev: u64,
    },
    /// One end of an unnamed pipe; `pipe_id` names its record in the pipes image.
    Pipe {
        pipe_id: u64,
    },
    /// A named pipe; its unread data is in the pipes image under `pipe_id`.
    Fifo {
        path: String,
        pipe_id: u64,
    },
    /// Another description (a separate open) of the unlinked file whose contents are saved
    /// with description `of`: the same inode, so restore reopens that one, never a copy.
    UnlinkedAlias {
        of: u32,
    },
    /// A POSIX message queue descriptor, by queue name (as `/name`); the queue itself and its
    /// messages are in the `ipc` record when the tree owns its IPC namespace.
    PosixMqueue {
        name: String,
    },
    /// An eventfd (see [`crate::events`]).
    EventFd(crate::events::EventFd),
    /// A signalfd.
    SignalFd(crate::events::SignalFd),
    /// A timerfd.
    TimerFd(crate::events::TimerFd),
    /// An epoll instance with its registrations.
    Epoll(crate::events::Epoll),
    /// An inotify instance with its watches.
    Inotify(crate::events::Inotify),
    /// A unix socket with its state and queued data.
    UnixSocket(Box<crate::unix::UnixSocket>),
    /// A TCP or UDP socket over IPv4 or IPv6.
    Inet(Box<crate::inet::InetSocket>),
    /// A netlink socket (NETLINK_ROUTE only).
    Netlink(crate::inet::NetlinkSocket),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FdTable {
    pub pid: i32,
    pub fds: Vec<FdEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdEntry {
    pub fd: i32,
    pub desc: u32,
    pub cloexec: bool,
}
