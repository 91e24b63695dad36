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

/// The ports ftpgate chooses itself (an endpoint it announces on an address of its own: a
/// rewritten `PORT`/`EPRT` behind NAT, the explicit proxy's and a NAT64 session's endpoints):
/// the kernel's choice, or within `--data-ports LOW-HIGH`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPorts(pub Option<(u16, u16)>);

impl DataPorts {
    /// `port` if it may be used (no range, or within it), to be tried first.
    pub(super) fn prefer(&self, port: u16) -> Option<u16> {
        match self.0 {
            Some((lo, hi)) if !(lo..=hi).contains(&port) => None,
            _ => (port != 0).then_some(port),
        }
    }

    /// `f` on port 0 (the kernel chooses), or on the range's ports in turn (from a rotating
    /// start, so consecutive transfers do not race for one port) until one binds; every port
    /// taken is `AddrInUse`, which the session answers `425`.
    pub(super) fn bind<T>(&self, mut f: impl FnMut(u16) -> io::Result<T>) -> io::Result<T> {
        let Some((lo, hi)) = self.0 else { return f(0) };
        static NEXT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
        let n = u32::from(hi - lo) + 1;
        let start = NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(t) = f(lo + ((start + i) % n) as u16) {
                return Ok(t);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, format!("every port of --data-ports {lo}-{hi} is in use")))
    }
}

/// A socket bound to `ip` (on `port` if free, else one `ports` gives): reserves the port for an announcement.
/// Transparent, as the relay's listeners are, so that if it listens later (a deferred endpoint
/// the relay takes) the rules deliver to it; without SO_REUSEADDR, so no second reservation
/// can share the port.
pub(super) fn reserve_port(ip: IpAddr, port: Option<u16>, ports: &DataPorts) -> io::Result<OwnedFd> {
    let try_bind = |port: u16| -> io::Result<OwnedFd> {
        let at = SocketAddr::new(ip, port);
        let fd = transparent_tcp(at)?;
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(at))?;
        Ok(fd)
    };
    match port {
        Some(p) => try_bind(p).or_else(|_| ports.bind(try_bind)),
        None => ports.bind(try_bind),
    }
}

/// The smoothed round-trip time of a connected socket (`TCP_INFO`; nix has no wrapper for it).
fn rtt(s: &TcpStream) -> Option<Duration> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it
    let mut info: libc::tcp_info = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) };
    (r == 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// The receive buffer for a connection read at `rate` bytes a second: two round trips' worth
/// at that rate (enough to keep the paced rate over the peer's path), at least 16 KiB, at most
/// 4 MiB. Without it the kernel lets the sender run seconds ahead of the pace, and the
/// server's final reply arrives that long before the client has its bytes: the replies behind
/// it (a NOOP's during the transfer) would wait while ftpgate holds it.
pub(super) fn pace_buffer(rate: u64, rtt: Duration) -> usize {
    let bdp = u128::from(rate) * rtt.as_micros() * 2 / 1_000_000;
    (bdp as usize).clamp(16 << 10, 4 << 20)
}

/// Limits the receive buffer of `s`, read at `rate`, to [`pace_buffer`].
pub(super) fn limit_receive_buffer(s: &TcpStream, rate: u64) {
    let size = pace_buffer(rate, rtt(s).unwrap_or(Duration::from_millis(50)));
    let _ = socket::setsockopt(s, sockopt::RcvBuf, &size);
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
            let r = reserve_port(ip, None, &DataPorts::default()).unwrap();
            assert_ne!(local_port(&r).unwrap(), 0);
        }
    }

    #[test]
    fn a_paced_connection_buffers_two_round_trips_at_its_rate() {
        assert_eq!(pace_buffer(8 << 20, Duration::from_micros(50)), 16 << 10);
        assert_eq!(pace_buffer(8 << 20, Duration::from_millis(40)), 671_088);
        assert_eq!(pace_buffer(1 << 30, Duration::from_millis(100)), 4 << 20);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(rtt(&c).is_some());
        limit_receive_buffer(&c, 8 << 20);
        // the kernel doubles what it is given
        assert_eq!(socket::getsockopt(&c, sockopt::RcvBuf).unwrap(), 2 * (16 << 10));
    }

    #[test]
    fn data_ports_bind_within_the_range_until_it_is_full() {
        let ports = DataPorts(Some((47311, 47312)));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let listen = |p: u16| transparent_listener(SocketAddr::new(ip, p), 4);
        let a = match ports.bind(listen) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return eprintln!("skipped: {e} (needs CAP_NET_ADMIN)"),
            Err(e) => panic!("{e}"),
        };
        let b = ports.bind(listen).unwrap();
        let mut got = [a.local_addr().unwrap().port(), b.local_addr().unwrap().port()];
        got.sort();
        assert_eq!(got, [47311, 47312]);
        assert_eq!(ports.bind(listen).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        // a reservation takes the port it prefers only within the range
        assert_eq!(ports.prefer(40000), None);
        assert_eq!(ports.prefer(47311), Some(47311));
        assert_eq!(DataPorts::default().prefer(40000), Some(40000));
        drop(a);
        let r = reserve_port(ip, ports.prefer(40000), &ports).unwrap();
        assert!((47311..=47312).contains(&local_port(&r).unwrap()));
    }
}
