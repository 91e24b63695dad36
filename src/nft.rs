//! Kernel forwarding of data connections: the nftables table `ip ftpgate` and its per-transfer,
//! single-use permissions.
//!
//! A data connection that needs neither capture nor serving need not pass through the relay:
//! the kernel forwards it as it would without ftpgate, at the kernel's speed, once ftpgate has
//! said which one connection to let through. For each such transfer ftpgate adds, before the
//! announcing line goes on:
//! - `data_pass`: `peer . endpoint address . endpoint port` — the one SYN that may open it;
//! - `data_wait`: `endpoint address . endpoint port` — any other SYN to it is a theft;
//! - `data_dnat` (active mode behind NAT only): `peer . endpoint → client address . port`, the
//!   translation the rewritten `PORT` needs (the endpoint is the router's own address).
//!
//! All three time out after the data-port timeout. The table's `data_pre` chain (prerouting,
//! after conntrack, before NAT) deletes the `data_pass` and `data_wait` elements on the first
//! SYN that matches (single use) and gives its connection the conntrack mark [`CT_PASS`]; a SYN
//! from anyone else to a waiting endpoint gets [`CT_THIEF`]. The iptables rules of
//! `crate::filter` then queue a passed connection's SYN, FIN and RST segments (so ftpgate
//! counts its bytes exactly from the sequence numbers, for metrics and the transfer log), accept
//! its first packet in `filter FORWARD` (for firewalls whose FORWARD policy is DROP), and queue
//! a thief's SYN, which ftpgate logs and drops.
//!
//! The static table is loaded with `nft -f` by `rules apply`; elements are added and deleted
//! here over netlink (one batch per transfer, no process started).

use core::net::{Ipv4Addr, SocketAddrV4};
use std::io;
use std::time::Duration;

use crate::netlink::{self, attr, nested, Socket};

pub const TABLE: &str = "ftpgate";
/// Conntrack mark of a data connection the kernel forwards for ftpgate.
pub const CT_PASS: u32 = 0xf700_0000;
/// Conntrack mark of a connection attempt at a waiting endpoint by someone else.
pub const CT_THIEF: u32 = 0xf600_0000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NFPROTO_IPV4: u8 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;

/// The static table, in `nft -f` syntax.
pub fn ruleset() -> String {
    format!(
        "table ip {TABLE} {{
	set data_pass {{
		type ipv4_addr . ipv4_addr . inet_service
		flags dynamic, timeout
	}}
	set data_wait {{
		type ipv4_addr . inet_service
		flags dynamic, timeout
	}}
	map data_dnat {{
		type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service
		flags timeout
	}}
	chain data_pre {{
		type filter hook prerouting priority -160; policy accept;
		ct state new tcp flags & (syn | ack) == syn ip saddr . ip daddr . tcp dport @data_pass ct mark set {CT_PASS:#x} delete @data_pass {{ ip saddr . ip daddr . tcp dport }} delete @data_wait {{ ip daddr . tcp dport }} accept
		ct state new tcp flags & (syn | ack) == syn ip daddr . tcp dport @data_wait ct mark set {CT_THIEF:#x}
	}}
	chain data_nat {{
		type nat hook prerouting priority -110; policy accept;
		ct mark {CT_PASS:#x} dnat ip to ip saddr . ip daddr . tcp dport map @data_dnat
	}}
}}
"
    )
}

/// One transfer's permission: `peer` may open one connection to `at` (the announced endpoint);
/// `dnat`: where the kernel then sends it (active mode behind NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub peer: Ipv4Addr,
    pub at: SocketAddrV4,
    pub dnat: Option<SocketAddrV4>,
}

/// Set keys and values as nf_tables lays out concatenations: each field padded to 4 bytes.
fn addr_port(a: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut k = a.octets().to_vec();
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

fn pass_key(g: &Grant) -> Vec<u8> {
    let mut k = g.peer.octets().to_vec();
    k.extend(addr_port(*g.at.ip(), g.at.port()));
    k
}

/// One element list message for `set`.
fn elements(ty: u16, flags: u16, seq: u32, set: &str, key: &[u8], data: Option<&[u8]>, timeout: Option<Duration>) -> Vec<u8> {
    let mut body = Vec::new();
    attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, format!("{TABLE}\0").as_bytes());
    attr(&mut body, NFTA_SET_ELEM_LIST_SET, format!("{set}\0").as_bytes());
    nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
        nested(l, NFTA_LIST_ELEM, |e| {
            nested(e, NFTA_SET_ELEM_KEY, |k| attr(k, NFTA_DATA_VALUE, key));
            if let Some(d) = data {
                nested(e, NFTA_SET_ELEM_DATA, |v| attr(v, NFTA_DATA_VALUE, d));
            }
            if let Some(t) = timeout {
                attr(e, NFTA_SET_ELEM_TIMEOUT, &(t.as_millis() as u64).to_be_bytes());
            }
        })
    });
    netlink::message(NFNL_SUBSYS_NFTABLES << 8 | ty, flags, seq, NFPROTO_IPV4, 0, &body)
}

/// A batch: begin, `msgs` (numbered from `seq + 1`), end. Returns it and the last number.
fn batch(seq: u32, msgs: impl FnOnce(&mut u32) -> Vec<Vec<u8>>) -> (Vec<u8>, u32) {
    let mut out = netlink::message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let mut n = seq;
    for m in msgs(&mut n) {
        out.extend(m);
    }
    let last = n;
    out.extend(netlink::message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, n + 1, 0, NFNL_SUBSYS_NFTABLES, &[]));
    (out, last)
}

/// The request that adds a grant's elements.
pub fn grant_request(g: &Grant, timeout: Duration, seq: u32) -> (Vec<u8>, u32) {
    batch(seq, |n| {
        let f = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
        let mut next = || {
            *n += 1;
            *n
        };
        let mut m = Vec::new();
        if let Some(to) = g.dnat {
            // the translation first: it must be there when the SYN the pass lets in arrives
            let value = addr_port(*to.ip(), to.port());
            m.push(elements(NFT_MSG_NEWSETELEM, f, next(), "data_dnat", &pass_key(g), Some(&value), Some(timeout + Duration::from_secs(1))));
        }
        m.push(elements(NFT_MSG_NEWSETELEM, f, next(), "data_wait", &addr_port(*g.at.ip(), g.at.port()), None, Some(timeout)));
        m.push(elements(NFT_MSG_NEWSETELEM, f, next(), "data_pass", &pass_key(g), None, Some(timeout)));
        m
    })
}

/// The requests that delete a grant's elements, one batch each (a missing element fails only its
/// own batch).
pub fn revoke_requests(g: &Grant, seq: u32) -> Vec<(Vec<u8>, u32)> {
    let f = NLM_F_REQUEST | NLM_F_ACK;
    let mut out = vec![
        batch(seq, |n| {
            *n += 1;
            vec![elements(NFT_MSG_DELSETELEM, f, *n, "data_pass", &pass_key(g), None, None)]
        }),
        batch(seq + 3, |n| {
            *n += 1;
            vec![elements(NFT_MSG_DELSETELEM, f, *n, "data_wait", &addr_port(*g.at.ip(), g.at.port()), None, None)]
        }),
    ];
    if g.dnat.is_some() {
        out.push(batch(seq + 6, |n| {
            *n += 1;
            vec![elements(NFT_MSG_DELSETELEM, f, *n, "data_dnat", &pass_key(g), None, None)]
        }));
    }
    out
}

/// The netlink side: adds and deletes elements of the table `rules apply` loaded.
pub struct Elements {
    sock: Socket,
    seq: u32,
}

impl Elements {
    /// Opens the socket and checks that the table is there.
    pub fn open() -> io::Result<Elements> {
        let mut e = Elements { sock: Socket::open(Duration::from_millis(500))?, seq: 1 };
        let mut body = Vec::new();
        attr(&mut body, NFTA_SET_TABLE, format!("{TABLE}\0").as_bytes());
        attr(&mut body, NFTA_SET_NAME, b"data_pass\0");
        let seq = e.next(1);
        let req = netlink::message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_ACK, seq, NFPROTO_IPV4, 0, &body);
        e.sock.request_acked(&req, seq).map_err(|(_, err)| err)?;
        Ok(e)
    }

    fn next(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    /// Lets `g.peer` open one connection to `g.at` within `timeout`.
    pub fn grant(&mut self, g: &Grant, timeout: Duration) -> io::Result<()> {
        let seq = self.next(8);
        let (req, last) = grant_request(g, timeout, seq);
        self.sock.request_acked(&req, last).map_err(|(_, e)| e)
    }

    /// Withdraws what is left of a grant (elements already used or expired are not an error).
    pub fn revoke(&mut self, g: &Grant) {
        let seq = self.next(12);
        for (req, last) in revoke_requests(g, seq) {
            let _ = self.sock.request_acked(&req, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{find, messages};

    #[test]
    fn keys_are_padded_concatenations() {
        let g = Grant { peer: Ipv4Addr::new(10, 0, 1, 2), at: "10.0.2.2:5000".parse().unwrap(), dnat: None };
        // what `nft --debug=netlink add element ip ftpgate data_pass { 10.0.1.2 . 10.0.2.2 . 5000 }` sends
        assert_eq!(pass_key(&g), [10, 0, 1, 2, 10, 0, 2, 2, 0x13, 0x88, 0, 0]);
        assert_eq!(addr_port(Ipv4Addr::new(10, 0, 0, 9), 40000), [10, 0, 0, 9, 0x9c, 0x40, 0, 0]);
    }

    #[test]
    fn a_grant_is_one_batch_translation_first() {
        let g = Grant { peer: Ipv4Addr::new(10, 0, 2, 2), at: "10.0.2.1:40001".parse().unwrap(), dnat: Some("10.0.1.2:40001".parse().unwrap()) };
        let (req, last) = grant_request(&g, Duration::from_secs(30), 100);
        let msgs: Vec<_> = messages(&req).collect();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[4].0, NFNL_MSG_BATCH_END);
        assert_eq!(last, 103);
        let sets: Vec<_> = msgs[1..4]
            .iter()
            .map(|(ty, _, p)| {
                assert_eq!(*ty, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM);
                String::from_utf8_lossy(find(&p[4..], NFTA_SET_ELEM_LIST_SET).unwrap()).trim_end_matches('\0').to_string()
            })
            .collect();
        assert_eq!(sets, ["data_dnat", "data_wait", "data_pass"]);
        let list = find(&msgs[3].2[4..], NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        let elem = find(list, NFTA_LIST_ELEM).unwrap();
        assert_eq!(find(elem, NFTA_SET_ELEM_TIMEOUT).unwrap(), &30_000u64.to_be_bytes());
        assert_eq!(revoke_requests(&g, 200).len(), 3);
    }

    #[test]
    fn the_ruleset_names_the_marks() {
        let r = ruleset();
        assert!(r.contains("ct mark set 0xf7000000 delete @data_pass"));
        assert!(r.contains("ct mark set 0xf6000000"));
        assert!(r.contains("dnat ip to ip saddr . ip daddr . tcp dport map @data_dnat"));
    }
}
