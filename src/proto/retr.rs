//! The cache's part of a RETR: the key it names, capture or hit, and the RETR held while the
//! server is asked whether the cached file is unchanged.

use std::time::{Duration, Instant};

use super::*;

/// How long a RETR may wait for its freshness check before it goes to the server unchanged
/// (as if the check had answered [`Decision::Bypass`]).
pub const HOLD_LIMIT: Duration = Duration::from_secs(5);

/// Names one freshness check of one connection: an answer that comes back for a check that is
/// no longer pending (answered, timed out, or of an earlier connection on the same addresses)
/// has another id.
pub type CheckId = u64;

/// A RETR waiting for the freshness check.
#[derive(Debug)]
pub(super) struct Hold {
    pub(super) key: Key,
    pub(super) name: String,
    pub(super) id: DataId,
    /// Size of the cached entry.
    pub(super) size: u64,
    /// The client's own REST offset.
    pub(super) offset: u64,
    pub(super) line: Vec<u8>,
    pub(super) start: Seq,
    pub(super) check: CheckId,
    /// Past this, the RETR goes on unchanged.
    pub(super) deadline: Instant,
}

/// The held segment, as it will go out apart from the RETR line.
#[derive(Debug)]
pub(super) struct HeldPacket {
    pub(super) seq: Seq,
    pub(super) ack: Seq,
    pub(super) sack: Option<Vec<(Seq, Seq)>>,
    /// Bytes before the RETR line (pipelined commands).
    pub(super) prefix: Vec<u8>,
}

impl Session {
    /// The absolute path a name given to a command refers to, if the working directory is known
    /// (or the name is absolute).
    pub(super) fn resolve(&self, name: &str) -> Option<String> {
        match self.cwd.as_deref() {
            Some(c) => path::resolve(c, name),
            None if name.starts_with('/') => path::resolve("/", name),
            None => None,
        }
    }

    pub(super) fn cache_key(&self, name: &str) -> Result<Key, &'static str> {
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
    pub(super) fn plan_retr(&mut self, name: &str, id: Option<DataId>, offset: u64, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> bool {
        if !dp.cache_enabled() || !self.policy.cache {
            return false;
        }
        let key = match self.cache_key(name) {
            Ok(k) => k,
            Err(why) => {
                let path = self.resolve(name).unwrap_or_else(|| name.to_string());
                self.events.push_back(Event::Cache { path, outcome: CacheOutcome::Bypass(why) });
                return false;
            }
        };
        let bypass = |s: &mut Self, why: &'static str| {
            s.events.push_back(Event::Cache { path: key.path.clone(), outcome: CacheOutcome::Bypass(why) });
            false
        };
        let Some(id) = id else { return bypass(self, "no data connection prepared") };
        if let Some(size) = dp.cached(&key) {
            if !whole {
                return bypass(self, "command split before ftpgate saw it");
            }
            self.events.push_back(Event::CheckFresh(key.clone()));
            // the connection's first sequence number in the high half: an earlier connection's
            // answer never matches a later one's check
            let check = (u64::from(self.c2s.first.raw()) << 32) | u64::from(self.checks);
            self.checks = self.checks.wrapping_add(1);
            let deadline = self.last_seen + HOLD_LIMIT;
            self.hold = Some(Hold { key, name: name.to_string(), id, size, offset, line: line.to_vec(), start: Seq::new(0), check, deadline });
            self.hold_new = true;
            return true;
        }
        if offset > 0 {
            return bypass(self, "resumed download");
        }
        self.capture(key, id, Fetch::Miss, dp);
        false
    }

    pub(super) fn capture(&mut self, key: Key, id: DataId, fetch: Fetch, dp: &mut dyn DataPlane) {
        let path = key.path.clone();
        let captured = self.login().map(|login| dp.transfer(id, Transfer::Capture { key, login }));
        let outcome = match (captured, fetch) {
            (Some(true), Fetch::Miss) => CacheOutcome::Miss,
            (Some(true), Fetch::Stale) => CacheOutcome::Stale,
            (Some(false), _) => CacheOutcome::NotCaptured(fetch, NotCaptured::CacheBusy),
            (None, _) => CacheOutcome::NotCaptured(fetch, NotCaptured::LoginUnknown),
        };
        self.events.push_back(Event::Cache { path, outcome });
    }

    /// The freshness check the held RETR waits for (after [`Verdict::Hold`]): ask the server
    /// and answer with [`Session::release`] if this is still the pending check then (past its
    /// deadline [`Session::handle_timeout`] releases it).
    pub fn pending_check(&self) -> Option<CheckId> {
        self.hold.as_ref().map(|h| h.check)
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
                    self.events.push_back(Event::Cache { path, outcome: CacheOutcome::Hit });
                } else {
                    self.events.push_back(Event::Cache { path, outcome: CacheOutcome::Bypass("entry unavailable") });
                }
            }
            Decision::Stale if h.offset == 0 => {
                self.capture(h.key.clone(), h.id, Fetch::Stale, dp);
            }
            Decision::Stale => self.events.push_back(Event::Cache { path, outcome: CacheOutcome::StaleResumed }),
            Decision::Gone => self.events.push_back(Event::Cache { path, outcome: CacheOutcome::Gone }),
            Decision::Bypass => self.events.push_back(Event::Cache { path, outcome: CacheOutcome::Bypass("server did not confirm the file") }),
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
}
