//! Unix sockets. They depend on each other (peers, listeners and their waiting clients), so
//! the first unix socket opened builds all of the image's at once, in the restorer (or, for a
//! tree with namespaces of its own, in its root inside them), in this order:
//!
//! 1. create: a connected pair that neither side accepted is a `socketpair`; a socket whose
//!    peer has closed is one end of a `socketpair` whose other end is closed once its data is
//!    written; everything else a plain `socket`;
//! 2. bind the names each socket owns (a stale socket file at the path, one no socket listens
//!    on any more, is removed first: the usual case after a dump), then the file's owner and
//!    mode as dumped; a path whose file was removed after the bind is removed again;
//! 3. listen with the dumped backlog;
//! 4. datagram queues, each message sent from the socket bound to its sender's name when the
//!    image has it (else from a temporary socket bound to that name, else unnamed), before
//!    any datagram socket connects (a connected socket only receives from its peer);
//! 5. connections through listeners: each accepted one is connected and accepted again, then
//!    the clients waiting in the backlog connect in their order and stay there; an accepted
//!    connection whose listener is gone goes through a temporary listener at the same name;
//! 6. datagram associations (`connect` to the peer's name);
//! 7. stream and seqpacket queues, written by the peer;
//! 8. shutdowns, then options (buffer sizes, `SO_PASSCRED`, timeouts, peek offset).
//!
//! Buffer sizes: `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` (which need `CAP_NET_ADMIN`) set the dumped
//! value exactly; without the capability the plain options are used, which the kernel caps at
//! `net.core.wmem_max`/`rmem_max`, and a size that then differs is logged as a warning.
//! Credentials attached to queued messages (`SO_PASSCRED`) and `SO_PEERCRED` are the
//! restorer's, not the original senders'.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use images_format::files::{FileKind, FilesImage};
use images_format::unix::{Binding, UnixName, UnixSocket, UnixState, UnixType};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, listen, send, sendto, socket, socketpair, AddressFamily, Backlog, MsgFlags,
    Shutdown, SockFlag, SockType, UnixAddr,
};
use sys::unix_sock::{self, getsockopt_int, setsockopt_int};

use crate::RestoreError;

fn err(s: &UnixSocket, what: &str, e: impl std::fmt::Display) -> RestoreError {
    let name = match s.binding.name() {
        Some(n) => format!(" ({n})"),
        None => String::new(),
    };
    RestoreError::Files(format!("unix socket {}{name}: {what}: {e}", s.ino))
}

fn sock_type(t: UnixType) -> SockType {
    match t {
        UnixType::Stream => SockType::Stream,
        UnixType::Dgram => SockType::Datagram,
        UnixType::SeqPacket => SockType::SeqPacket,
    }
}

fn addr_of(name: &UnixName) -> nix::Result<UnixAddr> {
    match name {
        UnixName::Path(p) => UnixAddr::new(OsStr::from_bytes(p)),
        UnixName::Abstract(a) => UnixAddr::new_abstract(a),
    }
}

fn path_of(name: &UnixName) -> Option<&std::path::Path> {
    match name {
        UnixName::Path(p) => Some(std::path::Path::new(OsStr::from_bytes(p))),
        UnixName::Abstract(_) => None,
    }
}

/// Whether `path` is a socket file nobody listens on any more: connecting to it is refused.
fn is_stale_socket_file(path: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.file_type().is_socket() {
        return false;
    }
    let Ok(probe) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    connect(probe.as_raw_fd(), &addr) == Err(Errno::ECONNREFUSED)
}

/// `bind` to `name`; a stale socket file in the way is removed first (and said so).
fn bind_name(fd: &OwnedFd, name: &UnixName) -> Result<(), String> {
    let addr = addr_of(name).map_err(|e| format!("bad name: {e}"))?;
    match bind(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(()),
        Err(Errno::EADDRINUSE) => {
            let Some(path) = path_of(name).filter(|p| is_stale_socket_file(p)) else {
                return Err(format!(
                    "bind {name}: the name is in use{}",
                    if path_of(name).is_some() {
                        " (and the file there is not a stale socket file)"
                    } else {
                        ""
                    }
                ));
            };
            tracing::info!(path = %path.display(), "removing a stale socket file to bind a restored socket");
            std::fs::remove_file(path).map_err(|e| format!("remove stale {name}: {e}"))?;
            bind(fd.as_raw_fd(), &addr).map_err(|e| format!("bind {name}: {e}"))
        }
        Err(e) => Err(format!("bind {name}: {e}")),
    }
}

/// All unix sockets of an image, built together on first use.
pub struct UnixSockets<'a> {
    by_ino: HashMap<u64, &'a UnixSocket>,
    /// Inodes in image order, so that building is deterministic.
    order: Vec<u64>,
    built: Option<HashMap<u64, OwnedFd>>,
}

impl<'a> UnixSockets<'a> {
    pub fn new(files: &'a FilesImage) -> Self {
        let mut by_ino = HashMap::new();
        let mut order = Vec::new();
        for d in &files.descs {
            if let FileKind::UnixSocket(s) = &d.kind {
                by_ino.insert(s.ino, &**s);
                order.push(s.ino);
            }
        }
        UnixSockets {
            by_ino,
            order,
            built: None,
        }
    }

    /// The restored socket `s`, building every socket of the image the first time.
    pub fn take(&mut self, s: &UnixSocket) -> Result<OwnedFd, RestoreError> {
        if self.built.is_none() {
            self.built = Some(Builder::new(self).build()?);
        }
        self.built
            .as_mut()
            .and_then(|b| b.remove(&s.ino))
            .ok_or_else(|| err(s, "restore", "the socket has two descriptions in the image"))
    }
}

struct Builder<'a, 'b> {
    set: &'b UnixSockets<'a>,
    fds: HashMap<u64, OwnedFd>,
    /// Other ends of socketpairs made only to write a socket's queue (its peer closed, or it
    /// is unnamed and unconnected), closed once written.
    partners: HashMap<u64, OwnedFd>,
    /// Sockets made with `socketpair` (their link needs no `connect`).
    paired: std::collections::HashSet<u64>,
    /// Buffer sizes of a new socket of each type, to leave defaults alone.
    defaults: HashMap<u8, (i32, i32)>,
}

impl<'a, 'b> Builder<'a, 'b> {
    fn new(set: &'b UnixSockets<'a>) -> Self {
        Builder {
            set,
            fds: HashMap::new(),
            partners: HashMap::new(),
            paired: Default::default(),
            defaults: HashMap::new(),
        }
    }

    fn sockets(&self) -> impl Iterator<Item = &'a UnixSocket> + '_ {
        self.set.order.iter().map(|i| self.set.by_ino[i])
    }

    fn get(&self, ino: u64) -> Option<&'a UnixSocket> {
        self.set.by_ino.get(&ino).copied()
    }

    /// The peer of `s` if it is connected back to `s`.
    fn mutual_peer(&self, s: &UnixSocket) -> Option<&'a UnixSocket> {
        let UnixState::Connected { peer } = s.state else {
            return None;
        };
        self.get(peer)
            .filter(|p| p.state == UnixState::Connected { peer: s.ino })
    }

    fn fd(&self, s: &UnixSocket) -> Result<&OwnedFd, RestoreError> {
        self.fds
            .get(&s.ino)
            .ok_or_else(|| err(s, "restore", "the socket was not created"))
    }

    fn build(mut self) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
        self.create()?;
        self.bind_all()?;
        for s in self.sockets() {
            if let UnixState::Listening { backlog, .. } = s.state {
                let b = Backlog::new(backlog.min(i32::MAX as u32) as i32)
                    .map_err(|e| err(s, "backlog", e))?;
                listen(self.fd(s)?, b).map_err(|e| err(s, "listen", e))?;
            }
        }
        self.datagram_queues()?;
        self.connect_through_listeners()?;
        self.datagram_links()?;
        self.stream_queues()?;
        // Closing the partners of sockets whose peer had closed: they see it again.
        self.partners.clear();
        for s in self.sockets() {
            self.finish_socket(s)?;
        }
        Ok(self.fds)
    }

    fn new_socket(&mut self, s: &UnixSocket) -> Result<OwnedFd, RestoreError> {
        let fd = socket(
            AddressFamily::Unix,
            sock_type(s.sock_type),
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(s, "socket", e))?;
        self.note_defaults(s, &fd)?;
        Ok(fd)
    }

    fn note_defaults(&mut self, s: &UnixSocket, fd: &OwnedFd) -> Result<(), RestoreError> {
        let key = s.sock_type as u8;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.defaults.entry(key) {
            let snd = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
                .map_err(|e| err(s, "SO_SNDBUF", e))?;
            let rcv = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
                .map_err(|e| err(s, "SO_RCVBUF", e))?;
            slot.insert((snd, rcv));
        }
        Ok(())
    }

    fn pair(&mut self, s: &UnixSocket) -> Result<(OwnedFd, OwnedFd), RestoreError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            sock_type(s.sock_type),
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| err(s, "socketpair", e))?;
        self.note_defaults(s, &a)?;
        Ok((a, b))
    }

    /// Step 1.
    fn create(&mut self) -> Result<(), RestoreError> {
        let all: Vec<&UnixSocket> = self.sockets().collect();
        for s in all {
            if self.fds.contains_key(&s.ino) {
                continue;
            }
            match &s.state {
                UnixState::Connected { peer } => {
                    let p = self.get(*peer).ok_or_else(|| {
                        err(s, "connect", format!("its peer {peer} is not in the image"))
                    })?;
                    let accepted = matches!(s.binding, Binding::Accepted { .. })
                        || matches!(p.binding, Binding::Accepted { .. });
                    if let (Some(_), false) = (self.mutual_peer(s), accepted) {
                        if p.sock_type != s.sock_type {
                            return Err(err(s, "connect", "its peer is of another type"));
                        }
                        let (a, b) = self.pair(s)?;
                        self.fds.insert(s.ino, a);
                        self.fds.insert(p.ino, b);
                        self.paired.extend([s.ino, p.ino]);
                    } else if matches!(s.binding, Binding::Accepted { .. }) {
                        // Comes out of `accept` in step 5.
                    } else {
                        let fd = self.new_socket(s)?;
                        self.fds.insert(s.ino, fd);
                    }
                }
                UnixState::PeerClosed => {
                    let (a, b) = self.pair(s)?;
                    self.fds.insert(s.ino, a);
                    self.partners.insert(s.ino, b);
                }
                UnixState::Unconnected
                    if s.binding.name().is_none()
                        && !s.queue.is_empty()
                        && s.sock_type == UnixType::Dgram =>
                {
                    // Nobody can name it: its queue comes from a partner, then it leaves it.
                    let (a, b) = self.pair(s)?;
                    self.fds.insert(s.ino, a);
                    self.partners.insert(s.ino, b);
                }
                _ => {
                    let fd = self.new_socket(s)?;
                    self.fds.insert(s.ino, fd);
                }
            }
        }
        Ok(())
    }

    /// Step 2. Names whose file was removed after the bind go first: the path may since
    /// belong to another socket.
    fn bind_all(&mut self) -> Result<(), RestoreError> {
        let mut bound: Vec<&UnixSocket> = self
            .sockets()
            .filter(|s| matches!(s.binding, Binding::Bound { .. }))
            .collect();
        bound.sort_by_key(|s| {
            !matches!(
                s.binding,
                Binding::Bound {
                    name: UnixName::Path(_),
                    file: None
                }
            )
        });
        for s in bound {
            let Binding::Bound { name, file } = &s.binding else {
                continue;
            };
            bind_name(self.fd(s)?, name).map_err(|e| err(s, "bind", e))?;
            let Some(path) = path_of(name) else {
                continue;
            };
            match file {
                Some(f) => {
                    std::os::unix::fs::lchown(path, Some(f.uid), Some(f.gid))
                        .map_err(|e| err(s, "chown its socket file", e))?;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
                        .map_err(|e| err(s, "chmod its socket file", e))?;
                }
                None => std::fs::remove_file(path)
                    .map_err(|e| err(s, "remove its socket file (it was removed)", e))?,
            }
        }
        Ok(())
    }

    /// Step 4.
    fn datagram_queues(&mut self) -> Result<(), RestoreError> {
        let all: Vec<&UnixSocket> = self
            .sockets()
            .filter(|s| s.sock_type == UnixType::Dgram && !s.queue.is_empty())
            .collect();
        for s in all {
            let via: Option<&OwnedFd> = match self.partners.get(&s.ino) {
                Some(p) => Some(p),
                None if self.paired.contains(&s.ino) => {
                    let UnixState::Connected { peer } = s.state else {
                        continue;
                    };
                    self.fds.get(&peer)
                }
                None => None,
            };
            if let Some(via) = via {
                for m in &s.queue {
                    send(via.as_raw_fd(), &m.data, MsgFlags::MSG_DONTWAIT)
                        .map_err(|e| queue_err(s, e))?;
                }
                continue;
            }
            let to = s.binding.name().ok_or_else(|| {
                err(
                    s,
                    "refill its queue",
                    "it has no name and no peer to send from",
                )
            })?;
            let to = addr_of(to).map_err(|e| err(s, "name", e))?;
            for m in &s.queue {
                let sender = m.from.as_ref().and_then(|from| {
                    self.sockets().find(|x| {
                        x.sock_type == UnixType::Dgram
                            && matches!(&x.binding, Binding::Bound { name, .. } if name == from)
                    })
                });
                let temp;
                let fd = match sender {
                    Some(x) => self.fd(x)?,
                    None => {
                        temp = self.temp_sender(s, m.from.as_ref())?;
                        &temp.0
                    }
                };
                sendto(fd.as_raw_fd(), &m.data, &to, MsgFlags::MSG_DONTWAIT)
                    .map_err(|e| queue_err(s, e))?;
            }
        }
        Ok(())
    }

    /// A datagram socket bound to `from` if that name is free (an abstract name, or a path
    /// where nothing is), else unnamed; a path it created is removed when dropped.
    fn temp_sender(
        &self,
        s: &UnixSocket,
        from: Option<&UnixName>,
    ) -> Result<TempSocket, RestoreError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(s, "socket", e))?;
        let mut created = None;
        if let Some(from) = from {
            let free = path_of(from).is_none_or(|p| std::fs::symlink_metadata(p).is_err());
            let bound = free && addr_of(from).and_then(|a| bind(fd.as_raw_fd(), &a)).is_ok();
            if bound {
                created = path_of(from).map(|p| p.to_path_buf());
            } else {
                tracing::warn!(socket = s.ino, sender = %from, "a queued datagram's sender name is taken: it is requeued from an unnamed socket");
            }
        }
        Ok(TempSocket(fd, created))
    }

    /// Step 5.
    fn connect_through_listeners(&mut self) -> Result<(), RestoreError> {
        let all: Vec<&UnixSocket> = self.sockets().collect();
        // Accepted connections, each through its listener (or a stand-in at the same name).
        for a in &all {
            let Binding::Accepted { name } = &a.binding else {
                continue;
            };
            let UnixState::Connected { peer } = a.state else {
                return Err(err(a, "accept", "an accepted socket that is not connected"));
            };
            let client = self
                .get(peer)
                .filter(|c| c.state == UnixState::Connected { peer: a.ino })
                .ok_or_else(|| {
                    err(
                        a,
                        "accept",
                        format!("its peer {peer} is not connected back"),
                    )
                })?;
            let listener = all.iter().find(|l| {
                l.sock_type == a.sock_type
                    && matches!(l.state, UnixState::Listening { .. })
                    && matches!(&l.binding, Binding::Bound { name: n, .. } if n == name)
            });
            let addr = addr_of(name).map_err(|e| err(a, "name", e))?;
            let accepted = match listener {
                Some(l) => {
                    connect(self.fd(client)?.as_raw_fd(), &addr)
                        .map_err(|e| err(client, &format!("connect to {name}"), e))?;
                    unix_sock::accept(self.fd(l)?).map_err(|e| err(a, "accept", e))?
                }
                None => {
                    // The listener is gone: a stand-in at its name, closed at once.
                    let stand_in = socket(
                        AddressFamily::Unix,
                        sock_type(a.sock_type),
                        SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                    .map_err(|e| err(a, "socket", e))?;
                    let had_file =
                        path_of(name).is_some_and(|p| std::fs::symlink_metadata(p).is_ok());
                    bind_name(&stand_in, name)
                        .map_err(|e| err(a, "bind a stand-in for its closed listener", e))?;
                    listen(&stand_in, Backlog::new(1).map_err(|e| err(a, "listen", e))?)
                        .map_err(|e| err(a, "listen", e))?;
                    connect(self.fd(client)?.as_raw_fd(), &addr)
                        .map_err(|e| err(client, &format!("connect to {name}"), e))?;
                    let fd = unix_sock::accept(&stand_in).map_err(|e| err(a, "accept", e))?;
                    if let (Some(p), false) = (path_of(name), had_file) {
                        let _ = std::fs::remove_file(p);
                    }
                    fd
                }
            };
            self.note_defaults(a, &accepted)?;
            self.fds.insert(a.ino, accepted);
        }
        // Clients waiting in each backlog, in their order.
        for l in &all {
            let UnixState::Listening { pending, .. } = &l.state else {
                continue;
            };
            let Some(name) = l.binding.name() else {
                if pending.is_empty() {
                    continue;
                }
                return Err(err(
                    l,
                    "listen",
                    "a listener without a name has clients waiting",
                ));
            };
            let addr = addr_of(name).map_err(|e| err(l, "name", e))?;
            for c in pending {
                let client = self
                    .get(*c)
                    .ok_or_else(|| err(l, "backlog", format!("client {c} is not in the image")))?;
                let fd = self.fd(client)?;
                // Nonblocking: a full backlog must fail, not hang the restore.
                nix::fcntl::fcntl(
                    fd.as_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(|e| err(client, "F_SETFL", e))?;
                connect(fd.as_raw_fd(), &addr).map_err(|e| {
                    err(
                        client,
                        &format!("connect to listener {} ({name})", l.ino),
                        e,
                    )
                })?;
                nix::fcntl::fcntl(
                    fd.as_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                )
                .map_err(|e| err(client, "F_SETFL", e))?;
            }
        }
        Ok(())
    }

    /// Step 6.
    fn datagram_links(&mut self) -> Result<(), RestoreError> {
        for s in self.sockets() {
            if s.sock_type != UnixType::Dgram || self.paired.contains(&s.ino) {
                continue;
            }
            match s.state {
                UnixState::Connected { peer } => {
                    let p = self.get(peer).ok_or_else(|| {
                        err(s, "connect", format!("its peer {peer} is not in the image"))
                    })?;
                    let name = match &p.binding {
                        Binding::Bound { name, .. } => name,
                        _ => {
                            return Err(err(
                                s,
                                "connect",
                                format!("its peer {peer} has no name and is connected elsewhere"),
                            ))
                        }
                    };
                    let addr = addr_of(name).map_err(|e| err(s, "name", e))?;
                    connect(self.fd(s)?.as_raw_fd(), &addr)
                        .map_err(|e| err(s, &format!("connect to {name}"), e))?;
                }
                UnixState::Unconnected if self.partners.contains_key(&s.ino) => {
                    unix_sock::disconnect(self.fd(s)?)
                        .map_err(|e| err(s, "leave its queue-refill partner", e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Step 7.
    fn stream_queues(&mut self) -> Result<(), RestoreError> {
        for s in self.sockets() {
            if s.sock_type == UnixType::Dgram || s.queue.is_empty() {
                continue;
            }
            let via = match (self.partners.get(&s.ino), &s.state) {
                (Some(p), _) => p,
                (None, UnixState::Connected { peer }) => self
                    .fds
                    .get(peer)
                    .ok_or_else(|| err(s, "refill its queue", "its peer was not restored"))?,
                _ => return Err(err(s, "refill its queue", "it has no peer to send from")),
            };
            let bytes: usize = s.queue.iter().map(|m| m.data.len()).sum();
            // Room for it all in the sender's buffer (the data is charged to the sender
            // until read); the dumped size is set again in step 8.
            let want = (bytes.saturating_mul(2) + (256 << 10)).min(i32::MAX as usize / 2) as i32;
            if setsockopt_int(via, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want).is_err() {
                let _ = setsockopt_int(via, libc::SOL_SOCKET, libc::SO_SNDBUF, want);
            }
            for m in &s.queue {
                let mut off = 0;
                while off < m.data.len() {
                    let n = send(via.as_raw_fd(), &m.data[off..], MsgFlags::MSG_DONTWAIT)
                        .map_err(|e| queue_err(s, e))?;
                    if s.sock_type == UnixType::SeqPacket && n != m.data.len() {
                        return Err(err(s, "refill its queue", "a record was cut short"));
                    }
                    off += n;
                }
            }
        }
        Ok(())
    }

    /// Step 8.
    fn finish_socket(&self, s: &UnixSocket) -> Result<(), RestoreError> {
        let fd = self.fd(s)?;
        let how = match s.shutdown & 3 {
            1 => Some(Shutdown::Read),
            2 => Some(Shutdown::Write),
            3 => Some(Shutdown::Both),
            _ => None,
        };
        if let Some(how) = how {
            if !(s.state == UnixState::PeerClosed && s.sock_type != UnixType::Dgram) {
                nix::sys::socket::shutdown(fd.as_raw_fd(), how)
                    .map_err(|e| err(s, "shutdown", e))?;
            }
        }
        let o = &s.options;
        let (def_snd, def_rcv) = self
            .defaults
            .get(&(s.sock_type as u8))
            .copied()
            .unwrap_or((0, 0));
        for (opt, force, want, default, what) in [
            (
                libc::SO_SNDBUF,
                libc::SO_SNDBUFFORCE,
                o.sndbuf as i32,
                def_snd,
                "SO_SNDBUF",
            ),
            (
                libc::SO_RCVBUF,
                libc::SO_RCVBUFFORCE,
                o.rcvbuf as i32,
                def_rcv,
                "SO_RCVBUF",
            ),
        ] {
            let now = getsockopt_int(fd, libc::SOL_SOCKET, opt).map_err(|e| err(s, what, e))?;
            if want == now || (want == default && opt == libc::SO_RCVBUF) {
                continue;
            }
            // The kernel doubles what it is given.
            if setsockopt_int(fd, libc::SOL_SOCKET, force, want / 2).is_err() {
                setsockopt_int(fd, libc::SOL_SOCKET, opt, want / 2).map_err(|e| err(s, what, e))?;
            }
            let got = getsockopt_int(fd, libc::SOL_SOCKET, opt).map_err(|e| err(s, what, e))?;
            if got != want {
                tracing::warn!(socket = s.ino, option = what, dumped = want, restored = got,
                    "buffer size differs (without CAP_NET_ADMIN the kernel caps it at net.core.[rw]mem_max)");
            }
        }
        let flags = [
            (libc::SO_PASSCRED, o.passcred, "SO_PASSCRED"),
            (libc::SO_PASSSEC, o.passsec, "SO_PASSSEC"),
            (libc::SO_REUSEADDR, o.reuseaddr, "SO_REUSEADDR"),
            (libc::SO_REUSEPORT, o.reuseport, "SO_REUSEPORT"),
        ];
        for (opt, on, what) in flags {
            if on {
                setsockopt_int(fd, libc::SOL_SOCKET, opt, 1).map_err(|e| err(s, what, e))?;
            }
        }
        let tv = |us: u64| {
            nix::sys::time::TimeVal::new((us / 1_000_000) as i64, (us % 1_000_000) as i64)
        };
        if o.rcvtimeo_us != 0 {
            nix::sys::socket::setsockopt(
                fd,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &tv(o.rcvtimeo_us),
            )
            .map_err(|e| err(s, "SO_RCVTIMEO", e))?;
        }
        if o.sndtimeo_us != 0 {
            nix::sys::socket::setsockopt(
                fd,
                nix::sys::socket::sockopt::SendTimeout,
                &tv(o.sndtimeo_us),
            )
            .map_err(|e| err(s, "SO_SNDTIMEO", e))?;
        }
        if o.peek_off != -1 {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, o.peek_off)
                .map_err(|e| err(s, "SO_PEEK_OFF", e))?;
        }
        Ok(())
    }
}

fn queue_err(s: &UnixSocket, e: Errno) -> RestoreError {
    let hint = if e == Errno::EAGAIN {
        " (the receiver's queue is full: net.unix.max_dgram_qlen or the buffer sizes are smaller here)"
    } else {
        ""
    };
    err(s, "refill its queue", format!("{e}{hint}"))
}

/// A temporary socket; the path it bound, if any, is removed when it is dropped.
struct TempSocket(OwnedFd, Option<std::path::PathBuf>);

impl Drop for TempSocket {
    fn drop(&mut self) {
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_file(p);
        }
    }
}
