//! POSIX timers, created again inside the process by remote syscalls once its threads exist
//! (a timer may signal one thread, which must exist when it is created), with their dumped
//! ids: `prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)` makes `timer_create` take the id it finds in
//! its `timer_t` output (Linux 6.15). Each is armed, relative, with the time that was left to
//! its next expiry and its interval (whether it was armed absolute is not visible from
//! outside the process).
//!
//! The overrun count of the last delivered expiration (`timer_getoverrun`) has no setter; the
//! kernel computes it when the signal of a periodic timer is dequeued, by forwarding the timer
//! past now. So a timer with overrun N, interval I and T left to its next expiry is armed
//! absolute at `now + T - (N+1)*I` (in the past: it fires at once) with its signal blocked
//! in the thread that takes it, and that thread takes the signal with `rt_sigtimedwait`: the
//! kernel counts exactly N missed periods and rearms the timer at `now + T`. When the round
//! trip from reading the clock to taking the signal outlasts T, the try is repeated with the
//! next expiry a little later (by about the round trip). Signals of the same number already
//! pending are taken first and queued again afterwards, as plain queued signals (like the
//! image's pending ones, requeued after the timers). Taking a timer's signal sets its
//! overrun, so every periodic timer sharing the signal number of one with an overrun goes
//! through the same pass, those due last first, and `timer_getoverrun` checks them all at the
//! end. Only timers on hrtimer clocks (realtime, monotonic, boottime, their alarm variants,
//! TAI) get their overrun back; on CPU-time clocks it is not restored (a warning; it counts
//! again from the next delivery on).

use images_format::events::{PosixTimer, ProcessTimers, TimerNotify};
use sys::remote::{Call, RemoteTask};
use sys::Pid;

use crate::arena::Arena;
use crate::RestoreError;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
/// Timers per batch: a 64-byte sigevent, an 8-byte id slot and a 32-byte itimerspec each.
const PER_BATCH: usize = 128;

/// `struct sigevent` (64 bytes on x86-64): value, signo, notify, then the thread id.
fn sigevent(value: u64, signo: i32, notify: TimerNotify) -> Vec<u8> {
    let (how, tid) = match notify {
        TimerNotify::None => (SIGEV_NONE, 0),
        TimerNotify::Signal => (SIGEV_SIGNAL, 0),
        TimerNotify::Thread => (SIGEV_THREAD, 0),
        TimerNotify::ThreadId { tid } => (SIGEV_SIGNAL | SIGEV_THREAD_ID, tid),
    };
    let mut b = vec![0u8; 64];
    b[0..8].copy_from_slice(&value.to_le_bytes());
    b[8..12].copy_from_slice(&signo.to_le_bytes());
    b[12..16].copy_from_slice(&how.to_le_bytes());
    b[16..20].copy_from_slice(&tid.to_le_bytes());
    b
}

fn itimerspec(value_ns: u64, interval_ns: u64) -> [u64; 4] {
    const NS: u64 = 1_000_000_000;
    [
        interval_ns / NS,
        interval_ns % NS,
        value_ns / NS,
        value_ns % NS,
    ]
}

/// Creates and arms the process's timers from its main thread (`rt`), `pid` as recorded, then
/// gives back their overrun counts. `threads` maps each thread's recorded TID to its host TID
/// (main thread first); the threads exist already.
pub fn restore_posix_timers(
    rt: &mut RemoteTask,
    timers: &ProcessTimers,
    pid: i32,
    threads: &[(i32, Pid)],
) -> Result<(), RestoreError> {
    let fail = |what: String, reason: String| RestoreError::Task { pid, what, reason };
    let on = rt.syscall(
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    if on < 0 {
        return Err(fail(
            "POSIX timers with their ids".into(),
            format!(
                "prctl(PR_TIMER_CREATE_RESTORE_IDS): {} (needs Linux 6.15 or later)",
                nix::errno::Errno::from_raw(-on as i32).desc()
            ),
        ));
    }
    let plan = overrun_plan(timers, pid)?;
    // /proc/PID/timers lists the newest first: created oldest first, they list as dumped.
    let in_order: Vec<_> = timers.timers.iter().rev().cloned().collect();
    let result = (|| {
        for chunk in in_order.chunks(PER_BATCH) {
            let mut a = Arena::new();
            let mut calls = Vec::new();
            let mut slots = Vec::new();
            let mut owner = Vec::new();
            for t in chunk {
                let ev = a.put(rt, &sigevent(t.sigev_value, t.signo, t.notify))?;
                let slot = a.put(rt, &(t.id as i64).to_le_bytes())?;
                slots.push(slot);
                owner.push(t);
                calls.push(Call::new(
                    "timer_create",
                    libc::SYS_timer_create,
                    &[t.clockid as u64, ev, slot],
                ));
                let value = if t.value_ns == 0 && t.interval_ns != 0 {
                    1
                } else {
                    t.value_ns
                };
                // The overrun pass arms its timers itself.
                if value != 0 && !plan.iter().any(|p| p.id == t.id) {
                    let spec = a.words(rt, &itimerspec(value, t.interval_ns))?;
                    owner.push(t);
                    calls.push(Call::new(
                        "timer_settime",
                        libc::SYS_timer_settime,
                        &[t.id as u64, 0, spec, 0],
                    ));
                }
            }
            let results = rt.batch_raw(&calls)?;
            for ((c, r), t) in calls.iter().zip(&results).zip(&owner) {
                if (-4095..0).contains(r) {
                    return Err(fail(
                        format!(
                            "POSIX timer {} (clock {}, signal {}, {:?})",
                            t.id, t.clockid, t.signo, t.notify
                        ),
                        format!(
                            "{}: {}",
                            c.name,
                            nix::errno::Errno::from_raw(-*r as i32).desc()
                        ),
                    ));
                }
            }
            for (t, slot) in chunk.iter().zip(&slots) {
                let got = rt.read_mem(*slot, 4)?;
                let got = i32::from_le_bytes(got.try_into().unwrap_or([0; 4]));
                if got != t.id {
                    return Err(fail(
                        format!("POSIX timer {}", t.id),
                        format!("timer_create gave id {got}"),
                    ));
                }
            }
        }
        Ok(())
    })();
    let off = rt.syscall(
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    );
    result?;
    if off? < 0 {
        return Err(fail(
            "POSIX timers".into(),
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF) failed".into(),
        ));
    }
    restore_overruns(rt, &plan, pid, threads)
}

const NS: u128 = 1_000_000_000;
const SIG_BLOCK: u64 = 0;
const SIG_SETMASK: u64 = 2;
const TIMER_ABSTIME: u64 = 1;
const SI_TIMER: i32 = -2;
const EAGAIN: i64 = -(libc::EAGAIN as i64);
/// Bytes of a `siginfo_t`.
const SIGINFO_LEN: usize = 128;
/// Signals taken per stashing batch.
const STASH_PER_BATCH: usize = 16;
/// Signals of one number that may be pending when a timer's overrun is restored (requeued in
/// batches of this size too, which fit the scratch area).
const STASH_MAX: usize = 1024;
const REQUEUE_PER_BATCH: usize = 128;
/// How long the thread waits for the signal of the timer just armed in the past (it fires from
/// the next timer interrupt, not inside `timer_settime`).
const FIRE_WAIT_NS: u64 = 20_000_000;
/// Tries before giving up: a try fails when the remote round trip from reading the clock to
/// taking the signal outlasts the time left, or misses it by more than a period.
const ATTEMPTS: usize = 8;

/// Clocks whose timers are hrtimers: forwarded in whole periods when their signal is taken.
fn is_hrtimer_clock(clockid: i32) -> bool {
    matches!(
        clockid,
        libc::CLOCK_REALTIME
            | libc::CLOCK_MONOTONIC
            | libc::CLOCK_BOOTTIME
            | libc::CLOCK_REALTIME_ALARM
            | libc::CLOCK_BOOTTIME_ALARM
            | libc::CLOCK_TAI
    )
}

/// The absolute start (ns of the timer's clock) that makes the next expiry `now + value`
/// after `overrun` missed periods of `interval`, or `None` when it would be before the
/// clock's zero.
fn overrun_start(now: u128, value: u64, interval: u64, overrun: i32) -> Option<u128> {
    let span = (overrun as u128 + 1) * interval as u128;
    (now + value as u128).checked_sub(span)
}

/// The time left to give a retry after a try whose round trip (clock read to signal taken)
/// was `latency`. The signal carries the overrun asked for only if it is taken within the
/// period that ends at the next expiry, so a round trip longer than `value` defers the next
/// expiry: to the middle of the period after the round trip, or twice the round trip when the
/// period is longer than that.
fn retry_value(value: u64, interval: u64, latency: u128) -> u64 {
    let target = latency + latency.min(interval as u128 / 2);
    (value as u128).max(target).min(u64::MAX as u128) as u64
}

fn timespec_ns(b: &[u8]) -> u128 {
    let sec = i64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
    let nsec = i64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    (sec.max(0) as u128) * NS + nsec.clamp(0, NS as i64 - 1) as u128
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn errno_desc(r: i64) -> &'static str {
    nix::errno::Errno::from_raw(-r as i32).desc()
}

/// Whether the overrun pass can arm `t`: a periodic timer on an hrtimer clock that signals.
fn forwardable(t: &PosixTimer) -> bool {
    is_hrtimer_clock(t.clockid)
        && t.interval_ns != 0
        && (1..=64).contains(&t.signo)
        && t.notify != TimerNotify::None
}

/// The timers that the overrun pass arms (instead of the ordinary one), in the order it arms
/// them: those with an overrun, and the forwardable timers sharing a signal number with one
/// (taking a timer's signal sets that timer's overrun, so they get theirs set again too),
/// those due last first, so a timer due soon does not fire while another is being set.
/// Timers with an overrun that cannot get it back: not periodic or signalling nothing (then
/// an overrun cannot have been counted: an error), on a CPU-time clock (a warning).
fn overrun_plan(timers: &ProcessTimers, pid: i32) -> Result<Vec<PosixTimer>, RestoreError> {
    let mut plan = Vec::new();
    for t in timers.timers.iter().rev() {
        if t.overrun > 0 && !forwardable(t) {
            if !is_hrtimer_clock(t.clockid) {
                tracing::warn!(
                    pid,
                    timer = t.id,
                    clock = t.clockid,
                    overrun = t.overrun,
                    "the overrun of a POSIX timer on a CPU-time clock is not restored"
                );
                continue;
            }
            return Err(RestoreError::Task {
                pid,
                what: format!(
                    "overrun {} of POSIX timer {} (clock {}, signal {}, {:?}, interval {} ns)",
                    t.overrun, t.id, t.clockid, t.signo, t.notify, t.interval_ns
                ),
                reason: "only a periodic timer that signals counts overruns".into(),
            });
        }
        let shares = |u: &PosixTimer| u.signo == t.signo && u.overrun > 0 && forwardable(u);
        if forwardable(t) && (t.overrun > 0 || timers.timers.iter().any(shares)) {
            plan.push(t.clone());
        }
    }
    plan.sort_by_key(|t| std::cmp::Reverse(t.value_ns));
    Ok(plan)
}

/// Arms the timers of `plan` with their overruns, then checks every overrun with
/// `timer_getoverrun`: a timer whose signal another one took meanwhile gets its signal
/// number's timers set once more, then it is an error.
fn restore_overruns(
    rt: &mut RemoteTask,
    plan: &[PosixTimer],
    pid: i32,
    threads: &[(i32, Pid)],
) -> Result<(), RestoreError> {
    let mut todo: Vec<&PosixTimer> = plan.iter().collect();
    for round in 0..2 {
        for t in &todo {
            restore_overrun(rt, t, pid, threads)?;
        }
        let calls: Vec<Call> = plan
            .iter()
            .map(|t| {
                Call::new(
                    "timer_getoverrun",
                    libc::SYS_timer_getoverrun,
                    &[t.id as u64],
                )
            })
            .collect();
        let results = rt.batch_raw(&calls)?;
        let wrong: Vec<(&PosixTimer, i64)> = plan
            .iter()
            .zip(results)
            .filter(|(t, got)| *got != t.overrun as i64)
            .collect();
        let Some((t, got)) = wrong.first() else {
            return Ok(());
        };
        if round == 1 {
            return Err(RestoreError::Task {
                pid,
                what: format!(
                    "overrun {} of POSIX timer {} (signal {})",
                    t.overrun, t.id, t.signo
                ),
                reason: format!(
                    "timer_getoverrun gives {got} after setting it twice: another timer on \
                     signal {} keeps firing while it is set",
                    t.signo
                ),
            });
        }
        todo = plan
            .iter()
            .filter(|t| wrong.iter().any(|(w, _)| w.signo == t.signo))
            .collect();
    }
    Ok(())
}

/// Gives timer `t` (forwardable) its overrun back (see the module doc), in the thread its
/// signal goes to.
fn restore_overrun(
    rt: &mut RemoteTask,
    t: &PosixTimer,
    pid: i32,
    threads: &[(i32, Pid)],
) -> Result<(), RestoreError> {
    let what = format!(
        "overrun {} of POSIX timer {} (clock {}, signal {}, {:?})",
        t.overrun, t.id, t.clockid, t.signo, t.notify
    );
    let fail = |reason: String| RestoreError::Task {
        pid,
        what: what.clone(),
        reason,
    };
    let target = match t.notify {
        TimerNotify::ThreadId { tid } => {
            let host = threads
                .iter()
                .find(|(image, _)| *image == tid)
                .map(|(_, host)| *host)
                .ok_or_else(|| fail(format!("its thread {tid} was not restored")))?;
            Some((tid, host))
        }
        _ => None,
    };
    match target {
        Some((tid, host)) if host != rt.tid() => {
            let mut sib = rt.sibling(host)?;
            let result = set_overrun(&mut sib, t, true).map_err(|e| match e {
                Overrun::Restore(e) => e,
                Overrun::Failed(reason) => fail(format!("in thread {tid}: {reason}")),
            });
            let regs = *sib.saved_regs();
            sib.finish_with(&regs)?;
            result
        }
        target => set_overrun(rt, t, target.is_some()).map_err(|e| match e {
            Overrun::Restore(e) => e,
            Overrun::Failed(reason) => fail(reason),
        }),
    }
}

/// Why [`set_overrun`] failed: a session error, or what went wrong with the timer itself.
enum Overrun {
    Restore(RestoreError),
    Failed(String),
}

impl From<RestoreError> for Overrun {
    fn from(e: RestoreError) -> Self {
        Overrun::Restore(e)
    }
}

impl From<sys::SysError> for Overrun {
    fn from(e: sys::SysError) -> Self {
        Overrun::Restore(e.into())
    }
}

/// In `task` (the thread the signal of `t` goes to; `thread_directed` if aimed at it): blocks
/// the signal, takes the ones pending, arms the timer in the past and takes its signal, puts
/// the others back and restores the signal mask.
fn set_overrun(
    task: &mut RemoteTask,
    t: &PosixTimer,
    thread_directed: bool,
) -> Result<(), Overrun> {
    let set = 1u64 << (t.signo - 1);
    // The first stash also blocks the signal and keeps the old mask.
    let (old_mask, mut stash, mut now) = stash_pending(task, t, set, true)?;
    let old_mask = old_mask.unwrap_or(0);
    let outcome = (|| {
        let value = t.value_ns.max(1);
        let mut next_in = value;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let (_, more, again) = stash_pending(task, t, set, false)?;
                stash.extend(more);
                now = again;
            }
            let start = overrun_start(now, next_in, t.interval_ns, t.overrun).ok_or_else(|| {
                Overrun::Failed(format!(
                    "{} periods of {} ns reach back before the zero of clock {} (now {} ns)",
                    t.overrun as u64 + 1,
                    t.interval_ns,
                    t.clockid,
                    now
                ))
            })?;
            let (info, after) = fire_in_past(task, t, set, start)?;
            let latency = after.saturating_sub(now);
            match info {
                Some(info) if i32_at(&info, 8) == SI_TIMER && i32_at(&info, 16) == t.id => {
                    let got = i32_at(&info, 20);
                    if got == t.overrun {
                        if next_in != value {
                            tracing::debug!(
                                timer = t.id,
                                value,
                                next_in,
                                attempt,
                                "POSIX timer overrun restored, its next expiry deferred"
                            );
                        }
                        return Ok(());
                    }
                    last = format!(
                        "its signal carried overrun {got} ({latency} ns between reading the clock and taking the signal, {next_in} ns left)"
                    );
                }
                Some(info) => {
                    // Another signal of the number arrived meanwhile: it goes back afterwards.
                    stash.push(info);
                    last = "another signal of the same number came first".into();
                }
                None => {
                    last = format!(
                        "its signal did not come within {} ms",
                        FIRE_WAIT_NS / 1_000_000
                    );
                }
            }
            next_in = retry_value(value, t.interval_ns, latency);
        }
        Err(Overrun::Failed(format!("{ATTEMPTS} tries: {last}")))
    })();
    // Signals of the timer itself came from arming it before: this arming supersedes them.
    stash.retain(|i| !(i32_at(i, 8) == SI_TIMER && i32_at(i, 16) == t.id));
    let requeued = requeue(task, t, &stash, thread_directed, old_mask);
    outcome?;
    requeued
}

/// Blocks the signal if `block` (returning the old mask) and takes every pending signal in
/// `set` (their siginfos, in order); reads the timer's clock last.
#[allow(clippy::type_complexity)]
fn stash_pending(
    task: &mut RemoteTask,
    t: &PosixTimer,
    set: u64,
    block: bool,
) -> Result<(Option<u64>, Vec<[u8; SIGINFO_LEN]>, u128), Overrun> {
    let mut old = None;
    let mut stash = Vec::new();
    loop {
        let mut a = Arena::new();
        let set_at = a.words(task, &[set])?;
        let old_at = a.words(task, &[0])?;
        let zero = a.words(task, &[0, 0])?;
        let infos = a.put(task, &[0u8; SIGINFO_LEN * STASH_PER_BATCH])?;
        let now_at = a.words(task, &[0, 0])?;
        let mut calls = Vec::new();
        let block = block && old.is_none();
        if block {
            calls.push(Call::new(
                "rt_sigprocmask(SIG_BLOCK)",
                libc::SYS_rt_sigprocmask,
                &[SIG_BLOCK, set_at, old_at, 8],
            ));
        }
        for i in 0..STASH_PER_BATCH {
            calls.push(Call::new(
                "rt_sigtimedwait",
                libc::SYS_rt_sigtimedwait,
                &[set_at, infos + (i * SIGINFO_LEN) as u64, zero, 8],
            ));
        }
        calls.push(Call::new(
            "clock_gettime",
            libc::SYS_clock_gettime,
            &[t.clockid as u64, now_at],
        ));
        let results = task.batch_raw(&calls)?;
        for (c, r) in calls.iter().zip(&results) {
            if (-4095..0).contains(r) && !(c.nr == libc::SYS_rt_sigtimedwait && *r == EAGAIN) {
                return Err(Overrun::Failed(format!("{}: {}", c.name, errno_desc(*r))));
            }
        }
        if block {
            old = Some(u64::from_le_bytes(
                task.read_mem(old_at, 8)?.try_into().unwrap_or([0; 8]),
            ));
        }
        let waits = &results[usize::from(block)..usize::from(block) + STASH_PER_BATCH];
        let raw = task.read_mem(infos, SIGINFO_LEN * STASH_PER_BATCH)?;
        let mut taken = 0;
        for (i, r) in waits.iter().enumerate() {
            if *r == t.signo as i64 {
                let mut info = [0u8; SIGINFO_LEN];
                info.copy_from_slice(&raw[i * SIGINFO_LEN..(i + 1) * SIGINFO_LEN]);
                stash.push(info);
                taken += 1;
            }
        }
        let now = timespec_ns(&task.read_mem(now_at, 16)?);
        if taken < STASH_PER_BATCH {
            return Ok((old, stash, now));
        }
        if stash.len() >= STASH_MAX {
            return Err(Overrun::Failed(format!(
                "more than {STASH_MAX} signals {} pending",
                t.signo
            )));
        }
    }
}

/// Arms the timer at the absolute `start` (in the past) and takes its signal: the siginfo taken
/// (if any) and the clock right after.
fn fire_in_past(
    task: &mut RemoteTask,
    t: &PosixTimer,
    set: u64,
    start: u128,
) -> Result<(Option<[u8; SIGINFO_LEN]>, u128), Overrun> {
    let mut a = Arena::new();
    let spec = a.words(
        task,
        &[
            t.interval_ns / NS as u64,
            t.interval_ns % NS as u64,
            (start / NS) as u64,
            (start % NS) as u64,
        ],
    )?;
    let set_at = a.words(task, &[set])?;
    let wait = a.words(task, &[0, FIRE_WAIT_NS])?;
    let info_at = a.put(task, &[0u8; SIGINFO_LEN])?;
    let after_at = a.words(task, &[0, 0])?;
    let calls = [
        Call::new(
            "timer_settime(TIMER_ABSTIME)",
            libc::SYS_timer_settime,
            &[t.id as u64, TIMER_ABSTIME, spec, 0],
        ),
        Call::new(
            "rt_sigtimedwait",
            libc::SYS_rt_sigtimedwait,
            &[set_at, info_at, wait, 8],
        ),
        Call::new(
            "clock_gettime",
            libc::SYS_clock_gettime,
            &[t.clockid as u64, after_at],
        ),
    ];
    let results = task.batch_raw(&calls)?;
    for (c, r) in calls.iter().zip(&results) {
        if (-4095..0).contains(r) && !(c.nr == libc::SYS_rt_sigtimedwait && *r == EAGAIN) {
            return Err(Overrun::Failed(format!("{}: {}", c.name, errno_desc(*r))));
        }
    }
    let info = if results[1] == t.signo as i64 {
        let mut info = [0u8; SIGINFO_LEN];
        info.copy_from_slice(&task.read_mem(info_at, SIGINFO_LEN)?);
        Some(info)
    } else {
        None
    };
    Ok((info, timespec_ns(&task.read_mem(after_at, 16)?)))
}

/// Queues the stashed signals again, in order (to the thread if the timer's signals are
/// aimed at it, else to the process), then restores the signal mask.
fn requeue(
    task: &mut RemoteTask,
    t: &PosixTimer,
    stash: &[[u8; SIGINFO_LEN]],
    thread_directed: bool,
    old_mask: u64,
) -> Result<(), Overrun> {
    let mut chunks: Vec<&[[u8; SIGINFO_LEN]]> = stash.chunks(REQUEUE_PER_BATCH).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (n, chunk) in chunks.into_iter().enumerate() {
        let mut a = Arena::new();
        let mut calls = vec![
            Call::new("getpid", libc::SYS_getpid, &[]),
            Call::new("gettid", libc::SYS_gettid, &[]),
        ];
        for info in chunk {
            let at = a.put(task, info)?;
            calls.push(if thread_directed {
                Call::new(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    &[0, 0, t.signo as u64, at],
                )
                .with_result(0, 0)
                .with_result(1, 1)
            } else {
                Call::new(
                    "rt_sigqueueinfo",
                    libc::SYS_rt_sigqueueinfo,
                    &[0, t.signo as u64, at],
                )
                .with_result(0, 0)
            });
        }
        if n == last {
            let mask = a.words(task, &[old_mask])?;
            calls.push(Call::new(
                "rt_sigprocmask(SIG_SETMASK)",
                libc::SYS_rt_sigprocmask,
                &[SIG_SETMASK, mask, 0, 8],
            ));
        }
        let results = task.batch_raw(&calls)?;
        for (c, r) in calls.iter().zip(&results) {
            if (-4095..0).contains(r) {
                return Err(Overrun::Failed(format!(
                    "putting back a pending signal {}: {}: {}",
                    t.signo,
                    c.name,
                    errno_desc(*r)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_n_plus_one_periods_before_the_next_expiry() {
        // 7 overruns of 1000 s with 500 s left: the start is 7.5 periods ago.
        let now = 1_700_000_000 * NS;
        let start = overrun_start(now, 500_000_000_000, 1_000_000_000_000, 7).unwrap();
        assert_eq!(now - start, 7_500 * NS);
    }

    #[test]
    fn start_before_the_clock_zero_is_refused() {
        assert_eq!(overrun_start(100 * NS, NS as u64, 10 * NS as u64, 10), None);
        assert_eq!(
            overrun_start(109 * NS, NS as u64, 10 * NS as u64, 10),
            Some(0)
        );
        assert_eq!(overrun_start(0, 0, u64::MAX, i32::MAX), None);
    }

    #[test]
    fn a_retry_defers_the_next_expiry_past_the_round_trip() {
        // Time left longer than twice the round trip: kept.
        assert_eq!(retry_value(1_000_000, 10_000_000, 100_000), 1_000_000);
        // Long period: twice the round trip.
        assert_eq!(retry_value(5_000, 1_000_000_000, 300_000), 600_000);
        // Period shorter than the round trip: the middle of the period after it.
        assert_eq!(retry_value(5_000, 100_000, 300_000), 350_000);
    }

    fn timer(id: i32, clockid: i32, signo: i32, value_ns: u64, overrun: i32) -> PosixTimer {
        PosixTimer {
            id,
            clockid,
            signo,
            sigev_value: 0,
            notify: TimerNotify::Signal,
            value_ns,
            interval_ns: 1_000_000,
            overrun,
        }
    }

    #[test]
    fn the_plan_takes_overruns_and_their_signal_neighbours_due_last_first() {
        let timers = ProcessTimers {
            pid: 1,
            // As /proc lists them: newest first.
            timers: vec![
                timer(5, 1, 40, 10, 0),  // shares signal 40 with 3: in the plan
                timer(4, 2, 41, 10, 9),  // CPU-time clock: not restored
                timer(3, 0, 40, 500, 2), // overrun
                timer(2, 1, 42, 10, 0),  // nothing to do
                timer(1, 1, 43, 900, 1), // overrun
            ],
        };
        let ids: Vec<i32> = overrun_plan(&timers, 1)
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, [1, 3, 5]);
    }

    #[test]
    fn an_overrun_without_period_or_signal_is_an_error() {
        let mut one_shot = timer(1, 1, 40, 10, 3);
        one_shot.interval_ns = 0;
        let mut silent = timer(2, 1, 40, 10, 3);
        silent.notify = TimerNotify::None;
        for t in [one_shot, silent] {
            let err = overrun_plan(
                &ProcessTimers {
                    pid: 7,
                    timers: vec![t.clone()],
                },
                7,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("POSIX timer {}", t.id)), "{err}");
        }
    }

    #[test]
    fn only_hrtimer_clocks_are_forwarded() {
        for c in [0, 1, 7, 8, 9, 11] {
            assert!(is_hrtimer_clock(c), "clock {c}");
        }
        // CPU-time clocks of the process and thread, and a per-pid CPU clock.
        for c in [2, 3, -6, 4] {
            assert!(!is_hrtimer_clock(c), "clock {c}");
        }
    }
}
