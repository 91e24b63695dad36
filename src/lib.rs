//! ftpgate: a transparent FTP gateway for Linux routers.
//!
//! Data flow, one module a stage:
//! - [`filter`]: the iptables/ip-rule set-up that hands FTP control segments to an NFQUEUE and
//!   steers data connections to the relay's transparent sockets;
//! - [`nfq_loop`]: receives each queued segment, decodes it with [`wire`], runs it through the
//!   sans-IO [`proto`] session, and writes the verdict back;
//! - [`driver`]: what the NFQUEUE loop and the explicit [`proxy`] share around a session: the
//!   wake pipe, the freshness checks' dispatch, event logging;
//! - [`relay`]: accepts the data connections the rewritten lines announced and splices bytes to
//!   the real peer.
pub mod cache;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod driver;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod netlink;
pub mod nfq_loop;
pub mod nft;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod relay;
pub mod sched;
pub mod settings;
pub mod signals;
pub mod state;
pub mod status;
pub mod wire;
pub mod xferlog;

/// One log event (level INFO) through `tracing`; `ftpgate run` prints each on one stderr line.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {
        ::tracing::info!("{}", format_args!($($t)*))
    };
}

/// The same at level WARN: refusals and failures an operator should see.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => {
        ::tracing::warn!("{}", format_args!($($t)*))
    };
}
