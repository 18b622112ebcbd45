//! Network sockets other than unix ones: TCP and UDP over IPv4 and IPv6, NETLINK_ROUTE.
//! Each is read through the very socket (`pidfd_getfd`): `getsockopt`, `TCP_INFO`, the queue
//! ioctls, and for an established TCP connection `TCP_REPAIR` (sequence numbers, both queues
//! peeked without consuming them, window, negotiated options), as CRIU's libsoccr does.
//!
//! Established connections go into repair mode in [`InetDumper::prepare`], right after the
//! tree is seized and before anything is collected. A socket in repair mode sends nothing
//! when it is closed, so when the dumped tree is killed its connections vanish without a FIN
//! or a RST and the peer's side waits for the restored one. The held duplicates live in
//! [`RepairHold`], owned by [`crate::seize::Frozen`]: a resumed tree (`--leave-running`, or
//! any failed dump) gets its sockets out of repair mode before it runs again.
//!
//! A connection whose peer is not a socket of the tree needs `--tcp-established` (as in CRIU);
//! without it the dump fails naming the connection. Raw, packet, SCTP and netlink sockets of
//! other protocols are refused, named.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use images_format::files::FileKind;
use images_format::inet::{
    Datagram, InetAddr, InetFamily, InetSocket, InetState, NetlinkSocket, SocketOptions,
    TcpConnection, TcpWindow, MAX_QUEUE_BYTES,
};
use sys::net as sn;
use sys::Pid;
use tracing::{debug, warn};

use crate::seize::Frozen;
use crate::DumpError;

/// Held duplicates of the tree's established TCP sockets, in repair mode while the dump runs.
#[derive(Default)]
pub struct RepairHold {
    /// (socket, its `SO_REUSEADDR` before repair mode, a name for messages).
    socks: Vec<(OwnedFd, bool, String)>,
}

impl RepairHold {
    /// The tree goes on: each socket leaves repair mode (the kernel sends a window probe, so a
    /// peer that waited learns the window at once) and gets back its `SO_REUSEADDR`, which
    /// leaving repair mode clears.
    pub fn leave_repair(&mut self) {
        for (fd, reuse, name) in self.socks.drain(..) {
            let r = sn::set_int(&fd, libc::IPPROTO_TCP, sn::TCP_REPAIR, 0, "TCP_REPAIR off")
                .and_then(|()| {
                    sn::set_int(
                        &fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        reuse as i32,
                        "setsockopt(SO_REUSEADDR)",
                    )
                });
            if let Err(e) = r {
                warn!(socket = %name, ?e, "cannot take the socket out of repair mode");
            }
        }
    }

    /// The tree is dead: closing the last references of sockets still in repair mode drops
    /// them without telling their peers.
    pub fn close_silently(&mut self) {
        self.socks.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }
}

/// Takes socket `fd` of task `pid` out of repair mode and gives it back `SO_REUSEADDR` (a
/// journal's recovery: its dumper died holding it).
pub fn leave_repair_of(pid: i32, fd: i32, reuseaddr: bool) -> Result<(), DumpError> {
    let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(pid))?;
    let sock = sys::syscalls::pidfd_getfd(&pidfd, fd)?;
    let name = format!("task {pid} fd {fd}");
    sn::set_int(
        &sock,
        libc::IPPROTO_TCP,
        sn::TCP_REPAIR,
        0,
        "TCP_REPAIR off",
    )
    .and_then(|()| {
        sn::set_int(
            &sock,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            reuseaddr as i32,
            "setsockopt(SO_REUSEADDR)",
        )
    })
    .map_err(sys_task(pid, name))
}

/// A socket of the tree, obtained once.
struct Held {
    fd: OwnedFd,
    /// `SO_REUSEADDR` read before repair mode changed it.
    reuseaddr: bool,
    /// Established TCP: the peer is another socket of the tree.
    peer_in_tree: bool,
}

/// Dumps the tree's inet and netlink sockets; see the module comment.
#[derive(Default)]
pub struct InetDumper {
    /// Socket inode -> the socket.
    held: HashMap<u64, Held>,
}

fn sys_task(pid: i32, what: String) -> impl FnOnce(sys::SysError) -> DumpError {
    move |e| DumpError::Task {
        pid,
        what,
        reason: e.to_string(),
    }
}

fn addr(a: SocketAddr) -> InetAddr {
    match a {
        SocketAddr::V4(v4) => InetAddr {
            ip: IpAddr::V4(*v4.ip()),
            port: v4.port(),
            scope_id: 0,
        },
        SocketAddr::V6(v6) => InetAddr {
            ip: IpAddr::V6(*v6.ip()),
            port: v6.port(),
            scope_id: v6.scope_id(),
        },
    }
}

/// The socket inode of a `/proc/PID/fd` link target `socket:[INODE]`.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// An established TCP connection found by the first pass.
struct Conn {
    pid: i32,
    fd: i32,
    ino: u64,
    local: SocketAddr,
    peer: SocketAddr,
}

impl InetDumper {
    /// First pass, right after the seize: gets every socket of the tree once, checks that
    /// each established TCP connection may be dumped (its peer is in the tree, or
    /// `tcp_established`), and puts them all in repair mode, held by `frozen`.
    pub fn prepare(frozen: &mut Frozen, tcp_established: bool) -> Result<Self, DumpError> {
        let mut d = InetDumper::default();
        let mut conns: Vec<Conn> = Vec::new();
        let pids: Vec<i32> = frozen.alive().map(|p| p.pid.as_raw()).collect();
        for pid in pids {
            let fd_dir = format!("/proc/{pid}/fd");
            let entries = std::fs::read_dir(&fd_dir).map_err(|source| DumpError::Io {
                op: "list",
                path: fd_dir.clone().into(),
                source,
            })?;
            let mut pidfd = None;
            for e in entries.flatten() {
                let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Some(ino) = std::fs::read_link(e.path())
                    .ok()
                    .and_then(|t| socket_inode(&t.to_string_lossy()))
                else {
                    continue;
                };
                if d.held.contains_key(&ino) {
                    continue;
                }
                if pidfd.is_none() {
                    pidfd = Some(sys::syscalls::pidfd_open(Pid::from_raw(pid))?);
                }
                let pidfd_ref = pidfd
                    .as_ref()
                    .ok_or_else(|| DumpError::Tree("pidfd".into()))?;
                let sock = sys::syscalls::pidfd_getfd(pidfd_ref, fd)
                    .map_err(sys_task(pid, format!("fd {fd} (socket)")))?;
                let domain = sn::get_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")
                    .map_err(sys_task(pid, format!("fd {fd} (socket)")))?;
                let proto = sn::get_int(&sock, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")
                    .map_err(sys_task(pid, format!("fd {fd} (socket)")))?;
                let reuseaddr =
                    sn::get_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")
                        .map_err(sys_task(pid, format!("fd {fd} (socket)")))?
                        != 0;
                if matches!(domain, libc::AF_INET | libc::AF_INET6) && proto == libc::IPPROTO_TCP {
                    let what = || format!("fd {fd} (TCP socket)");
                    let info = sn::tcp_info(&sock).map_err(sys_task(pid, what()))?;
                    if info.state == sn::TCP_ESTABLISHED {
                        let local = sn::local_addr(&sock).map_err(sys_task(pid, what()))?;
                        let peer = sn::peer_addr(&sock)
                            .map_err(sys_task(pid, what()))?
                            .ok_or_else(|| DumpError::Task {
                                pid,
                                what: what(),
                                reason: "established but without a peer".into(),
                            })?;
                        conns.push(Conn {
                            pid,
                            fd,
                            ino,
                            local,
                            peer,
                        });
                    }
                }
                d.held.insert(
                    ino,
                    Held {
                        fd: sock,
                        reuseaddr,
                        peer_in_tree: false,
                    },
                );
            }
        }
        let ends: HashSet<(SocketAddr, SocketAddr)> =
            conns.iter().map(|c| (c.local, c.peer)).collect();
        for c in &conns {
            let in_tree = ends.contains(&(c.peer, c.local));
            if !in_tree && !tcp_established {
                return Err(DumpError::Unsupported {
                    pid: c.pid,
                    resource: format!("fd {} (TCP connection {} -> {})", c.fd, c.local, c.peer),
                    reason: "its peer is outside the dumped tree; dump with --tcp-established to checkpoint such connections".into(),
                });
            }
            if let Some(h) = d.held.get_mut(&c.ino) {
                h.peer_in_tree = in_tree;
            }
        }
        // All of them in repair mode before any queue is read, so no connection of the tree
        // moves data between two of its sockets while they are read one by one.
        for c in &conns {
            let Some(h) = d.held.get(&c.ino) else {
                continue;
            };
            let name = format!("task {} fd {} ({} -> {})", c.pid, c.fd, c.local, c.peer);
            let dup = h.fd.try_clone().map_err(|source| DumpError::Io {
                op: "dup",
                path: format!("socket of {name}").into(),
                source,
            })?;
            frozen.journal_tcp(c.pid, c.fd, h.reuseaddr)?;
            sn::set_int(&dup, libc::IPPROTO_TCP, sn::TCP_REPAIR, 1, "TCP_REPAIR on").map_err(
                |e| DumpError::Task {
                    pid: c.pid,
                    what: format!("fd {} (TCP connection {} -> {})", c.fd, c.local, c.peer),
                    reason: format!("{e} (TCP_REPAIR needs CAP_NET_ADMIN)"),
                },
            )?;
            frozen.tcp_repair.socks.push((dup, h.reuseaddr, name));
        }
        debug!(
            sockets = d.held.len(),
            connections = conns.len(),
            "sockets of the tree held"
        );
        Ok(d)
    }

    /// The description of socket `fd` of task `pid` (inode `ino`), or `None` when it is not a
    /// socket this module handles (unix sockets).
    pub fn dump_socket(
        &mut self,
        pid: i32,
        fd: i32,
        ino: u64,
    ) -> Result<Option<FileKind>, DumpError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.held.entry(ino) {
            // A socket the first pass did not see (the tree is stopped, so only a socket
            // passed in by a task outside it): get it now.
            let pidfd = sys::syscalls::pidfd_open(Pid::from_raw(pid))?;
            let sock = sys::syscalls::pidfd_getfd(&pidfd, fd)
                .map_err(sys_task(pid, format!("fd {fd} (socket)")))?;
            let reuseaddr =
                sn::get_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")
                    .map_err(sys_task(pid, format!("fd {fd} (socket)")))?
                    != 0;
            slot.insert(Held {
                fd: sock,
                reuseaddr,
                peer_in_tree: false,
            });
        }
        let h = &self.held[&ino];
        let s = &h.fd;
        let what = || format!("fd {fd} (socket)");
        let domain = sn::get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")
            .map_err(sys_task(pid, what()))?;
        let ty = sn::get_int(s, libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")
            .map_err(sys_task(pid, what()))?;
        let proto = sn::get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")
            .map_err(sys_task(pid, what()))?;
        let unsupported = |resource: String, reason: &str| DumpError::Unsupported {
            pid,
            resource: format!("fd {fd} ({resource})"),
            reason: reason.to_string(),
        };
        match domain {
            libc::AF_INET | libc::AF_INET6 => {
                let family = if domain == libc::AF_INET {
                    InetFamily::V4
                } else {
                    InetFamily::V6
                };
                let fam = if domain == libc::AF_INET {
                    "IPv4"
                } else {
                    "IPv6"
                };
                match (ty, proto) {
                    (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                        dump_tcp(pid, fd, h, family).map(|k| Some(FileKind::Inet(Box::new(k))))
                    }
                    (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {
                        dump_udp(pid, fd, h, family).map(|k| Some(FileKind::Inet(Box::new(k))))
                    }
                    (libc::SOCK_RAW, p) => Err(unsupported(
                        format!("raw {fam} socket of protocol {p}"),
                        "raw sockets are not supported",
                    )),
                    (t, p) => Err(unsupported(
                        format!("{fam} socket of type {t}, protocol {p}"),
                        "only TCP and UDP sockets are supported",
                    )),
                }
            }
            libc::AF_NETLINK => dump_netlink(pid, fd, h, ty, proto).map(Some),
            libc::AF_PACKET => Err(unsupported(
                "packet socket".into(),
                "packet sockets are not supported",
            )),
            libc::AF_UNIX => Ok(None),
            other => Err(unsupported(
                format!("socket of address family {other}"),
                "only unix, TCP, UDP and NETLINK_ROUTE sockets are supported",
            )),
        }
    }
}

fn get(s: &OwnedFd, level: i32, opt: i32, name: &'static str) -> Result<i32, sys::SysError> {
    sn::get_int(s, level, opt, name)
}

/// The options every inet socket may carry.
fn read_options(h: &Held, family: InetFamily, tcp: bool) -> Result<SocketOptions, sys::SysError> {
    let s = &h.fd;
    let sol = libc::SOL_SOCKET;
    let mut linger = [0u8; 8];
    sn::get_bytes(
        s,
        sol,
        libc::SO_LINGER,
        &mut linger,
        "getsockopt(SO_LINGER)",
    )?;
    let onoff = i32::from_ne_bytes([linger[0], linger[1], linger[2], linger[3]]);
    let secs = i32::from_ne_bytes([linger[4], linger[5], linger[6], linger[7]]);
    let mut dev = [0u8; libc::IFNAMSIZ];
    let n = sn::get_bytes(
        s,
        sol,
        libc::SO_BINDTODEVICE,
        &mut dev,
        "getsockopt(SO_BINDTODEVICE)",
    )?;
    let dev = &dev[..n];
    let dev = &dev[..dev.iter().position(|&b| b == 0).unwrap_or(dev.len())];
    let mut o = SocketOptions {
        reuseaddr: h.reuseaddr,
        reuseport: get(s, sol, libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        broadcast: get(s, sol, libc::SO_BROADCAST, "SO_BROADCAST")? != 0,
        keepalive: get(s, sol, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        sndbuf: get(s, sol, libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        rcvbuf: get(s, sol, libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        linger: (onoff != 0).then_some(secs.max(0) as u32),
        bound_device: String::from_utf8_lossy(dev).into_owned(),
        priority: get(s, sol, libc::SO_PRIORITY, "SO_PRIORITY")? as u32,
        v6only: family == InetFamily::V6
            && get(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0,
        ..Default::default()
    };
    if tcp {
        let t = libc::IPPROTO_TCP;
        o.nodelay = get(s, t, libc::TCP_NODELAY, "TCP_NODELAY")? != 0;
        o.keepidle = get(s, t, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")? as u32;
        o.keepintvl = get(s, t, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")? as u32;
        o.keepcnt = get(s, t, libc::TCP_KEEPCNT, "TCP_KEEPCNT")? as u32;
    }
    Ok(o)
}

fn dump_tcp(pid: i32, fd: i32, h: &Held, family: InetFamily) -> Result<InetSocket, DumpError> {
    let s = &h.fd;
    let local = sn::local_addr(s).map_err(sys_task(pid, format!("fd {fd} (TCP socket)")))?;
    let name = format!("TCP socket {local}");
    let task = |what: &str| sys_task(pid, format!("fd {fd} ({name}): {what}"));
    let opts = read_options(h, family, true).map_err(task("options"))?;
    let info = sn::tcp_info(s).map_err(task("TCP_INFO"))?;
    let state = match info.state {
        sn::TCP_CLOSE => InetState::TcpClosed,
        sn::TCP_LISTEN => {
            if info.unacked > 0 {
                return Err(DumpError::Unsupported {
                    pid,
                    resource: format!("fd {fd} (listening {name})"),
                    reason: format!(
                        "{} connection(s) wait in its accept queue; they cannot be restored (accept them before the dump)",
                        info.unacked
                    ),
                });
            }
            InetState::TcpListen {
                backlog: info.sacked,
            }
        }
        sn::TCP_ESTABLISHED => {
            InetState::TcpEstablished(Box::new(dump_connection(pid, fd, h, &info)?))
        }
        other => {
            let peer = sn::peer_addr(s)
                .ok()
                .flatten()
                .map(|p| format!(" -> {p}"))
                .unwrap_or_default();
            return Err(DumpError::Unsupported {
                pid,
                resource: format!("fd {fd} ({name}{peer})"),
                reason: format!(
                    "the connection is in state {}; only established, listening and unconnected TCP sockets are supported (half-closed and closing ones are not)",
                    sn::tcp_state_name(other)
                ),
            });
        }
    };
    Ok(InetSocket {
        family,
        local: addr(local),
        opts,
        state,
    })
}

/// Reads one queue of a socket in repair mode: its sequence number and its bytes, peeked.
fn read_queue(s: &OwnedFd, queue: i32, len: usize) -> Result<(u32, Vec<u8>), String> {
    sn::set_int(
        s,
        libc::IPPROTO_TCP,
        sn::TCP_REPAIR_QUEUE,
        queue,
        "TCP_REPAIR_QUEUE",
    )
    .map_err(|e| e.to_string())?;
    let seq = sn::get_int(s, libc::IPPROTO_TCP, sn::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ")
        .map_err(|e| e.to_string())? as u32;
    if len > MAX_QUEUE_BYTES {
        return Err(format!(
            "its queue holds {len} bytes, more than the {MAX_QUEUE_BYTES}-byte limit"
        ));
    }
    let mut buf = vec![0u8; len + 1];
    let mut got = 0;
    if len > 0 {
        use nix::sys::socket::MsgFlags;
        got = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&s.as_fd()),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(|e| format!("recv(MSG_PEEK): {e}"))?;
    }
    if got != len {
        return Err(format!("peeked {got} bytes of a queue of {len}"));
    }
    buf.truncate(len);
    Ok((seq, buf))
}

fn dump_connection(
    pid: i32,
    fd: i32,
    h: &Held,
    info: &sn::TcpInfo,
) -> Result<TcpConnection, DumpError> {
    let s = &h.fd;
    let local = sn::local_addr(s).map_err(sys_task(pid, format!("fd {fd} (TCP socket)")))?;
    let peer = sn::peer_addr(s)
        .map_err(sys_task(pid, format!("fd {fd} (TCP socket)")))?
        .ok_or_else(|| DumpError::Task {
            pid,
            what: format!("fd {fd} (TCP socket {local})"),
            reason: "established but without a peer".into(),
        })?;
    let fail = |reason: String| DumpError::Task {
        pid,
        what: format!("fd {fd} (TCP connection {local} -> {peer})"),
        reason,
    };
    let repair = sn::get_int(s, libc::IPPROTO_TCP, sn::TCP_REPAIR, "TCP_REPAIR")
        .map_err(|e| fail(e.to_string()))?;
    if repair != 1 {
        return Err(fail(
            "it is not in repair mode (it appeared after the tree was seized)".into(),
        ));
    }
    let ioctl = |req, name| sn::ioctl_int(s, req, name).map_err(|e| fail(e.to_string()));
    let outq = ioctl(sn::SIOCOUTQ, "SIOCOUTQ")? as usize;
    let unsent = ioctl(sn::SIOCOUTQNSD, "SIOCOUTQNSD")? as u32;
    let inq = ioctl(sn::SIOCINQ, "SIOCINQ")? as usize;
    let mss = sn::get_int(s, libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG")
        .map_err(|e| fail(e.to_string()))? as u32;
    let timestamp = sn::get_int(s, libc::IPPROTO_TCP, sn::TCP_TIMESTAMP, "TCP_TIMESTAMP")
        .map_err(|e| fail(e.to_string()))? as u32;
    let window = match sn::get_repair_window(s) {
        Ok(w) => Some(TcpWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        }),
        Err(sys::SysError::Syscall {
            source: nix::errno::Errno::ENOPROTOOPT,
            ..
        }) => None,
        Err(e) => return Err(fail(e.to_string())),
    };
    let (recv_seq, recv_queue) =
        read_queue(s, sn::TCP_RECV_QUEUE, inq).map_err(|e| fail(format!("receive queue: {e}")))?;
    let (send_seq, send_queue) =
        read_queue(s, sn::TCP_SEND_QUEUE, outq).map_err(|e| fail(format!("send queue: {e}")))?;
    sn::set_int(
        s,
        libc::IPPROTO_TCP,
        sn::TCP_REPAIR_QUEUE,
        sn::TCP_NO_QUEUE,
        "TCP_REPAIR_QUEUE",
    )
    .map_err(|e| fail(e.to_string()))?;
    let opt = info.options;
    Ok(TcpConnection {
        peer: addr(peer),
        send_seq,
        recv_seq,
        send_queue,
        unsent: unsent.min(outq as u32),
        recv_queue,
        mss,
        wscale: (opt & sn::TCPI_OPT_WSCALE != 0).then_some((info.snd_wscale, info.rcv_wscale)),
        sack: opt & sn::TCPI_OPT_SACK != 0,
        timestamps: opt & sn::TCPI_OPT_TIMESTAMPS != 0,
        timestamp,
        window,
        peer_in_tree: h.peer_in_tree,
    })
}

fn dump_udp(pid: i32, fd: i32, h: &Held, family: InetFamily) -> Result<InetSocket, DumpError> {
    let s = &h.fd;
    let local = sn::local_addr(s).map_err(sys_task(pid, format!("fd {fd} (UDP socket)")))?;
    let what = || format!("fd {fd} (UDP socket {local})");
    let opts = read_options(h, family, false).map_err(sys_task(pid, what()))?;
    let peer = sn::peer_addr(s).map_err(sys_task(pid, what()))?;
    // The queued datagrams, peeked one after the other by moving the socket's peek offset,
    // which is put back as it was.
    let peek_off = sn::get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, "SO_PEEK_OFF")
        .map_err(sys_task(pid, what()))?;
    sn::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0, "SO_PEEK_OFF")
        .map_err(sys_task(pid, what()))?;
    let mut queue = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 65536];
    let read = (|| {
        while let Some((len, from)) = sn::peek_datagram(s, &mut buf)? {
            if len > buf.len() {
                return Err(sys::SysError::Invalid {
                    op: "recvmsg(MSG_PEEK)",
                    reason: format!("a datagram of {len} bytes"),
                });
            }
            total += len;
            if total > MAX_QUEUE_BYTES {
                return Err(sys::SysError::Invalid {
                    op: "recvmsg(MSG_PEEK)",
                    reason: format!("more than {MAX_QUEUE_BYTES} bytes queued"),
                });
            }
            let from = from.ok_or_else(|| sys::SysError::Invalid {
                op: "recvmsg(MSG_PEEK)",
                reason: "a datagram without a source address".into(),
            })?;
            queue.push(Datagram {
                from: addr(from),
                data: buf[..len].to_vec(),
            });
            if len == 0 {
                // An empty datagram does not move the peek offset: the rest is unreachable.
                return Err(sys::SysError::Invalid {
                    op: "recvmsg(MSG_PEEK)",
                    reason: "an empty datagram is queued; the datagrams after it cannot be read without consuming it".into(),
                });
            }
        }
        Ok(())
    })();
    let reset = sn::set_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_PEEK_OFF,
        peek_off,
        "SO_PEEK_OFF",
    );
    read.map_err(sys_task(pid, format!("{}: queued datagrams", what())))?;
    reset.map_err(sys_task(pid, what()))?;
    Ok(InetSocket {
        family,
        local: addr(local),
        opts,
        state: InetState::Udp {
            peer: peer.map(addr),
            queue,
        },
    })
}

/// The name of a netlink protocol, for messages.
fn netlink_protocol_name(p: i32) -> &'static str {
    match p {
        0 => "NETLINK_ROUTE",
        2 => "NETLINK_USERSOCK",
        4 => "NETLINK_SOCK_DIAG",
        5 => "NETLINK_NFLOG",
        6 => "NETLINK_XFRM",
        7 => "NETLINK_SELINUX",
        8 => "NETLINK_ISCSI",
        9 => "NETLINK_AUDIT",
        10 => "NETLINK_FIB_LOOKUP",
        11 => "NETLINK_CONNECTOR",
        12 => "NETLINK_NETFILTER",
        15 => "NETLINK_KOBJECT_UEVENT",
        16 => "NETLINK_GENERIC",
        _ => "an unknown netlink protocol",
    }
}

/// `NETLINK_*` socket options that are on/off flags (`linux/netlink.h`).
pub const NETLINK_FLAGS: [i32; 7] = [3, 4, 5, 8, 10, 11, 12];
const SOL_NETLINK: i32 = 270;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

fn dump_netlink(pid: i32, fd: i32, h: &Held, ty: i32, proto: i32) -> Result<FileKind, DumpError> {
    let s = &h.fd;
    let name = format!(
        "netlink socket of protocol {proto} ({})",
        netlink_protocol_name(proto)
    );
    if proto != 0 {
        return Err(DumpError::Unsupported {
            pid,
            resource: format!("fd {fd} ({name})"),
            reason: "only NETLINK_ROUTE sockets are supported".into(),
        });
    }
    let task = |what: &str| sys_task(pid, format!("fd {fd} ({name}): {what}"));
    let (portid, _) = sn::netlink_local(s).map_err(task("address"))?;
    let mut words = [0u8; 128];
    let n = sn::get_bytes(
        s,
        SOL_NETLINK,
        NETLINK_LIST_MEMBERSHIPS,
        &mut words,
        "getsockopt(NETLINK_LIST_MEMBERSHIPS)",
    )
    .map_err(task("groups"))?;
    let mut groups = Vec::new();
    for (i, w) in words[..n].chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        for bit in 0..32 {
            if w & (1 << bit) != 0 {
                groups.push(i as u32 * 32 + bit + 1);
            }
        }
    }
    let mut flags = Vec::new();
    for opt in NETLINK_FLAGS {
        if let Ok(v) = sn::get_int(s, SOL_NETLINK, opt, "getsockopt(NETLINK_*)") {
            if v != 0 {
                flags.push((opt, v as u32));
            }
        }
    }
    // Messages waiting to be read (the answer of a request, notifications) cannot be put back.
    let mut one = [0u8; 1];
    if let Ok(Some((len, _))) = sn::peek_datagram(s, &mut one) {
        return Err(DumpError::Unsupported {
            pid,
            resource: format!("fd {fd} ({name}, port {portid})"),
            reason: format!(
                "a message of {len} bytes waits to be read; queued netlink messages cannot be restored"
            ),
        });
    }
    Ok(FileKind::Netlink(NetlinkSocket {
        sock_type: ty,
        protocol: proto,
        portid,
        groups,
        sndbuf: get(s, libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF").map_err(task("SO_SNDBUF"))?
            as u32,
        rcvbuf: get(s, libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF").map_err(task("SO_RCVBUF"))?
            as u32,
        flags,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_inodes() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
