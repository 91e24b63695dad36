//! The manual pages in `man/` (packaged by `cargo deb`) are generated from the command-line
//! definitions; they must match what the binary generates now.

#[test]
fn man_pages_are_current() {
    let dir = std::env::temp_dir().join(format!("ftpgate-man-{}", std::process::id()));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_ftpgate")).arg("man").arg(&dir).status().unwrap();
    assert!(st.success());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name();
        let fresh = std::fs::read(e.path()).unwrap();
        let kept = std::fs::read(root.join(&name)).unwrap_or_default();
        assert!(fresh == kept, "man/{} is stale: run `target/release/ftpgate man man`", name.to_string_lossy());
        n += 1;
    }
    assert_eq!(n, std::fs::read_dir(&root).unwrap().count(), "man/ has pages the binary no longer makes");
    let _ = std::fs::remove_dir_all(dir);
}
