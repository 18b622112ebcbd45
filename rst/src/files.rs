//! Open files. Every file description of the image is opened (or, for pipes, created and
//! refilled) once in the restorer, at a descriptor number above every number the tree uses,
//! before the first process is created. Each new process inherits them all through fork, so a
//! description shared between processes is shared again, offset included. In each process the
//! right ones are then `dup3`ed to their dumped numbers and everything else is closed.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use images_format::files::{FdTable, FileKind, FilesImage};
use images_format::pipes::PipesImage;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{lseek, Whence};
use sys::remote::{Call, RemoteTask};

use crate::RestoreError;

/// Flags that only matter at open time and must not be replayed.
const OPEN_ONLY: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY;

/// Moves `fd` to the lowest free number >= `min` and closes the original.
pub fn move_fd_high(fd: &OwnedFd, min: i32) -> Result<OwnedFd, RestoreError> {
    Ok(sys::syscalls::dup_at_least(fd, min)?)
}

/// The descriptions opened in the restorer: image description id -> descriptor.
pub struct Prepared {
    pub descs: HashMap<u32, OwnedFd>,
    /// FIFO keepers and unused pipe ends, held until the tree is released.
    pub keep: Vec<OwnedFd>,
    /// Descriptions that must be opened inside the tree's own namespaces (see [`by_path`]):
    /// `descs` holds a placeholder at their number until [`open_deferred`] replaces it.
    pub deferred: Vec<u32>,
}

fn err(id: u32, what: &str, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Files(format!("file description {id}: {what}: {e}"))
}

/// Whether a description depends on the tree's namespaces (a path, a queue name, ...): all
/// but pipes, which are the same everywhere.
fn by_path(kind: &FileKind) -> bool {
    !matches!(kind, FileKind::Pipe { .. })
}

/// Opens descriptions one by one, sharing pipes between their two ends.
struct Opener<'a> {
    pipes: &'a PipesImage,
    unix: crate::unix::UnixSockets<'a>,
    /// (read end, write end) per pipe id, each created once and refilled with its data.
    pipe_ends: HashMap<u64, (Option<OwnedFd>, Option<OwnedFd>)>,
    filled_fifos: std::collections::HashSet<u64>,
    keep: Vec<OwnedFd>,
    /// Sockets that need a last step once all are open (see `inet`).
    sockets: crate::inet::SocketFinisher,
}

impl<'a> Opener<'a> {
    fn new(files: &'a FilesImage, pipes: &'a PipesImage) -> Self {
        Opener {
            pipes,
            unix: crate::unix::UnixSockets::new(files),
            pipe_ends: HashMap::new(),
            filled_fifos: Default::default(),
            keep: Vec::new(),
            sockets: Default::default(),
        }
    }

    /// Opens description `d`; `fd_of` gives the descriptor of a description opened before.
    fn open(
        &mut self,
        d: &images_format::files::FileDesc,
        fd_of: &dyn Fn(u32) -> Option<i32>,
    ) -> Result<OwnedFd, RestoreError> {
        let acc = d.flags as i32 & libc::O_ACCMODE;
        let status = d.flags as i32 & !OPEN_ONLY & !libc::O_ACCMODE & !libc::O_CLOEXEC;
        let fd: OwnedFd = match &d.kind {
            FileKind::Regular {
                path,
                mode,
                unlinked_contents,
            } => {
                if let Some(contents) = unlinked_contents {
                    // Recreate the unlinked file under its own name when that is free, so that
                    // /proc/PID/fd/N reads "PATH (deleted)" as it did when dumped; else beside
                    // it. Open it, unlink it again.
                    let create = |p: &str| {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(*mode & 0o7777)
                            .open(p)
                    };
                    let (mut f, tmp) = match create(path) {
                        Ok(f) => (f, path.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            let tmp = format!("{path}.vzcpt-restore-{}", std::process::id());
                            let f = create(&tmp).map_err(|e| {
                                err(d.id, &format!("recreate unlinked {path} as {tmp}"), e)
                            })?;
                            (f, tmp)
                        }
                        Err(e) => return Err(err(d.id, &format!("recreate unlinked {path}"), e)),
                    };
                    f.write_all(contents)
                        .map_err(|e| err(d.id, "write unlinked contents", e))?;
                    let _ = std::fs::set_permissions(
                        &tmp,
                        std::fs::Permissions::from_mode(*mode & 0o7777),
                    );
                    let fd = open_path(&tmp, acc | status)
                        .map_err(|e| err(d.id, &format!("open {tmp}"), e));
                    let _ = std::fs::remove_file(&tmp);
                    fd?
                } else {
                    open_path(path, acc | status)
                        .map_err(|e| err(d.id, &format!("open {path}"), e))?
                }
            }
            FileKind::UnlinkedAlias { of } => {
                // A new description of the inode recreated for description `of` (the magic
                // link of a deleted file still opens it).
                let first = fd_of(*of).ok_or_else(|| {
                    err(
                        d.id,
                        "unlinked file",
                        format!("description {of} is not restored yet"),
                    )
                })?;
                let link = format!("/proc/self/fd/{first}");
                open_path(&link, acc | status).map_err(|e| {
                    err(
                        d.id,
                        &format!("reopen unlinked file of description {of}"),
                        e,
                    )
                })?
            }
            FileKind::PosixMqueue { name } => {
                // In the tree's IPC namespace: the root opens it after refilling that.
                sys::ipc::mq_open(name, acc | status, 0, None)
                    .map_err(|e| err(d.id, &format!("POSIX message queue {name}"), e))?
            }
            k @ (FileKind::EventFd(_)
            | FileKind::SignalFd(_)
            | FileKind::TimerFd(_)
            | FileKind::Epoll(_)
            | FileKind::Inotify(_)) => crate::events::open(d.id, k)?
                .ok_or_else(|| err(d.id, "open", "not an event descriptor"))?,
            FileKind::Directory { path } => open_path(path, acc | status | libc::O_DIRECTORY)
                .map_err(|e| err(d.id, &format!("open directory {path}"), e))?,
            FileKind::CharDevice { path, rdev } => {
                let fd = open_path(path, acc | status)
                    .map_err(|e| err(d.id, &format!("open {path}"), e))?;
                let meta = std::fs::File::from(fd.try_clone().map_err(|e| err(d.id, "dup", e))?)
                    .metadata()
                    .map_err(|e| err(d.id, "fstat", e))?;
                if meta.rdev() != *rdev {
                    return Err(err(d.id, path, "is another device than the one dumped"));
                }
                fd
            }
            FileKind::Pipe { pipe_id } => {
                let ends = self.pipe_ends.entry(*pipe_id).or_insert((None, None));
                if ends.0.is_none() && ends.1.is_none() {
                    let (r, w) = make_pipe(*pipe_id, self.pipes)?;
                    *ends = (Some(r), Some(w));
                }
                let end = if acc == libc::O_WRONLY {
                    &mut ends.1
                } else {
                    &mut ends.0
                };
                match end.take() {
                    Some(fd) => fd,
                    // A second description of the same end: reopen through /proc.
                    None => {
                        return Err(err(
                            d.id,
                            "pipe",
                            "two separate descriptions of one pipe end are not supported yet",
                        ));
                    }
                }
            }
            FileKind::UnixSocket(s) => self.unix.take(s)?,
            FileKind::Inet(s) => crate::inet::open_inet(d.id, s, &mut self.sockets)?,
            FileKind::Netlink(s) => crate::inet::open_netlink(d.id, s)?,
            FileKind::Fifo { path, pipe_id } => {
                // A read-write keeper first, so that opening either end never blocks, and to
                // refill the FIFO's buffer.
                let keeper = open_path(path, libc::O_RDWR | libc::O_NONBLOCK)
                    .map_err(|e| err(d.id, &format!("open FIFO {path}"), e))?;
                if let Some(p) = self.pipes.pipes.iter().find(|p| p.pipe_id == *pipe_id) {
                    if !p.data.is_empty() && self.filled_fifos.insert(*pipe_id) {
                        fill_pipe(&keeper, p.capacity, &p.data, *pipe_id)?;
                    }
                }
                let fd = open_path(path, acc | libc::O_NONBLOCK)
                    .map_err(|e| err(d.id, &format!("open FIFO {path}"), e))?;
                self.keep.push(keeper);
                fd
            }
        };
        // Status flags as dumped (O_NONBLOCK, O_APPEND, ...), then the offset.
        fcntl(
            fd.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(status)),
        )
        .map_err(|e| err(d.id, "F_SETFL", e))?;
        if matches!(
            d.kind,
            FileKind::Regular { .. } | FileKind::Directory { .. } | FileKind::UnlinkedAlias { .. }
        ) && d.pos != 0
        {
            lseek(fd.as_fd(), d.pos as i64, Whence::SeekSet).map_err(|e| err(d.id, "lseek", e))?;
        }
        Ok(fd)
    }

    /// Every description is open: the sockets' last step (connections leave repair mode).
    fn finish_sockets(&mut self) -> Result<(), RestoreError> {
        std::mem::take(&mut self.sockets).finish()
    }

    fn into_keep(mut self) -> Vec<OwnedFd> {
        for (_, (r, w)) in self.pipe_ends.drain() {
            self.keep.extend(r);
            self.keep.extend(w);
        }
        self.keep
    }
}

/// Opens every description at a number from `fd_base` up. With `defer_paths` (the tree has
/// namespaces of its own, not built yet), those that depend on them get a placeholder instead.
pub fn prepare(
    files: &FilesImage,
    pipes: &PipesImage,
    fd_base: i32,
    defer_paths: bool,
) -> Result<Prepared, RestoreError> {
    let mut next = fd_base;
    let mut descs: HashMap<u32, OwnedFd> = HashMap::new();
    let mut deferred = Vec::new();
    let mut opener = Opener::new(files, pipes);
    for d in &files.descs {
        let fd = if defer_paths && by_path(&d.kind) {
            deferred.push(d.id);
            open_path("/dev/null", libc::O_RDONLY).map_err(|e| err(d.id, "placeholder", e))?
        } else {
            let fd_of = |id: u32| descs.get(&id).map(|f| f.as_raw_fd());
            opener.open(d, &fd_of)?
        };
        let r = move_fd_high(&fd, next)?;
        next = r.as_raw_fd() + 1;
        descs.insert(d.id, r);
    }
    opener.finish_sockets()?;
    Ok(Prepared {
        descs,
        keep: opener.into_keep(),
        deferred,
    })
}

/// In the root of a tree with namespaces of its own, once they are built: opens the
/// deferred descriptions and puts each at its placeholder's number. The FIFO keepers returned
/// must stay open until the tree's processes hold their own ends.
pub fn open_deferred(
    files: &FilesImage,
    pipes: &PipesImage,
    prepared: &Prepared,
) -> Result<Vec<OwnedFd>, RestoreError> {
    let mut opener = Opener::new(files, pipes);
    let fd_of = |id: u32| prepared.descs.get(&id).map(|f| f.as_raw_fd());
    for id in &prepared.deferred {
        let d = files
            .descs
            .iter()
            .find(|d| d.id == *id)
            .ok_or_else(|| err(*id, "deferred open", "no such description"))?;
        let fd = opener.open(d, &fd_of)?;
        let slot = fd_of(*id).ok_or_else(|| err(*id, "deferred open", "no placeholder"))?;
        sys::syscalls::dup_onto(&fd, slot, true).map_err(|e| err(*id, "dup3", e))?;
    }
    opener.finish_sockets()?;
    Ok(opener.into_keep())
}

fn open_path(path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
        .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)?;
    Ok(f.into())
}

fn make_pipe(pipe_id: u64, pipes: &PipesImage) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| RestoreError::Files(format!("pipe {pipe_id}: pipe2: {e}")))?;
    if let Some(p) = pipes.pipes.iter().find(|p| p.pipe_id == pipe_id) {
        fill_pipe(&w, p.capacity, &p.data, pipe_id)?;
    }
    Ok((r, w))
}

fn fill_pipe(w: &OwnedFd, capacity: u32, data: &[u8], pipe_id: u64) -> Result<(), RestoreError> {
    if capacity != 65536 && capacity != 0 {
        fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(capacity as i32)).map_err(|e| {
            RestoreError::Files(format!(
                "pipe {pipe_id}: cannot set its size to {capacity} bytes ({e}); without CAP_SYS_RESOURCE the limit is fs.pipe-max-size"
            ))
        })?;
    }
    let mut off = 0;
    while off < data.len() {
        let n = nix::unistd::write(w.as_fd(), &data[off..])
            .map_err(|e| RestoreError::Files(format!("pipe {pipe_id}: refill: {e}")))?;
        off += n;
    }
    Ok(())
}

/// In the task: `dup3` each dumped descriptor from the inherited one, then close the rest.
/// One batch.
pub fn install(
    rt: &mut RemoteTask,
    table: &FdTable,
    prepared: &Prepared,
    fd_base: i32,
) -> Result<(), RestoreError> {
    let mut calls = Vec::new();
    let mut wanted: Vec<i32> = Vec::new();
    for e in &table.fds {
        let src = prepared.descs.get(&e.desc).ok_or_else(|| {
            RestoreError::Files(format!(
                "fd {} of process {} names unknown description {}",
                e.fd, table.pid, e.desc
            ))
        })?;
        let flags = if e.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        calls.push(Call::new(
            "dup3",
            libc::SYS_dup3,
            &[src.as_raw_fd() as u64, e.fd as u64, flags],
        ));
        wanted.push(e.fd);
    }
    wanted.sort_unstable();
    // Close every gap below the prepared range, then the prepared range itself.
    let mut from: u64 = 0;
    for &fd in &wanted {
        if (fd as u64) > from {
            calls.push(Call::new(
                "close_range",
                libc::SYS_close_range,
                &[from, fd as u64 - 1, 0],
            ));
        }
        from = fd as u64 + 1;
    }
    if from < fd_base as u64 {
        calls.push(Call::new(
            "close_range",
            libc::SYS_close_range,
            &[from, fd_base as u64 - 1, 0],
        ));
    }
    calls.push(Call::new(
        "close_range",
        libc::SYS_close_range,
        &[fd_base as u64, u32::MAX as u64, 0],
    ));
    rt.batch(&calls)?;
    Ok(())
}
