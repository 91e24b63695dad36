//! Which data endpoints ftpgate agrees to set up (RFC 2577; Linux `nf_conntrack_ftp` without
//! `loose`; OpenBSD ftp-proxy's `allow_data_connection`). For either family: the addresses are
//! compared as they are, so an endpoint of the other family (an `EPRT |1|` on an IPv6 session,
//! an IPv4-mapped `::ffff:a.b.c.d`) is a third party.

use core::net::IpAddr;

/// Ports below this are never accepted in PORT/EPRT (they would let a client aim the server at
/// well-known services).
pub const MIN_ACTIVE_PORT: u16 = 1024;

/// Why a PORT/EPRT is refused as an FTP bounce attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounce {
    /// It names a host other than the control connection's client.
    ThirdParty { named: IpAddr, client: IpAddr },
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
pub fn check_active<A: Into<IpAddr> + Copy + PartialEq>(client: A, named: A, port: u16) -> Result<(), Bounce> {
    if named != client {
        return Err(Bounce::ThirdParty { named: named.into(), client: client.into() });
    }
    if port < MIN_ACTIVE_PORT {
        return Err(Bounce::LowPort(port));
    }
    Ok(())
}

/// Where a passive data connection may go: only to the control connection's server, whatever
/// address the 227 names. Returns the address to connect to and, when the reply named another
/// host, a note.
pub fn passive_target<A: core::fmt::Display + Copy + PartialEq>(server: A, named_ip: Option<A>) -> (A, Option<String>) {
    match named_ip {
        Some(ip) if ip != server => (server, Some(format!("server named {ip} in its reply; using the control server {server}"))),
        _ => (server, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn bounce_and_low_ports_refused() {
        let c = Ipv4Addr::new(10, 0, 1, 2);
        assert!(check_active(c, c, 40000).is_ok());
        let other = Ipv4Addr::new(10, 0, 1, 3);
        assert_eq!(check_active(c, other, 40000), Err(Bounce::ThirdParty { named: other.into(), client: c.into() }));
        assert_eq!(check_active(c, c, 25), Err(Bounce::LowPort(25)));
    }

    #[test]
    fn ipv6_and_mixed_families() {
        let c: IpAddr = "fd00:1::2".parse().unwrap();
        assert!(check_active(c, c, 40000).is_ok());
        assert!(check_active(c, "fd00:1::3".parse().unwrap(), 40000).is_err());
        // the other family, or the client's IPv4 address mapped into IPv6: a third party
        assert!(check_active(c, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)), 40000).is_err());
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2));
        assert!(check_active(v4, IpAddr::V6(Ipv4Addr::new(10, 0, 1, 2).to_ipv6_mapped()), 40000).is_err());
        let s: IpAddr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2).into();
        assert_eq!(passive_target(s, Some(s)), (s, None));
        assert!(passive_target(s, Some(v4)).1.is_some());
    }

    #[test]
    fn passive_never_follows_third_party() {
        let s = Ipv4Addr::new(10, 0, 2, 2);
        let (t, note) = passive_target(s, Some(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(t, s);
        assert!(note.is_some());
        assert_eq!(passive_target(s, None).1, None);
    }
}
