//! A `vzctl restore-backup` stream (see `ve::backup`). The first byte picks what the rest is:
//! even, the stream as read from a file or a pipe (header, chunk framing, CRCs and tags, with
//! no key and with a key); odd, the archive inside (records, file data) sealed into a valid
//! plain stream here, so that the fuzzer reaches the archive decoder and the extractor past
//! the checksums, restored into a temporary `$VZ_DIR`.
#![no_main]

use std::io::Write;

use ve::backup::stream::{ChunkWriter, Header};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = ve::backup::verify(rest, None);
        let _ = ve::backup::verify(rest, Some(&ve::backup::KeyMaterial([7; 32])));
        return;
    }
    let header = Header::new(false, mode & 2 != 0).expect("a plain header");
    let mut w = ChunkWriter::new(Vec::new(), header, None).expect("a header into a Vec");
    if mode & 2 != 0 {
        // The archive behind zstd: the fuzzer's bytes compressed, as a writer would.
        let mut z = zstd::Encoder::new(&mut w, 1).expect("a zstd encoder");
        z.write_all(rest).expect("into a Vec");
        z.finish().expect("into a Vec");
    } else {
        w.write_all(rest).expect("into a Vec");
    }
    let (bytes, _) = w.finish().expect("into a Vec");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let layout = ve::Layout::new(dir.path().join("vz"), "vzcpt-fuzz");
    let _ = ve::backup::restore_backup(&layout, 1, bytes.as_slice(), None);
});
