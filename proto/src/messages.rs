//! Every message of a migration. The enum [`Message`] is what goes on the wire; [`Kind`] is its
//! tag in the frame header, with the size cap of each kind.

use serde::{Deserialize, Serialize};

use crate::Version;

/// The tag of a message in its frame header, and its payload cap.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    HelloAck = 2,
    CheckRequest = 3,
    CheckReply = 4,
    VeConfig = 5,
    FsFile = 6,
    FsDone = 7,
    RoundBegin = 8,
    PageBatch = 9,
    RoundEnd = 10,
    RoundAck = 11,
    FinalState = 12,
    RestoreResult = 13,
    Commit = 14,
    CommitAck = 15,
    Abort = 16,
    ImageChunk = 17,
}

/// Largest page batch payload: 4 MiB of pages plus their index.
pub const MAX_BATCH_BYTES: u32 = (4 << 20) + (64 << 10);

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Hello,
        Kind::HelloAck,
        Kind::CheckRequest,
        Kind::CheckReply,
        Kind::VeConfig,
        Kind::FsFile,
        Kind::FsDone,
        Kind::RoundBegin,
        Kind::PageBatch,
        Kind::RoundEnd,
        Kind::RoundAck,
        Kind::FinalState,
        Kind::RestoreResult,
        Kind::Commit,
        Kind::CommitAck,
        Kind::Abort,
        Kind::ImageChunk,
    ];

    pub fn from_u16(v: u16) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u16 == v)
    }

    /// The largest payload a peer may send in a message of this kind.
    pub fn max_len(self) -> u32 {
        match self {
            Kind::PageBatch | Kind::FsFile | Kind::ImageChunk => MAX_BATCH_BYTES,
            // The image's records but the pages: core, mm, files, ... of the whole VE.
            Kind::FinalState => 256 << 20,
            Kind::VeConfig | Kind::RestoreResult | Kind::CheckRequest | Kind::CheckReply => 1 << 20,
            _ => 64 << 10,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    HelloAck(Hello),
    CheckRequest(CheckRequest),
    CheckReply(CheckReply),
    VeConfig(VeConfigMsg),
    FsFile(FsFile),
    FsDone(FsDone),
    RoundBegin(RoundBegin),
    PageBatch(PageBatch),
    RoundEnd(RoundEnd),
    RoundAck(RoundAck),
    FinalState(FinalState),
    RestoreResult(RestoreResult),
    Commit,
    CommitAck,
    Abort(Abort),
    ImageChunk(ImageChunk),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloAck(_) => Kind::HelloAck,
            Message::CheckRequest(_) => Kind::CheckRequest,
            Message::CheckReply(_) => Kind::CheckReply,
            Message::VeConfig(_) => Kind::VeConfig,
            Message::FsFile(_) => Kind::FsFile,
            Message::FsDone(_) => Kind::FsDone,
            Message::RoundBegin(_) => Kind::RoundBegin,
            Message::PageBatch(_) => Kind::PageBatch,
            Message::RoundEnd(_) => Kind::RoundEnd,
            Message::RoundAck(_) => Kind::RoundAck,
            Message::FinalState(_) => Kind::FinalState,
            Message::RestoreResult(_) => Kind::RestoreResult,
            Message::Commit => Kind::Commit,
            Message::CommitAck => Kind::CommitAck,
            Message::Abort(_) => Kind::Abort,
            Message::ImageChunk(_) => Kind::ImageChunk,
        }
    }
}

/// The first message of each side: its protocol version, its engine and what it can do.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    pub version: Version,
    pub engine: String,
    pub host: String,
    /// Capability names (`zstd`, `online`, ...); unknown ones are ignored.
    pub caps: Vec<String>,
}

/// What the destination must accept before anything is copied.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CheckRequest {
    pub ctid: u32,
    pub arch: String,
    /// XCR0 of the source: the destination's CPU must have every feature in it.
    pub xsave_features: u64,
    pub kernel: String,
    /// Bytes the private area and the image need on the destination.
    pub needed_bytes: u64,
    /// Kernel facilities the VE's restore will use (names as `vzcpt check` prints them).
    pub features: Vec<String>,
}

/// Empty `problems`: the destination takes the VE.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CheckReply {
    pub problems: Vec<String>,
}

/// The VE's config file, as text.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VeConfigMsg {
    pub ctid: u32,
    pub config: String,
}

/// One piece of a file of the private area (relative path), or a directory, link or node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FsFile {
    pub path: Vec<u8>,
    pub kind: FsKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Extended attributes of files and directories (overlayfs keeps its opaque-directory
    /// marks in them).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// For a regular file: its size, and a piece of its data at `offset`.
    pub size: u64,
    pub offset: u64,
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    Dir,
    File,
    Symlink {
        target: Vec<u8>,
    },
    HardLink {
        target: Vec<u8>,
    },
    Node {
        rdev: u64,
        fifo: bool,
    },
    /// Gone since the last pass.
    Removed,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsDone {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundBegin {
    pub round: u32,
    /// Pages the round will send.
    pub pages: u64,
}

/// Whose pages: a process's address space (by PID inside the VE) or a shared object.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageOwner {
    Process(i32),
    Shmem(u64),
    SysvShm(i32),
}

/// Pages of one owner: `runs` are (address, page count), their data concatenated in `data`,
/// zstd-compressed as a whole when `compressed`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PageBatch {
    pub round: u32,
    pub owner: PageOwner,
    pub runs: Vec<(u64, u32)>,
    pub compressed: bool,
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

impl PageBatch {
    /// Pages the runs name.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1 as u64).sum()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundEnd {
    pub round: u32,
    pub pages: u64,
    pub bytes: u64,
    /// The last round: the VE is frozen.
    pub last: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundAck {
    pub round: u32,
    /// Pages staged so far (a check that every batch arrived).
    pub pages_staged: u64,
}

/// The image's records other than the pages (named by their file names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FinalState {
    pub records: Vec<(String, Vec<u8>)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RestoreResult {
    pub ok: bool,
    pub error: Option<String>,
    pub restore_ms: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Abort {
    pub reason: String,
}

/// A piece of a file of the image at `offset` (offline migration carries the image's page
/// store this way; its other records come in [`FinalState`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ImageChunk {
    pub name: String,
    pub offset: u64,
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}
