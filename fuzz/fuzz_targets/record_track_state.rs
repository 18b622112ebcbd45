//! The `track-state` record file (an incremental dump's tracking), read as a dump with
//! `--parent` reads it (header, caps, checksum, postcard).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vzcpt_fuzz::record::<images_format::track::TrackStateImage>(data);
});
