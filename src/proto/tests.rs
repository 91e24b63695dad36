//! Whole-session tests: two TCP endpoints in memory, the helper between them, any segmentation.

use super::*;
use core::net::{IpAddr, Ipv4Addr};
use proptest::prelude::*;

const CLIENT: &str = "10.0.1.2:40000";
const SERVER: &str = "10.0.2.2:21";

/// Answers every request like the NAT router does: active connections are announced on the
/// router's WAN address, passive ones on the server's address with the port moved by one.
#[derive(Default)]
pub(super) struct FakeDp {
    opened: Vec<DataRequest>,
    fail: bool,
    /// Cached entries: path -> size.
    cache: std::collections::HashMap<String, u64>,
    transfers: Vec<(DataId, Transfer)>,
    finished: Vec<(DataId, bool)>,
    invalidated: Vec<String>,
    /// Logins announced by `transfer_ahead`.
    ahead: Vec<Login>,
    /// What `data_state` answers for every data connection (`Unknown` when unset).
    state: Option<DataState>,
    /// How the data connection ends when the session holds a final reply in `Pair::send_at`.
    ends_as: Option<DataOutcome>,
}

impl DataPlane for FakeDp {
    fn open(&mut self, req: &DataRequest) -> Result<Opened, OpenError> {
        self.opened.push(req.clone());
        if self.fail {
            return Err(OpenError::Exhausted);
        }
        let announce = match (req.mode, req.via) {
            // explicit proxy: on the gateway's own address of the side that connects
            (Mode::Active, Some(v)) => SocketAddr::new(v.server_side, 7000),
            (Mode::Passive, Some(v)) => SocketAddr::new(v.client_side, 6000),
            (Mode::Active, None) if req.target.is_ipv6() => "[fd00:2::1]:5000".parse().unwrap(),
            (Mode::Active, None) => "10.0.2.1:5000".parse().unwrap(),
            (Mode::Passive, None) => SocketAddr::new(req.target.ip(), req.target.port() + 1),
            // the relay connects to both: nothing to announce
            (Mode::ToBoth { .. }, _) => req.target,
            (Mode::FromBoth, _) => {
                let client_side = SocketAddr::new(req.server.ip(), 6100);
                return Ok(Opened { announce: "10.0.2.1:5100".parse().unwrap(), id: self.opened.len() as DataId, client_side: Some(client_side) });
            }
        };
        Ok(Opened { announce, id: self.opened.len() as DataId, client_side: None })
    }
    fn cached(&mut self, key: &Key) -> Option<u64> {
        self.cache.get(&key.path).copied()
    }
    fn transfer_ahead(&mut self, login: &Login) {
        self.ahead.push(login.clone());
    }
    fn transfer(&mut self, id: DataId, what: Transfer) -> bool {
        self.transfers.push((id, what));
        true
    }
    fn finished(&mut self, id: DataId, ok: bool) {
        self.finished.push((id, ok));
    }
    fn invalidate(&mut self, _server: core::net::SocketAddr, path: &str) {
        self.invalidated.push(path.to_string());
    }
    fn data_state(&mut self, _id: DataId) -> DataState {
        self.state.clone().unwrap_or(DataState::Unknown)
    }
}

/// One side's view of its own stream and of what it received.
struct End {
    snd_nxt: Seq,
    acked: Seq,
    rcv_nxt: Seq,
    received: Vec<u8>,
}

pub(super) struct Pair {
    pub(super) s: Session,
    pub(super) dp: FakeDp,
    c: End,
    v: End,
    now: Instant,
    probes: usize,
    /// Answers of freshness checks, in order.
    answer: VecDeque<Decision>,
}

impl Pair {
    pub(super) fn new() -> Pair {
        Pair::between(CLIENT, SERVER)
    }

    fn between(client: &str, server: &str) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            s: Session::new(client.parse().unwrap(), server.parse().unwrap(), now),
            dp: FakeDp::default(),
            c: End { snd_nxt: Seq::new(1001), acked: Seq::new(1001), rcv_nxt: Seq::new(5001), received: vec![] },
            v: End { snd_nxt: Seq::new(5001), acked: Seq::new(5001), rcv_nxt: Seq::new(1001), received: vec![] },
            now,
            probes: 0,
            answer: VecDeque::new(),
        };
        let syn = Flags { syn: true, ..Default::default() };
        let seg = Segment { seq: Seq::new(1000), ack: Seq::new(0), flags: syn, sack: &[], payload: &[] };
        assert_eq!(p.s.handle_segment(Dir::ToServer, &seg, &mut p.dp, now), Verdict::Pass);
        let synack = Flags { syn: true, ack: true, ..Default::default() };
        let seg = Segment { seq: Seq::new(5000), ack: Seq::new(1001), flags: synack, sack: &[], payload: &[] };
        assert_eq!(p.s.handle_segment(Dir::ToClient, &seg, &mut p.dp, now), Verdict::Pass);
        p
    }

    fn ends(&mut self, dir: Dir) -> (&mut End, &mut End) {
        match dir {
            Dir::ToServer => (&mut self.c, &mut self.v),
            Dir::ToClient => (&mut self.v, &mut self.c),
        }
    }

    /// Sends `data` at sequence `seq` in `dir`, delivers what the helper lets through, and
    /// returns the receiver's ACK through the helper to the sender.
    fn send_at(&mut self, dir: Dir, seq: Seq, data: &[u8]) {
        let ack_field = match dir {
            Dir::ToServer => self.c.rcv_nxt,
            Dir::ToClient => self.v.rcv_nxt,
        };
        let flags = Flags { ack: true, ..Default::default() };
        let seg = Segment { seq, ack: ack_field, flags, sack: &[], payload: data };
        let v = self.s.handle_segment(dir, &seg, &mut self.dp, self.now);
        let (oseq, payload) = match v {
            Verdict::Pass => (seq, data.to_vec()),
            Verdict::Drop => return,
            Verdict::Edit(e) => (e.seq, e.payload.unwrap_or_else(|| data.to_vec())),
            Verdict::Hold if dir == Dir::ToClient => {
                // a final reply waits for its data connection; it ends, then the reply goes out
                let outcome = self.dp.ends_as.clone().expect("final reply held without an outcome queued");
                self.dp.state = Some(DataState::Done(outcome));
                match self.s.data_done(&mut self.dp).expect("nothing held") {
                    Verdict::Edit(e) => (e.seq, e.payload.unwrap_or_else(|| data.to_vec())),
                    v => panic!("data_done gave {v:?}"),
                }
            }
            Verdict::Hold => {
                // the freshness check answers; then the held segment goes out
                let decision = self.answer.pop_front().expect("held without an answer queued");
                // the session owns the check's deadline
                assert!(self.s.pending_check().is_some(), "held without a pending check");
                assert_eq!(self.s.handle_timeout(self.now, &mut self.dp), crate::proto::Released::default());
                assert!(self.s.poll_timeout().is_some_and(|d| d <= self.now + crate::proto::HOLD_LIMIT));
                let released = self.s.release(decision, &mut self.dp);
                assert_eq!(self.s.pending_check(), None, "answered, still pending");
                match released.expect("nothing held") {
                    Verdict::Edit(e) => (e.seq, e.payload.unwrap_or_else(|| data.to_vec())),
                    v => panic!("release gave {v:?}"),
                }
            }
        };
        if payload.is_empty() {
            return; // as TCP: a segment without data (or FIN) is not acknowledged
        }
        let (_, rx) = self.ends(dir);
        let end = oseq.add(payload.len());
        let probe = payload == b"\n" && end == rx.rcv_nxt;
        if oseq <= rx.rcv_nxt && end > rx.rcv_nxt {
            let skip = rx.rcv_nxt.diff(oseq) as usize;
            rx.received.extend_from_slice(&payload[skip..]);
            rx.rcv_nxt = end;
        }
        assert!(oseq <= rx.rcv_nxt, "helper created a gap: seq {oseq:?} > rcv_nxt {:?}", rx.rcv_nxt);
        // the receiver acknowledges at once
        let ack = rx.rcv_nxt;
        let rseq = rx.snd_nxt;
        self.probes += probe as usize;
        let back = match dir {
            Dir::ToServer => Dir::ToClient,
            Dir::ToClient => Dir::ToServer,
        };
        let seg = Segment { seq: rseq, ack, flags, sack: &[], payload: &[] };
        let mapped = match self.s.handle_segment(back, &seg, &mut self.dp, self.now) {
            Verdict::Pass => ack,
            Verdict::Edit(e) => e.ack,
            Verdict::Drop | Verdict::Hold => panic!("pure ACK dropped or held"),
        };
        let (tx, _) = self.ends(dir);
        assert!(mapped <= tx.snd_nxt.later(seq.add(data.len())), "ACK beyond what was sent");
        tx.acked = tx.acked.later(mapped);
    }

    /// Sends new bytes split at the given sizes.
    fn send(&mut self, dir: Dir, data: &[u8], sizes: &[usize]) {
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes.get(i).copied().unwrap_or(rest.len()).clamp(1, rest.len());
            let (tx, _) = self.ends(dir);
            let seq = tx.snd_nxt;
            tx.snd_nxt = seq.add(n);
            self.send_at(dir, seq, &rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        let (tx, _) = self.ends(dir);
        assert_eq!(tx.acked, tx.snd_nxt, "sender's bytes not all acknowledged ({dir:?})");
    }

    fn received(&self, dir: Dir) -> String {
        let e = match dir {
            Dir::ToServer => &self.v,
            Dir::ToClient => &self.c,
        };
        String::from_utf8_lossy(&e.received).into_owned()
    }
}

fn active_session(sizes: &[usize]) -> Pair {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER anonymous\r\n", sizes);
    p.send(Dir::ToClient, b"331 pw\r\n", &[]);
    p.send(Dir::ToServer, b"PASS x\r\nTYPE I\r\n", sizes);
    p.send(Dir::ToClient, b"230 in\r\n200 binary\r\n", &[]);
    p.send(Dir::ToServer, b"PORT 10,0,1,2,156,64\r\nRETR f\r\n", sizes);
    p.send(Dir::ToClient, b"200 PORT ok\r\n150 go\r\n226 done\r\n", &[]);
    p.send(Dir::ToServer, b"QUIT\r\n", sizes);
    p
}

const ACTIVE_SEEN_BY_SERVER: &str = "USER anonymous\r\nPASS x\r\nTYPE I\r\nPORT 10,0,2,1,19,136\r\nRETR f\r\nQUIT\r\n";

#[test]
fn a_data_command_after_login_announces_the_transfer_ahead() {
    let p = active_session(&[]);
    assert_eq!(p.dp.ahead.len(), 1, "one PORT after the login");
    assert_eq!((p.dp.ahead[0].user.as_str(), p.dp.ahead[0].pass.as_str()), ("anonymous", "x"));
    // before the login nothing is announced
    let mut q = Pair::new();
    q.send(Dir::ToClient, b"220 hello\r\n", &[]);
    q.send(Dir::ToServer, b"PASV\r\n", &[]);
    assert!(q.dp.ahead.is_empty());
}

#[test]
fn port_rewritten_in_one_segment() {
    let p = active_session(&[]);
    assert_eq!(p.received(Dir::ToServer), ACTIVE_SEEN_BY_SERVER);
    assert_eq!(p.dp.opened.len(), 1);
    assert_eq!(p.dp.opened[0].target, "10.0.1.2:40000".parse().unwrap());
    assert_eq!(p.probes, 0);
}

#[test]
fn port_rewritten_when_typed_one_byte_per_segment() {
    let p = active_session(&[1; 200]);
    assert_eq!(p.received(Dir::ToServer), ACTIVE_SEEN_BY_SERVER);
    assert!(p.probes > 10, "typed PORT line should have been absorbed with probes");
}

#[test]
fn port_rewritten_under_every_two_way_split() {
    for a in 1..40 {
        for b in 1..12 {
            let p = active_session(&[a, b, 3]);
            assert_eq!(p.received(Dir::ToServer), ACTIVE_SEEN_BY_SERVER, "split {a},{b}");
        }
    }
}

#[test]
fn pasv_reply_rewritten_byte_by_byte_and_following_bytes_mapped() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,48).\r\n", &[1; 100]);
    p.send(Dir::ToServer, b"EPSV\r\n", &[]);
    p.send(Dir::ToClient, b"229 Entering Extended Passive Mode (|||40009|)\r\n", &[1; 100]);
    p.send(Dir::ToClient, b"150 x\r\n226 y\r\n", &[3]);
    assert_eq!(
        p.received(Dir::ToClient),
        "220 hello\r\n227 Entering Passive Mode (10,0,2,2,117,49).\r\n\
         229 Entering Extended Passive Mode (|||40010|)\r\n150 x\r\n226 y\r\n"
    );
    assert_eq!(p.dp.opened.len(), 2);
    assert_eq!(p.dp.opened[0].target, "10.0.2.2:30000".parse().unwrap());
    assert_eq!(p.dp.opened[1].target, "10.0.2.2:40009".parse().unwrap());
}

#[test]
fn pasv_reply_naming_third_party_is_not_followed() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 ok (192,0,2,9,117,48)\r\n", &[]);
    assert_eq!(p.dp.opened[0].target, "10.0.2.2:30000".parse().unwrap());
    assert_eq!(p.received(Dir::ToClient), "220 hello\r\n227 ok (10,0,2,2,117,49)\r\n");
}

#[test]
fn bounce_port_is_refused_and_server_sees_noop() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    p.send(Dir::ToServer, b"PORT 192,0,2,9,0,25\r\nEPRT |1|10.0.1.9|6000|\r\n", &[4]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n200 NOOP ok.\r\n", &[2]);
    assert_eq!(p.received(Dir::ToServer), "USER a\r\nNOOP\r\nNOOP\r\n");
    let got = p.received(Dir::ToClient);
    assert!(got.starts_with("220 hello\r\n230 in\r\n500 ftpgate: data address 192.0.2.9"), "{got}");
    assert_eq!(got.matches("500 ftpgate").count(), 2, "{got}");
    assert!(p.dp.opened.is_empty());
}

#[test]
fn ipv6_eprt_on_an_ipv4_session_gets_522_and_the_server_a_noop() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    p.send(Dir::ToServer, b"EPRT |2|fd00:1::2|6000|\r\n", &[3]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert_eq!(p.received(Dir::ToServer), "USER a\r\nNOOP\r\n");
    let got = p.received(Dir::ToClient);
    assert!(got.starts_with("220 hello\r\n230 in\r\n522 "), "{got}");
    assert!(got.contains("use (1)"), "{got}");
    assert!(p.dp.opened.is_empty());
}

#[test]
fn ipv6_session_eprt_epsv_and_the_ipv4_forms() {
    let mut p = Pair::between("[fd00:1::2]:40000", "[fd00:2::2]:21");
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    // EPRT |2| naming the client: prepared, rewritten to the announced endpoint, one byte a segment
    p.send(Dir::ToServer, b"EPRT |2|fd00:1::2|40001|\r\n", &[1; 26]);
    p.send(Dir::ToClient, b"200 ok\r\n", &[]);
    assert_eq!(p.dp.opened[0].target, "[fd00:1::2]:40001".parse().unwrap());
    assert!(p.received(Dir::ToServer).ends_with("EPRT |2|fd00:2::1|5000|\r\n"), "{}", p.received(Dir::ToServer));
    // EPSV: the 229's port is the announced one
    p.send(Dir::ToServer, b"EPSV\r\n", &[]);
    p.send(Dir::ToClient, b"229 Extended (|||30000|)\r\n", &[]);
    assert_eq!(p.dp.opened[1].target, "[fd00:2::2]:30000".parse().unwrap());
    assert!(p.received(Dir::ToClient).ends_with("229 Extended (|||30001|)\r\n"));
    // an IPv4 EPRT on an IPv6 session names a third party: refused, the server gets a NOOP
    p.send(Dir::ToServer, b"EPRT |1|10.0.1.2|40002|\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("NOOP\r\n"));
    assert!(p.received(Dir::ToClient).contains("500 ftpgate: data address 10.0.1.2 is not the client's fd00:1::2"));
    // PASV goes to the server; its 227 (an IPv4 endpoint) is passed as sent, not followed
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 ok (10,0,2,2,117,48)\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("227 ok (10,0,2,2,117,48)\r\n"));
    assert_eq!(p.dp.opened.len(), 2, "nothing prepared for the 227");
}

/// A NAT64 session (RFC 6384): EPSV to the IPv4 server as PASV and its 227 back as a 229, EPRT
/// |2| as PORT on the router's IPv4 address, ALGS answered 216 and honoured, one byte a segment.
#[test]
fn nat64_session_translates_and_answers_algs() {
    let mut p = Pair::between("[fd00:1::2]:40000", "10.0.2.2:21");
    let via = Via { client_side: "fd77:64::a00:202".parse().unwrap(), server_side: "10.0.2.1".parse().unwrap() };
    p.s = Session::nat64("[fd00:1::2]:40000".parse().unwrap(), "10.0.2.2:21".parse().unwrap(), via, p.now);
    let syn = Flags { syn: true, ..Default::default() };
    p.s.handle_segment(Dir::ToServer, &Segment { seq: Seq::new(1000), ack: Seq::new(0), flags: syn, sack: &[], payload: &[] }, &mut p.dp, p.now);
    let synack = Flags { syn: true, ack: true, ..Default::default() };
    p.s.handle_segment(
        Dir::ToClient,
        &Segment { seq: Seq::new(5000), ack: Seq::new(1001), flags: synack, sack: &[], payload: &[] },
        &mut p.dp,
        p.now,
    );
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    p.send(Dir::ToServer, b"EPSV\r\n", &[1; 6]);
    assert!(p.received(Dir::ToServer).ends_with("PASV\r\n"), "{}", p.received(Dir::ToServer));
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,48).\r\n", &[]);
    assert_eq!(p.dp.opened[0].target, "10.0.2.2:30000".parse().unwrap());
    assert!(p.received(Dir::ToClient).ends_with("229 Entering Extended Passive Mode (|||6000|)\r\n"), "{}", p.received(Dir::ToClient));
    p.send(Dir::ToServer, b"EPRT |2|fd00:1::2|40001|\r\n", &[]);
    p.send(Dir::ToClient, b"200 ok\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("PORT 10,0,2,1,27,88\r\n"), "{}", p.received(Dir::ToServer));
    assert_eq!(p.dp.opened[1].target, "[fd00:1::2]:40001".parse().unwrap());
    // a 227 naming another host: 425, nothing opened (RFC 6384)
    p.send(Dir::ToServer, b"EPSV\r\n", &[]);
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,99,117,48).\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("425 ftpgate: the server's 227 names 10.0.2.99, not the server 10.0.2.2; not followed.\r\n"));
    assert_eq!(p.dp.opened.len(), 2);
    // PASV from the IPv6 client: its 227 could not name an address it reaches; refused
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("502 ftpgate: PASV cannot name an IPv6 address; use EPSV.\r\n"));
    // ALGS: answered here (the server gets a NOOP), one byte a segment
    for (arg, want) in [("STATUS64", "enabled"), ("DISABLE64", "disabled"), ("STATUS64", "disabled")] {
        let line = format!("ALGS {arg}\r\n");
        p.send(Dir::ToServer, line.as_bytes(), &vec![1; line.len()]);
        p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
        assert!(p.received(Dir::ToClient).ends_with(&format!("216 ftpgate: translation of EPSV/EPRT {want}.\r\n")), "{}", p.received(Dir::ToClient));
    }
    // translation off: EPSV passes as sent, its 229 is not touched
    p.send(Dir::ToServer, b"EPSV\r\n", &[]);
    p.send(Dir::ToClient, b"229 ok (|||30002|)\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("NOOP\r\nEPSV\r\n"));
    assert!(p.received(Dir::ToClient).ends_with("229 ok (|||30002|)\r\n"));
    assert_eq!(p.dp.opened.len(), 2);
    p.send(Dir::ToServer, b"ALGS BOGUS\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("501 ftpgate: ALGS takes STATUS64, ENABLE64 or DISABLE64.\r\n"));
}

/// The operator's policy: denied commands and non-anonymous logins answered by ftpgate, never
/// seen by the server, one byte a segment; the session goes on; no cache with `cache = false`.
#[test]
fn policy_denies_commands_and_logins() {
    let mut p = Pair::new();
    p.s = std::mem::replace(&mut p.s, Session::new(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), p.now)).with_policy(SessionPolicy {
        deny: vec!["STOR".into(), "DELE".into()],
        anonymous_only: true,
        cache: false,
        rates: Rates::default(),
        server_mode: ServerMode::Client,
    });
    p.dp.cache.insert("/pub/f.bin".into(), 10);
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    // the first line, split: it cannot be replaced, so its PASS is refused instead
    p.send(Dir::ToServer, b"USER alice\r\n", &[1; 12]);
    p.send(Dir::ToClient, b"331 pw\r\n", &[]);
    p.send(Dir::ToServer, b"PASS secret\r\n", &[1; 13]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("530 ftpgate: only anonymous logins are allowed to this server.\r\n"));
    p.send(Dir::ToServer, b"USER alice\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(
        p.received(Dir::ToClient).ends_with("530 ftpgate: only anonymous logins are allowed to this server.\r\n"),
        "{:?} / {:?}",
        p.received(Dir::ToClient),
        p.received(Dir::ToServer)
    );
    p.send(Dir::ToServer, b"USER anonymous\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    for line in ["STOR up.bin\r\n", "dele x\r\n"] {
        p.send(Dir::ToServer, line.as_bytes(), &vec![1; line.len()]);
        p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
        let verb = line.split(' ').next().unwrap().to_ascii_uppercase();
        assert!(
            p.received(Dir::ToClient).ends_with(&format!("550 ftpgate: {verb} is not allowed through this gateway.\r\n")),
            "{}",
            p.received(Dir::ToClient)
        );
    }
    let to_server = p.received(Dir::ToServer);
    assert!(
        to_server.matches("alice").count() == 1
            && !to_server.contains("secret")
            && !to_server.contains("STOR")
            && !to_server.to_ascii_uppercase().contains("DELE"),
        "{to_server}"
    );
    // the session goes on; the download is not served from the cache
    p.send(Dir::ToServer, b"CWD /pub\r\n", &[]);
    p.send(Dir::ToClient, b"250 ok\r\n", &[]);
    p.send(Dir::ToServer, b"TYPE I\r\nPASV\r\n", &[]);
    p.send(Dir::ToClient, b"200 I\r\n227 ok (10,0,2,2,117,48)\r\n", &[]);
    p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("RETR f.bin\r\n"));
    assert!(p.dp.transfers.is_empty(), "{:?}", p.dp.transfers);
}

#[test]
fn data_plane_failure_becomes_425() {
    let mut p = Pair::new();
    p.dp.fail = true;
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 ok (10,0,2,2,117,48)\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("425 ftpgate: cannot prepare the data connection: no ports left.\r\n"));
}

#[test]
fn auth_tls_stops_parsing() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"PORT 10,0,1,2,156,64\r\n", &[]); // grows the stream by 0 bytes? no: +0
    p.send(Dir::ToClient, b"200 ok\r\n", &[]);
    p.send(Dir::ToServer, b"AUTH TLS\r\n", &[]);
    p.send(Dir::ToClient, b"234 go\r\n\x16\x03\x01PORT 1,2,3,4,5,6\r\n", &[]);
    p.send(Dir::ToServer, b"\x16\x03\x01PORT 10,0,1,2,156,64\r\n", &[1, 1, 1, 1]);
    assert!(p.s.is_tls());
    assert_eq!(p.dp.opened.len(), 1);
    assert!(p.received(Dir::ToServer).ends_with("AUTH TLS\r\n\x16\x03\x01PORT 10,0,1,2,156,64\r\n"));
}

#[test]
fn retransmissions_are_rewritten_identically() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\n", &[]);
    let start = p.c.snd_nxt;
    let line = b"PORT 10,0,1,2,156,64\r\nNOOP\r\n";
    p.send(Dir::ToServer, line, &[3, 30]);
    let first = p.received(Dir::ToServer);
    // replay every suffix and sub-range as retransmissions: nothing new may arrive and the
    // helper must never hand the server bytes that differ from what it already has
    for a in 0..line.len() {
        for b in a + 1..=line.len() {
            let flags = Flags { ack: true, ..Default::default() };
            let seg = Segment { seq: start.add(a), ack: p.c.rcv_nxt, flags, sack: &[], payload: &line[a..b] };
            match p.s.handle_segment(Dir::ToServer, &seg, &mut p.dp, p.now) {
                Verdict::Edit(e) => {
                    let pl = e.payload.unwrap_or_else(|| line[a..b].to_vec());
                    let off = e.seq.diff(start) as usize;
                    let off = off + 8;
                    assert_eq!(&p.v.received[off..off + pl.len()], &pl[..], "range {a}..{b}");
                }
                Verdict::Pass => {
                    assert_eq!(&p.v.received[8 + a..8 + b], &line[a..b], "range {a}..{b}");
                }
                Verdict::Drop | Verdict::Hold => panic!("retransmission dropped or held"),
            }
        }
    }
    assert_eq!(p.received(Dir::ToServer), first);
    assert_eq!(p.dp.opened.len(), 1, "a retransmission must not open another relay");
}

#[test]
fn gap_is_dropped() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    let flags = Flags { ack: true, ..Default::default() };
    let seg = Segment { seq: p.c.snd_nxt.add(3), ack: p.c.rcv_nxt, flags, sack: &[], payload: b"T 1,2\r\n" };
    assert_eq!(p.s.handle_segment(Dir::ToServer, &seg, &mut p.dp, p.now), Verdict::Drop);
}

#[test]
fn sack_blocks_are_mapped_and_dsack_removed() {
    let mut p = active_session(&[]);
    // server SACKs a block after the grown PORT line, and a D-SACK below its ACK
    let ack = p.v.rcv_nxt;
    let blocks = [(ack.add(10), ack.add(20)), (ack.sub(1), ack)];
    let flags = Flags { ack: true, ..Default::default() };
    let seg = Segment { seq: p.v.snd_nxt, ack, flags, sack: &blocks, payload: &[] };
    let delta = ACTIVE_SEEN_BY_SERVER.len() as i64 - "USER anonymous\r\nPASS x\r\nTYPE I\r\nPORT 10,0,1,2,156,64\r\nRETR f\r\nQUIT\r\n".len() as i64;
    match p.s.handle_segment(Dir::ToClient, &seg, &mut p.dp, p.now) {
        Verdict::Edit(e) => {
            assert_eq!(e.ack, ack.offset(-delta));
            assert_eq!(e.sack, Some(vec![(ack.add(10).offset(-delta), ack.add(20).offset(-delta))]));
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn garbage_never_panics_and_session_recovers() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    let junk: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    p.send(Dir::ToServer, &junk, &[7, 300, 1]);
    p.send(Dir::ToServer, b"\r\nPORT 1,2,3\r\nPORT 10,0,1,2,999,1\r\nEPRT |9|x|1|\r\n", &[5]);
    p.send(Dir::ToServer, &[b'P'; 9000], &[1000]);
    p.send(Dir::ToServer, b"\r\nPORT 10,0,1,2,156,64\r\n", &[1; 30]);
    assert!(p.received(Dir::ToServer).ends_with("\r\nPORT 10,0,2,1,19,136\r\n"));
    while p.s.poll_event().is_some() {}
}

#[test]
fn downloads_are_reported_with_absolute_paths() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER alice\r\nPWD\r\nTYPE I\r\nCWD pub/x\r\nCDUP\r\nRETR ../f.bin\r\n", &[5]);
    p.send(Dir::ToClient, b"230 in\r\n257 \"/home/alice\" is cwd\r\n200 I\r\n250 ok\r\n250 ok\r\n150 go\r\n226 done\r\n", &[7]);
    p.send(Dir::ToServer, b"TYPE A\r\nRETR /etc/x\r\n", &[]);
    p.send(Dir::ToClient, b"200 A\r\n550 no\r\n", &[]);
    let retrs: Vec<Event> = std::iter::from_fn(|| p.s.poll_event()).filter(|e| matches!(e, Event::Retr { .. })).collect();
    assert_eq!(
        retrs,
        vec![
            Event::Retr { path: Some("/home/alice/f.bin".into()), binary: true, ok: true },
            Event::Retr { path: Some("/etc/x".into()), binary: false, ok: false },
        ]
    );
}

/// Logged in as alice in /home/alice, TYPE I, PASV prepared (data id 1).
fn cache_session(sizes: &[usize]) -> Pair {
    let mut p = Pair::new();
    p.dp.cache.insert("/home/alice/f.bin".into(), 1000);
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER alice\r\n", sizes);
    p.send(Dir::ToClient, b"331 pw\r\n", &[]);
    p.send(Dir::ToServer, b"PASS secret\r\n", sizes);
    p.send(Dir::ToClient, b"230 in\r\n", &[]);
    p.send(Dir::ToServer, b"PWD\r\nTYPE I\r\nPASV\r\n", sizes);
    p.send(Dir::ToClient, b"257 \"/home/alice\"\r\n200 I\r\n227 ok (10,0,2,2,117,48)\r\n", &[]);
    p
}

const CACHE_PREFIX_TO_CLIENT: &str = "220 hello\r\n331 pw\r\n230 in\r\n257 \"/home/alice\"\r\n200 I\r\n227 ok (10,0,2,2,117,49)\r\n";

#[test]
fn cache_hit_sends_rest_and_hides_its_reply() {
    for sizes in [&[][..], &[1; 64][..], &[3, 5][..]] {
        let mut p = cache_session(sizes);
        p.answer.push_back(Decision::Hit);
        p.send(Dir::ToServer, b"RETR f.bin\r\n", sizes);
        assert!(p.received(Dir::ToServer).ends_with("PASV\r\nREST 1000\r\nRETR f.bin\r\n"), "{sizes:?}");
        p.send(Dir::ToClient, b"350 Restart position accepted (1000).\r\n150 Opening\r\n226 done\r\n", &[7]);
        p.send(Dir::ToServer, b"QUIT\r\n", sizes);
        p.send(Dir::ToClient, b"221 bye\r\n", &[]);
        assert_eq!(p.received(Dir::ToClient), format!("{CACHE_PREFIX_TO_CLIENT}150 Opening\r\n226 done\r\n221 bye\r\n"));
        assert!(p.received(Dir::ToServer).ends_with("RETR f.bin\r\nQUIT\r\n"));
        let key = Key::new(SERVER.parse().unwrap(), "alice", "/home/alice/f.bin".into(), true);
        assert_eq!(p.dp.transfers, vec![(1, Transfer::Serve { key, offset: 0 })]);
        assert_eq!(p.dp.finished, vec![(1, true)]);
    }
}

/// The server's reply to ftpgate's REST alone in a segment (proftpd under load: its 150 comes
/// later, and with Nagle only once the 350 is acknowledged): removed, the segment would reach
/// the client empty, which TCP does not acknowledge, and the server would wait for ever. It
/// goes as a probe instead, whose ACK covers the removed reply.
#[test]
fn a_hidden_reply_alone_in_a_segment_is_acknowledged() {
    let mut p = cache_session(&[]);
    p.answer.push_back(Decision::Hit);
    p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
    p.send(Dir::ToClient, b"350 Restarting at 1000. Send STORE or RETRIEVE to initiate transfer\r\n", &[]);
    p.send(Dir::ToClient, b"150 Opening\r\n226 done\r\n", &[]);
    assert_eq!(p.received(Dir::ToClient), format!("{CACHE_PREFIX_TO_CLIENT}150 Opening\r\n226 done\r\n"));
    assert_eq!(p.probes, 1);
}

#[test]
fn cache_hit_honours_the_clients_rest() {
    let mut p = cache_session(&[]);
    p.send(Dir::ToServer, b"REST 100\r\n", &[]);
    p.send(Dir::ToClient, b"350 ok\r\n", &[]);
    p.answer.push_back(Decision::Hit);
    p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
    p.send(Dir::ToClient, b"350 ok\r\n150 go\r\n226 done\r\n", &[]);
    assert_eq!(p.received(Dir::ToClient), format!("{CACHE_PREFIX_TO_CLIENT}350 ok\r\n150 go\r\n226 done\r\n"));
    assert!(matches!(p.dp.transfers[..], [(1, Transfer::Serve { offset: 100, .. })]));
}

#[test]
fn stale_or_unconfirmed_retr_goes_out_unchanged() {
    for (d, captured) in [(Decision::Stale, true), (Decision::Bypass, false), (Decision::Gone, false)] {
        let mut p = cache_session(&[]);
        p.answer.push_back(d);
        p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
        assert!(p.received(Dir::ToServer).ends_with("PASV\r\nRETR f.bin\r\n"));
        p.send(Dir::ToClient, b"150 go\r\n226 done\r\n", &[]);
        assert_eq!(p.received(Dir::ToClient), format!("{CACHE_PREFIX_TO_CLIENT}150 go\r\n226 done\r\n"));
        let login = Login { server: SERVER.parse().unwrap(), user: "alice".into(), pass: "secret".into() };
        let want: Vec<_> = if captured {
            let key = Key::new(SERVER.parse().unwrap(), "alice", "/home/alice/f.bin".into(), true);
            vec![(1, Transfer::Capture { key, login })]
        } else {
            vec![]
        };
        assert_eq!(p.dp.transfers, want, "{d:?}");
    }
}

#[test]
fn unanswered_check_releases_the_retr_at_its_deadline_as_a_bypass() {
    let mut p = cache_session(&[]);
    let (seq, ack) = (p.c.snd_nxt, p.c.rcv_nxt);
    let now = p.now;
    assert_eq!(p.s.handle_segment(Dir::ToServer, &seg(seq, ack, b"RETR f.bin\r\n"), &mut p.dp, now), Verdict::Hold);
    assert!(p.s.pending_check().is_some());
    let d = p.s.poll_timeout().expect("a held RETR has a deadline");
    assert!(d <= now + crate::proto::HOLD_LIMIT);
    assert_eq!(p.s.handle_timeout(d - Duration::from_millis(1), &mut p.dp), Released::default());
    let Released { retr: Some(Verdict::Edit(e)), reply: None } = p.s.handle_timeout(d, &mut p.dp) else { panic!("not released") };
    assert_eq!(e.payload.as_deref(), Some(&b"RETR f.bin\r\n"[..]));
    assert_eq!(p.s.pending_check(), None);
    assert!(p.dp.transfers.is_empty(), "a bypass neither serves nor captures: {:?}", p.dp.transfers);
    let evs: Vec<_> = std::iter::from_fn(|| p.s.poll_event()).collect();
    assert!(evs.iter().any(|e| matches!(e, Event::Note(n) if n.contains("unanswered"))), "{evs:?}");
}

#[test]
fn miss_is_captured_and_uncacheable_downloads_bypass() {
    let mut p = cache_session(&[]);
    p.send(Dir::ToServer, b"RETR other.bin\r\n", &[]);
    p.send(Dir::ToClient, b"150 go\r\n226 done\r\n", &[]);
    assert!(matches!(&p.dp.transfers[..], [(1, Transfer::Capture { key, .. })] if key.path == "/home/alice/other.bin"));
    assert_eq!(p.dp.finished, vec![(1, true)]);
    // ASCII, a resumed download, no data connection: no capture
    for (cmd, reply) in [
        (&b"TYPE A\r\n"[..], &b"200 A\r\n"[..]),
        (b"PASV\r\n", b"227 ok (10,0,2,2,117,50)\r\n"),
        (b"RETR a.txt\r\n", b"150 go\r\n226 done\r\n"),
        (b"TYPE I\r\n", b"200 I\r\n"),
        (b"PASV\r\n", b"227 ok (10,0,2,2,117,51)\r\n"),
        (b"REST 5\r\n", b"350 ok\r\n"),
        (b"RETR b\r\n", b"150 go\r\n226 done\r\n"),
        (b"RETR c\r\n", b"425 no data\r\n"),
    ] {
        p.send(Dir::ToServer, cmd, &[]);
        p.send(Dir::ToClient, reply, &[]);
    }
    assert_eq!(p.dp.transfers.len(), 1);
    let outcomes: Vec<CacheOutcome> = std::iter::from_fn(|| p.s.poll_event())
        .filter_map(|e| match e {
            Event::Cache { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    use CacheOutcome::{Bypass, Miss};
    assert_eq!(outcomes, [Miss, Bypass("ASCII transfer"), Bypass("resumed download"), Bypass("no data connection prepared")]);
    let text: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
    assert_eq!(text, ["miss", "bypass (ASCII transfer)", "bypass (resumed download)", "bypass (no data connection prepared)"]);
    assert_eq!(outcomes.iter().map(CacheOutcome::label).collect::<Vec<_>>(), ["miss", "bypass", "bypass", "bypass"]);
    let busy = CacheOutcome::NotCaptured(Fetch::Stale, NotCaptured::CacheBusy);
    assert_eq!((busy.to_string().as_str(), busy.label()), ("stale, not captured (cache busy or unwritable)", "stale"));
    // changes invalidate
    p.send(Dir::ToServer, b"DELE x\r\nSTOR /pub/y\r\n", &[]);
    assert_eq!(p.dp.invalidated, ["/home/alice/x", "/pub/y"]);
}

#[test]
fn commands_behind_a_held_retr_wait_for_it() {
    let mut p = cache_session(&[]);
    p.answer.push_back(Decision::Hit);
    // RETR and QUIT in one segment: QUIT is left for the client to send again
    let start = p.c.snd_nxt;
    p.c.snd_nxt = start.add(18);
    p.send_at(Dir::ToServer, start, b"RETR f.bin\r\nQUIT\r\n");
    assert!(p.received(Dir::ToServer).ends_with("REST 1000\r\nRETR f.bin\r\n"));
    assert_eq!(p.c.acked, start.add(12));
    p.send_at(Dir::ToServer, start.add(12), b"QUIT\r\n");
    assert!(p.received(Dir::ToServer).ends_with("RETR f.bin\r\nQUIT\r\n"));
    assert_eq!(p.c.acked, start.add(18));
}

#[test]
fn password_is_not_in_debug_output() {
    let mut q = Pair::new();
    q.send(Dir::ToClient, b"220 hello\r\n", &[]);
    let long = format!("PASS {}\r\n", "secret".repeat(100));
    q.send(Dir::ToServer, long.as_bytes(), &[]);
    let events: Vec<String> = std::iter::from_fn(|| q.s.poll_event()).map(|e| format!("{e:?}")).collect();
    assert!(events.iter().all(|e| !e.contains("secret")), "{events:?}");
    assert!(!events.is_empty(), "an over-long line is reported");
    let p = cache_session(&[]);
    let l = p.s.login().unwrap();
    assert_eq!(l.pass, "secret");
    assert!(!format!("{l:?}").contains("secret"));
}

#[test]
fn over_the_limit_the_greeting_becomes_421() {
    for sizes in [&[][..], &[5, 1, 1][..], &[9, 30][..]] {
        let mut p = Pair::new();
        p.s.refuse_session("too many FTP sessions through this gateway");
        let greeting = b"220 vsFTPd 3.0.3 ready\r\n";
        if let Some(&first) = sizes.first() {
            // split at its start: dropped until the server retransmits it whole
            let seq = p.v.snd_nxt;
            let flags = Flags { ack: true, ..Default::default() };
            let seg = Segment { seq, ack: p.v.rcv_nxt, flags, sack: &[], payload: &greeting[..first] };
            assert_eq!(p.s.handle_segment(Dir::ToClient, &seg, &mut p.dp, p.now), Verdict::Drop);
        }
        p.send(Dir::ToClient, greeting, &[]);
        assert_eq!(p.received(Dir::ToClient), "421 ftpgate: too many FTP sessions through this gateway.\r\n");
    }
}

#[test]
fn resumed_session_keeps_mapping_and_rewriting() {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER a\r\nPORT 10,0,1,2,4,1\r\n", &[]);
    p.send(Dir::ToClient, b"230 in\r\n200 PORT ok\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("PORT 10,0,2,1,19,136\r\n"), "grew by 3 bytes");
    let st = p.s.seq_state().expect("lengths changed");
    assert_eq!(st.c2s.0, 3);
    // the helper restarts: a new Session from the saved offsets only
    p.s = Session::resume(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), st, p.now);
    p.send(Dir::ToServer, b"PORT 10,0,1,2,4,2\r\n", &[]);
    p.send(Dir::ToClient, b"200 PORT ok\r\n", &[]);
    p.send(Dir::ToServer, b"NOOP\r\n", &[]);
    assert!(p.received(Dir::ToServer).ends_with("PORT 10,0,2,1,19,136\r\nPORT 10,0,2,1,19,136\r\nNOOP\r\n"));
    assert_eq!(p.received(Dir::ToClient), "220 hello\r\n230 in\r\n200 PORT ok\r\n200 PORT ok\r\n");
    // without the saved offsets the client's next bytes would land 3 bytes early: the same
    // test with a fresh Session must not pass
    let mut q = Pair::new();
    q.send(Dir::ToClient, b"220 hello\r\n", &[]);
    q.send(Dir::ToServer, b"PORT 10,0,1,2,4,1\r\n", &[]);
    q.s = Session::new(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), q.now);
    let seg = Segment { seq: q.c.snd_nxt, ack: q.c.rcv_nxt, flags: Flags { ack: true, ..Default::default() }, sack: &[], payload: b"NOOP\r\n" };
    let v = q.s.handle_segment(Dir::ToServer, &seg, &mut q.dp, q.now);
    assert!(matches!(v, Verdict::Pass), "a fresh session cannot know the offset: {v:?}");
}

proptest! {
    /// Random segmentation of both directions gives the same byte streams as one segment each.
    #[test]
    fn any_segmentation_same_streams(sizes in proptest::collection::vec(1usize..9, 1..40)) {
        let p = active_session(&sizes);
        prop_assert_eq!(p.received(Dir::ToServer), ACTIVE_SEEN_BY_SERVER);
        prop_assert_eq!(p.received(Dir::ToClient), "220 hello\r\n331 pw\r\n230 in\r\n200 binary\r\n200 PORT ok\r\n150 go\r\n226 done\r\n");
    }

    /// Random segmentation with random retransmissions of already-sent ranges.
    #[test]
    fn retransmissions_do_not_change_streams(
        sizes in proptest::collection::vec(1usize..6, 1..30),
        rexmit in proptest::collection::vec((0usize..60, 1usize..20), 0..20),
    ) {
        let mut p = Pair::new();
        p.send(Dir::ToClient, b"220 hello\r\n", &[]);
        let start = p.c.snd_nxt;
        let stream = b"USER a\r\nPORT 10,0,1,2,156,64\r\nEPRT |1|10.0.1.2|40001|\r\nNOOP\r\n";
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            let seq = p.c.snd_nxt;
            p.c.snd_nxt = seq.add(n);
            p.send_at(Dir::ToServer, seq, &rest[..n]);
            rest = &rest[n..];
            if let Some(&(a, len)) = rexmit.get(i) {
                let sent = p.c.snd_nxt.diff(start) as usize;
                let a = a.min(sent.saturating_sub(1));
                let b = (a + len).min(sent);
                if a < b {
                    p.send_at(Dir::ToServer, start.add(a), &stream[a..b]);
                }
            }
            i += 1;
        }
        prop_assert_eq!(p.received(Dir::ToServer), "USER a\r\nPORT 10,0,2,1,19,136\r\nEPRT |1|10.0.2.1|5000|\r\nNOOP\r\n");
        prop_assert_eq!(p.dp.opened.len(), 2);
    }
}

/// A FIN takes one sequence number: the segments after it (the ACK of the peer's FIN, both
/// orders of closing) must pass, with or without length changes. They were dropped as a gap,
/// so every session ended with FIN retransmissions until the endpoints gave up.
#[test]
fn teardown_acks_after_fin_pass() {
    for with_edit in [false, true] {
        for server_first in [false, true] {
            let mut p = if with_edit { active_session(&[]) } else { Pair::new() };
            if !with_edit {
                p.send(Dir::ToClient, b"220 hello\r\n", &[]);
                p.send(Dir::ToServer, b"QUIT\r\n", &[]);
            }
            p.send(Dir::ToClient, b"221 bye\r\n", &[]);
            let fin_ack = Flags { fin: true, ack: true, ..Default::default() };
            let ack = Flags { ack: true, ..Default::default() };
            let (c, v) = (p.c.snd_nxt, p.v.snd_nxt);
            let order: [(Dir, Seq, Seq); 2] = if server_first {
                [(Dir::ToClient, v, c), (Dir::ToServer, c, v.add(1))]
            } else {
                [(Dir::ToServer, c, v), (Dir::ToClient, v, c.add(1))]
            };
            for (dir, seq, a) in order {
                let seg = Segment { seq, ack: a, flags: fin_ack, sack: &[], payload: &[] };
                let v = p.s.handle_segment(dir, &seg, &mut p.dp, p.now);
                assert!(matches!(v, Verdict::Pass | Verdict::Edit(_)), "FIN {dir:?}: {v:?}");
            }
            // the last ACKs: each side's sequence number is one past its FIN
            for (dir, seq, a) in [(Dir::ToServer, c.add(1), v.add(1)), (Dir::ToClient, v.add(1), c.add(1))] {
                let seg = Segment { seq, ack: a, flags: ack, sack: &[], payload: &[] };
                let out = p.s.handle_segment(dir, &seg, &mut p.dp, p.now);
                assert!(matches!(out, Verdict::Pass | Verdict::Edit(_)), "last ACK {dir:?} (edit {with_edit}, server first {server_first}): {out:?}");
            }
            assert!(p.s.is_closed());
        }
    }
}

/// Explicit proxy: the two byte streams through [`explicit::Streams`], split anywhere.
mod explicit_streams {
    use super::*;
    use crate::proto::explicit::Streams;

    const VIA: Via = Via { client_side: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), server_side: IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)) };

    struct Ends {
        st: Streams,
        dp: FakeDp,
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        now: Instant,
    }

    impl Ends {
        fn new() -> Ends {
            let now = Instant::now();
            let mut dp = FakeDp::default();
            let st = Streams::new(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), VIA, &mut dp, now);
            Ends { st, dp, to_server: vec![], to_client: vec![], now }
        }
        /// alice logged in, in /home/alice, after PASV; /home/alice/f.bin (1000 bytes) cached.
        fn logged_in_with_a_cached_file(size: usize) -> Ends {
            let mut e = Ends::new();
            e.dp.cache.insert("/home/alice/f.bin".into(), 1000);
            e.send(Dir::ToClient, b"220 hi\r\n", size, None);
            e.send(Dir::ToServer, b"USER alice\r\nPASS pw\r\nPWD\r\nTYPE I\r\nPASV\r\n", size, None);
            e.send(Dir::ToClient, b"331 pw\r\n230 in\r\n257 \"/home/alice\"\r\n200 I\r\n227 ok (10,0,2,2,117,48)\r\n", size, None);
            e
        }
        fn send(&mut self, dir: Dir, data: &[u8], size: usize, hit: Option<Decision>) {
            for chunk in data.chunks(size.max(1)) {
                let mut f = self.st.feed(dir, chunk, false, &mut self.dp, self.now);
                loop {
                    match dir {
                        Dir::ToServer => self.to_server.extend_from_slice(&f.out),
                        Dir::ToClient => self.to_client.extend_from_slice(&f.out),
                    }
                    if !f.held {
                        break;
                    }
                    f = self.st.release(hit.expect("held without a decision"), &mut self.dp, self.now);
                }
            }
        }
    }

    #[test]
    fn explicit_session_rewrites_on_the_gateways_addresses() {
        for size in [1, 2, 5, 1000] {
            let mut e = Ends::new();
            e.send(Dir::ToClient, b"220 hi\r\n", size, None);
            e.send(Dir::ToServer, b"USER alice\r\n", size, None);
            e.send(Dir::ToClient, b"331 pw\r\n", size, None);
            e.send(Dir::ToServer, b"PASS pw\r\nPORT 10,0,1,2,156,64\r\n", size, None);
            e.send(Dir::ToClient, b"230 in\r\n200 ok\r\n", size, None);
            e.send(Dir::ToServer, b"PASV\r\n", size, None);
            e.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,48).\r\n", size, None);
            assert_eq!(
                String::from_utf8_lossy(&e.to_server),
                "USER alice\r\nPASS pw\r\nPORT 10,0,2,1,27,88\r\nPASV\r\n",
                "one byte at a time or whole, each byte once (size {size})"
            );
            assert_eq!(
                String::from_utf8_lossy(&e.to_client),
                "220 hi\r\n331 pw\r\n230 in\r\n200 ok\r\n227 Entering Passive Mode (10,0,1,1,23,112).\r\n"
            );
            assert!(e.dp.opened.iter().all(|r| r.via == Some(VIA)));
            assert_eq!(e.dp.opened[0].target, "10.0.1.2:40000".parse().unwrap());
            assert_eq!(e.dp.opened[1].target, "10.0.2.2:30000".parse().unwrap());
        }
    }

    /// A client of one family, a server of the other: PASV ↔ EPSV and 227 ↔ 229, PORT ↔ EPRT,
    /// each side in its own family's form, the data connections on the proxy's addresses.
    #[test]
    fn explicit_session_across_the_families_translates_the_forms() {
        let v4_via_v6 = Via { client_side: "10.0.1.1".parse().unwrap(), server_side: "fd00:2::1".parse().unwrap() };
        let v6_via_v4 = Via { client_side: "fd00:1::1".parse().unwrap(), server_side: "10.0.2.1".parse().unwrap() };
        let cases: [(&str, &str, Via, &str, &str, &str, &str); 2] = [
            // IPv4 client, IPv6 server
            (
                "10.0.1.2:40000",
                "[fd00:2::2]:21",
                v4_via_v6,
                "PORT 10,0,1,2,156,64\r\nPASV\r\nEPSV\r\n",
                "200 ok\r\n229 Entering Extended Passive Mode (|||30000|)\r\n229 Entering Extended Passive Mode (|||30001|)\r\n",
                "EPRT |2|fd00:2::1|7000|\r\nEPSV\r\nEPSV\r\n",
                "200 ok\r\n227 Entering Passive Mode (10,0,1,1,23,112).\r\n229 Entering Extended Passive Mode (|||6000|)\r\n",
            ),
            // IPv6 client, IPv4 server (which may know neither EPSV nor EPRT)
            (
                "[fd00:1::2]:40000",
                "10.0.2.2:21",
                v6_via_v4,
                "EPRT |2|fd00:1::2|40000|\r\nEPSV\r\nEPSV ALL\r\n",
                "200 ok\r\n227 Entering Passive Mode (10,0,2,2,117,48).\r\n200 noop\r\n",
                "PORT 10,0,2,1,27,88\r\nPASV\r\nNOOP\r\n",
                "200 ok\r\n229 Entering Extended Passive Mode (|||6000|)\r\n200 EPSV ALL ok (ftpgate speaks PASV to the IPv4 server).\r\n",
            ),
        ];
        for (client, server, via, cmds, replies, want_server, want_client) in cases {
            for size in [1, 1000] {
                let now = Instant::now();
                let mut dp = FakeDp::default();
                let st = Streams::new(client.parse().unwrap(), server.parse().unwrap(), via, &mut dp, now);
                let mut e = Ends { st, dp, to_server: vec![], to_client: vec![], now };
                e.send(Dir::ToClient, b"220 hi\r\n", size, None);
                e.send(Dir::ToServer, b"USER a\r\n", size, None);
                e.send(Dir::ToClient, b"230 in\r\n", size, None);
                e.send(Dir::ToServer, cmds.as_bytes(), size, None);
                e.send(Dir::ToClient, replies.as_bytes(), size, None);
                assert_eq!(String::from_utf8_lossy(&e.to_server), format!("USER a\r\n{want_server}"), "{client} -> {server}, size {size}");
                assert_eq!(String::from_utf8_lossy(&e.to_client), format!("220 hi\r\n230 in\r\n{want_client}"), "{client} -> {server}, size {size}");
                // the active connection goes to the client, the passive ones to the server
                assert_eq!(e.dp.opened[0].target, SocketAddr::new(e.dp.opened[0].client.ip(), 40000));
                assert_eq!(e.dp.opened[1].target.ip(), e.dp.opened[1].server.ip());
            }
        }
    }

    #[test]
    fn explicit_cache_hit_sends_rest_and_hides_its_reply() {
        for size in [1, 3, 1000] {
            let mut e = Ends::new();
            e.dp.cache.insert("/home/alice/f.bin".into(), 1000);
            e.send(Dir::ToClient, b"220 hi\r\n", size, None);
            e.send(Dir::ToServer, b"USER alice\r\n", size, None);
            e.send(Dir::ToClient, b"331 pw\r\n", size, None);
            e.send(Dir::ToServer, b"PASS pw\r\nPWD\r\nTYPE I\r\nPASV\r\n", size, None);
            e.send(Dir::ToClient, b"230 in\r\n257 \"/home/alice\"\r\n200 I\r\n227 ok (10,0,2,2,117,48)\r\n", size, None);
            e.send(Dir::ToServer, b"RETR f.bin\r\n", size, Some(Decision::Hit));
            e.send(Dir::ToClient, b"350 Restarting at 1000.\r\n150 go\r\n226 done\r\n", size, None);
            assert!(String::from_utf8_lossy(&e.to_server).ends_with("PASV\r\nREST 1000\r\nRETR f.bin\r\n"), "size {size}");
            assert!(String::from_utf8_lossy(&e.to_client).ends_with("(10,0,1,1,23,112)\r\n150 go\r\n226 done\r\n"), "size {size}");
            let key = Key::new(SERVER.parse().unwrap(), "alice", "/home/alice/f.bin".into(), true);
            assert_eq!(e.dp.transfers, vec![(1, Transfer::Serve { key, offset: 0 })]);
        }
    }

    /// Through the proxy too, the replies to what the client sends during a (paced) cache hit
    /// reach it while the hit runs, ahead of the server's held `226`; one that keeps its place
    /// (an error) follows the `226`.
    #[test]
    fn explicit_replies_behind_a_held_final_reply_go_ahead() {
        for size in [1, 1000] {
            let mut e = Ends::logged_in_with_a_cached_file(size);
            e.send(Dir::ToServer, b"RETR f.bin\r\n", size, Some(Decision::Hit));
            e.dp.state = Some(DataState::Busy { moved: 0 });
            e.send(Dir::ToClient, b"350 Restarting at 1000.\r\n150 go\r\n226 done\r\n", size, None);
            assert!(e.st.awaiting_data().is_some(), "size {size}");
            e.send(Dir::ToServer, b"NOOP\r\nNOOP\r\nXYZ\r\n", size, None);
            e.send(Dir::ToClient, b"200 NOOP ok\r\n", size, None);
            e.send(Dir::ToClient, b"200 NOOP ok\r\n500 what?\r\n", size, None);
            let got = String::from_utf8_lossy(&e.to_client).into_owned();
            assert!(got.ends_with("150 go\r\n200 NOOP ok\r\n200 NOOP ok\r\n"), "size {size}: {got:?}");
            e.dp.state = Some(DataState::Done(DataOutcome::Ok));
            let f = e.st.data_done(&mut e.dp, e.now);
            let rest = String::from_utf8_lossy(&f.out).into_owned();
            // the 500 keeps its place: it follows the 226
            assert!(rest.starts_with("226 done") && rest.ends_with("500 what?\r\n"), "size {size}: {rest:?}");
            assert_eq!(e.st.awaiting_data(), None);
        }
    }

    /// The server's `150` and `226` read together (pyftpdlib answers a cache hit's zero-byte
    /// transfer at once): the `150` reaches the client now, only the `226` waits for the data
    /// connection. A client that reads the data only after the `150` (as most do) stalled until
    /// the held reply's no-progress deadline, 1 paced hit in 4 through the proxy.
    #[test]
    fn explicit_replies_before_a_held_final_reply_in_the_same_read_go_on() {
        for size in [1000, 50, 3] {
            let mut e = Ends::logged_in_with_a_cached_file(size);
            e.send(Dir::ToServer, b"RETR f.bin\r\n", size, Some(Decision::Hit));
            e.dp.state = Some(DataState::Busy { moved: 0 });
            e.send(Dir::ToClient, b"350 Restarting at 1000.\r\n150 go\r\n226 done\r\n", size, None);
            assert!(e.st.awaiting_data().is_some(), "size {size}");
            let got = String::from_utf8_lossy(&e.to_client).into_owned();
            assert!(got.ends_with("(10,0,1,1,23,112)\r\n150 go\r\n"), "size {size}: {got:?}");
            e.dp.state = Some(DataState::Done(DataOutcome::Ok));
            let f = e.st.data_done(&mut e.dp, e.now);
            assert_eq!(String::from_utf8_lossy(&f.out), "226 done\r\n", "size {size}");
            e.send(Dir::ToServer, b"QUIT\r\n", size, None);
            e.send(Dir::ToClient, b"221 bye\r\n", size, None);
            let got = String::from_utf8_lossy(&e.to_client).into_owned();
            assert!(got.ends_with("(10,0,1,1,23,112)\r\n150 go\r\n221 bye\r\n"), "size {size}: {got:?}");
        }
    }

    /// With TCP the client would send again what followed a held RETR; through the proxy
    /// nobody would, so it must follow the released RETR (here a second RETR, held in turn).
    #[test]
    fn explicit_commands_behind_a_held_retr_follow_it() {
        for size in [1, 7, 1000] {
            let mut e = Ends::logged_in_with_a_cached_file(size);
            e.send(Dir::ToServer, b"RETR f.bin\r\nNOOP\r\nQUIT\r\n", size, Some(Decision::Hit));
            let seen = String::from_utf8_lossy(&e.to_server).into_owned();
            assert!(seen.ends_with("PASV\r\nREST 1000\r\nRETR f.bin\r\nNOOP\r\nQUIT\r\n"), "size {size}: {seen:?}");
            assert!(!e.st.is_holding());
        }
    }
}

/// An active download up to the server's `150`, its data connection in progress.
fn transfer_in_progress() -> Pair {
    let mut p = Pair::new();
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER anonymous\r\nPASS x\r\nTYPE I\r\n", &[]);
    p.send(Dir::ToClient, b"331 pw\r\n230 in\r\n200 binary\r\n", &[]);
    p.send(Dir::ToServer, b"PORT 10,0,1,2,156,64\r\nRETR f\r\n", &[]);
    p.send(Dir::ToClient, b"200 PORT ok\r\n150 go\r\n", &[]);
    p.dp.state = Some(DataState::Busy { moved: 0 });
    p
}

fn seg<'a>(seq: Seq, ack: Seq, payload: &'a [u8]) -> Segment<'a> {
    Segment { seq, ack, flags: Flags { ack: true, ..Default::default() }, sack: &[], payload }
}

#[test]
fn final_reply_waits_until_the_data_connection_is_done() {
    let mut p = transfer_in_progress();
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let now = p.now;
    // the server's 226 arrives before the relay has even reached the client
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Hold);
    assert_eq!(p.s.awaiting_data(), Some(1));
    assert!(p.s.poll_timeout().is_some());
    // its retransmission may not overtake it, a pure ACK may pass
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Drop);
    assert!(matches!(p.s.handle_segment(Dir::ToClient, &seg(seq.add(10), ack, b""), &mut p.dp, now), Verdict::Pass | Verdict::Edit(_)));
    // not done yet: nothing to release
    assert_eq!(p.s.data_done(&mut p.dp), None);
    assert!(!p.received(Dir::ToClient).contains("226"));
    p.dp.state = Some(DataState::Done(DataOutcome::Ok));
    let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
    assert_eq!(e.payload.as_deref(), Some(&b"226 done\r\n"[..]));
    assert_eq!(p.s.awaiting_data(), None);
    assert!(p.dp.finished.contains(&(1, true)));
}

#[test]
fn client_unreachable_gets_425_and_the_stream_stays_mapped() {
    let mut p = transfer_in_progress();
    p.dp.ends_as = Some(DataOutcome::Unreachable("Connection refused".into()));
    p.v.snd_nxt = p.v.snd_nxt.add(10);
    let seq = p.v.snd_nxt.sub(10);
    p.send_at(Dir::ToClient, seq, b"226 done\r\n");
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n425 Can't open data connection.\r\n"), "{}", p.received(Dir::ToClient));
    p.dp.state = None;
    p.send(Dir::ToServer, b"QUIT\r\n", &[1]);
    p.send(Dir::ToClient, b"221 bye\r\n", &[3]);
    assert!(p.received(Dir::ToClient).ends_with("425 Can't open data connection.\r\n221 bye\r\n"));
}

/// A cache hit's `150` and `226` in one segment (a server that answers the empty transfer at
/// once, with Nagle): a client reads the data only after the `150`, so it may not wait with the
/// `226` for the data connection. After [`reply_hold::LEAD_WAIT`] it goes on alone; the `226`,
/// never acknowledged, comes again from the server's TCP and is held then, or goes at once if
/// the data connection is done by then.
#[test]
fn a_reply_ahead_of_a_held_final_reply_in_its_segment_goes_on_alone() {
    for done_first in [false, true] {
        let mut p = cache_session(&[]);
        p.answer.push_back(Decision::Hit);
        p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
        p.dp.state = Some(DataState::Busy { moved: 0 });
        let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
        let lead = b"350 Restarting at 1000.\r\n150 Opening\r\n";
        let both = [&lead[..], b"226 done\r\n"].concat();
        let now = p.now;
        assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, &both), &mut p.dp, now), Verdict::Hold);
        // a data connection done at once takes the whole segment, as before
        let due = p.s.poll_timeout().expect("a deadline");
        assert!(due <= now + reply_hold::LEAD_WAIT, "{done_first}");
        let r = p.s.handle_timeout(due, &mut p.dp);
        let Some(Verdict::Edit(e)) = r.reply else { panic!("the 150 did not go on: {r:?}") };
        assert_eq!(e.payload.as_deref(), Some(&b"150 Opening\r\n"[..]), "{done_first}");
        let client_next = e.seq.add(b"150 Opening\r\n".len());
        assert_eq!(p.s.awaiting_data(), Some(1));
        // the held reply's deadline passes without it: nothing to release, nothing forgotten
        assert_eq!(p.s.handle_timeout(due + REPLY_HOLD_STEP * 2, &mut p.dp), crate::proto::Released::default());
        assert_eq!(p.s.awaiting_data(), Some(1));
        if done_first {
            p.dp.state = Some(DataState::Done(DataOutcome::Ok));
            assert_eq!(p.s.data_done(&mut p.dp), None, "nothing held to release");
        }
        // the server's TCP sends the unacknowledged 226 again
        let again = p.s.handle_segment(Dir::ToClient, &seg(seq.add(lead.len()), ack, b"226 done\r\n"), &mut p.dp, now);
        let e = if done_first {
            let Verdict::Edit(e) = again else { panic!("not released at once: {again:?}") };
            e
        } else {
            assert_eq!(again, Verdict::Hold);
            p.dp.state = Some(DataState::Done(DataOutcome::Ok));
            let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
            e
        };
        assert_eq!((e.seq, e.payload.as_deref()), (client_next, Some(&b"226 done\r\n"[..])), "{done_first}");
        assert_eq!(p.s.awaiting_data(), None);
    }
}

/// The `150` that went on alone was lost after ftpgate: the server sends both again, and the
/// `150` goes on alone once more.
#[test]
fn a_lead_lost_on_the_way_goes_on_alone_again() {
    let mut p = cache_session(&[]);
    p.answer.push_back(Decision::Hit);
    p.send(Dir::ToServer, b"RETR f.bin\r\n", &[]);
    p.dp.state = Some(DataState::Busy { moved: 0 });
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let rest = b"150 Opening\r\n226 done\r\n";
    let both = [&b"350 Restarting at 1000.\r\n"[..], rest].concat();
    let now = p.now;
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, &both), &mut p.dp, now), Verdict::Hold);
    let Some(Verdict::Edit(first)) = p.s.handle_timeout(now + reply_hold::LEAD_WAIT, &mut p.dp).reply else { panic!("no lead") };
    // the client never got it; the server resends from the 350 (all of it unacknowledged)
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, &both), &mut p.dp, now), Verdict::Hold);
    let later = now + reply_hold::LEAD_WAIT * 3;
    let Some(Verdict::Edit(again)) = p.s.handle_timeout(later, &mut p.dp).reply else { panic!("no lead again") };
    assert_eq!((again.seq, again.payload), (first.seq, first.payload));
    // then the 226 alone, released when the data connection is done
    let at = seq.add(both.len() - b"226 done\r\n".len());
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(at, ack, b"226 done\r\n"), &mut p.dp, later), Verdict::Hold);
    p.dp.state = Some(DataState::Done(DataOutcome::Ok));
    let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
    assert_eq!(e.payload.as_deref(), Some(&b"226 done\r\n"[..]));
}

/// A server that answers commands during a transfer (pyftpdlib): the `200` to a `NOOP` sent
/// meanwhile passes at once, not held as the transfer's final reply; the `226` after it is.
#[test]
fn a_noop_answered_during_a_transfer_is_not_its_final_reply() {
    let mut p = transfer_in_progress();
    p.send(Dir::ToServer, b"NOOP\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok\r\n", &[3]);
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n200 NOOP ok\r\n"), "{}", p.received(Dir::ToClient));
    assert_eq!(p.s.awaiting_data(), None);
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let now = p.now;
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Hold);
    assert_eq!(p.s.awaiting_data(), Some(1));
    // a command sent after the server's 226 is answered behind it with a reply that keeps its
    // place (an error): that segment goes on (the client's TCP keeps it until the 226 is
    // released); the 226's retransmission does not
    let noop = p.c.snd_nxt;
    assert_eq!(p.s.handle_segment(Dir::ToServer, &seg(noop, seq.add(10), b"XYZ\r\n"), &mut p.dp, now), Verdict::Pass);
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq.add(10), noop.add(5), b"500 what?\r\n"), &mut p.dp, now), Verdict::Pass);
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Drop);
    // the transfer broke: its 426 takes the 226's place at the 226's length
    p.dp.state = Some(DataState::Done(DataOutcome::Failed("reset".into())));
    let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
    assert_eq!(e.payload.as_deref(), Some(&b"426 Conn\r\n"[..]));
}

/// A paced cache hit takes seconds after the server's `226`: the replies to `NOOP`s the client
/// sends meanwhile go ahead of the held `226` (each takes its place in turn, the segment that
/// brought it then carries the `226`), so the client reads them at once; retransmissions are
/// rendered the same way, and the stream is whole again afterwards.
#[test]
fn replies_behind_a_held_final_reply_go_ahead_of_it() {
    let mut p = transfer_in_progress();
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let now = p.now;
    let at = p.s.s2c.map.map(seq); // where the client expects the next server byte
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Hold);
    assert_eq!(p.s.take_moved_carrier(), None);
    let noop = p.c.snd_nxt;
    assert_eq!(p.s.handle_segment(Dir::ToServer, &seg(noop, at, b"NOOP\r\n"), &mut p.dp, now), Verdict::Pass);
    // the 200 arrives behind the held 226: its segment is held, the 226's goes on carrying it
    let first = seq.add(10);
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(first, noop.add(6), b"200 NOOP ok\r\n"), &mut p.dp, now), Verdict::Hold);
    let Some(Verdict::Edit(e)) = p.s.take_moved_carrier() else { panic!("the 226's segment not released") };
    assert_eq!((e.seq, e.payload.as_deref()), (at, Some(&b"200 NOOP ok\r\n"[..])));
    assert_eq!(p.s.awaiting_data(), Some(1), "the 226 is still held");
    // the client acknowledges the 200: the server learns of its 226 only
    let ackd = seg(noop.add(6), at.add(13), b"");
    let Verdict::Edit(a) = p.s.handle_segment(Dir::ToServer, &ackd, &mut p.dp, now) else { panic!("ACK not mapped") };
    assert_eq!(a.ack, first);
    // the server retransmits its 226: it becomes the 200 again; the 200's segment is held
    let Verdict::Edit(r) = p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now) else { panic!("not rendered") };
    assert_eq!((r.seq, r.payload.as_deref()), (at, Some(&b"200 NOOP ok\r\n"[..])));
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(first, noop.add(6), b"200 NOOP ok\r\n"), &mut p.dp, now), Verdict::Drop);
    // a second NOOP, and a STAT's multi-line reply in one segment, go ahead the same way
    let second = first.add(13);
    let text = b"200 ok\r\n211-status\r\n idle\r\n211 end\r\n";
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(second, noop.add(6), text), &mut p.dp, now), Verdict::Hold);
    let Some(Verdict::Edit(e)) = p.s.take_moved_carrier() else { panic!("not released") };
    assert_eq!((e.seq, e.payload.as_deref()), (at.add(13), Some(&text[..])));
    // a reply that may end a transfer keeps its place behind the 226
    let third = second.add(text.len());
    assert!(matches!(p.s.handle_segment(Dir::ToClient, &seg(third, noop.add(6), b"226 x\r\n"), &mut p.dp, now), Verdict::Pass | Verdict::Edit(_)));
    assert_eq!(p.s.take_moved_carrier(), None);
    // the data connection is done: the 226 goes out in the last carrier's place, at its length
    // (the segment after it went on where that length put it)
    p.dp.state = Some(DataState::Done(DataOutcome::Ok));
    let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
    assert_eq!(e.seq, at.add(13 + text.len()));
    assert_eq!(e.payload, Some(super::reply_hold::fit_reply(b"226 done\r\n", text.len())));
    assert!(e.payload.unwrap().starts_with(b"226 done   "));
    // the stream goes on after what the client got: 200, status, the 226 at the status's
    // length, the reply that went behind
    assert_eq!(p.s.s2c.map.map(third.add(7)), at.add(13 + 2 * text.len() + 7));
}

/// Replies that went ahead of a held final reply exchange places with it: once it is released,
/// the server's stream maps onto the client's as before, byte for byte.
#[test]
fn a_final_reply_that_replies_went_ahead_of_keeps_the_stream_length() {
    let mut p = transfer_in_progress();
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let now = p.now;
    let at = p.s.s2c.map.map(seq);
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Hold);
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq.add(10), ack, b"200 NOOP ok\r\n"), &mut p.dp, now), Verdict::Hold);
    assert!(p.s.take_moved_carrier().is_some());
    p.dp.state = Some(DataState::Done(DataOutcome::Ok));
    let Some(Verdict::Edit(e)) = p.s.data_done(&mut p.dp) else { panic!("not released") };
    assert_eq!((e.seq, e.payload.as_deref()), (at.add(13), Some(&b"226 done\r\n"[..])));
    assert_eq!(p.s.s2c.map.map(seq.add(23)), at.add(23));
    assert_eq!(p.s.s2c.map.total_delta(), 0);
}

#[test]
fn only_whole_replies_that_cannot_end_a_transfer_go_ahead() {
    use super::reply_hold::may_go_ahead;
    assert!(may_go_ahead(b"200 NOOP ok.\r\n"));
    assert!(may_go_ahead(b"213 12345\r\n257 \"/\"\r\n"));
    assert!(may_go_ahead(b"211-status\r\n 211 in the text\r\n211 end\r\n"));
    assert!(!may_go_ahead(b"211-status\r\n"), "a multi-line reply not ended");
    assert!(!may_go_ahead(b"200 NOOP"), "an incomplete line");
    assert!(!may_go_ahead(b""));
    for ends in [&b"226 done\r\n"[..], b"225 ABOR ok\r\n", b"250 ok\r\n", b"426 aborted\r\n", b"500 what\r\n", b"150 go\r\n", b"421 bye\r\n"] {
        assert!(!may_go_ahead(ends), "{}", String::from_utf8_lossy(ends));
    }
    assert!(!may_go_ahead(b"200 ok\r\n226 done\r\n"), "one reply that may end a transfer among them");
}

#[test]
fn a_replacement_reply_fitted_to_a_length() {
    use super::reply_hold::fit_reply;
    assert_eq!(fit_reply(b"426 Connection closed.\r\n", 10), b"426 Conn\r\n");
    assert_eq!(fit_reply(b"425 No.\r\n", 14), b"425 No.     \r\n");
    assert_eq!(fit_reply(b"425 Can't open\r\n", 5), b"425\r\n");
    assert_eq!(fit_reply(b"425 Can't open\r\n", 4), b"425\n");
}

#[test]
fn broken_transfer_turns_226_into_426() {
    let mut p = transfer_in_progress();
    p.dp.ends_as = Some(DataOutcome::Failed("Connection reset by peer".into()));
    p.send(Dir::ToClient, b"226 done\r\n", &[4]);
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n426 Connection closed; transfer aborted (Connection reset by peer).\r\n"));
}

#[test]
fn reply_split_over_segments_is_held_whole() {
    let mut p = transfer_in_progress();
    p.dp.ends_as = Some(DataOutcome::Ok);
    p.send(Dir::ToClient, b"226 Transfer complete.\r\n", &[1, 2, 3, 5]);
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n226 Transfer complete.\r\n"));
    p.dp.state = None;
    p.send(Dir::ToClient, b"200 more\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("226 Transfer complete.\r\n200 more\r\n"));
}

#[test]
fn stalled_data_connection_releases_the_reply_at_its_deadline() {
    let mut p = transfer_in_progress();
    let (seq, ack) = (p.v.snd_nxt, p.v.rcv_nxt);
    let now = p.now;
    assert_eq!(p.s.handle_segment(Dir::ToClient, &seg(seq, ack, b"226 done\r\n"), &mut p.dp, now), Verdict::Hold);
    let d = p.s.poll_timeout().unwrap();
    assert_eq!(p.s.handle_timeout(d - Duration::from_millis(1), &mut p.dp), Released::default());
    // progress extends the hold
    p.dp.state = Some(DataState::Busy { moved: 1000 });
    assert_eq!(p.s.handle_timeout(d, &mut p.dp), Released::default());
    let d2 = p.s.poll_timeout().unwrap();
    assert!(d2 > d);
    // none since: the server's reply goes on unchanged
    let Released { retr: None, reply: Some(Verdict::Edit(e)) } = p.s.handle_timeout(d2, &mut p.dp) else { panic!("not released") };
    assert_eq!(e.payload.as_deref(), Some(&b"226 done\r\n"[..]));
}

#[test]
fn reply_after_the_data_connection_ended_passes_and_errors_without_one_pass() {
    let mut p = transfer_in_progress();
    p.dp.state = Some(DataState::Done(DataOutcome::Ok));
    p.send(Dir::ToClient, b"226 done\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n226 done\r\n"));
    // a 550 on a data connection nobody connected to is not held
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,48)\r\n", &[]);
    p.send(Dir::ToServer, b"LIST nothere\r\n", &[]);
    p.dp.state = Some(DataState::Waiting);
    p.send(Dir::ToClient, b"550 No such file\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("550 No such file\r\n"));
    // an upload's 226 on a waiting connection is held (its connection waits to be accepted)
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,50)\r\n", &[]);
    p.send(Dir::ToServer, b"STOR up\r\n", &[]);
    p.send(Dir::ToClient, b"150 ok\r\n", &[]);
    p.dp.ends_as = Some(DataOutcome::Ok);
    p.send(Dir::ToClient, b"226 stored\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("150 ok\r\n226 stored\r\n"));
}

/// A later connection on the same addresses whose client SYN the helper never saw (a full
/// queue failing open lets packets pass unseen): the old session would measure its greeting
/// against the old stream and drop it as a gap, forever. The shell starts over when
/// `is_later_connection` says so.
#[test]
fn a_later_connection_whose_syn_passed_unseen_is_recognised() {
    let mut p = active_session(&[]);
    let ack = Flags { ack: true, ..Default::default() };
    let synack = Flags { syn: true, ack: true, ..Default::default() };
    // the client's SYN retransmitted: the same connection; another ISN: a new one
    let syn = Flags { syn: true, ..Default::default() };
    let resyn = Segment { seq: Seq::new(1000), ack: Seq::new(0), flags: syn, sack: &[], payload: &[] };
    assert!(!p.s.is_later_connection(Dir::ToServer, &resyn));
    let newsyn = Segment { seq: Seq::new(77_000), ack: Seq::new(0), flags: syn, sack: &[], payload: &[] };
    assert!(p.s.is_later_connection(Dir::ToServer, &newsyn));
    // the same connection's SYN-ACK, retransmitted: not a new one
    let again = Segment { seq: Seq::new(5000), ack: Seq::new(1001), flags: synack, sack: &[], payload: &[] };
    assert!(!p.s.is_later_connection(Dir::ToClient, &again));
    // a SYN-ACK answering another SYN (other ISN): a later connection, even while this is open
    let other = Segment { seq: Seq::new(9_000_000), ack: Seq::new(77_001), flags: synack, sack: &[], payload: &[] };
    assert!(p.s.is_later_connection(Dir::ToClient, &other));
    // both sides close
    let fin = Flags { fin: true, ack: true, ..Default::default() };
    let (c, v) = (p.c.snd_nxt, p.v.snd_nxt);
    let f = Segment { seq: c, ack: p.c.rcv_nxt, flags: fin, sack: &[], payload: &[] };
    p.s.handle_segment(Dir::ToServer, &f, &mut p.dp, p.now);
    let f = Segment { seq: v, ack: c.add(1), flags: fin, sack: &[], payload: &[] };
    p.s.handle_segment(Dir::ToClient, &f, &mut p.dp, p.now);
    assert!(p.s.is_closed());
    // retransmitted FINs and the final ACK are the old connection's
    let last = Segment { seq: c.add(1), ack: v.add(1), flags: ack, sack: &[], payload: &[] };
    assert!(!p.s.is_later_connection(Dir::ToServer, &last));
    let refin = Segment { seq: v, ack: c.add(1), flags: fin, sack: &[], payload: &[] };
    assert!(!p.s.is_later_connection(Dir::ToClient, &refin));
    // a greeting far from the old stream: a later connection (neither its SYN nor SYN-ACK seen)
    let greeting = Segment { seq: v.add(3_000_000), ack: Seq::new(77_001), flags: ack, sack: &[], payload: b"220 hi\r\n" };
    assert!(p.s.is_later_connection(Dir::ToClient, &greeting));
    // what the old session would have done with it: dropped it as a gap, and every retransmission
    assert_eq!(p.s.handle_segment(Dir::ToClient, &greeting, &mut p.dp, p.now), Verdict::Drop);
    // started over (as the shell does), the greeting passes
    let mut fresh = Session::new(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), p.now);
    assert_eq!(fresh.handle_segment(Dir::ToClient, &greeting, &mut p.dp, p.now), Verdict::Pass);
}

fn converting(mode: ServerMode) -> Pair {
    let mut p = Pair::new();
    let policy = SessionPolicy { server_mode: mode, ..SessionPolicy::default() };
    p.s = std::mem::replace(&mut p.s, Session::new(CLIENT.parse().unwrap(), SERVER.parse().unwrap(), p.now)).with_policy(policy);
    p.send(Dir::ToClient, b"220 hello\r\n", &[]);
    p.send(Dir::ToServer, b"USER anonymous\r\nPASS x\r\nTYPE I\r\n", &[]);
    p.send(Dir::ToClient, b"331 pw\r\n230 in\r\n200 binary\r\n", &[]);
    p
}

/// `--server-mode passive`: the client's PORT/EPRT reaches the server as PASV, the server's
/// 227/229 reaches the client as the 200 its command expects, the relay connects to both; one
/// byte a segment too; a bounce is still refused; the server's refusal reaches the client.
#[test]
fn server_mode_passive_converts_port_to_pasv() {
    let mut p = converting(ServerMode::Passive);
    p.send(Dir::ToServer, b"PORT 10,0,1,2,156,64\r\n", &[1; 22]);
    assert!(p.received(Dir::ToServer).ends_with("TYPE I\r\nPASV\r\n"), "{}", p.received(Dir::ToServer));
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,48).\r\n", &[1; 47]);
    assert!(p.received(Dir::ToClient).ends_with("200 binary\r\n200 PORT command successful (ftpgate: passive towards the server).\r\n"));
    let req = p.dp.opened.last().unwrap();
    assert_eq!(req.mode, Mode::ToBoth { client: "10.0.1.2:40000".parse().unwrap() });
    assert_eq!(req.target, "10.0.2.2:30000".parse().unwrap());
    // the download goes on as any, its 226 held until the data connection is done
    p.send(Dir::ToServer, b"RETR f\r\n", &[]);
    p.send(Dir::ToClient, b"150 go\r\n226 done\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("150 go\r\n226 done\r\n"));
    // EPRT, and a 229 naming only a port
    p.send(Dir::ToServer, b"EPRT |1|10.0.1.2|40001|\r\n", &[]);
    p.send(Dir::ToClient, b"227 Entering Passive Mode (10,0,2,2,117,49).\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("200 EPRT command successful (ftpgate: passive towards the server).\r\n"));
    assert_eq!(p.dp.opened.last().unwrap().mode, Mode::ToBoth { client: "10.0.1.2:40001".parse().unwrap() });
    // a PORT at a third party: refused as ever, nothing opened, the server gets a NOOP
    let n = p.dp.opened.len();
    p.send(Dir::ToServer, b"PORT 10,0,1,9,156,64\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToClient).contains("500 ftpgate: data address 10.0.1.9"));
    assert_eq!(p.dp.opened.len(), n);
    // a server that refuses PASV: the client gets its error
    p.send(Dir::ToServer, b"PORT 10,0,1,2,156,65\r\n", &[]);
    p.send(Dir::ToClient, b"500 PASV not allowed.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("500 PASV not allowed.\r\n"));
    assert_eq!(p.dp.opened.len(), n);
}

/// `--server-mode active`: the client's PASV/EPSV reaches the server as PORT naming the relay,
/// the server's 200 reaches the client as the 227/229 naming the relay's other endpoint.
#[test]
fn server_mode_active_converts_pasv_to_port() {
    let mut p = converting(ServerMode::Active);
    p.send(Dir::ToServer, b"PASV\r\n", &[1; 6]);
    assert!(p.received(Dir::ToServer).ends_with("TYPE I\r\nPORT 10,0,2,1,19,236\r\n"), "{}", p.received(Dir::ToServer));
    assert_eq!(p.dp.opened.last().unwrap().mode, Mode::FromBoth);
    p.send(Dir::ToClient, b"200 PORT command successful.\r\n", &[1; 30]);
    assert!(p.received(Dir::ToClient).ends_with("200 binary\r\n227 Entering Passive Mode (10,0,2,2,23,212).\r\n"), "{}", p.received(Dir::ToClient));
    p.send(Dir::ToServer, b"EPSV\r\n", &[]);
    p.send(Dir::ToClient, b"200 PORT command successful.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("229 Entering Extended Passive Mode (|||6100|)\r\n"));
    // EPSV ALL is answered here (the server will hear EPRT/PORT), a refused PORT reaches the client
    p.send(Dir::ToServer, b"EPSV ALL\r\n", &[]);
    p.send(Dir::ToClient, b"200 NOOP ok.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("200 EPSV ALL ok.\r\n"));
    p.send(Dir::ToServer, b"PASV\r\n", &[]);
    p.send(Dir::ToClient, b"500 Illegal PORT command.\r\n", &[]);
    assert!(p.received(Dir::ToClient).ends_with("500 Illegal PORT command.\r\n"));
}
