//! Every `unsafe` line of vzcpt: ptrace requests nix does not wrap, remote syscalls executed
//! inside a stopped tracee, `clone3` with `set_tid`, pidfds, `kcmp`, and a few raw syscalls.
//!
//! Each wrapper names its syscall and links its man page. The rest of the workspace forbids
//! `unsafe`; everything here is exposed through safe functions whose preconditions are either
//! checked at run time or hold by construction.
#![deny(unsafe_code)]

pub mod btrfs;
pub mod clone;
pub mod events;
pub mod fault;
pub mod features;
pub mod ipc;
pub mod net;
pub mod ns;
pub mod ptrace;
pub mod remote;
pub mod sigframe;
pub mod signals;
pub mod syscalls;
pub mod uffd;
pub mod unix_sock;
pub mod xattr;

pub use nix::unistd::Pid;

/// Errors of this crate: the operation that failed, its target, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op} on task {tid} failed")]
    Ptrace {
        op: &'static str,
        tid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("remote {name} in task {tid} returned {errno}")]
    RemoteSyscall {
        name: &'static str,
        tid: i32,
        errno: nix::Error,
    },
    #[error("task {tid} stopped unexpectedly during {op}: {status}")]
    UnexpectedStop {
        op: &'static str,
        tid: i32,
        status: String,
    },
    #[error("{op} failed")]
    Syscall {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, SysError>;

pub(crate) fn sys_err(op: &'static str) -> impl FnOnce(nix::Error) -> SysError {
    move |source| SysError::Syscall { op, source }
}
