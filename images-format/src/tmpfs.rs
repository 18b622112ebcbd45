//! Records of tmpfs mounts: every entry under each mount (relative path, type, mode, owner,
//! times, extended attributes), hard links as links, not copies. File data lives in the page
//! store as `PageOwner::TmpfsFile(id)` pages (offsets into the file), only where the file has
//! data: holes stay holes, and so do all-zero pages.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TmpfsImage {
    pub mounts: Vec<TmpfsContents>,
}

impl Image for TmpfsImage {
    const KIND: ImageKind = ImageKind::Tmpfs;
}

/// One tmpfs mount: its root directory and everything under it, parents before children.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TmpfsContents {
    /// Where it is mounted, as the tree sees it (the `ns` record's mount point).
    pub mountpoint: String,
    pub root: EntryMeta,
    pub entries: Vec<TmpfsEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TmpfsEntry {
    /// Relative to the mount's root, components separated by `/`, no `.` or `..`.
    pub path: String,
    pub kind: EntryKind,
    pub meta: EntryMeta,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file of `size` bytes whose data pages are `TmpfsFile(id)` in the page store.
    File {
        id: u32,
        size: u64,
    },
    /// Another name of the file entry at `target` (a hard link).
    HardLink {
        target: String,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    /// A unix socket's file (the socket itself is not carried by the file system).
    Socket,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryMeta {
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    /// Extended attributes of regular files and directories.
    pub xattrs: Vec<(String, Vec<u8>)>,
}
