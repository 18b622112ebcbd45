//! ptrace requests used by the dumper and the restorer.
//!
//! nix wraps seize/interrupt/cont/detach; this module adds the register sets (general and full
//! xsave), the signal mask, queued siginfo and rseq configuration, which nix does not wrap.
//!
//! # References
//! - [ptrace(2)](https://man7.org/linux/man-pages/man2/ptrace.2.html)
#![allow(unsafe_code)]

use std::mem::{size_of, MaybeUninit};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::{Pid, Result, SysError};

pub use libc::user_regs_struct as UserRegs;

const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Large enough for every xsave layout x86 defines today (AMX tiles included).
const XSTATE_MAX: usize = 16 << 10;

fn perr(op: &'static str, tid: Pid) -> impl FnOnce(nix::Error) -> SysError {
    move |source| SysError::Ptrace {
        op,
        tid: tid.as_raw(),
        source,
    }
}

/// The options every seized task gets: syscall stops marked with 0x80, and new threads/children
/// created by an injected `clone3` traced automatically.
pub fn seize_options() -> ptrace::Options {
    ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_TRACECLONE
}

/// `PTRACE_SEIZE` then `PTRACE_INTERRUPT`: the task will enter a ptrace stop.
pub fn seize_and_interrupt(tid: Pid) -> Result<()> {
    ptrace::seize(tid, seize_options()).map_err(perr("PTRACE_SEIZE", tid))?;
    ptrace::interrupt(tid).map_err(perr("PTRACE_INTERRUPT", tid))
}

/// Waits for `tid` (thread or process, `__WALL`) to change state.
pub fn wait(tid: Pid) -> Result<WaitStatus> {
    loop {
        match waitpid(tid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(perr("waitpid", tid)),
        }
    }
}

/// Waits until a seized and interrupted task reports its stop. A signal that arrives first is
/// re-queued (not lost) by resuming the task with it and waiting again for the interrupt stop.
pub fn wait_for_interrupt_stop(tid: Pid) -> Result<()> {
    loop {
        match wait(tid)? {
            WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_STOP => return Ok(()),
            WaitStatus::Stopped(_, sig) => {
                // A signal-delivery stop came before the interrupt trap. Deliver it and
                // interrupt again: the task stops in the trap before running user code.
                ptrace::cont(tid, sig).map_err(perr("PTRACE_CONT", tid))?;
                ptrace::interrupt(tid).map_err(perr("PTRACE_INTERRUPT", tid))?;
            }
            WaitStatus::PtraceEvent(_, _, _) | WaitStatus::PtraceSyscall(_) => {
                ptrace::cont(tid, None).map_err(perr("PTRACE_CONT", tid))?;
                ptrace::interrupt(tid).map_err(perr("PTRACE_INTERRUPT", tid))?;
            }
            other => {
                return Err(SysError::UnexpectedStop {
                    op: "seize",
                    tid: tid.as_raw(),
                    status: format!("{other:?}"),
                })
            }
        }
    }
}

/// Asks a task that sits in a syscall stop to move to an interrupt (group-stop like) trap,
/// from which a detach lets the kernel finish syscall-restart handling itself.
pub fn reinterrupt(tid: Pid) -> Result<()> {
    ptrace::interrupt(tid).map_err(perr("PTRACE_INTERRUPT", tid))?;
    ptrace::cont(tid, None).map_err(perr("PTRACE_CONT", tid))?;
    wait_for_interrupt_stop(tid)
}

pub fn detach(tid: Pid, sig: Option<nix::sys::signal::Signal>) -> Result<()> {
    ptrace::detach(tid, sig).map_err(perr("PTRACE_DETACH", tid))
}

fn getregset(tid: Pid, nt: libc::c_int, buf: &mut [u8]) -> nix::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, writable for buf.len() bytes; the kernel writes at most
    // iov_len bytes and updates iov_len with the size it wrote.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid.as_raw(),
            nt as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(r).map(|_| iov.iov_len)
}

fn setregset(tid: Pid, nt: libc::c_int, buf: &[u8]) -> nix::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel only reads iov_len bytes from iov_base, which is `buf`.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid.as_raw(),
            nt as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    Errno::result(r).map(drop)
}

/// General registers (`PTRACE_GETREGSET`, `NT_PRSTATUS`), fs/gs base included.
pub fn get_regs(tid: Pid) -> Result<UserRegs> {
    let mut regs = MaybeUninit::<UserRegs>::zeroed();
    // SAFETY: a zeroed user_regs_struct is a valid value (plain integers); the slice covers
    // exactly the struct's bytes.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(regs.as_mut_ptr().cast::<u8>(), size_of::<UserRegs>())
    };
    let n = getregset(tid, NT_PRSTATUS, buf).map_err(perr("PTRACE_GETREGSET(NT_PRSTATUS)", tid))?;
    if n != size_of::<UserRegs>() {
        return Err(SysError::Invalid {
            op: "PTRACE_GETREGSET(NT_PRSTATUS)",
            reason: format!(
                "kernel returned {n} bytes, expected {}",
                size_of::<UserRegs>()
            ),
        });
    }
    // SAFETY: zero-initialised above and then filled by the kernel; all bit patterns are valid.
    Ok(unsafe { regs.assume_init() })
}

pub fn set_regs(tid: Pid, regs: &UserRegs) -> Result<()> {
    // SAFETY: reading the bytes of a plain-integer struct through a shared reference.
    let buf = unsafe {
        std::slice::from_raw_parts(
            (regs as *const UserRegs).cast::<u8>(),
            size_of::<UserRegs>(),
        )
    };
    setregset(tid, NT_PRSTATUS, buf).map_err(perr("PTRACE_SETREGSET(NT_PRSTATUS)", tid))
}

/// The whole xsave area (`NT_X86_XSTATE`): x87, SSE, AVX, AVX-512, ... as the CPU has them.
pub fn get_xstate(tid: Pid) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let n = getregset(tid, NT_X86_XSTATE, &mut buf)
        .map_err(perr("PTRACE_GETREGSET(NT_X86_XSTATE)", tid))?;
    buf.truncate(n);
    Ok(buf)
}

pub fn set_xstate(tid: Pid, xstate: &[u8]) -> Result<()> {
    setregset(tid, NT_X86_XSTATE, xstate).map_err(perr("PTRACE_SETREGSET(NT_X86_XSTATE)", tid))
}

/// Blocked-signal mask of a thread (`PTRACE_GETSIGMASK`).
pub fn get_sigmask(tid: Pid) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes 8 bytes (the size passed in addr) into `mask`.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GETSIGMASK,
            tid.as_raw(),
            size_of::<u64>() as *mut libc::c_void,
            &mut mask as *mut u64,
        )
    };
    Errno::result(r).map_err(perr("PTRACE_GETSIGMASK", tid))?;
    Ok(mask)
}

pub fn set_sigmask(tid: Pid, mask: u64) -> Result<()> {
    // SAFETY: the kernel reads 8 bytes from `mask`.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SETSIGMASK,
            tid.as_raw(),
            size_of::<u64>() as *mut libc::c_void,
            &mask as *const u64,
        )
    };
    Errno::result(r)
        .map(drop)
        .map_err(perr("PTRACE_SETSIGMASK", tid))
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Raw 128-byte siginfo records queued for the thread (`shared == false`) or for the whole
/// thread group (`shared == true`), without dequeuing them (`PTRACE_PEEKSIGINFO`).
pub fn peek_siginfo(tid: Pid, shared: bool) -> Result<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; 32];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: buf.len() as i32,
        };
        // SAFETY: `buf` has room for `args.nr` siginfo records of 128 bytes each.
        let r = unsafe {
            libc::ptrace(
                PTRACE_PEEKSIGINFO,
                tid.as_raw(),
                &args as *const PeekSiginfoArgs,
                buf.as_mut_ptr(),
            )
        };
        let n = Errno::result(r).map_err(perr("PTRACE_PEEKSIGINFO", tid))? as usize;
        out.extend_from_slice(&buf[..n.min(buf.len())]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// rseq registration of a thread: (address, length, signature); address 0 when none.
pub fn get_rseq(tid: Pid) -> Result<(u64, u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        rseq_abi_pointer: u64,
        rseq_abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    let mut conf = RseqConf::default();
    // SAFETY: the kernel writes at most `addr` bytes (the struct size) into `conf`.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid.as_raw(),
            size_of::<RseqConf>() as *mut libc::c_void,
            &mut conf as *mut RseqConf,
        )
    };
    Errno::result(r).map_err(perr("PTRACE_GET_RSEQ_CONFIGURATION", tid))?;
    Ok((conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature))
}

/// `PTRACE_GETEVENTMSG`: for a clone event, the new task's TID.
pub fn event_msg(tid: Pid) -> Result<i64> {
    ptrace::getevent(tid).map_err(perr("PTRACE_GETEVENTMSG", tid))
}

pub fn syscall_step(tid: Pid) -> Result<()> {
    ptrace::syscall(tid, None).map_err(perr("PTRACE_SYSCALL", tid))
}
