//! A sidecar's snapshot cut into discovery resources, along the lines that let the discovery
//! server translate each part once and share it: what every sidecar gets alike (workload
//! addresses and records, each Service's endpoints), what sidecars of one view get alike (the
//! Services as routed for a namespace and the labels routing looks at), and what is the
//! sidecar's own (mesh settings, policies, telemetry).
//!
//! [`Catalog::snapshot_for`] is these resources put together as the sidecar puts them together,
//! so the two cannot drift apart.

use std::collections::BTreeMap;

use remora_api::{
    proto::config::{self as proto, resource::Body, Node},
    resources::endpoints_name,
};

use super::Catalog;
use crate::config::{mesh::ProxyConfig, routing::Routing, service_entry::ServiceEntry, telemetry};

/// What sidecars are told apart by when their Services are routed: their namespace, and the
/// labels any routing decision looks at. Sidecars with the same key see the same Services.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewKey {
    pub namespace: String,
    labels: BTreeMap<String, String>,
}

/// A sidecar's own settings: what it reads as its `proxy.istio.io/config` and its policies.
pub(super) struct Own<'a> {
    pub(super) labels: &'a BTreeMap<String, String>,
    pub(super) proxy_config: Option<&'a ProxyConfig>,
    pub(super) security: Option<proto::Security>,
}

fn resource(name: String, body: Body) -> proto::Resource {
    proto::Resource {
        name,
        body: Some(body),
    }
}

/// `service` without its ports' endpoints. Spelled out field by field, so that a field added
/// to the message must be decided on here.
fn skeleton(service: &proto::Service) -> proto::Service {
    let proto::Service {
        hostname,
        addresses,
        ports,
        passthrough,
        resolution,
    } = service;
    let ports = ports
        .iter()
        .map(|port| {
            let proto::ServicePort {
                port,
                name,
                app_protocol,
                endpoints: _,
                http_routes,
                traffic_policy,
                subsets,
                tcp_routes,
            } = port;
            proto::ServicePort {
                port: *port,
                name: name.clone(),
                app_protocol: app_protocol.clone(),
                endpoints: Vec::new(),
                http_routes: http_routes.clone(),
                traffic_policy: traffic_policy.clone(),
                subsets: subsets.clone(),
                tcp_routes: tcp_routes.clone(),
            }
        })
        .collect();
    proto::Service {
        hostname: hostname.clone(),
        addresses: addresses.clone(),
        ports,
        passthrough: *passthrough,
        resolution: resolution.clone(),
    }
}

impl Catalog {
    /// The resources every sidecar is sent alike: the workload addresses and records, and each
    /// Kubernetes Service's endpoints (which change on their own, so they travel apart from
    /// the Service).
    pub fn shared_resources(&self) -> impl Iterator<Item = proto::Resource> + '_ {
        let addresses = self
            .endpoints
            .iter()
            .map(|e| resource(format!("address/{}", e.address), Body::Address(e.clone())));
        let workloads = self.workloads.iter().map(|w| {
            resource(
                format!("workload/{}/{}", w.namespace, w.name),
                Body::Workload(w.clone()),
            )
        });
        let endpoints = self.services.iter().map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| proto::PortEndpoints {
                    port: p.port,
                    endpoints: p.endpoints.clone(),
                })
                .collect();
            resource(
                endpoints_name(&s.hostname),
                Body::Endpoints(proto::ServiceEndpoints { ports }),
            )
        });
        addresses.chain(workloads).chain(endpoints)
    }

    /// The view of a sidecar in `namespace` with `labels`.
    pub fn view_key(&self, namespace: &str, labels: &BTreeMap<String, String>) -> ViewKey {
        ViewKey {
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .filter(|(key, _)| self.routing_label_keys.contains(*key))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The view of `node`'s sidecar.
    pub fn view_of(&self, node: &Node) -> ViewKey {
        let pod = self
            .pods
            .get(&(node.namespace.clone(), node.pod_name.clone()));
        self.view_key(
            &node.namespace,
            pod.map_or(&BTreeMap::new(), |pod| &pod.labels),
        )
    }

    /// The Services the sidecars of `view` see, routed as they route them: Kubernetes Services
    /// without their endpoints (their own resource), ServiceEntries whole.
    pub fn view_services(&self, view: &ViewKey) -> Vec<proto::Service> {
        let mut services: Vec<proto::Service> = self.services.iter().map(skeleton).collect();
        services.extend(
            self.service_entries
                .iter()
                .filter(|entry| entry.visible_to(&view.namespace))
                .flat_map(ServiceEntry::services),
        );
        Routing::new(self.accepted.objects.routing.values().map(|o| &o.object)).apply(
            &mut services,
            &view.namespace,
            &view.labels,
            self.accepted.mesh.root_namespace(),
        );
        services
    }

    /// `node`'s own resources: mesh settings with its pod's `proxy.istio.io/config` applied,
    /// the policies of its workload, its telemetry.
    pub fn own_resources(&self, node: &Node) -> Vec<proto::Resource> {
        let pod = self
            .pods
            .get(&(node.namespace.clone(), node.pod_name.clone()));
        let no_labels = BTreeMap::new();
        self.own_of(
            &node.namespace,
            Own {
                labels: pod.map_or(&no_labels, |pod| &pod.labels),
                proxy_config: pod.and_then(|pod| pod.proxy_config.as_ref()),
                security: pod.map(|pod| pod.security.clone()),
            },
        )
    }

    pub(super) fn own_of(&self, namespace: &str, own: Own) -> Vec<proto::Resource> {
        let mut found = vec![resource(
            "mesh".to_owned(),
            Body::Mesh(self.mesh_settings(own.proxy_config)),
        )];
        if let Some(security) = own.security {
            found.push(resource("security".to_owned(), Body::Security(security)));
        }
        found.push(resource(
            "telemetry".to_owned(),
            Body::Telemetry(telemetry::resolve(
                self.accepted.objects.telemetry.values().map(|t| &t.object),
                namespace,
                own.labels,
                &self.accepted.mesh,
                own.proxy_config,
            )),
        ));
        found
    }

    /// Every resource of a sidecar in `namespace` with `own` settings, in name order.
    pub(super) fn resources_of(&self, namespace: &str, own: Own) -> Vec<proto::Resource> {
        let view = self.view_key(namespace, own.labels);
        let mut all: Vec<proto::Resource> = self.shared_resources().collect();
        all.extend(
            self.view_services(&view)
                .into_iter()
                .map(|s| resource(format!("service/{}", s.hostname), Body::Service(s))),
        );
        all.extend(self.own_of(namespace, own));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
