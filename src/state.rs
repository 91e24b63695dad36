//! The session state file: the sequence offsets of sessions whose lengths changed, so that a
//! restarted gateway (even after `kill -9`) resumes them. Lives in the state directory
//! ([`crate::settings::Settings::state_dir`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};

use crate::driver::SessionKey as Key;
use crate::proto::{Seq, SeqState};

/// The state's text: a line a session.
pub fn render(sessions: impl Iterator<Item = (Key, SeqState)>) -> String {
    let mut text = String::new();
    for (k, st) in sessions {
        text.push_str(&format!("{} {} {} {} {} {}\n", k.0, k.1, st.c2s.0, st.c2s.1.raw(), st.s2c.0, st.s2c.1.raw()));
    }
    text
}

/// Saves the session state on a thread of its own: the newest text handed over wins. The file
/// is rewritten in place (a header naming the length, then the lines; a longer earlier text's
/// tail is ignored), with no new file and no rename per save: it lives in the page cache and
/// survives the process (`kill -9`), which is what resuming needs — after a reboot conntrack's
/// state is gone anyway. Saving after every change then costs a `pwrite`, where writing a
/// temporary file and renaming it kept a core a quarter busy in a 200-session burst.
pub fn writer(f: PathBuf) -> Option<Sender<String>> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&f) {
        Ok(file) => file,
        Err(e) => {
            crate::warn!("cannot save session state to {}: {e}", f.display());
            return None;
        }
    };
    let (tx, rx) = channel::<String>();
    let spawned = std::thread::Builder::new().name("ftpgate-state".into()).spawn(move || {
        while let Ok(mut text) = rx.recv() {
            while let Ok(newer) = rx.try_recv() {
                text = newer;
            }
            let out = format!("{STATE_HEADER}{}\n{text}", text.len());
            if let Err(e) = file.write_all_at(out.as_bytes(), 0) {
                crate::warn!("cannot save session state to {}: {e}", f.display());
            }
        }
    });
    spawned.ok().map(|_| tx)
}

/// The first line of the state file: this, then the length of the lines that follow.
const STATE_HEADER: &str = "#ftpgate-state ";

/// Reads what [`writer`] wrote; damaged lines are skipped.
pub fn load(f: &Path) -> Vec<(Key, SeqState)> {
    let Ok(text) = std::fs::read_to_string(f) else { return Vec::new() };
    state_lines(&text)
}

/// The saved lines of a state file's text: after the header, as many bytes as it names (an
/// earlier, longer save's tail follows them); a file without the header is all lines.
fn state_lines(text: &str) -> Vec<(Key, SeqState)> {
    let body = match text.strip_prefix(STATE_HEADER).and_then(|r| r.split_once('\n')) {
        Some((len, rest)) => match len.parse::<usize>() {
            Ok(n) => rest.get(..n).unwrap_or(""),
            Err(_) => "",
        },
        None => text,
    };
    body.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [c, s, cd, cs, sd, ss] = w[..] else { return None };
            let key = (c.parse().ok()?, s.parse().ok()?);
            let st = SeqState { c2s: (cd.parse().ok()?, Seq::new(cs.parse().ok()?)), s2c: (sd.parse().ok()?, Seq::new(ss.parse().ok()?)) };
            Some((key, st))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_rewritten_in_place_reads_only_the_newest_lines() {
        let older = "10.0.1.2:1 10.0.2.2:21 3 100 0 200\n10.0.1.2:2 10.0.2.2:21 -2 300 0 400\n";
        let newer = "10.0.1.2:3 10.0.2.2:21 5 500 1 600\n";
        // a longer save, then a shorter one over it: the header's length ends the lines
        let mut file = format!("{STATE_HEADER}{}\n{older}", older.len()).into_bytes();
        let second = format!("{STATE_HEADER}{}\n{newer}", newer.len()).into_bytes();
        file[..second.len()].copy_from_slice(&second);
        let got = state_lines(std::str::from_utf8(&file).unwrap());
        let key: Key = ("10.0.1.2:3".parse().unwrap(), "10.0.2.2:21".parse().unwrap());
        assert_eq!(got, vec![(key, SeqState { c2s: (5, Seq::new(500)), s2c: (1, Seq::new(600)) })]);
        // IPv6 sessions round-trip through the text
        let k6: Key = ("[fd00:1::2]:40000".parse().unwrap(), "[fd00:2::2]:21".parse().unwrap());
        let st6 = SeqState { c2s: (-3, Seq::new(7)), s2c: (2, Seq::new(9)) };
        assert_eq!(state_lines(&render([(k6, st6)].into_iter())), vec![(k6, st6)]);
        // a file of an earlier version (lines only) still loads
        assert_eq!(state_lines(older).len(), 2);
        // a damaged header loads nothing rather than stale lines
        assert!(state_lines(&format!("{STATE_HEADER}x\n{older}")).is_empty());
    }
}
