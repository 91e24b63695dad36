//! The explicit-proxy shell: listeners that FTP clients configured with a proxy connect to.
//!
//! One thread polls every listener and every connection. The login dialogue is
//! [`ProxyLogin`]'s; once the server is connected, the two byte streams are fed to an ordinary
//! [`Session`](crate::proto::Session) as in-order segments, so PORT/EPRT/PASV/EPSV go through the same relay, the same
//! cache and the same security rules as intercepted sessions. What would block (a slow password
//! hash, name resolution and connect, a freshness check) runs on a short-lived thread and
//! answers through a channel and a self-pipe.

use core::net::{IpAddr, SocketAddr};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::driver::{handle_events, Answer, Checks, Wake};
use crate::log;
use crate::proto::explicit::{Access, Denied, Fed, Handoff, ProxyLogin, Step, Streams, Target, MAX_LOGIN_LINE};
use crate::proto::{Dir, Via};
use crate::relay::{transparent_listener, CacheCtx, Relay};

mod connect;
mod users;
use connect::{connect, ConnectError};
use users::Throttle;
pub use users::{hash_password, BadLine, Reload, Users, UsersError};

/// A connection that has not reached its server within this long is closed.
const LOGIN_IDLE: Duration = Duration::from_secs(120);
/// Bytes buffered for one side before reading from the other stops.
const MAX_BUFFERED: usize = 256 << 10;

pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    pub users: Option<Users>,
    pub access: Access,
    /// What SIGHUP may replace while running.
    pub reload: Reload,
    pub connect_timeout: Duration,
    /// A connected session idle this long is closed.
    pub idle: Duration,
    pub max_sessions: usize,
    /// Where `ftpgate status` reads the sessions.
    pub board: Option<Arc<crate::status::Board>>,
    /// The operator's policy (replaced on SIGHUP, for new sessions).
    pub policy: crate::policy::Shared,
}

/// What a polled descriptor is.
#[derive(Clone, Copy)]
enum Ready {
    Wake,
    Listener(usize),
    Client(u64),
    Server(u64),
}

/// What the helper threads report.
enum Done {
    Verified {
        conn: u64,
        ok: bool,
    },
    Connected {
        conn: u64,
        target: Target,
        r: Result<(TcpStream, Vec<u8>), ConnectError>,
    },
    /// A data connection ended (a held final reply may go on).
    DataEnded {
        id: crate::proto::DataId,
    },
}

/// The server side of a connected session, and the session between.
struct Up {
    server: TcpStream,
    addr: SocketAddr,
    st: Streams,
    to_server: Vec<u8>,
    client_eof: bool,
    server_eof: bool,
}

struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    login: ProxyLogin,
    /// Client bytes not yet consumed by the login dialogue.
    buf: Vec<u8>,
    to_client: Vec<u8>,
    up: Option<Up>,
    /// Close once `to_client` is written.
    closing: bool,
    last: Instant,
}

impl Conn {
    fn who(&self) -> String {
        match &self.up {
            Some(u) => format!("proxy {} -> {}", self.peer, u.addr),
            None => format!("proxy {}", self.peer),
        }
    }
}

struct Proxy {
    cfg: ProxyConfig,
    listeners: Vec<TcpListener>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    relay: Relay,
    throttle: Arc<Throttle>,
    users: Option<Arc<Users>>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    checks: Checks<u64>,
    wake: Arc<Wake>,
}

/// Binds the listeners (errors here stop `run` with a clear message) and starts the loop.
pub fn spawn(mut cfg: ProxyConfig, mut relay: Relay, cache: Option<Arc<CacheCtx>>) -> Result<()> {
    let mut listeners = Vec::new();
    for a in &cfg.listen {
        // transparent like the data listeners: the gateway's `-m socket --transparent` rule
        // lets clients reach it through a firewall whose INPUT is closed
        let l = transparent_listener(*a, 1024).with_context(|| format!("--listen {a}: cannot listen"))?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let (tx, rx) = channel();
    let wake = Arc::new(Wake::new().context("cannot create a pipe")?);
    let (dtx, w) = (tx.clone(), wake.clone());
    relay.set_notify(Arc::new(move |id| {
        let _ = dtx.send(Done::DataEnded { id });
        w.notify();
    }));
    let users = cfg.users.take().map(Arc::new);
    let p = Proxy {
        cfg,
        listeners,
        conns: HashMap::new(),
        next_conn: 1,
        relay,
        throttle: Arc::default(),
        users,
        tx,
        rx,
        checks: Checks::new(wake.clone(), cache),
        wake,
    };
    for a in &p.cfg.listen {
        log!("explicit proxy listening on {a}");
    }
    std::thread::Builder::new().name("ftpgate-proxy".into()).spawn(move || p.run())?;
    Ok(())
}

/// An IPv4 peer of a dual-stack socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn write_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there: `Ok(None)` at end of stream.
fn read_some(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Proxy {
    fn run(mut self) {
        let mut last_publish = Instant::now();
        loop {
            self.apply_reload();
            let now = Instant::now();
            let mut fds: Vec<PollFd> = Vec::new();
            let mut what: Vec<Ready> = Vec::new();
            fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
            what.push(Ready::Wake);
            for (i, l) in self.listeners.iter().enumerate() {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                what.push(Ready::Listener(i));
            }
            let mut timeout = crate::status::PUBLISH_EVERY; // the status board stays current
            for (&id, c) in &self.conns {
                let mut ev = PollFlags::empty();
                let reading = !c.closing
                    && !c.login.waiting()
                    && c.up.as_ref().is_none_or(|u| u.st.session.pending_check().is_none() && !u.client_eof && u.to_server.len() < MAX_BUFFERED);
                if reading {
                    ev |= PollFlags::POLLIN;
                }
                if !c.to_client.is_empty() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.client.as_fd(), ev));
                what.push(Ready::Client(id));
                if let Some(u) = &c.up {
                    let mut ev = PollFlags::empty();
                    if !u.server_eof && c.to_client.len() < MAX_BUFFERED {
                        ev |= PollFlags::POLLIN;
                    }
                    if !u.to_server.is_empty() {
                        ev |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(u.server.as_fd(), ev));
                    what.push(Ready::Server(id));
                    if let Some(deadline) = u.st.session.poll_timeout() {
                        timeout = timeout.min(deadline.saturating_duration_since(now));
                    }
                }
            }
            let ms = u16::try_from(timeout.as_millis() + 1).unwrap_or(u16::MAX);
            if poll(&mut fds, PollTimeout::from(ms)).is_err() {
                continue; // EINTR
            }
            let ready: Vec<(Ready, PollFlags)> =
                fds.iter().zip(&what).filter_map(|(p, &r)| p.revents().filter(|e| !e.is_empty()).map(|e| (r, e))).collect();
            drop(fds);
            let now = Instant::now();
            for (r, revents) in ready {
                match r {
                    Ready::Wake => {
                        self.wake.drain();
                        self.reports(now);
                    }
                    Ready::Listener(i) => self.accept(i, now),
                    Ready::Client(id) => self.client_ready(id, revents, now),
                    Ready::Server(id) => self.server_ready(id, revents, now),
                }
            }
            self.expire(now);
            self.publish(now, &mut last_publish);
        }
    }

    fn publish(&self, now: Instant, last: &mut Instant) {
        let Some(board) = &self.cfg.board else { return };
        if now.duration_since(*last) < crate::status::PUBLISH_EVERY {
            return;
        }
        *last = now;
        let lines = self
            .conns
            .values()
            .map(|c| match &c.up {
                Some(u) => crate::status::SessionLine {
                    client: c.peer,
                    server: u.addr,
                    user: u.st.session.user().map(str::to_string),
                    state: u.st.session.state(),
                },
                None => crate::status::SessionLine {
                    client: c.peer,
                    server: c.local,
                    user: c.login.proxy_user().map(|u| format!("proxy:{u}")),
                    state: "proxy login",
                },
            })
            .collect();
        board.publish(true, lines);
    }

    /// Takes up what SIGHUP re-read, for the sessions that start from now on.
    fn apply_reload(&mut self) {
        let reloaded = self.cfg.reload.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((users, access)) = reloaded {
            self.users = users.map(Arc::new);
            self.cfg.access = access;
            log!("explicit proxy: proxy users and access rules reloaded (for new sessions)");
        }
    }

    fn accept(&mut self, i: usize, now: Instant) {
        self.apply_reload();
        loop {
            let (s, peer) = match self.listeners[i].accept() {
                Ok((s, a)) => (s, canonical(a)),
                Err(_) => return,
            };
            let Ok(local) = s.local_addr().map(canonical) else { continue };
            let _ = s.set_nonblocking(true);
            let _ = s.set_nodelay(true);
            let login = ProxyLogin::new(self.users.is_some());
            let mut c = Conn { client: s, peer, local, login, buf: Vec::new(), to_client: Vec::new(), up: None, closing: false, last: now };
            if let Err(why) = self.cfg.access.client(peer.ip()) {
                crate::metrics::m().refusal("proxy_client");
                crate::warn!("proxy {peer}: refused: {why}");
                c.to_client.extend_from_slice(b"421 Not allowed to use this proxy from your address\r\n");
                c.closing = true;
            } else if self.conns.len() >= self.cfg.max_sessions {
                crate::metrics::m().refusal("session_limit");
                crate::warn!("proxy {peer}: refused: over the limit of {} proxy sessions", self.cfg.max_sessions);
                c.to_client.extend_from_slice(
                    format!("421 Too many sessions through this proxy (limit {}), try again later\r\n", self.cfg.max_sessions).as_bytes(),
                );
                c.closing = true;
            } else {
                log!("proxy {peer}: connected to {local}");
                if let Step::Reply(r) = c.login.greeting() {
                    c.to_client.extend_from_slice(r.as_bytes());
                }
            }
            let _ = write_some(&mut c.client, &mut c.to_client);
            let id = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(id, c);
        }
    }

    fn client_ready(&mut self, id: u64, revents: PollFlags, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if revents.contains(PollFlags::POLLOUT) && write_some(&mut c.client, &mut c.to_client).is_err() {
            return self.close(id, "client write failed");
        }
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return self.maybe_close(id);
        }
        let got = match read_some(&mut c.client) {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.close(id, &format!("client: {e}")),
        };
        c.last = now;
        match (got, c.up.is_some()) {
            (None, false) => self.close(id, "client closed"),
            (None, true) => {
                let u = c.up.as_mut().expect("checked");
                u.client_eof = true;
                let _ = u.st.feed(Dir::ToServer, &[], true, &mut self.relay, now);
                let _ = write_some(&mut u.server, &mut u.to_server);
                if u.to_server.is_empty() {
                    let _ = u.server.shutdown(Shutdown::Write);
                }
                self.events(id);
            }
            (Some(bytes), false) => {
                c.buf.extend_from_slice(&bytes);
                self.login_lines(id, now);
            }
            (Some(bytes), true) => self.upstream(id, &bytes, now),
        }
    }

    /// Client bytes of a connected session: through the session to the server.
    fn upstream(&mut self, id: u64, bytes: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(u) = c.up.as_mut() else { return };
        let f = u.st.feed(Dir::ToServer, bytes, false, &mut self.relay, now);
        u.to_server.extend_from_slice(&f.out);
        if let Some(u) = self.conns.get_mut(&id).and_then(|c| c.up.as_mut()) {
            if write_some(&mut u.server, &mut u.to_server).is_err() {
                return self.close(id, "server write failed");
            }
        }
        self.events(id);
    }

    fn server_ready(&mut self, id: u64, revents: PollFlags, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(u) = c.up.as_mut() else { return };
        if revents.contains(PollFlags::POLLOUT) {
            if write_some(&mut u.server, &mut u.to_server).is_err() {
                return self.close(id, "server write failed");
            }
            if u.client_eof && u.to_server.is_empty() {
                let _ = u.server.shutdown(Shutdown::Write);
            }
        }
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let got = match read_some(&mut u.server) {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return self.close(id, &format!("server: {e}")),
        };
        c.last = now;
        match got {
            Some(bytes) => {
                let f = u.st.feed(Dir::ToClient, &bytes, false, &mut self.relay, now);
                c.to_client.extend_from_slice(&f.out);
            }
            None => {
                u.server_eof = true;
                let _ = u.st.feed(Dir::ToClient, &[], true, &mut self.relay, now);
                c.closing = true;
            }
        }
        if write_some(&mut c.client, &mut c.to_client).is_err() {
            return self.close(id, "client write failed");
        }
        self.events(id);
        self.maybe_close(id);
    }

    /// Runs the login dialogue over complete lines in the buffer.
    fn login_lines(&mut self, id: u64, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.login.waiting() || c.closing {
                break;
            }
            if c.login.is_done() {
                // bytes the client sent after its last login line belong to the server
                let rest = std::mem::take(&mut c.buf);
                if !rest.is_empty() {
                    self.upstream(id, &rest, now);
                }
                return;
            }
            let Some(end) = c.buf.iter().position(|&b| b == b'\n') else {
                if c.buf.len() > MAX_LOGIN_LINE {
                    c.to_client.extend_from_slice(b"500 Line too long\r\n");
                    c.closing = true;
                }
                break;
            };
            let line: Vec<u8> = c.buf.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).into_owned();
            let steps = c.login.line(&text);
            self.steps(id, steps);
        }
        if let Some(c) = self.conns.get_mut(&id) {
            let _ = write_some(&mut c.client, &mut c.to_client);
        }
        self.maybe_close(id);
    }

    fn steps(&mut self, id: u64, steps: Vec<Step>) {
        for s in steps {
            let Some(c) = self.conns.get_mut(&id) else { return };
            match s {
                Step::Reply(r) => c.to_client.extend_from_slice(r.as_bytes()),
                Step::Close => c.closing = true,
                Step::Verify { user, pass } => {
                    let (users, throttle, tx, wake) = (self.users.clone(), self.throttle.clone(), self.tx.clone(), self.wake.clone());
                    let ip = c.peer.ip();
                    let peer = c.peer;
                    let spawned = std::thread::Builder::new().name("ftpgate-auth".into()).spawn(move || {
                        std::thread::sleep(throttle.delay(ip));
                        let ok = users.is_some_and(|u| u.verify(&user, &pass));
                        throttle.record(ip, ok);
                        if ok {
                            log!("proxy {peer}: proxy login as {user:?}");
                        } else {
                            crate::metrics::m().refusal("proxy_auth");
                            crate::warn!("proxy {peer}: refused: proxy login as {user:?} failed");
                        }
                        let _ = tx.send(Done::Verified { conn: id, ok });
                        wake.notify();
                    });
                    if spawned.is_err() {
                        let steps = c.login.verified(false);
                        self.steps(id, steps);
                    }
                }
                Step::Connect(target) => {
                    let (tx, wake, access, timeout) = (self.tx.clone(), self.wake.clone(), self.cfg.access.clone(), self.cfg.connect_timeout);
                    let peer = c.peer;
                    let spawned = std::thread::Builder::new().name("ftpgate-connect".into()).spawn(move || {
                        let r = connect(&target, &access, timeout);
                        if let Err(e) = &r {
                            if matches!(e, ConnectError::NotAllowed { .. }) {
                                crate::metrics::m().refusal("proxy_destination");
                            }
                            crate::warn!("proxy {peer}: cannot reach {target}: {e}");
                        }
                        let _ = tx.send(Done::Connected { conn: id, target, r });
                        wake.notify();
                    });
                    if spawned.is_err() {
                        let steps = c.login.connected(Err("421 Cannot start a connection now".into()));
                        self.steps(id, steps);
                    }
                }
                Step::Handoff(_) => {} // handled where the connection arrives
            }
        }
    }

    /// Answers from the helper threads.
    fn reports(&mut self, now: Instant) {
        for a in self.checks.answers() {
            self.release(a, now);
        }
        while let Ok(d) = self.rx.try_recv() {
            match d {
                Done::Verified { conn, ok } => {
                    let Some(c) = self.conns.get_mut(&conn) else { continue };
                    let steps = c.login.verified(ok);
                    self.steps(conn, steps);
                    self.login_lines(conn, now);
                }
                Done::Connected { conn, target, r } => self.connected(conn, target, r, now),
                Done::DataEnded { id } => {
                    let conn = self.conns.iter().find(|(_, c)| c.up.as_ref().is_some_and(|u| u.st.awaiting_data() == Some(id)));
                    let Some(&conn) = conn.map(|(k, _)| k) else { continue };
                    let Some(u) = self.conns.get_mut(&conn).and_then(|c| c.up.as_mut()) else { continue };
                    let f = u.st.data_done(&mut self.relay, now);
                    self.reply_released(conn, f);
                }
            }
        }
    }

    fn connected(&mut self, id: u64, target: Target, r: Result<(TcpStream, Vec<u8>), ConnectError>, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let (server, greeting) = match r {
            Ok(x) => x,
            Err(e) => {
                let steps = c.login.connected(Err(e.to_string()));
                self.steps(id, steps);
                return self.login_lines(id, now);
            }
        };
        let (Ok(addr), Ok(from)) = (server.peer_addr().map(canonical), server.local_addr().map(canonical)) else {
            let steps = c.login.connected(Err("421 Connection lost".into()));
            self.steps(id, steps);
            return self.login_lines(id, now);
        };
        let _ = server.set_nonblocking(true);
        let steps = c.login.connected(Ok(()));
        let handoff = steps.iter().find_map(|s| match s {
            Step::Handoff(h) => Some(h.clone()),
            _ => None,
        });
        let via = Via { client_side: c.local.ip(), server_side: from.ip() };
        let mut st = Streams::new(c.peer, addr, via, &mut self.relay, now);
        match crate::policy::current(&self.cfg.policy).decide(c.peer.ip(), addr.ip()) {
            crate::policy::Verdict::Allow(p) => st.session.set_policy(p),
            crate::policy::Verdict::Deny(n) => {
                crate::metrics::m().refusal("policy");
                crate::warn!("proxy {}: {target} ({addr}) refused by [[policy]] {n}", c.peer);
                c.to_client.extend_from_slice(format!("421 ftpgate: connections to {target} are not allowed through this gateway\r\n").as_bytes());
                c.closing = true;
                let _ = write_some(&mut c.client, &mut c.to_client);
                return self.maybe_close(id);
            }
        }
        let mut up = Up { server, addr, st, to_server: Vec::new(), client_eof: false, server_eof: false };
        let greeting_out = up.st.feed(Dir::ToClient, &greeting, false, &mut self.relay, now).out;
        let ok = greeting.first() == Some(&b'2');
        log!("proxy {}: connected to {target} ({addr}) from {from}", c.peer);
        // counted once the server is reached, when the session's family is known
        crate::metrics::m().session_started("explicit", crate::metrics::family(c.peer, addr));
        if !ok {
            // the server refuses: its reply is the answer, then the session ends
            c.to_client.extend_from_slice(&greeting_out);
            c.closing = true;
        } else {
            match handoff {
                Some(Handoff::SendUser(user)) => {
                    let line = format!("USER {user}\r\n");
                    let f = up.st.feed(Dir::ToServer, line.as_bytes(), false, &mut self.relay, now);
                    up.to_server.extend_from_slice(&f.out);
                }
                Some(Handoff::LoginNext) => {
                    c.to_client.extend_from_slice(format!("230 Connected to {target}; now log in to the server (USER, PASS)\r\n").as_bytes())
                }
                Some(Handoff::Greeting) | None => c.to_client.extend_from_slice(&greeting_out),
            }
        }
        c.up = Some(up);
        if let Some(u) = c.up.as_mut() {
            let _ = write_some(&mut u.server, &mut u.to_server);
        }
        let _ = write_some(&mut c.client, &mut c.to_client);
        self.events(id);
        self.login_lines(id, now);
    }

    fn release(&mut self, a: Answer<u64>, now: Instant) {
        let Some(c) = self.conns.get_mut(&a.id) else { return };
        let who = c.who();
        let Some(u) = c.up.as_mut() else { return };
        if !a.applies_to(&u.st.session, &who) {
            return; // already released
        }
        let f = u.st.release(a.decision, &mut self.relay, now);
        self.retr_released(a.id, f);
    }

    /// The held RETR went on (with what the client sent behind it).
    fn retr_released(&mut self, id: u64, f: Fed) {
        let Some(u) = self.conns.get_mut(&id).and_then(|c| c.up.as_mut()) else { return };
        u.to_server.extend_from_slice(&f.out);
        if write_some(&mut u.server, &mut u.to_server).is_err() {
            return self.close(id, "server write failed");
        }
        self.events(id); // (another RETR that came behind it asks for its check)
                         // bytes the client sent meanwhile wait in its socket: reading resumes
    }

    /// A held final reply goes on to the client (with what the server sent behind it).
    fn reply_released(&mut self, id: u64, f: Fed) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.to_client.extend_from_slice(&f.out);
        if write_some(&mut c.client, &mut c.to_client).is_err() {
            return self.close(id, "client write failed");
        }
        self.events(id);
        self.maybe_close(id);
    }

    fn events(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(u) = c.up.as_mut() else { return };
        handle_events(&(c.peer, u.addr), &mut u.st.session, &self.checks, id);
    }

    fn maybe_close(&mut self, id: u64) {
        let Some(c) = self.conns.get(&id) else { return };
        // a final reply still held for its data connection goes out first
        let holding = c.up.as_ref().is_some_and(|u| u.st.awaiting_data().is_some());
        let done = c.to_client.is_empty() && !holding && (c.closing || c.up.as_ref().is_some_and(|u| u.client_eof && u.server_eof));
        if done {
            self.close(id, "closed");
        }
    }

    fn close(&mut self, id: u64, why: &str) {
        if let Some(mut c) = self.conns.remove(&id) {
            if let Some(u) = &mut c.up {
                let _ = write_some(&mut u.server, &mut u.to_server);
            }
            let _ = write_some(&mut c.client, &mut c.to_client);
            let user = c.up.as_ref().and_then(|u| u.st.session.user().map(str::to_string));
            log!("{}: {why} (user {})", c.who(), user.as_deref().unwrap_or("-"));
        }
    }

    /// Releases what the sessions' deadlines release ([`Streams::handle_timeout`]); closes idle
    /// connections.
    fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut idle = Vec::new();
        for (&id, c) in &self.conns {
            if c.up.as_ref().is_some_and(|u| u.st.session.poll_timeout().is_some_and(|d| d <= now)) {
                due.push(id);
            }
            let limit = if c.up.is_some() { self.cfg.idle } else { LOGIN_IDLE };
            if now.duration_since(c.last) > limit && c.up.as_ref().is_none_or(|u| u.st.session.pending_check().is_none()) {
                idle.push(id);
            }
        }
        for id in due {
            let Some(u) = self.conns.get_mut(&id).and_then(|c| c.up.as_mut()) else { continue };
            let (retr, reply) = u.st.handle_timeout(now, &mut self.relay);
            self.retr_released(id, retr);
            self.reply_released(id, reply);
        }
        for id in idle {
            if let Some(c) = self.conns.get_mut(&id) {
                c.to_client.extend_from_slice(b"421 Idle too long; closing\r\n");
            }
            self.close(id, "idle timeout");
        }
    }
}
