//! Event descriptors: eventfd, signalfd, timerfd, inotify, and the queries the dumper needs
//! about them and about epoll (`kcmp(KCMP_EPOLL_TFD)`, `open_by_handle_at`, `FIONREAD`).
//! nix wraps some of these only behind features the workspace does not enable, and none of
//! them with the raw flags the engine replays, so they are here as thin wrappers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::{sys_err, Pid, Result, SysError};

const NS_PER_SEC: u64 = 1_000_000_000;

fn owned(r: libc::c_long, op: &'static str) -> Result<OwnedFd> {
    let fd = Errno::result(r).map_err(sys_err(op))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / NS_PER_SEC) as libc::time_t,
        tv_nsec: (ns % NS_PER_SEC) as libc::c_long,
    }
}

fn nanos(ts: &libc::timespec) -> u64 {
    (ts.tv_sec.max(0) as u64) * NS_PER_SEC + ts.tv_nsec.max(0) as u64
}

/// `eventfd2(2)` with a zero counter and raw `EFD_*` flags.
///
/// # References
/// - [eventfd(2)](https://man7.org/linux/man-pages/man2/eventfd.2.html)
pub fn eventfd(flags: i32) -> Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is a new descriptor or an error.
    let r = unsafe { libc::syscall(libc::SYS_eventfd2, 0, flags) };
    owned(r, "eventfd2")
}

/// `signalfd4(2)` creating a new signalfd for the signals of `mask` (bit `n - 1` = signal `n`).
///
/// # References
/// - [signalfd(2)](https://man7.org/linux/man-pages/man2/signalfd.2.html)
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd> {
    // SAFETY: the kernel reads exactly 8 bytes (the size passed) from `mask`, which lives on
    // our stack for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    owned(r, "signalfd4")
}

/// `timerfd_create(2)`.
///
/// # References
/// - [timerfd_create(2)](https://man7.org/linux/man-pages/man2/timerfd_create.2.html)
pub fn timerfd_create(clockid: i32, flags: i32) -> Result<OwnedFd> {
    // SAFETY: integer arguments only; the result is a new descriptor or an error.
    let r = unsafe { libc::syscall(libc::SYS_timerfd_create, clockid, flags) };
    owned(r, "timerfd_create")
}

/// `timerfd_settime(2)`: arms (or, with both zero, disarms) the timer. `value_ns` is relative
/// unless `flags` holds `TFD_TIMER_ABSTIME`.
pub fn timerfd_settime(fd: impl AsFd, flags: i32, value_ns: u64, interval_ns: u64) -> Result<()> {
    let spec = libc::itimerspec {
        it_interval: timespec(interval_ns),
        it_value: timespec(value_ns),
    };
    // SAFETY: the kernel reads one itimerspec from `spec` (ours, on the stack); the old
    // value pointer is null; `fd` is borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timerfd_settime,
            fd.as_fd().as_raw_fd(),
            flags,
            &spec as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
    Errno::result(r).map_err(sys_err("timerfd_settime"))?;
    Ok(())
}

/// `timerfd_gettime(2)`: (time to the next expiry, interval), in nanoseconds. On a periodic
/// timer that expired, the kernel first moves it forward and counts the expirations in its
/// ticks, exactly what a `read` would find (nothing is consumed).
pub fn timerfd_gettime(fd: impl AsFd) -> Result<(u64, u64)> {
    let mut spec = libc::itimerspec {
        it_interval: timespec(0),
        it_value: timespec(0),
    };
    // SAFETY: the kernel writes one itimerspec into `spec`, which is ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timerfd_gettime,
            fd.as_fd().as_raw_fd(),
            &mut spec as *mut libc::itimerspec,
        )
    };
    Errno::result(r).map_err(sys_err("timerfd_gettime"))?;
    Ok((nanos(&spec.it_value), nanos(&spec.it_interval)))
}

/// `ioctl(TFD_IOC_SET_TICKS)`: sets the count of expirations not yet read (needs
/// `CONFIG_CHECKPOINT_RESTORE`; `ENOTTY` without it).
pub fn timerfd_set_ticks(fd: impl AsFd, ticks: u64) -> Result<()> {
    // _IOW('T', 0, __u64)
    const TFD_IOC_SET_TICKS: libc::c_ulong = (1 << 30) | (8 << 16) | ((b'T' as libc::c_ulong) << 8);
    // SAFETY: this ioctl reads one u64 from the pointer, which points at our local.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            TFD_IOC_SET_TICKS as _,
            &ticks as *const u64,
        )
    };
    Errno::result(r).map_err(sys_err("ioctl(TFD_IOC_SET_TICKS)"))?;
    Ok(())
}

/// `clock_gettime(2)` of `clockid`, in nanoseconds.
pub fn clock_now_ns(clockid: i32) -> Result<u64> {
    let mut ts = timespec(0);
    // SAFETY: the kernel writes one timespec into `ts`, which is ours.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    Errno::result(r).map_err(sys_err("clock_gettime"))?;
    Ok(nanos(&ts))
}

/// `inotify_init1(2)`.
///
/// # References
/// - [inotify_init1(2)](https://man7.org/linux/man-pages/man2/inotify_init1.2.html)
pub fn inotify_init1(flags: i32) -> Result<OwnedFd> {
    // SAFETY: integer argument only; the result is a new descriptor or an error.
    let r = unsafe { libc::inotify_init1(flags) };
    owned(r as libc::c_long, "inotify_init1")
}

/// `inotify_add_watch(2)`: the watch descriptor.
pub fn inotify_add_watch(fd: impl AsFd, path: &str, mask: u32) -> Result<i32> {
    let c = CString::new(path).map_err(|_| SysError::Invalid {
        op: "inotify_add_watch",
        reason: format!("path {path:?} holds a NUL byte"),
    })?;
    // SAFETY: `c` is a NUL-terminated string alive for the call; `fd` is borrowed.
    let r = unsafe { libc::inotify_add_watch(fd.as_fd().as_raw_fd(), c.as_ptr(), mask) };
    Errno::result(r).map_err(sys_err("inotify_add_watch"))
}

/// `inotify_rm_watch(2)`.
pub fn inotify_rm_watch(fd: impl AsFd, wd: i32) -> Result<()> {
    // SAFETY: integer arguments; `fd` is borrowed for the call.
    let r = unsafe { libc::inotify_rm_watch(fd.as_fd().as_raw_fd(), wd) };
    Errno::result(r).map_err(sys_err("inotify_rm_watch"))?;
    Ok(())
}

/// `ioctl(FIONREAD)`: bytes ready to be read (queued inotify events, ...).
pub fn bytes_readable(fd: impl AsFd) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at our local.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &mut n as *mut i32) };
    Errno::result(r).map_err(sys_err("ioctl(FIONREAD)"))?;
    Ok(n.max(0) as usize)
}

/// `open_by_handle_at(2)`: opens the file a handle (as `/proc/PID/fdinfo` prints it for an
/// inotify watch) names, on the file system of `mount_fd`. Needs `CAP_DAC_READ_SEARCH`.
///
/// # References
/// - [open_by_handle_at(2)](https://man7.org/linux/man-pages/man2/open_by_handle_at.2.html)
pub fn open_by_handle_at(
    mount_fd: impl AsFd,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> Result<OwnedFd> {
    const MAX_HANDLE_SZ: usize = 128;
    if handle.len() > MAX_HANDLE_SZ {
        return Err(SysError::Invalid {
            op: "open_by_handle_at",
            reason: format!("a handle of {} bytes is longer than 128", handle.len()),
        });
    }
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; MAX_HANDLE_SZ],
    }
    let mut buf = FileHandle {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    buf.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `buf` is a complete struct file_handle whose handle_bytes (<= 128) fits in its
    // f_handle; the kernel only reads it. `mount_fd` is borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_fd().as_raw_fd(),
            &buf as *const FileHandle,
            flags,
        )
    };
    owned(r, "open_by_handle_at")
}

/// `kcmp(2)` with `KCMP_EPOLL_TFD`: whether descriptor `fd` of `pid` is the file registered
/// as target `tfd` in the epoll instance at `epfd` of `pid` (the registration keyed by that
/// number). `Ok(false)` when `fd` is another file, or not open, or no such registration.
///
/// # References
/// - [kcmp(2)](https://man7.org/linux/man-pages/man2/kcmp.2.html)
pub fn kcmp_epoll_target(pid: Pid, fd: i32, epfd: i32, tfd: i32) -> Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    #[repr(C)]
    struct KcmpEpollSlot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = KcmpEpollSlot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    // SAFETY: the kernel reads one kcmp_epoll_slot from `slot`, which lives on our stack for
    // the call; the other arguments are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid.as_raw(),
            pid.as_raw(),
            KCMP_EPOLL_TFD,
            fd as libc::c_ulong,
            &slot as *const KcmpEpollSlot,
        )
    };
    match Errno::result(r) {
        Ok(v) => Ok(v == 0),
        Err(Errno::EBADF) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(sys_err("kcmp(KCMP_EPOLL_TFD)")(e)),
    }
}
