//! Socket options nix does not wrap: any integer or byte-buffer option by number (the
//! `TCP_REPAIR` family, `SO_PEEK_OFF`, `NETLINK_*`), `TCP_INFO`, the queue-size ioctls, and
//! socket addresses as `std::net::SocketAddr`.
//!
//! # References
//! - [tcp(7)](https://man7.org/linux/man-pages/man7/tcp.7.html), `linux/tcp.h` (`TCP_REPAIR*`)
//! - [socket(7)](https://man7.org/linux/man-pages/man7/socket.7.html), [netlink(7)](https://man7.org/linux/man-pages/man7/netlink.7.html)
#![allow(unsafe_code)]

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use crate::{sys_err, Result, SysError};

/// `linux/tcp.h` options not in libc.
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
/// `TCP_REPAIR_QUEUE` values.
pub const TCP_NO_QUEUE: i32 = 0;
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// `TCP_REPAIR_OPTIONS` option codes.
pub const TCPOPT_MAXSEG: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;
/// `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;
/// Queue sizes: unread bytes, unacknowledged + unsent bytes, unsent bytes.
pub const SIOCINQ: u64 = 0x541B;
pub const SIOCOUTQ: u64 = 0x5411;
pub const SIOCOUTQNSD: u64 = 0x894B;

/// TCP states as `TCP_INFO` reports them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// The name of a TCP state number.
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "unknown",
    }
}

/// `getsockopt(2)` of an `int` option.
pub fn get_int(fd: impl AsFd, level: i32, opt: i32, op: &'static str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` (= sizeof int) bytes into `v` and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r).map_err(sys_err(op))?;
    Ok(v)
}

/// `setsockopt(2)` of an `int` option.
pub fn set_int(fd: impl AsFd, level: i32, opt: i32, v: i32, op: &'static str) -> Result<()> {
    set_bytes(fd, level, opt, &v.to_ne_bytes(), op)
}

/// `getsockopt(2)` into `buf`; returns the length the kernel wrote.
pub fn get_bytes(
    fd: impl AsFd,
    level: i32,
    opt: i32,
    buf: &mut [u8],
    op: &'static str,
) -> Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` = buf.len() bytes into `buf`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    Errno::result(r).map_err(sys_err(op))?;
    Ok((len as usize).min(buf.len()))
}

/// `setsockopt(2)` from `buf`.
pub fn set_bytes(fd: impl AsFd, level: i32, opt: i32, buf: &[u8], op: &'static str) -> Result<()> {
    // SAFETY: the kernel reads at most buf.len() bytes from `buf`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            buf.as_ptr().cast(),
            buf.len() as libc::socklen_t,
        )
    };
    Errno::result(r).map_err(sys_err(op))?;
    Ok(())
}

/// An `ioctl(2)` whose result is one `int` (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
pub fn ioctl_int(fd: impl AsFd, req: u64, op: &'static str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int at the given address, which is `v`.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    Errno::result(r).map_err(sys_err(op))?;
    Ok(v)
}

/// The fields of `struct tcp_info` the engine uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpInfo {
    pub state: u8,
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// For a listener: connections waiting in the accept queue.
    pub unacked: u32,
    /// For a listener: its backlog.
    pub sacked: u32,
}

/// `getsockopt(TCP_INFO)`.
pub fn tcp_info(fd: impl AsFd) -> Result<TcpInfo> {
    let mut b = [0u8; 256];
    let n = get_bytes(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        &mut b,
        "getsockopt(TCP_INFO)",
    )?;
    if n < 32 {
        return Err(SysError::Invalid {
            op: "getsockopt(TCP_INFO)",
            reason: format!("short answer of {n} bytes"),
        });
    }
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    // Layout: u8 state, ca_state, retransmits, probes, backoff, options, then the two 4-bit
    // window scales in one byte (send in the low bits), a flags byte, then u32 rto, ato,
    // snd_mss, rcv_mss, unacked (offset 24), sacked (28), ...
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
    })
}

/// `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// `getsockopt(TCP_REPAIR_WINDOW)` of a socket in repair mode.
pub fn get_repair_window(fd: impl AsFd) -> Result<RepairWindow> {
    let mut b = [0u8; 20];
    let n = get_bytes(
        fd,
        libc::IPPROTO_TCP,
        TCP_REPAIR_WINDOW,
        &mut b,
        "getsockopt(TCP_REPAIR_WINDOW)",
    )?;
    if n != 20 {
        return Err(SysError::Invalid {
            op: "getsockopt(TCP_REPAIR_WINDOW)",
            reason: format!("answer of {n} bytes"),
        });
    }
    let w = |i: usize| u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
    Ok(RepairWindow {
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    })
}

/// `setsockopt(TCP_REPAIR_WINDOW)`.
pub fn set_repair_window(fd: impl AsFd, w: &RepairWindow) -> Result<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    set_bytes(
        fd,
        libc::IPPROTO_TCP,
        TCP_REPAIR_WINDOW,
        &b,
        "setsockopt(TCP_REPAIR_WINDOW)",
    )
}

/// `setsockopt(TCP_REPAIR_OPTIONS)` with (code, value) pairs (`struct tcp_repair_opt`).
pub fn set_repair_options(fd: impl AsFd, opts: &[(u32, u32)]) -> Result<()> {
    let mut b = Vec::with_capacity(opts.len() * 8);
    for (code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    set_bytes(
        fd,
        libc::IPPROTO_TCP,
        TCP_REPAIR_OPTIONS,
        &b,
        "setsockopt(TCP_REPAIR_OPTIONS)",
    )
}

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    if let Some(a) = s.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*a)));
    }
    None
}

/// `getsockname(2)` of an IPv4/IPv6 socket.
pub fn local_addr(fd: impl AsFd) -> Result<SocketAddr> {
    let s: SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_fd().as_raw_fd()).map_err(sys_err("getsockname"))?;
    to_std(&s).ok_or_else(|| SysError::Invalid {
        op: "getsockname",
        reason: format!("not an inet address (family {:?})", s.family()),
    })
}

/// `getpeername(2)` of an IPv4/IPv6 socket; `None` when not connected.
pub fn peer_addr(fd: impl AsFd) -> Result<Option<SocketAddr>> {
    match nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_fd().as_raw_fd()) {
        Ok(s) => Ok(to_std(&s)),
        Err(Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(SysError::Syscall {
            op: "getpeername",
            source: e,
        }),
    }
}

/// `bind(2)` to an inet address.
pub fn bind_inet(fd: impl AsFd, addr: &SocketAddr) -> Result<()> {
    let s = SockaddrStorage::from(*addr);
    nix::sys::socket::bind(fd.as_fd().as_raw_fd(), &s).map_err(sys_err("bind"))
}

/// `connect(2)` to an inet address.
pub fn connect_inet(fd: impl AsFd, addr: &SocketAddr) -> Result<()> {
    let s = SockaddrStorage::from(*addr);
    nix::sys::socket::connect(fd.as_fd().as_raw_fd(), &s).map_err(sys_err("connect"))
}

/// The next datagram of a receive queue, peeked (`MSG_PEEK | MSG_DONTWAIT`): its length and
/// source, or `None` when the queue has nothing more at the socket's peek offset.
pub fn peek_datagram(fd: impl AsFd, buf: &mut [u8]) -> Result<Option<(usize, Option<SocketAddr>)>> {
    use nix::sys::socket::MsgFlags;
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    match nix::sys::socket::recvmsg::<SockaddrStorage>(
        fd.as_fd().as_raw_fd(),
        &mut iov,
        None,
        flags,
    ) {
        Ok(m) => {
            let from = m.address.as_ref().and_then(to_std);
            Ok(Some((m.bytes, from)))
        }
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(SysError::Syscall {
            op: "recvmsg(MSG_PEEK)",
            source: e,
        }),
    }
}

/// `getsockname(2)` of a netlink socket: (port id, first 32 groups).
pub fn netlink_local(fd: impl AsFd) -> Result<(u32, u32)> {
    let s: SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_fd().as_raw_fd()).map_err(sys_err("getsockname"))?;
    let nl = s.as_netlink_addr().ok_or_else(|| SysError::Invalid {
        op: "getsockname",
        reason: "not a netlink address".into(),
    })?;
    Ok((nl.pid(), nl.groups()))
}

/// `bind(2)` of a netlink socket to a port id (0: let the kernel choose) and groups.
pub fn netlink_bind(fd: impl AsFd, portid: u32, groups: u32) -> Result<()> {
    let a = nix::sys::socket::NetlinkAddr::new(portid, groups);
    nix::sys::socket::bind(fd.as_fd().as_raw_fd(), &a).map_err(sys_err("bind(netlink)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

    #[test]
    fn options_and_info_of_a_listener() {
        let s = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        set_int(&s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "t").unwrap();
        assert_eq!(
            get_int(&s, libc::SOL_SOCKET, libc::SO_REUSEADDR, "t").unwrap(),
            1
        );
        bind_inet(&s, &"127.0.0.1:0".parse().unwrap()).unwrap();
        nix::sys::socket::listen(&s, nix::sys::socket::Backlog::new(17).unwrap()).unwrap();
        let info = tcp_info(&s).unwrap();
        assert_eq!(info.state, TCP_LISTEN);
        assert_eq!(info.sacked, 17);
        assert_eq!(info.unacked, 0);
        assert!(local_addr(&s).unwrap().port() != 0);
        assert_eq!(peer_addr(&s).unwrap(), None);
    }
}
