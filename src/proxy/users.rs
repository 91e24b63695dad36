//! The explicit proxy's users (`name:argon2-hash` a line) and the throttle that slows down
//! password guessing from one address.

use super::*;

/// Proxy users: `name:hash` a line, the hash an Argon2 PHC string (`ftpgate proxy-passwd`).
pub struct Users(HashMap<String, String>);

impl core::fmt::Debug for Users {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Users({} names)", self.0.len()) // never the hashes
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users> {
        let text = std::fs::read_to_string(path).with_context(|| format!("--proxy-users {}: cannot read", path.display()))?;
        let mut m = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                bail!("{}:{}: expected name:hash", path.display(), i + 1);
            };
            if let Err(e) = argon2::PasswordHash::new(hash) {
                bail!("{}:{}: user {name}: not a password hash ({e}); make one with `ftpgate proxy-passwd {name}`", path.display(), i + 1);
            }
            m.insert(name.to_string(), hash.to_string());
        }
        if m.is_empty() {
            bail!("--proxy-users {}: no users", path.display());
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
        let ok = argon2::PasswordHash::new(hash)
            .map(|h| argon2::Argon2::default().verify_password(pass.as_bytes(), &h).is_ok())
            .unwrap_or(false);
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
    argon2::Argon2::default()
        .hash_password(pass.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))
}

/// Failed proxy logins per client address: from the third in a row on, each answer waits
/// twice as long as the one before (2 s, 4 s, … 32 s).
#[derive(Default)]
pub(super) struct Throttle(Mutex<HashMap<Ipv4Addr, (u32, Instant)>>);

impl Throttle {
    const FORGET: Duration = Duration::from_secs(900);
    pub(super) fn delay(&self, ip: Ipv4Addr) -> Duration {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&ip) {
            Some(&(n, at)) if n >= 2 && at.elapsed() < Self::FORGET => Duration::from_secs(1 << (n - 1).min(5)),
            _ => Duration::ZERO,
        }
    }
    pub(super) fn record(&self, ip: Ipv4Addr, ok: bool) {
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

