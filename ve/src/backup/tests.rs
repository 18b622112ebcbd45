//! Round trips of real trees (every file type, owners, modes, times, xattrs, hard links) and
//! damaged streams: every one refused, without a panic, and nothing left behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

fn key(b: u8) -> KeyMaterial {
    KeyMaterial([b; 32])
}

/// A tree with each kind of node the private area can hold. Large enough (3 MiB of data that
/// does not compress) to span several chunks.
fn make_tree(root: &Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    std::fs::create_dir_all(root.join("etc/sub")).unwrap();
    std::fs::write(root.join("etc/hostname"), "web1\n").unwrap();
    let mut big = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(root.join("etc/big"), &big).unwrap();
    std::fs::hard_link(root.join("etc/big"), root.join("etc/sub/big-link")).unwrap();
    std::os::unix::fs::symlink("../hostname", root.join("etc/sub/link")).unwrap();
    std::fs::write(root.join("suid"), "x").unwrap();
    std::os::unix::fs::chown(root.join("suid"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    // An overlay whiteout, a FIFO, an opaque directory.
    mknod(
        &root.join("gone"),
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();
    mknod(
        &root.join("fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    std::fs::create_dir(root.join("opaque")).unwrap();
    sys::xattr::set_path(&root.join("opaque"), b"trusted.overlay.opaque", b"y").unwrap();
    sys::xattr::set_path(&root.join("etc/hostname"), b"user.note", b"kept").unwrap();
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join("etc"),
        &nix::sys::time::TimeSpec::new(1_000_000, 5),
        &nix::sys::time::TimeSpec::new(2_000_000, 7),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// The tree as text: every node's path, type, mode, owner, mtime, size, xattrs, content hash.
fn describe(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let mut x = sys::xattr::list_path(&p).unwrap();
        x.sort();
        let content = if m.is_file() {
            crc32fast::hash(&std::fs::read(&p).unwrap())
        } else {
            0
        };
        let link = std::fs::read_link(&p)
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let mtime = if m.is_dir() || !m.file_type().is_symlink() {
            (m.mtime(), m.mtime_nsec())
        } else {
            (0, 0)
        };
        out.push(format!(
            "{rel} mode={:o} {}:{} rdev={} mtime={mtime:?} size={} nlink={} xattrs={x:?} crc={content:x} link={link}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev(),
            if m.is_dir() { 0 } else { m.len() },
            if m.is_dir() { 0 } else { m.nlink() },
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    layout: Layout,
    src: Source,
}

fn fixture(with_image: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("vz"), "unused");
    let src_root = dir.path().join("src");
    make_tree(&src_root.join("upper"));
    let image = src_root.join("image");
    if with_image {
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("inventory"), b"image bytes").unwrap();
    }
    let conf = src_root.join("101.conf");
    std::fs::write(&conf, "hostname = \"web1\"\nmemory = 1048576\n").unwrap();
    Fixture {
        src: Source {
            ctid: 101,
            config: conf,
            private: src_root.join("upper"),
            image: with_image.then_some(image),
            live: false,
        },
        layout,
        _dir: dir,
    }
}

fn backup_bytes(f: &Fixture, key: Option<KeyMaterial>, compress: i32) -> Vec<u8> {
    let opts = BackupOptions { key, compress };
    write_backup(&f.src, Vec::new(), &opts).unwrap().0
}

/// Whatever is left of a failed restore under `$VZ_DIR`: nothing but empty parents.
fn leftovers(layout: &Layout) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["private", "dump", "conf", "root"] {
        if let Ok(rd) = std::fs::read_dir(layout.vz_dir.join(d)) {
            out.extend(rd.map(|e| format!("{d}/{}", e.unwrap().file_name().to_string_lossy())));
        }
    }
    out
}

#[test]
fn round_trip_each_mode_under_a_new_ctid() {
    for (keyed, compress) in [(false, 0), (false, 3), (true, 0), (true, 3)] {
        let f = fixture(true);
        let bytes = backup_bytes(&f, keyed.then(|| key(7)), compress);
        let k = keyed.then(|| key(7));
        let stats = restore_backup(&f.layout, 202, bytes.as_slice(), k.as_ref())
            .unwrap_or_else(|e| panic!("keyed {keyed} compress {compress}: {e}"));
        assert_eq!(stats.from_ctid, 101);
        assert_eq!(stats.status, Status::Dumped);
        assert_eq!(describe(&f.src.private), describe(&f.layout.upper(202)));
        assert_eq!(
            std::fs::read(f.layout.dump(202).join("inventory")).unwrap(),
            b"image bytes"
        );
        assert!(f.layout.work(202).is_dir());
        let cfg = VeConfig::load(&f.layout.conf(202)).unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("web1"));
        assert_eq!(cfg.memory, Some(1 << 20));
        // A CTID that exists is refused.
        let e = restore_backup(&f.layout, 202, bytes.as_slice(), k.as_ref()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }
}

fn refused(f: &Fixture, bytes: &[u8], k: Option<&KeyMaterial>) -> String {
    let e = match restore_backup(&f.layout, 303, bytes, k) {
        Ok(_) => panic!("a damaged backup was restored"),
        Err(e) => e.to_string(),
    };
    let left = leftovers(&f.layout);
    assert!(
        left.iter().all(|l| ["private", "dump", "conf"]
            .iter()
            .all(|d| !l.starts_with(&format!("{d}/")))),
        "a refused restore left {left:?} ({e})"
    );
    e
}

#[test]
fn damage_is_refused_with_a_clear_reason_and_nothing_created() {
    let f = fixture(true);
    let k = key(9);
    let enc = backup_bytes(&f, Some(key(9)), 0);
    assert!(enc.len() > 3 << 20, "several chunks");
    // Wrong key; no key; a key for a plain backup.
    assert!(refused(&f, &enc, Some(&key(8))).contains("wrong key"));
    assert!(refused(&f, &enc, None).contains("encrypted: give its key"));
    let plain = backup_bytes(&f, None, 3);
    assert!(refused(&f, &plain, Some(&k)).contains("not encrypted"));
    // A byte changed in the header, in the first chunk, in the last one.
    for at in [12, 16, 60, 200, enc.len() / 2, enc.len() - 1] {
        let mut bad = enc.clone();
        bad[at] ^= 0x40;
        let e = refused(&f, &bad, Some(&k));
        assert!(
            e.contains("authentication failed") || e.contains("header") || e.contains("length"),
            "byte {at}: {e}"
        );
    }
    // Cut at a chunk boundary (the last chunk dropped), and inside a chunk.
    let first = HEADER + 4 + stream::CHUNK + 16;
    for cut in [0, 10, HEADER, HEADER + 3, first, first + 100, enc.len() - 1] {
        let e = refused(&f, &enc[..cut], Some(&k));
        assert!(
            e.contains("truncated") || e.contains("empty") || e.contains("authentication"),
            "cut at {cut}: {e}"
        );
    }
    // Trailing garbage.
    let mut long = enc.clone();
    long.extend_from_slice(b"x");
    assert!(refused(&f, &long, Some(&k)).contains("trailing"));
    // Chunks swapped.
    let mut swapped = enc[..HEADER].to_vec();
    let c0 = &enc[HEADER..first];
    let c1 = &enc[first..first + (first - HEADER)];
    swapped.extend_from_slice(c1);
    swapped.extend_from_slice(c0);
    swapped.extend_from_slice(&enc[first + (first - HEADER)..]);
    assert!(refused(&f, &swapped, Some(&k)).contains("authentication failed at chunk 0"));
    // A plain backup: damage found by its checksums.
    let raw = backup_bytes(&f, None, 0);
    let mut bad = raw.clone();
    bad[raw.len() / 2] ^= 1;
    assert!(refused(&f, &bad, None).contains("checksum"));
    assert!(refused(&f, &raw[..raw.len() - 5], None).contains("truncated"));
    assert!(refused(
        &f,
        b"#!/bin/sh\necho hello world, this is no backup at all, not one bit of it.....",
        None
    )
    .contains("not a vzcpt backup"));
    // And the intact ones restore.
    restore_backup(&f.layout, 304, enc.as_slice(), Some(&k)).unwrap();
    restore_backup(&f.layout, 305, raw.as_slice(), None).unwrap();
}

const HEADER: usize = stream::HEADER_LEN;

/// Flipped bytes and cuts everywhere in a small backup (one chunk, plain, so the flips reach
/// the decoders behind the checksum when they collide... they do not: each is refused).
#[test]
fn no_panic_on_any_single_flip_or_cut() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("upper");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/f"), "hello").unwrap();
    let conf = dir.path().join("c.conf");
    std::fs::write(&conf, "hostname = \"h\"\n").unwrap();
    let src = Source {
        ctid: 1,
        config: conf,
        private: root,
        image: None,
        live: false,
    };
    for compress in [0, 3] {
        let bytes = write_backup(
            &src,
            Vec::new(),
            &BackupOptions {
                key: None,
                compress,
            },
        )
        .unwrap()
        .0;
        verify(bytes.as_slice(), None).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(verify(b.as_slice(), None).is_err(), "flip at {i} accepted");
            }
            assert!(verify(&bytes[..i], None).is_err(), "cut at {i} accepted");
        }
    }
}

/// The archive decoder on its own, fed garbage behind a valid stream layer: refused, no panic.
#[test]
fn archive_decoder_refuses_garbage() {
    let mut x: u32 = 12345;
    for round in 0..2000 {
        let mut payload = Vec::new();
        let n = (round % 200) + 1;
        for _ in 0..n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            payload.push((x >> 16) as u8);
        }
        let mut w = ChunkWriter::new(Vec::new(), Header::new(false, false).unwrap(), None).unwrap();
        w.write_all(&payload).unwrap();
        let (bytes, _) = w.finish().unwrap();
        assert!(verify(bytes.as_slice(), None).is_err());
    }
}

#[test]
fn names_and_pruning() {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
    // 1795000000 is 2026-11-18 11:06:40 UTC.
    assert_eq!(backup_file_name(101, t), "101-20261118-110640.vzb");
    assert_eq!(
        backup_order(101, "101-20261118-110640.vzb"),
        Some((20261118, 110640, 0))
    );
    assert_eq!(
        backup_order(101, "101-20261118-110640-2.vzb"),
        Some((20261118, 110640, 2))
    );
    assert_eq!(backup_order(101, "1011-20261118-110640.vzb"), None);
    assert_eq!(backup_order(101, "101-2026111-110640.vzb"), None);
    let dir = tempfile::tempdir().unwrap();
    for n in [
        "101-20261118-110640.vzb",
        "101-20261118-110640-1.vzb",
        "101-20261118-110641.vzb",
        "101-20251231-235959.vzb",
        "102-20200101-000000.vzb",
        "notes.txt",
    ] {
        std::fs::write(dir.path().join(n), "").unwrap();
    }
    let removed = prune(dir.path(), 101, 2).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(removed.len(), 2);
    assert_eq!(
        left,
        [
            "101-20261118-110640-1.vzb",
            "101-20261118-110641.vzb",
            "102-20200101-000000.vzb",
            "notes.txt"
        ]
    );
    assert_eq!(
        free_name(dir.path(), 101, t).unwrap(),
        "101-20261118-110640.vzb"
    );
}
