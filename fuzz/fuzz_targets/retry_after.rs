#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_catalog::fuzzing::retry_after(data));
