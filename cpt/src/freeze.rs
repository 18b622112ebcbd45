//! Cgroup freezer, v2 (`cgroup.freeze`) and v1 (`freezer.state`). The dumper freezes only long
//! enough to seize every thread, then thaws: seized tasks stay stopped under ptrace, so a
//! dumper that crashes leaves nothing frozen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::DumpError;

const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Freezer {
    V2(PathBuf),
    V1(PathBuf),
}

impl Freezer {
    /// Recognises the cgroup version of `dir` by the freezer file it has.
    pub fn for_cgroup(dir: &Path) -> Result<Self, DumpError> {
        if dir.join("cgroup.freeze").exists() {
            Ok(Freezer::V2(dir.to_path_buf()))
        } else if dir.join("freezer.state").exists() {
            Ok(Freezer::V1(dir.to_path_buf()))
        } else {
            Err(DumpError::Cgroup {
                path: dir.to_path_buf(),
                reason: "neither cgroup.freeze (v2) nor freezer.state (v1) is there".into(),
            })
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            Freezer::V2(d) | Freezer::V1(d) => d,
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<(), DumpError> {
        let path = self.dir().join(file);
        std::fs::write(&path, value).map_err(|source| DumpError::Io {
            op: "write",
            path,
            source,
        })
    }

    fn read(&self, file: &str) -> Result<String, DumpError> {
        let path = self.dir().join(file);
        std::fs::read_to_string(&path).map_err(|source| DumpError::Io {
            op: "read",
            path,
            source,
        })
    }

    pub fn is_frozen(&self) -> Result<bool, DumpError> {
        Ok(match self {
            Freezer::V2(_) => self
                .read("cgroup.events")?
                .lines()
                .any(|l| l.trim() == "frozen 1"),
            Freezer::V1(_) => self.read("freezer.state")?.trim() == "FROZEN",
        })
    }

    /// Freezes and waits until the kernel reports the whole cgroup frozen.
    pub fn freeze(&self) -> Result<(), DumpError> {
        match self {
            Freezer::V2(_) => self.write("cgroup.freeze", "1")?,
            Freezer::V1(_) => self.write("freezer.state", "FROZEN")?,
        }
        let start = Instant::now();
        while !self.is_frozen()? {
            if start.elapsed() > FREEZE_TIMEOUT {
                let _ = self.thaw();
                return Err(DumpError::Cgroup {
                    path: self.dir().to_path_buf(),
                    reason: format!("not frozen after {FREEZE_TIMEOUT:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    pub fn thaw(&self) -> Result<(), DumpError> {
        match self {
            Freezer::V2(_) => self.write("cgroup.freeze", "0"),
            Freezer::V1(_) => self.write("freezer.state", "THAWED"),
        }
    }

    /// PIDs (thread-group leaders) of the cgroup and its descendants.
    pub fn processes(&self) -> Result<Vec<i32>, DumpError> {
        let mut out = Vec::new();
        collect_procs(self.dir(), &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) -> Result<(), DumpError> {
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(|source| DumpError::Io {
        op: "read",
        path: procs,
        source,
    })?;
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = std::fs::read_dir(dir).map_err(|source| DumpError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_procs(&e.path(), out)?;
        }
    }
    Ok(())
}
