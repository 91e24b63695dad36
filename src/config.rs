//! The configuration file (`/etc/ftpgate/ftpgate.toml`, or `--config FILE`): every option the
//! command line has, under the same names. The command line overrides the file; the file
//! overrides the defaults. An unknown key or a bad value is an error naming the file, the line
//! and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{de, Deserialize, Deserializer};

use crate::proto::explicit::Cidr;

pub const DEFAULT_PATH: &str = "/etc/ftpgate/ftpgate.toml";

/// Every option, each optional: what a file (or the command line) sets.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    pub queue: Option<u16>,
    pub fail_closed: Option<bool>,
    #[serde(default, deserialize_with = "number_or_hex")]
    pub mark: Option<u32>,
    pub table: Option<u32>,
    pub cache_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub data_timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub cache_max_bytes: Option<u64>,
    pub cache_settle: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub cache_write_buffer: Option<u64>,
    pub check_timeout: Option<u64>,
    pub check_connections: Option<usize>,
    pub queue_priority: Option<u8>,
    pub data_nice: Option<i8>,
    pub data_priority: Option<u8>,
    /// `all` or a CPU list.
    #[serde(default, deserialize_with = "cpus")]
    pub data_cpus: Option<crate::sched::CpuChoice>,
    pub no_cache: Option<bool>,
    pub no_refetch: Option<bool>,
    pub data_forwarding: Option<Forwarding>,
    pub max_sessions: Option<usize>,
    pub max_data: Option<usize>,
    /// The ports ftpgate chooses itself, `LOW-HIGH`.
    #[serde(default, deserialize_with = "port_range")]
    pub data_ports: Option<(u16, u16)>,
    pub listen: Option<Vec<core::net::SocketAddr>>,
    pub proxy_users: Option<PathBuf>,
    #[serde(default, deserialize_with = "cidrs")]
    pub allow_from: Option<Vec<Cidr>>,
    #[serde(default, deserialize_with = "cidrs")]
    pub allow_dest: Option<Vec<Cidr>>,
    pub connect_timeout: Option<u64>,
    /// NAT64 prefixes (/96, RFC 6052) whose sessions ftpgate translates as the FTP ALG of
    /// RFC 6384 [default: the well-known 64:ff9b::/96].
    #[serde(default, deserialize_with = "cidrs")]
    pub nat64_prefix: Option<Vec<Cidr>>,
    /// The NAT64 translator's interface (tayga's TUN device): its IPv4 side of a session is not
    /// intercepted again.
    pub nat64_interface: Option<String>,
    /// Commands no client may send through the gateway (`--deny-command`).
    pub deny_command: Option<Vec<String>>,
    /// The data connections' mode towards the server (`client`, `passive`, `active`).
    #[serde(default, deserialize_with = "server_mode")]
    pub server_mode: Option<crate::proto::ServerMode>,
    /// Bandwidth limits per session (and per client address), bytes per second.
    #[serde(default, deserialize_with = "rate")]
    pub rate_down: Option<u64>,
    #[serde(default, deserialize_with = "rate")]
    pub rate_up: Option<u64>,
    /// The `[[policy]]` tables, per server and client network; first match wins.
    pub policy: Option<Vec<crate::policy::Rule>>,
    pub metrics: Option<SocketAddr>,
    pub xferlog: Option<PathBuf>,
    pub drain_timeout: Option<u64>,
    /// Log filter, as `RUST_LOG` takes it (`info`, `debug`, `ftpgate=debug`, …).
    pub log: Option<String>,
}

/// Who moves a data connection's bytes when it needs neither capture nor serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// The kernel forwards it, under a single-use permission ftpgate gives (`crate::nft`).
    Kernel,
    /// ftpgate's relay splices it.
    Relay,
}

/// Parses `1G`, `512M`, `64K`, `1T` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(|| format!("bad size {s:?} (expected bytes, optionally with K, M, G or T)"))
}

/// Parses `0x10000` or `65536`.
pub fn parse_hex(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x");
    u32::from_str_radix(t, if t.len() < s.len() { 16 } else { 10 }).map_err(|e| format!("bad number {s:?}: {e}"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

/// Parses `LOW-HIGH` (ports, LOW <= HIGH, neither 0).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: expected LOW-HIGH, two ports from 1 to 65535, LOW <= HIGH (e.g. 50000-50100)");
    let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
    let (lo, hi) = (lo.trim().parse::<u16>().map_err(|_| bad())?, hi.trim().parse::<u16>().map_err(|_| bad())?);
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn port_range<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u16, u16)>, D::Error> {
    parse_port_range(&String::deserialize(d)?).map(Some).map_err(de::Error::custom)
}

fn cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::sched::CpuChoice>, D::Error> {
    crate::sched::parse_cpus(&String::deserialize(d)?).map(Some).map_err(de::Error::custom)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(Some(n)),
        NumOrStr::Str(s) => parse_size(&s).map(Some).map_err(de::Error::custom),
    }
}

/// Parses a rate in bytes per second as [`parse_size`] does (`8M`, `512K`, `100000`); 0 and
/// anything below 1K are refused (leave the option out for no limit).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(0) => Err(format!("bad rate {s:?}: 0 would stop every transfer (leave it out for no limit)")),
        // bytes per second: a few hundred is a unit mistaken, and would stall every client
        Ok(n) if n < 1024 => Err(format!("bad rate {s:?}: at least 1K (1024 bytes per second); rates are in bytes, e.g. 8M")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("bad rate {s:?} (expected bytes per second, optionally with K, M or G, e.g. 8M)")),
    }
}

pub(crate) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => parse_rate(&n.to_string()).map(Some).map_err(de::Error::custom),
        NumOrStr::Str(s) => parse_rate(&s).map(Some).map_err(de::Error::custom),
    }
}

pub(crate) fn server_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::proto::ServerMode>, D::Error> {
    String::deserialize(d)?.parse().map(Some).map_err(de::Error::custom)
}

fn number_or_hex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => u32::try_from(n).map(Some).map_err(|_| de::Error::custom(format!("{n} does not fit in 32 bits"))),
        NumOrStr::Str(s) => parse_hex(&s).map(Some).map_err(de::Error::custom),
    }
}

pub(crate) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter().map(|s| s.parse::<Cidr>().map_err(de::Error::custom)).collect::<Result<Vec<_>, _>>().map(Some)
}

/// What is wrong with a configuration file; reads `FILE:LINE: KEY: what is wrong`.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        /// `None` for text that came from no file.
        path: Option<PathBuf>,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            ConfigError::Invalid { path, line, key, message } => {
                if let Some(p) = path {
                    write!(f, "{}:", p.display())?;
                }
                match (line, path) {
                    (Some(l), _) => write!(f, "{l}: ")?,
                    (None, Some(_)) => f.write_str(" ")?,
                    (None, None) => {}
                }
                if let Some(k) = key {
                    write!(f, "{k}: ")?;
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Invalid { line, key, message, .. } => ConfigError::Invalid { path: Some(path.to_path_buf()), line, key, message },
        read => read,
    })
}

/// Parses configuration text; errors read `LINE: KEY: what is wrong`.
pub fn parse(text: &str) -> Result<Options, ConfigError> {
    toml::from_str::<Options>(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else { return ConfigError::Invalid { path: None, line: None, key: None, message } };
        let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
        let line = text.lines().nth(line_no - 1).unwrap_or("");
        let key = line.split('=').next().unwrap_or("").trim();
        // the key once: toml's message may name it already
        let key = (!key.is_empty() && !message.contains(&format!("`{key}`"))).then(|| key.to_string());
        ConfigError::Invalid { path: None, line: Some(line_no), key, message }
    })
}

/// The file to read: the one named, else the default path if it exists, else none.
pub fn find(named: Option<&Path>) -> Result<Option<Options>, ConfigError> {
    match named {
        Some(p) => load(p).map(Some),
        None if Path::new(DEFAULT_PATH).exists() => load(Path::new(DEFAULT_PATH)).map(Some),
        None => Ok(None),
    }
}

impl Options {
    /// `self` (the command line) over `file`.
    pub fn over(self, file: Options) -> Options {
        macro_rules! pick {
            ($($f:ident),*) => { Options { $($f: self.$f.or(file.$f)),* } };
        }
        pick!(
            queue,
            fail_closed,
            mark,
            table,
            cache_dir,
            state_dir,
            data_timeout,
            idle_timeout,
            cache_max_bytes,
            cache_settle,
            cache_write_buffer,
            check_timeout,
            check_connections,
            queue_priority,
            data_nice,
            data_priority,
            data_cpus,
            no_cache,
            no_refetch,
            data_forwarding,
            max_sessions,
            max_data,
            data_ports,
            listen,
            proxy_users,
            allow_from,
            allow_dest,
            connect_timeout,
            nat64_prefix,
            nat64_interface,
            deny_command,
            server_mode,
            rate_down,
            rate_up,
            policy,
            metrics,
            xferlog,
            drain_timeout,
            log
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_port_ranges_parse_or_say_why() {
        assert_eq!(parse_rate("8M"), Ok(8 << 20));
        assert_eq!(parse_rate("1K"), Ok(1024));
        assert!(parse_rate("0").unwrap_err().contains("stop every transfer"));
        assert!(parse_rate("500").unwrap_err().contains("at least 1K"));
        assert!(parse_rate("fast").unwrap_err().contains("bytes per second"));
        assert_eq!(parse_port_range("50000-50100"), Ok((50000, 50100)));
        assert_eq!(parse_port_range(" 7 - 7 "), Ok((7, 7)));
        for bad in ["50100-50000", "0-10", "50000", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).unwrap_err().contains("LOW-HIGH"), "{bad}");
        }
    }

    #[test]
    fn every_option_parses() {
        let o = parse(
            r#"
queue = 77
fail-closed = true
mark = "0x20000"
table = 99
cache-dir = "/var/cache/ftpgate"
state-dir = "/var/lib/ftpgate"
cache-max-bytes = "2G"
cache-write-buffer = "32M"
data-nice = 12
listen = ["192.168.77.1:2121"]
allow-from = ["192.168.77.0/24"]
allow-dest = ["0.0.0.0/0"]
metrics = "127.0.0.1:9121"
xferlog = "/var/log/ftpgate/xferlog"
log = "info"
"#,
        )
        .unwrap();
        assert_eq!(o.queue, Some(77));
        assert_eq!(o.mark, Some(0x20000));
        assert_eq!(o.cache_max_bytes, Some(2 << 30));
        assert_eq!((o.cache_write_buffer, o.data_nice), (Some(32 << 20), Some(12)));
        assert_eq!(o.allow_from.unwrap()[0].0.prefix_len(), 24);
        assert_eq!(o.listen.unwrap()[0], "192.168.77.1:2121".parse().unwrap());
    }

    #[test]
    fn errors_name_line_and_key() {
        let err = parse("queue = 77\ncache-sise = \"1G\"\n").unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid { line: Some(2), .. }), "{err:?}");
        let e = err.to_string();
        assert!(e.starts_with("2: ") && e.contains("cache-sise"), "{e}");
        let e = parse("queue = 77\n\nqueue-x = 1\ndata-timeout = 5\n").unwrap_err().to_string();
        assert!(e.starts_with("3: ") && e.contains("queue-x"), "{e}");
        let e = parse("data-timeout = \"soon\"\n").unwrap_err().to_string();
        assert!(e.starts_with("1: data-timeout: "), "{e}");
        let e = parse("allow-from = [\"10.0.0.0/40\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("1: allow-from: ") && e.contains("prefix"), "{e}");
        let e = parse("cache-max-bytes = \"lots\"\n").unwrap_err().to_string();
        assert!(e.starts_with("1: cache-max-bytes: ") && e.contains("bad size"), "{e}");
        let e = parse("queue = 70000\n").unwrap_err().to_string();
        assert!(e.starts_with("1: queue: "), "{e}");
    }

    #[test]
    fn command_line_overrides_file() {
        let file = Options { queue: Some(5), data_timeout: Some(9), ..Default::default() };
        let cli = Options { queue: Some(7), ..Default::default() };
        let o = cli.over(file);
        assert_eq!((o.queue, o.data_timeout), (Some(7), Some(9)));
    }
}
