//! POSIX timers, created again inside the process by remote syscalls once its threads exist
//! (a timer may signal one thread, which must exist when it is created), with their dumped
//! ids: `prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)` makes `timer_create` take the id it finds in
//! its `timer_t` output (Linux 6.15). Each is armed, relative, with the time that was left to
//! its next expiry and its interval (whether it was armed absolute is not visible from
//! outside the process). The overrun count of the last delivered expiration is recorded but
//! not restored: no syscall sets it, so `timer_getoverrun` counts from the next delivery on.

use images_format::events::{ProcessTimers, TimerNotify};
use sys::remote::{Call, RemoteTask};

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

/// Creates and arms the process's timers from its main thread (`rt`), `pid` as recorded.
pub fn restore_posix_timers(
    rt: &mut RemoteTask,
    timers: &ProcessTimers,
    pid: i32,
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
                if value != 0 {
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
    Ok(())
}
