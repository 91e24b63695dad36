//! The explicit proxy's users (`name:argon2-hash` a line) and the throttle that slows down
//! password guessing from one address.

use std::path::PathBuf;

use super::*;

/// Proxy users: `name:hash` a line, the hash an Argon2 PHC string (`ftpgate proxy-passwd`).
pub struct Users(HashMap<String, String>);

impl core::fmt::Debug for Users {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Users({} names)", self.0.len()) // never the hashes
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError::Read(path.to_path_buf(), e.to_string()))?;
        let mut m = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| UsersError::Line { path: path.to_path_buf(), line: i + 1, why };
            let Some((name, hash)) = line.split_once(':') else { return Err(bad(BadLine::NoColon)) };
            if let Err(e) = argon2::PasswordHash::new(hash) {
                return Err(bad(BadLine::NotAHash { name: name.to_string(), why: e.to_string() }));
            }
            m.insert(name.to_string(), hash.to_string());
        }
        if m.is_empty() {
            return Err(UsersError::Empty(path.to_path_buf()));
        }
        Ok(Users(m))
    }

    /// Checks a password. An unknown user costs the same hash as a known one.
    pub fn verify(&self, name: &str, pass: &str) -> bool {
        use argon2::PasswordVerifier;
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$DneBu+QE4f7kie95ZETfYA$Co347uPdm0DghuNkTYbBP75LQOOqo3vA3rpx+ua3Px4";
        let (hash, known) = match self.0.get(name) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let ok = argon2::PasswordHash::new(hash).map(|h| argon2::Argon2::default().verify_password(pass.as_bytes(), &h).is_ok()).unwrap_or(false);
        ok && known
    }
}

/// An Argon2id hash of `pass` with a fresh salt, for the `--proxy-users` file.
pub fn hash_password(pass: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut raw = [0u8; 16];
    // SAFETY: getrandom(2) fills the live buffer it is given.
    if unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) } != raw.len() as isize {
        bail!("cannot get random bytes for a salt");
    }
    let salt = SaltString::encode_b64(&raw).map_err(|e| anyhow::anyhow!("cannot make a salt: {e}"))?;
    argon2::Argon2::default().hash_password(pass.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("cannot hash: {e}"))
}

/// Failed proxy logins per client address: from the third in a row on, each answer waits
/// twice as long as the one before (2 s, 4 s, … 32 s).
#[derive(Default)]
pub(super) struct Throttle(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl Throttle {
    const FORGET: Duration = Duration::from_secs(900);
    pub(super) fn delay(&self, ip: IpAddr) -> Duration {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&ip) {
            Some(&(n, at)) if n >= 2 && at.elapsed() < Self::FORGET => Duration::from_secs(1 << (n - 1).min(5)),
            _ => Duration::ZERO,
        }
    }
    pub(super) fn record(&self, ip: IpAddr, ok: bool) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, at)| at.elapsed() < Self::FORGET);
        if ok {
            m.remove(&ip);
        } else {
            let e = m.entry(ip).or_insert((0, Instant::now()));
            *e = (e.0 + 1, Instant::now());
        }
    }
}

/// Proxy users and access rules re-read on SIGHUP, waiting for the proxy loop to take them.
pub type Reload = Arc<Mutex<Option<(Option<Users>, Access)>>>;

/// A proxy users file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsersError {
    Read(PathBuf, String),
    Line { path: PathBuf, line: usize, why: BadLine },
    Empty(PathBuf),
}

/// What is wrong with one line of a proxy users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadLine {
    NoColon,
    NotAHash { name: String, why: String },
}

impl core::fmt::Display for UsersError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UsersError::Read(p, e) => write!(f, "--proxy-users {}: cannot read: {e}", p.display()),
            UsersError::Line { path, line, why: BadLine::NoColon } => write!(f, "{}:{line}: expected name:hash", path.display()),
            UsersError::Line { path, line, why: BadLine::NotAHash { name, why } } => {
                write!(f, "{}:{line}: user {name}: not a password hash ({why}); make one with `ftpgate proxy-passwd {name}`", path.display())
            }
            UsersError::Empty(p) => write!(f, "--proxy-users {}: no users", p.display()),
        }
    }
}

impl std::error::Error for UsersError {}
