//! Records of the process tree: PIDs, parents, process groups, sessions, threads, zombies.
//!
//! PIDs are those of the tree's own PID namespace when its root is that namespace's init
//! (`pid_ns_init`), otherwise those of the dumper's namespace.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PstreeImage {
    pub root_pid: i32,
    /// The root is PID 1 of its own PID namespace: restore creates a new one.
    pub pid_ns_init: bool,
    /// Processes in creation order: every parent comes before its children.
    pub processes: Vec<ProcessEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessEntry {
    pub pid: i32,
    /// Parent PID; 0 for the root.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread IDs, the main thread (== pid) first. Empty for zombies.
    pub threads: Vec<i32>,
    pub state: ProcState,
    /// The command name (`/proc/PID/stat` comm): a zombie has no core record to keep it in.
    pub comm: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Alive,
    /// Exited but not yet reaped by its parent; `exit_code` as `wait` would report it.
    Zombie {
        exit_code: i32,
    },
}

impl Image for PstreeImage {
    const KIND: ImageKind = ImageKind::Pstree;
    const MAX_PAYLOAD: u64 = 16 << 20;
}
