//! One ctnetlink query: how the router's conntrack translated a connection.
//!
//! Active mode must announce the client's address *as the server sees it*. Behind MASQUERADE
//! that is the router's WAN address, in a routed set-up the client's own; the conntrack entry
//! of the control connection says which (its reply tuple's destination). The same holds for
//! IPv6 behind NAT66 (`ip6tables -t nat … MASQUERADE`): the query and the answer carry
//! `CTA_IP_V6_*` instead.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::netlink::{attr, find, nested, Socket};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_BYTES: u16 = 2;

/// Builds the CT_GET request for the original-direction tuple `src → dst` (TCP). Both must be
/// of one family (a mixed pair is asked as IPv6, which no entry matches).
pub fn request(src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let family = if src.is_ipv4() && dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let mut body = vec![family as u8, 0, 0, 0]; // nfgenmsg
    nested(&mut body, CTA_TUPLE_ORIG, |t| {
        nested(t, CTA_TUPLE_IP, |ip| match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(ip, CTA_IP_V4_SRC, &s.octets());
                attr(ip, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                attr(ip, CTA_IP_V6_SRC, &v6(s).octets());
                attr(ip, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        nested(t, CTA_TUPLE_PROTO, |p| {
            attr(p, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
            attr(p, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
            attr(p, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        });
    });
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// From a CT_NEW answer: the reply tuple's destination address.
pub fn parse_reply_dst(msg: &[u8]) -> Option<IpAddr> {
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    if ty == libc::NLMSG_ERROR as u16 || len > msg.len() || len < 20 {
        return None;
    }
    let reply = find(&msg[20..len], CTA_TUPLE_REPLY)?;
    let ip = find(reply, CTA_TUPLE_IP)?;
    if let Some(d) = find(ip, CTA_IP_V4_DST) {
        return <[u8; 4]>::try_from(d).ok().map(|d| IpAddr::V4(Ipv4Addr::from(d)));
    }
    <[u8; 16]>::try_from(find(ip, CTA_IP_V6_DST)?).ok().map(|d| IpAddr::V6(Ipv6Addr::from(d)))
}

/// The address the server sees for connection `client → server`, if conntrack knows it.
pub fn server_side_client_addr(client: SocketAddr, server: SocketAddr) -> Option<IpAddr> {
    let mut sock = Socket::open(Duration::from_millis(200)).ok()?;
    sock.send(&request(client, server, 1)).ok()?;
    parse_reply_dst(sock.recv().ok()?)
}

/// From a CT_NEW answer: the bytes (IP lengths) conntrack counted each way, when accounting
/// (`net.netfilter.nf_conntrack_acct`) is on.
pub fn parse_counters(msg: &[u8]) -> Option<(u64, u64)> {
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    if ty == libc::NLMSG_ERROR as u16 || len > msg.len() || len < 20 {
        return None;
    }
    let bytes = |dir| -> Option<u64> {
        let c = find(&msg[20..len], dir)?;
        Some(u64::from_be_bytes(find(c, CTA_COUNTERS_BYTES)?.try_into().ok()?))
    };
    Some((bytes(CTA_COUNTERS_ORIG)?, bytes(CTA_COUNTERS_REPLY)?))
}

/// Conntrack's byte counters of connection `src → dst` (original direction), if it counts them.
pub fn counters(src: SocketAddrV4, dst: SocketAddrV4) -> Option<(u64, u64)> {
    let mut sock = Socket::open(Duration::from_millis(200)).ok()?;
    sock.send(&request(src.into(), dst.into(), 1)).ok()?;
    parse_counters(sock.recv().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = request("10.0.1.2:40000".parse().unwrap(), "10.0.2.2:21".parse().unwrap(), 7);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0101);
        let orig = find(&m[20..], CTA_TUPLE_ORIG).unwrap();
        let ip = find(orig, CTA_TUPLE_IP).unwrap();
        assert_eq!(find(ip, CTA_IP_V4_SRC).unwrap(), &[10, 0, 1, 2]);
        let proto = find(orig, CTA_TUPLE_PROTO).unwrap();
        assert_eq!(find(proto, CTA_PROTO_DST_PORT).unwrap(), &21u16.to_be_bytes());
        let m = request("[fd00:1::2]:40000".parse().unwrap(), "[fd00:2::2]:21".parse().unwrap(), 7);
        assert_eq!(m[16], libc::AF_INET6 as u8);
        let ip = find(find(&m[20..], CTA_TUPLE_ORIG).unwrap(), CTA_TUPLE_IP).unwrap();
        assert_eq!(find(ip, CTA_IP_V6_DST).unwrap(), &"fd00:2::2".parse::<Ipv6Addr>().unwrap().octets());
        assert!(find(ip, CTA_IP_V4_SRC).is_none());
    }

    #[test]
    fn reply_parsing_handles_garbage() {
        assert_eq!(parse_reply_dst(&[]), None);
        assert_eq!(parse_reply_dst(&[0xff; 40]), None);
        // a CT_NEW-shaped answer whose reply tuple is 10.0.2.2 -> 10.0.2.1
        let mut body = vec![2, 0, 0, 0];
        nested(&mut body, CTA_TUPLE_REPLY, |t| {
            nested(t, CTA_TUPLE_IP, |ip| {
                attr(ip, CTA_IP_V4_SRC, &[10, 0, 2, 2]);
                attr(ip, CTA_IP_V4_DST, &[10, 0, 2, 1]);
            })
        });
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&body);
        assert_eq!(parse_reply_dst(&msg), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))));
        // the same behind NAT66
        let wan: Ipv6Addr = "fd00:2::1".parse().unwrap();
        let mut body6 = vec![10, 0, 0, 0];
        nested(&mut body6, CTA_TUPLE_REPLY, |t| nested(t, CTA_TUPLE_IP, |ip| attr(ip, CTA_IP_V6_DST, &wan.octets())));
        let mut msg6 = ((16 + body6.len()) as u32).to_ne_bytes().to_vec();
        msg6.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        msg6.extend_from_slice(&body6);
        assert_eq!(parse_reply_dst(&msg6), Some(IpAddr::V6(wan)));
        assert_eq!(parse_counters(&msg), None);
        let mut body = vec![2, 0, 0, 0];
        nested(&mut body, CTA_COUNTERS_ORIG, |c| attr(c, CTA_COUNTERS_BYTES, &500u64.to_be_bytes()));
        nested(&mut body, CTA_COUNTERS_REPLY, |c| attr(c, CTA_COUNTERS_BYTES, &(5u64 << 32).to_be_bytes()));
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&body);
        assert_eq!(parse_counters(&msg), Some((500, 5 << 32)));
    }
}
