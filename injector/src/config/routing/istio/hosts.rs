//! Host names as Istio compares them: short names resolved to a Service's FQDN, wildcards that
//! overlap or cover a name, the more specific of two wildcards, and the namespace a Service's
//! hostname names. Which VirtualService and which DestinationRule apply to a host both follow
//! these rules.

use std::{cmp::Ordering, net::IpAddr};

use crate::config::well_known::{service_hostname, CLUSTER_DOMAIN};

/// Istio's `ResolveShortnameToFQDN`: a name without a dot is a Service of `namespace`; `*`, IP
/// addresses and names with a dot stay as written. Lowercased, as DNS names compare.
pub(super) fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() || host.is_empty() {
        host
    } else {
        service_hostname(namespace, &host)
    }
}

/// Istio's `host.Name.Matches`: whether two hosts, either possibly wildcards, overlap.
pub(super) fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => {
            if a.len() < b.len() {
                b.ends_with(a)
            } else {
                a.ends_with(b)
            }
        }
        (Some(suffix), None) => b.ends_with(suffix),
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

/// Whether wildcard host `wildcard` covers the plain `hostname`.
pub(super) fn wildcard_covers(wildcard: &str, hostname: &str) -> bool {
    wildcard
        .strip_prefix('*')
        .is_some_and(|suffix| hostname.ends_with(suffix))
}

/// Istio's `host.MoreSpecific` among wildcards: the longer, then the first alphabetically.
pub(super) fn more_specific(a: &str, b: &str) -> bool {
    match a.len().cmp(&b.len()) {
        Ordering::Equal => a < b,
        longer => longer == Ordering::Greater,
    }
}

/// The namespace of a Service hostname `name.namespace.svc.<domain>`.
pub(super) fn service_namespace(hostname: &str) -> Option<&str> {
    let name = hostname
        .strip_suffix(CLUSTER_DOMAIN)?
        .strip_suffix(".svc.")?;
    let (service, namespace) = name.rsplit_once('.')?;
    (!service.is_empty() && !namespace.is_empty()).then_some(namespace)
}
