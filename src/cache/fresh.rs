//! Freshness checks: ftpgate asks the server itself, on a control connection of its own under
//! the client's login, for a file's MDTM and SIZE. Connections are kept per login and reused
//! while the server keeps them open; every step is bounded by a timeout, and any failure
//! answers [`Answer::Unknown`] (which never gives a hit).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{mdtm_answer, size_answer, Answer, Login};
use crate::proto::ftp::reply_code;

/// What the server said about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub mdtm: Answer<String>,
    pub size: Answer<u64>,
}

impl Facts {
    fn unknown() -> Facts {
        Facts { mdtm: Answer::Unknown, size: Answer::Unknown }
    }
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    idle_since: Instant,
}

pub struct Checker {
    timeout: Duration,
    pool: Mutex<HashMap<Login, Vec<Conn>>>,
}

/// Idle connections older than this are not reused (servers close idle sessions).
const KEEP: Duration = Duration::from_secs(60);

impl Checker {
    pub fn new(timeout: Duration) -> Checker {
        Checker { timeout, pool: Mutex::new(HashMap::new()) }
    }

    /// Asks for `path`'s MDTM and SIZE on a connection of its own, closed afterwards.
    ///
    /// Used right after a download, and tried twice: pyftpdlib 1.5 closes a stale file
    /// descriptor number when a session that used active mode ends, and a connection it
    /// accepted just before (ours) can be that number — it then never answers again
    /// (giampaolo/pyftpdlib PR #657). Such a connection is not pooled.
    pub fn check_once(&self, login: &Login, path: &str) -> Facts {
        if !sendable(path) {
            return Facts::unknown();
        }
        let once = || {
            self.connect(login).and_then(|mut c| {
                let f = ask(&mut c, path);
                let _ = send(&mut c, "QUIT\r\n");
                f
            })
        };
        once().or_else(|_| once()).unwrap_or_else(|_| Facts::unknown())
    }

    /// Asks for `path`'s MDTM and SIZE, reusing an idle connection of the same login. A pooled
    /// connection that fails is replaced once.
    pub fn check(&self, login: &Login, path: &str) -> Facts {
        if !sendable(path) {
            return Facts::unknown();
        }
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let list = pool.entry(login.clone()).or_default();
            list.retain(|c| c.idle_since.elapsed() < KEEP);
            list.pop()
        };
        let attempt = |c: Option<Conn>| -> io::Result<(Conn, Facts)> {
            let mut c = match c {
                Some(c) => c,
                None => self.connect(login)?,
            };
            let f = ask(&mut c, path)?;
            Ok((c, f))
        };
        let result = match pooled {
            Some(c) => attempt(Some(c)).or_else(|_| attempt(None)),
            None => attempt(None),
        };
        match result {
            Ok((mut c, f)) => {
                c.idle_since = Instant::now();
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                let list = pool.entry(login.clone()).or_default();
                if list.len() < 4 {
                    list.push(c);
                }
                f
            }
            Err(_) => Facts::unknown(),
        }
    }

    fn connect(&self, login: &Login) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(login.server), self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        let mut c = Conn { r: BufReader::new(s.try_clone()?), w: s, idle_since: Instant::now() };
        expect(&mut c, 220)?;
        send(&mut c, &format!("USER {}\r\n", login.user))?;
        let (code, _) = reply(&mut c)?;
        if code == 331 {
            send(&mut c, &format!("PASS {}\r\n", login.pass))?;
            expect(&mut c, 230)?;
        } else if code != 230 {
            return Err(io::Error::other(format!("login refused ({code})")));
        }
        send(&mut c, "TYPE I\r\n")?;
        expect(&mut c, 200)?;
        Ok(c)
    }
}

/// A path that can go into a command line (no CR, LF or NUL to smuggle a second command).
fn sendable(path: &str) -> bool {
    !path.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn send(c: &mut Conn, line: &str) -> io::Result<()> {
    c.w.write_all(line.as_bytes())
}

/// Reads one (possibly multi-line) reply: its code and the text of its last line.
fn reply(c: &mut Conn) -> io::Result<(u16, String)> {
    let mut open: Option<u16> = None;
    let mut buf = Vec::new();
    for _ in 0..1000 {
        buf.clear();
        let n = c.r.by_ref().take(4096).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        let Some((code, last)) = reply_code(&buf) else { continue };
        match open {
            Some(o) if code != o || !last => continue,
            None if !last => {
                open = Some(code);
                continue;
            }
            _ => {}
        }
        let text = String::from_utf8_lossy(crate::proto::ftp::body(&buf)[3..].trim_ascii()).into_owned();
        return Ok((code, text));
    }
    Err(io::Error::other("reply too long"))
}

fn expect(c: &mut Conn, want: u16) -> io::Result<()> {
    let (code, text) = reply(c)?;
    if code == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("expected {want}, got {code} {text}")))
    }
}

fn ask(c: &mut Conn, path: &str) -> io::Result<Facts> {
    let path = super::server_path(path);
    // one at a time: pyftpdlib stops answering a session that pipelined commands earlier
    send(c, &format!("MDTM {path}\r\n"))?;
    let (mc, mt) = reply(c)?;
    send(c, &format!("SIZE {path}\r\n"))?;
    let (sc, st) = reply(c)?;
    Ok(Facts { mdtm: mdtm_answer(mc, &mt), size: size_answer(sc, &st) })
}
