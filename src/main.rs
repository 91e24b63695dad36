//! `ftpgate`: command line. Parses, merges the configuration file, validates, starts the
//! shells; no protocol logic here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use ftpgate::cache::fresh::{Checker, Limits};
use ftpgate::cache::store::{self, Store};
use ftpgate::cli::{CacheOp, Cli, Cmd, RulesOp, RunArgs};
use ftpgate::config::{self, Forwarding, Options};
use ftpgate::log;
use ftpgate::nfq_loop::{self, Helper, LoopConfig};
use ftpgate::proxy::{self, ProxyConfig};
use ftpgate::relay::{CacheCtx, Relay};
use ftpgate::settings::{rule_set, Settings};
use ftpgate::signals;
use ftpgate::status::{self, Board};

/// The command line over the configuration file.
fn merged(cli: Options, file: Option<&Path>) -> Result<Options> {
    let file = config::find(file).map_err(|e| anyhow!("config {e}"))?;
    Ok(cli.over(file.unwrap_or_default()))
}

fn settings(o: Options) -> Result<Settings> {
    Ok(Settings::resolve(o)?)
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

fn run(a: RunArgs) -> Result<()> {
    let config_file = a.config.clone();
    let s = settings(merged(a.options(), config_file.as_deref())?)?;
    init_logging(s.log.as_deref());
    let signals = signals::block()?;
    check_cache_dir(&s.cache_dir)?;
    if s.state_dir != s.cache_dir {
        std::fs::create_dir_all(&s.state_dir).with_context(|| format!("state dir {}: cannot create", s.state_dir.display()))?;
    }
    if s.proxy.as_ref().is_some_and(|p| p.users.is_none() && p.access.allow_from.is_empty()) {
        ftpgate::warn!("explicit proxy: no --proxy-users and no --allow-from: every client will be refused");
    }
    if let Some(x) = &s.xferlog {
        ftpgate::xferlog::open(x).with_context(|| format!("--xferlog {}: cannot open", x.display()))?;
    }
    let cache = match &s.cache {
        None => None,
        Some(c) => {
            let store = Store::open(&s.cache_dir, c.max_bytes).with_context(|| format!("cache dir {}: cannot open", s.cache_dir.display()))?;
            Some(Arc::new(CacheCtx {
                store,
                checker: Checker::with_priority(
                    c.check_timeout,
                    Limits { per_login: c.check_connections, ..Limits::default() },
                    s.relay.rt_priority,
                    s.relay.nice,
                ),
                settle: c.settle_s,
                write_buffer: c.write_buffer,
                refetch: c.refetch,
            }))
        }
    };
    let queue = s.rules.queue;
    let mut relay = Relay::new(s.relay.clone(), ftpgate::conntrack::server_side_client_addr, cache.clone());
    if s.forwarding == Forwarding::Kernel {
        match relay.enable_forwarding() {
            Ok(()) if cache.is_none() => {
                log!("data connections are forwarded by the kernel (single-use permissions in nftables table ip {})", ftpgate::nft::TABLE)
            }
            Ok(()) => {}
            Err(e) => {
                log!("kernel forwarding of data connections unavailable (nftables table ip {}: {e}); the relay moves them", ftpgate::nft::TABLE)
            }
        }
    }
    let board = Arc::new(Board::default());
    status::serve(&s.cache_dir, board.clone(), relay.handle())?;
    if let Some(addr) = s.metrics {
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
    let reload_slot = Arc::new(Mutex::new(None));
    let policies: ftpgate::policy::Shared = Arc::new(Mutex::new(Arc::new(s.policies.clone())));
    let reload_policies = policies.clone();
    let state_file = s.state_file();
    let (max_sessions, drain, queue_priority, fail_open) = (s.max_sessions, s.drain, s.queue_priority, s.rules.fail_open);
    if let Some(p) = s.proxy {
        let cfg = ProxyConfig {
            listen: p.listen,
            users: p.users,
            access: p.access,
            reload: reload_slot.clone(),
            connect_timeout: p.connect_timeout,
            idle: Duration::from_secs(3600),
            max_sessions,
            board: Some(board.clone()),
            policy: policies.clone(),
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
                *reload_policies.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(n.policies);
                if let Some(p) = n.proxy {
                    *reload_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((p.users, p.access));
                }
                log!("SIGHUP: configuration re-read; the policy, proxy users and access rules apply to new sessions, other changes need a restart");
            }
            Err(e) => ftpgate::warn!("SIGHUP: configuration not reloaded: {e:#}"),
        }
    };
    signals::handle(signals, relay.handle(), drain, reload)?;
    let mut helper = Helper::new(
        relay,
        cache,
        LoopConfig {
            queue,
            fail_open,
            idle: Duration::from_secs(3600),
            mapped_idle: Duration::from_secs(5 * 24 * 3600),
            state_file: Some(state_file),
            max_sessions,
            rt_priority: queue_priority,
            nat64: s.nat64.clone(),
            policy: policies,
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
        s.rules.queue,
        s.cache_dir.display(),
        s.proxy.as_ref().map_or(0, |p| p.listen.len()),
        if s.proxy.as_ref().is_some_and(|p| p.users.is_some()) { ", proxy users loaded" } else { "" }
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
                println!("{}\t{}\t{}\t{}\t{}\t{}", m.key.server, m.key.user, if m.key.binary { "I" } else { "A" }, m.size, m.mdtm, m.key.path);
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Rules { op: RulesOp::Apply(a) } => merged(a.options(), a.config.as_deref()).and_then(|o| rule_set(&o).apply()),
        Cmd::Rules { op: RulesOp::Remove(a) } => merged(a.options(), a.config.as_deref()).and_then(|o| rule_set(&o).remove()),
        Cmd::Rules { op: RulesOp::Show(a) } => merged(a.options(), a.config.as_deref()).map(|o| print!("{}", rule_set(&o).show())),
        Cmd::Run(a) => run(a),
        Cmd::Cache { op } => cache_cmd(op),
        Cmd::ProxyPasswd { name } => proxy_passwd(&name),
        Cmd::CheckConfig { config } => check_config(config),
        Cmd::Status { config, cache_dir } => cache_dir_of(config.as_deref(), cache_dir).and_then(|d| status::query(&d)).map(|t| print!("{t}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
