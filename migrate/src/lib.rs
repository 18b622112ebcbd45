//! Live-migration engines and QUIC transport. Comes with issue 5.
#![forbid(unsafe_code)]
