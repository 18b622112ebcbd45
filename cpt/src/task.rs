//! Per-process and per-thread state: registers (with syscall-restart fix-ups), xsave, signals,
//! credentials, limits, timers, and the prctl-visible bits.
//!
//! What only the task itself can read (sigactions, itimers, sigaltstack, ...) is read by short
//! syscalls injected into it ([`sys::remote::RemoteTask`]); everything else comes from `/proc`
//! and ptrace.

use images_format::core::{
    AltStack, CgroupMembership, Creds, ITimer, ProcessCore, Regs, Rlimit, Rseq, SigAction, SigInfo,
    ThreadCore,
};
use sys::ptrace::{self, UserRegs};
use sys::remote::{Call, RemoteTask, SCRATCH_DATA_OFFSET};

use crate::proc::{parse_limits, parse_status, status_hex, status_numbers, ProcDir};
use crate::seize::SeizedProcess;
use crate::DumpError;

const SCRATCH_LEN: u64 = 16 * 4096;

pub fn regs_from(r: &UserRegs) -> Regs {
    Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

fn io(
    op: &'static str,
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.into();
    move |source| DumpError::Io { op, path, source }
}

/// What the remote session of one process found.
pub struct RemoteFacts {
    pub brk: u64,
    /// POSIX timers, a `SIGEV_THREAD_ID` target named by its TID in the dumper's view.
    pub posix_timers: Vec<images_format::events::PosixTimer>,
}

/// Dumps the core state of a live process: remote part first (one injected session on the main
/// thread, then one per other thread, sharing the scratch page), then /proc and ptrace.
pub fn dump_process(p: &SeizedProcess) -> Result<(ProcessCore, RemoteFacts), DumpError> {
    let pid = p.pid.as_raw();
    let dir = ProcDir::pid(pid);
    let status = parse_status(
        &dir.read("status")
            .map_err(io("read", dir.0.join("status")))?,
    );

    let mut remote = RemoteTask::at_rip(p.pid)?;
    let result = (|| {
        remote.map_scratch(SCRATCH_LEN)?;
        // One batch: dispositions of the signals that are caught or ignored (and SIGCHLD, whose
        // flags matter even at SIG_DFL), brk, itimers, prctl values. Each call has its own
        // output slot in the scratch data area.
        let mut calls = Vec::new();
        let mut sig_slots = Vec::new();
        let mut slot = 0u64;
        let mut out = |len: u64| {
            let off = slot;
            slot += len;
            off
        };
        let base = remote
            .scratch()
            .map(|(a, _)| a + SCRATCH_DATA_OFFSET)
            .unwrap_or(0);
        for sig in 1..=64u64 {
            // Every signal: a SIG_DFL disposition has flags, mask and restorer too (glibc's
            // sigaction() sets SA_RESTORER; sigaction(NULL, &old) reports flags and mask).
            if sig == 9 || sig == 19 {
                continue;
            }
            let off = out(32);
            sig_slots.push((sig, off));
            calls.push(Call::new(
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                &[sig, 0, base + off, 8],
            ));
        }
        calls.push(Call::new("brk", libc::SYS_brk, &[0]));
        let brk_at = calls.len() - 1;
        let mut timer_slots = Vec::new();
        for which in 0..3u64 {
            let off = out(32);
            timer_slots.push(off);
            calls.push(Call::new(
                "getitimer",
                libc::SYS_getitimer,
                &[which, base + off],
            ));
        }
        let prctl = |name, op: i32, arg: u64| Call::new(name, libc::SYS_prctl, &[op as u64, arg]);
        calls.push(prctl("prctl(PR_GET_DUMPABLE)", libc::PR_GET_DUMPABLE, 0));
        let dumpable_at = calls.len() - 1;
        calls.push(prctl(
            "prctl(PR_GET_SECUREBITS)",
            libc::PR_GET_SECUREBITS,
            0,
        ));
        let securebits_at = calls.len() - 1;
        let subreaper_off = out(8);
        calls.push(prctl(
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER,
            base + subreaper_off,
        ));
        let pdeath_off = out(8);
        calls.push(prctl(
            "prctl(PR_GET_PDEATHSIG)",
            libc::PR_GET_PDEATHSIG,
            base + pdeath_off,
        ));
        remote.put(0, &vec![0u8; slot as usize])?;
        let results = remote.batch(&calls)?;
        let data = remote.get(0, slot as usize)?;
        let word = |off: u64, i: usize| {
            let at = off as usize + i * 8;
            u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]))
        };
        let mut sigactions = vec![SigAction::default(); 64];
        for (sig, off) in sig_slots {
            sigactions[(sig - 1) as usize] = SigAction {
                handler: word(off, 0),
                flags: word(off, 1),
                restorer: word(off, 2),
                mask: word(off, 3),
            };
        }
        let brk = results[brk_at] as u64;
        let itimers = timer_slots
            .iter()
            .map(|&off| ITimer {
                interval_us: word(off, 0) * 1_000_000 + word(off, 1),
                value_us: word(off, 2) * 1_000_000 + word(off, 3),
            })
            .collect();
        let dumpable = results[dumpable_at] as u32;
        let securebits = results[securebits_at] as u32;
        let child_subreaper = word(subreaper_off, 0) as u32 != 0;
        let pdeath_signal = word(pdeath_off, 0) as u32;
        let posix_timers = crate::timers::dump_posix_timers(&mut remote, pid)?;

        let mut threads = Vec::new();
        for (i, t) in p.threads.iter().enumerate() {
            let facts = if i == 0 {
                thread_remote_facts(&mut remote)?
            } else {
                let mut sib = remote.sibling(t.tid)?;
                let r = thread_remote_facts(&mut sib);
                sib.finish()?;
                r?
            };
            threads.push((t, facts));
        }
        Ok::<_, DumpError>((
            sigactions,
            brk,
            itimers,
            dumpable,
            securebits,
            child_subreaper,
            pdeath_signal,
            threads,
            posix_timers,
        ))
    })();
    let finished = remote.finish();
    let (
        sigactions,
        brk,
        itimers,
        dumpable,
        securebits,
        child_subreaper,
        pdeath_signal,
        thread_facts,
        posix_timers,
    ) = result?;
    finished?;

    let mut threads = Vec::new();
    for (t, (altstack, clear_tid_address)) in thread_facts {
        let tid = t.tid;
        let tdir = ProcDir::task(pid, tid.as_raw());
        let regs = ptrace::get_regs(tid)?;
        let (rseq_addr, rseq_len, rseq_sig) = ptrace::get_rseq(tid)?;
        let (robust, robust_len) = sys::syscalls::get_robust_list(tid)?;
        threads.push(ThreadCore {
            tid: tid.as_raw(),
            comm: tdir
                .read("comm")
                .map_err(io("read", tdir.0.join("comm")))?
                .trim_end_matches('\n')
                .to_string(),
            regs: // Registers a restored thread resumes with so that the syscall it was stopped in goes on
            // as if nothing happened (the same fix-up as the remote syscalls' safety net).
            regs_from(&sys::sigframe::resume_regs(&regs)),
            xsave: ptrace::get_xstate(tid)?,
            blocked: t.orig_sigmask,
            pending: siginfos(ptrace::peek_siginfo(tid, false)?),
            altstack,
            robust_list: robust,
            robust_list_len: robust_len,
            rseq: (rseq_addr != 0).then_some(Rseq {
                address: rseq_addr,
                length: rseq_len,
                signature: rseq_sig,
            }),
            clear_tid_address,
        });
    }

    let uids = status_numbers(&status, "Uid");
    let gids = status_numbers(&status, "Gid");
    if uids.len() != 4 || gids.len() != 4 {
        return Err(DumpError::Task {
            pid,
            what: "credentials".into(),
            reason: "malformed Uid/Gid in /proc/PID/status".into(),
        });
    }
    let creds = Creds {
        uids: [
            uids[0] as u32,
            uids[1] as u32,
            uids[2] as u32,
            uids[3] as u32,
        ],
        gids: [
            gids[0] as u32,
            gids[1] as u32,
            gids[2] as u32,
            gids[3] as u32,
        ],
        groups: status_numbers(&status, "Groups")
            .into_iter()
            .map(|g| g as u32)
            .collect(),
        cap_inheritable: status_hex(&status, "CapInh").unwrap_or(0),
        cap_permitted: status_hex(&status, "CapPrm").unwrap_or(0),
        cap_effective: status_hex(&status, "CapEff").unwrap_or(0),
        cap_bounding: status_hex(&status, "CapBnd").unwrap_or(0),
        cap_ambient: status_hex(&status, "CapAmb").unwrap_or(0),
        securebits,
    };
    // prlimit() on a task of another uid fails without CAP_SYS_RESOURCE: /proc is the source.
    let limits = parse_limits(
        &dir.read("limits")
            .map_err(io("read", dir.0.join("limits")))?,
    )
    .ok_or_else(|| DumpError::Task {
        pid,
        what: "rlimits".into(),
        reason: "cannot parse /proc/PID/limits".into(),
    })?;
    let rlimits = limits
        .into_iter()
        .enumerate()
        .map(|(i, (soft, hard))| Rlimit {
            resource: i as u32,
            soft,
            hard,
        })
        .collect();
    let personality = u32::from_str_radix(
        dir.read("personality")
            .map_err(io("read", dir.0.join("personality")))?
            .trim(),
        16,
    )
    .unwrap_or(0);
    let umask = status
        .get("Umask")
        .and_then(|u| u32::from_str_radix(u, 8).ok())
        .unwrap_or(0o022);
    let core = ProcessCore {
        pid,
        sigactions,
        shared_pending: siginfos(ptrace::peek_siginfo(p.pid, true)?),
        itimers,
        rlimits,
        creds,
        personality,
        umask,
        no_new_privs: status.get("NoNewPrivs").map(|v| v == "1").unwrap_or(false),
        dumpable,
        child_subreaper,
        pdeath_signal,
        cwd: dir
            .readlink("cwd")
            .map_err(io("readlink", dir.0.join("cwd")))?,
        root: dir
            .readlink("root")
            .map_err(io("readlink", dir.0.join("root")))?,
        cgroups: parse_cgroups(
            &dir.read("cgroup")
                .map_err(io("read", dir.0.join("cgroup")))?,
        ),
        threads,
    };
    Ok((core, RemoteFacts { brk, posix_timers }))
}

/// sigaltstack and clear_child_tid, readable only from inside the thread. One batch.
fn thread_remote_facts(remote: &mut RemoteTask) -> Result<(AltStack, u64), DumpError> {
    let base = remote
        .scratch()
        .map(|(a, _)| a + SCRATCH_DATA_OFFSET)
        .unwrap_or(0);
    remote.put(0, &[0u8; 32])?;
    remote.batch(&[
        Call::new("sigaltstack", libc::SYS_sigaltstack, &[0, base]),
        Call::new(
            "prctl(PR_GET_TID_ADDRESS)",
            libc::SYS_prctl,
            &[libc::PR_GET_TID_ADDRESS as u64, base + 24],
        ),
    ])?;
    let b = remote.get(0, 32)?;
    let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let altstack = AltStack {
        sp: w(0),
        flags: i32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4])),
        size: w(16),
    };
    Ok((altstack, w(24)))
}

fn siginfos(raw: Vec<[u8; 128]>) -> Vec<SigInfo> {
    raw.into_iter()
        .map(|r| SigInfo {
            signo: i32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            raw: r.to_vec(),
        })
        .collect()
}

/// The lines `ID:CONTROLLERS:PATH` of `/proc/PID/cgroup`.
fn parse_cgroups(text: &str) -> Vec<CgroupMembership> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_id, controllers, path) = (it.next()?, it.next()?, it.next()?);
            Some(CgroupMembership {
                controllers: controllers.to_string(),
                path: path.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_lines() {
        let text = "12:freezer:/vzcpt-test\n1:name=systemd:/user.slice\n0::/x/y\n";
        let got = parse_cgroups(text);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].controllers, "freezer");
        assert_eq!(got[0].path, "/vzcpt-test");
        assert_eq!(got[1].controllers, "name=systemd");
        assert_eq!(got[2].controllers, "");
        assert_eq!(got[2].path, "/x/y");
    }
}
