//! The VE's private area (its overlay's writable layer) sent as `FsFile` messages and written
//! again on the destination. Overlayfs's own marks travel too: whiteouts are character
//! devices 0:0 and opaque directories carry `trusted.overlay.*` extended attributes.
//! Hard links arrive as separate copies; modification times are not kept. A second pass
//! (after the checkpoint) sends only what changed since the first ([`delta`]) and what was
//! removed.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use proto::{FsFile, FsKind, Message};

use crate::{MigrateError, Result};

/// Data per message.
const CHUNK: usize = 1 << 20;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MigrateError + 'a {
    move |source| MigrateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Every entry under `root`, parents first, as messages handed to `send`.
pub fn walk(root: &Path, send: &mut dyn FnMut(Message) -> Result<()>) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io("read directory", &dir))?
            .collect::<std::result::Result<_, _>>()
            .map_err(io("read directory", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel_path = rel.join(e.file_name());
            let full = root.join(&rel_path);
            let m = std::fs::symlink_metadata(&full).map_err(io("stat", &full))?;
            let ft = m.file_type();
            let base = |kind: FsKind, xattrs: Vec<(String, Vec<u8>)>| FsFile {
                path: rel_path.as_os_str().as_bytes().to_vec(),
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                xattrs,
                size: 0,
                offset: 0,
                data: Vec::new(),
            };
            files += 1;
            if ft.is_dir() {
                let f = std::fs::File::open(&full).map_err(io("open", &full))?;
                let x = sys::xattr::list(&f).map_err(|e| MigrateError::Keys(e.to_string()))?;
                send(Message::FsFile(base(FsKind::Dir, x)))?;
                stack.push(rel_path);
            } else if ft.is_file() {
                let f = std::fs::File::open(&full).map_err(io("open", &full))?;
                let x = sys::xattr::list(&f).map_err(|e| MigrateError::Keys(e.to_string()))?;
                let size = m.len();
                let mut off = 0u64;
                let mut first = true;
                while first || off < size {
                    use std::os::unix::fs::FileExt;
                    let want = ((size - off) as usize).min(CHUNK);
                    let mut data = vec![0u8; want];
                    f.read_exact_at(&mut data, off).map_err(io("read", &full))?;
                    let mut msg = base(FsKind::File, if first { x.clone() } else { Vec::new() });
                    msg.size = size;
                    msg.offset = off;
                    msg.data = data;
                    send(Message::FsFile(msg))?;
                    off += want as u64;
                    bytes += want as u64;
                    first = false;
                }
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&full).map_err(io("readlink", &full))?;
                send(Message::FsFile(base(
                    FsKind::Symlink {
                        target: t.as_os_str().as_bytes().to_vec(),
                    },
                    Vec::new(),
                )))?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                send(Message::FsFile(base(
                    FsKind::Node {
                        rdev: m.rdev(),
                        fifo: ft.is_fifo(),
                    },
                    Vec::new(),
                )))?;
                let _ = ft.is_block_device();
            }
            // Sockets are left out: a socket file means nothing without its socket.
        }
    }
    Ok((files, bytes))
}

/// `path` under `root`, refused if it is not a plain relative path.
fn target(root: &Path, path: &[u8]) -> Result<PathBuf> {
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    if path.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(MigrateError::Connection(format!(
            "the peer sent a file path that leaves the private area: {:?}",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(root.join(p))
}

/// Writes one received entry under `root`. The parent of every entry was sent before it (as a
/// directory this side created), and nothing is followed through a link: an entry's parent
/// must be a real directory. With `overwrite` (a later pass), what is there is replaced.
pub fn apply(root: &Path, f: &FsFile, overwrite: bool) -> Result<()> {
    let path = target(root, &f.path)?;
    if f.kind == FsKind::Removed {
        // Its parent may be gone already (removed with it).
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            let r = if m.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(io("remove", &path))?;
        }
        return Ok(());
    }
    if overwrite && f.offset == 0 {
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.is_dir() && f.kind == FsKind::Dir {
                return Ok(());
            }
            if m.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            } else {
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
    }
    if let Some(parent) = path.parent() {
        let pm = std::fs::symlink_metadata(parent).map_err(io("stat", parent))?;
        if !pm.is_dir() {
            return Err(MigrateError::Connection(format!(
                "the parent of {} is not a directory",
                path.display()
            )));
        }
    }
    let perm = std::fs::Permissions::from_mode(f.mode);
    match &f.kind {
        FsKind::Dir => {
            std::fs::create_dir(&path).map_err(io("create", &path))?;
        }
        FsKind::File => {
            use std::os::unix::fs::{FileExt, OpenOptionsExt};
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(f.offset == 0)
                .create_new(f.offset == 0)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io("write", &path))?;
            file.write_all_at(&f.data, f.offset)
                .map_err(io("write", &path))?;
            if f.offset == 0 {
                file.set_len(f.size).map_err(io("truncate", &path))?;
            }
        }
        FsKind::Symlink { target } => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                .map_err(io("symlink", &path))?;
        }
        FsKind::HardLink { target: t } => {
            let t = self::target(root, t)?;
            std::fs::hard_link(&t, &path).map_err(io("link", &path))?;
        }
        FsKind::Node { rdev, fifo } => {
            let kind = if *fifo {
                nix::sys::stat::SFlag::S_IFIFO
            } else {
                nix::sys::stat::SFlag::S_IFCHR
            };
            nix::sys::stat::mknod(
                &path,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(f.mode),
                *rdev,
            )
            .map_err(|e| io("mknod", &path)(e.into()))?;
        }
        FsKind::Removed => return Ok(()),
    }
    if f.offset > 0 {
        return Ok(());
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &path,
        Some(nix::unistd::Uid::from_raw(f.uid)),
        Some(nix::unistd::Gid::from_raw(f.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io("chown", &path)(e.into()))?;
    if !matches!(f.kind, FsKind::Symlink { .. }) {
        std::fs::set_permissions(&path, perm).map_err(io("chmod", &path))?;
    }
    if matches!(f.kind, FsKind::Dir | FsKind::File) && !f.xattrs.is_empty() {
        let file = std::fs::File::open(&path).map_err(io("open", &path))?;
        for (k, v) in &f.xattrs {
            sys::xattr::set(&file, k, v)
                .map_err(|e| MigrateError::Keys(format!("xattr {k} of {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// What identifies an entry's state between two passes.
fn signature(f: &FsFile) -> (FsKind, u32, u32, u32, i64, u64) {
    (f.kind.clone(), f.mode, f.uid, f.gid, f.mtime_ns, f.size)
}

/// The messages of a second walk that differ from the first: entries new or changed (every
/// chunk of a changed file), then `Removed` for entries gone since.
pub fn delta(first: &[Message], second: Vec<Message>) -> Vec<Message> {
    use std::collections::{HashMap, HashSet};
    let before: HashMap<&[u8], _> = first
        .iter()
        .filter_map(|m| match m {
            Message::FsFile(f) if f.offset == 0 => Some((f.path.as_slice(), signature(f))),
            _ => None,
        })
        .collect();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut changed: HashSet<Vec<u8>> = HashSet::new();
    for m in &second {
        if let Message::FsFile(f) = m {
            if f.offset == 0 {
                seen.insert(f.path.clone());
                if before.get(f.path.as_slice()) != Some(&signature(f)) {
                    changed.insert(f.path.clone());
                }
            }
        }
    }
    let mut out: Vec<Message> = second
        .into_iter()
        .filter(|m| matches!(m, Message::FsFile(f) if changed.contains(&f.path)))
        .collect();
    for path in before.keys().filter(|p| !seen.contains(**p)) {
        out.push(Message::FsFile(FsFile {
            path: path.to_vec(),
            kind: FsKind::Removed,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            xattrs: Vec::new(),
            size: 0,
            offset: 0,
            data: Vec::new(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_pass_sends_changes_and_removals_only() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("d/e")).unwrap();
        std::fs::write(src.path().join("d/same"), "same").unwrap();
        std::fs::write(src.path().join("d/e/gone"), "x").unwrap();
        std::fs::write(src.path().join("grows"), "1").unwrap();
        std::os::unix::fs::symlink("d/same", src.path().join("link")).unwrap();
        let mut first = Vec::new();
        walk(src.path(), &mut |m| {
            first.push(m);
            Ok(())
        })
        .unwrap();
        for m in &first {
            let Message::FsFile(f) = m else {
                unreachable!()
            };
            apply(dst.path(), f, false).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(src.path().join("grows"), "12345").unwrap();
        std::fs::remove_dir_all(src.path().join("d/e")).unwrap();
        std::fs::write(src.path().join("new"), "n").unwrap();
        let mut second = Vec::new();
        walk(src.path(), &mut |m| {
            second.push(m);
            Ok(())
        })
        .unwrap();
        let d = delta(&first, second);
        let paths: Vec<String> = d
            .iter()
            .map(|m| match m {
                Message::FsFile(f) => format!("{:?} {}", f.kind, String::from_utf8_lossy(&f.path)),
                _ => String::new(),
            })
            .collect();
        assert!(paths.iter().any(|p| p == "File grows"), "{paths:?}");
        assert!(paths.iter().any(|p| p == "File new"), "{paths:?}");
        assert!(paths.iter().any(|p| p == "Removed d/e"), "{paths:?}");
        assert!(
            !paths
                .iter()
                .any(|p| p.ends_with(" d/same") || p.ends_with(" link")),
            "{paths:?}"
        );
        for m in &d {
            let Message::FsFile(f) = m else {
                unreachable!()
            };
            apply(dst.path(), f, true).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(dst.path().join("grows")).unwrap(),
            "12345"
        );
        assert_eq!(
            std::fs::read_to_string(dst.path().join("new")).unwrap(),
            "n"
        );
        assert!(!dst.path().join("d/e").exists());
        assert_eq!(
            std::fs::read_link(dst.path().join("link")).unwrap(),
            Path::new("d/same")
        );
    }

    #[test]
    fn paths_that_leave_the_area_are_refused() {
        let dst = tempfile::tempdir().unwrap();
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../x", b""] {
            let f = FsFile {
                path: bad.to_vec(),
                kind: FsKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                xattrs: Vec::new(),
                size: 0,
                offset: 0,
                data: Vec::new(),
            };
            assert!(apply(dst.path(), &f, false).is_err(), "{bad:?}");
        }
    }
}
