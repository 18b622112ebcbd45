//! The safety net of injected code: an x86-64 `rt_sigframe` holding a task's own registers,
//! signal mask and xsave state, and a `mov rax, 15; syscall` (rt_sigreturn) to return through.
//!
//! While a dumper runs syscalls inside a task, the task's registers are the injector's. If the
//! dumper dies (SIGKILL), the kernel lets the task go at once, and it would run on with them.
//! [`crate::remote::RemoteTask`] therefore keeps every injected state such that the task, run
//! freely, finishes the syscall in flight and then executes `rt_sigreturn` with its stack
//! pointer at a frame built here: the kernel puts back the task's registers (with the restart
//! of an interrupted syscall applied, as a detach would), its own blocked mask and its FPU
//! state, exactly as a signal handler's return does. No byte of the task's text is changed:
//! the `rt_sigreturn` sequence is one the task already has (its C library's signal restorer,
//! found by [`find_sigreturn`]).
//!
//! Layout (arch/x86/include/asm/sigframe.h, uapi/asm/sigcontext.h), from the frame's start:
//! `pretcode` (8), `ucontext` (flags, link, stack_t, sigcontext, sigmask: 304), `siginfo`
//! (128), then the xsave area, 64-byte aligned, with its software bytes (FP_XSTATE_MAGIC1,
//! sizes, features) and FP_XSTATE_MAGIC2 right after it. `rt_sigreturn` finds the frame at
//! `rsp - 8` (a handler's `ret` popped `pretcode`).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

use crate::ptrace::UserRegs;
use crate::Pid;

/// `mov rax, 15; syscall` (glibc's `__restore_rt`) and `mov eax, 15; syscall`.
const SIGRETURN_SEQS: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];
/// `mov eax, 15; syscall`, for code the injector writes itself.
pub const SIGRETURN_INSN: [u8; 7] = [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Where the software bytes sit in the xsave area (`fxregs_state.sw_reserved`).
const SW_BYTES_OFFSET: usize = 464;
/// The frame's xsave area starts here (the frame itself is 64-byte aligned).
const FPSTATE_OFFSET: usize = 512;
/// The ABI's red zone below a task's stack pointer, which a leaf function may be using.
const RED_ZONE: u64 = 128;
/// Offsets inside the frame.
const UC: usize = 8;
const UC_STACK: usize = UC + 16;
const MCONTEXT: usize = UC + 40;
const SIGMASK: usize = UC + 296;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const TIMER_ABSTIME: u64 = 1;

/// A frame ready to be written into the task at `addr`; the task returns through it with
/// `rsp = addr + 8`.
#[derive(Debug, Clone)]
pub struct SigFrame {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// The registers a task stopped with `regs` must get back so that it goes on as after a
/// detach: `rt_sigreturn` disables the kernel's syscall-restart logic (`orig_rax = -1`), so an
/// interrupted restartable syscall is re-executed here (`rip - 2`, `rax = nr`). A sleep
/// interrupted with `ERESTART_RESTARTBLOCK` sleeps again for the time left (which the kernel
/// stored in `rem`) or, if absolute, unchanged; other restart-block calls get `EINTR`, which
/// their callers retry (the dump records a stopped thread's registers with this same fix-up).
pub fn resume_regs(regs: &UserRegs) -> UserRegs {
    let mut r = *regs;
    if (r.orig_rax as i64) < 0 {
        return r;
    }
    match -(r.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => {
            let nr = r.orig_rax as i64;
            if nr == libc::SYS_nanosleep && r.rsi != 0 {
                r.rdi = r.rsi;
                r.rax = r.orig_rax;
                r.rip -= 2;
            } else if nr == libc::SYS_clock_nanosleep && (r.rsi & TIMER_ABSTIME != 0 || r.r10 != 0)
            {
                if r.rsi & TIMER_ABSTIME == 0 {
                    r.rdx = r.r10;
                }
                r.rax = r.orig_rax;
                r.rip -= 2;
            } else {
                r.rax = (-(libc::EINTR as i64)) as u64;
            }
        }
        _ => {}
    }
    r.orig_rax = u64::MAX;
    r
}

/// Builds the frame below the red zone of the stack `regs.rsp` points into: `rt_sigreturn`
/// through it gives the task `resume_regs(regs)`, blocked mask `mask` and FPU state `xstate`
/// (as `PTRACE_GETREGSET(NT_X86_XSTATE)` returns it: the standard, uncompacted layout a signal
/// frame uses). The alternate signal stack is left as it is (the frame's `stack_t` carries an
/// invalid mode, which the kernel refuses and `rt_sigreturn` ignores).
pub fn build(regs: &UserRegs, mask: u64, xstate: &[u8]) -> SigFrame {
    let xlen = xstate.len();
    let size = FPSTATE_OFFSET + xlen + 4;
    let addr = (regs.rsp.wrapping_sub(RED_ZONE + size as u64)) & !63;
    let mut b = vec![0u8; size];
    let put64 =
        |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put64(
        &mut b,
        UC,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    // stack_t { ss_sp, ss_flags, ss_size }: SS_ONSTACK | SS_DISABLE is no valid mode.
    b[UC_STACK + 8..UC_STACK + 12].copy_from_slice(&3u32.to_le_bytes());
    let r = resume_regs(regs);
    let gp = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put64(&mut b, MCONTEXT + 8 * i, *v);
    }
    // cs, gs, fs, ss (16 bits each).
    let seg = MCONTEXT + 144;
    for (i, v) in [r.cs, r.gs, r.fs, r.ss].iter().enumerate() {
        b[seg + 2 * i..seg + 2 * i + 2].copy_from_slice(&(*v as u16).to_le_bytes());
    }
    put64(&mut b, MCONTEXT + 184, addr + FPSTATE_OFFSET as u64);
    put64(&mut b, SIGMASK, mask);
    let fp = FPSTATE_OFFSET;
    b[fp..fp + xlen].copy_from_slice(xstate);
    if xlen >= SW_BYTES_OFFSET + 48 {
        // The software bytes say which features follow and how large the area is; with
        // them wrong the kernel would restore x87/SSE only and reset the rest.
        let features = u64::from_le_bytes(
            xstate[SW_BYTES_OFFSET + 8..SW_BYTES_OFFSET + 16]
                .try_into()
                .unwrap_or([0; 8]),
        );
        let features = if features == 0 {
            // Not filled in by the kernel: every feature the header has.
            u64::from_le_bytes(xstate[512..520].try_into().unwrap_or([0; 8])) | 3
        } else {
            features
        };
        let sw = fp + SW_BYTES_OFFSET;
        b[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        b[sw + 4..sw + 8].copy_from_slice(&((xlen + 4) as u32).to_le_bytes());
        b[sw + 8..sw + 16].copy_from_slice(&features.to_le_bytes());
        b[sw + 16..sw + 20].copy_from_slice(&(xlen as u32).to_le_bytes());
        b[fp + xlen..fp + xlen + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    }
    SigFrame { addr, bytes: b }
}

type TextKey = (String, u64, u64);

/// Offsets of a sigreturn sequence found in each (device, inode, file offset) text mapping.
fn cache() -> &'static Mutex<HashMap<TextKey, Option<u64>>> {
    static CACHE: OnceLock<Mutex<HashMap<TextKey, Option<u64>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Text mappings of a task, larger than this, are not searched (a sequence is in libc).
const MAX_SEARCH: u64 = 64 << 20;

/// The address of a `rt_sigreturn` sequence in the executable file mappings of `tid` (its C
/// library's signal restorer; libc first, then the others), checked against the task's memory.
/// `mem` is the task's `/proc/TID/mem`. What each file's text holds is remembered: the next
/// process mapping the same library costs one 9-byte read.
pub fn find_sigreturn(tid: Pid, mem: &File) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{tid}/maps")).ok()?;
    let mut texts: Vec<(u64, u64, TextKey, bool)> = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].starts_with("r-x") || f[4] == "0" {
            continue;
        }
        let Some((s, e)) = f[0].split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(off), Ok(ino)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(f[2], 16),
            f[4].parse::<u64>(),
        ) else {
            continue;
        };
        let libc = f[5].contains("libc.so") || f[5].contains("libc-") || f[5].contains("musl");
        texts.push((start, end, (f[3].to_string(), ino, off), libc));
    }
    texts.sort_by_key(|t| !t.3);
    let mut searched = 0u64;
    for (start, end, key, _) in texts {
        let known = cache().lock().ok().and_then(|c| c.get(&key).copied());
        let found = match known {
            Some(Some(at)) if at < end - start => Some(start + at),
            Some(_) => None,
            None => {
                if searched + (end - start) > MAX_SEARCH {
                    continue;
                }
                searched += end - start;
                let at = search(mem, start, end);
                if let Ok(mut c) = cache().lock() {
                    c.insert(key, at.map(|a| a - start));
                }
                at
            }
        };
        if let Some(addr) = found.filter(|&a| is_sigreturn(mem, a)) {
            return Some(addr);
        }
    }
    None
}

fn is_sigreturn(mem: &File, addr: u64) -> bool {
    SIGRETURN_SEQS.iter().any(|seq| {
        let mut buf = vec![0u8; seq.len()];
        mem.read_exact_at(&mut buf, addr).is_ok() && buf == *seq
    })
}

fn search(mem: &File, start: u64, end: u64) -> Option<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut at = start;
    let mut buf = vec![0u8; CHUNK as usize + 16];
    while at < end {
        let len = ((end - at).min(CHUNK + 16)) as usize;
        if mem.read_exact_at(&mut buf[..len], at).is_err() {
            return None;
        }
        for seq in SIGRETURN_SEQS {
            if let Some(i) = memmem(&buf[..len], seq) {
                return Some(at + i as u64);
            }
        }
        at += CHUNK;
    }
    None
}

/// Where `needle` first occurs in `hay` (libc's `memmem`: a debug build's iterators would take
/// milliseconds over a C library's text).
fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    #[allow(unsafe_code)]
    // SAFETY: both pointers and lengths describe live slices; memmem only reads them and
    // returns NULL or a pointer into `hay`.
    let p = unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> UserRegs {
        let mut r = crate::remote::zero_regs();
        r.rsp = 0x7fff_0000_1238;
        r.rip = 0x40_1002;
        r.orig_rax = libc::SYS_read as u64;
        r.rax = (-ERESTARTSYS) as u64;
        r.cs = 0x33;
        r.ss = 0x2b;
        r
    }

    fn stopped_in(orig: i64, ret: i64) -> UserRegs {
        let mut r = crate::remote::zero_regs();
        r.orig_rax = orig as u64;
        r.rax = ret as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restartable_syscall_is_reexecuted() {
        let r = resume_regs(&stopped_in(libc::SYS_read, -ERESTARTSYS));
        assert_eq!(r.rax, libc::SYS_read as u64);
        assert_eq!(r.rip, 0x1000);
        assert_eq!(r.orig_rax, u64::MAX);
    }

    #[test]
    fn relative_clock_nanosleep_sleeps_the_remaining_time() {
        let mut r = stopped_in(libc::SYS_clock_nanosleep, -ERESTART_RESTARTBLOCK);
        r.rsi = 0;
        r.rdx = 0x5000;
        r.r10 = 0x6000;
        let f = resume_regs(&r);
        assert_eq!(f.rdx, 0x6000);
        assert_eq!(f.rax, libc::SYS_clock_nanosleep as u64);
        assert_eq!(f.rip, 0x1000);
    }

    #[test]
    fn absolute_clock_nanosleep_is_unchanged() {
        let mut r = stopped_in(libc::SYS_clock_nanosleep, -ERESTART_RESTARTBLOCK);
        r.rsi = TIMER_ABSTIME;
        r.rdx = 0x5000;
        let f = resume_regs(&r);
        assert_eq!(f.rdx, 0x5000);
        assert_eq!(f.rip, 0x1000);
    }

    #[test]
    fn restart_block_without_remaining_time_gives_eintr() {
        let f = resume_regs(&stopped_in(libc::SYS_poll, -ERESTART_RESTARTBLOCK));
        assert_eq!(f.rax as i64, -(libc::EINTR as i64));
        assert_eq!(f.rip, 0x1002);
    }

    #[test]
    fn finished_syscall_is_left_alone() {
        let f = resume_regs(&stopped_in(libc::SYS_write, 5));
        assert_eq!(f.rax, 5);
        assert_eq!(f.rip, 0x1002);
        let f = resume_regs(&stopped_in(-1, 7));
        assert_eq!(f.rax, 7);
    }

    #[test]
    fn frame_is_aligned_below_the_red_zone_and_holds_the_restarted_call() {
        let x = vec![0u8; 832];
        let f = build(&regs(), 0x4000, &x);
        assert_eq!(f.addr % 64, 0);
        assert!(f.addr + f.bytes.len() as u64 <= 0x7fff_0000_1238 - RED_ZONE);
        let w = |at: usize| u64::from_le_bytes(f.bytes[at..at + 8].try_into().unwrap());
        assert_eq!(
            w(MCONTEXT + 16 * 8),
            0x40_1000,
            "rip moved back over the syscall"
        );
        assert_eq!(
            w(MCONTEXT + 13 * 8),
            libc::SYS_read as u64,
            "rax is the call again"
        );
        assert_eq!(w(MCONTEXT + 184), f.addr + 512);
        assert_eq!(w(SIGMASK), 0x4000);
        let m2 = u32::from_le_bytes(f.bytes[512 + 832..512 + 836].try_into().unwrap());
        assert_eq!(m2, FP_XSTATE_MAGIC2);
    }

    #[test]
    fn memmem_finds_the_first() {
        assert_eq!(memmem(b"abcabc", b"ca"), Some(2));
        assert_eq!(memmem(b"abc", b"x"), None);
    }

    #[test]
    fn a_restorer_is_found_in_this_process() {
        let t = std::time::Instant::now();
        let me = Pid::this();
        let mem = File::open("/proc/self/mem").unwrap();
        let at = find_sigreturn(me, &mem).expect("libc has a signal restorer");
        assert!(is_sigreturn(&mem, at));
        eprintln!("found in {:?}", t.elapsed());
        // Second time from the cache.
        assert_eq!(find_sigreturn(me, &mem), Some(at));
    }
}
