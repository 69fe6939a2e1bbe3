//! The control plane's view of the mesh at one moment: everything valid a config source holds,
//! translated once, plus what was rejected and why.
//!
//! A source (a directory in local mode, the Kubernetes API in a cluster) builds a new
//! [`Catalog`] on every change and the discovery server cuts per-sidecar snapshots from it;
//! keeping it immutable lets every stream read the same catalog without locks.
//!
//! The local launcher reads its manifests through a catalog too, and runs exactly what
//! [`Catalog::accepted`] lists, with the trust domain the control plane serves, so the two can
//! never disagree about them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use prost::Message;
use remora_api::{
    proto::config::{self as proto, Node, Snapshot},
    resources::version_of,
};

use crate::inject::Injector;

use super::encoded::WorkloadRecord;
use super::{
    accepted::Accepted,
    mesh::ProxyConfig,
    objects::{self, Document, Key, Objects, Read, Rejection},
    routing::Routing,
    security,
    service_entry::ServiceEntry,
    translate::{self, Memo, PodFacts, Translation},
};
use resources::Own;
pub(crate) use resources::SharedPart;
pub use resources::{OwnSource, ViewKey};

/// The policies a workload's sidecar enforces, and its first container port.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPolicies {
    pub mesh: proto::MeshSettings,
    pub security: proto::Security,
    pub first_port: Option<u16>,
}

/// The valid config from one read of a source, translated.
#[derive(Debug)]
pub struct Catalog {
    /// Every object or file that was not applied, and why.
    pub rejected: Vec<Rejection>,
    accepted: Accepted,
    pods: BTreeMap<Key, Arc<PodFacts>>,
    services: Vec<proto::Service>,
    endpoints: Vec<proto::Endpoint>,
    workloads: Vec<Arc<WorkloadRecord>>,
    /// What each pod's own ports declare ([`translate::Translation::inbound_ports`]).
    inbound_ports: BTreeMap<Key, Arc<[proto::InboundPort]>>,
    /// The ServiceEntries that register nothing another object holds.
    service_entries: Vec<ServiceEntry>,
    /// The label keys routing looks at ([`Routing::label_keys`]).
    routing_label_keys: BTreeSet<String>,
    /// A fingerprint of what views are made of ([`Catalog::view_inputs`]).
    view_inputs: [u8; 32],
    /// A fingerprint of what sidecars' own resources are made of besides their pods' facts
    /// ([`Catalog::own_source`]).
    own_inputs: [u8; 32],
}

impl Catalog {
    /// Builds a catalog from `(path, text)` pairs of files, split as [`Document::split`]
    /// splits them. Later duplicates of an object are rejected, so order matters.
    pub fn build(files: Vec<(String, String)>) -> Catalog {
        Self::from_documents(objects::documents_of(&files))
    }

    /// Builds a catalog from parsed documents in order (a source's rejection of what it could
    /// not parse takes its place among them). Later duplicates of an object are rejected, so
    /// order matters.
    pub fn from_documents(
        documents: impl IntoIterator<Item = Result<Document, Rejection>>,
    ) -> Catalog {
        Self::from_objects(Objects::from_documents(documents), &mut Memo::default())
    }

    /// Builds a catalog from objects already read (a source may read an unchanged object once
    /// and hand it over on every rebuild), in order, as [`Catalog::from_documents`] does;
    /// `memo` keeps what translating each pod gave, for the next build to reuse.
    pub(crate) fn from_reads(reads: impl IntoIterator<Item = Read>, memo: &mut Memo) -> Catalog {
        let started = std::time::Instant::now();
        let objects = Objects::from_reads(reads);
        tracing::debug!(took_ms = started.elapsed().as_millis(), "objects kept");
        Self::from_objects(objects, memo)
    }

    fn from_objects(
        (mut objects, mut rejected): (Objects, Vec<Rejection>),
        memo: &mut Memo,
    ) -> Catalog {
        let mesh = objects.mesh.take().unwrap_or_default();
        let (values, policy) = objects.injection.take().unwrap_or_default();
        let injector = Injector::with_mesh(values, mesh.clone()).with_policy(policy);
        let started = std::time::Instant::now();
        let translation = translate::translate(&mut objects, &mesh, memo, &mut rejected);
        let translated = started.elapsed();
        let routing = Routing::new(objects.routing.values().map(|o| &o.object));
        let routing_label_keys = routing.label_keys();
        for (namespace, name, reason) in routing.overridden(&translation.services) {
            let key = (namespace, name);
            if let Some(object) = objects.routing.get(&("VirtualService", key.clone())) {
                rejected.push(object.rejection("VirtualService", &key, reason));
            }
        }
        let service_entries = service_entries(&objects, &translation, &mut rejected);
        objects.telemetry.retain(
            |key, telemetry| match telemetry.object.check_providers(&mesh) {
                Ok(()) => true,
                Err(reason) => {
                    rejected.push(telemetry.rejection("Telemetry", key, reason));
                    false
                }
            },
        );
        let mut catalog = Catalog {
            rejected,
            accepted: Accepted {
                objects,
                mesh,
                cluster_ips: translation.cluster_ips,
                injector,
            },
            pods: translation.pods,
            services: translation.services,
            endpoints: translation.endpoints,
            workloads: translation.workloads,
            inbound_ports: translation.inbound_ports,
            service_entries,
            routing_label_keys,
            view_inputs: [0; 32],
            own_inputs: [0; 32],
        };
        catalog.view_inputs = catalog.fingerprint_views();
        catalog.own_inputs = catalog.fingerprint_own();
        tracing::debug!(
            translate_ms = translated.as_millis(),
            rest_ms = (started.elapsed() - translated).as_millis(),
            "catalog built"
        );
        catalog
    }

    /// The snapshot for the sidecar of `node`: its resources put together, as the sidecar puts
    /// them together. `version` is left empty.
    pub fn snapshot_for(&self, node: &Node) -> Snapshot {
        self.snapshot_of(&node.namespace, self.own(node))
    }

    /// The version of [`Self::snapshot_for`]`(node)` as the discovery server gives it (before
    /// keys fetched for `jwksUri`s are filled in).
    pub fn version_for(&self, node: &Node) -> String {
        let resources = self.resources_of(&node.namespace, self.own(node));
        let encoded: Vec<Vec<u8>> = resources.iter().map(Message::encode_to_vec).collect();
        version_of(encoded.iter().map(Vec::as_slice))
    }

    fn snapshot_of(&self, namespace: &str, own: Own) -> Snapshot {
        // The catalog's own resources always make a snapshot (each is named for its content,
        // and endpoints come with their Service); were that ever broken, say so loudly.
        remora_api::resources::assemble(self.resources_of(namespace, own).into_iter().map(Ok))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, namespace, "the catalog's resources make no snapshot");
                Snapshot::default()
            })
    }

    /// The mesh settings a sidecar with `proxy_config` overrides receives, with the cluster
    /// id injection gives every sidecar (`global.multiCluster.clusterName`).
    fn mesh_settings(&self, proxy_config: Option<&ProxyConfig>) -> proto::MeshSettings {
        let mut settings = self.accepted.mesh.settings(proxy_config);
        settings.cluster_id = self
            .accepted
            .injector
            .values()
            .global
            .multi_cluster
            .cluster_name
            .clone();
        settings
    }

    /// The metadata and spec of workload `namespace/name`: a Pod the catalog knows, else a
    /// Deployment whose pod template stands for its pods.
    fn pod_template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Option<&ObjectMeta>, Option<&PodSpec>)> {
        let key = (namespace.to_owned(), name.to_owned());
        let objects = &self.accepted.objects;
        if let Some(pod) = objects.pods.get(&key) {
            return Some((Some(&pod.object.metadata), pod.object.spec.as_ref()));
        }
        let template = &objects
            .deployments
            .get(&key)?
            .object
            .spec
            .as_ref()?
            .template;
        Some((template.metadata.as_ref(), template.spec.as_ref()))
    }

    /// The snapshot the sidecar of workload `namespace/name` (a Pod, or a Deployment's pods)
    /// receives, for `remoractl route check`.
    pub fn workload_snapshot(&self, namespace: &str, name: &str) -> Option<Snapshot> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(pod) = self.pods.get(&key) {
            return Some(self.snapshot_of(
                namespace,
                Own {
                    labels: &pod.labels,
                    proxy_config: pod.proxy_config.as_ref(),
                    security: Some(pod.security.clone()),
                    inbound_ports: self.inbound_ports.get(&key).cloned(),
                },
            ));
        }
        let (metadata, _) = self.pod_template(namespace, name)?;
        let (labels, proxy_config) = template_facts(metadata);
        Some(self.snapshot_of(
            namespace,
            Own {
                labels: &labels,
                proxy_config: proxy_config.as_ref(),
                security: None,
                inbound_ports: None,
            },
        ))
    }

    /// What the sidecar of workload `namespace/name` enforces, for `remoractl authz check`: a
    /// Pod the catalog knows, else a Deployment whose pod template stands for its pods (its
    /// labels select the policies, its `proxy.istio.io/config` adjusts the mesh settings).
    pub fn workload(&self, namespace: &str, name: &str) -> Option<WorkloadPolicies> {
        let (metadata, spec) = self.pod_template(namespace, name)?;
        let objects = &self.accepted.objects;
        let (labels, proxy_config) = template_facts(metadata);
        Some(WorkloadPolicies {
            mesh: self.mesh_settings(proxy_config.as_ref()),
            security: security::select(
                objects.security.values().map(|policy| &policy.object),
                namespace,
                &labels,
                self.accepted.mesh.root_namespace(),
            ),
            first_port: spec
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|p| u16::try_from(p.container_port).ok()),
        })
    }

    /// Every `jwksUri` the policies of a known pod name, for the control plane to fetch.
    pub fn jwks_uris(&self) -> BTreeSet<String> {
        self.pods
            .values()
            .flat_map(|pod| pod.security.request_authentications.iter())
            .flat_map(|policy| policy.jwt_rules.iter())
            .filter(|rule| !rule.jwks_uri.is_empty())
            .map(|rule| rule.jwks_uri.clone())
            .collect()
    }

    /// A rejection that may be why object `kind` `namespace/name`, last read from file
    /// `origin`, is missing: its own, or that of a document of that file whose objects could
    /// not be told apart.
    pub fn rejection_of(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        origin: &str,
    ) -> Option<&Rejection> {
        self.rejected
            .iter()
            .find(|r| r.may_concern(kind, namespace, name, origin))
    }

    /// The accepted objects, for whoever runs what the control plane admitted.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// The mesh's trust domain (`trustDomain`), which the CA signs identities in.
    pub fn trust_domain(&self) -> &str {
        self.accepted.mesh.trust_domain()
    }

    /// The service account a pod runs as (`default` when its spec names none), or `None` for
    /// a pod the catalog does not know.
    pub fn pod_service_account(&self, namespace: &str, pod_name: &str) -> Option<&str> {
        self.pods
            .get(&(namespace.to_owned(), pod_name.to_owned()))
            .map(|pod| pod.service_account.as_str())
    }
}

/// The labels and `proxy.istio.io/config` a pod (template) with `metadata` has (a bad override
/// counts as none, as for running pods).
fn template_facts(
    metadata: Option<&ObjectMeta>,
) -> (BTreeMap<String, String>, Option<ProxyConfig>) {
    let labels = metadata.and_then(|m| m.labels.clone()).unwrap_or_default();
    let proxy_config = ProxyConfig::of_pod(metadata.and_then(|m| m.annotations.as_ref()))
        .ok()
        .flatten();
    (labels, proxy_config)
}

/// The ServiceEntries to serve: each, in order, unless one of its hosts is a Service's (or an
/// earlier entry's) hostname, or one of its `address:port`s is already a cluster IP, a pod
/// endpoint or an earlier entry's, which would make the snapshot ambiguous. Those are rejected.
fn service_entries(
    objects: &Objects,
    translation: &Translation,
    rejected: &mut Vec<Rejection>,
) -> Vec<ServiceEntry> {
    let mut hosts: BTreeSet<String> = translation
        .services
        .iter()
        .map(|s| s.hostname.clone())
        .collect();
    let mut addresses: BTreeSet<String> = translation
        .services
        .iter()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flat_map(move |ip| s.ports.iter().map(move |p| socket(ip, p.port)))
        })
        .chain(translation.endpoints.iter().map(|e| e.address.clone()))
        .collect();
    let mut kept = Vec::new();
    for (key, entry) in &objects.service_entries {
        let services: Vec<proto::Service> = entry.object.services().collect();
        let taken_host = services.iter().find(|s| hosts.contains(&s.hostname));
        let entry_addresses: Vec<String> = services
            .iter()
            .take(1)
            .flat_map(|s| {
                s.addresses
                    .iter()
                    .flat_map(move |ip| s.ports.iter().map(move |p| socket(ip, p.port)))
            })
            .collect();
        let taken_address = entry_addresses.iter().find(|a| addresses.contains(*a));
        let reason = match (taken_host, taken_address) {
            (Some(service), _) => Some(format!(
                "spec.hosts: {} is already registered (a Service's or an earlier ServiceEntry's)",
                service.hostname
            )),
            (None, Some(address)) => Some(format!(
                "spec.addresses: {address} is already a Service's, a pod's or an earlier ServiceEntry's"
            )),
            (None, None) => None,
        };
        if let Some(reason) = reason {
            rejected.push(entry.rejection("ServiceEntry", key, reason));
            continue;
        }
        hosts.extend(services.iter().map(|s| s.hostname.clone()));
        addresses.extend(entry_addresses);
        kept.push(entry.object.clone());
    }
    kept
}

/// `ip:port` as endpoints spell it.
fn socket(ip: &str, port: u32) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, u16::try_from(port).unwrap_or(0)).to_string(),
        Err(_) => format!("{ip}:{port}"),
    }
}

mod resources;
#[cfg(test)]
mod tests;
