//! Line reassembly: in-order bytes of one direction cut into lines, a candidate line absorbed
//! while it is incomplete, complete lines handed to the command/reply machine.

use super::*;

impl Session {
    /// Feeds new in-order bytes of `dir` through the line machine. Returns the original sequence
    /// number the emitted bytes start at, and the bytes (held ones left out).
    pub(super) fn feed(&mut self, dir: Dir, data: &[u8], fin: bool, dp: &mut dyn DataPlane) -> (Seq, Vec<u8>) {
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
                        passed_behind: false,
                        line: None,
                        lead_until: None,
                        resend: false,
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
    pub(super) fn is_candidate(&self, dir: Dir) -> bool {
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
                    // across the families PASV and EPSV are translated
                    || (self.translates() && (is_prefix_ci(l, b"PASV") || is_prefix_ci(l, b"EPSV")))
                    // --server-mode active sends them on as PORT/EPRT
                    || (self.policy.server_mode == ServerMode::Active && (is_prefix_ci(l, b"PASV") || is_prefix_ci(l, b"EPSV")))
                    || (self.alg64.is_some() && is_prefix_ci(l, b"ALGS "))
                    // the operator's policy answers some commands itself
                    || self.policy.deny.iter().any(|d| is_prefix_ci(l, d.as_bytes()))
                    || (self.policy.anonymous_only && (is_prefix_ci(l, b"USER ") || is_prefix_ci(l, b"PASS ")))
            }
            Dir::ToClient => {
                if !self.greeted {
                    return self.refuse_greeting.is_some() && self.multiline.is_none();
                }
                if self.multiline.is_some() {
                    return false;
                }
                match self.cmds.front() {
                    Some(Cmd::Pasv) => is_prefix_ci(l, b"227 ") || (self.translates() && is_prefix_ci(l, b"229 ")),
                    Some(Cmd::Epsv) => is_prefix_ci(l, b"229 ") || (self.translates() && is_prefix_ci(l, b"227 ")),
                    Some(Cmd::Refused(_)) | Some(Cmd::Hidden) => l.first().is_none_or(|&c| c != b'1'),
                    Some(Cmd::ToPassive { .. }) => is_prefix_ci(l, b"227 ") || is_prefix_ci(l, b"229 "),
                    Some(Cmd::ToActive { .. }) => l.first().is_none_or(|&c| c == b'2'),
                    // a transfer's final reply (held until its bytes are delivered); not a 200
                    // to a NOOP sent during the transfer
                    Some(Cmd::Retr(_, Some(_))) | Some(Cmd::Xfer(_)) => ftp::may_end_transfer_prefix(l) || self.cmds.len() == 1,
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The line machine alone (in the style of quinn's `Assembler` tests): bytes of one
    //! direction fed in pieces, what it emits, holds and reports.
    use super::*;
    use crate::proto::tests::Pair;

    /// Feeds `text` to the client-to-server direction in pieces of `size` bytes; returns what
    /// came out of each feed.
    fn feed_in_pieces(p: &mut Pair, text: &[u8], size: usize) -> Vec<Vec<u8>> {
        text.chunks(size).map(|c| p.s.feed(Dir::ToServer, c, false, &mut p.dp).1).collect()
    }

    #[test]
    fn lines_that_need_no_rewrite_pass_as_they_arrive() {
        for size in [1, 2, 5, 64] {
            let mut p = Pair::new();
            let text = b"USER anonymous\r\nPASS x\r\nNOOP\r\nLIST\r\n";
            let out = feed_in_pieces(&mut p, text, size);
            assert_eq!(out.concat(), text, "piece size {size}: the same bytes, in order");
            if size == 1 {
                // only a start that could still become PORT/EPRT/RETR waits (here "P" of PASS,
                // released with the next byte); every other byte goes on at once
                let waited: Vec<usize> = out.iter().enumerate().filter(|(_, o)| o.is_empty()).map(|(i, _)| i).collect();
                assert_eq!(waited, [16]);
                assert_eq!(out[17], b"PA");
            }
        }
    }

    #[test]
    fn a_port_line_is_absorbed_until_complete_then_emitted_whole_and_rewritten() {
        let mut p = Pair::new();
        // (the stream's very first line is never absorbed: nothing was acknowledged before it)
        assert_eq!(p.s.feed(Dir::ToServer, b"NOOP\r\n", false, &mut p.dp).1, b"NOOP\r\n");
        let out = feed_in_pieces(&mut p, b"PORT 10,0,1,2,156,64\r\n", 3);
        let (held, last) = out.split_at(out.len() - 1);
        assert!(held.iter().all(Vec::is_empty), "a PORT line goes nowhere until its end: {out:?}");
        assert_eq!(last[0], b"PORT 10,0,2,1,19,136\r\n", "the whole line, rewritten once");
        assert_eq!(p.s.feed(Dir::ToServer, b"NOOP\r\n", false, &mut p.dp).1, b"NOOP\r\n", "the next line starts fresh");
    }

    #[test]
    fn several_lines_in_one_piece_and_an_overlong_line() {
        let mut p = Pair::new();
        let (_, out) = p.s.feed(Dir::ToServer, b"NOOP\r\nPORT 10,0,1,2,156,64\r\nNOOP\r\n", false, &mut p.dp);
        assert_eq!(out, b"NOOP\r\nPORT 10,0,2,1,19,136\r\nNOOP\r\n");
        let long = [b"PORT ".as_slice(), &vec![b'1'; LINE_CAP + 10], b"\r\n"].concat();
        let (_, out) = p.s.feed(Dir::ToServer, &long, false, &mut p.dp);
        assert_eq!(out, long, "a line past the cap passes through unparsed");
        let evs: Vec<Event> = std::iter::from_fn(|| p.s.poll_event()).collect();
        assert!(evs.iter().any(|e| matches!(e, Event::Malformed { why, .. } if why.contains("passed through unparsed"))), "{evs:?}");
    }
}
