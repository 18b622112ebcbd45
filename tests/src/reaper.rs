//! Child reaping for a harness that runs as PID 1 of a PID namespace: orphans are re-parented
//! to it and must be reaped promptly (their PIDs stay taken until then), while its own
//! children's exit statuses are kept for whoever waits for them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Default)]
pub struct Reaper {
    statuses: HashMap<i32, i32>,
}

impl Reaper {
    /// Reaps every exited child without blocking; remembers exit codes (128+signal if killed).
    pub fn reap(&mut self) {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.statuses.insert(pid.as_raw(), code);
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.statuses.insert(pid.as_raw(), 128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// The exit code of `pid` if it has exited.
    pub fn status(&mut self, pid: i32) -> Option<i32> {
        self.reap();
        self.statuses.get(&pid).copied()
    }

    /// Waits for `pid` to exit, reaping others meanwhile.
    pub fn wait(&mut self, pid: i32, timeout: Duration) -> anyhow::Result<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status(pid) {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                bail!("process {pid} did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
