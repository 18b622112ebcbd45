//! Migration of VEs (`vzmigrate`): the QUIC transport with mutually pinned TLS 1.3
//! certificates ([`transport`]), the private area's sync ([`fsync`]), and the offline
//! migration of a running VE ([`offline`]: checkpoint, transfer, restore, commit), and online
//! migration, which adds memory pre-copy rounds before the checkpoint ([`precopy`] on the
//! source, [`staging`] on the destination).
#![forbid(unsafe_code)]

pub mod fsync;
pub mod offline;
pub mod precopy;
pub mod staging;
pub mod streams;
pub mod transport;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keys: {0}")]
    Keys(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Connection(String),
    #[error("protocol")]
    Proto(#[from] proto::ProtoError),
    /// The migration stopped: what failed, on which side.
    #[error("{0}")]
    Aborted(String),
}

pub type Result<T> = std::result::Result<T, MigrateError>;

/// An error with its causes, as one line ("cannot write X: No space left on device").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
