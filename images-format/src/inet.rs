//! Records of network sockets that are not unix sockets: TCP and UDP over IPv4 and IPv6
//! (addresses, options, a TCP connection's repair state and both its queues, a UDP socket's
//! queued datagrams) and NETLINK_ROUTE sockets. They live inside the description they belong
//! to (`files::FileKind::Inet` / `FileKind::Netlink`).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Largest queue (each TCP queue, or all of a UDP socket's datagrams) saved in an image; a
/// decoder refuses more.
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InetFamily {
    V4,
    V6,
}

/// An IPv4 or IPv6 socket address; `scope_id` is the interface index of a link-local IPv6
/// address (0 otherwise).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InetAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub scope_id: u32,
}

impl fmt::Display for InetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Options set on the socket itself, as `getsockopt` reads them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SocketOptions {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub broadcast: bool,
    pub keepalive: bool,
    /// `SO_SNDBUF` / `SO_RCVBUF` as read (the kernel doubles what was set).
    pub sndbuf: u32,
    pub rcvbuf: u32,
    /// `SO_LINGER`: `Some(seconds)` when lingering is on.
    pub linger: Option<u32>,
    /// `SO_BINDTODEVICE`: the interface name, empty when unbound.
    pub bound_device: String,
    /// `SO_PRIORITY`.
    pub priority: u32,
    /// `IPV6_V6ONLY` (IPv6 sockets only).
    pub v6only: bool,
    /// TCP only: `TCP_NODELAY`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`.
    pub nodelay: bool,
    pub keepidle: u32,
    pub keepintvl: u32,
    pub keepcnt: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InetSocket {
    pub family: InetFamily,
    /// Local address (`getsockname`); port 0 when not bound.
    pub local: InetAddr,
    pub opts: SocketOptions,
    pub state: InetState,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum InetState {
    /// A TCP socket never connected nor listening (bound when `local.port != 0`).
    TcpClosed,
    /// A listening TCP socket with its backlog (its accept queue was empty).
    TcpListen { backlog: u32 },
    /// An established TCP connection, restored with `TCP_REPAIR`.
    TcpEstablished(Box<TcpConnection>),
    /// A UDP socket, bound when `local.port != 0`, connected to `peer` if any, with the
    /// datagrams waiting in its receive queue.
    Udp {
        peer: Option<InetAddr>,
        queue: Vec<Datagram>,
    },
}

/// What `TCP_REPAIR` needs to bring a connection back: sequence numbers, queues (the send
/// queue holds the bytes sent but not acknowledged, then `unsent` bytes never sent), and the
/// options negotiated with the peer.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct TcpConnection {
    pub peer: InetAddr,
    /// Sequence number after the last byte of the send queue (`TCP_QUEUE_SEQ`, send queue).
    pub send_seq: u32,
    /// Sequence number after the last byte of the receive queue.
    pub recv_seq: u32,
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    pub unsent: u32,
    pub recv_queue: Vec<u8>,
    /// `TCP_MAXSEG`.
    pub mss: u32,
    /// Window scaling negotiated: (ours for sending, ours for receiving).
    pub wscale: Option<(u8, u8)>,
    pub sack: bool,
    /// Timestamps negotiated; `timestamp` is the connection's clock (`TCP_TIMESTAMP`).
    pub timestamps: bool,
    pub timestamp: u32,
    pub window: Option<TcpWindow>,
    /// The peer is another socket of the dumped tree.
    pub peer_in_tree: bool,
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("peer", &self.peer.to_string())
            .field("send_seq", &self.send_seq)
            .field("recv_seq", &self.recv_seq)
            .field("send_queue_bytes", &self.send_queue.len())
            .field("unsent", &self.unsent)
            .field("recv_queue_bytes", &self.recv_queue.len())
            .field("mss", &self.mss)
            .field("wscale", &self.wscale)
            .field("sack", &self.sack)
            .field("timestamps", &self.timestamps)
            .field("window", &self.window)
            .field("peer_in_tree", &self.peer_in_tree)
            .finish()
    }
}

/// `struct tcp_repair_window`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct Datagram {
    pub from: InetAddr,
    pub data: Vec<u8>,
}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes from {}", self.data.len(), self.from)
    }
}

/// A NETLINK_ROUTE socket (the only netlink protocol restored).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NetlinkSocket {
    /// `SOCK_RAW` or `SOCK_DGRAM`.
    pub sock_type: i32,
    pub protocol: i32,
    /// Port id it is bound to; 0 when not bound yet.
    pub portid: u32,
    /// Multicast groups it has joined (group numbers, from 1).
    pub groups: Vec<u32>,
    pub sndbuf: u32,
    pub rcvbuf: u32,
    /// `NETLINK_*` flags that are on, as (option, value) pairs.
    pub flags: Vec<(i32, u32)>,
}

impl InetSocket {
    /// Checks what a restore relies on: queues within their cap, a family matching the
    /// addresses.
    pub fn check(&self) -> Result<(), String> {
        let fam_ok = |a: &InetAddr| {
            matches!(
                (self.family, a.ip),
                (InetFamily::V4, IpAddr::V4(_)) | (InetFamily::V6, IpAddr::V6(_))
            )
        };
        if !fam_ok(&self.local) {
            return Err(format!(
                "local address {} is not {:?}",
                self.local, self.family
            ));
        }
        match &self.state {
            InetState::TcpEstablished(c) => {
                if !fam_ok(&c.peer) {
                    return Err(format!("peer address {} is not {:?}", c.peer, self.family));
                }
                if c.send_queue.len() > MAX_QUEUE_BYTES || c.recv_queue.len() > MAX_QUEUE_BYTES {
                    return Err("a TCP queue is larger than the cap".into());
                }
                if c.unsent as usize > c.send_queue.len() {
                    return Err("more unsent bytes than the send queue holds".into());
                }
            }
            InetState::Udp { peer, queue } => {
                if peer.as_ref().is_some_and(|p| !fam_ok(p)) {
                    return Err(format!("peer address is not {:?}", self.family));
                }
                let total: usize = queue.iter().map(|d| d.data.len()).sum();
                if total > MAX_QUEUE_BYTES {
                    return Err("the queued datagrams exceed the cap".into());
                }
            }
            InetState::TcpClosed | InetState::TcpListen { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn round_trip_and_checks() {
        let addr = |p| InetAddr {
            ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: p,
            scope_id: 0,
        };
        let s = InetSocket {
            family: InetFamily::V6,
            local: addr(80),
            opts: SocketOptions::default(),
            state: InetState::TcpEstablished(Box::new(TcpConnection {
                peer: addr(4000),
                send_seq: 7,
                recv_seq: 9,
                send_queue: vec![1, 2, 3],
                unsent: 2,
                recv_queue: vec![4],
                mss: 65483,
                wscale: Some((7, 7)),
                sack: true,
                timestamps: true,
                timestamp: 1234,
                window: None,
                peer_in_tree: true,
            })),
        };
        let b = crate::encode(&s).unwrap();
        let back: InetSocket = crate::decode(&b, std::path::Path::new("f")).unwrap();
        assert_eq!(back, s);
        assert!(s.check().is_ok());
        let mut bad = s.clone();
        bad.family = InetFamily::V4;
        assert!(bad.check().is_err());
        assert_eq!(addr(80).to_string(), "[::1]:80");
    }
}
