//! POSIX timers (`timer_create`) of a process: id, clock, signal, value and target from
//! `/proc/PID/timers`; time to the next expiry, interval and overrun from `timer_gettime` and
//! `timer_getoverrun`, which only the process itself can call (remote syscalls, in the session
//! of [`crate::task::dump_process`]).
//!
//! A timer aimed at one thread (`SIGEV_THREAD_ID`) names it by TID as this `/proc` shows it;
//! the caller turns that into the TID the image records.

use images_format::events::{PosixTimer, ProcessTimers, TimerNotify};
use sys::remote::{Call, RemoteTask, SCRATCH_DATA_OFFSET};

use crate::DumpError;

/// Timers read per batch (two calls and 32 bytes of output each).
const PER_BATCH: usize = 128;

/// One timer as `/proc/PID/timers` lists it (times not filled in yet).
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, String> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let bad = || format!("bad line {line:?}");
        if key == "ID" {
            out.push(PosixTimer {
                id: value.parse().map_err(|_| bad())?,
                clockid: 0,
                signo: 0,
                sigev_value: 0,
                notify: TimerNotify::Signal,
                value_ns: 0,
                interval_ns: 0,
                overrun: 0,
            });
            continue;
        }
        let t = out
            .last_mut()
            .ok_or_else(|| format!("{line:?} before any ID"))?;
        match key {
            "signal" => {
                let (signo, v) = value.split_once('/').ok_or_else(bad)?;
                t.signo = signo.parse().map_err(|_| bad())?;
                t.sigev_value = u64::from_str_radix(v, 16).map_err(|_| bad())?;
            }
            "notify" => {
                // "signal/pid.N", "none/pid.N", "thread/pid.N", or ".../tid.N" with SIGEV_THREAD_ID.
                let (how, target) = value.split_once('/').ok_or_else(bad)?;
                if let Some(tid) = target.strip_prefix("tid.") {
                    t.notify = TimerNotify::ThreadId {
                        tid: tid.parse().map_err(|_| bad())?,
                    };
                } else {
                    t.notify = match how {
                        "none" => TimerNotify::None,
                        "thread" => TimerNotify::Thread,
                        "signal" => TimerNotify::Signal,
                        _ => return Err(bad()),
                    };
                }
            }
            "ClockID" => t.clockid = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(out)
}

/// Every POSIX timer of the process `remote` runs in (its main thread), with its times.
/// The scratch data area is used from its start.
pub fn dump_posix_timers(remote: &mut RemoteTask, pid: i32) -> Result<Vec<PosixTimer>, DumpError> {
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).map_err(|source| DumpError::Io {
        op: "read",
        path: path.clone().into(),
        source,
    })?;
    let mut timers = parse_timers(&text).map_err(|reason| DumpError::Task {
        pid,
        what: "POSIX timers".into(),
        reason: format!("{path}: {reason}"),
    })?;
    let base = remote
        .scratch()
        .map(|(a, _)| a + SCRATCH_DATA_OFFSET)
        .unwrap_or(0);
    for chunk in timers.chunks_mut(PER_BATCH) {
        let mut calls = Vec::with_capacity(chunk.len() * 2);
        for (i, t) in chunk.iter().enumerate() {
            calls.push(Call::new(
                "timer_gettime",
                libc::SYS_timer_gettime,
                &[t.id as u64, base + 32 * i as u64],
            ));
            calls.push(Call::new(
                "timer_getoverrun",
                libc::SYS_timer_getoverrun,
                &[t.id as u64],
            ));
        }
        remote.put(0, &vec![0u8; 32 * chunk.len()])?;
        let results = remote.batch(&calls).map_err(|e| DumpError::Task {
            pid,
            what: "POSIX timers".into(),
            reason: e.to_string(),
        })?;
        let data = remote.get(0, 32 * chunk.len())?;
        let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
        for (i, t) in chunk.iter_mut().enumerate() {
            // struct itimerspec { it_interval, it_value }, each { tv_sec, tv_nsec }.
            let at = 32 * i;
            t.interval_ns = word(at) * 1_000_000_000 + word(at + 8);
            t.value_ns = word(at + 16) * 1_000_000_000 + word(at + 24);
            t.overrun = results[2 * i + 1] as i32;
        }
    }
    Ok(timers)
}

/// The timers of process `pid` (recorded as `vpid`) as the image records them: a thread
/// target by its recorded TID (`host_tids[i]` is recorded as `virt_tids[i]`).
pub fn for_image(
    pid: i32,
    vpid: i32,
    mut timers: Vec<PosixTimer>,
    host_tids: &[i32],
    virt_tids: &[i32],
) -> Result<ProcessTimers, DumpError> {
    for t in &mut timers {
        if let TimerNotify::ThreadId { tid } = &mut t.notify {
            let i =
                host_tids
                    .iter()
                    .position(|h| h == tid)
                    .ok_or_else(|| DumpError::Unsupported {
                        pid,
                        resource: format!("POSIX timer {}", t.id),
                        reason: format!("its target thread {tid} is not a thread of the process"),
                    })?;
            *tid = virt_tids.get(i).copied().unwrap_or(*tid);
        }
    }
    Ok(ProcessTimers { pid: vpid, timers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let t = parse_timers(
            "ID: 2\nsignal: 35/000000000000abcd\nnotify: signal/tid.21081\nClockID: 7\nID: 1\nsignal: 14/0000000000000000\nnotify: signal/pid.21081\nClockID: 0\nID: 0\nsignal: 0/0000000000000000\nnotify: none/pid.5\nClockID: 1\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].id, t[0].signo, t[0].sigev_value, t[0].clockid),
            (2, 35, 0xabcd, 7)
        );
        assert_eq!(t[0].notify, TimerNotify::ThreadId { tid: 21081 });
        assert_eq!(t[1].notify, TimerNotify::Signal);
        assert_eq!(t[2].notify, TimerNotify::None);
        assert!(parse_timers("signal: 1/0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
    }
}
