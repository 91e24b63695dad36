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
//!
//! # Layout (the order a segment goes through)
//! - `types`: the interface — [`Segment`] in, [`Verdict`] and [`Event`] out, the [`DataPlane`]
//!   the core drives, and the session facts the cache is keyed by ([`Key`], [`Login`]).
//! - `segment`: one segment — sequence/ACK/SACK mapping both ways, retransmissions, probes.
//! - `line`: in-order bytes cut into lines; a candidate line absorbed while incomplete.
//! - `commands`: the command/reply state, rewrites, refusals, the data connections prepared.
//! - `convert`: `--server-mode`, the data connection towards the server in the other mode.
//! - `retr`: the cache's part of a RETR (key, capture or hit, the hold for the freshness check).
//! - `reply_hold`: a transfer's final reply held until its data connection is done.
//! - [`path`]: names resolved against the working directory; [`ftp`]: line syntax;
//!   [`seqmap`]: the per-direction map of rewritten regions; [`explicit`]: proxy mode's streams.

mod commands;
mod convert;
pub mod explicit;
pub mod ftp;
mod line;
pub mod path;
pub mod policy;
mod reply_hold;
mod retr;
mod segment;
pub mod seqmap;
mod types;

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reply_hold::ReplyHold;
pub use reply_hold::{LEAD_WAIT, REPLY_HOLD_STEP};
pub use retr::{CheckId, HOLD_LIMIT};
use retr::{HeldPacket, Hold};
pub use segment::released_timestamps;
pub use seqmap::Seq;
use seqmap::SeqMap;
pub use types::*;

/// Lines longer than this are passed through without being parsed (a valid PORT/EPRT/227/229 is
/// far shorter; OpenBSD ftp-proxy uses 500). Memory per direction is bounded by it.
pub const LINE_CAP: usize = 512;

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
    /// A client's PORT/EPRT (naming `client`) sent to the server as PASV/EPSV.
    ToPassive {
        client: SocketAddr,
        eprt: bool,
    },
    /// A client's PASV/EPSV sent to the server as PORT/EPRT; the client's endpoint.
    ToActive {
        epsv: bool,
        client_side: SocketAddr,
    },
    Other,
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
    client: SocketAddr,
    server: SocketAddr,
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
    /// Freshness checks asked so far (for [`CheckId`]s).
    checks: u32,
    held: Option<HeldPacket>,
    hold_new: bool,
    /// A final reply waiting for its data connection, with its segment.
    reply_hold: Option<ReplyHold>,
    /// Set by `on_reply` when the line just completed is to be held.
    reply_hold_new: Option<(DataId, u16)>,
    /// The held final reply's former segment, released carrying replies that went ahead.
    moved_carrier: Option<Verdict>,
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
    /// A NAT64 session (RFC 6384): whether its translation is on (`ALGS ENABLE64` /
    /// `DISABLE64`); `None` for any other session.
    alg64: Option<bool>,
    /// The operator's policy for this session.
    policy: SessionPolicy,
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
    pub fn new(client: SocketAddr, server: SocketAddr, now: Instant) -> Self {
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
            checks: 0,
            held: None,
            hold_new: false,
            reply_hold: None,
            reply_hold_new: None,
            moved_carrier: None,
            refuse_greeting: None,
            events: VecDeque::new(),
            last_seen: now,
            rst: false,
            resumed_unseen: false,
            active: false,
            via: None,
            alg64: None,
            policy: SessionPolicy::default(),
        }
    }

    /// A session an IPv6 client opened to an IPv4 server through a NAT64 (`client` →
    /// `PREFIX::a.b.c.d`, `server` the IPv4 server `a.b.c.d`): ftpgate is its FTP ALG (RFC
    /// 6384). The commands and replies are translated between the families as for an explicit
    /// proxy across them (`EPSV` → `PASV`, `227` → `229`, `EPRT |2|` → `PORT`); its data
    /// connections are relayed on `via` — passive ones announced on the server's IPv6 address
    /// (`PREFIX::a.b.c.d`), active ones on the router's IPv4 address towards the server — so
    /// they do not depend on the translator's mappings at all.
    pub fn nat64(client: SocketAddr, server: SocketAddr, via: Via, now: Instant) -> Self {
        Session { via: Some(via), alg64: Some(true), ..Session::new(client, server, now) }
    }

    /// An explicit-proxy session: data connections are announced on the gateway's own
    /// addresses `via`.
    pub fn explicit(client: SocketAddr, server: SocketAddr, via: Via, now: Instant) -> Self {
        Session { via: Some(via), ..Session::new(client, server, now) }
    }

    /// The operator's policy for this session (commands denied, anonymous only, no cache).
    pub fn with_policy(mut self, policy: SessionPolicy) -> Self {
        self.set_policy(policy);
        self
    }

    pub fn set_policy(&mut self, policy: SessionPolicy) {
        self.policy = policy;
    }

    /// A session the helper tracked before a restart: its sequence offsets are restored, the
    /// rest (lines, commands) is picked up from the next segment that starts a line.
    pub fn resume(client: SocketAddr, server: SocketAddr, st: SeqState, now: Instant) -> Self {
        Session::new(client, server, now).resumed(st)
    }

    /// This session (as made for its addresses: a NAT64 one, with its policy) restored from
    /// saved state, as [`Session::resume`].
    pub fn resumed(mut self, st: SeqState) -> Self {
        self.c2s.map = SeqMap::from_offset(st.c2s.0, st.c2s.1);
        self.s2c.map = SeqMap::from_offset(st.s2c.0, st.s2c.1);
        self.greeted = true;
        self.resumed_unseen = true;
        self
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
                (Dir::ToServer, false) => !self.c2s.synced || self.resumed_unseen || self.is_closed() || self.c2s.first != seg.seq.add(1),
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

    pub fn client(&self) -> SocketAddr {
        self.client
    }
    pub fn server(&self) -> SocketAddr {
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

    /// When [`Session::handle_timeout`] must be called next: the earlier of the held final
    /// reply's and the held RETR's deadlines.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reply = self.reply_hold.as_ref().map(|h| h.lead_until.map_or(h.deadline, |t| t.min(h.deadline)));
        let check = self.hold.as_ref().map(|h| h.deadline);
        reply.into_iter().chain(check).min()
    }
    /// The deadlines due at `now`: a held RETR whose freshness check did not answer within
    /// [`HOLD_LIMIT`] goes on as a bypass; a held final reply whose data connection made no
    /// progress for [`REPLY_HOLD_STEP`] goes to the client as the server sent it. Returns the
    /// verdicts of the segments so released.
    pub fn handle_timeout(&mut self, now: Instant, dp: &mut dyn DataPlane) -> Released {
        let mut retr = None;
        if self.hold.as_ref().is_some_and(|h| now >= h.deadline) {
            self.events.push_back(Event::Note(format!("freshness check unanswered after {} s; the RETR goes to the server", HOLD_LIMIT.as_secs())));
            retr = self.release(Decision::Bypass, dp);
        }
        Released { retr, reply: self.reply_timeout(now, dp) }
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
}

#[cfg(test)]
mod tests;
