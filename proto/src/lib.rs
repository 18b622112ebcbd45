//! Migration wire messages, framing and version negotiation. Comes with issue 5.
#![forbid(unsafe_code)]
