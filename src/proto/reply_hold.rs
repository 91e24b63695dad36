//! A transfer command's final reply held until its data connection is done, with its deadline.

use std::time::{Duration, Instant};

use super::*;

/// How long a held final reply waits for its data connection without progress before it goes
/// to the client as the server sent it.
pub const REPLY_HOLD_STEP: Duration = Duration::from_secs(5);

/// A transfer command's final reply, held until its data connection is done.
#[derive(Debug)]
pub(super) struct ReplyHold {
    pub(super) id: DataId,
    /// The reply line's original start and length.
    pub(super) start: Seq,
    pub(super) len: usize,
    /// Where the reply line starts in the held payload.
    pub(super) at: usize,
    pub(super) deadline: Instant,
    pub(super) moved: u64,
    pub(super) code: u16,
    /// Part of the line was absorbed from an earlier segment: the seqmap must record it whole.
    pub(super) mapped: bool,
    /// The held segment (set as soon as the segment that completed the reply is decided).
    pub(super) packet: Option<HeldPacket>,
    /// Bytes after the reply went on while it was held: a replacement must keep its length.
    pub(super) passed_behind: bool,
}

/// `new` (a reply line) fitted to exactly `len` bytes, keeping its code and line ending: its
/// text cut or padded with spaces. For a held reply whose successors already went out at the
/// sequence numbers its original length gave them.
pub(super) fn fit_reply(new: &[u8], len: usize) -> Vec<u8> {
    let body = ftp::body(new);
    let (code, text) = body.split_at(body.len().min(3));
    let ending: &[u8] = if len >= code.len() + 2 { b"\r\n" } else { b"\n" };
    let room = len.saturating_sub(code.len() + ending.len());
    let mut out = code.to_vec();
    if room > 0 {
        let text = text.strip_prefix(b" ").unwrap_or(text);
        out.push(b' ');
        out.extend(text.iter().copied().chain(core::iter::repeat(b' ')).take(room - 1));
    }
    out.extend_from_slice(ending);
    out
}

impl Session {
    /// The data connection whose end a held final reply waits for: call
    /// [`Session::data_done`] when the data plane says it ended.
    pub fn awaiting_data(&self) -> Option<DataId> {
        self.reply_hold.as_ref().map(|h| h.id)
    }
    /// The held final reply's deadline (see [`Session::handle_timeout`]).
    pub(super) fn reply_timeout(&mut self, now: Instant, dp: &mut dyn DataPlane) -> Option<Verdict> {
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
    pub(super) fn failed_transfer_reply(&mut self, outcome: &DataOutcome, code: u16) -> Option<Vec<u8>> {
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
    pub(super) fn release_reply(&mut self, new: Option<Vec<u8>>) -> Option<Verdict> {
        let mut h = self.reply_hold.take()?;
        let p = h.packet.take()?;
        let mut payload = p.prefix;
        let st = &mut self.s2c;
        let new = new.map(|n| if h.passed_behind { fit_reply(&n, h.len) } else { n });
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

    /// A transfer command's final reply: the client must not see it before its data connection
    /// has carried every byte and been closed (in active mode the relay connects to the client
    /// only after the server connected to it, so a server with little to send can finish
    /// first). Held until the data plane says the connection is done, replaced when it failed.
    pub(super) fn transfer_end(&mut self, id: DataId, code: u16, whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
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
}
