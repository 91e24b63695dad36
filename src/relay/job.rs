//! One data connection's thread ([`Job`]): accept only the expected peer, connect onward
//! transparently, move the bytes (relay, capture, serve), then the keep rule for a capture
//! (the server confirms size and MDTM) and the xferlog line; and a connection handed to the
//! kernel ([`ForwardJob`]), followed from its SYN/FIN/RST until it ends.

use super::*;

/// A forwarded data connection's watcher: waits for its SYN within the data-port timeout, then
/// for its end (its FINs or a reset; or the transfer's final reply and a grace period), and
/// accounts for it as the relay would.
pub(super) struct ForwardJob {
    pub(super) id: DataId,
    pub(super) req: DataRequest,
    pub(super) peer: Ipv4Addr,
    pub(super) grant: nft::Grant,
    pub(super) cfg: RelayConfig,
    pub(super) slot: Arc<Slot>,
    pub(super) fwd: Arc<Forwarder>,
    pub(super) notify: Option<Notify>,
    /// The router's port announced in active mode behind NAT, held while the transfer lasts.
    pub(super) _reserved: Option<OwnedFd>,
}

/// How long after its final reply a forwarded connection may take to show its FINs.
pub(super) const FORWARD_GRACE: Duration = Duration::from_secs(10);

impl ForwardJob {
    pub(super) fn run(self) {
        let name = format!("data {} (kernel)", self.slot.name);
        let started = Instant::now();
        let st = self.slot.lock();
        let (st, _) = self
            .slot
            .cv
            .wait_timeout_while(st, self.cfg.accept_timeout, |_| !self.slot.connected.load(Ordering::Relaxed))
            .unwrap_or_else(|e| e.into_inner());
        drop(st);
        if !self.slot.connected.load(Ordering::Relaxed) {
            count(&self.req, "timeout", 0, 0);
            log!("{name}: no connection from {} within {:?}", self.peer, self.cfg.accept_timeout);
            self.fwd.nft.lock().unwrap_or_else(|e| e.into_inner()).revoke(&self.grant);
            self.end(DataOutcome::NoPeer);
            return;
        }
        let mut finished_at = None;
        let end = loop {
            let st = self.slot.lock();
            let (st, _) = self.slot.cv.wait_timeout(st, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner());
            if let Some(end) = st.forwarded_end {
                break Some(end);
            }
            if st.finished.is_some() {
                let at = *finished_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= FORWARD_GRACE {
                    break None;
                }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let (from_peer, to_peer, reset) = match end {
            Some(e) => {
                // beyond 4 GiB a direction, conntrack's byte counters tell how often it wrapped
                let counted = crate::conntrack::counters(SocketAddrV4::new(self.peer, e.peer_port), self.grant.at);
                (forward::unwrap_bytes(e.from_peer, counted.map(|c| c.0)), forward::unwrap_bytes(e.to_peer, counted.map(|c| c.1)), e.reset)
            }
            None => (0, 0, true),
        };
        let (d, u) = match self.req.mode {
            Mode::Active => (from_peer, to_peer),
            // (only plain passive and active connections are forwarded)
            Mode::Passive | Mode::ToBoth { .. } | Mode::FromBoth => (to_peer, from_peer),
        };
        self.slot.to_client.store(d, Ordering::Relaxed);
        self.slot.to_server.store(u, Ordering::Relaxed);
        let ok = !reset;
        match end {
            Some(_) if ok => log!("{name}: {d} bytes to client, {u} bytes to server, {secs:.3} s, ok"),
            Some(_) => log!("{name}: reset after {secs:.3} s: {d} bytes to client, {u} bytes to server"),
            None => log!("{name}: no end seen within {FORWARD_GRACE:?} of the final reply; not counted"),
        }
        count(&self.req, if ok { "ok" } else { "failed" }, d, u);
        xferlog(&self.req, &self.slot, secs, d, u, ok);
        self.end(if ok { DataOutcome::Ok } else { DataOutcome::Failed("reset".into()) });
    }

    pub(super) fn end(&self, outcome: DataOutcome) {
        self.fwd.tracker.lock().unwrap_or_else(|e| e.into_inner()).forget(self.id);
        self.slot.lock().outcome = Some(outcome);
        if let Some(n) = &self.notify {
            n(self.id);
        }
    }
}

pub(super) struct Job {
    pub(super) id: DataId,
    pub(super) req: DataRequest,
    /// The only address allowed to connect.
    pub(super) peer: IpAddr,
    /// Source address for the onward connection.
    pub(super) src: IpAddr,
    pub(super) listener: Option<TcpListener>,
    pub(super) cfg: RelayConfig,
    pub(super) slot: Arc<Slot>,
    pub(super) cache: Option<Arc<CacheCtx>>,
    pub(super) notify: Option<Notify>,
    /// Kernel forwarding, for a connection the command hands over ([`Relay::hand_over`]).
    pub(super) fwd: Option<Arc<Forwarder>>,
    /// The bandwidth limits of the bytes to the client and to the server.
    pub(super) pace_down: pace::Pacer,
    pub(super) pace_up: pace::Pacer,
    /// What a converted mode needs besides (`--server-mode`).
    pub(super) second: Second,
}

/// The second endpoint of a data connection in a converted mode.
pub(super) enum Second {
    None,
    /// `--server-mode passive`: the source address of the connection to the server (the one to
    /// the client is made from `Job::src`).
    Source(IpAddr),
    /// `--server-mode active`: the listener the server connects to, and the server's address
    /// (the client connects to `Job::listener`).
    Listener(TcpListener, IpAddr),
}

/// A capture to confirm with the server once the client has its bytes.
pub(super) struct KeepLater {
    cap: Capture,
    login: Login,
    n: u64,
    copy: Result<(), splice::CopyError>,
    started: i64,
    took: f64,
}

impl Job {
    pub(super) fn name(&self) -> String {
        format!("data {}", self.slot.name)
    }

    pub(super) fn run(mut self) {
        let keep = self.relay_bytes();
        let handed = self.slot.lock().handed_over.take();
        // (only an IPv4 connection is ever handed over: kernel forwarding is IPv4 so far)
        if let (Some((grant, reserved)), Some(fwd), IpAddr::V4(peer)) = (handed, self.fwd.clone(), self.peer) {
            let Job { id, req, cfg, slot, notify, .. } = self;
            return ForwardJob { id, req, peer, grant, cfg, slot, fwd, notify, _reserved: reserved }.run();
        }
        self.done(DataOutcome::Failed("relay ended".into())); // no-op when already told
        if let Some(k) = keep {
            self.keep(k);
        }
    }

    /// Records how the connection ended and tells the control loop (once).
    pub(super) fn done(&self, outcome: DataOutcome) {
        {
            let mut st = self.slot.lock();
            if st.outcome.is_some() {
                return;
            }
            st.outcome = Some(outcome);
            st.listener = None;
        }
        if let Some(n) = &self.notify {
            n(self.id);
        }
    }

    /// Waits within `deadline` for `peer` to connect to `listener` (a thief's connection is
    /// refused and counted); says how it failed when it did not. The flag: the connection
    /// arrived source-NATed (see [`Job::nated_from`]), and `listener` must stay open while it
    /// lasts.
    fn accept_peer(&self, listener: &TcpListener, peer: IpAddr, deadline: Instant) -> Option<(TcpStream, SocketAddr, bool)> {
        let name = self.name();
        loop {
            match splice::wait_readable(listener, deadline.saturating_duration_since(Instant::now())) {
                Ok(true) => {}
                Ok(false) => {
                    self.count("timeout", 0, 0);
                    self.done(DataOutcome::NoPeer);
                    log!("{name}: no connection from {peer} within {:?}", self.cfg.accept_timeout);
                    return None;
                }
                Err(e) => {
                    self.count("failed", 0, 0);
                    self.done(DataOutcome::Failed(e.to_string()));
                    crate::warn!("{name}: accept failed: {e}");
                    return None;
                }
            }
            // under the slot's lock: the control path sees the connection either waiting in
            // the backlog or accepted, never neither
            let mut st = self.slot.lock();
            if st.handed_over.is_some() {
                return None; // the kernel forwards it
            }
            match listener.accept() {
                Ok((s, a)) if a.ip() == peer || self.nated_from(&s, a) == Some(peer) => {
                    self.slot.connected.store(true, Ordering::Relaxed);
                    st.listener = None;
                    drop(st);
                    if let Err(e) = s.set_nonblocking(false) {
                        self.done(DataOutcome::Failed(e.to_string()));
                        return None;
                    }
                    return Some((s, a, a.ip() != peer));
                }
                Ok((_, a)) => {
                    drop(st);
                    metrics::m().refusal("data_port_theft");
                    crate::warn!("{name}: refused connection from {a} (expected {peer})")
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    drop(st);
                    self.count("failed", 0, 0);
                    self.done(DataOutcome::Failed(e.to_string()));
                    crate::warn!("{name}: accept failed: {e}");
                    return None;
                }
            }
        }
    }

    /// The true source of an accepted connection that shows `a`, another address than expected:
    /// the original source conntrack knows (see [`crate::conntrack::original_source`]), when it
    /// differs from `a`. Logged, for that is unusual.
    ///
    /// Such a connection's later segments still carry the peer's own address when the
    /// `-m socket --transparent` rule (mangle PREROUTING, before the translation at local
    /// delivery) looks for a socket, so they find the accepted one only through the listener:
    /// closed, they would be forwarded to the server, which resets them (measured: the client's
    /// first ACK of data answered by a reset). So its listener stays open while it lasts.
    fn nated_from(&self, s: &TcpStream, a: SocketAddr) -> Option<IpAddr> {
        let local = s.local_addr().ok()?;
        let from = crate::conntrack::original_source(local, a).filter(|&f| f != a.ip())?;
        log!("{}: connection from {a} came from {from} (a NAT binding conntrack kept for its addresses)", self.name());
        Some(from)
    }

    /// Connects to `target` from `src` (any port but `avoid`); says how it failed when it did not.
    fn connect_to(&self, src: IpAddr, avoid: u16, target: SocketAddr) -> Option<TcpStream> {
        match connect_from(src, avoid, target, self.cfg.accept_timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                self.count("failed", 0, 0);
                self.done(DataOutcome::Unreachable(e.to_string()));
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    // the peer closed its data port: a client that gave up, or a port that was
                    // never open; the client is answered 425
                    log!("{}: {target} refused the data connection; transfer abandoned", self.name());
                } else {
                    crate::warn!("{}: cannot connect to {target}: {e}", self.name());
                }
                None
            }
        }
    }

    /// The connection to the server and the one to the client, as the mode makes them: one
    /// accepted and one made (passive, active), both made (`--server-mode passive`), both
    /// accepted (`--server-mode active`: the client first, then the server, which connects
    /// once it has the transfer command).
    fn connections(&mut self, deadline: Instant) -> Option<(TcpStream, TcpStream)> {
        match self.req.mode {
            Mode::Passive | Mode::Active => {
                let listener = self.listener.take()?; // one connection per announced port
                let (inbound, from, nated) = self.accept_peer(&listener, self.peer, deadline)?;
                // never accepted from again; kept open (until the job ends) for a NATed arrival
                self.listener = nated.then_some(listener);
                let outbound = self.connect_to(self.src, from.port(), self.req.target)?;
                Some(if self.req.mode == Mode::Passive { (outbound, inbound) } else { (inbound, outbound) })
            }
            Mode::ToBoth { client } => {
                let Second::Source(towards_server) = self.second else { return None };
                let srv = self.connect_to(towards_server, 0, self.req.target)?;
                let cli = self.connect_to(self.src, 0, client)?;
                self.slot.connected.store(true, Ordering::Relaxed);
                Some((srv, cli))
            }
            Mode::FromBoth => {
                let listener = self.listener.take()?;
                let (cli, _, nated) = self.accept_peer(&listener, self.peer, deadline)?;
                self.listener = nated.then_some(listener);
                let Second::Listener(l, server) = std::mem::replace(&mut self.second, Second::None) else { return None };
                let (srv, _, nated) = self.accept_peer(&l, server, Instant::now() + self.cfg.accept_timeout)?;
                if nated {
                    self.second = Second::Listener(l, server);
                }
                Some((srv, cli))
            }
        }
    }

    /// Accepts the peer, connects onwards and moves the bytes; says when it is done.
    pub(super) fn relay_bytes(&mut self) -> Option<KeepLater> {
        let name = self.name();
        let started = Instant::now();
        let deadline = started + self.cfg.accept_timeout;
        let (srv, cli) = self.connections(deadline)?;
        for s in [&srv, &cli] {
            let _ = s.set_read_timeout(Some(self.cfg.idle_timeout));
            let _ = s.set_nodelay(true);
        }
        // server -> client is "down"
        // a paced side is read no faster than the pace: its sender may not run far ahead
        if let Some(r) = self.req.rates.down {
            sockets::limit_receive_buffer(&srv, r);
        }
        if let Some(r) = self.req.rates.up {
            sockets::limit_receive_buffer(&cli, r);
        }
        let (srv2, cli2) = match (srv.try_clone(), cli.try_clone()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                self.done(DataOutcome::Failed("cannot clone sockets".into()));
                crate::warn!("{name}: cannot clone sockets");
                return None;
            }
        };
        let (slot, pace_up) = (self.slot.clone(), self.pace_up.clone());
        let up = std::thread::spawn(move || splice::pump(&cli2, &srv2, &slot.to_server, &pace_up));
        let (down, keep) = self.down(&srv, &cli);
        // the server's side has ended and the client has every byte and our FIN: its final
        // reply may go on (an upload's reply comes after its bytes reached the server anyway)
        self.done(match &down {
            Ok(_) => DataOutcome::Ok,
            Err(e) => DataOutcome::Failed(e.to_string()),
        });
        let up = up.join().unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
        let secs = started.elapsed().as_secs_f64();
        match (&down, &up) {
            (Ok(d), Ok(u)) => log!("{name}: {d} bytes to client, {u} bytes to server, {secs:.3} s, ok"),
            _ => log!("{name}: failed after {secs:.3} s: to client {}, to server {}", show(&down), show(&up)),
        }
        let ok = down.is_ok() && up.is_ok();
        let (d, u) = (*down.as_ref().unwrap_or(&0), *up.as_ref().unwrap_or(&0));
        self.count(if ok { "ok" } else { "failed" }, d, u);
        self.xferlog(secs, d, u, ok);
        keep
    }

    pub(super) fn count(&self, result: &str, to_client: u64, to_server: u64) {
        count(&self.req, result, to_client, to_server);
    }

    pub(super) fn xferlog(&self, secs: f64, to_client: u64, to_server: u64, ok: bool) {
        xferlog(&self.req, &self.slot, secs, to_client, to_server, ok);
    }
}

pub(super) fn count(req: &DataRequest, result: &str, to_client: u64, to_server: u64) {
    metrics::m().transfer(req.mode.as_str(), result, to_client, to_server);
}

/// A file transfer's line in the transfer log (listings have none).
pub(super) fn xferlog(req: &DataRequest, slot: &Slot, secs: f64, to_client: u64, to_server: u64, ok: bool) {
    let (desc, finished) = {
        let st = slot.lock();
        (st.desc.clone(), st.finished)
    };
    let Some(d) = desc else { return };
    let incoming = matches!(d.verb.as_str(), "STOR" | "APPE" | "STOU");
    if !incoming && d.verb != "RETR" {
        return;
    }
    xferlog::write(&xferlog::Record {
        at: unix_secs(),
        secs,
        host: req.client.ip(),
        bytes: if incoming { to_server } else { to_client },
        path: d.path,
        binary: d.binary,
        incoming,
        user: d.user,
        complete: ok && finished != Some(false),
    });
}

impl Job {
    /// Server → client: waits for the first byte (or EOF), by which time the control path has
    /// said what the connection carries, and moves the bytes accordingly.
    pub(super) fn down(&self, srv: &TcpStream, cli: &TcpStream) -> (io::Result<u64>, Option<KeepLater>) {
        match splice::wait_readable(srv, self.cfg.idle_timeout) {
            Ok(true) => {}
            Ok(false) => return (Err(io::Error::new(io::ErrorKind::TimedOut, "server sent nothing")), None),
            Err(e) => return (Err(e), None),
        }
        let plan = self.slot.lock().plan.take();
        let r = match plan {
            None => splice::pump(srv, cli, &self.slot.to_client, &self.pace_down),
            Some(Plan::Serve { file, meta, offset }) => {
                if !splice::at_eof(srv) {
                    log!("cache: server sent data for {} although told REST {}; relaying it", meta.key.path, meta.size);
                    return (splice::pump(srv, cli, &self.slot.to_client, &self.pace_down), None);
                }
                let t = Instant::now();
                let r = splice::send_file(&file, offset, meta.size, cli, &self.slot.to_client, &self.pace_down);
                if let Ok(n) = &r {
                    metrics::m().cache_served_bytes.inc_by(*n);
                }
                match &r {
                    Ok(n) => log!(
                        "cache hit {}: {n} bytes sent from the cache in {:.3} s{}",
                        meta.key.path,
                        t.elapsed().as_secs_f64(),
                        if offset > 0 { format!(" (from offset {offset})") } else { String::new() }
                    ),
                    Err(e) => crate::warn!("cache hit {}: sending failed: {e}", meta.key.path),
                }
                r
            }
            Some(Plan::Capture { cap, login, buffer }) => {
                let started = unix_secs();
                let t = Instant::now();
                let (n, copy) = match splice::pump_tee(srv, cli, &cap.file, &self.slot.to_client, buffer, &self.pace_down) {
                    Ok(r) => r,
                    Err(e) => {
                        log!("cache miss {}: transfer failed ({e}); not kept", cap.key.path);
                        return (Err(e), None);
                    }
                };
                let took = t.elapsed().as_secs_f64();
                return (Ok(n), Some(KeepLater { cap, login, n, copy, started, took }));
            }
        };
        (r, None)
    }

    /// Makes a capture an entry if the download completed (226) and the server confirms the
    /// size, with a modification time settled before the download started.
    pub(super) fn keep(&self, k: KeepLater) {
        let KeepLater { cap, login, n, copy, started, took } = k;
        let login = &login;
        let Some(cache) = &self.cache else { return };
        let path = cap.key.path.clone();
        let not = |why: String| log!("cache miss {path}: {n} bytes relayed in {took:.3} s; not kept: {why}");
        if let Err(e) = copy {
            let slow = matches!(e, splice::CopyError::TooSlow { .. });
            metrics::m().cache(if slow { "not_kept_disk_slow" } else { "not_kept_write_failed" });
            not(e.to_string());
            if slow && cache.refetch {
                let key = cap.key.clone();
                drop(cap); // its partial file goes; the fetch captures anew
                refetch(cache.clone(), key, login.clone());
            }
            return;
        }
        let finished = {
            let st = self.slot.lock();
            let (st, _) = self.slot.cv.wait_timeout_while(st, Duration::from_secs(30), |s| s.finished.is_none()).unwrap_or_else(|e| e.into_inner());
            st.finished
        };
        match finished {
            Some(true) => {}
            Some(false) => return not("the server did not complete the transfer".into()),
            None => return not("no final reply from the server".into()),
        }
        match confirm(cache, login, cap, n, started) {
            Ok(evicted) => {
                let (entries, bytes) = cache.store.totals();
                log!(
                    "cache miss {path}: {n} bytes relayed in {took:.3} s; kept ({entries} entries, {bytes} bytes{})",
                    if evicted.is_empty() { String::new() } else { format!(", evicted {}", evicted.len()) }
                );
            }
            Err(why) => not(why),
        }
    }
}

/// Asks the server to confirm a captured file — its size, and an MDTM settled before the
/// download `started` — and makes it an entry (returning the entries evicted for it); otherwise
/// says why it is not kept.
pub(super) fn confirm(cache: &CacheCtx, login: &Login, cap: Capture, n: u64, started: i64) -> Result<Vec<String>, String> {
    let facts = cache.checker.check_once(login, &cap.key.path);
    match (facts.size, facts.mdtm) {
        (Answer::Ok(size), _) if size != n => Err(format!("the server reports {size} bytes")),
        (Answer::Ok(_), Answer::Ok(m)) if !settled(&m, started, cache.settle) => {
            Err(format!("modified within {} s of the download (MDTM {m})", cache.settle))
        }
        (Answer::Ok(_), Answer::Ok(m)) => cache.store.commit(cap, n, &m).map_err(|e| format!("cannot write the cache ({e})")),
        _ => Err("the server did not confirm MDTM and SIZE".into()),
    }
}

/// Fetches a file again on a thread of its own, at the cache disk's pace, after its capture
/// could not keep up with the client: the next download of it is then a hit. Kept on the same
/// terms as a capture (the server confirms the size, the file settled before the fetch).
pub(super) fn refetch(cache: Arc<CacheCtx>, key: Key, login: Login) {
    let _ = std::thread::Builder::new().name("ftpgate-refetch".into()).spawn(move || {
        // background work: neither the real-time priority nor the CPUs of the relay it came from
        lower_priority(0, 0);
        crate::sched::unconfine();
        let path = key.path.clone();
        let mut cap = match cache.store.begin(&key) {
            Ok(Some(cap)) => cap,
            Ok(None) => return, // another download of it is being captured
            Err(e) => return crate::warn!("cache refetch {path}: cannot capture ({e})"),
        };
        let started = unix_secs();
        let t = Instant::now();
        let n = match cache.checker.fetch(&login, &path, &mut cap.file) {
            Ok(n) => n,
            Err(e) => return log!("cache refetch {path}: failed ({e}); not kept"),
        };
        let took = t.elapsed().as_secs_f64();
        match confirm(&cache, &login, cap, n, started) {
            Ok(_) => {
                metrics::m().cache("refetched");
                log!("cache refetch {path}: {n} bytes at the disk's pace in {took:.3} s; kept")
            }
            Err(why) => log!("cache refetch {path}: {n} bytes in {took:.3} s; not kept: {why}"),
        }
    });
}

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub(super) fn unix_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn show(r: &io::Result<u64>) -> String {
    match r {
        Ok(n) => format!("{n} bytes"),
        Err(e) => e.to_string(),
    }
}
