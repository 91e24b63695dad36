//! FTP lines that name data endpoints: `PORT`/`EPRT` commands and `227`/`229` replies.
//!
//! Each form has a pure `parse` returning the endpoint and the byte span of the numbers inside
//! the line, and an `emit` that replaces exactly that span (as `nf_nat_ftp_fmt_cmd` does), so the
//! rest of the server's or client's text is kept as it was. Numbers are checked like OpenBSD
//! ftp-proxy's `parse_port`: every octet `< 256`, ports `< 65536`, no trailing garbage.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::Range;

/// What a data-endpoint line names, and where in the line it says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: Kind,
    /// `None` for EPSV's `229`, which names only a port; IPv6 only from `EPRT |2|`.
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// Byte range of the endpoint text inside the line.
    pub span: Range<usize>,
    /// EPRT/229 delimiter character.
    pub delim: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Port,
    Eprt,
    Pasv227,
    Epsv229,
}

impl Kind {
    /// The metric's `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Port => "PORT",
            Kind::Eprt => "EPRT",
            Kind::Pasv227 => "227",
            Kind::Epsv229 => "229",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(&'static str),
}

/// One of the parsers below.
pub type Parser = fn(&[u8]) -> Result<Endpoint, ParseError>;

/// Strips the line terminator (`\r\n` or `\n`).
pub fn body(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// The command verb, upper-cased, if the line has a plausible one.
pub fn verb(line: &[u8]) -> Option<[u8; 4]> {
    let b = body(line);
    let w = b.split(|&c| c == b' ').next()?;
    if w.len() < 3 || w.len() > 4 || !w.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let mut v = [b' '; 4];
    for (d, s) in v.iter_mut().zip(w) {
        *d = s.to_ascii_uppercase();
    }
    Some(v)
}

/// Whether a final reply with `code` can end a transfer command (RETR, STOR, LIST, …): any but
/// a 2xx other than 225, 226 and 250. A `200` while a transfer runs answers a command sent
/// meanwhile (a `NOOP`: pyftpdlib answers it during the transfer), not the transfer.
pub fn may_end_transfer(code: u16) -> bool {
    !(200..300).contains(&code) || matches!(code, 225 | 226 | 250)
}

/// [`may_end_transfer`] for a reply line of which only `l` has arrived so far: whether it may
/// still turn out to end the transfer (not a `1xx`, not a `2xx` but 225, 226 or 250).
pub fn may_end_transfer_prefix(l: &[u8]) -> bool {
    match l.first() {
        None => true,
        Some(b'1') => false,
        Some(b'2') => [&b"225"[..], b"226", b"250"].iter().any(|c| c.starts_with(&l[..l.len().min(3)])),
        Some(_) => true,
    }
}

/// Reply code and whether this is the last line of the reply (`"227 "` vs `"227-"`).
pub fn reply_code(line: &[u8]) -> Option<(u16, bool)> {
    let b = body(line);
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = (b[0] - b'0') as u16 * 100 + (b[1] - b'0') as u16 * 10 + (b[2] - b'0') as u16;
    match b.get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        _ => None,
    }
}

/// Parses `n1,n2,n3,n4,n5,n6` at the start of `s`; returns the address, port and length used.
fn six_numbers(s: &[u8]) -> Result<(Ipv4Addr, u16, usize), ParseError> {
    let mut n = [0u16; 6];
    let mut i = 0;
    for (k, slot) in n.iter_mut().enumerate() {
        let start = i;
        let mut v: u32 = 0;
        while i < s.len() && s[i].is_ascii_digit() {
            v = v * 10 + (s[i] - b'0') as u32;
            if v > 255 || i - start >= 3 {
                return Err(ParseError::Malformed("number above 255"));
            }
            i += 1;
        }
        if i == start {
            return Err(ParseError::Malformed("expected a number"));
        }
        *slot = v as u16;
        if k < 5 {
            if s.get(i) != Some(&b',') {
                return Err(ParseError::Malformed("expected six comma-separated numbers"));
            }
            i += 1;
        }
    }
    let ip = Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
    Ok((ip, n[4] << 8 | n[5], i))
}

fn port_number(s: &[u8]) -> Result<u16, ParseError> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("bad port number"));
    }
    let v: u32 = s.iter().fold(0, |a, &c| a * 10 + (c - b'0') as u32);
    if v == 0 || v > 65535 {
        return Err(ParseError::Malformed("port out of range"));
    }
    Ok(v as u16)
}

fn args_start(b: &[u8], verb_len: usize) -> usize {
    let mut i = verb_len.min(b.len());
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// `PORT h1,h2,h3,h4,p1,p2`
pub fn parse_port(line: &[u8]) -> Result<Endpoint, ParseError> {
    let b = body(line);
    let a = args_start(b, 4);
    let (ip, port, used) = six_numbers(&b[a..])?;
    if a + used != b.len() {
        return Err(ParseError::Malformed("trailing bytes after PORT numbers"));
    }
    if port == 0 {
        return Err(ParseError::Malformed("port 0"));
    }
    Ok(Endpoint { kind: Kind::Port, ip: Some(IpAddr::V4(ip)), port, span: a..b.len(), delim: b',' })
}

/// `EPRT |1|a.b.c.d|port|` or `EPRT |2|ipv6|port|` (any printable delimiter, RFC 2428)
pub fn parse_eprt(line: &[u8]) -> Result<Endpoint, ParseError> {
    let b = body(line);
    let a = args_start(b, 4);
    let args = &b[a..];
    let d = *args.first().ok_or(ParseError::Malformed("EPRT without arguments"))?;
    if !(33..=126).contains(&d) || d.is_ascii_digit() {
        return Err(ParseError::Malformed("bad EPRT delimiter"));
    }
    let fields: Vec<&[u8]> = args.split(|&c| c == d).collect();
    // "", proto, addr, port, ""
    if fields.len() != 5 || !fields[0].is_empty() || !fields[4].is_empty() {
        return Err(ParseError::Malformed("EPRT needs |proto|addr|port|"));
    }
    let text = core::str::from_utf8(fields[2]).ok();
    let ip = match fields[1] {
        b"1" => text.and_then(|s| s.parse::<Ipv4Addr>().ok()).map(IpAddr::V4),
        b"2" => text.and_then(|s| s.parse::<Ipv6Addr>().ok()).map(IpAddr::V6),
        _ => return Err(ParseError::Malformed("unknown EPRT protocol")),
    };
    let ip = ip.ok_or(ParseError::Malformed("bad EPRT address"))?;
    let port = port_number(fields[3])?;
    Ok(Endpoint { kind: Kind::Eprt, ip: Some(ip), port, span: a..b.len(), delim: d })
}

/// `227 <text> (h1,h2,h3,h4,p1,p2)<text>`: like the kernel's `try_rfc1123`, the numbers start at
/// the first digit after the code, whatever the text around them is.
pub fn parse_227(line: &[u8]) -> Result<Endpoint, ParseError> {
    let b = body(line);
    if b.len() < 4 || &b[..4] != b"227 " {
        return Err(ParseError::Malformed("not a 227 reply"));
    }
    let first = b[4..].iter().position(u8::is_ascii_digit).ok_or(ParseError::Malformed("227 without numbers"))? + 4;
    let (ip, port, used) = six_numbers(&b[first..])?;
    if b.get(first + used).is_some_and(u8::is_ascii_digit) {
        return Err(ParseError::Malformed("number above 255"));
    }
    if port == 0 {
        return Err(ParseError::Malformed("port 0"));
    }
    Ok(Endpoint { kind: Kind::Pasv227, ip: Some(IpAddr::V4(ip)), port, span: first..first + used, delim: b',' })
}

/// `229 <text> (|||port|)`
pub fn parse_229(line: &[u8]) -> Result<Endpoint, ParseError> {
    let b = body(line);
    if b.len() < 4 || &b[..4] != b"229 " {
        return Err(ParseError::Malformed("not a 229 reply"));
    }
    let open = b.iter().position(|&c| c == b'(').ok_or(ParseError::Malformed("229 without '('"))?;
    let close = open + b[open..].iter().position(|&c| c == b')').ok_or(ParseError::Malformed("229 without ')'"))?;
    let inner = &b[open + 1..close];
    let d = *inner.first().ok_or(ParseError::Malformed("229 empty"))?;
    let fields: Vec<&[u8]> = inner.split(|&c| c == d).collect();
    if fields.len() != 5 || fields[..3].iter().any(|f| !f.is_empty()) || !fields[4].is_empty() {
        return Err(ParseError::Malformed("229 needs (|||port|)"));
    }
    let port = port_number(fields[3])?;
    Ok(Endpoint { kind: Kind::Epsv229, ip: None, port, span: open + 1..close, delim: d })
}

/// Rewrites `line` so that `ep` names `to` instead, keeping every other byte. `None` when the
/// form cannot name `to` (`PORT` and `227` name IPv4 endpoints only).
pub fn emit(line: &[u8], ep: &Endpoint, to: SocketAddr) -> Option<Vec<u8>> {
    let (p1, p2) = (to.port() >> 8, to.port() & 0xff);
    let text = match (ep.kind, to.ip()) {
        (Kind::Port | Kind::Pasv227, IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{a},{b},{c},{d},{p1},{p2}")
        }
        (Kind::Port | Kind::Pasv227, IpAddr::V6(_)) => return None,
        (Kind::Eprt, ip) => {
            let x = ep.delim as char;
            let proto = if ip.is_ipv4() { 1 } else { 2 };
            format!("{x}{proto}{x}{ip}{x}{}{x}", to.port())
        }
        (Kind::Epsv229, _) => {
            let x = ep.delim as char;
            format!("{x}{x}{x}{}{x}", to.port())
        }
    };
    let mut out = Vec::with_capacity(line.len() + 8);
    out.extend_from_slice(&line[..ep.span.start]);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&line[ep.span.end..]);
    Some(out)
}

/// A fresh line of form `kind` naming `to`, for a session that translates between the
/// families (a PASV answered from an EPSV's 229, an EPRT |2| sent on as PORT). `None` where the
/// form cannot name the address (PORT or 227 and an IPv6 address).
pub fn render(kind: Kind, to: SocketAddr) -> Option<Vec<u8>> {
    let (p1, p2) = (to.port() >> 8, to.port() & 0xff);
    let text = match (kind, to.ip()) {
        (Kind::Port | Kind::Pasv227, IpAddr::V6(_)) => return None,
        (Kind::Port, IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("PORT {a},{b},{c},{d},{p1},{p2}\r\n")
        }
        (Kind::Pasv227, IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("227 Entering Passive Mode ({a},{b},{c},{d},{p1},{p2}).\r\n")
        }
        (Kind::Eprt, ip) => format!("EPRT |{}|{ip}|{}|\r\n", if ip.is_ipv4() { 1 } else { 2 }, to.port()),
        (Kind::Epsv229, _) => format!("229 Entering Extended Passive Mode (|||{}|)\r\n", to.port()),
    };
    Some(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_replies_may_end_a_transfer() {
        for c in [225, 226, 250, 421, 425, 426, 451, 550] {
            assert!(may_end_transfer(c), "{c}");
        }
        for c in [200, 211, 213, 257] {
            assert!(!may_end_transfer(c), "{c}");
        }
        for l in [&b""[..], b"2", b"22", b"226 done", b"25", b"4", b"550 no"] {
            assert!(may_end_transfer_prefix(l), "{l:?}");
        }
        for l in [&b"1"[..], b"150 go", b"20", b"200 NOOP ok", b"21", b"227"] {
            assert!(!may_end_transfer_prefix(l), "{l:?}");
        }
    }

    #[test]
    fn rendered_lines_parse_back() {
        let v4 = sa("10.0.2.1:40001");
        let v6 = sa("[fd00:2::1]:40002");
        assert_eq!(parse_port(&render(Kind::Port, v4).unwrap()).unwrap().port, 40001);
        assert_eq!(parse_227(&render(Kind::Pasv227, v4).unwrap()).unwrap().ip, Some(v4.ip()));
        assert_eq!(render(Kind::Port, v6), None);
        assert_eq!(render(Kind::Pasv227, v6), None);
        let e = parse_eprt(&render(Kind::Eprt, v6).unwrap()).unwrap();
        assert_eq!((e.ip, e.port), (Some(v6.ip()), 40002));
        assert_eq!(parse_eprt(&render(Kind::Eprt, v4).unwrap()).unwrap().ip, Some(v4.ip()));
        assert_eq!(parse_229(&render(Kind::Epsv229, v6).unwrap()).unwrap().port, 40002);
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn v4(a: [u8; 4]) -> Option<IpAddr> {
        Some(IpAddr::from(a))
    }

    #[test]
    fn port_round_trip() {
        let l = b"PORT 10,0,1,2,156,64\r\n";
        let e = parse_port(l).unwrap();
        assert_eq!((e.ip, e.port), (v4([10, 0, 1, 2]), 40000));
        assert_eq!(emit(l, &e, sa("10.0.2.1:1025")).unwrap(), b"PORT 10,0,2,1,4,1\r\n");
        assert_eq!(emit(l, &e, sa("[fd00::1]:1025")), None, "PORT cannot name an IPv6 endpoint");
        let lower = b"port 1,2,3,4,0,21\n";
        assert_eq!(parse_port(lower).unwrap().port, 21);
    }

    #[test]
    fn port_rejects_garbage() {
        for l in [
            &b"PORT 1,2,3,4,5\r\n"[..],
            b"PORT 1,2,3,256,1,1\r\n",
            b"PORT 1,2,3,4,5,6,7\r\n",
            b"PORT 1,2,3,4,0,0\r\n",
            b"PORT 0001,2,3,4,5,6\r\n",
            b"PORT\r\n",
            b"PORT 1,2,3,4,5,6x\r\n",
        ] {
            assert!(parse_port(l).is_err(), "{:?}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn eprt_round_trip_and_errors() {
        let l = b"EPRT |1|10.0.1.2|40000|\r\n";
        let e = parse_eprt(l).unwrap();
        assert_eq!((e.ip, e.port), (v4([10, 0, 1, 2]), 40000));
        assert_eq!(emit(l, &e, sa("10.0.2.1:5000")).unwrap(), b"EPRT |1|10.0.2.1|5000|\r\n");
        let bang = b"EPRT !1!1.2.3.4!99!\r\n";
        assert_eq!(emit(bang, &parse_eprt(bang).unwrap(), sa("9.8.7.6:1")).unwrap(), b"EPRT !1!9.8.7.6!1!\r\n");
        // IPv6 (RFC 2428 |2|): parsed with its family, emitted for either family
        let l6 = b"EPRT |2|fd00:1::2|40001|\r\n";
        let e6 = parse_eprt(l6).unwrap();
        assert_eq!((e6.ip, e6.port), (Some("fd00:1::2".parse().unwrap()), 40001));
        assert_eq!(emit(l6, &e6, sa("[fd00:2::1]:5000")).unwrap(), b"EPRT |2|fd00:2::1|5000|\r\n");
        assert_eq!(emit(l6, &e6, sa("10.0.2.1:5000")).unwrap(), b"EPRT |1|10.0.2.1|5000|\r\n");
        assert_eq!(emit(l, &e, sa("[::ffff:10.0.2.1]:7")).unwrap(), b"EPRT |2|::ffff:10.0.2.1|7|\r\n");
        assert!(parse_eprt(b"EPRT |2|10.0.1.2|5000|\r\n").is_err(), "family and address disagree");
        assert!(parse_eprt(b"EPRT |1|::1|5000|\r\n").is_err());
        assert!(parse_eprt(b"EPRT |3|1.2.3.4|5000|\r\n").is_err());
        assert!(parse_eprt(b"EPRT |1|1.2.3.4|65536|\r\n").is_err());
        assert!(parse_eprt(b"EPRT |1|1.2.3.400|5|\r\n").is_err());
    }

    #[test]
    fn pasv_227_forms() {
        let l = b"227 Entering Passive Mode (10,0,2,2,117,48).\r\n";
        let e = parse_227(l).unwrap();
        assert_eq!((e.ip, e.port), (v4([10, 0, 2, 2]), 30000));
        assert_eq!(emit(l, &e, sa("10.0.2.2:30001")).unwrap(), b"227 Entering Passive Mode (10,0,2,2,117,49).\r\n");
        // no parentheses (RFC 1123 says clients must scan for the first digit)
        let e = parse_227(b"227 =10,0,2,2,4,1\r\n").unwrap();
        assert_eq!(e.port, 1025);
        assert!(parse_227(b"227 Entering Passive Mode (10,0,2,2,117).\r\n").is_err());
        assert!(parse_227(b"227 (10,0,2,2,117,4800)\r\n").is_err());
    }

    #[test]
    fn epsv_229_forms() {
        let l = b"229 Entering Extended Passive Mode (|||40001|)\r\n";
        let e = parse_229(l).unwrap();
        assert_eq!((e.ip, e.port), (None, 40001));
        assert_eq!(emit(l, &e, sa("[::]:5")).unwrap(), b"229 Entering Extended Passive Mode (|||5|)\r\n");
        assert!(parse_229(b"229 (|||0|)\r\n").is_err());
        assert!(parse_229(b"229 (||1|2|)\r\n").is_err());
    }

    #[test]
    fn verbs_and_codes() {
        assert_eq!(verb(b"pasv\r\n"), Some(*b"PASV"));
        assert_eq!(verb(b"CWD /x\r\n"), Some(*b"CWD "));
        assert_eq!(verb(b"\x00\xff\r\n"), None);
        assert_eq!(reply_code(b"227 ok\r\n"), Some((227, true)));
        assert_eq!(reply_code(b"150-more\r\n"), Some((150, false)));
        assert_eq!(reply_code(b" 150 x\r\n"), None);
    }
}
