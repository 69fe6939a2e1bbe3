//! The IP family a rule plan is for: which iptables binaries apply it and which well-known
//! addresses (loopback, inbound passthrough source) it names. Its own module because both the
//! flags (which families an invocation programs) and the rules depend on it.

use std::fmt;

use ipnet::IpNet;

/// An IP family: which iptables binary and which well-known addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Source address the proxy binds for inbound passthrough connections;
    /// traffic from it on `lo` is never redirected again.
    pub fn inbound_passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    /// The loopback destination that applications use to talk to each other
    /// (and to Envoy-aware ports) without being redirected.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    pub fn save_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    pub fn restore_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// Whether a CIDR belongs to this family's rules.
    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}
