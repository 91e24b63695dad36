//! Replays the checked-in fuzz corpora and past crash inputs (`fuzz/corpus-min/<target>/`, minimised with `-set_cover_merge=1`,
//! `fuzz/regressions/<target>/`) through the same harnesses `cargo fuzz` runs, so CI catches a
//! regression without a nightly toolchain or a fuzzing run of its own.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    if let Some(only) = std::env::var_os("FUZZ_ONLY") {
        f(&std::fs::read(only).unwrap()); // FUZZ_ONLY=path: just that input, panics shown
        return 1;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus-min", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{target}: input {} fails", e.path().display());
            n += 1;
        }
    }
    n
}

#[test]
fn session_corpus() {
    assert!(replay("session", ftpgate::fuzzing::session) > 0, "no session corpus checked in");
}

#[test]
fn seqmap_corpus() {
    assert!(replay("seqmap", ftpgate::fuzzing::seqmap) > 0);
}

#[test]
fn parsers_corpus() {
    assert!(replay("parsers", ftpgate::fuzzing::parsers) > 0);
}

#[test]
fn explicit_corpus() {
    assert!(replay("explicit", ftpgate::fuzzing::explicit) > 0, "no explicit-proxy corpus checked in");
}
