//! Istio's traffic kinds (`networking.istio.io/v1`, `v1beta1` and `v1alpha3` VirtualService and
//! DestinationRule): read and checked as Istio's validation webhook checks them, then translated
//! for one client sidecar into the route model of `routing.proto`: the HTTP route table of a
//! Service port, and the DestinationRule policy and subsets of a host's port.
//!
//! The translation follows what istiod generates for sidecars, not only what the API reference
//! says, since that is what applications meet: which of several VirtualServices for a host a
//! client gets, that a destination naming no port goes to the port the client called, that a
//! fault or mirror without a percentage applies to no request or to every request, that
//! port-level settings replace a DestinationRule's policy wholesale, and how DestinationRules
//! of several namespaces stand in for each other.
//!
//! What the sidecar cannot do yet (CORS, delegation, direct responses, TCP and TLS routes,
//! consistent hashing, TLS origination, most connection settings...) is rejected naming the
//! field rather than ignored: a route table that silently leaves out part of what was asked
//! for sends traffic where nobody meant it to go. Istio's defaults are written out in full
//! (retry conditions, outlier thresholds), so the sidecar never has to guess what an unset
//! field meant.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    net::IpAddr,
    ops::RangeInclusive,
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use remora_api::proto::config::{self as proto, string_match::Kind};
use serde::{de, Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{
    well_known::{service_hostname, CLUSTER_DOMAIN},
    yaml,
};

/// The API versions the kinds are read in.
pub(crate) const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

const KINDS: [&str; 2] = ["VirtualService", "DestinationRule"];

/// The gateway name that stands for every sidecar.
const MESH: &str = "mesh";

/// Whether `api_version` `kind` is read here.
pub(crate) fn is_istio_kind(api_version: &str, kind: &str) -> bool {
    API_VERSIONS.contains(&api_version) && KINDS.contains(&kind)
}

/// A traffic object as kept, checked and with its host names resolved.
#[derive(Debug, Clone)]
pub(crate) enum IstioObject {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
}

/// Reads an object of `kind` whose `(namespace, name)` was already found; the error names the
/// field at fault (several problems are joined with `; `).
pub(crate) fn read(
    kind: &str,
    value: Value,
    namespace: &str,
    name: &str,
) -> Result<IstioObject, String> {
    let meta = |metadata: &ObjectMeta| Meta {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        created: metadata.creation_timestamp.as_ref().map(|t| t.0),
    };
    match kind {
        "VirtualService" => {
            let (metadata, spec) = parse::<VirtualServiceSpec>(value)?;
            virtual_service(meta(&metadata), spec).map(IstioObject::VirtualService)
        }
        "DestinationRule" => {
            let (metadata, spec) = parse::<DestinationRuleSpec>(value)?;
            destination_rule(meta(&metadata), spec).map(IstioObject::DestinationRule)
        }
        other => Err(format!(
            "kind: {other:?} is neither VirtualService nor DestinationRule"
        )),
    }
}

/// A client sidecar the config is computed for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
    /// The mesh's root namespace (`MeshConfig.rootNamespace`), whose exported
    /// DestinationRules apply mesh-wide.
    pub(crate) root_namespace: &'a str,
}

/// What every object keeps of its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    namespace: String,
    name: String,
    created: Option<Timestamp>,
}

impl Meta {
    /// Istio's order among objects of a kind: the oldest first (one without a creation time
    /// counts as the oldest, as Go's zero time does), then by name, then by namespace.
    fn precedence(&self, other: &Meta) -> Ordering {
        self.created
            .cmp(&other.created)
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.namespace.cmp(&other.namespace))
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService

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
}

impl VirtualService {
    /// The hosts it names, short names resolved in its namespace (wildcards as written).
    pub(crate) fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.meta.namespace
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
}

/// `exportTo`, `.` replaced by the object's own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Visibility {
    Public,
    Namespaces(BTreeSet<String>),
}

/// One `http` rule.
#[derive(Debug, Clone)]
struct Rule {
    matches: Vec<RuleMatch>,
    /// The route with everything that depends on neither the client nor the port; backend and
    /// mirror ports are 0 where the destination names none.
    route: proto::HttpRoute,
    redirect_port: RedirectPort,
    /// `rewrite.uri`: replaces what the match matched, a prefix or the whole path.
    rewrite_uri: Option<String>,
    /// The route's path change depends on the match (`rewrite.uri`, `redirect.prefixRewrite`),
    /// so each match gets a route of its own, as each becomes an Envoy route in Istio.
    per_match: bool,
}

impl Rule {
    /// The routes for the matches `kept` (none: every request) on `port`.
    fn routes(&self, kept: Vec<proto::HttpMatch>, port: u16) -> Vec<proto::HttpRoute> {
        let mut base = self.route.clone();
        for backend in &mut base.backends {
            backend.port = default_port(backend.port, port);
        }
        for mirror in &mut base.mirrors {
            mirror.port = default_port(mirror.port, port);
        }
        if let Some(redirect) = &mut base.redirect {
            redirect.port = self.redirect_port.resolve(port, &redirect.scheme);
        }
        if !self.per_match {
            base.matches = kept;
            return vec![base];
        }
        let matches = if kept.is_empty() {
            vec![proto::HttpMatch::default()]
        } else {
            kept
        };
        matches
            .into_iter()
            .map(|mut matched| {
                let mut route = base.clone();
                // Envoy matches a rule without `uri` as the prefix `/`, and a prefix rewrite
                // then replaces that `/`.
                let prefix = match matched.path.as_ref().and_then(|p| p.kind.as_ref()) {
                    Some(Kind::Exact(_) | Kind::Regex(_)) => false,
                    Some(Kind::Prefix(_) | Kind::PathPrefix(_)) => true,
                    None => {
                        matched.path = Some(proto::StringMatch {
                            kind: Some(Kind::Prefix("/".to_owned())),
                            ignore_case: false,
                        });
                        true
                    }
                };
                if let Some(uri) = &self.rewrite_uri {
                    let rewrite = route.rewrite.get_or_insert_with(Default::default);
                    if prefix {
                        rewrite.prefix.clone_from(uri);
                    } else {
                        rewrite.path.clone_from(uri);
                    }
                }
                route.matches = vec![matched];
                route
            })
            .collect()
    }
}

/// A destination without a port goes to the port the client called: istiod looks the
/// destination up among the Services of that port only, so a Service's single other port is
/// never chosen for a sidecar.
fn default_port(port: u32, called: u16) -> u32 {
    if port == 0 {
        u32::from(called)
    } else {
        port
    }
}

/// The port a redirect names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedirectPort {
    /// None, or `derivePort: FROM_PROTOCOL_DEFAULT` (Envoy is given no port either way).
    Keep,
    Fixed(u32),
    /// `derivePort: FROM_REQUEST_PORT`: routes are built per port, so it is that port.
    Request,
}

impl RedirectPort {
    /// Istio writes no `:80` for http nor `:443` for https.
    fn resolve(self, called: u16, scheme: &str) -> u32 {
        let port = match self {
            RedirectPort::Keep => return 0,
            RedirectPort::Fixed(port) => port,
            RedirectPort::Request => u32::from(called),
        };
        let scheme = if scheme.is_empty() { "http" } else { scheme };
        match (port, scheme) {
            (80, "http") | (443, "https") => 0,
            _ => port,
        }
    }
}

/// One `match` of a rule: the request conditions, and the filters Istio applies when it
/// builds a client's config rather than per request.
#[derive(Debug, Clone)]
struct RuleMatch {
    http: proto::HttpMatch,
    port: Option<u16>,
    gateways: Vec<String>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
}

impl RuleMatch {
    /// Istio's `sourceMatchHTTP` and port check: match-level `gateways`, when set, decide
    /// alone (`sourceLabels` and `sourceNamespace` are then not looked at); otherwise the client
    /// must carry the labels and live in the namespace.
    fn applies(&self, port: u16, client: &Client) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if !self.gateways.is_empty() {
            return self.gateways.iter().any(|g| g == MESH);
        }
        self.source_labels
            .iter()
            .all(|(key, value)| client.labels.get(key) == Some(value))
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|namespace| namespace == client.namespace)
    }
}

/// Istio's `IsCatchAllRoute`: the match takes every request, so nothing after it is reached.
fn is_catch_all(http: &proto::HttpMatch) -> bool {
    let any_path = match http.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => true,
        Some(Kind::Prefix(prefix)) => prefix == "/",
        Some(Kind::Regex(regex)) => regex == ".*",
        Some(_) => false,
    };
    any_path
        && http.headers.is_empty()
        && http.query_params.is_empty()
        && http.method.is_empty()
        && http.authority.is_none()
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
        return exact.iter().find_map(|vs| vs.routes(port, client));
    }
    let wildcard = visible
        .iter()
        .flat_map(|(_, vs)| &vs.hosts)
        .filter(|host| wildcard_covers(host, &hostname))
        .fold(None, |best: Option<&String>, host| match best {
            Some(best) if !more_specific(host, best) => Some(best),
            _ => Some(host),
        })?;
    visible
        .iter()
        .map(|(_, vs)| *vs)
        .find(|vs| vs.hosts.contains(wildcard))?
        .routes(port, client)
}

// ---------------------------------------------------------------------------------------------
// VirtualService: reading

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VirtualServiceSpec {
    hosts: Option<Vec<String>>,
    gateways: Option<Vec<String>>,
    http: Option<Vec<HttpRouteSpec>>,
    tls: Option<Vec<Value>>,
    tcp: Option<Vec<Value>>,
    export_to: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRouteSpec {
    /// Accepted: names the route in Envoy's stats and traces only.
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<Vec<MatchSpec>>,
    route: Option<Vec<RouteDestinationSpec>>,
    redirect: Option<RedirectSpec>,
    direct_response: Option<Value>,
    delegate: Option<Value>,
    rewrite: Option<RewriteSpec>,
    timeout: Option<Dur>,
    retries: Option<RetrySpec>,
    fault: Option<FaultSpec>,
    mirror: Option<DestinationSpec>,
    mirrors: Option<Vec<MirrorSpec>>,
    mirror_percent: Option<i64>,
    mirror_percentage: Option<PercentSpec>,
    cors_policy: Option<Value>,
    headers: Option<HeadersSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchSpec {
    /// Accepted: names the route in Envoy's stats only.
    #[allow(dead_code)]
    name: Option<String>,
    uri: Option<StringMatchSpec>,
    scheme: Option<StringMatchSpec>,
    method: Option<StringMatchSpec>,
    authority: Option<StringMatchSpec>,
    headers: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    port: Option<i64>,
    source_labels: Option<BTreeMap<String, String>>,
    gateways: Option<Vec<String>>,
    query_params: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    ignore_uri_case: Option<bool>,
    without_headers: Option<BTreeMap<String, Option<StringMatchSpec>>>,
    source_namespace: Option<String>,
    /// Accepted: Envoy's per-route stats, which Remora does not keep.
    #[allow(dead_code)]
    stat_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchSpec {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteDestinationSpec {
    destination: Option<DestinationSpec>,
    weight: Option<i64>,
    headers: Option<HeadersSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationSpec {
    host: Option<String>,
    subset: Option<String>,
    port: Option<PortSelectorSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSelectorSpec {
    number: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadersSpec {
    request: Option<HeaderOperationsSpec>,
    response: Option<HeaderOperationsSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderOperationsSpec {
    set: Option<BTreeMap<String, String>>,
    add: Option<BTreeMap<String, String>>,
    remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectSpec {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<i64>,
    derive_port: Option<String>,
    scheme: Option<String>,
    redirect_code: Option<i64>,
    prefix_rewrite: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteSpec {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<RegexRewriteSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexRewriteSpec {
    #[serde(rename = "match")]
    pattern: Option<String>,
    rewrite: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetrySpec {
    attempts: Option<i64>,
    per_try_timeout: Option<Dur>,
    retry_on: Option<String>,
    retry_remote_localities: Option<bool>,
    retry_ignore_previous_hosts: Option<bool>,
    backoff: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    delay: Option<DelaySpec>,
    abort: Option<AbortSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DelaySpec {
    percent: Option<i64>,
    fixed_delay: Option<Dur>,
    exponential_delay: Option<Dur>,
    percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AbortSpec {
    http_status: Option<i64>,
    grpc_status: Option<String>,
    http2_error: Option<String>,
    percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorSpec {
    destination: Option<DestinationSpec>,
    percentage: Option<PercentSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentSpec {
    value: Option<f64>,
}

impl PercentSpec {
    fn value(&self) -> f64 {
        self.value.unwrap_or(0.0)
    }
}

fn virtual_service(meta: Meta, spec: VirtualServiceSpec) -> Result<VirtualService, String> {
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
    for (field, routes) in [("tcp", &spec.tcp), ("tls", &spec.tls)] {
        if routes.as_ref().is_some_and(|r| !r.is_empty()) {
            p.unsupported(&format!("spec.{field}"));
        }
    }
    let http = spec.http.unwrap_or_default();
    if http.is_empty() {
        p.add("spec.http", "required");
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
    })
}

fn http_rule(index: usize, spec: HttpRouteSpec, meta: &Meta, p: &mut Problems) -> Rule {
    let path = format!("spec.http[{index}]");
    let at = |field: &str| format!("{path}.{field}");
    for (field, value) in [
        ("corsPolicy", &spec.cors_policy),
        ("delegate", &spec.delegate),
        ("directResponse", &spec.direct_response),
    ] {
        if is_set(value) {
            p.unsupported(&at(field));
        }
    }
    let destinations = spec.route.unwrap_or_default();
    if spec.redirect.is_some() {
        for (field, set) in [
            ("route", !destinations.is_empty()),
            ("fault", spec.fault.is_some()),
            ("rewrite", spec.rewrite.is_some()),
        ] {
            if set {
                p.add(&path, format!("redirect and {field} cannot both be set"));
            }
        }
    } else if destinations.is_empty() && !is_set(&spec.direct_response) && !is_set(&spec.delegate) {
        p.add(
            &path,
            "one of route, redirect, directResponse or delegate is required",
        );
    }
    let mirror_policies = spec.mirrors.unwrap_or_default();
    if spec.mirror.is_some() && !mirror_policies.is_empty() {
        p.add(&path, "mirror and mirrors cannot both be set");
    }

    let matches: Vec<RuleMatch> = spec
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, m)| rule_match(m, &at(&format!("match[{j}]")), p))
        .collect();

    let headers = header_changes(spec.headers, &at("headers"), p);
    let mut rewrite = proto::Rewrite::default();
    let mut rewrite_uri = None;
    if let Some(spec) = spec.rewrite {
        let path = at("rewrite");
        let uri = spec.uri.filter(|u| !u.is_empty());
        let authority = spec.authority.filter(|a| !a.is_empty());
        if uri.is_some() && spec.uri_regex_rewrite.is_some() {
            p.add(&path, "uri and uriRegexRewrite cannot both be set");
        }
        if uri.is_none() && spec.uri_regex_rewrite.is_none() && authority.is_none() {
            p.add(
                &path,
                "one of uri, uriRegexRewrite or authority is required",
            );
        }
        if let Some(regex) = spec.uri_regex_rewrite {
            let pattern = regex.pattern.unwrap_or_default();
            let substitution = regex.rewrite.unwrap_or_default();
            if pattern.is_empty() || substitution.is_empty() {
                p.add(
                    &format!("{path}.uriRegexRewrite"),
                    "match and rewrite are both required",
                );
            } else {
                check_regex(&pattern, &format!("{path}.uriRegexRewrite.match"), p);
            }
            rewrite.regex = pattern;
            rewrite.substitution = substitution;
        }
        if let Some(authority) = authority {
            check_header_value(&authority, &format!("{path}.authority"), p);
            rewrite.authority = authority;
        }
        rewrite_uri = uri;
    }
    if usize::from(!rewrite.authority.is_empty()) + headers.authorities.len() > 1 {
        p.add(
            &at("headers.request"),
            "the authority is rewritten more than once (rewrite.authority, set or add of host)",
        );
    }
    if rewrite.authority.is_empty() {
        rewrite.authority = headers.authority().unwrap_or_default();
    }

    let several = destinations.len() > 1;
    let mut backends = Vec::new();
    let mut total_weight = 0;
    for (j, spec) in destinations.into_iter().enumerate() {
        let path = at(&format!("route[{j}]"));
        let destination = destination(spec.destination, &format!("{path}.destination"), meta, p);
        let weight = ranged(
            spec.weight.unwrap_or(0),
            0..=i64::from(i32::MAX),
            &format!("{path}.weight"),
            p,
        )
        .unwrap_or(0);
        total_weight += u64::from(weight);
        let ops = header_changes(spec.headers, &format!("{path}.headers"), p);
        if !ops.authorities.is_empty() {
            if several {
                p.add(
                    &format!("{path}.headers.request"),
                    "rewriting the authority per destination is not supported yet",
                );
            } else if rewrite.authority.is_empty() {
                rewrite.authority = ops.authority().unwrap_or_default();
            }
        }
        let Some(destination) = destination else {
            continue;
        };
        // Istio leaves out destinations of weight 0 when there are several, and sends
        // everything to a single one whatever its weight.
        if several && weight == 0 {
            continue;
        }
        backends.push(proto::RouteBackend {
            host: destination.host,
            port: destination.port,
            subset: destination.subset,
            weight: if several { weight } else { 100 },
            request_headers: ops.request,
            response_headers: ops.response,
        });
    }
    if several && total_weight == 0 {
        p.add(&at("route"), "the weights add up to 0");
    }

    let mut redirect_port = RedirectPort::Keep;
    let mut redirect_prefix = false;
    let redirect = spec.redirect.map(|spec| {
        let (redirect, port) = redirect(spec, &matches, &at("redirect"), p);
        redirect_port = port;
        redirect_prefix = !redirect.prefix.is_empty();
        redirect
    });

    let timeout_ms = spec
        .timeout
        .map_or(0, |timeout| millis(timeout, &at("timeout"), p));
    let retry = spec.retries.map(|spec| retry(spec, &at("retries"), p));
    let fault = spec.fault.and_then(|spec| fault(spec, &at("fault"), p));

    let mut mirrors = Vec::new();
    if let Some(percentage) = &spec.mirror_percentage {
        let value = percentage.value();
        if !(0.0..=100.0).contains(&value) {
            p.add(
                &at("mirrorPercentage.value"),
                format!("{value} is not between 0 and 100"),
            );
        }
    }
    let mirror_percent = spec
        .mirror_percent
        .and_then(|percent| ranged(percent, 0..=100, &at("mirrorPercent"), p).map(f64::from));
    if let Some(spec_mirror) = spec.mirror {
        let destination = destination(Some(spec_mirror), &at("mirror"), meta, p);
        // `mirrorPercentage` wins over the deprecated `mirrorPercent`; neither: every request;
        // an explicit 0: none.
        let percent = match (&spec.mirror_percentage, mirror_percent) {
            (Some(percentage), _) => percentage.value(),
            (None, Some(percent)) => percent,
            (None, None) => 100.0,
        };
        if let Some(destination) = destination.filter(|_| percent > 0.0) {
            mirrors.push(destination.mirror(percent));
        }
    }
    for (j, spec) in mirror_policies.into_iter().enumerate() {
        let path = at(&format!("mirrors[{j}]"));
        let destination = destination(spec.destination, &format!("{path}.destination"), meta, p);
        let percent = spec.percentage.as_ref().map_or(100.0, PercentSpec::value);
        if !(0.0..=100.0).contains(&percent) {
            p.add(
                &format!("{path}.percentage.value"),
                format!("{percent} is not between 0 and 100"),
            );
        }
        if let Some(destination) = destination.filter(|_| percent > 0.0) {
            mirrors.push(destination.mirror(percent));
        }
    }

    let has_rewrite = rewrite != proto::Rewrite::default();
    Rule {
        matches,
        route: proto::HttpRoute {
            kind: "VirtualService".to_owned(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            rule: u32::try_from(index).unwrap_or(u32::MAX),
            matches: Vec::new(),
            backends,
            request_headers: headers.request,
            response_headers: headers.response,
            redirect,
            rewrite: has_rewrite.then_some(rewrite),
            mirrors,
            timeout_ms,
            retry,
            fault,
        },
        redirect_port,
        per_match: rewrite_uri.is_some() || redirect_prefix,
        rewrite_uri,
    }
}

fn rule_match(spec: MatchSpec, path: &str, p: &mut Problems) -> RuleMatch {
    let at = |field: &str| format!("{path}.{field}");
    if spec.scheme.is_some() {
        p.unsupported(&at("scheme"));
    }
    let ignore_case = spec.ignore_uri_case.unwrap_or(false);
    // Envoy takes an empty `uri` prefix (every path), unlike every other empty prefix.
    let uri = spec
        .uri
        .and_then(|uri| string_match(&uri, &at("uri"), true, p))
        .map(|kind| proto::StringMatch {
            // Envoy ignores case for exact and prefix path matches only.
            ignore_case: ignore_case && matches!(kind, Kind::Exact(_) | Kind::Prefix(_)),
            kind: Some(kind),
        });
    let method = match spec
        .method
        .and_then(|method| string_match(&method, &at("method"), false, p))
    {
        None => String::new(),
        Some(Kind::Exact(method)) => {
            if !is_token(&method) {
                p.add(
                    &at("method.exact"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            method
        }
        Some(_) => {
            p.add(&at("method"), "only exact method matches are supported yet");
            String::new()
        }
    };
    let authority = spec
        .authority
        .and_then(|authority| string_match(&authority, &at("authority"), false, p))
        .map(exactly);

    let mut headers = Vec::new();
    for (name, value) in spec.headers.unwrap_or_default() {
        let path = at(&format!("headers.{name}"));
        let Some(name) = match_header_name(&name, &path, p) else {
            continue;
        };
        match value {
            None => p.add(&path, "must not be null (`{}` matches any value)"),
            Some(value) => {
                if value.regex.as_deref() == Some("*") {
                    p.add(&path, "\"*\" is not a regex (only withoutHeaders takes it)");
                }
                headers.push(proto::HeaderMatch {
                    name,
                    value: string_match(&value, &path, false, p).map(exactly),
                    invert: false,
                });
            }
        }
    }
    for (name, value) in spec.without_headers.unwrap_or_default() {
        let path = at(&format!("withoutHeaders.{name}"));
        let Some(name) = match_header_name(&name, &path, p) else {
            continue;
        };
        // Istio takes the regex `*` to mean "present", as it takes an empty match.
        let value = value
            .filter(|v| {
                !(v.regex.as_deref() == Some("*") && v.exact.is_none() && v.prefix.is_none())
            })
            .and_then(|v| string_match(&v, &path, false, p));
        headers.push(proto::HeaderMatch {
            name,
            value: value.map(exactly),
            invert: true,
        });
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    let query_params = spec
        .query_params
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let path = at(&format!("queryParams.{name}"));
            if value.as_ref().and_then(|v| v.regex.as_deref()) == Some("*") {
                p.add(&path, "\"*\" is not a regex (only withoutHeaders takes it)");
            }
            proto::HeaderMatch {
                value: value
                    .and_then(|v| string_match(&v, &path, false, p))
                    .map(exactly),
                name,
                invert: false,
            }
        })
        .collect();

    let port = spec
        .port
        .filter(|port| *port != 0)
        .and_then(|port| ranged(port, 1..=65535, &at("port"), p))
        .and_then(|port| u16::try_from(port).ok());
    let source_labels = spec.source_labels.unwrap_or_default();
    check_labels(&source_labels, &at("sourceLabels"), p);
    let source_namespace = spec.source_namespace.filter(|ns| !ns.is_empty());
    if let Some(namespace) = &source_namespace {
        if !is_dns1123_label(namespace) {
            p.add(
                &at("sourceNamespace"),
                format!("{namespace:?} is not a namespace name"),
            );
        }
    }
    let gateways = spec.gateways.unwrap_or_default();
    check_gateway_names(&gateways, &at("gateways"), p);
    RuleMatch {
        http: proto::HttpMatch {
            path: uri,
            headers,
            query_params,
            method,
            authority,
        },
        port,
        gateways,
        source_labels,
        source_namespace,
    }
}

fn exactly(kind: Kind) -> proto::StringMatch {
    proto::StringMatch {
        kind: Some(kind),
        ignore_case: false,
    }
}

/// A match's header name, lowercased.
fn match_header_name(name: &str, path: &str, p: &mut Problems) -> Option<String> {
    const PSEUDO: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];
    if name.is_empty() {
        p.add(path, "the header name must not be empty");
    } else if name.starts_with("@request.auth.claims") {
        p.add(path, "JWT claim routing is only supported for gateways");
    } else if PSEUDO.contains(&name) {
        p.add(path, "pseudo-header matches are not supported yet");
    } else if !is_token(name) {
        p.add(path, format!("{name:?} is not a header name"));
    } else {
        return Some(name.to_ascii_lowercase());
    }
    None
}

/// A StringMatch's condition; `None` when it is empty (any value, or presence) or wrong.
fn string_match(
    spec: &StringMatchSpec,
    path: &str,
    empty_prefix: bool,
    p: &mut Problems,
) -> Option<Kind> {
    let set = [&spec.exact, &spec.prefix, &spec.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        p.add(path, "only one of exact, prefix and regex may be set");
        return None;
    }
    if let Some(exact) = &spec.exact {
        return Some(Kind::Exact(exact.clone()));
    }
    if let Some(prefix) = &spec.prefix {
        if prefix.is_empty() && !empty_prefix {
            p.add(&format!("{path}.prefix"), "must not be empty");
            return None;
        }
        return Some(Kind::Prefix(prefix.clone()));
    }
    let regex = spec.regex.as_ref()?;
    check_regex(regex, &format!("{path}.regex"), p);
    Some(Kind::Regex(regex.clone()))
}

/// What Istio checks of an RE2 regex short of compiling it: the sidecar compiles it with the
/// snapshot.
fn check_regex(regex: &str, path: &str, p: &mut Problems) {
    if regex.is_empty() {
        p.add(path, "must not be empty");
    } else if regex.len() > 1024 {
        p.add(path, "longer than 1024 characters");
    }
}

/// A destination as checked: host resolved, port 0 when it names none.
struct Destination {
    host: String,
    subset: String,
    port: u32,
}

impl Destination {
    fn mirror(self, percent: f64) -> proto::Mirror {
        proto::Mirror {
            host: self.host,
            port: self.port,
            subset: self.subset,
            percent,
        }
    }
}

fn destination(
    spec: Option<DestinationSpec>,
    path: &str,
    meta: &Meta,
    p: &mut Problems,
) -> Option<Destination> {
    let Some(spec) = spec else {
        p.add(path, "required");
        return None;
    };
    let host = spec.host.unwrap_or_default();
    if host == "*" {
        p.add(&format!("{path}.host"), "\"*\" is not a destination");
    } else if let Err(e) = check_wildcard_domain(&host) {
        p.add(&format!("{path}.host"), e);
    }
    let subset = spec.subset.unwrap_or_default();
    if !subset.is_empty() && !is_dns1123_label(&subset) {
        p.add(
            &format!("{path}.subset"),
            format!("{subset:?} is not a subset name"),
        );
    }
    let port = spec.port.map_or(0, |port| {
        ranged(
            port.number.unwrap_or(0),
            1..=65535,
            &format!("{path}.port.number"),
            p,
        )
        .unwrap_or(0)
    });
    Some(Destination {
        host: resolve_host(&host, &meta.namespace),
        subset,
        port,
    })
}

/// The header changes of a `headers` block; the authority (`host`, `:authority`) is taken out
/// of `set` and `add`, as Istio turns it into an authority rewrite.
#[derive(Default)]
struct HeaderChanges {
    request: Option<proto::HeaderOps>,
    response: Option<proto::HeaderOps>,
    /// `(from set, value)` for each authority given.
    authorities: Vec<(bool, String)>,
}

impl HeaderChanges {
    /// The authority to rewrite to: `set` wins over `add`.
    fn authority(&self) -> Option<String> {
        self.authorities
            .iter()
            .find(|(set, _)| *set)
            .or(self.authorities.first())
            .map(|(_, value)| value.clone())
    }
}

fn header_changes(spec: Option<HeadersSpec>, path: &str, p: &mut Problems) -> HeaderChanges {
    let Some(spec) = spec else {
        return HeaderChanges::default();
    };
    let mut changes = HeaderChanges::default();
    if let Some(request) = spec.request {
        let path = format!("{path}.request");
        let mut ops = proto::HeaderOps::default();
        for (set, list) in [(true, request.set), (false, request.add)] {
            let path = format!("{path}.{}", if set { "set" } else { "add" });
            for (name, value) in list.unwrap_or_default() {
                let path = format!("{path}.{name}");
                if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority") {
                    check_header_value(&value, &path, p);
                    changes.authorities.push((set, value));
                    continue;
                }
                if let Some(header) = header(&name, &value, &path, p) {
                    (if set { &mut ops.set } else { &mut ops.add }).push(header);
                }
            }
        }
        ops.remove = removed(request.remove, &format!("{path}.remove"), p);
        changes.request = non_empty(ops);
    }
    if let Some(response) = spec.response {
        let path = format!("{path}.response");
        let mut ops = proto::HeaderOps::default();
        for (set, list) in [(true, response.set), (false, response.add)] {
            let path = format!("{path}.{}", if set { "set" } else { "add" });
            for (name, value) in list.unwrap_or_default() {
                let path = format!("{path}.{name}");
                if let Some(header) = header(&name, &value, &path, p) {
                    (if set { &mut ops.set } else { &mut ops.add }).push(header);
                }
            }
        }
        ops.remove = removed(response.remove, &format!("{path}.remove"), p);
        changes.response = non_empty(ops);
    }
    changes
}

fn non_empty(ops: proto::HeaderOps) -> Option<proto::HeaderOps> {
    (ops != proto::HeaderOps::default()).then_some(ops)
}

/// A header to set or add (the authority aside), its value unescaped.
fn header(name: &str, value: &str, path: &str, p: &mut Problems) -> Option<proto::Header> {
    let valid_name = check_operation_name(name, path, p);
    let value = check_header_value(value, path, p);
    Some(proto::Header {
        name: valid_name?,
        value: value?,
    })
}

fn removed(names: Option<Vec<String>>, path: &str, p: &mut Problems) -> Vec<String> {
    names
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, name)| check_operation_name(name, &format!("{path}[{i}]"), p))
        .collect()
}

/// A header name a route may change, lowercased: not `host` nor a pseudo-header.
fn check_operation_name(name: &str, path: &str, p: &mut Problems) -> Option<String> {
    if name.is_empty() {
        p.add(path, "the header name must not be empty");
    } else if name.eq_ignore_ascii_case("host") || name.starts_with(':') {
        p.add(path, format!("{name:?} cannot be changed"));
    } else if !is_token(name) {
        p.add(path, format!("{name:?} is not a header name"));
    } else {
        return Some(name.to_ascii_lowercase());
    }
    None
}

/// A header value as Envoy takes it, with `%%` standing for `%`; Envoy's `%VARIABLE%`
/// substitutions are not supported yet.
fn check_header_value(value: &str, path: &str, p: &mut Problems) -> Option<String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        p.add(path, format!("{value:?} holds control characters"));
        return None;
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
        } else if chars.next() == Some('%') {
            out.push('%');
        } else {
            p.add(
                path,
                format!(
                    "{value:?}: %VARIABLE% substitutions are not supported yet (write %% for %)"
                ),
            );
            return None;
        }
    }
    Some(out)
}

fn redirect(
    spec: RedirectSpec,
    matches: &[RuleMatch],
    path: &str,
    p: &mut Problems,
) -> (proto::Redirect, RedirectPort) {
    let at = |field: &str| format!("{path}.{field}");
    let uri = spec.uri.unwrap_or_default();
    let prefix = spec.prefix_rewrite.unwrap_or_default();
    let authority = spec.authority.unwrap_or_default();
    let scheme = spec.scheme.unwrap_or_default();
    if !uri.is_empty() && !prefix.is_empty() {
        p.add(path, "uri and prefixRewrite cannot both be set");
    }
    let prefix_matches = matches.iter().all(|m| {
        matches!(
            m.http.path.as_ref().and_then(|p| p.kind.as_ref()),
            None | Some(Kind::Prefix(_))
        )
    });
    if !prefix.is_empty() && !prefix_matches {
        p.add(
            &at("prefixRewrite"),
            "every uri match of the rule must be a prefix match",
        );
    }
    if spec.port.is_some() && spec.derive_port.is_some() {
        p.add(path, "port and derivePort cannot both be set");
    }
    if [&uri, &prefix, &authority, &scheme]
        .iter()
        .all(|v| v.is_empty())
        && spec.port.is_none()
        && spec.derive_port.is_none()
    {
        p.add(
            path,
            "one of uri, prefixRewrite, authority, scheme, port or derivePort is required",
        );
    }
    // Istio passes any 3xx, but translates only these; Envoy knows no other redirect.
    let status = match spec.redirect_code.unwrap_or(0) {
        0 => 301,
        code @ (301 | 302 | 303 | 307 | 308) => u32::try_from(code).unwrap_or(301),
        code => {
            p.add(
                &at("redirectCode"),
                format!("{code} is not one of 301, 302, 303, 307, 308"),
            );
            301
        }
    };
    if !matches!(scheme.as_str(), "" | "http" | "https") {
        p.add(
            &at("scheme"),
            format!("{scheme:?} is neither http nor https"),
        );
    }
    if !authority.is_empty() {
        check_header_value(&authority, &at("authority"), p);
    }
    let mut port = RedirectPort::Keep;
    if let Some(number) = spec.port.filter(|n| *n != 0) {
        if let Some(number) = ranged(number, 1..=65535, &at("port"), p) {
            port = RedirectPort::Fixed(number);
        }
    }
    match spec.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => {}
        Some("FROM_REQUEST_PORT") => port = RedirectPort::Request,
        Some(other) => p.add(
            &at("derivePort"),
            format!("{other:?} is neither FROM_PROTOCOL_DEFAULT nor FROM_REQUEST_PORT"),
        ),
    }
    let redirect = proto::Redirect {
        scheme,
        host: authority,
        port: 0,
        path: uri,
        prefix,
        status,
    };
    (redirect, port)
}

/// Istio's retry conditions when `retryOn` is unset (`retriable-status-codes` with no codes).
const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// The `retryOn` conditions the sidecar implements.
const RETRY_ON: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Conditions Envoy (and so Istio) takes that the sidecar does not implement yet.
const RETRY_ON_UNSUPPORTED: [&str; 4] = [
    "reset-before-request",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

fn retry(spec: RetrySpec, path: &str, p: &mut Problems) -> proto::Retry {
    let at = |field: &str| format!("{path}.{field}");
    let attempts = ranged(
        spec.attempts.unwrap_or(0),
        0..=i64::from(i32::MAX),
        &at("attempts"),
        p,
    )
    .unwrap_or(0);
    let retry_on = spec.retry_on.filter(|r| !r.is_empty());
    if attempts == 0
        && (spec.per_try_timeout.is_some()
            || retry_on.is_some()
            || spec.retry_remote_localities.is_some())
    {
        p.add(
            path,
            "perTryTimeout, retryOn and retryRemoteLocalities need attempts (0 disables retries)",
        );
    }
    if spec.retry_ignore_previous_hosts.is_some() {
        p.unsupported(&at("retryIgnorePreviousHosts"));
    }
    let per_try_timeout_ms = spec
        .per_try_timeout
        .map_or(0, |timeout| millis(timeout, &at("perTryTimeout"), p));
    let backoff_ms = spec
        .backoff
        .map_or(0, |backoff| millis(backoff, &at("backoff"), p));
    let (conditions, codes) = match retry_on {
        None => (DEFAULT_RETRY_ON.map(str::to_owned).to_vec(), Vec::new()),
        Some(text) => retry_conditions(&text, &at("retryOn"), p),
    };
    if attempts == 0 {
        return proto::Retry::default();
    }
    proto::Retry {
        attempts,
        per_try_timeout_ms,
        retry_on: conditions,
        codes,
        backoff_ms,
        remote_localities: spec.retry_remote_localities.unwrap_or(false),
    }
}

/// `retryOn` split as Istio splits it: HTTP statuses are codes (and imply
/// `retriable-status-codes`), the rest Envoy's conditions. Like Istio's validation, no space is
/// allowed around the commas.
fn retry_conditions(text: &str, path: &str, p: &mut Problems) -> (Vec<String>, Vec<u32>) {
    let mut conditions: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    for part in text.split(',') {
        if let Some(code) = part.parse::<u32>().ok().filter(|c| is_http_status(*c)) {
            codes.push(code);
        } else if RETRY_ON.contains(&part) {
            conditions.push(part.to_owned());
        } else if RETRY_ON_UNSUPPORTED.contains(&part) {
            p.add(path, format!("{part:?} is not supported yet"));
        } else {
            p.add(
                path,
                format!("{part:?} is neither a retry condition nor an HTTP status"),
            );
        }
    }
    if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
        conditions.push("retriable-status-codes".to_owned());
    }
    (conditions, codes)
}

/// The statuses Go's `http.StatusText` names, which Istio takes as retriable codes.
fn is_http_status(code: u32) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

/// The gRPC statuses Istio's `grpcStatus` takes.
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio's fault as it translates it: a delay or abort without a percentage applies to no
/// request (a delay falls back on the deprecated integer `percent`, itself 0 when unset); a
/// delay without `fixedDelay` or an abort without an error type injects nothing.
fn fault(spec: FaultSpec, path: &str, p: &mut Problems) -> Option<proto::Fault> {
    if spec.delay.is_none() && spec.abort.is_none() {
        p.add(path, "delay or abort is required");
        return None;
    }
    let mut fault = proto::Fault::default();
    if let Some(delay) = spec.delay {
        let path = format!("{path}.delay");
        if let Some(percentage) = &delay.percentage {
            check_fault_percentage(percentage, &format!("{path}.percentage.value"), p);
        }
        if delay.exponential_delay.is_some() {
            p.unsupported(&format!("{path}.exponentialDelay"));
        }
        let percent = match (&delay.percentage, delay.percent) {
            (Some(percentage), _) => percentage.value(),
            (None, Some(percent)) => {
                f64::from(ranged(percent, 0..=100, &format!("{path}.percent"), p).unwrap_or(0))
            }
            (None, None) => 0.0,
        };
        if let Some(fixed) = delay.fixed_delay {
            fault.delay_ms = millis(fixed, &format!("{path}.fixedDelay"), p);
            fault.delay_percent = percent;
        }
    }
    if let Some(abort) = spec.abort {
        let path = format!("{path}.abort");
        if let Some(percentage) = &abort.percentage {
            check_fault_percentage(percentage, &format!("{path}.percentage.value"), p);
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        if kinds.iter().filter(|set| **set).count() > 1 {
            p.add(
                &path,
                "only one of httpStatus, grpcStatus and http2Error may be set",
            );
        }
        if abort.http2_error.is_some() {
            p.unsupported(&format!("{path}.http2Error"));
        }
        if let Some(status) = abort.http_status {
            fault.abort_status =
                ranged(status, 200..=599, &format!("{path}.httpStatus"), p).unwrap_or(0);
        }
        if let Some(status) = abort.grpc_status {
            if !GRPC_STATUSES.contains(&status.as_str()) {
                p.add(
                    &format!("{path}.grpcStatus"),
                    format!("{status:?} is not a gRPC status name such as NOT_FOUND"),
                );
            }
            fault.abort_grpc_status = status;
        }
        fault.abort_percent = abort.percentage.as_ref().map_or(0.0, PercentSpec::value);
    }
    let injects =
        fault.delay_ms > 0 || fault.abort_status > 0 || !fault.abort_grpc_status.is_empty();
    injects.then_some(fault)
}

/// Istio's `validatePercentage`: 0, or between 0.0001 and 100.
fn check_fault_percentage(percentage: &PercentSpec, path: &str, p: &mut Problems) {
    let value = percentage.value();
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        p.add(
            path,
            format!("{value} is neither 0 nor between 0.0001 and 100"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// A DestinationRule as kept: checked, its host resolved.
#[derive(Debug, Clone)]
pub(crate) struct DestinationRule {
    meta: Meta,
    host: String,
    /// `exportTo` as written (`.` kept), `{.}` for a rule with a workload selector, which Istio
    /// never exports; empty: the mesh default, everywhere.
    export_to: BTreeSet<String>,
    selector: Option<BTreeMap<String, String>>,
    policy: Option<Policy>,
    subsets: Vec<SubsetRule>,
}

impl DestinationRule {
    /// Only visible in its own namespace (Istio's `isPrivateOnly`).
    fn private_only(&self) -> bool {
        self.export_to.len() == 1
            && (self.export_to.contains(".") || self.export_to.contains(&self.meta.namespace))
    }

    /// Among the rules a client of its own namespace looks at first.
    fn namespace_local(&self) -> bool {
        self.export_to.is_empty()
            || ["*", ".", self.meta.namespace.as_str()]
                .iter()
                .any(|e| self.export_to.contains(*e))
    }
}

/// A `trafficPolicy`: the host's, and each port's that replaces it.
#[derive(Debug, Clone, Default)]
struct Policy {
    parts: Parts,
    ports: Vec<(u32, Parts)>,
}

impl Policy {
    /// Istio's `GetPortLevelTrafficPolicy`: the first port-level settings for `port` replace
    /// the whole policy (what they leave unset is not inherited); whether they did.
    fn for_port(&self, port: u16) -> (&Parts, bool) {
        self.ports
            .iter()
            .find(|(number, _)| *number == u32::from(port))
            .map_or((&self.parts, false), |(_, parts)| (parts, true))
    }
}

/// The blocks of a policy, each replaced whole when merged.
#[derive(Debug, Clone, Default, PartialEq)]
struct Parts {
    load_balancer: Option<String>,
    connection_pool: Option<proto::ConnectionPool>,
    outlier_detection: Option<proto::OutlierDetection>,
    tls_mode: Option<String>,
}

impl Parts {
    /// Istio's `MergeTrafficPolicy`: each block `over` sets replaces this one's; all of them
    /// when `over` is port-level.
    fn merged(&self, over: &Parts, whole: bool) -> Parts {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>, whole: bool) -> Option<T> {
            if whole || over.is_some() {
                over.clone()
            } else {
                base.clone()
            }
        }
        Parts {
            load_balancer: pick(&self.load_balancer, &over.load_balancer, whole),
            connection_pool: pick(&self.connection_pool, &over.connection_pool, whole),
            outlier_detection: pick(&self.outlier_detection, &over.outlier_detection, whole),
            tls_mode: pick(&self.tls_mode, &over.tls_mode, whole),
        }
    }

    fn to_proto(&self, meta: &Meta) -> Option<proto::TrafficPolicy> {
        if *self == Parts::default() {
            return None;
        }
        Some(proto::TrafficPolicy {
            load_balancer: self.load_balancer.clone().unwrap_or_default(),
            connection_pool: self.connection_pool,
            outlier_detection: self.outlier_detection,
            tls_mode: self.tls_mode.clone().unwrap_or_default(),
            policy: meta.full_name(),
        })
    }
}

#[derive(Debug, Clone)]
struct SubsetRule {
    name: String,
    labels: BTreeMap<String, String>,
    policy: Option<Policy>,
}

/// The DestinationRule policy for `hostname` port `port` as `client` sees it: the port's
/// policy, and every subset with its policy merged over the port's.
///
/// This is Istio's lookup: rules are consolidated per namespace and host (the oldest rule
/// with a policy gives it, subsets are pooled, rules with other `exportTo` or selectors stay
/// apart);
/// the client looks in its own namespace first, then among what the host's namespace exports
/// to it, then among what the root namespace does, each time at the most specific host only;
/// of what it finds, a rule of its own namespace whose workload selector it matches wins, else
/// the last found without a selector.
pub(crate) fn destination_policy(
    rules: &[&DestinationRule],
    hostname: &str,
    port: u16,
    client: &Client,
) -> (Option<proto::TrafficPolicy>, Vec<proto::Subset>) {
    let hostname = hostname.to_ascii_lowercase();
    let mut sorted = rules.to_vec();
    sorted.sort_by(|a, b| {
        b.selector
            .is_some()
            .cmp(&a.selector.is_some())
            .then_with(|| a.meta.precedence(&b.meta))
    });
    match lookup(&sorted, &hostname, client) {
        Some(rule) => rule.for_port(port),
        None => (None, Vec::new()),
    }
}

/// DestinationRules merged as Istio merges those of one namespace and host.
#[derive(Debug, Clone)]
struct Consolidated<'r> {
    /// The first rule: its namespace and selector say whom the merge applies to.
    first: &'r DestinationRule,
    export_to: &'r BTreeSet<String>,
    policy: Option<(&'r Policy, &'r Meta)>,
    subsets: Vec<(&'r SubsetRule, &'r Meta)>,
}

impl Consolidated<'_> {
    fn for_port(&self, port: u16) -> (Option<proto::TrafficPolicy>, Vec<proto::Subset>) {
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

fn lookup<'r>(
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

/// The namespace of a Service hostname `name.namespace.svc.<domain>`.
fn service_namespace(hostname: &str) -> Option<&str> {
    let name = hostname
        .strip_suffix(CLUSTER_DOMAIN)?
        .strip_suffix(".svc.")?;
    let (service, namespace) = name.rsplit_once('.')?;
    (!service.is_empty() && !namespace.is_empty()).then_some(namespace)
}

// ---------------------------------------------------------------------------------------------
// DestinationRule: reading

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DestinationRuleSpec {
    host: Option<String>,
    traffic_policy: Option<TrafficPolicySpec>,
    subsets: Option<Vec<SubsetSpec>>,
    export_to: Option<Vec<String>>,
    workload_selector: Option<SelectorSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorSpec {
    match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficPolicySpec {
    load_balancer: Option<LoadBalancerSpec>,
    connection_pool: Option<ConnectionPoolSpec>,
    outlier_detection: Option<OutlierDetectionSpec>,
    tls: Option<TlsSpec>,
    port_level_settings: Option<Vec<PortTrafficPolicySpec>>,
    tunnel: Option<Value>,
    proxy_protocol: Option<Value>,
    retry_budget: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortTrafficPolicySpec {
    port: Option<PortSelectorSpec>,
    load_balancer: Option<LoadBalancerSpec>,
    connection_pool: Option<ConnectionPoolSpec>,
    outlier_detection: Option<OutlierDetectionSpec>,
    tls: Option<TlsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubsetSpec {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    traffic_policy: Option<TrafficPolicySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerSpec {
    simple: Option<String>,
    consistent_hash: Option<Value>,
    locality_lb_setting: Option<Value>,
    zone_aware_lb_setting: Option<Value>,
    warmup_duration_secs: Option<Value>,
    warmup: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionPoolSpec {
    tcp: Option<TcpSettingsSpec>,
    http: Option<HttpSettingsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpSettingsSpec {
    max_connections: Option<i64>,
    connect_timeout: Option<Value>,
    tcp_keepalive: Option<Value>,
    max_connection_duration: Option<Value>,
    idle_timeout: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpSettingsSpec {
    http1_max_pending_requests: Option<i64>,
    http2_max_requests: Option<i64>,
    max_requests_per_connection: Option<i64>,
    max_retries: Option<i64>,
    idle_timeout: Option<Value>,
    h2_upgrade_policy: Option<String>,
    use_client_protocol: Option<bool>,
    max_concurrent_streams: Option<i64>,
    http2_keep_alive: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutlierDetectionSpec {
    consecutive_errors: Option<i64>,
    split_external_local_origin_errors: Option<bool>,
    consecutive_local_origin_failures: Option<Value>,
    consecutive_gateway_errors: Option<i64>,
    consecutive_5xx_errors: Option<i64>,
    interval: Option<Dur>,
    base_ejection_time: Option<Dur>,
    max_ejection_percent: Option<i64>,
    min_health_percent: Option<i64>,
    outlier_detection_http_error_codes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsSpec {
    mode: Option<String>,
    client_certificate: Option<Value>,
    private_key: Option<Value>,
    ca_certificates: Option<Value>,
    credential_name: Option<Value>,
    subject_alt_names: Option<Value>,
    sni: Option<Value>,
    insecure_skip_verify: Option<Value>,
    ca_crl: Option<Value>,
}

fn destination_rule(meta: Meta, spec: DestinationRuleSpec) -> Result<DestinationRule, String> {
    let mut p = Problems::default();
    let host = spec.host.unwrap_or_default();
    if let Err(e) = check_wildcard_domain(&host) {
        p.add("spec.host", e);
    }
    let selector = spec.workload_selector.map(|selector| {
        let labels = selector.match_labels.unwrap_or_default();
        for (key, value) in &labels {
            let path = format!("spec.workloadSelector.matchLabels.{key}");
            if key.is_empty() {
                p.add(&path, "the label name must not be empty");
            }
            if key.contains('*') || value.contains('*') {
                p.add(&path, "wildcards are not supported in selectors");
            }
        }
        labels
    });
    let policy = spec
        .traffic_policy
        .map(|policy| traffic_policy(policy, "spec.trafficPolicy", &mut p));
    let mut names = BTreeSet::new();
    let subsets = spec
        .subsets
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, subset)| {
            let path = format!("spec.subsets[{i}]");
            let name = subset.name.unwrap_or_default();
            if name.is_empty() {
                p.add(&format!("{path}.name"), "required");
            } else if !is_dns1123_label(&name) {
                p.add(
                    &format!("{path}.name"),
                    format!("{name:?} is not a subset name"),
                );
            }
            if !names.insert(name.clone()) {
                p.add(&format!("{path}.name"), format!("{name:?} is listed twice"));
            }
            let labels = subset.labels.unwrap_or_default();
            check_labels(&labels, &format!("{path}.labels"), &mut p);
            let policy = subset
                .traffic_policy
                .map(|policy| traffic_policy(policy, &format!("{path}.trafficPolicy"), &mut p));
            SubsetRule {
                name,
                labels,
                policy,
            }
        })
        .collect();
    let mut export_to = export_to(
        &spec.export_to.unwrap_or_default(),
        &meta.namespace,
        selector.is_some(),
        "spec.exportTo",
        &mut p,
    );
    if selector.is_some() {
        export_to = BTreeSet::from([".".to_owned()]);
    }
    let host = resolve_host(&host, &meta.namespace);
    let rule = DestinationRule {
        meta,
        host,
        export_to,
        selector,
        policy,
        subsets,
    };
    if p.0.is_empty() {
        check_policies_with_sidecar(&rule, &mut p);
    }
    p.finish(rule)
}

fn traffic_policy(spec: TrafficPolicySpec, path: &str, p: &mut Problems) -> Policy {
    let at = |field: &str| format!("{path}.{field}");
    let port_level = spec.port_level_settings.unwrap_or_default();
    let unsupported = [
        ("tunnel", &spec.tunnel),
        ("proxyProtocol", &spec.proxy_protocol),
        ("retryBudget", &spec.retry_budget),
    ];
    if spec.load_balancer.is_none()
        && spec.connection_pool.is_none()
        && spec.outlier_detection.is_none()
        && spec.tls.is_none()
        && port_level.is_empty()
        && unsupported.iter().all(|(_, value)| value.is_none())
    {
        p.add(path, "must set at least one field");
    }
    for (field, value) in unsupported {
        if value.is_some() {
            p.unsupported(&at(field));
        }
    }
    let parts = policy_parts(
        spec.load_balancer,
        spec.connection_pool,
        spec.outlier_detection,
        spec.tls,
        path,
        p,
    );
    let ports = port_level
        .into_iter()
        .enumerate()
        .map(|(i, settings)| {
            let path = at(&format!("portLevelSettings[{i}]"));
            let number = match settings.port {
                None => {
                    p.add(&format!("{path}.port"), "required");
                    0
                }
                Some(port) => ranged(
                    port.number.unwrap_or(0),
                    1..=65535,
                    &format!("{path}.port.number"),
                    p,
                )
                .unwrap_or(0),
            };
            if settings.load_balancer.is_none()
                && settings.connection_pool.is_none()
                && settings.outlier_detection.is_none()
                && settings.tls.is_none()
            {
                p.add(
                    &path,
                    "must set one of loadBalancer, connectionPool, outlierDetection and tls",
                );
            }
            let parts = policy_parts(
                settings.load_balancer,
                settings.connection_pool,
                settings.outlier_detection,
                settings.tls,
                &path,
                p,
            );
            (number, parts)
        })
        .collect();
    Policy { parts, ports }
}

fn policy_parts(
    load_balancer: Option<LoadBalancerSpec>,
    connection_pool: Option<ConnectionPoolSpec>,
    outlier_detection: Option<OutlierDetectionSpec>,
    tls: Option<TlsSpec>,
    path: &str,
    p: &mut Problems,
) -> Parts {
    Parts {
        load_balancer: load_balancer
            .map(|spec| load_balancing(spec, &format!("{path}.loadBalancer"), p)),
        connection_pool: connection_pool
            .map(|spec| pool(spec, &format!("{path}.connectionPool"), p)),
        outlier_detection: outlier_detection
            .map(|spec| outlier(spec, &format!("{path}.outlierDetection"), p)),
        tls_mode: tls.map(|spec| tls_mode(spec, &format!("{path}.tls"), p)),
    }
}

fn load_balancing(spec: LoadBalancerSpec, path: &str, p: &mut Problems) -> String {
    for (field, value) in [
        ("consistentHash", &spec.consistent_hash),
        ("localityLbSetting", &spec.locality_lb_setting),
        ("zoneAwareLbSetting", &spec.zone_aware_lb_setting),
        ("warmupDurationSecs", &spec.warmup_duration_secs),
        ("warmup", &spec.warmup),
    ] {
        if is_set(value) {
            p.unsupported(&format!("{path}.{field}"));
        }
    }
    match spec.simple.as_deref() {
        None | Some("UNSPECIFIED") => String::new(),
        // Deprecated, and Istio's synonym.
        Some("LEAST_CONN") => "LEAST_REQUEST".to_owned(),
        Some(simple @ ("ROUND_ROBIN" | "LEAST_REQUEST" | "RANDOM" | "PASSTHROUGH")) => {
            simple.to_owned()
        }
        Some(other) => {
            p.add(
                &format!("{path}.simple"),
                format!(
                    "{other:?} is not one of UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH"
                ),
            );
            String::new()
        }
    }
}

fn pool(spec: ConnectionPoolSpec, path: &str, p: &mut Problems) -> proto::ConnectionPool {
    let int32 = 0..=i64::from(i32::MAX);
    let mut out = proto::ConnectionPool::default();
    if spec.tcp.is_none() && spec.http.is_none() {
        p.add(path, "must set tcp or http");
    }
    if let Some(tcp) = spec.tcp {
        let path = format!("{path}.tcp");
        if let Some(max) = tcp.max_connections {
            out.max_connections =
                ranged(max, int32.clone(), &format!("{path}.maxConnections"), p).unwrap_or(0);
        }
        for (field, value) in [
            ("connectTimeout", &tcp.connect_timeout),
            ("tcpKeepalive", &tcp.tcp_keepalive),
            ("maxConnectionDuration", &tcp.max_connection_duration),
            ("idleTimeout", &tcp.idle_timeout),
        ] {
            if is_set(value) {
                p.unsupported(&format!("{path}.{field}"));
            }
        }
    }
    if let Some(http) = spec.http {
        let path = format!("{path}.http");
        let mut limit = |value: Option<i64>, field: &str| {
            value.map_or(0, |v| {
                ranged(v, int32.clone(), &format!("{path}.{field}"), p).unwrap_or(0)
            })
        };
        out.http1_max_pending_requests =
            limit(http.http1_max_pending_requests, "http1MaxPendingRequests");
        out.http2_max_requests = limit(http.http2_max_requests, "http2MaxRequests");
        out.max_requests_per_connection =
            limit(http.max_requests_per_connection, "maxRequestsPerConnection");
        out.max_retries = limit(http.max_retries, "maxRetries");
        if limit(http.max_concurrent_streams, "maxConcurrentStreams") > 0 {
            p.unsupported(&format!("{path}.maxConcurrentStreams"));
        }
        for (field, value) in [
            ("idleTimeout", &http.idle_timeout),
            ("http2KeepAlive", &http.http2_keep_alive),
        ] {
            if is_set(value) {
                p.unsupported(&format!("{path}.{field}"));
            }
        }
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") => {}
            Some("DO_NOT_UPGRADE" | "UPGRADE") => {
                p.unsupported(&format!("{path}.h2UpgradePolicy"));
            }
            Some(other) => p.add(
                &format!("{path}.h2UpgradePolicy"),
                format!("{other:?} is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
            ),
        }
        if http.use_client_protocol == Some(true) {
            p.unsupported(&format!("{path}.useClientProtocol"));
        }
    }
    out
}

/// Envoy's outlier detection defaults, which Istio leaves in place for unset fields: ejection
/// after 5 consecutive 5xx (gateway errors are counted but eject nobody), checked every 10 s,
/// ejected for 30 s, at most 10% of the endpoints.
fn outlier(spec: OutlierDetectionSpec, path: &str, p: &mut Problems) -> proto::OutlierDetection {
    let at = |field: &str| format!("{path}.{field}");
    // `consecutiveErrors` is deprecated and Istio translates it to nothing.
    if let Some(errors) = spec.consecutive_errors {
        ranged(errors, 0..=i64::from(i32::MAX), &at("consecutiveErrors"), p);
    }
    if spec.split_external_local_origin_errors == Some(true) {
        p.unsupported(&at("splitExternalLocalOriginErrors"));
    }
    for (field, value) in [
        (
            "consecutiveLocalOriginFailures",
            &spec.consecutive_local_origin_failures,
        ),
        (
            "outlierDetectionHttpErrorCodes",
            &spec.outlier_detection_http_error_codes,
        ),
    ] {
        if is_set(value) {
            p.unsupported(&at(field));
        }
    }
    let count = |value: Option<i64>, field: &str, default: u32, p: &mut Problems| {
        value.map_or(default, |v| {
            ranged(v, 0..=i64::from(u32::MAX), &at(field), p).unwrap_or(default)
        })
    };
    let consecutive_5xx_errors = count(spec.consecutive_5xx_errors, "consecutive5xxErrors", 5, p);
    let consecutive_gateway_errors = count(
        spec.consecutive_gateway_errors,
        "consecutiveGatewayErrors",
        0,
        p,
    );
    let max_ejection_percent = match spec.max_ejection_percent {
        None => 10,
        Some(percent) => match ranged(percent, 0..=100, &at("maxEjectionPercent"), p) {
            Some(0) | None => 10,
            Some(percent) => percent,
        },
    };
    if let Some(percent) = spec.min_health_percent {
        if ranged(percent, 0..=100, &at("minHealthPercent"), p).is_some_and(|v| v > 0) {
            p.unsupported(&at("minHealthPercent"));
        }
    }
    proto::OutlierDetection {
        consecutive_5xx_errors,
        consecutive_gateway_errors,
        interval_ms: spec
            .interval
            .map_or(10_000, |interval| millis(interval, &at("interval"), p)),
        base_ejection_time_ms: spec
            .base_ejection_time
            .map_or(30_000, |base| millis(base, &at("baseEjectionTime"), p)),
        max_ejection_percent,
    }
}

fn tls_mode(spec: TlsSpec, path: &str, p: &mut Problems) -> String {
    for (field, value) in [
        ("clientCertificate", &spec.client_certificate),
        ("privateKey", &spec.private_key),
        ("caCertificates", &spec.ca_certificates),
        ("credentialName", &spec.credential_name),
        ("subjectAltNames", &spec.subject_alt_names),
        ("sni", &spec.sni),
        ("insecureSkipVerify", &spec.insecure_skip_verify),
        ("caCrl", &spec.ca_crl),
    ] {
        if is_set(value) {
            p.unsupported(&format!("{path}.{field}"));
        }
    }
    match spec.mode.as_deref() {
        // The protobuf default.
        None | Some("DISABLE") => "DISABLE".to_owned(),
        Some("ISTIO_MUTUAL") => "ISTIO_MUTUAL".to_owned(),
        Some(mode @ ("SIMPLE" | "MUTUAL")) => {
            p.add(
                &format!("{path}.mode"),
                format!("{mode} is not supported yet"),
            );
            String::new()
        }
        Some(other) => {
            p.add(
                &format!("{path}.mode"),
                format!("{other:?} is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            );
            String::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar's own check

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

/// [`check_routes_with_sidecar`] for a DestinationRule's policies, on each port it names and
/// on one it does not.
fn check_policies_with_sidecar(rule: &DestinationRule, p: &mut Problems) {
    let mut numbers: BTreeSet<u16> = rule
        .policy
        .iter()
        .flat_map(|policy| &policy.ports)
        .chain(
            rule.subsets
                .iter()
                .filter_map(|s| s.policy.as_ref())
                .flat_map(|policy| &policy.ports),
        )
        .filter_map(|(number, _)| u16::try_from(*number).ok())
        .collect();
    if let Some(other) = (1..=u16::MAX).find(|n| !numbers.contains(n)) {
        numbers.insert(other);
    }
    let alone = Consolidated {
        first: rule,
        export_to: &rule.export_to,
        policy: rule.policy.as_ref().map(|policy| (policy, &rule.meta)),
        subsets: rule.subsets.iter().map(|s| (s, &rule.meta)).collect(),
    };
    let ports = numbers
        .into_iter()
        .map(|number| {
            let (traffic_policy, subsets) = alone.for_port(number);
            proto::ServicePort {
                port: u32::from(number),
                traffic_policy,
                subsets,
                ..Default::default()
            }
        })
        .collect();
    for (path, problem) in sidecar_problems(ports) {
        p.add("spec", format!("the sidecar refuses it: {path}: {problem}"));
    }
}

/// Any port will do: what is checked does not depend on it.
const CHECK_PORT: u16 = 80;

/// The problems the sidecar finds in a snapshot of one Service with `ports`, as
/// `(path under the port, problem)`.
fn sidecar_problems(ports: Vec<proto::ServicePort>) -> Vec<(String, String)> {
    let snapshot = proto::Snapshot {
        services: vec![proto::Service {
            hostname: "check.invalid".to_owned(),
            ports,
            ..Default::default()
        }],
        ..Default::default()
    };
    let found = match remora_api::Snapshot::try_from(snapshot) {
        Ok(_) => return Vec::new(),
        Err(remora_api::ConfigError::Invalid(found)) => found,
        Err(other) => vec![other.to_string()],
    };
    found
        .into_iter()
        .map(|problem| {
            // `services[0].ports[1].httpRoutes[2].matches[0].path: ...`
            let under_port = problem
                .strip_prefix("services[0].ports[")
                .and_then(|rest| rest.split_once("]."))
                .map_or(problem.as_str(), |(_, rest)| rest);
            let (path, message) = under_port.split_once(": ").unwrap_or(("", under_port));
            // Regex errors come on several lines.
            let message: Vec<&str> = message.lines().map(str::trim).collect();
            (path.to_owned(), message.join(" "))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shared checks

/// The problems found in one object, each naming its field.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Display) {
        self.0.push(format!("{path}: {message}"));
    }

    fn unsupported(&mut self, path: &str) {
        self.add(path, "not supported yet");
    }

    fn finish<T>(self, value: T) -> Result<T, String> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// An object with its spec; metadata is checked by `objects`.
#[derive(Deserialize)]
struct Object<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
}

fn parse<S: serde::de::DeserializeOwned + Default>(
    value: Value,
) -> Result<(ObjectMeta, S), String> {
    let object: Object<S> = yaml::from_value(value).map_err(|e| e.to_string())?;
    Ok((object.metadata, object.spec.unwrap_or_default()))
}

/// Whether a field the sidecar does not support holds anything. Protobuf cannot tell a scalar
/// left at its default from an unset one, so `false`, `0`, `""` and `[]` are unset; a message,
/// even empty, is set.
fn is_set(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Bool(true) | Value::Object(_)) => true,
    }
}

/// `value` when it lies in `range` (within `u32`), else a problem at `path`.
fn ranged(value: i64, range: RangeInclusive<i64>, path: &str, p: &mut Problems) -> Option<u32> {
    if range.contains(&value) {
        u32::try_from(value).ok()
    } else {
        p.add(
            path,
            format!(
                "{value} is not between {} and {}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

/// A protobuf duration as Istio's CRDs take it: Go's `time.ParseDuration` syntax (`5s`, `0.5s`,
/// `1m30s`, `250ms`).
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "{text:?} is not a duration such as \"5s\" or \"250ms\": {e}"
            ))
        })
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty".to_owned());
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err("expected a number".to_owned());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("a unit (ns, us, ms, s, m, h) is required".to_owned()),
            other => return Err(format!("unknown unit {other:?}")),
        };
        let too_long = || "too long".to_owned();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(too_long)?;
        if !fraction.is_empty() {
            let digits = fraction.get(..18).unwrap_or(fraction);
            let value: u128 = digits.parse().map_err(|_| too_long())?;
            let exponent = u32::try_from(digits.len()).map_err(|_| too_long())?;
            part += value * scale / 10u128.pow(exponent);
        }
        nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "too long".to_owned())?;
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(|_| "too long".to_owned())?;
    Ok(Duration::new(secs, subsec))
}

/// Istio's `ValidateDuration`: at least 1 ms, whole milliseconds; the milliseconds.
fn millis(duration: Dur, path: &str, p: &mut Problems) -> u64 {
    let duration = duration.0;
    if duration < Duration::from_millis(1) {
        p.add(path, "must be at least 1ms");
        0
    } else if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        p.add(path, "only whole milliseconds are supported");
        0
    } else {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Istio's `ResolveShortnameToFQDN`: a name without a dot is a Service of `namespace`; `*`, IP
/// addresses and names with a dot stay as written. Lowercased, as DNS names compare.
fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() || host.is_empty() {
        host
    } else {
        service_hostname(namespace, &host)
    }
}

/// Istio's `host.Name.Matches`: whether two hosts, either possibly wildcards, overlap.
fn hosts_overlap(a: &str, b: &str) -> bool {
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
fn wildcard_covers(wildcard: &str, hostname: &str) -> bool {
    wildcard
        .strip_prefix('*')
        .is_some_and(|suffix| hostname.ends_with(suffix))
}

/// Istio's `host.MoreSpecific` among wildcards: the longer, then the first alphabetically.
fn more_specific(a: &str, b: &str) -> bool {
    match a.len().cmp(&b.len()) {
        Ordering::Equal => a < b,
        longer => longer == Ordering::Greater,
    }
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// A DNS label that may start with `*` or `*-`, or be `*`.
fn is_wildcard_label(label: &str) -> bool {
    label.len() <= 63
        && (label == "*"
            || is_dns1123_label(label)
            || label.strip_prefix("*-").is_some_and(is_dns1123_label)
            || label.strip_prefix('*').is_some_and(is_dns1123_label))
}

/// Istio's `ValidateWildcardDomain`: DNS labels, a wildcard allowed in the first one only, the
/// top-level one not all digits.
fn check_wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the host name must not be empty".to_owned());
    }
    if domain.len() > 255 {
        return Err(format!("{domain:?} is longer than 255 characters"));
    }
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!("{domain:?} is not a host name (label {first:?})"));
    }
    let Some(rest) = rest else {
        return Ok(());
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.last().is_some_and(|top| top.parse::<i64>().is_ok()) {
        return Err(format!("{domain:?} has an all-numeric top-level domain"));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot is allowed.
        if i + 1 == labels.len() && label.is_empty() {
            break;
        }
        if !is_dns1123_label(label) {
            return Err(format!("{domain:?} is not a host name (label {label:?})"));
        }
    }
    Ok(())
}

/// Istio's `validateGatewayNames`: `mesh`, `namespace/name` or a legacy FQDN.
fn check_gateway_names(names: &[String], path: &str, p: &mut Problems) {
    for (i, name) in names.iter().enumerate() {
        let valid = match name.split_once('/') {
            _ if name == MESH => true,
            Some((namespace, gateway)) => is_dns1123_label(namespace) && is_dns1123_label(gateway),
            None => check_wildcard_domain(name).is_ok() && !name.starts_with('*'),
        };
        if !valid {
            p.add(
                &format!("{path}[{i}]"),
                format!("{name:?} is not a gateway name (mesh or namespace/name)"),
            );
        }
    }
}

/// Istio's `validateExportTo`: `.`, `*` or namespace names, no duplicates, `*` alone, and
/// nothing beyond the own namespace for a rule with a workload selector. The entries as written.
fn export_to(
    entries: &[String],
    namespace: &str,
    selector: bool,
    path: &str,
    p: &mut Problems,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let key = if entry == "." {
            namespace
        } else {
            entry.as_str()
        };
        if entry == "~" {
            p.add(&at, "\"~\" (exported to none) is not allowed here");
        } else if entry != "*" && entry != "." && !is_dns1123_label(entry) {
            p.add(
                &at,
                format!("{entry:?} is neither ., * nor a namespace name"),
            );
        } else if !seen.insert(key.to_owned()) {
            p.add(&at, format!("{entry:?} is listed twice"));
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        p.add(path, "\"*\" cannot be combined with other entries");
    }
    if selector && !seen.is_empty() && (!seen.contains(namespace) || seen.len() > 1) {
        p.add(
            path,
            "a DestinationRule with a workload selector cannot be exported beyond its namespace",
        );
    }
    entries.iter().cloned().collect()
}

/// Kubernetes label syntax, as Istio checks `sourceLabels` and subset labels.
fn check_labels(labels: &BTreeMap<String, String>, path: &str, p: &mut Problems) {
    for (key, value) in labels {
        let at = format!("{path}.{key}");
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let prefix_valid = prefix
            .is_none_or(|prefix| prefix.len() <= 253 && prefix.split('.').all(is_dns1123_label));
        if !prefix_valid || name.len() > 63 || !is_qualified_name(name) {
            p.add(&at, format!("{key:?} is not a label name"));
        }
        if !value.is_empty() && !is_qualified_name(value) {
            p.add(&at, format!("{value:?} is not a label value"));
        }
    }
}

/// Alphanumerics with `-`, `_` and `.` inside.
fn is_qualified_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An HTTP token (RFC 9110): what header names and methods are made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
