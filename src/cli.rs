//! The command line's definitions (clap): `ftpgate rules|run|cache|status|check-config|
//! proxy-passwd`. Each command's options become [`Options`], merged over the configuration file
//! and resolved in [`crate::settings`]. The manual pages are generated from these
//! (`cargo run --example man -- man`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_hex, parse_port_range, parse_rate, parse_size, Forwarding, Options};
use crate::proto::explicit::Cidr;

#[derive(Parser)]
#[command(name = "ftpgate", version, about = "Transparent FTP gateway for Linux routers")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start
pub enum Cmd {
    /// Install, remove or print the iptables/ip-rule set-up (idempotent)
    Rules {
        #[command(subcommand)]
        op: RulesOp,
    },
    /// Run the gateway in the foreground until SIGTERM
    Run(RunArgs),
    /// Inspect or empty the download cache
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// Print a `--proxy-users` line for NAME; reads the password from standard input
    ProxyPasswd { name: String },
    /// Validate the configuration file (and what it names) without starting
    CheckConfig {
        /// Configuration file [default: /etc/ftpgate/ftpgate.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the running gateway's sessions and transfers in flight
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The running gateway's cache dir (where its status socket is)
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CacheOp {
    /// One line per entry: server, login, type, size, MDTM, path
    List(CacheDirArg),
    /// Delete every entry (stop `run` first)
    Clear(CacheDirArg),
}

#[derive(Args)]
pub struct CacheDirArg {
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum RulesOp {
    Apply(RuleArgs),
    Remove(RuleArgs),
    /// Print the rules in iptables-save form; touch nothing
    Show(RuleArgs),
}

#[derive(Args, Clone)]
pub struct RuleArgs {
    /// Configuration file [default: /etc/ftpgate/ftpgate.toml if it exists]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NFQUEUE number [default: 2121]
    #[arg(long)]
    pub queue: Option<u16>,
    /// Drop control traffic while no ftpgate runs (default: pass it unrewritten)
    #[arg(long)]
    pub fail_closed: bool,
    /// Packet mark for the relay's transparent sockets [default: 0x10000]
    #[arg(long, value_parser = parse_hex)]
    pub mark: Option<u32>,
    /// Routing table for marked packets [default: 2121]
    #[arg(long)]
    pub table: Option<u32>,
    /// The NAT64 translator's interface (tayga's TUN device), whose IPv4 side of a translated
    /// session is not intercepted a second time
    #[arg(long, value_name = "IFACE")]
    pub nat64_interface: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/ftpgate/ftpgate.toml if it exists]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NFQUEUE number [default: 2121]
    #[arg(long)]
    pub queue: Option<u16>,
    /// Cache directory, also for the status socket (required here or in the file)
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Where the session state (sequence offsets a restart resumes) is kept [default: systemd's
    /// $STATE_DIRECTORY (/var/lib/ftpgate) when the unit runs ftpgate, else the cache dir]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Seconds an announced data port waits for its peer [default: 30]
    #[arg(long)]
    pub data_timeout: Option<u64>,
    /// Seconds without progress before a data connection is closed [default: 300]
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Drop control traffic while no ftpgate runs (default: pass it unrewritten)
    #[arg(long)]
    pub fail_closed: bool,
    /// Cache size limit, least recently used entries go first [default: 1G]
    #[arg(long, value_parser = parse_size)]
    pub cache_max_bytes: Option<u64>,
    /// Files modified less than this many seconds before their download are not cached [default: 3]
    #[arg(long)]
    pub cache_settle: Option<u64>,
    /// How far a download's copy into the cache may fall behind the client before it is
    /// abandoned (not kept: cache disk too slow); the client never waits for the cache disk
    /// [default: 16M]
    #[arg(long, value_parser = parse_size)]
    pub cache_write_buffer: Option<u64>,
    /// Seconds to wait for the server's answers to a freshness check (MLST, or MDTM and SIZE) [default: 3]
    #[arg(long)]
    pub check_timeout: Option<u64>,
    /// Connections of ftpgate's own (freshness checks) at once per server and login; idle ones
    /// close after 2 s, none opens for 10 s after a 421 [default: 2]
    #[arg(long)]
    pub check_connections: Option<usize>,
    /// Turn the cache off (relay only)
    #[arg(long)]
    pub no_cache: bool,
    /// Do not fetch a file again (on a connection of ftpgate's own, at the cache disk's pace)
    /// after its capture was abandoned because the disk could not keep up with the client
    #[arg(long)]
    pub no_refetch: bool,
    /// Who moves the bytes of data connections that need neither capture nor serving (with
    /// --no-cache: all of them): `kernel` forwards them under a single-use permission ftpgate
    /// gives for exactly the expected peer and endpoint (needs the nftables table `rules apply`
    /// loads; otherwise they are relayed), `relay` splices them through ftpgate [default: kernel]
    #[arg(long, value_enum)]
    pub data_forwarding: Option<Forwarding>,
    /// Control sessions at once; more get 421 [default: 1024]
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Real-time (SCHED_FIFO) priority of the queue thread, so the control path never queues
    /// behind the data path; 0 leaves it at normal priority (needs CAP_SYS_NICE) [default: 10]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub queue_priority: Option<u8>,
    /// Real-time (SCHED_FIFO) priority of the data relay's threads, below the queue thread's
    /// (like the kernel's own forwarding, which runs above every task); 0 = normal priority
    /// (SCHED_BATCH at --data-nice) [default: half of --queue-priority]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=98))]
    pub data_priority: Option<u8>,
    /// Nice value of the data relay's threads when they are not at real-time priority; below 0
    /// needs CAP_SYS_NICE [default: 0]
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i8).range(-20..=19))]
    pub data_nice: Option<i8>,
    /// CPUs the data relay's threads may use while at real-time priority, `all` or a list
    /// (`1`, `1-3`, `0,2`); name CPUs other than those the network cards interrupt, whose
    /// packet processing would otherwise wait behind them [default: all but the first, so that
    /// one core is never held by them]
    #[arg(long, value_name = "LIST", value_parser = crate::sched::parse_cpus)]
    pub data_cpus: Option<crate::sched::CpuChoice>,
    /// Data connections at once; more PASV/PORT get 425 [default: 512]
    #[arg(long)]
    pub max_data: Option<usize>,
    /// The ports ftpgate chooses itself (a rewritten PORT/EPRT behind NAT, the explicit proxy's
    /// and NAT64 sessions' endpoints), LOW-HIGH; all taken: 425 [default: any]
    #[arg(long, value_name = "LOW-HIGH", value_parser = parse_port_range)]
    pub data_ports: Option<(u16, u16)>,
    /// Explicit FTP proxy listener, ADDR:PORT (an IPv6 ADDR in brackets; repeatable), beside transparent interception
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Explicit proxy users, `name:argon2-hash` a line (`ftpgate proxy-passwd NAME`); makes a proxy login mandatory
    #[arg(long, value_name = "FILE")]
    pub proxy_users: Option<PathBuf>,
    /// Networks allowed to use the explicit proxy (repeatable; without --proxy-users, required)
    #[arg(long, value_name = "CIDR")]
    pub allow_from: Vec<Cidr>,
    /// Networks the explicit proxy may connect to (repeatable) [default: any but the gateway itself]
    #[arg(long, value_name = "CIDR")]
    pub allow_dest: Vec<Cidr>,
    /// Seconds the explicit proxy waits for a server to accept and greet [default: 10]
    #[arg(long)]
    pub connect_timeout: Option<u64>,
    /// NAT64 prefix (/96; repeatable): IPv6 sessions to PREFIX::a.b.c.d are translated to the
    /// IPv4 server a.b.c.d as RFC 6384's FTP ALG [default: 64:ff9b::/96]
    #[arg(long, value_name = "PREFIX")]
    pub nat64_prefix: Vec<Cidr>,
    /// A command no client may send through the gateway (repeatable; e.g. STOR, APPE, DELE,
    /// RNFR, MKD, RMD, SITE): the client gets 550, the server never sees it
    #[arg(long, value_name = "CMD")]
    pub deny_command: Vec<String>,
    /// The data connections' mode towards the server: client (as the client asked), passive
    /// (a client's PORT/EPRT becomes PASV/EPSV: for servers that cannot connect outwards) or
    /// active (a client's PASV/EPSV becomes PORT/EPRT: for servers whose passive ports are
    /// closed) [default: client]
    #[arg(long, value_name = "MODE")]
    pub server_mode: Option<crate::proto::ServerMode>,
    /// Bandwidth limit of each session's downloads (cache hits too), bytes per second with K, M
    /// or G (binary: 8M = 8 MiB/s); all sessions of one client address share one such limit
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate_down: Option<u64>,
    /// Bandwidth limit of each session's uploads, as --rate-down
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate_up: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Append a classic xferlog line per file transfer to FILE
    #[arg(long, value_name = "FILE")]
    pub xferlog: Option<PathBuf>,
    /// Seconds SIGTERM waits for data transfers in progress [default: 10]
    #[arg(long)]
    pub drain_timeout: Option<u64>,
    /// Log filter (RUST_LOG syntax: info, debug, ftpgate=debug, …) [default: info; RUST_LOG wins]
    #[arg(long)]
    pub log: Option<String>,
}

pub(crate) fn vec_opt<T>(v: &[T]) -> Option<Vec<T>>
where
    T: Clone,
{
    (!v.is_empty()).then(|| v.to_vec())
}

impl RunArgs {
    pub fn options(&self) -> Options {
        Options {
            queue: self.queue,
            fail_closed: self.fail_closed.then_some(true),
            mark: None,
            table: None,
            cache_dir: self.cache_dir.clone(),
            state_dir: self.state_dir.clone(),
            data_timeout: self.data_timeout,
            idle_timeout: self.idle_timeout,
            cache_max_bytes: self.cache_max_bytes,
            cache_settle: self.cache_settle,
            cache_write_buffer: self.cache_write_buffer,
            check_timeout: self.check_timeout,
            check_connections: self.check_connections,
            queue_priority: self.queue_priority,
            data_nice: self.data_nice,
            data_priority: self.data_priority,
            data_cpus: self.data_cpus.clone(),
            no_cache: self.no_cache.then_some(true),
            no_refetch: self.no_refetch.then_some(true),
            data_forwarding: self.data_forwarding,
            max_sessions: self.max_sessions,
            max_data: self.max_data,
            data_ports: self.data_ports,
            listen: vec_opt(&self.listen),
            proxy_users: self.proxy_users.clone(),
            allow_from: vec_opt(&self.allow_from),
            allow_dest: vec_opt(&self.allow_dest),
            connect_timeout: self.connect_timeout,
            nat64_prefix: vec_opt(&self.nat64_prefix),
            nat64_interface: None,
            deny_command: vec_opt(&self.deny_command),
            server_mode: self.server_mode,
            rate_down: self.rate_down,
            rate_up: self.rate_up,
            policy: None,
            metrics: self.metrics,
            xferlog: self.xferlog.clone(),
            drain_timeout: self.drain_timeout,
            log: self.log.clone(),
        }
    }
}

impl RuleArgs {
    pub fn options(&self) -> Options {
        Options {
            queue: self.queue,
            fail_closed: self.fail_closed.then_some(true),
            mark: self.mark,
            table: self.table,
            nat64_interface: self.nat64_interface.clone(),
            ..Default::default()
        }
    }
}
