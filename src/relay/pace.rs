//! Bandwidth limits (`--rate-down`, `--rate-up`, a `[[policy]]` table's `rate-down` /
//! `rate-up`): each transfer is paced by one token bucket per client address, direction and
//! rate, shared by every session of that host under that limit, so that ten sessions from one
//! LAN host get one share, not ten (a session alone gets the whole rate).
//!
//! [`Bucket`] is the pure part (bytes and `now` in, a grant or a wait out); [`Pacer`] is the
//! shell the byte movers call before each read, which sleeps when a bucket is empty. Only the
//! data connections are paced: the control connection never waits for them.

use core::net::IpAddr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes a second, at most `burst` at once.
#[derive(Debug)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// When `tokens` was last brought up to date; the fraction of a byte not yet credited is
    /// kept in it (it advances only by whole bytes' time).
    at: Instant,
}

/// The smallest grant worth a system call: a bucket lets a reader wait for this much rather
/// than read a few bytes at a time.
const MIN_GRANT: u64 = 16 << 10;

impl Bucket {
    /// A bucket of `rate` bytes a second (at least 1), full at `now`. Its burst is a twentieth
    /// of a second's worth (50 ms), at least 16 KiB: small enough that a transfer's first
    /// second is not much faster than the rest.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1);
        let burst = (rate / 20).max(MIN_GRANT);
        Bucket { rate, burst, tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        let earned = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if earned == 0 {
            return;
        }
        self.tokens = (self.tokens + earned).min(self.burst);
        if self.tokens == self.burst {
            self.at = now;
        } else {
            self.at += Duration::from_nanos((u128::from(earned) * 1_000_000_000 / u128::from(self.rate)) as u64);
        }
    }

    /// How many of `want` bytes may go at `now` (taken from the bucket), or, when too few are
    /// there to be worth a call, how long to wait before asking again.
    pub fn grant(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        let n = self.ready(want, now)?;
        self.tokens -= n;
        Ok(n)
    }

    /// What [`grant`](Self::grant) would give, without taking it.
    fn ready(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        self.refill(now);
        let enough = want.min(MIN_GRANT).min(self.burst).max(1);
        if self.tokens >= enough {
            return Ok(want.min(self.tokens));
        }
        let missing = enough - self.tokens;
        Err(Duration::from_nanos((u128::from(missing) * 1_000_000_000 / u128::from(self.rate)).max(1) as u64))
    }

    /// Returns `n` granted bytes that were not used (a read gave fewer).
    pub fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n).min(self.burst);
    }
}

/// Which way a data connection's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    Down,
    Up,
}

/// The bucket one transfer direction draws from (none: unlimited).
#[derive(Clone, Debug, Default)]
pub struct Pacer {
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl Pacer {
    /// No limit.
    pub fn unlimited() -> Pacer {
        Pacer::default()
    }

    /// Whether it never waits.
    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// Waits until some of `want` bytes may go, and returns how many (all of `want` when
    /// unlimited).
    pub fn take(&self, want: usize) -> usize {
        let Some(b) = &self.bucket else { return want };
        loop {
            let r = b.lock().unwrap_or_else(|e| e.into_inner()).grant(want as u64, Instant::now());
            match r {
                Ok(n) => return n as usize,
                Err(wait) => std::thread::sleep(wait),
            }
        }
    }

    /// Returns `n` bytes of a grant that a read did not use.
    pub fn give_back(&self, n: usize) {
        if let (Some(b), true) = (&self.bucket, n > 0) {
            b.lock().unwrap_or_else(|e| e.into_inner()).give_back(n as u64);
        }
    }
}

/// A share's client address, direction and rate.
type ShareKey = (IpAddr, Way, u64);

/// The client addresses' shares: one bucket per client address, direction and rate, kept
/// while a transfer uses it. Every session of one host under the same limit draws from it, so
/// a session gets the whole rate alone, and ten sessions from one host a tenth each.
#[derive(Debug, Default)]
pub struct Shares {
    hosts: Mutex<HashMap<ShareKey, Weak<Mutex<Bucket>>>>,
}

impl Shares {
    /// The pacer of a transfer from (or to) `client` going `way` under `rate`.
    pub fn pacer(&self, client: IpAddr, way: Way, rate: Option<u64>) -> Pacer {
        let Some(rate) = rate else { return Pacer::unlimited() };
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.retain(|_, b| b.strong_count() > 0);
        let key = (client, way, rate);
        let bucket = hosts.get(&key).and_then(Weak::upgrade).unwrap_or_else(|| {
            let b = Arc::new(Mutex::new(Bucket::new(rate, Instant::now())));
            hosts.insert(key, Arc::downgrade(&b));
            b
        });
        Pacer { bucket: Some(bucket) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a reader asking `chunk` at a time gets through `b` in `secs` of fake time.
    fn drain(b: &mut Bucket, t0: Instant, chunk: u64, secs: u64) -> u64 {
        let (mut now, end, mut got) = (t0, t0 + Duration::from_secs(secs), 0);
        while now < end {
            match b.grant(chunk, now) {
                Ok(n) => got += n,
                Err(w) => now += w,
            }
        }
        got
    }

    #[test]
    fn a_bucket_holds_its_rate_over_time() {
        let t0 = Instant::now();
        let rate = 8 << 20;
        let mut b = Bucket::new(rate, t0);
        let got = drain(&mut b, t0, 1 << 20, 10);
        // 10 s at the rate, plus at most the first burst
        assert!(got >= 10 * rate && got <= 10 * rate + rate / 20 + (1 << 20), "{got}");
    }

    #[test]
    fn a_slow_rate_still_grants_whole_chunks_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.grant(1 << 20, t0), Ok(MIN_GRANT)); // the first burst
        let wait = b.grant(1 << 20, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(16384)); // 16 KiB at 1000 B/s
        assert_eq!(b.grant(100, t0 + Duration::from_millis(50)).unwrap_err(), Duration::from_millis(50));
        assert_eq!(b.grant(100, t0 + Duration::from_millis(100)), Ok(100));
        b.give_back(100);
        assert_eq!(b.grant(100, t0 + Duration::from_millis(100)), Ok(100));
    }

    #[test]
    fn sessions_of_one_host_share_one_bucket() {
        let shares = Shares::default();
        let a: IpAddr = "10.0.1.2".parse().unwrap();
        let p1 = shares.pacer(a, Way::Down, Some(1 << 20));
        let p2 = shares.pacer(a, Way::Down, Some(1 << 20));
        assert!(Arc::ptr_eq(p1.bucket.as_ref().unwrap(), p2.bucket.as_ref().unwrap()));
        let other = shares.pacer("10.0.1.3".parse().unwrap(), Way::Down, Some(1 << 20));
        assert!(!Arc::ptr_eq(p1.bucket.as_ref().unwrap(), other.bucket.as_ref().unwrap()));
        let up = shares.pacer(a, Way::Up, Some(1 << 20));
        assert!(!Arc::ptr_eq(p1.bucket.as_ref().unwrap(), up.bucket.as_ref().unwrap()));
        assert!(shares.pacer(a, Way::Down, None).bucket.is_none());
        drop((p1, p2));
        let p3 = shares.pacer(a, Way::Down, Some(1 << 20));
        assert_eq!(shares.hosts.lock().unwrap().len(), 3); // the first host's bucket was renewed
        drop(p3);
    }
}
