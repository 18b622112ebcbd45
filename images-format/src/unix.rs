//! Unix sockets, one record per socket held by the tree (inside its description in the files
//! image): type, name, connection state, peer, options and the data queued for it, read
//! without consuming it. Sockets refer to each other by their inode number at dump time.

use serde::{Deserialize, Serialize};

/// Cap on the bytes of one socket's queue the dumper saves.
pub const MAX_QUEUE_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixType {
    Stream,
    Dgram,
    SeqPacket,
}

impl UnixType {
    pub fn is_connection_oriented(self) -> bool {
        !matches!(self, UnixType::Dgram)
    }
}

/// A socket name as `bind(2)` takes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixName {
    /// A path in the file system (as bound: absolute).
    Path(Vec<u8>),
    /// An abstract name, without its leading NUL.
    Abstract(Vec<u8>),
}

impl UnixName {
    /// From the kernel's form: a leading NUL marks an abstract name (exactly its length); a
    /// path ends at its first NUL.
    pub fn from_raw(raw: &[u8]) -> Option<UnixName> {
        match raw.split_first() {
            None => None,
            Some((0, rest)) => Some(UnixName::Abstract(rest.to_vec())),
            Some(_) => Some(UnixName::Path(
                raw.split(|&b| b == 0).next().unwrap_or_default().to_vec(),
            )),
        }
    }
}

impl std::fmt::Display for UnixName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "{}", String::from_utf8_lossy(p)),
            UnixName::Abstract(a) => write!(f, "@{}", String::from_utf8_lossy(a)),
        }
    }
}

/// The socket file of a socket bound to a path, as it was at dump time.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No name.
    Unnamed,
    /// The socket bound this name itself. For a path, `file` is the socket file when it was
    /// still there; `None` when it was removed (or replaced) after the bind.
    Bound {
        name: UnixName,
        file: Option<SocketFile>,
    },
    /// An accepted connection: it shows its listener's name but does not own it.
    Accepted { name: UnixName },
}

impl Binding {
    pub fn name(&self) -> Option<&UnixName> {
        match self {
            Binding::Unnamed => None,
            Binding::Bound { name, .. } | Binding::Accepted { name } => Some(name),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum UnixState {
    /// Neither connected nor listening.
    Unconnected,
    /// Listening with this backlog; `pending` are the clients (by inode, oldest first)
    /// whose connections wait to be accepted.
    Listening { backlog: u32, pending: Vec<u64> },
    /// Connected to `peer`, another socket of the image (for a datagram socket the link may
    /// be one-way).
    Connected { peer: u64 },
    /// Connected to a peer that has closed since.
    PeerClosed,
    /// A client whose connection waits in the backlog of listener `listener`.
    Pending { listener: u64 },
}

/// Socket options that the tree may have changed (`SOL_SOCKET` level).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixOptions {
    /// `SO_SNDBUF` / `SO_RCVBUF` as getsockopt reports them (the kernel's doubled value).
    pub sndbuf: u32,
    pub rcvbuf: u32,
    pub passcred: bool,
    pub passsec: bool,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// `SO_PEEK_OFF`: -1 when disabled.
    pub peek_off: i32,
    /// `SO_RCVTIMEO` / `SO_SNDTIMEO` in microseconds (0: none).
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
}

/// One queued message (a datagram or seqpacket record), or for a stream socket all its
/// queued bytes as one entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixMessage {
    pub data: Vec<u8>,
    /// The sender's name (datagram sockets), when it was bound.
    pub from: Option<UnixName>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// Inode at dump time: how the other records refer to this socket.
    pub ino: u64,
    pub sock_type: UnixType,
    pub binding: Binding,
    pub state: UnixState,
    /// `RCV_SHUTDOWN` (1) | `SEND_SHUTDOWN` (2) as the socket has them.
    pub shutdown: u8,
    pub options: UnixOptions,
    /// Data waiting to be read by this socket, oldest first.
    pub queue: Vec<UnixMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_kernel_form() {
        assert_eq!(UnixName::from_raw(b""), None);
        assert_eq!(
            UnixName::from_raw(b"/run/x.sock\0"),
            Some(UnixName::Path(b"/run/x.sock".to_vec()))
        );
        assert_eq!(
            UnixName::from_raw(b"\0ab\0c"),
            Some(UnixName::Abstract(b"ab\0c".to_vec()))
        );
        assert_eq!(UnixName::Abstract(b"ab".to_vec()).to_string(), "@ab");
    }

    #[test]
    fn round_trip_in_a_files_image() {
        let s = UnixSocket {
            ino: 7,
            sock_type: UnixType::SeqPacket,
            binding: Binding::Accepted {
                name: UnixName::Path(b"/l".to_vec()),
            },
            state: UnixState::Listening {
                backlog: 5,
                pending: vec![1, 2],
            },
            shutdown: 3,
            options: UnixOptions {
                peek_off: -1,
                ..Default::default()
            },
            queue: vec![UnixMessage {
                data: vec![1, 2, 3],
                from: Some(UnixName::Abstract(vec![9])),
            }],
        };
        let img = crate::files::FilesImage {
            descs: vec![crate::files::FileDesc {
                id: 0,
                flags: 2,
                pos: 0,
                kind: crate::files::FileKind::UnixSocket(Box::new(s)),
            }],
            tables: Vec::new(),
        };
        let b = crate::encode(&img).unwrap();
        assert_eq!(
            crate::decode::<crate::files::FilesImage>(&b, std::path::Path::new("f")).unwrap(),
            img
        );
    }
}
