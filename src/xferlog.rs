//! The classic xferlog (`--xferlog FILE`): one line per file transfer, in the format wu-ftpd,
//! proftpd and vsftpd write, so existing log analysers read it.
//!
//! `current-time transfer-time remote-host file-size filename transfer-type special-action-flag
//! direction access-mode username service-name authentication-method authenticated-user-id
//! completion-status`, for example
//! `Sun Nov 22 06:36:35 2026 1 10.0.1.2 20971520 /pub/big.bin b _ o a anonymous ftp 0 * c`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// One finished transfer.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// When it ended, seconds since the epoch.
    pub at: i64,
    pub secs: f64,
    pub host: std::net::IpAddr,
    pub bytes: u64,
    pub path: String,
    pub binary: bool,
    /// To the server (STOR, APPE, STOU).
    pub incoming: bool,
    pub user: String,
    pub complete: bool,
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `ctime`-style local time, as xferlog writes it.
fn ctime(at: i64) -> String {
    // SAFETY: localtime_r fills the live tm it is given from a live time_t.
    let tm = unsafe {
        let t: libc::time_t = at as libc::time_t;
        let mut tm: libc::tm = core::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[tm.tm_wday.clamp(0, 6) as usize],
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year + 1900
    )
}

impl Record {
    pub fn line(&self) -> String {
        let anonymous = matches!(self.user.as_str(), "anonymous" | "ftp");
        // whitespace would split the field for every parser
        let path: String = self.path.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
        format!(
            "{} {} {} {} {} {} _ {} {} {} ftp 0 * {}",
            ctime(self.at),
            self.secs.ceil().max(1.0) as u64,
            self.host,
            self.bytes,
            if path.is_empty() { "-" } else { &path },
            if self.binary { 'b' } else { 'a' },
            if self.incoming { 'i' } else { 'o' },
            if anonymous { 'a' } else { 'r' },
            self.user.replace(char::is_whitespace, "_"),
            if self.complete { 'c' } else { 'i' },
        )
    }
}

static LOG: OnceLock<Mutex<File>> = OnceLock::new();

/// Opens the transfer log (appending) for the rest of the process.
pub fn open(path: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let _ = LOG.set(Mutex::new(f));
    Ok(())
}

/// Appends a record, if a transfer log is open.
pub fn write(r: &Record) {
    if let Some(f) = LOG.get() {
        let line = format!("{}\n", r.line());
        let _ = f.lock().unwrap_or_else(|e| e.into_inner()).write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn classic_format() {
        let r = Record {
            at: 0,
            secs: 0.2,
            host: Ipv4Addr::new(10, 0, 1, 2).into(),
            bytes: 20971520,
            path: "/pub/my file.bin".into(),
            binary: true,
            incoming: false,
            user: "anonymous".into(),
            complete: true,
        };
        let l = r.line();
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 18, "{l}");
        assert_eq!(&f[5..], ["1", "10.0.1.2", "20971520", "/pub/my_file.bin", "b", "_", "o", "a", "anonymous", "ftp", "0", "*", "c"]);
        assert!(DAYS.contains(&f[0]) && MONTHS.contains(&f[1]));
        let r = Record { incoming: true, user: "alice".into(), complete: false, binary: false, secs: 2.5, ..r };
        assert!(r.line().ends_with(" 3 10.0.1.2 20971520 /pub/my_file.bin a _ i r alice ftp 0 * i"), "{}", r.line());
    }
}
