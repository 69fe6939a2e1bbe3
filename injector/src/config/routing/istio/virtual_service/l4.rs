//! `tcp` and `tls` rules: connections that are not HTTP, taken by the port called, the client
//! (labels, namespace, gateways) and, for `tls`, the server names of the ClientHello, sent to
//! weighted destinations. Translated per client and port into the sidecar's `TcpRoute`s.

use remora_api::proto::config as proto;

use super::{http::destination, matches::client_conditions, rule::RuleMatch};
use crate::config::routing::istio::{
    checks::{check_wildcard_domain, ranged, Problems},
    spec::L4RouteSpec,
    Client, Meta,
};

/// A `tcp` or `tls` rule as kept.
#[derive(Debug, Clone)]
pub(super) struct L4Rule {
    index: u32,
    /// Each match with its server names (`tls`).
    matches: Vec<(RuleMatch, Vec<String>)>,
    /// Ports 0 where the destination names none.
    backends: Vec<proto::RouteBackend>,
    namespace: String,
    name: String,
}

impl L4Rule {
    /// Its matches' client conditions.
    pub(super) fn conditions(&self) -> impl Iterator<Item = &RuleMatch> {
        self.matches.iter().map(|(conditions, _)| conditions)
    }

    /// The route for a client calling `port`, or `None` when none of the rule's matches is for
    /// it (a rule without matches takes every connection).
    pub(super) fn route(&self, port: u16, client: &Client) -> Option<proto::TcpRoute> {
        let kept: Vec<&(RuleMatch, Vec<String>)> = self
            .matches
            .iter()
            .filter(|(conditions, _)| conditions.applies(port, client))
            .collect();
        if kept.is_empty() && !self.matches.is_empty() {
            return None;
        }
        let mut sni_hosts: Vec<String> = kept.iter().flat_map(|(_, sni)| sni.clone()).collect();
        sni_hosts.dedup();
        Some(proto::TcpRoute {
            kind: "VirtualService".to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            rule: self.index,
            sni_hosts,
            backends: self
                .backends
                .iter()
                .map(|backend| proto::RouteBackend {
                    port: if backend.port == 0 {
                        u32::from(port)
                    } else {
                        backend.port
                    },
                    ..backend.clone()
                })
                .collect(),
        })
    }
}

/// Reads rule `index` of `spec.tcp` (or `spec.tls`, with `tls`).
pub(super) fn l4_rule(
    index: usize,
    tls: bool,
    spec: L4RouteSpec,
    meta: &Meta,
    p: &mut Problems,
) -> L4Rule {
    let path = format!("spec.{}[{index}]", if tls { "tls" } else { "tcp" });
    let mut matches = Vec::new();
    let specs = spec.matches.unwrap_or_default();
    if tls && specs.is_empty() {
        p.add(&format!("{path}.match"), "required (each with sniHosts)");
    }
    for (j, m) in specs.into_iter().enumerate() {
        let at = format!("{path}.match[{j}]");
        if m.destination_subnets
            .as_ref()
            .is_some_and(|s| !s.is_empty())
        {
            p.unsupported(&format!("{at}.destinationSubnets"));
        }
        if m.source_subnet.is_some() {
            p.unsupported(&format!("{at}.sourceSubnet"));
        }
        let sni = m.sni_hosts.clone().unwrap_or_default();
        if tls && sni.is_empty() {
            p.add(&format!("{at}.sniHosts"), "required");
        }
        if !tls && !sni.is_empty() {
            p.add(
                &format!("{at}.sniHosts"),
                "only `tls` rules match server names",
            );
        }
        for (k, host) in sni.iter().enumerate() {
            if let Err(e) = check_wildcard_domain(host) {
                p.add(&format!("{at}.sniHosts[{k}]"), e);
            }
        }
        let conditions = client_conditions(
            m.port,
            m.source_labels,
            m.source_namespace,
            m.gateways,
            &at,
            p,
        );
        matches.push((
            conditions,
            sni.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ));
    }
    let destinations = spec.route.unwrap_or_default();
    if destinations.is_empty() {
        p.add(&format!("{path}.route"), "required");
    }
    let several = destinations.len() > 1;
    let mut total = 0u64;
    let mut backends = Vec::new();
    for (j, route) in destinations.into_iter().enumerate() {
        let at = format!("{path}.route[{j}]");
        let weight = ranged(
            route.weight.unwrap_or(0),
            0..=i64::from(i32::MAX),
            &format!("{at}.weight"),
            p,
        )
        .unwrap_or(0);
        total += u64::from(weight);
        let Some(destination) =
            destination(route.destination, &format!("{at}.destination"), meta, p)
        else {
            continue;
        };
        if several && weight == 0 {
            continue;
        }
        backends.push(proto::RouteBackend {
            host: destination.host,
            port: destination.port,
            subset: destination.subset,
            weight: if several { weight } else { 100 },
            ..Default::default()
        });
    }
    if several && total == 0 {
        p.add(&format!("{path}.route"), "the weights add up to 0");
    }
    L4Rule {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        matches,
        backends,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    }
}
