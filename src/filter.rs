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
//! - `raw PREROUTING -p tcp --syn -m socket --transparent`: the SYN of a data connection to one
//!   of the relay's listeners is queued before conntrack sees it, so that a NATed entry of an
//!   earlier connection on the same addresses is deleted rather than taken over
//!   (`crate::conntrack::clear_stale_nat`).
//! - kernel forwarding of data connections (`crate::nft`): the nftables table `ip ftpgate`
//!   (loaded with `nft -f`; without `nft` data connections are relayed), plus three rules on
//!   its conntrack marks: `mangle FORWARD` queues a forwarded connection's SYN/FIN/RST segments
//!   (for its byte count), `mangle PREROUTING` queues a thief's SYN (logged and dropped, and
//!   dropped while no ftpgate is bound), `filter FORWARD` accepts a forwarded connection's
//!   first packet (for firewalls whose FORWARD policy is DROP). `net.netfilter.nf_conntrack_acct`
//!   is turned on (byte counts past 4 GiB) and left on by `remove`.
//!
//! Every iptables rule carries the comment `ftpgate` and is checked with `-C` before it is added,
//! so apply twice adds nothing and remove deletes exactly what apply added.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub const COMMENT: &str = "ftpgate";

/// An address family: IPv4 through `iptables` and `ip -4`, IPv6 through `ip6tables` and `ip -6`
/// (whichever variant, iptables-nft or iptables-legacy, the system's own is: the rules must land
/// where the router's own firewall is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
    /// The default route's prefix.
    fn everything(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
    /// nftables' name of the family's tables.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// Whether the system has IPv6 at all (a kernel without it, or booted with `ipv6.disable=1`,
/// has no `/proc/net/if_inet6`).
fn has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

#[derive(Clone, Debug)]
pub struct RuleSet {
    pub queue: u16,
    /// Let control traffic pass unrewritten while no ftpgate is bound to the queue.
    pub fail_open: bool,
    pub mark: u32,
    pub table: u32,
    /// A NAT64 translator's interface: the IPv4 side of the sessions it translates (which
    /// ftpgate already handles on their IPv6 side) is not queued.
    pub nat64_interface: Option<String>,
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
    /// The rules of `family`. Kernel forwarding of data connections (the connmark rules) is
    /// IPv4 only: IPv6 data connections are all relayed.
    fn rules(&self, family: Family) -> Vec<Rule> {
        let bypass = if self.fail_open { " --queue-bypass" } else { "" };
        let q = self.queue;
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let c = format!("-m comment --comment {COMMENT}");
        let (pass, thief) = (crate::nft::CT_PASS, crate::nft::CT_THIEF);
        let (not_in, not_out) = match (&self.nat64_interface, family) {
            (Some(i), Family::V4) => (format!("! -i {i} "), format!("! -o {i} ")),
            _ => (String::new(), String::new()),
        };
        let not_forwarded = if family == Family::V4 { format!("-m connmark ! --mark {pass:#x} ") } else { String::new() };
        let mut rules = vec![
            Rule {
                table: "raw",
                chain: "PREROUTING",
                first: false,
                spec: words(&format!("{not_in}-p tcp --dport 21 -m addrtype ! --dst-type LOCAL {c} -j NFQUEUE --queue-num {q}{bypass}")),
            },
            Rule {
                table: "mangle",
                chain: "FORWARD",
                first: false,
                spec: words(&format!("{not_out}-p tcp --sport 21 {c} -j NFQUEUE --queue-num {q}{bypass}")),
            },
            Rule {
                table: "raw",
                chain: "PREROUTING",
                first: false,
                // a data connection's SYN to one of the relay's listeners, before conntrack: a
                // NATed entry on its addresses is deleted first (conntrack::clear_stale_nat)
                spec: words(&format!("-p tcp --syn -m socket --transparent {c} -j NFQUEUE --queue-num {q}{bypass}")),
            },
            Rule {
                table: "mangle",
                chain: "PREROUTING",
                first: false,
                // a kernel-forwarded data connection (IPv4) never needs the per-packet socket lookup
                spec: words(&format!("-p tcp {not_forwarded}-m socket --transparent {c} -j MARK --set-xmark {m}")),
            },
            Rule { table: "filter", chain: "INPUT", first: true, spec: words(&format!("-p tcp -m mark --mark {m} {c} -j ACCEPT")) },
        ];
        if family == Family::V6 {
            return rules;
        }
        rules.extend([
            Rule {
                table: "mangle",
                chain: "FORWARD",
                first: false,
                spec: words(&format!(
                    "-p tcp -m connmark --mark {pass:#x} -m tcp ! --tcp-flags SYN,FIN,RST NONE {c} -j NFQUEUE --queue-num {q}{bypass}"
                )),
            },
            Rule {
                table: "mangle",
                chain: "PREROUTING",
                first: false,
                spec: words(&format!("-p tcp -m connmark --mark {thief:#x} {c} -j NFQUEUE --queue-num {q}")),
            },
            Rule {
                table: "filter",
                chain: "FORWARD",
                first: true,
                spec: words(&format!("-m connmark --mark {pass:#x} -m conntrack --ctstate NEW {c} -j ACCEPT")),
            },
        ]);
        rules
    }

    /// The rules in iptables-save form, for operators who manage their own firewall
    /// (`iptables-restore --noflush` loads them), with the two `ip` commands and a note on
    /// nftables as comments.
    pub fn show(&self) -> String {
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let mut out = String::from(
            "# ftpgate rule set (iptables-save format; load with `iptables-restore --noflush`).\n\
             # Each rule carries the comment \"ftpgate\"; `ftpgate rules remove` deletes exactly these.\n",
        );
        out += &self.save_form(Family::V4);
        out += &format!("# and, outside iptables:\n#   ip rule add fwmark {m} lookup {}\n", self.table);
        out += &format!("#   ip route replace local 0.0.0.0/0 dev lo table {}\n", self.table);
        out += "# and the nftables table for kernel-forwarded data connections (load with `nft -f FILE`):\n";
        for l in crate::nft::ruleset().lines() {
            out += &format!("#   {l}\n");
        }
        out += &format!("# and: sysctl -w {EARLY_DEMUX_SYSCTL}=0 (see `ftpgate rules apply`; kept after `remove`)\n");
        out += "# IPv6 (ip6tables-save format; load with `ip6tables-restore --noflush`; applied where the system has IPv6):\n";
        out += &self.save_form(Family::V6);
        out += &format!("# and, outside ip6tables:\n#   ip -6 rule add fwmark {m} lookup {}\n", self.table);
        out += &format!("#   ip -6 route replace local ::/0 dev lo table {}\n", self.table);
        out += "# nftables: `iptables-restore-translate -f FILE` prints these as nft rules. A native nft\n\
                # ruleset needs a kernel with nft_queue (CONFIG_NFT_QUEUE) for `queue num N bypass`, a raw-priority\n\
                # (-300) prerouting chain for the client->server rule, a mangle-priority (-150) forward chain\n\
                # for the server->client rule, `socket transparent 1 meta mark set ...` at mangle priority in\n\
                # prerouting, and the mark accepted in input.\n";
        out
    }

    /// One family's rules in iptables-save form.
    fn save_form(&self, family: Family) -> String {
        let mut out = String::new();
        for table in ["raw", "mangle", "filter"] {
            out += &format!("*{table}\n");
            for r in self.rules(family).into_iter().filter(|r| r.table == table) {
                let op = if r.first { format!("-I {} 1", r.chain) } else { format!("-A {}", r.chain) };
                out += &format!("{op} {}\n", r.spec.join(" "));
            }
            out += "COMMIT\n";
        }
        out
    }

    /// Installs the rules of both families (IPv6 where the system has it and `ip6tables`).
    pub fn apply(&self) -> Result<()> {
        self.apply_family(Family::V4)?;
        self.apply_nft();
        no_early_demux();
        if has_ipv6() {
            if ip6tables_present() {
                self.apply_family(Family::V6)?;
            } else {
                crate::log!("note: ip6tables not found: IPv6 FTP sessions pass the router unhelped");
            }
        }
        for f in [Family::V4, Family::V6] {
            if output(f.iptables(), &["-w", "-t", "raw", "-S"]).is_ok_and(|raw| raw.contains("--helper ftp")) {
                crate::log!(
                    "warning: the kernel FTP helper is assigned in the {} raw table; it must not act on traffic ftpgate handles",
                    f.iptables()
                );
            }
        }
        Ok(())
    }

    fn apply_family(&self, f: Family) -> Result<()> {
        for r in self.rules(f) {
            if iptables(f, r.table, "-C", r.chain, &r.spec, None)? {
                continue;
            }
            let ok =
                if r.first { iptables(f, r.table, "-I", r.chain, &r.spec, Some("1"))? } else { iptables(f, r.table, "-A", r.chain, &r.spec, None)? };
            if !ok {
                bail!("{} refused: -t {} -A {} {}", f.iptables(), r.table, r.chain, r.spec.join(" "));
            }
        }
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let t = self.table.to_string();
        if !self.ip_rule_present(f)? {
            run("ip", &[f.ip(), "rule", "add", "fwmark", &m, "lookup", &t])?;
        }
        run("ip", &[f.ip(), "route", "replace", "local", f.everything(), "dev", "lo", "table", &t])
    }

    /// Removes exactly what [`RuleSet::apply`] added, for both families.
    pub fn remove(&self) -> Result<()> {
        self.remove_family(Family::V4)?;
        if has_ipv6() && ip6tables_present() {
            self.remove_family(Family::V6)?;
        }
        if nft_present() && output(NFT, &["list", "table", "ip", crate::nft::TABLE]).is_ok() {
            run(NFT, &["delete", "table", "ip", crate::nft::TABLE])?;
        }
        remove_empty_tables();
        Ok(())
    }

    fn remove_family(&self, f: Family) -> Result<()> {
        for r in self.rules(f) {
            while iptables(f, r.table, "-C", r.chain, &r.spec, None)? {
                if !iptables(f, r.table, "-D", r.chain, &r.spec, None)? {
                    bail!("{} could not delete: -t {} {} {}", f.iptables(), r.table, r.chain, r.spec.join(" "));
                }
            }
        }
        let m = format!("{:#x}/{:#x}", self.mark, self.mark);
        let t = self.table.to_string();
        while self.ip_rule_present(f)? {
            run("ip", &[f.ip(), "rule", "del", "fwmark", &m, "lookup", &t])?;
        }
        let _ = output("ip", &[f.ip(), "route", "flush", "table", &t]);
        Ok(())
    }

    /// Loads the table for kernel-forwarded data connections if `nft` is there and the table
    /// is not; without it ftpgate relays every data connection.
    fn apply_nft(&self) {
        if !nft_present() {
            crate::log!("note: nft (package nftables) not found: data connections will all be relayed, none forwarded by the kernel");
            return;
        }
        // conntrack's byte counters resolve a forwarded transfer's count past 4 GiB
        // (sequence numbers wrap); they count only connections created after this
        let acct = "/proc/sys/net/netfilter/nf_conntrack_acct";
        if std::fs::read_to_string(acct).is_ok_and(|v| v.trim() == "0") && std::fs::write(acct, "1").is_err() {
            crate::log!("note: cannot turn on {acct}: forwarded transfers over 4 GiB a direction are counted modulo 4 GiB");
        }
        if output(NFT, &["list", "table", "ip", crate::nft::TABLE]).is_ok() {
            return;
        }
        if let Err(e) = run_with_input(NFT, &["-f", "-"], crate::nft::ruleset().as_bytes()) {
            crate::warn!("cannot load the nftables table for kernel forwarding ({e:#}); data connections will be relayed");
        }
    }

    fn ip_rule_present(&self, f: Family) -> Result<bool> {
        let rules = output("ip", &[f.ip(), "rule", "show"])?;
        let needle = format!("fwmark {:#x}/{:#x} lookup {}", self.mark, self.mark, self.table);
        Ok(rules.lines().any(|l| l.contains(&needle)))
    }
}

const EARLY_DEMUX_SYSCTL: &str = "net.ipv4.tcp_early_demux";

/// Turns TCP early demux off (both families follow this one setting). A relayed data connection
/// ends in TIME_WAIT on the router (the relay closes first, after the last byte), and early
/// demux matches a later segment on the same four addresses and ports to that socket before
/// routing — which then drops it if it is to be forwarded: a kernel-forwarded data connection
/// (ftpgate's own, or the next one on those ports through any path) reusing the tuple within
/// the 60 s of TIME_WAIT never got its SYN through (measured: the download timed out; with
/// early demux off it completes). A router forwards far more than it terminates, and early
/// demux only saves a route lookup for local sockets. Like `nf_conntrack_acct`, it is not
/// turned back on by `rules remove`: other settings may rely on it being off.
fn no_early_demux() {
    let path = format!("/proc/sys/{}", EARLY_DEMUX_SYSCTL.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "0") && std::fs::write(&path, "0").is_err() {
        crate::log!("note: cannot turn off {EARLY_DEMUX_SYSCTL}: a connection forwarded on the addresses and ports of a relayed one that ended less than 60 s before is dropped");
    }
}

/// Runs one iptables (or ip6tables) command; Ok(false) when it says no (e.g. `-C` for a
/// missing rule).
fn iptables(f: Family, table: &str, op: &str, chain: &str, spec: &[String], pos: Option<&str>) -> Result<bool> {
    let prog = f.iptables();
    let mut cmd = Command::new(prog);
    cmd.args(["-w", "-t", table, op, chain]);
    if let Some(p) = pos {
        cmd.arg(p);
    }
    let out = cmd.args(spec).output().with_context(|| format!("cannot run {prog} (is it installed?)"))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("{prog} -t {table} {op} {chain} failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

/// Whether `ip6tables` runs here (asked once per process).
fn ip6tables_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| Command::new(Family::V6.iptables()).arg("-V").output().is_ok_and(|o| o.status.success()))
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

const NFT: &str = "nft";

/// With iptables-nft, `apply` creates the `raw` and `mangle` tables (and their base chains) where
/// the router had none: once ftpgate's rules are gone, a table with no rule left and every
/// policy ACCEPT — which is what no table at all does — is deleted, so the ruleset is as before.
fn remove_empty_tables() {
    if !nft_present() {
        return;
    }
    for f in [Family::V4, Family::V6] {
        if !output(f.iptables(), &["-V"]).is_ok_and(|v| v.contains("nf_tables")) {
            continue;
        }
        for table in ["raw", "mangle"] {
            if output(NFT, &["list", "table", f.nft(), table]).is_ok_and(|t| holds_nothing(&t)) {
                let _ = run(NFT, &["delete", "table", f.nft(), table]);
            }
        }
    }
}

/// Whether an `nft list table` text has base chains with policy accept and not a single rule.
fn holds_nothing(listing: &str) -> bool {
    listing.lines().map(str::trim).all(|l| {
        l.is_empty() || l == "}" || l.starts_with("table ") || l.starts_with("chain ") || (l.starts_with("type ") && l.ends_with("policy accept;"))
    })
}

/// Whether `nft` runs here (asked once per process).
fn nft_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| Command::new(NFT).arg("--version").output().is_ok_and(|o| o.status.success()))
}

fn run_with_input(prog: &str, args: &[&str], input: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {prog}"))?;
    child.stdin.take().expect("piped").write_all(input)?;
    let out = child.wait_with_output()?;
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
    fn only_an_empty_accepting_table_is_nothing() {
        let empty = "table ip raw {\n\tchain PREROUTING {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t}\n}\n";
        assert!(holds_nothing(empty));
        assert!(!holds_nothing(&empty.replace("policy accept", "policy drop")));
        let ruled =
            "table ip raw {\n\tchain PREROUTING {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\ttcp dport 21 counter\n\t}\n}\n";
        assert!(!holds_nothing(ruled));
    }

    #[test]
    fn rule_text_has_the_measured_hooks() {
        let all = RuleSet { queue: 7, fail_open: true, mark: 0x10000, table: 2121, nat64_interface: None }.show();
        let (r, v6) = all.split_at(all.find("# IPv6").unwrap());
        let raw = &r[r.find("*raw").unwrap()..r.find("*mangle").unwrap()];
        assert!(raw.contains("\n-A PREROUTING -p tcp --dport 21"), "{r}");
        let mangle = &r[r.find("*mangle").unwrap()..r.find("*filter").unwrap()];
        assert!(mangle.contains("\n-A FORWARD -p tcp --sport 21"), "{r}");
        assert!(r.contains("*filter\n-I INPUT 1 -p tcp -m mark --mark 0x10000/0x10000"), "{r}");
        assert_eq!(r.matches("COMMIT").count(), 3);
        assert!(r.contains("--queue-num 7 --queue-bypass"));
        assert!(r.contains("-m socket --transparent"));
        // no CT target at all: the control connection stays tracked and no helper is assigned
        assert!(!r.contains("-j CT"));
        // kernel-forwarded data connections: counted, thieves queued, the first packet let in
        assert!(mangle.contains("-A FORWARD -p tcp -m connmark --mark 0xf7000000 -m tcp ! --tcp-flags SYN,FIN,RST NONE"), "{r}");
        assert!(mangle.contains("-A PREROUTING -p tcp -m connmark --mark 0xf6000000"), "{r}");
        assert!(r.contains("-I FORWARD 1 -m connmark --mark 0xf7000000 -m conntrack --ctstate NEW"), "{r}");
        assert!(r.contains("#   table ip ftpgate {"), "{r}");
        // IPv6: the same interception, no kernel forwarding (its data connections are relayed)
        assert!(v6.contains("*raw\n-A PREROUTING -p tcp --dport 21 -m addrtype ! --dst-type LOCAL"), "{v6}");
        assert!(v6.contains("\n-A FORWARD -p tcp --sport 21"), "{v6}");
        assert!(v6.contains("-m socket --transparent") && v6.contains("-I INPUT 1 -p tcp -m mark --mark 0x10000/0x10000"), "{v6}");
        assert!(!v6.contains("connmark") && v6.contains("ip -6 route replace local ::/0 dev lo table 2121"), "{v6}");
        assert_eq!(v6.matches("COMMIT").count(), 3);
        let closed = RuleSet { queue: 7, fail_open: false, mark: 0x10000, table: 2121, nat64_interface: None }.show();
        assert!(!closed.contains("--queue-bypass"));
    }
}
