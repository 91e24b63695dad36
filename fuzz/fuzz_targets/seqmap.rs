#![no_main]
//! `cargo fuzz run seqmap`: see `ftpgate::fuzzing::seqmap` for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::seqmap(data));
