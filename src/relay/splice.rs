//! Zero-copy byte moving: socket → pipe → socket with `splice(2)`.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pipe used as the kernel-side buffer between two sockets; closed on drop.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

const PIPE_SIZE: i32 = 1 << 20;
const CHUNK: usize = 1 << 20;

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and owned from here on.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer round trips per MB; failure just keeps the default.
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { r, w })
    }
}

fn splice(from: i32, to: i32, len: usize, more: bool) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | if more { libc::SPLICE_F_MORE } else { 0 };
    loop {
        // SAFETY: splice on valid fds with null offsets (sockets and pipes).
        let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves bytes from `src` to `dst` until EOF, then half-closes `dst` (propagating the peer's
/// FIN). Returns the bytes moved.
pub fn pump(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    loop {
        let n = splice(src.as_raw_fd(), pipe.w.as_raw_fd(), CHUNK, false)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), left, false)?;
            if m == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped reading"));
            }
            left -= m;
        }
        total += n as u64;
    }
    let _ = dst.shutdown(Shutdown::Write);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn pump_moves_bytes_and_propagates_eof() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut d, _) = l.accept().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let w = {
            let data = data.clone();
            std::thread::spawn(move || {
                a.write_all(&data).unwrap();
                a.shutdown(Shutdown::Write).unwrap();
            })
        };
        let p = std::thread::spawn(move || pump(&b, &c).unwrap());
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert_eq!(p.join().unwrap(), data.len() as u64);
        assert!(got == data);
    }
}
