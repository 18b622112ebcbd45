//! A stream of migration frames as a peer sends them, read frame by frame as the transport
//! does (header first, then exactly its payload).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vzcpt_fuzz::proto_frame(data));
