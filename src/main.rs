//! `ftpgate`: command line. Parses, merges the configuration file, validates, starts the
//! shells; no protocol logic here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use clap::{Args, CommandFactory, Parser, Subcommand};

use ftpgate::cache::fresh::{Checker, Limits};
use ftpgate::cache::store::{self, Store};
use ftpgate::config::{self, parse_hex, parse_size, Forwarding, Options};
use ftpgate::filter::RuleSet;
use ftpgate::log;
use ftpgate::nfq_loop::{self, Helper, LoopConfig};
use ftpgate::proto::explicit::{Access, Cidr};
use ftpgate::proxy::{self, ProxyConfig, Users};
use ftpgate::relay::{CacheCtx, Relay, RelayConfig};
use ftpgate::status::{self, Board};

#[derive(Parser)]
#[command(name = "ftpgate", version, about = "Transparent FTP gateway for Linux routers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start
enum Cmd {
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
    /// Write the manual pages (roff, from these definitions) into DIR
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Subcommand)]
enum CacheOp {
    /// One line per entry: server, login, type, size, MDTM, path
    List(CacheDirArg),
    /// Delete every entry (stop `run` first)
    Clear(CacheDirArg),
}

#[derive(Args)]
struct CacheDirArg {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RulesOp {
    Apply(RuleArgs),
    Remove(RuleArgs),
    /// Print the rules in iptables-save form; touch nothing
    Show(RuleArgs),
}

#[derive(Args, Clone)]
struct RuleArgs {
    /// Configuration file [default: /etc/ftpgate/ftpgate.toml if it exists]
    #[arg(long)]
    config: Option<PathBuf>,
    /// NFQUEUE number [default: 2121]
    #[arg(long)]
    queue: Option<u16>,
    /// Drop control traffic while no ftpgate runs (default: pass it unrewritten)
    #[arg(long)]
    fail_closed: bool,
    /// Packet mark for the relay's transparent sockets [default: 0x10000]
    #[arg(long, value_parser = parse_hex)]
    mark: Option<u32>,
    /// Routing table for marked packets [default: 2121]
    #[arg(long)]
    table: Option<u32>,
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file [default: /etc/ftpgate/ftpgate.toml if it exists]
    #[arg(long)]
    config: Option<PathBuf>,
    /// NFQUEUE number [default: 2121]
    #[arg(long)]
    queue: Option<u16>,
    /// Cache directory, also for the session state and the status socket (required here or in the file)
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Seconds an announced data port waits for its peer [default: 30]
    #[arg(long)]
    data_timeout: Option<u64>,
    /// Seconds without progress before a data connection is closed [default: 300]
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Drop control traffic while no ftpgate runs (default: pass it unrewritten)
    #[arg(long)]
    fail_closed: bool,
    /// Cache size limit, least recently used entries go first [default: 1G]
    #[arg(long, value_parser = parse_size)]
    cache_max_bytes: Option<u64>,
    /// Files modified less than this many seconds before their download are not cached [default: 3]
    #[arg(long)]
    cache_settle: Option<u64>,
    /// How far a download's copy into the cache may fall behind the client before it is
    /// abandoned (not kept: cache disk too slow); the client never waits for the cache disk
    /// [default: 16M]
    #[arg(long, value_parser = parse_size)]
    cache_write_buffer: Option<u64>,
    /// Seconds to wait for the server's MDTM/SIZE answers [default: 3]
    #[arg(long)]
    check_timeout: Option<u64>,
    /// Connections of ftpgate's own (freshness checks) at once per server and login; idle ones
    /// close after 2 s, none opens for 10 s after a 421 [default: 2]
    #[arg(long)]
    check_connections: Option<usize>,
    /// Turn the cache off (relay only)
    #[arg(long)]
    no_cache: bool,
    /// Do not fetch a file again (on a connection of ftpgate's own, at the cache disk's pace)
    /// after its capture was abandoned because the disk could not keep up with the client
    #[arg(long)]
    no_refetch: bool,
    /// Who moves the bytes of data connections that need neither capture nor serving (with
    /// --no-cache: all of them): `kernel` forwards them under a single-use permission ftpgate
    /// gives for exactly the expected peer and endpoint (needs the nftables table `rules apply`
    /// loads; otherwise they are relayed), `relay` splices them through ftpgate [default: kernel]
    #[arg(long, value_enum)]
    data_forwarding: Option<Forwarding>,
    /// Control sessions at once; more get 421 [default: 1024]
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Real-time (SCHED_FIFO) priority of the queue thread, so the control path never queues
    /// behind the data path; 0 leaves it at normal priority (needs CAP_SYS_NICE) [default: 10]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=99))]
    queue_priority: Option<u8>,
    /// Real-time (SCHED_FIFO) priority of the data relay's threads, below the queue thread's
    /// (like the kernel's own forwarding, which runs above every task); 0 = normal priority
    /// (SCHED_BATCH at --data-nice) [default: half of --queue-priority]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=98))]
    data_priority: Option<u8>,
    /// Nice value of the data relay's threads when they are not at real-time priority; below 0
    /// needs CAP_SYS_NICE [default: 0]
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i8).range(-20..=19))]
    data_nice: Option<i8>,
    /// Data connections at once; more PASV/PORT get 425 [default: 512]
    #[arg(long)]
    max_data: Option<usize>,
    /// Explicit FTP proxy listener, ADDR:PORT (repeatable), beside transparent interception
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddrV4>,
    /// Explicit proxy users, `name:argon2-hash` a line (`ftpgate proxy-passwd NAME`); makes a proxy login mandatory
    #[arg(long, value_name = "FILE")]
    proxy_users: Option<PathBuf>,
    /// Networks allowed to use the explicit proxy (repeatable; without --proxy-users, required)
    #[arg(long, value_name = "CIDR")]
    allow_from: Vec<Cidr>,
    /// Networks the explicit proxy may connect to (repeatable) [default: any but the gateway itself]
    #[arg(long, value_name = "CIDR")]
    allow_dest: Vec<Cidr>,
    /// Seconds the explicit proxy waits for a server to accept and greet [default: 10]
    #[arg(long)]
    connect_timeout: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Append a classic xferlog line per file transfer to FILE
    #[arg(long, value_name = "FILE")]
    xferlog: Option<PathBuf>,
    /// Seconds SIGTERM waits for data transfers in progress [default: 10]
    #[arg(long)]
    drain_timeout: Option<u64>,
    /// Log filter (RUST_LOG syntax: info, debug, ftpgate=debug, …) [default: info; RUST_LOG wins]
    #[arg(long)]
    log: Option<String>,
}

fn vec_opt<T>(v: &[T]) -> Option<Vec<T>>
where
    T: Clone,
{
    (!v.is_empty()).then(|| v.to_vec())
}

impl RunArgs {
    fn options(&self) -> Options {
        Options {
            queue: self.queue,
            fail_closed: self.fail_closed.then_some(true),
            mark: None,
            table: None,
            cache_dir: self.cache_dir.clone(),
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
            no_cache: self.no_cache.then_some(true),
            no_refetch: self.no_refetch.then_some(true),
            data_forwarding: self.data_forwarding,
            max_sessions: self.max_sessions,
            max_data: self.max_data,
            listen: vec_opt(&self.listen),
            proxy_users: self.proxy_users.clone(),
            allow_from: vec_opt(&self.allow_from),
            allow_dest: vec_opt(&self.allow_dest),
            connect_timeout: self.connect_timeout,
            metrics: self.metrics,
            xferlog: self.xferlog.clone(),
            drain_timeout: self.drain_timeout,
            log: self.log.clone(),
        }
    }
}

impl RuleArgs {
    fn options(&self) -> Options {
        Options {
            queue: self.queue,
            fail_closed: self.fail_closed.then_some(true),
            mark: self.mark,
            table: self.table,
            ..Default::default()
        }
    }
}

/// The command line over the configuration file.
fn merged(cli: Options, file: Option<&Path>) -> Result<Options> {
    let file = config::find(file).map_err(|e| anyhow!("config {e}"))?;
    Ok(cli.over(file.unwrap_or_default()))
}

fn rules(o: &Options) -> RuleSet {
    RuleSet {
        queue: o.queue.unwrap_or(2121),
        fail_open: !o.fail_closed.unwrap_or(false),
        mark: o.mark.unwrap_or(0x10000),
        table: o.table.unwrap_or(2121),
    }
}

/// Every setting of `run`, resolved and checked.
struct Settings {
    o: Options,
    cache_dir: PathBuf,
    users: Option<Users>,
}

impl Settings {
    /// The explicit proxy's access rules.
    fn access(&self) -> Access {
        Access {
            auth: self.users.is_some(),
            allow_from: self.o.allow_from.clone().unwrap_or_default(),
            allow_dest: self.o.allow_dest.clone().unwrap_or_default(),
        }
    }
}

fn settings(o: Options) -> Result<Settings> {
    let cache_dir = o.cache_dir.clone().ok_or_else(|| anyhow!("--cache-dir (or cache-dir in the configuration file) is required"))?;
    if o.data_timeout == Some(0) {
        bail!("--data-timeout must be at least 1 second");
    }
    if let Some(n) = o.data_nice.filter(|&n| !(-20..=19).contains(&n)) {
        bail!("data-nice {n} is out of range (-20 to 19)");
    }
    if let Some(p) = o.queue_priority.filter(|&p| p > 99) {
        bail!("queue-priority {p} is out of range (0 to 99)");
    }
    let queue_prio = o.queue_priority.unwrap_or(10);
    if let Some(d) = o.data_priority.filter(|&d| d > 0 && d >= queue_prio) {
        bail!("data-priority {d} must be below queue-priority ({queue_prio}): the control path must not queue behind the data path");
    }
    let listen = o.listen.clone().unwrap_or_default();
    if listen.is_empty() && (o.proxy_users.is_some() || o.allow_from.is_some() || o.allow_dest.is_some()) {
        bail!("--proxy-users, --allow-from and --allow-dest need an explicit proxy listener (--listen ADDR:PORT)");
    }
    let users = o.proxy_users.as_deref().map(Users::load).transpose()?;
    if let Some(f) = &o.log {
        tracing_subscriber::EnvFilter::try_new(f).map_err(|e| anyhow!("log filter {f:?}: {e}"))?;
    }
    Ok(Settings { o, cache_dir, users })
}

fn check_cache_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cache dir {}: cannot create", dir.display()))?;
    let probe = dir.join(format!(".ftpgate-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cache dir {}: not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn init_logging(filter: Option<&str>) {
    let f = std::env::var("RUST_LOG").ok().or_else(|| filter.map(str::to_string)).unwrap_or_else(|| "info".into());
    let f = tracing_subscriber::EnvFilter::try_new(&f).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(f).with_writer(std::io::stderr).with_ansi(false).with_target(false).try_init();
}

/// Blocks the signals `run` handles, before any thread starts (threads inherit the mask), so
/// only the signal thread receives them.
fn block_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().context("cannot block signals")?;
    Ok(set)
}

/// SIGTERM: wait for transfers in progress (up to `drain`), then exit. SIGINT: exit now.
/// SIGHUP: re-read the configuration and the proxy users; apply what is safe to change.
fn handle_signals(set: SigSet, relay: Relay, drain: Duration, reload: impl Fn() + Send + 'static) -> Result<()> {
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

fn run(a: RunArgs) -> Result<()> {
    let config_file = a.config.clone();
    let s = settings(merged(a.options(), config_file.as_deref())?)?;
    init_logging(s.o.log.as_deref());
    let signals = block_signals()?;
    let o = &s.o;
    check_cache_dir(&s.cache_dir)?;
    let listen = o.listen.clone().unwrap_or_default();
    if !listen.is_empty() && s.users.is_none() && o.allow_from.is_none() {
        ftpgate::warn!("explicit proxy: no --proxy-users and no --allow-from: every client will be refused");
    }
    if let Some(x) = &o.xferlog {
        ftpgate::xferlog::open(x).with_context(|| format!("--xferlog {}: cannot open", x.display()))?;
    }
    let cache = if o.no_cache.unwrap_or(false) {
        None
    } else {
        let store = Store::open(&s.cache_dir, o.cache_max_bytes.unwrap_or(1 << 30))
            .with_context(|| format!("cache dir {}: cannot open", s.cache_dir.display()))?;
        Some(Arc::new(CacheCtx {
            store,
            checker: Checker::with_limits(
                Duration::from_secs(o.check_timeout.unwrap_or(3).max(1)),
                Limits { per_login: o.check_connections.unwrap_or(2).max(1), ..Limits::default() },
            ),
            settle: o.cache_settle.unwrap_or(3) as i64,
            write_buffer: o.cache_write_buffer.unwrap_or(16 << 20).max(1 << 20) as usize,
            refetch: !o.no_refetch.unwrap_or(false),
        }))
    };
    let queue = o.queue.unwrap_or(2121);
    let mut relay = Relay::new(
        RelayConfig {
            accept_timeout: Duration::from_secs(o.data_timeout.unwrap_or(30)),
            idle_timeout: Duration::from_secs(o.idle_timeout.unwrap_or(300).max(1)),
            max_data: o.max_data.unwrap_or(512),
            rt_priority: o.data_priority.unwrap_or(o.queue_priority.unwrap_or(10) / 2),
            nice: o.data_nice.unwrap_or(0),
        },
        ftpgate::conntrack::server_side_client_addr,
        cache.clone(),
    );
    if o.data_forwarding.unwrap_or(Forwarding::Kernel) == Forwarding::Kernel {
        match relay.enable_forwarding() {
            Ok(()) if cache.is_none() => log!("data connections are forwarded by the kernel (single-use permissions in nftables table ip {})", ftpgate::nft::TABLE),
            Ok(()) => {}
            Err(e) => log!("kernel forwarding of data connections unavailable (nftables table ip {}: {e}); the relay moves them", ftpgate::nft::TABLE),
        }
    }
    let board = Arc::new(Board::default());
    status::serve(&s.cache_dir, board.clone(), relay.handle())?;
    if let Some(addr) = o.metrics {
        let (store, board, relay) = (cache.as_ref().map(|c| c.store.clone()), board.clone(), relay.handle());
        ftpgate::metrics::serve(addr, queue, move || {
            let (transparent_sessions, explicit_sessions) = board.counts();
            ftpgate::metrics::Gauges {
                transparent_sessions,
                explicit_sessions,
                data_connections: relay.data_connections(),
                cache: store.as_ref().map(|s| s.totals()),
            }
        })?;
    }
    let max_sessions = o.max_sessions.unwrap_or(1024);
    let reload_slot = Arc::new(Mutex::new(None));
    if !listen.is_empty() {
        let access = s.access();
        let cfg = ProxyConfig {
            listen: listen.clone(),
            users: s.users,
            access,
            reload: reload_slot.clone(),
            connect_timeout: Duration::from_secs(o.connect_timeout.unwrap_or(10).max(1)),
            idle: Duration::from_secs(3600),
            max_sessions,
            board: Some(board.clone()),
        };
        proxy::spawn(cfg, relay.handle(), cache.clone())?;
    }
    // SIGHUP: the explicit proxy's users and access rules are re-read; everything else (queue,
    // listeners, cache dir, limits) keeps its value until a restart
    let cli = a.options();
    let reload = move || {
        let fresh = merged(cli.clone(), config_file.as_deref()).and_then(settings);
        match fresh {
            Ok(n) => {
                let access = n.access();
                *reload_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((n.users, access));
                log!("SIGHUP: configuration re-read; proxy users and access rules apply to new sessions, other changes need a restart");
            }
            Err(e) => ftpgate::warn!("SIGHUP: configuration not reloaded: {e:#}"),
        }
    };
    handle_signals(signals, relay.handle(), Duration::from_secs(o.drain_timeout.unwrap_or(10)), reload)?;
    let mut helper = Helper::new(
        relay,
        cache,
        LoopConfig {
            queue,
            fail_open: !o.fail_closed.unwrap_or(false),
            idle: Duration::from_secs(3600),
            mapped_idle: Duration::from_secs(5 * 24 * 3600),
            state_file: Some(s.cache_dir.join("sessions.state")),
            max_sessions,
            rt_priority: o.queue_priority.unwrap_or(10),
        },
    )?;
    helper.board = Some(board);
    nfq_loop::run(helper)
}

fn check_config(file: Option<PathBuf>) -> Result<()> {
    let path = file.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let o = config::load(&path).map_err(|e| anyhow!("config {e}"))?;
    let s = settings(o)?;
    println!(
        "{}: OK (queue {}, cache dir {}, {} explicit proxy listeners{})",
        path.display(),
        s.o.queue.unwrap_or(2121),
        s.cache_dir.display(),
        s.o.listen.as_ref().map_or(0, Vec::len),
        if s.users.is_some() { ", proxy users loaded" } else { "" }
    );
    Ok(())
}

fn cache_dir_of(config: Option<&Path>, cache_dir: Option<PathBuf>) -> Result<PathBuf> {
    let o = merged(Options { cache_dir, ..Default::default() }, config)?;
    o.cache_dir.ok_or_else(|| anyhow!("--cache-dir (or cache-dir in the configuration file) is required"))
}

fn cache_cmd(op: CacheOp) -> Result<()> {
    match op {
        CacheOp::List(d) => {
            let dir = cache_dir_of(d.config.as_deref(), d.cache_dir)?;
            let entries = store::list(&dir).with_context(|| format!("cache dir {}", dir.display()))?;
            let total: u64 = entries.iter().map(|l| l.meta.size).sum();
            for l in &entries {
                let m = &l.meta;
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    m.key.server,
                    m.key.user,
                    if m.key.binary { "I" } else { "A" },
                    m.size,
                    m.mdtm,
                    m.key.path
                );
            }
            println!("{} entries, {total} bytes", entries.len());
        }
        CacheOp::Clear(d) => {
            let dir = cache_dir_of(d.config.as_deref(), d.cache_dir)?;
            let n = store::clear(&dir).with_context(|| format!("cache dir {}", dir.display()))?;
            println!("removed {n} entries");
        }
    }
    Ok(())
}

fn proxy_passwd(name: &str) -> Result<()> {
    if name.is_empty() || name.contains([':', '@', ' ']) {
        bail!("proxy user name {name:?}: must not be empty or contain ':', '@' or spaces");
    }
    let mut pass = String::new();
    std::io::stdin().read_line(&mut pass).context("cannot read the password from standard input")?;
    let pass = pass.trim_end_matches(['\r', '\n']);
    if pass.is_empty() {
        bail!("empty password");
    }
    println!("{name}:{}", proxy::hash_password(pass)?);
    Ok(())
}

/// ftpgate(1) and one page a subcommand (ftpgate-run(1), …).
fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("ftpgate".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("ftpgate-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str()); // once per page, then exit
        pages.push((name, sub.clone().name(leaked)));
    }
    for (name, c) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rules { op: RulesOp::Apply(a) } => merged(a.options(), a.config.as_deref()).and_then(|o| rules(&o).apply()),
        Cmd::Rules { op: RulesOp::Remove(a) } => merged(a.options(), a.config.as_deref()).and_then(|o| rules(&o).remove()),
        Cmd::Rules { op: RulesOp::Show(a) } => merged(a.options(), a.config.as_deref()).map(|o| print!("{}", rules(&o).show())),
        Cmd::Run(a) => run(a),
        Cmd::Cache { op } => cache_cmd(op),
        Cmd::ProxyPasswd { name } => proxy_passwd(&name),
        Cmd::CheckConfig { config } => check_config(config),
        Cmd::Status { config, cache_dir } => {
            cache_dir_of(config.as_deref(), cache_dir).and_then(|d| status::query(&d)).map(|t| print!("{t}"))
        }
        Cmd::Man { dir } => man_pages(&dir),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
