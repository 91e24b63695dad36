//! The core's interface: segments in, verdicts and events out, and the data plane it drives.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::Seq;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    ToServer,
    ToClient,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// The parts of a TCP segment the helper reads.
#[derive(Clone, Debug)]
pub struct Segment<'a> {
    pub seq: Seq,
    pub ack: Seq,
    pub flags: Flags,
    pub sack: &'a [(Seq, Seq)],
    pub payload: &'a [u8],
}

/// What [`Session::handle_timeout`](super::Session::handle_timeout) released: the verdicts of
/// the held segments whose deadline passed, by the hold they were in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// The held RETR (its freshness check unanswered: it goes to the server as a bypass).
    pub retr: Option<Verdict>,
    /// The held final reply.
    pub reply: Option<Verdict>,
}

/// What to do with a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// Drop (a segment after a gap; it will be retransmitted).
    Drop,
    /// Forward with these fields replaced.
    Edit(Edit),
    /// Keep this segment until [`Session::release`](super::Session::release) says what it becomes (a download that may be
    /// answered from the cache waits for the freshness check; see [`Event::CheckFresh`]).
    Hold,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub seq: Seq,
    pub ack: Seq,
    /// New SACK blocks, when they changed.
    pub sack: Option<Vec<(Seq, Seq)>>,
    /// New payload, when it changed.
    pub payload: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The client connects (PASV/EPSV).
    Passive,
    /// The server connects (PORT/EPRT).
    Active,
    /// `--server-mode passive`: the client sent PORT/EPRT naming `client`, ftpgate sent the
    /// server PASV/EPSV; the relay connects to both (to the server at the request's `target`).
    ToBoth { client: SocketAddr },
    /// `--server-mode active`: the client sent PASV/EPSV, ftpgate sent the server PORT/EPRT;
    /// both connect to the relay ([`Opened::client_side`] is the client's endpoint).
    FromBoth,
}

impl Mode {
    /// `passive`, `active` or the conversion, as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Passive => "passive",
            Mode::Active => "active",
            Mode::ToBoth { .. } => "active_to_passive",
            Mode::FromBoth => "passive_to_active",
        }
    }
}

/// The data-connection mode ftpgate uses towards the server (`--server-mode`, a `[[policy]]`
/// table's `server-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerMode {
    /// As the client asked.
    #[default]
    Client,
    /// Always passive: a client's PORT/EPRT becomes PASV/EPSV (for servers that cannot open
    /// connections outwards).
    Passive,
    /// Always active: a client's PASV/EPSV becomes PORT/EPRT (for servers whose passive ports
    /// are closed).
    Active,
}

impl core::str::FromStr for ServerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "client" => Ok(ServerMode::Client),
            "passive" => Ok(ServerMode::Passive),
            "active" => Ok(ServerMode::Active),
            _ => Err(format!("{s:?}: expected client, passive or active")),
        }
    }
}

/// A data connection the relay must prepare before the line announcing it goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    pub mode: Mode,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Where the relay connects once the expected peer has connected to it.
    pub target: SocketAddr,
    /// Explicit proxy mode: the gateway's own addresses on the two connections.
    pub via: Option<Via>,
    /// The session's bandwidth limits, for the relay to pace the bytes with.
    pub rates: Rates,
}

/// Bytes per second, each direction (`--rate-down`, `--rate-up`, a `[[policy]]` table's
/// `rate-down` / `rate-up`); `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    /// Server to client (downloads, listings, cache hits).
    pub down: Option<u64>,
    /// Client to server (uploads).
    pub up: Option<u64>,
}

impl Rates {
    /// Whether either direction is limited (the relay must then move the bytes itself).
    pub fn is_limited(&self) -> bool {
        self.down.is_some() || self.up.is_some()
    }
}

/// What the operator's policy asks of one session (`--deny-command`, a `[[policy]]` table's
/// `deny-commands`, `anonymous-only`, `cache`); the default asks nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Commands (upper case) the client gets `550` for; the server never sees them.
    pub deny: Vec<String>,
    /// Only `anonymous` / `ftp` logins: any other `USER` gets `530`, the server never sees it.
    pub anonymous_only: bool,
    /// Whether this session's downloads may be cached and served from the cache.
    pub cache: bool,
    /// Its bandwidth limits.
    pub rates: Rates,
    /// The data-connection mode towards the server.
    pub server_mode: ServerMode,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy { deny: Vec::new(), anonymous_only: false, cache: true, rates: Rates::default(), server_mode: ServerMode::Client }
    }
}

impl SessionPolicy {
    /// Whether `verb` (a command's first word, any case) is denied.
    pub fn denies(&self, verb: &str) -> bool {
        self.deny.iter().any(|d| d.eq_ignore_ascii_case(verb))
    }
}

/// The gateway's own addresses on an explicit-proxy session: the client connected to
/// `client_side`, the gateway connected to the server from `server_side`. Data connections are
/// announced on these instead of being intercepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    pub client_side: IpAddr,
    pub server_side: IpAddr,
}

/// Names one prepared data connection in the data plane.
pub type DataId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The endpoint to announce in the (possibly rewritten) line.
    pub announce: SocketAddr,
    pub id: DataId,
    /// [`Mode::FromBoth`]: where the client connects (`announce` is the server's).
    pub client_side: Option<SocketAddr>,
}

/// What a prepared data connection carries, once the transfer command is known. Connections
/// without one (LIST, STOR, uncacheable downloads) are relayed as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// A download to copy into the cache as it passes; `login` lets the cache confirm the file
    /// afterwards.
    Capture { key: Key, login: Login },
    /// The server was told to send nothing (`REST <size>`): serve the cached entry from `offset`.
    Serve { key: Key, offset: u64 },
}

/// The seam to the data path and the cache.
pub trait DataPlane {
    /// Prepares a data connection; the relay must be listening when this returns.
    fn open(&mut self, req: &DataRequest) -> Result<Opened, OpenError>;
    /// The size of a cached entry for `key`, if there is one.
    fn cached(&mut self, key: &Key) -> Option<u64>;
    /// Tells the data connection `id` what it carries. `false`: it cannot (cache busy or
    /// unwritable, entry gone) and relays plainly.
    fn transfer(&mut self, id: DataId, what: Transfer) -> bool;
    /// The transfer command on `id` got its final reply; `ok` is a 2xx.
    fn finished(&mut self, id: DataId, ok: bool);
    /// `path` on `server` is being changed (STOR, APPE, DELE, RNFR, RNTO): forget cached copies.
    fn invalidate(&mut self, server: SocketAddr, path: &str);
    /// The client under `login` is preparing a data connection (PASV, EPSV, PORT, EPRT): a
    /// download, and with it a freshness check, may follow. The data plane may get ready for
    /// that check.
    fn transfer_ahead(&mut self, _login: &Login) {}
    /// Whether there is a cache at all (`--no-cache` turns it off).
    fn cache_enabled(&self) -> bool {
        true
    }
    /// Names the command that uses data connection `id` (for the transfer log).
    fn describe(&mut self, _id: DataId, _what: Described) {}
    /// Where data connection `id` stands, asked when its command's final reply arrives and
    /// while that reply is held ([`Session::data_done`](super::Session::data_done)).
    fn data_state(&mut self, _id: DataId) -> DataState {
        DataState::Unknown
    }
}

/// Why a data connection could not be prepared; the client is answered `425` with it.
#[derive(Debug)]
pub enum OpenError {
    /// `--max-data` data connections are in progress.
    TooMany { limit: usize },
    /// No listener on the endpoint to announce.
    Listen { at: core::net::IpAddr, source: std::io::Error },
    /// No port of the router's own to announce (active mode behind NAT).
    Port { at: Ipv4Addr, source: std::io::Error },
    /// No thread to move or watch the bytes.
    Thread(std::io::Error),
    /// The data plane has no endpoint left to give (test and fuzzing planes).
    Exhausted,
}

impl OpenError {
    /// Its label in the refusal metrics.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::TooMany { .. } => "data_limit",
            OpenError::Listen { .. } => "data_listen",
            OpenError::Port { .. } => "data_port",
            OpenError::Thread(_) => "data_thread",
            OpenError::Exhausted => "data_exhausted",
        }
    }
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpenError::TooMany { limit } => write!(f, "too many data connections in progress (limit {limit})"),
            OpenError::Listen { at, source } => write!(f, "cannot listen on {at}: {source}"),
            OpenError::Port { at, source } => write!(f, "cannot take a port on {at}: {source}"),
            OpenError::Thread(e) => write!(f, "cannot start the data connection's thread: {e}"),
            OpenError::Exhausted => f.write_str("no ports left"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Listen { source, .. } | OpenError::Port { source, .. } | OpenError::Thread(source) => Some(source),
            _ => None,
        }
    }
}

/// What a refusal refused, with its label in the refusal metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A `PORT`/`EPRT` naming a host but the client, or a port below 1024.
    Bounce,
    /// A `227`/`229` naming a host but the server (not followed).
    ThirdParty,
    /// A data connection that could not be prepared ([`OpenError::label`]).
    Data(&'static str),
    /// An `EPRT` of a network protocol ftpgate does not relay (`522`).
    Family,
    /// A command the operator's policy denies (`550`).
    Command,
    /// A login the operator's policy does not allow (`530`: anonymous only).
    Login,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Bounce => "bounce",
            Refusal::ThirdParty => "third_party",
            Refusal::Data(l) => l,
            Refusal::Family => "address_family",
            Refusal::Command => "denied_command",
            Refusal::Login => "denied_login",
        }
    }
}

/// Where a prepared data connection stands, as the data plane knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataState {
    /// Not known to the data plane (forgotten, or no data plane that tracks it).
    Unknown,
    /// Waiting for its peer; no connection has arrived.
    Waiting,
    /// A connection arrived (or waits to be accepted) and bytes are moving; `moved` counts them.
    Busy { moved: u64 },
    /// Ended: every byte delivered and the connection closed, or how it failed.
    Done(DataOutcome),
}

/// How a data connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// Every byte delivered, both connections closed.
    Ok,
    /// Its peer never connected.
    NoPeer,
    /// The peer connected, but the onward connection could not be made (a client whose data
    /// port is closed): the client is told `425`.
    Unreachable(String),
    /// The transfer broke off.
    Failed(String),
}

/// The command a data connection serves, as a transfer log names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// `RETR`, `STOR`, `APPE`, `STOU`, `LIST`, `NLST` or `MLSD`.
    pub verb: String,
    /// Absolute when the working directory is known.
    pub path: String,
    pub user: String,
    pub binary: bool,
}

/// Things worth a log line, drained with [`Session::poll_event`](super::Session::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    User(String),
    Rewrote {
        dir: Dir,
        kind: super::ftp::Kind,
        from: String,
        to: String,
    },
    Refused {
        kind: Refusal,
        reason: String,
    },
    Malformed {
        dir: Dir,
        line: String,
        why: String,
    },
    TlsStarted,
    /// A download the server accepted (final reply `226`/`250`) or refused/aborted; `path` is
    /// absolute when the working directory is known.
    Retr {
        path: Option<String>,
        binary: bool,
        ok: bool,
    },
    /// What the cache does with a download.
    Cache {
        path: String,
        outcome: CacheOutcome,
    },
    /// A RETR of a cached file is held ([`Verdict::Hold`]): ask the server whether the file is
    /// unchanged (with [`Session::login`](super::Session::login); the shells' driver does) and
    /// call [`Session::release`](super::Session::release) with the answer, unless
    /// [`Session::handle_timeout`](super::Session::handle_timeout) released it first.
    CheckFresh(Key),
    Note(String),
}

/// What makes two downloads the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The server, either family (an IPv4 server's key names it as before: the same file names).
    pub server: SocketAddr,
    /// Login name; anonymous logins share one space.
    pub user: String,
    /// Absolute, normalised path on the server.
    pub path: String,
    /// TYPE I (image) or TYPE A (ASCII) — different bytes.
    pub binary: bool,
}

impl Key {
    pub fn new(server: SocketAddr, user: &str, path: String, binary: bool) -> Key {
        Key { server, user: Key::space(user).to_string(), path, binary }
    }

    /// The entry space of a login name: anonymous logins share one.
    pub fn space(user: &str) -> &str {
        if user.eq_ignore_ascii_case("anonymous") || user.eq_ignore_ascii_case("ftp") {
            "anonymous"
        } else {
            user
        }
    }

    /// A stable file name for the entry (FNV-1a over the key's fields; the index keeps the full
    /// key, so a collision is detected, not served).
    pub fn file_name(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        let text = format!("{}\0{}\0{}\0{}", self.server, self.user, self.path, self.binary as u8);
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

/// The credentials a session logged in with, for ftpgate's own freshness checks on the same
/// server under the same login. Held in memory only; `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Login {
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
}

impl core::fmt::Debug for Login {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Login {{ server: {}, user: {:?}, pass: <hidden> }}", self.server, self.user)
    }
}

/// The answer to a freshness check: what the cache does with a held RETR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same size and modification time: serve from the cache.
    Hit,
    /// Changed: fetch from the server and capture again.
    Stale,
    /// Deleted: pass the server's error on, drop the entry.
    Gone,
    /// The server could not confirm: no hit, keep the entry.
    Bypass,
}

/// What the cache does with one download. `Display` is the log's wording; [`CacheOutcome::label`]
/// the metric's `outcome` label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// Not in the cache: captured as it passes.
    Miss,
    /// Changed on the server since it was kept: fetched anew and captured.
    Stale,
    /// Changed, and the client resumes: passed, not captured.
    StaleResumed,
    /// Deleted on the server: the entry is dropped, the client gets the server's answer.
    Gone,
    /// A miss or a stale download that is not captured: which, and why.
    NotCaptured(Fetch, NotCaptured),
    /// Neither served from nor kept in the cache: why.
    Bypass(&'static str),
}

/// A download that would have been captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    Miss,
    Stale,
}

/// Why a download that should have been captured is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotCaptured {
    /// The data plane refused the capture (too many at once, or the cache cannot be written).
    CacheBusy,
    /// The session's login is not known (it started before ftpgate saw it).
    LoginUnknown,
}

impl CacheOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss | CacheOutcome::NotCaptured(Fetch::Miss, _) => "miss",
            CacheOutcome::Stale | CacheOutcome::StaleResumed | CacheOutcome::NotCaptured(Fetch::Stale, _) => "stale",
            CacheOutcome::Gone => "gone",
            CacheOutcome::Bypass(_) => "bypass",
        }
    }
}

impl core::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CacheOutcome::StaleResumed => f.write_str("stale, resumed: not captured"),
            CacheOutcome::NotCaptured(fetch, why) => {
                let fetch = if *fetch == Fetch::Miss { "miss" } else { "stale" };
                let why = match why {
                    NotCaptured::CacheBusy => "cache busy or unwritable",
                    NotCaptured::LoginUnknown => "login unknown",
                };
                write!(f, "{fetch}, not captured ({why})")
            }
            CacheOutcome::Bypass(why) => write!(f, "bypass ({why})"),
            o => f.write_str(o.label()),
        }
    }
}
