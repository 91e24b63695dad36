//! What both shells around the sans-IO [`Session`] share — the NFQUEUE loop
//! ([`crate::nfq_loop`], segments) and the explicit proxy ([`crate::proxy`], byte streams): the
//! wake pipe their poll loops watch, the dispatch of a held RETR's freshness check and its
//! answers, and the logging (and counting) of the session's events. The shells keep only their
//! I/O: which packets or bytes a verdict applies to.

use core::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use crate::cache::Decision;
use crate::log;
use crate::proto::{CheckId, Event, Session};
use crate::relay::CacheCtx;

/// A control session as the shells and the state file name it: (client, server).
pub type SessionKey = (SocketAddr, SocketAddr);

/// A self-pipe that wakes a shell's poll loop when another thread has news for it (a check
/// answered, a data connection ended).
pub struct Wake {
    r: OwnedFd,
    w: OwnedFd,
}

impl Wake {
    pub fn new() -> nix::Result<Wake> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Wake { r, w })
    }
    /// The end to poll for reading.
    pub fn fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.r.as_fd()
    }
    pub fn notify(&self) {
        // a full pipe already wakes the loop: EAGAIN is fine
        let _ = nix::unistd::write(self.w.as_fd(), b"x");
    }
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while nix::unistd::read(self.r.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// A freshness check's answer for the shell's connection `id`.
#[derive(Clone, Copy, Debug)]
pub struct Answer<I> {
    pub id: I,
    pub check: CheckId,
    pub decision: Decision,
    pub took: Duration,
}

impl<I> Answer<I> {
    /// Whether `session` still waits for this answer (not released by its deadline meanwhile,
    /// not a replaced connection's); then hand it to `release`. Logs the answer if so.
    pub fn applies_to(&self, session: &Session, who: &dyn core::fmt::Display) -> bool {
        let current = session.pending_check() == Some(self.check);
        if current {
            log!("{who}: freshness check {:?} in {:.3} s", self.decision, self.took.as_secs_f64());
        }
        current
    }
}

/// Runs the freshness checks the sessions ask for ([`Session::pending_check`]), each on a thread
/// of its own, and hands their answers back through a channel and the wake pipe.
pub struct Checks<I> {
    tx: Sender<Answer<I>>,
    rx: Receiver<Answer<I>>,
    wake: Arc<Wake>,
    cache: Option<Arc<CacheCtx>>,
}

impl<I: Copy + Send + Sync + 'static> Checks<I> {
    pub fn new(wake: Arc<Wake>, cache: Option<Arc<CacheCtx>>) -> Checks<I> {
        let (tx, rx) = channel();
        Checks { tx, rx, wake, cache }
    }

    /// Asks the server whether the file `session`'s held RETR names changed. Without a cache,
    /// a login or a key (or without a thread) the answer is a bypass, at once.
    pub fn ask(&self, id: I, session: &Session) {
        let Some(check) = session.pending_check() else { return };
        let (tx, wake) = (self.tx.clone(), self.wake.clone());
        let answer = move |decision, took| {
            let _ = tx.send(Answer { id, check, decision, took });
            wake.notify();
        };
        let (Some(cache), Some(login), Some(entry)) = (self.cache.clone(), session.login(), session.held_key().cloned()) else {
            return answer(Decision::Bypass, Duration::ZERO);
        };
        let answer = Arc::new(answer);
        let from_thread = answer.clone();
        let checker = cache.checker.clone();
        let ask = move || {
            let t = Instant::now();
            let decision = cache.freshness(&login, &entry);
            from_thread(decision, t.elapsed());
        };
        if crate::sched::spawn_prompt("ftpgate-check", move || checker.ask_at_priority(), ask).is_err() {
            answer(Decision::Bypass, Duration::ZERO);
        }
    }

    /// The answers that came since the last call.
    pub fn answers(&self) -> Vec<Answer<I>> {
        self.rx.try_iter().collect()
    }
}

/// Logs one of a session's events (and counts rewrites, refusals and cache outcomes).
pub fn log_event(key: &SessionKey, user: Option<&str>, ev: Event) {
    let who = format!("session {} -> {} ({})", key.0, key.1, user.unwrap_or("-"));
    match ev {
        Event::User(u) => log!("{who}: login as {u:?}"),
        Event::Rewrote { kind, from, to, .. } => {
            crate::metrics::m().rewrite(kind.label());
            log!("{who}: rewrote {from:?} -> {to:?}")
        }
        Event::Refused { kind, reason } => {
            crate::metrics::m().refusal(kind.label());
            crate::warn!("{who}: refused: {reason}")
        }
        Event::Malformed { dir, line, why } => log!("{who}: malformed {dir:?} line {line:?} passed through: {why}"),
        Event::TlsStarted => log!("{who}: AUTH TLS accepted; passing the encrypted session through"),
        Event::Retr { path, binary, ok } => log!(
            "{who}: RETR {} ({}) {}",
            path.as_deref().unwrap_or("(relative; working directory unknown)"),
            if binary { "binary" } else { "ascii" },
            if ok { "completed" } else { "failed" }
        ),
        Event::Cache { path, outcome } => {
            crate::metrics::m().cache(outcome.label());
            log!("{who}: RETR {path}: {outcome}")
        }
        Event::CheckFresh(k) => log!("{who}: RETR {}: cached; asking the server whether it changed", k.path),
        Event::Note(n) => log!("{who}: {n}"),
    }
}

/// Drains `session`'s events: logs each, and asks for the freshness check an
/// [`Event::CheckFresh`] calls for (`id`: the shell's name for the session, which the answer
/// carries back).
pub fn handle_events<I: Copy + Send + Sync + 'static>(key: &SessionKey, session: &mut Session, checks: &Checks<I>, id: I) {
    let mut ask = false;
    while let Some(ev) = session.poll_event() {
        ask |= matches!(ev, Event::CheckFresh(_));
        log_event(key, session.user(), ev);
    }
    if ask {
        checks.ask(id, session);
    }
}
