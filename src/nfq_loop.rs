//! The NFQUEUE shell: receive a queued control segment, decode it ([`crate::wire`]), run it
//! through its [`Session`], write the verdict back. Nothing else happens here.

use core::net::SocketAddrV4;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nfq::{Queue, Verdict as NfVerdict};

use crate::log;
use crate::proto::{Dir, Event, Segment, Session, Verdict};
use crate::relay::Relay;
use crate::wire::Packet;

pub const FTP_PORT: u16 = 21;

#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub queue: u16,
    pub fail_open: bool,
    /// Idle time after which a session without length changes is forgotten.
    pub idle: Duration,
    /// The same for sessions whose sequence numbers are mapped (conntrack's own timeout).
    pub mapped_idle: Duration,
}

type Key = (SocketAddrV4, SocketAddrV4);

pub struct Helper {
    sessions: HashMap<Key, Session>,
    relay: Relay,
    cfg: LoopConfig,
    last_sweep: Instant,
}

impl Helper {
    pub fn new(relay: Relay, cfg: LoopConfig) -> Helper {
        Helper { sessions: HashMap::new(), relay, cfg, last_sweep: Instant::now() }
    }

    /// Decides one packet; returns the verdict and, when edited, the new packet bytes.
    pub fn handle(&mut self, buf: &[u8], now: Instant) -> (NfVerdict, Option<Vec<u8>>) {
        let pkt = match Packet::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                log!("queued packet not understood ({e}); passed unchanged");
                return (NfVerdict::Accept, None);
            }
        };
        let (dir, key) = if pkt.dst().port() == FTP_PORT {
            (Dir::ToServer, (pkt.src(), pkt.dst()))
        } else {
            (Dir::ToClient, (pkt.dst(), pkt.src()))
        };
        let session = self.sessions.entry(key).or_insert_with(|| {
            log!("session {} -> {}: tracking", key.0, key.1);
            Session::new(key.0, key.1, now)
        });
        let seg = Segment { seq: pkt.seq(), ack: pkt.ack(), flags: pkt.flags(), sack: &pkt.sack, payload: pkt.payload };
        let verdict = session.handle_segment(dir, &seg, &mut self.relay, now);
        while let Some(ev) = session.poll_event() {
            log_event(&key, session.user(), ev);
        }
        let out = match verdict {
            Verdict::Pass => (NfVerdict::Accept, None),
            Verdict::Drop => (NfVerdict::Drop, None),
            Verdict::Edit(e) => match pkt.edited(&e) {
                Ok(bytes) => (NfVerdict::Accept, Some(bytes)),
                Err(err) => {
                    // bytes of this segment may already be acknowledged to the sender: passing
                    // the original would corrupt the stream, so drop and let TCP retransmit
                    log!("session {} -> {}: cannot rebuild segment ({err}); dropped", key.0, key.1);
                    (NfVerdict::Drop, None)
                }
            },
        };
        if now.duration_since(self.last_sweep) > Duration::from_secs(5) {
            self.sweep(now);
        }
        out
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let (idle, mapped) = (self.cfg.idle, self.cfg.mapped_idle);
        self.sessions.retain(|k, s| {
            let keep = s.expires_at(idle, mapped) > now;
            if !keep {
                log!("session {} -> {}: closed (user {})", k.0, k.1, s.user().unwrap_or("-"));
            }
            keep
        });
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

fn log_event(key: &Key, user: Option<&str>, ev: Event) {
    let who = format!("session {} -> {} ({})", key.0, key.1, user.unwrap_or("-"));
    match ev {
        Event::User(u) => log!("{who}: login as {u:?}"),
        Event::Rewrote { from, to, .. } => log!("{who}: rewrote {from:?} -> {to:?}"),
        Event::Refused { reason } => log!("{who}: refused: {reason}"),
        Event::Malformed { dir, line, why } => log!("{who}: malformed {dir:?} line {line:?} passed through: {why}"),
        Event::TlsStarted => log!("{who}: AUTH TLS accepted; passing the encrypted session through"),
        Event::Retr { path, binary, ok } => log!(
            "{who}: RETR {} ({}) {}",
            path.as_deref().unwrap_or("(relative; working directory unknown)"),
            if binary { "binary" } else { "ascii" },
            if ok { "completed" } else { "failed" }
        ),
        Event::Note(n) => log!("{who}: {n}"),
    }
}

/// Binds the queue and runs until the process is stopped.
pub fn run(mut helper: Helper) -> Result<()> {
    let q = helper.cfg.queue;
    let mut queue = Queue::open().context("cannot open an NFQUEUE netlink socket (need CAP_NET_ADMIN)")?;
    queue.bind(q).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) | Some(libc::EPERM) => {
            anyhow::anyhow!("NFQUEUE {q} is already bound by another process (or CAP_NET_ADMIN is missing)")
        }
        _ => anyhow::anyhow!("cannot bind NFQUEUE {q}: {e}"),
    })?;
    queue.set_fail_open(q, helper.cfg.fail_open).context("cannot set fail-open")?;
    queue.set_queue_max_len(q, 4096).context("cannot set the queue length")?;
    queue.set_copy_range(q, 0xffff).context("cannot set the copy range")?;
    log!("bound NFQUEUE {q} ({})", if helper.cfg.fail_open { "fail-open" } else { "fail-closed" });
    loop {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                log!("NFQUEUE {q}: the kernel dropped queued packets (ENOBUFS)");
                continue;
            }
            Err(e) => return Err(e).context("NFQUEUE receive failed"),
        };
        let (verdict, payload) = helper.handle(msg.get_payload(), Instant::now());
        if let Some(p) = payload {
            msg.set_payload(p);
        }
        msg.set_verdict(verdict);
        queue.verdict(msg).context("NFQUEUE verdict failed")?;
    }
}
