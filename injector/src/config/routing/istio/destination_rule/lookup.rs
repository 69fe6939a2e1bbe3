//! Which DestinationRule a client gets for a host, as istiod decides: rules consolidated per
//! namespace and host, looked for in the client's namespace, then among those the host's
//! namespace exports, then among the root namespace's, at the most specific host each time, and
//! narrowed by workload selectors.

use std::collections::{BTreeMap, BTreeSet};

use remora_api::proto::config as proto;

use super::{policy::Policy, DestinationRule, SubsetRule};
use crate::config::routing::istio::{
    hosts::{more_specific, service_namespace, wildcard_covers},
    Client, Meta,
};

/// DestinationRules merged as Istio merges those of one namespace and host.
#[derive(Debug, Clone)]
pub(super) struct Consolidated<'r> {
    /// The first rule: its namespace and selector say whom the merge applies to.
    pub(super) first: &'r DestinationRule,
    pub(super) export_to: &'r BTreeSet<String>,
    pub(super) policy: Option<(&'r Policy, &'r Meta)>,
    pub(super) subsets: Vec<(&'r SubsetRule, &'r Meta)>,
}

impl Consolidated<'_> {
    pub(super) fn for_port(&self, port: u16) -> (Option<proto::TrafficPolicy>, Vec<proto::Subset>) {
        let base = self
            .policy
            .map(|(policy, meta)| (policy.for_port(port).0.clone(), meta));
        let traffic = base.as_ref().and_then(|(parts, meta)| parts.to_proto(meta));
        let subsets = self
            .subsets
            .iter()
            .map(|(subset, meta)| {
                // Istio's `MergeSubsetTrafficPolicy`, over the port's policy.
                let merged = match (&base, &subset.policy) {
                    (base, None) => base.clone(),
                    (None, Some(own)) => Some((own.for_port(port).0.clone(), *meta)),
                    (Some((parts, _)), Some(own)) => {
                        let (own, whole) = own.for_port(port);
                        Some((parts.merged(own, whole), *meta))
                    }
                };
                proto::Subset {
                    name: subset.name.clone(),
                    labels: subset
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    traffic_policy: merged.and_then(|(parts, meta)| parts.to_proto(meta)),
                }
            })
            .collect();
        (traffic, subsets)
    }
}

pub(super) fn lookup<'r>(
    sorted: &[&'r DestinationRule],
    hostname: &str,
    client: &Client,
) -> Option<Consolidated<'r>> {
    let root = client.root_namespace;
    let own = if client.namespace != root {
        most_specific(
            consolidate(
                sorted
                    .iter()
                    .filter(|r| r.meta.namespace == client.namespace && r.namespace_local()),
            ),
            hostname,
        )
    } else {
        // In the root namespace, its rules exported elsewhere too are looked at last.
        most_specific(
            consolidate(
                sorted
                    .iter()
                    .filter(|r| r.meta.namespace == root && r.private_only()),
            ),
            hostname,
        )
    };
    let found = own
        .or_else(|| {
            service_namespace(hostname)
                .and_then(|namespace| exported(sorted, namespace, hostname, client.namespace))
        })
        .or_else(|| exported(sorted, root, hostname, client.namespace))?;
    // Istio's `SidecarScope.DestinationRule`.
    let mut catch_all = None;
    for rule in found {
        match &rule.first.selector {
            None => catch_all = Some(rule),
            Some(selector)
                if rule.first.meta.namespace == client.namespace
                    && selector
                        .iter()
                        .all(|(k, v)| client.labels.get(k) == Some(v)) =>
            {
                return Some(rule)
            }
            Some(_) => {}
        }
    }
    catch_all
}

/// What `namespace` exports of `hostname`'s most specific rules to a client in `client`.
fn exported<'r>(
    sorted: &[&'r DestinationRule],
    namespace: &str,
    hostname: &str,
    client: &str,
) -> Option<Vec<Consolidated<'r>>> {
    let found = most_specific(
        consolidate(
            sorted
                .iter()
                .filter(|r| r.meta.namespace == namespace && !r.private_only()),
        ),
        hostname,
    )?;
    let visible: Vec<_> = found
        .into_iter()
        .filter(|c| {
            c.export_to.is_empty() || c.export_to.contains("*") || c.export_to.contains(client)
        })
        .collect();
    (!visible.is_empty()).then_some(visible)
}

/// Istio's `mergeDestinationRule`, over rules in precedence order, per host as written.
fn consolidate<'r, 'a>(
    rules: impl Iterator<Item = &'a &'r DestinationRule>,
) -> BTreeMap<&'r str, Vec<Consolidated<'r>>>
where
    'r: 'a,
{
    let mut by_host: BTreeMap<&'r str, Vec<Consolidated<'r>>> = BTreeMap::new();
    for &rule in rules {
        let list = by_host.entry(rule.host.as_str()).or_default();
        let mut separately = true;
        for merged in list.iter_mut() {
            if rule.export_to == *merged.export_to {
                separately = false;
            } else if merged.export_to.is_empty() || !rule.export_to.is_superset(merged.export_to) {
                separately = true;
                continue;
            } else {
                // Exported more widely: merged into this one and kept on its own as well.
                separately = true;
            }
            match (&rule.selector, &merged.first.selector) {
                (Some(a), Some(b)) if a != b => {
                    separately = true;
                    continue;
                }
                (None, None) | (Some(_), Some(_)) => separately = false,
                _ => {}
            }
            for subset in &rule.subsets {
                if !merged.subsets.iter().any(|(s, _)| s.name == subset.name) {
                    merged.subsets.push((subset, &rule.meta));
                }
            }
            if merged.policy.is_none() {
                merged.policy = rule.policy.as_ref().map(|policy| (policy, &rule.meta));
            }
        }
        if separately {
            list.push(Consolidated {
                first: rule,
                export_to: &rule.export_to,
                policy: rule.policy.as_ref().map(|policy| (policy, &rule.meta)),
                subsets: rule.subsets.iter().map(|s| (s, &rule.meta)).collect(),
            });
        }
    }
    by_host
}

/// Istio's `MostSpecificHostMatch`: the rules for `hostname` itself, else for the most specific
/// wildcard that covers it.
fn most_specific<'r>(
    mut by_host: BTreeMap<&'r str, Vec<Consolidated<'r>>>,
    hostname: &str,
) -> Option<Vec<Consolidated<'r>>> {
    if let Some(found) = by_host.remove(hostname) {
        return Some(found);
    }
    let best = by_host
        .keys()
        .copied()
        .filter(|host| wildcard_covers(host, hostname))
        .fold(None, |best: Option<&str>, host| match best {
            Some(best) if !more_specific(host, best) => Some(best),
            _ => Some(host),
        })?;
    by_host.remove(best)
}
