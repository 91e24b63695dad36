//! Connecting to the server a proxy login names: resolution, the access rules (never the
//! gateway itself), connect within a timeout, and the server's greeting.

use super::*;

/// The gateway's own addresses, of both families: never a destination.
pub(super) fn local_addrs() -> Vec<IpAddr> {
    let mut out = vec![IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), IpAddr::V6(core::net::Ipv6Addr::LOCALHOST)];
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            let Some(a) = i.address.as_ref() else { continue };
            if let Some(a) = a.as_sockaddr_in() {
                out.push(IpAddr::V4(a.ip()));
            } else if let Some(a) = a.as_sockaddr_in6() {
                out.push(IpAddr::V6(a.ip()));
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
    NoAddress(String),
    NotAllowed { host: String, why: Denied },
    Refused { host: String, addr: SocketAddr },
    TimedOut { host: String, addr: SocketAddr },
    Io { host: String, addr: SocketAddr, source: io::Error },
    ClosedBeforeGreeting { host: String, addr: SocketAddr },
    NoGreeting { host: String, addr: SocketAddr, within: Duration },
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConnectError::UnknownHost(h) => write!(f, "421 Unknown host {h}"),
            ConnectError::NoAddress(h) => write!(f, "421 Host {h} has no address"),
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
    // every address of the name (A and AAAA, in the resolver's order of preference)
    let addrs: Vec<SocketAddr> = match (target.host.as_str(), target.port).to_socket_addrs() {
        Ok(it) => it.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).collect(),
        Err(_) => return Err(ConnectError::UnknownHost(target.host.clone())),
    };
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress(target.host.clone()));
    }
    let local = local_addrs();
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| match access.dest(a.ip(), &local) {
            Ok(()) => true,
            Err(e) => {
                refusal.get_or_insert(e);
                false
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err(ConnectError::NotAllowed { host: target.host.clone(), why: refusal.unwrap_or(Denied::NotAHost(addrs[0].ip())) });
    }
    // the first address that connects wins (a host with both families whose IPv6 route is
    // broken is still reached); the log says which was used
    let mut last = None;
    let mut connected = None;
    for addr in allowed {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                connected = Some((s, addr));
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => last = Some(ConnectError::Refused { host: target.host.clone(), addr }),
            Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
                last = Some(ConnectError::TimedOut { host: target.host.clone(), addr })
            }
            Err(source) => last = Some(ConnectError::Io { host: target.host.clone(), addr, source }),
        }
    }
    let Some((s, addr)) = connected else { return Err(last.expect("at least one address was tried")) };
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
