//! Network sockets: TCP and UDP over IPv4 and IPv6, NETLINK_ROUTE. Opened by the
//! [`crate::files`] opener like any description (for a tree with its own network namespace,
//! by its root, inside it).
//!
//! An established TCP connection is rebuilt in repair mode as CRIU's libsoccr does: bound to
//! its local address (repair mode lets it share a port with a listener), both queue sequence
//! numbers set, "connected" without a packet, its negotiated options and clock set, the
//! receive queue and the sent-but-unacknowledged part of the send queue refilled, its window
//! set. It stays in repair mode, silent, until every socket of the image exists
//! ([`SocketFinisher::finish`]): only then can a window probe or a retransmission find its
//! peer when that peer is a socket of the same tree. Then the never-sent bytes are written the
//! ordinary way.
//!
//! Queued UDP datagrams are sent again from their source address by a temporary socket once
//! every socket exists (the restored sockets share their ports meanwhile with `SO_REUSEADDR`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use images_format::inet::{
    Datagram, InetAddr, InetFamily, InetSocket, InetState, NetlinkSocket, SocketOptions,
    TcpConnection,
};
use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use sys::net as sn;

use crate::RestoreError;

fn err(id: u32, what: &str, e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Files(format!("file description {id}: {what}: {e}"))
}

fn std_addr(a: &InetAddr) -> SocketAddr {
    match a.ip {
        IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, a.port)),
        IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, a.port, 0, a.scope_id)),
    }
}

/// A TCP connection waiting to leave repair mode.
struct PendingTcp {
    id: u32,
    fd: OwnedFd,
    name: String,
    unsent: Vec<u8>,
    opts: SocketOptions,
}

/// A UDP socket waiting for its datagrams and its own `SO_REUSEADDR`.
struct PendingUdp {
    id: u32,
    fd: OwnedFd,
    family: InetFamily,
    local: InetAddr,
    queue: Vec<Datagram>,
    reuseaddr: bool,
}

/// What is left to do once every socket of the image is open.
#[derive(Default)]
pub struct SocketFinisher {
    tcp: Vec<PendingTcp>,
    udp: Vec<PendingUdp>,
}

fn set(fd: &OwnedFd, level: i32, opt: i32, v: i32, name: &'static str) -> Result<(), String> {
    sn::set_int(fd, level, opt, v, name).map_err(|e| e.to_string())
}

/// Sets a buffer size as it was read (the kernel doubles what it is given, so half of it is
/// given back). `SO_*BUFFORCE` passes `net.core.[rw]mem_max` with CAP_NET_ADMIN (no
/// CAP_SYS_RESOURCE needed); without it the plain option is capped by those sysctls.
fn set_buf(fd: &OwnedFd, send: bool, bytes: u32) -> Result<(), String> {
    let (force, plain, name) = if send {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF")
    } else {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF")
    };
    let half = (bytes / 2).min(i32::MAX as u32) as i32;
    match sn::set_int(fd, libc::SOL_SOCKET, force, half, "SO_*BUFFORCE") {
        Ok(()) => Ok(()),
        Err(sys::SysError::Syscall {
            source: Errno::EPERM,
            ..
        }) => set(fd, libc::SOL_SOCKET, plain, half, name),
        Err(e) => Err(e.to_string()),
    }
}

/// Options that must be in place before `bind` (device, v6only, port sharing) and the others.
fn apply_options(
    fd: &OwnedFd,
    family: InetFamily,
    o: &SocketOptions,
    tcp: bool,
    buffers_always: bool,
) -> Result<(), String> {
    let sol = libc::SOL_SOCKET;
    if !o.bound_device.is_empty() {
        sn::set_bytes(
            fd,
            sol,
            libc::SO_BINDTODEVICE,
            o.bound_device.as_bytes(),
            "SO_BINDTODEVICE",
        )
        .map_err(|e| format!("bind to device {}: {e}", o.bound_device))?;
    }
    if family == InetFamily::V6 {
        set(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            o.v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    set(
        fd,
        sol,
        libc::SO_REUSEPORT,
        o.reuseport as i32,
        "SO_REUSEPORT",
    )?;
    set(
        fd,
        sol,
        libc::SO_BROADCAST,
        o.broadcast as i32,
        "SO_BROADCAST",
    )?;
    set(
        fd,
        sol,
        libc::SO_KEEPALIVE,
        o.keepalive as i32,
        "SO_KEEPALIVE",
    )?;
    set(fd, sol, libc::SO_PRIORITY, o.priority as i32, "SO_PRIORITY")?;
    if let Some(secs) = o.linger {
        let mut l = 1i32.to_ne_bytes().to_vec();
        l.extend_from_slice(&(secs as i32).to_ne_bytes());
        sn::set_bytes(fd, sol, libc::SO_LINGER, &l, "SO_LINGER").map_err(|e| e.to_string())?;
    }
    if tcp {
        let t = libc::IPPROTO_TCP;
        set(fd, t, libc::TCP_NODELAY, o.nodelay as i32, "TCP_NODELAY")?;
        set(fd, t, libc::TCP_KEEPIDLE, o.keepidle as i32, "TCP_KEEPIDLE")?;
        set(
            fd,
            t,
            libc::TCP_KEEPINTVL,
            o.keepintvl as i32,
            "TCP_KEEPINTVL",
        )?;
        set(fd, t, libc::TCP_KEEPCNT, o.keepcnt as i32, "TCP_KEEPCNT")?;
    }
    // A size the socket already has is left alone: setting it would turn TCP's automatic
    // sizing off. An established connection's are always set (its queues need them).
    for (send, want) in [(true, o.sndbuf), (false, o.rcvbuf)] {
        let opt = if send {
            libc::SO_SNDBUF
        } else {
            libc::SO_RCVBUF
        };
        let now = sn::get_int(fd, sol, opt, "SO_*BUF").map_err(|e| e.to_string())? as u32;
        if buffers_always || now != want {
            set_buf(fd, send, want)?;
        }
    }
    Ok(())
}

fn new_socket(family: InetFamily, stream: bool) -> nix::Result<OwnedFd> {
    let af = match family {
        InetFamily::V4 => AddressFamily::Inet,
        InetFamily::V6 => AddressFamily::Inet6,
    };
    let (ty, proto) = if stream {
        (SockType::Stream, SockProtocol::Tcp)
    } else {
        (SockType::Datagram, SockProtocol::Udp)
    };
    socket(af, ty, SockFlag::SOCK_CLOEXEC, proto)
}

/// Opens description `id`, an inet socket.
pub fn open_inet(
    id: u32,
    s: &InetSocket,
    fin: &mut SocketFinisher,
) -> Result<OwnedFd, RestoreError> {
    s.check().map_err(|e| err(id, "socket", e))?;
    let stream = !matches!(s.state, InetState::Udp { .. });
    let proto = if stream { "TCP" } else { "UDP" };
    let name = match &s.state {
        InetState::TcpEstablished(c) => format!("TCP connection {} -> {}", s.local, c.peer),
        InetState::Udp {
            peer: Some(peer), ..
        } => format!("UDP socket {} -> {peer}", s.local),
        _ => format!("{proto} socket {}", s.local),
    };
    let fail = |e: &dyn std::fmt::Display| err(id, &name, e);
    let fd = new_socket(s.family, stream).map_err(|e| fail(&format!("socket: {e}")))?;
    let established = matches!(s.state, InetState::TcpEstablished(_));
    if established {
        // First of all: a socket in repair mode may share any port and sends nothing.
        set(&fd, libc::IPPROTO_TCP, sn::TCP_REPAIR, 1, "TCP_REPAIR")
            .map_err(|e| fail(&format!("{e} (TCP_REPAIR needs CAP_NET_ADMIN)")))?;
    }
    apply_options(&fd, s.family, &s.opts, stream, established).map_err(|e| fail(&e))?;
    let local = std_addr(&s.local);
    let bind = |fd: &OwnedFd| -> Result<(), RestoreError> {
        if s.local.port != 0 {
            sn::bind_inet(fd, &local).map_err(|e| fail(&format!("bind to {local}: {e}")))?;
        }
        Ok(())
    };
    let reuse = |fd: &OwnedFd, on: bool| {
        set(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            on as i32,
            "SO_REUSEADDR",
        )
        .map_err(|e| fail(&e))
    };
    match &s.state {
        InetState::TcpClosed => {
            // Shares its port with the restored connections that had it (as it did).
            reuse(&fd, true)?;
            bind(&fd)?;
            reuse(&fd, s.opts.reuseaddr)?;
        }
        InetState::TcpListen { backlog } => {
            reuse(&fd, true)?;
            bind(&fd)?;
            let backlog = nix::sys::socket::Backlog::new((*backlog).min(i32::MAX as u32) as i32)
                .map_err(|e| fail(&format!("backlog {backlog}: {e}")))?;
            nix::sys::socket::listen(&fd, backlog).map_err(|e| fail(&format!("listen: {e}")))?;
            reuse(&fd, s.opts.reuseaddr)?;
        }
        InetState::TcpEstablished(c) => {
            bind(&fd)?;
            restore_connection(&fd, c).map_err(|e| fail(&e))?;
            fin.tcp.push(PendingTcp {
                id,
                fd: fd.try_clone().map_err(|e| fail(&format!("dup: {e}")))?,
                name: name.clone(),
                unsent: c.send_queue[c.send_queue.len() - c.unsent as usize..].to_vec(),
                opts: s.opts.clone(),
            });
        }
        InetState::Udp { peer, queue } => {
            // SO_REUSEADDR stays on until the queued datagrams are sent again (see the
            // finisher), so that their sender may take their source address.
            reuse(&fd, true)?;
            bind(&fd)?;
            if let Some(p) = peer {
                sn::connect_inet(&fd, &std_addr(p))
                    .map_err(|e| fail(&format!("connect to {p}: {e}")))?;
            }
            fin.udp.push(PendingUdp {
                id,
                fd: fd.try_clone().map_err(|e| fail(&format!("dup: {e}")))?,
                family: s.family,
                local: s.local,
                queue: queue.clone(),
                reuseaddr: s.opts.reuseaddr,
            });
        }
    }
    Ok(fd)
}

/// Writes `data` into the current repair queue (or, out of repair mode, the send queue) in
/// chunks the kernel accepts, halving them when it refuses one.
fn send_all(fd: &OwnedFd, data: &[u8], wait: bool) -> Result<(), String> {
    let mut off = 0;
    let mut chunk = data.len().max(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while off < data.len() {
        let n = chunk.min(data.len() - off);
        match nix::sys::socket::send(
            fd.as_raw_fd(),
            &data[off..off + n],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(0) => return Err("send wrote nothing".into()),
            Ok(k) => off += k,
            Err(Errno::EAGAIN | Errno::ENOMEM | Errno::ENOBUFS) if chunk > 1024 => chunk /= 2,
            Err(Errno::EAGAIN) if wait && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(format!(
                    "send: {e} with {} of {} bytes written",
                    off,
                    data.len()
                ))
            }
        }
    }
    Ok(())
}

fn restore_connection(fd: &OwnedFd, c: &TcpConnection) -> Result<(), String> {
    let t = libc::IPPROTO_TCP;
    let sent = c.send_queue.len() - c.unsent as usize;
    // Sequence numbers of the first byte of each queue, before the connection exists.
    set(
        fd,
        t,
        sn::TCP_REPAIR_QUEUE,
        sn::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    set(
        fd,
        t,
        sn::TCP_QUEUE_SEQ,
        c.recv_seq.wrapping_sub(c.recv_queue.len() as u32) as i32,
        "TCP_QUEUE_SEQ",
    )?;
    set(
        fd,
        t,
        sn::TCP_REPAIR_QUEUE,
        sn::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    set(
        fd,
        t,
        sn::TCP_QUEUE_SEQ,
        c.send_seq.wrapping_sub(c.send_queue.len() as u32) as i32,
        "TCP_QUEUE_SEQ",
    )?;
    // In repair mode connect sends no SYN: the socket is established at once.
    let peer = std_addr(&c.peer);
    sn::connect_inet(fd, &peer).map_err(|e| format!("connect (repair) to {peer}: {e}"))?;
    let mut opts = Vec::new();
    if c.sack {
        opts.push((sn::TCPOPT_SACK_PERM, 0));
    }
    if let Some((snd, rcv)) = c.wscale {
        opts.push((sn::TCPOPT_WINDOW, snd as u32 | ((rcv as u32) << 16)));
    }
    if c.timestamps {
        opts.push((sn::TCPOPT_TIMESTAMP, 0));
    }
    opts.push((sn::TCPOPT_MAXSEG, c.mss));
    sn::set_repair_options(fd, &opts).map_err(|e| e.to_string())?;
    if c.timestamps {
        set(
            fd,
            t,
            sn::TCP_TIMESTAMP,
            c.timestamp as i32,
            "TCP_TIMESTAMP",
        )?;
    }
    // Room for the queues whatever the dumped sizes were; the finisher sets those back.
    let room = |len: usize| (len * 4 + (256 << 10)).min(i32::MAX as usize) as u32;
    set_buf(fd, false, room(c.recv_queue.len()))?;
    set_buf(fd, true, room(c.send_queue.len()))?;
    if !c.recv_queue.is_empty() {
        set(
            fd,
            t,
            sn::TCP_REPAIR_QUEUE,
            sn::TCP_RECV_QUEUE,
            "TCP_REPAIR_QUEUE",
        )?;
        send_all(fd, &c.recv_queue, false).map_err(|e| format!("receive queue: {e}"))?;
    }
    if sent > 0 {
        set(
            fd,
            t,
            sn::TCP_REPAIR_QUEUE,
            sn::TCP_SEND_QUEUE,
            "TCP_REPAIR_QUEUE",
        )?;
        send_all(fd, &c.send_queue[..sent], false).map_err(|e| format!("send queue: {e}"))?;
    }
    set(
        fd,
        t,
        sn::TCP_REPAIR_QUEUE,
        sn::TCP_NO_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    if let Some(w) = &c.window {
        sn::set_repair_window(
            fd,
            &sn::RepairWindow {
                snd_wl1: w.snd_wl1,
                snd_wnd: w.snd_wnd,
                max_window: w.max_window,
                rcv_wnd: w.rcv_wnd,
                rcv_wup: w.rcv_wup,
            },
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sends one datagram to `to` from its dumped source address, by a temporary socket.
fn resend(family: InetFamily, d: &Datagram, to: &SocketAddr) -> Result<(), String> {
    let tmp = new_socket(family, false).map_err(|e| format!("socket: {e}"))?;
    set(
        &tmp,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        1,
        "SO_REUSEADDR",
    )?;
    // A source that is not an address of this host (a peer elsewhere) needs both.
    let (level, freebind, transparent) = match family {
        InetFamily::V4 => (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_TRANSPARENT),
        InetFamily::V6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            libc::IPV6_TRANSPARENT,
        ),
    };
    let _ = sn::set_int(&tmp, level, freebind, 1, "IP_FREEBIND");
    let _ = sn::set_int(&tmp, level, transparent, 1, "IP_TRANSPARENT");
    let from = std_addr(&d.from);
    sn::bind_inet(&tmp, &from).map_err(|e| format!("bind the sender to {from}: {e}"))?;
    let dest = nix::sys::socket::SockaddrStorage::from(*to);
    nix::sys::socket::sendto(tmp.as_raw_fd(), &d.data, &dest, MsgFlags::MSG_DONTWAIT)
        .map_err(|e| format!("send {} bytes from {from} to {to}: {e}", d.data.len()))?;
    Ok(())
}

/// Where a datagram for a socket bound to `local` is sent: its address, or loopback when it
/// is bound to the wildcard address.
fn deliver_to(family: InetFamily, local: &InetAddr) -> SocketAddr {
    let mut a = std_addr(local);
    if a.ip().is_unspecified() {
        a.set_ip(match family {
            InetFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            InetFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    a
}

impl SocketFinisher {
    /// Every socket of the image exists: connections leave repair mode and write what they
    /// had never sent; UDP sockets get their datagrams back; every socket its own
    /// `SO_REUSEADDR` and buffer sizes.
    pub fn finish(self) -> Result<(), RestoreError> {
        for p in &self.udp {
            let to = deliver_to(p.family, &p.local);
            for (i, d) in p.queue.iter().enumerate() {
                resend(p.family, d, &to)
                    .map_err(|e| err(p.id, &format!("UDP socket {}: datagram {i}", p.local), e))?;
            }
        }
        for p in &self.udp {
            // Sent to ourselves over loopback: delivered before sendto returned, but wait
            // until the queue shows them all.
            let want: usize = p.queue.iter().map(|d| d.data.len()).sum();
            if !p.queue.is_empty() {
                let deadline = Instant::now() + Duration::from_secs(2);
                while (sn::ioctl_int(&p.fd, sn::SIOCINQ, "SIOCINQ").unwrap_or(0) as usize) == 0
                    && want > 0
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            set(
                &p.fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                p.reuseaddr as i32,
                "SO_REUSEADDR",
            )
            .map_err(|e| err(p.id, "UDP socket", e))?;
        }
        for p in &self.tcp {
            let fail = |e: &dyn std::fmt::Display| err(p.id, &p.name, e);
            // Leaving repair mode sends a window probe: the peer learns our window at once.
            set(
                &p.fd,
                libc::IPPROTO_TCP,
                sn::TCP_REPAIR,
                0,
                "TCP_REPAIR off",
            )
            .map_err(|e| fail(&e))?;
            // Leaving repair mode also cleared SO_REUSEADDR.
            set(
                &p.fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                p.opts.reuseaddr as i32,
                "SO_REUSEADDR",
            )
            .map_err(|e| fail(&e))?;
            if !p.unsent.is_empty() {
                send_all(&p.fd, &p.unsent, true)
                    .map_err(|e| fail(&format!("bytes never sent: {e}")))?;
            }
            set_buf(&p.fd, true, p.opts.sndbuf.max(4096)).map_err(|e| fail(&e))?;
            set_buf(&p.fd, false, p.opts.rcvbuf.max(4096)).map_err(|e| fail(&e))?;
        }
        Ok(())
    }
}

/// Opens description `id`, a NETLINK_ROUTE socket: same type, port id (another one when a
/// socket of this network namespace has taken it meanwhile), groups and flags. Queued
/// messages were refused by the dump.
pub fn open_netlink(id: u32, s: &NetlinkSocket) -> Result<OwnedFd, RestoreError> {
    let name = format!(
        "netlink socket (protocol {}, port {})",
        s.protocol, s.portid
    );
    let fail = |e: &dyn std::fmt::Display| err(id, &name, e);
    if s.protocol != 0 {
        return Err(fail(&"only NETLINK_ROUTE sockets can be restored"));
    }
    let ty = match s.sock_type {
        libc::SOCK_RAW => SockType::Raw,
        libc::SOCK_DGRAM => SockType::Datagram,
        t => return Err(fail(&format!("socket type {t}"))),
    };
    let fd = socket(
        AddressFamily::Netlink,
        ty,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| fail(&format!("socket: {e}")))?;
    for (send, want) in [(true, s.sndbuf), (false, s.rcvbuf)] {
        let opt = if send {
            libc::SO_SNDBUF
        } else {
            libc::SO_RCVBUF
        };
        let now = sn::get_int(&fd, libc::SOL_SOCKET, opt, "SO_*BUF").map_err(|e| fail(&e))? as u32;
        if now != want {
            set_buf(&fd, send, want).map_err(|e| fail(&e))?;
        }
    }
    const SOL_NETLINK: i32 = 270;
    const NETLINK_ADD_MEMBERSHIP: i32 = 1;
    for &(opt, v) in &s.flags {
        set(&fd, SOL_NETLINK, opt, v as i32, "NETLINK flag").map_err(|e| fail(&e))?;
    }
    if s.portid != 0 {
        match sn::netlink_bind(&fd, s.portid, 0) {
            Ok(()) => {}
            Err(sys::SysError::Syscall {
                source: Errno::EADDRINUSE,
                ..
            }) => {
                tracing::warn!(
                    id,
                    portid = s.portid,
                    "netlink port id taken here; the kernel picks another"
                );
                sn::netlink_bind(&fd, 0, 0).map_err(|e| fail(&e))?;
            }
            Err(e) => return Err(fail(&e)),
        }
    }
    for &g in &s.groups {
        set(
            &fd,
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            g as i32,
            "NETLINK_ADD_MEMBERSHIP",
        )
        .map_err(|e| fail(&format!("join group {g}: {e}")))?;
    }
    Ok(fd)
}
