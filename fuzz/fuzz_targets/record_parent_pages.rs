//! The `parent-pages` record file, read as a restore reads it (header, caps, checksum, postcard).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vzcpt_fuzz::record::<images_format::mm::ParentPagesImage>(data);
});
