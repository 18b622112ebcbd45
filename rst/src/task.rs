//! Per-process and per-thread state, restored by remote syscalls in the seized task, in an
//! order that respects what each step needs:
//! signal dispositions, timers, limits, personality, umask, cwd/root (the task is still root);
//! threads created with their TIDs (`clone3` + `set_tid` needs CAP_SYS_ADMIN); per-thread
//! sigaltstack, robust list, rseq, clear_child_tid, name; pending signals; credentials per
//! thread (dropping privileges last); then what a credential change resets (pdeath signal,
//! dumpable) and no_new_privs; finally registers, xsave and signal masks.

use images_format::core::{Creds, ProcessCore, Regs, ThreadCore};
use sys::ptrace::{self, UserRegs};
use sys::remote::RemoteTask;
use sys::Pid;

use crate::RestoreError;

const RSEQ_FLAG_UNREGISTER: u64 = 1;
const SS_DISABLE: i32 = 2;
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

pub fn user_regs(r: &Regs, base: &UserRegs) -> UserRegs {
    let mut u = *base;
    u.r15 = r.r15;
    u.r14 = r.r14;
    u.r13 = r.r13;
    u.r12 = r.r12;
    u.rbp = r.rbp;
    u.rbx = r.rbx;
    u.r11 = r.r11;
    u.r10 = r.r10;
    u.r9 = r.r9;
    u.r8 = r.r8;
    u.rax = r.rax;
    u.rcx = r.rcx;
    u.rdx = r.rdx;
    u.rsi = r.rsi;
    u.rdi = r.rdi;
    u.orig_rax = r.orig_rax;
    u.rip = r.rip;
    u.cs = r.cs;
    u.eflags = r.eflags;
    u.rsp = r.rsp;
    u.ss = r.ss;
    u.fs_base = r.fs_base;
    u.gs_base = r.gs_base;
    u.ds = r.ds;
    u.es = r.es;
    u.fs = r.fs;
    u.gs = r.gs;
    u
}

/// Drops the restorer's rseq registration the builder inherited through fork: once its memory
/// is replaced the kernel would otherwise write into whatever is mapped there.
pub fn unregister_inherited_rseq(rt: &mut RemoteTask) -> Result<(), RestoreError> {
    let (addr, len, sig) = ptrace::get_rseq(rt.tid())?;
    if addr != 0 {
        rt.syscall_ok(
            "rseq(unregister)",
            libc::SYS_rseq,
            [addr, len as u64, RSEQ_FLAG_UNREGISTER, sig as u64, 0, 0],
        )?;
    }
    Ok(())
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// Process-wide state that needs privileges or comes before threads exist.
pub fn restore_process_state(
    rt: &mut RemoteTask,
    core: &ProcessCore,
    vpid: i32,
) -> Result<(), RestoreError> {
    for (i, a) in core.sigactions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == 9 || sig == 19 || (a.handler == 0 && a.flags == 0 && a.mask == 0) {
            continue;
        }
        let mut b = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = rt.put(0, &b)?;
        rt.syscall_ok(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig, addr, 0, 8, 0, 0],
        )?;
    }
    for (which, t) in core.itimers.iter().enumerate() {
        if t.value_us == 0 && t.interval_us == 0 {
            continue;
        }
        let mut b = Vec::with_capacity(32);
        for w in [
            t.interval_us / 1_000_000,
            t.interval_us % 1_000_000,
            t.value_us / 1_000_000,
            t.value_us % 1_000_000,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = rt.put(0, &b)?;
        rt.syscall_ok(
            "setitimer",
            libc::SYS_setitimer,
            [which as u64, addr, 0, 0, 0, 0],
        )?;
    }
    let current = std::fs::read_to_string(format!("/proc/{}/limits", rt.tid())).unwrap_or_default();
    let current = cpt_limits(&current);
    for l in &core.rlimits {
        if current.get(l.resource as usize) == Some(&(l.soft, l.hard)) {
            continue;
        }
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&l.soft.to_le_bytes());
        b.extend_from_slice(&l.hard.to_le_bytes());
        let addr = rt.put(0, &b)?;
        rt.syscall_ok(
            "prlimit64",
            libc::SYS_prlimit64,
            [0, l.resource as u64, addr, 0, 0, 0],
        )
        .map_err(|e| RestoreError::Task {
            pid: vpid,
            what: format!("resource limit {} to {}/{}", l.resource, l.soft, l.hard),
            reason: format!("{e} (raising a hard limit needs CAP_SYS_RESOURCE)"),
        })?;
    }
    if core.personality != 0 {
        rt.syscall_ok(
            "personality",
            libc::SYS_personality,
            [core.personality as u64, 0, 0, 0, 0, 0],
        )?;
    }
    rt.syscall_ok("umask", libc::SYS_umask, [core.umask as u64, 0, 0, 0, 0, 0])?;
    let addr = rt.put(8192, &cstr(&core.cwd))?;
    rt.syscall_ok("chdir", libc::SYS_chdir, [addr, 0, 0, 0, 0, 0])
        .map_err(|e| RestoreError::Task {
            pid: vpid,
            what: format!("cwd {}", core.cwd),
            reason: e.to_string(),
        })?;
    if core.root != "/" {
        let addr = rt.put(8192, &cstr(&core.root))?;
        rt.syscall_ok("chroot", libc::SYS_chroot, [addr, 0, 0, 0, 0, 0])
            .map_err(|e| RestoreError::Task {
                pid: vpid,
                what: format!("root {}", core.root),
                reason: e.to_string(),
            })?;
    }
    rt.syscall_ok(
        "prctl(PR_SET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [
            libc::PR_SET_CHILD_SUBREAPER as u64,
            core.child_subreaper as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    Ok(())
}

fn cpt_limits(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut it = line.get(26..)?.split_whitespace();
            let p = |s: &str| {
                if s == "unlimited" {
                    Some(u64::MAX)
                } else {
                    s.parse().ok()
                }
            };
            Some((p(it.next()?)?, p(it.next()?)?))
        })
        .collect()
}

/// Creates the other threads with their dumped TIDs, from the main thread. Returns their
/// host TIDs in image order; each is stopped and traced (`PTRACE_O_TRACECLONE`).
pub fn create_threads(
    rt: &mut RemoteTask,
    threads: &[ThreadCore],
) -> Result<Vec<Pid>, RestoreError> {
    let mut out = Vec::new();
    for t in threads.iter().skip(1) {
        let set_tid = rt.put(256, &(t.tid as i64).to_le_bytes()[..4])?;
        let mut args = Vec::with_capacity(88);
        for w in [THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0] {
            args.extend_from_slice(&w.to_le_bytes());
        }
        let addr = rt.put(0, &args)?;
        rt.cloned.clear();
        rt.syscall_ok(
            "clone3(thread)",
            libc::SYS_clone3,
            [addr, args.len() as u64, 0, 0, 0, 0],
        )
        .map_err(|e| RestoreError::Task {
            pid: threads[0].tid,
            what: format!("thread {}", t.tid),
            reason: e.to_string(),
        })?;
        let new = *rt.cloned.last().ok_or_else(|| RestoreError::Task {
            pid: threads[0].tid,
            what: format!("thread {}", t.tid),
            reason: "clone3 reported no new thread".into(),
        })?;
        ptrace::wait_for_interrupt_stop(new)?;
        ptrace::set_sigmask(new, !0)?;
        out.push(new);
    }
    Ok(out)
}

/// Per-thread state that only the thread itself can set.
pub fn restore_thread_state(rt: &mut RemoteTask, t: &ThreadCore) -> Result<(), RestoreError> {
    let alt = &t.altstack;
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&alt.sp.to_le_bytes());
    b.extend_from_slice(
        &(if alt.flags & SS_DISABLE != 0 {
            SS_DISABLE
        } else {
            alt.flags & !1
        })
        .to_le_bytes(),
    );
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&alt.size.to_le_bytes());
    let addr = rt.put(0, &b)?;
    rt.syscall_ok("sigaltstack", libc::SYS_sigaltstack, [addr, 0, 0, 0, 0, 0])?;
    if t.robust_list != 0 || t.robust_list_len != 0 {
        rt.syscall_ok(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [t.robust_list, t.robust_list_len, 0, 0, 0, 0],
        )?;
    }
    if let Some(r) = t.rseq {
        rt.syscall_ok(
            "rseq",
            libc::SYS_rseq,
            [r.address, r.length as u64, 0, r.signature as u64, 0, 0],
        )?;
    }
    rt.syscall_ok(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [t.clear_tid_address, 0, 0, 0, 0, 0],
    )?;
    let addr = rt.put(0, &cstr(&t.comm))?;
    rt.syscall_ok(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Queues the dumped pending signals again (from the main thread: the kernel lets a task
/// queue any siginfo to itself).
pub fn requeue_signals(
    rt: &mut RemoteTask,
    core: &ProcessCore,
    tgid: i32,
) -> Result<(), RestoreError> {
    for s in &core.shared_pending {
        let addr = rt.put(0, &s.raw)?;
        rt.syscall_ok(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            [tgid as u64, s.signo as u64, addr, 0, 0, 0],
        )?;
    }
    for t in &core.threads {
        for s in &t.pending {
            let addr = rt.put(0, &s.raw)?;
            rt.syscall_ok(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                [tgid as u64, t.tid as u64, s.signo as u64, addr, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// Credentials of one thread, when they differ from the restorer's (root with every capability).
pub fn restore_creds(rt: &mut RemoteTask, c: &Creds) -> Result<(), RestoreError> {
    let me = std::fs::read_to_string(format!("/proc/{}/status", rt.tid())).unwrap_or_default();
    let field = |k: &str| {
        me.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap_or(0);
    let nums = |k: &str| {
        field(k)
            .split_whitespace()
            .filter_map(|x| x.parse::<u32>().ok())
            .collect::<Vec<_>>()
    };
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    if hex("CapBnd:") != c.cap_bounding {
        for cap in 0..=last_cap {
            if c.cap_bounding & (1 << cap) == 0 {
                rt.syscall_ok(
                    "prctl(PR_CAPBSET_DROP)",
                    libc::SYS_prctl,
                    [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
                )?;
            }
        }
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if nums("Groups:") != c.groups {
        let addr = rt.put(4096, &groups)?;
        rt.syscall_ok(
            "setgroups",
            libc::SYS_setgroups,
            [c.groups.len() as u64, addr, 0, 0, 0, 0],
        )?;
    }
    let ids_changed = nums("Uid:") != c.uids || nums("Gid:") != c.gids;
    if ids_changed {
        rt.syscall_ok(
            "setresgid",
            libc::SYS_setresgid,
            [
                c.gids[0] as u64,
                c.gids[1] as u64,
                c.gids[2] as u64,
                0,
                0,
                0,
            ],
        )?;
        rt.syscall_ok(
            "setfsgid",
            libc::SYS_setfsgid,
            [c.gids[3] as u64, 0, 0, 0, 0, 0],
        )?;
        // Keep capabilities across the uid change; they are set exactly right after.
        rt.syscall_ok(
            "prctl(PR_SET_KEEPCAPS)",
            libc::SYS_prctl,
            [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
        )?;
        rt.syscall_ok(
            "setresuid",
            libc::SYS_setresuid,
            [
                c.uids[0] as u64,
                c.uids[1] as u64,
                c.uids[2] as u64,
                0,
                0,
                0,
            ],
        )?;
        rt.syscall_ok(
            "setfsuid",
            libc::SYS_setfsuid,
            [c.uids[3] as u64, 0, 0, 0, 0, 0],
        )?;
    }
    if ids_changed
        || hex("CapEff:") != c.cap_effective
        || hex("CapPrm:") != c.cap_permitted
        || hex("CapInh:") != c.cap_inheritable
    {
        // struct __user_cap_header_struct { version = _LINUX_CAPABILITY_VERSION_3, pid = 0 }
        // followed by two __user_cap_data_struct { effective, permitted, inheritable } (low, high).
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for half in [0, 32] {
            for v in [c.cap_effective, c.cap_permitted, c.cap_inheritable] {
                b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
            }
        }
        let hdr = rt.put(0, &b)?;
        rt.syscall_ok("capset", libc::SYS_capset, [hdr, hdr + 8, 0, 0, 0, 0])?;
    }
    for cap in 0..=last_cap {
        if c.cap_ambient & (1 << cap) != 0 {
            rt.syscall_ok(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
            )?;
        }
    }
    let cur_bits = rt.syscall_ok(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    )?;
    if cur_bits != c.securebits as u64 {
        rt.syscall_ok(
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [
                libc::PR_SET_SECUREBITS as u64,
                c.securebits as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// What a credential change resets, so set after it: pdeath signal, dumpable, no_new_privs.
pub fn restore_after_creds(rt: &mut RemoteTask, core: &ProcessCore) -> Result<(), RestoreError> {
    rt.syscall_ok(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        [
            libc::PR_SET_PDEATHSIG as u64,
            core.pdeath_signal as u64,
            0,
            0,
            0,
            0,
        ],
    )?;
    if core.dumpable <= 1 {
        rt.syscall_ok(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [
                libc::PR_SET_DUMPABLE as u64,
                core.dumpable as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    if core.no_new_privs {
        rt.syscall_ok(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Registers, xsave and blocked mask: the last thing before release.
pub fn set_final_regs(tid: Pid, t: &ThreadCore) -> Result<(), RestoreError> {
    let base = ptrace::get_regs(tid)?;
    ptrace::set_regs(tid, &user_regs(&t.regs, &base))?;
    ptrace::set_xstate(tid, &t.xsave)?;
    Ok(())
}
