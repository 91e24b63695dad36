//! Prometheus metrics (`--metrics ADDR` serves them as text at `/metrics`). Counters are
//! process-wide; the shells count what they see, the protocol core stays free of them.

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::log;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeL {
    pub mode: String,
}

/// A started session: its mode, and its family (`ipv4`, `ipv6`, or `mixed` for a client of
/// one family and a server of the other).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionL {
    pub mode: String,
    pub family: String,
}

/// The `family` label of a session between `client` and `server`.
pub fn family(client: core::net::SocketAddr, server: core::net::SocketAddr) -> &'static str {
    match (client.is_ipv4(), server.is_ipv4()) {
        (true, true) => "ipv4",
        (false, false) => "ipv6",
        _ => "mixed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferL {
    pub mode: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirL {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindL {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonL {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeL {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub sessions_active: Family<ModeL, Gauge>,
    pub sessions: Family<SessionL, Counter>,
    pub transfers: Family<TransferL, Counter>,
    pub transfers_active: Gauge,
    pub bytes: Family<DirL, Counter>,
    pub rewrites: Family<KindL, Counter>,
    pub refusals: Family<ReasonL, Counter>,
    pub cache: Family<OutcomeL, Counter>,
    pub cache_evictions: Counter,
    pub cache_served_bytes: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub queue_drops: Family<ReasonL, Gauge>,
    /// Packets in ftpgate's queue waiting for a verdict (held ones included).
    pub queue_waiting: Gauge,
    /// From a packet's arrival in ftpgate (its receipt from the queue socket) to its verdict;
    /// held segments are not counted.
    pub verdict_seconds: Histogram,
    pub dropped_segments: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            sessions_active: Family::default(),
            sessions: Family::default(),
            transfers: Family::default(),
            transfers_active: Gauge::default(),
            bytes: Family::default(),
            rewrites: Family::default(),
            refusals: Family::default(),
            cache: Family::default(),
            cache_evictions: Counter::default(),
            cache_served_bytes: Counter::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            queue_drops: Family::default(),
            queue_waiting: Gauge::default(),
            // 5 µs … ~2.6 s
            verdict_seconds: Histogram::new(exponential_buckets(5e-6, 2.0, 20)),
            dropped_segments: Counter::default(),
        };
        r.register("ftpgate_sessions_active", "Control sessions in progress, as ftpgate status shows them", m.sessions_active.clone());
        r.register("ftpgate_sessions", "Control sessions seen", m.sessions.clone());
        r.register("ftpgate_data_transfers", "Data connections relayed, by mode and result", m.transfers.clone());
        r.register("ftpgate_data_transfers_active", "Data connections open or waiting", m.transfers_active.clone());
        r.register("ftpgate_relayed_bytes", "Bytes relayed on data connections", m.bytes.clone());
        r.register("ftpgate_rewrites", "Control lines rewritten, by kind", m.rewrites.clone());
        r.register("ftpgate_refusals", "Requests refused, by reason", m.refusals.clone());
        r.register("ftpgate_cache_requests", "Cacheable downloads, by outcome", m.cache.clone());
        r.register("ftpgate_cache_evictions", "Cache entries evicted for space", m.cache_evictions.clone());
        r.register("ftpgate_cache_served_bytes", "Bytes sent from the cache", m.cache_served_bytes.clone());
        r.register("ftpgate_cache_entries", "Entries in the cache", m.cache_entries.clone());
        r.register("ftpgate_cache_size_bytes", "Bytes in the cache", m.cache_bytes.clone());
        r.register("ftpgate_queue_drops", "Packets the kernel dropped from ftpgate's NFQUEUE", m.queue_drops.clone());
        r.register("ftpgate_queue_waiting", "Packets in ftpgate's NFQUEUE waiting for a verdict", m.queue_waiting.clone());
        r.register(
            "ftpgate_queue_verdict_seconds",
            "Time from a control packet's arrival in ftpgate to its verdict (held segments not counted)",
            m.verdict_seconds.clone(),
        );
        r.register("ftpgate_dropped_segments", "Control segments ftpgate dropped (retransmitted by TCP)", m.dropped_segments.clone());
        Metrics { registry: r, ..m }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }

    pub fn session_started(&self, mode: &str, family: &str) {
        self.sessions.get_or_create(&SessionL { mode: mode.into(), family: family.into() }).inc();
    }

    pub fn transfer(&self, mode: &str, result: &str, to_client: u64, to_server: u64) {
        self.transfers.get_or_create(&TransferL { mode: mode.into(), result: result.into() }).inc();
        self.bytes.get_or_create(&DirL { direction: "to_client".into() }).inc_by(to_client);
        self.bytes.get_or_create(&DirL { direction: "to_server".into() }).inc_by(to_server);
    }

    pub fn rewrite(&self, kind: &str) {
        self.rewrites.get_or_create(&KindL { kind: kind.into() }).inc();
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonL { reason: reason.into() }).inc();
    }

    pub fn cache(&self, outcome: &str) {
        self.cache.get_or_create(&OutcomeL { outcome: outcome.into() }).inc();
    }
}

/// The process's metrics.
pub fn m() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The kernel's drop counters of one queue (`/proc/net/netfilter/nfnetlink_queue`: the queue
/// was full, or the netlink socket could not take the packet).
/// Also the packets waiting in it (`queue_total`).
fn queue_drops(queue: u16) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").ok()?;
    text.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        Some((w.get(5)?.parse().ok()?, w.get(6)?.parse().ok()?, w.get(2)?.parse().ok()?))
    })
}

/// What is in progress, read each time `/metrics` is asked (sessions, data connections, cache
/// totals), so this module depends on nothing of the gateway's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub transparent_sessions: usize,
    pub explicit_sessions: usize,
    pub data_connections: usize,
    /// Entries and bytes, when there is a cache.
    pub cache: Option<(usize, u64)>,
}

/// Serves `/metrics` on `addr` from a thread of its own; `gauges` is called per request.
pub fn serve(addr: std::net::SocketAddr, queue: u16, gauges: impl Fn() -> Gauges + Send + 'static) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen: {e}"))?;
    log!("metrics at http://{addr}/metrics");
    std::thread::Builder::new().name("ftpgate-metrics".into()).spawn(move || {
        for req in server.incoming_requests() {
            if req.url() != "/metrics" {
                let _ = req.respond(tiny_http::Response::from_string("see /metrics\n").with_status_code(404));
                continue;
            }
            let m = m();
            let g = gauges();
            m.sessions_active.get_or_create(&ModeL { mode: "transparent".into() }).set(g.transparent_sessions as i64);
            m.sessions_active.get_or_create(&ModeL { mode: "explicit".into() }).set(g.explicit_sessions as i64);
            m.transfers_active.set(g.data_connections as i64);
            if let Some((entries, bytes)) = g.cache {
                m.cache_entries.set(entries as i64);
                m.cache_bytes.set(bytes as i64);
            }
            if let Some((full, user, waiting)) = queue_drops(queue) {
                m.queue_waiting.set(waiting as i64);
                m.queue_drops.get_or_create(&ReasonL { reason: "queue_full".into() }).set(full as i64);
                m.queue_drops.get_or_create(&ReasonL { reason: "socket_full".into() }).set(user as i64);
            }
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4; charset=utf-8"[..]).expect("static header");
            let _ = req.respond(tiny_http::Response::from_string(m.render()).with_header(header));
        }
    })?;
    Ok(())
}
