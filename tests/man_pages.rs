//! The manual pages in `man/` (packaged by `cargo deb`) are generated from the command-line
//! definitions ([`ftpgate::cli`]); they must match what those generate now. Regenerate them
//! with `UPDATE_MAN=1 cargo test --release --test man_pages` (as `scripts/package` does).

use clap::CommandFactory;

/// ftpgate(1) and one page a subcommand (ftpgate-run(1), …): (file name, roff).
fn pages() -> Vec<(String, Vec<u8>)> {
    let cmd = ftpgate::cli::Cli::command();
    let mut pages = vec![("ftpgate".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("ftpgate-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str()); // a few, once
        pages.push((name, sub.clone().name(leaked)));
    }
    pages
        .into_iter()
        .map(|(name, c)| {
            let mut out = Vec::new();
            clap_mangen::Man::new(c).render(&mut out).unwrap();
            (format!("{name}.1"), out)
        })
        .collect()
}

#[test]
fn man_pages_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = pages();
    if std::env::var_os("UPDATE_MAN").is_some() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        for (name, roff) in &pages {
            std::fs::write(root.join(name), roff).unwrap();
        }
    }
    for (name, fresh) in &pages {
        let kept = std::fs::read(root.join(name)).unwrap_or_default();
        assert!(*fresh == kept, "man/{name} is stale: run `UPDATE_MAN=1 cargo test --release --test man_pages`");
    }
    assert_eq!(pages.len(), std::fs::read_dir(&root).unwrap().count(), "man/ has pages the definitions no longer make");
}
