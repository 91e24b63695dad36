//! Zero-copy byte moving: socket → pipe → socket with `splice(2)`.

use std::fs::File;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::pace::Pacer;

/// A pipe used as the kernel-side buffer between two sockets; closed on drop.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

const PIPE_SIZE: i32 = 1 << 20;
const CHUNK: usize = 1 << 20;

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // A bigger pipe means fewer round trips per MB; failure just keeps the default.
        let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Pipe { r, w })
    }
}

/// Retries a call that an interrupted system call cut short.
fn retrying(mut f: impl FnMut() -> nix::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

fn splice(from: BorrowedFd, to: BorrowedFd, len: usize, more: bool) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | if more { SpliceFFlags::SPLICE_F_MORE } else { SpliceFFlags::empty() };
    retrying(|| nix::fcntl::splice(from, None, to, None, len, flags))
}

fn tee(from: BorrowedFd, to: BorrowedFd, len: usize) -> io::Result<usize> {
    retrying(|| nix::fcntl::tee(from, to, len, SpliceFFlags::empty()))
}

/// Moves exactly `n` bytes out of a pipe into `to`.
fn drain(pipe: &Pipe, to: BorrowedFd, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let m = splice(pipe.r.as_fd(), to, n, false)?;
        if m == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped reading"));
        }
        n -= m;
    }
    Ok(())
}

/// Copy pipes in rotation between the relay and the cache writer; how far the writer may lag
/// is bounded by bytes (`buffer` of [`pump_tee`]), and by these pipes only when chunks are small.
const COPY_PIPES: usize = 64;

/// Why a download's copy into the cache stopped (the client's transfer goes on regardless).
#[derive(Debug)]
pub enum CopyError {
    /// The cache disk fell more than this many bytes behind the client.
    TooSlow { buffer: usize },
    /// Writing the file failed (e.g. the disk is full).
    Write(io::Error),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::TooSlow { buffer } => write!(f, "cache disk too slow (the copy fell {buffer} bytes behind the client)"),
            CopyError::Write(e) => write!(f, "cannot write the cache ({e})"),
        }
    }
}

/// Like [`pump`], and also copies every byte into `file`: `tee(2)` into an empty copy pipe (one
/// of `COPY_PIPES`, each as large as the relay's pipe, so a tee always fits whole), which a
/// writer thread `splice(2)`s into the file while the relay goes on — no userspace copy, and the
/// disk write overlaps the network. The relay never waits for the disk: when the copy would fall
/// more than `buffer` bytes behind what the client has been sent, or a write fails (disk full),
/// the copy stops and the transfer goes on. Returns the bytes moved and whether the copy is
/// complete.
pub fn pump_tee(
    src: &TcpStream,
    dst: &TcpStream,
    file: &File,
    moved: &AtomicU64,
    buffer: usize,
    pace: &Pacer,
) -> io::Result<(u64, Result<(), CopyError>)> {
    use std::sync::mpsc::{channel, sync_channel, TryRecvError};
    let pipe = Pipe::new()?;
    let (free_tx, free_rx) = channel::<Pipe>();
    for _ in 0..COPY_PIPES {
        free_tx.send(Pipe::new()?).map_err(|_| io::Error::other("copy pipes"))?;
    }
    let (work_tx, work_rx) = sync_channel::<(Pipe, usize)>(COPY_PIPES);
    let behind = std::sync::Arc::new(AtomicU64::new(0));
    let given_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out = file.try_clone()?;
    let (lag, quit) = (behind.clone(), given_up.clone());
    let writer = std::thread::Builder::new().name("ftpgate-cache-write".into()).spawn(move || -> io::Result<()> {
        // below the relay, so that on a shared core the relay always runs first
        crate::sched::step_below();
        // on an error it returns at once: dropping both channel ends tells the relay
        while let Ok((p, n)) = work_rx.recv() {
            if quit.load(Relaxed) {
                break; // abandoned: what is still queued is not worth the disk's time
            }
            drain(&p, out.as_fd(), n)?;
            lag.fetch_sub(n as u64, Relaxed);
            let _ = free_tx.send(p);
        }
        Ok(())
    })?;
    let mut total = 0u64;
    let mut capture: Result<(), CopyError> = Ok(());
    let mut work = Some(work_tx);
    let stopped = || CopyError::Write(io::Error::other("cache writer stopped"));
    loop {
        let n = paced_read(src, &pipe, pace)?;
        if n == 0 {
            break;
        }
        if capture.is_ok() {
            capture = if behind.load(Relaxed) + n as u64 > buffer as u64 {
                Err(CopyError::TooSlow { buffer })
            } else {
                match free_rx.try_recv() {
                    Ok(copy) => match tee(pipe.r.as_fd(), copy.w.as_fd(), n) {
                        Ok(t) if t == n => {
                            behind.fetch_add(n as u64, Relaxed);
                            work.as_ref().map(|w| w.send((copy, n))).and_then(Result::ok).ok_or_else(stopped)
                        }
                        Ok(t) => Err(CopyError::Write(io::Error::other(format!("tee copied {t} of {n} bytes")))),
                        Err(e) => Err(CopyError::Write(e)),
                    },
                    // every copy pipe is still being written: as far behind as it may fall
                    Err(TryRecvError::Empty) => Err(CopyError::TooSlow { buffer }),
                    Err(TryRecvError::Disconnected) => Err(stopped()),
                }
            };
            if capture.is_err() {
                given_up.store(true, Relaxed);
                work = None; // lets the writer finish
            }
        }
        drain(&pipe, dst.as_fd(), n)?;
        total += n as u64;
        moved.fetch_add(n as u64, Relaxed);
    }
    let _ = dst.shutdown(Shutdown::Write);
    drop(work);
    let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("cache writer panicked")));
    Ok((total, capture.and(written.map_err(CopyError::Write))))
}

/// How much of a cache hit goes out at the relay's real-time priority before the sender drops
/// to normal priority ([`crate::sched::normal_priority`]): a small file's hit is over before a
/// burst of client processes could delay it; a large one runs as a server would — at real-time
/// priority it kept its core from everything else on it, the client's reads included (measured:
/// 256 MiB hits at 1.7–2.1 GB/s, and 1.9–4.7 GB/s dropping, against the kernel ALG's 1.5–1.9).
pub const PROMPT_BYTES: u64 = 8 << 20;

/// Sends `len` bytes of `file` from `offset` to `dst` with `sendfile(2)`, paced, then
/// half-closes `dst`. After [`PROMPT_BYTES`] the calling thread drops to normal priority.
pub fn send_file(file: &File, mut offset: u64, len: u64, dst: &TcpStream, moved: &AtomicU64, pace: &Pacer) -> io::Result<u64> {
    let end = len;
    let mut sent = 0u64;
    let mut prompt = true;
    while offset < end {
        if prompt && sent >= PROMPT_BYTES {
            crate::sched::normal_priority();
            prompt = false;
        }
        let mut off = offset as libc::off_t;
        let chunk = if prompt { PROMPT_BYTES - sent } else { 1 << 30 };
        let want = pace.take((end - offset).min(chunk) as usize);
        let n = retrying(|| nix::sys::sendfile::sendfile(dst, file, Some(&mut off), want))?;
        pace.give_back(want.saturating_sub(n));
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cache file shorter than its entry"));
        }
        offset += n as u64;
        sent += n as u64;
        moved.fetch_add(n as u64, Relaxed);
    }
    let _ = dst.shutdown(Shutdown::Write);
    Ok(sent)
}

/// Waits until `fd` is readable (a socket: data or EOF; a listener: a connection waits), at most
/// `timeout`; `Ok(false)` when it passed.
pub fn wait_readable(fd: &impl std::os::fd::AsFd, timeout: std::time::Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is readable right now (a listener: a connection waits in its backlog).
pub fn readable_now(fd: &impl std::os::fd::AsFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// True when the peer closed without sending anything more (the next read gives EOF); never
/// waits: false while nothing has arrived.
pub fn at_eof(s: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut b = [0u8; 1];
    matches!(recv(s.as_raw_fd(), &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT), Ok(0))
}

/// Reads what `pace` grants (at most a chunk) from `src` into `pipe`; 0 at EOF.
fn paced_read(src: &TcpStream, pipe: &Pipe, pace: &Pacer) -> io::Result<usize> {
    if !pace.is_unlimited() && at_eof(src) {
        // the end takes no tokens: seen at once, not after the next grant (the server's final
        // reply, held until then, and whatever follows it would wait for the pace)
        return Ok(0);
    }
    let want = pace.take(CHUNK);
    let n = splice(src.as_fd(), pipe.w.as_fd(), want, false)?;
    pace.give_back(want - n);
    Ok(n)
}

/// Moves bytes from `src` to `dst` until EOF, at `pace`, then half-closes `dst` (propagating the
/// peer's FIN). Returns the bytes moved.
pub fn pump(src: &TcpStream, dst: &TcpStream, moved: &AtomicU64, pace: &Pacer) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    loop {
        let n = paced_read(src, &pipe, pace)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = splice(pipe.r.as_fd(), dst.as_fd(), left, false)?;
            if m == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped reading"));
            }
            left -= m;
        }
        total += n as u64;
        moved.fetch_add(n as u64, Relaxed);
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
        let p = std::thread::spawn(move || pump(&b, &c, &AtomicU64::new(0), &Pacer::unlimited()).unwrap());
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert_eq!(p.join().unwrap(), data.len() as u64);
        assert!(got == data);
    }

    fn through_tee(file: &File, data: &[u8], buffer: usize) -> (Vec<u8>, u64, Result<(), CopyError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut d, _) = l.accept().unwrap();
        let w = {
            let data = data.to_vec();
            std::thread::spawn(move || {
                a.write_all(&data).unwrap();
                a.shutdown(Shutdown::Write).unwrap();
            })
        };
        let f = file.try_clone().unwrap();
        let p = std::thread::spawn(move || pump_tee(&b, &c, &f, &AtomicU64::new(0), buffer, &Pacer::unlimited()).unwrap());
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        let (n, copy) = p.join().unwrap();
        (got, n, copy)
    }

    #[test]
    fn tee_copies_everything_into_the_file() {
        let path = std::env::temp_dir().join(format!("ftpgate-tee-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let (got, n, copy) = through_tee(&file, &data, 16 << 20);
        assert!(copy.is_ok(), "{copy:?}");
        assert_eq!(n, data.len() as u64);
        assert!(got == data);
        assert!(std::fs::read(&path).unwrap() == data);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_failing_cache_write_never_stops_the_transfer() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let (got, n, copy) = through_tee(&full, &data, 16 << 20);
        assert!(matches!(copy, Err(CopyError::Write(_))), "{copy:?}");
        assert_eq!(n, data.len() as u64);
        assert!(got == data);
    }

    #[test]
    fn a_slow_cache_disk_never_holds_the_client() {
        // the "disk": a FIFO read at about 1.3 MB/s; 20 MB to relay with a 2 MB buffer
        let path = std::env::temp_dir().join(format!("ftpgate-slow-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut f = File::open(&path).unwrap();
                let mut buf = vec![0u8; 65536];
                let mut n = 0usize;
                while let Ok(m) = f.read(&mut buf) {
                    if m == 0 {
                        break;
                    }
                    n += m;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                n
            })
        };
        let fifo = File::options().write(true).open(&path).unwrap();
        let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 241) as u8).collect();
        let t = std::time::Instant::now();
        let (got, n, copy) = through_tee(&fifo, &data, 2 << 20);
        let took = t.elapsed();
        drop(fifo);
        assert!(matches!(copy, Err(CopyError::TooSlow { buffer: 2097152 })), "{copy:?}");
        assert_eq!(n, data.len() as u64);
        assert!(got == data);
        // at the disk's pace this would have taken 15 s; the buffer drains in under 2
        assert!(took < std::time::Duration::from_secs(5), "the client waited {took:?} for the disk");
        assert!(reader.join().unwrap() <= 4 << 20, "the writer kept writing after giving up");
        std::fs::remove_file(&path).unwrap();
    }
}
