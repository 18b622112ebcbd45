//! File descriptors: one [`FileDesc`] per open file description, found with `kcmp` so that a
//! description shared through fork (and its offset) stays shared after restore.
//!
//! Supported kinds: regular files (also unlinked while open: contents saved), directories,
//! memory-class character devices (null, zero, full, random, urandom), pipes and FIFOs (data in
//! the pipes image), unix sockets (`unix.rs`). Anything else fails the dump, naming the descriptor and the task.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use images_format::files::{FdEntry, FdTable, FileDesc, FileKind};
use nix::sys::stat::{major, minor};
use sys::Pid;

use crate::pipes::PipeDumper;
use crate::proc::{parse_fdinfo, ProcDir};
use crate::DumpError;

/// Largest unlinked-while-open file whose contents are saved in the image.
pub const MAX_UNLINKED_SIZE: u64 = 64 << 20;

/// A description id and one (pid, fd) that holds it.
type Holder = (u32, i32, i32);

#[derive(Default)]
pub struct FilesDumper {
    pub descs: Vec<FileDesc>,
    pub tables: Vec<FdTable>,
    /// (dev, ino) -> descriptions seen with that inode, with one (pid, fd) holding each.
    by_inode: HashMap<(u64, u64), Vec<Holder>>,
    pub pipes: PipeDumper,
    pub unix: crate::unix::UnixDumper,
    pub inet: crate::inet::InetDumper,
}

fn io(
    op: &'static str,
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.into();
    move |source| DumpError::Io { op, path, source }
}

impl FilesDumper {
    pub fn dump_process(&mut self, pid: i32) -> Result<(), DumpError> {
        let dir = ProcDir::pid(pid);
        let fd_dir = dir.0.join("fd");
        let mut fds: Vec<i32> = std::fs::read_dir(&fd_dir)
            .map_err(io("list", &fd_dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        let mut table = FdTable {
            pid,
            fds: Vec::new(),
        };
        for fd in fds {
            let link_path = fd_dir.join(fd.to_string());
            let target = std::fs::read_link(&link_path)
                .map_err(io("readlink", &link_path))?
                .to_string_lossy()
                .into_owned();
            let info_path = dir.0.join(format!("fdinfo/{fd}"));
            let info =
                parse_fdinfo(&std::fs::read_to_string(&info_path).map_err(io("read", &info_path))?)
                    .ok_or_else(|| DumpError::Task {
                        pid,
                        what: format!("fd {fd}"),
                        reason: "cannot parse fdinfo".into(),
                    })?;
            let meta = std::fs::metadata(&link_path).map_err(io("stat", &link_path))?;
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let key = (meta.dev(), meta.ino());
            let desc = match self.find_shared(pid, fd, key)? {
                Some(id) => id,
                None => {
                    // A separate open of an unlinked inode already saved: refer to it.
                    let alias = if meta.file_type().is_file() && target.ends_with(" (deleted)") {
                        self.by_inode.get(&key).and_then(|v| v.first()).map(|h| h.0)
                    } else {
                        None
                    };
                    let kind = match alias {
                        Some(of) => FileKind::UnlinkedAlias { of },
                        None => self.kind_of(pid, fd, &target, &meta)?,
                    };
                    let id = self.descs.len() as u32;
                    self.descs.push(FileDesc {
                        id,
                        flags: info.flags & !(libc::O_CLOEXEC as u32),
                        pos: info.pos,
                        kind,
                    });
                    self.by_inode.entry(key).or_default().push((id, pid, fd));
                    id
                }
            };
            table.fds.push(FdEntry { fd, desc, cloexec });
        }
        self.tables.push(table);
        Ok(())
    }

    /// The description already recorded that `fd` of `pid` refers to, if any.
    fn find_shared(&self, pid: i32, fd: i32, key: (u64, u64)) -> Result<Option<u32>, DumpError> {
        let Some(cands) = self.by_inode.get(&key) else {
            return Ok(None);
        };
        for &(id, opid, ofd) in cands {
            if sys::syscalls::kcmp_same_file(Pid::from_raw(pid), fd, Pid::from_raw(opid), ofd)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn kind_of(
        &mut self,
        pid: i32,
        fd: i32,
        target: &str,
        meta: &std::fs::Metadata,
    ) -> Result<FileKind, DumpError> {
        let unsupported = |reason: &str| DumpError::Unsupported {
            pid,
            resource: format!("fd {fd} ({target})"),
            reason: reason.to_string(),
        };
        let ft = meta.file_type();
        const MQUEUE_MAGIC: i64 = 0x1980_0202;
        let link = format!("/proc/{pid}/fd/{fd}");
        if ft.is_file()
            && nix::sys::statfs::statfs(link.as_str())
                .is_ok_and(|s| s.filesystem_type().0 == MQUEUE_MAGIC)
        {
            return Ok(FileKind::PosixMqueue {
                name: target.to_string(),
            });
        }
        if ft.is_file() {
            if let Some(path) = target.strip_suffix(" (deleted)") {
                if meta.size() > MAX_UNLINKED_SIZE {
                    return Err(unsupported(&format!(
                        "unlinked file of {} bytes is larger than the {MAX_UNLINKED_SIZE}-byte limit",
                        meta.size()
                    )));
                }
                let mut contents = Vec::with_capacity(meta.size() as usize);
                let link = format!("/proc/{pid}/fd/{fd}");
                // Opening the magic link gives a new description of the same (unlinked) inode.
                std::fs::File::open(&link)
                    .and_then(|mut f| f.read_to_end(&mut contents))
                    .map_err(io("read unlinked file", &link))?;
                return Ok(FileKind::Regular {
                    path: path.to_string(),
                    mode: meta.mode(),
                    unlinked_contents: Some(contents),
                });
            }
            return Ok(FileKind::Regular {
                path: target.to_string(),
                mode: meta.mode(),
                unlinked_contents: None,
            });
        }
        if ft.is_dir() {
            return Ok(FileKind::Directory {
                path: target.to_string(),
            });
        }
        if ft.is_char_device() {
            let rdev = meta.rdev();
            // Memory-class devices: 1:3 null, 1:5 zero, 1:7 full, 1:8 random, 1:9 urandom.
            if major(rdev) == 1 && matches!(minor(rdev), 3 | 5 | 7 | 8 | 9) {
                return Ok(FileKind::CharDevice {
                    path: target.to_string(),
                    rdev,
                });
            }
            return Err(unsupported("character devices other than null/zero/full/random/urandom are not supported yet (terminals come later)"));
        }
        if ft.is_fifo() {
            let pipe_id = meta.ino();
            self.pipes.dump_pipe(pid, fd, pipe_id)?;
            if target.starts_with("pipe:[") {
                return Ok(FileKind::Pipe { pipe_id });
            }
            return Ok(FileKind::Fifo {
                path: target.to_string(),
                pipe_id,
            });
        }
        if ft.is_socket() {
            if let Some(kind) = self.unix.dump_socket(pid, fd, meta.ino())? {
                return Ok(kind);
            }
            if let Some(ino) = crate::inet::socket_inode(target) {
                if let Some(kind) = self.inet.dump_socket(pid, fd, ino)? {
                    return Ok(kind);
                }
            }
            return Err(unsupported(
                "this kind of socket is not supported (unix, TCP, UDP and NETLINK_ROUTE sockets are)",
            ));
        }
        if target.starts_with("anon_inode:") {
            if let Some(kind) = crate::events::kind_of(pid, fd, target)? {
                return Ok(kind);
            }
            return Err(unsupported("this kind of anonymous-inode descriptor is not supported (eventfd, signalfd, timerfd, epoll and inotify are)"));
        }
        Err(unsupported("unknown kind of file"))
    }
}
