//! VEs (containers): an init process and its tree in their own PID, mount, UTS, IPC and network
//! namespaces, in their own cgroups, on their own root file system (an overlay whose writable
//! layer is the VE's private area). This crate holds what `vzctl` and `vzlist` do.
//!
//! State lives under `$VZ_DIR` ([`Layout`]): configs, private areas, root mount points, dumps.
//! Whether a VE runs is read from its cgroup, never from a file that could go stale.
#![forbid(unsafe_code)]

pub mod backup;
pub mod cgroups;
pub mod config;
pub mod fs;
pub mod layout;
pub mod net;
pub mod ops;
pub mod snapshot;
pub mod start;

use std::path::PathBuf;

pub use config::VeConfig;
pub use layout::Layout;
pub use ops::Status;

#[derive(Debug, thiserror::Error)]
pub enum VeError {
    #[error("VE {ctid} does not exist")]
    NoSuchVe { ctid: u32 },
    #[error("VE {ctid} already exists")]
    Exists { ctid: u32 },
    #[error("VE {ctid} is {status}: {what}")]
    WrongStatus {
        ctid: u32,
        status: Status,
        what: String,
    },
    #[error("VE {ctid}: {what}")]
    Failed { ctid: u32, what: String },
    #[error("VE {ctid}: cannot {op} {path}")]
    Io {
        ctid: u32,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("VE {ctid}: checkpoint failed")]
    Dump {
        ctid: u32,
        #[source]
        source: cpt::DumpError,
    },
    #[error("VE {ctid}: restore failed")]
    Restore {
        ctid: u32,
        #[source]
        source: rst::RestoreError,
    },
    #[error("system call failed")]
    Sys(#[from] sys::SysError),
}

pub type Result<T> = std::result::Result<T, VeError>;

pub(crate) fn io_err(
    ctid: u32,
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> VeError {
    let path = path.into();
    move |source| VeError::Io {
        ctid,
        op,
        path,
        source,
    }
}
