//! Netfilter netlink (NETLINK_NETFILTER): attribute building and parsing, and one socket that
//! sends a request and reads the kernel's answers. Used by [`crate::conntrack`] (ctnetlink) and
//! [`crate::nft`] (nf_tables set elements).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};

pub const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;

/// Appends one attribute (padded to 4 bytes).
pub fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// Appends one nested attribute whose contents `f` writes.
pub fn nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    attr(buf, ty | NLA_F_NESTED, &inner);
}

/// Iterates netlink attributes: (type without flags, payload).
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    core::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, data))
    })
}

pub fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// One netlink message: header, the 4-byte nfgenmsg (`family`, version 0, `res_id`) and `body`.
pub fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.push(family);
    msg.push(0);
    msg.extend_from_slice(&res_id.to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// Splits a buffer of netlink messages into (type, seq, payload after the 16-byte header).
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    core::iter::from_fn(move || {
        if b.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(b[..4].try_into().ok()?) as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes(b[8..12].try_into().ok()?);
        let payload = &b[16..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, seq, payload))
    })
}

/// The errno of an NLMSG_ERROR payload (0 = an acknowledgement).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    Some(-i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// A NETLINK_NETFILTER socket with a receive timeout.
pub struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Socket {
    pub fn open(timeout: Duration) -> io::Result<Socket> {
        let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)?;
        let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)?;
        Ok(Socket { fd, buf: vec![0u8; 16384] })
    }

    /// Sends `req` (one or more messages) to the kernel.
    pub fn send(&self, req: &[u8]) -> io::Result<()> {
        socket::sendto(self.fd.as_raw_fd(), req, &NetlinkAddr::new(0, 0), socket::MsgFlags::empty())?;
        Ok(())
    }

    /// Receives one datagram of answers.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        let n = socket::recv(self.fd.as_raw_fd(), &mut self.buf, socket::MsgFlags::empty())?;
        Ok(&self.buf[..n])
    }

    /// Sends `req` and waits for the acknowledgement of the message numbered `last_seq`; the
    /// first error the kernel reports on the way is returned (with the number of its message).
    pub fn request_acked(&mut self, req: &[u8], last_seq: u32) -> Result<(), (u32, io::Error)> {
        self.send(req).map_err(|e| (0, e))?;
        let mut first_err = None;
        loop {
            let got = self.recv().map_err(|e| (0, e))?;
            for (ty, seq, payload) in messages(got) {
                if ty == NLMSG_ERROR {
                    match error_code(payload) {
                        Some(0) | None => {}
                        Some(e) => {
                            first_err.get_or_insert((seq, io::Error::from_raw_os_error(e)));
                        }
                    }
                    if seq == last_seq {
                        return first_err.map_or(Ok(()), Err);
                    }
                } else if ty == NLMSG_DONE && seq == last_seq {
                    return first_err.map_or(Ok(()), Err);
                }
            }
        }
    }
}

/// The file descriptors of this process's NETLINK_NETFILTER sockets.
pub fn netfilter_sockets() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return out };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let get = |opt| {
            let mut v: libc::c_int = 0;
            let mut len = core::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into a live int; fails harmlessly on non-sockets.
            let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
            (r == 0).then_some(v)
        };
        if get(libc::SO_DOMAIN) == Some(libc::AF_NETLINK) && get(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER) {
            out.push(fd);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut body = Vec::new();
        attr(&mut body, 1, b"ftpgate\0");
        nested(&mut body, 3, |b| attr(b, 1, &[1, 2, 3]));
        let mut two = message(0x0a0c, 5, 7, 2, 0, &body);
        two.extend(message(0x10, 1, 8, 0, 10, &[]));
        let got: Vec<_> = messages(&two).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1), (0x0a0c, 7));
        let attrs_of_first = &got[0].2[4..];
        assert_eq!(find(attrs_of_first, 1), Some(&b"ftpgate\0"[..]));
        assert_eq!(find(find(attrs_of_first, 3).unwrap(), 1), Some(&[1u8, 2, 3][..]));
        assert_eq!(&got[1].2[2..4], &10u16.to_be_bytes());
        assert_eq!(error_code(&(-17i32).to_ne_bytes()), Some(17));
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert_eq!(messages(&[0xff; 40]).count(), 0);
        assert_eq!(attrs(&[3, 0, 1, 0]).count(), 0);
    }
}
