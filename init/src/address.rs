//! The IPv6 inbound-passthrough address: `::6/128` on `lo`.
//!
//! The sidecar hands inbound connections to the application from
//! `127.0.0.6` (IPv4) or `::6` (IPv6), and the `-o lo -s ::6/128 -j RETURN`
//! rule keeps those from being redirected again. `127.0.0.6` is usable as
//! is, because IPv4's loopback is `127.0.0.0/8`; IPv6's is only `::1/128`,
//! so with `--dual-stack` Istio's `istio-iptables` also adds `::6/128` to
//! `lo` (the equivalent of `ip -6 addr add ::6/128 dev lo`, an existing
//! address being fine), and so does `remora-init`. Cleanup removes it.
//!
//! This module is pure: the `ip` (iproute2) command lines, and reading
//! `ip -6 addr show dev lo` output. [`crate::apply`] runs them.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use crate::rules::Family;

/// The iproute2 program that changes and lists addresses.
pub const PROGRAM: &str = "ip";

/// The interface the address goes on.
pub const DEVICE: &str = "lo";

/// `::6/128`: the address, spelled as in the exemption rule's `-s`.
pub fn address() -> &'static str {
    Family::V6.inbound_passthrough_source()
}

/// `-6 addr add ::6/128 dev lo`.
pub fn add_args() -> [&'static str; 6] {
    ["-6", "addr", "add", address(), "dev", DEVICE]
}

/// `-6 addr del ::6/128 dev lo`.
pub fn del_args() -> [&'static str; 6] {
    ["-6", "addr", "del", address(), "dev", DEVICE]
}

/// `-6 addr show dev lo`.
pub fn show_args() -> [&'static str; 5] {
    ["-6", "addr", "show", "dev", DEVICE]
}

/// A command line as a shell would show it: `ip -6 addr add ::6/128 dev lo`.
pub fn command_line(args: &[&str]) -> String {
    std::iter::once(PROGRAM)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `ip -6 addr show dev lo` says about `::6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// `::6` is not on the interface.
    Absent,
    /// `::6/128`, the address we add, is there.
    Ours,
    /// `::6` is there with another prefix length: usable (and it keeps
    /// `::6/128` from being added), but not what we add, so not ours to
    /// remove.
    OtherPrefix(u8),
}

impl Listed {
    /// Whether `::6` can be bound, whoever added it.
    pub fn is_present(self) -> bool {
        self != Listed::Absent
    }
}

/// Reads `ip -6 addr show` output (multi-line or `-o` one-line form): the
/// word after each `inet6` is an address with its prefix length.
pub fn listed(show_output: &str) -> Listed {
    let six = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
    let mut found = Listed::Absent;
    let mut words = show_output.split_whitespace();
    while let Some(word) = words.next() {
        if word != "inet6" {
            continue;
        }
        let Some(net) = words.next().and_then(|w| w.parse::<Ipv6Net>().ok()) else {
            continue;
        };
        if net.addr() != six {
            continue;
        }
        if net.prefix_len() == 128 {
            return Listed::Ours;
        }
        found = Listed::OtherPrefix(net.prefix_len());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(command_line(&add_args()), "ip -6 addr add ::6/128 dev lo");
        assert_eq!(command_line(&del_args()), "ip -6 addr del ::6/128 dev lo");
        assert_eq!(command_line(&show_args()), "ip -6 addr show dev lo");
        assert_eq!(address(), "::6/128");
    }

    #[test]
    fn reads_the_listing() {
        let with = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 state UNKNOWN qlen 1000\n    \
                    inet6 ::6/128 scope global \n       valid_lft forever preferred_lft forever\n    \
                    inet6 ::1/128 scope host noprefixroute \n       valid_lft forever preferred_lft forever\n";
        assert_eq!(listed(with), Listed::Ours);
        let oneline = "1: lo    inet6 ::1/128 scope host \\       valid_lft forever\n\
                       1: lo    inet6 0:0::6/128 scope global \\       valid_lft forever\n";
        assert_eq!(listed(oneline), Listed::Ours);
        let without = "1: lo: <LOOPBACK> mtu 65536\n    inet6 ::1/128 scope host\n    \
                       inet6 ::60/128 scope global\n    inet6 fd00::6/128 scope global\n";
        assert_eq!(listed(without), Listed::Absent);
        assert_eq!(listed(""), Listed::Absent);
        let other = "1: lo: <LOOPBACK>\n    inet6 ::6/64 scope global\n";
        assert_eq!(listed(other), Listed::OtherPrefix(64));
        assert!(listed(other).is_present());
        assert!(!Listed::Absent.is_present());
    }
}
