//! The command-line surface of `remora-init` and its validation.
//!
//! The flags mirror Istio's `istio-iptables` (same short letters, same long
//! names, same meaning) so that an injector written for Istio can drive
//! `remora-init` unchanged. Arguments arrive as raw strings and are turned
//! into a typed [`Config`] in one pass that collects *every* problem, each
//! naming its flag, so that bad input is reported completely and before any
//! iptables command runs. [`Cli::validate`] does this for a whole invocation
//! and yields an [`Invocation`].
//!
//! IPv6 is opt-in, through Istio's `--dual-stack` flag (or its
//! `ISTIO_DUAL_STACK` environment variable): with it, the same rules are also
//! installed (or cleaned up) with `ip6tables`. Istio additionally turns IPv6 on
//! by itself when the pod's first non-loopback address is IPv6, and with
//! `--dual-stack` only when the pod has an IPv6 address at all; `remora-init`
//! does not inspect the pod's addresses, so the flag is the only switch and
//! means "program ip6tables too, and put `::6/128` on `lo`" — the injector
//! must pass it for IPv6-only and dual-stack pods alike.

use std::fmt;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::family::Family;

/// The arguments Istio's injector passes to `istio-iptables` by default, which Remora's injector
/// passes to `remora-init`: capture everything, except the sidecar's own status and metrics ports.
pub const INJECTOR_DEFAULT_ARGS: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// The environment variable Istio reads for `--dual-stack`.
pub const DUAL_STACK_ENV: &str = "ISTIO_DUAL_STACK";

/// How `--dual-stack` / `$ISTIO_DUAL_STACK` is named in error messages.
const DUAL_STACK_FLAG: &str = "--dual-stack ($ISTIO_DUAL_STACK)";

/// `remora-init`: install (or remove) the iptables nat rules that redirect a
/// pod's traffic to its sidecar proxy, the way Istio's `istio-iptables` does.
#[derive(Debug, Parser)]
#[command(name = "remora-init", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Print the iptables-restore input that would be applied (and, with
    /// --dual-stack, the `ip` command as a `#` comment); change nothing.
    #[arg(short = 'n', long = "dry-run", global = true)]
    pub dry_run: bool,

    /// Also program IPv6: apply (or clean up) the same rules with ip6tables,
    /// and add (or remove) the address ::6/128 on lo, for dual-stack and
    /// IPv6-only pods. `--dual-stack` alone means true;
    /// `--dual-stack=false` overrides the environment variable.
    #[arg(
        long = "dual-stack",
        env = DUAL_STACK_ENV,
        global = true,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub dual_stack: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; without one, `remora-init` installs the rules.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Remove what an install added: the jumps from PREROUTING/OUTPUT and the
    /// ISTIO_* chains. Nothing else in the nat table is touched.
    Cleanup(CleanupArgs),
}

/// Arguments of `remora-init cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Interfaces that were passed to `-c` at install time; their
    /// `-i IFACE -j RETURN` / `-o IFACE -j RETURN` rules are removed too.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        default_value = "",
        value_name = "IFACES"
    )]
    pub exclude_interfaces: String,
}

/// The capture flags, exactly as given on the command line.
///
/// Defaults follow `istio-iptables`: with no list flags at all, neither
/// inbound (`-b ""`) nor outbound (`-i ""`) traffic is captured.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Port the outbound traffic is redirected to (the proxy's outbound listener).
    #[arg(
        short = 'p',
        long = "envoy-port",
        default_value = "15001",
        value_name = "PORT"
    )]
    pub envoy_port: String,

    /// Port the inbound traffic is redirected to (the proxy's inbound listener).
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        default_value = "15006",
        value_name = "PORT"
    )]
    pub inbound_capture_port: String,

    /// Inbound tunnel (HBONE) port, never redirected.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        default_value = "15008",
        value_name = "PORT"
    )]
    pub inbound_tunnel_port: String,

    /// Comma-separated uids whose traffic is not redirected (the proxy's).
    #[arg(
        short = 'u',
        long = "proxy-uid",
        default_value = "1337",
        value_name = "UIDS"
    )]
    pub proxy_uid: String,

    /// Comma-separated gids whose traffic is not redirected (default: same as -u).
    #[arg(short = 'g', long = "proxy-gid", value_name = "GIDS")]
    pub proxy_gid: Option<String>,

    /// Inbound interception mode; only REDIRECT is supported.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT",
        value_name = "MODE"
    )]
    pub interception_mode: String,

    /// Comma-separated inbound ports to redirect; "*" = all, empty = none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        default_value = "",
        value_name = "PORTS"
    )]
    pub inbound_ports: String,

    /// Comma-separated inbound ports never redirected (only used with -b "*").
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = "",
        value_name = "PORTS"
    )]
    pub inbound_exclude_ports: String,

    /// Comma-separated CIDRs whose outbound traffic is redirected; "*" = all, empty = none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        default_value = "",
        value_name = "CIDRS"
    )]
    pub outbound_cidrs: String,

    /// Comma-separated CIDRs whose outbound traffic is never redirected.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        default_value = "",
        value_name = "CIDRS"
    )]
    pub outbound_exclude_cidrs: String,

    /// Comma-separated outbound TCP ports always redirected.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        default_value = "",
        value_name = "PORTS"
    )]
    pub outbound_ports: String,

    /// Comma-separated outbound ports (TCP and UDP) never redirected.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = "",
        value_name = "PORTS"
    )]
    pub outbound_exclude_ports: String,

    /// Comma-separated interfaces whose traffic is never captured, either way.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        default_value = "",
        value_name = "IFACES"
    )]
    pub exclude_interfaces: String,
}

/// A TCP/UDP port number, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u16);

impl Port {
    /// The port, or `None` for 0.
    pub fn new(port: u16) -> Option<Self> {
        (port != 0).then_some(Self(port))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Port {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Problem::InvalidPort(s.to_owned()));
        }
        // All digits: anything that does not fit, or is 0, is out of range.
        s.parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| Problem::PortOutOfRange(s.to_owned()))
    }
}

/// A numeric uid or gid, as matched by `-m owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(u32);

impl OwnerId {
    pub fn new(id: u32) -> Self {
        Self(id)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OwnerId {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Problem::InvalidOwnerId(s.to_owned()));
        }
        s.parse::<u32>()
            .map(OwnerId)
            .map_err(|_| Problem::InvalidOwnerId(s.to_owned()))
    }
}

/// A network interface name as iptables accepts it for `-i` / `-o`
/// (at most 15 bytes; a trailing `+` is iptables' prefix wildcard).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interface(String);

impl Interface {
    /// Longest interface name Linux accepts (IFNAMSIZ - 1).
    const MAX_LEN: usize = 15;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Interface {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.@+".contains(c);
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && !s.starts_with('-')
            && s != "."
            && s != ".."
            && s.chars().all(allowed);
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Problem::InvalidInterface(s.to_owned()))
        }
    }
}

/// How inbound connections are handed to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat-table `REDIRECT` to the inbound capture port (Istio's default).
    Redirect,
}

/// Which inbound TCP connections are captured (`-b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCapture {
    /// `-b ""`: no inbound capture; PREROUTING is left alone.
    Disabled,
    /// `-b "*"`: every port except the `-d` exclusions.
    All,
    /// `-b P1,P2`: only these ports.
    Ports(Vec<Port>),
}

/// Which outbound destinations are captured (`-i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCapture {
    /// `-i "*"`: every destination not excluded earlier.
    All,
    /// `-i C1,C2`: only these CIDRs; empty means no outbound catch-all.
    Cidrs(Vec<IpNet>),
}

/// A validated capture configuration: everything [`crate::rules::plan`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub proxy_port: Port,
    pub inbound_capture_port: Port,
    pub inbound_tunnel_port: Port,
    pub proxy_uids: Vec<OwnerId>,
    pub proxy_gids: Vec<OwnerId>,
    pub mode: InterceptionMode,
    pub inbound: InboundCapture,
    pub inbound_exclude_ports: Vec<Port>,
    pub outbound: OutboundCapture,
    pub outbound_exclude_cidrs: Vec<IpNet>,
    pub outbound_include_ports: Vec<Port>,
    pub outbound_exclude_ports: Vec<Port>,
    pub exclude_interfaces: Vec<Interface>,
}

/// A validated `cleanup` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupConfig {
    pub exclude_interfaces: Vec<Interface>,
}

/// What a validated invocation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No subcommand: install the rules.
    Install(Config),
    /// `cleanup`: remove them.
    Cleanup(CleanupConfig),
}

/// A fully validated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub action: Action,
    /// `--dual-stack`: program ip6tables as well as iptables, and `::6/128`
    /// on `lo`.
    pub dual_stack: bool,
    /// `--dry-run`: print the restore inputs, change nothing.
    pub dry_run: bool,
}

impl Invocation {
    /// The IP families to program, in the order they are applied: IPv4
    /// always, then IPv6 with `--dual-stack`.
    pub fn families(&self) -> &'static [Family] {
        if self.dual_stack {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }
}

/// What is wrong with one value of one flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("port {0} out of range (1-65535)")]
    PortOutOfRange(String),
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
    #[error("invalid id {0:?} (expected a numeric uid/gid)")]
    InvalidOwnerId(String),
    #[error("at least one id is required")]
    NoOwnerIds,
    #[error("invalid interface name {0:?}")]
    InvalidInterface(String),
    #[error("unsupported interception mode {0:?} (only REDIRECT is supported)")]
    UnsupportedMode(String),
    #[error("\"*\" cannot be combined with other values")]
    WildcardMixed,
    #[error("\"*\" is not allowed here")]
    WildcardNotAllowed,
    #[error("invalid boolean {0:?} (expected true or false)")]
    InvalidBool(String),
}

/// One rejected flag value, e.g. `-b: port 70000 out of range (1-65535)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct FieldError {
    /// The flag: its short form where it has one (e.g. `-b`), otherwise its
    /// long form and environment variable.
    pub flag: &'static str,
    #[source]
    pub problem: Problem,
}

/// Every rejected flag value of one invocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid arguments: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects field errors while a config is being built.
#[derive(Default)]
struct Collector {
    errors: Vec<FieldError>,
}

impl Collector {
    fn push(&mut self, flag: &'static str, problem: Problem) {
        self.errors.push(FieldError { flag, problem });
    }

    /// Parses one scalar value; on error records it and returns `None`.
    fn one<T: FromStr<Err = Problem>>(&mut self, flag: &'static str, raw: &str) -> Option<T> {
        match raw.trim().parse() {
            Ok(v) => Some(v),
            Err(problem) => {
                self.push(flag, problem);
                None
            }
        }
    }

    /// Parses a comma list, recording every bad item.
    fn list<T: FromStr<Err = Problem>>(&mut self, flag: &'static str, raw: &str) -> Vec<T> {
        items(raw).filter_map(|item| self.one(flag, item)).collect()
    }

    fn cidrs(&mut self, flag: &'static str, raw: &str) -> Vec<IpNet> {
        items(raw)
            .filter_map(|item| match parse_cidr(item) {
                Ok(net) => Some(net),
                Err(problem) => {
                    self.push(flag, problem);
                    None
                }
            })
            .collect()
    }

    /// `Some(true)` for a lone `*`, `Some(false)` for a list without `*`,
    /// `None` (error recorded) for `*` mixed with other items.
    fn wildcard(&mut self, flag: &'static str, raw: &str) -> Option<bool> {
        let has_star = items(raw).any(|i| i == "*");
        if !has_star {
            return Some(false);
        }
        if items(raw).count() == 1 {
            Some(true)
        } else {
            self.push(flag, Problem::WildcardMixed);
            None
        }
    }

    /// Takes over the errors of a validation done elsewhere.
    fn absorb<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.extend(e.errors);
                None
            }
        }
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ => Err(ConfigError {
                errors: self.errors,
            }),
        }
    }
}

/// The non-empty, trimmed items of a comma-separated list.
fn items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_cidr(item: &str) -> Result<IpNet, Problem> {
    if item == "*" {
        return Err(Problem::WildcardNotAllowed);
    }
    item.parse::<IpNet>()
        .map_err(|_| Problem::InvalidCidr(item.to_owned()))
}

/// A boolean as Istio's flags accept it (Go's `strconv.ParseBool`, any case);
/// empty counts as false, like an unset variable.
fn parse_bool(raw: &str) -> Result<bool, Problem> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "f" | "false" => Ok(false),
        "1" | "t" | "true" => Ok(true),
        _ => Err(Problem::InvalidBool(raw.to_owned())),
    }
}

fn parse_mode(raw: &str) -> Result<InterceptionMode, Problem> {
    match raw.trim() {
        "REDIRECT" => Ok(InterceptionMode::Redirect),
        other => Err(Problem::UnsupportedMode(other.to_owned())),
    }
}

impl Cli {
    /// Validates the whole command line — the flags of the action it asks
    /// for and `--dual-stack` — reporting all bad values together.
    pub fn validate(&self) -> Result<Invocation, ConfigError> {
        let mut c = Collector::default();
        let action = match &self.command {
            None => c.absorb(self.capture.validate()).map(Action::Install),
            Some(Command::Cleanup(args)) => c.absorb(args.validate()).map(Action::Cleanup),
        };
        let dual_stack = match self.dual_stack.as_deref().map(parse_bool) {
            None => Some(false),
            Some(Ok(on)) => Some(on),
            Some(Err(problem)) => {
                c.push(DUAL_STACK_FLAG, problem);
                None
            }
        };
        let invocation = (|| {
            Some(Invocation {
                action: action?,
                dual_stack: dual_stack?,
                dry_run: self.dry_run,
            })
        })();
        c.finish(invocation)
    }
}

impl CaptureArgs {
    /// Validates every flag, reporting all bad ones together.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut c = Collector::default();

        let proxy_port = c.one("-p", &self.envoy_port);
        let inbound_capture_port = c.one("-z", &self.inbound_capture_port);
        let inbound_tunnel_port = c.one("-e", &self.inbound_tunnel_port);

        let proxy_uids: Vec<OwnerId> = c.list("-u", &self.proxy_uid);
        if proxy_uids.is_empty() && items(&self.proxy_uid).next().is_none() {
            c.push("-u", Problem::NoOwnerIds);
        }
        let proxy_gids = match &self.proxy_gid {
            None => proxy_uids.clone(),
            Some(raw) => {
                let gids: Vec<OwnerId> = c.list("-g", raw);
                if gids.is_empty() && items(raw).next().is_none() {
                    c.push("-g", Problem::NoOwnerIds);
                }
                gids
            }
        };

        let mode = match parse_mode(&self.interception_mode) {
            Ok(m) => Some(m),
            Err(problem) => {
                c.push("-m", problem);
                None
            }
        };

        let inbound = match c.wildcard("-b", &self.inbound_ports) {
            Some(true) => Some(InboundCapture::All),
            Some(false) => {
                let ports: Vec<Port> = c.list("-b", &self.inbound_ports);
                Some(if ports.is_empty() {
                    InboundCapture::Disabled
                } else {
                    InboundCapture::Ports(ports)
                })
            }
            None => None,
        };
        let inbound_exclude_ports = c.list("-d", &self.inbound_exclude_ports);

        let outbound = match c.wildcard("-i", &self.outbound_cidrs) {
            Some(true) => Some(OutboundCapture::All),
            Some(false) => Some(OutboundCapture::Cidrs(c.cidrs("-i", &self.outbound_cidrs))),
            None => None,
        };
        let outbound_exclude_cidrs = c.cidrs("-x", &self.outbound_exclude_cidrs);
        let outbound_include_ports = c.list("-q", &self.outbound_ports);
        let outbound_exclude_ports = c.list("-o", &self.outbound_exclude_ports);
        let exclude_interfaces = c.list("-c", &self.exclude_interfaces);

        let config = (|| {
            Some(Config {
                proxy_port: proxy_port?,
                inbound_capture_port: inbound_capture_port?,
                inbound_tunnel_port: inbound_tunnel_port?,
                proxy_uids,
                proxy_gids,
                mode: mode?,
                inbound: inbound?,
                inbound_exclude_ports,
                outbound: outbound?,
                outbound_exclude_cidrs,
                outbound_include_ports,
                outbound_exclude_ports,
                exclude_interfaces,
            })
        })();
        c.finish(config)
    }
}

impl CleanupArgs {
    /// Validates the cleanup flags.
    pub fn validate(&self) -> Result<CleanupConfig, ConfigError> {
        let mut c = Collector::default();
        let exclude_interfaces = c.list("-c", &self.exclude_interfaces);
        c.finish(Some(CleanupConfig { exclude_interfaces }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(args: &[&str]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("remora-init").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.capture.validate(),
            Err(e) => panic!("clap rejected {args:?}: {e}"),
        }
    }

    fn messages(args: &[&str]) -> Vec<String> {
        match validate(args) {
            Ok(cfg) => panic!("{args:?} was accepted: {cfg:?}"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn default_invocation_is_valid() {
        let cfg = validate(INJECTOR_DEFAULT_ARGS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.proxy_port.get(), 15001);
        assert_eq!(cfg.inbound_capture_port.get(), 15006);
        assert_eq!(cfg.inbound_tunnel_port.get(), 15008);
        assert_eq!(cfg.proxy_uids, vec![OwnerId::new(1337)]);
        assert_eq!(cfg.proxy_gids, vec![OwnerId::new(1337)]);
        assert_eq!(cfg.inbound, InboundCapture::All);
        assert_eq!(cfg.outbound, OutboundCapture::All);
        assert!(cfg.outbound_exclude_cidrs.is_empty());
        let excluded: Vec<u16> = cfg.inbound_exclude_ports.iter().map(|p| p.get()).collect();
        assert_eq!(excluded, vec![15090, 15021, 15020]);
    }

    #[test]
    fn istio_defaults_capture_nothing_by_list() {
        let cfg = validate(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.inbound, InboundCapture::Disabled);
        assert_eq!(cfg.outbound, OutboundCapture::Cidrs(vec![]));
        assert_eq!(cfg.mode, InterceptionMode::Redirect);
    }

    #[test]
    fn long_names_are_accepted() {
        let cfg = validate(&[
            "--envoy-port=1",
            "--inbound-capture-port=2",
            "--inbound-tunnel-port=3",
            "--proxy-uid=10,11",
            "--proxy-gid=12",
            "--istio-inbound-interception-mode=REDIRECT",
            "--istio-inbound-ports=80,81",
            "--istio-local-exclude-ports=82",
            "--istio-service-cidr=10.0.0.0/8",
            "--istio-service-exclude-cidr=10.1.0.0/16",
            "--istio-outbound-ports=83",
            "--istio-local-outbound-ports-exclude=84",
            "--istio-exclude-interfaces=eth1",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.proxy_port.get(), 1);
        assert_eq!(cfg.inbound_capture_port.get(), 2);
        assert_eq!(cfg.inbound_tunnel_port.get(), 3);
        assert_eq!(cfg.proxy_uids, vec![OwnerId::new(10), OwnerId::new(11)]);
        assert_eq!(cfg.proxy_gids, vec![OwnerId::new(12)]);
        assert!(matches!(cfg.inbound, InboundCapture::Ports(ref p) if p.len() == 2));
        assert_eq!(cfg.inbound_exclude_ports.len(), 1);
        assert!(matches!(cfg.outbound, OutboundCapture::Cidrs(ref c) if c.len() == 1));
        assert_eq!(cfg.outbound_exclude_cidrs.len(), 1);
        assert_eq!(cfg.outbound_include_ports.len(), 1);
        assert_eq!(cfg.outbound_exclude_ports.len(), 1);
        assert_eq!(cfg.exclude_interfaces[0].as_str(), "eth1");
    }

    #[test]
    fn list_items_are_trimmed_and_empty_items_skipped() {
        let cfg =
            validate(&["-b", " 80 , ,81,", "-x", "10.0.0.0/8 ,"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.inbound, InboundCapture::Ports(vec![Port(80), Port(81)]));
        assert_eq!(cfg.outbound_exclude_cidrs.len(), 1);
    }

    #[test]
    fn each_bad_value_names_its_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["-b", "70000"], "-b: port 70000 out of range"),
            (&["-b", "0"], "-b: port 0 out of range"),
            (&["-b", "http"], "-b: invalid port \"http\""),
            (
                &["-b", "80,*"],
                "-b: \"*\" cannot be combined with other values",
            ),
            (
                &["-d", "99999999999999"],
                "-d: port 99999999999999 out of range",
            ),
            (&["-d", "*"], "-d: invalid port \"*\""),
            (&["--envoy-port=-1"], "-p: invalid port \"-1\""),
            (&["-z", "65536"], "-z: port 65536 out of range"),
            (&["-e", ""], "-e: invalid port \"\""),
            (&["-q", "8080:8090"], "-q: invalid port \"8080:8090\""),
            (&["-o", "65536"], "-o: port 65536 out of range"),
            (&["-x", "10.0.0/8"], "-x: invalid CIDR \"10.0.0/8\""),
            (&["-x", "10.0.0.1"], "-x: invalid CIDR \"10.0.0.1\""),
            (&["-x", "*"], "-x: \"*\" is not allowed here"),
            (&["-i", "10.0.0.0/33"], "-i: invalid CIDR \"10.0.0.0/33\""),
            (
                &["-i", "*,10.0.0.0/8"],
                "-i: \"*\" cannot be combined with other values",
            ),
            (&["-u", "istio-proxy"], "-u: invalid id \"istio-proxy\""),
            (&["-u", ""], "-u: at least one id is required"),
            (&["-g", "4294967296"], "-g: invalid id \"4294967296\""),
            (&["-g", ""], "-g: at least one id is required"),
            (&["-m", "FOO"], "-m: unsupported interception mode \"FOO\""),
            (
                &["-m", "TPROXY"],
                "-m: unsupported interception mode \"TPROXY\"",
            ),
            (&["-c", "a/b"], "-c: invalid interface name \"a/b\""),
            (
                &["-c", "averyveryverylongname"],
                "-c: invalid interface name",
            ),
        ];
        for (args, expected) in cases {
            let msgs = messages(args);
            assert_eq!(msgs.len(), 1, "{args:?}: {msgs:?}");
            assert!(
                msgs[0].starts_with(expected),
                "{args:?}: got {:?}, want prefix {expected:?}",
                msgs[0]
            );
        }
    }

    #[test]
    fn all_errors_are_reported_together() {
        let err = match validate(&[
            "-b",
            "70000,80,abc",
            "-x",
            "10.0.0/8",
            "-m",
            "FOO",
            "-p",
            "0",
        ]) {
            Ok(cfg) => panic!("accepted: {cfg:?}"),
            Err(e) => e,
        };
        let flags: Vec<&str> = err.errors.iter().map(|e| e.flag).collect();
        assert_eq!(flags, vec!["-p", "-m", "-b", "-b", "-x"]);
        let text = err.to_string();
        assert!(text.starts_with("invalid arguments: "), "{text}");
        assert!(text.contains("-b: port 70000 out of range"), "{text}");
        assert!(text.contains("-x: invalid CIDR \"10.0.0/8\""), "{text}");
        assert!(
            text.contains("-m: unsupported interception mode \"FOO\""),
            "{text}"
        );
    }

    fn invocation(args: &[&str]) -> Result<Invocation, ConfigError> {
        let argv = std::iter::once("remora-init").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.validate(),
            Err(e) => panic!("clap rejected {args:?}: {e}"),
        }
    }

    #[test]
    fn dual_stack_forms() {
        // Explicit values win over $ISTIO_DUAL_STACK, so these hold whatever
        // the test environment says.
        let cases: &[(&[&str], bool)] = &[
            (&["--dual-stack"], true),
            (&["--dual-stack=true"], true),
            (&["--dual-stack=1"], true),
            (&["--dual-stack=T"], true),
            (&["--dual-stack=false"], false),
            (&["--dual-stack=0"], false),
            (&["--dual-stack=False"], false),
            (&["--dual-stack=", "-b", "*"], false),
            // A following word is never taken as the flag's value.
            (&["--dual-stack", "cleanup"], true),
            (&["cleanup", "--dual-stack"], true),
            (&["cleanup", "--dual-stack=false", "-c", "eth1"], false),
            (&["--dual-stack", "-i", "*", "--dry-run"], true),
        ];
        for (args, want) in cases {
            let inv = invocation(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(inv.dual_stack, *want, "{args:?}");
            let families: &[Family] = if *want {
                &[Family::V4, Family::V6]
            } else {
                &[Family::V4]
            };
            assert_eq!(inv.families(), families, "{args:?}");
        }
        let inv = invocation(&["--dual-stack", "cleanup", "-c", "eth1"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(inv.action, Action::Cleanup(ref c) if c.exclude_interfaces.len() == 1));
        let inv =
            invocation(&["--dual-stack", "-i", "*", "--dry-run"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(inv.dry_run);
        assert!(matches!(inv.action, Action::Install(ref c) if c.outbound == OutboundCapture::All));
    }

    #[test]
    fn dual_stack_is_off_unless_asked_for() {
        let inv = invocation(INJECTOR_DEFAULT_ARGS).unwrap_or_else(|e| panic!("{e}"));
        if std::env::var_os(DUAL_STACK_ENV).is_none() {
            assert!(!inv.dual_stack);
            assert_eq!(inv.families(), &[Family::V4]);
        }
    }

    #[test]
    fn bad_dual_stack_is_reported_with_the_other_errors() {
        let err = match invocation(&["-b", "70000", "--dual-stack=maybe", "-x", "10.0.0/8"]) {
            Ok(inv) => panic!("accepted: {inv:?}"),
            Err(e) => e,
        };
        let flags: Vec<&str> = err.errors.iter().map(|e| e.flag).collect();
        assert_eq!(flags, vec!["-b", "-x", "--dual-stack ($ISTIO_DUAL_STACK)"]);
        assert!(
            err.to_string().contains(
                "--dual-stack ($ISTIO_DUAL_STACK): invalid boolean \"maybe\" (expected true or false)"
            ),
            "{err}"
        );
        // Same for cleanup, whose own flags are checked too.
        let err = match invocation(&["cleanup", "-c", "a/b", "--dual-stack=yes please"]) {
            Ok(inv) => panic!("accepted: {inv:?}"),
            Err(e) => e,
        };
        let flags: Vec<&str> = err.errors.iter().map(|e| e.flag).collect();
        assert_eq!(flags, vec!["-c", "--dual-stack ($ISTIO_DUAL_STACK)"]);
    }

    #[test]
    fn parse_bool_accepts_what_istio_accepts() {
        for yes in ["1", "t", "T", "true", "TRUE", "True", " true "] {
            assert_eq!(parse_bool(yes), Ok(true), "{yes:?}");
        }
        for no in ["", "0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(no), Ok(false), "{no:?}");
        }
        for bad in ["yes", "on", "2", "maybe"] {
            assert_eq!(
                parse_bool(bad),
                Err(Problem::InvalidBool(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cleanup_takes_exclude_interfaces() {
        let cli = Cli::try_parse_from(["remora-init", "cleanup", "-c", "eth1,eth2", "--dry-run"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.dry_run);
        let Some(Command::Cleanup(args)) = cli.command else {
            panic!("no cleanup subcommand: {cli:?}");
        };
        let cfg = args.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.exclude_interfaces.len(), 2);

        let bad = CleanupArgs {
            exclude_interfaces: "bad iface".into(),
        };
        let err = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("-c: invalid interface name"), "{err}");
    }
}
