//! The inventory: the first file read from an image, describing what wrote it and where.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

/// Contents of the `inventory` file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Inventory {
    /// Format version of the image (the header carries it too; both are checked on open).
    pub format_major: u16,
    pub format_minor: u16,
    /// Crate version of the engine that wrote it (caller fills).
    pub engine_version: String,
    /// Kernel release (`uname -r`) of the dumping host.
    pub kernel: String,
    /// Architecture, e.g. `"x86_64"`.
    pub arch: String,
    /// XCR0 of the dumping CPU (caller fills).
    pub xsave_features: u64,
    /// When the dump was made, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Parent image directory of an incremental dump, relative to this image's directory
    /// when possible (see [`crate::chain`]); `None` for a standalone image.
    pub parent: Option<String>,
    /// PID of the root of the dumped tree.
    pub root_pid: i32,
    /// Whether the page store was written with zstd enabled.
    pub compressed: bool,
}

impl Image for Inventory {
    const KIND: ImageKind = ImageKind::Inventory;
    const MAX_PAYLOAD: u64 = 1 << 20;
}
