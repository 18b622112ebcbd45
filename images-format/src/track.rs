//! The `sent-pages` file: what a live migration's destination already holds, per process and
//! private anonymous area. The source's page tracker (`cpt::track`) writes it just before the
//! final dump, which reads it back: a page that was sent and has not been written since (its
//! write protection is still set) goes into the image's `parent-pages` record instead of its
//! page store. Not part of an image.

use serde::{Deserialize, Serialize};

use crate::{Image, ImageKind};

/// One tracked area `[start, end)` of a process: bit `i` of `sent` (word `i / 64`, bit
/// `i % 64`) says that page `start + i * 4096` was sent. The final dump trusts an area only if
/// the process still has an area with exactly these bounds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SentArea {
    pub start: u64,
    pub end: u64,
    pub sent: Vec<u64>,
}

impl SentArea {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / crate::PAGE_SIZE as u64
    }

    /// Whether page `i` of the area was sent (false past the end of the bitmap).
    pub fn is_sent(&self, i: u64) -> bool {
        self.sent
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// A process by its PID as the dumping host sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SentProcess {
    pub host_pid: i32,
    pub areas: Vec<SentArea>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SentPagesImage {
    pub processes: Vec<SentProcess>,
}

impl SentPagesImage {
    pub fn area(&self, host_pid: i32, start: u64, end: u64) -> Option<&SentArea> {
        self.processes
            .iter()
            .find(|p| p.host_pid == host_pid)?
            .areas
            .iter()
            .find(|a| a.start == start && a.end == end)
    }
}

impl Image for SentPagesImage {
    const KIND: ImageKind = ImageKind::SentPages;
    const MAX_PAYLOAD: u64 = 1 << 30;
}

/// The `track-state` record of an image dumped with `--track-mem`: after the image was
/// committed, the dump write-protected the tree's private anonymous areas again (tree still
/// frozen), so a page written since carries the written bit of `PAGEMAP_SCAN`. The
/// userfaultfds that keep that tracking alive are held by a keeper process outside the tree;
/// the next dump with this image as `--parent` takes them from it (`pidfd_getfd`, fd numbers
/// below) and trusts the written bits only if the keeper and each process are the very ones
/// named here (PID and start time).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TrackStateImage {
    /// The keeper's PID as the dumper saw it, and its start time (`/proc/PID/stat` field 22).
    pub keeper_pid: i32,
    pub keeper_start_time: u64,
    pub processes: Vec<TrackedProcess>,
}

/// One tracked process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TrackedProcess {
    /// PID as the dumper saw it, and start time: a restarted process is not trusted.
    pub host_pid: i32,
    pub start_time: u64,
    /// Its PID in the image (the owner of its pages).
    pub image_pid: i32,
    /// The userfaultfd's descriptor number in the keeper.
    pub keeper_fd: i32,
    /// Areas registered and write-protected, `[start, end)`.
    pub areas: Vec<(u64, u64)>,
}

impl TrackStateImage {
    pub fn process(&self, host_pid: i32, start_time: u64) -> Option<&TrackedProcess> {
        self.processes
            .iter()
            .find(|p| p.host_pid == host_pid && p.start_time == start_time)
    }
}

impl Image for TrackStateImage {
    const KIND: ImageKind = ImageKind::TrackState;
    const MAX_PAYLOAD: u64 = 64 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_lookup() {
        let a = SentArea {
            start: 0x1000,
            end: 0x1000 + 70 * 4096,
            sent: vec![1 | 1 << 63, 1 << 5],
        };
        assert_eq!(a.pages(), 70);
        assert!(a.is_sent(0) && a.is_sent(63) && a.is_sent(69));
        assert!(!a.is_sent(1) && !a.is_sent(64) && !a.is_sent(1000));
        let img = SentPagesImage {
            processes: vec![SentProcess {
                host_pid: 7,
                areas: vec![a.clone()],
            }],
        };
        assert_eq!(img.area(7, a.start, a.end), Some(&a));
        assert_eq!(img.area(7, a.start, a.end + 4096), None);
        assert_eq!(img.area(8, a.start, a.end), None);
    }
}
