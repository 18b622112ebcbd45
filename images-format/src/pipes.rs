//! Records of pipe and FIFO contents: the unread bytes, read without consuming them.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PipesImage {
    pub pipes: Vec<PipeData>,
}

impl Image for PipesImage {
    const KIND: ImageKind = ImageKind::Pipes;
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PipeData {
    pub pipe_id: u64,
    /// Pipe buffer size (`F_GETPIPE_SZ`).
    pub capacity: u32,
    pub data: Vec<u8>,
}
