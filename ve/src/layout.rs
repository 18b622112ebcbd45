//! Where a VE's state lives: `$VZ_DIR` (default `/var/lib/vz`) and the name of the cgroup that
//! holds all VEs (`$VZ_CGROUP`, default `vz`) in every hierarchy. Tests give each "host" its
//! own pair, so several hosts share one machine.
//!
//! ```text
//! $VZ_DIR/conf/CTID.conf        config (TOML)
//! $VZ_DIR/private/CTID          the private area (a btrfs subvolume when on btrfs)
//! $VZ_DIR/private/CTID/upper    the VE's own files: the overlay's writable layer
//! $VZ_DIR/private/CTID/work     the overlay's work directory
//! $VZ_DIR/private/snapshots/CTID/NAME  a snapshot (on the private area's file system)
//! $VZ_DIR/root/CTID             where the VE's root is mounted while it runs
//! $VZ_DIR/dump/CTID             the default checkpoint image
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub vz_dir: PathBuf,
    /// The cgroup under which each VE has its own, in every hierarchy.
    pub cgroup_name: String,
}

impl Layout {
    pub fn new(vz_dir: impl Into<PathBuf>, cgroup_name: impl Into<String>) -> Self {
        Layout {
            vz_dir: vz_dir.into(),
            cgroup_name: cgroup_name.into(),
        }
    }

    /// From `$VZ_DIR` and `$VZ_CGROUP`, with their defaults.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("VZ_DIR").unwrap_or_else(|| "/var/lib/vz".into());
        let cg = std::env::var("VZ_CGROUP").unwrap_or_else(|_| "vz".into());
        Layout::new(dir, cg)
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.vz_dir.join("conf")
    }
    pub fn conf(&self, ctid: u32) -> PathBuf {
        self.conf_dir().join(format!("{ctid}.conf"))
    }
    pub fn private(&self, ctid: u32) -> PathBuf {
        self.vz_dir.join("private").join(ctid.to_string())
    }
    pub fn upper(&self, ctid: u32) -> PathBuf {
        self.private(ctid).join("upper")
    }
    pub fn work(&self, ctid: u32) -> PathBuf {
        self.private(ctid).join("work")
    }
    /// The VE's snapshots (see `snapshot`): beside the private areas, because a btrfs
    /// snapshot lives on the file system of its subvolume.
    pub fn snapshots(&self, ctid: u32) -> PathBuf {
        self.vz_dir
            .join("private")
            .join("snapshots")
            .join(ctid.to_string())
    }
    pub fn root(&self, ctid: u32) -> PathBuf {
        self.vz_dir.join("root").join(ctid.to_string())
    }
    pub fn dump(&self, ctid: u32) -> PathBuf {
        self.vz_dir.join("dump").join(ctid.to_string())
    }
    /// The VE's cgroup path from each hierarchy's root.
    pub fn cgroup_path(&self, ctid: u32) -> String {
        format!("/{}/{ctid}", self.cgroup_name.trim_matches('/'))
    }

    /// Every VE with a config file, sorted by CTID.
    pub fn ctids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(self.conf_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".conf")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Whether `path` is a mount point (its device differs from its parent's, or it is `/`).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    let Ok(up) = std::fs::metadata(parent) else {
        return false;
    };
    me.dev() != up.dev() || me.ino() == up.ino()
}
