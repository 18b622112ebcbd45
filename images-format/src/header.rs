//! The fixed header that opens every image file. It lives outside serde and is parsed by hand,
//! so a file's kind and version can be checked before anything in it is decoded.
//!
//! ```text
//!  offset  size  field         (all little-endian)
//!  0       4     magic         ImageKind::magic() of the file's kind
//!  4       2     major         format major version (FORMAT_MAJOR)
//!  6       2     minor         format minor version (FORMAT_MINOR)
//!  8       2     kind          ImageKind as u16 (must agree with the magic)
//!  10      2     flags         none defined yet: must be 0
//!  12      4     checksum      crc32 of the payload (0 in the `pages` file: chunks have their own)
//!  16      8     payload_len   bytes of payload following the header
//!  24      8     reserved      written as 0, ignored on read
//!  32            payload       (record files: postcard bytes; `pages`: see pagestore)
//! ```
//!
//! A reader accepts its own major with any minor up to its own ([`version_readable`]).

use std::path::Path;

use crate::error::{FormatError, Result};
use crate::kind::ImageKind;
use crate::{FORMAT_MAJOR, FORMAT_MINOR};

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 32;

/// Header flag bits this version understands (none).
const KNOWN_FLAGS: u16 = 0;

/// The decoded header of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub magic: u32,
    pub major: u16,
    pub minor: u16,
    pub kind: u16,
    pub flags: u16,
    pub checksum: u32,
    pub payload_len: u64,
}

/// Whether this engine reads format `major.minor`: same major, minor not newer than ours.
// While FORMAT_MINOR is 0 the minor test is `minor == 0`; written for when it grows.
#[allow(clippy::absurd_extreme_comparisons)]
pub fn version_readable(major: u16, minor: u16) -> bool {
    major == FORMAT_MAJOR && minor <= FORMAT_MINOR
}

impl FileHeader {
    /// The header of a `kind` file holding `payload`, at the current format version.
    pub fn new(kind: ImageKind, payload: &[u8]) -> Self {
        Self::with_len(kind, crc32fast::hash(payload), payload.len() as u64)
    }

    /// The header of a `kind` file, current format version, with the given checksum and length.
    pub fn with_len(kind: ImageKind, checksum: u32, payload_len: u64) -> Self {
        FileHeader {
            magic: kind.magic(),
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            kind: kind as u16,
            flags: 0,
            checksum,
            payload_len,
        }
    }

    /// The 32 bytes of this header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.major.to_le_bytes());
        b[6..8].copy_from_slice(&self.minor.to_le_bytes());
        b[8..10].copy_from_slice(&self.kind.to_le_bytes());
        b[10..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.checksum.to_le_bytes());
        b[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        // 24..32: reserved, zero.
        b
    }

    /// Parses the header at the start of `bytes` (which may hold more) and validates it for a
    /// file of kind `expected`: magic, version, kind field and flags. `file` is only used in
    /// error messages. The checksum and the payload length are checked by the caller.
    pub fn parse(bytes: &[u8], expected: ImageKind, file: &Path) -> Result<Self> {
        let Some(b) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(FormatError::Truncated {
                file: file.to_path_buf(),
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        };
        let h = FileHeader {
            magic: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            major: u16::from_le_bytes([b[4], b[5]]),
            minor: u16::from_le_bytes([b[6], b[7]]),
            kind: u16::from_le_bytes([b[8], b[9]]),
            flags: u16::from_le_bytes([b[10], b[11]]),
            checksum: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            payload_len: u64::from_le_bytes([
                b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23],
            ]),
        };
        if h.magic != expected.magic() {
            return Err(match ImageKind::from_magic(h.magic) {
                Some(found) => FormatError::WrongKind {
                    file: file.to_path_buf(),
                    expected,
                    found,
                },
                None => FormatError::BadMagic {
                    file: file.to_path_buf(),
                    expected: expected.magic(),
                    found: h.magic,
                },
            });
        }
        if !version_readable(h.major, h.minor) {
            return Err(FormatError::UnsupportedVersion {
                file: file.to_path_buf(),
                found_major: h.major,
                found_minor: h.minor,
            });
        }
        if h.kind != expected as u16 {
            return Err(FormatError::BadHeader {
                file: file.to_path_buf(),
                reason: format!(
                    "kind field is {}, but the magic is that of {} ({})",
                    h.kind, expected, expected as u16
                ),
            });
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::BadHeader {
                file: file.to_path_buf(),
                reason: format!("unknown flags {:#06x}", h.flags & !KNOWN_FLAGS),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/img/core")
    }

    #[test]
    fn round_trip() {
        let h = FileHeader::new(ImageKind::Core, b"hello");
        let bytes = h.to_bytes();
        assert_eq!(&bytes[0..4], &ImageKind::Core.magic().to_le_bytes());
        assert_eq!(&bytes[24..32], &[0u8; 8]);
        assert_eq!(FileHeader::parse(&bytes, ImageKind::Core, p()).unwrap(), h);
        assert_eq!(h.checksum, crc32fast::hash(b"hello"));
        assert_eq!(h.payload_len, 5);
        // Longer input is fine: only the first 32 bytes are the header.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"hello");
        assert_eq!(FileHeader::parse(&longer, ImageKind::Core, p()).unwrap(), h);
    }

    #[test]
    fn version_predicate() {
        assert_eq!((FORMAT_MAJOR, FORMAT_MINOR), (1, 0));
        assert!(version_readable(1, 0));
        assert!(!version_readable(1, 1));
        assert!(!version_readable(0, 9));
        assert!(!version_readable(2, 0));
    }

    #[test]
    fn bad_magic() {
        let mut bytes = FileHeader::new(ImageKind::Core, b"").to_bytes();
        bytes[0..4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let e = FileHeader::parse(&bytes, ImageKind::Core, p()).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::BadMagic {
                    found: 0xdead_beef,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("/img/core"), "{e}");
    }

    #[test]
    fn wrong_kind() {
        let bytes = FileHeader::new(ImageKind::Mm, b"").to_bytes();
        let e = FileHeader::parse(&bytes, ImageKind::Core, p()).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::WrongKind {
                    expected: ImageKind::Core,
                    found: ImageKind::Mm,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("/img/core"), "{e}");
    }

    #[test]
    fn kind_field_disagrees_with_magic() {
        let mut h = FileHeader::new(ImageKind::Core, b"");
        h.kind = ImageKind::Mm as u16;
        let e = FileHeader::parse(&h.to_bytes(), ImageKind::Core, p()).unwrap_err();
        assert!(matches!(e, FormatError::BadHeader { .. }), "{e:?}");
        assert!(e.to_string().contains("/img/core"), "{e}");
    }

    #[test]
    fn unknown_flags() {
        let mut h = FileHeader::new(ImageKind::Core, b"");
        h.flags = 0x8000;
        let e = FileHeader::parse(&h.to_bytes(), ImageKind::Core, p()).unwrap_err();
        assert!(matches!(e, FormatError::BadHeader { .. }), "{e:?}");
    }

    #[test]
    fn versions_refused() {
        for (major, minor) in [(2, 0), (1, 1), (0, 9)] {
            let mut h = FileHeader::new(ImageKind::Core, b"");
            h.major = major;
            h.minor = minor;
            let e = FileHeader::parse(&h.to_bytes(), ImageKind::Core, p()).unwrap_err();
            assert!(
                matches!(e, FormatError::UnsupportedVersion { found_major, found_minor, .. }
                    if found_major == major && found_minor == minor),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("/img/core"), "{msg}");
            assert!(msg.contains(&format!("{major}.{minor}")), "{msg}");
            assert!(
                msg.contains(&format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn short_header() {
        let bytes = FileHeader::new(ImageKind::Core, b"").to_bytes();
        for n in 0..HEADER_LEN {
            let e = FileHeader::parse(&bytes[..n], ImageKind::Core, p()).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated { expected: 32, .. }),
                "{e:?}"
            );
        }
    }
}
