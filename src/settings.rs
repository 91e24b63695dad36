//! Every setting, resolved once: the command line over the configuration file
//! ([`crate::config::Options`]) over the defaults below, checked. `run`, `check-config` and the
//! `rules` commands read these; nothing else holds a default of its own.

use core::fmt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Forwarding, Options};
use crate::filter::RuleSet;
use crate::proto::explicit::{Access, Cidr};
use crate::proxy::Users;
use crate::relay::RelayConfig;

/// The defaults, each in one place (the command line's help names them too).
pub mod defaults {
    pub const QUEUE: u16 = 2121;
    pub const MARK: u32 = 0x10000;
    pub const TABLE: u32 = 2121;
    /// The well-known NAT64 prefix (RFC 6052).
    pub const NAT64_PREFIX: &str = "64:ff9b::/96";
    pub const DATA_TIMEOUT_S: u64 = 30;
    pub const IDLE_TIMEOUT_S: u64 = 300;
    pub const CACHE_MAX_BYTES: u64 = 1 << 30;
    pub const CACHE_SETTLE_S: u64 = 3;
    pub const CACHE_WRITE_BUFFER: u64 = 16 << 20;
    /// The smallest write buffer taken: below it every burst of the client abandons a capture.
    pub const CACHE_WRITE_BUFFER_MIN: u64 = 1 << 20;
    pub const CHECK_TIMEOUT_S: u64 = 3;
    pub const CHECK_CONNECTIONS: usize = 2;
    pub const MAX_SESSIONS: usize = 1024;
    pub const MAX_DATA: usize = 512;
    pub const QUEUE_PRIORITY: u8 = 10;
    pub const CONNECT_TIMEOUT_S: u64 = 10;
    pub const DRAIN_TIMEOUT_S: u64 = 10;
    /// Where systemd's `StateDirectory=` puts the session state when the unit runs ftpgate.
    pub const STATE_DIR_ENV: &str = "STATE_DIRECTORY";
}
use defaults as d;

/// The download cache's settings (absent with `--no-cache`).
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub settle_s: i64,
    pub write_buffer: usize,
    pub check_timeout: Duration,
    pub check_connections: usize,
    pub refetch: bool,
}

/// The explicit proxy's settings (absent without `--listen`).
#[derive(Debug)]
pub struct ProxySettings {
    pub listen: Vec<core::net::SocketAddr>,
    pub users: Option<Users>,
    pub access: Access,
    pub connect_timeout: Duration,
}

/// Every setting of `ftpgate run`.
#[derive(Debug)]
pub struct Settings {
    pub rules: RuleSet,
    pub cache_dir: PathBuf,
    /// Where the session state (sequence offsets that must survive a restart) is kept:
    /// `--state-dir`, else systemd's `$STATE_DIRECTORY` (`/var/lib/ftpgate`), else the cache
    /// directory.
    pub state_dir: PathBuf,
    pub cache: Option<CacheSettings>,
    pub relay: RelayConfig,
    pub forwarding: Forwarding,
    pub max_sessions: usize,
    pub queue_priority: u8,
    pub proxy: Option<ProxySettings>,
    pub metrics: Option<SocketAddr>,
    pub xferlog: Option<PathBuf>,
    pub drain: Duration,
    pub log: Option<String>,
    /// NAT64 prefixes (/96) whose sessions are translated.
    pub nat64: Vec<ipnet::Ipv6Net>,
    /// `--deny-command` and the `[[policy]]` tables.
    pub policies: crate::policy::Policies,
}

/// A setting that cannot be used.
#[derive(Debug)]
pub enum SettingsError {
    NoCacheDir,
    ZeroDataTimeout,
    DataNice(i8),
    QueuePriority(u8),
    DataPriority {
        data: u8,
        queue: u8,
    },
    ProxyOptionsWithoutListener,
    /// The proxy users file.
    Users(crate::proxy::UsersError),
    LogFilter {
        filter: String,
        why: String,
    },
    /// A NAT64 prefix that is not an IPv6 /96.
    Nat64Prefix(Cidr),
    /// A `--deny-command` (or `deny-commands`) that is not an FTP command.
    DenyCommand(crate::policy::BadCommand),
    /// `--data-cpus` naming CPUs the process may not use.
    DataCpus(crate::sched::UnusableCpus),
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::NoCacheDir => write!(f, "--cache-dir (or cache-dir in the configuration file) is required"),
            SettingsError::ZeroDataTimeout => write!(f, "--data-timeout must be at least 1 second"),
            SettingsError::DataNice(n) => write!(f, "data-nice {n} is out of range (-20 to 19)"),
            SettingsError::QueuePriority(p) => write!(f, "queue-priority {p} is out of range (0 to 99)"),
            SettingsError::DataPriority { data, queue } => {
                write!(f, "data-priority {data} must be below queue-priority ({queue}): the control path must not queue behind the data path")
            }
            SettingsError::ProxyOptionsWithoutListener => {
                write!(f, "--proxy-users, --allow-from and --allow-dest need an explicit proxy listener (--listen ADDR:PORT)")
            }
            SettingsError::Users(e) => e.fmt(f),
            SettingsError::LogFilter { filter, why } => write!(f, "log filter {filter:?}: {why}"),
            SettingsError::DenyCommand(c) => write!(f, "deny-command: {c}"),
            SettingsError::DataCpus(e) => e.fmt(f),
            SettingsError::Nat64Prefix(c) => write!(f, "nat64-prefix {}: must be an IPv6 /96 (RFC 6052), e.g. 64:ff9b::/96", c.0),
        }
    }
}

impl std::error::Error for SettingsError {}

/// The iptables/ip-rule set-up the options name (all `rules` needs).
pub fn rule_set(o: &Options) -> RuleSet {
    RuleSet {
        queue: o.queue.unwrap_or(d::QUEUE),
        fail_open: !o.fail_closed.unwrap_or(false),
        mark: o.mark.unwrap_or(d::MARK),
        table: o.table.unwrap_or(d::TABLE),
        nat64_interface: o.nat64_interface.clone(),
    }
}

fn secs(v: Option<u64>, default: u64) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(1))
}

impl Settings {
    /// Resolves and checks `o` (the proxy users file is read here).
    pub fn resolve(o: Options) -> Result<Settings, SettingsError> {
        let cache_dir = o.cache_dir.clone().ok_or(SettingsError::NoCacheDir)?;
        if o.data_timeout == Some(0) {
            return Err(SettingsError::ZeroDataTimeout);
        }
        if let Some(n) = o.data_nice.filter(|n| !(-20..=19).contains(n)) {
            return Err(SettingsError::DataNice(n));
        }
        if let Some(p) = o.queue_priority.filter(|&p| p > 99) {
            return Err(SettingsError::QueuePriority(p));
        }
        let queue_priority = o.queue_priority.unwrap_or(d::QUEUE_PRIORITY);
        if let Some(data) = o.data_priority.filter(|&p| p > 0 && p >= queue_priority) {
            return Err(SettingsError::DataPriority { data, queue: queue_priority });
        }
        let allowed = crate::sched::allowed_cpus();
        let cpus = crate::sched::data_cpus(o.data_cpus.as_ref(), &allowed).map_err(SettingsError::DataCpus)?;
        let listen = o.listen.clone().unwrap_or_default();
        if listen.is_empty() && (o.proxy_users.is_some() || o.allow_from.is_some() || o.allow_dest.is_some()) {
            return Err(SettingsError::ProxyOptionsWithoutListener);
        }
        let users = match &o.proxy_users {
            Some(p) => Some(Users::load(p).map_err(SettingsError::Users)?),
            None => None,
        };
        if let Some(f) = &o.log {
            tracing_subscriber::EnvFilter::try_new(f).map_err(|e| SettingsError::LogFilter { filter: f.clone(), why: e.to_string() })?;
        }
        let cache = (!o.no_cache.unwrap_or(false)).then(|| CacheSettings {
            max_bytes: o.cache_max_bytes.unwrap_or(d::CACHE_MAX_BYTES),
            settle_s: o.cache_settle.unwrap_or(d::CACHE_SETTLE_S) as i64,
            write_buffer: o.cache_write_buffer.unwrap_or(d::CACHE_WRITE_BUFFER).max(d::CACHE_WRITE_BUFFER_MIN) as usize,
            check_timeout: secs(o.check_timeout, d::CHECK_TIMEOUT_S),
            check_connections: o.check_connections.unwrap_or(d::CHECK_CONNECTIONS).max(1),
            refetch: !o.no_refetch.unwrap_or(false),
        });
        let proxy = (!listen.is_empty()).then(|| ProxySettings {
            access: Access {
                auth: users.is_some(),
                allow_from: o.allow_from.clone().unwrap_or_default(),
                allow_dest: o.allow_dest.clone().unwrap_or_default(),
            },
            listen,
            users,
            connect_timeout: secs(o.connect_timeout, d::CONNECT_TIMEOUT_S),
        });
        let nat64 = match &o.nat64_prefix {
            None => vec![d::NAT64_PREFIX.parse().expect("a valid prefix")],
            Some(v) => v
                .iter()
                .map(|c| match c.0 {
                    ipnet::IpNet::V6(n) if n.prefix_len() == 96 => Ok(n.trunc()),
                    _ => Err(SettingsError::Nat64Prefix(*c)),
                })
                .collect::<Result<_, _>>()?,
        };
        let policies = crate::policy::Policies::new(
            o.deny_command.as_deref().unwrap_or_default(),
            crate::proto::Rates { down: o.rate_down, up: o.rate_up },
            o.server_mode.unwrap_or_default(),
            o.policy.clone().unwrap_or_default(),
        )
        .map_err(SettingsError::DenyCommand)?;
        let state_dir = o.state_dir.clone().or_else(|| std::env::var_os(d::STATE_DIR_ENV).map(PathBuf::from)).unwrap_or_else(|| cache_dir.clone());
        Ok(Settings {
            rules: rule_set(&o),
            state_dir,
            cache,
            relay: RelayConfig {
                accept_timeout: secs(o.data_timeout, d::DATA_TIMEOUT_S),
                idle_timeout: secs(o.idle_timeout, d::IDLE_TIMEOUT_S),
                max_data: o.max_data.unwrap_or(d::MAX_DATA),
                data_ports: crate::relay::DataPorts(o.data_ports),
                rt_priority: o.data_priority.unwrap_or(queue_priority / 2),
                nice: o.data_nice.unwrap_or(0),
                cpus: cpus.map(|c| crate::sched::Confine::new(c, &allowed)),
            },
            forwarding: o.data_forwarding.unwrap_or(Forwarding::Kernel),
            max_sessions: o.max_sessions.unwrap_or(d::MAX_SESSIONS),
            queue_priority,
            metrics: o.metrics,
            xferlog: o.xferlog.clone(),
            drain: Duration::from_secs(o.drain_timeout.unwrap_or(d::DRAIN_TIMEOUT_S)),
            nat64,
            policies,
            log: o.log.clone(),
            cache_dir,
            proxy,
        })
    }

    /// The session state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("sessions.state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Options)) -> Result<Settings, SettingsError> {
        let mut o = Options { cache_dir: Some("/var/cache/ftpgate".into()), ..Default::default() };
        f(&mut o);
        Settings::resolve(o)
    }

    #[test]
    fn defaults_resolve_once() {
        let s = with(|_| {}).unwrap();
        assert_eq!((s.rules.queue, s.rules.fail_open, s.rules.mark, s.rules.table), (2121, true, 0x10000, 2121));
        assert_eq!(s.relay.accept_timeout, Duration::from_secs(30));
        assert_eq!((s.queue_priority, s.relay.rt_priority), (10, 5));
        let c = s.cache.expect("cache on by default");
        assert_eq!((c.max_bytes, c.write_buffer, c.check_connections, c.refetch), (1 << 30, 16 << 20, 2, true));
        assert!(s.proxy.is_none());
        assert!(with(|o| o.no_cache = Some(true)).unwrap().cache.is_none());
        assert_eq!(with(|o| o.state_dir = Some("/var/lib/x".into())).unwrap().state_file(), PathBuf::from("/var/lib/x/sessions.state"));
    }

    #[test]
    fn bad_settings_are_errors_with_their_reason() {
        let e = |f: fn(&mut Options)| with(f).unwrap_err().to_string();
        assert!(e(|o| o.cache_dir = None).contains("--cache-dir"));
        assert!(e(|o| o.data_timeout = Some(0)).contains("at least 1 second"));
        assert!(e(|o| o.data_priority = Some(10)).contains("must be below queue-priority (10)"));
        assert!(e(|o| o.data_cpus = Some(crate::sched::CpuChoice::List(vec![1000]))).contains("data-cpus: CPU 1000 is not one this process may use"));
        assert!(e(|o| o.allow_from = Some(vec![])).contains("--listen"));
        assert!(e(|o| o.log = Some("[".into())).starts_with("log filter"));
        assert!(e(|o| {
            o.listen = Some(vec!["127.0.0.1:2121".parse().unwrap()]);
            o.proxy_users = Some("/nonexistent/users".into());
        })
        .starts_with("--proxy-users /nonexistent/users: cannot read"));
    }
}
