//! Traffic management: Gateway API `HTTPRoute`/`GRPCRoute` (GAMMA, [`gateway`]) and Istio
//! `VirtualService`/`DestinationRule` ([`istio`]), read and checked per object, then
//! translated per client sidecar into the route table and destination policy of every Service
//! port in its snapshot.
//!
//! Tables depend on the client (consumer routes, `exportTo`, `sourceLabels`,
//! `sourceNamespace`), so they are computed when a sidecar's snapshot is cut, from the objects
//! kept here. When an HTTPRoute and a VirtualService both route a Service port, the HTTPRoute
//! wins (as Istio does for GAMMA routes), and the catalog reports the VirtualService as not
//! applied there.

pub(crate) mod gateway;
pub(crate) mod istio;

use std::collections::{BTreeMap, BTreeSet};

use remora_api::proto::config as proto;
use serde_json::Value;

use gateway::GatewayObject;
use istio::{Client, IstioObject};

/// A traffic management object as kept.
#[derive(Debug, Clone)]
pub(crate) enum RoutingObject {
    Gateway(GatewayObject),
    Istio(IstioObject),
}

/// The kind name, when `api_version`/`kind` is a traffic management kind read here.
pub(crate) fn routing_kind(api_version: &str, kind: &str) -> Option<&'static str> {
    let known = [
        "HTTPRoute",
        "GRPCRoute",
        "ReferenceGrant",
        "VirtualService",
        "DestinationRule",
    ];
    let name = known.into_iter().find(|k| *k == kind)?;
    (gateway::is_gateway_kind(api_version, kind) || istio::is_istio_kind(api_version, kind))
        .then_some(name)
}

/// Reads an object of a kind [`routing_kind`] named; `Err` names the fields at fault.
pub(crate) fn read(
    kind: &str,
    value: Value,
    namespace: &str,
    name: &str,
) -> Result<RoutingObject, String> {
    match kind {
        "VirtualService" | "DestinationRule" => {
            istio::read(kind, value, namespace, name).map(RoutingObject::Istio)
        }
        _ => gateway::read(kind, value, namespace, name).map(RoutingObject::Gateway),
    }
}

/// The objects, sorted by kind.
#[derive(Default)]
pub(crate) struct Routing<'o> {
    routes: Vec<&'o gateway::Route>,
    grants: Vec<&'o gateway::ReferenceGrant>,
    virtual_services: Vec<&'o istio::VirtualService>,
    destination_rules: Vec<&'o istio::DestinationRule>,
}

impl<'o> Routing<'o> {
    pub(crate) fn new(objects: impl IntoIterator<Item = &'o RoutingObject>) -> Self {
        let mut routing = Self::default();
        for object in objects {
            match object {
                RoutingObject::Gateway(GatewayObject::Route(route)) => routing.routes.push(route),
                RoutingObject::Gateway(GatewayObject::Grant(grant)) => routing.grants.push(grant),
                RoutingObject::Istio(IstioObject::VirtualService(vs)) => {
                    routing.virtual_services.push(vs)
                }
                RoutingObject::Istio(IstioObject::DestinationRule(dr)) => {
                    routing.destination_rules.push(dr)
                }
            }
        }
        routing
    }

    /// The label keys any routing decision for a client looks at (`sourceLabels`, a
    /// DestinationRule's `workloadSelector`): clients whose labels agree on these, in one
    /// namespace, are routed alike.
    pub(crate) fn label_keys(&self) -> BTreeSet<String> {
        let vs = self.virtual_services.iter().flat_map(|vs| vs.label_keys());
        let dr = self.destination_rules.iter().flat_map(|dr| dr.label_keys());
        vs.chain(dr).map(str::to_owned).collect()
    }

    /// Fills every port of `services` with the routes and policies a sidecar in `namespace`
    /// with `labels` uses; `root_namespace` is the mesh's (its DestinationRules apply to all).
    pub(crate) fn apply(
        &self,
        services: &mut [proto::Service],
        namespace: &str,
        labels: &BTreeMap<String, String>,
        root_namespace: &str,
    ) {
        let client = Client {
            namespace,
            labels,
            root_namespace,
        };
        let ports_of = |host: &str| {
            services.iter().find(|s| s.hostname == host).map(|s| {
                s.ports
                    .iter()
                    .filter_map(|p| u16::try_from(p.port).ok())
                    .collect()
            })
        };
        let mut filled = Vec::with_capacity(services.len());
        for service in services.iter() {
            let (service_namespace, service_name) = split_hostname(&service.hostname);
            let ports: Vec<_> = service
                .ports
                .iter()
                .map(|port| {
                    let Ok(number) = u16::try_from(port.port) else {
                        return (Vec::new(), None, Vec::new(), Vec::new());
                    };
                    let routes = gateway::table(
                        &self.routes,
                        &self.grants,
                        service_namespace,
                        service_name,
                        number,
                        namespace,
                    )
                    .or_else(|| {
                        istio::http_table(
                            &self.virtual_services,
                            &service.hostname,
                            number,
                            &client,
                            &ports_of,
                        )
                    })
                    .unwrap_or_default();
                    let (policy, subsets) = istio::destination_policy(
                        &self.destination_rules,
                        &service.hostname,
                        number,
                        &client,
                    );
                    let tcp = istio::tcp_table(
                        &self.virtual_services,
                        &service.hostname,
                        number,
                        &client,
                    )
                    .unwrap_or_default();
                    (routes, policy, subsets, tcp)
                })
                .collect();
            filled.push(ports);
        }
        for (service, ports) in services.iter_mut().zip(filled) {
            for (port, (routes, policy, subsets, tcp)) in service.ports.iter_mut().zip(ports) {
                port.http_routes = routes;
                port.traffic_policy = policy;
                port.subsets = subsets;
                port.tcp_routes = tcp;
            }
        }
    }

    /// For each VirtualService, the Service ports it would route that an HTTPRoute routes
    /// instead, as `(virtual service namespace, name, reason)`.
    pub(crate) fn overridden(&self, services: &[proto::Service]) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        for vs in &self.virtual_services {
            for service in services.iter().filter(|s| vs.hosts().contains(&s.hostname)) {
                let (namespace, name) = split_hostname(&service.hostname);
                let attached: Vec<&str> = self
                    .routes
                    .iter()
                    .filter(|route| route.parents().any(|(ns, n)| ns == namespace && n == name))
                    .map(|route| route.name())
                    .collect();
                if !attached.is_empty() {
                    found.push((
                        vs.namespace().to_owned(),
                        vs.name().to_owned(),
                        format!(
                            "not applied to {}: HTTPRoute {} routes it, and an HTTPRoute wins over a VirtualService",
                            service.hostname,
                            attached.join(", ")
                        ),
                    ));
                }
            }
        }
        found
    }
}

/// `(namespace, name)` of a Service hostname `name.namespace.svc.<domain>`.
pub(crate) fn split_hostname(hostname: &str) -> (&str, &str) {
    let mut parts = hostname.splitn(3, '.');
    let name = parts.next().unwrap_or_default();
    let namespace = parts.next().unwrap_or_default();
    (namespace, name)
}
