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
const IPCTNL_MSG_CT_DELETE: u16 = 2;
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
    request_by(CTA_TUPLE_ORIG, src, dst, seq)
}

/// The CT_GET request for the connection whose tuple `which` (original or reply) is `src → dst`.
fn request_by(which: u16, src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    ct_message(IPCTNL_MSG_CT_GET, libc::NLM_F_REQUEST as u16, which, src, dst, seq)
}

fn ct_message(ty: u16, flags: u16, which: u16, src: SocketAddr, dst: SocketAddr, seq: u32) -> Vec<u8> {
    let family = if src.is_ipv4() && dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let mut body = vec![family as u8, 0, 0, 0]; // nfgenmsg
    nested(&mut body, which, |t| {
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
    msg.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | ty).to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
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
    tuple_addr(msg, CTA_TUPLE_REPLY, (CTA_IP_V4_DST, CTA_IP_V6_DST))
}

/// From a CT_NEW answer: the original tuple's source address.
pub fn parse_orig_src(msg: &[u8]) -> Option<IpAddr> {
    tuple_addr(msg, CTA_TUPLE_ORIG, (CTA_IP_V4_SRC, CTA_IP_V6_SRC))
}

/// The attributes of a CT_NEW answer (none for an error or a short message).
fn answer_attrs(msg: &[u8]) -> Option<&[u8]> {
    let len = u32::from_ne_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    if ty == libc::NLMSG_ERROR as u16 || len > msg.len() || len < 20 {
        return None;
    }
    Some(&msg[20..len])
}

/// One address of tuple `which` of a CT_NEW answer (`(v4, v6)`: the attribute of each family).
fn tuple_addr(msg: &[u8], which: u16, (v4, v6): (u16, u16)) -> Option<IpAddr> {
    let ip = find(find(answer_attrs(msg)?, which)?, CTA_TUPLE_IP)?;
    if let Some(d) = find(ip, v4) {
        return <[u8; 4]>::try_from(d).ok().map(|d| IpAddr::V4(Ipv4Addr::from(d)));
    }
    <[u8; 16]>::try_from(find(ip, v6)?).ok().map(|d| IpAddr::V6(Ipv6Addr::from(d)))
}

/// From a CT_NEW answer: whether the entry's source was translated (its reply goes to another
/// address than the original came from).
pub fn is_source_nated(msg: &[u8]) -> bool {
    matches!((parse_orig_src(msg), parse_reply_dst(msg)), (Some(a), Some(b)) if a != b)
}

/// Before a new connection `src → dst` to one of the relay's transparent listeners is tracked:
/// deletes an entry of an earlier connection on the same addresses and ports that was
/// source-NATed (a kernel-forwarded connection: the kernel ALG's, or ftpgate's own). Returns
/// whether one was deleted. No connection to a listener of ftpgate's is ever source-NATed
/// itself, so such an entry is always another connection's.
///
/// Conntrack would otherwise take that entry over for the new SYN — when the earlier
/// connection ended by a reset from the server (`CLOSE`, kept 10 s; only a SYN after the
/// connection's own FIN or the client's own reset starts afresh) or is still open in
/// conntrack's view (a SYN is then ignored, not refused) — NAT binding and all; translated on
/// local delivery, the connection reaches the listener from the router's WAN address, and its
/// later segments, looked up by their own addresses, miss the relay's socket and go on to the
/// server, which resets them. Measured: a data connection from a client port and to a passive
/// port that a download through the kernel ALG had used seconds before, ended by the server's
/// reset; and in bursts of 200 right after a burst through the kernel ALG, 1 or 2 sessions.
pub fn clear_stale_nat(src: SocketAddr, dst: SocketAddr) -> bool {
    if query(&request(src, dst, 1), |a| is_source_nated(a).then_some(())).is_none() {
        return false;
    }
    let Ok(mut sock) = Socket::open(QUERY_TIMEOUT) else { return false };
    let delete = ct_message(IPCTNL_MSG_CT_DELETE, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, CTA_TUPLE_ORIG, src, dst, 2);
    sock.request_acked(&delete, 2).is_ok()
}

/// Where a connection the router accepted as `peer → local` really came from: the source of
/// its conntrack entry's original tuple (asked by its reply tuple `local → peer`), if
/// conntrack knows it.
///
/// A connection can reach a local socket already source-NATed: a new SYN on the tuple of an
/// earlier NATed connection whose entry is still there in `CLOSE` state (closed by a reset)
/// takes that entry over, NAT binding and all, and the translation is applied on local
/// delivery too. A data connection from the expected client then shows the router's own WAN
/// address (measured: a burst after a burst through the kernel ALG, 1 session in 200, which
/// was refused as a thief and stalled).
pub fn original_source(local: SocketAddr, peer: SocketAddr) -> Option<IpAddr> {
    query(&request_by(CTA_TUPLE_REPLY, local, peer, 1), parse_orig_src)
}

/// How long a ctnetlink question may wait for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(200);

/// Asks conntrack one question (`req`, a CT_GET) and reads its answer with `parse`.
fn query<T>(req: &[u8], parse: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
    let mut sock = Socket::open(QUERY_TIMEOUT).ok()?;
    sock.send(req).ok()?;
    parse(sock.recv().ok()?)
}

/// The address the server sees for connection `client → server`, if conntrack knows it.
pub fn server_side_client_addr(client: SocketAddr, server: SocketAddr) -> Option<IpAddr> {
    query(&request(client, server, 1), parse_reply_dst)
}

/// From a CT_NEW answer: the bytes (IP lengths) conntrack counted each way, when accounting
/// (`net.netfilter.nf_conntrack_acct`) is on.
pub fn parse_counters(msg: &[u8]) -> Option<(u64, u64)> {
    let attrs = answer_attrs(msg)?;
    let bytes = |dir| -> Option<u64> {
        let c = find(attrs, dir)?;
        Some(u64::from_be_bytes(find(c, CTA_COUNTERS_BYTES)?.try_into().ok()?))
    };
    Some((bytes(CTA_COUNTERS_ORIG)?, bytes(CTA_COUNTERS_REPLY)?))
}

/// Conntrack's byte counters of connection `src → dst` (original direction), if it counts them.
pub fn counters(src: SocketAddrV4, dst: SocketAddrV4) -> Option<(u64, u64)> {
    query(&request(src.into(), dst.into(), 1), parse_counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CT_NEW-shaped IPv4 answer with these tuples: (which, source, destination).
    fn answer_v4(tuples: &[(u16, [u8; 4], [u8; 4])]) -> Vec<u8> {
        let mut body = vec![2, 0, 0, 0];
        for &(which, src, dst) in tuples {
            nested(&mut body, which, |t| {
                nested(t, CTA_TUPLE_IP, |ip| {
                    attr(ip, CTA_IP_V4_SRC, &src);
                    attr(ip, CTA_IP_V4_DST, &dst);
                })
            });
        }
        answer(&body)
    }

    /// A CT_NEW-shaped answer: the netlink header before `body` (which starts with the nfgenmsg).
    fn answer(body: &[u8]) -> Vec<u8> {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_request_by_the_reply_tuple() {
        let m = request_by(CTA_TUPLE_REPLY, "10.0.2.2:30918".parse().unwrap(), "10.0.2.1:42626".parse().unwrap(), 1);
        assert!(find(&m[20..], CTA_TUPLE_ORIG).is_none());
        let reply = find(&m[20..], CTA_TUPLE_REPLY).unwrap();
        assert_eq!(find(find(reply, CTA_TUPLE_IP).unwrap(), CTA_IP_V4_DST).unwrap(), &[10, 0, 2, 1]);
        assert_eq!(find(find(reply, CTA_TUPLE_PROTO).unwrap(), CTA_PROTO_SRC_PORT).unwrap(), &30918u16.to_be_bytes());
    }

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
        let msg = answer_v4(&[(CTA_TUPLE_REPLY, [10, 0, 2, 2], [10, 0, 2, 1])]);
        assert_eq!(parse_reply_dst(&msg), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))));
        assert_eq!(parse_orig_src(&msg), None, "no original tuple in it");
        let orig = answer_v4(&[(CTA_TUPLE_ORIG, [10, 0, 1, 2], [10, 0, 2, 2])]);
        assert_eq!(parse_orig_src(&orig), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2))));
        // its reply went to another address than the original came from: source-NATed
        let entry = |reply_dst| answer_v4(&[(CTA_TUPLE_ORIG, [10, 0, 1, 2], [10, 0, 2, 2]), (CTA_TUPLE_REPLY, [10, 0, 2, 2], reply_dst)]);
        assert!(is_source_nated(&entry([10, 0, 2, 1])));
        assert!(!is_source_nated(&entry([10, 0, 1, 2])), "not translated");
        assert!(!is_source_nated(&[0xff; 40]));
        // the same behind NAT66
        let wan: Ipv6Addr = "fd00:2::1".parse().unwrap();
        let mut body6 = vec![10, 0, 0, 0];
        nested(&mut body6, CTA_TUPLE_REPLY, |t| nested(t, CTA_TUPLE_IP, |ip| attr(ip, CTA_IP_V6_DST, &wan.octets())));
        let msg6 = answer(&body6);
        assert_eq!(parse_reply_dst(&msg6), Some(IpAddr::V6(wan)));
        assert_eq!(parse_counters(&msg), None);
        let mut body = vec![2, 0, 0, 0];
        nested(&mut body, CTA_COUNTERS_ORIG, |c| attr(c, CTA_COUNTERS_BYTES, &500u64.to_be_bytes()));
        nested(&mut body, CTA_COUNTERS_REPLY, |c| attr(c, CTA_COUNTERS_BYTES, &(5u64 << 32).to_be_bytes()));
        let msg = answer(&body);
        assert_eq!(parse_counters(&msg), Some((500, 5 << 32)));
    }
}
