//! Seeds of the `pagestore`, `proto_message` and `proto_frame` targets from real images
//! (fuzz/seed.sh runs it after dumping workloads):
//!
//!     cargo run --example make-seeds -- CORPUS_DIR IMAGE_DIR...
//!
//! The page store inputs hold each image's real index and chunk bytes; the protocol inputs are
//! the messages of a migration of that image: its records in `FinalState`, its pages in
//! `PageBatch` and `ImageChunk` messages, and the control messages around them.

use std::path::{Path, PathBuf};

use images_format::mm::PagemapImage;
use images_format::ImageDir;
use proto::*;

/// Most bytes of a chunk kept in a seed (the rest reads as zeros: the target fixes the crc).
const KEEP: usize = 16 << 10;

fn put(corpus: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = corpus.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

/// A `pagestore` input (layout in `vzcpt_fuzz::pagestore`) of the image's real chunks.
fn pagestore_seed(img: &ImageDir, pagemap: &PagemapImage) -> Vec<u8> {
    let pages = std::fs::read(img.path().join("pages")).unwrap();
    let mut v = vec![0b10u8]; // a valid header made by the target; crc32s fixed up
    for d in pagemap.store.chunks.iter().take(6) {
        let stored = &pages[d.file_offset as usize..][..d.stored_len as usize];
        let keep = if d.compressed {
            // A compressed chunk is only useful whole.
            if stored.len() > u16::MAX as usize {
                continue;
            }
            stored
        } else {
            &stored[..stored.len().min(KEEP)]
        };
        v.push(u8::from(d.compressed) | 2 | 4); // stored_len and offset given
        v.extend_from_slice(&u16::try_from(d.raw_len / 4096).unwrap().to_le_bytes());
        v.extend_from_slice(&u32::try_from(d.file_offset / 4096).unwrap().to_le_bytes());
        v.extend_from_slice(&d.stored_len.to_le_bytes());
        v.extend_from_slice(&d.crc32.to_le_bytes());
        v.extend_from_slice(&(keep.len() as u16).to_le_bytes());
        v.extend_from_slice(keep);
    }
    v
}

/// The messages of a migration of this image.
fn migration(img: &ImageDir, pagemap: &PagemapImage) -> Vec<Message> {
    let inv = img.inventory();
    let hello = Hello {
        version: VERSION,
        engine: inv.engine_version.clone(),
        host: "seed-src".into(),
        caps: vec!["offline".into(), "zstd".into()],
    };
    let mut records = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(img.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in &names {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name != "pages" {
            records.push((name, std::fs::read(p).unwrap()));
        }
    }
    let pages = std::fs::read(img.path().join("pages")).unwrap_or_default();
    let mut m = vec![
        Message::Hello(hello.clone()),
        Message::HelloAck(Hello {
            host: "seed-dst".into(),
            ..hello
        }),
        Message::CheckRequest(CheckRequest {
            ctid: 101,
            arch: inv.arch.clone(),
            xsave_features: inv.xsave_features,
            kernel: inv.kernel.clone(),
            needed_bytes: pages.len() as u64,
            features: vec!["clone3 with set_tid".into()],
        }),
        Message::CheckReply(CheckReply { problems: vec![] }),
        Message::VeConfig(VeConfigMsg {
            ctid: 101,
            config: "hostname = \"seed\"\ncommand = \"sleep 100\"\n".into(),
        }),
    ];
    for (name, data) in records.iter().take(3) {
        m.push(Message::FsFile(FsFile {
            path: format!("root/{name}").into_bytes(),
            kind: FsKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_ns: 1_700_000_000_000_000_000,
            xattrs: vec![],
            size: data.len() as u64,
            offset: 0,
            data: data.iter().copied().take(2048).collect(),
        }));
    }
    m.push(Message::FsDone(FsDone {
        files: 3,
        bytes: 6144,
    }));
    m.push(Message::RoundBegin(RoundBegin { round: 1, pages: 4 }));
    if let Some(e) = pagemap.entries.first() {
        let pages_n = e.nr_pages.min(2);
        m.push(Message::PageBatch(PageBatch {
            round: 1,
            owner: match e.owner {
                images_format::mm::PageOwner::Process(p) => PageOwner::Process(p),
                images_format::mm::PageOwner::SysvShm(i) => PageOwner::SysvShm(i),
                _ => PageOwner::Shmem(1),
            },
            runs: vec![(e.addr, pages_n)],
            compressed: false,
            data: vec![0x5a; pages_n as usize * 4096],
        }));
    }
    m.push(Message::RoundEnd(RoundEnd {
        round: 1,
        pages: 4,
        bytes: 8192,
        last: true,
    }));
    m.push(Message::RoundAck(RoundAck {
        round: 1,
        pages_staged: 4,
    }));
    m.push(Message::ImageChunk(ImageChunk {
        name: "pages".into(),
        offset: 0,
        data: pages.iter().copied().take(8192).collect(),
    }));
    m.push(Message::FinalState(FinalState { records }));
    m.push(Message::RestoreResult(RestoreResult {
        ok: true,
        error: None,
        restore_ms: 12.5,
    }));
    m.push(Message::Commit);
    m.push(Message::CommitAck);
    m.push(Message::Abort(Abort {
        reason: "seed: the destination refuses".into(),
    }));
    m
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let corpus = PathBuf::from(args.next().expect("usage: make-seeds CORPUS IMAGE..."));
    for img_path in args {
        let img_path = PathBuf::from(img_path);
        let tag = img_path.file_name().unwrap().to_string_lossy().into_owned();
        let img = ImageDir::open(&img_path).unwrap();
        let pagemap: PagemapImage = img.read().unwrap();
        put(&corpus, "pagestore", &tag, &pagestore_seed(&img, &pagemap));
        let mut stream = Vec::new();
        for (i, msg) in migration(&img, &pagemap).iter().enumerate() {
            let frame = encode(msg).unwrap();
            let k = Kind::ALL.iter().position(|k| *k == msg.kind()).unwrap() as u8;
            let mut input = vec![k];
            input.extend_from_slice(&frame[HEADER_LEN..]);
            put(&corpus, "proto_message", &format!("{tag}-{i:02}"), &input);
            if frame.len() < 64 << 10 {
                stream.extend_from_slice(&frame);
            }
            put(&corpus, "proto_frame", &format!("{tag}-{i:02}"), &frame);
        }
        put(&corpus, "proto_frame", &format!("{tag}-stream"), &stream);
    }
}
