//! The whole contents of a tmpfs mount (a VE's /tmp, /run, /dev, ...), which vanishes with the
//! VE otherwise: every entry with its type, mode, owner, times and extended attributes (of
//! regular files and directories), hard links as links, and file data into the page store
//! (holes and all-zero pages left out).
//!
//! The walk starts from a directory descriptor of the mount's root (reached through
//! `/proc/ROOT/root/...`, which resolves inside the tree's mount namespace) and goes on with
//! `openat` relative to directory descriptors, never following a symbolic link and never
//! leaving the mount (an entry on another device is a mount point: recorded as a directory,
//! not entered). Not kept: access times may change as files are read; files hidden under a
//! mount point are out of reach; xattrs of symbolic links and device nodes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use images_format::mm::PageOwner;
use images_format::tmpfs::{EntryKind, EntryMeta, TmpfsContents, TmpfsEntry};
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

use crate::pagesink::PageSink;
use crate::DumpError;

/// Dumps tmpfs mount `mountpoint` of task `pid`; file ids start at `*next_id`.
pub struct TmpfsDumper<'a> {
    pub pid: i32,
    pub sink: &'a PageSink,
    pub next_id: u32,
}

fn meta_of(st: &FileStat) -> EntryMeta {
    EntryMeta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        atime_ns: st.st_atime * 1_000_000_000 + st.st_atime_nsec,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        xattrs: Vec::new(),
    }
}

impl TmpfsDumper<'_> {
    fn err(&self, mountpoint: &str, path: &str, e: impl std::fmt::Display) -> DumpError {
        DumpError::Task {
            pid: self.pid,
            what: format!(
                "tmpfs {mountpoint}: {}",
                if path.is_empty() { "/" } else { path }
            ),
            reason: e.to_string(),
        }
    }

    pub fn dump(&mut self, mountpoint: &str) -> Result<TmpfsContents, DumpError> {
        let path = format!("/proc/{}/root{}", self.pid, mountpoint);
        let root = nix::fcntl::open(
            Path::new(&path),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(mountpoint, "", format!("open {path}: {e}")))?;
        let st = fstat(&root).map_err(|e| self.err(mountpoint, "", e))?;
        let mut meta = meta_of(&st);
        meta.xattrs = sys::xattr::list(&root).map_err(|e| self.err(mountpoint, "", e))?;
        let mut out = TmpfsContents {
            mountpoint: mountpoint.to_string(),
            root: meta,
            entries: Vec::new(),
        };
        let mut links = HashMap::new();
        self.walk(
            mountpoint,
            &root,
            st.st_dev,
            "",
            &mut out.entries,
            &mut links,
        )?;
        Ok(out)
    }

    fn walk(
        &mut self,
        mountpoint: &str,
        dir: &OwnedFd,
        dev: u64,
        prefix: &str,
        out: &mut Vec<TmpfsEntry>,
        links: &mut HashMap<u64, String>,
    ) -> Result<(), DumpError> {
        let names: Vec<Vec<u8>> = {
            let d = nix::dir::Dir::from_fd(
                dir.try_clone()
                    .map_err(|e| self.err(mountpoint, prefix, e))?,
            )
            .map_err(|e| self.err(mountpoint, prefix, e))?;
            let mut names = Vec::new();
            for e in d {
                let e = e.map_err(|e| self.err(mountpoint, prefix, e))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            names.sort();
            names
        };
        for name in names {
            let name_os = OsStr::from_bytes(&name);
            let rel = if prefix.is_empty() {
                String::from_utf8_lossy(&name).into_owned()
            } else {
                format!("{prefix}/{}", String::from_utf8_lossy(&name))
            };
            if std::str::from_utf8(&name).is_err() {
                return Err(self.err(mountpoint, &rel, "a file name that is not UTF-8"));
            }
            let st = fstatat(dir, name_os, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| self.err(mountpoint, &rel, e))?;
            let mut meta = meta_of(&st);
            let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            let kind = if st.st_dev != dev {
                // A mount point: only the directory under it belongs to this mount, and its
                // own attributes are hidden by the mount; the mount itself is rebuilt.
                meta.mode = 0o755;
                meta.uid = 0;
                meta.gid = 0;
                EntryKind::Dir
            } else if fmt == SFlag::S_IFDIR {
                let sub = openat(
                    dir,
                    name_os,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err(mountpoint, &rel, e))?;
                meta.xattrs = sys::xattr::list(&sub).map_err(|e| self.err(mountpoint, &rel, e))?;
                out.push(TmpfsEntry {
                    path: rel.clone(),
                    kind: EntryKind::Dir,
                    meta,
                });
                self.walk(mountpoint, &sub, dev, &rel, out, links)?;
                continue;
            } else if fmt == SFlag::S_IFREG {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&st.st_ino) {
                        out.push(TmpfsEntry {
                            path: rel,
                            kind: EntryKind::HardLink {
                                target: first.clone(),
                            },
                            meta,
                        });
                        continue;
                    }
                    links.insert(st.st_ino, rel.clone());
                }
                let f = openat(
                    dir,
                    name_os,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOATIME,
                    Mode::empty(),
                )
                .map_err(|e| self.err(mountpoint, &rel, e))?;
                meta.xattrs = sys::xattr::list(&f).map_err(|e| self.err(mountpoint, &rel, e))?;
                let id = self.next_id;
                self.next_id += 1;
                let file = std::fs::File::from(f);
                crate::pagesink::send_file(
                    self.sink,
                    &file,
                    st.st_size as u64,
                    PageOwner::TmpfsFile(id),
                    |reason| self.err(mountpoint, &rel, reason),
                )?;
                EntryKind::File {
                    id,
                    size: st.st_size as u64,
                }
            } else if fmt == SFlag::S_IFLNK {
                let t = readlinkat(dir, name_os).map_err(|e| self.err(mountpoint, &rel, e))?;
                EntryKind::Symlink {
                    target: t.as_bytes().to_vec(),
                }
            } else if fmt == SFlag::S_IFCHR {
                EntryKind::CharDevice { rdev: st.st_rdev }
            } else if fmt == SFlag::S_IFBLK {
                EntryKind::BlockDevice { rdev: st.st_rdev }
            } else if fmt == SFlag::S_IFIFO {
                EntryKind::Fifo
            } else if fmt == SFlag::S_IFSOCK {
                EntryKind::Socket
            } else {
                return Err(self.err(
                    mountpoint,
                    &rel,
                    format!("unknown file type {:#o}", st.st_mode),
                ));
            };
            out.push(TmpfsEntry {
                path: rel,
                kind,
                meta,
            });
        }
        Ok(())
    }
}
