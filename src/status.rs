//! `ftpgate status`: what a running gateway is doing, for a person at the console.
//!
//! The control loops publish their sessions on a [`Board`] about once a second; the relay is
//! asked for its data connections when a request comes. `run` answers on a Unix socket in the
//! cache directory (`ftpgate.sock`, root only); `ftpgate status` connects and prints.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::relay::Relay;

pub const SOCKET: &str = "ftpgate.sock";

#[derive(Clone, Debug)]
pub struct SessionLine {
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    pub user: Option<String>,
    pub state: &'static str,
}

/// Sessions as the control loops last published them.
#[derive(Default)]
pub struct Board {
    transparent: Mutex<Vec<SessionLine>>,
    explicit: Mutex<Vec<SessionLine>>,
}

impl Board {
    /// Sessions (transparent, explicit) as last published.
    pub fn counts(&self) -> (usize, usize) {
        let n = |m: &Mutex<Vec<SessionLine>>| m.lock().unwrap_or_else(|e| e.into_inner()).len();
        (n(&self.transparent), n(&self.explicit))
    }

    pub fn publish(&self, explicit: bool, lines: Vec<SessionLine>) {
        let m = if explicit { &self.explicit } else { &self.transparent };
        *m.lock().unwrap_or_else(|e| e.into_inner()) = lines;
    }
}

/// How often the loops publish.
pub const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn rate(bytes: u64, secs: f64) -> String {
    let r = bytes as f64 / secs.max(0.001);
    if r >= 1e6 {
        format!("{:.1} MB/s", r / 1e6)
    } else {
        format!("{:.1} kB/s", r / 1e3)
    }
}

/// The status text.
pub fn render(board: &Board, relay: &Relay, started: Instant) -> String {
    let mut out = format!("ftpgate {} running for {} s\n", env!("CARGO_PKG_VERSION"), started.elapsed().as_secs());
    for (label, m) in [("transparent", &board.transparent), ("explicit proxy", &board.explicit)] {
        let lines = m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.push_str(&format!("\n{} {label} sessions\n", lines.len()));
        for l in lines {
            out.push_str(&format!("  {} -> {}  user {}  {}\n", l.client, l.server, l.user.as_deref().unwrap_or("-"), l.state));
        }
    }
    let xfers = relay.in_flight();
    out.push_str(&format!("\n{} data connections\n", xfers.len()));
    for x in xfers {
        out.push_str(&format!(
            "  {}  {}  user {}  {} bytes to client, {} to server, {:.1} s, {}\n",
            x.name,
            x.what.as_deref().unwrap_or("(waiting)"),
            x.user.as_deref().unwrap_or("-"),
            x.to_client,
            x.to_server,
            x.secs,
            rate(x.to_client + x.to_server, x.secs)
        ));
    }
    out
}

/// Where a socket goes when the cache directory cannot hold one (a FUSE or network mount).
pub const RUN_DIR: &str = "/run/ftpgate";

/// The fallback socket for cache directory `dir`, one per directory.
fn run_socket(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).hash(&mut h);
    Path::new(RUN_DIR).join(format!("ftpgate-{:016x}.sock", h.finish()))
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

/// Answers status requests on `<dir>/ftpgate.sock` (or, where the cache directory cannot hold
/// a socket, under [`RUN_DIR`]) from a thread of its own. Returns where.
pub fn serve(dir: &Path, board: Arc<Board>, relay: Relay) -> Result<PathBuf> {
    let path = dir.join(SOCKET);
    let (l, path) = match bind(&path) {
        Ok(l) => (l, path),
        Err(first) => {
            let alt = run_socket(dir);
            let _ = std::fs::create_dir_all(RUN_DIR);
            let l = bind(&alt).with_context(|| format!("cannot listen on {} ({first}) nor on {}", path.display(), alt.display()))?;
            crate::log!("status socket: {} cannot hold one ({first}); listening on {}", dir.display(), alt.display());
            (l, alt)
        }
    };
    let started = Instant::now();
    std::thread::Builder::new().name("ftpgate-status".into()).spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(render(&board, &relay, started).as_bytes());
        }
    })?;
    Ok(path)
}

/// `ftpgate status`: asks the gateway running with this cache dir.
pub fn query(dir: &Path) -> Result<String> {
    let path: PathBuf = dir.join(SOCKET);
    let mut s = UnixStream::connect(&path)
        .or_else(|e| UnixStream::connect(run_socket(dir)).map_err(|_| e))
        .with_context(|| format!("no ftpgate running with --cache-dir {} ({} not answering)", dir.display(), path.display()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}
