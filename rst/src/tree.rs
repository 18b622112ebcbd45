//! Recreating the process tree with the dumped PIDs.
//!
//! The restorer forks the root with `clone3` (`set_tid`, and `CLONE_NEWPID` when the root was a
//! PID namespace's init). Each new process runs [`build`] on its copy of the restorer: it sets
//! its session and group, maps the page its remote syscalls will run from, creates its own
//! children the same way (so parent links are exact), reports on a pipe and waits to be
//! seized. Zombies exit at once with their dumped status.
//!
//! [`Created`] owns what was created: dropping it kills everything (a failed restore leaves no
//! half-restored process); [`Created::release`] hands the tree over.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use images_format::pstree::{ProcState, PstreeImage};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use sys::clone::{clone3_process, CloneOpts};
use sys::remote::SYSCALL_INSN;
use sys::SysError;

use crate::RestoreError;

pub const SCRATCH_LEN: u64 = 16 * 4096;
/// How long a PID still held by a dying zombie is waited for.
const PID_WAIT: Duration = Duration::from_secs(3);
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// What each builder needs, computed before the first fork.
pub struct Plan {
    pub procs: Vec<PlanProc>,
    pub ns_init: bool,
    /// `CLONE_NEW*` flags of the other namespaces the root is created in.
    pub ns_flags: u64,
    /// A cgroup v2 directory the root is born in (`CLONE_INTO_CGROUP`).
    pub root_cgroup_fd: Option<i32>,
}

/// What the root builder does in its new namespaces before it forks its children: first
/// `namespaces`, then (after the restorer's `net_hook`, if any, has run) `files`. An error
/// message goes back to the restorer.
pub struct RootSetup<'a> {
    pub namespaces: &'a dyn Fn() -> Result<(), String>,
    pub files: &'a dyn Fn() -> Result<(), String>,
    /// Run by the restorer with the root's host PID once its namespaces exist and are filled,
    /// before any descriptor is opened in them (a VE's network links and addresses: sockets
    /// bind to those addresses).
    pub net_hook: Option<&'a dyn Fn(Pid) -> Result<(), String>>,
}

pub struct PlanProc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: Option<i32>,
    /// A zombie whose group is not the one it has when forked (its leader is elsewhere in
    /// the tree): it joins it before exiting, once every process exists.
    pub join_group: bool,
    /// Command name; set by zombies before they exit (live processes get theirs with the core).
    pub comm: String,
    /// Addresses where the syscall page may go, best first (free in the dumped layout).
    pub scratch_candidates: Vec<u64>,
    pub children: Vec<usize>,
}

/// The pipes every builder inherits: it reports on one; zombies that must join another
/// process's group wait on the other until every group leader exists.
#[derive(Debug, Clone, Copy)]
struct BuilderFds {
    report: i32,
    release: i32,
    /// Where the root builder writes why its setup failed.
    message: i32,
    /// The root builder waits on it for the restorer's network hook.
    go: i32,
}

/// `Report::value` of a zombie that joined its group and is about to exit.
const JOINED: u64 = u64::MAX;
/// `Report::value` of a zombie that has its session and group and waits or exits.
const ZOMBIE_READY: u64 = u64::MAX - 1;
/// `Report::value` of the root whose namespaces are ready for the restorer's network hook.
const NS_READY: u64 = u64::MAX - 2;

/// One report from a builder: 24 bytes, written atomically on a pipe.
#[derive(Debug, Clone, Copy)]
struct Report {
    pid: i32,
    errno: i32,
    value: u64,
}

impl Report {
    fn to_bytes(self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4..8].copy_from_slice(&self.errno.to_le_bytes());
        b[8..16].copy_from_slice(&self.value.to_le_bytes());
        b
    }
    fn from_bytes(b: &[u8; 24]) -> Self {
        Report {
            pid: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            errno: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            value: u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])),
        }
    }
}

/// A process of the new tree, ready to be seized.
#[derive(Debug, Clone, Copy)]
pub struct CreatedProc {
    /// PID as recorded in the image (inside the new PID namespace, if any).
    pub pid: i32,
    /// PID as the restorer sees it.
    pub host: Pid,
    pub scratch: u64,
}

pub struct Created {
    pub root_host: Pid,
    /// Live processes in image order.
    pub procs: Vec<CreatedProc>,
    /// Whether the restorer is the root's parent (and must reap it).
    pub root_is_child: bool,
    released: bool,
}

impl Created {
    /// The tree is handed over: it is not killed on drop any more.
    pub fn release(&mut self) {
        self.released = true;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Killing the init of a new PID namespace kills the whole namespace; otherwise every
        // created process is killed by PID (they are all stopped or waiting, none can fork).
        // A PID of 0 or less is never signalled: kill(0) would hit the restorer's own
        // process group, kill(-1) everything.
        for p in self.procs.iter().rev().filter(|p| p.host.as_raw() > 0) {
            let _ = kill(p.host, Signal::SIGKILL);
        }
        if self.root_host.as_raw() <= 0 {
            return;
        }
        let _ = kill(self.root_host, Signal::SIGKILL);
        if self.root_is_child {
            // The root's other threads are still traced by the restorer: each dead one stays a
            // zombie until its tracer reaps it, and the group leader cannot be reaped before
            // them. waitpid(root) alone would block forever; reap everything until the root.
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                    Ok(st) if st.pid() == Some(self.root_host) => break,
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
        }
    }
}

fn write_report(fd: i32, r: Report) {
    // The write end of the report pipe is inherited from the restorer and stays open for the
    // builder's whole life; a 24-byte write to a pipe is atomic.
    let _ = sys::syscalls::write_raw(fd, &r.to_bytes());
}

/// Creates a process with PID `set_tid[0]`, retrying while a dying zombie still holds it.
fn clone_with_pid(opts: &CloneOpts<'_>, child: impl Fn() -> i32) -> Result<Pid, SysError> {
    let start = Instant::now();
    loop {
        match clone3_process(opts, &child) {
            Err(SysError::Syscall {
                source: Errno::EEXIST,
                ..
            }) if start.elapsed() < PID_WAIT => std::thread::sleep(Duration::from_millis(5)),
            r => return r,
        }
    }
}

/// Runs in every new process: session, group, syscall page, children, report, wait.
fn build(
    plan: &Plan,
    idx: usize,
    fds: BuilderFds,
    die_with_parent: bool,
    setup: &RootSetup<'_>,
) -> i32 {
    let report_fd = fds.report;
    let me = &plan.procs[idx];
    // A builder dies with its parent until its real pdeath signal is restored; not a detached
    // root, whose parent (an intermediate process) exits at once. The restorer's
    // `Created` guard kills it on failure instead.
    if die_with_parent {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    }
    sys::syscalls::reset_signal_dispositions();
    let fail = |errno: Errno| {
        write_report(
            report_fd,
            Report {
                pid: me.pid,
                errno: errno as i32,
                value: 0,
            },
        );
        1
    };
    if idx == 0 {
        let say = |msg: String| {
            let _ = sys::syscalls::write_raw(fds.message, msg.as_bytes());
        };
        if let Err(msg) = (setup.namespaces)() {
            say(msg);
            return fail(Errno::EPROTO);
        }
        if setup.net_hook.is_some() {
            write_report(
                report_fd,
                Report {
                    pid: me.pid,
                    errno: 0,
                    value: NS_READY,
                },
            );
            // EOF instead of the byte: the restorer gave up.
            if !matches!(sys::syscalls::read_raw(fds.go, &mut [0u8; 1]), Ok(1)) {
                return 1;
            }
        }
        if let Err(msg) = (setup.files)() {
            say(msg);
            return fail(Errno::EPROTO);
        }
    }
    // Sessions and groups that the image says this process leads; others are inherited from
    // the parent or joined by a remote setpgid once every group leader exists.
    if me.sid == me.pid {
        if let Err(e) = nix::unistd::setsid() {
            return fail(e);
        }
    } else if me.pgid == me.pid {
        if let Err(e) = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
            return fail(e);
        }
    }
    if let Some(code) = me.zombie {
        // Its own session or group exists now: other zombies may join it.
        write_report(
            report_fd,
            Report {
                pid: me.pid,
                errno: 0,
                value: ZOMBIE_READY,
            },
        );
        if me.join_group {
            // The group's leader may not exist yet: wait for the restorer's go.
            let _ = sys::syscalls::read_raw(fds.release, &mut [0u8; 1]);
            let joined = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(me.pgid));
            write_report(
                report_fd,
                Report {
                    pid: me.pid,
                    errno: joined.err().map_or(0, |e| e as i32),
                    value: JOINED,
                },
            );
        }
        // Become a zombie with the dumped name and wait status.
        if let Ok(name) = std::ffi::CString::new(me.comm.as_bytes()) {
            let _ = nix::sys::prctl::set_name(&name);
        }
        if code & 0x7f == 0 {
            return (code >> 8) & 0xff;
        }
        let sig = Signal::try_from(code & 0x7f).unwrap_or(Signal::SIGKILL);
        let _ = kill(nix::unistd::getpid(), sig);
        return 128 + (code & 0x7f);
    }
    let mut scratch = 0;
    for &cand in &me.scratch_candidates {
        if sys::syscalls::map_code_page(cand, SCRATCH_LEN, &SYSCALL_INSN).is_ok() {
            scratch = cand;
            break;
        }
    }
    if scratch == 0 {
        return fail(Errno::ENOMEM);
    }
    for &c in &me.children {
        let child = &plan.procs[c];
        let set_tid = [child.pid];
        let opts = CloneOpts {
            flags: 0,
            set_tid: &set_tid,
            exit_signal: libc::SIGCHLD,
            cgroup_fd: None,
        };
        if let Err(e) = clone_with_pid(&opts, || build(plan, c, fds, true, setup)) {
            let errno = match e {
                SysError::Syscall { source, .. } => source,
                _ => Errno::EINVAL,
            };
            write_report(
                report_fd,
                Report {
                    pid: child.pid,
                    errno: errno as i32,
                    value: 0,
                },
            );
            return 1;
        }
    }
    write_report(
        report_fd,
        Report {
            pid: me.pid,
            errno: 0,
            value: scratch,
        },
    );
    sys::syscalls::pause_forever()
}

/// Creates the whole tree. With `detach`, the root is created by an intermediate process that
/// exits at once, so the root is not the restorer's child.
pub fn create(plan: &Plan, detach: bool, setup: &RootSetup<'_>) -> Result<Created, RestoreError> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RestoreError::Tree(format!("pipe2: {e}")))?;
    let (release_r, release_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RestoreError::Tree(format!("pipe2: {e}")))?;
    let (message_r, message_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| RestoreError::Tree(format!("pipe2: {e}")))?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RestoreError::Tree(format!("pipe2: {e}")))?;
    let fds = BuilderFds {
        report: report_w.as_raw_fd(),
        release: release_r.as_raw_fd(),
        message: message_w.as_raw_fd(),
        go: go_r.as_raw_fd(),
    };
    let root = &plan.procs[0];
    let root_tid = [if plan.ns_init { 1 } else { root.pid }];
    let root_opts = CloneOpts {
        flags: plan.ns_flags
            | if plan.ns_init {
                libc::CLONE_NEWPID as u64
            } else {
                0
            },
        set_tid: &root_tid,
        exit_signal: libc::SIGCHLD,
        cgroup_fd: plan.root_cgroup_fd,
    };
    let (root_host, root_is_child) = if detach {
        let mid = clone3_process(
            &CloneOpts {
                exit_signal: libc::SIGCHLD,
                ..Default::default()
            },
            || match clone_with_pid(&root_opts, || build(plan, 0, fds, false, setup)) {
                Ok(pid) => {
                    write_report(
                        fds.report,
                        Report {
                            pid: -1,
                            errno: 0,
                            value: pid.as_raw() as u64,
                        },
                    );
                    0
                }
                Err(e) => {
                    let errno = match e {
                        SysError::Syscall { source, .. } => source,
                        _ => Errno::EINVAL,
                    };
                    write_report(
                        fds.report,
                        Report {
                            pid: root.pid,
                            errno: errno as i32,
                            value: 0,
                        },
                    );
                    1
                }
            },
        )
        .map_err(RestoreError::Sys)?;
        let _ = waitpid(mid, None);
        (None, false)
    } else {
        let pid = clone_with_pid(&root_opts, || build(plan, 0, fds, true, setup)).map_err(|e| {
            RestoreError::Tree(format!(
                "cannot create the root process with PID {}: {e}",
                root.pid
            ))
        })?;
        (Some(pid), true)
    };
    drop(report_w);
    drop(message_w);
    drop(go_r);
    let mut ns_ready = false;

    let mut created = Created {
        root_host: root_host.unwrap_or(Pid::from_raw(0)),
        procs: Vec::new(),
        root_is_child,
        released: false,
    };
    let alive: usize = plan.procs.iter().filter(|p| p.zombie.is_none()).count();
    let zombies = plan.procs.len() - alive;
    let mut scratch: HashMap<i32, u64> = HashMap::new();
    let mut zombies_ready = 0;
    let deadline = Instant::now() + REPORT_TIMEOUT;
    while scratch.len() < alive || zombies_ready < zombies || created.root_host.as_raw() == 0 {
        let r = read_report(&report_r, deadline)?;
        if r.errno != 0 {
            if created.root_host.as_raw() == 0 {
                // Detached: the intermediate process has exited, so the report of the root's
                // PID, if the root exists, is already in the pipe. Without it the root would
                // outlive the failure (it has no parent death signal).
                while let Ok(more) = read_report(&report_r, Instant::now()) {
                    if more.pid == -1 {
                        created.root_host = Pid::from_raw(more.value as i32);
                    }
                }
            }
            let mut msg = vec![0u8; 4096];
            let n = sys::syscalls::read_raw(message_r.as_raw_fd(), &mut msg).unwrap_or(0);
            if n > 0 {
                return Err(RestoreError::Tree(format!(
                    "cannot set up the namespaces of process {}: {}",
                    r.pid,
                    String::from_utf8_lossy(&msg[..n])
                )));
            }
            return Err(RestoreError::Tree(format!(
                "cannot create process {}: {}",
                r.pid,
                Errno::from_raw(r.errno).desc()
            )));
        }
        if r.pid == -1 {
            created.root_host = Pid::from_raw(r.value as i32);
        } else if r.value == NS_READY {
            ns_ready = true;
        } else if r.value == ZOMBIE_READY {
            zombies_ready += 1;
        } else {
            scratch.insert(r.pid, r.value);
        }
        // The root's namespaces are ready and its host PID known (a detached root's comes
        // from the intermediate process, in either order): run the hook, then let it go on.
        if ns_ready && created.root_host.as_raw() > 0 {
            ns_ready = false;
            if let Some(hook) = setup.net_hook {
                hook(created.root_host).map_err(|e| {
                    RestoreError::Tree(format!("network of the restored root: {e}"))
                })?;
            }
            sys::syscalls::write_raw(go_w.as_raw_fd(), &[1])?;
        }
    }
    // Every process exists now with its own session and group, zombies included: the zombies
    // that join another leader's group may do so and exit.
    let joiners = plan.procs.iter().filter(|p| p.join_group).count();
    if joiners > 0 {
        sys::syscalls::write_raw(release_w.as_raw_fd(), &vec![0u8; joiners])?;
        for _ in 0..joiners {
            let r = read_report(&report_r, deadline)?;
            if r.errno != 0 || r.value != JOINED {
                return Err(RestoreError::Tree(format!(
                    "zombie {} cannot join process group: {}",
                    r.pid,
                    Errno::from_raw(r.errno).desc()
                )));
            }
        }
    }
    drop((release_r, release_w));
    // Host PIDs: the same numbers unless a new PID namespace was made; then found through
    // NSpid walking down from the root.
    let host_of = if plan.ns_init {
        ns_host_pids(created.root_host)?
    } else {
        plan.procs
            .iter()
            .map(|p| (p.pid, Pid::from_raw(p.pid)))
            .collect()
    };
    for p in &plan.procs {
        if p.zombie.is_some() {
            if p.join_group {
                if let Some(h) = host_of.get(&p.pid) {
                    wait_zombie(*h, deadline)?;
                }
            }
            continue;
        }
        let host = *host_of.get(&p.pid).ok_or_else(|| {
            RestoreError::Tree(format!("process {} not found after creation", p.pid))
        })?;
        created.procs.push(CreatedProc {
            pid: p.pid,
            host,
            scratch: scratch[&p.pid],
        });
    }
    Ok(created)
}

/// Waits until `pid` has exited (a zombie of its paused parent).
fn wait_zombie(pid: Pid, deadline: Instant) -> Result<(), RestoreError> {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rfind(") ").and_then(|i| stat[i + 2..].chars().next()) == Some('Z') {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(RestoreError::Tree(format!(
                "zombie {pid} did not exit in time"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_report(fd: &OwnedFd, deadline: Instant) -> Result<Report, RestoreError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let left = deadline.saturating_duration_since(Instant::now());
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let n = poll(
        &mut fds,
        PollTimeout::try_from(left.as_millis() as i32).unwrap_or(PollTimeout::ZERO),
    )
    .map_err(|e| RestoreError::Tree(format!("poll: {e}")))?;
    if n == 0 {
        return Err(RestoreError::Tree(
            "processes were not created in time".into(),
        ));
    }
    let mut b = [0u8; 24];
    let got = nix::unistd::read(fd.as_fd(), &mut b)
        .map_err(|e| RestoreError::Tree(format!("read: {e}")))?;
    if got != 24 {
        return Err(RestoreError::Tree(
            "a process of the new tree died while being created".into(),
        ));
    }
    Ok(Report::from_bytes(&b))
}

/// Maps PIDs inside the new namespace to the restorer's view by walking children lists.
fn ns_host_pids(root: Pid) -> Result<HashMap<i32, Pid>, RestoreError> {
    let mut out = HashMap::new();
    let mut queue = vec![root.as_raw()];
    while let Some(h) = queue.pop() {
        let status = std::fs::read_to_string(format!("/proc/{h}/status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last()?.parse::<i32>().ok());
        if let Some(v) = nspid {
            out.insert(v, Pid::from_raw(h));
        }
        let children =
            std::fs::read_to_string(format!("/proc/{h}/task/{h}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Ok(out)
}

/// Builds the plan from the image: children lists and scratch candidates per process.
pub fn plan(pstree: &PstreeImage, layouts: &HashMap<i32, Vec<(u64, u64)>>) -> Plan {
    let index: HashMap<i32, usize> = pstree
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.pid, i))
        .collect();
    let mut procs: Vec<PlanProc> = pstree
        .processes
        .iter()
        .map(|p| PlanProc {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            zombie: match p.state {
                ProcState::Zombie { exit_code } => Some(exit_code),
                ProcState::Alive => None,
            },
            join_group: false,
            comm: p.comm.clone(),
            scratch_candidates: scratch_candidates(
                layouts.get(&p.pid).map(|v| v.as_slice()).unwrap_or(&[]),
            ),
            children: Vec::new(),
        })
        .collect();
    for i in 1..procs.len() {
        if let Some(&parent) = index.get(&procs[i].ppid) {
            procs[parent].children.push(i);
        }
    }
    // The group each builder has right after fork (parents come first): its own if it leads
    // a session or group, else its parent's. Live processes move later by remote setpgid.
    let mut forked_pgid: Vec<i32> = Vec::with_capacity(procs.len());
    for (i, p) in procs.iter().enumerate() {
        let g = if p.sid == p.pid || p.pgid == p.pid {
            p.pid
        } else {
            index
                .get(&p.ppid)
                .filter(|&&j| j < i)
                .map_or(p.pgid, |&j| forked_pgid[j])
        };
        forked_pgid.push(g);
    }
    for (p, g) in procs.iter_mut().zip(forked_pgid) {
        p.join_group = p.zombie.is_some() && p.pgid != g;
    }
    Plan {
        procs,
        ns_init: pstree.pid_ns_init,
        ns_flags: 0,
        root_cgroup_fd: None,
    }
}

/// Candidate addresses for the syscall page: the middle of the largest gaps of the dumped
/// layout (sorted `(start, end)` areas), so that no dumped area will be mapped over it.
pub fn scratch_candidates(areas: &[(u64, u64)]) -> Vec<u64> {
    const LOW: u64 = 0x1000_0000;
    const HIGH: u64 = 0x7fff_0000_0000;
    let mut gaps = Vec::new();
    let mut prev = LOW;
    for &(s, e) in areas {
        if s > prev {
            gaps.push((prev, s));
        }
        prev = prev.max(e);
    }
    if prev < HIGH {
        gaps.push((prev, HIGH));
    }
    gaps.retain(|(s, e)| e - s >= SCRATCH_LEN * 4);
    gaps.sort_by_key(|(s, e)| std::cmp::Reverse(e - s));
    gaps.iter()
        .take(8)
        .map(|(s, e)| (s + (e - s) / 2) & !0xfff)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_goes_in_a_gap() {
        let areas = [
            (0x5555_0000_0000, 0x5555_0010_0000),
            (0x7fff_f000_0000, 0x7fff_f100_0000),
        ];
        let c = scratch_candidates(&areas);
        assert!(!c.is_empty());
        for a in c {
            for &(s, e) in &areas {
                assert!(
                    a + SCRATCH_LEN <= s || a >= e,
                    "{a:#x} overlaps {s:#x}-{e:#x}"
                );
            }
            assert_eq!(a & 0xfff, 0);
        }
    }

    #[test]
    fn report_round_trip() {
        let r = Report {
            pid: 42,
            errno: 17,
            value: 0xdead_b000,
        };
        let b = Report::from_bytes(&r.to_bytes());
        assert_eq!((b.pid, b.errno, b.value), (42, 17, 0xdead_b000));
    }
}
