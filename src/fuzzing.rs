//! Fuzz harnesses, shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/`) and by the test
//! that replays the checked-in corpus in CI (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes, drives one sans-IO component and panics only when an invariant breaks.

use core::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use crate::cache::{Decision, Key};
use crate::proto::seqmap::SeqMap;
use crate::proto::{ftp, DataId, DataPlane, DataRequest, Dir, Flags, Mode, OpenError, Opened, Segment, Seq, Session, Transfer, Verdict};

/// A data plane that accepts everything and claims every file is cached.
struct Dp(u64);

impl DataPlane for Dp {
    fn open(&mut self, req: &DataRequest) -> Result<Opened, OpenError> {
        self.0 += 1;
        if self.0.is_multiple_of(7) {
            return Err(OpenError::Exhausted);
        }
        let announce = match req.mode {
            Mode::Active => "10.0.2.1:5000".parse().unwrap(),
            Mode::Passive | Mode::ToBoth { .. } => SocketAddr::new(req.target.ip(), req.target.port().wrapping_add(1)),
            Mode::FromBoth => {
                let client_side = Some(SocketAddr::new(req.server.ip(), 6100));
                return Ok(Opened { announce: "10.0.2.1:5100".parse().unwrap(), id: self.0, client_side });
            }
        };
        Ok(Opened { announce, id: self.0, client_side: None })
    }
    fn cached(&mut self, _key: &Key) -> Option<u64> {
        self.0.is_multiple_of(2).then_some(1000)
    }
    fn transfer(&mut self, _id: DataId, _what: Transfer) -> bool {
        true
    }
    fn finished(&mut self, _id: DataId, _ok: bool) {}
    fn invalidate(&mut self, _server: core::net::SocketAddr, _path: &str) {}
}

/// One end's view: what it sent, and the stream it received (by receiver-space offset).
struct End {
    snd_nxt: Seq,
    isn_peer: Seq,
    received: Vec<u8>,
}

/// Two TCP ends with the helper between them. Input bytes are read as a script: a control byte
/// picks the direction, a retransmission or new data and its length; data bytes follow. The
/// invariants: a retransmission never changes bytes the receiver already has, the helper never
/// skips ahead of what the receiver has (no gap), and ACKs never claim unsent data. The script
/// runs on an IPv4 session and again on an IPv6 one (where EPRT |2| and 229 are followed).
pub fn session(data: &[u8]) {
    session_between("10.0.1.2:40000".parse().unwrap(), "10.0.2.2:21".parse().unwrap(), data);
    session_between("[fd00:1::2]:40000".parse().unwrap(), "[fd00:2::2]:21".parse().unwrap(), data);
}

fn session_between(client: SocketAddr, server: SocketAddr, data: &[u8]) {
    let now = Instant::now();
    let mut s = Session::new(client, server, now);
    let mut dp = Dp(0);
    let mut c = End { snd_nxt: Seq::new(1001), isn_peer: Seq::new(5001), received: Vec::new() };
    let mut v = End { snd_nxt: Seq::new(5001), isn_peer: Seq::new(1001), received: Vec::new() };
    let syn = Flags { syn: true, ..Default::default() };
    s.handle_segment(Dir::ToServer, &Segment { seq: Seq::new(1000), ack: Seq::new(0), flags: syn, sack: &[], payload: &[] }, &mut dp, now);
    let synack = Flags { syn: true, ack: true, ..Default::default() };
    s.handle_segment(Dir::ToClient, &Segment { seq: Seq::new(5000), ack: Seq::new(1001), flags: synack, sack: &[], payload: &[] }, &mut dp, now);
    // the original streams, to draw retransmissions from
    let mut sent_c: Vec<u8> = Vec::new();
    let mut sent_v: Vec<u8> = Vec::new();
    let mut i = 0;
    let decisions = [Decision::Hit, Decision::Stale, Decision::Gone, Decision::Bypass];
    while i < data.len() {
        let ctl = data[i];
        i += 1;
        let dir = if ctl & 1 == 0 { Dir::ToServer } else { Dir::ToClient };
        let rexmit = ctl & 2 != 0;
        let len = ((ctl >> 2) as usize % 24) + 1;
        let (tx, rx, sent) = match dir {
            Dir::ToServer => (&mut c, &mut v, &mut sent_c),
            Dir::ToClient => (&mut v, &mut c, &mut sent_v),
        };
        let (seq, payload) = if rexmit && !sent.is_empty() {
            let from = data.get(i).map_or(0, |&b| b as usize) % sent.len();
            i += 1;
            let to = (from + len).min(sent.len());
            (rx.isn_peer.add(from), sent[from..to].to_vec())
        } else {
            let take = len.min(data.len() - i);
            let bytes = data[i..i + take].to_vec();
            i += take;
            let seq = tx.snd_nxt;
            tx.snd_nxt = seq.add(bytes.len());
            sent.extend_from_slice(&bytes);
            (seq, bytes)
        };
        if payload.is_empty() {
            continue;
        }
        let ack = tx.isn_peer.add(tx.received.len());
        let seg = Segment { seq, ack, flags: Flags { ack: true, ..Default::default() }, sack: &[], payload: &payload };
        let mut verdict = s.handle_segment(dir, &seg, &mut dp, now);
        if verdict == Verdict::Hold {
            let d = decisions[ctl as usize % decisions.len()];
            verdict = s.release(d, &mut dp).expect("held segment has a release");
        }
        let (oseq, out) = match verdict {
            Verdict::Pass => (seq, payload),
            Verdict::Drop | Verdict::Hold => continue,
            Verdict::Edit(e) => (e.seq, e.payload.unwrap_or(payload)),
        };
        let off = oseq.diff(rx.isn_peer);
        assert!(off >= 0, "segment before the stream start");
        let off = off as usize;
        assert!(off <= rx.received.len(), "helper created a gap");
        let overlap = (rx.received.len() - off).min(out.len());
        assert_eq!(&rx.received[off..off + overlap], &out[..overlap], "retransmission changed delivered bytes");
        rx.received.extend_from_slice(&out[overlap..]);
        // the receiver acknowledges everything it has; mapped back, that must not exceed what
        // the sender sent
        let back = match dir {
            Dir::ToServer => Dir::ToClient,
            Dir::ToClient => Dir::ToServer,
        };
        let rack = rx.isn_peer.add(rx.received.len());
        let seg = Segment { seq: rx.snd_nxt, ack: rack, flags: Flags { ack: true, ..Default::default() }, sack: &[], payload: &[] };
        let mapped = match s.handle_segment(back, &seg, &mut dp, now) {
            Verdict::Edit(e) => e.ack,
            Verdict::Pass => rack,
            Verdict::Drop | Verdict::Hold => continue,
        };
        assert!(mapped <= tx.snd_nxt, "ACK claims unsent data");
        while s.poll_event().is_some() {}
    }
}

/// Random edit histories: `map` is monotonic, `unmap(map(s)) == s` outside edited regions, and
/// `render` of an unedited range returns it unchanged.
pub fn seqmap(data: &[u8]) {
    let mut m = SeqMap::default();
    let base = Seq::new(u32::MAX - 300); // exercise wrap-around
    let mut pos = 0usize;
    // (start, end, replacement is empty)
    let mut edits: Vec<(usize, usize, bool)> = Vec::new();
    for ch in data.chunks(3) {
        let [gap, old, new] = match ch {
            [a, b, c] => [*a as usize, *b as usize % 40, *c as usize % 60],
            _ => break,
        };
        let start = pos + gap % 50;
        m.push(base.add(start), old, vec![b'x'; new]);
        edits.push((start, start + old, new == 0));
        pos = start + old;
    }
    // inside an edited region, or anywhere in a removed one (an ACK there acknowledges all of
    // it): no exact inverse
    let inside = |s: usize| edits.iter().any(|&(a, b, gone)| (s > a && s < b) || (gone && s >= a && s <= b));
    // edits older than the last MAX_EDITS are folded into one offset: numbers before their end
    // are history the connection has left behind and are not checked
    let folded_end = match edits.len().checked_sub(crate::proto::seqmap::MAX_EDITS + 1) {
        Some(k) => edits[k].1,
        None => 0,
    };
    let mut last = None;
    for s in folded_end..pos + 60 {
        let mapped = m.map(base.add(s));
        if let Some(l) = last {
            assert!(mapped >= l, "map is not monotonic at {s}");
        }
        last = Some(mapped);
        if !inside(s) {
            assert_eq!(m.unmap(mapped), base.add(s), "unmap(map({s}))");
        }
    }
    let after = base.add(pos + 5);
    let (at, bytes) = m.render(after, b"abc");
    assert_eq!((at, bytes.as_slice()), (m.map(after), &b"abc"[..]));
}

/// The PORT/EPRT/227/229 parsers and the packet decoder on arbitrary bytes: no panic, and what
/// parses re-emits to a line that parses to the new endpoint — an IPv4 one in every form, an
/// IPv6 one in the forms that carry it (EPRT |2|, 229), none in PORT and 227.
pub fn parsers(data: &[u8]) {
    let to4: SocketAddrV4 = "10.0.2.1:5000".parse().unwrap();
    let to6: SocketAddr = "[fd00:2::1]:5001".parse().unwrap();
    for (parse, extended) in [(ftp::parse_port as fn(&[u8]) -> _, false), (ftp::parse_eprt, true), (ftp::parse_227, false), (ftp::parse_229, true)] {
        if let Ok(ep) = parse(data) {
            for to in [SocketAddr::V4(to4), to6] {
                let Some(line) = ftp::emit(data, &ep, to) else {
                    assert!(to.is_ipv6() && !extended, "{to} has a form in every extended command");
                    continue;
                };
                let again = parse(&line).expect("emitted line parses");
                assert_eq!(again.port, to.port());
                if let Some(ip) = again.ip {
                    assert_eq!(ip, to.ip());
                }
            }
        }
    }
    let _ = ftp::reply_code(data);
    let _ = ftp::verb(data);
    let _ = crate::wire::Packet::parse(data);
    let _ = crate::cache::dir_from_257(data);
    if let Ok(t) = core::str::from_utf8(data) {
        let _ = crate::cache::resolve("~/a", t);
        let _ = crate::cache::mdtm_seconds(t);
    }
}

/// Explicit proxy: the login dialogue over arbitrary lines (answers to its checks and connects
/// drawn from the input), then, once connected, arbitrary chunks of both streams through
/// [`crate::proto::explicit::Streams`]. Invariants: every reply is well-formed lines (`ddd` and a
/// space or dash, one CRLF at the end of each, no other CR or LF), a connect is only asked for a
/// host name of the allowed characters, and a session never takes a step after closing.
pub fn explicit(data: &[u8]) {
    use crate::proto::explicit::{ProxyLogin, Step, Streams};
    use crate::proto::Via;
    let (script, streams) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut login = ProxyLogin::new(data.first().is_some_and(|b| b & 1 == 1));
    let mut connected = false;
    let mut closed = false;
    let check = |steps: &[Step], closed: &mut bool| {
        assert!(!*closed || steps.is_empty(), "steps after Close: {steps:?}");
        for s in steps {
            match s {
                Step::Reply(r) => {
                    assert!(r.ends_with("\r\n"), "{r:?}");
                    for line in r[..r.len() - 2].split("\r\n") {
                        let b = line.as_bytes();
                        assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'), "{r:?}");
                        assert!(!line.contains(['\r', '\n']), "{r:?}");
                    }
                }
                Step::Connect(t) => {
                    assert!(t.host.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && t.port != 0, "{t:?}")
                }
                Step::Close => *closed = true,
                _ => {}
            }
        }
    };
    for line in script.split(|&b| b == b'\n') {
        if closed {
            break;
        }
        let text = String::from_utf8_lossy(line);
        let mut steps = login.line(&text);
        // answer what it asks, as the input says
        for _ in 0..2 {
            check(&steps, &mut closed);
            let next = steps.iter().find_map(|s| match s {
                Step::Verify { .. } => Some(login.verified(line.len() % 3 != 0)),
                Step::Connect(_) => Some(login.connected(if line.len() % 2 == 0 { Ok(()) } else { Err("421 no".into()) })),
                _ => None,
            });
            match next {
                Some(n) => steps = n,
                None => break,
            }
        }
        if steps.iter().any(|s| matches!(s, Step::Handoff(_))) {
            connected = true;
            break;
        }
    }
    if !connected {
        return;
    }
    let now = Instant::now();
    let mut dp = Dp(0);
    let via = Via { client_side: "10.0.1.1".parse().unwrap(), server_side: "10.0.2.1".parse().unwrap() };
    let mut st = Streams::new("10.0.1.2:40000".parse().unwrap(), "10.0.2.2:21".parse().unwrap(), via, &mut dp, now);
    let mut rest = streams;
    while let Some((&c, tail)) = rest.split_first() {
        let n = (c as usize >> 2) % 48 + 1;
        let (chunk, tail) = tail.split_at(n.min(tail.len()));
        rest = tail;
        let dir = if c & 1 == 0 { Dir::ToServer } else { Dir::ToClient };
        let mut f = st.feed(dir, chunk, false, &mut dp, now);
        let mut n = 0;
        while f.held {
            let d = [Decision::Hit, Decision::Stale, Decision::Gone, Decision::Bypass][(c as usize >> 1) % 4];
            f = st.release(d, &mut dp, now);
            n += 1;
            assert!(n < 1000, "release keeps holding");
        }
    }
}
