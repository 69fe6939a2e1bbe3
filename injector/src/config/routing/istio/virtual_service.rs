//! VirtualServices: the object as kept once read (hosts resolved, `http` rules translated as far
//! as they can be without knowing the client and the port), and istiod's choice of the one that
//! gives a client its routes for a host ([`http_table`]). Reading one `http` rule is [`http`]'s
//! job, each of its blocks read by the module named after it.

mod fault;
mod headers;
mod http;
mod l4;
mod matches;
mod redirect;
mod retry;
mod rule;

use std::{collections::BTreeSet, net::IpAddr};

use remora_api::proto::config as proto;

use super::{
    checks::{check_gateway_names, check_wildcard_domain, export_to, Problems},
    hosts::{hosts_overlap, more_specific, resolve_host, wildcard_covers},
    sidecar::sidecar_problems,
    spec::VirtualServiceSpec,
    Client, Meta, MESH,
};
use http::http_rule;
use l4::{l4_rule, L4Rule};
// The tests compare what an unset `retryOn` becomes with Istio's defaults.
#[cfg(test)]
pub(super) use retry::DEFAULT_RETRY_ON;
use rule::{is_catch_all, Rule};

/// A VirtualService as kept: checked, its hosts resolved, and each `http` rule translated as
/// far as it can be without knowing the client and the port.
#[derive(Debug, Clone)]
pub(crate) struct VirtualService {
    meta: Meta,
    hosts: Vec<String>,
    /// `gateways` is empty or names `mesh`: the object applies to sidecars.
    mesh: bool,
    export_to: Visibility,
    rules: Vec<Rule>,
    /// `tls` rules, then `tcp` rules, each in order.
    l4: Vec<L4Rule>,
}

impl VirtualService {
    /// The hosts it names, short names resolved in its namespace (wildcards as written).
    pub(crate) fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.meta.namespace
    }

    /// The label keys its rules' `sourceLabels` look at.
    pub(crate) fn label_keys(&self) -> impl Iterator<Item = &str> {
        let http = self.rules.iter().flat_map(|rule| rule.matches.iter());
        let l4 = self.l4.iter().flat_map(|rule| rule.conditions());
        http.chain(l4)
            .flat_map(|m| m.source_labels.keys().map(String::as_str))
    }

    pub(crate) fn name(&self) -> &str {
        &self.meta.name
    }

    /// Where a client in `namespace` finds it among Istio's three lists, read in this order:
    /// private to the client's namespace (0), exported to it by name (1), public (2); `None`
    /// when it is not exported there.
    fn rank(&self, namespace: &str) -> Option<u8> {
        match &self.export_to {
            Visibility::Public => Some(2),
            Visibility::Namespaces(names) if names.contains(namespace) => {
                Some(u8::from(self.meta.namespace != namespace))
            }
            Visibility::Namespaces(_) => None,
        }
    }

    /// Istio's `BuildHTTPRoutesForVirtualService` for a sidecar: each rule in order, matches
    /// that exclude this port or client left out, a rule left out when all its matches are,
    /// nothing after a rule that takes every request. `None` when nothing is left, and then
    /// the VirtualService does not apply at all.
    fn routes(&self, port: u16, client: &Client) -> Option<Vec<proto::HttpRoute>> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let (kept, catch_all) = if rule.matches.is_empty() {
                (Vec::new(), true)
            } else {
                let mut kept = Vec::new();
                let mut catch_all = false;
                for candidate in rule.matches.iter().filter(|m| m.applies(port, client)) {
                    kept.push(candidate.http.clone());
                    if is_catch_all(&candidate.http) {
                        catch_all = true;
                        break;
                    }
                }
                if kept.is_empty() {
                    continue;
                }
                (kept, catch_all)
            };
            out.extend(rule.routes(kept, port));
            if catch_all {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The `tls` rules (server names first) and `tcp` rules for a client calling `port`;
    /// `None` when none is for it.
    fn tcp_routes(&self, port: u16, client: &Client) -> Option<Vec<proto::TcpRoute>> {
        let out: Vec<proto::TcpRoute> = self
            .l4
            .iter()
            .filter_map(|rule| rule.route(port, client))
            .collect();
        (!out.is_empty()).then_some(out)
    }
}

/// `exportTo`, `.` replaced by the object's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Visibility {
    Public,
    Namespaces(BTreeSet<String>),
}

/// The routes for HTTP requests from `client` to host `hostname` (a Service's FQDN) on `port`,
/// or `None` when no VirtualService applies (the port's own endpoints then take every request).
///
/// Of the VirtualServices a sidecar sees (bound to `mesh`, exported to its namespace), read in
/// Istio's order (private to the namespace, exported to it, public; the oldest first within
/// each), the first that names the host exactly and has routes for this client and port
/// applies; when none names it exactly, the one with the most specific wildcard host does
/// (the first of those with that very host), if it has routes. Every other VirtualService is
/// ignored for the host, as Envoy would drop its duplicate virtual host.
///
/// `ports_of` is not consulted: see `default_port`.
pub(crate) fn http_table(
    services: &[&VirtualService],
    hostname: &str,
    port: u16,
    client: &Client,
    _ports_of: &dyn Fn(&str) -> Option<Vec<u16>>,
) -> Option<Vec<proto::HttpRoute>> {
    applicable(services, hostname, client, |vs| vs.routes(port, client))
}

/// The `tcp`/`tls` routes for connections from `client` to host `hostname` on `port`, from the
/// VirtualService [`http_table`] would choose, or `None` (the port's own endpoints).
pub(crate) fn tcp_table(
    services: &[&VirtualService],
    hostname: &str,
    port: u16,
    client: &Client,
) -> Option<Vec<proto::TcpRoute>> {
    applicable(services, hostname, client, |vs| vs.tcp_routes(port, client))
}

/// What the VirtualService Istio chooses for `client` and `hostname` yields (`routes`).
fn applicable<T>(
    services: &[&VirtualService],
    hostname: &str,
    client: &Client,
    routes: impl Fn(&VirtualService) -> Option<T>,
) -> Option<T> {
    let hostname = hostname.to_ascii_lowercase();
    let mut visible: Vec<(u8, &VirtualService)> = services
        .iter()
        .filter(|vs| vs.mesh)
        .filter_map(|vs| Some((vs.rank(client.namespace)?, *vs)))
        .collect();
    visible.sort_by(|(rank_a, a), (rank_b, b)| {
        rank_a.cmp(rank_b).then_with(|| a.meta.precedence(&b.meta))
    });
    let exact: Vec<&VirtualService> = visible
        .iter()
        .map(|(_, vs)| *vs)
        .filter(|vs| vs.hosts.contains(&hostname))
        .collect();
    if !exact.is_empty() {
        return exact.iter().find_map(|vs| routes(vs));
    }
    let wildcard = visible
        .iter()
        .flat_map(|(_, vs)| &vs.hosts)
        .filter(|host| wildcard_covers(host, &hostname))
        .fold(None, |best: Option<&String>, host| match best {
            Some(best) if !more_specific(host, best) => Some(best),
            _ => Some(host),
        })?;
    routes(
        visible
            .iter()
            .map(|(_, vs)| *vs)
            .find(|vs| vs.hosts.contains(wildcard))?,
    )
}

/// Checks a VirtualService and keeps it with its hosts resolved and its rules translated.
pub(super) fn read(meta: Meta, spec: VirtualServiceSpec) -> Result<VirtualService, String> {
    let mut p = Problems::default();
    let hosts = spec.hosts.unwrap_or_default();
    let gateways = spec.gateways.unwrap_or_default();
    if hosts.is_empty() {
        p.add(
            "spec.hosts",
            "required (delegate VirtualServices, which name no host, are not supported yet)",
        );
    }
    check_gateway_names(&gateways, "spec.gateways", &mut p);
    let mesh = gateways.is_empty() || gateways.iter().any(|g| g == MESH);
    let mut hosts_valid = true;
    for (i, host) in hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Err(e) = check_wildcard_domain(host) {
            if host.parse::<IpAddr>().is_err() {
                p.add(&path, e);
                hosts_valid = false;
            }
        } else if mesh && host == "*" {
            p.add(
                &path,
                "\"*\" is not allowed for a VirtualService bound to the mesh",
            );
            hosts_valid = false;
        }
    }
    if hosts_valid {
        for (i, a) in hosts.iter().enumerate() {
            for b in hosts.iter().skip(i + 1) {
                if hosts_overlap(a, b) {
                    p.add("spec.hosts", format!("{a:?} and {b:?} overlap"));
                }
            }
        }
    }
    let http = spec.http.unwrap_or_default();
    let tls = spec.tls.unwrap_or_default();
    let tcp = spec.tcp.unwrap_or_default();
    if http.is_empty() && tls.is_empty() && tcp.is_empty() {
        p.add("spec", "one of http, tcp or tls is required");
    }
    let mut l4: Vec<L4Rule> = Vec::with_capacity(tls.len() + tcp.len());
    for (i, rule) in tls.into_iter().enumerate() {
        l4.push(l4_rule(i, true, rule, &meta, &mut p));
    }
    for (i, rule) in tcp.into_iter().enumerate() {
        l4.push(l4_rule(i, false, rule, &meta, &mut p));
    }
    let exported = export_to(
        &spec.export_to.unwrap_or_default(),
        &meta.namespace,
        false,
        "spec.exportTo",
        &mut p,
    );
    let export_to = if exported.is_empty() || exported.contains("*") {
        Visibility::Public
    } else {
        Visibility::Namespaces(
            exported
                .into_iter()
                .map(|e| if e == "." { meta.namespace.clone() } else { e })
                .collect(),
        )
    };
    let rules: Vec<Rule> = http
        .into_iter()
        .enumerate()
        .map(|(i, rule)| http_rule(i, rule, &meta, &mut p))
        .collect();
    let hosts = hosts
        .iter()
        .map(|host| resolve_host(host, &meta.namespace))
        .collect();
    if p.0.is_empty() {
        check_routes_with_sidecar(&rules, &mut p);
    }
    p.finish(VirtualService {
        meta,
        hosts,
        mesh,
        export_to,
        rules,
        l4,
    })
}

/// Compiles the rules with the sidecar's route compiler (`remora_api`), so that what the
/// control plane accepts every sidecar can apply: a regex Istio's RE2 takes but the sidecar's
/// engine does not would otherwise make each client refuse its whole snapshot.
fn check_routes_with_sidecar(rules: &[Rule], p: &mut Problems) {
    let mut rule_of = Vec::new();
    let mut routes = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let matches = rule.matches.iter().map(|m| m.http.clone()).collect();
        for route in rule.routes(matches, CHECK_PORT) {
            rule_of.push(index);
            routes.push(route);
        }
    }
    let port = proto::ServicePort {
        port: u32::from(CHECK_PORT),
        http_routes: routes,
        ..Default::default()
    };
    for (path, problem) in sidecar_problems(vec![port]) {
        // `httpRoutes[2].matches[0].path`: the rule the route came from, and the field.
        let found = path
            .strip_prefix("httpRoutes[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(n, field)| {
                let rule = rule_of.get(n.parse::<usize>().ok()?)?;
                Some((rule, field.trim_start_matches('.')))
            });
        match found {
            Some((rule, field)) => p.add(
                &format!("spec.http[{rule}]"),
                format!("the sidecar refuses it: {field}: {problem}"),
            ),
            None => p.add("spec", format!("the sidecar refuses it: {path}: {problem}")),
        }
    }
}

/// Any port will do: what is checked does not depend on it.
const CHECK_PORT: u16 = 80;
