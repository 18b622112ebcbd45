//! Page-aligned buffers for page data in flight.
//!
//! `process_vm_readv`/`writev` copy whole pages; when the local buffer is not page-aligned
//! (a `Vec<u8>` of 4 MiB starts 16 bytes into its mapping) every page straddles two and the
//! kernel's copy runs unaligned: measured here, 2.0 GB/s instead of 5.7 GB/s for the same read.
//! An anonymous mapping is always page-aligned.

use std::ops::{Deref, DerefMut};

use crate::{FormatError, Result};

/// A fixed-size, page-aligned, zero-initialised byte buffer.
pub struct PageBuf(memmap2::MmapMut);

impl PageBuf {
    pub fn new(len: usize) -> Result<Self> {
        memmap2::MmapMut::map_anon(len.max(1))
            .map(PageBuf)
            .map_err(|e| FormatError::InvalidUse {
                reason: format!("cannot map a {len}-byte page buffer: {e}"),
            })
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_page_aligned_and_zeroed() {
        let b = PageBuf::new(3 * 4096).unwrap();
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 3 * 4096);
        assert!(b.iter().all(|&x| x == 0));
    }
}
