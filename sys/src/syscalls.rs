//! Small syscall wrappers nix does not offer.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::{sys_err, Pid, Result};

/// `pidfd_open(2)`: a descriptor referring to process `pid`.
///
/// # References
/// - [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new descriptor
    // that nobody else owns.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(r).map_err(sys_err("pidfd_open"))?;
    // SAFETY: `fd` is a freshly returned descriptor owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `target_fd` of the process behind `pidfd`,
/// referring to the very same open file description.
///
/// # References
/// - [pidfd_getfd(2)](https://man7.org/linux/man-pages/man2/pidfd_getfd.2.html)
pub fn pidfd_getfd(pidfd: impl AsFd, target_fd: i32) -> Result<OwnedFd> {
    // SAFETY: integer arguments; the pidfd is borrowed for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_fd().as_raw_fd(),
            target_fd,
            0,
        )
    };
    let fd = Errno::result(r).map_err(sys_err("pidfd_getfd"))?;
    // SAFETY: `fd` is a freshly returned descriptor owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: sends `sig` to the process behind `pidfd` (never to a process that
/// reused its PID).
pub fn pidfd_send_signal(pidfd: impl AsFd, sig: nix::sys::signal::Signal) -> Result<()> {
    // SAFETY: integer arguments and a null siginfo (the kernel fills one as kill(2) does);
    // the pidfd is borrowed for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            sig as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(r).map_err(sys_err("pidfd_send_signal"))?;
    Ok(())
}

/// `kcmp(2)` with `KCMP_VM`: whether two tasks share one address space (a vfork child and
/// its parent until the child execs or exits).
pub fn kcmp_same_vm(pid1: Pid, pid2: Pid) -> Result<bool> {
    const KCMP_VM: i32 = 1;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1.as_raw(), pid2.as_raw(), KCMP_VM, 0, 0) };
    Ok(Errno::result(r).map_err(sys_err("kcmp"))? == 0)
}

/// `kcmp(2)` with `KCMP_FILE`: whether fd1 of pid1 and fd2 of pid2 are the same open file description.
///
/// # References
/// - [kcmp(2)](https://man7.org/linux/man-pages/man2/kcmp.2.html)
pub fn kcmp_same_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: integer-only syscall.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            KCMP_FILE,
            fd1 as libc::c_ulong,
            fd2 as libc::c_ulong,
        )
    };
    Ok(Errno::result(r).map_err(sys_err("kcmp"))? == 0)
}

/// `get_robust_list(2)` of another thread: (head address, length).
pub fn get_robust_list(tid: Pid) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer into `head` and one size_t into `len`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.as_raw(),
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    Errno::result(r).map_err(sys_err("get_robust_list"))?;
    Ok((head, len as u64))
}

/// XCR0: the xsave feature bits enabled by the OS on this CPU.
pub fn xcr0() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `xgetbv` with ECX=0 is valid whenever CPUID reports OSXSAVE, which is checked
        // first; otherwise no xsave state exists and 0 is returned.
        unsafe {
            let cpuid = std::arch::x86_64::__cpuid(1);
            if cpuid.ecx & (1 << 27) == 0 {
                return 0;
            }
            std::arch::x86_64::_xgetbv(0)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// `gettid(2)` of the caller.
pub fn gettid() -> Pid {
    nix::unistd::gettid()
}

/// Resets every signal disposition to `SIG_DFL` (what a freshly restored task starts from
/// before its dumped dispositions are applied). Signals that cannot be changed are skipped.
/// Restores the default action of SIGPIPE, which the Rust runtime ignores: a command that
/// only prints (`vzcpt show | head`) then ends quietly when its reader goes away, as Unix
/// tools do, instead of failing on the write.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL involves no handler code; signal() only changes this process's
    // disposition of SIGPIPE, which no code of this program relies on being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn reset_signal_dispositions() {
    #[repr(C)]
    struct KSigaction {
        handler: u64,
        flags: u64,
        restorer: u64,
        mask: u64,
    }
    let dfl = KSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `dfl` is a valid kernel sigaction (SIG_DFL, no flags) read by the kernel; the
        // old-action pointer is null; sigsetsize is 8 as the kernel expects on x86-64.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KSigaction,
                std::ptr::null_mut::<KSigaction>(),
                8,
            );
        }
    }
}

/// Maps `len` bytes of private anonymous RWX memory exactly at `addr` without replacing any
/// existing mapping (`MAP_FIXED_NOREPLACE`), and writes `code` at its start. Used by the
/// restorer's freshly cloned tasks to prepare the page their remote syscalls run from.
pub fn map_code_page(addr: u64, len: u64, code: &[u8]) -> Result<()> {
    if code.len() as u64 > len {
        return Err(crate::SysError::Invalid {
            op: "map_code_page",
            reason: "code larger than the mapping".into(),
        });
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory the program
    // uses can be affected; the kernel picks nothing else than `addr` or fails.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(crate::SysError::Syscall {
            op: "mmap(MAP_FIXED_NOREPLACE)",
            source: Errno::last(),
        });
    }
    if p as u64 != addr {
        // SAFETY: `p` is the mapping just created above, of `len` bytes, used by nothing else.
        unsafe { libc::munmap(p, len as usize) };
        return Err(crate::SysError::Syscall {
            op: "mmap(MAP_FIXED_NOREPLACE)",
            source: Errno::EEXIST,
        });
    }
    // SAFETY: `p` points at `len` freshly mapped writable bytes owned by nothing else, and
    // code.len() <= len.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len()) };
    Ok(())
}

/// Sleeps until a signal arrives, forever: the restorer's freshly built tasks wait here to be
/// seized. Never returns.
pub fn pause_forever() -> ! {
    loop {
        nix::unistd::pause();
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (allowed without privilege), returning it.
pub fn raise_nofile_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(sys_err("getrlimit(NOFILE)"))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(sys_err("setrlimit(NOFILE)"))?;
    Ok(hard)
}

/// `write(2)` on a descriptor number the caller knows to be open (the restorer's builders
/// report through an inherited pipe whose owner lives in the parent's copy of the program).
pub fn write_raw(fd: i32, data: &[u8]) -> Result<usize> {
    // SAFETY: the kernel reads at most data.len() bytes from `data`; an fd that is not open
    // makes the call fail with EBADF, it cannot touch memory.
    let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    Errno::result(r)
        .map(|n| n as usize)
        .map_err(sys_err("write"))
}

/// `read(2)` on a descriptor number the caller knows to be open (see [`write_raw`]).
pub fn read_raw(fd: i32, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into `buf`, which is ours; an fd that
    // is not open makes the call fail with EBADF.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(r)
        .map(|n| n as usize)
        .map_err(sys_err("read"))
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a duplicate of `fd` at the lowest free number >= `min`.
pub fn dup_at_least(fd: impl AsFd, min: i32) -> Result<OwnedFd> {
    let r = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))
        .map_err(sys_err("fcntl(F_DUPFD_CLOEXEC)"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `dup3(fd, slot)`: makes descriptor number `slot` (owned elsewhere, e.g. by an `OwnedFd`
/// holding a placeholder, or a standard stream) refer to `fd`'s open file description.
pub fn dup_onto(fd: impl AsFd, slot: i32, cloexec: bool) -> Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 only changes which description number `slot` refers to; its owner keeps
    // owning the number, and `fd` is borrowed for the call.
    let r = unsafe { libc::dup3(fd.as_fd().as_raw_fd(), slot, flags) };
    Errno::result(r).map_err(sys_err("dup3"))?;
    Ok(())
}

/// Proof that the process was single-threaded when it was made. Take it right before the
/// operation that needs it, with nothing in between that could start a thread; it cannot be
/// sent to another thread.
pub struct SingleThreaded(std::marker::PhantomData<*const ()>);

impl SingleThreaded {
    /// Checks that `/proc/self/task` lists one thread.
    pub fn check() -> Result<Self> {
        let threads = std::fs::read_dir("/proc/thread-self/..")
            .map(|d| d.count())
            .unwrap_or(0);
        if threads != 1 {
            return Err(crate::SysError::Invalid {
                op: "fork",
                reason: format!("the caller must be single-threaded, it has {threads} threads"),
            });
        }
        Ok(SingleThreaded(std::marker::PhantomData))
    }
}

/// `fork(2)` for a caller that is single-threaded (`_proof`), so the child may run ordinary
/// code, allocation included, before it execs or exits.
pub fn fork_single_threaded(_proof: &SingleThreaded) -> Result<nix::unistd::ForkResult> {
    // SAFETY: the caller is single-threaded (the proof was taken without starting a thread
    // since, and cannot cross threads), so no lock of the copied address space is held by a
    // thread that would not exist in the child.
    unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))
}

/// Closes every descriptor from 3 up but `keep`, in a process about to exec
/// (`close_range(2)`), so that nothing its parent left open leaks into the program it becomes.
pub fn close_inherited_before_exec(keep: Option<i32>) -> Result<()> {
    let ranges = match keep {
        Some(k) if k >= 3 => vec![(3, k as u32 - 1), (k as u32 + 1, u32::MAX)],
        _ => vec![(3, u32::MAX)],
    };
    for (first, last) in ranges.into_iter().filter(|(f, l)| f <= l) {
        // SAFETY: only called right before exec in a freshly forked child: the descriptors
        // closed here are not used again by any object of this process image.
        let r = unsafe { libc::close_range(first, last, 0) };
        Errno::result(r).map_err(sys_err("close_range"))?;
    }
    Ok(())
}
