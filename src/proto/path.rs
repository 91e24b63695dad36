//! Paths on the server: names given to commands resolved against the tracked working
//! directory (`PWD`/`CWD`), and the directory a `257` reply names.

/// Resolves a file `name` (as given to RETR/STOR/DELE/RNTO) against the working directory `cwd`.
/// `None` when the result would be a root or unknown, or the name has NUL/CR/LF.
///
/// `cwd` is absolute, or relative to the login's home directory (`~`, `~/sub`) while no PWD
/// reply has told where home is; such paths stay `~/…` and are asked about relative to home
/// (see [`server_path`]).
pub fn resolve(cwd: &str, name: &str) -> Option<String> {
    resolve_dir(cwd, name).filter(|p| p != "/" && p != "~")
}

/// Like [`resolve`], for directories (CWD): a root (`/` or `~`) is a valid result.
pub fn resolve_dir(cwd: &str, name: &str) -> Option<String> {
    if name.is_empty() || name.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        return None;
    }
    let (root, base) = match cwd.strip_prefix('~') {
        _ if name.starts_with('/') => ("/", ""),
        Some(rest) => ("~", rest),
        None => ("/", cwd),
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in base.split('/').chain(name.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() && root == "~" {
                    return None; // above home: where that is, is unknown
                }
            }
            p => parts.push(p),
        }
    }
    Some(match (parts.is_empty(), root) {
        (true, r) => r.to_string(),
        (false, "/") => format!("/{}", parts.join("/")),
        (false, _) => format!("~/{}", parts.join("/")),
    })
}

/// The name to send the server for a resolved path, on a connection whose working directory
/// is the login's home.
pub fn server_path(path: &str) -> &str {
    path.strip_prefix("~/").unwrap_or(path)
}

/// The directory named in a `257 "<dir>" …` reply (PWD, MKD); `""` inside quotes is a quote.
pub fn dir_from_257(line: &[u8]) -> Option<String> {
    let text = core::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("257")?.trim_start_matches([' ', '-']);
    let mut chars = rest.strip_prefix('"')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return if out.starts_with('/') { Some(out) } else { None };
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_paths() {
        assert_eq!(resolve("/pub", "big.bin").as_deref(), Some("/pub/big.bin"));
        assert_eq!(resolve("/pub/x", "../y/./z").as_deref(), Some("/pub/y/z"));
        assert_eq!(resolve("/pub", "/abs").as_deref(), Some("/abs"));
        assert_eq!(resolve("/", "../../etc").as_deref(), Some("/etc"));
        assert_eq!(resolve("/pub", ""), None);
        assert_eq!(resolve("/pub", "a\rb"), None);
        assert_eq!(resolve("/", ".."), None);
        assert_eq!(resolve("~", "big.bin").as_deref(), Some("~/big.bin"));
        assert_eq!(resolve("~/a", "../b/c").as_deref(), Some("~/b/c"));
        assert_eq!(resolve("~", "../x"), None);
        assert_eq!(resolve("~/a", "/abs").as_deref(), Some("/abs"));
        assert_eq!(resolve_dir("~/a", "..").as_deref(), Some("~"));
        assert_eq!(resolve_dir("/a", "..").as_deref(), Some("/"));
        assert_eq!(server_path("~/b/c"), "b/c");
        assert_eq!(server_path("/b/c"), "/b/c");
    }

    #[test]
    fn pwd_reply_parsing() {
        assert_eq!(dir_from_257(b"257 \"/home/ftp\" is the current directory").as_deref(), Some("/home/ftp"));
        assert_eq!(dir_from_257(b"257 \"/a \"\"q\"\"\" created").as_deref(), Some("/a \"q\""));
        assert_eq!(dir_from_257(b"257 no quotes"), None);
        assert_eq!(dir_from_257(b"257 \"relative\""), None);
    }
}
