//! What the fuzz targets run, and the layouts of their inputs (which `examples/make-seeds.rs`
//! writes from real images). Each function must never panic, abort or allocate without bound
//! whatever `data` holds; what it decodes must encode and decode again to the same value.

use std::fmt::Debug;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use images_format::pagestore::{ChunkDesc, DATA_START};
use images_format::{
    decode, encode, FileHeader, Image, ImageDir, ImageKind, Inventory, PageStoreIndex,
    PageStoreReader, CHUNK_SIZE, HEADER_LEN,
};
use proto::{decode_payload, FrameHeader, Kind, Message};

/// A fresh directory for one input, in memory when /dev/shm is there (the targets write files:
/// the real read path opens them).
fn scratch() -> tempfile::TempDir {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    tempfile::Builder::new()
        .prefix("vzcpt-fuzz-")
        .tempdir_in(base)
        .expect("a scratch directory for the fuzz input")
}

/// A valid inventory file, for the images whose other records are fuzzed.
fn inventory_file() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let inv = Inventory {
            format_major: images_format::FORMAT_MAJOR,
            format_minor: images_format::FORMAT_MINOR,
            engine_version: "fuzz".into(),
            kernel: "6.18".into(),
            arch: "x86_64".into(),
            xsave_features: 0x2e7,
            created_unix_ms: 0,
            parent: None,
            root_pid: 1,
            compressed: false,
        };
        with_header(
            ImageKind::Inventory,
            &encode(&inv).expect("encode an inventory"),
        )
    })
}

/// `payload` behind a valid header of `kind` (right length and checksum).
pub fn with_header(kind: ImageKind, payload: &[u8]) -> Vec<u8> {
    let mut v = FileHeader::new(kind, payload).to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Input of the record targets: a mode byte, then bytes. Mode bit 0 set: the bytes are the
/// whole file (header included); clear: they are the payload, behind a valid header, so that
/// the fuzzer reaches postcard past the checksum. The file is read by `ImageDir` as a restore
/// reads it; a value read must survive encode + decode unchanged.
pub fn record<T: Image + PartialEq + Debug>(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        with_header(T::KIND, rest)
    };
    let dir = scratch();
    if T::KIND != ImageKind::Inventory {
        std::fs::write(dir.path().join("inventory"), inventory_file()).expect("write inventory");
    }
    std::fs::write(dir.path().join(T::KIND.file_name()), &file).expect("write the input");
    let img = match ImageDir::open(dir.path()) {
        Ok(img) => img,
        Err(e) => {
            assert!(T::KIND == ImageKind::Inventory, "the valid inventory: {e}");
            let _ = e.to_string();
            return;
        }
    };
    match img.read::<T>() {
        Ok(v) => {
            let bytes = encode(&v).expect("a decoded record encodes");
            let again: T = decode(&bytes, Path::new("re-encoded")).expect("and decodes again");
            assert_eq!(again, v, "a {} record changed in a round trip", T::KIND);
        }
        // Messages are formatted: they name the file, and must not panic either.
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Input of the `pagestore` target (all little-endian):
///
/// ```text
/// u8   flags    bit 0: the next 32 bytes are the file header (else a valid one is made);
///               bit 1: set each chunk's crc32 to that of its stored bytes;
///               bit 2: one byte of garbage after the last chunk
/// then chunks, until the input ends:
/// u8   cflags   bit 0: compressed; bit 1: a u32 stored_len follows (else raw_len for raw
///               chunks, data_len for compressed ones); bit 2: a u32 page number of the file
///               offset follows (else the first page after the previous chunk); bit 3: add 1
///               to the offset (misaligned); bit 4: add 1 to raw_len
/// u16  raw_pages   raw_len = raw_pages * 4096
/// u32  offset_page (bit 2)
/// u32  stored_len  (bit 1)
/// u32  crc32
/// u16  data_len, then data_len bytes: the start of the stored bytes (the rest reads as 0)
/// ```
pub struct PageStoreInput {
    pub index: PageStoreIndex,
    pub file: Vec<(u64, Vec<u8>)>,
    pub file_len: u64,
    pub header: Option<[u8; HEADER_LEN]>,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Parses a `pagestore` input; `None` if it is too short to say anything.
pub fn parse_pagestore(data: &[u8]) -> Option<PageStoreInput> {
    let mut c = Cursor(data);
    let flags = c.u8()?;
    let header = if flags & 1 == 1 {
        Some(c.take(HEADER_LEN)?.try_into().ok()?)
    } else {
        None
    };
    let mut index = PageStoreIndex::default();
    let mut file = Vec::new();
    let mut end = DATA_START;
    while let Some(cf) = c.u8() {
        let Some(d) = (|| {
            let raw_len = u32::from(c.u16()?) * 4096 + u32::from(cf >> 4 & 1);
            let mut offset = if cf & 4 != 0 {
                u64::from(c.u32()?) * 4096
            } else {
                end.div_ceil(4096) * 4096
            };
            offset += u64::from(cf >> 3 & 1);
            let stored = if cf & 2 != 0 { Some(c.u32()?) } else { None };
            let crc = c.u32()?;
            let n = usize::from(c.u16()?);
            let bytes = c.take(n.min(c.0.len()))?.to_vec();
            let compressed = cf & 1 == 1;
            let stored_len = stored.unwrap_or(if compressed {
                bytes.len() as u32
            } else {
                raw_len
            });
            Some((
                ChunkDesc {
                    file_offset: offset,
                    raw_len,
                    stored_len,
                    crc32: crc,
                    compressed,
                },
                bytes,
            ))
        })() else {
            break;
        };
        let (mut desc, mut bytes) = d;
        // The stored bytes as the file will hold them: the given start, zeros after.
        bytes.truncate(desc.stored_len as usize);
        // (Not for lengths no chunk may have: the reader refuses them before reading.)
        if flags & 2 != 0 && desc.stored_len as usize <= CHUNK_SIZE {
            let mut h = crc32fast::Hasher::new();
            h.update(&bytes);
            let zeros = desc.stored_len as usize - bytes.len();
            // Zeros past the data, a page at a time (stored_len may be large).
            let page = [0u8; 4096];
            let mut left = zeros;
            while left > 0 {
                let k = left.min(page.len());
                h.update(&page[..k]);
                left -= k;
            }
            desc.crc32 = h.finalize();
        }
        // Keep the file small enough to write: a chunk far away makes a sparse file, but
        // not one past 1 GiB.
        let chunk_end = desc.file_offset.saturating_add(u64::from(desc.stored_len));
        if chunk_end > 1 << 30 {
            index.chunks.push(desc);
            continue;
        }
        end = end.max(chunk_end);
        file.push((desc.file_offset, bytes));
        index.chunks.push(desc);
    }
    let file_len = end + u64::from(flags >> 2 & 1);
    Some(PageStoreInput {
        index,
        file,
        file_len,
        header,
    })
}

/// Writes the `pages` file of `input` into `dir`.
pub fn write_pagestore(dir: &Path, input: &PageStoreInput) -> std::io::Result<()> {
    let f = File::create(dir.join("pages"))?;
    f.set_len(input.file_len)?;
    let header = input.header.unwrap_or_else(|| {
        FileHeader::with_len(ImageKind::Pages, 0, input.file_len - DATA_START).to_bytes()
    });
    f.write_all_at(&header, 0)?;
    for (offset, bytes) in &input.file {
        f.write_all_at(bytes, *offset)?;
    }
    Ok(())
}

/// The page store read as a restore reads it: open (which checks the index against the file),
/// verify every chunk, read the first ones back.
pub fn pagestore(data: &[u8]) {
    let Some(input) = parse_pagestore(data) else {
        return;
    };
    let dir = scratch();
    write_pagestore(dir.path(), &input).expect("write the pages file");
    let reader = match PageStoreReader::open(dir.path(), &input.index) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let verified = reader.verify_all();
    for (i, d) in input.index.chunks.iter().enumerate().take(4) {
        match reader.chunk(i as u32) {
            Ok(raw) => {
                assert_eq!(raw.len(), d.raw_len as usize, "chunk {i}: its raw length");
                assert!(raw.len() <= CHUNK_SIZE);
            }
            // verify_all stops at the first bad chunk; once it passed, every chunk reads.
            Err(e) => assert!(
                verified.is_err(),
                "verify_all passed, but chunk {i} does not read: {e}"
            ),
        }
    }
    let past = input.index.chunks.len().min(u32::MAX as usize) as u32;
    assert!(reader.chunk(past).is_err(), "a chunk past the index");
}

/// A decoded message encodes, and its encoding decodes to the same bytes again (compared as
/// bytes: a float may be NaN).
fn message_round_trip(m: &Message) {
    let frame = proto::encode(m).expect("a decoded message encodes within its cap");
    let h =
        FrameHeader::parse(frame[..proto::HEADER_LEN].try_into().unwrap()).expect("its own header");
    let again = decode_payload(h, &frame[proto::HEADER_LEN..]).expect("decodes again");
    assert_eq!(proto::encode(&again).expect("encodes again"), frame);
}

/// Input of `proto_message`: a byte choosing the kind (index in `Kind::ALL`), then the
/// payload, behind a header saying that kind and the payload's length.
pub fn proto_message(data: &[u8]) {
    let Some((&k, payload)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[usize::from(k) % Kind::ALL.len()];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let Ok(h) = FrameHeader::parse(&FrameHeader { kind, len }.to_bytes()) else {
        return;
    };
    match decode_payload(h, payload) {
        Ok(m) => {
            assert_eq!(m.kind(), kind);
            message_round_trip(&m);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Input of `proto_frame`: a stream as a peer sends it, read as the transport reads it: a
/// header (checked before its payload is taken), then exactly its payload, until the end.
pub fn proto_frame(mut data: &[u8]) {
    while let Some((h, rest)) = data.split_first_chunk::<{ proto::HEADER_LEN }>() {
        let header = match FrameHeader::parse(h) {
            Ok(h) => h,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        assert!(header.len <= header.kind.max_len());
        let Some(payload) = rest.get(..header.len as usize) else {
            return;
        };
        match decode_payload(header, payload) {
            Ok(m) => message_round_trip(&m),
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
        data = &rest[header.len as usize..];
    }
}
