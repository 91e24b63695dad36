//! `--server-mode`: the data connection towards the server in the mode the operator chose, not
//! the client's. `passive` (for servers that cannot open connections outwards): a client's
//! `PORT`/`EPRT` goes to the server as `PASV`/`EPSV`, the server's `227`/`229` is answered to the
//! client as the `200` its command expects, and the relay connects to both. `active` (for servers
//! whose passive ports are closed): a client's `PASV`/`EPSV` goes to the server as `PORT`/`EPRT`
//! naming the relay, the server's `200` is answered to the client as the `227`/`229` naming the
//! relay's other endpoint, and both connect to the relay. The sequence map absorbs the length
//! changes; a server that refuses the converted command gets the client its error.

use super::*;

impl Session {
    /// The client's data-connection command converted to the server mode of the session's
    /// policy: `Some(line for the server)`, or `None` when it goes on as usual.
    pub(super) fn convert(&mut self, verb: Option<&[u8]>, line: &[u8], whole: bool, dp: &mut dyn DataPlane) -> Option<Option<Vec<u8>>> {
        if !whole || self.alg64 == Some(false) {
            return None;
        }
        let all = ftp::body(line).to_ascii_uppercase().ends_with(b"ALL");
        match (self.policy.server_mode, verb) {
            (ServerMode::Passive, Some(b"PORT")) => self.port_to_passive(line, false),
            (ServerMode::Passive, Some(b"EPRT")) => self.port_to_passive(line, true),
            (ServerMode::Active, Some(b"PASV")) => self.passive_to_port(line, false, dp),
            (ServerMode::Active, Some(b"EPSV")) if all => {
                // the client promises EPSV only; the server will get EPRT, so it hears none of it
                self.cmds.push_back(Cmd::Refused(b"200 EPSV ALL ok.\r\n".to_vec()));
                Some(Some(b"NOOP\r\n".to_vec()))
            }
            (ServerMode::Active, Some(b"EPSV")) => self.passive_to_port(line, true, dp),
            _ => None,
        }
    }

    /// `--server-mode passive`: the client's endpoint checked as any PORT/EPRT's (its own
    /// address, no low port), then `PASV` (`EPSV` to an IPv6 server) in its place.
    fn port_to_passive(&mut self, line: &[u8], eprt: bool) -> Option<Option<Vec<u8>>> {
        let ep = if eprt { ftp::parse_eprt(line) } else { ftp::parse_port(line) }.ok()?;
        let client = SocketAddr::new(ep.ip?, ep.port);
        if let Err(reason) = policy::check_active(self.client.ip(), client.ip(), client.port()) {
            return Some(self.refuse(500, Refusal::Bounce, reason.to_string()));
        }
        let to: &[u8] = if self.server.is_ipv4() { b"PASV\r\n" } else { b"EPSV\r\n" };
        self.events.push_back(Event::Note(format!("{} sent to the server as {} (--server-mode passive)", show(line), show(to))));
        self.cmds.push_back(Cmd::ToPassive { client, eprt });
        Some(Some(to.to_vec()))
    }

    /// `--server-mode active`: both endpoints prepared now, `PORT` (`EPRT` to an IPv6 server)
    /// naming the relay's server-side one in place of the client's `PASV`/`EPSV`.
    fn passive_to_port(&mut self, line: &[u8], epsv: bool, dp: &mut dyn DataPlane) -> Option<Option<Vec<u8>>> {
        if !epsv && self.client.is_ipv6() {
            return None; // a 227 cannot name the IPv6 endpoint; as without conversion
        }
        let req = DataRequest {
            mode: Mode::FromBoth,
            client: self.client,
            server: self.server,
            target: self.server,
            via: self.via,
            rates: self.policy.rates,
        };
        match dp.open(&req) {
            Ok(Opened { announce, id, client_side: Some(client_side) }) => {
                self.data = Some(id);
                self.cmds.push_back(Cmd::ToActive { epsv, client_side });
                let kind = if announce.is_ipv4() { ftp::Kind::Port } else { ftp::Kind::Eprt };
                Some(Some(self.render_as(Dir::ToServer, line, kind, announce)))
            }
            Ok(_) => Some(self.refuse(425, Refusal::Data("data_listen"), "cannot prepare the data connection".into())),
            Err(e) => Some(self.refuse(425, Refusal::Data(e.label()), format!("cannot prepare the data connection: {e}"))),
        }
    }

    /// The server's `227`/`229` to a converted `PORT`/`EPRT`: the relay connects to the server
    /// there (never to another host: as for any passive reply) and to the client's endpoint; the
    /// client gets the `200` its command expects.
    pub(super) fn on_to_passive(
        &mut self,
        line: &[u8],
        code: u16,
        client: SocketAddr,
        eprt: bool,
        whole: bool,
        dp: &mut dyn DataPlane,
    ) -> Option<Vec<u8>> {
        if !whole {
            self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; cannot convert", show(line))));
            return None;
        }
        let ep = match if code == 227 { ftp::parse_227(line) } else { ftp::parse_229(line) } {
            Ok(ep) => ep,
            Err(e) => {
                self.events.push_back(Event::Malformed { dir: Dir::ToClient, line: show(line), why: format!("{e:?}") });
                return Some(b"425 ftpgate: the server's passive reply could not be read.\r\n".to_vec());
            }
        };
        let target = self.passive_peer(&ep);
        let req =
            DataRequest { mode: Mode::ToBoth { client }, client: self.client, server: self.server, target, via: self.via, rates: self.policy.rates };
        let verb = if eprt { "EPRT" } else { "PORT" };
        let reply = match dp.open(&req) {
            Ok(o) => {
                self.data = Some(o.id);
                format!("200 {verb} command successful (ftpgate: passive towards the server).\r\n")
            }
            Err(e) => {
                self.events.push_back(Event::Refused { kind: Refusal::Data(e.label()), reason: format!("data connection: {e}") });
                format!("425 ftpgate: cannot prepare the data connection: {e}.\r\n")
            }
        };
        self.events.push_back(Event::Rewrote { dir: Dir::ToClient, kind: ep.kind, from: show(line), to: show(reply.as_bytes()) });
        Some(reply.into_bytes())
    }

    /// The server's `2xx` to a converted `PASV`/`EPSV`: the client gets the `227`/`229` naming
    /// the relay's client-side endpoint.
    pub(super) fn on_to_active(&mut self, line: &[u8], epsv: bool, client_side: SocketAddr, whole: bool) -> Option<Vec<u8>> {
        if !whole {
            self.events.push_back(Event::Note(format!("{} split before ftpgate saw it; cannot convert", show(line))));
            return None;
        }
        let kind = if epsv { ftp::Kind::Epsv229 } else { ftp::Kind::Pasv227 };
        Some(self.render_as(Dir::ToClient, line, kind, client_side))
    }
}
