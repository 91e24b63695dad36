//! ftpgate: a transparent FTP gateway for Linux routers.
//!
//! Data flow, one module a stage:
//! - [`filter`]: the iptables/ip-rule set-up that hands FTP control segments to an NFQUEUE and
//!   steers data connections to the relay's transparent sockets;
//! - [`nfq_loop`]: receives each queued segment, decodes it with [`wire`], runs it through the
//!   sans-IO [`proto`] session, and writes the verdict back;
//! - [`relay`]: accepts the data connections the rewritten lines announced and splices bytes to
//!   the real peer.
pub mod proto;
