//! Property tests: every message kind, with random values of every field (the generator of
//! `images-format/tests/common`), goes through a frame and comes back equal; frames read back
//! one after another from a stream; any cut frame is refused. A failure prints its seed.

#[path = "../../images-format/tests/common/random_value.rs"]
mod random_value;

use std::collections::HashSet;

use proto::{decode_payload, encode, FrameHeader, Kind, Message, ProtoError, HEADER_LEN};
use random_value::{random, Rng};

const SEEDS: u64 = 3000;

/// Reads frames from `stream` as the transport does: a header, then exactly its payload.
fn read_frames(mut stream: &[u8]) -> Result<Vec<Message>, ProtoError> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let Some((h, rest)) = stream.split_first_chunk::<HEADER_LEN>() else {
            return Err(ProtoError::Decode {
                kind: Kind::Abort,
                reason: "a cut header".into(),
            });
        };
        let header = FrameHeader::parse(h)?;
        let len = header.len as usize;
        if rest.len() < len {
            return Err(ProtoError::Decode {
                kind: header.kind,
                reason: "a cut payload".into(),
            });
        }
        out.push(decode_payload(header, &rest[..len])?);
        stream = &rest[len..];
    }
    Ok(out)
}

#[test]
fn every_message_kind_round_trips() {
    let mut kinds = HashSet::new();
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for seed in 0..SEEDS {
        let mut rng = Rng::new(seed);
        let m: Message = random(&mut rng);
        kinds.insert(m.kind() as u16);
        let frame = encode(&m).unwrap_or_else(|e| panic!("seed {seed}: encode {m:?}: {e}"));
        let header = FrameHeader::parse(frame[..HEADER_LEN].try_into().unwrap())
            .unwrap_or_else(|e| panic!("seed {seed}: header of {m:?}: {e}"));
        assert_eq!(header.kind, m.kind(), "seed {seed}");
        assert_eq!(header.len as usize, frame.len() - HEADER_LEN, "seed {seed}");
        let back = decode_payload(header, &frame[HEADER_LEN..])
            .unwrap_or_else(|e| panic!("seed {seed}: decode {m:?}: {e}"));
        assert_eq!(back, m, "seed {seed}");
        // Every strict prefix of the payload is refused, as a payload of its own length.
        let payload = &frame[HEADER_LEN..];
        for cut in [0, payload.len() / 2, payload.len().saturating_sub(1)] {
            if cut < payload.len() {
                let h = FrameHeader {
                    kind: header.kind,
                    len: cut as u32,
                };
                assert!(
                    decode_payload(h, &payload[..cut]).is_err(),
                    "seed {seed}: a {cut}-byte prefix of {m:?} decoded"
                );
            }
        }
        if seed % 10 == 0 {
            stream.extend_from_slice(&frame);
            sent.push(m);
        }
    }
    // Not a property of the protocol: a check that the generator reached every kind.
    assert_eq!(kinds.len(), Kind::ALL.len(), "kinds reached: {kinds:?}");
    assert_eq!(read_frames(&stream).unwrap(), sent);
    // A stream cut anywhere inside its last frame is refused, never read short.
    let last = encode(sent.last().unwrap()).unwrap().len();
    for cut in 1..last.min(64) {
        assert!(
            read_frames(&stream[..stream.len() - cut]).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn a_header_over_its_kind_cap_is_refused_for_every_kind() {
    for kind in Kind::ALL {
        let max = kind.max_len();
        let ok = FrameHeader { kind, len: max };
        assert_eq!(FrameHeader::parse(&ok.to_bytes()), Ok(ok));
        for len in [max + 1, u32::MAX] {
            let h = FrameHeader { kind, len };
            assert!(
                matches!(
                    FrameHeader::parse(&h.to_bytes()),
                    Err(ProtoError::TooLong { .. })
                ),
                "{kind:?} {len}"
            );
        }
    }
}
