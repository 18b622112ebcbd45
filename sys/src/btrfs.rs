//! btrfs subvolumes and snapshots through the file system's own ioctls (`ioctl_btrfs(2)`,
//! `include/uapi/linux/btrfs.h`): VE snapshots take a read-only snapshot of the VE's private
//! area in constant time while the VE is stopped, and rollbacks make writable snapshots of
//! those. No `btrfs` program is needed at run time.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::{Result, SysError};

/// `BTRFS_IOCTL_MAGIC`.
const MAGIC: u64 = 0x94;
/// `BTRFS_PATH_NAME_MAX`: `btrfs_ioctl_vol_args.name` holds this many bytes and a NUL.
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`: `btrfs_ioctl_vol_args_v2.name` holds this many bytes and a NUL.
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the new snapshot is read-only.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2`; the unions are laid out as their first member
/// (`unused[4]`, then `name`), which is as large as each union.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

// The kernel reads exactly `size_of` of these (the size is part of the request number).
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

/// `_IOW(MAGIC, nr, size)` in the generic encoding (x86, arm, riscv, ...): direction "write"
/// (1) in bits 30-31, the argument size in bits 16-29, the magic in bits 8-15.
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
}

/// `BTRFS_IOC_SUBVOL_CREATE`.
const IOC_SUBVOL_CREATE: u64 = iow(14, std::mem::size_of::<VolArgs>());
/// `BTRFS_IOC_SNAP_DESTROY`.
const IOC_SNAP_DESTROY: u64 = iow(15, std::mem::size_of::<VolArgs>());
/// `BTRFS_IOC_SNAP_CREATE_V2`.
const IOC_SNAP_CREATE_V2: u64 = iow(23, std::mem::size_of::<VolArgsV2>());

/// Whether `path` lies on a btrfs file system.
pub fn is_btrfs(path: &Path) -> Result<bool> {
    Ok(fs_type(path)? == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// The file-system type of `path` (`statfs(2)`'s `f_type`).
pub fn fs_type(path: &Path) -> Result<nix::sys::statfs::FsType> {
    let st = nix::sys::statfs::statfs(path).map_err(|source| SysError::Syscall {
        op: "statfs",
        source,
    })?;
    Ok(st.filesystem_type())
}

/// A readable name of `path`'s file-system type ("ext4", "tmpfs", or its magic in hex).
pub fn fs_type_name(path: &Path) -> String {
    use nix::sys::statfs as s;
    let Ok(t) = fs_type(path) else {
        return "an unknown file system".into();
    };
    let known = [
        (s::BTRFS_SUPER_MAGIC, "btrfs"),
        (s::EXT4_SUPER_MAGIC, "ext4 (or ext2/ext3)"),
        (s::TMPFS_MAGIC, "tmpfs"),
        (s::FsType(0x5846_5342), "xfs"),
        (s::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (s::NFS_SUPER_MAGIC, "nfs"),
    ];
    known.iter().find(|(m, _)| *m == t).map_or_else(
        || format!("file system type {:#x}", t.0),
        |(_, n)| n.to_string(),
    )
}

/// Whether `path` is the root directory of a btrfs subvolume (inode 256 on btrfs).
pub fn is_subvolume(path: &Path) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| SysError::Invalid {
        op: "stat",
        reason: format!("{}: {e}", path.display()),
    })?;
    Ok(meta.is_dir() && meta.ino() == SUBVOL_ROOT_INO && is_btrfs(path)?)
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| SysError::Syscall {
        op: "open directory",
        source,
    })
}

/// Splits `path` into its parent directory (opened) and its last component, which must fit
/// a btrfs name of at most `max` bytes.
fn parent_and_name(path: &Path, max: usize) -> Result<(OwnedFd, &OsStr)> {
    let invalid = |reason: String| SysError::Invalid {
        op: "btrfs subvolume path",
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} has no last component", path.display())))?;
    if name.len() > max || name.as_bytes().contains(&0) {
        return Err(invalid(format!("{} is too long a name", path.display())));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir(parent)?, name))
}

fn ioctl_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> SysError + 'a {
    move |e| SysError::Invalid {
        op,
        reason: format!("{}: {e}", path.display()),
    }
}

/// Creates an empty subvolume at `path` (`BTRFS_IOC_SUBVOL_CREATE` on its parent).
pub fn create_subvolume(path: &Path) -> Result<()> {
    name_ioctl(path, IOC_SUBVOL_CREATE as _, "BTRFS_IOC_SUBVOL_CREATE")
}

/// An ioctl on `path`'s parent directory that takes `path`'s name in a
/// `btrfs_ioctl_vol_args` (subvolume create and destroy).
fn name_ioctl(path: &Path, request: libc::c_ulong, op: &'static str) -> Result<()> {
    let (dir, name) = parent_and_name(path, PATH_NAME_MAX)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory; `args` is a fully initialised
    // `btrfs_ioctl_vol_args` (its size is in the request number) with a NUL-terminated name,
    // borrowed for the call; the kernel only reads it.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), request as _, &args as *const VolArgs) };
    Errno::result(r).map_err(ioctl_err(op, path))?;
    Ok(())
}

/// Makes `dest` a snapshot of subvolume `source` (`BTRFS_IOC_SNAP_CREATE_V2`), read-only with
/// `read_only`. Both must be on one btrfs file system. The kernel writes the subvolume's
/// dirty data out first, so the snapshot holds every write made before the call.
pub fn snapshot(source: &Path, dest: &Path, read_only: bool) -> Result<()> {
    let src = open_dir(source)?;
    let (dir, name) = parent_and_name(dest, SUBVOL_NAME_MAX)?;
    let mut args = VolArgsV2 {
        fd: i64::from(src.as_fd().as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory and `args.fd` an open descriptor of the source
    // that outlives the call; `args` is a fully initialised `btrfs_ioctl_vol_args_v2` (no
    // qgroup pointer: that flag is clear) with a NUL-terminated name; the kernel reads it.
    let r = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            IOC_SNAP_CREATE_V2 as _,
            &args as *const VolArgsV2,
        )
    };
    Errno::result(r).map_err(ioctl_err("BTRFS_IOC_SNAP_CREATE_V2", dest))?;
    Ok(())
}

/// Deletes subvolume `path` with everything in it, read-only or not (`BTRFS_IOC_SNAP_DESTROY`
/// on its parent; needs `CAP_SYS_ADMIN`, or the mount option `user_subvol_rm_allowed`). The
/// space is given back in the background; extents other snapshots share stay theirs.
pub fn delete_subvolume(path: &Path) -> Result<()> {
    name_ioctl(path, IOC_SNAP_DESTROY as _, "BTRFS_IOC_SNAP_DESTROY")
}

/// Atomically swaps two paths of one file system (`renameat2(2)` with `RENAME_EXCHANGE`):
/// both stay in place under each other's name; subvolumes may be swapped.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| SysError::Invalid {
        op: "renameat2(RENAME_EXCHANGE)",
        reason: format!("{} and {}: {e}", a.display(), b.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers as `include/uapi/linux/btrfs.h` makes them on x86-64.
    #[test]
    fn request_numbers_match_the_uapi() {
        assert_eq!(IOC_SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(IOC_SNAP_DESTROY, 0x5000_940f);
        assert_eq!(IOC_SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(std::mem::offset_of!(VolArgsV2, flags), 16);
        assert_eq!(std::mem::offset_of!(VolArgsV2, name), 56);
    }
}
