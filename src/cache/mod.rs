//! Download cache. This module is the sans-IO core: when an entry may be served, and which
//! entries the size limit evicts (what an entry is keyed by and how a name resolves are the
//! protocol core's: `crate::proto::Key`, `crate::proto::path`). [`store`] keeps entries on disk; [`fresh`] asks the server
//! (MDTM, SIZE) on a control connection of ftpgate's own. The control session
//! (`crate::proto`) decides hit/miss per RETR; the relay (`crate::relay`) captures and serves.
//!
//! How a hit stays a valid FTP dialogue on both sides: the client's `RETR x` is held while the
//! server is asked whether `x` is unchanged; then it goes to the server as `REST <size>\r\nRETR
//! x\r\n`. The server answers `350` (removed from the client's view), `150`, sends no bytes and
//! `226`; the relay sends the cached bytes on the client's data connection meanwhile.

pub mod fresh;
pub mod store;

// the session's facts the cache is keyed by, and path resolution, are the protocol core's
pub use crate::proto::path::{dir_from_257, resolve, resolve_dir, server_path};
pub use crate::proto::{Decision, Key, Login};

use std::collections::HashMap;

/// The server's answers to MDTM and SIZE, asked just before a hit would be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Ok(T),
    /// 550: the file is gone (or not a plain file).
    Gone,
    /// Anything else, including no answer in time.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub key: Key,
    pub size: u64,
    /// MDTM's `YYYYMMDDHHMMSS` at capture.
    pub mdtm: String,
    pub last_used: u64,
}

/// Never stale: only a positive confirmation of both size and time gives a hit.
pub fn decide(entry: &Meta, mdtm: &Answer<String>, size: &Answer<u64>) -> Decision {
    match (mdtm, size) {
        (Answer::Gone, _) | (_, Answer::Gone) => Decision::Gone,
        (Answer::Ok(m), Answer::Ok(s)) if same_time(m, &entry.mdtm) && *s == entry.size => Decision::Hit,
        (Answer::Ok(_), Answer::Ok(_)) => Decision::Stale,
        _ => Decision::Bypass,
    }
}

/// The same second (MDTM's and MLST's resolution; a fraction one of them adds is not a change).
fn same_time(a: &str, b: &str) -> bool {
    mdtm_seconds(a).is_some_and(|t| Some(t) == mdtm_seconds(b))
}

/// What a reply to `MLST <path>` (RFC 3659 7) told: the facts a check needs, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MlstAnswer {
    /// The file's `modify` and `size` facts, in MDTM's and SIZE's form.
    Facts { mdtm: String, size: u64 },
    /// The server has no MLST (500/502/504), or its MLST leaves out `modify` or `size`: ask it
    /// with MDTM and SIZE from now on.
    Unsupported,
    /// Not an answer for this file (550, not a plain file, any other reply): ask MDTM and SIZE
    /// this time. A 550 is not taken as "gone" on MLST's word: a server can refuse MLST alone.
    Inconclusive,
}

/// Reads a reply to MLST: its code and every line of it (`lines`, the facts line among them:
/// ` type=file;size=42;modify=20260101000000; /path`).
pub fn mlst_answer(code: u16, lines: &[&[u8]]) -> MlstAnswer {
    match code {
        250 => {}
        500 | 502 | 504 => return MlstAnswer::Unsupported,
        _ => return MlstAnswer::Inconclusive,
    }
    // the facts line: no reply code of its own, facts up to the first space
    let Some(facts) = lines.iter().find_map(|l| {
        let l = l.trim_ascii();
        (crate::proto::ftp::reply_code(l).is_none() && l.contains(&b'=')).then(|| l.split(|&b| b == b' ').next().unwrap_or(l))
    }) else {
        return MlstAnswer::Unsupported;
    };
    let (mut mdtm, mut size, mut file) = (None, None, None);
    for fact in facts.split(|&b| b == b';') {
        let Some(eq) = fact.iter().position(|&b| b == b'=') else { continue };
        let (name, value) = (String::from_utf8_lossy(&fact[..eq]).to_ascii_lowercase(), String::from_utf8_lossy(&fact[eq + 1..]));
        match name.as_str() {
            "modify" if mdtm_seconds(&value).is_some() => mdtm = Some(value.into_owned()),
            "size" => size = value.parse::<u64>().ok(),
            "type" => file = Some(value.eq_ignore_ascii_case("file")),
            _ => {}
        }
    }
    match (mdtm, size, file) {
        (_, _, Some(false)) => MlstAnswer::Inconclusive,
        (Some(mdtm), Some(size), _) => MlstAnswer::Facts { mdtm, size },
        _ => MlstAnswer::Unsupported,
    }
}

/// The answer in a reply to MDTM (`213 YYYYMMDDHHMMSS`).
pub fn mdtm_answer(code: u16, text: &str) -> Answer<String> {
    match code {
        213 => match text.split_whitespace().next() {
            Some(t) if mdtm_seconds(t).is_some() => Answer::Ok(t.to_string()),
            _ => Answer::Unknown,
        },
        550 => Answer::Gone,
        _ => Answer::Unknown,
    }
}

/// The answer in a reply to SIZE (`213 <bytes>`).
pub fn size_answer(code: u16, text: &str) -> Answer<u64> {
    match code {
        213 => text.split_whitespace().next().and_then(|t| t.parse().ok()).map_or(Answer::Unknown, Answer::Ok),
        550 => Answer::Gone,
        _ => Answer::Unknown,
    }
}

/// Parses MDTM's `YYYYMMDDHHMMSS[.sss]` into seconds since the Unix epoch (UTC).
pub fn mdtm_seconds(s: &str) -> Option<i64> {
    let s = s.split('.').next()?;
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0, 4)?, n(4, 6)?, n(6, 8)?, n(8, 10)?, n(10, 12)?, n(12, 14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

/// MDTM has one-second resolution: a file modified within `margin` seconds of the capture could
/// be replaced by one of the same size within the same second, so it is not cached.
pub fn settled(mdtm: &str, captured_at: i64, margin: i64) -> bool {
    mdtm_seconds(mdtm).is_some_and(|m| captured_at - m >= margin)
}

/// Entries by file name with least-recently-used eviction at a byte limit.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<String, Meta>,
    total: u64,
    max: u64,
}

impl Index {
    pub fn new(max: u64) -> Index {
        Index { entries: HashMap::new(), total: 0, max }
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.values().map(|m| &m.key)
    }
    pub fn get(&self, key: &Key) -> Option<&Meta> {
        self.entries.get(&key.file_name()).filter(|m| m.key == *key)
    }
    pub fn touch(&mut self, key: &Key, now: u64) {
        if let Some(m) = self.entries.get_mut(&key.file_name()) {
            m.last_used = now;
        }
    }
    pub fn remove(&mut self, key: &Key) -> Option<Meta> {
        let m = self.entries.remove(&key.file_name())?;
        self.total -= m.size;
        Some(m)
    }
    /// Adds an entry; returns the file names evicted to stay under the limit (the new entry
    /// itself when it alone exceeds the limit).
    pub fn insert(&mut self, meta: Meta) -> Vec<String> {
        let name = meta.key.file_name();
        if let Some(old) = self.entries.remove(&name) {
            self.total -= old.size;
        }
        if meta.size > self.max {
            return vec![name];
        }
        self.total += meta.size;
        self.entries.insert(name.clone(), meta);
        let mut evicted = Vec::new();
        while self.total > self.max {
            let victim = self.entries.iter().filter(|(n, _)| **n != name).min_by_key(|(_, m)| m.last_used).map(|(n, _)| n.clone());
            let Some(v) = victim else { break };
            if let Some(m) = self.entries.remove(&v) {
                self.total -= m.size;
            }
            evicted.push(v);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str, path: &str) -> Key {
        Key::new("10.0.2.2:21".parse().unwrap(), user, path.into(), true)
    }

    fn meta(k: Key, size: u64, used: u64) -> Meta {
        Meta { key: k, size, mdtm: "20260101000000".into(), last_used: used }
    }

    #[test]
    fn keys_separate_logins_and_types_but_share_anonymous() {
        assert_eq!(key("anonymous", "/f").file_name(), key("FTP", "/f").file_name());
        assert_ne!(key("alice", "/f").file_name(), key("bob", "/f").file_name());
        let mut a = key("alice", "/f");
        a.binary = false;
        assert_ne!(a.file_name(), key("alice", "/f").file_name());
    }

    #[test]
    fn mlst_replies_as_the_servers_send_them() {
        let facts = |mdtm: &str, size| MlstAnswer::Facts { mdtm: mdtm.into(), size };
        // proftpd (mod_facts)
        let l: [&[u8]; 3] = [
            b"250-Start of list for /pub/m1.bin\r\n",
            b" modify=20261207101010;perm=adfr;size=1048576;type=file;unique=fd01U2;UNIX.group=65534;UNIX.mode=0644;UNIX.owner=0; /pub/m1.bin\r\n",
            b"250 End of list\r\n",
        ];
        assert_eq!(mlst_answer(250, &l), facts("20261207101010", 1048576));
        // pyftpdlib: lower-case facts, a path with a space
        let l: [&[u8]; 3] = [b"250-Listing \"/a b.bin\":\r\n", b" type=file;size=42;modify=20260101000000.250; /a b.bin\r\n", b"250 End MLST.\r\n"];
        assert_eq!(mlst_answer(250, &l), facts("20260101000000.250", 42));
        // a server that writes fact names in upper case and no leading space on the facts line
        let l: [&[u8]; 3] = [b"250-Begin\r\n", b"Type=file;Size=7;Modify=20250505050505;UNIX.mode=0644; /x\r\n", b"250 End.\r\n"];
        assert_eq!(mlst_answer(250, &l), facts("20250505050505", 7));
        // no such command: from now on MDTM and SIZE
        for code in [500, 502, 504] {
            assert_eq!(mlst_answer(code, &[b"500 Unknown command.\r\n"]), MlstAnswer::Unsupported);
        }
        // facts without size or modify: the server's MLST cannot answer a check
        let l: [&[u8]; 3] = [b"250-x\r\n", b" type=file;perm=r; /x\r\n", b"250 End\r\n"];
        assert_eq!(mlst_answer(250, &l), MlstAnswer::Unsupported);
        assert_eq!(mlst_answer(250, &[b"250 End\r\n"]), MlstAnswer::Unsupported);
        // a directory, a 550, a bad time: asked again the long way, never "gone" on MLST's word
        let l: [&[u8]; 3] = [b"250-x\r\n", b" type=dir;size=4096;modify=20260101000000; /d\r\n", b"250 End\r\n"];
        assert_eq!(mlst_answer(250, &l), MlstAnswer::Inconclusive);
        assert_eq!(mlst_answer(550, &[b"550 /x: No such file or directory\r\n"]), MlstAnswer::Inconclusive);
        assert_eq!(mlst_answer(421, &[b"421 Timeout\r\n"]), MlstAnswer::Inconclusive);
        let l: [&[u8]; 3] = [b"250-x\r\n", b" type=file;size=1;modify=2026; /x\r\n", b"250 End\r\n"];
        assert_eq!(mlst_answer(250, &l), MlstAnswer::Unsupported);
    }

    #[test]
    fn freshness_needs_both_answers() {
        let m = meta(key("a", "/f"), 10, 0);
        let t = Answer::Ok("20260101000000".to_string());
        assert_eq!(decide(&m, &t, &Answer::Ok(10)), Decision::Hit);
        assert_eq!(decide(&m, &t, &Answer::Ok(11)), Decision::Stale);
        assert_eq!(decide(&m, &Answer::Ok("20260101000001".into()), &Answer::Ok(10)), Decision::Stale);
        assert_eq!(decide(&m, &Answer::Gone, &Answer::Ok(10)), Decision::Gone);
        assert_eq!(decide(&m, &t, &Answer::Unknown), Decision::Bypass);
        // the same second with a fraction (MLST's `modify` where the entry has MDTM's) is no change
        assert_eq!(decide(&m, &Answer::Ok("20260101000000.123".into()), &Answer::Ok(10)), Decision::Hit);
        assert_eq!(decide(&m, &Answer::Ok("garbage".into()), &Answer::Ok(10)), Decision::Stale);
    }

    #[test]
    fn answers_from_replies() {
        assert_eq!(mdtm_answer(213, "20261122031500"), Answer::Ok("20261122031500".into()));
        assert_eq!(mdtm_answer(213, "yesterday"), Answer::Unknown);
        assert_eq!(mdtm_answer(550, "No such file"), Answer::Gone);
        assert_eq!(mdtm_answer(500, "unknown command"), Answer::Unknown);
        assert_eq!(size_answer(213, "20971520"), Answer::Ok(20971520));
        assert_eq!(size_answer(213, "-1"), Answer::Unknown);
        assert_eq!(size_answer(550, "Could not get file size."), Answer::Gone);
    }

    #[test]
    fn mdtm_and_settling() {
        assert_eq!(mdtm_seconds("19700101000000"), Some(0));
        assert_eq!(mdtm_seconds("20000301000000"), Some(951868800));
        assert_eq!(mdtm_seconds("20261122031500.123"), mdtm_seconds("20261122031500"));
        assert_eq!(mdtm_seconds("2026112203150"), None);
        assert_eq!(mdtm_seconds("20261322031500"), None);
        let t = mdtm_seconds("20261122031500").unwrap();
        assert!(!settled("20261122031500", t + 1, 5));
        assert!(settled("20261122031500", t + 5, 5));
        assert!(!settled("garbage", t, 5));
    }

    #[test]
    fn lru_eviction_at_limit() {
        let mut ix = Index::new(100);
        assert!(ix.insert(meta(key("a", "/1"), 40, 1)).is_empty());
        assert!(ix.insert(meta(key("a", "/2"), 40, 2)).is_empty());
        ix.touch(&key("a", "/1"), 3);
        let ev = ix.insert(meta(key("a", "/3"), 40, 4));
        assert_eq!(ev, vec![key("a", "/2").file_name()]);
        assert_eq!(ix.total(), 80);
        assert!(ix.get(&key("a", "/1")).is_some() && ix.get(&key("a", "/2")).is_none());
        assert_eq!(ix.insert(meta(key("a", "/huge"), 101, 5)), vec![key("a", "/huge").file_name()]);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.remove(&key("a", "/1")).map(|m| m.size), Some(40));
        assert_eq!(ix.total(), 40);
    }
}
