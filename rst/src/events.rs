//! Event descriptors, opened in the restorer (or, for a tree with namespaces of its own, in its
//! root) like every description, then inherited:
//!
//! - eventfd: created with its `EFD_SEMAPHORE` mode, its counter written back (a write adds up
//!   to 2^64 - 2, more than the `eventfd()` initial value can hold).
//! - signalfd: created with its mask.
//! - timerfd: created on its clock and armed with the time left to its next expiry and its
//!   interval, relative. An absolute timer (`TFD_TIMER_ABSTIME`) stays absolute: on a wall
//!   clock (`CLOCK_REALTIME[_ALARM]`) at its dumped deadline; on the per-boot clocks
//!   (`MONOTONIC`, `BOOTTIME`, whose values mean nothing on another boot or host) at now +
//!   the time that was left. `TFD_TIMER_CANCEL_ON_SET` is kept. Expirations not read yet are
//!   set back with `TFD_IOC_SET_TICKS`.
//! - epoll: created empty; its registrations are keyed by the targets' numbers in a process,
//!   so they are made in that process once its descriptors are installed
//!   ([`register_epoll_targets`], remote `epoll_ctl`). Readiness is found again by the
//!   kernel when each target is added; an edge-triggered event that was already reported and
//!   is still true is reported once more. A `EPOLLONESHOT` registration that already fired
//!   (disabled: its events read back as `EPOLLONESHOT` alone) comes back waiting for
//!   `EPOLLERR | EPOLLHUP`, which `epoll_ctl` adds to every registration; only an
//!   `epoll_wait` delivering it could disable it again.
//! - inotify: created, then each watch added again by path in increasing watch-descriptor
//!   order. The kernel hands out watch descriptors one after another, never reusing one until
//!   it wraps, so a gap before a dumped number is skipped by adding and removing a watch on a
//!   pipe of our own: every watch gets its dumped number. The next number the process gets
//!   follows its highest live watch, which may be lower than before the dump (numbers of
//!   watches removed after the highest live one are unknown). Events queued when dumped are
//!   lost (see [`images_format::events::Inotify`]).

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use images_format::events::{Epoll, EventFd, Inotify, SignalFd, TimerFd};
use images_format::files::{FdTable, FileKind, FilesImage};
use sys::remote::{Call, RemoteTask};

use crate::arena::Arena;
use crate::RestoreError;

const TFD_TIMER_ABSTIME: u32 = 1;
/// Watch-descriptor gaps filled before giving up (each costs two syscalls).
const MAX_WD_GAP_FILL: i64 = 1 << 16;

fn err(id: u32, what: &str, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Files(format!("file description {id}: {what}: {e}"))
}

/// Opens an event descriptor of description `id`; `None` when `kind` is another kind.
pub fn open(id: u32, kind: &FileKind) -> Result<Option<OwnedFd>, RestoreError> {
    Ok(Some(match kind {
        FileKind::EventFd(e) => open_eventfd(id, e)?,
        FileKind::SignalFd(s) => open_signalfd(id, s)?,
        FileKind::TimerFd(t) => open_timerfd(id, t)?,
        FileKind::Epoll(e) => open_epoll(id, e)?,
        FileKind::Inotify(i) => open_inotify(id, i)?,
        _ => return Ok(None),
    }))
}

fn open_eventfd(id: u32, e: &EventFd) -> Result<OwnedFd, RestoreError> {
    let flags = libc::EFD_CLOEXEC | if e.semaphore { libc::EFD_SEMAPHORE } else { 0 };
    let fd = sys::events::eventfd(flags).map_err(|x| err(id, "eventfd", x))?;
    if e.count != 0 {
        nix::unistd::write(&fd, &e.count.to_ne_bytes())
            .map_err(|x| err(id, &format!("eventfd counter {}", e.count), x))?;
    }
    Ok(fd)
}

fn open_signalfd(id: u32, s: &SignalFd) -> Result<OwnedFd, RestoreError> {
    sys::events::signalfd(s.mask, libc::SFD_CLOEXEC)
        .map_err(|x| err(id, &format!("signalfd of mask {:#018x}", s.mask), x))
}

fn open_timerfd(id: u32, t: &TimerFd) -> Result<OwnedFd, RestoreError> {
    let fd = sys::events::timerfd_create(t.clockid, libc::TFD_CLOEXEC)
        .map_err(|x| err(id, &format!("timerfd on clock {}", t.clockid), x))?;
    // A periodic timer is never left with 0 to go (that would disarm it).
    let value = if t.value_ns == 0 && t.interval_ns != 0 {
        1
    } else {
        t.value_ns
    };
    if value != 0 {
        let (flags, value) = if t.settime_flags & TFD_TIMER_ABSTIME == 0 {
            (t.settime_flags, value)
        } else if let Some(deadline) = t.realtime_deadline_ns {
            (t.settime_flags, deadline)
        } else {
            let now = sys::events::clock_now_ns(t.clockid)
                .map_err(|x| err(id, &format!("clock {}", t.clockid), x))?;
            (t.settime_flags, now + value)
        };
        sys::events::timerfd_settime(&fd, flags as i32, value, t.interval_ns).map_err(|x| {
            err(
                id,
                &format!(
                    "timerfd_settime(flags {flags:#o}, value {value} ns, interval {} ns)",
                    t.interval_ns
                ),
                x,
            )
        })?;
    }
    if t.ticks != 0 {
        sys::events::timerfd_set_ticks(&fd, t.ticks).map_err(|x| {
            err(
                id,
                &format!(
                    "{} expirations not read yet (TFD_IOC_SET_TICKS needs a kernel with \
                     CONFIG_CHECKPOINT_RESTORE)",
                    t.ticks
                ),
                x,
            )
        })?;
    }
    Ok(fd)
}

fn open_epoll(id: u32, _e: &Epoll) -> Result<OwnedFd, RestoreError> {
    use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags};
    Ok(NixEpoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(|x| err(id, "epoll_create1", x))?
        .0)
}

fn open_inotify(id: u32, i: &Inotify) -> Result<OwnedFd, RestoreError> {
    let fd =
        sys::events::inotify_init1(libc::IN_CLOEXEC).map_err(|x| err(id, "inotify_init1", x))?;
    let mut watches: Vec<_> = i.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    // Gaps are skipped with watches on a pipe of our own, which nothing else watches.
    let (filler, _filler_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|x| err(id, "pipe for inotify gaps", x))?;
    let filler_path = format!("/proc/self/fd/{}", filler.as_raw_fd());
    let mut next: i64 = 1;
    let mut filled: i64 = 0;
    for w in watches {
        let wd = i64::from(w.wd);
        if wd < next {
            return Err(err(
                id,
                "inotify",
                format!("watch descriptor {} twice", w.wd),
            ));
        }
        if wd - next + filled > MAX_WD_GAP_FILL {
            return Err(err(
                id,
                &format!("inotify watch {} on {}", w.wd, w.path),
                format!("more than {MAX_WD_GAP_FILL} unused watch descriptors before it"),
            ));
        }
        while next < wd {
            let gap = sys::events::inotify_add_watch(&fd, &filler_path, libc::IN_OPEN)
                .map_err(|x| err(id, "inotify watch filling a gap", x))?;
            sys::events::inotify_rm_watch(&fd, gap)
                .map_err(|x| err(id, "inotify watch filling a gap", x))?;
            next = i64::from(gap) + 1;
            filled += 1;
        }
        let got = sys::events::inotify_add_watch(&fd, &w.path, w.mask).map_err(|x| {
            err(
                id,
                &format!("inotify watch on {} (mask {:#x})", w.path, w.mask),
                x,
            )
        })?;
        if got != w.wd {
            return Err(err(
                id,
                &format!("inotify watch on {}", w.path),
                format!(
                    "got watch descriptor {got} instead of {} (is the same file watched twice, \
                     through two paths?)",
                    w.wd
                ),
            ));
        }
        next = wd + 1;
    }
    // Drain the IN_IGNORED events that removing the gap watches queued.
    if filled > 0 {
        drain(&fd);
    }
    Ok(fd)
}

fn drain(fd: &OwnedFd) {
    let nonblock = nix::fcntl::OFlag::O_NONBLOCK;
    let _ = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblock));
    let mut buf = [0u8; 4096];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// In process `table.pid`, once its descriptors are installed: the registrations of every
/// epoll description it is the first holder of (in image order, as the dump chose it), by
/// remote `epoll_ctl` on its own descriptor numbers. Nested epolls are just targets.
pub fn register_epoll_targets(
    rt: &mut RemoteTask,
    files: &FilesImage,
    table: &FdTable,
) -> Result<(), RestoreError> {
    let mut done = HashSet::new();
    let mut a = Arena::new();
    let mut calls = Vec::new();
    let mut what = Vec::new();
    for e in &table.fds {
        let Some(d) = files.descs.iter().find(|d| d.id == e.desc) else {
            continue;
        };
        let FileKind::Epoll(ep) = &d.kind else {
            continue;
        };
        let first = files
            .tables
            .iter()
            .find(|t| t.fds.iter().any(|f| f.desc == d.id))
            .map(|t| t.pid);
        if first != Some(table.pid) || !done.insert(d.id) {
            continue;
        }
        for t in &ep.targets {
            if !table.fds.iter().any(|f| f.fd == t.fd) {
                return Err(RestoreError::Task {
                    pid: table.pid,
                    what: format!("epoll registration of fd {} in fd {}", t.fd, e.fd),
                    reason: "the process has no such descriptor in the image".into(),
                });
            }
            // struct epoll_event is packed on x86-64: u32 events, u64 data.
            let mut ev = Vec::with_capacity(12);
            ev.extend_from_slice(&t.events.to_le_bytes());
            ev.extend_from_slice(&t.data.to_le_bytes());
            if !a.fits(ev.len()) || calls.len() >= 256 {
                run(rt, &calls, &what, table.pid)?;
                calls.clear();
                what.clear();
                a = Arena::new();
            }
            let addr = a.put(rt, &ev)?;
            calls.push(Call::new(
                "epoll_ctl",
                libc::SYS_epoll_ctl,
                &[e.fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, addr],
            ));
            what.push(format!(
                "epoll registration of fd {} (events {:#x}, data {:#x}) in fd {}",
                t.fd, t.events, t.data, e.fd
            ));
        }
    }
    run(rt, &calls, &what, table.pid)
}

fn run(rt: &mut RemoteTask, calls: &[Call], what: &[String], pid: i32) -> Result<(), RestoreError> {
    let results = rt.batch_raw(calls)?;
    for (r, w) in results.iter().zip(what) {
        if (-4095..0).contains(r) {
            return Err(RestoreError::Task {
                pid,
                what: w.clone(),
                reason: nix::errno::Errno::from_raw(-*r as i32).desc().into(),
            });
        }
    }
    Ok(())
}
