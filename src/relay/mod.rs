//! The data path: one relay per announced data connection.
//!
//! [`Relay`] implements [`DataPlane`]: for each PASV/EPSV/PORT/EPRT the helper allows, it opens a
//! *transparent* listener (IP_TRANSPARENT) on exactly the endpoint the peer will connect to —
//! the server's own address and port in passive mode, the client's address as the server sees it
//! in active mode — before the announcing line is released. The `-m socket --transparent` rule
//! from `crate::filter` steers that connection to the listener. The relay accepts one
//! connection, only from the peer it was opened for, within a timeout; then connects to the real
//! peer, again transparently (from the client's address in passive mode, the server's in active
//! mode) so each side sees the addresses it would see without ftpgate; then splices both ways.
//!
//! Each data connection runs on its own threads, so a slow client never stalls other sessions
//! or the control path.

pub mod splice;

use core::net::{Ipv4Addr, SocketAddrV4};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::log;
use crate::proto::{DataPlane, DataRequest, Mode};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// How long an opened data port waits for its peer.
    pub accept_timeout: Duration,
    /// A data connection with no progress for this long is closed.
    pub idle_timeout: Duration,
}

/// Finds the client's address as the server sees it (conntrack's NAT); `None` = not translated.
pub type NatLookup = fn(SocketAddrV4, SocketAddrV4) -> Option<Ipv4Addr>;

pub struct Relay {
    cfg: RelayConfig,
    nat: NatLookup,
}

impl Relay {
    pub fn new(cfg: RelayConfig, nat: NatLookup) -> Relay {
        Relay { cfg, nat }
    }
}

impl DataPlane for Relay {
    fn open(&mut self, req: &DataRequest) -> Result<SocketAddrV4, String> {
        let (listen_ip, port, peer, src) = match req.mode {
            Mode::Passive => (*req.server.ip(), req.target.port(), *req.client.ip(), *req.client.ip()),
            Mode::Active => {
                let seen = (self.nat)(req.client, req.server).unwrap_or(*req.client.ip());
                let port = if seen == *req.client.ip() { req.target.port() } else { 0 };
                (seen, port, *req.server.ip(), *req.server.ip())
            }
        };
        let listener = transparent_listener(SocketAddrV4::new(listen_ip, port))
            .or_else(|_| transparent_listener(SocketAddrV4::new(listen_ip, 0)))
            .map_err(|e| format!("cannot listen on {listen_ip}: {e}"))?;
        let announce = match listener.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            _ => return Err("listener has no IPv4 address".into()),
        };
        let job = Job { req: req.clone(), peer, src, listener, cfg: self.cfg.clone() };
        std::thread::Builder::new()
            .name("ftpgate-data".into())
            .spawn(move || job.run())
            .map_err(|e| format!("cannot start relay: {e}"))?;
        Ok(announce)
    }
}

struct Job {
    req: DataRequest,
    /// The only address allowed to connect.
    peer: Ipv4Addr,
    /// Source address for the onward connection.
    src: Ipv4Addr,
    listener: TcpListener,
    cfg: RelayConfig,
}

impl Job {
    fn name(&self) -> String {
        let m = match self.req.mode {
            Mode::Passive => "passive",
            Mode::Active => "active",
        };
        format!("data {m} {} <-> {}", self.req.client.ip(), self.req.target)
    }

    fn run(self) {
        let name = self.name();
        let started = Instant::now();
        let deadline = started + self.cfg.accept_timeout;
        let (inbound, from) = loop {
            match accept_until(&self.listener, deadline) {
                Ok(Some((s, std::net::SocketAddr::V4(a)))) if *a.ip() == self.peer => break (s, a),
                Ok(Some((_, a))) => log!("{name}: refused connection from {a} (expected {})", self.peer),
                Ok(None) => return log!("{name}: no connection from {} within {:?}", self.peer, self.cfg.accept_timeout),
                Err(e) => return log!("{name}: accept failed: {e}"),
            }
        };
        drop(self.listener); // one connection per announced port
        let avoid = from.port();
        let outbound = match connect_from(self.src, avoid, self.req.target, self.cfg.accept_timeout) {
            Ok(s) => s,
            Err(e) => return log!("{name}: cannot connect to {}: {e}", self.req.target),
        };
        for s in [&inbound, &outbound] {
            let _ = s.set_read_timeout(Some(self.cfg.idle_timeout));
            let _ = s.set_nodelay(true);
        }
        // server -> client is "down"
        let (srv, cli) = match self.req.mode {
            Mode::Passive => (outbound, inbound),
            Mode::Active => (inbound, outbound),
        };
        let (srv2, cli2) = match (srv.try_clone(), cli.try_clone()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return log!("{name}: cannot clone sockets"),
        };
        let up = std::thread::spawn(move || splice::pump(&cli2, &srv2));
        let down = splice::pump(&srv, &cli);
        let up = up.join().unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
        let secs = started.elapsed().as_secs_f64();
        match (&down, &up) {
            (Ok(d), Ok(u)) => log!("{name}: {d} bytes to client, {u} bytes to server, {secs:.3} s, ok"),
            _ => log!(
                "{name}: failed after {secs:.3} s: to client {}, to server {}",
                show(&down),
                show(&up)
            ),
        }
    }
}

fn show(r: &io::Result<u64>) -> String {
    match r {
        Ok(n) => format!("{n} bytes"),
        Err(e) => e.to_string(),
    }
}

fn accept_until(l: &TcpListener, deadline: Instant) -> io::Result<Option<(TcpStream, std::net::SocketAddr)>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            let (s, a) = l.accept()?;
            s.set_nonblocking(false)?;
            return Ok(Some((s, a)));
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A TCP socket with IP_TRANSPARENT and SO_REUSEADDR, bound to `at` (which need not be local).
fn transparent_socket(at: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a fd we own; pointers refer to live locals.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))?;
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let sz = core::mem::size_of::<libc::c_int>() as u32;
        let p = &one as *const _ as *const libc::c_void;
        check(libc::setsockopt(fd.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, p, sz))?;
        check(libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, p, sz))?;
        let sa = sockaddr(at);
        check(libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            core::mem::size_of::<libc::sockaddr_in>() as u32,
        ))?;
        Ok(fd)
    }
}

pub fn transparent_listener(at: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = transparent_socket(at)?;
    // SAFETY: listen on our own bound socket.
    check(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
    Ok(TcpListener::from(fd))
}

/// Connects to `to` from `src` (any port but `avoid`, so the onward connection never has the
/// same conntrack tuple as the intercepted one), within `timeout`.
fn connect_from(src: Ipv4Addr, avoid: u16, to: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let fd = loop {
        let fd = transparent_socket(SocketAddrV4::new(src, 0))?;
        let s = local_port(&fd)?;
        if s != avoid {
            break fd;
        }
    };
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    let sa = sockaddr(to);
    // SAFETY: connect on our own socket with a live sockaddr.
    let r = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            core::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: getsockname into a sockaddr_in of the right size.
    unsafe {
        let mut sa: libc::sockaddr_in = core::mem::zeroed();
        let mut len = core::mem::size_of::<libc::sockaddr_in>() as u32;
        check(libc::getsockname(fd.as_raw_fd(), &mut sa as *mut _ as *mut libc::sockaddr, &mut len))?;
        Ok(u16::from_be(sa.sin_port))
    }
}
