//! The FTP control-connection helper as a pure state machine: TCP segments in, verdicts out.
//!
//! Nothing here does I/O or reads a clock: the NFQUEUE shell (`crate::nfq_loop`) hands each
//! queued segment to [`Session::handle_segment`] and applies the returned [`Verdict`]; the data
//! plane is reached through the [`DataPlane`] trait, so tests drive whole sessions in memory.
//!
//! # Why this keeps conntrack consistent
//! The rules (see `crate::filter`) queue client→server segments in `raw PREROUTING`, *before*
//! conntrack, and server→client segments in `mangle FORWARD`, *after* it. Conntrack therefore sees
//! the whole connection in the **server's** sequence space: the client's segments arrive already
//! rewritten (mapped seq, SACK and payload), the server's arrive as the server sent them, and the
//! client's ACKs of server data are mapped back before conntrack judges them. Its window tracking
//! stays exact and `--ctstate INVALID -j DROP` keeps working; nothing is untracked, NAT applies.
//!
//! # Lines split over segments: absorb + probe
//! A line that may need rewriting (a *candidate*: a prefix of `PORT `/`EPRT `, or of `227 `/`229 `
//! while PASV/EPSV waits for its reply, or any reply ftpgate must replace) is held in userspace
//! while it is incomplete. Its segment is turned into a *probe*: a one-byte duplicate of the
//! preceding `\n`, which the receiver acknowledges at once; that ACK is mapped to "line start +
//! held bytes", so the sender sees its bytes acknowledged and never waits (Nagle) or times out.
//! The segment that completes the line carries the whole line from its start, rewritten. No
//! verdict is ever left waiting.
//!
//! Every region sent differently from how it arrived is recorded in the direction's
//! [`seqmap::SeqMap`], so retransmissions are rewritten identically and sequence, ACK and SACK
//! numbers stay mapped for the rest of the connection, also after `AUTH TLS` hands the session
//! over to pass-through.

pub mod explicit;
pub mod ftp;
pub mod policy;
pub mod seqmap;

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cache::{Decision, Key, Login};
pub use seqmap::Seq;
use seqmap::SeqMap;

/// Lines longer than this are passed through without being parsed (a valid PORT/EPRT/227/229 is
/// far shorter; OpenBSD ftp-proxy uses 500). Memory per direction is bounded by it.
pub const LINE_CAP: usize = 512;

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

/// What to do with a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Pass,
    /// Drop (a segment after a gap; it will be retransmitted).
    Drop,
    /// Forward with these fields replaced.
    Edit(Edit),
    /// Keep this segment until [`Session::release`] says what it becomes (a download that may be
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
}

impl Mode {
    /// `passive` or `active`, as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Passive => "passive",
            Mode::Active => "active",
        }
    }
}

/// A data connection the relay must prepare before the line announcing it goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    pub mode: Mode,
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    /// Where the relay connects once the expected peer has connected to it.
    pub target: SocketAddrV4,
    /// Explicit proxy mode: the gateway's own addresses on the two connections.
    pub via: Option<Via>,
}

/// The gateway's own addresses on an explicit-proxy session: the client connected to
/// `client_side`, the gateway connected to the server from `server_side`. Data connections are
/// announced on these instead of being intercepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    pub client_side: Ipv4Addr,
    pub server_side: Ipv4Addr,
}

/// Names one prepared data connection in the data plane.
pub type DataId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The endpoint to announce in the (possibly rewritten) line.
    pub announce: SocketAddrV4,
    pub id: DataId,
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
    fn invalidate(&mut self, server: SocketAddrV4, path: &str);
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
    /// while that reply is held ([`Session::data_done`]).
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
    Listen { at: Ipv4Addr, source: std::io::Error },
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
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Bounce => "bounce",
            Refusal::ThirdParty => "third_party",
            Refusal::Data(l) => l,
            Refusal::Family => "address_family",
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

/// Things worth a log line, drained with [`Session::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    User(String),
    Rewrote { dir: Dir, from: String, to: String },
    Refused { kind: Refusal, reason: String },
    Malformed { dir: Dir, line: String, why: String },
    TlsStarted,
    /// A download the server accepted (final reply `226`/`250`) or refused/aborted; `path` is
    /// absolute when the working directory is known.
    Retr { path: Option<String>, binary: bool, ok: bool },
    /// What the cache does with a download: `hit`, `miss`, `stale`, `gone` or `bypass (why)`.
    Cache { path: String, outcome: String },
    /// A RETR of a cached file is held ([`Verdict::Hold`]): ask the server whether the file is
    /// unchanged (with [`Session::login`]) and call [`Session::release`] with the answer.
    CheckFresh(Key),
    Note(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cmd {
    Pasv,
    Epsv,
    Auth,
    /// Replaced by NOOP; its reply is replaced by this text.
    Refused(Vec<u8>),
    Pwd,
    Cwd(String),
    Type(bool),
    Retr(String, Option<DataId>),
    /// A listing or upload on a prepared data connection.
    Xfer(DataId),
    Rest(u64),
    /// Injected by ftpgate (the `REST` before a cache hit): its reply is removed.
    Hidden,
    Other,
}

/// A RETR waiting for the freshness check.
#[derive(Debug)]
struct Hold {
    key: Key,
    name: String,
    id: DataId,
    /// Size of the cached entry.
    size: u64,
    /// The client's own REST offset.
    offset: u64,
    line: Vec<u8>,
    start: Seq,
}

/// How long a held final reply waits for its data connection without progress before it goes
/// to the client as the server sent it.
pub const REPLY_HOLD_STEP: Duration = Duration::from_secs(5);

/// A transfer command's final reply, held until its data connection is done.
#[derive(Debug)]
struct ReplyHold {
    id: DataId,
    /// The reply line's original start and length.
    start: Seq,
    len: usize,
    /// Where the reply line starts in the held payload.
    at: usize,
    deadline: Instant,
    moved: u64,
    code: u16,
    /// Part of the line was absorbed from an earlier segment: the seqmap must record it whole.
    mapped: bool,
    /// The held segment (set as soon as the segment that completed the reply is decided).
    packet: Option<HeldPacket>,
}

/// The held segment, as it will go out apart from the RETR line.
#[derive(Debug)]
struct HeldPacket {
    seq: Seq,
    ack: Seq,
    sack: Option<Vec<(Seq, Seq)>>,
    /// Bytes before the RETR line (pipelined commands).
    prefix: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Stream {
    /// Seen the SYN, or a line end after joining mid-stream: lines can be parsed.
    synced: bool,
    /// Sequence number of the first data byte (no probe is possible before it).
    first: Seq,
    /// Next original byte not yet processed.
    next: Seq,
    map: SeqMap,
    /// Text of the current line so far (capped at `LINE_CAP + 1`).
    line: Vec<u8>,
    line_start: Seq,
    line_len: usize,
    /// The current line's bytes `[line_start, next)` are held back (not yet sent).
    absorbing: bool,
    /// The current line's earlier bytes went out unparsed: it can no longer be rewritten.
    line_released: bool,
    fin: bool,
}

impl Stream {
    fn start_at(&mut self, seq: Seq) {
        self.synced = true;
        self.first = seq;
        self.next = seq;
        self.reset_line(seq);
    }
    fn reset_line(&mut self, at: Seq) {
        self.line.clear();
        self.line_start = at;
        self.line_len = 0;
        self.absorbing = false;
        self.line_released = false;
    }
    /// Maps the receiver's ACK of this stream back into the sender's space; held bytes count as
    /// acknowledged once everything before them is.
    fn unmap_ack(&self, ack: Seq) -> Seq {
        let a = self.map.unmap(ack);
        if self.absorbing && a == self.line_start {
            self.line_start.add(self.line_len)
        } else {
            a
        }
    }
}

/// What must survive a restart of the helper for a connection whose lengths changed: per
/// direction, the total length change and the original sequence number it applies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqState {
    pub c2s: (i64, Seq),
    pub s2c: (i64, Seq),
}

/// Per control connection state.
#[derive(Debug)]
pub struct Session {
    client: SocketAddrV4,
    server: SocketAddrV4,
    c2s: Stream,
    s2c: Stream,
    cmds: VecDeque<Cmd>,
    greeted: bool,
    multiline: Option<u16>,
    tls: bool,
    user: Option<String>,
    /// Kept in memory for the cache's freshness checks; never logged or written.
    pass: Option<String>,
    logged_in: bool,
    /// Working directory on the server, once a PWD reply told it.
    cwd: Option<String>,
    binary: bool,
    /// REST offset accepted for the next transfer.
    rest: u64,
    /// The data connection prepared by the last PASV/EPSV/PORT/EPRT, not yet used.
    data: Option<DataId>,
    hold: Option<Hold>,
    held: Option<HeldPacket>,
    hold_new: bool,
    /// A final reply waiting for its data connection, with its segment.
    reply_hold: Option<ReplyHold>,
    /// Set by `on_reply` when the line just completed is to be held.
    reply_hold_new: Option<(DataId, u16)>,
    /// Over the gateway's session limit: the server's greeting is replaced by this.
    refuse_greeting: Option<Vec<u8>>,
    events: VecDeque<Event>,
    last_seen: Instant,
    rst: bool,
    /// Restored from saved state and not seen since: it may be long gone.
    resumed_unseen: bool,
    /// Seen a SYN or a segment with data (not only stray ACKs/FINs of a finished connection).
    active: bool,
    /// Explicit proxy mode: the gateway's own addresses.
    via: Option<Via>,
}

/// A line as it may appear in a log: escaped, and never a password.
fn show(line: &[u8]) -> String {
    if is_prefix_ci(line, b"PASS ") && line.len() >= 5 {
        return "PASS <hidden>".into();
    }
    ftp::body(line).escape_ascii().to_string()
}

fn is_prefix_ci(line: &[u8], word: &[u8]) -> bool {
    let n = line.len().min(word.len());
    line[..n].eq_ignore_ascii_case(&word[..n])
}

impl Session {
    pub fn new(client: SocketAddrV4, server: SocketAddrV4, now: Instant) -> Self {
        Session {
            client,
            server,
            c2s: Stream::default(),
            s2c: Stream::default(),
            cmds: VecDeque::new(),
            greeted: false,
            multiline: None,
            tls: false,
            user: None,
            pass: None,
            logged_in: false,
            cwd: None,
            binary: false,
            rest: 0,
            data: None,
            hold: None,
            held: None,
            hold_new: false,
            reply_hold: None,
            reply_hold_new: None,
            refuse_greeting: None,
            events: VecDeque::new(),
            last_seen: now,
            rst: false,
            resumed_unseen: false,
            active: false,
            via: None,
        }
    }

    /// An explicit-proxy session: data connections are announced on the gateway's own
    /// addresses `via`.
    pub fn explicit(client: SocketAddrV4, server: SocketAddrV4, via: Via, now: Instant) -> Self {
        Session { via: Some(via), ..Session::new(client, server, now) }
    }

    /// A session the helper tracked before a restart: its sequence offsets are restored, the
    /// rest (lines, commands) is picked up from the next segment that starts a line.
    pub fn resume(client: SocketAddrV4, server: SocketAddrV4, st: SeqState, now: Instant) -> Self {
        let mut s = Session::new(client, server, now);
        s.c2s.map = SeqMap::from_offset(st.c2s.0, st.c2s.1);
        s.s2c.map = SeqMap::from_offset(st.s2c.0, st.s2c.1);
        s.greeted = true;
        s.resumed_unseen = true;
        s
    }

    /// A live connection: not closing, and not merely restored from saved state.
    pub fn is_live(&self) -> bool {
        !self.is_closed() && !self.resumed_unseen && self.active
    }

    /// Refuses this session (the gateway is at its session limit): the server's greeting
    /// reaches the client as `421 <why>`, after which clients disconnect.
    pub fn refuse_session(&mut self, why: &str) {
        self.refuse_greeting = Some(format!("421 ftpgate: {why}.\r\n").into_bytes());
    }

    /// Whether a segment on this session's addresses belongs to a later connection that reused
    /// them (clients may reuse their ports at once), so the session must start over with
    /// nothing of the old connection's state:
    /// - a client SYN that is not a retransmission of this one's (the old connection closed, or
    ///   was restored from saved state);
    /// - a SYN-ACK that acknowledges a client SYN other than the one this session saw: that SYN
    ///   passed the queue unseen, as a full queue does when failing open;
    /// - after this connection closed, a segment outside what its streams ever carried
    ///   (retransmitted FINs and final ACKs stay inside): SYN and SYN-ACK both passed unseen.
    ///
    /// Measured against the old connection's stream instead, a greeting beyond its end would
    /// wait as a "gap" for bytes that never come, and the client hang before the greeting.
    pub fn is_later_connection(&self, dir: Dir, seg: &Segment) -> bool {
        if seg.flags.syn {
            return match (dir, seg.flags.ack) {
                (Dir::ToServer, false) => {
                    !self.c2s.synced || self.resumed_unseen || self.is_closed() || self.c2s.first != seg.seq.add(1)
                }
                (Dir::ToClient, true) => self.c2s.synced && !self.resumed_unseen && self.c2s.first != seg.ack,
                _ => false,
            };
        }
        if !self.is_closed() {
            return false;
        }
        let st = match dir {
            Dir::ToServer => &self.c2s,
            Dir::ToClient => &self.s2c,
        };
        // a window of slack either side of what the stream carried, for retransmissions
        const SLACK: i64 = 65536;
        st.synced && (seg.seq.diff(st.first) < -SLACK || seg.seq.diff(st.next) > SLACK)
    }

    /// Both sides sent FIN, or one sent RST.
    pub fn is_closed(&self) -> bool {
        self.rst || (self.c2s.fin && self.s2c.fin)
    }

    /// The sequence offsets to save so a restarted helper can resume this session; `None`
    /// while no length changed, and once the connection is closing.
    pub fn seq_state(&self) -> Option<SeqState> {
        if !self.has_length_changes() || self.is_closed() {
            return None;
        }
        let (cd, cs) = self.c2s.map.offset_state();
        let (sd, ss) = self.s2c.map.offset_state();
        Some(SeqState { c2s: (cd, cs.unwrap_or(self.c2s.first)), s2c: (sd, ss.unwrap_or(self.s2c.first)) })
    }

    pub fn client(&self) -> SocketAddrV4 {
        self.client
    }
    pub fn server(&self) -> SocketAddrV4 {
        self.server
    }
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// The next sequence number (in the sender's numbers) this session expects in `dir`.
    pub fn next_seq(&self, dir: Dir) -> Seq {
        match dir {
            Dir::ToServer => self.c2s.next,
            Dir::ToClient => self.s2c.next,
        }
    }

    /// A word for `ftpgate status`.
    pub fn state(&self) -> &'static str {
        if self.is_closed() || self.c2s.fin || self.s2c.fin {
            "closing"
        } else if self.tls {
            "tls (passed through)"
        } else if self.hold.is_some() {
            "checking the cache"
        } else if self.reply_hold.is_some() {
            "finishing a transfer"
        } else if self.logged_in {
            "logged in"
        } else if self.greeted {
            "login"
        } else {
            "connecting"
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// The credentials this session logged in with, for ftpgate's own freshness checks.
    pub fn login(&self) -> Option<Login> {
        if !self.logged_in {
            return None;
        }
        Some(Login { server: self.server, user: self.user.clone()?, pass: self.pass.clone().unwrap_or_default() })
    }
    /// The cache entry a held RETR asks about.
    pub fn held_key(&self) -> Option<&Key> {
        self.hold.as_ref().map(|h| &h.key)
    }
    /// Whether a segment is held waiting for [`Session::release`] or [`Session::data_done`].
    pub fn is_holding(&self) -> bool {
        self.held.is_some() || self.reply_hold.is_some()
    }
    /// The data connection whose end a held final reply waits for: call
    /// [`Session::data_done`] when the data plane says it ended.
    pub fn awaiting_data(&self) -> Option<DataId> {
        self.reply_hold.as_ref().map(|h| h.id)
    }
    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reply_hold.as_ref().map(|h| h.deadline)
    }
    /// Deadlines: a held final reply whose data connection made no progress for
    /// [`REPLY_HOLD_STEP`] goes to the client as the server sent it. Returns the held
    /// segment's verdict when it is released.
    pub fn handle_timeout(&mut self, now: Instant, dp: &mut dyn DataPlane) -> Option<Verdict> {
        let h = self.reply_hold.as_mut()?;
        if now < h.deadline {
            return None;
        }
        match dp.data_state(h.id) {
            DataState::Busy { moved } if moved != h.moved => {
                h.moved = moved;
                h.deadline = now + REPLY_HOLD_STEP;
                None
            }
            DataState::Done(outcome) => {
                let code = h.code;
                let new = self.failed_transfer_reply(&outcome, code);
                self.release_reply(new)
            }
            _ => {
                self.events.push_back(Event::Note(format!(
                    "data connection made no progress for {} s; the server's {} reply goes on",
                    REPLY_HOLD_STEP.as_secs(),
                    h.code
                )));
                self.release_reply(None)
            }
        }
    }
    /// The data connection a held final reply waits for has ended: the held segment's verdict
    /// (`None` if nothing is held or it has not ended). The reply goes on as the server sent it,
    /// or as `425` when the client could not be reached, `426` when the transfer broke off.
    pub fn data_done(&mut self, dp: &mut dyn DataPlane) -> Option<Verdict> {
        let h = self.reply_hold.as_ref()?;
        let DataState::Done(outcome) = dp.data_state(h.id) else { return None };
        let code = h.code;
        let new = self.failed_transfer_reply(&outcome, code);
        self.release_reply(new)
    }

    /// What the client gets instead of the server's final reply `code` when its data connection
    /// ended with `outcome`.
    fn failed_transfer_reply(&mut self, outcome: &DataOutcome, code: u16) -> Option<Vec<u8>> {
        match outcome {
            DataOutcome::Unreachable(e) => {
                self.events.push_back(Event::Note(format!("data connection could not be made ({e}); answering 425 instead of {code}")));
                Some(b"425 Can't open data connection.\r\n".to_vec())
            }
            DataOutcome::Failed(e) if code < 300 => {
                self.events.push_back(Event::Note(format!("data connection broke off ({e}); answering 426 instead of {code}")));
                Some(format!("426 Connection closed; transfer aborted ({}).\r\n", e.escape_default()).into_bytes())
            }
            _ => None,
        }
    }

    /// Sends the held final reply on, replaced by `new` if given.
    fn release_reply(&mut self, new: Option<Vec<u8>>) -> Option<Verdict> {
        let mut h = self.reply_hold.take()?;
        let p = h.packet.take()?;
        let mut payload = p.prefix;
        let st = &mut self.s2c;
        match new {
            Some(new) => {
                payload.truncate(h.at);
                payload.extend_from_slice(&new);
                st.map.push(h.start, h.len, new);
            }
            None if h.mapped => st.map.push(h.start, h.len, payload[h.at..].to_vec()),
            None => {}
        }
        Some(Verdict::Edit(Edit { seq: p.seq, ack: p.ack, sack: p.sack, payload: Some(payload) }))
    }
    /// True once lengths changed: the session must outlive idle periods, or later segments
    /// would go out unmapped.
    pub fn has_length_changes(&self) -> bool {
        !self.c2s.map.is_identity() || !self.s2c.map.is_identity()
    }

    /// When the shell may forget this session.
    pub fn expires_at(&self, idle: Duration, mapped_idle: Duration) -> Instant {
        if self.resumed_unseen {
            return self.last_seen + idle; // restored but never seen again: don't keep it for days
        }
        if self.rst || (self.c2s.fin && self.s2c.fin) {
            // keep a little while for retransmitted FINs and final ACKs
            return self.last_seen + Duration::from_secs(30).min(idle);
        }
        self.last_seen + if self.has_length_changes() { mapped_idle } else { idle }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn stream(&mut self, dir: Dir) -> &mut Stream {
        match dir {
            Dir::ToServer => &mut self.c2s,
            Dir::ToClient => &mut self.s2c,
        }
    }
    fn streams(&mut self, dir: Dir) -> (&mut Stream, &mut Stream) {
        match dir {
            Dir::ToServer => (&mut self.c2s, &mut self.s2c),
            Dir::ToClient => (&mut self.s2c, &mut self.c2s),
        }
    }

    /// Handles one segment travelling in `dir`.
    pub fn handle_segment(&mut self, dir: Dir, seg: &Segment, dp: &mut dyn DataPlane, now: Instant) -> Verdict {
        self.last_seen = now;
        self.resumed_unseen = false;
        self.active |= seg.flags.syn || !seg.payload.is_empty();
        if seg.flags.rst {
            self.rst = true;
        }
        let (st, other) = self.streams(dir);

        // ACK and SACK: numbers of the other direction's stream.
        let ack = if seg.flags.ack { other.unmap_ack(seg.ack) } else { seg.ack };
        if seg.flags.ack && other.synced {
            other.map.acked(ack);
        }
        let mut sack_changed = false;
        let mut sack = Vec::with_capacity(seg.sack.len());
        for &(l, r) in seg.sack {
            if seg.flags.ack && r <= seg.ack {
                sack_changed = true; // D-SACK (e.g. of a probe): says nothing about new data
                continue;
            }
            let m = (other.map.unmap(l), other.map.unmap(r));
            sack_changed |= m != (l, r);
            sack.push(m);
        }
        let sack = sack_changed.then_some(sack);

        if seg.flags.syn {
            st.start_at(seg.seq.add(1));
            return finish(seg, seg.seq, ack, sack, None);
        }
        if !st.synced && looks_like_line(dir, seg.payload) {
            // Joined mid-stream (e.g. after a restart) and this segment is one whole line or
            // more, as clients and servers send them: take it as line-aligned.
            st.synced = true;
            st.first = seg.seq.sub(1); // bytes came before, so probes are possible
            st.next = seg.seq;
            st.reset_line(seg.seq);
            if dir == Dir::ToClient {
                self.greeted = true;
            }
        }
        let st = self.stream(dir);
        if !st.synced {
            // Joined mid-stream: wait for a line end to find our footing.
            let end = seg.seq.add(seg.payload.len());
            if seg.payload.last() == Some(&b'\n') {
                st.start_at(end);
                st.first = seg.seq; // bytes before exist, so probes are possible
                if dir == Dir::ToClient {
                    self.greeted = true;
                }
            }
            let seq = self.stream(dir).map.map(seg.seq);
            return finish(seg, seq, ack, sack, None);
        }
        let tls = self.tls;
        let holding = dir == Dir::ToServer && self.hold.is_some();
        let reply_held_from = if dir == Dir::ToClient { self.reply_hold.as_ref().map(|h| h.start) } else { None };
        let refusing = dir == Dir::ToClient && self.refuse_greeting.is_some() && !self.greeted;
        let st = self.stream(dir);
        let end = seg.seq.add(seg.payload.len());
        if holding && (end > st.next || seg.flags.fin) {
            return Verdict::Drop; // nothing may pass the held RETR; TCP retransmits it later
        }
        if let Some(start) = reply_held_from {
            if (!seg.payload.is_empty() && end > start) || seg.flags.fin {
                // nothing may overtake the held final reply, nor repeat it; TCP retransmits
                return Verdict::Drop;
            }
        }
        if seg.flags.fin {
            st.fin = true;
        }
        if tls {
            let seq = st.map.map(seg.seq);
            return finish(seg, seq, ack, sack, None);
        }

        if seg.seq > st.next {
            if seg.payload.is_empty() && !seg.flags.fin {
                // A pure ACK past the stream: after this side's FIN (which takes a sequence
                // number of its own) or after bytes lost before the queue. It carries no
                // bytes to rewrite, and the other side's FIN waits for it.
                let seq = st.map.map(seg.seq);
                return finish(seg, seq, ack, sack, None);
            }
            return Verdict::Drop; // a gap: wait for the retransmission of what is missing
        }
        if st.map.is_folded(seg.seq) {
            // a retransmission of bytes acknowledged long ago whose edits are folded away:
            // the receiver has them, and they could not be rendered as first sent
            return Verdict::Drop;
        }
        if refusing && seg.seq == st.first && end > st.next && !seg.payload.contains(&b'\n') {
            // a greeting to replace that starts split: nothing precedes it to probe with, so
            // wait for the server's retransmission, which carries the whole line
            return Verdict::Drop;
        }
        // Everything before `sent_end` has gone out in some form (held bytes have not).
        let sent_end = if st.absorbing { st.line_start } else { st.next };
        let mut out = Vec::new();
        let mut out_seq = None;
        if seg.seq < sent_end {
            let upto = (sent_end.diff(seg.seq) as usize).min(seg.payload.len());
            let (s, bytes) = st.map.render(seg.seq, &seg.payload[..upto]);
            out_seq = Some(s);
            out = bytes;
        }
        let has_new = end > st.next || (seg.flags.fin && st.absorbing);
        if has_new {
            let from = (st.next.diff(seg.seq).max(0) as usize).min(seg.payload.len());
            let (emit_from, bytes) = self.feed(dir, &seg.payload[from..], seg.flags.fin, dp);
            let st = self.stream(dir);
            let s = st.map.map(emit_from);
            out_seq.get_or_insert(s);
            out.extend_from_slice(&bytes);
            if std::mem::take(&mut self.hold_new) {
                let seq = out_seq.unwrap_or(s);
                self.held = Some(HeldPacket { seq, ack, sack, prefix: out });
                return Verdict::Hold;
            }
            if let Some(h) = self.reply_hold.as_mut().filter(|h| h.packet.is_none()) {
                let seq = out_seq.unwrap_or(s);
                h.packet = Some(HeldPacket { seq, ack, sack, prefix: out });
                return Verdict::Hold;
            }
        }
        let st = self.stream(dir);
        if out.is_empty() && st.absorbing {
            // Probe: a one-byte duplicate of the '\n' before the held line.
            let seq = st.map.map(st.line_start).sub(1);
            return finish(seg, seq, ack, sack, Some(b"\n".to_vec()));
        }
        let seq = match out_seq {
            Some(s) => s,
            // no payload: a pure ACK/FIN never claims bytes that are still held
            None if st.absorbing && seg.seq >= st.line_start => st.map.map(st.line_start),
            None => st.map.map(seg.seq),
        };
        let payload = (out.as_slice() != seg.payload).then_some(out);
        finish(seg, seq, ack, sack, payload)
    }

    /// Feeds new in-order bytes of `dir` through the line machine. Returns the original sequence
    /// number the emitted bytes start at, and the bytes (held ones left out).
    fn feed(&mut self, dir: Dir, data: &[u8], fin: bool, dp: &mut dyn DataPlane) -> (Seq, Vec<u8>) {
        let st = self.stream(dir);
        let was_absorbing = st.absorbing;
        let emit_from = if was_absorbing { st.line_start } else { st.next };
        let mut out: Vec<u8> = if was_absorbing { st.line.clone() } else { Vec::new() };
        st.absorbing = false;
        // Where the current line starts in `out`, if all of it is there (so it can be replaced).
        let mut line_pos = if st.line_released { None } else { Some(0) };
        let mut held_before = was_absorbing;
        st.next = st.next.add(data.len());

        let mut rest = data;
        while !rest.is_empty() {
            let st = self.stream(dir);
            let (chunk, complete) = match rest.iter().position(|&c| c == b'\n') {
                Some(k) => (&rest[..=k], true),
                None => (rest, false),
            };
            rest = &rest[chunk.len()..];
            out.extend_from_slice(chunk);
            let room = (LINE_CAP + 1).saturating_sub(st.line.len());
            st.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            st.line_len += chunk.len();
            if !complete {
                break;
            }
            let (start, len) = (st.line_start, st.line_len);
            let line = std::mem::take(&mut st.line);
            st.reset_line(start.add(len));
            let replacement = if len > LINE_CAP {
                self.events.push_back(Event::Malformed {
                    dir,
                    line: show(&line[..64.min(line.len())]),
                    why: format!("line of {len} bytes passed through unparsed"),
                });
                if dir == Dir::ToServer {
                    self.cmds.push_back(Cmd::Other);
                }
                None
            } else {
                self.on_line(dir, &line, line_pos.is_some(), dp)
            };
            if let Some((id, code)) = self.reply_hold_new.take() {
                if let Some(p) = line_pos {
                    // hold the segment up to the end of this reply until the data connection
                    // is done; what followed it is left for the server to send again
                    let now = self.last_seen;
                    self.reply_hold = Some(ReplyHold {
                        id,
                        start,
                        len,
                        at: p,
                        deadline: now + REPLY_HOLD_STEP,
                        moved: 0,
                        code,
                        mapped: held_before,
                        packet: None,
                    });
                    let st = self.stream(dir);
                    st.next = start.add(len);
                    return (emit_from, out);
                }
            }
            if self.hold_new {
                // keep the RETR line in hand (absorbed: the client sees it acknowledged); what
                // followed it in this segment is left for the client to send again
                if let Some(h) = self.hold.as_mut() {
                    h.start = start;
                }
                let st = self.stream(dir);
                out.truncate(line_pos.unwrap_or(out.len()));
                st.next = start.add(len);
                st.line = line;
                st.line_start = start;
                st.line_len = len;
                st.absorbing = true;
                return (emit_from, out);
            }
            let st = self.stream(dir);
            match (replacement, line_pos) {
                (Some(new), Some(p)) => {
                    out.truncate(p);
                    out.extend_from_slice(&new);
                    st.map.push(start, len, new);
                }
                (None, Some(p)) if held_before => {
                    // sent from its start now, although the sender saw part of it acknowledged:
                    // a retransmission must resend all of it
                    st.map.push(start, len, out[p..].to_vec());
                }
                _ => {}
            }
            held_before = false;
            if self.tls {
                // the rest is TLS: pass it on as it is
                out.extend_from_slice(rest);
                let st = self.stream(dir);
                st.reset_line(st.next);
                return (emit_from, out);
            }
            line_pos = Some(out.len());
        }

        // A partial line at the end: hold it if it may need rewriting.
        let candidate = self.is_candidate(dir);
        let st = self.stream(dir);
        if st.line_len > 0 {
            match line_pos {
                Some(p) if candidate && !fin && st.line_start != st.first => {
                    out.truncate(p);
                    st.absorbing = true;
                }
                Some(p) => {
                    if held_before {
                        st.map.push(st.line_start, st.line_len, out[p..].to_vec());
                    }
                    st.line_released = true;
                }
                None => {}
            }
        }
        (emit_from, out)
    }

    /// Whether the current partial line of `dir` might have to be rewritten.
    fn is_candidate(&self, dir: Dir) -> bool {
        let st = match dir {
            Dir::ToServer => &self.c2s,
            Dir::ToClient => &self.s2c,
        };
        let l = &st.line;
        if st.line_len > LINE_CAP || st.line_released {
            return false;
        }
        match dir {
            Dir::ToServer => {
                is_prefix_ci(l, b"PORT ")
                    || is_prefix_ci(l, b"EPRT ")
                    || (is_prefix_ci(l, b"RETR ") && self.data.is_some() && self.logged_in && self.binary)
            }
            Dir::ToClient => {
                if !self.greeted {
                    return self.refuse_greeting.is_some() && self.multiline.is_none();
                }
                if self.multiline.is_some() {
                    return false;
                }
                match self.cmds.front() {
                    Some(Cmd::Pasv) => is_prefix_ci(l, b"227 "),
                    Some(Cmd::Epsv) => is_prefix_ci(l, b"229 "),
                    Some(Cmd::Refused(_)) | Some(Cmd::Hidden) | Some(Cmd::Retr(_, Some(_))) | Some(Cmd::Xfer(_)) => {
                        l.first().is_none_or(|&c| c != b'1')
                    }
                    _ => false,
                }
            }
        }
    }

    /// A complete line. Returns its replacement, if any. `whole` says whether all of the line
    /// is still in ftpgate's hands (else it can only be observed).
    fn on_line(&mut self, dir: Dir, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        match dir {
            Dir::ToServer => self.on_command(line, whole, dp),
            Dir::ToClient => self.on_reply(line, whole, dp),
        }
    }

    fn refuse(&mut self, code: u16, kind: Refusal, reason: String) -> Option<Vec<u8>> {
        let reply = format!("{code} ftpgate: {reason}.\r\n").into_bytes();
        self.events.push_back(Event::Refused { kind, reason });
        self.cmds.push_back(Cmd::Refused(reply));
        Some(b"NOOP\r\n".to_vec())
    }

    fn on_command(&mut self, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        let verb = ftp::verb(line);
        if let (Some(v), Some(id)) = (verb.as_ref(), self.data) {
            if [&b"RETR"[..], b"STOR", b"APPE", b"STOU", b"LIST", b"NLST", b"MLSD"].contains(&&v[..]) {
                let name = arg(line);
                let path = self.cwd.as_deref().and_then(|c| crate::cache::resolve(c, &name)).unwrap_or(name);
                let user = self.user.clone().unwrap_or_else(|| "-".into());
                let verb = String::from_utf8_lossy(v).into_owned();
                dp.describe(id, Described { verb, path, user, binary: self.binary });
            }
        }
        if matches!(verb.as_ref(), Some(b"PASV" | b"EPSV" | b"PORT" | b"EPRT")) && dp.cache_enabled() {
            if let Some(login) = self.login() {
                dp.transfer_ahead(&login);
            }
        }
        let (cmd, parsed) = match verb.as_ref() {
            Some(b"PORT") => (Cmd::Other, Some(ftp::parse_port(line))),
            Some(b"EPRT") => (Cmd::Other, Some(ftp::parse_eprt(line))),
            Some(b"PASV") => (Cmd::Pasv, None),
            Some(b"EPSV") if !ftp::body(line).to_ascii_uppercase().ends_with(b"ALL") => (Cmd::Epsv, None),
            Some(b"AUTH") => (Cmd::Auth, None),
            Some(b"PWD ") | Some(b"XPWD") => (Cmd::Pwd, None),
            Some(b"CWD ") | Some(b"XCWD") => (Cmd::Cwd(arg(line)), None),
            Some(b"CDUP") | Some(b"XCUP") => (Cmd::Cwd("..".into()), None),
            Some(b"TYPE") => (Cmd::Type(arg(line).to_ascii_uppercase().starts_with('I')), None),
            Some(b"RETR") => {
                let (name, id, offset) = (arg(line), self.data.take(), std::mem::take(&mut self.rest));
                if self.plan_retr(&name, id, offset, line, whole, dp) {
                    return None; // held: the command is queued when released
                }
                (Cmd::Retr(name, id), None)
            }
            Some(b"REST") => (Cmd::Rest(arg(line).trim().parse().unwrap_or(0)), None),
            Some(b"LIST") | Some(b"NLST") | Some(b"MLSD") | Some(b"STOU") => {
                self.rest = 0;
                (self.data.take().map_or(Cmd::Other, Cmd::Xfer), None)
            }
            Some(b"STOR") | Some(b"APPE") | Some(b"DELE") | Some(b"RNFR") | Some(b"RNTO") => {
                let mut cmd = Cmd::Other;
                if matches!(verb.as_ref(), Some(b"STOR") | Some(b"APPE")) {
                    cmd = self.data.take().map_or(Cmd::Other, Cmd::Xfer);
                    self.rest = 0;
                }
                if let Some(path) = self.cwd.as_deref().and_then(|c| crate::cache::resolve(c, &arg(line))) {
                    dp.invalidate(self.server, &path);
                }
                (cmd, None)
            }
            Some(b"PASS") => {
                self.pass = Some(arg(line));
                (Cmd::Other, None)
            }
            Some(b"REIN") => {
                self.logged_in = false;
                (Cmd::Other, None)
            }
            Some(b"USER") => {
                let name = String::from_utf8_lossy(&ftp::body(line)[4..]).trim().to_string();
                self.events.push_back(Event::User(name.clone()));
                self.user = Some(name);
                self.pass = None;
                self.logged_in = false;
                self.cwd = None;
                (Cmd::Other, None)
            }
            _ => (Cmd::Other, None),
        };
        let Some(parsed) = parsed else {
            self.cmds.push_back(cmd);
            return None;
        };
        let ep = match parsed {
            Ok(ep) => ep,
            Err(ftp::ParseError::UnsupportedProtocol) if whole => {
                return self.refuse(522, Refusal::Family, "only IPv4 data connections are relayed, use (1)".into());
            }
            Err(e) => {
                self.events.push_back(Event::Malformed { dir: Dir::ToServer, line: show(line), why: format!("{e:?}") });
                self.cmds.push_back(Cmd::Other);
                return None;
            }
        };
        let named = SocketAddrV4::new(ep.ip.unwrap_or(Ipv4Addr::UNSPECIFIED), ep.port);
        if !whole {
            self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; not relayed", show(line))));
            self.cmds.push_back(Cmd::Other);
            return None;
        }
        if let Err(reason) = policy::check_active(*self.client.ip(), named) {
            return self.refuse(500, Refusal::Bounce, reason);
        }
        let req = DataRequest { mode: Mode::Active, client: self.client, server: self.server, target: named, via: self.via };
        match dp.open(&req) {
            Ok(Opened { announce, id }) => {
                self.data = Some(id);
                self.cmds.push_back(Cmd::Other);
                (announce != named).then(|| self.rewrite(Dir::ToServer, line, &ep, announce))
            }
            Err(e) => self.refuse(425, Refusal::Data(e.label()), format!("cannot prepare the data connection: {e}")),
        }
    }

    fn rewrite(&mut self, dir: Dir, line: &[u8], ep: &ftp::Endpoint, to: SocketAddrV4) -> Vec<u8> {
        let new = ftp::emit(line, ep, to);
        self.events.push_back(Event::Rewrote { dir, from: show(line), to: show(&new) });
        new
    }

    fn on_reply(&mut self, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        let Some((code, last)) = ftp::reply_code(line) else {
            return None; // text line of a multi-line reply
        };
        if let Some(open) = self.multiline {
            if code != open || !last {
                return None;
            }
            self.multiline = None;
        } else if !last {
            self.multiline = Some(code);
            return None;
        }
        if code < 200 {
            return None; // preliminary: the command's final reply is still to come
        }
        if !self.greeted {
            self.greeted = true;
            if let Some(text) = self.refuse_greeting.take() {
                // counted where the session was refused
                self.events.push_back(Event::Note("session limit reached; answered 421".into()));
                return Some(text);
            }
            return None;
        }
        if code == 230 {
            self.logged_in = true;
            // until a PWD reply says where, the working directory is the login's home
            self.cwd.get_or_insert_with(|| "~".into());
        }
        let cmd = self.cmds.pop_front().unwrap_or(Cmd::Other);
        match (cmd, code) {
            (Cmd::Refused(text), _) => Some(text),
            (Cmd::Hidden, code) => {
                if code != 350 {
                    self.events.push_back(Event::Note(format!("server refused ftpgate's REST ({code}); relaying its data")));
                }
                Some(Vec::new())
            }
            (Cmd::Rest(n), code) => {
                self.rest = if code == 350 { n } else { 0 };
                None
            }
            (Cmd::Auth, 234) => {
                self.tls = true;
                self.events.push_back(Event::TlsStarted);
                None
            }
            (Cmd::Pwd, 257) => {
                self.cwd = crate::cache::dir_from_257(ftp::body(line));
                None
            }
            (Cmd::Cwd(dir), 200..=299) => {
                self.cwd = match self.cwd.as_deref() {
                    Some(c) => crate::cache::resolve_dir(c, &dir),
                    None if dir.starts_with('/') => crate::cache::resolve_dir("/", &dir),
                    None => None,
                };
                None
            }
            (Cmd::Type(binary), 200..=299) => {
                self.binary = binary;
                None
            }
            (Cmd::Retr(name, id), code) => {
                let path = self.resolve(&name);
                self.events.push_back(Event::Retr { path, binary: self.binary, ok: code < 300 });
                let id = id?;
                dp.finished(id, code < 300);
                self.transfer_end(id, code, whole, dp)
            }
            (Cmd::Xfer(id), code) => self.transfer_end(id, code, whole, dp),
            (Cmd::Pasv, 227) => self.on_passive(line, ftp::parse_227(line), whole, dp),
            (Cmd::Epsv, 229) => self.on_passive(line, ftp::parse_229(line), whole, dp),
            _ => None,
        }
    }

    /// A transfer command's final reply: the client must not see it before its data connection
    /// has carried every byte and been closed (in active mode the relay connects to the client
    /// only after the server connected to it, so a server with little to send can finish
    /// first). Held until the data plane says the connection is done, replaced when it failed.
    fn transfer_end(&mut self, id: DataId, code: u16, whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        let hold = match dp.data_state(id) {
            DataState::Done(outcome) => return self.failed_transfer_reply(&outcome, code),
            DataState::Busy { .. } => true,
            // a 2xx means the server made the data connection: it waits to be accepted
            DataState::Waiting => code < 300,
            DataState::Unknown => false,
        };
        if hold && whole {
            self.reply_hold_new = Some((id, code));
        }
        None
    }

    /// The absolute path a name given to a command refers to, if the working directory is known
    /// (or the name is absolute).
    fn resolve(&self, name: &str) -> Option<String> {
        match self.cwd.as_deref() {
            Some(c) => crate::cache::resolve(c, name),
            None if name.starts_with('/') => crate::cache::resolve("/", name),
            None => None,
        }
    }

    fn cache_key(&self, name: &str) -> Result<Key, &'static str> {
        if self.tls {
            return Err("encrypted session");
        }
        if !self.logged_in {
            return Err("not logged in");
        }
        if !self.binary {
            return Err("ASCII transfer");
        }
        let user = self.user.as_deref().ok_or("login name unknown")?;
        let path = self.resolve(name).ok_or("working directory unknown")?;
        Ok(Key::new(self.server, user, path, true))
    }

    /// Decides what the cache does with a RETR. Returns true when the line is held for a
    /// freshness check.
    fn plan_retr(
        &mut self,
        name: &str,
        id: Option<DataId>,
        offset: u64,
        line: &[u8],
        whole: bool,
        dp: &mut dyn DataPlane,
    ) -> bool {
        if !dp.cache_enabled() {
            return false;
        }
        let key = match self.cache_key(name) {
            Ok(k) => k,
            Err(why) => {
                let path = self.resolve(name).unwrap_or_else(|| name.to_string());
                self.events.push_back(Event::Cache { path, outcome: format!("bypass ({why})") });
                return false;
            }
        };
        let bypass = |s: &mut Self, why: &str| {
            s.events.push_back(Event::Cache { path: key.path.clone(), outcome: format!("bypass ({why})") });
            false
        };
        let Some(id) = id else { return bypass(self, "no data connection prepared") };
        if let Some(size) = dp.cached(&key) {
            if !whole {
                return bypass(self, "command split before ftpgate saw it");
            }
            self.events.push_back(Event::CheckFresh(key.clone()));
            self.hold = Some(Hold { key, name: name.to_string(), id, size, offset, line: line.to_vec(), start: Seq(0) });
            self.hold_new = true;
            return true;
        }
        if offset > 0 {
            return bypass(self, "resumed download");
        }
        self.capture(key, id, "miss", dp);
        false
    }

    fn capture(&mut self, key: Key, id: DataId, outcome: &str, dp: &mut dyn DataPlane) {
        let path = key.path.clone();
        let outcome = match self.login() {
            Some(login) => {
                if dp.transfer(id, Transfer::Capture { key, login }) {
                    outcome.to_string()
                } else {
                    format!("{outcome}, not captured (cache busy or unwritable)")
                }
            }
            None => format!("{outcome}, not captured (login unknown)"),
        };
        self.events.push_back(Event::Cache { path, outcome });
    }

    /// Resolves a held RETR with the freshness check's answer; returns the held segment's
    /// verdict. A hit goes to the server as `REST <size>` + the RETR (the server sends nothing,
    /// its `350` is removed from the client's view) and the relay serves the entry.
    pub fn release(&mut self, decision: Decision, dp: &mut dyn DataPlane) -> Option<Verdict> {
        let h = self.hold.take()?;
        let p = self.held.take()?;
        let mut new = h.line.clone();
        let path = h.key.path.clone();
        match decision {
            Decision::Hit => {
                if dp.transfer(h.id, Transfer::Serve { key: h.key.clone(), offset: h.offset }) {
                    new = [format!("REST {}\r\n", h.size).as_bytes(), &h.line].concat();
                    self.cmds.push_back(Cmd::Hidden);
                    self.events.push_back(Event::Cache { path, outcome: "hit".into() });
                } else {
                    self.events.push_back(Event::Cache { path, outcome: "bypass (entry unavailable)".into() });
                }
            }
            Decision::Stale if h.offset == 0 => {
                self.capture(h.key.clone(), h.id, "stale", dp);
            }
            Decision::Stale => self.events.push_back(Event::Cache { path, outcome: "stale, resumed: not captured".into() }),
            Decision::Gone => self.events.push_back(Event::Cache { path, outcome: "gone".into() }),
            Decision::Bypass => {
                self.events.push_back(Event::Cache { path, outcome: "bypass (server did not confirm the file)".into() })
            }
        }
        self.cmds.push_back(Cmd::Retr(h.name, Some(h.id)));
        let len = h.line.len();
        let st = &mut self.c2s;
        st.map.push(h.start, len, new.clone());
        st.reset_line(h.start.add(len));
        st.next = h.start.add(len);
        let mut payload = p.prefix;
        payload.extend_from_slice(&new);
        Some(Verdict::Edit(Edit { seq: p.seq, ack: p.ack, sack: p.sack, payload: Some(payload) }))
    }

    fn on_passive(
        &mut self,
        line: &[u8],
        parsed: Result<ftp::Endpoint, ftp::ParseError>,
        whole: bool,
        dp: &mut dyn DataPlane,
    ) -> Option<Vec<u8>> {
        let ep = match parsed {
            Ok(ep) => ep,
            Err(e) => {
                self.events.push_back(Event::Malformed { dir: Dir::ToClient, line: show(line), why: format!("{e:?}") });
                return None;
            }
        };
        let (target, note) = policy::passive_target(*self.server.ip(), ep.ip, ep.port);
        if let Some(n) = note {
            self.events.push_back(Event::Refused { kind: Refusal::ThirdParty, reason: n });
        }
        let req = DataRequest { mode: Mode::Passive, client: self.client, server: self.server, target, via: self.via };
        let named = SocketAddrV4::new(ep.ip.unwrap_or(*self.server.ip()), ep.port);
        let opened = dp.open(&req);
        if let Ok(o) = &opened {
            self.data = Some(o.id);
        }
        match opened {
            Ok(o) if o.announce == named => None,
            Ok(_) | Err(_) if !whole => {
                self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; cannot rewrite", show(line))));
                None
            }
            Ok(o) => Some(self.rewrite(Dir::ToClient, line, &ep, o.announce)),
            Err(e) => {
                self.events.push_back(Event::Refused { kind: Refusal::Data(e.label()), reason: format!("passive data connection: {e}") });
                Some(format!("425 ftpgate: cannot prepare the data connection: {e}.\r\n").into_bytes())
            }
        }
    }
}

/// Whether a segment seen mid-stream plausibly starts a line and ends one: a command verb
/// (3–4 letters, then space or CRLF) towards the server, a reply code (3 digits, then space or
/// dash) towards the client, and a final `\n`.
fn looks_like_line(dir: Dir, p: &[u8]) -> bool {
    if p.last() != Some(&b'\n') || p.len() < 5 {
        return false;
    }
    match dir {
        Dir::ToServer => {
            let n = p.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            (3..=4).contains(&n) && matches!(p[n], b' ' | b'\r')
        }
        Dir::ToClient => p[..3].iter().all(u8::is_ascii_digit) && matches!(p[3], b' ' | b'-'),
    }
}

/// The argument of a command line, as sent.
fn arg(line: &[u8]) -> String {
    let b = ftp::body(line);
    let at = b.iter().position(|&c| c == b' ').map_or(b.len(), |i| i + 1);
    String::from_utf8_lossy(&b[at..]).into_owned()
}

fn finish(seg: &Segment, seq: Seq, ack: Seq, sack: Option<Vec<(Seq, Seq)>>, payload: Option<Vec<u8>>) -> Verdict {
    if seq == seg.seq && ack == seg.ack && sack.is_none() && payload.is_none() {
        Verdict::Pass
    } else {
        Verdict::Edit(Edit { seq, ack, sack, payload })
    }
}

#[cfg(test)]
mod tests;
