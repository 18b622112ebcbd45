//! The migration protocol of `vzmigrate`: every message, its framing and size limits, and
//! version negotiation. No sockets here: `migrate` carries the frames over QUIC streams.
//!
//! # The exchange
//!
//! ```text
//!  source (vzmigrate DEST CTID)                      destination (vzmigrate --listen)
//!  ── control stream ────────────────────────────────────────────────────────────────
//!  Hello {version, caps}                 ──────────▶
//!                                        ◀──────────  HelloAck {version, caps}   (or Abort)
//!  CheckRequest {ctid, arch, xsave, ...} ──────────▶
//!                                        ◀──────────  CheckReply {problems}      (empty: go)
//!  VeConfig {ctid, config}               ──────────▶
//!  FsFile* ... FsDone                    ──────────▶  the private area, while the VE runs
//!  offline: the VE is checkpointed (stopped); its page store follows as
//!    ImageChunk* {name, offset, data}   ──────────▶
//!  online: for round 1, 2, ...:
//!    RoundBegin {round, pages}           ──────────▶
//!    ── page streams (several in parallel, when both hellos name `page-streams`;
//!       else on the control stream) ──
//!    PageBatch* {round, owner, runs, data}──────────▶  staged as they arrive
//!    ── control stream ──
//!    RoundEnd {round, pages, bytes}      ──────────▶
//!                                        ◀──────────  RoundAck {round}
//!  (the VE is frozen: last pages in a final round, FsFile* for what changed, FsDone)
//!  FinalState {records}                  ──────────▶  restore from the staged pages
//!                                        ◀──────────  RestoreResult {ok, error, figures}
//!  Commit                                ──────────▶  the VE runs on the destination
//!                                        ◀──────────  CommitAck
//!  (the source destroys its stopped copy)
//!  Either side may send Abort {reason} before Commit: the source resumes its VE, the
//!  destination removes everything it received.
//! ```
//!
//! # Frames
//!
//! Each message is one frame: a fixed 8-byte header outside serde — magic `0x564d` ("MV"),
//! message kind (`u16`), payload length (`u32`), all little-endian — then the payload in
//! postcard. The header's kind gives the cap on the payload length ([`Kind::max_len`]),
//! checked before anything is allocated; the payload must decode to exactly that kind with no
//! byte left over. Nothing a peer sends makes a reader panic.
//!
//! # Versions
//!
//! A peer speaks `major.minor`. Both sides need the same major; their minors may differ by
//! one (a peer one minor older is accepted), and the exchange then uses the lower minor's
//! messages ([`negotiate`]).
#![forbid(unsafe_code)]

mod bytes;
mod frame;
mod messages;

pub use frame::{decode_payload, encode, FrameHeader, HEADER_LEN, MAGIC};
pub use messages::*;

/// This protocol's version.
pub const VERSION: Version = Version { major: 1, minor: 0 };

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtoError {
    #[error("bad frame magic {0:#06x}: the peer does not speak the vzmigrate protocol")]
    BadMagic(u16),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("a {kind:?} message of {len} bytes is over its limit of {max} bytes")]
    TooLong { kind: Kind, len: u32, max: u32 },
    #[error("cannot decode a {kind:?} message: {reason}")]
    Decode { kind: Kind, reason: String },
    #[error("a {kind:?} message has {count} bytes left over after its end")]
    TrailingBytes { kind: Kind, count: usize },
    #[error("cannot encode a {kind:?} message: {reason}")]
    Encode { kind: Kind, reason: String },
    #[error("protocol version {theirs} of the peer is not compatible with ours ({ours}): {why}")]
    Incompatible {
        ours: Version,
        theirs: Version,
        why: &'static str,
    },
}

/// The version both sides speak, or why they cannot talk.
pub fn negotiate(ours: Version, theirs: Version) -> Result<Version, ProtoError> {
    let err = |why| ProtoError::Incompatible { ours, theirs, why };
    if ours.major != theirs.major {
        return Err(err("the major versions differ"));
    }
    if ours.minor.abs_diff(theirs.minor) > 1 {
        return Err(err("the minor versions are more than one apart"));
    }
    Ok(Version {
        major: ours.major,
        minor: ours.minor.min(theirs.minor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_one_minor_apart_talk() {
        let v = |major, minor| Version { major, minor };
        assert_eq!(negotiate(v(1, 3), v(1, 2)), Ok(v(1, 2)));
        assert_eq!(negotiate(v(1, 2), v(1, 3)), Ok(v(1, 2)));
        assert_eq!(negotiate(v(1, 0), v(1, 0)), Ok(v(1, 0)));
        let e = negotiate(v(1, 3), v(1, 1)).unwrap_err();
        assert!(e.to_string().contains("1.1"), "{e}");
        assert!(negotiate(v(2, 0), v(1, 0)).is_err());
    }
}
