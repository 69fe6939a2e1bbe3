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
//! gives ([`precedence::Precedence`]). ReferenceGrants do not govern them: GEP-1294 lets mesh
//! routes send to backends in any namespace without one, and Istio converts routes whose parent
//! is a Service with `enforceRefGrant` off.
//!
//! Routes are read by [`route`] and grants by [`reference_grant`], both from the objects as
//! written ([`spec`]); the order of a table is [`precedence`]'s.

mod precedence;
mod reference_grant;
mod route;
mod spec;
mod syntax;

use k8s_openapi::jiff::Timestamp;
use remora_api::proto::config as proto;
use serde_json::Value;

use precedence::precedence;

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

/// Reads a Gateway API object of `kind` whose namespace and name are already known. `Err`
/// names every field that is wrong, `; `-separated.
pub(crate) fn read(
    kind: &str,
    value: Value,
    namespace: &str,
    name: &str,
) -> Result<GatewayObject, String> {
    match kind {
        "HTTPRoute" => route::http_route(value, namespace, name).map(GatewayObject::Route),
        "GRPCRoute" => route::grpc_route(value, namespace, name).map(GatewayObject::Route),
        "ReferenceGrant" => reference_grant::read(value).map(GatewayObject::Grant),
        other => Err(format!(
            "kind: {other:?} is not a Gateway API kind read here"
        )),
    }
}

#[cfg(test)]
mod tests;
