//! One TCP segment through a session: sequence, ACK and SACK mapping both ways, retransmissions,
//! probes for absorbed lines, and the verdict.

use std::time::Instant;

use super::*;

impl Session {
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
        let reply_held = if dir == Dir::ToClient { self.reply_hold.as_ref().map(|h| (h.start, h.start.add(h.len))) } else { None };
        let refusing = dir == Dir::ToClient && self.refuse_greeting.is_some() && !self.greeted;
        // whole replies right behind the held one (a NOOP's during a paced cache hit) go ahead
        // of it (`move_ahead`), if nothing went on behind it yet
        let next = self.s2c.next;
        let ahead = reply_held.is_some_and(|(_, after)| seg.seq == after && next == after)
            && !tls
            && !seg.flags.fin
            && self.reply_hold.as_ref().is_some_and(|h| h.packet.is_some() && !h.passed_behind)
            && reply_hold::may_go_ahead(seg.payload);
        if let (Some((_, after)), Some(h)) = (reply_held, self.reply_hold.as_mut()) {
            // anything else the server sent after it goes on: the client's TCP keeps it until
            // the reply is released, and a replaced reply keeps its length, so these bytes are
            // where they will be
            h.passed_behind |= !ahead && seg.seq >= after && !seg.payload.is_empty() && !seg.flags.fin;
        }
        let resent = self.reply_hold.as_ref().filter(|h| h.resend && dir == Dir::ToClient).map(|h| (h.start, h.start.add(h.len), h.len));
        if let Some((start, after, len)) = resent {
            let end = seg.seq.add(seg.payload.len());
            if !seg.flags.fin && seg.seq <= start && end >= after && end <= self.s2c.next {
                // the server sends the held reply again: this segment carries it from now on
                // (at once if the data connection is done meanwhile); bytes before it (the
                // client did not acknowledge them: lost on the way) go on alone once more
                let before = start.diff(seg.seq) as usize;
                let (seq, mut prefix) = self.s2c.map.render(seg.seq, &seg.payload[..before]);
                let at = prefix.len();
                prefix.extend_from_slice(&seg.payload[before..before + len]);
                if let Some(h) = self.reply_hold.as_mut() {
                    h.packet = Some(HeldPacket { seq, ack, sack, prefix });
                    h.resend = false;
                    h.at = at;
                    h.lead_until = (at > 0).then(|| now + reply_hold::LEAD_WAIT);
                }
                return self.data_done(dp).unwrap_or(Verdict::Hold);
            }
        }
        let st = self.stream(dir);
        let end = seg.seq.add(seg.payload.len());
        if holding && (end > st.next || seg.flags.fin) {
            return Verdict::Drop; // nothing may pass the held RETR; TCP retransmits it later
        }
        if let Some((start, after)) = reply_held {
            if seg.flags.fin || (!seg.payload.is_empty() && end > start && seg.seq < after) {
                // nothing may repeat the held final reply (TCP retransmits it later), nor end
                // the stream before it
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
            // (only for replies that may go ahead: the sum runs over the stream's edits)
            let delta = ahead.then(|| self.stream(dir).map.total_delta());
            let (emit_from, bytes) = self.feed(dir, &seg.payload[from..], seg.flags.fin, dp);
            if ahead {
                let st = self.stream(dir);
                let whole = bytes == seg.payload && Some(st.map.total_delta()) == delta && !st.absorbing && st.line_len == 0;
                if whole && self.reply_hold.as_ref().is_some_and(|h| h.packet.is_some()) {
                    return self.move_ahead(seg.seq, bytes, ack, sack);
                }
                if let Some(h) = self.reply_hold.as_mut() {
                    h.passed_behind = true; // (never: the replies were whole and unchanged)
                }
            }
            let st = self.stream(dir);
            let s = st.map.map(emit_from);
            out_seq.get_or_insert(s);
            out.extend_from_slice(&bytes);
            if std::mem::take(&mut self.hold_new) {
                let seq = out_seq.unwrap_or(s);
                self.held = Some(HeldPacket { seq, ack, sack, prefix: out });
                return Verdict::Hold;
            }
            if let Some(h) = self.reply_hold.as_mut().filter(|h| h.packet.is_none() && !h.resend) {
                let seq = out_seq.unwrap_or(s);
                if h.at > 0 && !h.mapped && h.line.is_none() {
                    h.lead_until = Some(now + reply_hold::LEAD_WAIT);
                }
                h.packet = Some(HeldPacket { seq, ack, sack, prefix: out });
                return Verdict::Hold;
            }
        }
        let st = self.stream(dir);
        // Bytes that all vanished (absorbed into a held line, or a removed reply such as the
        // 350 to ftpgate's REST) must still be acknowledged by the receiver, or the sender
        // retransmits them for ever and, with Nagle, sends nothing after them: a segment
        // without data is not acknowledged, so it goes as a probe, a one-byte duplicate of the
        // '\n' before the current line, which the receiver acknowledges at once.
        if out.is_empty() && (st.absorbing || (!seg.payload.is_empty() && !seg.flags.fin)) {
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

fn finish(seg: &Segment, seq: Seq, ack: Seq, sack: Option<Vec<(Seq, Seq)>>, payload: Option<Vec<u8>>) -> Verdict {
    if seq == seg.seq && ack == seg.ack && sack.is_none() && payload.is_none() {
        Verdict::Pass
    } else {
        Verdict::Edit(Edit { seq, ack, sack, payload })
    }
}

/// The TCP timestamps (TSval, TSecr) a held segment must go out with when it is released:
/// `None` keeps its own (`own`); the newest the same sender sent while it was held (`newest`)
/// when those are later — with its own older ones, PAWS (RFC 7323) would have the receiver drop
/// it as an old duplicate.
pub fn released_timestamps(own: Option<(u32, u32)>, newest: Option<(u32, u32)>) -> Option<(u32, u32)> {
    match (own, newest) {
        (Some(old), Some(new)) if Seq::new(new.0) > Seq::new(old.0) => Some(new),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_segment_carries_the_newest_timestamps() {
        assert_eq!(released_timestamps(Some((100, 7)), Some((180, 9))), Some((180, 9)));
        assert_eq!(released_timestamps(Some((100, 7)), Some((100, 7))), None, "its own are the newest");
        assert_eq!(released_timestamps(Some((100, 7)), None), None, "nothing passed meanwhile");
        assert_eq!(released_timestamps(None, Some((5, 1))), None, "no timestamp option to rewrite");
        // TSval wraps like a sequence number
        assert_eq!(released_timestamps(Some((u32::MAX - 1, 0)), Some((3, 0))), Some((3, 0)));
    }
}
