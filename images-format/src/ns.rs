//! Records of the namespaces a tree owns: which ones the restore must create anew, and what is
//! in them (host name, mount tree, loopback). IPC objects and tmpfs contents have their own
//! records (`ipc`, `tmpfs`).
//!
//! A namespace is "owned" when the tree's root is in a different one from the dumper; every
//! task of the tree is then in the root's. A tree in the dumper's own namespaces records none.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct NamespacesImage {
    /// The namespaces to create for the root (the PID one is `PstreeImage::pid_ns_init`).
    pub own: Vec<NsKind>,
    /// Host and domain name, when the UTS namespace is owned.
    pub uts: Option<UtsState>,
    /// The mount tree in mount order (parents first), when the mount namespace is owned.
    /// The first entry is the root mount; the restore is given the root file system itself.
    pub mounts: Vec<MountEntry>,
    /// The network namespace, when owned.
    pub net: Option<NetState>,
}

impl Image for NamespacesImage {
    const KIND: ImageKind = ImageKind::Ns;
    const MAX_PAYLOAD: u64 = 16 << 20;
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsKind {
    Mnt,
    Uts,
    Ipc,
    Net,
}

impl NsKind {
    pub const ALL: [NsKind; 4] = [NsKind::Mnt, NsKind::Uts, NsKind::Ipc, NsKind::Net];

    /// The name under `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Mnt => "mnt",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::Net => "net",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UtsState {
    pub hostname: String,
    pub domainname: String,
}

/// One mount, as `/proc/PID/mountinfo` of the root shows it (paths as the tree sees them).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent_id: u32,
    /// Where it is mounted, as seen from the tree's root ("/" for the root mount).
    pub mountpoint: String,
    pub fstype: String,
    /// The mount source ("proc", "tmpfs", a device, ...).
    pub source: String,
    /// Per-mount flags (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`, `MS_NOATIME`,
    /// `MS_NODIRATIME`, `MS_RELATIME`).
    pub flags: u64,
    /// File-system options (the super block's, without `rw`/`ro`), as `mount(2)` data.
    pub fs_options: String,
    pub kind: MountKind,
}

/// How a mount comes back.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// The root file system: given to the restore (a VE's root), not rebuilt from the image.
    Root,
    /// A file system with nothing to carry: proc, sysfs, devpts, mqueue, cgroup2. Mounted anew.
    Fresh,
    /// A tmpfs mounted anew and refilled from the `tmpfs` record entry named by `mountpoint`.
    Tmpfs,
    /// A bind mount of `source_path` (a path in the tree's root file system) onto the mount point.
    Bind { source_path: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct NetState {
    /// Whether `lo` was up.
    pub loopback_up: bool,
    /// Links other than `lo`: the VE ends of veth pairs, recreated by the VE layer.
    pub links: Vec<NetLink>,
    /// Addresses of those links.
    pub addrs: Vec<NetAddr>,
    /// Routes of the main tables other than those the kernel makes from addresses.
    pub routes: Vec<NetRoute>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NetLink {
    pub name: String,
    /// `veth`: only the VE end of a pair whose other end is on the host.
    pub kind: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NetAddr {
    pub dev: String,
    /// Address with its prefix length, as `ip addr add` takes it.
    pub addr: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NetRoute {
    pub v6: bool,
    /// The route as `ip route add` arguments (`default via 10.0.0.1 dev eth0 metric 10`).
    pub args: Vec<String>,
}
