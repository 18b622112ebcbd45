//! Namespaces of the tree: which ones its root owns (those that differ from the dumper's), and
//! what they hold: host name, mount tree, loopback state. Every task must share the root's
//! namespaces; a nested one is an error naming the task.
//!
//! A namespace's contents are read from a short-lived thread that `setns`es into it, so the
//! dumper's own threads never change namespace (UTS, IPC and network namespaces are per thread).
//! Mounts are read from `/proc/ROOT/mountinfo`, which shows them as the root sees them.

use std::os::unix::fs::MetadataExt;

use images_format::ns::{
    MountEntry, MountKind, NamespacesImage, NetAddr, NetLink, NetRoute, NetState, NsKind, UtsState,
};
use nix::sched::CloneFlags;

use crate::DumpError;

/// Namespace kinds the engine cannot carry yet; a tree owning one is refused.
const UNSUPPORTED: [(&str, &str); 3] = [
    ("user", "user namespaces are not supported"),
    ("cgroup", "cgroup namespaces are not supported"),
    ("time", "time namespaces are not supported"),
];

fn ns_inode(pid: &str, name: &str) -> Result<u64, DumpError> {
    let path = format!("/proc/{pid}/ns/{name}");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|source| DumpError::Io {
            op: "stat",
            path: path.into(),
            source,
        })
}

/// Runs `f` on a new thread that has joined namespace `name` of task `pid`.
pub fn in_namespace<T: Send>(
    pid: i32,
    name: &str,
    flag: CloneFlags,
    f: impl FnOnce() -> Result<T, DumpError> + Send,
) -> Result<T, DumpError> {
    let path = format!("/proc/{pid}/ns/{name}");
    let file = std::fs::File::open(&path).map_err(|source| DumpError::Io {
        op: "open",
        path: path.clone().into(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, flag).map_err(|e| DumpError::Task {
                pid,
                what: format!("{name} namespace"),
                reason: format!("setns: {e}"),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(DumpError::Tree("a namespace reader thread panicked".into())))
    })
}

/// Finds the namespaces the root owns and dumps their contents. `pids` are the tree's live
/// processes (host PIDs), the root first.
pub fn dump_namespaces(root: i32, pids: &[i32]) -> Result<NamespacesImage, DumpError> {
    let mut img = NamespacesImage::default();
    let root_s = root.to_string();
    for (name, why) in UNSUPPORTED {
        // A kernel without that namespace kind has no such file: nothing to compare.
        let (Ok(mine), Ok(theirs)) = (ns_inode("self", name), ns_inode(&root_s, name)) else {
            continue;
        };
        if mine != theirs {
            return Err(DumpError::Unsupported {
                pid: root,
                resource: format!("{name} namespace"),
                reason: why.into(),
            });
        }
    }
    for kind in NsKind::ALL {
        let name = kind.proc_name();
        let root_ino = ns_inode(&root_s, name)?;
        if root_ino == ns_inode("self", name)? {
            continue;
        }
        for &pid in pids {
            if ns_inode(&pid.to_string(), name)? != root_ino {
                return Err(DumpError::Unsupported {
                    pid,
                    resource: format!("nested {name} namespace"),
                    reason: format!(
                        "it is not in the {name} namespace of the tree's root {root}; only the root may own namespaces"
                    ),
                });
            }
        }
        img.own.push(kind);
    }
    if img.own.contains(&NsKind::Uts) {
        img.uts = Some(in_namespace(root, "uts", CloneFlags::CLONE_NEWUTS, || {
            let u = nix::sys::utsname::uname().map_err(|e| DumpError::Task {
                pid: root,
                what: "host name".into(),
                reason: e.to_string(),
            })?;
            Ok(UtsState {
                hostname: u.nodename().to_string_lossy().into_owned(),
                domainname: u.domainname().to_string_lossy().into_owned(),
            })
        })?);
    }
    if img.own.contains(&NsKind::Net) {
        let t = std::time::Instant::now();
        img.net = Some(dump_net(root)?);
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1000.0,
            "network namespace dumped"
        );
    }
    if img.own.contains(&NsKind::Mnt) {
        let path = format!("/proc/{root}/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|source| DumpError::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        img.mounts = classify_mounts(root, &parse_mountinfo(&text))?;
    }
    Ok(img)
}

/// `ip -j ARGS` for each of `queries`, inside the network namespace of `pid` (iproute2, as the
/// VE layer uses it). All are started at once and then waited for: each costs a fork and two
/// execs, and the tree is stopped meanwhile.
fn ip_json(pid: i32, queries: &[&[&str]]) -> Result<Vec<serde_json::Value>, DumpError> {
    let fail = |reason: String| DumpError::Task {
        pid,
        what: "network namespace".into(),
        reason,
    };
    let children = queries
        .iter()
        .map(|args| {
            std::process::Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["ip", "-j"])
                .args(*args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| {
                    fail(format!(
                        "run nsenter ip: {e} (are util-linux and iproute2 installed?)"
                    ))
                })
        })
        .collect::<Vec<_>>();
    // Every child started is waited for, also when another failed to start.
    let mut results = Vec::with_capacity(queries.len());
    let mut first_err = None;
    for (args, child) in queries.iter().zip(children) {
        let r = child.and_then(|c| {
            let out = c
                .wait_with_output()
                .map_err(|e| fail(format!("ip -j {}: {e}", args.join(" "))))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "ip -j {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            serde_json::from_slice(&out.stdout)
                .map_err(|e| fail(format!("ip -j {}: {e}", args.join(" "))))
        });
        match r {
            Ok(v) => results.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

fn dump_net(root: i32) -> Result<NetState, DumpError> {
    let mut net = NetState::default();
    let [links, addrs, routes4, routes6]: [serde_json::Value; 4] = ip_json(
        root,
        &[
            &["-d", "link", "show"],
            &["addr", "show"],
            &["-4", "route", "show", "table", "main"],
            &["-6", "route", "show", "table", "main"],
        ],
    )?
    .try_into()
    .map_err(|_| DumpError::Tree("ip gave fewer answers than asked".into()))?;
    let str_of = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
    };
    for link in links.as_array().into_iter().flatten() {
        let name = str_of(link, "ifname");
        let flags: Vec<&str> = link
            .get("flags")
            .and_then(|f| f.as_array())
            .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let up = flags.contains(&"UP");
        if name == "lo" {
            net.loopback_up = up;
            continue;
        }
        let kind = link
            .get("linkinfo")
            .and_then(|i| i.get("info_kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        if kind != "veth" {
            return Err(DumpError::Unsupported {
                pid: root,
                resource: format!("network interface {name} ({kind})"),
                reason: "only the loopback and veth ends (vzctl --ipadd) are dumped".into(),
            });
        }
        net.links.push(NetLink {
            name,
            kind,
            mac: str_of(link, "address"),
            mtu: link.get("mtu").and_then(|m| m.as_u64()).unwrap_or(0) as u32,
            up,
        });
    }
    for a in addrs.as_array().into_iter().flatten() {
        let dev = str_of(a, "ifname");
        if dev == "lo" {
            continue;
        }
        for info in a
            .get("addr_info")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
        {
            // Link-local IPv6 addresses come back by themselves with the link.
            if str_of(info, "scope") == "link" {
                continue;
            }
            let local = str_of(info, "local");
            let prefix = info.get("prefixlen").and_then(|p| p.as_u64()).unwrap_or(0);
            net.addrs.push(NetAddr {
                dev: dev.clone(),
                addr: format!("{local}/{prefix}"),
            });
        }
    }
    for (v6, routes) in [(false, routes4), (true, routes6)] {
        for r in routes.as_array().into_iter().flatten() {
            // Routes the kernel derives from addresses and links come back with them.
            if str_of(r, "protocol") == "kernel" || str_of(r, "dev") == "lo" {
                continue;
            }
            let mut args = vec![str_of(r, "dst")];
            for (key, word) in [("gateway", "via"), ("dev", "dev"), ("prefsrc", "src")] {
                let v = str_of(r, key);
                if !v.is_empty() {
                    args.extend([word.to_string(), v]);
                }
            }
            if let Some(m) = r.get("metric").and_then(|m| m.as_u64()) {
                args.extend(["metric".to_string(), m.to_string()]);
            }
            if r.get("flags")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.iter().any(|x| x == "onlink"))
            {
                args.push("onlink".into());
            }
            net.routes.push(NetRoute { v6, args });
        }
    }
    Ok(net)
}

/// One line of `/proc/PID/mountinfo` (see proc(5)).
#[derive(Debug, Clone, PartialEq)]
pub struct MountInfo {
    pub id: u32,
    pub parent_id: u32,
    pub dev: String,
    pub root: String,
    pub mountpoint: String,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let (Ok(id), Ok(parent_id)) = (l[0].parse(), l[1].parse()) else {
            continue;
        };
        out.push(MountInfo {
            id,
            parent_id,
            dev: l[2].to_string(),
            root: unescape(l[3]),
            mountpoint: unescape(l[4]),
            options: l[5].to_string(),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            super_options: r[2].to_string(),
        });
    }
    out
}

/// Per-mount flags of a mountinfo options field.
pub fn mount_flags(options: &str) -> u64 {
    let mut flags = 0u64;
    for o in options.split(',') {
        flags |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    flags
}

/// File systems that hold nothing to carry over: mounted anew at restore.
const FRESH: [&str; 5] = ["proc", "sysfs", "devpts", "mqueue", "cgroup2"];

/// Decides how each mount comes back; anything else is an error naming it.
pub fn classify_mounts(pid: i32, mounts: &[MountInfo]) -> Result<Vec<MountEntry>, DumpError> {
    let unsupported = |m: &MountInfo, reason: &str| DumpError::Unsupported {
        pid,
        resource: format!("mount {} ({})", m.mountpoint, m.fstype),
        reason: reason.into(),
    };
    let roots: Vec<&MountInfo> = mounts.iter().filter(|m| m.mountpoint == "/").collect();
    let [root] = roots.as_slice() else {
        return Err(DumpError::Tree(format!(
            "task {pid}: {} mounts on / in its mount namespace, expected one",
            roots.len()
        )));
    };
    let mut out = Vec::new();
    let mut tmpfs_devs = Vec::new();
    // mountinfo lists mounts in mount order, so parents come first.
    for m in mounts {
        let kind = if m.id == root.id {
            MountKind::Root
        } else if FRESH.contains(&m.fstype.as_str()) {
            MountKind::Fresh
        } else if m.fstype == "tmpfs" {
            if m.root != "/" || tmpfs_devs.contains(&m.dev) {
                return Err(unsupported(
                    m,
                    "a bind mount of (part of) a tmpfs is not supported",
                ));
            }
            tmpfs_devs.push(m.dev.clone());
            MountKind::Tmpfs
        } else if m.dev == root.dev {
            MountKind::Bind {
                source_path: m.root.clone(),
            }
        } else {
            return Err(unsupported(
                m,
                "only proc, sysfs, devpts, mqueue, cgroup2, tmpfs and bind mounts of the root file system are restored",
            ));
        };
        let fs_options = m
            .super_options
            .split(',')
            .filter(|o| *o != "rw" && *o != "ro")
            .collect::<Vec<_>>()
            .join(",");
        out.push(MountEntry {
            id: m.id,
            parent_id: m.parent_id,
            mountpoint: m.mountpoint.clone(),
            fstype: m.fstype.clone(),
            source: m.source.clone(),
            flags: mount_flags(&m.options),
            fs_options,
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VE: &str = "\
400 300 0:61 / / rw,relatime - overlay overlay rw,lowerdir=/,upperdir=/vz/private/101/upper,workdir=/vz/private/101/work
401 400 0:62 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
402 400 0:63 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
403 402 0:64 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
404 400 0:65 / /tmp\\040dir rw,nosuid,nodev - tmpfs tmpfs rw,mode=1777
405 400 0:61 /srv/data /mnt/data ro,relatime - overlay overlay rw,lowerdir=/
";

    #[test]
    fn classifies_a_ve_mount_tree() {
        let m = parse_mountinfo(VE);
        assert_eq!(m.len(), 6);
        assert_eq!(m[4].mountpoint, "/tmp dir");
        let e = classify_mounts(1, &m).unwrap();
        assert_eq!(e[0].kind, MountKind::Root);
        assert_eq!(e[1].kind, MountKind::Fresh);
        assert_eq!(
            e[1].flags,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
        );
        assert_eq!(e[2].kind, MountKind::Tmpfs);
        assert_eq!(e[2].fs_options, "size=65536k,mode=755");
        assert_eq!(e[3].fs_options, "gid=5,mode=620,ptmxmode=666");
        assert_eq!(
            e[5].kind,
            MountKind::Bind {
                source_path: "/srv/data".into()
            }
        );
        assert_eq!(e[5].flags & libc::MS_RDONLY, libc::MS_RDONLY);
    }

    #[test]
    fn refuses_what_it_cannot_rebuild() {
        let foreign = format!("{VE}406 400 8:1 / /mnt/disk rw - ext4 /dev/sda1 rw\n");
        let e = classify_mounts(7, &parse_mountinfo(&foreign)).unwrap_err();
        assert!(e.to_string().contains("/mnt/disk (ext4)"), "{e}");
        assert!(e.to_string().contains("task 7"), "{e}");
        let tmpfs_bind = format!("{VE}407 400 0:65 /sub /mnt/t rw - tmpfs tmpfs rw\n");
        assert!(classify_mounts(7, &parse_mountinfo(&tmpfs_bind)).is_err());
        let two_roots = format!("{VE}408 400 0:70 / / rw - tmpfs tmpfs rw\n");
        assert!(classify_mounts(7, &parse_mountinfo(&two_roots)).is_err());
    }
}
