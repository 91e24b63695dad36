//! The command and reply state: what each command expects, which lines are rewritten or refused,
//! and the data connections PASV/EPSV/PORT/EPRT prepare.

use super::*;

impl Session {
    /// A complete line. Returns its replacement, if any. `whole` says whether all of the line
    /// is still in ftpgate's hands (else it can only be observed).
    pub(super) fn on_line(&mut self, dir: Dir, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        match dir {
            Dir::ToServer => self.on_command(line, whole, dp),
            Dir::ToClient => self.on_reply(line, whole, dp),
        }
    }

    pub(super) fn refuse(&mut self, code: u16, kind: Refusal, reason: String) -> Option<Vec<u8>> {
        let reply = format!("{code} ftpgate: {reason}.\r\n").into_bytes();
        self.events.push_back(Event::Refused { kind, reason });
        self.cmds.push_back(Cmd::Refused(reply));
        Some(b"NOOP\r\n".to_vec())
    }

    pub(super) fn on_command(&mut self, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        if let Some(sent) = self.police(line, whole) {
            return sent;
        }
        let verb = ftp::verb(line);
        if let (Some(v), Some(id)) = (verb.as_ref(), self.data) {
            if [&b"RETR"[..], b"STOR", b"APPE", b"STOU", b"LIST", b"NLST", b"MLSD"].contains(&&v[..]) {
                let name = arg(line);
                let path = self.cwd.as_deref().and_then(|c| path::resolve(c, &name)).unwrap_or(name);
                let user = self.user.clone().unwrap_or_else(|| "-".into());
                let verb = String::from_utf8_lossy(v).into_owned();
                dp.describe(id, Described { verb, path, user, binary: self.binary });
            }
        }
        if matches!(verb.as_ref(), Some(b"PASV" | b"EPSV" | b"PORT" | b"EPRT")) && dp.cache_enabled() {
            if let Some(login) = self.login() {
                dp.transfer_ahead(&login);
            }
        }
        if let Some(sent) = self.algs(verb.as_ref().map(|v| &v[..]), line, whole) {
            return sent;
        }
        if let Some(sent) = self.convert(verb.as_ref().map(|v| &v[..]), line, whole, dp) {
            return sent;
        }
        if let Some(sent) = self.translate_passive(verb.as_ref().map(|v| &v[..]), line, whole) {
            return sent;
        }
        let (cmd, parsed) = match verb.as_ref() {
            Some(b"PORT") => (Cmd::Other, Some(ftp::parse_port(line))),
            Some(b"EPRT") => (Cmd::Other, Some(ftp::parse_eprt(line))),
            Some(b"PASV") => (Cmd::Pasv, None),
            Some(b"EPSV") if !ftp::body(line).to_ascii_uppercase().ends_with(b"ALL") => (Cmd::Epsv, None),
            Some(b"AUTH") => (Cmd::Auth, None),
            Some(b"PWD ") | Some(b"XPWD") => (Cmd::Pwd, None),
            Some(b"CWD ") | Some(b"XCWD") => (Cmd::Cwd(arg(line)), None),
            Some(b"CDUP") | Some(b"XCUP") => (Cmd::Cwd("..".into()), None),
            Some(b"TYPE") => (Cmd::Type(arg(line).to_ascii_uppercase().starts_with('I')), None),
            Some(b"RETR") => {
                let (name, id, offset) = (arg(line), self.data.take(), std::mem::take(&mut self.rest));
                if self.plan_retr(&name, id, offset, line, whole, dp) {
                    return None; // held: the command is queued when released
                }
                (Cmd::Retr(name, id), None)
            }
            Some(b"REST") => (Cmd::Rest(arg(line).trim().parse().unwrap_or(0)), None),
            Some(b"LIST") | Some(b"NLST") | Some(b"MLSD") | Some(b"STOU") => {
                self.rest = 0;
                (self.data.take().map_or(Cmd::Other, Cmd::Xfer), None)
            }
            Some(b"STOR") | Some(b"APPE") | Some(b"DELE") | Some(b"RNFR") | Some(b"RNTO") => {
                let mut cmd = Cmd::Other;
                if matches!(verb.as_ref(), Some(b"STOR") | Some(b"APPE")) {
                    cmd = self.data.take().map_or(Cmd::Other, Cmd::Xfer);
                    self.rest = 0;
                }
                if let Some(path) = self.cwd.as_deref().and_then(|c| path::resolve(c, &arg(line))) {
                    dp.invalidate(self.server, &path);
                }
                (cmd, None)
            }
            Some(b"PASS") => {
                self.pass = Some(arg(line));
                (Cmd::Other, None)
            }
            Some(b"REIN") => {
                self.logged_in = false;
                (Cmd::Other, None)
            }
            Some(b"USER") => {
                let name = String::from_utf8_lossy(&ftp::body(line)[4..]).trim().to_string();
                self.events.push_back(Event::User(name.clone()));
                self.user = Some(name);
                self.pass = None;
                self.logged_in = false;
                self.cwd = None;
                (Cmd::Other, None)
            }
            _ => (Cmd::Other, None),
        };
        let Some(parsed) = parsed else {
            self.cmds.push_back(cmd);
            return None;
        };
        let ep = match parsed {
            Ok(ep) => ep,
            Err(e) => {
                self.events.push_back(Event::Malformed { dir: Dir::ToServer, line: show(line), why: format!("{e:?}") });
                self.cmds.push_back(Cmd::Other);
                return None;
            }
        };
        let named = match ep.ip {
            // an IPv6 endpoint on an IPv4 session (EPRT |2|): not a data connection ftpgate
            // follows; the client is told to use (1). (An IPv4 endpoint on an IPv6 session is a
            // third party: the bounce rule below refuses it.)
            Some(IpAddr::V6(_)) if self.client.is_ipv4() && whole => {
                return self.refuse(522, Refusal::Family, "only IPv4 data connections are relayed, use (1)".into());
            }
            Some(IpAddr::V6(_)) if self.client.is_ipv4() => {
                self.cmds.push_back(Cmd::Other);
                return None;
            }
            Some(ip) => SocketAddr::new(ip, ep.port),
            None => SocketAddr::new(IpAddr::from([0u8; 4]), ep.port),
        };
        if !whole {
            self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; not relayed", show(line))));
            self.cmds.push_back(Cmd::Other);
            return None;
        }
        if let Err(reason) = policy::check_active(self.client.ip(), named.ip(), named.port()) {
            return self.refuse(500, Refusal::Bounce, reason.to_string());
        }
        let req =
            DataRequest { mode: Mode::Active, client: self.client, server: self.server, target: named, via: self.via, rates: self.policy.rates };
        match dp.open(&req) {
            Ok(Opened { announce, id, .. }) => {
                self.data = Some(id);
                self.cmds.push_back(Cmd::Other);
                // across the families the server gets its own family's classic form: PORT to
                // an IPv4 server (which may not know EPRT), EPRT |2| to an IPv6 one
                let form = match (self.translates(), self.server.is_ipv4()) {
                    (false, _) => ep.kind,
                    (true, true) => ftp::Kind::Port,
                    (true, false) => ftp::Kind::Eprt,
                };
                if form != ep.kind {
                    Some(self.render_as(Dir::ToServer, line, form, announce))
                } else {
                    (announce != named).then(|| self.rewrite(Dir::ToServer, line, &ep, announce))
                }
            }
            Err(e) => self.refuse(425, Refusal::Data(e.label()), format!("cannot prepare the data connection: {e}")),
        }
    }

    /// Where a passive data connection goes for the server's `227`/`229` `ep`: the control
    /// server, at the port it named (another host it names is noted as a third party).
    pub(super) fn passive_peer(&mut self, ep: &ftp::Endpoint) -> SocketAddr {
        let (target, note) = policy::passive_target(self.server.ip(), ep.ip);
        if let Some(n) = note {
            self.events.push_back(Event::Refused { kind: Refusal::ThirdParty, reason: n });
        }
        SocketAddr::new(target, ep.port)
    }

    /// Whether the client and the server are of different families (an explicit-proxy session
    /// from an IPv4 client to an IPv6 server, or the other way round, or a NAT64 session): the
    /// passive and active commands and replies are then translated between the forms of the
    /// two families.
    pub(super) fn translates(&self) -> bool {
        self.client.is_ipv4() != self.server.is_ipv4() && self.alg64 != Some(false)
    }

    /// The operator's policy: a denied command, or a login other than anonymous where only
    /// anonymous is allowed, is answered here (`550`, `530`) and the server gets a `NOOP`
    /// instead, so it never sees the command; the session goes on.
    fn police(&mut self, line: &[u8], whole: bool) -> Option<Option<Vec<u8>>> {
        if !whole || (self.policy.deny.is_empty() && !self.policy.anonymous_only) {
            return None;
        }
        let body = ftp::body(line);
        let word = String::from_utf8_lossy(body.split(|&c| c == b' ').next().unwrap_or(b"")).to_ascii_uppercase();
        if self.policy.denies(&word) {
            let reason = format!("{word} is not allowed through this gateway");
            self.events.push_back(Event::Refused { kind: Refusal::Command, reason: reason.clone() });
            self.cmds.push_back(Cmd::Refused(format!("550 ftpgate: {reason}.\r\n").into_bytes()));
            return Some(Some(b"NOOP\r\n".to_vec()));
        }
        // the USER, or, when that one passed (the stream's first line split into segments
        // cannot be replaced), the PASS after it: the server never completes the login
        let named = match word.as_str() {
            "USER" => Some(arg(line).trim().to_ascii_lowercase()),
            "PASS" => Some(self.user.clone().unwrap_or_default().to_ascii_lowercase()),
            _ => None,
        };
        if let (true, Some(user)) = (self.policy.anonymous_only, named) {
            if user != "anonymous" && user != "ftp" {
                let reason = "only anonymous logins are allowed to this server".to_string();
                self.events.push_back(Event::Refused { kind: Refusal::Login, reason: reason.clone() });
                self.cmds.push_back(Cmd::Refused(format!("530 ftpgate: {reason}.\r\n").into_bytes()));
                return Some(Some(b"NOOP\r\n".to_vec()));
            }
        }
        None
    }

    /// RFC 6384 section 11 on a NAT64 session: `ALGS STATUS64` tells, `ALGS ENABLE64` /
    /// `DISABLE64` turn the translation on or off for the session (off: the commands pass as
    /// the client sent them, as through a bare translator), each answered `216`; other
    /// arguments `501`. A session with translation off also leaves PORT/EPRT/PASV/EPSV alone.
    fn algs(&mut self, verb: Option<&[u8]>, line: &[u8], whole: bool) -> Option<Option<Vec<u8>>> {
        let on = self.alg64?;
        if !on && matches!(verb, Some(b"PASV" | b"EPSV" | b"PORT" | b"EPRT")) {
            self.cmds.push_back(Cmd::Other);
            return Some(None);
        }
        if verb != Some(b"ALGS") || !whole {
            return None;
        }
        let reply = match arg(line).trim().to_ascii_uppercase().as_str() {
            "STATUS64" => format!("216 ftpgate: translation of EPSV/EPRT {}.\r\n", if on { "enabled" } else { "disabled" }),
            "ENABLE64" => {
                self.alg64 = Some(true);
                "216 ftpgate: translation of EPSV/EPRT enabled.\r\n".to_string()
            }
            "DISABLE64" => {
                self.alg64 = Some(false);
                "216 ftpgate: translation of EPSV/EPRT disabled.\r\n".to_string()
            }
            _ => "501 ftpgate: ALGS takes STATUS64, ENABLE64 or DISABLE64.\r\n".to_string(),
        };
        self.events.push_back(Event::Note(format!("{}: {}", show(line), reply.trim_end())));
        self.cmds.push_back(Cmd::Refused(reply.into_bytes()));
        Some(Some(b"NOOP\r\n".to_vec()))
    }

    /// Across the families, a passive command goes to the server in the server's family's form
    /// (`PASV` from an IPv4 client as `EPSV` to an IPv6 server, `EPSV` from an IPv6 client as
    /// `PASV` to an IPv4 server, which may not know EPSV) and its reply comes back in the form
    /// the client asked for. An `EPSV ALL` to an IPv4 server is answered here (the server would
    /// then refuse the PASV it is sent). `Some(replacement)` when the line was taken care of.
    fn translate_passive(&mut self, verb: Option<&[u8]>, line: &[u8], whole: bool) -> Option<Option<Vec<u8>>> {
        if !self.translates() || !whole {
            return None;
        }
        let all = ftp::body(line).to_ascii_uppercase().ends_with(b"ALL");
        match verb {
            Some(b"PASV") if self.client.is_ipv6() => {
                // a 227 cannot name the IPv6 address this client can reach: refused, clearly
                let reply = b"502 ftpgate: PASV cannot name an IPv6 address; use EPSV.\r\n".to_vec();
                self.cmds.push_back(Cmd::Refused(reply));
                Some(Some(b"NOOP\r\n".to_vec()))
            }
            Some(b"PASV") if self.server.is_ipv6() => {
                self.events.push_back(Event::Note("PASV sent to the IPv6 server as EPSV".into()));
                self.cmds.push_back(Cmd::Pasv);
                Some(Some(b"EPSV\r\n".to_vec()))
            }
            Some(b"EPSV") if self.server.is_ipv4() && all => {
                self.cmds.push_back(Cmd::Refused(b"200 EPSV ALL ok (ftpgate speaks PASV to the IPv4 server).\r\n".to_vec()));
                Some(Some(b"NOOP\r\n".to_vec()))
            }
            Some(b"EPSV") if self.server.is_ipv4() => {
                self.events.push_back(Event::Note("EPSV sent to the IPv4 server as PASV".into()));
                self.cmds.push_back(Cmd::Epsv);
                Some(Some(b"PASV\r\n".to_vec()))
            }
            _ => None,
        }
    }

    /// A fresh line of form `kind` naming `to` in place of `line` (a translation between the
    /// families); a form that cannot name `to` (never: the relay announces in the family asked
    /// for) leaves the line as it was.
    pub(super) fn render_as(&mut self, dir: Dir, line: &[u8], kind: ftp::Kind, to: SocketAddr) -> Vec<u8> {
        let Some(new) = ftp::render(kind, to) else { return line.to_vec() };
        self.events.push_back(Event::Rewrote { dir, kind, from: show(line), to: show(&new) });
        new
    }

    pub(super) fn rewrite(&mut self, dir: Dir, line: &[u8], ep: &ftp::Endpoint, to: SocketAddr) -> Vec<u8> {
        // (a PORT/227 cannot name an IPv6 endpoint; the relay announces the family it was asked in)
        let Some(new) = ftp::emit(line, ep, to) else { return line.to_vec() };
        self.events.push_back(Event::Rewrote { dir, kind: ep.kind, from: show(line), to: show(&new) });
        new
    }

    pub(super) fn on_reply(&mut self, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Vec<u8>> {
        let Some((code, last)) = ftp::reply_code(line) else {
            return None; // text line of a multi-line reply
        };
        if let Some(open) = self.multiline {
            if code != open || !last {
                return None;
            }
            self.multiline = None;
        } else if !last {
            self.multiline = Some(code);
            return None;
        }
        if code < 200 {
            return None; // preliminary: the command's final reply is still to come
        }
        if !self.greeted {
            self.greeted = true;
            if let Some(text) = self.refuse_greeting.take() {
                // counted where the session was refused
                self.events.push_back(Event::Note("session refused; its greeting answered 421".into()));
                return Some(text);
            }
            return None;
        }
        if code == 230 {
            self.logged_in = true;
            // until a PWD reply says where, the working directory is the login's home
            self.cwd.get_or_insert_with(|| "~".into());
        }
        // a reply that cannot end the transfer in progress answers a command sent meanwhile
        let transferring = matches!(self.cmds.front(), Some(Cmd::Retr(..)) | Some(Cmd::Xfer(_)));
        let cmd = if transferring && !ftp::may_end_transfer(code) && self.cmds.len() > 1 { self.cmds.remove(1) } else { self.cmds.pop_front() }
            .unwrap_or(Cmd::Other);
        match (cmd, code) {
            (Cmd::Refused(text), _) => Some(text),
            (Cmd::Hidden, code) => {
                if code != 350 {
                    self.events.push_back(Event::Note(format!("server refused ftpgate's REST ({code}); relaying its data")));
                }
                Some(Vec::new())
            }
            (Cmd::Rest(n), code) => {
                self.rest = if code == 350 { n } else { 0 };
                None
            }
            (Cmd::Auth, 234) => {
                self.tls = true;
                self.events.push_back(Event::TlsStarted);
                None
            }
            (Cmd::Pwd, 257) => {
                self.cwd = path::dir_from_257(ftp::body(line));
                None
            }
            (Cmd::Cwd(dir), 200..=299) => {
                self.cwd = match self.cwd.as_deref() {
                    Some(c) => path::resolve_dir(c, &dir),
                    None if dir.starts_with('/') => path::resolve_dir("/", &dir),
                    None => None,
                };
                None
            }
            (Cmd::Type(binary), 200..=299) => {
                self.binary = binary;
                None
            }
            (Cmd::Retr(name, id), code) => {
                let path = self.resolve(&name);
                self.events.push_back(Event::Retr { path, binary: self.binary, ok: code < 300 });
                let id = id?;
                dp.finished(id, code < 300);
                self.transfer_end(id, code, whole, dp)
            }
            (Cmd::Xfer(id), code) => self.transfer_end(id, code, whole, dp),
            (Cmd::ToPassive { client, eprt }, 227 | 229) => self.on_to_passive(line, code, client, eprt, whole, dp),
            (Cmd::ToActive { epsv, client_side }, 200..=299) => self.on_to_active(line, epsv, client_side, whole),
            (Cmd::Pasv, 227) => self.on_passive(line, ftp::parse_227(line), ftp::Kind::Pasv227, whole, dp),
            (Cmd::Epsv, 229) => self.on_passive(line, ftp::parse_229(line), ftp::Kind::Epsv229, whole, dp),
            // translated (see translate_passive): answered in the form the client asked for
            (Cmd::Pasv, 229) if self.translates() => self.on_passive(line, ftp::parse_229(line), ftp::Kind::Pasv227, whole, dp),
            (Cmd::Epsv, 227) if self.translates() => self.on_passive(line, ftp::parse_227(line), ftp::Kind::Epsv229, whole, dp),
            _ => None,
        }
    }

    pub(super) fn on_passive(
        &mut self,
        line: &[u8],
        parsed: Result<ftp::Endpoint, ftp::ParseError>,
        answer: ftp::Kind,
        whole: bool,
        dp: &mut dyn DataPlane,
    ) -> Option<Vec<u8>> {
        let ep = match parsed {
            Ok(ep) => ep,
            Err(e) => {
                self.events.push_back(Event::Malformed { dir: Dir::ToClient, line: show(line), why: format!("{e:?}") });
                return None;
            }
        };
        if ep.kind == ftp::Kind::Pasv227 && self.server.is_ipv6() {
            // a 227 on an IPv6 session names an IPv4 endpoint, which this session cannot
            // relay nor rewrite: passed as the server sent it, not followed
            self.events.push_back(Event::Note(format!("{} on an IPv6 session: not relayed", show(line))));
            return None;
        }
        let named_ip = ep.ip;
        if let (true, ftp::Kind::Epsv229, Some(ip)) =
            (self.translates() && self.alg64.is_some(), answer, named_ip.filter(|&ip| ip != self.server.ip()))
        {
            // RFC 6384: a 227 naming another host cannot become a 229 (which names only a port
            // at the server's address): answered 425, not followed
            let reason = format!("the server's 227 names {ip}, not the server {}; not followed", self.server.ip());
            self.events.push_back(Event::Refused { kind: Refusal::ThirdParty, reason: reason.clone() });
            return Some(format!("425 ftpgate: {reason}.\r\n").into_bytes());
        }
        let target = self.passive_peer(&ep);
        let req = DataRequest { mode: Mode::Passive, client: self.client, server: self.server, target, via: self.via, rates: self.policy.rates };
        let named = SocketAddr::new(named_ip.unwrap_or(self.server.ip()), ep.port);
        let opened = dp.open(&req);
        if let Ok(o) = &opened {
            self.data = Some(o.id);
        }
        match opened {
            Ok(o) if o.announce == named && answer == ep.kind => None,
            Ok(_) | Err(_) if !whole => {
                self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; cannot rewrite", show(line))));
                None
            }
            Ok(o) if answer != ep.kind => Some(self.render_as(Dir::ToClient, line, answer, o.announce)),
            Ok(o) => Some(self.rewrite(Dir::ToClient, line, &ep, o.announce)),
            Err(e) => {
                self.events.push_back(Event::Refused { kind: Refusal::Data(e.label()), reason: format!("passive data connection: {e}") });
                Some(format!("425 ftpgate: cannot prepare the data connection: {e}.\r\n").into_bytes())
            }
        }
    }
}

/// The argument of a command line, as sent.
fn arg(line: &[u8]) -> String {
    let b = ftp::body(line);
    let at = b.iter().position(|&c| c == b' ').map_or(b.len(), |i| i + 1);
    String::from_utf8_lossy(&b[at..]).into_owned()
}
