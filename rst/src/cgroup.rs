//! Cgroup membership: each restored process goes back into the cgroups it was dumped in, one
//! per hierarchy (cgroup v2 and every v1 hierarchy mounted here), created if missing.
//!
//! A process is moved while it is still a single-threaded builder, so the threads created
//! later are born in its cgroups. A hierarchy that is not mounted on this host is an error
//! unless the process sat at its root (there is then nothing to restore).

use std::path::{Path, PathBuf};

use images_format::core::CgroupMembership;

use crate::RestoreError;

/// A cgroup hierarchy mounted on this host.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    /// Empty for cgroup v2, else the v1 controllers and `name=` of the mount, sorted.
    controllers: Vec<String>,
    /// The cgroup shown at the mount point, relative to the hierarchy's root.
    root: String,
    point: PathBuf,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let controllers = match r[0] {
            "cgroup2" => Vec::new(),
            "cgroup" => {
                let mut c: Vec<String> = r[2]
                    .split(',')
                    .filter(|o| is_controller_option(o))
                    .map(str::to_string)
                    .collect();
                c.sort();
                c
            }
            _ => continue,
        };
        out.push(Mount {
            controllers,
            root: unescape(l[3]),
            point: PathBuf::from(unescape(l[4])),
        });
    }
    out
}

/// Super options of a v1 cgroup mount that are not controllers.
fn is_controller_option(o: &str) -> bool {
    !matches!(
        o,
        "rw" | "ro" | "noprefix" | "xattr" | "clone_children" | "cpuset_v2_mode" | "favordynmods"
    ) && !o.starts_with("release_agent=")
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sorted_controllers(s: &str) -> Vec<String> {
    let mut c: Vec<String> = s
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    c.sort();
    c
}

/// The directory of cgroup `path` of a hierarchy under one of its mounts, if `path` is
/// visible through that mount.
fn dir_under(m: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path.trim_start_matches('/')
    } else {
        let rest = path.strip_prefix(m.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest.trim_start_matches('/')
    };
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        m.point.clone()
    } else {
        m.point.join(rel)
    })
}

/// Cgroups created by the restore, removed again if it fails.
#[derive(Default)]
pub struct CreatedCgroups {
    dirs: Vec<PathBuf>,
    kept: bool,
}

impl CreatedCgroups {
    /// The restore succeeded: the cgroups stay.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for CreatedCgroups {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // The processes were killed just before; a cgroup is removable once they are reaped.
        for d in self.dirs.iter().rev() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::fs::remove_dir(d).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Host cgroup mounts, read once per restore.
pub struct Hierarchies(Vec<Mount>);

impl Hierarchies {
    pub fn of_this_host() -> Result<Self, RestoreError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| RestoreError::Tree(format!("read /proc/self/mountinfo: {e}")))?;
        Ok(Hierarchies(parse_mountinfo(&text)))
    }

    /// The directory of cgroup `path` in each hierarchy mounted here, once per hierarchy:
    /// (its v1 controllers, sorted, or none for cgroup v2; the directory).
    pub fn dirs_of(&self, path: &str) -> Vec<(Vec<String>, PathBuf)> {
        let mut out: Vec<(Vec<String>, PathBuf)> = Vec::new();
        for m in &self.0 {
            if out.iter().any(|(c, _)| *c == m.controllers) {
                continue;
            }
            if let Some(dir) = dir_under(m, path) {
                out.push((m.controllers.clone(), dir));
            }
        }
        out
    }

    /// The cgroup v2 directory of a process, created if missing and opened for
    /// `CLONE_INTO_CGROUP`; `None` when it has no v2 membership or sits at the root.
    pub fn open_v2(
        &self,
        pid: i32,
        cgroups: &[CgroupMembership],
        rewrite: Option<&(String, String)>,
        created: &mut CreatedCgroups,
    ) -> Result<Option<std::os::fd::OwnedFd>, RestoreError> {
        let Some(cg) = cgroups.iter().find(|c| c.controllers.is_empty()) else {
            return Ok(None);
        };
        let path = rewrite_path(&cg.path, rewrite);
        let Some(dir) = self
            .0
            .iter()
            .filter(|m| m.controllers.is_empty())
            .find_map(|m| dir_under(m, &path))
        else {
            return Ok(None);
        };
        if path == "/" {
            return Ok(None);
        }
        let task_err = |reason: String| RestoreError::Task {
            pid,
            what: format!("cgroup {}", dir.display()),
            reason,
        };
        make_cgroup(&dir, &[], created).map_err(|e| task_err(format!("create: {e}")))?;
        let fd = std::fs::File::open(&dir).map_err(|e| task_err(format!("open: {e}")))?;
        Ok(Some(fd.into()))
    }

    /// Moves `pid` (a host PID) into each of its dumped cgroups.
    pub fn place(
        &self,
        pid: i32,
        host_pid: i32,
        cgroups: &[CgroupMembership],
        rewrite: Option<&(String, String)>,
        created: &mut CreatedCgroups,
    ) -> Result<(), RestoreError> {
        for cg in cgroups {
            let path = rewrite_path(&cg.path, rewrite);
            let cg = &CgroupMembership {
                controllers: cg.controllers.clone(),
                path,
            };
            let want = sorted_controllers(&cg.controllers);
            let dir = self
                .0
                .iter()
                .filter(|m| m.controllers == want)
                .find_map(|m| dir_under(m, &cg.path));
            let Some(dir) = dir else {
                if cg.path == "/" {
                    continue;
                }
                return Err(RestoreError::Task {
                    pid,
                    what: format!("cgroup {} of hierarchy '{}'", cg.path, cg.controllers),
                    reason: "that hierarchy is not mounted on this host".into(),
                });
            };
            make_cgroup(&dir, &want, created).map_err(|e| RestoreError::Task {
                pid,
                what: format!("cgroup {}", dir.display()),
                reason: format!("create: {e}"),
            })?;
            std::fs::write(dir.join("cgroup.procs"), host_pid.to_string()).map_err(|e| {
                RestoreError::Task {
                    pid,
                    what: format!("cgroup {}", dir.display()),
                    reason: format!("join (write cgroup.procs): {e}"),
                }
            })?;
        }
        Ok(())
    }
}

/// `path` with its prefix `from` replaced by `to`, when it has that prefix (whole components).
fn rewrite_path(path: &str, rewrite: Option<&(String, String)>) -> String {
    let Some((from, to)) = rewrite else {
        return path.to_string();
    };
    match path.strip_prefix(from.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{to}{rest}"),
        _ => path.to_string(),
    }
}

/// Creates `dir` and its missing parents. A new v1 cpuset cgroup takes its parent's CPUs and
/// memory nodes, without which no task can join it.
pub fn make_cgroup(
    dir: &Path,
    controllers: &[String],
    created: &mut CreatedCgroups,
) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_cgroup(parent, controllers, created)?;
    }
    std::fs::create_dir(dir)?;
    created.dirs.push(dir.to_path_buf());
    if controllers.iter().any(|c| c == "cpuset") {
        if let Some(parent) = dir.parent() {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read_to_string(parent.join(f))?;
                std::fs::write(dir.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
38 35 0:33 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct
39 35 0:34 /sub /mnt/free\\040zer rw shared:13 - cgroup cgroup rw,freezer
";

    #[test]
    fn finds_v1_and_v2_mounts() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].controllers, Vec::<String>::new());
        assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[1].controllers, vec!["name=systemd"]);
        assert_eq!(m[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[3].point, PathBuf::from("/mnt/free zer"));
        assert_eq!(sorted_controllers("cpuacct,cpu"), m[2].controllers);
    }

    #[test]
    fn rewrites_a_cgroup_prefix() {
        let r = ("/vz/101".to_string(), "/other/102".to_string());
        assert_eq!(rewrite_path("/vz/101", Some(&r)), "/other/102");
        assert_eq!(rewrite_path("/vz/101/sub", Some(&r)), "/other/102/sub");
        assert_eq!(rewrite_path("/vz/1010", Some(&r)), "/vz/1010");
        assert_eq!(rewrite_path("/vz/101", None), "/vz/101");
    }

    #[test]
    fn maps_paths_through_the_mount_root() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            dir_under(&m[0], "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            dir_under(&m[0], "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            dir_under(&m[3], "/sub/x"),
            Some(PathBuf::from("/mnt/free zer/x"))
        );
        assert_eq!(dir_under(&m[3], "/subx"), None);
        assert_eq!(dir_under(&m[3], "/other"), None);
        assert_eq!(dir_under(&m[0], "/a/../../etc"), None);
    }
}
