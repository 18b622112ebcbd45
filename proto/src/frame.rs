//! Frames: an 8-byte header (magic, kind, payload length) outside serde, then the postcard
//! payload. See the crate docs.

use crate::{Kind, Message, ProtoError};

pub const MAGIC: u16 = 0x564d;
pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: Kind,
    pub len: u32,
}

impl FrameHeader {
    /// Checks a received header: magic, known kind, length within the kind's cap.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, ProtoError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        let raw = u16::from_le_bytes([b[2], b[3]]);
        let kind = Kind::from_u16(raw).ok_or(ProtoError::UnknownKind(raw))?;
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let max = kind.max_len();
        if len > max {
            return Err(ProtoError::TooLong { kind, len, max });
        }
        Ok(FrameHeader { kind, len })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// The whole frame of `msg`; refused if its payload is over its kind's cap.
pub fn encode(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    let kind = msg.kind();
    let payload = postcard::to_stdvec(msg).map_err(|e| ProtoError::Encode {
        kind,
        reason: e.to_string(),
    })?;
    let max = kind.max_len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len > max {
        return Err(ProtoError::TooLong { kind, len, max });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&FrameHeader { kind, len }.to_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes the payload of a frame whose header was `header`: exactly one message of the
/// header's kind.
pub fn decode_payload(header: FrameHeader, payload: &[u8]) -> Result<Message, ProtoError> {
    let kind = header.kind;
    if payload.len() != header.len as usize {
        return Err(ProtoError::Decode {
            kind,
            reason: format!(
                "{} payload bytes for a header of {}",
                payload.len(),
                header.len
            ),
        });
    }
    let (msg, rest): (Message, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| ProtoError::Decode {
            kind,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes {
            kind,
            count: rest.len(),
        });
    }
    if msg.kind() != kind {
        return Err(ProtoError::Decode {
            kind,
            reason: format!("the payload is a {:?} message", msg.kind()),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version: VERSION,
                engine: "0.1.0".into(),
                host: "src".into(),
                caps: vec!["zstd".into(), "online".into()],
            }),
            Message::HelloAck(Hello {
                version: VERSION,
                engine: "0.1.0".into(),
                host: "dst".into(),
                caps: vec![],
            }),
            Message::CheckRequest(CheckRequest {
                ctid: 101,
                arch: "x86_64".into(),
                xsave_features: 0x2e7,
                kernel: "6.18".into(),
                needed_bytes: 1 << 30,
                features: vec!["clone3 with set_tid".into()],
            }),
            Message::CheckReply(CheckReply {
                problems: vec!["CTID 101 exists".into()],
            }),
            Message::VeConfig(VeConfigMsg {
                ctid: 101,
                config: "hostname = \"a\"\n".into(),
            }),
            Message::FsFile(FsFile {
                path: b"etc/x\n".to_vec(),
                kind: FsKind::Symlink {
                    target: b"/y".to_vec(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime_ns: -5,
                xattrs: vec![("trusted.overlay.opaque".into(), b"y".to_vec())],
                size: 0,
                offset: 0,
                data: vec![],
            }),
            Message::FsDone(FsDone { files: 3, bytes: 9 }),
            Message::RoundBegin(RoundBegin { round: 1, pages: 7 }),
            Message::PageBatch(PageBatch {
                round: 1,
                owner: PageOwner::Process(1),
                runs: vec![(0x7000, 2)],
                compressed: false,
                data: vec![7; 8192],
            }),
            Message::RoundEnd(RoundEnd {
                round: 1,
                pages: 2,
                bytes: 8192,
                last: true,
            }),
            Message::RoundAck(RoundAck {
                round: 1,
                pages_staged: 2,
            }),
            Message::FinalState(FinalState {
                records: vec![("core".into(), vec![1, 2, 3])],
            }),
            Message::RestoreResult(RestoreResult {
                ok: false,
                error: Some("no".into()),
                restore_ms: 1.5,
            }),
            Message::Commit,
            Message::CommitAck,
            Message::Abort(Abort {
                reason: "disk full".into(),
            }),
            Message::ImageChunk(ImageChunk {
                name: "pages".into(),
                offset: 4096,
                data: vec![1; 100],
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let all = all_messages();
        assert_eq!(
            all.len(),
            Kind::ALL.len(),
            "a message kind has no round-trip case"
        );
        for m in all {
            let f = encode(&m).unwrap();
            let h = FrameHeader::parse(f[..HEADER_LEN].try_into().unwrap()).unwrap();
            assert_eq!(h.kind, m.kind());
            assert_eq!(decode_payload(h, &f[HEADER_LEN..]).unwrap(), m);
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let f = encode(&Message::Commit).unwrap();
        let mut h: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        h[0] ^= 1;
        assert!(matches!(
            FrameHeader::parse(&h),
            Err(ProtoError::BadMagic(_))
        ));
        let mut h: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
        h[2] = 99;
        assert_eq!(FrameHeader::parse(&h), Err(ProtoError::UnknownKind(99)));
        // A length past the kind's cap is refused before any allocation.
        let big = FrameHeader {
            kind: Kind::Commit,
            len: u32::MAX,
        };
        assert!(matches!(
            FrameHeader::parse(&big.to_bytes()),
            Err(ProtoError::TooLong { .. })
        ));
        let batch = FrameHeader {
            kind: Kind::PageBatch,
            len: MAX_BATCH_BYTES + 1,
        };
        assert!(FrameHeader::parse(&batch.to_bytes()).is_err());
    }

    #[test]
    fn bad_payloads_are_refused() {
        let f = encode(&Message::RoundBegin(RoundBegin { round: 3, pages: 9 })).unwrap();
        let h = FrameHeader::parse(f[..HEADER_LEN].try_into().unwrap()).unwrap();
        // Truncated.
        let short = FrameHeader {
            kind: h.kind,
            len: h.len - 1,
        };
        assert!(decode_payload(short, &f[HEADER_LEN..f.len() - 1]).is_err());
        // Trailing bytes.
        let mut long = f[HEADER_LEN..].to_vec();
        long.push(0);
        let lh = FrameHeader {
            kind: h.kind,
            len: long.len() as u32,
        };
        assert!(matches!(
            decode_payload(lh, &long),
            Err(ProtoError::TrailingBytes { .. })
        ));
        // A payload of another kind than its header says.
        let commit = encode(&Message::Commit).unwrap();
        let lie = FrameHeader {
            kind: Kind::CommitAck,
            len: (commit.len() - HEADER_LEN) as u32,
        };
        assert!(decode_payload(lie, &commit[HEADER_LEN..]).is_err());
        // A batch too big to send is refused by the sender too.
        let huge = Message::PageBatch(PageBatch {
            round: 1,
            owner: PageOwner::Shmem(1),
            runs: vec![],
            compressed: false,
            data: vec![0; MAX_BATCH_BYTES as usize + 1],
        });
        assert!(matches!(encode(&huge), Err(ProtoError::TooLong { .. })));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for kind in Kind::ALL {
                let h = FrameHeader {
                    kind,
                    len: bytes.len() as u32,
                };
                let _ = decode_payload(h, &bytes);
            }
            if bytes.len() >= HEADER_LEN {
                let _ = FrameHeader::parse(bytes[..HEADER_LEN].try_into().unwrap());
            }
        }
    }
}
