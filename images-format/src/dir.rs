//! Image directories: [`ImageWriter`] builds one in a temporary sibling directory and renames it
//! into place when complete; [`ImageDir`] opens one and reads its records, validating everything.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{FormatError, Result};
use crate::header::{version_readable, FileHeader, HEADER_LEN};
use crate::inventory::Inventory;
use crate::kind::ImageKind;
use crate::pagestore::{PageStoreIndex, PageStoreReader, PageStoreWriter};
use crate::{decode, encode, Image};

/// A record file's bytes: header and payload, refused past the kind's cap (it could not be
/// read back).
fn record_bytes<T: Image>(file: &Path, record: &T) -> Result<Vec<u8>> {
    let payload = encode(record)?;
    if payload.len() as u64 > T::MAX_PAYLOAD {
        return Err(FormatError::TooLarge {
            file: file.to_path_buf(),
            len: payload.len() as u64,
            cap: T::MAX_PAYLOAD,
        });
    }
    let mut bytes = FileHeader::new(T::KIND, &payload).to_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Writes `record` into the complete image at `dir`, in place of its record of that kind (or
/// as a new one), through a temporary file renamed over it.
pub fn replace_record<T: Image>(dir: &Path, record: &T) -> Result<()> {
    let file = dir.join(T::KIND.file_name());
    let bytes = record_bytes(&file, record)?;
    let tmp = dir.join(format!(".{}.tmp", T::KIND.file_name()));
    fs::write(&tmp, &bytes).map_err(|e| FormatError::io("write", &tmp, e))?;
    fs::rename(&tmp, &file).map_err(|e| FormatError::io("rename", &file, e))
}

/// Writes an image into `<final>.tmp-<pid>` (a sibling of the final path) and renames it into
/// place in [`commit`](Self::commit). Dropping it uncommitted removes the temporary directory.
#[derive(Debug)]
pub struct ImageWriter {
    final_dir: PathBuf,
    tmp: PathBuf,
    /// Set by the page store's `finish`; `None` while no page store was opened.
    pages_finished: Option<Arc<AtomicBool>>,
    committed: bool,
}

impl ImageWriter {
    /// Starts an image that will end up at `final_dir`. Fails with
    /// [`FormatError::ImageExists`] if `final_dir` exists and is anything but an empty directory,
    /// and with [`FormatError::TmpExists`] if the temporary directory is already there.
    pub fn create(final_dir: &Path) -> Result<Self> {
        let Some(name) = final_dir.file_name() else {
            return Err(FormatError::InvalidUse {
                reason: format!(
                    "{} does not end in a name, so it cannot be an image directory",
                    final_dir.display()
                ),
            });
        };
        match fs::symlink_metadata(final_dir) {
            Ok(md) => {
                if !md.is_dir() || !dir_is_empty(final_dir)? {
                    return Err(FormatError::ImageExists {
                        path: final_dir.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FormatError::io("stat", final_dir, e)),
        }
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = final_dir.with_file_name(tmp_name);
        match fs::create_dir(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(FormatError::TmpExists { path: tmp });
            }
            Err(e) => return Err(FormatError::io("create directory", tmp, e)),
        }
        Ok(ImageWriter {
            final_dir: final_dir.to_path_buf(),
            tmp,
            pages_finished: None,
            committed: false,
        })
    }

    /// The temporary directory being written.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Encodes `record` with postcard and writes header + payload to `tmp/<kind file name>`.
    /// Each kind can be written once. Returns the bytes written, header included.
    pub fn write<T: Image>(&mut self, record: &T) -> Result<u64> {
        if T::KIND == ImageKind::Pages {
            return Err(FormatError::InvalidUse {
                reason: "the pages file is written through page_store(), not write()".into(),
            });
        }
        let file = self.tmp.join(T::KIND.file_name());
        let bytes = record_bytes(&file, record)?;
        let mut f = create_new(&file)?;
        f.write_all(&bytes)
            .map_err(|e| FormatError::io("write", &file, e))?;
        Ok(bytes.len() as u64)
    }

    /// Opens `tmp/pages` for the page store; at most one per image. `compress_level` enables
    /// zstd per chunk at that level. The store must be [`finish`](PageStoreWriter::finish)ed
    /// before [`commit`](Self::commit).
    pub fn page_store(&mut self, compress_level: Option<i32>) -> Result<PageStoreWriter> {
        let file = self.tmp.join(ImageKind::Pages.file_name());
        let store = PageStoreWriter::create(&file, compress_level)?;
        self.pages_finished = Some(store.finished_flag());
        Ok(store)
    }

    /// Renames the temporary directory to the final path (replacing it if it is an empty
    /// directory; `rename(2)` does that atomically) and returns the final path. The image
    /// must hold an inventory, and its page store (if any) must be finished.
    pub fn commit(mut self) -> Result<PathBuf> {
        let inventory = self.tmp.join(ImageKind::Inventory.file_name());
        if !inventory.is_file() {
            return Err(FormatError::IncompleteImage {
                path: self.tmp.clone(),
                reason: "no inventory was written".into(),
            });
        }
        if let Some(done) = &self.pages_finished {
            if !done.load(Ordering::Acquire) {
                return Err(FormatError::IncompleteImage {
                    path: self.tmp.clone(),
                    reason: "the page store was opened but not finished".into(),
                });
            }
        }
        match fs::rename(&self.tmp, &self.final_dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::DirectoryNotEmpty
                        | io::ErrorKind::AlreadyExists
                        | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(FormatError::ImageExists {
                    path: self.final_dir.clone(),
                });
            }
            Err(e) => {
                return Err(FormatError::io(
                    "rename the temporary image into",
                    &self.final_dir,
                    e,
                ))
            }
        }
        self.committed = true;
        Ok(self.final_dir.clone())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: nothing useful can be done about a failure here.
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An image directory opened for reading, with its inventory already read and validated.
#[derive(Debug)]
pub struct ImageDir {
    path: PathBuf,
    inventory: Inventory,
}

impl ImageDir {
    /// Opens an image directory and reads + validates its inventory.
    pub fn open(dir: &Path) -> Result<Self> {
        let md = fs::metadata(dir).map_err(|e| FormatError::io("open image directory", dir, e))?;
        if !md.is_dir() {
            return Err(FormatError::io(
                "open image directory",
                dir,
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let inventory: Inventory = read_record(dir)?;
        if !version_readable(inventory.format_major, inventory.format_minor) {
            return Err(FormatError::UnsupportedVersion {
                file: dir.join(ImageKind::Inventory.file_name()),
                found_major: inventory.format_major,
                found_minor: inventory.format_minor,
            });
        }
        Ok(ImageDir {
            path: dir.to_path_buf(),
            inventory,
        })
    }

    /// The image directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Reads one record file: header (magic, version, kind), payload length capped at
    /// `T::MAX_PAYLOAD` before allocating, file length, crc32, then exact postcard decoding.
    /// A missing file is [`FormatError::Missing`].
    pub fn read<T: Image>(&self) -> Result<T> {
        read_record(&self.path)
    }

    /// Whether a file of that kind exists in the image.
    pub fn has(&self, kind: ImageKind) -> bool {
        self.path.join(kind.file_name()).is_file()
    }

    /// Opens the page store of this image, validating `index` against it.
    pub fn page_store(&self, index: &PageStoreIndex) -> Result<PageStoreReader> {
        PageStoreReader::open(&self.path, index)
    }
}

/// Reads and validates the `T` record file in `dir`, which need not be an image (a
/// `sent-pages` file, say): header, length cap, checksum and decoding as in an image.
pub fn read_record<T: Image>(dir: &Path) -> Result<T> {
    let file = dir.join(T::KIND.file_name());
    let mut f = match File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FormatError::Missing { file }),
        Err(e) => return Err(FormatError::io("open", file, e)),
    };
    let file_len = f
        .metadata()
        .map_err(|e| FormatError::io("stat", &file, e))?
        .len();

    let mut hbuf = [0u8; HEADER_LEN];
    let got = read_up_to(&mut f, &mut hbuf).map_err(|e| FormatError::io("read", &file, e))?;
    let header = FileHeader::parse(&hbuf[..got], T::KIND, &file)?;

    if header.payload_len > T::MAX_PAYLOAD {
        return Err(FormatError::TooLarge {
            file,
            len: header.payload_len,
            cap: T::MAX_PAYLOAD,
        });
    }
    let Ok(len) = usize::try_from(header.payload_len) else {
        return Err(FormatError::TooLarge {
            file,
            len: header.payload_len,
            cap: usize::MAX as u64,
        });
    };
    // Cannot overflow: payload_len <= MAX_PAYLOAD, far below u64::MAX.
    let expected = HEADER_LEN as u64 + header.payload_len;
    if file_len < expected {
        return Err(FormatError::Truncated {
            file,
            expected,
            found: file_len,
        });
    }
    if file_len > expected {
        return Err(FormatError::TrailingBytes {
            file,
            count: file_len - expected,
        });
    }

    let mut payload = vec![0u8; len];
    match f.read_exact(&mut payload) {
        Ok(()) => {}
        // The file shrank under us.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(FormatError::Truncated {
                file,
                expected,
                found: file_len,
            });
        }
        Err(e) => return Err(FormatError::io("read", file, e)),
    }
    let crc = crc32fast::hash(&payload);
    if crc != header.checksum {
        return Err(FormatError::Checksum {
            file,
            expected: header.checksum,
            found: crc,
        });
    }
    decode(&payload, &file)
}

/// Creates `file`, which must not exist yet (a second write of the same kind is an error).
pub(crate) fn create_new(file: &Path) -> Result<File> {
    File::create_new(file).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            FormatError::DuplicateRecord {
                file: file.to_path_buf(),
            }
        } else {
            FormatError::io("create", file, e)
        }
    })
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn dir_is_empty(dir: &Path) -> Result<bool> {
    let mut entries = fs::read_dir(dir).map_err(|e| FormatError::io("list", dir, e))?;
    Ok(entries.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Sample {
        pid: i32,
        name: String,
        regs: Vec<u64>,
        extra: Option<Vec<u8>>,
    }
    impl Image for Sample {
        const KIND: ImageKind = ImageKind::Core;
    }

    /// Same kind as `Sample` but a tiny cap.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Tiny(Vec<u8>);
    impl Image for Tiny {
        const KIND: ImageKind = ImageKind::Core;
        const MAX_PAYLOAD: u64 = 16;
    }

    /// A record of another kind, to read a file as the wrong kind.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct MmRec(u64);
    impl Image for MmRec {
        const KIND: ImageKind = ImageKind::Mm;
    }

    fn inventory() -> Inventory {
        Inventory {
            format_major: crate::FORMAT_MAJOR,
            format_minor: crate::FORMAT_MINOR,
            engine_version: "0.1.0".into(),
            kernel: "6.18.0".into(),
            arch: "x86_64".into(),
            xsave_features: 0x2e7,
            created_unix_ms: 1_700_000_000_000,
            parent: None,
            root_pid: 4242,
            compressed: true,
        }
    }

    fn sample() -> Sample {
        Sample {
            pid: 77,
            name: "bash".into(),
            regs: (0..40).collect(),
            extra: Some(vec![1, 2, 3]),
        }
    }

    /// A committed image at `<tmp>/img` holding an inventory and a `Sample`.
    fn image() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let mut w = ImageWriter::create(&final_dir).unwrap();
        w.write(&inventory()).unwrap();
        w.write(&sample()).unwrap();
        let p = w.commit().unwrap();
        (t, p)
    }

    fn core_path(dir: &Path) -> PathBuf {
        dir.join("core")
    }

    /// Rewrites the core file as header + payload, with the given header fields.
    fn write_core(dir: &Path, header: FileHeader, payload: &[u8]) {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        fs::write(core_path(dir), bytes).unwrap();
    }

    fn assert_names_file(e: &FormatError, file: &Path) {
        let msg = e.to_string();
        assert!(
            msg.contains(&file.display().to_string()),
            "message does not name {file:?}: {msg}"
        );
    }

    #[test]
    fn round_trip_records_and_inventory() {
        let (_t, p) = image();
        assert!(p.ends_with("img"));
        let d = ImageDir::open(&p).unwrap();
        assert_eq!(d.path(), p);
        assert_eq!(d.inventory(), &inventory());
        assert_eq!(d.read::<Inventory>().unwrap(), inventory());
        assert_eq!(d.read::<Sample>().unwrap(), sample());
        assert!(d.has(ImageKind::Inventory));
        assert!(d.has(ImageKind::Core));
        assert!(!d.has(ImageKind::Mm));
        assert!(!d.has(ImageKind::Pages));
        // The file is exactly header + postcard payload.
        let bytes = fs::read(core_path(&p)).unwrap();
        let payload = encode(&sample()).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + payload.len());
        assert_eq!(&bytes[HEADER_LEN..], &payload[..]);
    }

    #[test]
    fn write_returns_bytes_and_refuses_duplicates() {
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        let n = w.write(&sample()).unwrap();
        assert_eq!(n, fs::metadata(w.tmp_path().join("core")).unwrap().len());
        let e = w.write(&sample()).unwrap_err();
        assert!(matches!(e, FormatError::DuplicateRecord { .. }), "{e:?}");
        assert_names_file(&e, &w.tmp_path().join("core"));
    }

    #[test]
    fn write_refuses_payload_over_cap() {
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        let e = w.write(&Tiny(vec![0; 100])).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge { cap: 16, .. }), "{e:?}");
        assert!(!w.tmp_path().join("core").exists());
    }

    #[test]
    fn missing_record_names_file() {
        let (_t, p) = image();
        let d = ImageDir::open(&p).unwrap();
        let e = d.read::<MmRec>().unwrap_err();
        assert!(matches!(e, FormatError::Missing { .. }), "{e:?}");
        assert_names_file(&e, &p.join("mm"));
    }

    #[test]
    fn open_errors() {
        let t = tempfile::tempdir().unwrap();
        let e = ImageDir::open(&t.path().join("nope")).unwrap_err();
        assert!(matches!(e, FormatError::Io { .. }), "{e:?}");
        assert_names_file(&e, &t.path().join("nope"));
        let e = ImageDir::open(t.path()).unwrap_err();
        assert!(matches!(e, FormatError::Missing { .. }), "{e:?}");
        assert_names_file(&e, &t.path().join("inventory"));
    }

    #[test]
    fn inventory_version_field_checked() {
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        w.write(&Inventory {
            format_minor: 9,
            ..inventory()
        })
        .unwrap();
        let p = w.commit().unwrap();
        let e = ImageDir::open(&p).unwrap_err();
        assert!(
            matches!(e, FormatError::UnsupportedVersion { found_minor: 9, .. }),
            "{e:?}"
        );
        assert_names_file(&e, &p.join("inventory"));
    }

    #[test]
    fn bad_magic() {
        let (_t, p) = image();
        let payload = encode(&sample()).unwrap();
        let mut h = FileHeader::new(ImageKind::Core, &payload);
        h.magic = 0x1234_5678;
        write_core(&p, h, &payload);
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::BadMagic {
                    found: 0x1234_5678,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn wrong_kind() {
        let (_t, p) = image();
        fs::copy(core_path(&p), p.join("mm")).unwrap();
        let e = ImageDir::open(&p).unwrap().read::<MmRec>().unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::WrongKind {
                    expected: ImageKind::Mm,
                    found: ImageKind::Core,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_names_file(&e, &p.join("mm"));
    }

    #[test]
    fn bad_checksum() {
        let (_t, p) = image();
        let mut bytes = fs::read(core_path(&p)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(core_path(&p), &bytes).unwrap();
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(matches!(e, FormatError::Checksum { .. }), "{e:?}");
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn unsupported_versions() {
        let (_t, p) = image();
        let payload = encode(&sample()).unwrap();
        for (major, minor) in [(2, 0), (1, 1), (0, 9)] {
            let mut h = FileHeader::new(ImageKind::Core, &payload);
            h.major = major;
            h.minor = minor;
            write_core(&p, h, &payload);
            let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
            assert!(
                matches!(e, FormatError::UnsupportedVersion { found_major, found_minor, .. }
                    if (found_major, found_minor) == (major, minor)),
                "{e:?}"
            );
            assert_names_file(&e, &core_path(&p));
            assert!(e.to_string().contains(&format!("{major}.{minor}")), "{e}");
        }
    }

    #[test]
    fn truncated_payload_and_header() {
        let (_t, p) = image();
        let bytes = fs::read(core_path(&p)).unwrap();
        fs::write(core_path(&p), &bytes[..bytes.len() - 3]).unwrap();
        let d = ImageDir::open(&p).unwrap();
        let e = d.read::<Sample>().unwrap_err();
        assert!(
            matches!(e, FormatError::Truncated { expected, found, .. }
                if expected == bytes.len() as u64 && found == bytes.len() as u64 - 3),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
        fs::write(core_path(&p), &bytes[..10]).unwrap();
        let e = d.read::<Sample>().unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Truncated {
                    expected: 32,
                    found: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn payload_len_above_cap_is_refused_before_allocating() {
        let (_t, p) = image();
        let mut h = FileHeader::new(ImageKind::Core, b"");
        h.payload_len = 1 << 60;
        write_core(&p, h, b"abc");
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge { len, cap, .. } if len == 1 << 60 && cap == Sample::MAX_PAYLOAD),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
        // Under the default cap but far beyond the file: truncation, still no allocation.
        h.payload_len = Sample::MAX_PAYLOAD;
        write_core(&p, h, b"abc");
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "{e:?}");
        // A per-type cap.
        let payload = encode(&Tiny(vec![7; 40])).unwrap();
        write_core(&p, FileHeader::new(ImageKind::Core, &payload), &payload);
        let e = ImageDir::open(&p).unwrap().read::<Tiny>().unwrap_err();
        assert!(matches!(e, FormatError::TooLarge { cap: 16, .. }), "{e:?}");
    }

    #[test]
    fn trailing_garbage_after_postcard_payload() {
        let (_t, p) = image();
        let mut payload = encode(&sample()).unwrap();
        payload.extend_from_slice(b"junk");
        // Header and checksum cover the garbage: only the decoder can see it.
        write_core(&p, FileHeader::new(ImageKind::Core, &payload), &payload);
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(
            matches!(e, FormatError::TrailingBytes { count: 4, .. }),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn trailing_bytes_after_payload_in_file() {
        let (_t, p) = image();
        let mut bytes = fs::read(core_path(&p)).unwrap();
        bytes.extend_from_slice(&[0; 5]);
        fs::write(core_path(&p), &bytes).unwrap();
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(
            matches!(e, FormatError::TrailingBytes { count: 5, .. }),
            "{e:?}"
        );
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn undecodable_payload_with_good_checksum() {
        let (_t, p) = image();
        let payload = [0xffu8; 12];
        write_core(&p, FileHeader::new(ImageKind::Core, &payload), &payload);
        let e = ImageDir::open(&p).unwrap().read::<Sample>().unwrap_err();
        assert!(matches!(e, FormatError::Decode { .. }), "{e:?}");
        assert_names_file(&e, &core_path(&p));
    }

    #[test]
    fn corrupted_files_never_panic() {
        let (_t, p) = image();
        let good = fs::read(p.join("inventory")).unwrap();
        let d = ImageDir::open(&p).unwrap();
        for len in 0..good.len() {
            fs::write(p.join("inventory"), &good[..len]).unwrap();
            assert!(d.read::<Inventory>().is_err(), "truncated to {len}");
        }
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= bit;
                fs::write(p.join("inventory"), &b).unwrap();
                // Flipping a reserved header byte is harmless; anything else must be an error.
                let r = d.read::<Inventory>();
                assert_eq!(
                    r.is_ok(),
                    (24..32).contains(&i),
                    "byte {i} bit {bit:#x}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn drop_without_commit_removes_tmp() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let mut w = ImageWriter::create(&final_dir).unwrap();
        let tmp = w.tmp_path().to_path_buf();
        assert_eq!(tmp.parent(), Some(t.path()));
        assert_eq!(
            tmp.file_name().unwrap().to_str().unwrap(),
            format!("img.tmp-{}", std::process::id())
        );
        w.write(&inventory()).unwrap();
        let mut ps = w.page_store(None).unwrap();
        ps.append(&[1u8; 4096]).unwrap();
        assert!(tmp.is_dir());
        drop(ps);
        drop(w);
        assert!(!tmp.exists());
        assert!(!final_dir.exists());
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_renames_into_place() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let mut w = ImageWriter::create(&final_dir).unwrap();
        let tmp = w.tmp_path().to_path_buf();
        w.write(&inventory()).unwrap();
        assert_eq!(w.commit().unwrap(), final_dir);
        assert!(!tmp.exists());
        assert!(final_dir.join("inventory").is_file());
        // An existing empty directory is replaced.
        let final2 = t.path().join("img2");
        fs::create_dir(&final2).unwrap();
        let mut w = ImageWriter::create(&final2).unwrap();
        w.write(&inventory()).unwrap();
        w.commit().unwrap();
        assert_eq!(ImageDir::open(&final2).unwrap().inventory(), &inventory());
    }

    #[test]
    fn create_over_non_empty_dir_or_file_fails() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        fs::create_dir(&final_dir).unwrap();
        fs::write(final_dir.join("x"), b"x").unwrap();
        let e = ImageWriter::create(&final_dir).unwrap_err();
        assert!(matches!(e, FormatError::ImageExists { .. }), "{e:?}");
        assert_names_file(&e, &final_dir);
        let file = t.path().join("f");
        fs::write(&file, b"x").unwrap();
        let e = ImageWriter::create(&file).unwrap_err();
        assert!(matches!(e, FormatError::ImageExists { .. }), "{e:?}");
        // Nothing was left behind.
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 2);
    }

    #[test]
    fn commit_fails_if_final_filled_meanwhile() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let mut w = ImageWriter::create(&final_dir).unwrap();
        let tmp = w.tmp_path().to_path_buf();
        w.write(&inventory()).unwrap();
        fs::create_dir(&final_dir).unwrap();
        fs::write(final_dir.join("x"), b"x").unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, FormatError::ImageExists { .. }), "{e:?}");
        assert!(
            !tmp.exists(),
            "the failed writer was dropped and cleaned up"
        );
    }

    #[test]
    fn second_writer_for_same_image_fails() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let _w = ImageWriter::create(&final_dir).unwrap();
        let e = ImageWriter::create(&final_dir).unwrap_err();
        assert!(matches!(e, FormatError::TmpExists { .. }), "{e:?}");
    }

    #[test]
    fn commit_requires_inventory_and_finished_pages() {
        let t = tempfile::tempdir().unwrap();
        let final_dir = t.path().join("img");
        let w = ImageWriter::create(&final_dir).unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, FormatError::IncompleteImage { .. }), "{e:?}");
        assert!(!final_dir.exists());

        let mut w = ImageWriter::create(&final_dir).unwrap();
        w.write(&inventory()).unwrap();
        let mut ps = w.page_store(None).unwrap();
        ps.append(&[1u8; 4096]).unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, FormatError::IncompleteImage { .. }), "{e:?}");
        drop(ps);
        assert!(!final_dir.exists());
    }

    #[test]
    fn page_store_once_and_not_via_write() {
        #[derive(Serialize, Deserialize)]
        struct FakePages;
        impl Image for FakePages {
            const KIND: ImageKind = ImageKind::Pages;
        }
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        let e = w.write(&FakePages).unwrap_err();
        assert!(matches!(e, FormatError::InvalidUse { .. }), "{e:?}");
        let _ps = w.page_store(None).unwrap();
        let e = w.page_store(None).unwrap_err();
        assert!(matches!(e, FormatError::DuplicateRecord { .. }), "{e:?}");
        assert_names_file(&e, &w.tmp_path().join("pages"));
    }

    #[test]
    fn image_with_page_store_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        w.write(&inventory()).unwrap();
        let mut ps = w.page_store(Some(3)).unwrap();
        let a = ps.append(&[0xabu8; 8192]).unwrap();
        let index = ps.finish().unwrap();
        w.write(&sample()).unwrap();
        let p = w.commit().unwrap();
        let d = ImageDir::open(&p).unwrap();
        assert!(d.has(ImageKind::Pages));
        let r = d.page_store(&index).unwrap();
        let chunk = r.chunk(a.chunk).unwrap();
        assert_eq!(&chunk[a.offset as usize..], &[0xabu8; 8192][..]);
        r.verify_all().unwrap();
    }
}
