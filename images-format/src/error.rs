//! The one error type of this crate. Every variant that concerns a file names it.

use std::path::PathBuf;

use crate::kind::ImageKind;
use crate::{FORMAT_MAJOR, FORMAT_MINOR};

/// Everything that can go wrong while writing or reading an image.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A system call on `path` failed.
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file's magic belongs to no image kind.
    #[error("bad magic in {}: expected {expected:#x}, found {found:#x}", .file.display())]
    BadMagic {
        file: PathBuf,
        expected: u32,
        found: u32,
    },

    /// The file is a valid image file, but of another kind than the one asked for.
    #[error("{} holds a {found} record, expected {expected}", .file.display())]
    WrongKind {
        file: PathBuf,
        expected: ImageKind,
        found: ImageKind,
    },

    /// The file's format version is not one this engine reads.
    #[error(
        "{}: image format {found_major}.{found_minor} is not readable by this engine (format {FORMAT_MAJOR}.{FORMAT_MINOR})",
        .file.display()
    )]
    UnsupportedVersion {
        file: PathBuf,
        found_major: u16,
        found_minor: u16,
    },

    /// The header is internally inconsistent (kind field against magic, unknown flags).
    #[error("malformed header in {}: {reason}", .file.display())]
    BadHeader { file: PathBuf, reason: String },

    /// The payload's crc32 differs from the one in the header.
    #[error("checksum mismatch in {}: header says {expected:#010x}, payload has {found:#010x}", .file.display())]
    Checksum {
        file: PathBuf,
        expected: u32,
        found: u32,
    },

    /// The file is shorter than its header (or the header itself) says.
    #[error("{} is truncated: header says {expected} bytes, {found} present", .file.display())]
    Truncated {
        file: PathBuf,
        expected: u64,
        found: u64,
    },

    /// Bytes follow the end of the payload (in the file or after the postcard value).
    #[error("{}: {count} unexpected trailing bytes after the payload", .file.display())]
    TrailingBytes { file: PathBuf, count: u64 },

    /// The payload is longer than the record type accepts; refused before allocating.
    #[error("{}: payload of {len} bytes exceeds the cap of {cap}", .file.display())]
    TooLarge { file: PathBuf, len: u64, cap: u64 },

    /// postcard could not decode the payload.
    #[error("cannot decode {}: {reason}", .file.display())]
    Decode { file: PathBuf, reason: String },

    /// postcard could not encode a record.
    #[error("cannot encode a value of type {what}: {reason}")]
    Encode { what: &'static str, reason: String },

    /// A record file the caller asked for is not in the image.
    #[error("{} does not exist: the image has no such record", .file.display())]
    Missing { file: PathBuf },

    /// `ImageWriter::create` was pointed at something that is not an empty directory.
    #[error("{} already exists and is not an empty directory; refusing to overwrite it", .path.display())]
    ImageExists { path: PathBuf },

    /// The temporary directory of a writer is already there.
    #[error(
        "temporary image directory {} already exists (another dump in progress, or left by a crashed one: remove it)",
        .path.display()
    )]
    TmpExists { path: PathBuf },

    /// A record file was written twice, or a second page store was opened.
    #[error("{} was already written in this image", .file.display())]
    DuplicateRecord { file: PathBuf },

    /// `commit` was called on an image that cannot be opened yet.
    #[error("image {} is incomplete: {reason}", .path.display())]
    IncompleteImage { path: PathBuf, reason: String },

    /// The API was used against its rules (see the message).
    #[error("invalid use of the image API: {reason}")]
    InvalidUse { reason: String },

    /// A page store append that breaks the rules (zero, not page-aligned, more than `room()`).
    #[error("cannot append {len} bytes to the page store: {reason}")]
    BadAppend { len: usize, reason: String },

    /// zstd failed while compressing a chunk.
    #[error("page store {}: cannot compress chunk {index}: {reason}", .file.display())]
    Compress {
        file: PathBuf,
        index: usize,
        reason: String,
    },

    /// An incremental image whose chain of parents cannot be followed (missing, damaged,
    /// too long, a cycle, another tree, pages the parent does not hold).
    #[error("image {}: {reason}", .path.display())]
    Chain { path: PathBuf, reason: String },

    /// A chunk index beyond the end of the page store index.
    #[error("page store {}: chunk {index} does not exist (the index has {count} chunks)", .file.display())]
    NoSuchChunk {
        file: PathBuf,
        index: u32,
        count: usize,
    },

    /// A `ChunkDesc` that does not fit the pages file or the format's limits.
    #[error("page store chunk {index} in {} is invalid: {reason}", .file.display())]
    BadChunkDesc {
        file: PathBuf,
        index: usize,
        reason: String,
    },

    /// A chunk whose stored bytes do not match their crc32.
    #[error(
        "page store chunk {index} in {} has a checksum mismatch: index says {expected:#010x}, data has {found:#010x}",
        .file.display()
    )]
    ChunkChecksum {
        file: PathBuf,
        index: u32,
        expected: u32,
        found: u32,
    },

    /// A compressed chunk that does not decompress to exactly its `raw_len`.
    #[error("page store chunk {index} in {} cannot be decompressed: {reason}", .file.display())]
    ChunkDecompress {
        file: PathBuf,
        index: u32,
        reason: String,
    },
}

/// Result with [`FormatError`].
pub type Result<T> = std::result::Result<T, FormatError>;

impl FormatError {
    /// Builds an [`FormatError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
