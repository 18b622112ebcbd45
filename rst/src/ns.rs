//! Namespaces of the tree: the root is cloned into new ones (those the image says it owned),
//! and, still a single-threaded builder, fills them before it creates its children: the mount
//! tree on the given root file system (then `pivot_root` into it), host name, loopback.
//! Everything the children inherit is therefore in place when they are forked.
//!
//! Mount propagation is not carried over: every restored mount is private.

use std::path::{Component, Path, PathBuf};

use images_format::ns::{MountEntry, MountKind, NamespacesImage, NsKind};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::RestoreError;

/// The `CLONE_NEW*` flags for the namespaces the root owned (the PID one aside).
pub fn clone_flags(img: &NamespacesImage) -> u64 {
    img.own
        .iter()
        .map(|k| match k {
            NsKind::Mnt => libc::CLONE_NEWNS,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Net => libc::CLONE_NEWNET,
        } as u64)
        .fold(0, |a, b| a | b)
}

/// Checked in the restorer before anything is created.
pub fn check(img: &NamespacesImage, root_dir: Option<&Path>) -> Result<(), RestoreError> {
    if !img.own.contains(&NsKind::Mnt) {
        return Ok(());
    }
    let Some(root) = root_dir else {
        return Err(RestoreError::Invalid(
            "the tree had its own mount namespace: give the root file system to restore it on (--root DIR)".into(),
        ));
    };
    if !root.is_dir() {
        return Err(RestoreError::Invalid(format!(
            "root file system {} is not a directory",
            root.display()
        )));
    }
    match img.mounts.first() {
        Some(m) if m.kind == MountKind::Root => {}
        _ => {
            return Err(RestoreError::Invalid(
                "the mount tree does not start with its root mount".into(),
            ))
        }
    }
    for m in &img.mounts[1..] {
        relative(&m.mountpoint).map_err(RestoreError::Invalid)?;
        if let MountKind::Bind { source_path } = &m.kind {
            relative(source_path).map_err(RestoreError::Invalid)?;
        }
        if m.kind == MountKind::Root {
            return Err(RestoreError::Invalid(format!(
                "mount {} is a second root mount",
                m.mountpoint
            )));
        }
    }
    Ok(())
}

/// `path` (absolute, as the tree sees it) as a relative path without `..`.
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("mount path {path:?} is not absolute"));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("mount path {path:?} leaves its root"))
            }
        }
    }
    Ok(out)
}

/// A path under `root` that must stay under it once symbolic links are resolved.
fn beneath(root: &Path, path: &str) -> Result<PathBuf, String> {
    let full = root.join(relative(path)?);
    if !full.exists() {
        std::fs::create_dir_all(&full).map_err(|e| format!("create {}: {e}", full.display()))?;
    }
    let real = full
        .canonicalize()
        .map_err(|e| format!("resolve {}: {e}", full.display()))?;
    let real_root = root
        .canonicalize()
        .map_err(|e| format!("resolve {}: {e}", root.display()))?;
    if !real.starts_with(&real_root) {
        return Err(format!(
            "mount point {path} resolves to {} outside the root file system",
            real.display()
        ));
    }
    Ok(real)
}

/// Runs in the root builder, inside its new namespaces, before it forks anything.
/// `fill_tmpfs` refills a freshly mounted tmpfs (mounted at the given host path) from the image.
pub fn build_in_root(
    img: &NamespacesImage,
    root_dir: Option<&Path>,
    fill_tmpfs: &dyn Fn(&MountEntry, &Path) -> Result<(), String>,
) -> Result<(), String> {
    if let Some(uts) = &img.uts {
        nix::unistd::sethostname(&uts.hostname).map_err(|e| format!("sethostname: {e}"))?;
        sys::ns::setdomainname(&uts.domainname).map_err(|e| e.to_string())?;
    }
    if img.net.as_ref().is_some_and(|n| n.loopback_up) {
        sys::ns::set_link_up("lo").map_err(|e| format!("loopback up: {e}"))?;
    }
    if img.own.contains(&NsKind::Mnt) {
        let root = root_dir.ok_or("no root file system given")?;
        build_mounts(img, root, fill_tmpfs)?;
    }
    Ok(())
}

fn build_mounts(
    img: &NamespacesImage,
    root: &Path,
    fill_tmpfs: &dyn Fn(&MountEntry, &Path) -> Result<(), String>,
) -> Result<(), String> {
    let none: Option<&str> = None;
    // Nothing done here may propagate back to the host's mounts.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("make / private: {e}"))?;
    // pivot_root needs the new root to be a mount point: a bind of it onto itself.
    mount(Some(root), root, none, MsFlags::MS_BIND, none)
        .map_err(|e| format!("bind {}: {e}", root.display()))?;
    let root_flags = img.mounts[0].flags & libc::MS_RDONLY;
    for m in &img.mounts[1..] {
        let target = beneath(root, &m.mountpoint)?;
        let flags = MsFlags::from_bits_truncate(m.flags as _);
        let data = (!m.fs_options.is_empty()).then_some(m.fs_options.as_str());
        let what = |e: nix::Error| format!("mount {} ({}): {e}", m.mountpoint, m.fstype);
        match &m.kind {
            MountKind::Root => return Err(format!("mount {} is a second root", m.mountpoint)),
            MountKind::Fresh => mount(
                Some(m.source.as_str()),
                &target,
                Some(m.fstype.as_str()),
                flags,
                data,
            )
            .map_err(what)?,
            MountKind::Tmpfs => {
                mount(
                    Some(m.source.as_str()),
                    &target,
                    Some("tmpfs"),
                    flags - MsFlags::MS_RDONLY,
                    data,
                )
                .map_err(what)?;
                fill_tmpfs(m, &target)?;
                if flags.contains(MsFlags::MS_RDONLY) {
                    remount_bind(&target, flags).map_err(what)?;
                }
            }
            MountKind::Bind { source_path } => {
                let source = beneath(root, source_path)?;
                mount(Some(&source), &target, none, MsFlags::MS_BIND, none).map_err(what)?;
                if !flags.is_empty() {
                    remount_bind(&target, flags).map_err(what)?;
                }
            }
        }
    }
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
    // new root, without needing a directory to put the old one in.
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    if root_flags != 0 {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| format!("remount / read-only: {e}"))?;
    }
    Ok(())
}

fn remount_bind(target: &Path, flags: MsFlags) -> nix::Result<()> {
    let none: Option<&str> = None;
    mount(
        none,
        target,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        none,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_stay_beneath_the_root() {
        assert_eq!(relative("/a/b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert!(relative("/a/../../etc").is_err());
        assert!(relative("a/b").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let e = beneath(dir.path(), "/out").unwrap_err();
        assert!(e.contains("outside the root"), "{e}");
        assert!(beneath(dir.path(), "/in/side").is_ok());
    }
}
