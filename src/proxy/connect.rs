//! Connecting to the server a proxy login names: resolution, the access rules (never the
//! gateway itself), connect within a timeout, and the server's greeting.

use super::*;

/// The gateway's own IPv4 addresses: never a destination.
pub(super) fn local_addrs() -> Vec<Ipv4Addr> {
    let mut out = vec![Ipv4Addr::LOCALHOST];
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            if let Some(a) = i.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                out.push(a.ip());
            }
        }
    }
    out
}

/// Resolves, checks and connects, then reads the server's greeting (up to its final line).
/// Why the proxy could not reach the server a client named; its `Display` is the reply the
/// client gets (`421`, or `530` for a destination the access rules refuse).
#[derive(Debug)]
pub(super) enum ConnectError {
    UnknownHost(String),
    NoIpv4(String),
    NotAllowed { host: String, why: Denied },
    Refused { host: String, addr: SocketAddrV4 },
    TimedOut { host: String, addr: SocketAddrV4 },
    Io { host: String, addr: SocketAddrV4, source: io::Error },
    ClosedBeforeGreeting { host: String, addr: SocketAddrV4 },
    NoGreeting { host: String, addr: SocketAddrV4, within: Duration },
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConnectError::UnknownHost(h) => write!(f, "421 Unknown host {h}"),
            ConnectError::NoIpv4(h) => write!(f, "421 Host {h} has no IPv4 address"),
            ConnectError::NotAllowed { host, why } => write!(f, "530 Not allowed to connect to {host}: {why}"),
            ConnectError::Refused { host, addr } => write!(f, "421 Connection to {host} ({addr}) refused"),
            ConnectError::TimedOut { host, addr } => write!(f, "421 Connection to {host} ({addr}) timed out"),
            ConnectError::Io { host, addr, source } => write!(f, "421 Cannot connect to {host} ({addr}): {source}"),
            ConnectError::ClosedBeforeGreeting { host, addr } => {
                write!(f, "421 {host} ({addr}) closed the connection before greeting")
            }
            ConnectError::NoGreeting { host, addr, within } => write!(f, "421 {host} ({addr}) sent no greeting within {within:?}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(super) fn connect(target: &Target, access: &Access, timeout: Duration) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let addrs: Vec<SocketAddrV4> = match (target.host.as_str(), target.port).to_socket_addrs() {
        Ok(it) => it
            .filter_map(|a| match a {
                std::net::SocketAddr::V4(a) => Some(a),
                _ => None,
            })
            .collect(),
        Err(_) => return Err(ConnectError::UnknownHost(target.host.clone())),
    };
    if addrs.is_empty() {
        return Err(ConnectError::NoIpv4(target.host.clone()));
    }
    let local = local_addrs();
    let mut refusal = None;
    let addr = addrs.iter().copied().find(|a| match access.dest(*a.ip(), &local) {
        Ok(()) => true,
        Err(e) => {
            refusal.get_or_insert(e);
            false
        }
    });
    let Some(addr) = addr else {
        return Err(ConnectError::NotAllowed { host: target.host.clone(), why: refusal.unwrap_or(Denied::NotAHost(*addrs[0].ip())) });
    };
    let s = match TcpStream::connect_timeout(&addr.into(), timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(ConnectError::Refused { host: target.host.clone(), addr }),
        Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            return Err(ConnectError::TimedOut { host: target.host.clone(), addr })
        }
        Err(source) => return Err(ConnectError::Io { host: target.host.clone(), addr, source }),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_nodelay(true);
    let mut greeting = Vec::new();
    let mut buf = [0u8; 2048];
    let mut r = &s;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Err(ConnectError::ClosedBeforeGreeting { host: target.host.clone(), addr }),
            Ok(n) => greeting.extend_from_slice(&buf[..n]),
            Err(_) => return Err(ConnectError::NoGreeting { host: target.host.clone(), addr, within: timeout }),
        }
        if final_reply(&greeting) || greeting.len() > 16 << 10 {
            break;
        }
    }
    let _ = s.set_read_timeout(None);
    Ok((s, greeting))
}

/// Whether `buf` ends with a reply's final line (`ddd text\r\n`).
pub(super) fn final_reply(buf: &[u8]) -> bool {
    if buf.last() != Some(&b'\n') {
        return false;
    }
    let body = &buf[..buf.len() - 1];
    let start = body.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    let l = &body[start..];
    l.len() >= 4 && l[..3].iter().all(u8::is_ascii_digit) && l[3] == b' '
}
