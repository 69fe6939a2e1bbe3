//! Gateway API routes in the mesh (GAMMA): `HTTPRoute` (`gateway.networking.k8s.io/v1` and
//! `v1beta1`) and `GRPCRoute` (`v1`) whose parent is a Service, read, checked and translated
//! into the route tables client sidecars try in order ([`proto::HttpRoute`]); `ReferenceGrant`
//! (`v1beta1` and `v1`) is read and checked too.
//!
//! Reading stands in for the API server, since manifests read from files were never admitted by
//! one: what the CRD schema and its CEL rules refuse is rejected with the field named, and the
//! defaults the schema fills in (`PathPrefix /`, weight 1, status 302, ...) are filled in here.
//! What Istio refuses while converting (filters it does not translate, a Service named by its
//! hostname) is rejected too; a route is rejected whole, as Istio drops every rule of a route
//! one of whose rules fails.
//!
//! Translation follows Istio's (`pilot/pkg/config/kube/gateway`): each match of each rule is one
//! route; a client uses the routes of its own namespace attached to the Service (consumer
//! routes) if there are any, else those of the Service's namespace (producer routes); the
//! routes are merged, HTTPRoutes and GRPCRoutes alike, and ordered by the precedence the spec
//! gives ([`Precedence`]). ReferenceGrants do not govern them: GEP-1294 lets mesh routes send to
//! backends in any namespace without one, and Istio converts routes whose parent is a Service
//! with `enforceRefGrant` off.

use std::{cmp::Reverse, fmt};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp};
use remora_api::proto::config::{self as proto, string_match::Kind};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

use crate::config::{well_known::service_hostname, yaml};

const API_GROUP: &str = "gateway.networking.k8s.io";

/// Whether `kind` in `api_version` is read here: HTTPRoute `v1` and `v1beta1`, GRPCRoute `v1`,
/// ReferenceGrant `v1beta1` and `v1`.
pub(crate) fn is_gateway_kind(api_version: &str, kind: &str) -> bool {
    let Some(version) = api_version
        .strip_prefix(API_GROUP)
        .and_then(|v| v.strip_prefix('/'))
    else {
        return false;
    };
    match kind {
        "HTTPRoute" | "ReferenceGrant" => matches!(version, "v1" | "v1beta1"),
        "GRPCRoute" => version == "v1",
        _ => false,
    }
}

/// A Gateway API object as read.
#[derive(Debug, Clone)]
pub(crate) enum GatewayObject {
    Route(Route),
    Grant(ReferenceGrant),
}

/// A checked ReferenceGrant. Mesh routes do not consult grants (see the module docs), so
/// nothing of it is kept: reading it reports a malformed one, which gateways would use.
#[derive(Debug, Clone)]
pub(crate) struct ReferenceGrant {
    _checked: (),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }
}

/// A checked HTTPRoute or GRPCRoute, translated.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    namespace: String,
    name: String,
    created: Option<Timestamp>,
    /// Its Service parents; references to Gateways (or anything else) are for gateways and
    /// never attach it to a sidecar's table.
    parents: Vec<ServiceParent>,
    /// One per match of each rule, in rule then match order.
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceParent {
    namespace: String,
    name: String,
    /// Only this Service port; `None`: every port (GEP-1294).
    port: Option<u16>,
}

/// One rule with one of its matches: what the rule does, for requests that match.
#[derive(Debug, Clone)]
struct Entry {
    /// The match's index in the rule.
    match_index: u32,
    /// `matches` holds that one match.
    route: proto::HttpRoute,
}

impl Route {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The Services `(namespace, name)` the route names as parents, each once.
    pub(crate) fn parents(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parents
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !self.parents[..*i]
                    .iter()
                    .any(|q| q.namespace == p.namespace && q.name == p.name)
            })
            .map(|(_, p)| (p.namespace.as_str(), p.name.as_str()))
    }

    fn attaches(&self, namespace: &str, name: &str, port: u16) -> bool {
        !self.entries.is_empty()
            && self.parents.iter().any(|p| {
                p.namespace == namespace && p.name == name && p.port.is_none_or(|p| p == port)
            })
    }
}

/// The route table clients in `client_namespace` use for port `port` of Service
/// `service_namespace/service_name`, or `None` when no route attaches there (the port keeps
/// its default route).
///
/// GEP-1294 and Istio: routes in the client's namespace (consumer routes, when that is not the
/// Service's) replace those of the Service's namespace (producer routes) for that client;
/// routes of any other namespace never apply. `_grants` is not consulted (module docs).
pub(crate) fn table(
    routes: &[&Route],
    _grants: &[&ReferenceGrant],
    service_namespace: &str,
    service_name: &str,
    port: u16,
    client_namespace: &str,
) -> Option<Vec<proto::HttpRoute>> {
    let attached = || {
        routes
            .iter()
            .copied()
            .filter(|r| r.attaches(service_namespace, service_name, port))
    };
    let consumer = |r: &&Route| r.namespace != service_namespace && r.namespace == client_namespace;
    let chosen: Vec<&Route> = if attached().any(|r| consumer(&r)) {
        attached().filter(consumer).collect()
    } else {
        attached()
            .filter(|r| r.namespace == service_namespace)
            .collect()
    };
    if chosen.is_empty() {
        return None;
    }
    let mut entries: Vec<(&Route, &Entry)> = chosen
        .iter()
        .flat_map(|r| r.entries.iter().map(move |e| (*r, e)))
        .collect();
    entries.sort_by(|(ra, a), (rb, b)| precedence(ra, a).cmp(&precedence(rb, b)));
    Some(entries.into_iter().map(|(_, e)| e.route.clone()).collect())
}

/// Where an entry goes in a table, smallest first. Istio merges a Service's routes and sorts
/// them with `sortHTTPRoutes`, a stable sort over routes already ordered by
/// `sortRoutesByCreationTime`, each route's rules and matches in order; the fields below are
/// those steps in turn.
///
/// For HTTPRoute these are the spec's steps (exact path, longest prefix, method, most headers,
/// most query parameters, oldest route, `namespace/name`, rule order); regular expressions,
/// whose place the spec leaves to implementations, come after prefixes as in Istio. For
/// GRPCRoute the spec orders by the characters of the matched service, then of the method,
/// then the number of headers; over the paths a gRPC match becomes (below) the steps here give
/// that order for any two exact matches that can take the same request.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence<'r> {
    /// 3 exact, 2 prefix (either kind), 1 regex, 0 none (a GRPCRoute match without a method).
    path_kind: Reverse<u8>,
    /// Within a kind, the longer value first, in characters.
    path_length: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    /// The oldest route first; one without a timestamp (a manifest from a file) after every
    /// dated one, as the security policies order them.
    undated: bool,
    created: Option<Timestamp>,
    namespace: &'r str,
    name: &'r str,
    rule: u32,
    match_index: u32,
}

fn precedence<'r>(route: &'r Route, entry: &'r Entry) -> Precedence<'r> {
    let matched = entry.route.matches.first();
    let (path_kind, path_length) = match matched
        .and_then(|m| m.path.as_ref())
        .and_then(|p| p.kind.as_ref())
    {
        Some(Kind::Exact(value)) => (3, value.chars().count()),
        Some(Kind::Prefix(value) | Kind::PathPrefix(value)) => (2, value.chars().count()),
        Some(Kind::Regex(value)) => (1, value.chars().count()),
        None => (0, 0),
    };
    Precedence {
        path_kind: Reverse(path_kind),
        path_length: Reverse(path_length),
        method: Reverse(matched.is_some_and(|m| !m.method.is_empty())),
        headers: Reverse(matched.map_or(0, |m| m.headers.len())),
        query_params: Reverse(matched.map_or(0, |m| m.query_params.len())),
        undated: route.created.is_none(),
        created: route.created,
        namespace: &route.namespace,
        name: &route.name,
        rule: entry.route.rule,
        match_index: entry.match_index,
    }
}

/// Reads a Gateway API object of `kind` whose namespace and name are already known. `Err`
/// names every field that is wrong, `; `-separated.
pub(crate) fn read(
    kind: &str,
    value: Value,
    namespace: &str,
    name: &str,
) -> Result<GatewayObject, String> {
    match kind {
        "HTTPRoute" => http_route(value, namespace, name).map(GatewayObject::Route),
        "GRPCRoute" => grpc_route(value, namespace, name).map(GatewayObject::Route),
        "ReferenceGrant" => reference_grant(value).map(GatewayObject::Grant),
        other => Err(format!(
            "kind: {other:?} is not a Gateway API kind read here"
        )),
    }
}

/// An object with its spec; metadata is checked by [`super::super::objects`].
#[derive(Deserialize)]
struct Object<S> {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<S>,
}

fn parse<S: DeserializeOwned>(value: Value) -> Result<(Option<Timestamp>, S), String> {
    let object: Object<S> = yaml::from_value(value).map_err(|e| e.to_string())?;
    let spec = object.spec.ok_or("spec: required")?;
    Ok((object.metadata.creation_timestamp.map(|t| t.0), spec))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRouteSpec {
    parent_refs: Option<Vec<ParentRefSpec>>,
    /// GEP-1294: mesh implementations infer nothing from it (Istio uses the Service's name).
    #[serde(rename = "hostnames")]
    _hostnames: Option<Vec<String>>,
    /// For gateways.
    #[serde(rename = "useDefaultGateways")]
    _use_default_gateways: Option<String>,
    rules: Option<Vec<HttpRuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRouteSpec {
    parent_refs: Option<Vec<ParentRefSpec>>,
    #[serde(rename = "hostnames")]
    _hostnames: Option<Vec<String>>,
    #[serde(rename = "useDefaultGateways")]
    _use_default_gateways: Option<String>,
    rules: Option<Vec<GrpcRuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRefSpec {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    /// A Service's port name; Istio ignores it for Service parents (only `port` narrows them).
    #[serde(rename = "sectionName")]
    _section_name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRuleSpec {
    #[serde(rename = "name")]
    _name: Option<String>,
    matches: Option<Vec<HttpMatchSpec>>,
    filters: Option<Vec<FilterSpec>>,
    backend_refs: Option<Vec<BackendRefSpec>>,
    timeouts: Option<TimeoutsSpec>,
    retry: Option<RetrySpec>,
    session_persistence: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRuleSpec {
    #[serde(rename = "name")]
    _name: Option<String>,
    matches: Option<Vec<GrpcMatchSpec>>,
    filters: Option<Vec<FilterSpec>>,
    backend_refs: Option<Vec<BackendRefSpec>>,
    session_persistence: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpMatchSpec {
    path: Option<PathMatchSpec>,
    headers: Option<Vec<NamedMatchSpec>>,
    query_params: Option<Vec<NamedMatchSpec>>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatchSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

/// A header or query parameter match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedMatchSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcMatchSpec {
    method: Option<GrpcMethodSpec>,
    headers: Option<Vec<NamedMatchSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcMethodSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

/// An HTTPRoute or GRPCRoute filter; which types a place accepts is [`Place`]'s call.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilterSpec {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderFilterSpec>,
    response_header_modifier: Option<HeaderFilterSpec>,
    request_mirror: Option<MirrorSpec>,
    request_redirect: Option<RedirectSpec>,
    url_rewrite: Option<RewriteSpec>,
    cors: Option<Value>,
    external_auth: Option<Value>,
    extension_ref: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFilterSpec {
    set: Option<Vec<HeaderSpec>>,
    add: Option<Vec<HeaderSpec>>,
    remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MirrorSpec {
    backend_ref: ObjectRefSpec,
    percent: Option<i64>,
    fraction: Option<FractionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FractionSpec {
    numerator: i64,
    denominator: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectSpec {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifierSpec>,
    port: Option<u16>,
    status_code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteSpec {
    hostname: Option<String>,
    path: Option<PathModifierSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifierSpec {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

/// A `backendRefs[]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendRefSpec {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
    weight: Option<i64>,
    filters: Option<Vec<FilterSpec>>,
}

/// A mirror's `backendRef`: a backend without weight or filters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectRefSpec {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimeoutsSpec {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    codes: Option<Vec<i64>>,
    attempts: Option<i64>,
    backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceGrantSpec {
    from: Vec<GrantFromSpec>,
    to: Vec<GrantToSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFromSpec {
    #[serde(rename = "group")]
    _group: String,
    kind: String,
    namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantToSpec {
    #[serde(rename = "group")]
    _group: String,
    kind: String,
    name: Option<String>,
}

fn reference_grant(value: Value) -> Result<ReferenceGrant, String> {
    let (_, spec): (_, ReferenceGrantSpec) = parse(value)?;
    let mut problems = Vec::new();
    let mut required = |field: String, value: &str| {
        if value.is_empty() {
            problems.push(format!("{field}: required"));
        }
    };
    for (i, from) in spec.from.iter().enumerate() {
        required(format!("spec.from[{i}].kind"), &from.kind);
        required(format!("spec.from[{i}].namespace"), &from.namespace);
    }
    for (i, to) in spec.to.iter().enumerate() {
        required(format!("spec.to[{i}].kind"), &to.kind);
        if let Some(name) = &to.name {
            required(format!("spec.to[{i}].name"), name);
        }
    }
    if spec.from.is_empty() {
        problems.push("spec.from: must list at least one source".to_owned());
    }
    if spec.to.is_empty() {
        problems.push("spec.to: must list at least one target".to_owned());
    }
    if problems.is_empty() {
        Ok(ReferenceGrant { _checked: () })
    } else {
        Err(problems.join("; "))
    }
}

fn http_route(value: Value, namespace: &str, name: &str) -> Result<Route, String> {
    let (created, spec): (_, HttpRouteSpec) = parse(value)?;
    let mut reader = Reader::new(RouteKind::Http, namespace, name);
    let parents = reader.parents(spec.parent_refs.unwrap_or_default());
    // The CRD's default for an absent list: one rule matching every request, with no backend.
    let rules = spec.rules.unwrap_or_else(|| vec![HttpRuleSpec::default()]);
    if rules.is_empty() {
        reader.problem("spec.rules", "must list at least one rule");
    }
    let mut entries = Vec::new();
    for (i, rule) in rules.into_iter().enumerate() {
        entries.extend(reader.http_rule(i, rule));
    }
    reader.finish(created, parents, entries)
}

fn grpc_route(value: Value, namespace: &str, name: &str) -> Result<Route, String> {
    let (created, spec): (_, GrpcRouteSpec) = parse(value)?;
    let mut reader = Reader::new(RouteKind::Grpc, namespace, name);
    let parents = reader.parents(spec.parent_refs.unwrap_or_default());
    let mut entries = Vec::new();
    for (i, rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        entries.extend(reader.grpc_rule(i, rule));
    }
    reader.finish(created, parents, entries)
}

/// Which filter types a place takes: what Istio translates there.
#[derive(Clone, Copy)]
enum Place {
    HttpRule,
    GrpcRule,
    Backend,
}

impl Place {
    fn takes(self, kind: &str) -> bool {
        match self {
            Place::HttpRule => matches!(
                kind,
                "RequestHeaderModifier"
                    | "ResponseHeaderModifier"
                    | "RequestMirror"
                    | "RequestRedirect"
                    | "URLRewrite"
            ),
            Place::GrpcRule => matches!(
                kind,
                "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
            ),
            Place::Backend => matches!(kind, "RequestHeaderModifier" | "ResponseHeaderModifier"),
        }
    }
}

/// What a list of filters does.
#[derive(Default)]
struct Filters {
    request_headers: Option<proto::HeaderOps>,
    response_headers: Option<proto::HeaderOps>,
    redirect: Option<proto::Redirect>,
    rewrite: Option<proto::Rewrite>,
    mirrors: Vec<proto::Mirror>,
    /// The `replacePrefixMatch` fields set, which need the rule's one match to be a prefix.
    replaces_prefix: Vec<String>,
}

/// A path modifier's change.
enum PathChange {
    Full(String),
    Prefix(String),
}

/// Checks one route, collecting every problem.
struct Reader<'a> {
    kind: RouteKind,
    namespace: &'a str,
    name: &'a str,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(kind: RouteKind, namespace: &'a str, name: &'a str) -> Self {
        Self {
            kind,
            namespace,
            name,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, field: impl fmt::Display, message: impl fmt::Display) {
        self.problems.push(format!("{field}: {message}"));
    }

    fn finish(
        self,
        created: Option<Timestamp>,
        parents: Vec<ServiceParent>,
        entries: Vec<Entry>,
    ) -> Result<Route, String> {
        if !self.problems.is_empty() {
            return Err(self.problems.join("; "));
        }
        Ok(Route {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            created,
            parents,
            entries,
        })
    }

    /// The Service parents: group `""` (the core group, which a parentRef must name, its
    /// default being Gateway API's) and kind `Service`.
    fn parents(&mut self, refs: Vec<ParentRefSpec>) -> Vec<ServiceParent> {
        let mut parents = Vec::new();
        for (i, parent) in refs.into_iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            if parent.name.is_empty() {
                self.problem(format!("{field}.name"), "required");
            }
            if parent.port == Some(0) {
                self.problem(format!("{field}.port"), "must be between 1 and 65535");
            }
            let group = parent.group.as_deref().unwrap_or(API_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if (group, kind) == ("", "Service") {
                parents.push(ServiceParent {
                    namespace: parent
                        .namespace
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| self.namespace.to_owned()),
                    name: parent.name,
                    port: parent.port,
                });
            }
        }
        parents
    }

    fn http_rule(&mut self, i: usize, rule: HttpRuleSpec) -> Vec<Entry> {
        let field = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            self.problem(format!("{field}.sessionPersistence"), "is not supported");
        }
        let matches = match rule.matches.filter(|m| !m.is_empty()) {
            None => vec![every_path()],
            Some(matches) => matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| self.http_match(&format!("{field}.matches[{j}]"), m))
                .collect(),
        };
        let filters = self.filters(
            &format!("{field}.filters"),
            rule.filters.unwrap_or_default(),
            Place::HttpRule,
        );
        let one_prefix = matches!(
            matches.as_slice(),
            [proto::HttpMatch {
                path: Some(proto::StringMatch {
                    kind: Some(Kind::PathPrefix(_)),
                    ..
                }),
                ..
            }]
        );
        for replaces in &filters.replaces_prefix {
            if !one_prefix {
                self.problem(
                    replaces,
                    "needs the rule to have exactly one match, a PathPrefix",
                );
            }
        }
        let backend_refs = rule.backend_refs.unwrap_or_default();
        if filters.redirect.is_some() && !backend_refs.is_empty() {
            self.problem(
                format!("{field}.backendRefs"),
                "cannot be combined with a RequestRedirect filter",
            );
        }
        let backends = self.backends(&field, backend_refs);
        let (timeout_ms, retry) = self.timing(&field, rule.timeouts, rule.retry);
        let route = proto::HttpRoute {
            backends,
            request_headers: filters.request_headers,
            response_headers: filters.response_headers,
            redirect: filters.redirect,
            rewrite: filters.rewrite,
            mirrors: filters.mirrors,
            timeout_ms,
            retry,
            ..self.rule(i)
        };
        entries(route, matches)
    }

    fn grpc_rule(&mut self, i: usize, rule: GrpcRuleSpec) -> Vec<Entry> {
        let field = format!("spec.rules[{i}]");
        if rule.session_persistence.is_some() {
            self.problem(format!("{field}.sessionPersistence"), "is not supported");
        }
        let matches = match rule.matches.filter(|m| !m.is_empty()) {
            None => vec![proto::HttpMatch::default()],
            Some(matches) => matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| self.grpc_match(&format!("{field}.matches[{j}]"), m))
                .collect(),
        };
        let filters = self.filters(
            &format!("{field}.filters"),
            rule.filters.unwrap_or_default(),
            Place::GrpcRule,
        );
        let backends = self.backends(&field, rule.backend_refs.unwrap_or_default());
        let route = proto::HttpRoute {
            backends,
            request_headers: filters.request_headers,
            response_headers: filters.response_headers,
            mirrors: filters.mirrors,
            ..self.rule(i)
        };
        entries(route, matches)
    }

    /// A route for rule `i`, naming it and doing nothing yet.
    fn rule(&self, i: usize) -> proto::HttpRoute {
        proto::HttpRoute {
            kind: self.kind.name().to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            rule: i as u32,
            ..proto::HttpRoute::default()
        }
    }

    fn http_match(&mut self, field: &str, spec: HttpMatchSpec) -> proto::HttpMatch {
        let path = match spec.path {
            None => every_path().path,
            Some(path) => self.path_match(&format!("{field}.path"), path),
        };
        let headers = self.named_matches(
            &format!("{field}.headers"),
            spec.headers.unwrap_or_default(),
            true,
        );
        let query_params = self.named_matches(
            &format!("{field}.queryParams"),
            spec.query_params.unwrap_or_default(),
            false,
        );
        let method = match spec.method {
            None => String::new(),
            Some(method) if HTTP_METHODS.contains(&method.as_str()) => method,
            Some(other) => {
                let known = HTTP_METHODS.join(", ");
                self.problem(
                    format!("{field}.method"),
                    format!("{other:?} is not one of {known}"),
                );
                String::new()
            }
        };
        proto::HttpMatch {
            path,
            headers,
            query_params,
            method,
            authority: None,
        }
    }

    fn path_match(&mut self, field: &str, spec: PathMatchSpec) -> Option<proto::StringMatch> {
        let value = spec.value.unwrap_or_else(|| "/".to_owned());
        let kind = spec.kind.as_deref().unwrap_or("PathPrefix");
        let kind = match kind {
            "Exact" | "PathPrefix" => {
                if let Some(problem) = path_problem(&value) {
                    self.problem(format!("{field}.value"), format!("{value:?} {problem}"));
                }
                if kind == "Exact" {
                    Kind::Exact(value)
                } else {
                    // "When specified, a trailing `/` is ignored"; Istio drops it before
                    // ranking the prefix by its length.
                    let trimmed = value.trim_end_matches('/');
                    Kind::PathPrefix(if trimmed.is_empty() { "/" } else { trimmed }.to_owned())
                }
            }
            "RegularExpression" => {
                self.check_regex(&format!("{field}.value"), &value);
                Kind::Regex(value)
            }
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of Exact, PathPrefix, RegularExpression"),
                );
                return None;
            }
        };
        Some(string_match(kind))
    }

    /// Header (`header`) or query parameter matches. Header names are compared without case,
    /// so they are lowercased, and of names equal but for case only the first counts (Gateway
    /// API); a name listed twice exactly is refused, as the API server refuses it (a map list).
    fn named_matches(
        &mut self,
        field: &str,
        list: Vec<NamedMatchSpec>,
        header: bool,
    ) -> Vec<proto::HeaderMatch> {
        let mut written: Vec<String> = Vec::new();
        let mut kept: Vec<proto::HeaderMatch> = Vec::new();
        for (k, spec) in list.into_iter().enumerate() {
            let item = format!("{field}[{k}]");
            if !is_token(&spec.name) {
                let what = if header {
                    "a header"
                } else {
                    "a query parameter"
                };
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is not {what} name", spec.name),
                );
                continue;
            }
            if written.contains(&spec.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is listed twice", spec.name),
                );
                continue;
            }
            written.push(spec.name.clone());
            if spec.value.is_empty() {
                self.problem(format!("{item}.value"), "required");
            }
            let value = match spec.kind.as_deref().unwrap_or("Exact") {
                "Exact" => Kind::Exact(spec.value),
                "RegularExpression" => {
                    self.check_regex(&format!("{item}.value"), &spec.value);
                    Kind::Regex(spec.value)
                }
                other => {
                    self.problem(
                        format!("{item}.type"),
                        format!("{other:?} is not one of Exact, RegularExpression"),
                    );
                    continue;
                }
            };
            let name = if header {
                spec.name.to_ascii_lowercase()
            } else {
                spec.name
            };
            if kept.iter().any(|m| m.name == name) {
                continue;
            }
            kept.push(proto::HeaderMatch {
                name,
                value: Some(string_match(value)),
                invert: false,
            });
        }
        kept
    }

    fn grpc_match(&mut self, field: &str, spec: GrpcMatchSpec) -> proto::HttpMatch {
        let path = spec
            .method
            .and_then(|method| self.grpc_path(&format!("{field}.method"), method));
        let headers = self.named_matches(
            &format!("{field}.headers"),
            spec.headers.unwrap_or_default(),
            true,
        );
        proto::HttpMatch {
            path,
            headers,
            ..proto::HttpMatch::default()
        }
    }

    /// The path a gRPC method match takes, `/<service>/<method>`, as Istio spells it
    /// (`createGRPCURIMatch`): both exact, the exact path; a service alone, the prefix
    /// `/<service>/`; otherwise a regular expression over the two segments (each of a
    /// user's expressions grouped, so an alternation stays inside its segment).
    fn grpc_path(&mut self, field: &str, spec: GrpcMethodSpec) -> Option<proto::StringMatch> {
        // "If left empty or omitted, will match any service" (and method).
        let service = spec.service.filter(|s| !s.is_empty());
        let method = spec.method.filter(|m| !m.is_empty());
        if service.is_none() && method.is_none() {
            self.problem(field, "one or both of service and method must be set");
            return None;
        }
        let kind = match spec.kind.as_deref().unwrap_or("Exact") {
            "Exact" => {
                if let Some(service) = service.as_deref().filter(|s| !is_grpc_service(s)) {
                    self.problem(
                        format!("{field}.service"),
                        format!("{service:?} is not a gRPC service name"),
                    );
                }
                if let Some(method) = method.as_deref().filter(|m| !is_grpc_method(m)) {
                    self.problem(
                        format!("{field}.method"),
                        format!("{method:?} is not a gRPC method name"),
                    );
                }
                match (service, method) {
                    (Some(service), Some(method)) => Kind::Exact(format!("/{service}/{method}")),
                    (Some(service), None) => Kind::Prefix(format!("/{service}/")),
                    (None, method) => Kind::Regex(format!(
                        "/[^/]+/{}",
                        regex::escape(method.as_deref().unwrap_or_default())
                    )),
                }
            }
            "RegularExpression" => {
                if let Some(service) = &service {
                    self.check_regex(&format!("{field}.service"), service);
                }
                if let Some(method) = &method {
                    self.check_regex(&format!("{field}.method"), method);
                }
                let service = service.map_or_else(|| "[^/]+".to_owned(), |s| format!("(?:{s})"));
                let method = method.map_or_else(|| ".+".to_owned(), |m| format!("(?:{m})"));
                Kind::Regex(format!("/{service}/{method}"))
            }
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of Exact, RegularExpression"),
                );
                return None;
            }
        };
        Some(string_match(kind))
    }

    /// A regular expression must compile as the sidecar compiles it: RE2 syntax, matching the
    /// whole value.
    fn check_regex(&mut self, field: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            // The parser's message draws the pattern over several lines; its last says why.
            let text = e.to_string();
            let reason = text.lines().last().unwrap_or_default();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            self.problem(
                field,
                format!("{pattern:?} is not a regular expression: {reason}"),
            );
        }
    }

    fn filters(&mut self, field: &str, list: Vec<FilterSpec>, place: Place) -> Filters {
        let mut filters = Filters::default();
        let mut seen: Vec<String> = Vec::new();
        for (j, spec) in list.into_iter().enumerate() {
            let item = format!("{field}[{j}]");
            if !place.takes(&spec.kind) {
                self.problem(
                    format!("{item}.type"),
                    format!("{} is not supported", spec.kind),
                );
                continue;
            }
            // The CRD's CEL rules: every type but RequestMirror at most once.
            if spec.kind != "RequestMirror" && seen.contains(&spec.kind) {
                self.problem(
                    format!("{item}.type"),
                    format!("{} is listed twice", spec.kind),
                );
                continue;
            }
            seen.push(spec.kind.clone());
            let set = [
                (
                    "RequestHeaderModifier",
                    "requestHeaderModifier",
                    spec.request_header_modifier.is_some(),
                ),
                (
                    "ResponseHeaderModifier",
                    "responseHeaderModifier",
                    spec.response_header_modifier.is_some(),
                ),
                (
                    "RequestMirror",
                    "requestMirror",
                    spec.request_mirror.is_some(),
                ),
                (
                    "RequestRedirect",
                    "requestRedirect",
                    spec.request_redirect.is_some(),
                ),
                ("URLRewrite", "urlRewrite", spec.url_rewrite.is_some()),
                ("CORS", "cors", spec.cors.is_some()),
                ("ExternalAuth", "externalAuth", spec.external_auth.is_some()),
                ("ExtensionRef", "extensionRef", spec.extension_ref.is_some()),
            ];
            for (kind, name, present) in set {
                if present && kind != spec.kind {
                    self.problem(
                        format!("{item}.{name}"),
                        format!("set, but the type is {}", spec.kind),
                    );
                } else if !present && kind == spec.kind {
                    self.problem(format!("{item}.{name}"), format!("required by type {kind}"));
                }
            }
            if let Some(ops) = spec.request_header_modifier {
                filters.request_headers =
                    Some(self.header_ops(&format!("{item}.requestHeaderModifier"), ops));
            }
            if let Some(ops) = spec.response_header_modifier {
                filters.response_headers =
                    Some(self.header_ops(&format!("{item}.responseHeaderModifier"), ops));
            }
            if let Some(mirror) = spec.request_mirror {
                let mirror = self.mirror(&format!("{item}.requestMirror"), mirror);
                filters.mirrors.push(mirror);
            }
            if let Some(redirect) = spec.request_redirect {
                let redirect = self.redirect(
                    &format!("{item}.requestRedirect"),
                    redirect,
                    &mut filters.replaces_prefix,
                );
                filters.redirect = Some(redirect);
            }
            if let Some(rewrite) = spec.url_rewrite {
                filters.rewrite = self.rewrite(
                    &format!("{item}.urlRewrite"),
                    rewrite,
                    &mut filters.replaces_prefix,
                );
            }
        }
        let rewrites = seen.iter().any(|k| k == "URLRewrite");
        if seen.iter().any(|k| k == "RequestRedirect") && rewrites {
            self.problem(field, "RequestRedirect and URLRewrite cannot be combined");
        }
        filters
    }

    /// Header changes. Names are compared without case, so they are lowercased; of names
    /// equal but for case only the first counts (Gateway API; Istio's `headerListToMap`), a
    /// name listed twice exactly is refused (a map list); values must be header values
    /// (Istio's `isValidHeaderValue`).
    fn header_ops(&mut self, field: &str, spec: HeaderFilterSpec) -> proto::HeaderOps {
        let set = self.headers(&format!("{field}.set"), spec.set.unwrap_or_default());
        let add = self.headers(&format!("{field}.add"), spec.add.unwrap_or_default());
        let mut remove: Vec<String> = Vec::new();
        for (k, name) in spec.remove.unwrap_or_default().into_iter().enumerate() {
            if !is_token(&name) {
                self.problem(
                    format!("{field}.remove[{k}]"),
                    format!("{name:?} is not a header name"),
                );
                continue;
            }
            let name = name.to_ascii_lowercase();
            if !remove.contains(&name) {
                remove.push(name);
            }
        }
        proto::HeaderOps { set, add, remove }
    }

    fn headers(&mut self, field: &str, list: Vec<HeaderSpec>) -> Vec<proto::Header> {
        let mut written: Vec<String> = Vec::new();
        let mut kept: Vec<proto::Header> = Vec::new();
        for (k, header) in list.into_iter().enumerate() {
            let item = format!("{field}[{k}]");
            if !is_token(&header.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is not a header name", header.name),
                );
                continue;
            }
            if written.contains(&header.name) {
                self.problem(
                    format!("{item}.name"),
                    format!("{:?} is listed twice", header.name),
                );
                continue;
            }
            written.push(header.name.clone());
            if header.value.is_empty() {
                self.problem(format!("{item}.value"), "required");
            } else if !is_header_value(&header.value) {
                self.problem(
                    format!("{item}.value"),
                    format!("{:?} is not a header value", header.value),
                );
            }
            let name = header.name.to_ascii_lowercase();
            if kept.iter().any(|h| h.name == name) {
                continue;
            }
            kept.push(proto::Header {
                name,
                value: header.value,
            });
        }
        kept
    }

    /// A mirror; one whose backend is not a Service keeps an empty host, which the sidecar
    /// skips (Istio drops it).
    fn mirror(&mut self, field: &str, spec: MirrorSpec) -> proto::Mirror {
        let percent = match (spec.percent, spec.fraction) {
            (Some(_), Some(_)) => {
                self.problem(field, "set percent or fraction, not both");
                100.0
            }
            (Some(percent), None) => {
                if !(0..=100).contains(&percent) {
                    self.problem(
                        format!("{field}.percent"),
                        format!("{percent} is not between 0 and 100"),
                    );
                }
                percent.clamp(0, 100) as f64
            }
            (None, Some(fraction)) => {
                let denominator = fraction.denominator.unwrap_or(100);
                if denominator < 1 {
                    self.problem(
                        format!("{field}.fraction.denominator"),
                        format!("{denominator} is less than 1"),
                    );
                }
                if !(0..=denominator).contains(&fraction.numerator) {
                    self.problem(
                        format!("{field}.fraction.numerator"),
                        format!(
                            "{} is not between 0 and the denominator ({denominator})",
                            fraction.numerator
                        ),
                    );
                }
                if denominator < 1 || !(0..=denominator).contains(&fraction.numerator) {
                    100.0
                } else {
                    100.0 * fraction.numerator as f64 / denominator as f64
                }
            }
            // "If neither field is specified, 100% of requests will be mirrored."
            (None, None) => 100.0,
        };
        let (host, port) = self.target(&format!("{field}.backendRef"), spec.backend_ref);
        proto::Mirror {
            host,
            port,
            subset: String::new(),
            percent,
        }
    }

    fn redirect(
        &mut self,
        field: &str,
        spec: RedirectSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> proto::Redirect {
        let mut redirect = proto::Redirect::default();
        match spec.scheme {
            None => {}
            Some(scheme) if scheme == "http" || scheme == "https" => redirect.scheme = scheme,
            Some(other) => self.problem(
                format!("{field}.scheme"),
                format!("{other:?} is not one of http, https"),
            ),
        }
        if let Some(hostname) = spec.hostname {
            self.check_hostname(&format!("{field}.hostname"), &hostname);
            redirect.host = hostname;
        }
        match spec.port {
            Some(0) => self.problem(format!("{field}.port"), "must be between 1 and 65535"),
            // Unset, the sidecar keeps the request's port, or the scheme's when the scheme
            // changes, as the spec asks.
            port => redirect.port = u32::from(port.unwrap_or(0)),
        }
        // The CRD's default is 302 (the proto's own, 0, means 301).
        redirect.status = match spec.status_code.unwrap_or(302) {
            code @ (301 | 302 | 303 | 307 | 308) => code as u32,
            other => {
                self.problem(
                    format!("{field}.statusCode"),
                    format!("{other} is not one of 301, 302, 303, 307, 308"),
                );
                302
            }
        };
        if let Some(path) = spec.path {
            match self.path_change(&format!("{field}.path"), path, replaces_prefix) {
                Some(PathChange::Full(path)) => redirect.path = path,
                Some(PathChange::Prefix(prefix)) => redirect.prefix = prefix,
                None => {}
            }
        }
        redirect
    }

    /// A rewrite, `None` when it changes nothing (Istio).
    fn rewrite(
        &mut self,
        field: &str,
        spec: RewriteSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> Option<proto::Rewrite> {
        let mut rewrite = proto::Rewrite::default();
        if let Some(hostname) = spec.hostname {
            self.check_hostname(&format!("{field}.hostname"), &hostname);
            rewrite.authority = hostname;
        }
        if let Some(path) = spec.path {
            match self.path_change(&format!("{field}.path"), path, replaces_prefix) {
                Some(PathChange::Full(path)) => rewrite.path = path,
                Some(PathChange::Prefix(prefix)) => rewrite.prefix = prefix,
                None => {}
            }
        }
        (rewrite != proto::Rewrite::default()).then_some(rewrite)
    }

    fn path_change(
        &mut self,
        field: &str,
        spec: PathModifierSpec,
        replaces_prefix: &mut Vec<String>,
    ) -> Option<PathChange> {
        let full = spec.replace_full_path;
        let prefix = spec.replace_prefix_match;
        let (wanted, unwanted) = match spec.kind.as_str() {
            "ReplaceFullPath" => ("replaceFullPath", ("replacePrefixMatch", prefix.is_some())),
            "ReplacePrefixMatch" => ("replacePrefixMatch", ("replaceFullPath", full.is_some())),
            other => {
                self.problem(
                    format!("{field}.type"),
                    format!("{other:?} is not one of ReplaceFullPath, ReplacePrefixMatch"),
                );
                return None;
            }
        };
        if unwanted.1 {
            self.problem(
                format!("{field}.{}", unwanted.0),
                format!("set, but the type is {}", spec.kind),
            );
        }
        // An empty value would read as "unset" in the proto; both empty paths mean `/`.
        let slash = |value: &str| if value.is_empty() { "/" } else { value }.to_owned();
        match (spec.kind.as_str(), full, prefix) {
            ("ReplaceFullPath", Some(full), _) => Some(PathChange::Full(slash(&full))),
            ("ReplacePrefixMatch", _, Some(prefix)) => {
                replaces_prefix.push(format!("{field}.replacePrefixMatch"));
                // The spec's table treats `/xyz/` as `/xyz` and `/` as the empty string, as
                // Istio does by trimming one trailing `/`.
                Some(PathChange::Prefix(slash(prefix.trim_end_matches('/'))))
            }
            (kind, ..) => {
                self.problem(
                    format!("{field}.{wanted}"),
                    format!("required by type {kind}"),
                );
                None
            }
        }
    }

    /// `PreciseHostname`: lowercase DNS labels, no wildcard.
    fn check_hostname(&mut self, field: &str, hostname: &str) {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if hostname.len() > 253 || !hostname.split('.').all(label) {
            self.problem(field, format!("{hostname:?} is not a hostname"));
        }
    }

    /// The rule's backends; a weight of 0 takes no traffic, so it is left out (Istio).
    fn backends(&mut self, rule: &str, list: Vec<BackendRefSpec>) -> Vec<proto::RouteBackend> {
        let mut backends = Vec::new();
        for (k, spec) in list.into_iter().enumerate() {
            let field = format!("{rule}.backendRefs[{k}]");
            let weight = spec.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                self.problem(
                    format!("{field}.weight"),
                    format!("{weight} is not between 0 and 1000000"),
                );
            }
            let filters = self.filters(
                &format!("{field}.filters"),
                spec.filters.unwrap_or_default(),
                Place::Backend,
            );
            let reference = ObjectRefSpec {
                group: spec.group,
                kind: spec.kind,
                name: spec.name,
                namespace: spec.namespace,
                port: spec.port,
            };
            let (host, port) = self.target(&field, reference);
            if weight <= 0 || weight > 1_000_000 {
                continue;
            }
            backends.push(proto::RouteBackend {
                host,
                port,
                subset: String::new(),
                weight: weight as u32,
                request_headers: filters.request_headers,
                response_headers: filters.response_headers,
            });
        }
        backends
    }

    /// The host and port a backend reference sends to. Only Services (group `""`, kind
    /// `Service`, the defaults) resolve; any other kind gets an empty host, which the sidecar
    /// answers with 500 for that backend's share (Istio: an empty destination).
    fn target(&mut self, field: &str, reference: ObjectRefSpec) -> (String, u32) {
        if reference.name.is_empty() {
            self.problem(format!("{field}.name"), "required");
        }
        if reference.port == Some(0) {
            self.problem(format!("{field}.port"), "must be between 1 and 65535");
        }
        let port = u32::from(reference.port.unwrap_or(0));
        let group = reference.group.as_deref().unwrap_or("");
        let kind = reference.kind.as_deref().unwrap_or("Service");
        if (group, kind) != ("", "Service") {
            return (String::new(), port);
        }
        if reference.port.is_none() {
            self.problem(format!("{field}.port"), "required for a Service");
        }
        if reference.name.contains('.') {
            self.problem(
                format!("{field}.name"),
                format!("{:?} is a hostname; name the Service", reference.name),
            );
        }
        let namespace = reference
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(self.namespace);
        (service_hostname(namespace, &reference.name), port)
    }

    /// `timeouts` and `retry`, as Istio's `convertHTTPRoute` sets them: `request` is the
    /// route's timeout; `backendRequest` is each try's, or, when the rule sets no `retry` (so
    /// the mesh's default retries apply), the route's timeout in place of `request`.
    fn timing(
        &mut self,
        rule: &str,
        timeouts: Option<TimeoutsSpec>,
        retry: Option<RetrySpec>,
    ) -> (u64, Option<proto::Retry>) {
        let mut retry = retry.map(|spec| self.retry(&format!("{rule}.retry"), spec));
        let timeouts = timeouts.unwrap_or_default();
        let request = self.duration(&format!("{rule}.timeouts.request"), timeouts.request);
        let backend = self.duration(
            &format!("{rule}.timeouts.backendRequest"),
            timeouts.backend_request,
        );
        if request != 0 && backend > request {
            self.problem(
                format!("{rule}.timeouts.backendRequest"),
                format!("{backend}ms is longer than the request timeout ({request}ms)"),
            );
        }
        let mut timeout_ms = request;
        if backend != 0 {
            match &mut retry {
                Some(retry) => retry.per_try_timeout_ms = backend,
                None => timeout_ms = backend,
            }
        }
        (timeout_ms, retry)
    }

    /// A rule's `retry`, as Istio converts it: 2 attempts unless set; retried on connection
    /// failures, refused streams, and gRPC `unavailable` and `cancelled` ("Implementations
    /// SHOULD retry on connection errors ... if a retry stanza is configured"), and on `codes`.
    fn retry(&mut self, field: &str, spec: RetrySpec) -> proto::Retry {
        let attempts = match spec.attempts {
            None => 2,
            Some(attempts) => u32::try_from(attempts)
                .ok()
                .filter(|a| *a >= 1)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{field}.attempts"),
                        format!("{attempts} is less than 1"),
                    );
                    2
                }),
        };
        let mut codes: Vec<u32> = Vec::new();
        for (k, code) in spec.codes.unwrap_or_default().into_iter().enumerate() {
            match u32::try_from(code).ok().filter(|c| (400..=599).contains(c)) {
                Some(code) if codes.contains(&code) => self.problem(
                    format!("{field}.codes[{k}]"),
                    format!("{code} is listed twice"),
                ),
                Some(code) => codes.push(code),
                None => self.problem(
                    format!("{field}.codes[{k}]"),
                    format!("{code} is not between 400 and 599"),
                ),
            }
        }
        let mut retry_on: Vec<String> = [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
        ]
        .map(str::to_owned)
        .to_vec();
        if !codes.is_empty() {
            retry_on.push("retriable-status-codes".to_owned());
        }
        proto::Retry {
            attempts,
            per_try_timeout_ms: 0,
            retry_on,
            codes,
            backoff_ms: self.duration(&format!("{field}.backoff"), spec.backoff),
            remote_localities: false,
        }
    }

    /// A Gateway API duration in milliseconds; unset is 0, as is `0s` ("no timeout").
    fn duration(&mut self, field: &str, value: Option<String>) -> u64 {
        let Some(value) = value else {
            return 0;
        };
        parse_duration(&value).unwrap_or_else(|| {
            self.problem(
                field,
                format!("{value:?} is not a duration such as 10s, 500ms or 1h30m"),
            );
            0
        })
    }
}

const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn entries(route: proto::HttpRoute, matches: Vec<proto::HttpMatch>) -> Vec<Entry> {
    matches
        .into_iter()
        .enumerate()
        .map(|(j, m)| Entry {
            match_index: j as u32,
            route: proto::HttpRoute {
                matches: vec![m],
                ..route.clone()
            },
        })
        .collect()
}

/// The match of a rule that lists none, and the path of a match that names none: the CRD's
/// default, `PathPrefix /`.
fn every_path() -> proto::HttpMatch {
    proto::HttpMatch {
        path: Some(string_match(Kind::PathPrefix("/".to_owned()))),
        ..proto::HttpMatch::default()
    }
}

fn string_match(kind: Kind) -> proto::StringMatch {
    proto::StringMatch {
        kind: Some(kind),
        ignore_case: false,
    }
}

/// What is wrong with an `Exact` or `PathPrefix` path, by the CRD's CEL rules.
fn path_problem(value: &str) -> Option<&'static str> {
    if !value.starts_with('/') {
        return Some("does not start with /");
    }
    for (part, problem) in [
        ("//", "contains //"),
        ("/./", "contains /./"),
        ("/../", "contains /../"),
        ("%2f", "contains %2f"),
        ("%2F", "contains %2F"),
        ("#", "contains #"),
    ] {
        if value.contains(part) {
            return Some(problem);
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Some("ends with /. or /..");
    }
    // `^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Some("has a % not followed by two hex digits");
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-/._~!$&'()*+,;=:@".contains(&b) => i += 1,
            _ => return Some("has a character a path cannot hold unescaped"),
        }
    }
    None
}

/// An HTTP token (RFC 7230), as `HTTPHeaderName` requires.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Istio's `isValidHeaderValue`: no control character but tab.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`
fn is_grpc_service(service: &str) -> bool {
    let service = service.strip_prefix('.').unwrap_or(service);
    service.split('.').all(is_grpc_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`
fn is_grpc_method(method: &str) -> bool {
    let mut bytes = method.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A Gateway API duration (GEP-2257): one to four components of one to five digits and a unit
/// (`h`, `m`, `s`, `ms`), summed.
fn parse_duration(value: &str) -> Option<u64> {
    let mut rest = value;
    let mut total = 0u64;
    let mut components = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (3_600_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b's') => (1_000, 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total += number * unit;
        components += 1;
    }
    (1..=4).contains(&components).then_some(total)
}

#[cfg(test)]
mod tests;
