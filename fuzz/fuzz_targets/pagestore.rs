//! The page store: a `pages` file and the index of its chunks (as the pagemap record holds
//! it), opened, verified and read as a restore does. Input layout: `vzcpt_fuzz::pagestore`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vzcpt_fuzz::pagestore(data));
