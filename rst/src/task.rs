//! Per-process and per-thread state, restored by remote syscalls in the seized task, in an
//! order that respects what each step needs:
//! signal dispositions, timers, limits, personality, umask, cwd/root (the task is still root);
//! threads created with their TIDs (`clone3` + `set_tid` needs CAP_SYS_ADMIN); per-thread
//! sigaltstack, robust list, rseq, clear_child_tid, name; pending signals; credentials per
//! thread (dropping privileges last); then what a credential change resets (pdeath signal,
//! dumpable) and no_new_privs; finally registers, xsave and signal masks.

use images_format::core::{Creds, ProcessCore, Regs, ThreadCore};
use sys::ptrace::{self, UserRegs};
use sys::remote::{Call, RemoteTask};

use crate::arena::Arena;
use sys::Pid;

use crate::RestoreError;

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

/// Process-wide state that needs privileges or comes before threads exist. One batch.
pub fn restore_process_state(
    rt: &mut RemoteTask,
    core: &ProcessCore,
    vpid: i32,
) -> Result<(), RestoreError> {
    let mut a = Arena::new();
    let mut calls = Vec::new();
    for (i, act) in core.sigactions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == 9 || sig == 19 || (act.handler == 0 && act.flags == 0 && act.mask == 0) {
            continue;
        }
        let addr = a.words(rt, &[act.handler, act.flags, act.restorer, act.mask])?;
        calls.push(Call::new(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig, addr, 0, 8],
        ));
    }
    for (which, t) in core.itimers.iter().enumerate() {
        if t.value_us == 0 && t.interval_us == 0 {
            continue;
        }
        // An ITIMER_REAL that expired reads value 0 until its SIGALRM (dumped as pending) is
        // dequeued, when the kernel re-arms it; setitimer() with value 0 would disarm it and
        // lose the interval. Arm it to expire at once instead: the signal merges with the
        // requeued one and the timer is re-armed at dequeue, as in the dumped task.
        let value_us = if which == 0 && t.value_us == 0 {
            1
        } else {
            t.value_us
        };
        let addr = a.words(
            rt,
            &[
                t.interval_us / 1_000_000,
                t.interval_us % 1_000_000,
                value_us / 1_000_000,
                value_us % 1_000_000,
            ],
        )?;
        calls.push(Call::new(
            "setitimer",
            libc::SYS_setitimer,
            &[which as u64, addr, 0],
        ));
    }
    let current = std::fs::read_to_string(format!("/proc/{}/limits", rt.tid())).unwrap_or_default();
    let current = cpt_limits(&current);
    let mut limit_calls = Vec::new();
    for l in &core.rlimits {
        if current.get(l.resource as usize) == Some(&(l.soft, l.hard)) {
            continue;
        }
        let addr = a.words(rt, &[l.soft, l.hard])?;
        limit_calls.push((calls.len(), *l));
        calls.push(Call::new(
            "prlimit64",
            libc::SYS_prlimit64,
            &[0, l.resource as u64, addr, 0],
        ));
    }
    if core.personality != 0 {
        calls.push(Call::new(
            "personality",
            libc::SYS_personality,
            &[core.personality as u64],
        ));
    }
    calls.push(Call::new("umask", libc::SYS_umask, &[core.umask as u64]));
    let cwd = a.cstr(rt, &core.cwd)?;
    let chdir_at = calls.len();
    calls.push(Call::new("chdir", libc::SYS_chdir, &[cwd]));
    if core.root != "/" {
        let root = a.cstr(rt, &core.root)?;
        calls.push(Call::new("chroot", libc::SYS_chroot, &[root]));
    }
    calls.push(Call::new(
        "prctl(PR_SET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_CHILD_SUBREAPER as u64,
            core.child_subreaper as u64,
        ],
    ));
    let results = rt.batch_raw(&calls)?;
    for (i, l) in limit_calls {
        if results[i] < 0 {
            return Err(RestoreError::Task {
                pid: vpid,
                what: format!("resource limit {} to {}/{}", l.resource, l.soft, l.hard),
                reason: format!(
                    "{} (raising a hard limit needs CAP_SYS_RESOURCE)",
                    nix::errno::Errno::from_raw(-results[i] as i32).desc()
                ),
            });
        }
    }
    if results[chdir_at] < 0 {
        return Err(RestoreError::Task {
            pid: vpid,
            what: format!("working directory {}", core.cwd),
            reason: nix::errno::Errno::from_raw(-results[chdir_at] as i32)
                .desc()
                .into(),
        });
    }
    check_all(&calls, &results, vpid)
}

/// Turns the first failed call of a batch into an error naming it. `umask` and
/// `personality` return the previous value, never an error.
fn check_all(calls: &[Call], results: &[i64], pid: i32) -> Result<(), RestoreError> {
    for (c, &r) in calls.iter().zip(results) {
        if (-4095..0).contains(&r) && c.name != "umask" && c.name != "personality" {
            return Err(RestoreError::Task {
                pid,
                what: c.name.to_string(),
                reason: nix::errno::Errno::from_raw(-r as i32).desc().into(),
            });
        }
    }
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

/// Per-thread state that only the thread itself can set. One batch.
pub fn restore_thread_state(rt: &mut RemoteTask, t: &ThreadCore) -> Result<(), RestoreError> {
    let mut a = Arena::new();
    let alt = &t.altstack;
    let flags = if alt.flags & SS_DISABLE != 0 {
        SS_DISABLE
    } else {
        alt.flags & !1
    };
    let ss = a.words(rt, &[alt.sp, flags as u32 as u64, alt.size])?;
    let mut calls = vec![Call::new("sigaltstack", libc::SYS_sigaltstack, &[ss, 0])];
    if t.robust_list != 0 || t.robust_list_len != 0 {
        calls.push(Call::new(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[t.robust_list, t.robust_list_len],
        ));
    }
    if let Some(r) = t.rseq {
        calls.push(Call::new(
            "rseq",
            libc::SYS_rseq,
            &[r.address, r.length as u64, 0, r.signature as u64],
        ));
    }
    calls.push(Call::new(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[t.clear_tid_address],
    ));
    let name = a.cstr(rt, &t.comm)?;
    calls.push(Call::new(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, name],
    ));
    let results = rt.batch_raw(&calls)?;
    check_all(&calls, &results, t.tid)
}

/// Queues the dumped shared pending signals again, from the main thread (the kernel lets a
/// task queue any siginfo to its own thread group). One batch.
pub fn requeue_signals(
    rt: &mut RemoteTask,
    core: &ProcessCore,
    tgid: i32,
) -> Result<(), RestoreError> {
    let mut a = Arena::new();
    let mut calls = Vec::new();
    for s in &core.shared_pending {
        let addr = a.put(rt, &s.raw)?;
        calls.push(Call::new(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            &[tgid as u64, s.signo as u64, addr],
        ));
    }
    let results = rt.batch_raw(&calls)?;
    check_all(&calls, &results, tgid)
}

/// Queues one thread's private pending signals again, from that thread itself:
/// rt_tgsigqueueinfo() refuses a siginfo with si_code >= 0 (kill, kernel) or SI_TKILL (tgkill)
/// with EPERM unless the target is the calling thread. One batch.
pub fn requeue_thread_signals(
    rt: &mut RemoteTask,
    t: &ThreadCore,
    tgid: i32,
) -> Result<(), RestoreError> {
    let mut a = Arena::new();
    let mut calls = Vec::new();
    for s in &t.pending {
        let addr = a.put(rt, &s.raw)?;
        calls.push(Call::new(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[tgid as u64, t.tid as u64, s.signo as u64, addr],
        ));
    }
    let results = rt.batch_raw(&calls)?;
    check_all(&calls, &results, t.tid)
}

/// Credentials of one thread, when they differ from the restorer's (root with every
/// capability). One batch, in an order where each step still has the privilege it needs:
/// bounding set, groups, gids, keep-caps + uids, capabilities, ambient set, securebits; then
/// (main thread, `after`) what a credential change resets (pdeath signal, dumpable) and
/// no_new_privs.
pub fn restore_creds(
    rt: &mut RemoteTask,
    c: &Creds,
    after: Option<&ProcessCore>,
    no_new_privs: bool,
) -> Result<(), RestoreError> {
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
    let prctl = |name, args: &[u64]| Call::new(name, libc::SYS_prctl, args);
    let mut a = Arena::new();
    let mut calls = Vec::new();
    if hex("CapBnd:") != c.cap_bounding {
        for cap in 0..=last_cap {
            if c.cap_bounding & (1 << cap) == 0 {
                calls.push(prctl(
                    "prctl(PR_CAPBSET_DROP)",
                    &[libc::PR_CAPBSET_DROP as u64, cap],
                ));
            }
        }
    }
    if nums("Groups:") != c.groups {
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let addr = if groups.is_empty() {
            0
        } else {
            a.put(rt, &groups)?
        };
        calls.push(Call::new(
            "setgroups",
            libc::SYS_setgroups,
            &[c.groups.len() as u64, addr],
        ));
    }
    let ids_changed = nums("Uid:") != c.uids || nums("Gid:") != c.gids;
    // PR_SET_SECUREBITS needs CAP_SETPCAP in the effective set, and setfsuid() to an id that is
    // none of the new real/effective/saved uids needs CAP_SETUID: both are gone once a uid
    // change has cleared the effective set (the dumped set may hold neither). So the uid change
    // runs with SECBIT_NO_SETUID_FIXUP (the effective set stays whole), the inheritable set and
    // the ambient set are raised while everything is still permitted, the dumped securebits are
    // set while CAP_SETPCAP is still effective, and capset() reduces the sets last.
    const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
    const SECBIT_KEEP_CAPS: u64 = 1 << 4;
    if ids_changed {
        let (g, u) = (c.gids.map(u64::from), c.uids.map(u64::from));
        calls.push(prctl(
            "prctl(PR_SET_SECUREBITS)",
            &[
                libc::PR_SET_SECUREBITS as u64,
                SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP,
            ],
        ));
        calls.push(Call::new(
            "setresgid",
            libc::SYS_setresgid,
            &[g[0], g[1], g[2]],
        ));
        calls.push(Call::new("setfsgid", libc::SYS_setfsgid, &[g[3]]));
        calls.push(Call::new(
            "setresuid",
            libc::SYS_setresuid,
            &[u[0], u[1], u[2]],
        ));
        calls.push(Call::new("setfsuid", libc::SYS_setfsuid, &[u[3]]));
    }
    // __user_cap_header_struct { _LINUX_CAPABILITY_VERSION_3, pid 0 }, then two
    // __user_cap_data_struct { effective, permitted, inheritable } (low 32 bits, high 32 bits).
    let mut capset = |rt: &mut RemoteTask, eff: u64, prm: u64, inh: u64| {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for half in [0, 32] {
            for v in [eff, prm, inh] {
                b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
            }
        }
        let hdr = a.put(rt, &b)?;
        Ok::<_, RestoreError>(Call::new("capset", libc::SYS_capset, &[hdr, hdr + 8]))
    };
    let caps_change = ids_changed
        || hex("CapEff:") != c.cap_effective
        || hex("CapPrm:") != c.cap_permitted
        || hex("CapInh:") != c.cap_inheritable;
    if c.cap_ambient != 0 && hex("CapInh:") != c.cap_inheritable {
        // PR_CAP_AMBIENT_RAISE needs the capability both permitted and inheritable.
        calls.push(capset(
            rt,
            hex("CapEff:"),
            hex("CapPrm:"),
            c.cap_inheritable,
        )?);
    }
    for cap in 0..=last_cap {
        if c.cap_ambient & (1 << cap) != 0 {
            calls.push(prctl(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                ],
            ));
        }
    }
    if ids_changed || c.securebits != 0 {
        calls.push(prctl(
            "prctl(PR_SET_SECUREBITS)",
            &[libc::PR_SET_SECUREBITS as u64, c.securebits as u64],
        ));
    }
    if caps_change {
        calls.push(capset(
            rt,
            c.cap_effective,
            c.cap_permitted,
            c.cap_inheritable,
        )?);
    }
    if no_new_privs {
        // Per thread: every thread of the process gets it.
        calls.push(prctl(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        ));
    }
    if let Some(core) = after {
        calls.push(prctl(
            "prctl(PR_SET_PDEATHSIG)",
            &[libc::PR_SET_PDEATHSIG as u64, core.pdeath_signal as u64],
        ));
        if core.dumpable <= 1 {
            calls.push(prctl(
                "prctl(PR_SET_DUMPABLE)",
                &[libc::PR_SET_DUMPABLE as u64, core.dumpable as u64],
            ));
        }
    }
    let results = rt.batch_raw(&calls)?;
    // setfsuid/setfsgid return the previous id, never an error code.
    let (calls, results): (Vec<Call>, Vec<i64>) = calls
        .into_iter()
        .zip(results)
        .filter(|(c, _)| c.name != "setfsuid" && c.name != "setfsgid")
        .unzip();
    check_all(&calls, &results, rt.tid().as_raw())
}

/// Registers, xsave and blocked mask: the last thing before release.
pub fn set_final_regs(tid: Pid, t: &ThreadCore) -> Result<(), RestoreError> {
    let base = ptrace::get_regs(tid)?;
    ptrace::set_regs(tid, &user_regs(&t.regs, &base))?;
    ptrace::set_xstate(tid, &t.xsave)?;
    Ok(())
}
