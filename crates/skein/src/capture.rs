//! Transparent capture: the iptables rules that send a workload's traffic through its
//! proxy, in whatever network namespace the caller runs in (`skein run` enters the
//! workload's namespace first; `skein proxy --intercept` runs inside one someone else made,
//! as an init container or CNI plugin would).
//!
//! [`plan`] is pure: a [`Capture`] becomes the rules, in two chains of the `nat` table that
//! belong to Skein alone, so that removing them ([`uninstall`]) touches nothing else:
//!
//! - `SKEIN_OUTPUT`, jumped to from `OUTPUT`: the proxy's own connections (its group id)
//!   return first; DNS (UDP and TCP port 53) goes to the proxy's DNS server; loopback,
//!   excluded networks and ports return; every other TCP connection goes to the
//!   transparent outbound listener.
//! - `SKEIN_INBOUND`, jumped to from `PREROUTING`: connections to the proxy's inbound and
//!   admin ports (and excluded ports) return; every other TCP connection from outside the
//!   namespace goes to the inbound listener, where a caller without a mesh certificate is
//!   refused under strict mTLS. Nothing reaches the application's ports directly.
//!
//! IPv4 only: `skein run` disables IPv6 inside its namespaces, and `--intercept` warns when
//! the namespace has a global IPv6 address (its IPv6 traffic is not captured).

use anyhow::{bail, Context};
use skein_model::ProxyConfig;
use std::net::Ipv4Addr;
use std::process::Command;

/// The chain `OUTPUT` jumps to.
pub const OUTPUT_CHAIN: &str = "SKEIN_OUTPUT";
/// The chain `PREROUTING` jumps to.
pub const INBOUND_CHAIN: &str = "SKEIN_INBOUND";
/// The group id the proxy runs with, so that its own connections are not captured.
pub const DEFAULT_PROXY_GID: u32 = 1337;

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The proxy's group id (`--gid-owner`): its connections are never redirected.
    pub proxy_gid: u32,
    /// The proxy's user id, when known (`skein run`): then only sockets of that user *and*
    /// group are exempt, so a process that gained the group alone is still captured.
    pub proxy_uid: Option<u32>,
    /// The transparent outbound listener's port (`outbound.listen`).
    pub outbound_port: u16,
    /// The inbound listener's port (`inbound.listen`).
    pub inbound_port: u16,
    /// The admin listener's port, left reachable from outside (metrics, readiness).
    pub admin_port: u16,
    /// The DNS server's port, when the proxy answers DNS (`dns.listen`).
    pub dns_port: Option<u16>,
    /// Outbound TCP to these ports is not captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound traffic to these networks is not captured.
    pub exclude_outbound_cidrs: Vec<(Ipv4Addr, u8)>,
    /// Inbound TCP to these ports is not captured (it reaches the application directly).
    pub exclude_inbound_ports: Vec<u16>,
}

impl Capture {
    /// The capture a proxy configuration needs: its transparent, inbound, admin and DNS
    /// ports. Refuses a configuration without a transparent outbound listener or with one
    /// the redirected connections cannot reach.
    pub fn for_config(config: &ProxyConfig, proxy_gid: u32) -> anyhow::Result<Capture> {
        let Some(outbound) = config.outbound.listen else {
            bail!("outbound.listen is not set: transparent capture needs the proxy's transparent outbound listener (e.g. outbound.listen: '127.0.0.1:4140')");
        };
        let reachable = |ip: std::net::IpAddr| {
            ip == std::net::IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == Ipv4Addr::UNSPECIFIED
        };
        if !reachable(outbound.ip()) {
            bail!("outbound.listen is {outbound}: iptables REDIRECT sends a workload's own connections to 127.0.0.1, so listen on 127.0.0.1 or 0.0.0.0");
        }
        let dns_port = match &config.dns {
            Some(dns) if !reachable(dns.listen.ip()) => {
                bail!("dns.listen is {}: iptables REDIRECT sends a workload's own queries to 127.0.0.1, so listen on 127.0.0.1 or 0.0.0.0", dns.listen)
            }
            Some(dns) => Some(dns.listen.port()),
            None => None,
        };
        Ok(Capture {
            proxy_gid,
            proxy_uid: None,
            outbound_port: outbound.port(),
            inbound_port: config.inbound.listen.port(),
            admin_port: config.admin.listen.port(),
            dns_port,
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
        })
    }

    /// Every rule, as `iptables -t nat` arguments, in the order they are added; the chains
    /// themselves and the jumps into them come first and last.
    pub fn plan(&self) -> Vec<Vec<String>> {
        let mut rules = Vec::new();
        let mut add = |chain: &str, rule: String| {
            let mut args = vec!["-A".to_string(), chain.to_string()];
            args.extend(rule.split_whitespace().map(String::from));
            rules.push(args);
        };
        let out = OUTPUT_CHAIN;
        let owner = match self.proxy_uid {
            Some(uid) => format!("--uid-owner {uid} --gid-owner {}", self.proxy_gid),
            None => format!("--gid-owner {}", self.proxy_gid),
        };
        add(out, format!("-m owner {owner} -j RETURN"));
        if let Some(port) = self.dns_port {
            // Before the loopback exemption: a resolver on 127.0.0.53 is captured too.
            for proto in ["udp", "tcp"] {
                add(
                    out,
                    format!("-p {proto} --dport 53 -j REDIRECT --to-ports {port}"),
                );
            }
        }
        add(out, "-d 127.0.0.0/8 -j RETURN".into());
        for (net, len) in &self.exclude_outbound_cidrs {
            add(out, format!("-d {net}/{len} -j RETURN"));
        }
        for port in &self.exclude_outbound_ports {
            add(out, format!("-p tcp --dport {port} -j RETURN"));
        }
        add(
            out,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );
        let inb = INBOUND_CHAIN;
        let mut exempt = vec![self.inbound_port, self.admin_port];
        exempt.extend(&self.exclude_inbound_ports);
        exempt.dedup();
        for port in exempt {
            add(inb, format!("-p tcp --dport {port} -j RETURN"));
        }
        add(
            inb,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );
        add("OUTPUT", format!("-j {OUTPUT_CHAIN}"));
        add("PREROUTING", format!("-j {INBOUND_CHAIN}"));
        rules
    }
}

/// Parses `--exclude-outbound-cidrs` entries: IPv4 networks such as `10.0.0.0/8`.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 network; write e.g. 10.0.0.0/8 or 192.0.2.7/32");
    let (ip, len) = text.split_once('/').unwrap_or((text, "32"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
}

/// How to run `iptables`: where, and with which program.
pub struct Iptables<'a> {
    /// Runs each command inside this network namespace (a `/proc/PID/ns/net` file), or
    /// in the caller's own when `None`.
    pub netns: Option<&'a std::fs::File>,
}

impl Iptables<'_> {
    fn command(&self, args: &[String]) -> Command {
        let mut cmd = crate::netns::system("iptables");
        cmd.args(["-w", "5", "-t", "nat"]).args(args);
        if let Some(ns) = self.netns {
            crate::netns::enter_before_exec(&mut cmd, ns);
        }
        cmd
    }

    fn run(&self, args: &[String]) -> anyhow::Result<String> {
        let out = self.command(args).output().with_context(|| {
            "cannot run iptables; install it (Debian: apt-get install iptables)".to_string()
        })?;
        if !out.status.success() {
            bail!(
                "iptables -t nat {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs the capture: removes any earlier Skein chains first, so running it twice
    /// leaves one copy. On a failure, removes what it added and says which rule failed.
    pub fn install(&self, capture: &Capture) -> anyhow::Result<()> {
        self.uninstall()?;
        for chain in [OUTPUT_CHAIN, INBOUND_CHAIN] {
            self.run(&["-N".into(), chain.into()])?;
        }
        for rule in capture.plan() {
            if let Err(e) = self.run(&rule) {
                let _ = self.uninstall();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes the jumps into Skein's chains and the chains themselves; other rules are
    /// untouched. Nothing to remove is not an error.
    pub fn uninstall(&self) -> anyhow::Result<()> {
        for (parent, chain) in [("OUTPUT", OUTPUT_CHAIN), ("PREROUTING", INBOUND_CHAIN)] {
            let jump = vec!["-D".to_string(), parent.into(), "-j".into(), chain.into()];
            // A jump added twice by hand is removed twice; stop when none is left.
            for _ in 0..16 {
                if self.run(&jump).is_err() {
                    break;
                }
            }
            if self.exists(chain)? {
                self.run(&["-F".into(), chain.into()])?;
                self.run(&["-X".into(), chain.into()])?;
            }
        }
        Ok(())
    }

    fn exists(&self, chain: &str) -> anyhow::Result<bool> {
        let out = self.command(&["-S".into(), chain.into()]).output()?;
        Ok(out.status.success())
    }

    /// The planned rules that are not in force, as `iptables -S` would print them.
    pub fn missing(&self, capture: &Capture) -> anyhow::Result<Vec<String>> {
        let mut listed = String::new();
        for chain in ["OUTPUT", "PREROUTING", OUTPUT_CHAIN, INBOUND_CHAIN] {
            if let Ok(text) = self.run(&["-S".into(), chain.into()]) {
                listed.push_str(&text);
            }
        }
        let in_force: Vec<Vec<&str>> = listed
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        Ok(capture
            .plan()
            .into_iter()
            .filter(|rule| !in_force.iter().any(|r| same_rule(rule, r)))
            .map(|rule| rule.join(" "))
            .collect())
    }
}

/// What differs between the plan and the rules in force, beyond rules missing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Planned rules not in force, as `iptables -S` would print them.
    pub missing: Vec<String>,
    /// Rules in force in an order that lets traffic past the capture: a rule ahead of the
    /// jump into Skein's chain in `OUTPUT` or `PREROUTING`, or Skein's own rules out of the
    /// planned order (a `REDIRECT` before the proxy's exemption, say).
    pub misordered: Vec<String>,
    /// Rules in Skein's chains that the plan does not have (exclusions given to
    /// `skein run` or `--intercept`, or someone's addition).
    pub unplanned: Vec<String>,
}

impl Iptables<'_> {
    /// Compares the rules in force with `capture`'s plan, order included. Fails when
    /// iptables cannot list them.
    pub fn audit(&self, capture: &Capture) -> anyhow::Result<Audit> {
        let plan = capture.plan();
        let mut audit = Audit {
            missing: self.missing(capture)?,
            ..Audit::default()
        };
        for (parent, chain) in [("OUTPUT", OUTPUT_CHAIN), ("PREROUTING", INBOUND_CHAIN)] {
            let listed = self.run(&["-S".into(), parent.into()])?;
            let rules: Vec<&str> = listed.lines().filter(|l| l.starts_with("-A ")).collect();
            let jump = format!("-A {parent} -j {chain}");
            if let Some(at) = rules.iter().position(|r| *r == jump) {
                for r in &rules[..at] {
                    audit
                        .misordered
                        .push(format!("{r} (ahead of the jump into {chain})"));
                }
            }
        }
        for chain in [OUTPUT_CHAIN, INBOUND_CHAIN] {
            let Ok(listed) = self.run(&["-S".into(), chain.into()]) else {
                continue; // the chain is missing: its rules are in `missing`
            };
            let planned: Vec<&Vec<String>> = plan.iter().filter(|r| r[1] == chain).collect();
            let mut next = 0; // the planned rule expected next
            for line in listed.lines().filter(|l| l.starts_with("-A ")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match planned.iter().position(|p| same_rule(p, &words)) {
                    Some(i) if i >= next => next = i + 1,
                    Some(_) => audit
                        .misordered
                        .push(format!("{line} (out of the planned order)")),
                    None => audit.unplanned.push(line.to_string()),
                }
            }
        }
        Ok(audit)
    }
}

/// Whether a planned rule matches a line of `iptables -S`, which spells some parts its own
/// way (`-d 127.0.0.0/8` stays, `-p udp` gains `-m udp`, `/32` appears on hosts).
fn same_rule(planned: &[String], listed: &[&str]) -> bool {
    let normal = |words: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        let words: Vec<&str> = words.collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < words.len() {
            // `-m tcp`/`-m udp` are implied by `-p`.
            if words[i] == "-m" && matches!(words.get(i + 1), Some(&"tcp") | Some(&"udp")) {
                i += 2;
                continue;
            }
            out.push(words[i].to_string());
            i += 1;
        }
        out
    };
    normal(&mut planned.iter().map(String::as_str)) == normal(&mut listed.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> Capture {
        Capture {
            proxy_gid: 1337,
            proxy_uid: None,
            outbound_port: 4140,
            inbound_port: 4143,
            admin_port: 4191,
            dns_port: Some(15053),
            exclude_outbound_ports: vec![22],
            exclude_outbound_cidrs: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)],
            exclude_inbound_ports: vec![9100],
        }
    }

    #[test]
    fn the_plan_exempts_the_proxy_first_and_captures_tcp_last() {
        let plan: Vec<String> = capture().plan().iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            plan,
            [
                "-A SKEIN_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A SKEIN_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053",
                "-A SKEIN_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A SKEIN_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A SKEIN_OUTPUT -d 10.0.0.0/8 -j RETURN",
                "-A SKEIN_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A SKEIN_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
                "-A SKEIN_INBOUND -p tcp --dport 4143 -j RETURN",
                "-A SKEIN_INBOUND -p tcp --dport 4191 -j RETURN",
                "-A SKEIN_INBOUND -p tcp --dport 9100 -j RETURN",
                "-A SKEIN_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-A OUTPUT -j SKEIN_OUTPUT",
                "-A PREROUTING -j SKEIN_INBOUND",
            ]
        );
    }

    #[test]
    fn with_a_proxy_uid_both_ids_must_match() {
        let mut c = capture();
        c.proxy_uid = Some(65534);
        assert_eq!(
            c.plan()[0].join(" "),
            "-A SKEIN_OUTPUT -m owner --uid-owner 65534 --gid-owner 1337 -j RETURN"
        );
    }

    #[test]
    fn without_dns_port_53_is_not_redirected() {
        let mut c = capture();
        c.dns_port = None;
        assert!(c.plan().iter().all(|r| !r.contains(&"53".to_string())));
    }

    #[test]
    fn iptables_listing_matches_the_plan() {
        let planned: Vec<String> = "-A SKEIN_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053"
            .split(' ')
            .map(String::from)
            .collect();
        let listed = "-A SKEIN_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053";
        assert!(same_rule(&planned, &listed.split(' ').collect::<Vec<_>>()));
        let other = "-A SKEIN_OUTPUT -p udp -m udp --dport 54 -j REDIRECT --to-ports 15053";
        assert!(!same_rule(&planned, &other.split(' ').collect::<Vec<_>>()));
    }

    #[test]
    fn cidrs_parse_and_lose_their_host_bits() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(
            parse_cidr("192.0.2.7"),
            Ok((Ipv4Addr::new(192, 0, 2, 7), 32))
        );
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((Ipv4Addr::UNSPECIFIED, 0)));
        for bad in ["10.0.0.0/33", "fd00::/8", "ten/8", "10.0.0.0/x"] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains("write e.g. 10.0.0.0/8"), "{e}");
        }
    }

    #[test]
    fn a_config_without_a_transparent_listener_cannot_be_captured() {
        let text =
            "workload: {name: a-1, service: a}\ninbound: {listen: '0.0.0.0:4143', ports: []}\n";
        let config = ProxyConfig::from_yaml(text, "test").unwrap();
        let e = Capture::for_config(&config, 1337).unwrap_err().to_string();
        assert!(e.contains("outbound.listen is not set"), "{e}");
        let text = format!("{text}outbound: {{listen: '127.0.0.1:4140'}}\ndns: {{}}\n");
        let config = ProxyConfig::from_yaml(&text, "test").unwrap();
        let c = Capture::for_config(&config, 7).unwrap();
        assert_eq!(
            (c.outbound_port, c.inbound_port, c.admin_port, c.dns_port),
            (4140, 4143, 4191, Some(15053))
        );
    }
}
