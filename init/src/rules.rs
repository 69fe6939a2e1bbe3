//! The rule plan: a pure function from a validated [`Config`] to the ordered
//! nat-table rules that Istio's `istio-iptables` would install.
//!
//! Nothing here performs I/O, so the exact rule set can be unit-tested
//! without root and compared line by line with Istio's. The IP family is a
//! parameter: it decides the loopback and inbound-passthrough addresses
//! (`127.0.0.1/32` and `127.0.0.6/32`, or `::1/128` and `::6/128`), which
//! `-i`/`-x` CIDRs apply, and which commands (`iptables-*` or `ip6tables-*`)
//! apply the plan. With `--dual-stack` the binary computes and applies one
//! plan per family.

use std::fmt;

pub use crate::family::Family;
use crate::flags::{Config, InboundCapture, InterceptionMode, Interface, OutboundCapture};

/// The only table `remora-init` touches.
pub const TABLE: &str = "nat";

/// The chains the plan appends to. The built-in ones are only ever given the
/// entry jumps (and `-c` RETURNs); the `ISTIO_*` ones are owned entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    Prerouting,
    IstioInbound,
    IstioInRedirect,
    Output,
    IstioOutput,
    IstioRedirect,
}

impl Chain {
    /// Order in which chains are written in the restore input.
    pub const ALL: [Chain; 6] = [
        Chain::Prerouting,
        Chain::IstioInbound,
        Chain::IstioInRedirect,
        Chain::Output,
        Chain::IstioOutput,
        Chain::IstioRedirect,
    ];

    /// The chains `remora-init` creates and owns.
    pub const MANAGED: [Chain; 4] = [
        Chain::IstioInbound,
        Chain::IstioInRedirect,
        Chain::IstioOutput,
        Chain::IstioRedirect,
    ];

    /// The built-in chains that get the entry jumps.
    pub const BUILTIN: [Chain; 2] = [Chain::Prerouting, Chain::Output];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::IstioInbound => "ISTIO_INBOUND",
            Chain::IstioInRedirect => "ISTIO_IN_REDIRECT",
            Chain::Output => "OUTPUT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::IstioRedirect => "ISTIO_REDIRECT",
        }
    }

    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }

    /// The managed chain with this name, if any.
    pub fn managed(name: &str) -> Option<Chain> {
        Chain::MANAGED.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One appended rule: its chain and its match/target arguments, written the
/// way `istio-iptables` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub args: Vec<String>,
}

impl Rule {
    fn new<I, S>(chain: Chain, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            chain,
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The arguments after the chain name, space separated.
    pub fn spec(&self) -> String {
        self.args.join(" ")
    }
}

impl fmt::Display for Rule {
    /// The `iptables-restore` line appending this rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec())
    }
}

/// The ordered rules for one family, grouped by chain in [`Chain::ALL`]
/// order; within a chain, in the order Istio appends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    family: Family,
    rules: Vec<Rule>,
}

impl Plan {
    pub fn family(&self) -> Family {
        self.family
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules of one chain, in order.
    pub fn chain(&self, chain: Chain) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// The complete `iptables-restore` input for a table that has none of
    /// our rules yet: `*nat`, the managed chain declarations, the rules,
    /// `COMMIT`.
    pub fn restore_text(&self) -> String {
        self.restore_text_with(&[])
    }

    /// Like [`Plan::restore_text`], with extra command lines (e.g. `-D` of
    /// stale copies) placed after the chain declarations and before the rules.
    pub fn restore_text_with(&self, extra: &[String]) -> String {
        let mut out = format!("*{TABLE}\n");
        for chain in Chain::MANAGED {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for line in extra {
            out.push_str(line);
            out.push('\n');
        }
        for rule in &self.rules {
            out.push_str(&rule.to_string());
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// The `-c` short-circuits: traffic on these interfaces skips capture in
/// both directions. Shared with cleanup, which removes exactly these.
pub fn exclude_interface_rules(interfaces: &[Interface]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for iface in interfaces {
        rules.push(Rule::new(
            Chain::Prerouting,
            ["-i", iface.as_str(), "-j", "RETURN"],
        ));
    }
    for iface in interfaces {
        rules.push(Rule::new(
            Chain::Output,
            ["-o", iface.as_str(), "-j", "RETURN"],
        ));
    }
    rules
}

/// Computes the rules `istio-iptables` would install for `config` in the nat
/// table of `family`.
pub fn plan(config: &Config, family: Family) -> Plan {
    // REDIRECT is the only mode; adding one (e.g. TPROXY) must be handled here.
    let InterceptionMode::Redirect = config.mode;
    let tunnel = config.inbound_tunnel_port.to_string();
    let mut rules = exclude_interface_rules(&config.exclude_interfaces);
    let mut add = |chain: Chain, args: &[&str]| rules.push(Rule::new(chain, args.iter().copied()));

    // Inbound: the tunnel port always bypasses capture.
    add(
        Chain::IstioInbound,
        &["-p", "tcp", "--dport", &tunnel, "-j", "RETURN"],
    );
    add(
        Chain::IstioRedirect,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &config.proxy_port.to_string(),
        ],
    );
    add(
        Chain::IstioInRedirect,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &config.inbound_capture_port.to_string(),
        ],
    );
    match &config.inbound {
        InboundCapture::Disabled => {}
        InboundCapture::All => {
            add(Chain::Prerouting, &["-p", "tcp", "-j", "ISTIO_INBOUND"]);
            for port in &config.inbound_exclude_ports {
                add(
                    Chain::IstioInbound,
                    &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
                );
            }
            add(
                Chain::IstioInbound,
                &["-p", "tcp", "-j", "ISTIO_IN_REDIRECT"],
            );
        }
        InboundCapture::Ports(ports) => {
            add(Chain::Prerouting, &["-p", "tcp", "-j", "ISTIO_INBOUND"]);
            for port in ports {
                add(
                    Chain::IstioInbound,
                    &[
                        "-p",
                        "tcp",
                        "--dport",
                        &port.to_string(),
                        "-j",
                        "ISTIO_IN_REDIRECT",
                    ],
                );
            }
        }
    }

    // Outbound.
    add(Chain::Output, &["-j", "ISTIO_OUTPUT"]);
    for port in &config.outbound_exclude_ports {
        let port = port.to_string();
        add(
            Chain::IstioOutput,
            &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
        );
        add(
            Chain::IstioOutput,
            &["-p", "udp", "--dport", &port, "-j", "RETURN"],
        );
    }
    add(
        Chain::IstioOutput,
        &[
            "-o",
            "lo",
            "-s",
            family.inbound_passthrough_source(),
            "-j",
            "RETURN",
        ],
    );

    // If the user explicitly captures loopback destinations with -i, app-to-app
    // traffic over lo must not be short-circuited (Istio checks both families).
    let includes_loopback = match &config.outbound {
        OutboundCapture::All => false,
        OutboundCapture::Cidrs(cidrs) => cidrs.iter().any(|c| c.addr().is_loopback()),
    };
    let owners = config
        .proxy_uids
        .iter()
        .map(|u| ("--uid-owner", u.to_string()))
        .chain(
            config
                .proxy_gids
                .iter()
                .map(|g| ("--gid-owner", g.to_string())),
        );
    for (owner_flag, id) in owners {
        // Proxy calling a local app through a service VIP: send it back in.
        add(
            Chain::IstioOutput,
            &[
                "-o",
                "lo",
                "!",
                "-d",
                family.loopback(),
                "-p",
                "tcp",
                "!",
                "--dport",
                &tunnel,
                "-m",
                "owner",
                owner_flag,
                &id,
                "-j",
                "ISTIO_IN_REDIRECT",
            ],
        );
        // App talking to itself over lo by pod IP: leave it alone.
        if !includes_loopback {
            add(
                Chain::IstioOutput,
                &[
                    "-o", "lo", "-m", "owner", "!", owner_flag, &id, "-j", "RETURN",
                ],
            );
        }
        // Everything else the proxy sends goes out as is (no loops).
        add(
            Chain::IstioOutput,
            &["-m", "owner", owner_flag, &id, "-j", "RETURN"],
        );
    }
    add(
        Chain::IstioOutput,
        &["-d", family.loopback(), "-j", "RETURN"],
    );
    for cidr in config
        .outbound_exclude_cidrs
        .iter()
        .filter(|c| family.contains(c))
    {
        add(
            Chain::IstioOutput,
            &["-d", &cidr.to_string(), "-j", "RETURN"],
        );
    }
    for port in &config.outbound_include_ports {
        add(
            Chain::IstioOutput,
            &[
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "ISTIO_REDIRECT",
            ],
        );
    }
    match &config.outbound {
        OutboundCapture::All => add(Chain::IstioOutput, &["-j", "ISTIO_REDIRECT"]),
        OutboundCapture::Cidrs(cidrs) => {
            for cidr in cidrs.iter().filter(|c| family.contains(c)) {
                add(
                    Chain::IstioOutput,
                    &["-d", &cidr.to_string(), "-j", "ISTIO_REDIRECT"],
                );
            }
        }
    }

    // Group by chain, keeping append order within each chain.
    rules.sort_by_key(|r| r.chain);
    Plan { family, rules }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::flags::{Cli, INJECTOR_DEFAULT_ARGS as DEFAULT_ARGS};

    const FIXTURE: &str = include_str!("../tests/fixtures/istio-default.rules");
    const FIXTURE_V6: &str = include_str!("../tests/fixtures/istio-default-v6.rules");

    fn config(args: &[&str]) -> Config {
        let argv = std::iter::once("remora-init").chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.capture
            .validate()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// The default invocation with some flags replaced or added.
    fn with(overrides: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = DEFAULT_ARGS.iter().map(|s| s.to_string()).collect();
        for pair in overrides.chunks(2) {
            if let Some(i) = args.iter().position(|a| a == pair[0]) {
                args[i + 1] = pair[1].to_string();
            } else {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        args
    }

    fn lines(args: &[String], family: Family) -> Vec<String> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        plan(&config(&refs), family)
            .rules()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn chain_lines(args: &[String], chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        lines(args, Family::V4)
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    fn fixture_rules() -> Vec<&'static str> {
        FIXTURE.lines().filter(|l| l.starts_with("-A ")).collect()
    }

    #[test]
    fn default_invocation_matches_fixture_exactly() {
        let p = plan(&config(DEFAULT_ARGS), Family::V4);
        assert_eq!(p.restore_text(), FIXTURE);
    }

    #[test]
    fn default_invocation_matches_v6_fixture_exactly() {
        let p = plan(&config(DEFAULT_ARGS), Family::V6);
        assert_eq!(p.family(), Family::V6);
        assert_eq!(p.restore_text(), FIXTURE_V6);
    }

    #[test]
    fn v6_fixture_is_the_v4_fixture_with_v6_addresses() {
        let translated = FIXTURE
            .replace("127.0.0.6/32", "::6/128")
            .replace("127.0.0.1/32", "::1/128");
        assert_eq!(FIXTURE_V6, translated);
        assert!(!FIXTURE_V6.contains("127.0.0."));
    }

    #[test]
    fn a_family_without_include_cidrs_gets_no_outbound_capture() {
        // One flag set for both families: an -i list with only IPv6 CIDRs
        // leaves the IPv4 plan without a catch-all, as in Istio.
        let args = with(&["-i", "fd00::/8", "-x", "10.1.0.0/16"]);
        let tail = |family: Family| -> Vec<String> {
            let out = lines(&args, family)
                .into_iter()
                .filter(|l| l.starts_with("-A ISTIO_OUTPUT "))
                .collect::<Vec<_>>();
            out[out.len() - 2..].to_vec()
        };
        assert_eq!(
            tail(Family::V4),
            vec![
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN",
            ]
        );
        assert_eq!(
            tail(Family::V6),
            vec![
                "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
                "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn families_display_as_ip_versions() {
        assert_eq!(Family::V4.to_string(), "IPv4");
        assert_eq!(Family::V6.to_string(), "IPv6");
    }

    #[test]
    fn restore_text_declares_managed_chains_only() {
        let p = plan(&config(DEFAULT_ARGS), Family::V4);
        let text = p.restore_text();
        let decls: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(
            decls,
            vec![
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
            ]
        );
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
    }

    #[test]
    fn ipv6_plan_swaps_addresses_only() {
        let v4 = lines(&with(&[]), Family::V4);
        let v6 = lines(&with(&[]), Family::V6);
        let translated: Vec<String> = v4
            .iter()
            .map(|l| {
                l.replace("127.0.0.6/32", "::6/128")
                    .replace("127.0.0.1/32", "::1/128")
            })
            .collect();
        assert_eq!(v6, translated);
        assert_eq!(Family::V6.restore_command(), "ip6tables-restore");
        assert_eq!(Family::V6.save_command(), "ip6tables-save");
    }

    #[test]
    fn cidrs_are_split_by_family() {
        let args = with(&["-i", "10.0.0.0/8,fd00::/8", "-x", "10.1.0.0/16,fd01::/16"]);
        let v4 = lines(&args, Family::V4).join("\n");
        let v6 = lines(&args, Family::V6).join("\n");
        assert!(v4.contains("-d 10.0.0.0/8 -j ISTIO_REDIRECT") && !v4.contains("fd00"));
        assert!(v4.contains("-d 10.1.0.0/16 -j RETURN") && !v4.contains("fd01"));
        assert!(v6.contains("-d fd00::/8 -j ISTIO_REDIRECT") && !v6.contains("10.0.0.0"));
        assert!(v6.contains("-d fd01::/16 -j RETURN") && !v6.contains("10.1.0.0"));
    }

    /// One row per flag: the flags changed from the default invocation, the
    /// chain looked at, and its complete expected rules.
    #[test]
    fn each_flag_changes_its_chain_as_istio_does() {
        const OUT_TAIL: &[&str] = &[
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        ];
        let out = |head: &[&str], tail: &[&str]| -> Vec<String> {
            head.iter()
                .chain(OUT_TAIL)
                .chain(tail)
                .map(|s| s.to_string())
                .collect()
        };
        let v = |rules: &[&str]| -> Vec<String> { rules.iter().map(|s| s.to_string()).collect() };

        let cases: Vec<(&str, Vec<&str>, &str, Vec<String>)> = vec![
            (
                "-p sets the outbound redirect port",
                vec!["-p", "16001"],
                "ISTIO_REDIRECT",
                v(&["-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"]),
            ),
            (
                "-z sets the inbound redirect port",
                vec!["-z", "16006"],
                "ISTIO_IN_REDIRECT",
                v(&["-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"]),
            ),
            (
                "-e sets the tunnel port in ISTIO_INBOUND",
                vec!["-e", "15009", "-d", ""],
                "ISTIO_INBOUND",
                v(&[
                    "-A ISTIO_INBOUND -p tcp --dport 15009 -j RETURN",
                    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                ]),
            ),
            (
                "-x excludes CIDRs right after the loopback RETURN",
                vec!["-x", "10.96.0.0/12,192.168.0.0/16"],
                "ISTIO_OUTPUT",
                out(
                    &[],
                    &[
                        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
                        "-A ISTIO_OUTPUT -d 192.168.0.0/16 -j RETURN",
                        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                    ],
                ),
            ),
            (
                "-i CIDRs replace the catch-all",
                vec!["-i", "10.0.0.0/8,172.16.0.0/12"],
                "ISTIO_OUTPUT",
                out(
                    &[],
                    &[
                        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                        "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT",
                    ],
                ),
            ),
            (
                "-i empty means no outbound catch-all",
                vec!["-i", ""],
                "ISTIO_OUTPUT",
                out(&[], &[]),
            ),
            (
                "-o returns tcp and udp first",
                vec!["-o", "22,3306"],
                "ISTIO_OUTPUT",
                out(
                    &[
                        "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN",
                        "-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN",
                        "-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN",
                        "-A ISTIO_OUTPUT -p udp --dport 3306 -j RETURN",
                    ],
                    &["-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
                ),
            ),
            (
                "-q redirects ports after the exclusions, before the catch-all",
                vec!["-q", "8080,9090", "-x", "10.0.0.0/8"],
                "ISTIO_OUTPUT",
                out(
                    &[],
                    &[
                        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN",
                        "-A ISTIO_OUTPUT -p tcp --dport 8080 -j ISTIO_REDIRECT",
                        "-A ISTIO_OUTPUT -p tcp --dport 9090 -j ISTIO_REDIRECT",
                        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                    ],
                ),
            ),
            (
                "-b ports replace the catch-all and drop the -d RETURNs",
                vec!["-b", "8080,9090"],
                "ISTIO_INBOUND",
                v(&[
                    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
                    "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT",
                ]),
            ),
            (
                "-b ports keep the PREROUTING jump",
                vec!["-b", "8080"],
                "PREROUTING",
                v(&["-A PREROUTING -p tcp -j ISTIO_INBOUND"]),
            ),
            (
                "-b empty: no PREROUTING jump",
                vec!["-b", ""],
                "PREROUTING",
                vec![],
            ),
            (
                "-b empty: ISTIO_INBOUND keeps only the tunnel RETURN",
                vec!["-b", ""],
                "ISTIO_INBOUND",
                v(&["-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN"]),
            ),
            (
                "-d with -b * returns each port before the catch-all",
                vec!["-d", "22"],
                "ISTIO_INBOUND",
                v(&[
                    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
                    "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                    "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                ]),
            ),
            (
                "-c returns the interface in PREROUTING first",
                vec!["-c", "eth1,net2"],
                "PREROUTING",
                v(&[
                    "-A PREROUTING -i eth1 -j RETURN",
                    "-A PREROUTING -i net2 -j RETURN",
                    "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                ]),
            ),
            (
                "-c returns the interface in OUTPUT first",
                vec!["-c", "eth1,net2"],
                "OUTPUT",
                v(&[
                    "-A OUTPUT -o eth1 -j RETURN",
                    "-A OUTPUT -o net2 -j RETURN",
                    "-A OUTPUT -j ISTIO_OUTPUT",
                ]),
            ),
            (
                "-u/-g lists: uids first, then gids, three rules each",
                vec!["-u", "1337,0", "-g", "1338"],
                "ISTIO_OUTPUT",
                v(&[
                    "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
                    "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
                    "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                    "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 0 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 0 -j RETURN",
                    "-A ISTIO_OUTPUT -m owner --uid-owner 0 -j RETURN",
                    "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1338 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1338 -j RETURN",
                    "-A ISTIO_OUTPUT -m owner --gid-owner 1338 -j RETURN",
                    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                    "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                ]),
            ),
            (
                "-i with a loopback CIDR drops the lo owner RETURNs",
                vec!["-i", "127.0.0.1/32,10.0.0.0/8"],
                "ISTIO_OUTPUT",
                v(&[
                    "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
                    "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                    "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                    "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j ISTIO_REDIRECT",
                    "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                ]),
            ),
        ];

        for (what, overrides, chain, expected) in cases {
            let got = chain_lines(&with(&overrides), chain);
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn flags_only_touch_their_own_chains() {
        // Changing one flag leaves every other chain exactly as in the fixture.
        let cases: &[(&[&str], &[&str])] = &[
            (&["-p", "16001"], &["ISTIO_REDIRECT"]),
            (&["-z", "16006"], &["ISTIO_IN_REDIRECT"]),
            (&["-x", "10.0.0.0/8"], &["ISTIO_OUTPUT"]),
            (&["-o", "22"], &["ISTIO_OUTPUT"]),
            (&["-q", "22"], &["ISTIO_OUTPUT"]),
            (&["-d", "22"], &["ISTIO_INBOUND"]),
            (&["-c", "eth1"], &["PREROUTING", "OUTPUT"]),
        ];
        for (overrides, changed) in cases {
            let got = lines(&with(overrides), Family::V4);
            for chain in Chain::ALL {
                if changed.contains(&chain.name()) {
                    continue;
                }
                let prefix = format!("-A {} ", chain.name());
                let want: Vec<&str> = fixture_rules()
                    .into_iter()
                    .filter(|l| l.starts_with(&prefix))
                    .collect();
                let have: Vec<&str> = got
                    .iter()
                    .map(String::as_str)
                    .filter(|l| l.starts_with(&prefix))
                    .collect();
                assert_eq!(have, want, "{overrides:?} changed {chain}");
            }
        }
    }

    #[test]
    fn exclude_interface_rules_are_prerouting_then_output() {
        let cfg = config(&["-c", "a,b"]);
        let got: Vec<String> = exclude_interface_rules(&cfg.exclude_interfaces)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            vec![
                "-A PREROUTING -i a -j RETURN",
                "-A PREROUTING -i b -j RETURN",
                "-A OUTPUT -o a -j RETURN",
                "-A OUTPUT -o b -j RETURN",
            ]
        );
    }
}
