//! Explicit proxy mode, sans-IO: the dialogue with a client that was configured to use ftpgate
//! as its FTP proxy, up to the moment the real server is connected. From then on the session is
//! an ordinary [`super::Session`], fed the two byte streams instead of queued segments.
//!
//! Login styles (the ones FileZilla, lftp and ncftp offer):
//! - `USER user@host[:port]`, then `PASS` for the server: ftpgate connects, sends `USER user`
//!   and the server's replies go to the client (no proxy login, or after one);
//! - a proxy login first (`USER proxyuser`, `PASS proxypass`), then `SITE host[:port]` or
//!   `OPEN host[:port]`: ftpgate connects and relays the server's greeting, after which the
//!   client logs in to the server itself;
//! - `USER proxyuser@host[:port]`, `PASS proxypass` while a proxy login is required and none
//!   happened yet: ftpgate checks the proxy password, connects, and answers `230` asking for
//!   the server login next.
//!
//! What the machine cannot do itself (check a password, resolve and connect) it asks for with
//! a [`Step`], and is told the outcome.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use super::{DataPlane, Decision, Dir, Flags, Segment, Seq, Session, Verdict, Via};

/// The longest line accepted before the server is connected.
pub const MAX_LOGIN_LINE: usize = 1024;
/// Failed proxy logins on one connection before it is closed.
pub const MAX_FAILURES: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl core::fmt::Display for Target {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How the server's side of the session starts once it is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Send `USER <user>` to the server; its reply is the answer to the client's `USER`.
    SendUser(String),
    /// The server's greeting is the answer to the client's `SITE`/`OPEN`.
    Greeting,
    /// The client logged in to the proxy with `USER proxyuser@host`: answer `230` and let it
    /// log in to the server next.
    LoginNext,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reply lines for the client (each ends in CRLF).
    Reply(String),
    /// Check these proxy credentials, then call [`ProxyLogin::verified`].
    Verify { user: String, pass: String },
    /// Resolve, check and connect, read the greeting, then call [`ProxyLogin::connected`].
    Connect(Target),
    /// Connected: start the session this way.
    Handoff(Handoff),
    /// Close the connection once the replies before this are sent.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Login,
    Verifying,
    Connecting,
    Done,
}

pub struct ProxyLogin {
    /// Proxy users are configured: a proxy login is mandatory.
    auth: bool,
    authed: Option<String>,
    /// The name of a `USER` awaiting its `PASS` (a proxy login).
    user: Option<String>,
    /// Where to connect once the pending proxy login succeeds (`USER proxyuser@host`).
    then: Option<Target>,
    handoff: Option<Handoff>,
    failures: u32,
    phase: Phase,
}

/// One reply line. What the client sent and the reply echoes (a user name) is escaped, so a
/// control character can never end the line early or forge another reply.
fn reply(code: u16, text: &str) -> Step {
    let text: String = text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
    Step::Reply(format!("{code} {text}\r\n"))
}

/// Parses `host[:port]`; an IPv6 address as `[addr]`, `[addr]:port`, or bare (`2001:db8::1`,
/// port 21).
pub fn parse_target(s: &str) -> Result<Target, BadTarget> {
    let s = s.trim();
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Ok(Target { host: a.to_string(), port: 21 });
    }
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| BadTarget::Port(p.to_string()));
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| BadTarget::Host(s.to_string()))?;
        let a = addr.parse::<Ipv6Addr>().map_err(|_| BadTarget::Host(addr.to_string()))?;
        let port = match after {
            "" => 21,
            p => port_of(p.strip_prefix(':').ok_or_else(|| BadTarget::Host(s.to_string()))?)?,
        };
        return Ok(Target { host: a.to_string(), port });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (s, 21),
    };
    let ok = !host.is_empty() && host.len() <= 253 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !ok {
        return Err(BadTarget::Host(host.to_string()));
    }
    Ok(Target { host: host.to_string(), port })
}

/// A `host[:port]` a client named that cannot be a server; `Display` is the reply's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadTarget {
    Port(String),
    Host(String),
}

impl core::fmt::Display for BadTarget {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BadTarget::Port(p) => write!(f, "bad port {p:?}"),
            BadTarget::Host(h) => write!(f, "bad host name {h:?}"),
        }
    }
}

impl std::error::Error for BadTarget {}

impl ProxyLogin {
    pub fn new(auth: bool) -> ProxyLogin {
        ProxyLogin { auth, authed: None, user: None, then: None, handoff: None, failures: 0, phase: Phase::Login }
    }

    /// The proxy's own greeting.
    pub fn greeting(&self) -> Step {
        let how = if self.auth {
            "log in to the proxy (USER proxyuser, PASS password), then SITE host, OPEN host or USER user@host"
        } else {
            "USER user@host[:port], or SITE host / OPEN host"
        };
        reply(220, &format!("ftpgate FTP proxy ready; {how}"))
    }

    /// Waiting for a check or a connection: the next line must wait.
    pub fn waiting(&self) -> bool {
        matches!(self.phase, Phase::Verifying | Phase::Connecting)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The proxy user logged in, if any.
    pub fn proxy_user(&self) -> Option<&str> {
        self.authed.as_deref()
    }

    fn connect(&mut self, t: Target, h: Handoff) -> Vec<Step> {
        self.phase = Phase::Connecting;
        self.handoff = Some(h);
        vec![Step::Connect(t)]
    }

    /// One line from the client (without its line end).
    pub fn line(&mut self, line: &str) -> Vec<Step> {
        if self.phase != Phase::Login {
            return vec![reply(503, "Wait for the previous command to finish")];
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (cmd, arg) = match line.split_once(' ') {
            Some((c, a)) => (c, a.trim()),
            None => (line, ""),
        };
        match cmd.to_ascii_uppercase().as_str() {
            "USER" if arg.is_empty() => vec![reply(501, "USER needs a name")],
            "USER" => match arg.rsplit_once('@') {
                Some((name, host)) => {
                    let t = match parse_target(host) {
                        Ok(t) => t,
                        Err(e) => return vec![reply(501, &e.to_string())],
                    };
                    if name.is_empty() {
                        return vec![reply(501, "USER needs a name before the @")];
                    }
                    if self.auth && self.authed.is_none() {
                        // a proxy login that names the server: the server login comes next
                        self.user = Some(name.to_string());
                        self.then = Some(t);
                        vec![reply(331, &format!("Password for proxy user {name}"))]
                    } else {
                        self.connect(t, Handoff::SendUser(name.to_string()))
                    }
                }
                None if self.authed.is_none() => {
                    self.user = Some(arg.to_string());
                    self.then = None;
                    let text =
                        if self.auth { format!("Password for proxy user {arg}") } else { "No proxy login needed here; any password".to_string() };
                    vec![reply(331, &text)]
                }
                None => vec![reply(530, "Name the server first: SITE host, OPEN host or USER user@host")],
            },
            "PASS" => {
                let Some(user) = self.user.clone() else {
                    return vec![reply(503, "Send USER first")];
                };
                if self.auth {
                    self.phase = Phase::Verifying;
                    return vec![Step::Verify { user, pass: arg.to_string() }];
                }
                self.user = None;
                self.authed = Some(user);
                vec![reply(230, "Proxy login accepted; now SITE host, OPEN host or USER user@host")]
            }
            "SITE" | "OPEN" if arg.is_empty() => vec![reply(501, &format!("{cmd} needs a host name"))],
            "SITE" | "OPEN" => {
                if self.auth && self.authed.is_none() {
                    return vec![reply(530, "Log in to the proxy first (USER proxyuser, PASS password)")];
                }
                match parse_target(arg) {
                    Ok(t) => self.connect(t, Handoff::Greeting),
                    Err(e) => vec![reply(501, &e.to_string())],
                }
            }
            "QUIT" => vec![reply(221, "Goodbye"), Step::Close],
            "NOOP" => vec![reply(200, "OK")],
            "SYST" => vec![reply(215, "UNIX Type: L8")],
            "FEAT" => vec![Step::Reply("211-Features (proxy login phase):\r\n211 End\r\n".into())],
            "AUTH" | "PBSZ" | "PROT" | "CCC" => vec![reply(502, "TLS is not available through this proxy")],
            _ => vec![reply(530, "Log in first: USER user@host (or SITE/OPEN host after a proxy login)")],
        }
    }

    /// The outcome of a [`Step::Verify`].
    pub fn verified(&mut self, ok: bool) -> Vec<Step> {
        if self.phase != Phase::Verifying {
            return Vec::new();
        }
        self.phase = Phase::Login;
        let user = self.user.take();
        let then = self.then.take();
        if !ok {
            self.failures += 1;
            let mut out = vec![reply(530, "Proxy login incorrect")];
            if self.failures >= MAX_FAILURES {
                out.push(reply(421, "Too many failed proxy logins; closing"));
                out.push(Step::Close);
            }
            return out;
        }
        self.failures = 0;
        self.authed = user;
        match then {
            Some(t) => self.connect(t, Handoff::LoginNext),
            None => vec![reply(230, "Proxy login accepted; now SITE host, OPEN host or USER user@host")],
        }
    }

    /// The outcome of a [`Step::Connect`]: `Err` is the reply to give (e.g. `421 …`).
    pub fn connected(&mut self, r: Result<(), String>) -> Vec<Step> {
        if self.phase != Phase::Connecting {
            return Vec::new();
        }
        match r {
            Ok(()) => {
                self.phase = Phase::Done;
                vec![Step::Handoff(self.handoff.take().unwrap_or(Handoff::Greeting))]
            }
            Err(e) => {
                self.phase = Phase::Login;
                self.handoff = None;
                vec![Step::Reply(format!("{}\r\n", e.trim_end()))]
            }
        }
    }
}

/// A connected explicit-proxy session: the client's and the server's byte streams, fed to a
/// [`Session`] as in-order segments (from sequence number 1 after a SYN each way). Each
/// verdict is turned back into bytes for its receiver: what lies past what it already has, so a
/// probe (a repeated byte) gives nothing and a deleted reply never arrives.
///
/// A RETR the session holds (a cache hit being checked) keeps what the client sent after it in
/// the same read: with TCP the client would send it again, here nobody would, so it is fed
/// once the RETR is released.
pub struct Streams {
    pub session: Session,
    c_next: Seq,
    s_next: Seq,
    srv_rcv: Seq,
    cli_rcv: Seq,
    /// The held RETR's segment: its sequence number and bytes.
    held: Option<(Seq, Vec<u8>)>,
    /// Client bytes (and end of stream) that came behind the held RETR.
    pending: Vec<u8>,
    pending_fin: bool,
    /// A transfer's final reply held until its data connection is done, and the server bytes
    /// that came behind it.
    held_reply: Option<(Seq, Vec<u8>)>,
    /// Server bytes the session decided while the reply was held, to follow it.
    s_behind: Vec<(Verdict, Seq, Vec<u8>)>,
    s_pending: Vec<u8>,
    s_pending_fin: bool,
}

/// What feeding bytes gave: bytes for the receiver, and whether a RETR now waits for its
/// freshness check (then call [`Streams::release`] with the answer; client bytes meanwhile are
/// kept, but the shell should stop reading).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    pub out: Vec<u8>,
    pub held: bool,
}

impl Streams {
    pub fn new(client: SocketAddr, server: SocketAddr, via: Via, dp: &mut dyn DataPlane, now: Instant) -> Streams {
        let mut session = Session::explicit(client, server, via, now);
        let z = Seq::new(0);
        let syn = Flags { syn: true, ..Default::default() };
        session.handle_segment(Dir::ToServer, &Segment { seq: z, ack: z, flags: syn, sack: &[], payload: &[] }, dp, now);
        let synack = Flags { syn: true, ack: true, ..Default::default() };
        session.handle_segment(Dir::ToClient, &Segment { seq: z, ack: Seq::new(1), flags: synack, sack: &[], payload: &[] }, dp, now);
        let one = Seq::new(1);
        Streams {
            session,
            c_next: one,
            s_next: one,
            srv_rcv: one,
            cli_rcv: one,
            held: None,
            pending: Vec::new(),
            pending_fin: false,
            held_reply: None,
            s_behind: Vec::new(),
            s_pending: Vec::new(),
            s_pending_fin: false,
        }
    }

    /// A final reply waits for this data connection to end: call [`Streams::data_done`] then.
    pub fn awaiting_data(&self) -> Option<crate::proto::DataId> {
        self.held_reply.as_ref().and(self.session.awaiting_data())
    }

    /// The data connection a held final reply waits for ended: the reply (and what came behind
    /// it) for the client.
    pub fn data_done(&mut self, dp: &mut dyn DataPlane, now: Instant) -> Fed {
        let v = self.session.data_done(dp);
        self.release_reply(v, dp, now)
    }

    /// Deadlines of the session (see [`Session::handle_timeout`]): what goes to the server (a
    /// held RETR released as a bypass), and what to the client (a held final reply).
    pub fn handle_timeout(&mut self, now: Instant, dp: &mut dyn DataPlane) -> (Fed, Fed) {
        let r = self.session.handle_timeout(now, dp);
        let to_server = match r.retr {
            Some(v) => self.release_retr(Some(v), dp, now),
            None => Fed::default(),
        };
        (to_server, self.release_reply(r.reply, dp, now))
    }

    fn release_reply(&mut self, v: Option<Verdict>, dp: &mut dyn DataPlane, now: Instant) -> Fed {
        let Some(v) = v else { return Fed::default() };
        let Some((seq, bytes)) = self.held_reply.take() else { return Fed::default() };
        let mut out = self.deliver(Dir::ToClient, v, seq, &bytes);
        for (v, seq, bytes) in std::mem::take(&mut self.s_behind) {
            out.extend(self.deliver(Dir::ToClient, v, seq, &bytes));
        }
        let (pending, fin) = (std::mem::take(&mut self.s_pending), std::mem::take(&mut self.s_pending_fin));
        if !pending.is_empty() || fin {
            let more = self.feed(Dir::ToClient, &pending, fin, dp, now);
            out.extend_from_slice(&more.out);
        }
        Fed { out, held: false }
    }

    /// A RETR waits for its freshness check.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Feeds bytes of one direction (`fin`: its end).
    pub fn feed(&mut self, dir: Dir, data: &[u8], fin: bool, dp: &mut dyn DataPlane, now: Instant) -> Fed {
        if dir == Dir::ToServer && self.held.is_some() {
            self.pending.extend_from_slice(data);
            self.pending_fin |= fin;
            return Fed { out: Vec::new(), held: true };
        }
        if dir == Dir::ToClient && self.held_reply.is_some() {
            self.s_pending.extend_from_slice(data);
            self.s_pending_fin |= fin;
            // whole replies right behind the held one go ahead of it (`Session::move_ahead`)
            let whole = super::reply_hold::ahead_len(&self.s_pending);
            if whole == 0 {
                return Fed::default();
            }
            let bytes: Vec<u8> = self.s_pending.drain(..whole).collect();
            let seq = self.s_next;
            let flags = Flags { ack: true, ..Default::default() };
            let seg = Segment { seq, ack: self.srv_rcv, flags, sack: &[], payload: &bytes };
            let v = self.session.handle_segment(dir, &seg, dp, now);
            self.s_next = seq.add(whole);
            let moved = self.session.take_moved_carrier();
            if let (Verdict::Hold, Some(m), Some((old, held))) = (&v, moved, self.held_reply.take()) {
                let out = self.deliver(dir, m, old, &held);
                self.held_reply = Some((seq, bytes));
                return Fed { out, held: false };
            }
            // (never: the session took them as going on behind the held reply) they go to the
            // client after it
            self.s_behind.push((v, seq, bytes));
            return Fed::default();
        }
        let (seq, ack) = match dir {
            Dir::ToServer => (self.c_next, self.cli_rcv),
            Dir::ToClient => (self.s_next, self.srv_rcv),
        };
        let flags = Flags { ack: true, fin, ..Default::default() };
        let v = self.session.handle_segment(dir, &Segment { seq, ack, flags, sack: &[], payload: data }, dp, now);
        if v == Verdict::Hold && dir == Dir::ToClient {
            // the session took the bytes up to the end of the final reply
            let used = (self.session.next_seq(Dir::ToClient).diff(seq).max(0) as usize).min(data.len());
            self.held_reply = Some((seq, data[..used].to_vec()));
            self.s_pending = data[used..].to_vec();
            self.s_pending_fin = fin;
            self.s_next = seq.add(used);
            // what came before the reply in the same read (its transfer's 150) goes on now
            let out = match self.session.take_held_reply_lead() {
                Some((s, lead)) => self.deliver_at(dir, s, &lead),
                None => Vec::new(),
            };
            return Fed { out, held: false };
        }
        if v == Verdict::Hold {
            // the session took the bytes up to the end of the RETR line
            let used = (self.session.next_seq(Dir::ToServer).diff(seq).max(0) as usize).min(data.len());
            self.held = Some((seq, data[..used].to_vec()));
            self.pending = data[used..].to_vec();
            self.pending_fin = fin;
            self.c_next = seq.add(used);
            return Fed { out: Vec::new(), held: true };
        }
        let next = seq.add(data.len() + fin as usize);
        match dir {
            Dir::ToServer => self.c_next = next,
            Dir::ToClient => self.s_next = next,
        }
        Fed { out: self.deliver(dir, v, seq, data), held: false }
    }

    /// The held RETR goes on as the freshness check decided, followed by what came behind it.
    pub fn release(&mut self, decision: Decision, dp: &mut dyn DataPlane, now: Instant) -> Fed {
        if self.held.is_none() {
            return Fed::default();
        }
        let v = self.session.release(decision, dp);
        self.release_retr(v, dp, now)
    }

    fn release_retr(&mut self, v: Option<Verdict>, dp: &mut dyn DataPlane, now: Instant) -> Fed {
        let Some((seq, bytes)) = self.held.take() else { return Fed::default() };
        let mut out = match v {
            Some(v) => self.deliver(Dir::ToServer, v, seq, &bytes),
            None => Vec::new(),
        };
        let (pending, fin) = (std::mem::take(&mut self.pending), std::mem::take(&mut self.pending_fin));
        if pending.is_empty() && !fin {
            return Fed { out, held: false };
        }
        let more = self.feed(Dir::ToServer, &pending, fin, dp, now);
        out.extend_from_slice(&more.out);
        Fed { out, held: more.held }
    }

    fn deliver(&mut self, dir: Dir, v: Verdict, seq: Seq, data: &[u8]) -> Vec<u8> {
        match v {
            Verdict::Pass => self.deliver_at(dir, seq, data),
            Verdict::Edit(e) => match e.payload {
                Some(p) => self.deliver_at(dir, e.seq, &p),
                None => self.deliver_at(dir, e.seq, data),
            },
            Verdict::Drop | Verdict::Hold => Vec::new(),
        }
    }

    /// `payload`, which starts at `oseq` in the receiver's sequence space: what lies past what
    /// the receiver already has.
    fn deliver_at(&mut self, dir: Dir, oseq: Seq, payload: &[u8]) -> Vec<u8> {
        let rcv = match dir {
            Dir::ToServer => &mut self.srv_rcv,
            Dir::ToClient => &mut self.cli_rcv,
        };
        let end = oseq.add(payload.len());
        if oseq <= *rcv && end > *rcv {
            let skip = rcv.diff(oseq) as usize;
            *rcv = end;
            return payload[skip..].to_vec();
        }
        Vec::new()
    }
}

/// A network, `a.b.c.d/len` or `2001:db8::/32` (a bare address is one host), as the
/// ecosystem's [`ipnet::IpNet`] has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl core::str::FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: core::net::IpAddr = a.trim().parse().map_err(|_| BadCidr::Network(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.trim().parse::<u8>().map_err(|_| BadCidr::PrefixLength(s.to_string()))?,
        };
        ipnet::IpNet::new(addr, len).map(Cidr).map_err(|_| BadCidr::PrefixLength(s.to_string()))
    }
}

/// A network that does not parse as `a.b.c.d/len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadCidr {
    Network(String),
    PrefixLength(String),
}

impl core::fmt::Display for BadCidr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BadCidr::Network(s) => write!(f, "bad network {s:?} (expected a.b.c.d/len or an IPv6 network)"),
            BadCidr::PrefixLength(s) => write!(f, "bad prefix length in {s:?}"),
        }
    }
}

impl std::error::Error for BadCidr {}

impl Cidr {
    pub fn contains(&self, ip: impl Into<core::net::IpAddr>) -> bool {
        self.0.contains(&ip.into())
    }
}

/// Who may use the explicit proxy and where it may connect.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// A proxy login is mandatory.
    pub auth: bool,
    pub allow_from: Vec<Cidr>,
    /// Empty: any destination (but never the gateway itself).
    pub allow_dest: Vec<Cidr>,
}

impl Access {
    /// Whether a client may talk to the proxy at all. Without proxy users, only the networks in
    /// `allow_from` may (none by default: an explicit listener is never an open relay by accident).
    pub fn client(&self, ip: IpAddr) -> Result<(), Denied> {
        if !self.allow_from.is_empty() && !self.allow_from.iter().any(|c| c.contains(ip)) {
            return Err(Denied::NotInAllowFrom(ip));
        }
        if !self.auth && self.allow_from.is_empty() {
            return Err(Denied::NoAccessRules);
        }
        Ok(())
    }

    /// Whether the proxy may connect to `ip`; `local` are the gateway's own addresses.
    pub fn dest(&self, ip: IpAddr, local: &[IpAddr]) -> Result<(), Denied> {
        let broadcast = matches!(ip, IpAddr::V4(a) if a.is_broadcast());
        // an IPv4 address mapped into IPv6 is the IPv4 host: judged as that
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() || broadcast || ip.is_multicast() || local.contains(&ip) {
            return Err(Denied::NotAHost(ip));
        }
        if !self.allow_dest.is_empty() && !self.allow_dest.iter().any(|c| c.contains(ip)) {
            return Err(Denied::NotInAllowDest(ip));
        }
        Ok(())
    }
}

/// Why the access rules refuse a client or a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    NotInAllowFrom(IpAddr),
    /// Neither `--allow-from` networks nor `--proxy-users`: nobody may use the proxy.
    NoAccessRules,
    /// The gateway itself, or an address that is not one host.
    NotAHost(IpAddr),
    NotInAllowDest(IpAddr),
}

impl core::fmt::Display for Denied {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Denied::NotInAllowFrom(ip) => write!(f, "{ip} is not in --allow-from"),
            Denied::NoAccessRules => f.write_str("no --allow-from networks and no --proxy-users configured"),
            Denied::NotAHost(ip) => write!(f, "{ip} is this gateway or not a host"),
            Denied::NotInAllowDest(ip) => write!(f, "{ip} is not in --allow-dest"),
        }
    }
}

impl std::error::Error for Denied {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn replies(steps: &[Step]) -> String {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Reply(r) => Some(r.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn user_at_host_connects_and_sends_user() {
        let mut l = ProxyLogin::new(false);
        assert!(replies(&[l.greeting()]).starts_with("220 "));
        let s = l.line("USER alice@ftp.example.com:2100");
        assert_eq!(s, vec![Step::Connect(Target { host: "ftp.example.com".into(), port: 2100 })]);
        assert!(l.waiting());
        assert!(l.line("PASS x")[0] == reply(503, "Wait for the previous command to finish"));
        assert_eq!(l.connected(Ok(())), vec![Step::Handoff(Handoff::SendUser("alice".into()))]);
        assert!(l.is_done());
        // the last '@' separates the host: user names may contain one
        let mut l = ProxyLogin::new(false);
        assert_eq!(l.line("user a@b.c@10.0.2.2"), vec![Step::Connect(Target { host: "10.0.2.2".into(), port: 21 })]);
        assert_eq!(l.connected(Ok(())), vec![Step::Handoff(Handoff::SendUser("a@b.c".into()))]);
    }

    #[test]
    fn proxy_login_then_site_or_open() {
        for cmd in ["SITE", "OPEN", "open"] {
            let mut l = ProxyLogin::new(true);
            assert!(replies(&l.line(&format!("{cmd} 10.0.2.2"))).starts_with("530 "), "needs proxy login first");
            assert!(replies(&l.line("USER bob")).starts_with("331 "));
            assert_eq!(l.line("PASS pw"), vec![Step::Verify { user: "bob".into(), pass: "pw".into() }]);
            assert!(replies(&l.verified(true)).starts_with("230 "));
            assert_eq!(l.proxy_user(), Some("bob"));
            assert!(replies(&l.line("USER alice")).starts_with("530 "), "server not named yet");
            assert_eq!(l.line(&format!("{cmd} 10.0.2.2")), vec![Step::Connect(Target { host: "10.0.2.2".into(), port: 21 })]);
            assert_eq!(l.connected(Ok(())), vec![Step::Handoff(Handoff::Greeting)]);
        }
    }

    #[test]
    fn proxy_user_at_host_asks_for_server_login_next() {
        let mut l = ProxyLogin::new(true);
        assert!(replies(&l.line("USER bob@srv")).starts_with("331 "));
        assert_eq!(l.line("PASS pw"), vec![Step::Verify { user: "bob".into(), pass: "pw".into() }]);
        assert_eq!(l.verified(true), vec![Step::Connect(Target { host: "srv".into(), port: 21 })]);
        assert_eq!(l.connected(Ok(())), vec![Step::Handoff(Handoff::LoginNext)]);
        // once logged in to the proxy, user@host is the server login
        let mut l = ProxyLogin::new(true);
        l.line("USER bob");
        l.line("PASS pw");
        l.verified(true);
        assert_eq!(l.line("USER alice@srv"), vec![Step::Connect(Target { host: "srv".into(), port: 21 })]);
        assert_eq!(l.connected(Ok(())), vec![Step::Handoff(Handoff::SendUser("alice".into()))]);
    }

    #[test]
    fn wrong_passwords_close_after_three() {
        let mut l = ProxyLogin::new(true);
        for i in 1..=MAX_FAILURES {
            l.line("USER bob");
            l.line("PASS wrong");
            let s = l.verified(false);
            assert!(replies(&s).starts_with("530 "));
            assert_eq!(s.contains(&Step::Close), i == MAX_FAILURES, "attempt {i}");
        }
    }

    #[test]
    fn connect_errors_are_replies_and_the_login_goes_on() {
        let mut l = ProxyLogin::new(false);
        l.line("USER a@nowhere.invalid");
        assert_eq!(replies(&l.connected(Err("421 Unknown host nowhere.invalid".into()))), "421 Unknown host nowhere.invalid\r\n");
        assert!(!l.waiting());
        assert!(matches!(l.line("USER a@10.0.2.2")[0], Step::Connect(_)));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        let mut l = ProxyLogin::new(false);
        for bad in ["USER a@", "USER a@host:0", "USER a@host:x", "USER @host", "USER a@h/st", "USER", "SITE", "PASS x"] {
            let r = replies(&l.line(bad));
            assert!(r.starts_with("501 ") || r.starts_with("503 "), "{bad}: {r}");
        }
        assert!(replies(&l.line("RETR f")).starts_with("530 "));
        assert!(replies(&l.line("AUTH TLS")).starts_with("502 "));
        assert_eq!(l.line("QUIT")[1], Step::Close);
    }

    #[test]
    fn echoed_names_cannot_forge_replies() {
        let mut l = ProxyLogin::new(true);
        let r = replies(&l.line("USER x\r230 logged in"));
        assert_eq!(r.matches('\r').count(), 1, "{r:?}");
        assert!(r.starts_with("331 ") && r.ends_with("\r\n"));
    }

    #[test]
    fn ipv6_targets() {
        let t = |s: &str| parse_target(s).map(|t| t.to_string());
        assert_eq!(t("[2001:db8::1]").unwrap(), "[2001:db8::1]:21");
        assert_eq!(t("[2001:db8::1]:2121").unwrap(), "[2001:db8::1]:2121");
        assert_eq!(t("2001:db8::1").unwrap(), "[2001:db8::1]:21");
        assert_eq!(t("ftp.example.net:21").unwrap(), "ftp.example.net:21");
        assert!(t("[2001:db8::1]x").is_err() && t("[nonsense]").is_err() && t("[2001:db8::1]:0").is_err());
        let mut l = ProxyLogin::new(false);
        let steps = l.line("USER alice@[fd00:2::2]:2121\r\n");
        assert!(steps.iter().any(|s| matches!(s, Step::Connect(t) if t.host == "fd00:2::2" && t.port == 2121)), "{steps:?}");
        // a mapped IPv4 address is that IPv4 host, for the access rules too
        let local: Vec<IpAddr> = vec!["10.0.2.1".parse().unwrap()];
        let a = Access::default();
        assert!(a.dest("::ffff:10.0.2.1".parse().unwrap(), &local).is_err());
        assert!(a.dest("::1".parse().unwrap(), &local).is_err() && a.dest("fd00:2::2".parse().unwrap(), &local).is_ok());
    }

    #[test]
    fn access_rules() {
        let c: Cidr = "10.0.1.0/24".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 0, 1, 77)) && !c.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "x/8".parse::<Cidr>().is_err());
        assert!("10.0.1.9".parse::<Cidr>().unwrap().contains(Ipv4Addr::new(10, 0, 1, 9)));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(!v6.contains(Ipv4Addr::new(10, 0, 1, 9)) && v6.contains("2001:db8::1".parse::<core::net::IpAddr>().unwrap()));
        let none = Access::default();
        assert!(none.client("10.0.1.2".parse().unwrap()).is_err(), "never an open relay by default");
        let auth = Access { auth: true, ..Default::default() };
        assert!(auth.client("192.0.2.1".parse().unwrap()).is_ok());
        let lan = Access { allow_from: vec![c], allow_dest: vec!["10.0.2.0/24".parse().unwrap()], ..Default::default() };
        assert!(lan.client("10.0.1.2".parse().unwrap()).is_ok());
        assert!(lan.client("10.0.5.2".parse().unwrap()).is_err());
        let local = ["10.0.2.1".parse().unwrap()];
        assert!(lan.dest("10.0.2.2".parse().unwrap(), &local).is_ok());
        assert_eq!(lan.dest("10.0.2.1".parse().unwrap(), &local), Err(Denied::NotAHost("10.0.2.1".parse().unwrap())), "the gateway itself");
        assert!(lan.dest("10.0.4.2".parse().unwrap(), &local).is_err());
        assert!(Access::default().dest("127.0.0.1".parse().unwrap(), &[]).is_err());
    }
}
