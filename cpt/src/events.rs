//! Event descriptors: eventfd, signalfd, timerfd, epoll and inotify, read from
//! `/proc/PID/fdinfo/FD` (and, for timerfd, from the very file through `pidfd_getfd`).
//!
//! - eventfd: `eventfd-count` (hex) and `eventfd-semaphore`.
//! - signalfd: `sigmask`.
//! - timerfd: `timerfd_gettime` on the file first (on a periodic timer that expired it moves
//!   the timer forward and counts the expirations, as a read would, without consuming them),
//!   then `clockid`, `ticks` and `settime flags` from fdinfo.
//! - epoll: each `tfd: N events: E data: D` line. A registration is keyed by the target's
//!   number in the process that made it; `kcmp(KCMP_EPOLL_TFD)` checks that descriptor N of
//!   the dumping process is still the registered file, else the dump fails naming it (the
//!   restore could not make that registration again).
//! - inotify: each `inotify wd:.. ino:.. sdev:.. mask:.. f_handle:..` line; the path comes from
//!   the file handle (`open_by_handle_at` on a mount of that device in the task's mount
//!   namespace), checked against the inode and device. Queued events are not kept.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use images_format::events::{
    Epoll, EpollTarget, EventFd, Inotify, InotifyWatch, SignalFd, TimerFd,
};
use images_format::files::FileKind;
use sys::Pid;
use tracing::warn;

use crate::DumpError;

const TFD_TIMER_ABSTIME: u32 = 1;

/// The state of an anonymous-inode descriptor (`target` is its `/proc/PID/fd` link), or
/// `None` for a kind this module does not know.
pub fn kind_of(pid: i32, fd: i32, target: &str) -> Result<Option<FileKind>, DumpError> {
    let fail = |reason: String| DumpError::Unsupported {
        pid,
        resource: format!("fd {fd} ({target})"),
        reason,
    };
    let info_path = format!("/proc/{pid}/fdinfo/{fd}");
    let read_info = || {
        std::fs::read_to_string(&info_path).map_err(|source| DumpError::Io {
            op: "read",
            path: info_path.clone().into(),
            source,
        })
    };
    let kind = match target {
        "anon_inode:[eventfd]" => FileKind::EventFd(parse_eventfd(&read_info()?).map_err(fail)?),
        "anon_inode:[signalfd]" => FileKind::SignalFd(parse_signalfd(&read_info()?).map_err(fail)?),
        "anon_inode:[timerfd]" => {
            // Forward the timer first (see the module comment), then read fdinfo.
            let file = getfd(pid, fd)?;
            let (value_ns, interval_ns) = sys::events::timerfd_gettime(&file)?;
            let mut t = parse_timerfd(&read_info()?).map_err(fail)?;
            t.value_ns = value_ns;
            t.interval_ns = interval_ns;
            let wall = matches!(t.clockid, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM);
            if wall && t.settime_flags & TFD_TIMER_ABSTIME != 0 && value_ns != 0 {
                t.realtime_deadline_ns =
                    Some(sys::events::clock_now_ns(libc::CLOCK_REALTIME)? + value_ns);
            }
            FileKind::TimerFd(t)
        }
        "anon_inode:[eventpoll]" => {
            let targets = parse_epoll(&read_info()?).map_err(fail)?;
            for t in &targets {
                if !sys::events::kcmp_epoll_target(Pid::from_raw(pid), t.fd, fd, t.fd)? {
                    return Err(fail(format!(
                        "descriptor {} registered in this epoll is no longer open at that number \
                         in this process (closed or replaced after epoll_ctl), so the \
                         registration cannot be made again",
                        t.fd
                    )));
                }
            }
            FileKind::Epoll(Epoll { targets })
        }
        "anon_inode:inotify" => {
            let raw = parse_inotify(&read_info()?).map_err(fail)?;
            let mut watches = Vec::with_capacity(raw.len());
            for w in raw {
                let path = watch_path(pid, &w).map_err(|e| {
                    fail(format!(
                        "watch {} on inode {} of device {}:{}: {e}",
                        w.wd,
                        w.ino,
                        w.sdev >> 20,
                        w.sdev & 0xfffff
                    ))
                })?;
                watches.push(InotifyWatch {
                    wd: w.wd,
                    path,
                    mask: w.mask,
                });
            }
            let file = getfd(pid, fd)?;
            let queued = sys::events::bytes_readable(&file)? as u64;
            if queued > 0 {
                warn!(
                    pid,
                    fd, queued, "inotify events queued but not read are not kept in the image"
                );
            }
            FileKind::Inotify(Inotify {
                watches,
                lost_queued_bytes: queued,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

/// The very file behind descriptor `fd` of `pid`.
fn getfd(pid: i32, fd: i32) -> Result<std::os::fd::OwnedFd, DumpError> {
    let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(pid))?;
    Ok(sys::syscalls::pidfd_getfd(&pidfd, fd)?)
}

/// Value of the first `key:` line.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

pub fn parse_eventfd(text: &str) -> Result<EventFd, String> {
    let count = field(text, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or("fdinfo has no readable eventfd-count")?;
    // Kernels before 6.1 do not print eventfd-semaphore; none of them are supported hosts.
    let semaphore = field(text, "eventfd-semaphore")
        .ok_or("fdinfo has no eventfd-semaphore (kernel older than 6.1)")?
        == "1";
    Ok(EventFd { count, semaphore })
}

pub fn parse_signalfd(text: &str) -> Result<SignalFd, String> {
    let mask = field(text, "sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or("fdinfo has no readable sigmask")?;
    Ok(SignalFd { mask })
}

/// Clock, ticks and settime flags (the times come from `timerfd_gettime`).
pub fn parse_timerfd(text: &str) -> Result<TimerFd, String> {
    let num = |k: &str| field(text, k).ok_or(format!("fdinfo has no {k}"));
    Ok(TimerFd {
        clockid: num("clockid")?
            .parse()
            .map_err(|_| "bad clockid".to_string())?,
        settime_flags: u32::from_str_radix(num("settime flags")?, 8)
            .map_err(|_| "bad settime flags".to_string())?,
        ticks: num("ticks")?.parse().map_err(|_| "bad ticks".to_string())?,
        value_ns: 0,
        interval_ns: 0,
        realtime_deadline_ns: None,
    })
}

/// `tfd: %8d events: %8x data: %16llx  pos:.. ino:.. sdev:..` lines.
pub fn parse_epoll(text: &str) -> Result<Vec<EpollTarget>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| {
            words
                .iter()
                .position(|w| *w == k)
                .and_then(|i| words.get(i + 1).copied())
                .ok_or(format!("epoll line without {k}: {line}"))
        };
        out.push(EpollTarget {
            fd: after("tfd:")?
                .parse()
                .map_err(|_| format!("bad tfd in {line}"))?,
            events: u32::from_str_radix(after("events:")?, 16)
                .map_err(|_| format!("bad events in {line}"))?,
            data: u64::from_str_radix(after("data:")?, 16)
                .map_err(|_| format!("bad data in {line}"))?,
        });
    }
    Ok(out)
}

/// One `inotify ...` line of fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWatch {
    pub wd: i32,
    pub ino: u64,
    /// The kernel's dev_t (major << 20 | minor).
    pub sdev: u64,
    pub mask: u32,
    pub handle: Option<(i32, Vec<u8>)>,
}

pub fn parse_inotify(text: &str) -> Result<Vec<RawWatch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let kv: Vec<(&str, &str)> = rest
            .split_whitespace()
            .filter_map(|w| w.split_once(':'))
            .collect();
        let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let hex = |k: &str| {
            get(k)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or(format!("inotify line without a readable {k}: {line}"))
        };
        let handle = match (get("fhandle-type"), get("f_handle")) {
            (Some(t), Some(h)) if h.len() % 2 == 0 => {
                let bytes: Option<Vec<u8>> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                    .collect();
                match (i32::from_str_radix(t, 16), bytes) {
                    (Ok(t), Some(b)) => Some((t, b)),
                    _ => None,
                }
            }
            _ => None,
        };
        out.push(RawWatch {
            wd: hex("wd")? as i32,
            ino: hex("ino")?,
            sdev: hex("sdev")?,
            mask: hex("mask")? as u32,
            handle,
        });
    }
    Ok(out)
}

/// The path, as the task sees it, of the inode an inotify watch is on: opened from its file
/// handle on each mount of its device in the task's mount namespace, until one gives a path
/// that leads (from the task's root) to that very inode.
fn watch_path(pid: i32, w: &RawWatch) -> Result<String, String> {
    let (major, minor) = (w.sdev >> 20, w.sdev & 0xfffff);
    let Some((htype, handle)) = &w.handle else {
        return Err("the kernel gives no file handle for it, so its path cannot be found".into());
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("read mountinfo: {e}"))?;
    let root = format!("/proc/{pid}/root");
    let mut tried = Vec::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2] != format!("{major}:{minor}") {
            continue;
        }
        let mountpoint = crate::ns::unescape(f[4]);
        let mount_dir = format!("{root}{mountpoint}");
        let Ok(mount) = std::fs::File::open(&mount_dir) else {
            continue;
        };
        let opened = match sys::events::open_by_handle_at(&mount, *htype, handle, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) => {
                tried.push(format!("{mountpoint}: {e}"));
                continue;
            }
        };
        let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())) else {
            continue;
        };
        let path = path.to_string_lossy().into_owned();
        // The path must lead, from the task's root, to the watched inode (a disconnected
        // dentry reads as "/", a file deleted since as "... (deleted)").
        match std::fs::metadata(format!("{root}{path}")) {
            Ok(m) if m.ino() == w.ino && m.dev() == libc::makedev(major as u32, minor as u32) => {
                return Ok(path)
            }
            _ => tried.push(format!("{mountpoint}: handle opens {path}, another inode")),
        }
    }
    // File systems that give no usable handle (overlayfs without nfs_export: a VE's root):
    // look for the inode itself, breadth first from each mount of the device.
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[2] != format!("{major}:{minor}") {
            continue;
        }
        let mountpoint = crate::ns::unescape(f[4]);
        if let Some(path) = search_inode(&root, &mountpoint, w.ino) {
            return Ok(path);
        }
        tried.push(format!(
            "{mountpoint}: not found in the first {SEARCH_LIMIT} entries"
        ));
    }
    Err(if tried.is_empty() {
        "no mount of its device in the task's mount namespace".into()
    } else {
        format!("no path leads to it ({})", tried.join("; "))
    })
}

/// How many entries [`search_inode`] looks at before it gives up.
const SEARCH_LIMIT: usize = 200_000;

/// The path (as the task sees it) of inode `ino` under `mountpoint`, found breadth first
/// without following links or entering other mounts (CRIU's "irmap" does the same).
fn search_inode(root: &str, mountpoint: &str, ino: u64) -> Option<String> {
    let top = format!("{root}{mountpoint}");
    let dev = std::fs::symlink_metadata(&top).ok()?.dev();
    let mut queue =
        std::collections::VecDeque::from([mountpoint.trim_end_matches('/').to_string()]);
    let mut seen = 0usize;
    if std::fs::symlink_metadata(&top).ok()?.ino() == ino {
        return Some(if mountpoint.is_empty() {
            "/".into()
        } else {
            mountpoint.to_string()
        });
    }
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(format!("{root}{dir}")) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > SEARCH_LIMIT {
                return None;
            }
            let Ok(m) = e.metadata() else { continue };
            let path = format!("{dir}/{}", e.file_name().to_string_lossy());
            if m.ino() == ino {
                return Some(path);
            }
            // Directories of the same mount only (overlayfs reports its own device for them).
            if m.is_dir() && m.dev() == dev {
                queue.push_back(path);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signalfd_timerfd() {
        let e = parse_eventfd(
            "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:               1f\neventfd-id: 1\neventfd-semaphore: 1\n",
        )
        .unwrap();
        assert_eq!(
            e,
            EventFd {
                count: 31,
                semaphore: true
            }
        );
        assert!(parse_eventfd("eventfd-count: 1\n").is_err());
        let s = parse_signalfd("pos:\t0\nsigmask:\t0000001000000200\n").unwrap();
        assert_eq!(s.mask, (1 << 9) | (1 << 36));
        let t = parse_timerfd(
            "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (0, 5)\nit_interval: (0, 250000000)\n",
        )
        .unwrap();
        assert_eq!((t.clockid, t.ticks, t.settime_flags), (1, 3, 1));
    }

    #[test]
    fn epoll_lines() {
        let t = parse_epoll(
            "pos:\t0\nflags:\t02\ntfd:        5 events: 80000019 data:       1234567890  pos:0 ino:40e sdev:10\ntfd:       12 events:       19 data:                7  pos:0 ino:40e sdev:10\n",
        )
        .unwrap();
        assert_eq!(
            t,
            vec![
                EpollTarget {
                    fd: 5,
                    events: 0x8000_0019,
                    data: 0x12_3456_7890
                },
                EpollTarget {
                    fd: 12,
                    events: 0x19,
                    data: 7
                },
            ]
        );
        assert!(parse_epoll("tfd: x events: 1 data: 2\n").is_err());
    }

    #[test]
    fn inotify_lines() {
        let w = parse_inotify(
            "pos:\t0\ninotify wd:a ino:2e1 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e102000000000000\ninotify wd:1 ino:3c4a7 sdev:800001 mask:300 ignored_mask:0\n",
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].wd, w[0].ino, w[0].sdev, w[0].mask),
            (10, 0x2e1, 0xfe0_0000, 2)
        );
        assert_eq!(w[0].handle, Some((1, vec![0xe1, 2, 0, 0, 0, 0, 0, 0])));
        assert_eq!(w[1].handle, None);
    }
}
