//! The outer layer of a backup: a fixed header, then the (optionally zstd-compressed) archive
//! cut into chunks, each checked on its own before a byte of it is used.
//!
//! ```text
//! header (64 bytes, plain):  magic "VZBACKUP" | major u16 | minor u16 | flags u32
//!                            | salt [32] | nonce prefix [7] | reserved [9] (zero)
//! chunk:                     len u32 (bit 31: the last chunk) | payload
//!   encrypted:               payload = ChaCha20-Poly1305(plaintext) + tag (16)
//!   plain:                   payload = plaintext + CRC32 (header, counter, last flag, plaintext)
//! ```
//!
//! Encryption follows the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015):
//! chunk `i` is sealed with the nonce `prefix (7) | i (u32 BE) | last (1)`, so a chunk moved,
//! dropped, repeated or taken from another backup fails authentication, and so does a stream
//! cut at a chunk boundary (no chunk carries the last flag) or one whose last flag was forged.
//! The whole header is the associated data of every chunk. The key of one backup is derived
//! from the key file and the backup's random salt (HKDF-SHA256), so that two backups never
//! share a key and nonce even if their random prefixes collide.
//!
//! A plain backup has only a CRC per chunk: it detects damage, not an attacker.

use std::io::{self, Read, Write};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use super::BackupError;

pub const MAGIC: &[u8; 8] = b"VZBACKUP";
pub const MAJOR: u16 = 1;
pub const MINOR: u16 = 0;
pub const HEADER_LEN: usize = 64;
/// Plaintext bytes per chunk: large enough that the 20 bytes of framing and tag are noise,
/// small enough that a reader holds little it has not verified.
pub const CHUNK: usize = 1 << 20;
const TAG_LEN: usize = 16;
const LAST: u32 = 1 << 31;
/// The longest payload a reader accepts: a full chunk and its tag or CRC.
const MAX_PAYLOAD: usize = CHUNK + TAG_LEN;

pub const FLAG_ENCRYPTED: u32 = 1;
pub const FLAG_ZSTD: u32 = 2;
const KNOWN_FLAGS: u32 = FLAG_ENCRYPTED | FLAG_ZSTD;

/// A key file's 32 bytes.
pub struct KeyMaterial(pub [u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub salt: [u8; 32],
    pub prefix: [u8; 7],
}

impl Header {
    pub fn new(encrypted: bool, zstd: bool) -> Result<Self, BackupError> {
        let mut h = Header {
            flags: if encrypted { FLAG_ENCRYPTED } else { 0 } | if zstd { FLAG_ZSTD } else { 0 },
            salt: [0; 32],
            prefix: [0; 7],
        };
        if encrypted {
            let rng = SystemRandom::new();
            rng.fill(&mut h.salt)
                .and_then(|()| rng.fill(&mut h.prefix))
                .map_err(|_| BackupError::Invalid("no random numbers from the system".into()))?;
        }
        Ok(h)
    }

    pub fn encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    pub fn zstd(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&MINOR.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..48].copy_from_slice(&self.salt);
        b[48..55].copy_from_slice(&self.prefix);
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, BackupError> {
        if &b[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let major = u16::from_le_bytes([b[8], b[9]]);
        let minor = u16::from_le_bytes([b[10], b[11]]);
        if major != MAJOR || minor > MINOR {
            return Err(BackupError::Version { major, minor });
        }
        let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if flags & !KNOWN_FLAGS != 0 || b[55..].iter().any(|&x| x != 0) {
            return Err(BackupError::Invalid(format!(
                "header has unknown flags {flags:#x} or reserved bytes set"
            )));
        }
        let mut h = Header {
            flags,
            salt: [0; 32],
            prefix: [0; 7],
        };
        h.salt.copy_from_slice(&b[16..48]);
        h.prefix.copy_from_slice(&b[48..55]);
        if !h.encrypted() && (h.salt != [0; 32] || h.prefix != [0; 7]) {
            return Err(BackupError::Invalid(
                "the header of a plain backup has a salt or nonce prefix".into(),
            ));
        }
        Ok(h)
    }

    fn key(&self, key: &KeyMaterial) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &self.salt).extract(&key.0);
        let okm = prk
            .expand(&[b"vzcpt backup 1 chacha20-poly1305"], &CHACHA20_POLY1305)
            // ring refuses only an output longer than 255 hash lengths; a key is 32 bytes.
            .expect("HKDF-SHA256 expands to 32 bytes");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = last as u8;
        Nonce::assume_unique_for_key(n)
    }
}

/// A plain chunk's check: like the encrypted ones, it covers the header and the chunk's place.
fn crc(header: &[u8; HEADER_LEN], index: u32, last: bool, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(&index.to_le_bytes());
    h.update(&[last as u8]);
    h.update(data);
    h.finalize()
}

/// Cuts what is written into sealed chunks; [`ChunkWriter::finish`] writes the last one.
pub struct ChunkWriter<W: Write> {
    out: W,
    header: Header,
    aad: [u8; HEADER_LEN],
    key: Option<LessSafeKey>,
    buf: Vec<u8>,
    index: u32,
    /// Bytes written to `out`, header included.
    pub written: u64,
}

impl<W: Write> ChunkWriter<W> {
    /// Writes the header. `key` must be given exactly when the header says encrypted.
    pub fn new(mut out: W, header: Header, key: Option<&KeyMaterial>) -> io::Result<Self> {
        let aad = header.encode();
        out.write_all(&aad)?;
        Ok(ChunkWriter {
            key: key.map(|k| header.key(k)),
            out,
            header,
            aad,
            buf: Vec::with_capacity(CHUNK + TAG_LEN),
            index: 0,
            written: HEADER_LEN as u64,
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        match &self.key {
            Some(k) => {
                k.seal_in_place_append_tag(
                    self.header.nonce(self.index, last),
                    Aad::from(&self.aad),
                    &mut self.buf,
                )
                .map_err(|_| io::Error::other("sealing a chunk failed"))?;
            }
            None => {
                let c = crc(&self.aad, self.index, last, &self.buf);
                self.buf.extend_from_slice(&c.to_le_bytes());
            }
        }
        let len = self.buf.len() as u32 | if last { LAST } else { 0 };
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&self.buf)?;
        self.written += 4 + self.buf.len() as u64;
        self.buf.clear();
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| io::Error::other("a backup holds at most 2^32 chunks (4 PiB)"))?;
        Ok(())
    }

    /// Seals the last chunk (possibly empty) and flushes; returns the output.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.seal(true)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            // Full, and more is coming: this one is not the last.
            self.seal(false)?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Hands out the plaintext of each chunk once it is verified; errors are [`BackupError`]s
/// inside `io::Error` (see [`super::from_io`]).
pub struct ChunkReader<R: Read> {
    input: R,
    header: Header,
    aad: [u8; HEADER_LEN],
    key: Option<LessSafeKey>,
    buf: Vec<u8>,
    pos: usize,
    index: u32,
    /// The last chunk was read and nothing follows it.
    pub complete: bool,
    pub read: u64,
}

fn fail(e: BackupError) -> io::Error {
    io::Error::other(e)
}

/// Reads exactly `buf.len()` bytes, or fewer only at the end of the input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> ChunkReader<R> {
    /// Reads and checks the header: whether it is encrypted must match whether a key is given.
    pub fn new(mut input: R, key: Option<&KeyMaterial>) -> Result<Self, BackupError> {
        let mut aad = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut aad).map_err(BackupError::Read)?;
        if n == 0 {
            return Err(BackupError::Invalid("the backup is empty".into()));
        }
        if n < HEADER_LEN {
            if aad[..n.min(8)] != MAGIC[..n.min(8)] {
                return Err(BackupError::NotABackup);
            }
            return Err(BackupError::Truncated { chunks: 0 });
        }
        let header = Header::decode(&aad)?;
        match (header.encrypted(), key) {
            (true, None) => return Err(BackupError::NeedKey),
            (false, Some(_)) => return Err(BackupError::NotEncrypted),
            _ => {}
        }
        Ok(ChunkReader {
            key: key.map(|k| header.key(k)),
            input,
            header,
            aad,
            buf: Vec::new(),
            pos: 0,
            index: 0,
            complete: false,
            read: HEADER_LEN as u64,
        })
    }

    pub fn header(&self) -> Header {
        self.header
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let truncated = BackupError::Truncated { chunks: self.index };
        let mut len = [0u8; 4];
        if read_full(&mut self.input, &mut len)? < 4 {
            return Err(fail(truncated));
        }
        let len = u32::from_le_bytes(len);
        let last = len & LAST != 0;
        let len = (len & !LAST) as usize;
        let overhead = if self.key.is_some() { TAG_LEN } else { 4 };
        if len > MAX_PAYLOAD || len < overhead {
            return Err(fail(BackupError::Invalid(format!(
                "chunk {} has a length of {len} bytes (at most {MAX_PAYLOAD})",
                self.index
            ))));
        }
        self.buf.resize(len, 0);
        if read_full(&mut self.input, &mut self.buf)? < len {
            return Err(fail(truncated));
        }
        self.read += 4 + len as u64;
        let plain_len = match &self.key {
            Some(k) => k
                .open_in_place(
                    self.header.nonce(self.index, last),
                    Aad::from(&self.aad),
                    &mut self.buf,
                )
                .map_err(|_| fail(BackupError::Auth { index: self.index }))?
                .len(),
            None => {
                let n = len - 4;
                let want = u32::from_le_bytes([
                    self.buf[n],
                    self.buf[n + 1],
                    self.buf[n + 2],
                    self.buf[n + 3],
                ]);
                if crc(&self.aad, self.index, last, &self.buf[..n]) != want {
                    return Err(fail(BackupError::Checksum { index: self.index }));
                }
                n
            }
        };
        self.buf.truncate(plain_len);
        self.pos = 0;
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| fail(BackupError::Invalid("more than 2^32 chunks".into())))?;
        if last {
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? != 0 {
                return Err(fail(BackupError::Trailing));
            }
            self.complete = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for ChunkReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.complete {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
