//! `ftpgate`: command line. Parses, validates, starts the shells; no protocol logic here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use ftpgate::filter::RuleSet;
use ftpgate::log;
use ftpgate::nfq_loop::{self, Helper, LoopConfig};
use ftpgate::cache::fresh::Checker;
use ftpgate::cache::store::{self, Store};
use ftpgate::proto::explicit::{Access, Cidr};
use ftpgate::proxy::{self, ProxyConfig, Users};
use ftpgate::relay::{CacheCtx, Relay, RelayConfig};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "ftpgate", version, about = "Transparent FTP gateway for Linux routers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install or remove ftpgate's iptables rules in the current network namespace.
    Rules {
        #[command(subcommand)]
        op: RulesOp,
    },
    /// Run the gateway in the foreground until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Inspect or empty the download cache.
    Cache {
        #[command(subcommand)]
        op: CacheOp,
    },
    /// Print a `--proxy-users` line for NAME: reads the password from standard input
    ProxyPasswd {
        name: String,
    },
}

#[derive(Subcommand)]
enum CacheOp {
    /// List the entries: server, login, path, size, MDTM.
    List(CacheDirArg),
    /// Delete every entry (stop `ftpgate run` first, or it forgets entries as it finds them gone).
    Clear(CacheDirArg),
}

#[derive(Args)]
struct CacheDirArg {
    #[arg(long)]
    cache_dir: PathBuf,
}

#[derive(Subcommand)]
enum RulesOp {
    /// Add the rules (idempotent).
    Apply(RuleArgs),
    /// Remove exactly the rules apply adds (idempotent).
    Remove(RuleArgs),
    /// Print the rules in iptables-save form without touching the firewall.
    Show(RuleArgs),
}

#[derive(Args, Clone)]
struct RuleArgs {
    /// NFQUEUE number for FTP control packets.
    #[arg(long, default_value_t = 2121)]
    queue: u16,
    /// Drop FTP control traffic while no ftpgate runs, instead of letting it pass unrewritten.
    #[arg(long)]
    fail_closed: bool,
    /// Packet mark bit for data connections steered to the relay.
    #[arg(long, default_value = "0x10000", value_parser = parse_hex)]
    mark: u32,
    /// Routing table that delivers marked packets locally.
    #[arg(long, default_value_t = 2121)]
    table: u32,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 2121)]
    queue: u16,
    /// Directory for the download cache (created if missing; must be writable).
    #[arg(long)]
    cache_dir: PathBuf,
    /// Seconds an announced data port waits for its peer.
    #[arg(long, default_value_t = 30)]
    data_timeout: u64,
    /// Seconds a data connection may make no progress.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Drop queued packets when the queue overflows instead of passing them.
    #[arg(long)]
    fail_closed: bool,
    /// Size limit of the cache (bytes; K, M, G suffixes); least recently used entries go first.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    cache_max_bytes: u64,
    /// Files modified less than this many seconds before their download are not cached (MDTM
    /// has one-second resolution; this also absorbs small clock differences).
    #[arg(long, default_value_t = 3)]
    cache_settle: u64,
    /// Seconds ftpgate waits for the server's answer to MDTM/SIZE before a cached RETR goes
    /// to the server uncached.
    #[arg(long, default_value_t = 3)]
    check_timeout: u64,
    /// Relay downloads without caching them.
    #[arg(long)]
    no_cache: bool,
    /// Control sessions at once; a new one beyond gets "421" instead of the server's greeting.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
    /// Data connections (announced or transferring) at once; beyond, PASV/PORT get "425".
    #[arg(long, default_value_t = 512)]
    max_data: usize,
    /// Explicit FTP proxy listener, ADDR:PORT (repeatable), beside transparent interception
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddrV4>,
    /// Explicit proxy: users allowed to log in to the proxy, `name:argon2-hash` a line
    /// (`ftpgate proxy-passwd NAME`); makes a proxy login mandatory
    #[arg(long, value_name = "FILE")]
    proxy_users: Option<PathBuf>,
    /// Explicit proxy: networks allowed to use it (repeatable; without --proxy-users, required)
    #[arg(long, value_name = "CIDR")]
    allow_from: Vec<Cidr>,
    /// Explicit proxy: networks it may connect to (repeatable; default any but the gateway itself)
    #[arg(long, value_name = "CIDR")]
    allow_dest: Vec<Cidr>,
    /// Explicit proxy: seconds to wait for a server to accept and greet
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?} (expected bytes, optionally with K, M, G or T)"))
}

fn parse_hex(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0x");
    u32::from_str_radix(t, if t.len() < s.len() { 16 } else { 10 }).map_err(|e| format!("bad number {s:?}: {e}"))
}

fn rules(a: &RuleArgs) -> RuleSet {
    RuleSet { queue: a.queue, fail_open: !a.fail_closed, mark: a.mark, table: a.table }
}

fn check_cache_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cache dir {}: cannot create", dir.display()))?;
    let probe = dir.join(format!(".ftpgate-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cache dir {}: not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// SIGTERM/SIGINT end the process cleanly from a dedicated thread; the kernel unbinds the queue
/// when the socket closes, and `--queue-bypass` rules then let control traffic pass.
fn handle_signals() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("cannot block signals")?;
    std::thread::Builder::new().name("ftpgate-signals".into()).spawn(move || {
        if let Ok(sig) = set.wait() {
            log!("{sig:?} received; exiting");
            std::process::exit(0);
        }
    })?;
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    check_cache_dir(&a.cache_dir)?;
    if a.data_timeout == 0 {
        bail!("--data-timeout must be at least 1 second");
    }
    if a.listen.is_empty() && (a.proxy_users.is_some() || !a.allow_from.is_empty() || !a.allow_dest.is_empty()) {
        bail!("--proxy-users, --allow-from and --allow-dest need an explicit proxy listener (--listen ADDR:PORT)");
    }
    let users = a.proxy_users.as_deref().map(Users::load).transpose()?;
    if !a.listen.is_empty() && users.is_none() && a.allow_from.is_empty() {
        log!("explicit proxy: no --proxy-users and no --allow-from: every client will be refused");
    }
    handle_signals()?;
    let cache = if a.no_cache {
        None
    } else {
        let store = Store::open(&a.cache_dir, a.cache_max_bytes)
            .with_context(|| format!("cache dir {}: cannot open", a.cache_dir.display()))?;
        Some(Arc::new(CacheCtx {
            store,
            checker: Arc::new(Checker::new(Duration::from_secs(a.check_timeout.max(1)))),
            settle: a.cache_settle as i64,
        }))
    };
    let relay = Relay::new(
        RelayConfig {
            accept_timeout: Duration::from_secs(a.data_timeout),
            idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
            max_data: a.max_data,
        },
        ftpgate::conntrack::server_side_client_addr,
        cache.clone(),
    );
    if !a.listen.is_empty() {
        let access = Access { auth: users.is_some(), allow_from: a.allow_from.clone(), allow_dest: a.allow_dest.clone() };
        let cfg = ProxyConfig {
            listen: a.listen.clone(),
            users,
            access,
            connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
            idle: Duration::from_secs(3600),
            max_sessions: a.max_sessions,
        };
        proxy::spawn(cfg, relay.handle(), cache.clone())?;
    }
    let helper = Helper::new(
        relay,
        cache,
        LoopConfig {
            queue: a.queue,
            fail_open: !a.fail_closed,
            idle: Duration::from_secs(3600),
            mapped_idle: Duration::from_secs(5 * 24 * 3600),
            state_file: Some(a.cache_dir.join("sessions.state")),
            max_sessions: a.max_sessions,
        },
    )?;
    nfq_loop::run(helper)
}

fn cache_cmd(op: CacheOp) -> Result<()> {
    match op {
        CacheOp::List(d) => {
            let entries = store::list(&d.cache_dir).with_context(|| format!("cache dir {}", d.cache_dir.display()))?;
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
            let n = store::clear(&d.cache_dir).with_context(|| format!("cache dir {}", d.cache_dir.display()))?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rules { op: RulesOp::Apply(a) } => rules(&a).apply(),
        Cmd::Rules { op: RulesOp::Remove(a) } => rules(&a).remove(),
        Cmd::Rules { op: RulesOp::Show(a) } => {
            print!("{}", rules(&a).show());
            Ok(())
        }
        Cmd::Run(a) => run(a),
        Cmd::Cache { op } => cache_cmd(op),
        Cmd::ProxyPasswd { name } => proxy_passwd(&name),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
