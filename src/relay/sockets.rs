//! The relay's sockets: transparent listeners on exact endpoints (IP_TRANSPARENT), onward
//! connections from a chosen source address, port reservations for announcements. Either
//! family: IPv6 sockets are made transparent with IPV6_TRANSPARENT.

use core::net::{IpAddr, SocketAddr};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};

/// A socket bound to `ip` (on `port` if free, else any): reserves the port for an announcement.
/// Transparent, as the relay's listeners are, so that if it listens later (a deferred endpoint
/// the relay takes) the rules deliver to it; without SO_REUSEADDR, so no second reservation
/// can share the port.
pub(super) fn reserve_port(ip: IpAddr, port: u16) -> io::Result<OwnedFd> {
    let try_bind = |port: u16| -> io::Result<OwnedFd> {
        let at = SocketAddr::new(ip, port);
        let fd = transparent_tcp(at)?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(at))?;
        Ok(fd)
    };
    try_bind(port).or_else(|_| try_bind(0))
}

/// A TCP socket of `at`'s family, transparent (it may bind an address that is not local).
fn transparent_tcp(at: SocketAddr) -> io::Result<OwnedFd> {
    let family = if at.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if at.is_ipv4() {
        socket::setsockopt(&fd, sockopt::IpTransparent, &true)?;
    } else {
        set_ipv6_transparent(fd.as_raw_fd())?;
    }
    Ok(fd)
}

/// IPV6_TRANSPARENT, which nix has no option for.
fn set_ipv6_transparent(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt on a live socket with a live int of the size given.
    if unsafe { libc::setsockopt(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, (&one as *const libc::c_int).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP socket with IP_TRANSPARENT (IPV6_TRANSPARENT) and SO_REUSEADDR, bound to `at` (which
/// need not be local).
pub(super) fn transparent_socket(at: impl Into<SocketAddr>) -> io::Result<OwnedFd> {
    let at = at.into();
    let fd = transparent_tcp(at)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(at))?;
    Ok(fd)
}

/// A data port takes one connection (the backlog only has to hold a racing thief's too); an
/// explicit proxy listener needs a full one (`backlog`), or bursts of clients wait for SYN-ACK
/// retransmissions.
pub fn transparent_listener(at: impl Into<SocketAddr>, backlog: i32) -> io::Result<TcpListener> {
    let fd = transparent_socket(at)?;
    socket::listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// Connects to `to` from `src` (any port but `avoid`, so the onward connection never has the
/// same conntrack tuple as the intercepted one), within `timeout`.
pub(super) fn connect_from(src: impl Into<IpAddr>, avoid: u16, to: impl Into<SocketAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let (src, to) = (src.into(), to.into());
    let fd = loop {
        let fd = transparent_socket(SocketAddr::new(src, 0))?;
        let s = local_port(&fd)?;
        if s != avoid {
            break fd;
        }
    };
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    match socket::connect(stream.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => {
            let mut pfd = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            if poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX))? == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e.into()),
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

pub(super) fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    let sa: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    sa.as_sockaddr_in().map(|a| a.port()).or_else(|| sa.as_sockaddr_in6().map(|a| a.port())).ok_or_else(|| io::Error::other("not an IP socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transparent sockets need CAP_NET_ADMIN; without it (a developer's `cargo test`) the
    /// test says so and checks nothing.
    #[test]
    fn transparent_listeners_and_connects_on_both_families() {
        for host in ["127.0.0.1", "::1"] {
            let ip: IpAddr = host.parse().unwrap();
            let l = match transparent_listener(SocketAddr::new(ip, 0), 4) {
                Ok(l) => l,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => return eprintln!("skipped: {e} (needs CAP_NET_ADMIN)"),
                Err(e) => panic!("{host}: {e}"),
            };
            let at = l.local_addr().unwrap();
            assert_eq!(at.ip(), ip);
            let c = connect_from(ip, 0, at, Duration::from_secs(2)).unwrap();
            let (_, peer) = l.accept().unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            let r = reserve_port(ip, 0).unwrap();
            assert_ne!(local_port(&r).unwrap(), 0);
        }
    }
}
