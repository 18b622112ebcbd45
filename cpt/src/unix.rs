//! Unix sockets: each socket the tree holds, with its name, connection, options and queued
//! data ([`UnixSocket`]).
//!
//! The kernel's view of every unix socket of the tree's network namespace comes from
//! `sock_diag` ([`sys::unix_sock::unix_diag_dump`], run on a thread inside that namespace):
//! peers by inode, the clients waiting in a listener's backlog, queue lengths, names. The
//! socket itself (`pidfd_getfd`) gives its options and its queue, read with `MSG_PEEK` and
//! `SO_PEEK_OFF` so that the tree still reads every byte afterwards.
//!
//! Refused, each naming the socket and its task: a peer (or a waiting client, or a listener)
//! outside the dumped tree; descriptors in flight (`SCM_RIGHTS`) in a queue; data sent on a
//! connection not yet accepted (it sits on a socket no descriptor reaches, which cannot be
//! read without accepting it); a socket of another network namespace; a name relative to a
//! directory.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use images_format::files::FileKind;
use images_format::unix::{
    Binding, SocketFile, UnixMessage, UnixName, UnixOptions, UnixSocket, UnixState, UnixType,
    MAX_QUEUE_BYTES,
};
use nix::sched::CloneFlags;
use sys::unix_sock::{self, UnixDiag, STATE_LISTEN};
use sys::Pid;

use crate::DumpError;

/// Where a dumped socket came from, for the checks made once every process is dumped.
struct Dumped {
    pid: i32,
    fd: i32,
    netns: u64,
    name: Option<UnixName>,
    state: UnixState,
}

#[derive(Default)]
pub struct UnixDumper {
    /// sock_diag's sockets per network namespace (by namespace inode), by socket inode.
    tables: HashMap<u64, HashMap<u32, UnixDiag>>,
    pidfds: HashMap<i32, OwnedFd>,
    dumped: HashMap<u64, Dumped>,
}

fn sock_err(pid: i32, fd: i32, ino: u64, reason: impl Into<String>) -> DumpError {
    DumpError::Unsupported {
        pid,
        resource: format!("fd {fd} (unix socket {ino})"),
        reason: reason.into(),
    }
}

fn task_err(pid: i32, fd: i32, what: &str, e: impl std::fmt::Display) -> DumpError {
    DumpError::Task {
        pid,
        what: format!("unix socket of fd {fd}"),
        reason: format!("{what}: {e}"),
    }
}

fn name_of(d: &UnixDiag) -> Option<UnixName> {
    d.name.as_deref().and_then(UnixName::from_raw)
}

fn describe(name: &Option<UnixName>) -> String {
    match name {
        Some(n) => format!("named {n}"),
        None => "unnamed".into(),
    }
}

/// A process holding socket `ino` and at which descriptor, found by scanning /proc (only to
/// explain an error).
fn holder_of(ino: u64) -> String {
    let target = format!("socket:[{ino}]");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "held by no process found".into();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            if std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return format!(
                    "held by process {pid} ({}) as fd {}",
                    comm.trim(),
                    f.file_name().to_string_lossy()
                );
            }
        }
    }
    "held by no process found (a connection not yet accepted, or a socket in flight)".into()
}

impl UnixDumper {
    fn table(&mut self, pid: i32, netns: u64) -> Result<&HashMap<u32, UnixDiag>, DumpError> {
        if let Entry::Vacant(slot) = self.tables.entry(netns) {
            let list = crate::ns::in_namespace(pid, "net", CloneFlags::CLONE_NEWNET, || {
                unix_sock::unix_diag_dump().map_err(DumpError::from)
            })?;
            slot.insert(list.into_iter().map(|d| (d.ino, d)).collect());
        }
        Ok(&self.tables[&netns])
    }

    /// The socket behind `fd` of `pid` (inode `ino`) if it is a unix socket; `None` for
    /// other families, which the caller handles.
    pub fn dump_socket(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u64,
    ) -> Result<Option<FileKind>, DumpError> {
        if let Entry::Vacant(slot) = self.pidfds.entry(pid) {
            slot.insert(sys::syscalls::pidfd_open(Pid::from_raw(pid))?);
        }
        let sock = sys::syscalls::pidfd_getfd(&self.pidfds[&pid], fd)?;
        let family = unix_sock::getsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|e| task_err(pid, fd, "SO_DOMAIN", e))?;
        if family != libc::AF_UNIX {
            return Ok(None);
        }
        let ns_path = format!("/proc/{pid}/ns/net");
        let netns = std::fs::metadata(&ns_path)
            .map_err(|source| DumpError::Io {
                op: "stat",
                path: ns_path.into(),
                source,
            })?
            .ino();
        let table = self.table(pid, netns)?;
        let d = table.get(&(ino as u32)).cloned().ok_or_else(|| {
            sock_err(
                pid,
                fd,
                ino,
                "sock_diag does not list it in the task's network namespace: it belongs to another network namespace",
            )
        })?;
        let sock_type = match d.sock_type as i32 {
            libc::SOCK_STREAM => UnixType::Stream,
            libc::SOCK_DGRAM => UnixType::Dgram,
            libc::SOCK_SEQPACKET => UnixType::SeqPacket,
            t => return Err(sock_err(pid, fd, ino, format!("unknown socket type {t}"))),
        };
        let name = name_of(&d);
        // A connected socket showing a name that a listener of its type owns is a connection
        // that listener accepted (it shows, but does not own, the name, and for a path even
        // the listener's file).
        let accepted = d.state != STATE_LISTEN
            && d.sock_type as i32 != libc::SOCK_DGRAM
            && d.name.is_some()
            && table.values().any(|o| {
                o.ino != d.ino
                    && o.state == STATE_LISTEN
                    && o.sock_type == d.sock_type
                    && o.name == d.name
            });
        let binding = match name.clone() {
            None => Binding::Unnamed,
            Some(UnixName::Path(p)) if !p.starts_with(b"/") => {
                return Err(sock_err(
                    pid,
                    fd,
                    ino,
                    format!(
                        "its name {} is a path relative to the directory it was bound from, which is not known",
                        String::from_utf8_lossy(&p)
                    ),
                ));
            }
            Some(n) if accepted => Binding::Accepted { name: n },
            Some(UnixName::Path(p)) => {
                // The socket file, if the path still leads to the inode the socket bound.
                let path = format!("/proc/{pid}/root{}", String::from_utf8_lossy(&p));
                let file = d.vfs.and_then(|(vfs_ino, _)| {
                    std::fs::symlink_metadata(&path)
                        .ok()
                        .filter(|m| m.ino() == vfs_ino as u64 && m.file_type_is_socket())
                        .map(|m| SocketFile {
                            mode: m.mode() & 0o7777,
                            uid: m.uid(),
                            gid: m.gid(),
                        })
                });
                Binding::Bound {
                    name: UnixName::Path(p),
                    file,
                }
            }
            Some(n) => Binding::Bound {
                name: n,
                file: None,
            },
        };
        let waiting_on = table
            .values()
            .find(|l| l.state == STATE_LISTEN && l.icons.contains(&d.ino))
            .map(|l| (l.ino as u64, name_of(l)));
        let state = if d.state == STATE_LISTEN {
            UnixState::Listening {
                backlog: d.rqlen.map_or(0, |r| r.1),
                pending: d.icons.iter().map(|&i| i as u64).collect(),
            }
        } else if let Some((listener, lname)) = &waiting_on {
            let unread = d.rqlen.map_or(0, |r| r.1);
            if unread > 0 {
                return Err(sock_err(
                    pid,
                    fd,
                    ino,
                    format!(
                        "it sent {unread} bytes (with overhead) on a connection that listener {listener} ({}) has not accepted yet: that data cannot be read without accepting the connection",
                        describe(lname)
                    ),
                ));
            }
            UnixState::Pending {
                listener: *listener,
            }
        } else {
            match d.peer {
                None => UnixState::Unconnected,
                Some(0) => UnixState::PeerClosed,
                Some(p) => UnixState::Connected { peer: p as u64 },
            }
        };
        let options = read_options(&sock).map_err(|e| task_err(pid, fd, "socket options", e))?;
        let queue = if matches!(state, UnixState::Listening { .. }) {
            Vec::new()
        } else {
            read_queue(&sock, sock_type, &d, options.peek_off)
                .map_err(|e| sock_err(pid, fd, ino, e))?
        };
        self.dumped.insert(
            ino,
            Dumped {
                pid,
                fd,
                netns,
                name,
                state: state.clone(),
            },
        );
        Ok(Some(FileKind::UnixSocket(Box::new(UnixSocket {
            ino,
            sock_type,
            binding,
            state,
            shutdown: d.shutdown,
            options,
            queue,
        }))))
    }

    /// Once every process is dumped: every peer, waiting client and listener must be in the
    /// tree, and no socket outside it may be connected to one inside.
    pub fn finish(&self) -> Result<(), DumpError> {
        let mut inos: Vec<&u64> = self.dumped.keys().collect();
        inos.sort();
        for ino in inos {
            let s = &self.dumped[ino];
            let outside = |other: u64, what: &str| {
                let table = &self.tables[&s.netns];
                let oname = table.get(&(other as u32)).and_then(name_of);
                sock_err(
                    s.pid,
                    s.fd,
                    *ino,
                    format!(
                        "it ({}, {}) {what} socket {other} ({}, {}) outside the dumped tree; connections to outside peers are not supported",
                        describe(&s.name),
                        match &s.state {
                            UnixState::Listening { .. } => "listening",
                            _ => "connected",
                        },
                        describe(&oname),
                        holder_of(other)
                    ),
                )
            };
            match &s.state {
                UnixState::Connected { peer } if !self.dumped.contains_key(peer) => {
                    return Err(outside(*peer, "is connected to"));
                }
                UnixState::Pending { listener } if !self.dumped.contains_key(listener) => {
                    return Err(outside(*listener, "waits to be accepted by"));
                }
                UnixState::Listening { pending, .. } => {
                    if let Some(c) = pending.iter().find(|c| !self.dumped.contains_key(c)) {
                        return Err(outside(*c, "has a pending connection from"));
                    }
                }
                _ => {}
            }
        }
        // Sockets outside the tree connected to one inside (a datagram link is one-way).
        for (netns, table) in &self.tables {
            for d in table.values() {
                let (Some(peer), true) = (d.peer, d.ino != 0) else {
                    continue;
                };
                let Some(s) = self.dumped.get(&(peer as u64)) else {
                    continue;
                };
                if s.netns == *netns && !self.dumped.contains_key(&(d.ino as u64)) {
                    return Err(sock_err(
                        s.pid,
                        s.fd,
                        peer as u64,
                        format!(
                            "socket {} ({}, {}) outside the dumped tree is connected to it; connections to outside peers are not supported",
                            d.ino,
                            describe(&name_of(d)),
                            holder_of(d.ino as u64)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

trait SocketFileType {
    fn file_type_is_socket(&self) -> bool;
}

impl SocketFileType for std::fs::Metadata {
    fn file_type_is_socket(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_socket()
    }
}

fn read_options(sock: &OwnedFd) -> Result<UnixOptions, sys::SysError> {
    let get = |opt| unix_sock::getsockopt_int(sock, libc::SOL_SOCKET, opt);
    let timeout = |opt| -> Result<u64, sys::SysError> {
        let tv: nix::sys::time::TimeVal = match opt {
            libc::SO_RCVTIMEO => {
                nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::ReceiveTimeout)
            }
            _ => nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::SendTimeout),
        }
        .map_err(|source| sys::SysError::Syscall {
            op: "getsockopt(timeout)",
            source,
        })?;
        Ok(tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64)
    };
    Ok(UnixOptions {
        sndbuf: get(libc::SO_SNDBUF)? as u32,
        rcvbuf: get(libc::SO_RCVBUF)? as u32,
        passcred: get(libc::SO_PASSCRED)? != 0,
        passsec: get(libc::SO_PASSSEC)? != 0,
        reuseaddr: get(libc::SO_REUSEADDR)? != 0,
        reuseport: get(libc::SO_REUSEPORT).unwrap_or(0) != 0,
        peek_off: get(libc::SO_PEEK_OFF)?,
        rcvtimeo_us: timeout(libc::SO_RCVTIMEO)?,
        sndtimeo_us: timeout(libc::SO_SNDTIMEO)?,
    })
}

/// Reads the socket's queue without consuming it: `SO_PEEK_OFF` from 0 makes each
/// `MSG_PEEK` start where the previous one ended (the next bytes of a stream, the next
/// message of a datagram queue). The task's own peek offset is put back afterwards.
fn read_queue(
    sock: &OwnedFd,
    ty: UnixType,
    d: &UnixDiag,
    saved_peek_off: i32,
) -> Result<Vec<UnixMessage>, String> {
    let expected = d.rqlen.map_or(0, |r| r.0);
    if ty == UnixType::Stream && expected == 0 {
        return Ok(Vec::new());
    }
    let set_off = |v: i32| {
        unix_sock::setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, v)
            .map_err(|e| format!("SO_PEEK_OFF: {e}"))
    };
    set_off(0)?;
    let r = peek_all(sock, ty, d, expected);
    set_off(saved_peek_off)?;
    r
}

fn peek_all(
    sock: &OwnedFd,
    ty: UnixType,
    d: &UnixDiag,
    expected: u32,
) -> Result<Vec<UnixMessage>, String> {
    let datagram = ty != UnixType::Stream;
    let mut buf = vec![0u8; if datagram { 256 << 10 } else { 1 << 20 }];
    let mut out: Vec<UnixMessage> = Vec::new();
    let mut total: u64 = 0;
    // After a shutdown or a closed peer, an empty queue reads as end of file (0), not EAGAIN.
    let eof_possible = d.shutdown & 1 != 0 || d.peer == Some(0);
    while let Some(m) = unix_sock::peek_message(sock, &mut buf, datagram)
        .map_err(|e| format!("reading its queue: {e}"))?
    {
        if m.fds_in_flight > 0 {
            return Err(format!(
                "its receive queue holds {} descriptor(s) in flight (SCM_RIGHTS), which cannot be dumped",
                m.fds_in_flight
            ));
        }
        if datagram && m.full_len > m.len {
            // A larger message: peek it again, whole, from the same offset.
            let off = unix_sock::getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
                .map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
            unix_sock::setsockopt_int(
                sock,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                off - m.len as i32,
            )
            .map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
            if m.full_len as u64 > MAX_QUEUE_BYTES {
                return Err(format!("a queued message of {} bytes", m.full_len));
            }
            buf.resize(m.full_len, 0);
            continue;
        }
        if m.len == 0 && (ty == UnixType::Stream || (eof_possible && total >= expected as u64)) {
            break;
        }
        total += m.len as u64;
        if total > MAX_QUEUE_BYTES {
            return Err(format!(
                "more than {MAX_QUEUE_BYTES} bytes queued, the most the image keeps per socket"
            ));
        }
        let from = m.from.as_deref().and_then(UnixName::from_raw);
        match out.last_mut() {
            Some(last) if !datagram => last.data.extend_from_slice(&buf[..m.len]),
            _ => out.push(UnixMessage {
                data: buf[..m.len].to_vec(),
                from: if datagram { from } else { None },
            }),
        }
        if !datagram && total >= expected as u64 {
            break;
        }
    }
    if ty != UnixType::Dgram && total != expected as u64 {
        return Err(format!(
            "read {total} queued bytes where sock_diag counts {expected}"
        ));
    }
    Ok(out)
}
