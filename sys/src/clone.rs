//! `clone3(2)` with `set_tid`: create a process with a chosen PID (and, with `CLONE_NEWPID`,
//! as init of a new PID namespace).
//!
//! # References
//! - [clone3(2)](https://man7.org/linux/man-pages/man2/clone3.2.html)
#![allow(unsafe_code)]

use nix::errno::Errno;

use crate::{Pid, Result, SysError};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How to create a new process.
#[derive(Debug, Clone, Default)]
pub struct CloneOpts<'a> {
    /// `CLONE_*` flags; `CLONE_VM`/`CLONE_THREAD` are refused (this creates processes).
    pub flags: u64,
    /// PIDs from the innermost namespace outwards; empty for any PID.
    pub set_tid: &'a [i32],
    /// Signal sent to the parent when the child exits (normally SIGCHLD).
    pub exit_signal: i32,
    /// A cgroup v2 directory fd to start the child in (`CLONE_INTO_CGROUP`).
    pub cgroup_fd: Option<i32>,
}

/// Creates a process like `fork` (no `CLONE_VM`), runs `child` in it and `_exit`s with its
/// return value. Returns the child's PID as seen by the caller, or `EEXIST` if a requested PID
/// is taken.
///
/// The caller must be single-threaded: the child gets a copy of the address space, and a
/// lock held by another thread at the time of the copy would never be released there. This is
/// checked at run time (`/proc/self/task` must list one thread).
pub fn clone3_process(opts: &CloneOpts<'_>, child: impl FnOnce() -> i32) -> Result<Pid> {
    if opts.flags & (libc::CLONE_VM | libc::CLONE_THREAD) as u64 != 0 {
        return Err(SysError::Invalid {
            op: "clone3",
            reason: "CLONE_VM/CLONE_THREAD are not for process creation".into(),
        });
    }
    let threads = std::fs::read_dir("/proc/thread-self/..")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(SysError::Invalid {
            op: "clone3",
            reason: format!("the caller must be single-threaded, it has {threads} threads"),
        });
    }
    let mut flags = opts.flags;
    if opts.cgroup_fd.is_some() {
        flags |= 0x200000000; // CLONE_INTO_CGROUP
    }
    let args = CloneArgs {
        flags,
        exit_signal: opts.exit_signal as u64,
        set_tid: if opts.set_tid.is_empty() {
            0
        } else {
            opts.set_tid.as_ptr() as u64
        },
        set_tid_size: opts.set_tid.len() as u64,
        cgroup: opts.cgroup_fd.map(|fd| fd as u64).unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; set_tid points at
    // `set_tid_size` i32s that outlive the call. No CLONE_VM: the child runs on its own copy
    // of the address space and stack, like after fork(), and the caller is single-threaded
    // (checked above), so no lock in the copy is held by a thread that does not exist there.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(r) {
        Ok(0) => {
            let code = child();
            // SAFETY: `_exit` never returns and runs no atexit handlers or destructors of the
            // parent's state copied into this child.
            unsafe { libc::_exit(code) }
        }
        Ok(pid) => Ok(Pid::from_raw(pid as i32)),
        Err(e) => Err(SysError::Syscall {
            op: "clone3",
            source: e,
        }),
    }
}
