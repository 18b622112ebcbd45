//! Extended attributes of an open file (`flistxattr(2)`, `fgetxattr(2)`, `fsetxattr(2)`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

use crate::{sys_err, Result};

/// Names and values of every extended attribute of `fd`.
pub fn list(fd: impl AsFd) -> Result<Vec<(String, Vec<u8>)>> {
    let raw = fd.as_fd().as_raw_fd();
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: the kernel writes at most `names.len()` bytes into the buffer we own.
        let r = unsafe { libc::flistxattr(raw, names.as_mut_ptr().cast(), names.len()) };
        match Errno::result(r) {
            Ok(n) => break n as usize,
            Err(Errno::ERANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(sys_err("flistxattr")(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).map_err(|_| crate::SysError::Invalid {
            op: "flistxattr",
            reason: "attribute name with NUL".into(),
        })?;
        let mut value = vec![0u8; 256];
        let len = loop {
            // SAFETY: `cname` is NUL-terminated; the kernel writes at most `value.len()` bytes.
            let r = unsafe {
                libc::fgetxattr(raw, cname.as_ptr(), value.as_mut_ptr().cast(), value.len())
            };
            match Errno::result(r) {
                Ok(n) => break n as usize,
                Err(Errno::ERANGE) if value.len() < (1 << 20) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(sys_err("fgetxattr")(e)),
            }
        };
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok(out)
}

/// Sets extended attribute `name` of `fd` to `value`.
pub fn set(fd: impl AsFd, name: &str, value: &[u8]) -> Result<()> {
    let cname = CString::new(name).map_err(|_| crate::SysError::Invalid {
        op: "fsetxattr",
        reason: format!("bad attribute name {name:?}"),
    })?;
    // SAFETY: `cname` is NUL-terminated and `value` is borrowed for the call.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map_err(sys_err("fsetxattr"))?;
    Ok(())
}

/// Names and values of every extended attribute of `path` itself, not following a final
/// symbolic link (`llistxattr(2)`, `lgetxattr(2)`): for symbolic links, device nodes and FIFOs,
/// which cannot be opened without side effects.
pub fn list_path(path: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let cpath =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| crate::SysError::Invalid {
            op: "llistxattr",
            reason: format!("path {} has a NUL byte", path.display()),
        })?;
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: `cpath` is NUL-terminated; the kernel writes at most `names.len()` bytes
        // into the buffer we own.
        let r = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        match Errno::result(r) {
            Ok(n) => break n as usize,
            Err(Errno::ERANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(sys_err("llistxattr")(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).map_err(|_| crate::SysError::Invalid {
            op: "llistxattr",
            reason: "attribute name with NUL".into(),
        })?;
        let mut value = vec![0u8; 256];
        let len = loop {
            // SAFETY: `cpath` and `cname` are NUL-terminated; the kernel writes at most
            // `value.len()` bytes into the buffer we own.
            let r = unsafe {
                libc::lgetxattr(
                    cpath.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            match Errno::result(r) {
                Ok(n) => break n as usize,
                Err(Errno::ERANGE) if value.len() < (1 << 20) => value.resize(value.len() * 4, 0),
                // Removed between the listing and now.
                Err(Errno::ENODATA) => break usize::MAX,
                Err(e) => return Err(sys_err("lgetxattr")(e)),
            }
        };
        if len == usize::MAX {
            continue;
        }
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok(out)
}

/// Sets extended attribute `name` of `path` itself (`lsetxattr(2)`: a final symbolic link is
/// not followed).
pub fn set_path(path: &std::path::Path, name: &[u8], value: &[u8]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cpath =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| crate::SysError::Invalid {
            op: "lsetxattr",
            reason: format!("path {} has a NUL byte", path.display()),
        })?;
    let cname = CString::new(name).map_err(|_| crate::SysError::Invalid {
        op: "lsetxattr",
        reason: format!("bad attribute name {:?}", String::from_utf8_lossy(name)),
    })?;
    // SAFETY: `cpath` and `cname` are NUL-terminated and `value` is borrowed for the call.
    let r = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map_err(sys_err("lsetxattr"))?;
    Ok(())
}
