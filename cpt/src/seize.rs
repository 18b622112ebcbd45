//! Stopping a process tree under ptrace and giving it back.
//!
//! [`Frozen`] owns the stopped tree. Dropping it resumes every task exactly as it was (signal
//! masks restored, detached); only [`Frozen::finish`] may instead kill the tree or leave it
//! stopped. So any error during a dump, wherever it is returned, resumes the tree.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use sys::{ptrace, Pid, SysError};
use tracing::{debug, warn};

use crate::freeze::Freezer;
use crate::proc::{parse_stat, ProcDir};
use crate::DumpError;

/// What happens to the tree after a complete dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinalState {
    /// Kill it (the default of `vzcpt dump`).
    #[default]
    Kill,
    /// Resume it: a snapshot the tree never notices.
    LeaveRunning,
    /// Leave it stopped (group-stop, `SIGSTOP`).
    LeaveStopped,
    /// Let it go inside its frozen cgroup (`vzctl chkpnt --hold` told to suspend it): it
    /// runs once the cgroup is thawed.
    LeaveFrozen,
}

#[derive(Debug, Clone)]
pub struct SeizedThread {
    pub tid: Pid,
    /// The thread's own blocked mask; while seized all signals are blocked.
    pub orig_sigmask: u64,
}

#[derive(Debug, Clone)]
pub struct SeizedProcess {
    pub pid: Pid,
    pub ppid: i32,
    /// Empty for a zombie.
    pub threads: Vec<SeizedThread>,
    /// `Some(exit code)` for a zombie.
    pub zombie: Option<i32>,
}

/// A stopped tree: processes parents-first, the root at index 0.
pub struct Frozen {
    pub processes: Vec<SeizedProcess>,
    /// The tree's established TCP sockets, in repair mode until the tree is killed (they
    /// vanish without a word to their peers) or resumed (they leave repair mode first).
    pub tcp_repair: crate::inet::RepairHold,
    /// What undoing this hold takes, should this process die (see `journal`).
    journal: Option<crate::journal::Journal>,
    /// The cgroup (v2) frozen around the stopped tree once no injected code is left to run
    /// (see [`Frozen::freeze`]); thawed when the tree is let go.
    freezer: Option<Freezer>,
    done: bool,
}

const ALL_SIGNALS: u64 = !0;

impl Frozen {
    /// Seizes `root`, its threads and all its descendants, again and again until no new task appears.
    pub fn seize_tree(root: Pid) -> Result<Self, DumpError> {
        let mut frozen = Frozen {
            processes: Vec::new(),
            tcp_repair: Default::default(),
            journal: None,
            freezer: None,
            done: false,
        };
        let stat = read_stat(root.as_raw())?;
        if stat.state == 'Z' {
            return Err(DumpError::Tree(format!("task {root} is a zombie")));
        }
        frozen.processes.push(SeizedProcess {
            pid: root,
            ppid: stat.ppid,
            threads: Vec::new(),
            zombie: None,
        });
        frozen.expand()?;
        frozen.order_tree()?;
        Ok(frozen)
    }

    /// Freezes the cgroup, seizes every thread in it while frozen, thaws it, collects the
    /// ptrace stops, then seizes descendants outside the cgroup and zombies like a bare tree.
    pub fn seize_cgroup(freezer: &Freezer) -> Result<Self, DumpError> {
        freezer.freeze()?;
        let mut frozen = Frozen {
            processes: Vec::new(),
            tcp_repair: Default::default(),
            journal: None,
            freezer: None,
            done: false,
        };
        let seized = frozen.seize_frozen_cgroup(freezer);
        // Thaw in any case: seized tasks stay stopped by ptrace, the others must not stay frozen.
        let thawed = freezer.thaw();
        let mut stops = seized?;
        thawed?;
        for (i, tid) in stops.drain(..) {
            let t = stop_thread(tid)?;
            frozen.processes[i].threads.push(t);
        }
        frozen.expand()?;
        frozen.order_tree()?;
        Ok(frozen)
    }

    /// Seizes and interrupts (no wait: frozen tasks report their stop after the thaw). A vfork
    /// child is left alone (see [`in_vfork`]): after the thaw it runs until it execs or exits,
    /// which lets its parent reach its stop, and it is found again as that parent's child.
    fn seize_frozen_cgroup(&mut self, freezer: &Freezer) -> Result<Vec<(usize, Pid)>, DumpError> {
        let pids = freezer.processes()?;
        if pids.is_empty() {
            return Err(DumpError::Cgroup {
                path: freezer.dir().to_path_buf(),
                reason: "it has no tasks".into(),
            });
        }
        let mut to_wait = Vec::new();
        for pid in pids {
            let Ok(stat) = read_stat(pid) else { continue };
            if in_vfork(pid) {
                continue;
            }
            let i = self.processes.len();
            self.processes.push(SeizedProcess {
                pid: Pid::from_raw(pid),
                ppid: stat.ppid,
                threads: Vec::new(),
                zombie: (stat.state == 'Z').then_some(stat.exit_code),
            });
            if stat.state == 'Z' {
                continue;
            }
            for tid in list_threads(pid)? {
                let tid = Pid::from_raw(tid);
                match ptrace::seize_and_interrupt(tid) {
                    Ok(()) => to_wait.push((i, tid)),
                    Err(SysError::Ptrace {
                        source: Errno::ESRCH,
                        ..
                    }) => {}
                    Err(e) => {
                        // Stops of those already seized are collected by Drop after the thaw.
                        for (j, t) in to_wait {
                            self.processes[j].threads.push(SeizedThread {
                                tid: t,
                                orig_sigmask: u64::MAX,
                            });
                        }
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(to_wait)
    }

    /// Seizes every thread of every known process and adds the children it finds, until a
    /// full pass finds nothing new.
    fn expand(&mut self) -> Result<(), DumpError> {
        let mut seized: HashSet<i32> = self
            .processes
            .iter()
            .flat_map(|p| p.threads.iter().map(|t| t.tid.as_raw()))
            .collect();
        loop {
            let mut changed = false;
            for i in 0..self.processes.len() {
                if self.processes[i].zombie.is_some() {
                    continue;
                }
                let pid = self.processes[i].pid;
                for tid in list_threads(pid.as_raw())? {
                    if !seized.insert(tid) {
                        continue;
                    }
                    let tid = Pid::from_raw(tid);
                    match ptrace::seize_and_interrupt(tid) {
                        Ok(()) => {}
                        Err(SysError::Ptrace {
                            source: Errno::ESRCH,
                            ..
                        }) => continue, // the thread exited meanwhile
                        // An exiting task refuses a seize: it is gone, or its parent's zombie.
                        Err(SysError::Ptrace {
                            source: Errno::EPERM,
                            ..
                        }) if exiting(tid.as_raw()) => {
                            if tid == pid {
                                changed = true;
                                self.processes[i].zombie =
                                    Some(read_stat(pid.as_raw()).map_or(0, |st| st.exit_code));
                                break;
                            }
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    changed = true;
                    match stop_thread(tid) {
                        Ok(t) => self.processes[i].threads.push(t),
                        // It exited between its seize and its stop (a vfork child that was
                        // let run, say): a thread is gone; a process is now its parent's zombie.
                        Err(DumpError::Sys(SysError::UnexpectedStop { status, .. }))
                            if status.starts_with("Exited") || status.starts_with("Signaled") =>
                        {
                            if tid == pid {
                                let st = read_stat(pid.as_raw())?;
                                self.processes[i].zombie = Some(st.exit_code);
                                self.processes[i].threads.clear();
                                break;
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            // Children are found through every thread's children list.
            let known: HashSet<i32> = self.processes.iter().map(|p| p.pid.as_raw()).collect();
            let mut new: Vec<(i32, i32)> = Vec::new();
            for p in &self.processes {
                for t in &p.threads {
                    for child in list_children(p.pid.as_raw(), t.tid.as_raw()) {
                        if !known.contains(&child) && !new.iter().any(|(c, _)| *c == child) {
                            new.push((child, p.pid.as_raw()));
                        }
                    }
                }
            }
            for (child, parent) in new {
                let Ok(stat) = read_stat(child) else { continue };
                changed = true;
                self.processes.push(SeizedProcess {
                    pid: Pid::from_raw(child),
                    ppid: parent,
                    threads: Vec::new(),
                    zombie: (stat.state == 'Z').then_some(stat.exit_code),
                });
            }
            if !changed {
                return Ok(());
            }
        }
    }

    /// Puts processes in parents-first order with the single root at index 0.
    fn order_tree(&mut self) -> Result<(), DumpError> {
        let pids: HashSet<i32> = self.processes.iter().map(|p| p.pid.as_raw()).collect();
        let roots: Vec<i32> = self
            .processes
            .iter()
            .filter(|p| !pids.contains(&p.ppid))
            .map(|p| p.pid.as_raw())
            .collect();
        if roots.len() != 1 {
            return Err(DumpError::Tree(format!(
                "a dump needs one root process, found {} whose parents are outside the tree (a command entered with vzctl exec, say): {roots:?}",
                roots.len()
            )));
        }
        let mut ordered: Vec<SeizedProcess> = Vec::with_capacity(self.processes.len());
        let mut rest = std::mem::take(&mut self.processes);
        let root_idx = rest
            .iter()
            .position(|p| p.pid.as_raw() == roots[0])
            .unwrap_or(0);
        ordered.push(rest.swap_remove(root_idx));
        let mut i = 0;
        while i < ordered.len() {
            let parent = ordered[i].pid.as_raw();
            let mut j = 0;
            while j < rest.len() {
                if rest[j].ppid == parent {
                    ordered.push(rest.swap_remove(j));
                } else {
                    j += 1;
                }
            }
            i += 1;
        }
        self.processes = ordered;
        Ok(())
    }

    /// Keeps the journal (begun before the seize), recording every seized thread and its
    /// own mask (before a remote session blocks all its signals: `sys::remote`).
    pub fn keep_journal(&mut self, mut j: crate::journal::Journal) -> Result<(), DumpError> {
        for p in &self.processes {
            for t in &p.threads {
                j.task(t.tid, t.orig_sigmask);
            }
        }
        j.sync()?;
        self.journal = Some(j);
        Ok(())
    }

    /// Records in the journal (if kept) a socket about to enter repair mode.
    pub fn journal_tcp(&mut self, pid: i32, fd: i32, reuseaddr: bool) -> Result<(), DumpError> {
        match &mut self.journal {
            Some(j) => {
                j.tcp(pid, fd, reuseaddr);
                j.sync()
            }
            None => Ok(()),
        }
    }

    /// Adds a word to the journal (if kept): `hold`, `committing`.
    pub fn journal_mark(&mut self, word: &str) -> Result<(), DumpError> {
        match &mut self.journal {
            Some(j) => j.mark(word),
            None => Ok(()),
        }
    }

    /// Freezes cgroup `dir` (v2 only) around the stopped tree: from here on no task of it
    /// may run until it is let go, not even if this process dies (its tracees would be let
    /// go at once, sockets still in repair mode); the journal records it, for the recovery
    /// to thaw. Nothing injected can run in a frozen task: call it after the last remote
    /// syscall. A v1 freezer is left alone (traced tasks do not freeze reliably there).
    pub fn freeze(&mut self, dir: &std::path::Path) -> Result<(), DumpError> {
        let freezer = Freezer::for_cgroup(dir)?;
        if !matches!(freezer, Freezer::V2(_)) {
            return Ok(());
        }
        if let Some(j) = &mut self.journal {
            j.mark(&format!("frozen {}", dir.display()))?;
        }
        freezer.freeze()?;
        self.freezer = Some(freezer);
        Ok(())
    }

    /// Thaws the cgroup [`freeze`](Self::freeze) froze, if any.
    fn thaw(&mut self) -> Result<(), DumpError> {
        match self.freezer.take() {
            Some(f) => f.thaw(),
            None => Ok(()),
        }
    }

    /// Blocks every signal of every seized thread (the page tracker, `track`, injects with
    /// them blocked). A dump does not: each remote session blocks its own task's signals
    /// and gives them back, through its safety net should this process die
    /// (`sys::remote`), so a killed dumper leaves no task deaf to signals. Each thread's own
    /// mask is back when the tree is let go.
    pub fn block_signals(&self) -> Result<(), DumpError> {
        for p in &self.processes {
            for t in &p.threads {
                if t.orig_sigmask != u64::MAX {
                    ptrace::set_sigmask(t.tid, ALL_SIGNALS)?;
                }
            }
        }
        Ok(())
    }

    pub fn root(&self) -> Pid {
        self.processes[0].pid
    }

    pub fn alive(&self) -> impl Iterator<Item = &SeizedProcess> {
        self.processes.iter().filter(|p| p.zombie.is_none())
    }

    /// Ends the dump: kill the tree, resume it, or leave it stopped.
    pub fn finish(self, state: FinalState) -> Result<(), DumpError> {
        self.finish_journaled(state).map(|j| {
            if let Some(j) = j {
                j.end();
            }
        })
    }

    /// [`finish`](Self::finish), returning the journal (if kept) instead of ending it: the
    /// caller still has work that a killed process must leave to the recovery (`vzctl`
    /// unlocks the VE's network, or removes its cgroups), and ends it after that. On an
    /// error the journal is ended here.
    pub fn finish_journaled(
        mut self,
        state: FinalState,
    ) -> Result<Option<crate::journal::Journal>, DumpError> {
        self.done = true;
        let journal = self.journal.take();
        match self.finish_as(state) {
            Ok(()) => Ok(journal),
            Err(e) => {
                if let Some(j) = journal {
                    j.end();
                }
                Err(e)
            }
        }
    }

    fn finish_as(&mut self, state: FinalState) -> Result<(), DumpError> {
        match state {
            FinalState::LeaveRunning => {
                self.tcp_repair.leave_repair();
                let r = self.resume(None);
                r.and(self.thaw())
            }
            FinalState::LeaveStopped => {
                self.tcp_repair.leave_repair();
                // The stop must be queued and seen while the tasks can run.
                let thawed = self.thaw();
                self.resume(Some(Signal::SIGSTOP)).and(thawed)
            }
            FinalState::LeaveFrozen => {
                self.tcp_repair.leave_repair();
                let r = self.resume(None);
                // Kept frozen: whoever froze it decides.
                self.freezer = None;
                r
            }
            FinalState::Kill => {
                // SIGKILL queued while frozen: thawed, they die before any code of theirs runs.
                for p in self.alive() {
                    let _ = kill(p.pid, Signal::SIGKILL);
                }
                let thawed = self.thaw();
                let r = self.kill_and_wait();
                self.tcp_repair.close_silently();
                r.and(thawed)
            }
        }
    }

    /// Detaches every thread. With `stop`, each process gets that signal queued first (a
    /// detach from an interrupt stop cannot inject one), so it stops as a whole right after
    /// the detach; this returns once every thread shows the stopped state.
    fn resume(&mut self, stop: Option<Signal>) -> Result<(), DumpError> {
        let mut first_err = None;
        if let Some(sig) = stop {
            for p in self.alive() {
                if let Err(e) = kill(p.pid, sig) {
                    warn!(pid = p.pid.as_raw(), ?e, "cannot queue the stop signal");
                }
            }
        }
        for p in &self.processes {
            for t in &p.threads {
                if t.orig_sigmask != u64::MAX {
                    if let Err(e) = ptrace::set_sigmask(t.tid, t.orig_sigmask) {
                        first_err.get_or_insert(e);
                    }
                } else {
                    // Interrupted while frozen, stop never collected: collect it now.
                    let _ = ptrace::wait_for_interrupt_stop(t.tid);
                }
                if let Err(e) = ptrace::detach(t.tid, None) {
                    warn!(tid = t.tid.as_raw(), ?e, "cannot detach");
                    first_err.get_or_insert(e);
                }
            }
        }
        if stop.is_some() {
            self.wait_group_stopped();
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Waits (up to 5 s) until every thread of the tree is in a group stop.
    fn wait_group_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.alive() {
            for t in &p.threads {
                let path = format!("/proc/{}/task/{}/stat", p.pid, t.tid);
                loop {
                    let state = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|st| st.rfind(") ").and_then(|i| st[i + 2..].chars().next()));
                    match state {
                        Some('T') | None => break,
                        Some(_) if Instant::now() > deadline => {
                            warn!(tid = t.tid.as_raw(), "not stopped 5 s after the dump");
                            return;
                        }
                        Some(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }
        }
    }

    /// SIGKILLs every process, reaps the ptrace exit notifications (so real parents get
    /// theirs), and returns once the tree's PIDs are free: every task gone, except a root
    /// that stays a zombie of a parent outside the tree.
    fn kill_and_wait(&mut self) -> Result<(), DumpError> {
        for p in self.alive() {
            let _ = kill(p.pid, Signal::SIGKILL);
        }
        // Children first: a PID namespace's init exits only once every other task of its
        // namespace is reaped, and the traced ones wait for us (the tracer) to reap them.
        for p in self.processes.iter().rev() {
            // A traced group leader is reported only once every other thread of its group
            // has been reaped, and traced threads stay zombies until their tracer reaps them:
            // reap the other threads first, the leader last.
            let (leader, others): (Vec<_>, Vec<_>) = p.threads.iter().partition(|t| t.tid == p.pid);
            for t in others.into_iter().chain(leader) {
                loop {
                    match ptrace::wait(t.tid) {
                        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let root = self.root().as_raw();
        for p in &self.processes {
            let pid = p.pid.as_raw();
            loop {
                match read_stat(pid) {
                    Err(_) => break,
                    Ok(st) if st.state == 'Z' && pid == root => break,
                    Ok(_) if Instant::now() > deadline => {
                        warn!(pid, "PID still taken 10 s after the kill");
                        break;
                    }
                    Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
        debug!("tree killed");
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.tcp_repair.leave_repair();
            if let Err(e) = self.resume(None) {
                warn!(?e, "resuming the tree after a failed dump");
            }
            if let Err(e) = self.thaw() {
                warn!(?e, "thawing the tree after a failed dump");
            }
            if let Some(j) = self.journal.take() {
                j.end();
            }
        }
    }
}

/// Whether `pid` is a vfork child: it shares its parent's address space until it execs or exits. Its
/// parent counts as frozen for the cgroup freezer from the moment it starts waiting for it
/// (even before it sleeps), but would never reach its ptrace interrupt stop while the child,
/// seized with it, sat stopped: the seize would wait for ever.
fn in_vfork(pid: i32) -> bool {
    let Ok(st) = read_stat(pid) else { return false };
    st.ppid > 0
        && sys::syscalls::kcmp_same_vm(Pid::from_raw(pid), Pid::from_raw(st.ppid)).unwrap_or(false)
}

/// Whether task `tid` has exited or is exiting (gone, a zombie, or dead).
fn exiting(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .is_none_or(|state| matches!(state, Some('Z') | Some('X') | None))
}

/// Waits for the interrupt stop of a seized thread and reads its blocked mask (which
/// a remote session changes for a while).
fn stop_thread(tid: Pid) -> Result<SeizedThread, DumpError> {
    ptrace::wait_for_interrupt_stop(tid)?;
    let orig_sigmask = ptrace::get_sigmask(tid)?;
    Ok(SeizedThread { tid, orig_sigmask })
}

pub(crate) fn read_stat(pid: i32) -> Result<crate::proc::Stat, DumpError> {
    let dir = ProcDir::pid(pid);
    let text = dir.read("stat").map_err(|source| DumpError::Io {
        op: "read",
        path: dir.0.join("stat"),
        source,
    })?;
    parse_stat(&text).ok_or_else(|| DumpError::Tree(format!("cannot parse /proc/{pid}/stat")))
}

fn list_threads(pid: i32) -> Result<Vec<i32>, DumpError> {
    let path = format!("/proc/{pid}/task");
    let mut tids: Vec<i32> = std::fs::read_dir(&path)
        .map_err(|source| DumpError::Io {
            op: "list",
            path: path.clone().into(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // Main thread first.
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    Ok(tids)
}

fn list_children(pid: i32, tid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
