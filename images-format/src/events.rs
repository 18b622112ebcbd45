//! Event descriptors and POSIX timers.
//!
//! The descriptors (eventfd, signalfd, timerfd, epoll, inotify) are open file descriptions:
//! their state rides in [`crate::files::FileKind`] variants holding the structs below. POSIX
//! timers belong to a process, not to a descriptor: they have their own record,
//! [`TimersImage`] (file `timers`, written only when some process has timers):
//!
//! ```text
//! timers: FileHeader | postcard(TimersImage { processes: [ProcessTimers { pid, timers: [PosixTimer] }] })
//! ```

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

/// An eventfd: its counter and whether reads take one at a time (`EFD_SEMAPHORE`).
/// Nonblocking is in the description's flags.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EventFd {
    pub count: u64,
    pub semaphore: bool,
}

/// A signalfd: the signals it reads (bit `n - 1` = signal `n`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignalFd {
    pub mask: u64,
}

/// A timerfd.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TimerFd {
    /// `CLOCK_*` id the timer counts on.
    pub clockid: i32,
    /// `TFD_TIMER_ABSTIME` / `TFD_TIMER_CANCEL_ON_SET` as last given to `timerfd_settime`.
    pub settime_flags: u32,
    /// Time to the next expiry when dumped (0: disarmed, or a one-shot that expired).
    pub value_ns: u64,
    pub interval_ns: u64,
    /// Expirations not read yet.
    pub ticks: u64,
    /// For an absolute timer on a wall clock (`CLOCK_REALTIME`, `CLOCK_REALTIME_ALARM`): the
    /// absolute expiry, kept as is by a restore (wall time means the same on any host).
    pub realtime_deadline_ns: Option<u64>,
}

/// One registration of an epoll instance, as `epoll_ctl(EPOLL_CTL_ADD, fd, {events, data})`
/// made it. `fd` is the target's number in the process that restores the registrations: the
/// first one (in image order) holding the epoll description.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollTarget {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// An epoll instance and everything registered in it (other epolls included).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Epoll {
    pub targets: Vec<EpollTarget>,
}

/// One inotify watch: its descriptor number, the watched path (as the tree sees it) and mask
/// (`IN_*` events plus `IN_ONESHOT` / `IN_EXCL_UNLINK`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub path: String,
    pub mask: u32,
}

/// An inotify instance. Events queued but not read when dumped are not kept (the kernel
/// offers no way to peek at them nor to queue them again); their byte count is recorded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inotify {
    pub watches: Vec<InotifyWatch>,
    pub lost_queued_bytes: u64,
}

/// How a POSIX timer notifies (`sigev_notify`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerNotify {
    /// `SIGEV_NONE`.
    None,
    /// `SIGEV_SIGNAL` to the process.
    Signal,
    /// `SIGEV_THREAD` as the kernel sees it (a signal to the process).
    Thread,
    /// `SIGEV_SIGNAL | SIGEV_THREAD_ID` to one thread, by TID as the image records it.
    ThreadId { tid: i32 },
}

/// A POSIX timer (`timer_create`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PosixTimer {
    /// The kernel's timer id (what `timer_t` holds for the process).
    pub id: i32,
    pub clockid: i32,
    pub signo: i32,
    /// `sigev_value` (as a 64-bit pointer-sized value).
    pub sigev_value: u64,
    pub notify: TimerNotify,
    /// Time to the next expiry when dumped (0: disarmed).
    pub value_ns: u64,
    pub interval_ns: u64,
    /// `timer_getoverrun()` when dumped: the overrun of the last delivered expiration.
    pub overrun: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessTimers {
    pub pid: i32,
    pub timers: Vec<PosixTimer>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct TimersImage {
    pub processes: Vec<ProcessTimers>,
}

impl Image for TimersImage {
    const KIND: ImageKind = ImageKind::Timers;
    const MAX_PAYLOAD: u64 = 64 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};
    use std::path::Path;

    #[test]
    fn timers_round_trip() {
        let img = TimersImage {
            processes: vec![ProcessTimers {
                pid: 7,
                timers: vec![PosixTimer {
                    id: 3,
                    clockid: 1,
                    signo: 34,
                    sigev_value: 0xabcd,
                    notify: TimerNotify::ThreadId { tid: 9 },
                    value_ns: 5,
                    interval_ns: 6,
                    overrun: 2,
                }],
            }],
        };
        let b = encode(&img).unwrap();
        assert_eq!(decode::<TimersImage>(&b, Path::new("timers")).unwrap(), img);
    }
}
