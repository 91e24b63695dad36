//! Freshness checks: ftpgate asks the server itself, on a control connection of its own under
//! the client's login, for a file's modification time and size: with one `MLST` (RFC 3659)
//! where the server has it, else with `MDTM` and `SIZE`. Connections are kept per login and reused
//! while the server keeps them open; every step is bounded by a timeout, and any failure
//! answers [`Answer::Unknown`] (which never gives a hit).
//!
//! These connections take sessions at the server from the gateway's address — behind NAT the
//! same address as every LAN client, and servers limit sessions per address (vsftpd
//! `max_per_ip`, proftpd `MaxClientsPerHost`, pure-ftpd `-C`). So they never cost a client its
//! session: at most [`Limits::per_login`] at once per server and login (a check that cannot get
//! one within half its timeout answers `Unknown`: the client's RETR goes to the server
//! unchanged), idle ones are closed after [`Limits::idle`], and none is opened for
//! [`Limits::backoff`] after the server answered `421`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{mdtm_answer, mlst_answer, size_answer, Answer, Login, MlstAnswer};
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

/// After this, a server that had no MLST is tried with it again.
const MLST_RETRY: Duration = Duration::from_secs(600);

/// How many connections of its own ftpgate keeps at a server, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections at once per server and login (in use or idle).
    pub per_login: usize,
    /// An idle connection is closed after this.
    pub idle: Duration,
    /// After a `421` from a server, no connection to it for this long.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { per_login: 2, idle: Duration::from_secs(2), backoff: Duration::from_secs(10) }
    }
}

struct Joined {
    facts: Option<Facts>,
    waiting: usize,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Login, Vec<Conn>>,
    busy: HashMap<Login, usize>,
    /// Servers that answered 421, until when they are left alone.
    refused: HashMap<SocketAddr, Instant>,
    /// Questions not yet sent to the server, by login and path: a check for the same file
    /// joins one of these instead of asking again (its answer is younger than its request).
    unsent: HashMap<(Login, String), u64>,
    /// Questions that others joined: the answer once there is one, and how many joined
    /// checks have not taken it yet.
    answers: HashMap<u64, Joined>,
    next_ask: u64,
    /// Whether a server answers a check with one MLST (RFC 3659) instead of MDTM and SIZE,
    /// and since when that is known; absent until it was asked.
    mlst: HashMap<SocketAddr, (bool, Instant)>,
}

impl Pool {
    fn count(&self, login: &Login) -> usize {
        self.busy.get(login).copied().unwrap_or(0) + self.idle.get(login).map_or(0, Vec::len)
    }
    /// Takes out the idle connections past `idle` (to be closed outside the lock).
    fn expired(&mut self, idle: Duration) -> Vec<Conn> {
        let mut out = Vec::new();
        for list in self.idle.values_mut() {
            let (old, keep): (Vec<Conn>, Vec<Conn>) = list.drain(..).partition(|c| c.idle_since.elapsed() >= idle);
            *list = keep;
            out.extend(old);
        }
        self.idle.retain(|_, l| !l.is_empty());
        self.refused.retain(|_, until| *until > Instant::now());
        out
    }
}

pub struct Checker {
    timeout: Duration,
    limits: Limits,
    /// The scheduling of the threads that ask (see [`Checker::ask_at_priority`]): real-time
    /// priority and nice, as the relay's threads; `None` leaves them as they start.
    priority: Option<(u8, i8)>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

/// A place for one connection at a server, given back on drop.
struct Slot<'a> {
    checker: &'a Checker,
    login: Login,
    /// A connection to put back into the pool when the slot is given back.
    keep: Option<Conn>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut pool = self.checker.lock();
        if let Some(n) = pool.busy.get_mut(&self.login) {
            *n = n.saturating_sub(1);
        }
        if let Some(mut c) = self.keep.take() {
            c.idle_since = Instant::now();
            pool.idle.entry(self.login.clone()).or_default().push(c);
        }
        self.checker.freed.notify_all();
    }
}

fn quit_all(conns: Vec<Conn>) {
    for mut c in conns {
        let _ = send(&mut c, "QUIT\r\n");
    }
}

impl Checker {
    /// A checker with the default [`Limits`]; a thread of its own closes idle connections.
    pub fn new(timeout: Duration) -> Arc<Checker> {
        Checker::with_limits(timeout, Limits::default())
    }

    pub fn with_limits(timeout: Duration, limits: Limits) -> Arc<Checker> {
        Checker::build(timeout, limits, None)
    }

    /// A checker whose asking threads run at the relay's scheduling (`rt`, `nice`: see
    /// [`crate::sched::lower_priority`]).
    pub fn with_priority(timeout: Duration, limits: Limits, rt: u8, nice: i8) -> Arc<Checker> {
        Checker::build(timeout, limits, Some((rt, nice)))
    }

    fn build(timeout: Duration, limits: Limits, priority: Option<(u8, i8)>) -> Arc<Checker> {
        let c = Arc::new(Checker { timeout, limits, priority, pool: Mutex::default(), freed: Condvar::new() });
        let weak: Weak<Checker> = Arc::downgrade(&c);
        let _ = std::thread::Builder::new().name("ftpgate-checks".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(c) = weak.upgrade() else { return };
            let old = c.lock().expired(c.limits.idle);
            quit_all(old);
        });
        c
    }

    /// Sets the calling thread (one about to ask, or to log in ahead) to the checker's
    /// scheduling. A held RETR waits for its answer: asking at normal priority, behind a burst
    /// of client processes on the same cores, each of its two round trips waited for the CPU
    /// (measured: 19 ms p50, 57 ms p90 for round trips the server answered in 0.05 ms).
    pub fn ask_at_priority(&self) {
        if let Some((rt, nice)) = self.priority {
            crate::sched::lower_priority(rt, nice);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a connection in under `login` ahead of a check that is likely to follow (a client
    /// of a server it has cached files of is preparing a data connection), so that the check
    /// costs the MDTM and SIZE round trips only. Only into a free place (never waits, never
    /// beyond the per-login limit, not while the server backs off); the connection idles in
    /// the pool and closes after the idle time if no check comes.
    pub fn warm(self: &Arc<Self>, login: Login) {
        let me = self.clone();
        let init = {
            let me = me.clone();
            move || me.ask_at_priority()
        };
        let _ = crate::sched::spawn_prompt("ftpgate-check", init, move || {
            let Some((mut slot, pooled)) = me.slot_within(&login, Duration::ZERO) else { return };
            slot.keep = match pooled {
                Some(c) => Some(c),
                None => me.connect(&login).ok(),
            };
        });
    }

    /// A place for a connection under `login`, with an idle connection if there is one;
    /// `None` when the server is backing off or no place frees up within half the timeout.
    fn slot(&self, login: &Login) -> Option<(Slot<'_>, Option<Conn>)> {
        self.slot_within(login, self.timeout / 2)
    }

    fn slot_within(&self, login: &Login, wait: Duration) -> Option<(Slot<'_>, Option<Conn>)> {
        let deadline = Instant::now() + wait;
        let mut pool = self.lock();
        loop {
            if pool.refused.get(&login.server).is_some_and(|t| *t > Instant::now()) {
                return None;
            }
            let idle = pool.idle.get_mut(login).and_then(Vec::pop);
            if idle.is_some() || pool.count(login) < self.limits.per_login.max(1) {
                *pool.busy.entry(login.clone()).or_default() += 1;
                return Some((Slot { checker: self, login: login.clone(), keep: None }, idle));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            pool = self.freed.wait_timeout(pool, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Connections of ftpgate's own open at `server` (in use or idle), for tests and status.
    pub fn open_at(&self, server: SocketAddr) -> usize {
        let pool = self.lock();
        let busy: usize = pool.busy.iter().filter(|(l, _)| l.server == server).map(|(_, n)| n).sum();
        busy + pool.idle.iter().filter(|(l, _)| l.server == server).map(|(_, v)| v.len()).sum::<usize>()
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
        let Some((_slot, idle)) = self.slot(login) else { return Facts::unknown() };
        // an idle connection is older than the download: safe to use, then closed
        let mut first = idle;
        let mut once = || {
            let c = match first.take() {
                Some(c) => Ok(c),
                None => self.connect(login),
            };
            c.and_then(|mut c| {
                let f = self.ask(&mut c, login.server, path);
                let _ = send(&mut c, "QUIT\r\n");
                f
            })
        };
        once().or_else(|_| once()).unwrap_or_else(|_| Facts::unknown())
    }

    /// Asks for `path`'s MDTM and SIZE, reusing an idle connection of the same login. A pooled
    /// connection that fails is replaced once.
    ///
    /// Checks of the same file under the same login coalesce: one that finds another's question
    /// still waiting for a connection waits for its answer instead of taking a connection of its
    /// own. The question goes out after both asked, so its answer is as fresh as either needs —
    /// a burst of clients fetching one file costs the server a few round trips, not one each.
    pub fn check(&self, login: &Login, path: &str) -> Facts {
        if !sendable(path) {
            return Facts::unknown();
        }
        let question = (login.clone(), path.to_string());
        let mut pool = self.lock();
        if let Some(&id) = pool.unsent.get(&question) {
            pool.answers.entry(id).or_insert(Joined { facts: None, waiting: 0 }).waiting += 1;
            return self.await_answer(pool, id);
        }
        let id = pool.next_ask;
        pool.next_ask += 1;
        pool.unsent.insert(question.clone(), id);
        drop(pool);
        let facts = self.ask_now(login, path, &question, id);
        let mut pool = self.lock();
        if let Some(j) = pool.answers.get_mut(&id) {
            if j.waiting == 0 {
                pool.answers.remove(&id);
            } else {
                j.facts = Some(facts.clone());
                self.freed.notify_all();
            }
        }
        facts
    }

    /// Waits (up to the timeout) for the answer to question `id`, which this check joined.
    fn await_answer(&self, mut pool: MutexGuard<'_, Pool>, id: u64) -> Facts {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(j) = pool.answers.get_mut(&id) else { return Facts::unknown() };
            if j.facts.is_some() || left.is_zero() {
                j.waiting -= 1;
                let facts = j.facts.clone().unwrap_or_else(Facts::unknown);
                if j.waiting == 0 && j.facts.is_some() {
                    pool.answers.remove(&id);
                }
                return facts;
            }
            pool = self.freed.wait_timeout(pool, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Takes a connection and asks; the question stops taking joiners once a connection is
    /// had (just before it is sent) or none could be (it never will be).
    fn ask_now(&self, login: &Login, path: &str, question: &(Login, String), id: u64) -> Facts {
        let got = self.slot(login);
        {
            let mut pool = self.lock();
            if pool.unsent.get(question) == Some(&id) {
                pool.unsent.remove(question);
            }
        }
        let Some((mut slot, pooled)) = got else { return Facts::unknown() };
        let attempt = |c: Option<Conn>| -> io::Result<(Conn, Facts)> {
            let mut c = match c {
                Some(c) => c,
                None => self.connect(login)?,
            };
            let f = self.ask(&mut c, login.server, path)?;
            Ok((c, f))
        };
        let result = match pooled {
            Some(c) => attempt(Some(c)).or_else(|_| attempt(None)),
            None => attempt(None),
        };
        match result {
            Ok((c, f)) => {
                slot.keep = Some(c); // idle in the pool until reused or closed
                f
            }
            Err(_) => Facts::unknown(),
        }
    }

    /// Downloads `path` (PASV, binary) into `out` on a connection of its own under `login`, at
    /// the pace `out` takes it: the second try of a capture whose disk could not keep up with
    /// the client. Obeys the same server-slot rules as the checks (no slot: an error, nothing
    /// fetched). The data connection goes to the server's own address whatever the 227 names.
    /// The connection is closed afterwards, not pooled.
    pub fn fetch(&self, login: &Login, path: &str, out: &mut impl Write) -> io::Result<u64> {
        if !sendable(path) {
            return Err(io::Error::other("path cannot be sent"));
        }
        let Some((_slot, idle)) = self.slot(login) else {
            return Err(io::Error::other("no connection of ftpgate's own free at the server"));
        };
        let mut c = match idle {
            Some(c) => c,
            None => self.connect(login)?,
        };
        let mut go = || -> io::Result<u64> {
            // PASV names IPv4 endpoints only: an IPv6 server is asked with EPSV (RFC 2428)
            let (cmd, parse): (&str, crate::proto::ftp::Parser) =
                if login.server.is_ipv6() { ("EPSV", crate::proto::ftp::parse_229) } else { ("PASV", crate::proto::ftp::parse_227) };
            send(&mut c, &format!("{cmd}\r\n"))?;
            let (code, text) = reply(&mut c)?;
            let ep = parse(format!("{code} {text}\r\n").as_bytes()).map_err(|e| io::Error::other(format!("{cmd} answered {code} {text} ({e:?})")))?;
            // the data connection goes to the control connection's server, whatever a 227 names
            let to = SocketAddr::new(login.server.ip(), ep.port);
            let mut data = TcpStream::connect_timeout(&to, self.timeout)?;
            data.set_read_timeout(Some(self.timeout.max(Duration::from_secs(30))))?;
            send(&mut c, &format!("RETR {}\r\n", super::server_path(path)))?;
            let (code, text) = reply(&mut c)?;
            if code != 150 && code != 125 {
                return Err(io::Error::other(format!("RETR answered {code} {text}")));
            }
            let n = io::copy(&mut data, out)?;
            let (code, text) = reply(&mut c)?;
            if code != 226 && code != 250 {
                return Err(io::Error::other(format!("RETR ended with {code} {text}")));
            }
            Ok(n)
        };
        let r = go();
        let _ = send(&mut c, "QUIT\r\n");
        r
    }

    /// Asks `server` about `path` on `c`: with one `MLST` where the server has it (one round
    /// trip instead of two: a hit's RETR is held for this), else with `MDTM` and `SIZE`. Which
    /// one a server takes is learnt on its first check and kept.
    fn ask(&self, c: &mut Conn, server: SocketAddr, path: &str) -> io::Result<Facts> {
        let known = self.mlst_known(server);
        if known != Some(false) {
            match ask_mlst(c, path)? {
                MlstAnswer::Facts { mdtm, size } => {
                    if known.is_none() && self.lock().mlst.insert(server, (true, Instant::now())).is_none() {
                        crate::log!("cache: {server} answers checks with MLST");
                    }
                    return Ok(Facts { mdtm: Answer::Ok(mdtm), size: Answer::Ok(size) });
                }
                MlstAnswer::Unsupported => {
                    if self.lock().mlst.insert(server, (false, Instant::now())).is_none_or(|(had, _)| had) {
                        crate::log!("cache: {server} has no MLST that gives a file's time and size; checks ask MDTM and SIZE");
                    }
                }
                MlstAnswer::Inconclusive => {}
            }
        }
        ask_mdtm_size(c, path)
    }

    /// What `server`'s MLST is known to do; a "no" is forgotten after [`MLST_RETRY`] (the
    /// server at that address may have been replaced by one that has it).
    fn mlst_known(&self, server: SocketAddr) -> Option<bool> {
        let mut pool = self.lock();
        match pool.mlst.get(&server).copied() {
            Some((false, since)) if since.elapsed() >= MLST_RETRY => {
                pool.mlst.remove(&server);
                None
            }
            other => other.map(|(has, _)| has),
        }
    }

    /// The server refused a session (`421`): leave it alone for a while.
    fn back_off(&self, server: SocketAddr) {
        let until = Instant::now() + self.limits.backoff;
        self.lock().refused.insert(server, until);
        crate::log!("cache: {server} refused a connection of ftpgate's own (421); no checks there for {} s", self.limits.backoff.as_secs());
    }

    fn connect(&self, login: &Login) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&login.server, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        let mut c = Conn { r: BufReader::new(s.try_clone()?), w: s, idle_since: Instant::now() };
        let (code, text) = reply(&mut c)?;
        if code == 421 {
            self.back_off(login.server);
        }
        if code != 220 {
            return Err(io::Error::other(format!("expected 220, got {code} {text}")));
        }
        send(&mut c, &format!("USER {}\r\n", login.user))?;
        let (code, _) = reply(&mut c)?;
        if code == 421 {
            self.back_off(login.server);
        }
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
    let (code, lines) = reply_lines(c)?;
    let last = lines.last().map_or(&[][..], Vec::as_slice);
    let text = String::from_utf8_lossy(crate::proto::ftp::body(last).get(3..).unwrap_or_default().trim_ascii()).into_owned();
    Ok((code, text))
}

/// Reads one (possibly multi-line) reply: its code and all its lines, the last one last.
fn reply_lines(c: &mut Conn) -> io::Result<(u16, Vec<Vec<u8>>)> {
    let mut open: Option<u16> = None;
    let mut lines = Vec::new();
    for _ in 0..1000 {
        let mut buf = Vec::new();
        let n = c.r.by_ref().take(4096).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        let code = reply_code(&buf);
        lines.push(buf);
        let Some((code, last)) = code else { continue };
        match open {
            Some(o) if code != o || !last => continue,
            None if !last => {
                open = Some(code);
                continue;
            }
            _ => {}
        }
        return Ok((code, lines));
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

/// Asks MDTM and SIZE, one at a time: pyftpdlib stops answering a session that pipelined
/// commands earlier.
fn ask_mdtm_size(c: &mut Conn, path: &str) -> io::Result<Facts> {
    let path = super::server_path(path);
    send(c, &format!("MDTM {path}\r\n"))?;
    let (mc, mt) = reply(c)?;
    send(c, &format!("SIZE {path}\r\n"))?;
    let (sc, st) = reply(c)?;
    Ok(Facts { mdtm: mdtm_answer(mc, &mt), size: size_answer(sc, &st) })
}

fn ask_mlst(c: &mut Conn, path: &str) -> io::Result<MlstAnswer> {
    send(c, &format!("MLST {}\r\n", super::server_path(path)))?;
    let (code, lines) = reply_lines(c)?;
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    Ok(mlst_answer(code, &lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str) -> Login {
        Login { server: "10.0.2.2:21".parse().unwrap(), user: user.into(), pass: String::new() }
    }

    #[test]
    fn connections_per_login_are_limited_and_freed() {
        let limits = Limits { per_login: 1, idle: Duration::from_secs(2), backoff: Duration::from_secs(10) };
        let c = Checker::with_limits(Duration::from_millis(200), limits);
        let a = c.slot(&login("a")).expect("first slot");
        assert_eq!(c.open_at(login("a").server), 1);
        let t = Instant::now();
        assert!(c.slot(&login("a")).is_none(), "second slot for the same login");
        assert!(t.elapsed() >= Duration::from_millis(90), "gave up before half the timeout");
        // another login has its own
        let b = c.slot(&login("b")).expect("other login");
        drop(b);
        // freed while another waits: the waiter gets it
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || c2.slot(&login("a")).is_some());
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        assert!(waiter.join().unwrap());
        assert_eq!(c.open_at(login("a").server), 0);
    }

    #[test]
    fn checks_of_one_file_share_a_question() {
        // a server without MLST, answering MDTM after 100 ms
        let (server, heard) = scripted_server(|l| match l.get(..4).unwrap_or_default() {
            "MDTM" => {
                std::thread::sleep(Duration::from_millis(100));
                "213 20260101000000\r\n".to_string()
            }
            "SIZE" => "213 42\r\n".to_string(),
            _ => "502 not implemented\r\n".to_string(),
        });
        let asked = || verbs(&heard, "MDTM");
        let limits = Limits { per_login: 1, ..Limits::default() };
        let c = Checker::with_limits(Duration::from_secs(5), limits);
        let l = Login { server, user: "anonymous".into(), pass: String::new() };
        let want = facts_42();
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let (c, l) = (c.clone(), l.clone());
                std::thread::spawn(move || c.check(&l, "/f"))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), want);
        }
        // one question in flight, the rest join the one waiting behind it
        let n = asked();
        assert!(n <= 3, "{n} MDTMs for 20 checks of one file");
        // another file is its own question; a later check asks again
        assert_eq!(c.check(&l, "/g"), want);
        assert_eq!(c.check(&l, "/f"), want);
        assert_eq!(asked(), n + 2);
        assert!(c.lock().answers.is_empty() && c.lock().unsent.is_empty());
    }

    /// A server answering each command line with `answer(line)`; records the lines it got.
    fn scripted_server(answer: fn(&str) -> String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let _ = w.write_all(b"220 hi\r\n");
                    for line in BufReader::new(s).lines().map_while(Result::ok) {
                        h.lock().unwrap().push(line.clone());
                        let a = match line.get(..4).unwrap_or_default() {
                            "USER" => "230 ok\r\n".to_string(),
                            "TYPE" => "200 ok\r\n".to_string(),
                            _ => answer(&line),
                        };
                        let _ = w.write_all(a.as_bytes());
                    }
                });
            }
        });
        (addr, heard)
    }

    fn verbs(heard: &Mutex<Vec<String>>, verb: &str) -> usize {
        heard.lock().unwrap().iter().filter(|l| l.starts_with(verb)).count()
    }

    /// A checker of anonymous logins at a scripted server; what the server heard.
    fn scripted_checker(answer: fn(&str) -> String) -> (Arc<Checker>, Login, Arc<Mutex<Vec<String>>>) {
        let (server, heard) = scripted_server(answer);
        let c = Checker::with_limits(Duration::from_secs(5), Limits::default());
        (c, Login { server, user: "anonymous".into(), pass: String::new() }, heard)
    }

    /// What the scripted servers say of every file.
    fn facts_42() -> Facts {
        Facts { mdtm: Answer::Ok("20260101000000".into()), size: Answer::Ok(42) }
    }

    #[test]
    fn a_server_with_mlst_is_asked_once_per_check() {
        let (c, l, heard) = scripted_checker(|l| match l.get(..4).unwrap_or_default() {
            "MLST" => {
                format!("250-Start of list for {p}\r\n modify=20260101000000;perm=r;size=42;type=file; {p}\r\n250 End of list\r\n", p = &l[5..])
            }
            _ => "500 ask MLST\r\n".to_string(),
        });
        let want = facts_42();
        assert_eq!(c.check(&l, "/f"), want);
        assert_eq!(c.check(&l, "/a b"), want);
        assert_eq!(c.check_once(&l, "/f"), want);
        assert_eq!((verbs(&heard, "MLST"), verbs(&heard, "MDTM"), verbs(&heard, "SIZE")), (3, 0, 0));
        assert!(heard.lock().unwrap().contains(&"MLST /a b".to_string()));
    }

    #[test]
    fn a_server_without_mlst_is_asked_mdtm_and_size_after_the_first_try() {
        let (c, l, heard) = scripted_checker(|l| match l.get(..4).unwrap_or_default() {
            "MDTM" => "213 20260101000000\r\n".to_string(),
            "SIZE" => "213 42\r\n".to_string(),
            _ => "500 Unknown command.\r\n".to_string(),
        });
        let want = facts_42();
        for path in ["/f", "/g", "/f"] {
            assert_eq!(c.check(&l, path), want);
        }
        assert_eq!((verbs(&heard, "MLST"), verbs(&heard, "MDTM"), verbs(&heard, "SIZE")), (1, 3, 3));
    }

    #[test]
    fn a_server_without_mlst_is_tried_again_after_a_while() {
        let c = Checker::with_limits(Duration::from_secs(1), Limits::default());
        let s = login("a").server;
        c.lock().mlst.insert(s, (false, Instant::now()));
        assert_eq!(c.mlst_known(s), Some(false));
        let Some(long_ago) = Instant::now().checked_sub(MLST_RETRY) else { return };
        c.lock().mlst.insert(s, (false, long_ago));
        assert_eq!(c.mlst_known(s), None);
        c.lock().mlst.insert(s, (true, long_ago));
        assert_eq!(c.mlst_known(s), Some(true));
    }

    #[test]
    fn an_mlst_refusal_is_not_taken_for_a_gone_file() {
        // a server that refuses MLST for a file MDTM and SIZE still answer for
        let (c, l, heard) = scripted_checker(|l| match l.get(..4).unwrap_or_default() {
            "MLST" => "550 Permission denied\r\n".to_string(),
            "MDTM" => "213 20260101000000\r\n".to_string(),
            _ => "213 42\r\n".to_string(),
        });
        let want = facts_42();
        assert_eq!(c.check(&l, "/f"), want);
        assert_eq!(c.check(&l, "/f"), want);
        // asked again each time: a 550 says nothing about the server's MLST in general
        assert_eq!((verbs(&heard, "MLST"), verbs(&heard, "MDTM")), (2, 2));
    }

    #[test]
    fn no_connection_while_the_server_backs_off() {
        let c = Checker::with_limits(Duration::from_millis(100), Limits::default());
        c.back_off(login("a").server);
        assert!(c.slot(&login("a")).is_none());
        assert_eq!(c.check(&login("a"), "/f"), Facts::unknown());
    }
}
