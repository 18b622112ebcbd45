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
