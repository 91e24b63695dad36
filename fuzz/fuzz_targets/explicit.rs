#![no_main]
//! `cargo fuzz run explicit`: see `ftpgate::fuzzing::explicit` for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::explicit(data));
