//! The on-disk image of vzcpt.
//!
//! An image is a directory, written by [`ImageWriter`] into `<final>.tmp-<pid>` and renamed into
//! place only when complete, read by [`ImageDir`]:
//!
//! ```text
//! <image>/
//!   inventory   Inventory: format version, engine, kernel, arch, xsave features, root pid, ...
//!   pstree      process tree                   \
//!   core        per-task state                  |  one record file per kind (see ImageKind);
//!   mm          memory layout                   |  each is a FileHeader + postcard payload
//!   pagemap     which pages are where           |  (module header), crc32-checked
//!   files       file descriptors                |
//!   pipes       pipes                           |
//!   ns          namespaces: UTS, mounts, net   |
//!   ipc         IPC namespace contents          |  (VEs in their own IPC namespace only)
//!   tmpfs       tmpfs mounts' files            |  (trees with their own mount namespace)
//!   timers      POSIX timers                   |  (when some process has one)
//!   parent-pages pages kept by the parent       |  (incremental images; see chain)
//!   track-state  written-page tracking armed   /  (`--track-mem`)
//!   pages       page store: header padded to 4096, then 4096-aligned chunks of page data,
//!               each with its own crc32 and optionally zstd (module pagestore)
//! ```
//!
//! Readers validate everything before trusting it: magic, kind, version (same major, minor up to
//! ours), payload length against a per-type cap before allocating, file length, checksum, and
//! exact postcard decoding. No input makes them panic.
#![forbid(unsafe_code)]

pub mod chain;
pub mod dir;
pub mod error;
pub mod header;
pub mod inventory;
pub mod kind;
pub mod pagebuf;
pub mod pagestore;

pub mod core;
pub mod events;
pub mod files;
pub mod inet;
pub mod ipc;
pub mod mm;
pub mod ns;
pub mod pipes;
pub mod pstree;
pub mod tmpfs;
pub mod track;
pub mod unix;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use dir::{read_record, replace_record, ImageDir, ImageWriter};
pub use error::{FormatError, Result};
pub use header::{FileHeader, HEADER_LEN};
pub use inventory::Inventory;
pub use kind::ImageKind;
pub use pagebuf::PageBuf;
pub use pagestore::{
    ChunkDesc, PageLoc, PageStoreIndex, PageStoreReader, PageStoreWriter, CHUNK_SIZE,
};

/// Major format version: readers refuse any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version: readers accept any minor up to their own.
pub const FORMAT_MINOR: u16 = 0;
/// Page size of the images (x86_64).
pub const PAGE_SIZE: usize = 4096;

/// A record type stored in its own file. Records are serde + postcard.
pub trait Image: Serialize + DeserializeOwned {
    /// The kind, hence the file name and magic, of the file holding this record.
    const KIND: ImageKind;
    /// Cap on the payload length accepted when reading (default 256 MiB).
    const MAX_PAYLOAD: u64 = 256 << 20;
}

/// Encodes `v` with postcard.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| FormatError::Encode {
        what: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Decodes a `T` from exactly `bytes` with postcard; trailing bytes are an error.
/// `file` is only used in error messages.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], file: &Path) -> Result<T> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| FormatError::Decode {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(FormatError::TrailingBytes {
            file: file.to_path_buf(),
            count: rest.len() as u64,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Rec {
        a: u32,
        s: String,
        v: Vec<u64>,
        o: Option<i32>,
    }

    #[test]
    fn encode_decode_round_trip() {
        let r = Rec {
            a: 7,
            s: "x".into(),
            v: vec![1, u64::MAX],
            o: Some(-3),
        };
        let b = encode(&r).unwrap();
        assert_eq!(decode::<Rec>(&b, Path::new("f")).unwrap(), r);
    }

    #[test]
    fn decode_rejects_trailing_and_short() {
        let r = Rec {
            a: 7,
            s: "x".into(),
            v: vec![1],
            o: None,
        };
        let mut b = encode(&r).unwrap();
        let e = decode::<Rec>(&b[..b.len() - 1], Path::new("/i/f")).unwrap_err();
        assert!(matches!(e, FormatError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains("/i/f"));
        b.push(0);
        let e = decode::<Rec>(&b, Path::new("/i/f")).unwrap_err();
        assert!(
            matches!(e, FormatError::TrailingBytes { count: 1, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("/i/f"));
    }

    #[test]
    fn decode_never_panics_nor_overallocates() {
        // A sequence length of u64::MAX-ish and a huge string length, then random bytes.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(decode::<Vec<u64>>(&huge, Path::new("f")).is_err());
        assert!(decode::<String>(&huge, Path::new("f")).is_err());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode::<Rec>(&bytes, Path::new("f"));
            let _ = decode::<Inventory>(&bytes, Path::new("f"));
        }
    }
}
