//! IPv4/TCP and IPv6/TCP packets as NFQUEUE delivers them (starting at the IP header): decode
//! the fields the helper needs, and re-serialise a packet after an [`Edit`] with lengths and
//! checksums fixed.
//!
//! A mangled NFQUEUE payload gets no checksum offload, so the IPv4 header checksum and the TCP
//! checksum are recomputed over the addresses as they are at this hook (NAT fixes them later);
//! over IPv6 the TCP checksum covers the IPv6 pseudo-header. IPv6 extension headers before TCP
//! (hop-by-hop, destination options, authentication) are passed through byte for byte; a
//! fragment is refused, and so is a routing header (the pseudo-header would have to name the
//! final destination): such packets pass unchanged.

use core::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, Ipv4Header, Ipv6Extensions, Ipv6Header, TcpHeader};

use crate::proto::{Edit, Flags, Seq};

/// Why a queued packet cannot be decoded or re-serialised (it is then passed unchanged).
#[derive(Debug)]
pub enum WireError {
    /// Neither IPv4 nor IPv6.
    NotIp,
    NotTcp,
    Fragment,
    /// An IPv6 routing header (segment routing): not rewritten.
    Routing,
    Truncated,
    /// A header that does not parse, or a field that does not fit after an edit.
    Header {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl WireError {
    fn header<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> WireError {
        move |e| WireError::Header { what, source: Box::new(e) }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::NotIp => f.write_str("neither IPv4 nor IPv6"),
            WireError::NotTcp => f.write_str("not TCP"),
            WireError::Fragment => f.write_str("IP fragment"),
            WireError::Routing => f.write_str("IPv6 routing header"),
            WireError::Truncated => f.write_str("truncated IP payload"),
            WireError::Header { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Header { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

const SACK: u8 = 5;
const TIMESTAMP: u8 = 8;
const NOP: u8 = 1;
const EOL: u8 = 0;

/// The network layer of a packet.
#[derive(Debug)]
enum Ip<'a> {
    V4(Ipv4Header),
    /// The fixed header, and the extension headers' bytes between it and TCP.
    V6(Ipv6Header, &'a [u8]),
}

#[derive(Debug)]
pub struct Packet<'a> {
    ip: Ip<'a>,
    tcp: TcpHeader,
    pub payload: &'a [u8],
    pub sack: Vec<(Seq, Seq)>,
    /// The timestamp option (TSval, TSecr), if present.
    pub ts: Option<(u32, u32)>,
}

impl<'a> Packet<'a> {
    /// Parses an IPv4 or IPv6 packet carrying TCP. Fragments and other protocols are refused.
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let (ip, rest) = match buf.first().map(|b| b >> 4) {
            Some(4) => {
                let (ip, rest) = Ipv4Header::from_slice(buf).map_err(WireError::header("IPv4 header"))?;
                if ip.protocol != IpNumber::TCP {
                    return Err(WireError::NotTcp);
                }
                if ip.is_fragmenting_payload() {
                    return Err(WireError::Fragment);
                }
                let len = ip.payload_len().map_err(WireError::header("IPv4 length"))? as usize;
                (Ip::V4(ip), rest.get(..len).ok_or(WireError::Truncated)?)
            }
            Some(6) => {
                let (ip, rest) = Ipv6Header::from_slice(buf).map_err(WireError::header("IPv6 header"))?;
                // payload length 0 is a jumbogram's (hop-by-hop option): never FTP control
                let rest = rest.get(..usize::from(ip.payload_length)).filter(|r| !r.is_empty()).ok_or(WireError::Truncated)?;
                let (exts, next, after) = Ipv6Extensions::from_slice(ip.next_header, rest).map_err(WireError::header("IPv6 extension headers"))?;
                if exts.fragment.is_some() {
                    return Err(WireError::Fragment);
                }
                if exts.routing.is_some() {
                    return Err(WireError::Routing);
                }
                if next != IpNumber::TCP {
                    return Err(WireError::NotTcp);
                }
                let ext = &rest[..rest.len() - after.len()];
                (Ip::V6(ip, ext), after)
            }
            _ => return Err(WireError::NotIp),
        };
        let (tcp, payload) = TcpHeader::from_slice(rest).map_err(WireError::header("TCP header"))?;
        let sack = sack_blocks(tcp.options.as_slice());
        let ts = timestamps(tcp.options.as_slice());
        Ok(Packet { ip, tcp, payload, sack, ts })
    }

    fn addrs(&self) -> (IpAddr, IpAddr) {
        match &self.ip {
            Ip::V4(h) => (IpAddr::from(h.source), IpAddr::from(h.destination)),
            Ip::V6(h, _) => (IpAddr::from(h.source), IpAddr::from(h.destination)),
        }
    }
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.addrs().0, self.tcp.source_port)
    }
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.addrs().1, self.tcp.destination_port)
    }
    pub fn seq(&self) -> Seq {
        Seq::new(self.tcp.sequence_number)
    }
    pub fn ack(&self) -> Seq {
        Seq::new(self.tcp.acknowledgment_number)
    }
    pub fn flags(&self) -> Flags {
        Flags { syn: self.tcp.syn, ack: self.tcp.ack, fin: self.tcp.fin, rst: self.tcp.rst }
    }

    /// The packet with `e` applied, lengths and checksums recomputed. `ts` replaces the
    /// timestamp option's values (a segment held back must not carry a timestamp older than
    /// ones the receiver has seen since, or PAWS drops it).
    pub fn edited(&self, e: &Edit, ts: Option<(u32, u32)>) -> Result<Vec<u8>, WireError> {
        let mut tcp = self.tcp.clone();
        tcp.sequence_number = e.seq.raw();
        tcp.acknowledgment_number = e.ack.raw();
        if e.sack.is_some() || ts.is_some() {
            let mut opts = tcp.options.as_slice().to_vec();
            if let Some(blocks) = &e.sack {
                opts = rewrite_sack(&opts, blocks);
            }
            if let Some(t) = ts {
                rewrite_timestamps(&mut opts, t);
            }
            tcp.set_options_raw(&opts).map_err(WireError::header("TCP options"))?;
        }
        let payload: &[u8] = e.payload.as_deref().unwrap_or(self.payload);
        let mut out = Vec::with_capacity(60 + tcp.header_len() + payload.len());
        match &self.ip {
            Ip::V4(ip) => {
                let mut ip = ip.clone();
                ip.set_payload_len(tcp.header_len() + payload.len()).map_err(WireError::header("IPv4 length"))?;
                ip.header_checksum = ip.calc_header_checksum();
                tcp.checksum = tcp.calc_checksum_ipv4(&ip, payload).map_err(WireError::header("TCP checksum"))?;
                out.extend_from_slice(&ip.to_bytes());
            }
            Ip::V6(ip, ext) => {
                let mut ip = ip.clone();
                ip.set_payload_length(ext.len() + tcp.header_len() + payload.len()).map_err(WireError::header("IPv6 length"))?;
                tcp.checksum = tcp.calc_checksum_ipv6(&ip, payload).map_err(WireError::header("TCP checksum"))?;
                out.extend_from_slice(&ip.to_bytes());
                out.extend_from_slice(ext);
            }
        }
        out.extend_from_slice(&tcp.to_bytes());
        out.extend_from_slice(payload);
        Ok(out)
    }
}

/// Walks TCP options: yields (offset, kind, length) for each; stops at EOL or malformed.
fn options(opts: &[u8]) -> impl Iterator<Item = (usize, u8, usize)> + '_ {
    let mut i = 0;
    core::iter::from_fn(move || {
        let kind = *opts.get(i)?;
        match kind {
            EOL => None,
            NOP => {
                i += 1;
                Some((i - 1, NOP, 1))
            }
            _ => {
                let len = *opts.get(i + 1)? as usize;
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                i += len;
                Some((i - len, kind, len))
            }
        }
    })
}

fn sack_blocks(opts: &[u8]) -> Vec<(Seq, Seq)> {
    let mut v = Vec::new();
    for (off, kind, len) in options(opts) {
        if kind == SACK {
            for b in opts[off + 2..off + len].chunks_exact(8) {
                let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let r = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                v.push((Seq::new(l), Seq::new(r)));
            }
        }
    }
    v
}

fn timestamps(opts: &[u8]) -> Option<(u32, u32)> {
    let (off, _, _) = options(opts).find(|&(_, kind, len)| kind == TIMESTAMP && len == 10)?;
    let v = |i: usize| u32::from_be_bytes([opts[i], opts[i + 1], opts[i + 2], opts[i + 3]]);
    Some((v(off + 2), v(off + 6)))
}

fn rewrite_timestamps(opts: &mut [u8], (val, ecr): (u32, u32)) {
    let at = options(opts).find(|&(_, kind, len)| kind == TIMESTAMP && len == 10).map(|(off, _, _)| off);
    if let Some(off) = at {
        opts[off + 2..off + 6].copy_from_slice(&val.to_be_bytes());
        opts[off + 6..off + 10].copy_from_slice(&ecr.to_be_bytes());
    }
}

/// Replaces the SACK option's blocks, keeping the options' total length (NOP padding), so the
/// TCP header length never changes.
fn rewrite_sack(opts: &[u8], blocks: &[(Seq, Seq)]) -> Vec<u8> {
    let mut out = opts.to_vec();
    for (off, kind, len) in options(opts) {
        if kind != SACK {
            continue;
        }
        let room = (len - 2) / 8;
        let n = blocks.len().min(room);
        let region = &mut out[off..off + len];
        region.fill(NOP);
        if n > 0 {
            region[0] = SACK;
            region[1] = (2 + 8 * n) as u8;
            for (i, (l, r)) in blocks[..n].iter().enumerate() {
                region[2 + 8 * i..6 + 8 * i].copy_from_slice(&l.raw().to_be_bytes());
                region[6 + 8 * i..10 + 8 * i].copy_from_slice(&r.raw().to_be_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn packet(payload: &[u8], sack: Option<&[(u32, u32)]>) -> Vec<u8> {
        let mut b = PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 2, 2], 64).tcp(40000, 21, 1000, 64240).ack(5000);
        if let Some(s) = sack {
            let mut opts = vec![NOP, NOP, SACK, (2 + 8 * s.len()) as u8];
            for (l, r) in s {
                opts.extend_from_slice(&l.to_be_bytes());
                opts.extend_from_slice(&r.to_be_bytes());
            }
            b = b.options_raw(&opts).unwrap();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn parse_fields() {
        let buf = packet(b"PASV\r\n", Some(&[(7, 9)]));
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.src(), "10.0.1.2:40000".parse().unwrap());
        assert_eq!(p.dst(), "10.0.2.2:21".parse().unwrap());
        assert_eq!((p.seq(), p.ack()), (Seq::new(1000), Seq::new(5000)));
        assert_eq!(p.payload, b"PASV\r\n");
        assert_eq!(p.sack, vec![(Seq::new(7), Seq::new(9))]);
        assert!(p.flags().ack && !p.flags().syn);
    }

    #[test]
    fn edit_fixes_lengths_and_checksums() {
        let buf = packet(b"PORT 10,0,1,2,156,64\r\n", Some(&[(7, 9), (20, 30)]));
        let p = Packet::parse(&buf).unwrap();
        let e = Edit {
            seq: Seq::new(1003),
            ack: Seq::new(4990),
            sack: Some(vec![(Seq::new(17), Seq::new(19))]),
            payload: Some(b"PORT 10,0,2,1,19,136\r\n".to_vec()),
        };
        let out = p.edited(&e, None).unwrap();
        // etherparse's own validating parser accepts it and the checksums verify
        let (ip, rest) = Ipv4Header::from_slice(&out).unwrap();
        assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
        assert_eq!(ip.payload_len().unwrap() as usize, rest.len());
        let (tcp, payload) = TcpHeader::from_slice(rest).unwrap();
        assert_eq!(tcp.calc_checksum_ipv4(&ip, payload).unwrap(), tcp.checksum);
        assert_eq!(payload, b"PORT 10,0,2,1,19,136\r\n");
        assert_eq!(tcp.header_len(), p.tcp.header_len());
        let q = Packet::parse(&out).unwrap();
        assert_eq!((q.seq(), q.ack()), (Seq::new(1003), Seq::new(4990)));
        assert_eq!(q.sack, vec![(Seq::new(17), Seq::new(19))]);
    }

    #[test]
    fn timestamps_are_read_and_replaced() {
        let mut b = PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 2, 2], 64).tcp(40000, 21, 1000, 64240).ack(5000);
        b = b.options_raw(&[NOP, NOP, TIMESTAMP, 10, 0, 0, 0, 5, 0, 0, 0, 6]).unwrap();
        let mut buf = Vec::new();
        b.write(&mut buf, b"RETR f\r\n").unwrap();
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.ts, Some((5, 6)));
        let e = Edit { seq: p.seq(), ack: p.ack(), sack: None, payload: None };
        let q = p.edited(&e, Some((70, 80))).unwrap();
        let q = Packet::parse(&q).unwrap();
        assert_eq!((q.ts, q.payload), (Some((70, 80)), &b"RETR f\r\n"[..]));
    }

    const C6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const S6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn packet6(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv6(C6, S6, 64).tcp(40000, 21, 1000, 64240).ack(5000);
        let b = b.options_raw(&[NOP, NOP, SACK, 10, 0, 0, 0, 7, 0, 0, 0, 9]).unwrap();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// `buf` with an extension header of `kind` (its 8 bytes `body`) between the IPv6 header and TCP.
    fn with_ext(buf: &[u8], kind: u8, body: [u8; 8]) -> Vec<u8> {
        let mut ext = body;
        ext[0] = 6; // next header: TCP
        let mut out = buf[..40].to_vec();
        out[6] = kind;
        let len = u16::from_be_bytes([out[4], out[5]]) + 8;
        out[4..6].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&ext);
        out.extend_from_slice(&buf[40..]);
        out
    }

    fn checksum_ok6(out: &[u8], ext_len: usize) -> Vec<u8> {
        let (ip, rest) = Ipv6Header::from_slice(out).unwrap();
        assert_eq!(usize::from(ip.payload_length), rest.len());
        let (tcp, payload) = TcpHeader::from_slice(&rest[ext_len..]).unwrap();
        assert_eq!(tcp.calc_checksum_ipv6(&ip, payload).unwrap(), tcp.checksum);
        payload.to_vec()
    }

    #[test]
    fn ipv6_parse_and_edit() {
        let buf = packet6(b"EPRT |2|fd00:1::2|40001|\r\n");
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.src(), "[fd00:1::2]:40000".parse().unwrap());
        assert_eq!(p.dst(), "[fd00:2::2]:21".parse().unwrap());
        assert_eq!((p.seq(), p.ack(), p.sack.clone()), (Seq::new(1000), Seq::new(5000), vec![(Seq::new(7), Seq::new(9))]));
        let new = b"EPRT |2|fd00:2::1|50000|\r\n".to_vec();
        let e = Edit { seq: Seq::new(1003), ack: Seq::new(4990), sack: Some(vec![]), payload: Some(new.clone()) };
        let out = p.edited(&e, None).unwrap();
        assert_eq!(checksum_ok6(&out, 0), new);
        let q = Packet::parse(&out).unwrap();
        assert_eq!((q.seq(), q.ack(), q.sack.len()), (Seq::new(1003), Seq::new(4990), 0));
    }

    #[test]
    fn ipv6_extension_headers_pass_through_routing_and_fragments_refused() {
        let buf = packet6(b"PASV\r\n");
        // destination options (60) with a PadN option: kept byte for byte around the edit
        let dst_opts = with_ext(&buf, 60, [0, 0, 1, 4, 0, 0, 0, 0]);
        let p = Packet::parse(&dst_opts).unwrap();
        assert_eq!(p.payload, b"PASV\r\n");
        let e = Edit { seq: p.seq(), ack: p.ack(), sack: None, payload: Some(b"EPSV\r\n".to_vec()) };
        let out = p.edited(&e, None).unwrap();
        assert_eq!(&out[40..48], &dst_opts[40..48]);
        assert_eq!(checksum_ok6(&out, 8), b"EPSV\r\n");
        // a routing header (43, type 4 segment routing) and a fragment header (44) are refused
        assert!(matches!(Packet::parse(&with_ext(&buf, 43, [0, 0, 4, 0, 0, 0, 0, 0])), Err(WireError::Routing)));
        assert!(matches!(Packet::parse(&with_ext(&buf, 44, [0, 0, 0, 1, 0, 0, 0, 9])), Err(WireError::Fragment)));
        // neither family
        assert!(matches!(Packet::parse(&[0x50; 60]), Err(WireError::NotIp)));
    }

    #[test]
    fn all_sack_blocks_removed_leaves_nops() {
        assert_eq!(rewrite_sack(&[NOP, NOP, SACK, 10, 0, 0, 0, 1, 0, 0, 0, 2], &[]), vec![NOP; 12]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for n in 0..60 {
            let junk: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37) ^ 0x45).collect();
            let _ = Packet::parse(&junk);
        }
        let mut buf = packet(b"x", None);
        buf.truncate(30);
        assert!(Packet::parse(&buf).is_err());
    }
}
