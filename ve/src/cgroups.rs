//! A VE's cgroups: one directory named `$VZ_CGROUP/CTID` in every hierarchy mounted on the host
//! (cgroup v2 and each v1 one), so that nothing of the VE stays in the cgroups of whoever
//! started it. Limits go to cgroup v2 where its controller is enabled, else to the v1
//! hierarchy of that controller (this machine has v1 controllers and a controller-less v2).
//! The v2 directory is the VE's freezer (`cgroup.freeze`) and the dump's target.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rst::cgroup::{CreatedCgroups, Hierarchies};

use crate::{io_err, Result, VeConfig, VeError};

pub struct VeCgroups {
    pub ctid: u32,
    /// (v1 controllers or none for v2, directory), one per hierarchy.
    pub dirs: Vec<(Vec<String>, PathBuf)>,
}

impl VeCgroups {
    pub fn of(ctid: u32, path: &str) -> Result<Self> {
        let h = Hierarchies::of_this_host().map_err(|e| VeError::Failed {
            ctid,
            what: e.to_string(),
        })?;
        Ok(VeCgroups {
            ctid,
            dirs: h.dirs_of(path),
        })
    }

    /// The cgroup v2 directory: the VE's freezer and the dump's target.
    pub fn v2(&self) -> Result<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, d)| d.as_path())
            .ok_or_else(|| VeError::Failed {
                ctid: self.ctid,
                what: "no cgroup v2 hierarchy is mounted on this host".into(),
            })
    }

    fn v1(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, d)| d.as_path())
    }

    /// Creates every directory (removed again when `created` is dropped unkept).
    pub fn create(&self, created: &mut CreatedCgroups) -> Result<()> {
        for (controllers, dir) in &self.dirs {
            rst::cgroup::make_cgroup(dir, controllers, created).map_err(io_err(
                self.ctid,
                "create cgroup",
                dir,
            ))?;
        }
        Ok(())
    }

    /// Whether cgroup v2 has `controller` enabled for the VE's cgroup.
    fn v2_has(&self, controller: &str) -> bool {
        let Ok(v2) = self.v2() else { return false };
        std::fs::read_to_string(v2.join("cgroup.controllers"))
            .map(|s| s.split_whitespace().any(|c| c == controller))
            .unwrap_or(false)
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<()> {
        std::fs::write(dir.join(file), value).map_err(io_err(self.ctid, "write", dir.join(file)))
    }

    /// Applies the config's limits; an absent limit is lifted.
    pub fn apply_limits(&self, cfg: &VeConfig) -> Result<()> {
        let missing = |what: &str| VeError::Failed {
            ctid: self.ctid,
            what: format!("no {what} controller on this host (neither cgroup v2 nor v1)"),
        };
        // Memory.
        if self.v2_has("memory") {
            let v = cfg.memory.map_or("max".into(), |m| m.to_string());
            self.write(self.v2()?, "memory.max", &v)?;
        } else if let Some(d) = self.v1("memory") {
            let v = cfg.memory.map_or("-1".into(), |m| m.to_string());
            self.write(d, "memory.limit_in_bytes", &v)?;
        } else if cfg.memory.is_some() {
            return Err(missing("memory"));
        }
        // Tasks.
        let pids = cfg.pids.map_or("max".into(), |p| p.to_string());
        if self.v2_has("pids") {
            self.write(self.v2()?, "pids.max", &pids)?;
        } else if let Some(d) = self.v1("pids") {
            self.write(d, "pids.max", &pids)?;
        } else if cfg.pids.is_some() {
            return Err(missing("pids"));
        }
        // CPU bandwidth, over a 100 ms period.
        const PERIOD: u64 = 100_000;
        let quota = cfg.cpus.map(|c| ((c * PERIOD as f64) as u64).max(1000));
        if self.v2_has("cpu") {
            let v = quota.map_or(format!("max {PERIOD}"), |q| format!("{q} {PERIOD}"));
            self.write(self.v2()?, "cpu.max", &v)?;
        } else if let Some(d) = self.v1("cpu") {
            self.write(d, "cpu.cfs_period_us", &PERIOD.to_string())?;
            let v = quota.map_or("-1".into(), |q| q.to_string());
            self.write(d, "cpu.cfs_quota_us", &v)?;
        } else if cfg.cpus.is_some() {
            return Err(missing("cpu"));
        }
        Ok(())
    }

    /// How many of the VE's tasks the kernel's OOM killer has killed (its memory limit hit).
    pub fn oom_kills(&self) -> u64 {
        let count = |dir: &Path, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let v2 = self.v2().map(|d| count(d, "memory.events")).unwrap_or(0);
        let v1 = self
            .v1("memory")
            .map(|d| count(d, "memory.oom_control"))
            .unwrap_or(0);
        v2 + v1
    }

    /// Host PIDs of every process in the VE.
    pub fn procs(&self) -> Vec<i32> {
        let Ok(v2) = self.v2() else { return Vec::new() };
        std::fs::read_to_string(v2.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.v2().map(|d| d.is_dir()).unwrap_or(false)
    }

    /// Whether the v2 freezer holds the VE frozen.
    pub fn frozen(&self) -> bool {
        let Ok(v2) = self.v2() else { return false };
        std::fs::read_to_string(v2.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "frozen 1"))
            .unwrap_or(false)
    }

    /// Freezes (`true`) or thaws the VE and waits until the kernel says it is done.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let v2 = self.v2()?;
        self.write(v2, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.frozen() != frozen {
            if Instant::now() > deadline {
                return Err(VeError::Failed {
                    ctid: self.ctid,
                    what: format!("the cgroup freezer did not reach frozen={frozen} in 10 s"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Moves the calling process into every VE cgroup.
    pub fn join_self(&self) -> Result<()> {
        for (_, dir) in &self.dirs {
            self.write(dir, "cgroup.procs", "0")?;
        }
        Ok(())
    }

    /// Kills everything in the VE and waits until the cgroup is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let v2 = self.v2()?;
        let deadline = Instant::now() + timeout;
        loop {
            let procs = self.procs();
            if procs.is_empty() {
                return Ok(());
            }
            if std::fs::write(v2.join("cgroup.kill"), "1").is_err() {
                for p in procs {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if self.frozen() {
                // A frozen task dies only once thawed; killed first, it runs none of its own
                // code on the way (a VE whose checkpoint was interrupted must not move on
                // past its image).
                let _ = self.write(v2, "cgroup.freeze", "0");
            }
            if Instant::now() > deadline {
                return Err(VeError::Failed {
                    ctid: self.ctid,
                    what: format!("{} processes still in the VE's cgroup", self.procs().len()),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the VE's directories (they must be empty of tasks).
    pub fn remove(&self) -> Result<()> {
        for (_, dir) in self.dirs.iter().rev() {
            if !dir.is_dir() {
                continue;
            }
            // Just-killed tasks leave the cgroup shortly after they are reaped.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(io_err(self.ctid, "remove cgroup", dir)(e))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        Ok(())
    }
}
