//! The inner layer of a backup: a sequence of records (a `u32` length, then postcard), the data
//! of each regular file right after its record.
//!
//! ```text
//! Manifest, Config, Node(private, "") Node(private, ...)... [Node(image, "") ...], End
//! ```
//!
//! Trees are written parents first, so the reader can insist that every node's parent is a
//! directory it created itself in this restore: with each path created once (a second node of
//! the same path is refused) and no `.`/`..`, no node can reach outside its area, through a
//! symbolic link made by an earlier node or otherwise. Owners go before modes (a chown clears
//! setuid bits and `security.capability`), extended attributes after both, times last,
//! directories' times once their contents are in.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use super::BackupError;

/// The longest record a reader accepts (a node with its extended attributes).
pub const MAX_RECORD: usize = 4 << 20;
const MAX_PATH: usize = 4096;
const MAX_XATTRS: usize = 1024;
/// An xattr value is at most 64 KiB on Linux.
const MAX_XATTR_VALUE: usize = 64 << 10;
const MAX_CONFIG: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// The overlay's upper directory: the VE's own files.
    Private,
    /// The VE's checkpoint image (its memory, processes, ...).
    Image,
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Area::Private => "private area",
            Area::Image => "image",
        })
    }
}

/// What the backup holds, first in the stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The CTID it was taken of (a restore may give it another).
    pub ctid: u32,
    /// Seconds since the epoch (UTC).
    pub created: u64,
    /// The vzctl that wrote it.
    pub engine: String,
    pub hostname: Option<String>,
    /// Whether an `Image` area follows the private area.
    pub has_image: bool,
    /// The VE ran while the backup was taken: its files were copied after its memory was
    /// checkpointed, not at the same instant (see `super::Source`).
    pub live: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Kind {
    Dir,
    /// `size` bytes of data follow the record.
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another name of a regular file written before, in the same area.
    HardLink {
        target: Vec<u8>,
    },
    /// Includes overlayfs whiteouts (0:0).
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
    Fifo,
    Socket,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Node {
    pub area: Area,
    /// Relative to the area's root, components joined by `/`; empty for the root itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Record {
    Manifest(Manifest),
    /// The VE's config file, as TOML text.
    Config(String),
    Node(Node),
    /// Counts that let the reader check it saw everything.
    End {
        nodes: u64,
        file_bytes: u64,
    },
}

fn path_of(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        format!("/{}", String::from_utf8_lossy(p))
    }
}

/// Writes records and file data to `out`.
pub struct ArchiveWriter<W: Write> {
    pub out: W,
    pub nodes: u64,
    pub file_bytes: u64,
    /// Files that shrank while being read (a live backup): padded with zeros.
    pub changed_while_read: Vec<String>,
    /// The source may change under us (a running VE): vanished entries are skipped.
    live: bool,
    scratch: Vec<u8>,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W, live: bool) -> Self {
        ArchiveWriter {
            out,
            nodes: 0,
            file_bytes: 0,
            changed_while_read: Vec::new(),
            live,
            scratch: Vec::new(),
        }
    }

    pub fn record(&mut self, r: &Record) -> Result<(), BackupError> {
        self.scratch.clear();
        let bytes = postcard::to_extend(r, std::mem::take(&mut self.scratch))
            .map_err(|e| BackupError::Invalid(format!("encode a record: {e}")))?;
        if bytes.len() > MAX_RECORD {
            return Err(BackupError::Invalid(format!(
                "a record of {} bytes is over the limit of {MAX_RECORD}",
                bytes.len()
            )));
        }
        self.out
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .and_then(|()| self.out.write_all(&bytes))
            .map_err(super::from_io_write)?;
        self.scratch = bytes;
        Ok(())
    }

    /// Writes the tree at `root` (not crossing into other file systems) as nodes of `area`.
    pub fn add_tree(&mut self, area: Area, root: &Path) -> Result<(), BackupError> {
        let src = |p: &Path, what: &str, e: io::Error| BackupError::Source {
            path: p.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        let root_meta = std::fs::symlink_metadata(root).map_err(|e| src(root, "stat", e))?;
        if !root_meta.is_dir() {
            return Err(BackupError::Source {
                path: root.to_path_buf(),
                what: "back up".into(),
                source: io::Error::other("not a directory"),
            });
        }
        let dev = root_meta.dev();
        let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        // Depth first, parents before children, names sorted: the same tree gives the same
        // stream.
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let full = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(OsStr::from_bytes(&rel))
            };
            let meta = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if self.live && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(src(&full, "stat", e)),
            };
            let ft = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            let hard_link = (!ft.is_dir() && meta.nlink() > 1)
                .then(|| links.get(&(meta.dev(), meta.ino())).cloned())
                .flatten();
            if !ft.is_dir() && meta.nlink() > 1 && hard_link.is_none() && ft.is_file() {
                links.insert((meta.dev(), meta.ino()), rel.clone());
            }
            let kind = if let Some(target) = hard_link {
                Kind::HardLink { target }
            } else if ft.is_dir() {
                if meta.dev() != dev {
                    return Err(BackupError::Source {
                        path: full,
                        what: "back up".into(),
                        source: io::Error::other(
                            "another file system is mounted there; unmount it first",
                        ),
                    });
                }
                Kind::Dir
            } else if ft.is_file() {
                Kind::File { size: meta.len() }
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&full).map_err(|e| src(&full, "readlink", e))?;
                Kind::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                }
            } else if ft.is_char_device() {
                Kind::CharDev { rdev: meta.rdev() }
            } else if ft.is_block_device() {
                Kind::BlockDev { rdev: meta.rdev() }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else {
                return Err(BackupError::Source {
                    path: full,
                    what: "back up".into(),
                    source: io::Error::other("unknown file type"),
                });
            };
            let xattrs = if matches!(kind, Kind::HardLink { .. }) {
                Vec::new()
            } else {
                sys::xattr::list_path(&full)
                    .map_err(|e| {
                        src(
                            &full,
                            "read the extended attributes of",
                            io::Error::other(e),
                        )
                    })?
                    .into_iter()
                    .map(|(n, v)| (n.into_bytes(), v))
                    .collect()
            };
            let node = Node {
                area,
                path: rel.clone(),
                kind: kind.clone(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                atime: (meta.atime(), meta.atime_nsec() as u32),
                mtime: (meta.mtime(), meta.mtime_nsec() as u32),
                xattrs,
            };
            self.record(&Record::Node(node))?;
            self.nodes += 1;
            match kind {
                Kind::File { size } => self.copy_file(&full, &rel, size)?,
                Kind::Dir => {
                    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&full)
                        .map_err(|e| src(&full, "list", e))?
                        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                        .collect::<io::Result<_>>()
                        .map_err(|e| src(&full, "list", e))?;
                    names.sort_unstable();
                    // Popped in order: the stack takes them reversed.
                    for n in names.into_iter().rev() {
                        let mut child = rel.clone();
                        if !child.is_empty() {
                            child.push(b'/');
                        }
                        child.extend_from_slice(&n);
                        stack.push(child);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Exactly `size` bytes of the file: a live file that shrank meanwhile is padded with
    /// zeros (and reported), one that grew is cut at `size`.
    fn copy_file(&mut self, full: &Path, rel: &[u8], size: u64) -> Result<(), BackupError> {
        let src = |what: &str, e: io::Error| BackupError::Source {
            path: full.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
            .open(full)
            .or_else(|_| {
                // O_NOATIME is for the file's owner (or CAP_FOWNER) only.
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(full)
            })
            .map_err(|e| src("open", e))?;
        let copied = copy_counted(&mut f.take(size), &mut self.out).map_err(|e| match e {
            Counted::Read(e) => src("read", e),
            Counted::Write(e) => super::from_io_write(e),
        })?;
        if copied < size {
            self.changed_while_read.push(path_of(rel));
            let zeros = [0u8; 64 << 10];
            let mut left = size - copied;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                self.out
                    .write_all(&zeros[..n])
                    .map_err(super::from_io_write)?;
                left -= n as u64;
            }
        }
        self.file_bytes += size;
        Ok(())
    }

    pub fn end(&mut self) -> Result<(), BackupError> {
        let (nodes, file_bytes) = (self.nodes, self.file_bytes);
        self.record(&Record::End { nodes, file_bytes })
    }
}

enum Counted {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy` that tells a read error from a write error.
fn copy_counted(r: &mut impl Read, w: &mut impl Write) -> Result<u64, Counted> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Counted::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(Counted::Write)?;
        total += n as u64;
    }
}

/// Reads one record; `None` at a clean end of the stream before a record begins.
pub fn read_record(r: &mut impl Read) -> Result<Option<Record>, BackupError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(BackupError::Invalid(
                    "the archive ends inside a record".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(super::from_io_read(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD {
        return Err(BackupError::Invalid(format!(
            "a record of {len} bytes is over the limit of {MAX_RECORD}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BackupError::Invalid("the archive ends inside a record".into())
        } else {
            super::from_io_read(e)
        }
    })?;
    postcard::from_bytes(&buf)
        .map(Some)
        .map_err(|e| BackupError::Invalid(format!("a record does not decode: {e}")))
}

/// Where each area goes, and what has been created in it.
pub struct Extractor {
    private: PathBuf,
    image: Option<PathBuf>,
    /// Every path created, per area.
    seen: HashSet<(Area, Vec<u8>)>,
    dirs: HashSet<(Area, Vec<u8>)>,
    files: HashSet<(Area, Vec<u8>)>,
    /// Each directory with its atime and mtime.
    dir_times: Vec<(PathBuf, Time, Time)>,
    pub nodes: u64,
    pub file_bytes: u64,
}

fn bad(what: impl std::fmt::Display) -> BackupError {
    BackupError::Invalid(what.to_string())
}

fn check_path(p: &[u8]) -> Result<(), BackupError> {
    if p.len() > MAX_PATH || p.contains(&0) {
        return Err(bad(format!(
            "path {} is too long or holds a NUL byte",
            path_of(p)
        )));
    }
    if p.is_empty() {
        return Ok(());
    }
    if p.split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(bad(format!(
            "path {} is not a plain relative path",
            path_of(p)
        )));
    }
    Ok(())
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => &[],
    }
}

/// Seconds and nanoseconds since the epoch.
type Time = (i64, u32);

fn ts((s, ns): Time) -> TimeSpec {
    TimeSpec::new(s, i64::from(ns.min(999_999_999)))
}

impl Extractor {
    /// `private` and `image` are fresh directories' paths, not yet created.
    pub fn new(private: PathBuf, image: Option<PathBuf>) -> Self {
        Extractor {
            private,
            image,
            seen: HashSet::new(),
            dirs: HashSet::new(),
            files: HashSet::new(),
            dir_times: Vec::new(),
            nodes: 0,
            file_bytes: 0,
        }
    }

    fn root(&self, area: Area) -> Result<&Path, BackupError> {
        match area {
            Area::Private => Ok(&self.private),
            Area::Image => self
                .image
                .as_deref()
                .ok_or_else(|| bad("an image node in a backup without an image")),
        }
    }

    /// Creates `node` (reading its data from `data`).
    pub fn node(&mut self, node: &Node, data: &mut dyn Read) -> Result<(), BackupError> {
        check_path(&node.path)?;
        let key = (node.area, node.path.clone());
        if self.seen.contains(&key) {
            return Err(bad(format!(
                "{} {} comes twice",
                node.area,
                path_of(&node.path)
            )));
        }
        if node.path.is_empty() {
            if node.kind != Kind::Dir {
                return Err(bad(format!("the {}'s root is not a directory", node.area)));
            }
            if self.seen.iter().any(|(a, _)| *a == node.area) {
                return Err(bad(format!("the {}'s root does not come first", node.area)));
            }
        } else if !self
            .dirs
            .contains(&(node.area, parent_of(&node.path).to_vec()))
        {
            return Err(bad(format!(
                "{} {}: its parent is not a directory of the backup written before it",
                node.area,
                path_of(&node.path)
            )));
        }
        if node.xattrs.len() > MAX_XATTRS
            || node
                .xattrs
                .iter()
                .any(|(n, v)| n.is_empty() || n.len() > 255 || v.len() > MAX_XATTR_VALUE)
        {
            return Err(bad(format!(
                "{} {}: bad extended attributes",
                node.area,
                path_of(&node.path)
            )));
        }
        let root = self.root(node.area)?.to_path_buf();
        let full = if node.path.is_empty() {
            root.clone()
        } else {
            root.join(OsStr::from_bytes(&node.path))
        };
        let fail = |what: &str, e: io::Error| BackupError::Target {
            path: full.clone(),
            what: what.to_string(),
            source: e,
        };
        let errno = |what: &'static str| {
            let full = full.clone();
            move |e: nix::errno::Errno| BackupError::Target {
                path: full,
                what: what.to_string(),
                source: io::Error::from(e),
            }
        };
        let perm = Mode::from_bits_truncate(node.mode & 0o7777);
        match &node.kind {
            Kind::Dir => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&full)
                    .map_err(|e| fail("create the directory", e))?;
                self.dirs.insert(key.clone());
            }
            Kind::File { size } => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&full)
                    .map_err(|e| fail("create", e))?;
                let n =
                    copy_counted(&mut Read::take(&mut *data, *size), &mut f).map_err(
                        |e| match e {
                            Counted::Read(e) => super::from_io_read(e),
                            Counted::Write(e) => fail("write", e),
                        },
                    )?;
                if n < *size {
                    return Err(bad(format!(
                        "the data of {} {} ends after {n} of its {size} bytes",
                        node.area,
                        path_of(&node.path)
                    )));
                }
                self.file_bytes += size;
                self.files.insert(key.clone());
            }
            Kind::HardLink { target } => {
                check_path(target)?;
                if !self.files.contains(&(node.area, target.clone())) {
                    return Err(bad(format!(
                        "{} {}: hard link to {}, not a regular file written before it",
                        node.area,
                        path_of(&node.path),
                        path_of(target)
                    )));
                }
                std::fs::hard_link(root.join(OsStr::from_bytes(target)), &full)
                    .map_err(|e| fail("create the hard link", e))?;
                self.seen.insert(key);
                self.nodes += 1;
                // One inode: its owner, mode and times came with its first name.
                return Ok(());
            }
            Kind::Symlink { target } => {
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(bad(format!(
                        "symbolic link {} has a bad target",
                        path_of(&node.path)
                    )));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &full)
                    .map_err(|e| fail("create the symbolic link", e))?;
            }
            Kind::CharDev { rdev } => {
                nix::sys::stat::mknod(&full, SFlag::S_IFCHR, perm, *rdev)
                    .map_err(errno("create the device node"))?;
            }
            Kind::BlockDev { rdev } => {
                nix::sys::stat::mknod(&full, SFlag::S_IFBLK, perm, *rdev)
                    .map_err(errno("create the device node"))?;
            }
            Kind::Fifo => {
                nix::sys::stat::mknod(&full, SFlag::S_IFIFO, perm, 0)
                    .map_err(errno("create the FIFO"))?;
            }
            Kind::Socket => {
                nix::sys::stat::mknod(&full, SFlag::S_IFSOCK, perm, 0)
                    .map_err(errno("create the socket node"))?;
            }
        }
        self.seen.insert(key);
        self.nodes += 1;
        std::os::unix::fs::lchown(&full, Some(node.uid), Some(node.gid))
            .map_err(|e| fail("chown", e))?;
        if !matches!(node.kind, Kind::Symlink { .. }) {
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(node.mode & 0o7777))
                .map_err(|e| fail("chmod", e))?;
        }
        for (name, value) in &node.xattrs {
            sys::xattr::set_path(&full, name, value).map_err(|e| {
                fail(
                    &format!("set extended attribute {}", String::from_utf8_lossy(name)),
                    io::Error::other(e),
                )
            })?;
        }
        if node.kind == Kind::Dir {
            self.dir_times.push((full, node.atime, node.mtime));
        } else {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &full,
                &ts(node.atime),
                &ts(node.mtime),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(errno("set the times of"))?;
        }
        Ok(())
    }

    /// Directories' times, deepest first (creating an entry changes its parent's mtime).
    pub fn finish(&mut self) -> Result<(), BackupError> {
        for (p, a, m) in self.dir_times.drain(..).rev() {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &ts(a),
                &ts(m),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| BackupError::Target {
                path: p.clone(),
                what: "set the times of".into(),
                source: io::Error::from(e),
            })?;
        }
        Ok(())
    }

    /// Whether the area's root was restored.
    pub fn has(&self, area: Area) -> bool {
        self.dirs.contains(&(area, Vec::new()))
    }
}

/// Reads a whole archive, checking its order and counts; `extract` gets each node.
pub fn read_archive(
    r: &mut impl Read,
    mut on_manifest: impl FnMut(&Manifest) -> Result<(), BackupError>,
    mut on_config: impl FnMut(&str) -> Result<(), BackupError>,
    mut on_node: impl FnMut(&Node, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<(Manifest, u64, u64), BackupError> {
    let manifest = match read_record(r)? {
        Some(Record::Manifest(m)) => m,
        _ => return Err(bad("the archive does not open with its manifest")),
    };
    on_manifest(&manifest)?;
    let mut config = false;
    let mut last_area: Option<Area> = None;
    let (mut nodes, mut file_bytes) = (0u64, 0u64);
    loop {
        match read_record(r)? {
            None => return Err(bad("the archive ends without its end record")),
            Some(Record::Manifest(_)) => return Err(bad("a second manifest")),
            Some(Record::Config(c)) => {
                if config || nodes > 0 {
                    return Err(bad("the config comes twice or after the files"));
                }
                if c.len() > MAX_CONFIG {
                    return Err(bad("the config is too large"));
                }
                on_config(&c)?;
                config = true;
            }
            Some(Record::Node(n)) => {
                if !config {
                    return Err(bad("files come before the config"));
                }
                // The private area, then the image: never back.
                match (last_area, n.area) {
                    (Some(Area::Image), Area::Private) => {
                        return Err(bad("a private area node after the image"))
                    }
                    (_, Area::Image) if !manifest.has_image => {
                        return Err(bad("an image in a backup whose manifest says it has none"))
                    }
                    _ => {}
                }
                last_area = Some(n.area);
                if let Kind::File { size } = n.kind {
                    file_bytes = file_bytes.saturating_add(size);
                }
                nodes += 1;
                on_node(&n, r)?;
            }
            Some(Record::End {
                nodes: n,
                file_bytes: b,
            }) => {
                if n != nodes || b != file_bytes {
                    return Err(bad(format!(
                        "the end record counts {n} nodes and {b} bytes, the archive held {nodes} and {file_bytes}"
                    )));
                }
                if !config {
                    return Err(bad("the archive has no config"));
                }
                let mut extra = [0u8; 1];
                loop {
                    match r.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => return Err(bad("data after the archive's end record")),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(super::from_io_read(e)),
                    }
                }
                return Ok((manifest, nodes, file_bytes));
            }
        }
    }
}
