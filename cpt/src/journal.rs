//! The dump's journal: what a dumper killed halfway leaves for the next command to undo.
//!
//! While it holds a tree, the dumper has every thread stopped (see `seize`; the thread it
//! runs syscalls in has all signals blocked for a moment, which its safety net undoes:
//! `sys::remote`), the cgroup (v2) frozen once no injected code is left, and the tree's TCP
//! connections in repair mode. Killed (SIGKILL, a crash), it can undo none of it: the kernel
//! lets its tracees go, but a frozen cgroup stays frozen, the sockets stay in repair mode and
//! (for a VE) the network stays locked. The journal, written before the tree is held (and,
//! by `vzctl`, before the network is locked), records what undoing takes:
//!
//! ```text
//! dumper PID STARTTIME        who holds the tree (STARTTIME from /proc/PID/stat: PIDs recycle)
//! image PATH                  the image it writes (complete once PATH/inventory exists)
//! task TID MASK               each thread and its own blocked mask (hex)
//! tcp PID FD REUSEADDR        each socket put in repair mode, by a descriptor of its holder
//! frozen CGROUP               its cgroup (v2) frozen around it; sockets go into repair after
//! hold                        the tree is held for a migration (vzctl chkpnt --hold)
//! committing                  ... whose destination may have taken it over
//! leave-running               the image is a snapshot: the tree goes on once it is complete
//! ```
//!
//! It is begun before the seize and removed when the tree is let go
//! ([`crate::seize::Frozen::finish`], or the resume after a failure: dropping a `Journal`
//! removes its file; only a dead process leaves one). [`recover`] is what the next command runs when it finds a
//! journal whose dumper is gone.

use std::path::{Path, PathBuf};

use sys::Pid;
use tracing::warn;

use crate::DumpError;

/// The journal of a held tree.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    lines: Vec<String>,
    handed_over: bool,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.to_path_buf();
    move |source| DumpError::Io { op, path, source }
}

/// Field 22 of /proc/PID/stat: when the process started (clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `PID STARTTIME` of this process: names the owner of a marker file (see [`owner_gone`]).
pub fn this_owner() -> String {
    let me = std::process::id() as i32;
    format!("{me} {}", start_time(me).unwrap_or(0))
}

/// Whether the owner named by `owner` ([`this_owner`]'s text) has died: no process with
/// that PID and start time runs. This process is never gone. Unreadable text: gone.
pub fn owner_gone(owner: &str) -> bool {
    let mut f = owner.split_whitespace();
    match (
        f.next().and_then(|p| p.parse::<i32>().ok()),
        f.next().and_then(|t| t.parse::<u64>().ok()),
    ) {
        (Some(pid), Some(start)) => {
            pid != std::process::id() as i32 && start_time(pid) != Some(start)
        }
        _ => true,
    }
}

impl Journal {
    /// Starts the journal at `path` for this process, writing the image at `image`.
    pub fn begin(path: &Path, image: &Path) -> Result<Self, DumpError> {
        let me = std::process::id() as i32;
        let j = Journal {
            path: path.to_path_buf(),
            lines: vec![
                format!("dumper {me} {}", start_time(me).unwrap_or(0)),
                format!("image {}", image.display()),
            ],
            handed_over: false,
        };
        j.write()?;
        Ok(j)
    }

    fn write(&self) -> Result<(), DumpError> {
        let tmp = self.path.with_extension("journal-tmp");
        let mut text = self.lines.join("\n");
        text.push('\n');
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &self.path))
    }

    /// Records a thread and its blocked mask.
    pub fn task(&mut self, tid: Pid, mask: u64) {
        self.lines.push(format!("task {tid} {mask:x}"));
    }

    /// Records a socket put in repair mode.
    pub fn tcp(&mut self, pid: i32, fd: i32, reuseaddr: bool) {
        self.lines
            .push(format!("tcp {pid} {fd} {}", reuseaddr as u8));
    }

    /// Writes what was recorded.
    pub fn sync(&self) -> Result<(), DumpError> {
        self.write()
    }

    /// Adds a word (`hold`, `committing`) and writes it.
    pub fn mark(&mut self, word: &str) -> Result<(), DumpError> {
        self.lines.push(word.to_string());
        self.write()
    }

    /// The tree is let go as it should be: nothing to undo.
    pub fn end(self) {}

    /// Leaves the file to the journal begun after this one at the same path (a caller that
    /// needs a journal before the dump's own begins: `vzctl` locks the VE's network first).
    pub fn handover(mut self) {
        self.handed_over = true;
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(path = %self.path.display(), %e, "cannot remove the dump's journal");
            }
            _ => {}
        }
    }
}

/// The temporary file of a journal write (`Journal::write`) whose writer died before the
/// rename: removed, unless its writer still runs.
fn remove_stale_tmp(path: &Path) {
    let tmp = path.with_extension("journal-tmp");
    let Ok(text) = std::fs::read_to_string(&tmp) else {
        return;
    };
    let owner = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("dumper "))
        .unwrap_or("");
    if owner_gone(owner) {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The tree was held for a migration: its sockets were left in repair mode.
    pub hold: bool,
    /// ... and its destination may have taken it over.
    pub committing: bool,
    /// The image was complete: the dumper died letting the tree go (killing it, say).
    pub image_complete: bool,
    /// ... as a snapshot: the tree was to go on (it is resumed, the image kept).
    pub leave_running: bool,
    /// Threads given back their masks and let go.
    pub tasks: usize,
    /// Sockets taken out of repair mode.
    pub sockets: usize,
}

/// Undoes what the dumper of the journal at `path` left, if that dumper is gone. With the
/// image complete (and no `leave-running`), nothing is touched (the caller kills the tree, which must not run past
/// its image; its sockets still in repair mode vanish silently). Otherwise every socket
/// leaves repair mode; every thread still there gets its own blocked mask back (seized for a
/// moment); a cgroup it froze (or left frozen while seizing) is thawed, once the sockets are
/// out of repair mode and the threads wait for their masks; the dumper's temporary image
/// directory goes, and so does the journal. A tree held for a migration is only reported
/// (nothing touched, the journal kept) unless `release_held`: its destination may run it
/// now, and an admin decides. `cgroup` is the tree's cgroup (v2) when it has one. `None`: no
/// journal, or its dumper still runs.
pub fn recover(
    path: &Path,
    cgroup: Option<&Path>,
    release_held: bool,
) -> Result<Option<Recovered>, DumpError> {
    remove_stale_tmp(path);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    let mut r = Recovered::default();
    let mut dumper = None;
    let mut image = None;
    let mut froze = false;
    let mut tasks = Vec::new();
    let mut socks = Vec::new();
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("image ") {
            image = Some(PathBuf::from(p));
            continue;
        }
        if line.starts_with("frozen ") {
            froze = true;
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["dumper", pid, start] => dumper = Some((pid.parse::<i32>(), start.parse::<u64>())),
            ["task", tid, mask] => {
                if let (Ok(t), Ok(m)) = (tid.parse::<i32>(), u64::from_str_radix(mask, 16)) {
                    tasks.push((t, m));
                }
            }
            ["tcp", pid, fd, reuse] => {
                if let (Ok(p), Ok(d)) = (pid.parse::<i32>(), fd.parse::<i32>()) {
                    socks.push((p, d, *reuse == "1"));
                }
            }
            ["hold"] => r.hold = true,
            ["committing"] => r.committing = true,
            ["leave-running"] => r.leave_running = true,
            _ => {}
        }
    }
    let dumper_pid = match dumper {
        Some((Ok(pid), Ok(start))) => {
            if start_time(pid) == Some(start) && pid != std::process::id() as i32 {
                return Ok(None);
            }
            Some(pid)
        }
        _ => None,
    };
    if let Some(img) = &image {
        r.image_complete = img.join("inventory").is_file();
        if let (Some(pid), Some(name)) = (dumper_pid, img.file_name()) {
            let mut tmp = name.to_os_string();
            tmp.push(format!(".tmp-{pid}"));
            let _ = std::fs::remove_dir_all(img.with_file_name(tmp));
        }
    }
    if r.hold && !release_held {
        return Ok(Some(r));
    }
    if r.image_complete && !r.hold && !r.leave_running {
        // The dumper was letting the tree go (killing it): nothing of it may run again, or
        // it would move on from its image. The caller finishes the kill.
        std::fs::remove_file(path).map_err(io("remove", path))?;
        return Ok(Some(r));
    }
    {
        for (pid, fd, reuse) in socks {
            match crate::inet::leave_repair_of(pid, fd, reuse) {
                Ok(()) => r.sockets += 1,
                Err(e) => warn!(pid, fd, %e, "cannot take a socket out of repair mode"),
            }
        }
    }
    let freezer = cgroup.and_then(|c| crate::freeze::Freezer::for_cgroup(c).ok());
    // Frozen, or freezing: a dumper killed while it froze the cgroup wrote `cgroup.freeze`
    // but the kernel may not report the cgroup frozen yet; it will, unless thawed.
    let freeze_requested = cgroup.is_some_and(|c| {
        std::fs::read_to_string(c.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1")
    });
    let frozen_now = freeze_requested
        || freezer
            .as_ref()
            .is_some_and(|f| f.is_frozen().unwrap_or(false));
    // Seized (interrupt queued) while frozen; their stops come once thawed, before any of
    // their own code runs.
    let mut seized = Vec::new();
    for (tid, mask) in tasks {
        let tid = Pid::from_raw(tid);
        match sys::ptrace::seize_and_interrupt(tid) {
            Ok(()) => seized.push((tid, mask)),
            Err(e) => warn!(tid = tid.as_raw(), %e, "cannot seize a thread to give its mask back"),
        }
    }
    if frozen_now && (froze || !r.hold) {
        if let Some(f) = &freezer {
            f.thaw()?;
        }
    }
    for (tid, mask) in seized {
        let done = sys::ptrace::wait_for_interrupt_stop(tid)
            .and_then(|()| sys::ptrace::set_sigmask(tid, mask));
        let detached = sys::ptrace::detach(tid, None);
        match done.and(detached) {
            Ok(()) => r.tasks += 1,
            Err(e) => warn!(tid = tid.as_raw(), %e, "cannot give a thread its mask back"),
        }
    }
    std::fs::remove_file(path).map_err(io("remove", path))?;
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_dumper_is_left_alone_and_a_dead_one_undone() {
        let dir = std::env::temp_dir().join(format!("vzcpt-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("1.journal");
        let j = Journal::begin(&p, &dir.join("1")).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("dumper "));
        j.end();
        assert!(!p.exists());
        // A journal of a live process (our parent) is left alone.
        let parent = nix::unistd::getppid().as_raw();
        let start = start_time(parent).unwrap();
        std::fs::write(&p, format!("dumper {parent} {start}\nhold\n")).unwrap();
        assert!(recover(&p, None, false).unwrap().is_none());
        assert!(p.exists());
        // A dumper long gone (PID 1 never started at tick 1): its temporary image goes too.
        let text = format!(
            "dumper 1 1\nimage {}\nhold\ncommitting\n",
            dir.join("1").display()
        );
        std::fs::write(&p, text).unwrap();
        std::fs::create_dir(dir.join("1.tmp-1")).unwrap();
        // Held for a migration: reported, left as it is.
        let r = recover(&p, None, false).unwrap().unwrap();
        assert!(r.hold && r.committing && !r.image_complete && p.exists());
        let r = recover(&p, None, true).unwrap().unwrap();
        assert!(r.hold && r.tasks == 0);
        assert!(!p.exists() && !dir.join("1.tmp-1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
