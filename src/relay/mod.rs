//! The data path: one relay per announced data connection.
//!
//! [`Relay`] implements [`DataPlane`]: for each PASV/EPSV/PORT/EPRT the helper allows, it opens a
//! *transparent* listener (IP_TRANSPARENT) on exactly the endpoint the peer will connect to —
//! the server's own address and port in passive mode, the client's address as the server sees it
//! in active mode — before the announcing line is released. The `-m socket --transparent` rule
//! from `crate::filter` steers that connection to the listener. The relay accepts one
//! connection, only from the peer it was opened for, within a timeout; then connects to the real
//! peer, again transparently (from the client's address in passive mode, the server's in active
//! mode) so each side sees the addresses it would see without ftpgate; then splices both ways.
//!
//! Each data connection runs on its own threads, so a slow client never stalls other sessions
//! or the control path.
//!
//! The control session tells a data connection what it carries ([`Transfer`]) before the server
//! can send a byte of it (the RETR's verdict is issued after): a download to capture into the
//! cache as it passes (`tee`), or a cache hit to serve (`sendfile`) while the server, told
//! `REST <size>`, sends nothing. Without one, bytes are relayed as they are.

pub mod forward;
mod job;
pub mod pace;
mod sockets;
pub mod splice;

use crate::sched::lower_priority;
use job::{ForwardJob, Job, Second};
pub use sockets::transparent_listener;
pub use sockets::DataPorts;
use sockets::{connect_from, local_port, reserve_port};

use core::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket;

use crate::cache::fresh::Checker;
use crate::cache::store::{Capture, Store};
use crate::cache::{decide, settled, Answer, Decision, Key, Login, Meta};
use crate::log;
use crate::metrics;
use crate::nft;
use crate::proto::{DataId, DataOutcome, DataPlane, DataRequest, DataState, Described, Mode, OpenError, Opened, Transfer};
use crate::xferlog;

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// How long an opened data port waits for its peer.
    pub accept_timeout: Duration,
    /// A data connection with no progress for this long is closed.
    pub idle_timeout: Duration,
    /// Data connections (waiting or transferring) at once; more are refused (425).
    pub max_data: usize,
    /// The ports ftpgate chooses itself (`--data-ports`).
    pub data_ports: DataPorts,
    /// Real-time (SCHED_FIFO) priority of the relay's threads, 0 = none (threads they start
    /// inherit it).
    pub rt_priority: u8,
    /// Nice value of the relay's threads when not at real-time priority.
    pub nice: i8,
    /// The CPUs the relay's threads keep to while at real-time priority (`--data-cpus`);
    /// `None`: any.
    pub cpus: Option<crate::sched::Confine>,
}

/// Finds the client's address as the server sees it (conntrack's NAT); `None` = not translated.
pub type NatLookup = fn(SocketAddr, SocketAddr) -> Option<IpAddr>;

/// The cache as the relay uses it.
pub struct CacheCtx {
    pub store: Arc<Store>,
    pub checker: Arc<Checker>,
    /// A file modified less than this many seconds before its download started is not kept
    /// (MDTM has one-second resolution).
    pub settle: i64,
    /// How far a capture may fall behind the client (bytes) before it is abandoned.
    pub write_buffer: usize,
    /// A capture abandoned because the disk was too slow is fetched again afterwards, on a
    /// connection of ftpgate's own at the disk's pace, so that the next download is a hit.
    pub refetch: bool,
}

impl CacheCtx {
    /// Asks the server whether a cached entry still is the file it names (MDTM, SIZE, on a
    /// connection of ftpgate's own under the client's login). A changed or deleted file's entry
    /// is dropped. Blocks for up to the checker's timeout: call it off the control loops.
    pub fn freshness(&self, login: &Login, entry: &Key) -> Decision {
        let facts = self.checker.check(login, &entry.path);
        let decision = match self.store.lookup(entry) {
            Some(meta) => decide(&meta, &facts.mdtm, &facts.size),
            None => Decision::Stale, // evicted meanwhile: fetch and capture again
        };
        if matches!(decision, Decision::Gone | Decision::Stale) {
            self.store.remove(entry);
        }
        decision
    }
}

/// What one data connection carries, once known.
enum Plan {
    /// `buffer`: how far the copy may fall behind the client ([`CacheCtx::write_buffer`]).
    Capture {
        cap: Capture,
        login: Login,
        buffer: usize,
    },
    Serve {
        file: File,
        meta: Meta,
        offset: u64,
    },
}

#[derive(Default)]
struct SlotState {
    plan: Option<Plan>,
    /// The command this connection serves, once known.
    desc: Option<Described>,
    /// The transfer command's final reply: 2xx or not.
    finished: Option<bool>,
    /// Where the connection stands; `None` while it waits for its peer.
    outcome: Option<DataOutcome>,
    /// A second handle on the listener while the peer has not been accepted, so the control
    /// path can tell a connection waiting in its backlog.
    listener: Option<OwnedFd>,
    /// A forwarded connection's end as its FIN/RST segments told: (bytes from the peer, bytes
    /// to the peer, reset).
    forwarded_end: Option<ForwardedEnd>,
    /// Active mode with the cache on: the command may still hand this connection to the kernel
    /// ([`Relay::hand_over`]).
    deferred: Option<Deferred>,
    /// Handed to the kernel under this grant (with the router's port, held): the connection's
    /// thread watches it as a forwarded one.
    handed_over: Option<(nft::Grant, Option<OwnedFd>)>,
}

/// A relayed active-mode endpoint that the kernel may take over.
struct Deferred {
    id: DataId,
    /// The server: the only address allowed to connect.
    peer: Ipv4Addr,
    announce: SocketAddrV4,
    /// Behind NAT: where the kernel then sends the server's connection.
    dnat: Option<SocketAddrV4>,
}

/// How a forwarded connection ended, as its FIN/RST segments told.
#[derive(Clone, Copy, Debug)]
struct ForwardedEnd {
    peer_port: u16,
    /// Bytes from and to the peer, modulo 2³² (sequence numbers).
    from_peer: u64,
    to_peer: u64,
    reset: bool,
}

/// Shared between the control path and one data connection's thread.
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
    /// Bytes moved so far each way, for `ftpgate status`.
    to_client: AtomicU64,
    to_server: AtomicU64,
    started: Instant,
    /// `passive 10.0.1.2 <-> 10.0.2.2:30000`
    name: String,
    /// The peer connected: bytes are (or were) moving.
    connected: std::sync::atomic::AtomicBool,
    /// The kernel forwards this one ([`crate::nft`]); the relay only watches.
    forwarded: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn new(name: String) -> Slot {
        Slot {
            state: Mutex::default(),
            cv: Condvar::new(),
            to_client: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            started: Instant::now(),
            name,
            connected: std::sync::atomic::AtomicBool::new(false),
            forwarded: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// A data connection in flight, as `ftpgate status` shows it.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub name: String,
    /// The command it serves (`RETR /pub/f`), once known.
    pub what: Option<String>,
    pub user: Option<String>,
    pub to_client: u64,
    pub to_server: u64,
    pub secs: f64,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Slots = Arc<Mutex<HashMap<DataId, Arc<Slot>>>>;
/// Ended data connections, kept a while so the control path can still ask how they ended.
type Ended = Arc<Mutex<EndedSlots>>;

/// Ended slots by id, and in the order they ended (so forgetting old ones costs nothing per
/// data connection opened).
#[derive(Default)]
struct EndedSlots {
    by_id: HashMap<DataId, Arc<Slot>>,
    order: std::collections::VecDeque<(Instant, DataId)>,
}

impl EndedSlots {
    fn insert(&mut self, id: DataId, slot: Arc<Slot>) {
        let now = Instant::now();
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < KEEP_ENDED {
                break;
            }
            self.order.pop_front();
            self.by_id.remove(&old);
        }
        self.by_id.insert(id, slot);
        self.order.push_back((now, id));
    }
}
/// Called (on the data connection's thread) when a data connection has ended.
pub type Notify = Arc<dyn Fn(DataId) + Send + Sync>;
/// How long an ended data connection's outcome is kept.
const KEEP_ENDED: Duration = Duration::from_secs(120);

pub struct Relay {
    cfg: RelayConfig,
    nat: NatLookup,
    cache: Option<Arc<CacheCtx>>,
    slots: Slots,
    ended: Ended,
    next_id: Arc<AtomicU64>,
    notify: Option<Notify>,
    forward: Option<Arc<Forwarder>>,
    /// The client addresses' bandwidth shares, for every handle.
    shares: Arc<pace::Shares>,
}

/// Kernel forwarding of data connections: the netlink handle on the table's elements and the
/// connections being watched.
pub struct Forwarder {
    nft: Mutex<nft::Elements>,
    tracker: Mutex<forward::Tracker>,
}

impl Relay {
    pub fn new(cfg: RelayConfig, nat: NatLookup, cache: Option<Arc<CacheCtx>>) -> Relay {
        Relay {
            cfg,
            nat,
            cache,
            slots: Arc::default(),
            ended: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            notify: None,
            forward: None,
            shares: Arc::default(),
        }
    }

    /// Lets the kernel forward the data connections that need neither capture nor serving
    /// (with the cache off: all of them), if `rules apply` loaded the nftables table. Says
    /// whether it did.
    pub fn enable_forwarding(&mut self) -> Result<(), io::Error> {
        let nft = nft::Elements::open()?;
        self.forward = Some(Arc::new(Forwarder { nft: Mutex::new(nft), tracker: Mutex::default() }));
        Ok(())
    }

    /// One queued segment of a data connection (a forwarded one's SYN, FIN or RST, or a
    /// thief's SYN): whether it goes on.
    pub fn observe(&self, seg: &forward::Flagged) -> bool {
        let Some(fwd) = &self.forward else { return true };
        let seen = fwd.tracker.lock().unwrap_or_else(|e| e.into_inner()).observe(seg);
        match &seen {
            forward::Seen::Unknown | forward::Seen::Progress(_) => {}
            forward::Seen::Opened(id) => {
                if let Some(slot) = self.slot(*id) {
                    let _st = slot.lock();
                    slot.connected.store(true, Ordering::Relaxed);
                    slot.cv.notify_all();
                }
            }
            forward::Seen::Theft { again: true, .. } => {}
            forward::Seen::Theft { id, from, expected, again: false } => {
                metrics::m().refusal("data_port_theft");
                let name = self.slot(*id).map(|s| s.name.clone()).unwrap_or_default();
                crate::warn!("data {name}: refused connection from {from} (expected {expected})");
            }
            &forward::Seen::Closed { id, peer_port, from_peer, to_peer, reset } => {
                if let Some(slot) = self.slot(id) {
                    slot.lock().forwarded_end = Some(ForwardedEnd { peer_port, from_peer, to_peer, reset });
                    slot.cv.notify_all();
                }
            }
        }
        seen.accept()
    }

    /// A second handle on the same relay (for another control loop): data connection ids and
    /// the `max_data` limit are shared; the handle has no notifier of its own yet.
    pub fn handle(&self) -> Relay {
        Relay {
            cfg: self.cfg.clone(),
            nat: self.nat,
            cache: self.cache.clone(),
            slots: self.slots.clone(),
            ended: self.ended.clone(),
            next_id: self.next_id.clone(),
            notify: None,
            forward: self.forward.clone(),
            shares: self.shares.clone(),
        }
    }

    /// Data connections opened through this handle call `f` with their id once they ended
    /// (every byte delivered and closed, or failed): a control loop holding a final reply
    /// wakes up and asks [`DataPlane::data_state`].
    pub fn set_notify(&mut self, f: Notify) {
        self.notify = Some(f);
    }

    /// The data connections open or waiting, for `ftpgate status`.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        slots
            .iter()
            .map(|s| {
                let desc = s.lock().desc.clone();
                InFlight {
                    name: s.name.clone(),
                    what: desc.as_ref().map(|d| format!("{} {}", d.verb, d.path)),
                    user: desc.map(|d| d.user),
                    to_client: s.to_client.load(Ordering::Relaxed),
                    to_server: s.to_server.load(Ordering::Relaxed),
                    secs: s.started.elapsed().as_secs_f64(),
                }
            })
            .collect()
    }

    /// Data connections open or waiting for their peer.
    pub fn data_connections(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Data connections whose peer connected and which have not ended.
    pub fn transferring(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().filter(|s| s.connected.load(Ordering::Relaxed)).count()
    }

    /// Runs data connection `id`'s work on a thread of its own; when it returns, the slot
    /// moves to the ended ones (kept a while for [`DataPlane::data_state`]).
    /// Without a thread, the slot is forgotten at once. The thread starts at once (see
    /// [`crate::sched::spawn_prompt`]) and first sets its scheduling with `init`.
    fn spawn_for(&self, id: DataId, name: &str, init: impl FnOnce() + Send + 'static, work: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let (slots, ended) = (self.slots.clone(), self.ended.clone());
        let spawned = crate::sched::spawn_prompt(name, init, move || {
            work();
            let s = slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            if let Some(s) = s {
                ended.lock().unwrap_or_else(|e| e.into_inner()).insert(id, s);
            }
        });
        if spawned.is_err() {
            self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
        spawned
    }

    /// Gives `grant` and watches its connection as data connection `id` on `slot`; `false`
    /// (logged) when the permission could not be given, and the relay keeps it.
    fn grant_forwarding(&self, fwd: &Forwarder, slot: &Slot, id: DataId, grant: &nft::Grant) -> bool {
        if let Err(e) = fwd.nft.lock().unwrap_or_else(|e| e.into_inner()).grant(grant, self.cfg.accept_timeout) {
            crate::warn!("kernel forwarding of {} -> {}: {e}; relaying it", grant.peer, grant.at);
            return false;
        }
        let (peer, announce) = (grant.peer, grant.at);
        let target = grant.dnat.unwrap_or(announce);
        fwd.tracker.lock().unwrap_or_else(|e| e.into_inner()).expect(forward::Expected { id, peer, announce, target });
        slot.forwarded.store(true, Ordering::Relaxed);
        true
    }

    fn slot(&self, id: DataId) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}

impl Relay {
    /// Prepares a data connection for the kernel to forward: the endpoint as announced (behind
    /// NAT in active mode, a port of the router's own, kept bound so nothing else takes it),
    /// the single-use permission, and a thread that waits for its end. `None`: this one cannot
    /// be forwarded (a passive endpoint that is not the server's), or the permission could not
    /// be given; it is relayed instead.
    fn open_forwarded(&mut self, req: &Req4, fwd: Arc<Forwarder>) -> Result<Option<Opened>, OpenError> {
        let (peer, announce, dnat, reserved) = match req.mode {
            Mode::Passive if req.target.ip() == req.server.ip() => (*req.client.ip(), req.target, None, None),
            Mode::Passive | Mode::ToBoth { .. } | Mode::FromBoth => return Ok(None),
            Mode::Active => {
                let seen = match (self.nat)(req.client.into(), req.server.into()) {
                    Some(IpAddr::V4(a)) => a,
                    _ => *req.client.ip(),
                };
                if seen == *req.client.ip() {
                    (*req.server.ip(), req.target, None, None)
                } else {
                    let port_of = |source| OpenError::Port { at: seen, source };
                    let sock = reserve_port(seen.into(), self.cfg.data_ports.prefer(req.target.port()), &self.cfg.data_ports).map_err(port_of)?;
                    let port = local_port(&sock).map_err(port_of)?;
                    (*req.server.ip(), SocketAddrV4::new(seen, port), Some(req.target), Some(sock))
                }
            }
        };
        let grant = nft::Grant { peer, at: announce, dnat };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(format!("{} {} <-> {}", req.mode.as_str(), req.client.ip(), req.target)));
        if !self.grant_forwarding(&fwd, &slot, id, &grant) {
            return Ok(None);
        }
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(id, slot.clone());
        let job = ForwardJob {
            id,
            req: req.request(),
            peer,
            grant,
            cfg: self.cfg.clone(),
            slot,
            fwd: fwd.clone(),
            notify: self.notify.clone(),
            _reserved: reserved,
        };
        // the kernel moves the bytes: its watcher runs at normal priority, as it always did
        if let Err(e) = self.spawn_for(id, "ftpgate-fwd", crate::sched::normal_priority, move || job.run()) {
            fwd.tracker.lock().unwrap_or_else(|e| e.into_inner()).forget(id);
            fwd.nft.lock().unwrap_or_else(|e| e.into_inner()).revoke(&grant);
            return Err(OpenError::Thread(e));
        }
        Ok(Some(Opened { announce: announce.into(), id, client_side: None }))
    }
}

impl Relay {
    /// An active-mode command that needs neither capture nor serving (STOR, LIST, …): if the
    /// server has not connected yet — it connects once it has the command, which is in
    /// ftpgate's hands now — the kernel forwards the connection instead of the relay. The grant
    /// is in place before the relay's listener closes (under the slot's lock, which the relay
    /// accepts under), so the server's SYN finds one or the other.
    fn hand_over(&self, slot: &Slot, st: &mut SlotState, d: Deferred) {
        let Some(fwd) = &self.forward else { return };
        let waiting = st.listener.as_ref().is_some_and(|l| !splice::readable_now(l));
        if slot.connected.load(Ordering::Relaxed) || !waiting {
            return; // a server that connects at PORT (pyftpdlib): the relay has it
        }
        let Deferred { id, peer, announce, dnat } = d;
        let grant = nft::Grant { peer, at: announce, dnat };
        if !self.grant_forwarding(fwd, slot, id, &grant) {
            return;
        }
        if let Some(l) = st.listener.take() {
            // wakes the relay's thread, which then watches the forwarded connection
            let _ = socket::shutdown(l.as_raw_fd(), socket::Shutdown::Both);
        }
        // behind NAT the router's port stays taken while the transfer lasts
        let reserved = dnat.and_then(|_| reserve_port((*announce.ip()).into(), Some(announce.port()), &DataPorts::default()).ok());
        st.handed_over = Some((grant, reserved));
    }
}

impl DataPlane for Relay {
    fn cache_enabled(&self) -> bool {
        self.cache.is_some()
    }

    fn transfer_ahead(&mut self, login: &Login) {
        if let Some(c) = &self.cache {
            if c.store.holds_any(login.server, &login.user) {
                c.checker.warm(login.clone());
            }
        }
    }

    fn cached(&mut self, key: &Key) -> Option<u64> {
        self.cache.as_ref()?.store.lookup(key).map(|m| m.size)
    }

    fn transfer(&mut self, id: DataId, what: Transfer) -> bool {
        let (Some(cache), Some(slot)) = (self.cache.as_ref(), self.slot(id)) else { return false };
        let plan = match what {
            Transfer::Capture { key, login } => match cache.store.begin(&key) {
                Ok(Some(cap)) => Plan::Capture { cap, login, buffer: cache.write_buffer },
                Ok(None) => return false, // another download of this file is being captured
                Err(e) => {
                    crate::warn!("cache: cannot capture {}: {e}; relaying uncached", key.path);
                    return false;
                }
            },
            Transfer::Serve { key, offset } => match cache.store.open_entry(&key) {
                Some((file, meta)) if offset <= meta.size => Plan::Serve { file, meta, offset },
                _ => return false,
            },
        };
        slot.lock().plan = Some(plan);
        true
    }

    fn describe(&mut self, id: DataId, what: Described) {
        if let Some(slot) = self.slot(id) {
            let retr = what.verb == "RETR";
            let mut st = slot.lock();
            st.desc = Some(what);
            if let Some(d) = st.deferred.take().filter(|_| !retr) {
                self.hand_over(&slot, &mut st, d);
            }
        }
    }

    fn data_state(&mut self, id: DataId) -> DataState {
        let slot = match self.slot(id) {
            Some(s) => s,
            None => match self.ended.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(&id) {
                Some(s) => s.clone(),
                None => return DataState::Unknown,
            },
        };
        if slot.forwarded.load(Ordering::Relaxed) {
            // its bytes go their own way through the kernel: nothing to wait for
            return DataState::Unknown;
        }
        let st = slot.lock();
        if let Some(o) = &st.outcome {
            return DataState::Done(o.clone());
        }
        let moved = || slot.to_client.load(Ordering::Relaxed) + slot.to_server.load(Ordering::Relaxed);
        if slot.connected.load(Ordering::Relaxed) {
            return DataState::Busy { moved: moved() };
        }
        // the relay accepts under the same lock: a connection is either accepted or still here
        match &st.listener {
            Some(fd) if splice::readable_now(fd) => DataState::Busy { moved: 0 },
            _ => DataState::Waiting,
        }
    }

    fn finished(&mut self, id: DataId, ok: bool) {
        if let Some(slot) = self.slot(id) {
            slot.lock().finished = Some(ok);
            slot.cv.notify_all();
        }
    }

    fn invalidate(&mut self, server: core::net::SocketAddr, path: &str) {
        if let Some(c) = &self.cache {
            let n = c.store.invalidate(server, path);
            if n > 0 {
                log!("cache: {path} on {server} is being changed; dropped {n} entr{}", if n == 1 { "y" } else { "ies" });
            }
        }
    }

    fn open(&mut self, req: &DataRequest) -> Result<Opened, OpenError> {
        if self.data_connections() >= self.cfg.max_data {
            return Err(OpenError::TooMany { limit: self.cfg.max_data });
        }
        // kernel forwarding is IPv4 so far: an IPv6 connection is relayed; so is one to pace
        let v4 = Req4::of(req).filter(|_| !req.rates.is_limited() && matches!(req.mode, Mode::Passive | Mode::Active));
        if let (Some(r4), Some(fwd)) = (&v4, self.forward.clone().filter(|_| self.cache.is_none() && req.via.is_none())) {
            if let Some(opened) = self.open_forwarded(r4, fwd)? {
                return Ok(opened);
            }
        }
        let (cip, sip) = (req.client.ip(), req.server.ip());
        // a transparent listener on `ip`: on `port` (the exact endpoint where it is the peer's:
        // passive, the server's port; active, routed, the client's) if free, else one of ours
        let data_ports = self.cfg.data_ports;
        let bind = |ip: IpAddr, port: u16| -> Result<TcpListener, OpenError> {
            let ours = |p: u16| transparent_listener(SocketAddr::new(ip, p), 4);
            let l = match port {
                0 => data_ports.bind(ours),
                p => ours(p).or_else(|_| data_ports.bind(ours)),
            }
            .map_err(|source| OpenError::Listen { at: ip, source })?;
            l.set_nonblocking(true).map_err(|source| OpenError::Listen { at: ip, source })?;
            Ok(l)
        };
        let seen = || (self.nat)(req.client, req.server).unwrap_or(cip);
        // the listener (the peer allowed on it), the source of the onward connection, and what
        // a converted mode needs besides
        let (listener, peer, src, second) = match (req.mode, req.via) {
            // explicit proxy: announced on the gateway's own address on each side
            (Mode::Passive, Some(v)) => (Some(bind(v.client_side, 0)?), cip, v.server_side, Second::None),
            (Mode::Active, Some(v)) => (Some(bind(v.server_side, 0)?), sip, v.client_side, Second::None),
            (Mode::Passive, None) => (Some(bind(sip, req.target.port())?), cip, cip, Second::None),
            (Mode::Active, None) => {
                let seen = seen();
                let port = if seen == cip { req.target.port() } else { 0 };
                (Some(bind(seen, port)?), sip, sip, Second::None)
            }
            // --server-mode passive: to the client as the server would, to the server as the client
            (Mode::ToBoth { .. }, via) => (None, cip, via.map_or(sip, |v| v.client_side), Second::Source(via.map_or(cip, |v| v.server_side))),
            // --server-mode active: the client connects where the server's port would be, the
            // server where the client's would be (behind NAT, an address of the router's)
            (Mode::FromBoth, via) => {
                let to_client = bind(via.map_or(sip, |v| v.client_side), 0)?;
                let to_server = bind(via.map_or_else(seen, |v| v.server_side), 0)?;
                (Some(to_client), cip, sip, Second::Listener(to_server, sip))
            }
        };
        let local = |l: &TcpListener| l.local_addr().map_err(|source| OpenError::Listen { at: sip, source });
        let (announce, client_side) = match (&listener, &second) {
            (Some(l), Second::Listener(s, _)) => (local(s)?, Some(local(l)?)),
            (Some(l), _) => (local(l)?, None),
            (None, _) => (req.target, None), // nothing to announce: the relay connects to both
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(format!("{} {} <-> {}", req.mode.as_str(), req.client.ip(), req.target)));
        {
            let mut st = slot.lock();
            st.listener = listener.as_ref().and_then(|l| l.as_fd().try_clone_to_owned().ok());
            if let (true, Some(r4), SocketAddr::V4(announce), IpAddr::V4(peer)) =
                (self.forward.is_some() && req.mode == Mode::Active && req.via.is_none(), &v4, announce, peer)
            {
                // the server connects once it has the command: a command that needs neither
                // capture nor serving can still hand this one to the kernel
                let dnat = (announce.ip() != r4.target.ip()).then_some(r4.target);
                st.deferred = Some(Deferred { id, peer, announce, dnat });
            }
        }
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(id, slot.clone());
        let job = Job {
            id,
            req: req.clone(),
            peer,
            src,
            listener,
            cfg: self.cfg.clone(),
            slot: slot.clone(),
            cache: self.cache.clone(),
            notify: self.notify.clone(),
            fwd: self.forward.clone(),
            pace_down: self.shares.pacer(req.client.ip(), pace::Way::Down, req.rates.down),
            pace_up: self.shares.pacer(req.client.ip(), pace::Way::Up, req.rates.up),
            second,
        };
        let (rt, nice, cpus) = (self.cfg.rt_priority, self.cfg.nice, self.cfg.cpus.clone());
        let init = move || {
            if let (true, Some(c)) = (lower_priority(rt, nice), &cpus) {
                crate::sched::confine(c);
            }
        };
        self.spawn_for(id, "ftpgate-data", init, move || job.run()).map_err(OpenError::Thread)?;
        Ok(Opened { announce, id, client_side })
    }
}

/// A data connection request with IPv4 endpoints, as kernel forwarding and the NAT lookup take
/// it (both IPv4 only so far).
#[derive(Clone, Debug)]
pub(crate) struct Req4 {
    pub(crate) mode: Mode,
    pub(crate) client: SocketAddrV4,
    pub(crate) server: SocketAddrV4,
    pub(crate) target: SocketAddrV4,
    pub(crate) via: Option<crate::proto::Via>,
    pub(crate) rates: crate::proto::Rates,
}

impl Req4 {
    /// `None` when an endpoint is IPv6.
    fn of(r: &DataRequest) -> Option<Req4> {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        };
        Some(Req4 { mode: r.mode, client: v4(r.client)?, server: v4(r.server)?, target: v4(r.target)?, via: r.via, rates: r.rates })
    }

    fn request(&self) -> DataRequest {
        DataRequest {
            mode: self.mode,
            client: self.client.into(),
            server: self.server.into(),
            target: self.target.into(),
            via: self.via,
            rates: self.rates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A passive IPv6 data connection through the relay on the loopback: the client connects to
    /// the announced endpoint, the relay connects onward (transparently, from the client's
    /// address) to the server, the server's bytes arrive. Needs CAP_NET_ADMIN for the
    /// transparent sockets; without it the test says it skipped.
    #[test]
    fn relays_a_passive_ipv6_connection() {
        let server = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(e) => return eprintln!("skipped: no IPv6 loopback ({e})"),
        };
        let target = server.local_addr().unwrap();
        let cfg = RelayConfig {
            accept_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_data: 4,
            data_ports: DataPorts::default(),
            rt_priority: 0,
            nice: 0,
            cpus: None,
        };
        let mut relay = Relay::new(cfg, |_, _| None, None);
        let req = DataRequest {
            mode: Mode::Passive,
            client: "[::1]:40000".parse().unwrap(),
            server: "[::1]:21".parse().unwrap(),
            target,
            via: None,
            rates: Default::default(),
        };
        let opened = match relay.open(&req) {
            Ok(o) => o,
            Err(OpenError::Listen { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
                return eprintln!("skipped: {source} (needs CAP_NET_ADMIN)");
            }
            Err(e) => panic!("open: {e}"),
        };
        assert!(opened.announce.is_ipv6(), "{}", opened.announce);
        let srv = std::thread::spawn(move || {
            let (mut s, from) = server.accept().unwrap();
            s.write_all(b"hello over IPv6").unwrap();
            from
        });
        let mut c = TcpStream::connect(opened.announce).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello over IPv6");
        assert!(srv.join().unwrap().ip().is_loopback());
    }
}
