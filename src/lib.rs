//! ftpgate: a transparent FTP gateway for Linux routers.
//!
//! Data flow, one module a stage:
//! - [`filter`]: the iptables/ip-rule set-up that hands FTP control segments to an NFQUEUE and
//!   steers data connections to the relay's transparent sockets;
//! - [`nfq_loop`]: receives each queued segment, decodes it with [`wire`], runs it through the
//!   sans-IO [`proto`] session, and writes the verdict back;
//! - [`relay`]: accepts the data connections the rewritten lines announced and splices bytes to
//!   the real peer.
pub mod cache;
pub mod conntrack;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod nfq_loop;
pub mod proto;
pub mod proxy;
pub mod wire;
pub mod relay;

/// One log line on stderr, prefixed with the time since the Unix epoch.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {{
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // one write(2) per line: stderr is unbuffered, and the queue loop waits for it
        let line = format!("{}.{:03} {}\n", now.as_secs(), now.subsec_millis(), format_args!($($t)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }};
}
