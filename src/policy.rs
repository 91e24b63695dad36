//! The operator's policy: `--deny-command` and the configuration file's `[[policy]]` tables,
//! matched per session by client and server address (first match wins), giving what the
//! session's [`SessionPolicy`] asks or that the session is refused. Shared by the NFQUEUE shell
//! and the explicit proxy; replaced as a whole on SIGHUP, for the sessions that start after it.

use core::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::proto::explicit::Cidr;
use crate::proto::{Rates, ServerMode, SessionPolicy};

/// One `[[policy]]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    /// Servers it applies to (any, when absent).
    #[serde(default, deserialize_with = "crate::config::cidrs")]
    pub servers: Option<Vec<Cidr>>,
    /// Clients it applies to (any, when absent).
    #[serde(default, deserialize_with = "crate::config::cidrs")]
    pub clients: Option<Vec<Cidr>>,
    /// `deny`: the client gets `421` instead of the server's greeting.
    pub action: Option<Action>,
    pub anonymous_only: Option<bool>,
    pub cache: Option<bool>,
    /// Added to `--deny-command` for the sessions this rule matches.
    pub deny_commands: Option<Vec<String>>,
    /// The data connections' mode towards the server, instead of `--server-mode`.
    #[serde(default, deserialize_with = "crate::config::server_mode")]
    pub server_mode: Option<ServerMode>,
    /// Bandwidth limits (bytes per second, `8M`), instead of `--rate-down` / `--rate-up`.
    #[serde(default, deserialize_with = "crate::config::rate")]
    pub rate_down: Option<u64>,
    #[serde(default, deserialize_with = "crate::config::rate")]
    pub rate_up: Option<u64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Deny,
}

impl Rule {
    fn matches(&self, client: IpAddr, server: IpAddr) -> bool {
        let within = |list: &Option<Vec<Cidr>>, ip: IpAddr| list.as_ref().is_none_or(|l| l.iter().any(|c| c.contains(ip)));
        within(&self.clients, client) && within(&self.servers, server)
    }
}

/// What the policy says of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(SessionPolicy),
    /// Refused; the index of the `[[policy]]` table that refused it (from 1, as in the file).
    Deny(usize),
}

/// Every rule, in the file's order, and the commands denied everywhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    pub rules: Vec<Rule>,
    pub deny: Vec<String>,
    /// `--rate-down` / `--rate-up`: every session's, unless its rule says otherwise.
    pub rates: Rates,
    /// `--server-mode`: every session's, unless its rule says otherwise.
    pub server_mode: ServerMode,
}

/// A command name `--deny-command` cannot take (FTP commands are 3 or 4 letters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCommand(pub String);

impl core::fmt::Display for BadCommand {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?} is not an FTP command (3 or 4 letters, e.g. STOR)", self.0)
    }
}

impl std::error::Error for BadCommand {}

fn command(c: &str) -> Result<String, BadCommand> {
    let ok = (3..=4).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphabetic());
    if ok {
        Ok(c.to_ascii_uppercase())
    } else {
        Err(BadCommand(c.to_string()))
    }
}

impl Policies {
    /// The policy of `deny` (every session) and `rules`, with every command name checked.
    pub fn new(deny: &[String], rates: Rates, server_mode: ServerMode, mut rules: Vec<Rule>) -> Result<Policies, BadCommand> {
        let deny = deny.iter().map(|c| command(c)).collect::<Result<Vec<_>, _>>()?;
        for r in &mut rules {
            if let Some(d) = &mut r.deny_commands {
                *d = d.iter().map(|c| command(c)).collect::<Result<Vec<_>, _>>()?;
            }
        }
        Ok(Policies { rules, deny, rates, server_mode })
    }

    /// The verdict for a session from `client` to `server`: the first rule that matches both.
    pub fn decide(&self, client: IpAddr, server: IpAddr) -> Verdict {
        let mut p = SessionPolicy { deny: self.deny.clone(), rates: self.rates, server_mode: self.server_mode, ..SessionPolicy::default() };
        let Some((i, r)) = self.rules.iter().enumerate().find(|(_, r)| r.matches(client, server)) else { return Verdict::Allow(p) };
        if r.action == Some(Action::Deny) {
            return Verdict::Deny(i + 1);
        }
        p.anonymous_only = r.anonymous_only.unwrap_or(false);
        p.cache = r.cache.unwrap_or(true);
        p.rates = Rates { down: r.rate_down.or(self.rates.down), up: r.rate_up.or(self.rates.up) };
        p.server_mode = r.server_mode.unwrap_or(self.server_mode);
        for c in r.deny_commands.iter().flatten() {
            if !p.deny.contains(c) {
                p.deny.push(c.clone());
            }
        }
        Verdict::Allow(p)
    }
}

/// The policy in force, replaced on SIGHUP (sessions keep the verdict they started with).
pub type Shared = Arc<Mutex<Arc<Policies>>>;

/// The current policy of `shared`.
pub fn current(shared: &Shared) -> Arc<Policies> {
    shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_matching_rule_wins_and_adds_to_the_global_denials() {
        let rules: Vec<Rule> = toml::from_str::<std::collections::HashMap<String, Vec<Rule>>>(
            r#"
            [[policy]]
            servers = ["10.0.2.2/32"]
            action = "deny"
            [[policy]]
            servers = ["10.0.2.0/24", "fd00:2::/64"]
            clients = ["10.0.1.0/24", "fd00:1::/64"]
            anonymous-only = true
            cache = false
            deny-commands = ["dele"]
            rate-down = "8M"
            server-mode = "passive"
            "#,
        )
        .unwrap()
        .remove("policy")
        .unwrap();
        let p = Policies::new(&["STOR".into()], Rates { down: None, up: Some(1000) }, ServerMode::Client, rules).unwrap();
        assert_eq!(p.decide(ip("10.0.1.2"), ip("10.0.2.2")), Verdict::Deny(1));
        let Verdict::Allow(s) = p.decide(ip("10.0.1.2"), ip("10.0.2.3")) else { panic!() };
        let rates = Rates { down: Some(8 << 20), up: Some(1000) }; // the rule's, else the global one
        let server_mode = ServerMode::Passive;
        assert_eq!(s, SessionPolicy { deny: vec!["STOR".into(), "DELE".into()], anonymous_only: true, cache: false, rates, server_mode });
        let Verdict::Allow(s) = p.decide(ip("fd00:1::2"), ip("fd00:2::2")) else { panic!() };
        assert!(s.anonymous_only);
        // no rule matches: only the global denials
        assert_eq!(
            p.decide(ip("10.0.5.2"), ip("10.0.2.3")),
            Verdict::Allow(SessionPolicy { deny: vec!["STOR".into()], rates: Rates { down: None, up: Some(1000) }, ..Default::default() })
        );
        assert_eq!(Policies::new(&["ST0R".into()], Rates::default(), ServerMode::Client, vec![]), Err(BadCommand("ST0R".into())));
    }
}
