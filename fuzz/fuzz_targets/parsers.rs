#![no_main]
//! `cargo fuzz run parsers`: see `ftpgate::fuzzing::parsers` for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::parsers(data));
