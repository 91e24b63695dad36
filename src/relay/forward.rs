//! Data connections the kernel forwards ([`crate::nft`]): what ftpgate makes of the few segments
//! it still sees of them — their SYN, FIN and RST segments, and a thief's SYN — without I/O.
//!
//! A forwarded connection's bytes are counted from sequence numbers: a direction carried
//! `FIN seq + payload − (ISN + 1)` bytes (exact below 4 GiB a direction; [`Tracker`] callers
//! may resolve wraps from conntrack's byte counters).

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;

use crate::proto::DataId;

/// A forwarded transfer as announced: `peer` connects to `announce`; after the kernel's
/// translation (active mode behind NAT) the connection runs between `peer` and `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub id: DataId,
    pub peer: Ipv4Addr,
    pub announce: SocketAddrV4,
    pub target: SocketAddrV4,
}

/// The header fields of one queued segment that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flagged {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub len: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No forwarded connection ftpgate knows: passed.
    Unknown,
    /// Part of a known connection, nothing new.
    Progress(DataId),
    /// The expected peer's connection opened (its SYN, seen once).
    Opened(DataId),
    /// Someone else's connection attempt at a waiting endpoint: dropped. `again`: a
    /// retransmission of an attempt already seen.
    Theft { id: DataId, from: SocketAddrV4, expected: Ipv4Addr, again: bool },
    /// Both directions finished, or the connection was reset. `from_peer` / `to_peer`: bytes.
    /// `peer_port`: the peer's source port (with the announced endpoint, the connection's
    /// original tuple in conntrack).
    Closed { id: DataId, peer_port: u16, from_peer: u64, to_peer: u64, reset: bool },
}

impl Seen {
    /// Whether the segment goes on.
    pub fn accept(&self) -> bool {
        !matches!(self, Seen::Theft { .. })
    }
}

#[derive(Debug)]
struct Conn {
    exp: Expected,
    peer_port: Option<u16>,
    /// Initial sequence numbers: the peer's, the other side's.
    isn: [Option<u32>; 2],
    /// Where each direction's FIN (or RST) put its end.
    end: [Option<u32>; 2],
    reset: bool,
    closed: bool,
    /// Thieves' source endpoints seen (their retransmissions are not news).
    thieves: Vec<SocketAddrV4>,
}

impl Conn {
    fn bytes(&self, dir: usize) -> u64 {
        match (self.isn[dir], self.end[dir]) {
            (Some(i), Some(e)) => u64::from(e.wrapping_sub(i).wrapping_sub(1)),
            _ => 0,
        }
    }
}

/// The forwarded connections being watched.
#[derive(Debug, Default)]
pub struct Tracker {
    conns: HashMap<DataId, Conn>,
    by_target: HashMap<(Ipv4Addr, SocketAddrV4), DataId>,
    by_announce: HashMap<SocketAddrV4, DataId>,
}

impl Tracker {
    pub fn expect(&mut self, exp: Expected) {
        self.by_target.insert((exp.peer, exp.target), exp.id);
        self.by_announce.insert(exp.announce, exp.id);
        self.conns.insert(exp.id, Conn { exp, peer_port: None, isn: [None; 2], end: [None; 2], reset: false, closed: false, thieves: Vec::new() });
    }

    pub fn forget(&mut self, id: DataId) {
        if let Some(c) = self.conns.remove(&id) {
            if self.by_target.get(&(c.exp.peer, c.exp.target)) == Some(&id) {
                self.by_target.remove(&(c.exp.peer, c.exp.target));
            }
            if self.by_announce.get(&c.exp.announce) == Some(&id) {
                self.by_announce.remove(&c.exp.announce);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes one queued segment.
    pub fn observe(&mut self, s: &Flagged) -> Seen {
        let (id, dir) = if let Some(&id) = self.by_target.get(&(*s.src.ip(), s.dst)) {
            (id, 0)
        } else if let Some(&id) = self.by_target.get(&(*s.dst.ip(), s.src)) {
            (id, 1)
        } else if let Some(&id) = self.by_announce.get(&s.dst).filter(|_| s.syn && !s.ack) {
            let c = self.conns.get_mut(&id).expect("indexed connections exist");
            let again = c.thieves.contains(&s.src);
            if !again && c.thieves.len() < 16 {
                c.thieves.push(s.src);
            }
            return Seen::Theft { id, from: s.src, expected: c.exp.peer, again };
        } else {
            return Seen::Unknown;
        };
        let c = self.conns.get_mut(&id).expect("indexed connections exist");
        let peer_port = if dir == 0 { s.src.port() } else { s.dst.port() };
        if s.syn && !s.ack && dir == 0 && c.peer_port.is_none() {
            c.peer_port = Some(peer_port);
            c.isn[0] = Some(s.seq);
            return Seen::Opened(id);
        }
        if c.peer_port != Some(peer_port) || c.closed {
            return Seen::Progress(id);
        }
        if s.syn {
            c.isn[dir] = Some(s.seq);
        }
        if s.fin {
            // a FIN may carry the last bytes, and a SYN|FIN its ISN
            c.end[dir] = Some(s.seq.wrapping_add(s.len).wrapping_add(u32::from(s.syn)));
        }
        if s.rst {
            c.reset = true;
            c.end[dir].get_or_insert(s.seq);
        }
        if c.reset || (c.end[0].is_some() && c.end[1].is_some()) {
            c.closed = true;
            return Seen::Closed { id, peer_port, from_peer: c.bytes(0), to_peer: c.bytes(1), reset: c.reset };
        }
        Seen::Progress(id)
    }
}

/// A direction's payload bytes from its sequence-number difference `seq_bytes` (modulo 2³²)
/// and conntrack's count of the IP bytes it carried (headers included, so never less): the
/// largest `seq_bytes + k·2³²` that fits. Exact while the headers come to less than 4 GiB (a
/// direction of ~100 GiB at the usual MSS).
pub fn unwrap_bytes(seq_bytes: u64, ip_bytes: Option<u64>) -> u64 {
    match ip_bytes {
        Some(b) if b > seq_bytes => seq_bytes + ((b - seq_bytes) >> 32 << 32),
        _ => seq_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(src: &str, dst: &str, seq: u32, len: u32, flags: &str) -> Flagged {
        Flagged {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq,
            len,
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
        }
    }

    #[test]
    fn wrapped_counts_are_resolved_by_conntracks_bytes() {
        let six_gib = 6u64 << 30;
        let seq = six_gib % (1 << 32);
        assert_eq!(unwrap_bytes(seq, Some(six_gib + six_gib / 30)), six_gib);
        assert_eq!(unwrap_bytes(seq, None), seq);
        assert_eq!(unwrap_bytes(35, Some(35 + 60 * 3)), 35);
    }

    fn passive() -> Tracker {
        let mut t = Tracker::default();
        let at = "10.0.2.2:50000".parse().unwrap();
        t.expect(Expected { id: 7, peer: Ipv4Addr::new(10, 0, 1, 2), announce: at, target: at });
        t
    }

    #[test]
    fn a_download_is_counted_from_its_fins() {
        let mut t = passive();
        assert_eq!(t.observe(&seg("10.0.1.2:40000", "10.0.2.2:50000", 1000, 0, "S")), Seen::Opened(7));
        // a retransmitted SYN is nothing new
        assert_eq!(t.observe(&seg("10.0.1.2:40000", "10.0.2.2:50000", 1000, 0, "S")), Seen::Progress(7));
        assert_eq!(t.observe(&seg("10.0.2.2:50000", "10.0.1.2:40000", u32::MAX - 10, 0, "SA")), Seen::Progress(7));
        // the server's FIN rides on its last 100 bytes; the sequence space wrapped
        assert_eq!(t.observe(&seg("10.0.2.2:50000", "10.0.1.2:40000", 5000, 100, "FA")), Seen::Progress(7));
        let closed = t.observe(&seg("10.0.1.2:40000", "10.0.2.2:50000", 1001, 0, "FA"));
        assert_eq!(closed, Seen::Closed { id: 7, peer_port: 40000, from_peer: 0, to_peer: 5100 + 10, reset: false });
        // after the end: nothing counted twice
        assert_eq!(t.observe(&seg("10.0.1.2:40000", "10.0.2.2:50000", 1001, 0, "FA")), Seen::Progress(7));
    }

    #[test]
    fn a_thief_is_named_and_a_stranger_unknown() {
        let mut t = passive();
        let s = t.observe(&seg("10.0.5.2:40000", "10.0.2.2:50000", 1, 0, "S"));
        assert_eq!(s, Seen::Theft { id: 7, from: "10.0.5.2:40000".parse().unwrap(), expected: Ipv4Addr::new(10, 0, 1, 2), again: false });
        assert!(!s.accept());
        let s = t.observe(&seg("10.0.5.2:40000", "10.0.2.2:50000", 1, 0, "S"));
        assert!(matches!(s, Seen::Theft { again: true, .. }) && !s.accept());
        assert_eq!(t.observe(&seg("10.0.5.2:40000", "10.0.9.9:50000", 1, 0, "S")), Seen::Unknown);
        t.forget(7);
        assert!(t.is_empty());
        assert_eq!(t.observe(&seg("10.0.5.2:40000", "10.0.2.2:50000", 1, 0, "S")), Seen::Unknown);
    }

    #[test]
    fn active_behind_nat_matches_after_translation_and_a_reset_ends_it() {
        let mut t = Tracker::default();
        t.expect(Expected {
            id: 3,
            peer: Ipv4Addr::new(10, 0, 2, 2),
            announce: "10.0.2.1:41000".parse().unwrap(),
            target: "10.0.1.2:40001".parse().unwrap(),
        });
        // the thief aims at the announced (router's) endpoint, before translation
        assert!(matches!(t.observe(&seg("10.0.4.2:999", "10.0.2.1:41000", 1, 0, "S")), Seen::Theft { id: 3, .. }));
        assert_eq!(t.observe(&seg("10.0.2.2:20", "10.0.1.2:40001", 100, 0, "S")), Seen::Opened(3));
        assert_eq!(t.observe(&seg("10.0.1.2:40001", "10.0.2.2:20", 500, 0, "SA")), Seen::Progress(3));
        assert_eq!(
            t.observe(&seg("10.0.2.2:20", "10.0.1.2:40001", 100 + 1 + 4096, 0, "RA")),
            Seen::Closed { id: 3, peer_port: 20, from_peer: 4096, to_peer: 0, reset: true }
        );
    }
}
