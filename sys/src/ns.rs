//! Namespace helpers nix does not wrap: the loopback link's flags (an `ifreq` ioctl on a socket
//! of the calling thread's network namespace) and `setdomainname(2)`.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::{sys_err, Result};

fn ifreq_for(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(crate::SysError::Invalid {
            op: "ifreq",
            reason: format!("bad interface name {name:?}"),
        });
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and addresses);
    // all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The `IFF_*` flags of interface `name` in the calling thread's network namespace.
pub fn link_flags(name: &str) -> Result<u32> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys_err("socket"))?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes the flags member of the
    // `ifreq` we own, which lives for the whole call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(r).map_err(sys_err("ioctl(SIOCGIFFLAGS)"))?;
    // SAFETY: after SIOCGIFFLAGS the union holds `ifru_flags`.
    Ok(unsafe { req.ifr_ifru.ifru_flags } as u16 as u32)
}

/// Brings interface `name` up (`IFF_UP`) in the calling thread's network namespace.
pub fn set_link_up(name: &str) -> Result<()> {
    let flags = link_flags(name)?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys_err("socket"))?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_flags = (flags | libc::IFF_UP as u32) as i16;
    // SAFETY: SIOCSIFFLAGS reads the name and the flags member of the `ifreq` we own.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map_err(sys_err("ioctl(SIOCSIFFLAGS)"))?;
    Ok(())
}

/// `setdomainname(2)` in the caller's UTS namespace.
pub fn setdomainname(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    // SAFETY: the kernel reads exactly `bytes.len()` bytes from the slice we borrow.
    let r = unsafe { libc::setdomainname(bytes.as_ptr().cast(), bytes.len()) };
    Errno::result(r).map_err(sys_err("setdomainname"))?;
    Ok(())
}
