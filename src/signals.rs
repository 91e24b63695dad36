//! `run`'s signals, on a thread of their own: SIGTERM drains the transfers in progress, SIGINT
//! exits, SIGHUP re-reads the configuration.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::log;
use crate::relay::Relay;

/// Blocks the signals `run` handles, before any thread starts (threads inherit the mask), so
/// only the signal thread receives them.
pub fn block() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().context("cannot block signals")?;
    Ok(set)
}

/// SIGTERM: wait for transfers in progress (up to `drain`), then exit. SIGINT: exit now.
/// SIGHUP: re-read the configuration and the proxy users; apply what is safe to change.
pub fn handle(set: SigSet, relay: Relay, drain: Duration, reload: impl Fn() + Send + 'static) -> Result<()> {
    std::thread::Builder::new().name("ftpgate-signals".into()).spawn(move || loop {
        let Ok(sig) = set.wait() else { continue };
        match sig {
            Signal::SIGHUP => reload(),
            Signal::SIGTERM => {
                let n = relay.transferring();
                if n > 0 {
                    log!("SIGTERM received; letting {n} data transfers finish (up to {} s)", drain.as_secs());
                    let end = Instant::now() + drain;
                    while relay.transferring() > 0 && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                log!("SIGTERM received; exiting ({} transfers still open)", relay.transferring());
                std::process::exit(0);
            }
            _ => {
                log!("{sig:?} received; exiting");
                std::process::exit(0);
            }
        }
    })?;
    Ok(())
}
