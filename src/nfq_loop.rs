//! The NFQUEUE shell: receive a queued control segment, decode it ([`crate::wire`]), run it
//! through its [`Session`], write the verdict back. A segment the session holds (a RETR of a
//! cached file) keeps its verdict until the freshness check, run on a thread of its own, answers
//! or [`HOLD_LIMIT`](crate::proto::HOLD_LIMIT) passes; the loop polls the queue socket and the answers' pipe together.

use core::net::SocketAddr;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nfq::{Message, Queue, Verdict as NfVerdict};

use crate::driver::{handle_events, Checks, SessionKey as Key, Wake};
use crate::log;
use crate::proto::{released_timestamps, DataId, Dir, Segment, Seq, Session, Verdict};
use crate::relay::forward::Flagged;
use crate::relay::{CacheCtx, Relay};
use crate::state;
use crate::wire::{Packet, WireError};

pub const FTP_PORT: u16 = 21;

#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub queue: u16,
    pub fail_open: bool,
    /// Idle time after which a session without length changes is forgotten.
    pub idle: Duration,
    /// The same for sessions whose sequence numbers are mapped (conntrack's own timeout).
    pub mapped_idle: Duration,
    /// Where the sequence offsets of sessions with length changes are kept, so a restarted
    /// helper (even after `kill -9`) resumes them.
    pub state_file: Option<PathBuf>,
    /// Control sessions tracked at once; new ones beyond are answered `421`.
    pub max_sessions: usize,
    /// SCHED_FIFO priority of the queue thread (0: normal scheduling).
    pub rt_priority: u8,
    /// NAT64 prefixes (/96): an IPv6 session to `PREFIX::a.b.c.d` is one to the IPv4 server
    /// `a.b.c.d`, translated ([`Session::nat64`]).
    pub nat64: Vec<ipnet::Ipv6Net>,
    /// The operator's policy (replaced on SIGHUP, for new sessions).
    pub policy: crate::policy::Shared,
}

/// The IPv4 server a NAT64 session's IPv6 destination stands for (RFC 6052, /96 prefixes).
fn nat64_server(prefixes: &[ipnet::Ipv6Net], dst: SocketAddr) -> Option<core::net::SocketAddrV4> {
    let SocketAddr::V6(d) = dst else { return None };
    prefixes.iter().find(|p| p.contains(d.ip())).map(|_| {
        let o = d.ip().octets();
        core::net::SocketAddrV4::new(core::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]), d.port())
    })
}

/// The router's own IPv4 address towards `to` (what a connection to it would come from).
fn local_source(to: core::net::SocketAddrV4) -> Option<core::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// A new session for `key`: a NAT64 one when its server is under a NAT64 prefix (and the
/// router has an IPv4 route to the server), else an ordinary one.
fn new_session(cfg: &LoopConfig, key: Key, now: Instant) -> Session {
    let mut s = Session::new(key.0, key.1, now);
    if let Some(v4) = nat64_server(&cfg.nat64, key.1) {
        match local_source(v4) {
            Some(src) => {
                let via = crate::proto::Via { client_side: key.1.ip(), server_side: src };
                s = Session::nat64(key.0, SocketAddr::V4(v4), via, now);
            }
            None => log!("session {} -> {}: no IPv4 route to {v4}; not translated", key.0, key.1),
        }
    }
    match crate::policy::current(&cfg.policy).decide(key.0.ip(), s.server().ip()) {
        crate::policy::Verdict::Allow(p) => s.with_policy(p),
        crate::policy::Verdict::Deny(n) => {
            log!("session {} -> {}: refused by [[policy]] {n}; answering 421", key.0, key.1);
            crate::metrics::m().refusal("policy");
            s.refuse_session("connections to this server are not allowed through this gateway");
            s
        }
    }
}

/// A segment held: a RETR while its session's freshness check ([`Session::pending_check`])
/// runs, or a server segment carrying a transfer's final reply until its data connection is
/// done ([`Session::awaiting_data`]).
struct Held {
    msg: Message,
    /// Its TCP timestamps (TSval, TSecr).
    ts: Option<(u32, u32)>,
    /// The newest TCP timestamps its sender sent while it was held.
    newest: Option<(u32, u32)>,
}

/// Who a session is, in log lines.
struct Who(Key);

impl core::fmt::Display for Who {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "session {} -> {}", self.0 .0, self.0 .1)
    }
}

pub struct Helper {
    sessions: HashMap<Key, Session>,
    relay: Relay,
    cfg: LoopConfig,
    last_sweep: Instant,
    cache: Option<Arc<CacheCtx>>,
    /// Held RETRs.
    held: HashMap<Key, Held>,
    /// Final replies held until their data connection is done ([`Session::data_done`]), with
    /// the connection's id.
    held_replies: HashMap<Key, (DataId, Held)>,
    /// Data connections that ended, from the relay's threads.
    done_rx: Receiver<DataId>,
    /// Held segments of connections that were replaced, waiting for their drop verdict.
    stale: Vec<Message>,
    /// Held segments released while another packet was decided, their verdicts set.
    ready: Vec<Message>,
    checks: Checks<Key>,
    wake: Arc<Wake>,
    state_writer: Option<Sender<String>>,
    /// Offsets changed since the state file was last handed to the writer: it is saved once
    /// per pass of the queue loop, so a burst of rewrites renders the file once.
    state_dirty: bool,
    /// Where `ftpgate status` reads the sessions.
    pub board: Option<Arc<crate::status::Board>>,
    last_publish: Instant,
}

impl Helper {
    pub fn new(mut relay: Relay, cache: Option<Arc<CacheCtx>>, cfg: LoopConfig) -> Result<Helper> {
        let wake = Arc::new(Wake::new().context("cannot create a pipe")?);
        let (done_tx, done_rx) = channel();
        let w = wake.clone();
        relay.set_notify(Arc::new(move |id| {
            let _ = done_tx.send(id);
            w.notify();
        }));
        let now = Instant::now();
        let mut sessions = HashMap::new();
        if let Some(f) = &cfg.state_file {
            for (key, st) in state::load(f) {
                // made as a new one would be (a NAT64 session translated again, its policy)
                sessions.insert(key, new_session(&cfg, key, now).resumed(st));
            }
            if !sessions.is_empty() {
                log!("resumed {} sessions with changed lengths from {}", sessions.len(), f.display());
            }
        }
        let state_writer = cfg.state_file.clone().and_then(state::writer);
        Ok(Helper {
            sessions,
            relay,
            cfg,
            last_sweep: Instant::now(),
            checks: Checks::new(wake.clone(), cache.clone()),
            cache,
            held: HashMap::new(),
            held_replies: HashMap::new(),
            done_rx,
            stale: Vec::new(),
            ready: Vec::new(),
            wake,
            state_writer,
            state_dirty: false,
            board: None,
            last_publish: now,
        })
    }

    /// Decides one queued packet. Returns it ready for its verdict, or `None` when it is held.
    fn handle(&mut self, mut msg: Message, now: Instant) -> Option<Message> {
        let pkt = match Packet::parse(msg.get_payload()) {
            Ok(p) => p,
            Err(e) => {
                log!("queued packet not understood ({e}); passed unchanged");
                msg.set_verdict(NfVerdict::Accept);
                return Some(msg);
            }
        };
        let (src, dst) = (pkt.src(), pkt.dst());
        if src.port() != FTP_PORT && dst.port() != FTP_PORT {
            // a data connection's segment: a SYN to one of the relay's listeners (before
            // conntrack), a kernel-forwarded one's SYN/FIN/RST, or a thief's SYN (only IPv4 data
            // connections are forwarded by the kernel; an IPv6 one is relayed)
            let f = pkt.flags();
            // only before routing (the listeners' SYNs, and thieves' SYNs, whose fresh entries
            // are not NATed yet): a forwarded connection's retransmitted SYN, queued in FORWARD,
            // has a live entry already translated, which must stay
            let before_routing = msg.get_hook() == libc::NF_INET_PRE_ROUTING as u8;
            if f.syn && !f.ack && before_routing && crate::conntrack::clear_stale_nat(src, dst) {
                log!("data connection {src} -> {dst}: a NATed conntrack entry on its addresses deleted first");
            }
            let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
                msg.set_verdict(NfVerdict::Accept);
                return Some(msg);
            };
            let seg = Flagged { src, dst, seq: pkt.seq().raw(), len: pkt.payload.len() as u32, syn: f.syn, ack: f.ack, fin: f.fin, rst: f.rst };
            msg.set_verdict(if self.relay.observe(&seg) { NfVerdict::Accept } else { NfVerdict::Drop });
            return Some(msg);
        }
        let (dir, key) = if dst.port() == FTP_PORT { (Dir::ToServer, (src, dst)) } else { (Dir::ToClient, (dst, src)) };
        let flags = pkt.flags();
        let seg = Segment { seq: pkt.seq(), ack: pkt.ack(), flags, sack: &pkt.sack, payload: pkt.payload };
        if self.sessions.get(&key).is_some_and(|s| s.is_later_connection(dir, &seg)) {
            // a reused port: start over, with nothing of the old connection's state
            if !(dir == Dir::ToServer && flags.syn) {
                log!("session {} -> {}: a new connection on the same addresses (its SYN passed unseen); starting over", key.0, key.1);
            }
            self.sessions.remove(&key);
            if let Some(h) = self.held.remove(&key) {
                self.stale.push(h.msg); // the old connection's held segment is dropped
            }
            if let Some((_, h)) = self.held_replies.remove(&key) {
                self.stale.push(h.msg);
            }
        }
        if !self.sessions.contains_key(&key) {
            // counting is O(sessions): only needed once that many are tracked at all
            let live = if self.sessions.len() < self.cfg.max_sessions { 0 } else { self.sessions.values().filter(|s| s.is_live()).count() };
            if self.sessions.len() >= 4 * self.cfg.max_sessions.max(1) {
                // refused sessions are tracked too, until they close; past this, not even that
                msg.set_verdict(NfVerdict::Accept);
                return Some(msg);
            }
            let mut s = new_session(&self.cfg, key, now);
            if live >= self.cfg.max_sessions {
                log!("session {} -> {}: over the limit of {} sessions; answering 421", key.0, key.1, self.cfg.max_sessions);
                s.refuse_session(&format!("too many FTP sessions through this gateway (limit {}), try again later", self.cfg.max_sessions));
                crate::metrics::m().refusal("session_limit");
            } else {
                log!("session {} -> {}: tracking", key.0, key.1);
            }
            self.sessions.insert(key, s);
            crate::metrics::m().session_started("transparent", crate::metrics::family(key.0, key.1));
        }
        let session = self.sessions.get_mut(&key).expect("inserted above");
        if let Some(t) = pkt.ts {
            let newest = match dir {
                Dir::ToServer => self.held.get_mut(&key).map(|h| h.newest.get_or_insert(t)),
                Dir::ToClient => self.held_replies.get_mut(&key).map(|(_, h)| h.newest.get_or_insert(t)),
            };
            if let Some(newest) = newest {
                if Seq::new(t.0) > Seq::new(newest.0) {
                    *newest = t;
                }
            }
        }
        let ts = pkt.ts;
        let before = session.seq_state();
        let verdict = session.handle_segment(dir, &seg, &mut self.relay, now);
        let changed = session.seq_state() != before;
        // rebuilt from the packet already parsed, before it lets go of the message's bytes
        let edited = match &verdict {
            Verdict::Edit(e) => Some(pkt.edited(e, None)),
            _ => None,
        };
        drop(pkt);
        self.drain_events(key);
        if changed {
            self.state_dirty = true;
        }
        if verdict == Verdict::Hold && dir == Dir::ToClient {
            // a transfer's final reply waits for its data connection to be done
            // a to-client hold always names its data connection; without one (never), 0 matches
            // no notification and the session's deadline releases it
            let id = self.sessions.get(&key).and_then(|s| s.awaiting_data()).unwrap_or(0);
            if let Some(v) = self.sessions.get_mut(&key).and_then(|s| s.take_moved_carrier()) {
                // replies that came behind the held reply go ahead of it: the segment that held
                // it goes on carrying them, this one carries the reply from now on
                let mut out = std::mem::take(&mut self.ready);
                self.finish(key, Dir::ToClient, Some(v), &mut out);
                self.ready = out;
            }
            if let Some((_, old)) = self.held_replies.insert(key, (id, Held { msg, ts, newest: None })) {
                self.stale.push(old.msg);
            }
            return None;
        }
        if verdict == Verdict::Hold {
            if let Some(old) = self.held.insert(key, Held { msg, ts, newest: None }) {
                // only possible when a dead connection's segment is still held: drop it
                self.stale.push(old.msg);
            }
            // its check was asked for with the session's events (Event::CheckFresh); without
            // one (never) release_ready drops it at once
            if self.sessions.get(&key).is_none_or(|s| s.pending_check().is_none()) {
                self.wake.notify();
            }
            return None;
        }
        apply(&mut msg, verdict, edited, &key);
        Some(msg)
    }

    fn drain_events(&mut self, key: Key) {
        if let Some(session) = self.sessions.get_mut(&key) {
            handle_events(&key, session, &self.checks, key);
        }
    }

    /// Releases held segments: RETRs whose freshness checks answered, final replies whose data
    /// connections ended, both whose deadlines passed ([`Session::handle_timeout`]), and those
    /// their session no longer holds (dropped). Returns them ready for their verdicts.
    fn release_ready(&mut self, now: Instant) -> Vec<Message> {
        self.wake.drain();
        let mut out = Vec::new();
        for a in self.checks.answers() {
            let Some(s) = self.sessions.get_mut(&a.id) else { continue };
            if a.applies_to(s, &Who(a.id)) {
                let v = s.release(a.decision, &mut self.relay);
                self.finish(a.id, Dir::ToServer, v, &mut out);
            }
        }
        while let Ok(id) = self.done_rx.try_recv() {
            // few replies are held at once: a scan finds the one waiting for `id`
            let Some((&key, _)) = self.held_replies.iter().find(|(_, (d, _))| *d == id) else { continue };
            if let Some(v) = self.sessions.get_mut(&key).and_then(|s| s.data_done(&mut self.relay)) {
                self.finish(key, Dir::ToClient, Some(v), &mut out);
            }
        }
        let mut holding: Vec<Key> = self.held.keys().chain(self.held_replies.keys()).copied().collect();
        holding.sort_unstable();
        holding.dedup();
        for key in holding {
            let Some(s) = self.sessions.get_mut(&key) else {
                self.finish(key, Dir::ToServer, None, &mut out);
                self.finish(key, Dir::ToClient, None, &mut out);
                continue;
            };
            let (retr_orphan, reply_orphan) = (s.pending_check().is_none(), s.awaiting_data().is_none());
            let released = if s.poll_timeout().is_some_and(|d| d <= now) { s.handle_timeout(now, &mut self.relay) } else { Default::default() };
            if released.retr.is_some() || retr_orphan {
                self.finish(key, Dir::ToServer, released.retr, &mut out);
            }
            if released.reply.is_some() || reply_orphan {
                self.finish(key, Dir::ToClient, released.reply, &mut out);
            }
        }
        out
    }

    /// The held segment of `key` in `dir` goes out with verdict `v` (`None`: dropped).
    fn finish(&mut self, key: Key, dir: Dir, v: Option<Verdict>, out: &mut Vec<Message>) {
        let held = match dir {
            Dir::ToServer => self.held.remove(&key),
            Dir::ToClient => self.held_replies.remove(&key).map(|(_, h)| h),
        };
        let Some(mut h) = held else { return };
        self.state_dirty = true;
        self.drain_events(key);
        // segments that passed while this one was held (probes, ACKs) carried newer TCP
        // timestamps: going out with its own older one, PAWS would have the peer drop it
        let ts = released_timestamps(h.ts, h.newest);
        let v = v.unwrap_or(Verdict::Drop);
        let edited = match &v {
            Verdict::Edit(e) => Some(Packet::parse(h.msg.get_payload()).and_then(|p| p.edited(e, ts))),
            _ => None,
        };
        apply(&mut h.msg, v, edited, &key);
        out.push(h.msg);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let holding = self.held_replies.keys().chain(self.held.keys());
        holding.filter_map(|k| self.sessions.get(k)?.poll_timeout()).min()
    }

    /// Shows the sessions on the status board, about once a second.
    fn maybe_publish(&mut self, now: Instant) {
        let Some(board) = &self.board else { return };
        if now.duration_since(self.last_publish) < crate::status::PUBLISH_EVERY {
            return;
        }
        self.last_publish = now;
        let lines = self
            .sessions
            .values()
            .filter(|s| s.is_live())
            .map(|s| crate::status::SessionLine { client: s.client(), server: s.server(), user: s.user().map(str::to_string), state: s.state() })
            .collect();
        board.publish(false, lines);
    }

    /// Saves the offsets if they changed during this pass of the loop.
    fn maybe_save_state(&mut self) {
        if std::mem::take(&mut self.state_dirty) {
            self.save_state();
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let (idle, mapped) = (self.cfg.idle, self.cfg.mapped_idle);
        let mut mapped_gone = false;
        self.sessions.retain(|k, s| {
            let keep = s.is_holding() || s.expires_at(idle, mapped) > now;
            if !keep {
                log!("session {} -> {}: closed (user {})", k.0, k.1, s.user().unwrap_or("-"));
                mapped_gone |= s.has_length_changes();
            }
            keep
        });
        if mapped_gone {
            self.state_dirty = true;
        }
    }

    /// Hands the sequence offsets of every session with length changes to the writer thread
    /// (which writes, then renames): the queue loop never waits for the disk.
    fn save_state(&self) {
        let Some(w) = &self.state_writer else { return };
        let _ = w.send(state::render(self.sessions.iter().filter_map(|(k, s)| Some((*k, s.seq_state()?)))));
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// Sets a message's verdict; for an edit, `edited` is the rebuilt packet.
fn apply(msg: &mut Message, verdict: Verdict, edited: Option<Result<Vec<u8>, WireError>>, key: &Key) {
    match (verdict, edited) {
        (Verdict::Pass, _) => msg.set_verdict(NfVerdict::Accept),
        (Verdict::Drop, _) | (Verdict::Hold, _) => {
            crate::metrics::m().dropped_segments.inc();
            msg.set_verdict(NfVerdict::Drop)
        }
        (Verdict::Edit(_), Some(Ok(bytes))) => {
            msg.set_payload(bytes);
            msg.set_verdict(NfVerdict::Accept);
        }
        (Verdict::Edit(_), _) => {
            // bytes of this segment may already be acknowledged to the sender: passing the
            // original would corrupt the stream, so drop and let TCP retransmit
            crate::warn!("session {} -> {}: cannot rebuild segment; dropped", key.0, key.1);
            msg.set_verdict(NfVerdict::Drop);
        }
    }
}

/// How long the loop may sleep in `poll` (ms) before `deadline`: at most a second, and rounded
/// up — rounded down, the last millisecond before a deadline was a busy loop of zero-timeout
/// polls on a real-time thread.
fn poll_wait_ms(deadline: Option<Instant>, now: Instant) -> i32 {
    deadline.map_or(1000, |d| d.saturating_duration_since(now).as_micros().div_ceil(1000).min(1000) as i32)
}

/// Binds the queue and runs until the process is stopped.
pub fn run(mut helper: Helper) -> Result<()> {
    let q = helper.cfg.queue;
    let before = crate::netlink::netfilter_sockets();
    let mut queue = Queue::open().context("cannot open an NFQUEUE netlink socket (need CAP_NET_ADMIN)")?;
    // the nfq crate does not expose its socket; it is the one NETLINK_NETFILTER socket that
    // open() added, and the loop polls it together with the check-answer pipe
    let qfd = match crate::netlink::netfilter_sockets().into_iter().filter(|f| !before.contains(f)).collect::<Vec<_>>()[..] {
        [fd] => fd,
        _ => anyhow::bail!("cannot find the NFQUEUE socket"),
    };
    queue.bind(q).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) | Some(libc::EPERM) => {
            anyhow::anyhow!("NFQUEUE {q} is already bound by another process (or CAP_NET_ADMIN is missing)")
        }
        _ => anyhow::anyhow!("cannot bind NFQUEUE {q}: {e}"),
    })?;
    queue.set_fail_open(q, helper.cfg.fail_open).context("cannot set fail-open")?;
    queue.set_queue_max_len(q, 4096).context("cannot set the queue length")?;
    queue.set_copy_range(q, 0xffff).context("cannot set the copy range")?;
    queue.set_nonblocking(true);
    // Queued packets wait in this socket's buffer; when it is full the kernel accepts them
    // unprocessed (fail-open) or drops them. A burst of new sessions must fit.
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a live int on the queue's socket.
    unsafe {
        let p = (&size as *const libc::c_int).cast();
        let n = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(qfd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, n) < 0 {
            libc::setsockopt(qfd, libc::SOL_SOCKET, libc::SO_RCVBUF, p, n);
        }
    }
    log!("bound NFQUEUE {q} ({})", if helper.cfg.fail_open { "fail-open" } else { "fail-closed" });
    crate::sched::raise_priority(helper.cfg.rt_priority);
    match &helper.cache {
        Some(c) => {
            let (entries, bytes) = c.store.totals();
            log!("cache: {entries} entries, {bytes} bytes");
        }
        None => log!("cache: off"),
    }
    loop {
        let now = Instant::now();
        let wait = poll_wait_ms(helper.next_deadline(), now);
        let mut pfds =
            [libc::pollfd { fd: qfd, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: helper.wake.fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll failed");
            }
        }
        if pfds[1].revents != 0 || helper.next_deadline().is_some_and(|d| d <= Instant::now()) {
            for msg in helper.release_ready(Instant::now()) {
                queue.verdict(msg).context("NFQUEUE verdict failed")?;
            }
        }
        for mut msg in std::mem::take(&mut helper.stale) {
            msg.set_verdict(NfVerdict::Drop);
            queue.verdict(msg).context("NFQUEUE verdict failed")?;
        }
        loop {
            let msg = match queue.recv() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log!("NFQUEUE {q}: the kernel dropped queued packets (ENOBUFS)");
                    continue;
                }
                Err(e) => return Err(e).context("NFQUEUE receive failed"),
            };
            let arrived = Instant::now();
            if let Some(msg) = helper.handle(msg, arrived) {
                queue.verdict(msg).context("NFQUEUE verdict failed")?;
                crate::metrics::m().verdict_seconds.observe(arrived.elapsed().as_secs_f64());
            }
            for msg in std::mem::take(&mut helper.ready) {
                queue.verdict(msg).context("NFQUEUE verdict failed")?;
            }
        }
        let now = Instant::now();
        if now.duration_since(helper.last_sweep) > Duration::from_secs(5) {
            helper.sweep(now);
        }
        helper.maybe_save_state();
        helper.maybe_publish(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_wait_is_rounded_up_and_capped() {
        let now = Instant::now();
        assert_eq!(poll_wait_ms(None, now), 1000);
        assert_eq!(poll_wait_ms(Some(now), now), 0);
        assert_eq!(poll_wait_ms(Some(now + Duration::from_micros(300)), now), 1);
        assert_eq!(poll_wait_ms(Some(now + Duration::from_micros(20_001)), now), 21);
        assert_eq!(poll_wait_ms(Some(now + Duration::from_secs(5)), now), 1000);
        if let Some(past) = now.checked_sub(Duration::from_millis(3)) {
            assert_eq!(poll_wait_ms(Some(past), now), 0);
        }
    }
}
