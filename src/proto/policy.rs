//! Which data endpoints ftpgate agrees to set up (RFC 2577; Linux `nf_conntrack_ftp` without
//! `loose`; OpenBSD ftp-proxy's `allow_data_connection`).

use core::net::{Ipv4Addr, SocketAddrV4};

/// Ports below this are never accepted in PORT/EPRT (they would let a client aim the server at
/// well-known services).
pub const MIN_ACTIVE_PORT: u16 = 1024;

/// Why a PORT/EPRT is refused as an FTP bounce attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounce {
    /// It names a host other than the control connection's client.
    ThirdParty { named: Ipv4Addr, client: Ipv4Addr },
    /// It names a privileged port.
    LowPort(u16),
}

impl core::fmt::Display for Bounce {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Bounce::ThirdParty { named, client } => write!(f, "data address {named} is not the client's {client}"),
            Bounce::LowPort(p) => write!(f, "data port {p} is below {MIN_ACTIVE_PORT}"),
        }
    }
}

impl std::error::Error for Bounce {}

/// A PORT/EPRT must name the control connection's own client and an unprivileged port;
/// anything else is an FTP bounce attempt.
pub fn check_active(client: Ipv4Addr, named: SocketAddrV4) -> Result<(), Bounce> {
    if *named.ip() != client {
        return Err(Bounce::ThirdParty { named: *named.ip(), client });
    }
    if named.port() < MIN_ACTIVE_PORT {
        return Err(Bounce::LowPort(named.port()));
    }
    Ok(())
}

/// Where a passive data connection may go: only to the control connection's server, whatever
/// address the 227 names. Returns the target and, when the reply named another host, a note.
pub fn passive_target(server: Ipv4Addr, named_ip: Option<Ipv4Addr>, port: u16) -> (SocketAddrV4, Option<String>) {
    let target = SocketAddrV4::new(server, port);
    match named_ip {
        Some(ip) if ip != server => (target, Some(format!("server named {ip} in its reply; using the control server {server}"))),
        _ => (target, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_and_low_ports_refused() {
        let c = Ipv4Addr::new(10, 0, 1, 2);
        assert!(check_active(c, "10.0.1.2:40000".parse().unwrap()).is_ok());
        let other = Ipv4Addr::new(10, 0, 1, 3);
        assert_eq!(check_active(c, "10.0.1.3:40000".parse().unwrap()), Err(Bounce::ThirdParty { named: other, client: c }));
        assert_eq!(check_active(c, "10.0.1.2:25".parse().unwrap()), Err(Bounce::LowPort(25)));
    }

    #[test]
    fn passive_never_follows_third_party() {
        let s = Ipv4Addr::new(10, 0, 2, 2);
        let (t, note) = passive_target(s, Some(Ipv4Addr::new(192, 0, 2, 9)), 5000);
        assert_eq!(t, "10.0.2.2:5000".parse().unwrap());
        assert!(note.is_some());
        assert_eq!(passive_target(s, None, 5000).1, None);
    }
}
