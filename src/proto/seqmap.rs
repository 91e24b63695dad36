//! TCP sequence-number mapping for one direction of a connection whose byte stream was edited.
//!
//! The model is `nf_conntrack_seqadj` generalised to a history: every region of the sender's
//! original stream that ftpgate replaced is kept as an [`Edit`] (original start, original length,
//! the bytes sent instead). From that history:
//! - [`SeqMap::map`] turns an original sequence number into the one the receiver sees;
//! - [`SeqMap::unmap`] turns an acknowledgement (or SACK edge) from the receiver back into the
//!   sender's space; an ACK that lands inside a replaced region maps to the region's start, since
//!   the receiver has not got the whole replacement yet;
//! - [`SeqMap::render`] rebuilds the bytes for any original range, so a retransmission that touches
//!   an edited region is sent as the whole replacement, identical to the first transmission.
//!
//! Old edits are folded into a base offset once more than [`MAX_EDITS`] are kept.

use core::cmp::Ordering;

/// A TCP sequence number; compares by wrapping distance (RFC 1982), never by raw `u32`. That is
/// not a total order (`a < b < c < a` is possible, and numbers half the space apart are
/// unordered), so `Seq` is `PartialOrd` only, as smoltcp's `SeqNumber`: no `max`, no sorting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Seq(u32);

#[allow(clippy::should_implement_trait)]
impl Seq {
    pub const fn new(n: u32) -> Seq {
        Seq(n)
    }
    /// The number as it goes on the wire.
    pub const fn raw(self) -> u32 {
        self.0
    }
    /// The later of two numbers within half the space of each other (`self` when unordered).
    pub fn later(self, other: Seq) -> Seq {
        if other > self {
            other
        } else {
            self
        }
    }
    pub fn add(self, n: usize) -> Seq {
        Seq(self.0.wrapping_add(n as u32))
    }
    pub fn sub(self, n: usize) -> Seq {
        Seq(self.0.wrapping_sub(n as u32))
    }
    /// Signed distance `self - other`.
    pub fn diff(self, other: Seq) -> i64 {
        self.0.wrapping_sub(other.0) as i32 as i64
    }
    pub fn offset(self, delta: i64) -> Seq {
        Seq(self.0.wrapping_add(delta as i32 as u32))
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.0.wrapping_sub(other.0) {
            0x8000_0000 => None,
            d => Some((d as i32).cmp(&0)),
        }
    }
}

/// One replaced region of the sender's original stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub start: Seq,
    pub old_len: usize,
    pub new: Vec<u8>,
}

impl Edit {
    fn end(&self) -> Seq {
        self.start.add(self.old_len)
    }
    fn delta(&self) -> i64 {
        self.new.len() as i64 - self.old_len as i64
    }
}

/// Edits kept in full for retransmissions; older ones that the receiver has acknowledged
/// are folded into one offset.
pub const MAX_EDITS: usize = 64;
/// Past this many, edits are folded even if unacknowledged (memory bound).
pub const HARD_MAX_EDITS: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct SeqMap {
    /// Offset of all folded edits; applies to sequence numbers at or after `base_end`.
    base_delta: i64,
    base_end: Option<Seq>,
    edits: Vec<Edit>,
    /// Everything before this (original numbering) is acknowledged by the receiver.
    acked: Option<Seq>,
    /// End of the last edit folded away (not set by [`SeqMap::from_offset`]).
    folded_end: Option<Seq>,
}

impl SeqMap {
    pub fn is_identity(&self) -> bool {
        self.base_delta == 0 && self.edits.iter().all(|e| e.delta() == 0)
    }

    /// A map that shifts every number from `since` on by `delta`: what is left of a history
    /// after a restart (see [`SeqMap::offset_state`]).
    pub fn from_offset(delta: i64, since: Seq) -> SeqMap {
        SeqMap { base_delta: delta, base_end: Some(since), ..SeqMap::default() }
    }

    /// The history folded to one offset: the total length change, and the original sequence
    /// number from which it applies (the end of the last edit). Enough to keep mapping new
    /// segments; not enough to re-render retransmissions of the edited regions themselves.
    pub fn offset_state(&self) -> (i64, Option<Seq>) {
        let end = self.edits.last().map(Edit::end).or(self.base_end);
        (self.total_delta(), end)
    }

    /// Total length change so far (bytes added minus bytes removed).
    pub fn total_delta(&self) -> i64 {
        self.base_delta + self.edits.iter().map(Edit::delta).sum::<i64>()
    }

    /// Records that original bytes `[start, start + old_len)` are sent as `new`. Edits must come
    /// in stream order and must not overlap.
    pub fn push(&mut self, start: Seq, old_len: usize, new: Vec<u8>) {
        debug_assert!(self.edits.last().is_none_or(|e| e.end() <= start));
        self.edits.push(Edit { start, old_len, new });
        self.fold();
    }

    /// The receiver acknowledged everything before `upto` (original numbering).
    pub fn acked(&mut self, upto: Seq) {
        if self.acked.is_none_or(|a| upto > a) {
            self.acked = Some(upto);
            self.fold();
        }
    }

    fn fold(&mut self) {
        while self.edits.len() > MAX_EDITS {
            let acked = self.acked.is_some_and(|a| self.edits[0].end() <= a);
            if !acked && self.edits.len() <= HARD_MAX_EDITS {
                break;
            }
            let old = self.edits.remove(0);
            self.base_delta += old.delta();
            self.base_end = Some(old.end());
            self.folded_end = Some(old.end());
        }
    }

    /// Whether original number `s` lies in folded history: bytes there were acknowledged long
    /// ago, and their edits can no longer be re-rendered, so a retransmission of them is dropped.
    pub fn is_folded(&self, s: Seq) -> bool {
        self.folded_end.is_some_and(|e| s < e)
    }

    fn base_for(&self, s: Seq) -> i64 {
        match self.base_end {
            Some(end) if s >= end => self.base_delta,
            _ => 0,
        }
    }

    /// Original → receiver's sequence number. A number inside an edited region maps into the
    /// replacement, clamped to its length.
    pub fn map(&self, s: Seq) -> Seq {
        let mut delta = self.base_for(s);
        for e in &self.edits {
            if s >= e.end() {
                delta += e.delta();
            } else if s > e.start {
                let into = (s.diff(e.start) as usize).min(e.new.len());
                return e.start.offset(delta).add(into);
            } else {
                break;
            }
        }
        s.offset(delta)
    }

    /// Receiver's acknowledgement → original sequence number.
    pub fn unmap(&self, a: Seq) -> Seq {
        let mut delta = 0i64;
        if let Some(end) = self.base_end {
            if a >= end.offset(self.base_delta) {
                delta = self.base_delta;
            }
        }
        for e in &self.edits {
            let out_start = e.start.offset(delta);
            let out_end = out_start.add(e.new.len());
            // an ACK at a removed region's start covers the region: nothing of it is to come
            if a < out_start || (a == out_start && !e.new.is_empty()) {
                break;
            }
            if a < out_end {
                return e.start;
            }
            delta += e.delta();
        }
        a.offset(-delta)
    }

    /// The bytes to send for original range `[seq, seq + data.len())`, where `data` are the
    /// sender's original bytes. Any edit the range touches is sent whole, so the range may grow
    /// at either end. Returns the receiver-space start and the bytes.
    pub fn render(&self, seq: Seq, data: &[u8]) -> (Seq, Vec<u8>) {
        let end = seq.add(data.len());
        let mut out = Vec::with_capacity(data.len());
        let mut pos = seq; // next original byte to account for
        let mut out_start = None;
        for e in &self.edits {
            if e.end() <= seq || e.start >= end {
                continue;
            }
            if e.start > pos {
                out_start.get_or_insert(self.map(pos));
                let a = pos.diff(seq) as usize;
                let b = e.start.diff(seq) as usize;
                out.extend_from_slice(&data[a..b]);
            } else {
                out_start.get_or_insert(self.map(e.start));
            }
            out.extend_from_slice(&e.new);
            pos = pos.later(e.end());
        }
        if pos < end {
            out_start.get_or_insert(self.map(pos));
            out.extend_from_slice(&data[pos.diff(seq) as usize..]);
        }
        (out_start.unwrap_or_else(|| self.map(seq)), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grown() -> SeqMap {
        // original "AAAA" at 100..104 becomes "BBBBBB"; original "CC" at 110..112 becomes "D"
        let mut m = SeqMap::default();
        m.push(Seq(100), 4, b"BBBBBB".to_vec());
        m.push(Seq(110), 2, b"D".to_vec());
        m
    }

    #[test]
    fn seq_compares_across_wrap() {
        assert!(Seq(5) > Seq(u32::MAX - 5));
        assert_eq!(Seq(u32::MAX).add(2), Seq(1));
        assert_eq!(Seq(1).diff(Seq(u32::MAX)), 2);
        // half the space apart: neither is later
        assert_eq!(Seq(0).partial_cmp(&Seq(0x8000_0000)), None);
        assert_eq!(Seq(7).later(Seq(u32::MAX)), Seq(7));
        // not transitive around the circle: a < b < c < a
        let (a, b, c) = (Seq(0), Seq(0x6000_0000), Seq(0xC000_0000));
        assert!(a < b && b < c && c < a);
    }

    #[test]
    fn map_before_inside_after() {
        let m = grown();
        assert_eq!(m.map(Seq(50)), Seq(50));
        assert_eq!(m.map(Seq(100)), Seq(100));
        assert_eq!(m.map(Seq(102)), Seq(102));
        assert_eq!(m.map(Seq(104)), Seq(106));
        assert_eq!(m.map(Seq(110)), Seq(112));
        assert_eq!(m.map(Seq(112)), Seq(113));
        assert_eq!(m.total_delta(), 1);
    }

    #[test]
    fn unmap_inverts_and_clamps_inside_edits() {
        let m = grown();
        for s in [50u32, 100, 104, 105, 110, 112, 200] {
            assert_eq!(m.unmap(m.map(Seq(s))), Seq(s), "seq {s}");
        }
        // an ACK inside the replacement maps to its start
        assert_eq!(m.unmap(Seq(103)), Seq(100));
        assert_eq!(m.unmap(Seq(106)), Seq(104));
    }

    #[test]
    fn render_resends_whole_edit() {
        let m = grown();
        let orig = b"xxxxAAAAyyyyyyCCzz"; // starts at 96
        let (s, out) = m.render(Seq(96), orig);
        assert_eq!((s, out.as_slice()), (Seq(96), &b"xxxxBBBBBByyyyyyDzz"[..]));
        // a retransmission of the tail of the first edit only
        let (s, out) = m.render(Seq(102), b"AAyy");
        assert_eq!((s, out.as_slice()), (Seq(100), &b"BBBBBByy"[..]));
        // untouched region
        let (s, out) = m.render(Seq(105), b"yyy");
        assert_eq!((s, out.as_slice()), (Seq(107), &b"yyy"[..]));
    }

    #[test]
    fn removed_region_is_acknowledged_by_an_ack_at_its_start() {
        // "350 ...\r\n" at 200..210 removed from the receiver's view
        let mut m = SeqMap::default();
        m.push(Seq(200), 10, Vec::new());
        assert_eq!(m.map(Seq(200)), Seq(200));
        assert_eq!(m.map(Seq(210)), Seq(200));
        assert_eq!(m.unmap(Seq(199)), Seq(199));
        assert_eq!(m.unmap(Seq(200)), Seq(210));
        assert_eq!(m.unmap(Seq(205)), Seq(215));
        let (s, out) = m.render(Seq(200), b"350 rest\r\n");
        assert_eq!((s, out.len()), (Seq(200), 0));
    }

    #[test]
    fn offset_state_round_trip() {
        let m = grown();
        let (d, since) = m.offset_state();
        assert_eq!((d, since), (1, Some(Seq(112))));
        let r = SeqMap::from_offset(d, since.unwrap());
        for s in [112u32, 150, 4000] {
            assert_eq!(r.map(Seq(s)), m.map(Seq(s)));
            assert_eq!(r.unmap(m.map(Seq(s))), Seq(s));
        }
    }

    #[test]
    fn only_acknowledged_edits_are_folded() {
        let mut m = SeqMap::default();
        for i in 0..(MAX_EDITS as u32 + 10) {
            m.push(Seq(1000 + i * 10), 2, b"abc".to_vec());
        }
        assert!(!m.is_folded(Seq(1000)), "nothing acknowledged yet: all kept");
        m.acked(Seq(1000 + 5 * 10 + 2));
        assert!(m.is_folded(Seq(1000)) && !m.is_folded(Seq(1000 + 6 * 10)));
        let (_, out) = m.render(Seq(1000 + 6 * 10), b"xy");
        assert_eq!(out, b"abc");
    }

    #[test]
    fn folding_keeps_offsets() {
        let mut m = SeqMap::default();
        m.acked(Seq(u32::MAX / 2));
        for i in 0..(MAX_EDITS as u32 + 10) {
            m.push(Seq(1000 + i * 10), 2, b"abc".to_vec());
        }
        let last = Seq(1000 + (MAX_EDITS as u32 + 10) * 10);
        assert_eq!(m.map(last), last.add(MAX_EDITS + 10));
        assert_eq!(m.unmap(m.map(last)), last);
    }
}
