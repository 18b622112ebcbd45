//! The kinds of image files. [`KINDS`] is the one table that maps each kind to its file name and
//! magic (like CRIU's `image-desc.c`): add a kind there and nowhere else.

use std::fmt;

/// The kind of an image file; stored as `u16` in every file header.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ImageKind {
    Inventory = 1,
    Pstree = 2,
    Core = 3,
    Mm = 4,
    Pagemap = 5,
    Pages = 6,
    Files = 7,
    Pipes = 8,
    Ns = 9,
    Ipc = 10,
    Tmpfs = 11,
    /// POSIX timers of each process (value 14: 12 and 13 are left to the socket work of issue 4).
    Timers = 14,
    /// Pages an incremental image takes from its parent (a migration's staged pages).
    ParentPages = 15,
    /// Not part of an image: the pages a migration's destination already holds, handed by
    /// the source's tracker to its final dump (see `track`).
    SentPages = 16,
    /// Where the written-page tracking armed after an image lives (`vzcpt dump --track-mem`):
    /// the keeper process holding the userfaultfds, and what it tracks (see `track`).
    TrackState = 17,
}

/// One row of [`KINDS`].
#[derive(Clone, Copy, Debug)]
pub struct KindDesc {
    pub kind: ImageKind,
    /// File name inside the image directory.
    pub file_name: &'static str,
    /// First four bytes (little-endian) of every file of that kind.
    pub magic: u32,
}

/// The table of all kinds, in increasing `u16` order. Values may have gaps (a value is given
/// to a kind when its work starts; kinds land in any order). Magics are arbitrary distinct
/// constants, far apart, so a damaged or foreign file is recognised at once.
pub const KINDS: [KindDesc; 15] = [
    KindDesc {
        kind: ImageKind::Inventory,
        file_name: "inventory",
        magic: 0x56a1_3c07,
    },
    KindDesc {
        kind: ImageKind::Pstree,
        file_name: "pstree",
        magic: 0x5e7b_9214,
    },
    KindDesc {
        kind: ImageKind::Core,
        file_name: "core",
        magic: 0x43c0_7e51,
    },
    KindDesc {
        kind: ImageKind::Mm,
        file_name: "mm",
        magic: 0x4d6d_2a93,
    },
    KindDesc {
        kind: ImageKind::Pagemap,
        file_name: "pagemap",
        magic: 0x5061_8f3d,
    },
    KindDesc {
        kind: ImageKind::Pages,
        file_name: "pages",
        magic: 0x5ba9_e466,
    },
    KindDesc {
        kind: ImageKind::Files,
        file_name: "files",
        magic: 0x46d1_5a2c,
    },
    KindDesc {
        kind: ImageKind::Pipes,
        file_name: "pipes",
        magic: 0x5019_c7e8,
    },
    KindDesc {
        kind: ImageKind::Ns,
        file_name: "ns",
        magic: 0x4e53_61d2,
    },
    KindDesc {
        kind: ImageKind::Ipc,
        file_name: "ipc",
        magic: 0x49a7_c35b,
    },
    KindDesc {
        kind: ImageKind::Tmpfs,
        file_name: "tmpfs",
        magic: 0x746d_9a41,
    },
    KindDesc {
        kind: ImageKind::Timers,
        file_name: "timers",
        magic: 0x54e1_3b8f,
    },
    KindDesc {
        kind: ImageKind::ParentPages,
        file_name: "parent-pages",
        magic: 0x50a7_61c4,
    },
    KindDesc {
        kind: ImageKind::SentPages,
        file_name: "sent-pages",
        magic: 0x53e9_d20b,
    },
    KindDesc {
        kind: ImageKind::TrackState,
        file_name: "track-state",
        magic: 0x7ac4_5e17,
    },
];

const ALL_KINDS: [ImageKind; KINDS.len()] = {
    let mut all = [ImageKind::Inventory; KINDS.len()];
    let mut i = 0;
    while i < KINDS.len() {
        all[i] = KINDS[i].kind;
        i += 1;
    }
    all
};

impl ImageKind {
    /// Every kind, in `u16` order.
    pub const ALL: &'static [ImageKind] = &ALL_KINDS;

    fn desc(self) -> &'static KindDesc {
        // Every variant has a row (checked by a test); the fallback is never taken.
        KINDS.iter().find(|d| d.kind == self).unwrap_or(&KINDS[0])
    }

    /// The file name of this kind inside an image directory.
    pub fn file_name(self) -> &'static str {
        self.desc().file_name
    }

    /// The magic number opening every file of this kind.
    pub fn magic(self) -> u32 {
        self.desc().magic
    }

    /// The kind stored as `v`; `None` for values no kind has.
    pub fn from_u16(v: u16) -> Option<Self> {
        KINDS.iter().find(|d| d.kind as u16 == v).map(|d| d.kind)
    }

    /// The kind whose magic is `magic`, if any.
    pub fn from_magic(magic: u32) -> Option<Self> {
        KINDS.iter().find(|d| d.magic == magic).map(|d| d.kind)
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_in_u16_order_and_distinct() {
        for (i, d) in KINDS.iter().enumerate() {
            if i > 0 {
                assert!(
                    d.kind as u16 > KINDS[i - 1].kind as u16,
                    "row {i} out of order"
                );
            }
            assert_eq!(ImageKind::ALL[i], d.kind);
            assert_eq!(d.kind.desc().kind, d.kind);
        }
        let names: HashSet<_> = KINDS.iter().map(|d| d.file_name).collect();
        let magics: HashSet<_> = KINDS.iter().map(|d| d.magic).collect();
        assert_eq!(names.len(), KINDS.len());
        assert_eq!(magics.len(), KINDS.len());
    }

    #[test]
    fn names_and_lookups() {
        let names: Vec<_> = ImageKind::ALL.iter().map(|k| k.file_name()).collect();
        assert_eq!(
            names,
            [
                "inventory",
                "pstree",
                "core",
                "mm",
                "pagemap",
                "pages",
                "files",
                "pipes",
                "ns",
                "ipc",
                "tmpfs",
                "timers",
                "parent-pages",
                "sent-pages",
                "track-state"
            ]
        );
        for &k in ImageKind::ALL {
            assert_eq!(ImageKind::from_u16(k as u16), Some(k));
            assert_eq!(ImageKind::from_magic(k.magic()), Some(k));
            assert_eq!(k.to_string(), k.file_name());
        }
        for v in [0u16, 12, 100, u16::MAX] {
            assert_eq!(ImageKind::from_u16(v), None);
        }
        assert_eq!(ImageKind::from_magic(0), None);
    }
}
