//! The relay's sockets: transparent listeners on exact endpoints (IP_TRANSPARENT), onward
//! connections from a chosen source address, port reservations for announcements.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

/// A socket bound to `ip` (on `port` if free, else any): reserves the port for an announcement.
/// Transparent, as the relay's listeners are, so that if it listens later (a deferred endpoint
/// the relay takes) the rules deliver to it; without SO_REUSEADDR, so no second reservation
/// can share the port.
pub(super) fn reserve_port(ip: Ipv4Addr, port: u16) -> io::Result<OwnedFd> {
    let try_bind = |port: u16| -> io::Result<OwnedFd> {
        let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::setsockopt(&fd, sockopt::IpTransparent, &true)?;
        socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(ip, port)))?;
        Ok(fd)
    };
    try_bind(port).or_else(|_| try_bind(0))
}

/// A TCP socket with IP_TRANSPARENT and SO_REUSEADDR, bound to `at` (which need not be local).
pub(super) fn transparent_socket(at: SocketAddrV4) -> io::Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::IpTransparent, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(at))?;
    Ok(fd)
}

/// A data port takes one connection (the backlog only has to hold a racing thief's too); an
/// explicit proxy listener needs a full one (`backlog`), or bursts of clients wait for SYN-ACK
/// retransmissions.
pub fn transparent_listener(at: SocketAddrV4, backlog: i32) -> io::Result<TcpListener> {
    let fd = transparent_socket(at)?;
    socket::listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// Connects to `to` from `src` (any port but `avoid`, so the onward connection never has the
/// same conntrack tuple as the intercepted one), within `timeout`.
pub(super) fn connect_from(src: Ipv4Addr, avoid: u16, to: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let fd = loop {
        let fd = transparent_socket(SocketAddrV4::new(src, 0))?;
        let s = local_port(&fd)?;
        if s != avoid {
            break fd;
        }
    };
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    match socket::connect(stream.as_raw_fd(), &SockaddrIn::from(to)) {
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
    let sa: SockaddrIn = socket::getsockname(fd.as_raw_fd())?;
    Ok(sa.port())
}
