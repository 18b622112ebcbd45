//! Syscalls executed inside a stopped tracee, the way CRIU's compel does it but driven by
//! `PTRACE_SYSCALL` stops instead of an `int3` trap.
//!
//! The tracee's registers are pointed at a `syscall` instruction (first one patched over the
//! current instruction pointer, then one on a scratch page mapped in the tracee), the task is
//! resumed to its syscall-entry stop and then to its syscall-exit stop, and `rax` is read back.
//! No signal is raised, so the tracee's signal dispositions are never touched. `orig_rax` is set
//! to -1 so the kernel's syscall-restart logic does not rewrite the injected registers.
//!
//! A dumping session ([`RemoteTask::at_rip`]) is safe to abandon: should the dumper die (SIGKILL)
//! at any moment, the kernel lets the task go and it returns to exactly where it was, with its
//! own registers, signal mask and FPU state (see [`crate::sigframe`]). Every injected state is
//! one that, run without a tracer, finishes the syscall in flight and then executes
//! `rt_sigreturn` through a frame written below the task's stack red zone:
//! - single syscalls go through the task's own signal restorer `T: mov rax, 15; syscall`:
//!   the task is resumed at `T` (it would `rt_sigreturn` at once); at the syscall-entry stop
//!   the tracer turns the call into the wanted one and points `rip` back at `T`, so that after
//!   it the task would `rt_sigreturn`. No text is patched, not even for the first call (the
//!   scratch `mmap`) or the last (its `munmap`);
//! - a batch (code on the scratch page) ends with `tgkill` of a signal whose disposition is
//!   to ignore it (SIGURG, SIGWINCH or SIGCHLD, whichever the task neither catches nor
//!   blocks), unblocked just before: a tracer sees it as a signal-delivery stop, while an
//!   untraced task drops it; then `rt_sigreturn`.
//!
//! The session blocks every signal of the task itself (`PTRACE_SETSIGMASK`) once its
//! registers point at the safety net, so a signal arriving meanwhile stays pending instead of
//! running a handler mid-injection, and gives the task its own mask back at the end.
//! What a killed dumper can leave: the effect of the injected call in flight (a scratch
//! mapping left in the task, a descriptor it opened), and the frame's bytes in the unused
//! stack below the red zone. Without a signal restorer in the task (no libc-like text), or
//! without room for the frame on its stack, the session falls back to patching a `syscall`
//! over `rip` (restored at the end), which a killed dumper leaves behind.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

use crate::ptrace::{self, UserRegs};
use crate::sigframe::{self, SIGRETURN_INSN};
use crate::{Pid, Result, SysError};

const ALL_SIGNALS: u64 = !0;
/// Signals whose default action is to ignore them, to end a batch (see the module's doc).
const BATCH_END_SIGNALS: [i32; 3] = [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD];

/// The safety net of a dumping session: the task's restorer, the frame it returns through.
struct Net {
    /// `mov rax, 15; syscall` in the task's text.
    trampoline: u64,
    /// The `rt_sigframe` below the task's red zone (`rsp = frame + 8` while injecting).
    frame: u64,
    /// The stack bytes the frame covers, put back at the end.
    backup: Vec<u8>,
    /// A signal ending batches that an untraced task ignores, if the task has one.
    batch_signal: Option<i32>,
}

impl Net {
    /// Writes the frame and parks the task on its restorer (it would `rt_sigreturn` at once).
    /// `None`: no restorer in the task, or no room for the frame.
    fn prepare(
        tid: Pid,
        mem: &File,
        saved: &UserRegs,
        mask: u64,
        trampoline: Option<u64>,
    ) -> Result<Option<Net>> {
        if shadow_stack(tid) {
            // rt_sigreturn would look for a token on the shadow stack that no signal put there.
            return Ok(None);
        }
        let Some(trampoline) = trampoline.or_else(|| sigframe::find_sigreturn(tid, mem)) else {
            return Ok(None);
        };
        let xstate = ptrace::get_xstate(tid)?;
        let frame = sigframe::build(saved, mask, &xstate);
        let mut backup = vec![0u8; frame.bytes.len()];
        if mem.read_exact_at(&mut backup, frame.addr).is_err()
            || mem.write_all_at(&frame.bytes, frame.addr).is_err()
        {
            return Ok(None);
        }
        let net = Net {
            trampoline,
            frame: frame.addr,
            backup,
            batch_signal: batch_signal(tid, mask),
        };
        ptrace::set_regs(tid, &net.parked(saved))?;
        Ok(Some(net))
    }

    /// Registers that `rt_sigreturn` at once, run freely.
    fn parked(&self, saved: &UserRegs) -> UserRegs {
        let mut r = *saved;
        r.rip = self.trampoline;
        r.rsp = self.frame + 8;
        r.rax = libc::SYS_rt_sigreturn as u64;
        r.orig_rax = u64::MAX;
        r
    }
}

/// Whether thread `tid` runs with a user shadow stack (x86 CET).
fn shadow_stack(tid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("x86_Thread_features:"))
                .map(|v| v.contains("shstk"))
        })
        .unwrap_or(false)
}

/// The first of [`BATCH_END_SIGNALS`] that thread `tid` neither catches nor blocks (`mask`).
fn batch_signal(tid: Pid, mask: u64) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
    BATCH_END_SIGNALS
        .into_iter()
        .find(|&sig| (caught | mask) & (1u64 << (sig - 1)) == 0)
}

/// Two bytes of x86-64 `syscall`.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
/// Offset in the scratch page where data buffers for injected syscalls begin.
pub const SCRATCH_DATA_OFFSET: u64 = 64;

/// A tracee in which syscalls are injected. Create with [`RemoteTask::at_rip`] (dumping: patches
/// the current instruction) or [`RemoteTask::with_code`] (restoring: a page prepared by the task
/// itself). Always end with [`RemoteTask::finish`] or [`RemoteTask::finish_with`].
pub struct RemoteTask {
    tid: Pid,
    saved: UserRegs,
    code: u64,
    mem: File,
    patched: Option<(u64, [u8; 2])>,
    scratch: Option<(u64, u64)>,
    /// Whether `finish` unmaps the scratch area (false for siblings that borrow it).
    owns_scratch: bool,
    /// The safety net of a dumping session, if the task allows one.
    net: Option<Net>,
    /// The task's own blocked mask, put back at the end (dumping sessions).
    own_mask: Option<u64>,
    done: bool,
    /// Syscalls injected so far (each costs two ptrace stops).
    pub injected: u64,
    /// TIDs created by injected clone calls, in order.
    pub cloned: Vec<Pid>,
}

impl RemoteTask {
    /// Prepares a stopped tracee for injection (dumping): writes its safety-net frame, parks
    /// it on its signal restorer, then blocks all its signals (see the module's doc). Without
    /// a restorer, patches a `syscall` instruction over its current `rip` instead (through
    /// `/proc/TID/mem`, which may write read-only text; restored in `finish`). The mask found
    /// now is the one given back at the end.
    pub fn at_rip(tid: Pid) -> Result<Self> {
        Self::dumping(tid, None)
    }

    fn dumping(tid: Pid, trampoline: Option<u64>) -> Result<Self> {
        let saved = ptrace::get_regs(tid)?;
        let mem = open_mem(tid)?;
        let mask = ptrace::get_sigmask(tid)?;
        let net = Net::prepare(tid, &mem, &saved, mask, trampoline)?;
        let mut patched = None;
        if net.is_none() {
            let mut orig = [0u8; 2];
            mem.read_exact_at(&mut orig, saved.rip)
                .map_err(|e| io_err("read /proc/TID/mem at rip", tid, &e))?;
            mem.write_all_at(&SYSCALL_INSN, saved.rip)
                .map_err(|e| io_err("patch /proc/TID/mem at rip", tid, &e))?;
            patched = Some((saved.rip, orig));
        }
        let t = Self {
            tid,
            saved,
            code: saved.rip,
            mem,
            patched,
            scratch: None,
            owns_scratch: false,
            net,
            own_mask: Some(mask),
            done: false,
            injected: 0,
            cloned: Vec::new(),
        };
        // From here on Drop gives the task its registers, text and mask back.
        ptrace::set_sigmask(tid, ALL_SIGNALS)?;
        fault("remote.parked")?;
        Ok(t)
    }

    /// Whether this session has the safety net (false: `rip` was patched instead).
    pub fn is_safe_to_abandon(&self) -> bool {
        self.net.is_some()
    }

    /// A tracee that already has a `syscall` instruction at `code` (the restorer's tasks map
    /// one there themselves before stopping). `base` are the registers injected calls start from.
    pub fn with_code(tid: Pid, code: u64, base: UserRegs) -> Result<Self> {
        Ok(Self {
            tid,
            saved: base,
            code,
            mem: open_mem(tid)?,
            patched: None,
            scratch: None,
            owns_scratch: false,
            net: None,
            own_mask: None,
            done: false,
            injected: 0,
            cloned: Vec::new(),
        })
    }

    /// Another thread of the same process, injecting through this task's code and scratch
    /// page (they share the address space). Its `finish` restores only its own registers.
    pub fn sibling(&self, tid: Pid) -> Result<RemoteTask> {
        if let Some(net) = &self.net {
            // Its own frame on its own stack (without room for one, its rip is patched).
            let mut t = RemoteTask::dumping(tid, Some(net.trampoline))?;
            t.scratch = self.scratch;
            return Ok(t);
        }
        let base = ptrace::get_regs(tid)?;
        let mut t = RemoteTask::with_code(tid, self.code, base)?;
        t.scratch = self.scratch;
        Ok(t)
    }

    /// Declares a scratch area mapped by other means (the restorer's tasks map their own).
    pub fn set_scratch(&mut self, addr: u64, len: u64) {
        self.scratch = Some((addr, len));
    }

    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// Registers saved when injection started.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.saved
    }

    /// Maps an RWX scratch area (anonymous, private) in the tracee at `hint` or anywhere, puts a
    /// `syscall` instruction at its start, moves execution there and un-patches `rip`.
    /// Returns the scratch address; data buffers start at `addr + SCRATCH_DATA_OFFSET`.
    pub fn map_scratch(&mut self, len: u64) -> Result<u64> {
        let addr = self.syscall_ok(
            "mmap",
            libc::SYS_mmap,
            [
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        // `syscall; mov eax, 15; syscall` (the second for a sibling whose rip was patched).
        let mut code = SYSCALL_INSN.to_vec();
        code.extend_from_slice(&SIGRETURN_INSN);
        self.write_mem(addr, &code)?;
        self.code = addr;
        self.unpatch()?;
        self.scratch = Some((addr, len));
        self.owns_scratch = true;
        Ok(addr)
    }

    /// Address of the scratch data area, if one is mapped.
    pub fn scratch(&self) -> Option<(u64, u64)> {
        self.scratch
    }

    fn unpatch(&mut self) -> Result<()> {
        if let Some((addr, orig)) = self.patched.take() {
            self.mem
                .write_all_at(&orig, addr)
                .map_err(|e| io_err("restore patched text", self.tid, &e))?;
        }
        Ok(())
    }

    /// Executes one syscall and returns the raw `rax` (negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.injected += 1;
        if let Some(net) = &self.net {
            // Resumed at the restorer, the task enters rt_sigreturn; at that entry stop the
            // call becomes ours, and it returns to the restorer again.
            let (trampoline, rsp) = (net.trampoline, net.frame + 8);
            ptrace::set_regs(self.tid, &net.parked(&self.saved))?;
            ptrace::syscall_step(self.tid)?;
            self.expect_syscall_stop("syscall entry")?;
            let mut regs = ptrace::get_regs(self.tid)?;
            if regs.orig_rax != libc::SYS_rt_sigreturn as u64 {
                return Err(SysError::UnexpectedStop {
                    op: "syscall entry",
                    tid: self.tid.as_raw(),
                    status: format!(
                        "entered syscall {} instead of rt_sigreturn",
                        regs.orig_rax as i64
                    ),
                });
            }
            regs.orig_rax = nr as u64;
            regs.rdi = args[0];
            regs.rsi = args[1];
            regs.rdx = args[2];
            regs.r10 = args[3];
            regs.r8 = args[4];
            regs.r9 = args[5];
            regs.rip = trampoline;
            regs.rsp = rsp;
            ptrace::set_regs(self.tid, &regs)?;
            fault("remote.entry")?;
            ptrace::syscall_step(self.tid)?;
            let r = self.wait_syscall_exit()?;
            fault("remote.exit")?;
            return Ok(r);
        }
        let mut regs = self.saved;
        regs.rip = self.code;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::syscall_step(self.tid)?;
        self.expect_syscall_stop("syscall entry")?;
        ptrace::syscall_step(self.tid)?;
        self.wait_syscall_exit()
    }

    fn wait_syscall_exit(&mut self) -> Result<i64> {
        loop {
            match ptrace::wait(self.tid)? {
                WaitStatus::PtraceSyscall(_) => break,
                WaitStatus::PtraceEvent(_, _, ev)
                    if ev == libc::PTRACE_EVENT_CLONE
                        || ev == libc::PTRACE_EVENT_FORK
                        || ev == libc::PTRACE_EVENT_VFORK =>
                {
                    let child = ptrace::event_msg(self.tid)?;
                    self.cloned.push(Pid::from_raw(child as i32));
                    ptrace::syscall_step(self.tid)?;
                }
                other => return Err(self.unexpected("syscall exit", &other)),
            }
        }
        Ok(ptrace::get_regs(self.tid)?.rax as i64)
    }

    /// Executes one syscall; a negative return becomes [`SysError::RemoteSyscall`].
    pub fn syscall_ok(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(SysError::RemoteSyscall {
                name,
                tid: self.tid.as_raw(),
                errno: Errno::from_raw(-r as i32),
            });
        }
        Ok(r as u64)
    }

    fn expect_syscall_stop(&self, op: &'static str) -> Result<()> {
        match ptrace::wait(self.tid)? {
            WaitStatus::PtraceSyscall(_) => Ok(()),
            other => Err(self.unexpected(op, &other)),
        }
    }

    fn unexpected(&self, op: &'static str, st: &WaitStatus) -> SysError {
        SysError::UnexpectedStop {
            op,
            tid: self.tid.as_raw(),
            status: format!("{st:?}"),
        }
    }

    /// Writes into the tracee's memory through `/proc/TID/mem` (works on read-only pages).
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|e| io_err("write /proc/TID/mem", self.tid, &e))
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_exact_at(&mut buf, addr)
            .map_err(|e| io_err("read /proc/TID/mem", self.tid, &e))?;
        Ok(buf)
    }

    /// Writes `data` into the scratch data area at `off` and returns its address there.
    pub fn put(&self, off: u64, data: &[u8]) -> Result<u64> {
        let (base, len) = self.scratch.ok_or_else(|| SysError::Invalid {
            op: "remote put",
            reason: "no scratch area mapped".into(),
        })?;
        if SCRATCH_DATA_OFFSET + off + data.len() as u64 > len {
            return Err(SysError::Invalid {
                op: "remote put",
                reason: format!("{} bytes at {off} do not fit the scratch area", data.len()),
            });
        }
        let addr = base + SCRATCH_DATA_OFFSET + off;
        self.write_mem(addr, data)?;
        Ok(addr)
    }

    /// Reads back `len` bytes of the scratch data area at `off`.
    pub fn get(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let (base, _) = self.scratch.ok_or_else(|| SysError::Invalid {
            op: "remote get",
            reason: "no scratch area mapped".into(),
        })?;
        self.read_mem(base + SCRATCH_DATA_OFFSET + off, len)
    }

    /// Unmaps the scratch area (if this task mapped it), restores patched text and the saved
    /// registers, and brings the task back to an interrupt stop so that, once detached, the
    /// kernel restarts the syscall it was interrupted in, exactly as if never traced.
    pub fn finish(mut self) -> Result<()> {
        self.done = true;
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut first_err = None;
        if self.owns_scratch {
            if let Some((addr, len)) = self.scratch.take() {
                if let Err(e) = self.syscall_ok("munmap", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])
                {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.unpatch() {
            first_err.get_or_insert(e);
        }
        // The mask first, while the task is still parked on its safety net.
        if let Some(mask) = self.own_mask {
            if let Err(e) = ptrace::set_sigmask(self.tid, mask) {
                first_err.get_or_insert(e);
            }
        }
        let saved = self.saved;
        let r = ptrace::set_regs(self.tid, &saved);
        if let (Ok(()), Some(net)) = (&r, &self.net) {
            // Its own registers back: the frame is no longer needed.
            if let Err(e) = self.write_mem(net.frame, &net.backup) {
                first_err.get_or_insert(e);
            }
        }
        let r = r
            .and_then(|_| ptrace::reinterrupt(self.tid))
            .and_then(|_| ptrace::set_regs(self.tid, &saved));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Ends injection leaving the task with `regs` (the restorer's final registers).
    /// The caller unmaps the scratch area itself if it must go.
    pub fn finish_with(mut self, regs: &UserRegs) -> Result<()> {
        self.done = true;
        ptrace::set_regs(self.tid, regs)
    }
}

impl Drop for RemoteTask {
    /// A session abandoned by an error still gives the task back its text and registers.
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.cleanup();
        }
    }
}

/// Failure points of dumping sessions (see `crate::fault`): `remote.parked` (the task parked
/// on its safety net), `remote.entry` (a call set up at its entry stop: the first one maps the
/// scratch page), `remote.exit` (at a call's exit stop), `remote.batch` (a batch running).
fn fault(name: &'static str) -> Result<()> {
    if crate::fault::hit(name) {
        return Err(SysError::Invalid {
            op: name,
            reason: crate::fault::message(name),
        });
    }
    Ok(())
}

fn open_mem(tid: Pid) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{tid}/mem"))
        .map_err(|e| io_err("open /proc/TID/mem", tid, &e))
}

fn io_err(op: &'static str, tid: Pid, e: &std::io::Error) -> SysError {
    SysError::Ptrace {
        op,
        tid: tid.as_raw(),
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// An argument of a batched syscall: a value, or the result of an earlier call of the batch.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Imm(u64),
    Result(usize),
}

/// One syscall of a batch.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: &'static str,
    pub nr: i64,
    pub args: [Arg; 6],
}

impl Call {
    /// A call with immediate arguments (unused ones 0).
    pub fn new(name: &'static str, nr: i64, args: &[u64]) -> Self {
        let mut a = [Arg::Imm(0); 6];
        for (slot, v) in a.iter_mut().zip(args) {
            *slot = Arg::Imm(*v);
        }
        Call { name, nr, args: a }
    }

    /// Replaces argument `i` with the result of call `k` of the same batch.
    pub fn with_result(mut self, i: usize, k: usize) -> Self {
        self.args[i] = Arg::Result(k);
        self
    }
}

/// How a batch ends (see the module's doc).
#[derive(Debug, Clone, Copy)]
enum BatchEnd {
    /// `tgkill(SIGSTOP)` then `jmp $` (restorer's tasks, and dumping without a safety net).
    Stop,
    /// `rt_sigprocmask(SIG_SETMASK, [mask])` unblocking `signal`, `tgkill(signal)`, then
    /// `rt_sigreturn` (the stack pointer at the safety-net frame). `signal` SIGSTOP: a task
    /// whose ignored signals are all caught or blocked (an untraced one would stop there).
    Net { signal: i32, mask_at: u64 },
}

/// x86-64 machine code for a batch: per call, load the arguments (`mov reg, imm64`, or
/// `movabs rax, [result]` + `mov reg, rax`), `mov rax, nr`, `syscall`, `movabs [result], rax`;
/// then the end (see [`BatchEnd`]). Returns the code and the offset right after the `tgkill`,
/// where the task reports its stop.
fn batch_code(calls: &[Call], results: u64, end: BatchEnd) -> (Vec<u8>, u64) {
    // (mov reg, imm64 prefix) and (mov reg, rax) for rdi, rsi, rdx, r10, r8, r9.
    const MOV_IMM: [[u8; 2]; 6] = [
        [0x48, 0xbf],
        [0x48, 0xbe],
        [0x48, 0xba],
        [0x49, 0xba],
        [0x49, 0xb8],
        [0x49, 0xb9],
    ];
    const MOV_RAX: [[u8; 3]; 6] = [
        [0x48, 0x89, 0xc7],
        [0x48, 0x89, 0xc6],
        [0x48, 0x89, 0xc2],
        [0x49, 0x89, 0xc2],
        [0x49, 0x89, 0xc0],
        [0x49, 0x89, 0xc1],
    ];
    let mut c = Vec::with_capacity(calls.len() * 96 + 128);
    let mov_rax_imm = |c: &mut Vec<u8>, v: u64| {
        c.extend_from_slice(&[0x48, 0xb8]);
        c.extend_from_slice(&v.to_le_bytes());
    };
    for (i, call) in calls.iter().enumerate() {
        for (j, a) in call.args.iter().enumerate() {
            if let Arg::Result(k) = a {
                c.extend_from_slice(&[0x48, 0xa1]); // movabs rax, [moffs64]
                c.extend_from_slice(&(results + 8 * *k as u64).to_le_bytes());
                c.extend_from_slice(&MOV_RAX[j]);
            }
        }
        for (j, a) in call.args.iter().enumerate() {
            if let Arg::Imm(v) = a {
                c.extend_from_slice(&MOV_IMM[j]);
                c.extend_from_slice(&v.to_le_bytes());
            }
        }
        mov_rax_imm(&mut c, call.nr as u64);
        c.extend_from_slice(&SYSCALL_INSN);
        c.extend_from_slice(&[0x48, 0xa3]); // movabs [moffs64], rax
        c.extend_from_slice(&(results + 8 * i as u64).to_le_bytes());
    }
    let signal = match end {
        BatchEnd::Stop => libc::SIGSTOP,
        BatchEnd::Net { signal, mask_at } => {
            // rt_sigprocmask(SIG_SETMASK, mask_at, NULL, 8)
            c.extend_from_slice(&MOV_IMM[0]);
            c.extend_from_slice(&(libc::SIG_SETMASK as u64).to_le_bytes());
            c.extend_from_slice(&MOV_IMM[1]);
            c.extend_from_slice(&mask_at.to_le_bytes());
            c.extend_from_slice(&MOV_IMM[2]);
            c.extend_from_slice(&0u64.to_le_bytes());
            c.extend_from_slice(&MOV_IMM[3]);
            c.extend_from_slice(&8u64.to_le_bytes());
            mov_rax_imm(&mut c, libc::SYS_rt_sigprocmask as u64);
            c.extend_from_slice(&SYSCALL_INSN);
            signal
        }
    };
    mov_rax_imm(&mut c, libc::SYS_getpid as u64);
    c.extend_from_slice(&SYSCALL_INSN);
    c.extend_from_slice(&MOV_RAX[0]); // rdi = pid
    mov_rax_imm(&mut c, libc::SYS_gettid as u64);
    c.extend_from_slice(&SYSCALL_INSN);
    c.extend_from_slice(&MOV_RAX[1]); // rsi = tid
    c.extend_from_slice(&MOV_IMM[2]);
    c.extend_from_slice(&(signal as u64).to_le_bytes());
    mov_rax_imm(&mut c, libc::SYS_tgkill as u64);
    c.extend_from_slice(&SYSCALL_INSN);
    let stop_at = c.len() as u64;
    match end {
        BatchEnd::Stop => c.extend_from_slice(&[0xeb, 0xfe]), // jmp $
        BatchEnd::Net { .. } => c.extend_from_slice(&SIGRETURN_INSN),
    }
    (c, stop_at)
}

/// Where batches go inside the scratch area: code in the upper half, results at its end.
const BATCH_RESULTS: u64 = 512;

impl RemoteTask {
    /// Runs `calls` in one go: one stop instead of two per syscall. Every call runs (a failure
    /// does not stop the ones after it); returns the raw results, or the first failure as
    /// [`SysError::RemoteSyscall`] naming the call. Needs a scratch area (see [`Self::put`]);
    /// the task's signals must be blocked (SIGSTOP, which ends the batch, cannot be).
    pub fn batch(&mut self, calls: &[Call]) -> Result<Vec<i64>> {
        let results = self.batch_raw(calls)?;
        for (call, &r) in calls.iter().zip(&results) {
            if (-4095..0).contains(&r) {
                return Err(SysError::RemoteSyscall {
                    name: call.name,
                    tid: self.tid.as_raw(),
                    errno: Errno::from_raw(-r as i32),
                });
            }
        }
        Ok(results)
    }

    /// Like [`Self::batch`] without turning negative results into errors.
    pub fn batch_raw(&mut self, calls: &[Call]) -> Result<Vec<i64>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let (base, len) = self.scratch.ok_or_else(|| SysError::Invalid {
            op: "remote batch",
            reason: "no scratch area mapped".into(),
        })?;
        let results = base + len - BATCH_RESULTS * 8;
        let code_at = base + len / 2;
        let net = self.net.as_ref().map(|n| {
            (
                n.parked(&self.saved),
                n.batch_signal.unwrap_or(libc::SIGSTOP),
            )
        });
        // The mask word the batch sets before its last signal, after the results.
        let mask_at = results + 8 * calls.len() as u64;
        let end = match net {
            Some((_, signal)) => BatchEnd::Net { signal, mask_at },
            None => BatchEnd::Stop,
        };
        let (code, stop_at) = batch_code(calls, results, end);
        if calls.len() as u64 + 1 > BATCH_RESULTS || code_at + code.len() as u64 > results {
            return Err(SysError::Invalid {
                op: "remote batch",
                reason: format!("{} calls do not fit the scratch area", calls.len()),
            });
        }
        self.write_mem(code_at, &code)?;
        self.injected += calls.len() as u64;
        let (mut regs, signal) = match net {
            Some((parked, signal)) => {
                let unblocked = ALL_SIGNALS & !(1u64 << (signal - 1));
                self.write_mem(mask_at, &unblocked.to_le_bytes())?;
                (parked, signal)
            }
            None => (self.saved, libc::SIGSTOP),
        };
        regs.rip = code_at;
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(self.tid, &regs)?;
        let cont = |tid: Pid| {
            nix::sys::ptrace::cont(tid, None).map_err(|source| SysError::Ptrace {
                op: "PTRACE_CONT",
                tid: tid.as_raw(),
                source,
            })
        };
        cont(self.tid)?;
        if self.net.is_some() {
            fault("remote.batch")?;
        }
        loop {
            match ptrace::wait(self.tid)? {
                WaitStatus::Stopped(_, sig) if sig as i32 == signal => {
                    if self.net.is_none() || ptrace::get_regs(self.tid)?.rip == code_at + stop_at {
                        break;
                    }
                    // One sent by someone else once unblocked: an untraced task would have
                    // ignored it (its disposition is to), so it is dropped here too.
                    cont(self.tid)?;
                }
                other => return Err(self.unexpected("syscall batch", &other)),
            }
        }
        if self.net.is_some() {
            ptrace::set_sigmask(self.tid, ALL_SIGNALS)?;
        }
        let raw = self.read_mem(results, calls.len() * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect())
    }
}

/// An all-zero register set (tests).
#[cfg(test)]
pub(crate) fn zero_regs() -> UserRegs {
    // SAFETY: user_regs_struct is plain integers: all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
