//! A transfer command's final reply held until its data connection is done, with its deadline.

use std::time::{Duration, Instant};

use super::*;

/// How long a held final reply waits for its data connection without progress before it goes
/// to the client as the server sent it.
pub const REPLY_HOLD_STEP: Duration = Duration::from_secs(5);

/// How long a held final reply keeps what the server sent ahead of it in the same segment (the
/// transfer's `150`, when both came at once): if the data connection is not done by then, that
/// part goes on alone, and the reply waits for the server to send it again (it is not
/// acknowledged, so the server's TCP retransmits it). A client waits for the `150` before it
/// reads; holding it with the reply stalled a large cache hit until [`REPLY_HOLD_STEP`].
pub const LEAD_WAIT: Duration = Duration::from_millis(20);

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
    /// The final reply's own bytes once the held segment carries other replies instead (those
    /// the server sent behind it, which went ahead: see [`Session::move_ahead`]); then
    /// `start`/`len` are that segment's bytes, which the reply takes the place of.
    pub(super) line: Option<Vec<u8>>,
    /// When what precedes the reply in its segment goes on alone ([`LEAD_WAIT`]).
    pub(super) lead_until: Option<Instant>,
    /// That part went on alone: the reply waits for the server to send it again, and the
    /// segment that does is held in the first one's stead.
    pub(super) resend: bool,
}

/// Whether server bytes that arrive behind a held final reply may go to the client ahead of it:
/// whole replies, each a 2xx that cannot end a transfer (a `NOOP`'s `200`, a `STAT`'s or
/// `SIZE`'s `211`/`213`, a `PWD`'s `257`), the last one complete. The client asked for them
/// while its transfer runs, as far as it can tell; a reply that may end a transfer, or an
/// error, keeps its place behind the held one.
pub(super) fn may_go_ahead(bytes: &[u8]) -> bool {
    !bytes.is_empty() && ahead_len(bytes) == bytes.len()
}

/// The length of the longest start of `bytes` that [`may_go_ahead`] (0 if none).
pub(super) fn ahead_len(bytes: &[u8]) -> usize {
    let mut open: Option<u16> = None; // the code of a multi-line reply not yet ended
    let (mut pos, mut whole) = (0, 0);
    for line in bytes.split_inclusive(|&c| c == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        pos += line.len();
        match (open, ftp::reply_code(line)) {
            (Some(c), Some((code, true))) if code == c => open = None,
            (Some(_), _) => {} // a line inside a multi-line reply
            (None, Some((code, last))) if (200..300).contains(&code) && !ftp::may_end_transfer(code) => {
                open = (!last).then_some(code);
            }
            (None, _) => break,
        }
        if open.is_none() {
            whole = pos;
        }
    }
    whole
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
    /// What the server sent ahead of the held final reply in the segment that holds it (the
    /// transfer's `150`, say, when both came at once), in the client's sequence space: nothing
    /// if the reply starts the segment. A byte-stream shell (the explicit proxy) sends it at
    /// once; the client may wait for the `150` before it reads the data the reply waits for.
    pub fn held_reply_lead(&self) -> Option<(Seq, &[u8])> {
        let h = self.reply_hold.as_ref()?;
        let p = h.packet.as_ref()?;
        (h.at > 0).then(|| (p.seq, &p.prefix[..h.at]))
    }
    /// What the server sent ahead of the held final reply in the segment that holds it, for a
    /// byte-stream shell to send at once (see [`Session::held_reply_lead`]); the session does
    /// not send it on alone later ([`LEAD_WAIT`]).
    pub fn take_held_reply_lead(&mut self) -> Option<(Seq, Vec<u8>)> {
        let lead = self.held_reply_lead().map(|(s, b)| (s, b.to_vec()));
        if let Some(h) = self.reply_hold.as_mut() {
            h.lead_until = None;
        }
        lead
    }
    /// The held final reply's deadlines (see [`Session::handle_timeout`]).
    pub(super) fn reply_timeout(&mut self, now: Instant, dp: &mut dyn DataPlane) -> Option<Verdict> {
        let h = self.reply_hold.as_mut()?;
        if h.lead_until.is_some_and(|t| now >= t) {
            h.lead_until = None;
            if let Some(p) = h.packet.take() {
                // what came ahead of the reply goes on; the reply waits to be sent again
                let lead = p.prefix[..h.at].to_vec();
                h.resend = true;
                h.at = 0;
                let code = h.code;
                self.events.push_back(Event::Note(format!(
                    "the server's {code} reply came in one segment with what precedes it; that goes on alone, the {code} when the server sends it again"
                )));
                return Some(Verdict::Edit(Edit { seq: p.seq, ack: p.ack, sack: p.sack, payload: Some(lead) }));
            }
        }
        if now < h.deadline {
            return None;
        }
        if h.resend {
            // nothing held: it goes as soon as the server sends it again
            h.deadline = now + REPLY_HOLD_STEP;
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
        let h = self.reply_hold.as_ref().filter(|h| !h.resend)?;
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
        // after replies went ahead, the segment carries them: the reply takes their place
        let new = new.or(h.line.take());
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

    /// Server bytes `out` (whole replies that [`may_go_ahead`], unchanged) arrived in a segment
    /// right behind the held final reply: they go to the client now, in the held reply's place
    /// (the held segment is released carrying them instead, see
    /// [`Session::take_moved_carrier`]), and this segment is held in its stead, to carry the
    /// final reply in their place once the data connection is done. Both are equal-length
    /// exchanges in the server's stream as a whole, recorded in its sequence map, so
    /// retransmissions of either are rendered the same way; the client reads the replies to what
    /// it sent during the transfer while the transfer still runs (a paced cache hit takes
    /// seconds), not all at its end.
    pub(super) fn move_ahead(&mut self, seq: Seq, out: Vec<u8>, ack: Seq, sack: Option<Vec<(Seq, Seq)>>) -> Verdict {
        let h = self.reply_hold.as_mut().expect("a held reply");
        let p = h.packet.take().expect("its segment");
        let line = h.line.take().unwrap_or_else(|| p.prefix[h.at..].to_vec());
        let mut payload = p.prefix;
        payload.truncate(h.at);
        payload.extend_from_slice(&out);
        let st = &mut self.s2c;
        st.map.push(h.start, h.len, out.clone());
        self.moved_carrier = Some(Verdict::Edit(Edit { seq: p.seq, ack: p.ack, sack: p.sack, payload: Some(payload) }));
        h.start = seq;
        h.len = out.len();
        h.at = 0;
        h.line = Some(line);
        h.packet = Some(HeldPacket { seq: st.map.map(seq), ack, sack, prefix: Vec::new() });
        Verdict::Hold
    }

    /// After [`Session::handle_segment`] held a segment towards the client: the segment that
    /// held the final reply before, if it goes on now carrying replies that went ahead of it
    /// (whole replies that cannot end a transfer, which arrived right behind the held one; the
    /// new segment carries the final reply in their place from now on), with its verdict. The
    /// shell sends it at once, with the newest TCP timestamps its sender sent meanwhile.
    pub fn take_moved_carrier(&mut self) -> Option<Verdict> {
        self.moved_carrier.take()
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
