//! The page store: page data kept apart from metadata, in the image's `pages` file.
//!
//! ```text
//! offset 0      FileHeader (kind Pages, checksum 0, payload_len = file length - 4096)
//! offset 32     zero padding up to DATA_START (4096)
//! offset 4096   chunk 0 (stored bytes)       each chunk starts at a 4096-aligned offset,
//!               zero padding                 so uncompressed chunks can be mmapped and
//! aligned       chunk 1 ...                  handed to process_vm_writev as they are
//! ```
//!
//! A chunk holds at most [`CHUNK_SIZE`] raw bytes (a whole number of pages). Each is stored raw
//! or, if asked and if it shrinks the chunk, zstd-compressed; its [`ChunkDesc`] (kept by the
//! caller, in the pagemap record) holds its offset, lengths and the crc32 of its stored bytes.
//! Callers address data by [`PageLoc`]: chunk index and offset in the chunk's raw bytes.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::header::{FileHeader, HEADER_LEN};
use crate::kind::ImageKind;
use crate::pagebuf::PageBuf;
use crate::PAGE_SIZE;

/// Most raw bytes in one chunk.
pub const CHUNK_SIZE: usize = 4 << 20;

/// File offset of the first chunk: the header is padded to one page.
pub const DATA_START: u64 = PAGE_SIZE as u64;

/// Where one chunk lies in the `pages` file and how it is stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChunkDesc {
    /// Offset of the stored bytes in the file (a multiple of `PAGE_SIZE`, >= `DATA_START`).
    pub file_offset: u64,
    /// Bytes of page data the chunk holds (multiple of `PAGE_SIZE`, <= `CHUNK_SIZE`).
    pub raw_len: u32,
    /// Bytes stored in the file: `raw_len` if raw, less if compressed.
    pub stored_len: u32,
    /// crc32 of the stored bytes.
    pub crc32: u32,
    /// Whether the stored bytes are one zstd frame.
    pub compressed: bool,
}

/// The index of a page store: its chunks in file order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PageStoreIndex {
    pub chunks: Vec<ChunkDesc>,
}

/// Where appended data landed: chunk index and byte offset inside the chunk's raw data.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLoc {
    pub chunk: u32,
    pub offset: u32,
}

fn page_aligned(v: u64) -> bool {
    v & (PAGE_SIZE as u64 - 1) == 0
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64
}

/// Writes the `pages` file of an image (get one from `ImageWriter::page_store`).
///
/// Data is buffered into the current chunk; a full chunk is written out when the next append
/// needs room, and the last one by [`finish`](Self::finish).
pub struct PageStoreWriter {
    path: PathBuf,
    file: File,
    /// The current chunk when compressing (it is compressed whole): `CHUNK_SIZE` long, filled
    /// up to `fill`. Raw chunks do not pass through it: each append is written in place at
    /// once, which saves a copy of every page (see [`append`](Self::append)).
    buf: PageBuf,
    fill: usize,
    /// crc32 of the raw chunk written so far in place.
    crc: crc32fast::Hasher,
    chunks: Vec<ChunkDesc>,
    /// End of the last chunk written (file offset).
    end: u64,
    stored: u64,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Compression output, reused; capacity `compress_bound(CHUNK_SIZE)`.
    cbuf: Vec<u8>,
    finished: Arc<AtomicBool>,
}

impl std::fmt::Debug for PageStoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageStoreWriter")
            .field("path", &self.path)
            .field("fill", &self.fill)
            .field("chunks", &self.chunks.len())
            .field("end", &self.end)
            .field("compressed", &self.compressor.is_some())
            .finish_non_exhaustive()
    }
}

impl PageStoreWriter {
    /// A pages file outside an [`ImageWriter`](crate::ImageWriter) (a migration's destination
    /// stages pages in one as they arrive, and moves it into the image at the end).
    pub fn create_file(path: &Path, compress_level: Option<i32>) -> Result<Self> {
        Self::create(path, compress_level)
    }

    /// Creates the pages file at `path`, which must not exist.
    pub(crate) fn create(path: &Path, compress_level: Option<i32>) -> Result<Self> {
        let compressor = match compress_level {
            None => None,
            Some(level) => {
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(FormatError::InvalidUse {
                        reason: format!(
                            "zstd level {level} is outside {}..={}",
                            range.start(),
                            range.end()
                        ),
                    });
                }
                let c = zstd::bulk::Compressor::new(level).map_err(|e| FormatError::Compress {
                    file: path.to_path_buf(),
                    index: 0,
                    reason: e.to_string(),
                })?;
                Some(c)
            }
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    FormatError::DuplicateRecord {
                        file: path.to_path_buf(),
                    }
                } else {
                    FormatError::io("create", path, e)
                }
            })?;
        let cbuf = match compressor {
            Some(_) => Vec::with_capacity(zstd::zstd_safe::compress_bound(CHUNK_SIZE)),
            None => Vec::new(),
        };
        Ok(PageStoreWriter {
            path: path.to_path_buf(),
            file,
            buf: PageBuf::new(CHUNK_SIZE)?,
            fill: 0,
            crc: crc32fast::Hasher::new(),
            chunks: Vec::new(),
            end: DATA_START,
            stored: 0,
            compressor,
            cbuf,
            finished: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn finished_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.finished)
    }

    /// Space left in the current chunk: callers split runs so one append never spans chunks.
    /// Never 0: when the current chunk is full, the next append starts a new one.
    pub fn room(&self) -> usize {
        if self.fill == CHUNK_SIZE {
            CHUNK_SIZE
        } else {
            CHUNK_SIZE - self.fill
        }
    }

    /// Appends `data` (non-empty, a multiple of `PAGE_SIZE`, at most [`room`](Self::room)).
    /// Uncompressed, the data goes to the file at once, at its place in the current chunk;
    /// compressed, into the chunk buffer until the chunk is full.
    pub fn append(&mut self, data: &[u8]) -> Result<PageLoc> {
        let loc = self.reserve(data.len())?;
        let start = loc.offset as usize;
        if self.compressor.is_some() {
            self.buf[start..start + data.len()].copy_from_slice(data);
        } else {
            let offset = align_up(self.end) + start as u64;
            self.file
                .write_all_at(data, offset)
                .map_err(|e| FormatError::io("write", &self.path, e))?;
            self.crc.update(data);
        }
        Ok(loc)
    }

    /// Appends a whole run whose crc32 the caller computed (on another thread, say): when the
    /// run does not fit in the current chunk, that chunk is closed shorter than CHUNK_SIZE
    /// and the run starts the next one, so the chunk's checksum is a combination of its runs'
    /// and this thread never reads the data. Compressed chunks are checksummed as stored and
    /// `crc` is not used.
    pub fn append_run(&mut self, data: &[u8], crc: &crc32fast::Hasher) -> Result<PageLoc> {
        if data.len() > CHUNK_SIZE - self.fill && self.fill > 0 {
            self.flush()?;
        }
        if self.compressor.is_some() {
            return self.append(data);
        }
        let loc = self.reserve(data.len())?;
        let offset = align_up(self.end) + loc.offset as u64;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FormatError::io("write", &self.path, e))?;
        self.crc.combine(crc);
        Ok(loc)
    }

    /// Checks an append of `len` bytes, starts a new chunk if the current one is full, and
    /// returns where the bytes go.
    fn reserve(&mut self, len: usize) -> Result<PageLoc> {
        if len == 0 || !page_aligned(len as u64) {
            return Err(FormatError::BadAppend {
                len,
                reason: format!("the length must be a non-zero multiple of {PAGE_SIZE}"),
            });
        }
        if self.fill == CHUNK_SIZE {
            self.flush()?;
        }
        let room = CHUNK_SIZE - self.fill;
        if len > room {
            return Err(FormatError::BadAppend {
                len,
                reason: format!(
                    "only {room} bytes are left in the current chunk; split the run at room()"
                ),
            });
        }
        let chunk = u32::try_from(self.chunks.len()).map_err(|_| FormatError::InvalidUse {
            reason: "the page store has more than 2^32 chunks".into(),
        })?;
        let start = self.fill;
        self.fill += len;
        // start < CHUNK_SIZE, which fits in u32.
        Ok(PageLoc {
            chunk,
            offset: start as u32,
        })
    }

    /// Writes out the current chunk, if it holds anything.
    fn flush(&mut self) -> Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let offset = align_up(self.end);
        if self.compressor.is_none() {
            // Already in the file; only its description is left.
            let len = self.fill as u32;
            self.chunks.push(ChunkDesc {
                file_offset: offset,
                raw_len: len,
                stored_len: len,
                crc32: std::mem::take(&mut self.crc).finalize(),
                compressed: false,
            });
            self.end = offset + len as u64;
            self.stored += len as u64;
            self.fill = 0;
            return Ok(());
        }
        let raw = &self.buf[..self.fill];
        let mut stored: &[u8] = raw;
        let mut compressed = false;
        if let Some(c) = &mut self.compressor {
            c.compress_to_buffer(raw, &mut self.cbuf)
                .map_err(|e| FormatError::Compress {
                    file: self.path.clone(),
                    index: self.chunks.len(),
                    reason: e.to_string(),
                })?;
            if self.cbuf.len() < raw.len() {
                stored = &self.cbuf;
                compressed = true;
            }
        }
        self.file
            .write_all_at(stored, offset)
            .map_err(|e| FormatError::io("write", &self.path, e))?;
        // Both lengths are <= CHUNK_SIZE, which fits in u32.
        self.chunks.push(ChunkDesc {
            file_offset: offset,
            raw_len: raw.len() as u32,
            stored_len: stored.len() as u32,
            crc32: crc32fast::hash(stored),
            compressed,
        });
        self.end = offset + stored.len() as u64;
        self.stored += stored.len() as u64;
        self.fill = 0;
        Ok(())
    }

    /// Flushes the last chunk, writes the header and returns the index (which the caller
    /// stores, in the pagemap record).
    pub fn finish(mut self) -> Result<PageStoreIndex> {
        self.flush()?;
        let header = FileHeader::with_len(ImageKind::Pages, 0, self.end - DATA_START);
        self.file
            .write_all_at(&header.to_bytes(), 0)
            .and_then(|()| self.file.set_len(self.end))
            .map_err(|e| FormatError::io("write", &self.path, e))?;
        self.finished.store(true, Ordering::Release);
        Ok(PageStoreIndex {
            chunks: std::mem::take(&mut self.chunks),
        })
    }

    /// Stored bytes written to the file so far (chunks already flushed; header excluded).
    pub fn bytes_written(&self) -> u64 {
        self.stored
    }
}

/// Where a reader gets stored chunk bytes from. Reading with `pread` into owned buffers for
/// now (mapping the file needs `unsafe`, which this crate forbids); a switch to mmap is local
/// to this type, whose `stored` would then return borrowed slices.
#[derive(Debug)]
struct Source {
    file: File,
}

impl Source {
    /// The stored bytes of `d`, which the reader has validated against the file length.
    fn stored(&self, d: &ChunkDesc, path: &Path) -> Result<Cow<'_, [u8]>> {
        let mut v = Vec::new();
        self.stored_into(d, path, &mut v)?;
        Ok(Cow::Owned(v))
    }

    /// Reads the stored bytes of `d` into `out`, reusing its allocation.
    fn stored_into(&self, d: &ChunkDesc, path: &Path, out: &mut Vec<u8>) -> Result<()> {
        out.resize(d.stored_len as usize, 0);
        self.read_at(d, path, out)
    }

    /// Reads the stored bytes of `d` into `out[..stored_len]`.
    fn read_at(&self, d: &ChunkDesc, path: &Path, out: &mut [u8]) -> Result<()> {
        let have = out.len();
        let out = out
            .get_mut(..d.stored_len as usize)
            .ok_or_else(|| FormatError::InvalidUse {
                reason: format!("a {have}-byte buffer for a {}-byte chunk", d.stored_len),
            })?;
        self.file
            .read_exact_at(out, d.file_offset)
            .map_err(|e| FormatError::io("read", path, e))
    }
}

/// Reads the `pages` file of an image, chunk by chunk, verifying each.
#[derive(Debug)]
pub struct PageStoreReader {
    path: PathBuf,
    src: Source,
    chunks: Vec<ChunkDesc>,
    /// Set once [`PageStoreReader::verify_all`] has checked every chunk: later reads skip the
    /// checksum (a restore verifies up front, before any process exists, then reads again).
    verified: std::sync::atomic::AtomicBool,
}

impl PageStoreReader {
    /// Opens `dir/pages`, checks its header and length, and validates every `ChunkDesc` of
    /// `index` against it up front (offsets and lengths in range, in file order without
    /// overlap, `raw_len` a non-zero multiple of `PAGE_SIZE` up to `CHUNK_SIZE`, `stored_len`
    /// equal to `raw_len` for raw chunks and below it for compressed ones).
    pub fn open(dir: &Path, index: &PageStoreIndex) -> Result<Self> {
        let path = dir.join(ImageKind::Pages.file_name());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FormatError::Missing { file: path })
            }
            Err(e) => return Err(FormatError::io("open", path, e)),
        };
        let file_len = file
            .metadata()
            .map_err(|e| FormatError::io("stat", &path, e))?
            .len();
        let mut hbuf = [0u8; HEADER_LEN];
        let hlen = HEADER_LEN.min(usize::try_from(file_len).unwrap_or(HEADER_LEN));
        file.read_exact_at(&mut hbuf[..hlen], 0)
            .map_err(|e| FormatError::io("read", &path, e))?;
        let header = FileHeader::parse(&hbuf[..hlen], ImageKind::Pages, &path)?;
        let expected = DATA_START.saturating_add(header.payload_len);
        if file_len < expected {
            return Err(FormatError::Truncated {
                file: path,
                expected,
                found: file_len,
            });
        }
        if file_len > expected {
            return Err(FormatError::TrailingBytes {
                file: path,
                count: file_len - expected,
            });
        }

        let mut prev_end = DATA_START;
        for (i, d) in index.chunks.iter().enumerate() {
            let bad = |reason: String| FormatError::BadChunkDesc {
                file: path.clone(),
                index: i,
                reason,
            };
            let raw = d.raw_len as usize;
            if raw == 0 || raw > CHUNK_SIZE || !page_aligned(raw as u64) {
                return Err(bad(format!(
                    "raw length {raw} is not a non-zero multiple of {PAGE_SIZE} up to {CHUNK_SIZE}"
                )));
            }
            if d.compressed {
                if d.stored_len == 0 || d.stored_len >= d.raw_len {
                    return Err(bad(format!(
                        "compressed length {} is not between 1 and raw length {raw} exclusive",
                        d.stored_len
                    )));
                }
            } else if d.stored_len != d.raw_len {
                return Err(bad(format!(
                    "stored length {} of an uncompressed chunk differs from its raw length {raw}",
                    d.stored_len
                )));
            }
            if !page_aligned(d.file_offset) || d.file_offset < prev_end {
                return Err(bad(format!(
                    "offset {} is not page-aligned at or after {prev_end} (the end of the previous chunk)",
                    d.file_offset
                )));
            }
            let end = d.file_offset.saturating_add(u64::from(d.stored_len));
            if end > file_len {
                return Err(bad(format!(
                    "bytes {}..{end} lie beyond the end of the file ({file_len} bytes)",
                    d.file_offset
                )));
            }
            prev_end = end;
        }
        Ok(PageStoreReader {
            path,
            src: Source { file },
            chunks: index.chunks.clone(),
            verified: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Number of chunks in the index.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Reads chunk `i`, verifies its crc32 and decompresses it; returns its raw bytes.
    pub fn chunk(&self, i: u32) -> Result<Vec<u8>> {
        let mut buf = PageBuf::new(CHUNK_SIZE)?;
        let n = self.chunk_into(i, &mut buf)?;
        Ok(buf[..n].to_vec())
    }

    /// Like [`chunk`](Self::chunk), into `out` (at least [`CHUNK_SIZE`] bytes, page-aligned so
    /// that `process_vm_writev` from it copies aligned pages); returns the chunk's length.
    pub fn chunk_into(&self, i: u32, out: &mut PageBuf) -> Result<usize> {
        let Some(d) = self.chunks.get(i as usize) else {
            return Err(FormatError::NoSuchChunk {
                file: self.path.clone(),
                index: i,
                count: self.chunks.len(),
            });
        };
        let verified = self.verified.load(std::sync::atomic::Ordering::Relaxed);
        let check = |stored: &[u8]| {
            let crc = crc32fast::hash(stored);
            if verified || crc == d.crc32 {
                Ok(())
            } else {
                Err(FormatError::ChunkChecksum {
                    file: self.path.clone(),
                    index: i,
                    expected: d.crc32,
                    found: crc,
                })
            }
        };
        let raw_len = d.raw_len as usize;
        if !d.compressed {
            // Raw chunks go straight into the caller's buffer: one copy, no fresh allocation.
            self.src.read_at(d, &self.path, out)?;
            if !verified {
                check(&out[..raw_len])?;
            }
            return Ok(raw_len);
        }
        let stored = self.src.stored(d, &self.path)?;
        check(&stored)?;
        let bad = |reason: String| FormatError::ChunkDecompress {
            file: self.path.clone(),
            index: i,
            reason,
        };
        // At most raw_len bytes may come out (the buffer is cut there); anything but exactly
        // raw_len bytes is an error.
        let dst = out
            .get_mut(..raw_len)
            .ok_or_else(|| FormatError::InvalidUse {
                reason: format!("a buffer smaller than chunk {i} ({raw_len} bytes)"),
            })?;
        let n = zstd::bulk::Decompressor::new()
            .and_then(|mut z| z.decompress_to_buffer(&stored[..], dst))
            .map_err(|e| bad(e.to_string()))?;
        if n != raw_len {
            return Err(bad(format!(
                "it decompressed to {n} bytes, the index says {raw_len}"
            )));
        }
        Ok(raw_len)
    }

    /// Reads and verifies every chunk (for `vzcpt verify`).
    pub fn verify_all(&self) -> Result<()> {
        let mut buf = PageBuf::new(CHUNK_SIZE)?;
        for i in 0..self.chunks.len() {
            // The index length was < 2^32 chunks when written; larger indexes fail here.
            let i = u32::try_from(i).map_err(|_| FormatError::InvalidUse {
                reason: "page store index has more than 2^32 chunks".into(),
            })?;
            self.chunk_into(i, &mut buf)?;
        }
        self.verified
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::ImageWriter;

    /// Deterministic bytes that zstd cannot shrink.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Pages that compress well: each page is one repeated byte.
    fn pattern(pages: usize, seed: u8) -> Vec<u8> {
        (0..pages)
            .flat_map(|p| vec![seed.wrapping_add(p as u8); PAGE_SIZE])
            .collect()
    }

    fn new_store(level: Option<i32>) -> (tempfile::TempDir, PathBuf, PageStoreWriter) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("pages");
        let w = PageStoreWriter::create(&path, level).unwrap();
        (t, path, w)
    }

    /// Appends `data` split at room(), returning where each piece landed.
    fn append_all(w: &mut PageStoreWriter, data: &[u8]) -> Vec<(PageLoc, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = w.room().min(data.len() - pos);
            out.push((w.append(&data[pos..pos + n]).unwrap(), pos..pos + n));
            pos += n;
        }
        out
    }

    fn check_store(level: Option<i32>, data: &[u8]) -> PageStoreIndex {
        let (t, path, mut w) = new_store(level);
        let locs = append_all(&mut w, data);
        let index = w.finish().unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            file_len,
            index
                .chunks
                .last()
                .map_or(DATA_START, |c| c.file_offset + u64::from(c.stored_len))
        );

        let r = PageStoreReader::open(t.path(), &index).unwrap();
        assert_eq!(r.chunk_count(), index.chunks.len());
        r.verify_all().unwrap();
        let chunks: Vec<Vec<u8>> = (0..index.chunks.len() as u32)
            .map(|i| r.chunk(i).unwrap())
            .collect();
        for (loc, range) in locs {
            let c = &chunks[loc.chunk as usize];
            let off = loc.offset as usize;
            assert_eq!(&c[off..off + range.len()], &data[range]);
        }
        let total: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(total, data.len());
        for c in &index.chunks {
            assert_eq!(c.file_offset % PAGE_SIZE as u64, 0);
            assert!(c.raw_len as usize <= CHUNK_SIZE);
        }
        index
    }

    #[test]
    fn plain_round_trip_several_chunks() {
        // 2.5 chunks, appended in odd-sized runs.
        let data = noise(CHUNK_SIZE * 2 + CHUNK_SIZE / 2, 1);
        let (t, _path, mut w) = new_store(None);
        let mut locs = Vec::new();
        let mut pos = 0;
        for run_pages in [1usize, 3, 700, 1024, 5].iter().cycle() {
            if pos == data.len() {
                break;
            }
            let n = (run_pages * PAGE_SIZE).min(w.room()).min(data.len() - pos);
            locs.push((w.append(&data[pos..pos + n]).unwrap(), pos..pos + n));
            pos += n;
        }
        let flushed_before_finish = w.bytes_written();
        assert_eq!(flushed_before_finish, 2 * CHUNK_SIZE as u64);
        let index = w.finish().unwrap();
        assert_eq!(index.chunks.len(), 3);
        assert!(index
            .chunks
            .iter()
            .all(|c| !c.compressed && c.stored_len == c.raw_len));
        assert_eq!(index.chunks[0].file_offset, DATA_START);
        let r = PageStoreReader::open(t.path(), &index).unwrap();
        for (loc, range) in locs {
            let c = r.chunk(loc.chunk).unwrap();
            let off = loc.offset as usize;
            assert_eq!(&c[off..off + range.len()], &data[range]);
        }
        check_store(None, &data);
    }

    #[test]
    fn zstd_round_trip_and_fallback_to_raw() {
        // Compressible chunk, then an incompressible one, then a compressible tail.
        let mut data = pattern(CHUNK_SIZE / PAGE_SIZE, 3);
        data.extend(noise(CHUNK_SIZE, 9));
        data.extend(pattern(10, 50));
        let index = check_store(Some(3), &data);
        assert_eq!(index.chunks.len(), 3);
        assert!(index.chunks[0].compressed && index.chunks[0].stored_len < index.chunks[0].raw_len);
        assert!(
            !index.chunks[1].compressed && index.chunks[1].stored_len == index.chunks[1].raw_len
        );
        assert!(index.chunks[2].compressed);
        // Chunks after a compressed one still start page-aligned.
        assert_eq!(index.chunks[1].file_offset % PAGE_SIZE as u64, 0);
    }

    #[test]
    fn empty_store() {
        let index = check_store(Some(1), &[]);
        assert!(index.chunks.is_empty());
    }

    #[test]
    fn appends_fill_chunks_in_order() {
        for level in [None, Some(1)] {
            let (t, _path, mut w) = new_store(level);
            let a = w.append(&[0x11; 3 * PAGE_SIZE]).unwrap();
            assert_eq!(
                a,
                PageLoc {
                    chunk: 0,
                    offset: 0
                }
            );
            let b = w.append(&[0x22; PAGE_SIZE]).unwrap();
            assert_eq!(
                b,
                PageLoc {
                    chunk: 0,
                    offset: 3 * PAGE_SIZE as u32
                }
            );
            // Fill the chunk exactly; room() then reports a whole new chunk.
            let rest = w.room();
            let c = w.append(&vec![0x33; rest]).unwrap();
            assert_eq!(w.room(), CHUNK_SIZE);
            let d = w.append(&noise(PAGE_SIZE, 5)).unwrap();
            assert_eq!(
                d,
                PageLoc {
                    chunk: 1,
                    offset: 0
                }
            );
            let index = w.finish().unwrap();
            let r = PageStoreReader::open(t.path(), &index).unwrap();
            let c0 = r.chunk(0).unwrap();
            assert_eq!(c0.len(), CHUNK_SIZE);
            assert!(c0[..3 * PAGE_SIZE].iter().all(|&x| x == 0x11));
            assert!(c0[3 * PAGE_SIZE..4 * PAGE_SIZE].iter().all(|&x| x == 0x22));
            assert!(c0[c.offset as usize..].iter().all(|&x| x == 0x33));
            assert_eq!(r.chunk(1).unwrap(), noise(PAGE_SIZE, 5));
            r.verify_all().unwrap();
        }
    }

    #[test]
    fn append_run_closes_short_chunks_and_combines_checksums() {
        for level in [None, Some(1)] {
            let (t, _path, mut w) = new_store(level);
            let runs: Vec<Vec<u8>> = [3, 1000, 40, 1024, 7]
                .iter()
                .enumerate()
                .map(|(i, &pages)| noise(pages * PAGE_SIZE, i as u64 + 1))
                .collect();
            let locs: Vec<PageLoc> = runs
                .iter()
                .map(|r| {
                    let mut h = crc32fast::Hasher::new();
                    h.update(r);
                    w.append_run(r, &h).unwrap()
                })
                .collect();
            let index = w.finish().unwrap();
            let r = PageStoreReader::open(t.path(), &index).unwrap();
            r.verify_all().unwrap();
            for (run, loc) in runs.iter().zip(&locs) {
                let c = r.chunk(loc.chunk).unwrap();
                let at = loc.offset as usize;
                assert_eq!(&c[at..at + run.len()], &run[..], "{level:?} {loc:?}");
            }
            if level.is_none() {
                // 3 + 1000 pages, then 40 does not fit: a short chunk; 40, then 1024 does not
                // fit; 1024 alone; 7.
                let chunks: Vec<u32> = locs.iter().map(|l| l.chunk).collect();
                assert_eq!(chunks, vec![0, 0, 1, 2, 3]);
                assert_eq!(index.chunks[0].raw_len as usize, 1003 * PAGE_SIZE);
            }
        }
    }

    #[test]
    fn bad_appends() {
        let (_t, _path, mut w) = new_store(None);
        for len in [0, 1, PAGE_SIZE + 1, CHUNK_SIZE + PAGE_SIZE] {
            let e = w.append(&vec![0; len]).unwrap_err();
            assert!(matches!(e, FormatError::BadAppend { .. }), "{len}: {e:?}");
        }
        w.append(&[0; PAGE_SIZE]).unwrap();
        let e = w.append(&vec![0; CHUNK_SIZE]).unwrap_err();
        assert!(matches!(e, FormatError::BadAppend { .. }), "{e:?}");
        assert_eq!(w.room(), CHUNK_SIZE - PAGE_SIZE);
    }

    #[test]
    fn bad_level() {
        let t = tempfile::tempdir().unwrap();
        let e = PageStoreWriter::create(&t.path().join("pages"), Some(1000)).unwrap_err();
        assert!(matches!(e, FormatError::InvalidUse { .. }), "{e:?}");
    }

    fn two_chunk_store(level: Option<i32>) -> (tempfile::TempDir, PathBuf, PageStoreIndex) {
        let (t, path, mut w) = new_store(level);
        let mut data = pattern(CHUNK_SIZE / PAGE_SIZE, 1);
        data.extend(pattern(4, 2));
        append_all(&mut w, &data);
        let index = w.finish().unwrap();
        (t, path, index)
    }

    fn assert_names_file(e: &FormatError, file: &Path) {
        let msg = e.to_string();
        assert!(
            msg.contains(&file.display().to_string()),
            "message does not name {file:?}: {msg}"
        );
    }

    #[test]
    fn chunk_with_bad_crc() {
        for level in [None, Some(3)] {
            let (t, path, index) = two_chunk_store(level);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let off = index.chunks[1].file_offset + 5;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 1], off).unwrap();
            let r = PageStoreReader::open(t.path(), &index).unwrap();
            r.chunk(0).unwrap();
            let e = r.chunk(1).unwrap_err();
            assert!(
                matches!(e, FormatError::ChunkChecksum { index: 1, .. }),
                "{e:?}"
            );
            assert_names_file(&e, &path);
            let e = r.verify_all().unwrap_err();
            assert!(
                matches!(e, FormatError::ChunkChecksum { index: 1, .. }),
                "{e:?}"
            );
        }
    }

    #[test]
    fn bad_crc_in_index() {
        let (t, _path, mut index) = two_chunk_store(None);
        index.chunks[0].crc32 ^= 1;
        let r = PageStoreReader::open(t.path(), &index).unwrap();
        assert!(matches!(
            r.chunk(0),
            Err(FormatError::ChunkChecksum { index: 0, .. })
        ));
    }

    #[test]
    fn chunk_desc_out_of_range_or_malformed() {
        let (t, path, index) = two_chunk_store(Some(3));
        let file_len = std::fs::metadata(&path).unwrap().len();
        type Mutation = Box<dyn Fn(&mut PageStoreIndex)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "beyond end",
                Box::new(move |i| i.chunks[1].file_offset = file_len / 4096 * 4096 + 4096),
            ),
            (
                "huge offset",
                Box::new(|i| i.chunks[1].file_offset = u64::MAX - 4095),
            ),
            ("in header", Box::new(|i| i.chunks[0].file_offset = 0)),
            ("unaligned", Box::new(|i| i.chunks[1].file_offset += 1)),
            (
                "overlap",
                Box::new(|i| i.chunks[1].file_offset = i.chunks[0].file_offset),
            ),
            (
                "raw too big",
                Box::new(|i| i.chunks[0].raw_len = CHUNK_SIZE as u32 + PAGE_SIZE as u32),
            ),
            ("raw zero", Box::new(|i| i.chunks[0].raw_len = 0)),
            ("raw not pages", Box::new(|i| i.chunks[0].raw_len -= 1)),
            (
                "compressed not smaller",
                Box::new(|i| i.chunks[0].stored_len = i.chunks[0].raw_len),
            ),
            ("compressed empty", Box::new(|i| i.chunks[0].stored_len = 0)),
            (
                "stored too long",
                Box::new(move |i| {
                    let c = &mut i.chunks[1];
                    c.stored_len = c.raw_len - 1;
                    c.file_offset = file_len.div_ceil(4096) * 4096 - 4096;
                }),
            ),
            (
                "raw with other stored_len",
                Box::new(|i| {
                    i.chunks[0].compressed = false;
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut bad = index.clone();
            mutate(&mut bad);
            let e = PageStoreReader::open(t.path(), &bad).unwrap_err();
            assert!(
                matches!(e, FormatError::BadChunkDesc { .. }),
                "{name}: {e:?}"
            );
            assert_names_file(&e, &path);
        }
        // A chunk index past the end.
        let r = PageStoreReader::open(t.path(), &index).unwrap();
        let e = r.chunk(2).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::NoSuchChunk {
                    index: 2,
                    count: 2,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn compressed_chunk_with_wrong_raw_len() {
        let (t, path, mut index) = two_chunk_store(Some(3));
        assert!(index.chunks[0].compressed);
        // Index claims fewer raw bytes than the frame holds: decompression must stop at raw_len.
        index.chunks[0].raw_len = CHUNK_SIZE as u32 / 2;
        // Keep stored_len < raw_len valid.
        assert!(index.chunks[0].stored_len < index.chunks[0].raw_len);
        let r = PageStoreReader::open(t.path(), &index).unwrap();
        let e = r.chunk(0).unwrap_err();
        assert!(
            matches!(e, FormatError::ChunkDecompress { index: 0, .. }),
            "{e:?}"
        );
        assert_names_file(&e, &path);
        // And more raw bytes than it holds.
        index.chunks[0].raw_len = CHUNK_SIZE as u32;
        index.chunks[1].raw_len = 8 * PAGE_SIZE as u32;
        let r = PageStoreReader::open(t.path(), &index).unwrap();
        let e = r.chunk(1).unwrap_err();
        assert!(
            matches!(e, FormatError::ChunkDecompress { index: 1, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn pages_file_header_checks() {
        let (t, path, index) = two_chunk_store(None);
        let good = std::fs::read(&path).unwrap();
        // Truncated.
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let e = PageStoreReader::open(t.path(), &index).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. }), "{e:?}");
        assert_names_file(&e, &path);
        // Shorter than a header.
        std::fs::write(&path, &good[..7]).unwrap();
        let e = PageStoreReader::open(t.path(), &index).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Truncated {
                    expected: 32,
                    found: 7,
                    ..
                }
            ),
            "{e:?}"
        );
        // Trailing bytes.
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let e = PageStoreReader::open(t.path(), &index).unwrap_err();
        assert!(
            matches!(e, FormatError::TrailingBytes { count: 1, .. }),
            "{e:?}"
        );
        // Bad magic.
        let mut b = good.clone();
        b[0] ^= 0xff;
        std::fs::write(&path, &b).unwrap();
        let e = PageStoreReader::open(t.path(), &index).unwrap_err();
        assert!(matches!(e, FormatError::BadMagic { .. }), "{e:?}");
        assert_names_file(&e, &path);
        // Missing.
        std::fs::remove_file(&path).unwrap();
        let e = PageStoreReader::open(t.path(), &index).unwrap_err();
        assert!(matches!(e, FormatError::Missing { .. }), "{e:?}");
        assert_names_file(&e, &path);
    }

    #[test]
    fn writer_via_image_and_send_sync() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<PageStoreWriter>();
        send_sync::<PageStoreReader>();
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(&t.path().join("img")).unwrap();
        let mut ps = w.page_store(None).unwrap();
        ps.append(&[7; PAGE_SIZE]).unwrap();
        let index = ps.finish().unwrap();
        let r = PageStoreReader::open(w.tmp_path(), &index).unwrap();
        assert_eq!(r.chunk(0).unwrap(), vec![7; PAGE_SIZE]);
    }
}
