//! Records of per-process and per-thread state: registers, signals, credentials, limits, ...
//!
//! Registers are kept as a mirror of the kernel's `user_regs_struct` (never the libc type
//! itself) so the format does not depend on a crate's layout.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CoreImage {
    pub processes: Vec<ProcessCore>,
}

impl Image for CoreImage {
    const KIND: ImageKind = ImageKind::Core;
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessCore {
    pub pid: i32,
    /// Signal dispositions of signals 1..=64 (index = signal - 1); SIGKILL/SIGSTOP entries are default.
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole thread group (128-byte siginfo each).
    pub shared_pending: Vec<SigInfo>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: Vec<ITimer>,
    pub rlimits: Vec<Rlimit>,
    pub creds: Creds,
    pub personality: u32,
    pub umask: u32,
    pub no_new_privs: bool,
    pub dumpable: u32,
    pub child_subreaper: bool,
    pub pdeath_signal: u32,
    pub cwd: String,
    pub root: String,
    /// The cgroups of the process, one per hierarchy, as `/proc/PID/cgroup` lists them.
    pub cgroups: Vec<CgroupMembership>,
    pub threads: Vec<ThreadCore>,
}

/// Membership in one cgroup hierarchy: a line `ID:CONTROLLERS:PATH` of `/proc/PID/cgroup`.
/// `controllers` is empty for cgroup v2; `path` is from the hierarchy's root.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CgroupMembership {
    pub controllers: String,
    pub path: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ThreadCore {
    pub tid: i32,
    pub comm: String,
    /// Registers to resume with, syscall-restart fix-ups already applied.
    pub regs: Regs,
    /// The whole xsave area as `PTRACE_GETREGSET(NT_X86_XSTATE)` returned it.
    pub xsave: Vec<u8>,
    pub blocked: u64,
    pub pending: Vec<SigInfo>,
    pub altstack: AltStack,
    pub robust_list: u64,
    pub robust_list_len: u64,
    pub rseq: Option<Rseq>,
    /// `set_tid_address` value (clear_child_tid).
    pub clear_tid_address: u64,
}

/// Mirror of x86-64 `struct user_regs_struct`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Kernel `struct sigaction` as `rt_sigaction` takes it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One queued signal: the raw 128-byte siginfo.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    pub raw: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    pub address: u64,
    pub length: u32,
    pub signature: u32,
}

/// An interval timer in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub securebits: u32,
}
