//! Unix sockets: the `sock_diag` netlink query (`NETLINK_SOCK_DIAG`, `AF_UNIX`) that lists
//! every unix socket of the caller's network namespace with its peer, pending connections,
//! queue lengths and name, and the few socket calls nix does not wrap (integer and timeval
//! options by number, peeking at a message with its sender and any descriptors in flight).
//!
//! The netlink socket sees the network namespace of the thread that opens it: run
//! [`unix_diag_dump`] on a thread that has `setns`ed into the namespace wanted.
//!
//! # References
//! - [sock_diag(7)](https://man7.org/linux/man-pages/man7/sock_diag.7.html)
//! - `include/uapi/linux/unix_diag.h`, `net/unix/diag.c`
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::{sys_err, Result, SysError};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;
/// `TCP_LISTEN`, the state sock_diag reports for a listening unix socket.
pub const STATE_LISTEN: u8 = 10;

/// One unix socket as `sock_diag` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: u8,
    /// `TCP_ESTABLISHED` (1), `TCP_CLOSE` (7), [`STATE_LISTEN`] (10), ...
    pub state: u8,
    /// The bound (or, for an accepted socket, inherited) name: a path, or a leading NUL and
    /// an abstract name.
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the socket file, for the socket that bound a path itself.
    pub vfs: Option<(u32, u32)>,
    /// Inode of the peer; `Some(0)` when the peer is gone (closed) or not yet accepted.
    pub peer: Option<u32>,
    /// For a listener: inodes of the clients whose connections wait in its backlog, oldest
    /// first.
    pub icons: Vec<u32>,
    /// For a listener: (pending connections, backlog). Otherwise: (bytes readable, bytes sent
    /// and not yet read by the peer).
    pub rqlen: Option<(u32, u32)>,
    /// `RCV_SHUTDOWN` (1) | `SEND_SHUTDOWN` (2).
    pub shutdown: u8,
    pub uid: Option<u32>,
}

fn invalid(reason: String) -> SysError {
    SysError::Invalid {
        op: "sock_diag(AF_UNIX)",
        reason,
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Every unix socket of the calling thread's network namespace.
pub fn unix_diag_dump() -> Result<Vec<UnixDiag>> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(sys_err("socket(NETLINK_SOCK_DIAG)"))?;
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    let show = UDIAG_SHOW_NAME
        | UDIAG_SHOW_VFS
        | UDIAG_SHOW_PEER
        | UDIAG_SHOW_ICONS
        | UDIAG_SHOW_RQLEN
        | UDIAG_SHOW_UID;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    nix::sys::socket::sendto(
        sock.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(sys_err("send(sock_diag request)"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(sys_err("recv(sock_diag)"))?;
        if n == 0 {
            return Err(invalid("the netlink socket closed mid-dump".into()));
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off) as usize;
            let ty = u16_at(&buf, off + 4);
            if len < 16 || off + len > n {
                return Err(invalid(format!("bad netlink message length {len}")));
            }
            let msg = &buf[off + 16..off + len];
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let errno = if msg.len() >= 4 {
                        -(u32_at(msg, 0) as i32)
                    } else {
                        0
                    };
                    return Err(SysError::Syscall {
                        op: "sock_diag(AF_UNIX)",
                        source: Errno::from_raw(errno),
                    });
                }
                _ if ty == SOCK_DIAG_BY_FAMILY => out.push(parse_one(msg)?),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

fn parse_one(msg: &[u8]) -> Result<UnixDiag> {
    // unix_diag_msg: family, type, state, pad, ino, cookie[2].
    if msg.len() < 16 {
        return Err(invalid(format!(
            "short unix_diag_msg ({} bytes)",
            msg.len()
        )));
    }
    let mut d = UnixDiag {
        sock_type: msg[1],
        state: msg[2],
        ino: u32_at(msg, 4),
        ..Default::default()
    };
    let mut off = 16;
    while off + 4 <= msg.len() {
        let alen = u16_at(msg, off) as usize;
        let aty = u16_at(msg, off + 2) & 0x3fff;
        if alen < 4 || off + alen > msg.len() {
            return Err(invalid(format!(
                "bad attribute length {alen} for socket {}",
                d.ino
            )));
        }
        let a = &msg[off + 4..off + alen];
        match aty {
            UNIX_DIAG_NAME => d.name = Some(a.to_vec()),
            UNIX_DIAG_VFS if a.len() >= 8 => d.vfs = Some((u32_at(a, 0), u32_at(a, 4))),
            UNIX_DIAG_PEER if a.len() >= 4 => d.peer = Some(u32_at(a, 0)),
            UNIX_DIAG_ICONS => d.icons = a.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN if a.len() >= 8 => d.rqlen = Some((u32_at(a, 0), u32_at(a, 4))),
            UNIX_DIAG_SHUTDOWN if !a.is_empty() => d.shutdown = a[0],
            UNIX_DIAG_UID if a.len() >= 4 => d.uid = Some(u32_at(a, 0)),
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    Ok(d)
}

/// `getsockopt(2)` of an `int` option (see [`crate::net::get_int`]).
pub fn getsockopt_int(fd: impl AsFd, level: i32, opt: i32) -> Result<i32> {
    crate::net::get_int(fd, level, opt, "getsockopt")
}

/// `setsockopt(2)` of an `int` option (see [`crate::net::set_int`]).
pub fn setsockopt_int(fd: impl AsFd, level: i32, opt: i32, v: i32) -> Result<()> {
    crate::net::set_int(fd, level, opt, v, "setsockopt")
}

/// `accept4(2)` with `SOCK_CLOEXEC`: the next connection waiting on listener `fd`.
pub fn accept(fd: impl AsFd) -> Result<OwnedFd> {
    let r = nix::sys::socket::accept4(fd.as_fd().as_raw_fd(), SockFlag::SOCK_CLOEXEC)
        .map_err(sys_err("accept4"))?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `connect(2)` to an `AF_UNSPEC` address: dissolves a datagram socket's association.
pub fn disconnect(fd: impl AsFd) -> Result<()> {
    // SAFETY: all-zero is a valid sockaddr; its family is AF_UNSPEC (0).
    let addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel reads `size_of::<sockaddr>()` bytes from `addr`, which lives for the
    // call.
    let r = unsafe {
        libc::connect(
            fd.as_fd().as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    Errno::result(r).map_err(sys_err("connect(AF_UNSPEC)"))?;
    Ok(())
}

/// One message peeked at with `recvmsg(MSG_PEEK)`.
#[derive(Debug)]
pub struct Peeked {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The message's real length (datagrams): larger than `len` when the buffer was too small.
    pub full_len: usize,
    /// The sender's name (a path, or a leading NUL and an abstract name) when the sender was
    /// bound.
    pub from: Option<Vec<u8>>,
    /// How many descriptors travel with the data (`SCM_RIGHTS`); the copies the peek gave
    /// this process are closed again.
    pub fds_in_flight: usize,
}

/// `recvmsg(fd, MSG_PEEK | MSG_DONTWAIT)` into `buf` (with `MSG_TRUNC` for a datagram
/// socket, to learn each message's real length): `Ok(None)` when nothing is queued (`EAGAIN`).
pub fn peek_message(fd: impl AsFd, buf: &mut [u8], datagram: bool) -> Result<Option<Peeked>> {
    let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    if datagram {
        flags |= libc::MSG_TRUNC;
    }
    // SAFETY: all-zero is a valid sockaddr_un and msghdr.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Room for 253 descriptors (SCM_MAX_FD) and credentials, u64-aligned.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&mut name as *mut libc::sockaddr_un).cast();
    hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `hdr` points to a live buffer of the length given beside it
    // (`name`, `buf` through `iov`, `control`), all outliving the call.
    let r = unsafe { libc::recvmsg(fd.as_fd().as_raw_fd(), &mut hdr, flags) };
    let full_len = match Errno::result(r) {
        Ok(n) => n as usize,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(sys_err("recvmsg(MSG_PEEK)")(e)),
    };
    let mut fds_in_flight = 0;
    // SAFETY: `hdr` was filled by the kernel: the CMSG macros walk `control` within
    // `msg_controllen`, which the kernel set to what it wrote.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !c.is_null() {
        // SAFETY: `c` points to a complete cmsghdr inside `control` (CMSG_FIRSTHDR/NXTHDR
        // check the bounds).
        let (level, ty, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / 4;
            // SAFETY: the data of this cmsg holds `count` ints inside `control`.
            let data = unsafe { libc::CMSG_DATA(c) } as *const libc::c_int;
            for i in 0..count {
                // SAFETY: i < count, within the cmsg's data; unaligned read to be safe.
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel just installed `fd` in this process for this peek;
                // nothing else knows the number, so we own it and close it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            fds_in_flight += count;
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&hdr, c) };
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 && fds_in_flight == 0 {
        // Descriptors that did not fit were dropped by the kernel: there were some.
        fds_in_flight = 1;
    }
    let path_off = std::mem::size_of::<libc::sa_family_t>();
    let name_len = (hdr.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    let from = (name_len > path_off).then(|| {
        let raw: Vec<u8> = name.sun_path[..name_len - path_off]
            .iter()
            .map(|&c| c as u8)
            .collect();
        // A path comes NUL-terminated; an abstract name is exactly its length.
        if raw.first() == Some(&0) {
            raw
        } else {
            raw.split(|&b| b == 0).next().unwrap_or(&[]).to_vec()
        }
    });
    Ok(Some(Peeked {
        len: full_len.min(buf.len()),
        full_len,
        from,
        fds_in_flight,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{bind, connect, listen, send, socketpair, Backlog, UnixAddr};

    fn find(all: &[UnixDiag], fd: &OwnedFd) -> UnixDiag {
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
            .unwrap();
        all.iter()
            .find(|d| d.ino == ino)
            .cloned()
            .unwrap_or_else(|| panic!("socket {ino} not listed"))
    }

    #[test]
    fn diag_lists_peers_backlog_and_queues() {
        let name = format!("vzcpt-sys-test-{}", std::process::id());
        let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        let l = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(l.as_raw_fd(), &addr).unwrap();
        listen(&l, Backlog::new(7).unwrap()).unwrap();
        let c1 = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(c1.as_raw_fd(), &addr).unwrap();
        let a1 = super::accept(&l).unwrap();
        let c2 = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(c2.as_raw_fd(), &addr).unwrap();
        send(c1.as_raw_fd(), b"hello", MsgFlags::empty()).unwrap();
        let (p, q) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send(p.as_raw_fd(), b"m1", MsgFlags::empty()).unwrap();
        send(p.as_raw_fd(), b"msg2", MsgFlags::empty()).unwrap();

        let all = unix_diag_dump().unwrap();
        let (dl, dc1, da1, dc2, dq) = (
            find(&all, &l),
            find(&all, &c1),
            find(&all, &a1),
            find(&all, &c2),
            find(&all, &q),
        );
        let mut abstract_name = vec![0u8];
        abstract_name.extend_from_slice(name.as_bytes());
        assert_eq!(dl.state, STATE_LISTEN);
        assert_eq!(dl.name.as_deref(), Some(&abstract_name[..]));
        assert_eq!(dl.rqlen, Some((1, 7)), "one pending connection, backlog 7");
        assert_eq!(dl.icons, vec![dc2.ino]);
        assert_eq!(dc1.peer, Some(da1.ino));
        assert_eq!(da1.peer, Some(dc1.ino));
        assert_eq!(da1.name.as_deref(), Some(&abstract_name[..]));
        assert_eq!(da1.rqlen.map(|r| r.0), Some(5));
        assert_eq!(dq.rqlen.map(|r| r.0), Some(2), "first datagram's length");

        let mut buf = [0u8; 16];
        let m = peek_message(&q, &mut buf, true).unwrap().unwrap();
        assert_eq!((m.len, m.full_len, m.fds_in_flight), (2, 2, 0));
        let m = peek_message(&a1, &mut buf[..3], false).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"hel");
        assert_eq!(
            getsockopt_int(&q, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        setsockopt_int(&q, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).unwrap();
        let m = peek_message(&q, &mut buf, true).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"m1");
        let m = peek_message(&q, &mut buf, true).unwrap().unwrap();
        assert_eq!(&buf[..m.len], b"msg2");
        assert!(peek_message(&q, &mut buf, true).unwrap().is_none());
        drop(c2);
    }
}
