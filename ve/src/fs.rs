//! A VE's file systems. Its root is an overlay mounted on the host at `$VZ_DIR/root/CTID`
//! (as OpenVZ's `vzctl mount` did): the base (the host's `/` or the config's `root`) below,
//! the private area above, so the VE can run what the host has installed and its own changes
//! persist in the private area. Inside its mount namespace the VE then gets its own /proc,
//! /sys, a minimal /dev on a tmpfs, devpts, mqueue, and tmpfs /tmp and /run.
//!
//! The VE's init program is installed in the private area as `/.vz/vzinit`, so that the
//! executable of every VE process is inside the VE's root (its dump refers to it by path).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::layout::is_mount_point;
use crate::{io_err, Layout, Result, VeConfig, VeError};

/// Path of the VE init inside the VE.
pub const INIT_PATH: &str = "/.vz/vzinit";

/// Mounts the VE's root overlay on the host, if not mounted yet.
pub fn mount_root(layout: &Layout, ctid: u32, cfg: &VeConfig) -> Result<PathBuf> {
    let root = layout.root(ctid);
    let (upper, work) = (layout.upper(ctid), layout.work(ctid));
    for d in [&root, &upper, &work] {
        std::fs::create_dir_all(d).map_err(io_err(ctid, "create", d))?;
    }
    if is_mount_point(&root) {
        return Ok(root);
    }
    let lower = cfg.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    for p in [&lower, &upper, &work] {
        if p.to_string_lossy().contains([',', ':']) {
            return Err(VeError::Failed {
                ctid,
                what: format!(
                    "path {} cannot be an overlay layer (',' or ':')",
                    p.display()
                ),
            });
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| VeError::Failed {
        ctid,
        what: format!("mount the root overlay on {} ({opts}): {e}", root.display()),
    })?;
    Ok(root)
}

/// Unmounts the VE's root from the host (lazily: a process of the host may still look at it).
pub fn umount_root(layout: &Layout, ctid: u32) -> Result<()> {
    let root = layout.root(ctid);
    while is_mount_point(&root) {
        umount2(&root, MntFlags::MNT_DETACH).map_err(|e| VeError::Failed {
            ctid,
            what: format!("unmount {}: {e}", root.display()),
        })?;
    }
    Ok(())
}

/// Puts the init program into the private area: a hard link of the installed `vzinit` when
/// both are on one file system, else a copy.
pub fn install_init(layout: &Layout, ctid: u32) -> Result<()> {
    let src = init_binary().ok_or_else(|| VeError::Failed {
        ctid,
        what: "the vzinit program is not installed beside vzctl".into(),
    })?;
    let dir = layout.upper(ctid).join(".vz");
    std::fs::create_dir_all(&dir).map_err(io_err(ctid, "create", &dir))?;
    let dst = dir.join("vzinit");
    let tmp = dir.join("vzinit.new");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&src, &tmp).is_err() {
        std::fs::copy(&src, &tmp).map_err(io_err(ctid, "copy the init to", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(ctid, "chmod", &tmp))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(ctid, "install", &dst))?;
    Ok(())
}

/// `vzinit` beside the running program (`$VZINIT` overrides).
fn init_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VZINIT") {
        return Some(PathBuf::from(p));
    }
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join("vzinit");
    p.is_file().then_some(p)
}

/// Builds the VE's own mounts on its root and makes it the root (`pivot_root`). Runs in the
/// VE's first process, in its new mount, PID and network namespaces, before anything else.
pub fn enter_root(root: &Path) -> std::result::Result<(), String> {
    let none: Option<&str> = None;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mnt = |src: &str, target: &str, fstype: &str, flags: MsFlags, data: &str| {
        let t = at(target);
        std::fs::create_dir_all(&t).map_err(|e| format!("create {}: {e}", t.display()))?;
        mount(Some(src), &t, Some(fstype), flags, Some(data))
            .map_err(|e| format!("mount {fstype} on {target}: {e}"))
    };
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("make / private: {e}"))?;
    mount(Some(root), root, none, MsFlags::MS_BIND, none)
        .map_err(|e| format!("bind {}: {e}", root.display()))?;
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", secure, "")?;
    mnt("sysfs", "/sys", "sysfs", secure | MsFlags::MS_RDONLY, "")?;
    mnt(
        "tmpfs",
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID,
        "size=65536k,mode=755",
    )?;
    let dev = at("/dev");
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod /dev/{name}: {e}"))?;
        // mknod applies the umask; the nodes are world-usable as on any system.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("chmod /dev/{name}: {e}"))?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620,gid=5",
    )?;
    mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    mnt("mqueue", "/dev/mqueue", "mqueue", secure, "")?;
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=755",
    )?;
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the host's root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}
