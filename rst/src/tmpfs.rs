//! Refills a freshly mounted, empty tmpfs from the `tmpfs` record (see `cpt::tmpfs`).
//!
//! The image is untrusted: every entry path is checked (relative, no `.`, `..` or empty
//! component) and reached with `openat` from the mount's root, one directory at a time with
//! `O_NOFOLLOW | O_DIRECTORY`, so that no entry can be created outside the mount, through a
//! symbolic link made by an earlier entry or otherwise. Owners go before modes (a chown clears
//! setuid), and times go last, directories' after their contents.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use images_format::mm::{PageOwner, PagemapEntry};
use images_format::tmpfs::{EntryKind, EntryMeta, TmpfsContents};
use images_format::PAGE_SIZE;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::memory::ChunkCache;
use crate::RestoreError;

fn bad(what: impl std::fmt::Display) -> RestoreError {
    RestoreError::Invalid(format!("tmpfs: {what}"))
}

/// The components of an entry path, refused unless plainly relative.
fn components(path: &str) -> Result<Vec<&str>, RestoreError> {
    let comps: Vec<&str> = path.split('/').collect();
    if path.is_empty()
        || comps
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(bad(format!(
            "entry path {path:?} is not a plain relative path"
        )));
    }
    Ok(comps)
}

/// Checks the record against the pagemap before anything is created.
pub fn validate(mounts: &[TmpfsContents], entries: &[PagemapEntry]) -> Result<(), RestoreError> {
    let mut sizes: HashMap<u32, u64> = HashMap::new();
    for m in mounts {
        for e in &m.entries {
            components(&e.path)?;
            match &e.kind {
                EntryKind::File { id, size } if sizes.insert(*id, *size).is_some() => {
                    return Err(bad(format!("file id {id} is used twice")));
                }
                EntryKind::HardLink { target } => {
                    components(target)?;
                }
                _ => {}
            }
        }
    }
    for e in entries {
        let PageOwner::TmpfsFile(id) = e.owner else {
            continue;
        };
        let size = sizes
            .get(&id)
            .ok_or_else(|| bad(format!("pages of unknown file {id}")))?;
        let end = e.addr.checked_add(e.nr_pages as u64 * PAGE_SIZE as u64);
        if end.is_none_or(|end| end > size.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64) {
            return Err(bad(format!(
                "pages of file {id} at {:#x} lie past its end",
                e.addr
            )));
        }
    }
    Ok(())
}

struct Filler<'a, 'b> {
    mount: &'a str,
    root: OwnedFd,
    /// The last parent directory opened: entries come grouped by directory.
    last: Option<(String, OwnedFd)>,
    pages: &'a HashMap<u32, Vec<&'a PagemapEntry>>,
    chunks: &'a mut ChunkCache<'b>,
}

impl Filler<'_, '_> {
    fn err(&self, path: &str, e: impl std::fmt::Display) -> RestoreError {
        RestoreError::Files(format!("tmpfs {}: {path}: {e}", self.mount))
    }

    /// The directory holding `comps`' last component, reached without following links.
    fn parent(&mut self, comps: &[&str]) -> Result<OwnedFd, RestoreError> {
        let key = comps[..comps.len() - 1].join("/");
        if let Some((k, fd)) = &self.last {
            if *k == key {
                return fd.try_clone().map_err(|e| self.err(&key, e));
            }
        }
        let mut fd = self.root.try_clone().map_err(|e| self.err("/", e))?;
        for c in &comps[..comps.len() - 1] {
            fd = openat(
                &fd,
                *c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.err(&key, format!("not a directory made by the restore: {e}")))?;
        }
        self.last = Some((key, fd.try_clone().map_err(|e| self.err("/", e))?));
        Ok(fd)
    }

    fn fill_file(
        &mut self,
        file: &std::fs::File,
        id: u32,
        size: u64,
        path: &str,
    ) -> Result<(), RestoreError> {
        for e in self.pages.get(&id).map(Vec::as_slice).unwrap_or_default() {
            let chunk = self.chunks.get(e.loc.chunk)?;
            let start = e.loc.offset as usize;
            let len = ((e.nr_pages as usize) * PAGE_SIZE).min((size - e.addr) as usize);
            let data = chunk
                .get(start..start + len)
                .ok_or_else(|| bad(format!("pages of {path} point past their chunk")))?;
            file.write_all_at(data, e.addr)
                .map_err(|err| self.err(path, err))?;
        }
        file.set_len(size).map_err(|e| self.err(path, e))
    }
}

fn times(m: &EntryMeta) -> (TimeSpec, TimeSpec) {
    let ts = |ns: i64| TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    (ts(m.atime_ns), ts(m.mtime_ns))
}

/// Owner, mode and extended attributes of an open file or directory.
fn set_meta(fd: impl AsFd, m: &EntryMeta) -> Result<(), String> {
    let fd = fd.as_fd();
    nix::unistd::fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
        .map_err(|e| format!("chown: {e}"))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(m.mode))
        .map_err(|e| format!("chmod: {e}"))?;
    for (k, v) in &m.xattrs {
        sys::xattr::set(fd, k, v).map_err(|e| format!("xattr {k}: {e}"))?;
    }
    Ok(())
}

/// Recreates `contents` under `dir`, a freshly mounted empty tmpfs.
pub fn restore_tmpfs(
    dir: &Path,
    contents: &TmpfsContents,
    entries: &[PagemapEntry],
    chunks: &mut ChunkCache<'_>,
) -> Result<(), RestoreError> {
    let mut pages: HashMap<u32, Vec<&PagemapEntry>> = HashMap::new();
    for e in entries {
        if let PageOwner::TmpfsFile(id) = e.owner {
            pages.entry(id).or_default().push(e);
        }
    }
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RestoreError::Files(format!("tmpfs {}: open: {e}", contents.mountpoint)))?;
    let mut f = Filler {
        mount: &contents.mountpoint,
        root,
        last: None,
        pages: &pages,
        chunks,
    };
    let mut files: HashMap<&str, ()> = HashMap::new();
    // Directories get their times once their contents are in.
    let mut dir_times: Vec<(OwnedFd, &EntryMeta)> = Vec::new();
    for e in &contents.entries {
        let comps = components(&e.path)?;
        let name = comps[comps.len() - 1];
        let parent = f.parent(&comps)?;
        let fail = |err: String| {
            RestoreError::Files(format!("tmpfs {}: {}: {err}", contents.mountpoint, e.path))
        };
        let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
        match &e.kind {
            EntryKind::Dir => {
                nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(|err| fail(format!("mkdir: {err}")))?;
                let d = openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| fail(format!("open: {err}")))?;
                set_meta(&d, &e.meta).map_err(fail)?;
                dir_times.push((d, &e.meta));
                continue;
            }
            EntryKind::File { id, size } => {
                let fd = openat(
                    &parent,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|err| fail(format!("create: {err}")))?;
                let file = std::fs::File::from(fd);
                f.fill_file(&file, *id, *size, &e.path)?;
                set_meta(&file, &e.meta).map_err(fail)?;
                let (a, m) = times(&e.meta);
                nix::sys::stat::futimens(&file, &a, &m)
                    .map_err(|err| fail(format!("times: {err}")))?;
                files.insert(&e.path, ());
                continue;
            }
            EntryKind::HardLink { target } => {
                if !files.contains_key(target.as_str()) {
                    return Err(fail(format!(
                        "hard link to {target}, which is not a file restored before"
                    )));
                }
                let tcomps = components(target)?;
                let tparent = f.parent(&tcomps)?;
                nix::unistd::linkat(
                    &tparent,
                    tcomps[tcomps.len() - 1],
                    &parent,
                    name,
                    AtFlags::empty(),
                )
                .map_err(|err| fail(format!("link: {err}")))?;
                continue;
            }
            EntryKind::Symlink { target } => {
                nix::unistd::symlinkat(std::ffi::OsStr::from_bytes(target), &parent, name)
                    .map_err(|err| fail(format!("symlink: {err}")))?;
            }
            EntryKind::CharDevice { rdev } => {
                mknodat(
                    &parent,
                    name,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(e.meta.mode),
                    *rdev,
                )
                .map_err(|err| fail(format!("mknod: {err}")))?;
            }
            EntryKind::BlockDevice { rdev } => {
                mknodat(
                    &parent,
                    name,
                    SFlag::S_IFBLK,
                    Mode::from_bits_truncate(e.meta.mode),
                    *rdev,
                )
                .map_err(|err| fail(format!("mknod: {err}")))?;
            }
            EntryKind::Fifo => {
                mknodat(
                    &parent,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(e.meta.mode),
                    0,
                )
                .map_err(|err| fail(format!("mknod: {err}")))?;
            }
            EntryKind::Socket => {
                mknodat(
                    &parent,
                    name,
                    SFlag::S_IFSOCK,
                    Mode::from_bits_truncate(e.meta.mode),
                    0,
                )
                .map_err(|err| fail(format!("mknod: {err}")))?;
            }
        }
        // Nodes and symbolic links, by name without following: owner, mode, times.
        nix::unistd::fchownat(
            &parent,
            name,
            Some(Uid::from_raw(e.meta.uid)),
            Some(Gid::from_raw(e.meta.gid)),
            nofollow,
        )
        .map_err(|err| fail(format!("chown: {err}")))?;
        if !matches!(e.kind, EntryKind::Symlink { .. }) {
            nix::sys::stat::fchmodat(
                &parent,
                name,
                Mode::from_bits_truncate(e.meta.mode),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|err| {
                // Some kernels refuse AT_SYMLINK_NOFOLLOW for chmod; the entry is no link.
                if err == nix::errno::Errno::EOPNOTSUPP || err == nix::errno::Errno::EINVAL {
                    nix::sys::stat::fchmodat(
                        &parent,
                        name,
                        Mode::from_bits_truncate(e.meta.mode),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                } else {
                    Err(err)
                }
            })
            .map_err(|err| fail(format!("chmod: {err}")))?;
        }
        let (a, m) = times(&e.meta);
        nix::sys::stat::utimensat(
            &parent,
            name,
            &a,
            &m,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|err| fail(format!("times: {err}")))?;
    }
    set_meta(&f.root, &contents.root)
        .map_err(|e| RestoreError::Files(format!("tmpfs {}: /: {e}", contents.mountpoint)))?;
    dir_times.push((
        f.root.try_clone().map_err(|e| f.err("/", e))?,
        &contents.root,
    ));
    for (d, m) in dir_times.iter().rev() {
        let (a, mt) = times(m);
        nix::sys::stat::futimens(d, &a, &mt).map_err(|e| f.err("directory times", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use images_format::pagestore::PageLoc;
    use images_format::tmpfs::TmpfsEntry;

    fn mount(entries: Vec<(&str, EntryKind)>) -> Vec<TmpfsContents> {
        vec![TmpfsContents {
            mountpoint: "/tmp".into(),
            root: EntryMeta::default(),
            entries: entries
                .into_iter()
                .map(|(p, kind)| TmpfsEntry {
                    path: p.into(),
                    kind,
                    meta: EntryMeta::default(),
                })
                .collect(),
        }]
    }

    fn page(id: u32, addr: u64) -> PagemapEntry {
        PagemapEntry {
            owner: PageOwner::TmpfsFile(id),
            addr,
            nr_pages: 1,
            loc: PageLoc {
                chunk: 0,
                offset: 0,
            },
        }
    }

    #[test]
    fn refuses_paths_that_leave_the_mount() {
        for bad_path in ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", ""] {
            let m = mount(vec![(bad_path, EntryKind::Fifo)]);
            assert!(validate(&m, &[]).is_err(), "{bad_path:?} accepted");
        }
        let link = mount(vec![(
            "a",
            EntryKind::HardLink {
                target: "../../etc/shadow".into(),
            },
        )]);
        assert!(validate(&link, &[]).is_err());
        assert!(validate(&mount(vec![("a/b c", EntryKind::Dir)]), &[]).is_ok());
    }

    #[test]
    fn refuses_pages_past_a_file_or_of_no_file() {
        let m = mount(vec![("f", EntryKind::File { id: 3, size: 5000 })]);
        assert!(validate(&m, &[page(3, 0), page(3, 4096)]).is_ok());
        assert!(validate(&m, &[page(3, 8192)]).is_err());
        assert!(validate(&m, &[page(4, 0)]).is_err());
        assert!(validate(&m, &[page(3, u64::MAX - 10)]).is_err());
        let twice = mount(vec![
            ("f", EntryKind::File { id: 3, size: 1 }),
            ("g", EntryKind::File { id: 3, size: 1 }),
        ]);
        assert!(validate(&twice, &[]).is_err());
    }

    /// A symbolic link made by an earlier entry is never gone through.
    #[test]
    fn does_not_follow_a_link_made_by_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let m = mount(vec![
            (
                "l",
                EntryKind::Symlink {
                    target: outside.path().as_os_str().as_bytes().to_vec(),
                },
            ),
            ("l/evil", EntryKind::Fifo),
        ]);
        // An empty page store, for the chunk cache the function takes.
        let store_dir = tempfile::tempdir().unwrap();
        let mut w = images_format::ImageWriter::create(&store_dir.path().join("img")).unwrap();
        let idx = w.page_store(None).unwrap().finish().unwrap();
        let tmp = store_dir
            .path()
            .join(format!("img.tmp-{}", std::process::id()));
        let reader = images_format::pagestore::PageStoreReader::open(&tmp, &idx).unwrap();
        let mut chunks = ChunkCache::new(&reader).unwrap();
        let e = restore_tmpfs(dir.path(), &m[0], &[], &mut chunks).unwrap_err();
        assert!(
            e.to_string()
                .contains("not a directory made by the restore"),
            "{e}"
        );
        drop(w);
        assert!(!outside.path().join("evil").exists());
    }
}
