//! Records of address spaces: memory areas and the mm fields of `PR_SET_MM_MAP`.
//! Page contents live apart, in the page store, indexed by the pagemap records.

use serde::{Deserialize, Serialize};

use crate::pagestore::{PageLoc, PageStoreIndex};
use crate::{Image, ImageKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MmImage {
    pub processes: Vec<ProcessMm>,
    /// Anonymous shared memory objects, dumped once however many processes map them.
    pub shmem: Vec<ShmemObject>,
}

impl Image for MmImage {
    const KIND: ImageKind = ImageKind::Mm;
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessMm {
    pub pid: i32,
    pub fields: MmFields,
    /// `/proc/PID/auxv` as 64-bit words.
    pub auxv: Vec<u64>,
    /// Path of the executable (`/proc/PID/exe`).
    pub exe: String,
    /// Areas sorted by address, not overlapping.
    pub vmas: Vec<Vma>,
}

/// The mm fields of `struct prctl_mm_map` (see prctl(2), `PR_SET_MM_MAP`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_SHARED` or `MAP_PRIVATE`, plus `MAP_GROWSDOWN` for stacks and `MAP_NORESERVE`
    /// for areas with `VM_NORESERVE` ("nr" in smaps VmFlags).
    pub flags: u32,
    /// Offset into the file in bytes (file mappings) or into the shared object.
    pub offset: u64,
    /// `madvise` advice in force (`MADV_DONTFORK`, `MADV_DONTDUMP`, `MADV_WIPEONFORK`,
    /// `MADV_HUGEPAGE`, `MADV_NOHUGEPAGE`), from smaps VmFlags.
    pub advice: Vec<i32>,
    /// Locked in memory (`mlock`).
    pub locked: bool,
    pub kind: VmaKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (heap, stacks, malloc arenas, ...). Present pages are stored.
    Anon,
    /// A file mapping. Private: pages that differ from the file are stored. Shared: the file holds them.
    File {
        path: String,
    },
    /// Shared anonymous memory; `id` names a [`ShmemObject`].
    SharedAnon {
        id: u64,
    },
    Vdso,
    Vvar,
    VvarVclock,
    /// An attachment of SysV shared memory segment `shmid` of the tree's IPC namespace
    /// (`/SYSV<key> (deleted)` in maps, whose inode column is the id). The segment's pages are
    /// stored once, with the segment (see [`crate::ipc`]); `offset` is into the segment.
    SysvShm {
        shmid: i32,
        /// The segment's size in bytes: an attachment maps all of it, rounded up to pages.
        size: u64,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShmemObject {
    pub id: u64,
    pub size: u64,
}

/// Where the pages of every process and shared object are in the page store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PagemapImage {
    pub store: PageStoreIndex,
    pub entries: Vec<PagemapEntry>,
}

impl Image for PagemapImage {
    const KIND: ImageKind = ImageKind::Pagemap;
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageOwner {
    Process(i32),
    Shmem(u64),
    /// A SysV shared memory segment, by id; `addr` is an offset into it.
    SysvShm(i32),
    /// A regular file of a tmpfs mount (`tmpfs` record), by id; `addr` is an offset into it.
    TmpfsFile(u32),
}

/// Pages of an incremental image that its parent holds: each run is present in the process
/// (or object) and unchanged since the parent got it, so this image stores none of it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentRun {
    pub owner: PageOwner,
    pub addr: u64,
    pub nr_pages: u32,
}

/// The `parent-pages` record. An incremental image (`vzcpt dump --parent`) is restored with
/// its runs resolved through its chain of parents (see [`crate::chain`]); a migration's last
/// dump (parent `staged`) only by its destination, which resolves the runs with the pages it
/// staged.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ParentPagesImage {
    /// What the parent is: `staged` for a migration's destination; otherwise the parent
    /// image's directory as the inventory names it.
    pub parent: String,
    pub runs: Vec<ParentRun>,
}

impl Image for ParentPagesImage {
    const KIND: ImageKind = ImageKind::ParentPages;
    const MAX_PAYLOAD: u64 = 256 << 20;
}

/// `nr_pages` consecutive pages at `addr` (a virtual address, or an offset in a shared object),
/// stored contiguously at `loc`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    pub owner: PageOwner,
    pub addr: u64,
    pub nr_pages: u32,
    pub loc: PageLoc,
}
