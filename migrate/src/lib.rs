//! Migration of VEs (`vzmigrate`): the QUIC transport with mutually pinned TLS 1.3
//! certificates ([`transport`]), the private area's sync ([`fsync`]), and the offline
//! migration of a running VE ([`offline`]: checkpoint, transfer, restore, commit). Online
//! migration with memory pre-copy builds on these.
#![forbid(unsafe_code)]

pub mod fsync;
pub mod offline;
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
    #[error("the peer aborted: {0}")]
    Aborted(String),
}

pub type Result<T> = std::result::Result<T, MigrateError>;
