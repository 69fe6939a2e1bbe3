//! A sidecar's snapshot cut into discovery resources, along the lines that let the discovery
//! server translate each part once and share it: what every sidecar gets alike (workload
//! addresses and records, each Service's endpoints), what sidecars of one view get alike (the
//! Services as routed for a namespace and the labels routing looks at), and what is the
//! sidecar's own (mesh settings, policies, telemetry).
//!
//! [`Catalog::snapshot_for`] is these resources put together as the sidecar puts them together,
//! so the two cannot drift apart.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use remora_api::{
    proto::config::{self as proto, resource::Body, Node},
    resources::endpoints_name,
};

use super::Catalog;
use crate::config::{
    encoded::WorkloadRecord,
    mesh::ProxyConfig,
    routing::{split_hostname, Routing},
    scope::{self, Scope},
    telemetry,
    translate::PodFacts,
};

/// What sidecars are told apart by when their Services are chosen and routed: their
/// namespace, the labels any routing decision looks at, and the `Sidecar` that scopes them.
/// Sidecars with the same key see the same Services.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewKey {
    pub namespace: String,
    labels: BTreeMap<String, String>,
    scope: Option<(String, String)>,
}

/// A shared resource as the catalog hands it over.
pub(crate) enum SharedPart<'a> {
    Made(Box<proto::Resource>),
    Workload(&'a WorkloadRecord),
}

/// What a sidecar's own resources are made of ([`Catalog::own_source`]).
#[derive(Clone)]
pub struct OwnSource {
    /// Its pod's facts: the same `Arc` while the pod and its context are unchanged.
    facts: Option<Arc<PodFacts>>,
    /// What its ports declare, from the Services in front of it.
    inbound_ports: Option<Arc<[proto::InboundPort]>>,
    inputs: [u8; 32],
}

impl PartialEq for OwnSource {
    fn eq(&self, other: &Self) -> bool {
        let same_facts = match (&self.facts, &other.facts) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_facts && self.inbound_ports == other.inbound_ports && self.inputs == other.inputs
    }
}

pub(super) struct Own<'a> {
    pub(super) labels: &'a BTreeMap<String, String>,
    pub(super) proxy_config: Option<&'a ProxyConfig>,
    pub(super) security: Option<proto::Security>,
    pub(super) inbound_ports: Option<Arc<[proto::InboundPort]>>,
}

fn resource(name: String, body: Body) -> proto::Resource {
    proto::Resource {
        name,
        body: Some(body),
    }
}

/// The annotation that limits where a Kubernetes Service is visible.
const EXPORT_TO: &str = "networking.istio.io/exportTo";

/// The hosts `service`'s routes send or mirror to.
fn destinations(service: &proto::Service) -> impl Iterator<Item = String> + '_ {
    service.ports.iter().flat_map(|port| {
        let http = port.http_routes.iter().flat_map(|route| {
            let backends = route.backends.iter().map(|b| b.host.clone());
            backends.chain(route.mirrors.iter().map(|m| m.host.clone()))
        });
        let tcp = port
            .tcp_routes
            .iter()
            .flat_map(|route| route.backends.iter().map(|b| b.host.clone()));
        http.chain(tcp)
    })
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
        self.shared_parts().map(|part| match part {
            SharedPart::Made(resource) => *resource,
            SharedPart::Workload(workload) => workload.resource(),
        })
    }

    /// [`Catalog::shared_resources`], the workload records as translation made and encoded
    /// them (once per pod, not once per build).
    pub(crate) fn shared_parts(&self) -> impl Iterator<Item = SharedPart<'_>> + '_ {
        let addresses = self.endpoints.iter().map(|e| {
            let address = resource(format!("address/{}", e.address), Body::Address(e.clone()));
            SharedPart::Made(Box::new(address))
        });
        let workloads = self
            .workloads
            .iter()
            .map(|workload| SharedPart::Workload(workload));
        let endpoints = self.services.iter().map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| proto::PortEndpoints {
                    port: p.port,
                    endpoints: p.endpoints.clone(),
                })
                .collect();
            SharedPart::Made(Box::new(resource(
                endpoints_name(&s.hostname),
                Body::Endpoints(proto::ServiceEndpoints { ports }),
            )))
        });
        addresses.chain(workloads).chain(endpoints)
    }

    /// A fingerprint of everything views are made of: two catalogs with the same one cut the
    /// same views, so a change that leaves it alone (an endpoint moving) keeps them whole.
    pub fn view_inputs(&self) -> [u8; 32] {
        self.view_inputs
    }

    /// The Services without their endpoints, the ServiceEntries, the routing objects, the
    /// Sidecars, the Services' `exportTo` and the root namespace, hashed with SHA-256 (views
    /// kept on a collision would be stale, so no weaker hash). Objects are hashed by their
    /// `Debug` form, which shows every field: two that differ never hash alike, and at worst
    /// two alike hash apart, which only costs a rebuild.
    pub(super) fn fingerprint_views(&self) -> [u8; 32] {
        use std::fmt::Write;
        let mut text = String::new();
        let objects = &self.accepted.objects;
        for service in &self.services {
            let _ = write!(text, "{:?}", skeleton(service));
        }
        for (key, service) in &objects.services {
            let export = service
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EXPORT_TO));
            let _ = write!(text, "{key:?}{export:?}");
        }
        let _ = write!(
            text,
            "{:?}{:?}{:?}{}",
            self.service_entries,
            objects
                .routing
                .values()
                .map(|o| &o.object)
                .collect::<Vec<_>>(),
            objects
                .scopes
                .values()
                .map(|o| &o.object)
                .collect::<Vec<_>>(),
            self.accepted.mesh.root_namespace(),
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        fingerprint
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
            scope: self.scope_of(namespace, labels).map(Scope::key),
        }
    }

    /// The `Sidecar` that applies to a pod in `namespace` with `labels`.
    fn scope_of(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<&Scope> {
        scope::select(
            self.accepted.objects.scopes.values().map(|s| &s.object),
            namespace,
            labels,
            self.accepted.mesh.root_namespace(),
        )
    }

    /// Whether Kubernetes Service `hostname` is exported to `namespace` (its
    /// `networking.istio.io/exportTo` annotation: `*`, `.`, `~` or namespace names,
    /// comma-separated; none: everywhere).
    fn exported(&self, hostname: &str, namespace: &str) -> bool {
        let (own, name) = split_hostname(hostname);
        let annotation = self
            .accepted
            .objects
            .services
            .get(&(own.to_owned(), name.to_owned()))
            .and_then(|s| s.object.metadata.annotations.as_ref())
            .and_then(|a| a.get(EXPORT_TO))
            // Istio reads an empty annotation as none.
            .filter(|to| !to.trim().is_empty());
        annotation.is_none_or(|to| {
            to.split(',').map(str::trim).any(|target| {
                target == "*" || target == namespace || (target == "." && own == namespace)
            })
        })
    }

    /// The view of `node`'s sidecar.
    pub fn view_of(&self, node: &Node) -> ViewKey {
        self.view_key(&node.namespace, self.own(node).labels)
    }

    /// The Services the sidecars of `view` see, routed as they route them: Kubernetes Services
    /// without their endpoints (their own resource), ServiceEntries whole.
    ///
    /// Every Service exported to the view's namespace is routed, then a `Sidecar` keeps those
    /// its egress hosts name and those they route or mirror to.
    pub fn view_services(&self, view: &ViewKey) -> Vec<proto::Service> {
        let mut services: Vec<proto::Service> = self
            .services
            .iter()
            .filter(|s| self.exported(&s.hostname, &view.namespace))
            .map(skeleton)
            .collect();
        let mut entry_namespaces = BTreeMap::new();
        for entry in self
            .service_entries
            .iter()
            .filter(|entry| entry.visible_to(&view.namespace))
        {
            for service in entry.services() {
                entry_namespaces.insert(service.hostname.clone(), entry.namespace());
                services.push(service);
            }
        }
        Routing::new(self.accepted.objects.routing.values().map(|o| &o.object)).apply(
            &mut services,
            &view.namespace,
            &view.labels,
            self.accepted.mesh.root_namespace(),
        );
        let scope = view
            .scope
            .as_ref()
            .and_then(|key| self.accepted.objects.scopes.get(key));
        if let Some(scope) = scope {
            let mut kept: BTreeSet<String> = services
                .iter()
                .filter(|s| {
                    // A ServiceEntry's host is in the entry's namespace.
                    let namespace = entry_namespaces
                        .get(&s.hostname)
                        .copied()
                        .unwrap_or_else(|| split_hostname(&s.hostname).0);
                    scope
                        .object
                        .includes(&view.namespace, namespace, &s.hostname)
                })
                .map(|s| s.hostname.clone())
                .collect();
            let destinations: Vec<String> = services
                .iter()
                .filter(|s| kept.contains(&s.hostname))
                .flat_map(destinations)
                .collect();
            kept.extend(destinations);
            services.retain(|s| kept.contains(&s.hostname));
        }
        services
    }

    /// `node`'s own resources: mesh settings with its pod's `proxy.istio.io/config` applied,
    /// the policies of its workload, its telemetry, what its ports declare.
    pub fn own_resources(&self, node: &Node) -> Vec<proto::Resource> {
        self.own_of(&node.namespace, self.own(node))
    }

    /// What [`Catalog::own_resources`]`(node)` is made of: equal in two catalogs, it is the
    /// same in both, so a sidecar's session need not make and encode it again.
    pub fn own_source(&self, node: &Node) -> OwnSource {
        let key = (node.namespace.clone(), node.pod_name.clone());
        OwnSource {
            facts: self.pods.get(&key).cloned(),
            inbound_ports: self.inbound_ports.get(&key).cloned(),
            inputs: self.own_inputs,
        }
    }

    /// The mesh config, the injection values, the Telemetry resources and the Sidecars,
    /// hashed with SHA-256: with a pod's facts, what its own resources are made of.
    pub(super) fn fingerprint_own(&self) -> [u8; 32] {
        let objects = &self.accepted.objects;
        let telemetry: Vec<_> = objects.telemetry.values().map(|t| &t.object).collect();
        let scopes: Vec<_> = objects.scopes.values().map(|s| &s.object).collect();
        let text = format!(
            "{:?}{:?}{telemetry:?}{scopes:?}",
            self.accepted.mesh,
            self.accepted.injector.values()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        fingerprint
    }

    /// What `node`'s pod says about its sidecar (nothing, for a pod not known yet).
    pub(super) fn own(&self, node: &Node) -> Own<'_> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let key = (node.namespace.clone(), node.pod_name.clone());
        let pod = self.pods.get(&key);
        Own {
            labels: pod.map_or(&NO_LABELS, |pod| &pod.labels),
            proxy_config: pod.and_then(|pod| pod.proxy_config.as_ref()),
            security: pod.map(|pod| pod.security.clone()),
            inbound_ports: self.inbound_ports.get(&key).cloned(),
        }
    }

    pub(super) fn own_of(&self, namespace: &str, own: Own) -> Vec<proto::Resource> {
        let mut mesh = self.mesh_settings(own.proxy_config);
        if let Some(policy) = self
            .scope_of(namespace, own.labels)
            .and_then(|s| s.outbound_policy.clone())
        {
            mesh.outbound_traffic_policy = policy;
        }
        let mut found = vec![resource("mesh".to_owned(), Body::Mesh(mesh))];
        if let Some(security) = own.security {
            found.push(resource("security".to_owned(), Body::Security(security)));
        }
        if let Some(ports) = own.inbound_ports {
            let ports = ports.to_vec();
            let inbound = proto::InboundPorts { ports };
            found.push(resource("inbound".to_owned(), Body::Inbound(inbound)));
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
        let services = self.view_services(&view);
        let seen: BTreeSet<String> = services
            .iter()
            .map(|s| endpoints_name(&s.hostname))
            .collect();
        // The endpoints of the Services in view only, as the discovery server sends them.
        let mut all: Vec<proto::Resource> = self
            .shared_resources()
            .filter(|r| !r.name.starts_with("endpoints/") || seen.contains(&r.name))
            .collect();
        all.extend(
            services
                .into_iter()
                .map(|s| resource(format!("service/{}", s.hostname), Body::Service(s))),
        );
        all.extend(self.own_of(namespace, own));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
