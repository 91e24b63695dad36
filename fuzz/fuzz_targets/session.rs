#![no_main]
//! `cargo fuzz run session`: see `ftpgate::fuzzing::session` for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ftpgate::fuzzing::session(data));
