//! The harness side of the workload protocol: files in a control directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Ctl {
    pub dir: PathBuf,
    seq: u64,
}

/// Writes `text` to `dir/name` atomically (temporary file + rename).
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.harness"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("rename to {name}"))?;
    Ok(())
}

impl Ctl {
    pub fn create(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Ctl { dir, seq: 0 })
    }

    /// Waits for the workload's `ready` file; `alive` is polled so a dead workload fails fast.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.dir.join("ready").exists() {
            if !alive() {
                bail!("the workload died before it was ready");
            }
            if start.elapsed() > timeout {
                bail!("the workload was not ready after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The PID to dump: `root` if the workload wrote one (its tree starts below it), else `pid`.
    pub fn root_pid(&self, pid: i32) -> i32 {
        std::fs::read_to_string(self.dir.join("root"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(pid)
    }

    /// Asks for a check and waits for the answer; Ok(()) on PASS, Err(reason) otherwise.
    pub fn check(&mut self, timeout: Duration, mut idle: impl FnMut()) -> anyhow::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        write_atomic(&self.dir, "check", &format!("{seq}\n"))?;
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(self.dir.join("result")) {
                let mut it = text.trim().splitn(2, ' ');
                if it.next().and_then(|s| s.parse::<u64>().ok()) == Some(seq) {
                    let verdict = it.next().unwrap_or("");
                    if verdict == "PASS" {
                        return Ok(());
                    }
                    bail!("check {seq}: {verdict}");
                }
            }
            if start.elapsed() > timeout {
                bail!("check {seq}: no answer after {timeout:?}");
            }
            idle();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
