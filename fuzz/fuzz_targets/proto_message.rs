//! Every message kind's payload: the first byte picks the kind, the rest is its payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vzcpt_fuzz::proto_message(data));
