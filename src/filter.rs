//! The firewall set-up ftpgate needs, as one idempotent rule set (`rules apply|remove`).
//!
//! - `raw PREROUTING`: client→server FTP control segments (dport 21, not to the router itself)
//!   are queued **before conntrack**, so conntrack sees them already rewritten;
//! - `mangle FORWARD`: server→client control segments (sport 21) are queued **after conntrack**
//!   (and after de-NAT, so both directions carry the client-side addresses). Conntrack thus sees
//!   the connection in the server's sequence space throughout; see `crate::proto`.
//! - `mangle PREROUTING -m socket --transparent`: packets for the relay's transparent sockets are
//!   marked; an `ip rule` sends marked packets to a table whose only route is `local`, so data
//!   connections aimed at the server (passive) or at the client (active) reach the relay. Only
//!   sockets ftpgate opened carry IP_TRANSPARENT, so no other traffic is diverted.
//! - `filter INPUT`: accepts those marked packets, for routers whose INPUT policy is DROP.
//!
//! Every iptables rule carries the comment `ftpgate` and is checked with `-C` before it is added,
//! so apply twice adds nothing and remove deletes exactly what apply added.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub const COMMENT: &str = "ftpgate";

#[derive(Clone, Debug)]
pub struct RuleSet {
    pub queue: u16,
    /// Let control traffic pass unrewritten while no ftpgate is bound to the queue.
    pub fail_open: bool,
    pub mark: u32,
    pub table: u32,
}

struct Rule {
    table: &'static str,
    chain: &'static str,
    /// Insert at the top instead of appending.
    first: bool,
    spec: Vec<String>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

impl RuleSet {
    fn rules(&self) -> Vec<Rule> {
        let bypass = if self.fail_open { " --queue-bypass" } else { "" };
        let q = self.queue;
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let c = format!("-m comment --comment {COMMENT}");
        vec![
            Rule {
                table: "raw",
                chain: "PREROUTING",
                first: false,
                spec: words(&format!(
                    "-p tcp --dport 21 -m addrtype ! --dst-type LOCAL {c} -j NFQUEUE --queue-num {q}{bypass}"
                )),
            },
            Rule {
                table: "mangle",
                chain: "FORWARD",
                first: false,
                spec: words(&format!("-p tcp --sport 21 {c} -j NFQUEUE --queue-num {q}{bypass}")),
            },
            Rule {
                table: "mangle",
                chain: "PREROUTING",
                first: false,
                spec: words(&format!("-p tcp -m socket --transparent {c} -j MARK --set-xmark {m}")),
            },
            Rule {
                table: "filter",
                chain: "INPUT",
                first: true,
                spec: words(&format!("-p tcp -m mark --mark {m} {c} -j ACCEPT")),
            },
        ]
    }

    /// The rules in iptables-save form, for operators who manage their own firewall.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for r in self.rules() {
            let op = if r.first { "-I" } else { "-A" };
            out += &format!("-t {} {op} {} {}\n", r.table, r.chain, r.spec.join(" "));
        }
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        out += &format!("# ip rule add fwmark {m} lookup {}\n", self.table);
        out += &format!("# ip route replace local 0.0.0.0/0 dev lo table {}\n", self.table);
        out
    }

    pub fn apply(&self) -> Result<()> {
        for r in self.rules() {
            if iptables(r.table, "-C", r.chain, &r.spec, None)? {
                continue;
            }
            let ok = if r.first {
                iptables(r.table, "-I", r.chain, &r.spec, Some("1"))?
            } else {
                iptables(r.table, "-A", r.chain, &r.spec, None)?
            };
            if !ok {
                bail!("iptables refused: -t {} -A {} {}", r.table, r.chain, r.spec.join(" "));
            }
        }
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let t = self.table.to_string();
        if !self.ip_rule_present()? {
            run("ip", &["rule", "add", "fwmark", &m, "lookup", &t])?;
        }
        run("ip", &["route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", &t])?;
        if let Ok(raw) = output("iptables", &["-w", "-t", "raw", "-S"]) {
            if raw.contains("--helper ftp") {
                crate::log!("warning: the kernel FTP helper is assigned in the raw table; it must not act on traffic ftpgate handles");
            }
        }
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        for r in self.rules() {
            while iptables(r.table, "-C", r.chain, &r.spec, None)? {
                if !iptables(r.table, "-D", r.chain, &r.spec, None)? {
                    bail!("iptables could not delete: -t {} {} {}", r.table, r.chain, r.spec.join(" "));
                }
            }
        }
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let t = self.table.to_string();
        while self.ip_rule_present()? {
            run("ip", &["rule", "del", "fwmark", &m, "lookup", &t])?;
        }
        let _ = output("ip", &["route", "flush", "table", &t]);
        Ok(())
    }

    fn ip_rule_present(&self) -> Result<bool> {
        let rules = output("ip", &["rule", "show"])?;
        let needle = format!("fwmark {:#x}/{:#x} lookup {}", self.mark, self.mark, self.table);
        Ok(rules.lines().any(|l| l.contains(&needle)))
    }
}

/// Runs one iptables command; Ok(false) when iptables says no (e.g. `-C` for a missing rule).
fn iptables(table: &str, op: &str, chain: &str, spec: &[String], pos: Option<&str>) -> Result<bool> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "-t", table, op, chain]);
    if let Some(p) = pos {
        cmd.arg(p);
    }
    let out = cmd.args(spec).output().context("cannot run iptables (is it installed?)")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "iptables -t {table} {op} {chain} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn output(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_text_has_the_measured_hooks() {
        let r = RuleSet { queue: 7, fail_open: true, mark: 0x10000, table: 2121 }.show();
        assert!(r.contains("-t raw -A PREROUTING -p tcp --dport 21"));
        assert!(r.contains("-t mangle -A FORWARD -p tcp --sport 21"));
        assert!(r.contains("--queue-num 7 --queue-bypass"));
        assert!(r.contains("-m socket --transparent"));
        // no CT target at all: the control connection stays tracked and no helper is assigned
        assert!(!r.contains("-j CT"));
        let closed = RuleSet { queue: 7, fail_open: false, mark: 0x10000, table: 2121 }.show();
        assert!(!closed.contains("--queue-bypass"));
    }
}
