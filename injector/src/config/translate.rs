//! Kubernetes objects to the parts of a sidecar's snapshot that every sidecar shares: the
//! services it can call and, for each workload address, the identity the sidecar in front of
//! it must present.
//!
//! Identity comes from the pod behind an address (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`),
//! only when that pod runs a sidecar; a pod without one gets an empty identity so callers pass
//! traffic to it in the clear, as Istio does for workloads outside the mesh. Output is sorted
//! so the same objects always give byte-identical snapshots (and the same version hash).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use remora_api::{proto::config as proto, SpiffeId};

use crate::inject::metadata;

use super::{
    cluster_ip, endpoints,
    mesh::{MeshConfig, ProxyConfig},
    objects::{Key, Labelled, Objects, Rejection},
    security::{self, SecurityPolicy},
    well_known::{
        service_account_of, service_hostname, DEFAULT_SERVICE_ACCOUNT, SIDECAR_STATUS_ANNOTATION,
    },
};
/// Port name prefixes Istio reads as protocols (`http-web`, `grpc`); Istio's
/// `protocol.Parse`, minus UDP, which the sidecar never sees.
const NAMED_PROTOCOLS: [&str; 9] = [
    "http", "http2", "https", "grpc", "tcp", "tls", "mongo", "redis", "mysql",
];

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The shared part of every snapshot, and what is known about each pod and Service.
#[derive(Debug, Default)]
pub(crate) struct Translation {
    pub(crate) pods: BTreeMap<Key, PodFacts>,
    pub(crate) services: Vec<proto::Service>,
    pub(crate) endpoints: Vec<proto::Endpoint>,
    /// The pods behind `endpoints` and the Services' endpoints.
    pub(crate) workloads: Vec<proto::Workload>,
    /// The cluster IP of every Service that has one.
    pub(crate) cluster_ips: BTreeMap<Key, IpAddr>,
}

#[derive(Debug)]
pub(crate) struct PodFacts {
    pub(crate) service_account: String,
    /// Its labels, which select the routes (`sourceLabels`) and policies it gets.
    pub(crate) labels: BTreeMap<String, String>,
    /// The pod's `proxy.istio.io/config`, when it has a valid one.
    pub(crate) proxy_config: Option<ProxyConfig>,
    /// The security policies that apply to it.
    pub(crate) security: proto::Security,
}

/// What translation needs about a running pod.
struct Workload<'a> {
    pod: Key,
    labels: &'a BTreeMap<String, String>,
    /// The workload it belongs to (its owner, as istiod derives it).
    owner: String,
    ip: IpAddr,
    /// Empty when the pod runs without a sidecar.
    identity: String,
    ports: BTreeSet<u16>,
    /// How its sidecar takes mTLS (PeerAuthentication), to tell callers which ports take none.
    peer_authentication: proto::PeerAuthentication,
}

impl Workload<'_> {
    /// The identity callers of `port` must verify; empty (send in the clear) without a
    /// sidecar, or when its PeerAuthentication is DISABLE on that port.
    fn identity_on(&self, port: u16) -> String {
        if self.identity.is_empty() || !security::takes_mtls(&self.peer_authentication, port) {
            String::new()
        } else {
            self.identity.clone()
        }
    }

    /// Its endpoint on `port`.
    fn endpoint(&self, port: u16) -> proto::Endpoint {
        proto::Endpoint {
            address: SocketAddr::new(self.ip, port).to_string(),
            identity: self.identity_on(port),
            workload: self.name(),
        }
    }

    /// `namespace/name`, as endpoints refer to its record.
    fn name(&self) -> String {
        format!("{}/{}", self.pod.0, self.pod.1)
    }

    fn record(&self) -> proto::Workload {
        proto::Workload {
            namespace: self.pod.0.clone(),
            name: self.pod.1.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            identity: self.identity.clone(),
            addresses: vec![self.ip.to_string()],
            workload_name: self.owner.clone(),
            canonical_service: metadata::canonical_service(self.labels, &self.owner),
            canonical_revision: metadata::canonical_revision(self.labels),
            app: self.labels.get("app").cloned().unwrap_or_default(),
            version: self.labels.get("version").cloned().unwrap_or_default(),
        }
    }
}

/// Translates `objects`; a Service rejected here (for a cluster IP another one holds) is
/// removed from them, so what remains is exactly what was accepted.
pub(crate) fn translate(
    objects: &mut Objects,
    mesh: &MeshConfig,
    rejected: &mut Vec<Rejection>,
) -> Translation {
    let started = std::time::Instant::now();
    let mut translation = Translation::default();
    let mut workloads = BTreeMap::new();
    let policies = PoliciesByNamespace::new(objects);
    for (key, pod) in &objects.pods {
        let facts = pod_facts(key, pod, mesh, &policies, &workloads, rejected);
        if let Some((facts, workload)) = facts {
            translation.pods.insert(key.clone(), facts);
            if let Some(workload) = workload {
                workloads.insert(workload.ip, workload);
            }
        }
    }
    let pods = started.elapsed();
    add_endpoint_slice_ports(objects, &mut workloads);
    translation.endpoints = workloads
        .values()
        .filter(|workload| !workload.identity.is_empty())
        .flat_map(|workload| workload.ports.iter().map(|port| workload.endpoint(*port)))
        .collect();
    translation.workloads = workloads.values().map(Workload::record).collect();
    let records = started.elapsed();
    let conflicting;
    (translation.services, translation.cluster_ips, conflicting) =
        services(objects, &workloads, rejected);
    drop(workloads);
    for key in conflicting {
        objects.services.remove(&key);
    }
    tracing::debug!(
        pods_ms = pods.as_millis(),
        records_ms = (records - pods).as_millis(),
        services_ms = (started.elapsed() - records).as_millis(),
        "translated"
    );
    translation
}

/// The security policies in the catalog's order, by the namespace they are in: those that may
/// apply to a pod are its own namespace's and the root namespace's, so each pod looks at only
/// these rather than at every policy in the mesh.
struct PoliciesByNamespace<'a> {
    all: Vec<&'a SecurityPolicy>,
    /// Positions in `all`, ascending.
    by_namespace: HashMap<&'a str, Vec<usize>>,
}

impl<'a> PoliciesByNamespace<'a> {
    fn new(objects: &'a Objects) -> Self {
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        let all = objects
            .security
            .iter()
            .enumerate()
            .map(|(position, ((_, (namespace, _)), policy))| {
                by_namespace.entry(namespace).or_default().push(position);
                &policy.object
            })
            .collect();
        Self { all, by_namespace }
    }

    /// The policies of `namespace` and `root`, in the catalog's order.
    fn of(&self, namespace: &str, root: &str) -> Vec<&'a SecurityPolicy> {
        let positions = |ns: &str| self.by_namespace.get(ns).map_or(&[][..], Vec::as_slice);
        let mut merged: Vec<usize> = positions(namespace).to_vec();
        if namespace != root {
            merged.extend_from_slice(positions(root));
            merged.sort_unstable();
        }
        merged
            .into_iter()
            .map(|position| self.all[position])
            .collect()
    }
}

/// Checks one pod against the mesh: its overrides, its identity, and that its IP is its own.
/// `None` rejects the pod; the inner `None` means it has no (live) IP.
fn pod_facts<'a>(
    key: &Key,
    pod: &'a Labelled<Arc<Pod>>,
    mesh: &MeshConfig,
    policies: &PoliciesByNamespace,
    workloads: &BTreeMap<IpAddr, Workload>,
    rejected: &mut Vec<Rejection>,
) -> Option<(PodFacts, Option<Workload<'a>>)> {
    let mut reject = |reason: String| rejected.push(pod.rejection("Pod", key, reason));
    let annotations = pod.object.metadata.annotations.as_ref();
    // A bad override is reported but does not stop the pod: it runs with the mesh defaults.
    let proxy_config = ProxyConfig::of_pod(annotations)
        .map_err(|e| reject(e.to_string()))
        .ok()
        .flatten();
    let spec = pod.object.spec.as_ref();
    let service_account = spec
        .map_or(DEFAULT_SERVICE_ACCOUNT, service_account_of)
        .to_owned();
    let sidecar = annotations.is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
    let identity = if sidecar {
        match SpiffeId::new(mesh.trust_domain(), &key.0, &service_account) {
            Ok(id) => id.to_string(),
            Err(e) => {
                reject(format!("no valid SPIFFE identity: {e}"));
                return None;
            }
        }
    } else {
        String::new()
    };
    let labels = pod.object.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let security = security::select(
        policies.of(&key.0, mesh.root_namespace()).into_iter(),
        &key.0,
        labels,
        mesh.root_namespace(),
    );
    let status = pod.object.status.as_ref();
    // A finished pod keeps its `podIP` after the address went to another pod.
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"));
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(|_| !finished && !host_network);
    let workload = match ip {
        Some(ip) => {
            if let Some(owner) = workloads.get(&ip) {
                let (namespace, name) = &owner.pod;
                reject(format!(
                    "status.podIP: {ip} is already the IP of Pod {namespace}/{name}"
                ));
                return None;
            }
            let ports = spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .filter(|p| is_tcp(p.protocol.as_deref()))
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .collect();
            Some(Workload {
                pod: key.clone(),
                labels,
                owner: metadata::Workload::of_pod(&pod.object, &key.0).name,
                ip,
                identity,
                ports,
                peer_authentication: security.peer_authentication.clone().unwrap_or_default(),
            })
        }
        None => None,
    };
    Some((
        PodFacts {
            service_account,
            labels: labels.clone(),
            proxy_config,
            security,
        },
        workload,
    ))
}

/// Ports a pod serves on, as its EndpointSlices list them (a container need not declare them).
fn add_endpoint_slice_ports(objects: &Objects, workloads: &mut BTreeMap<IpAddr, Workload>) {
    for slice in objects.endpoint_slices.values() {
        let slice = &slice.object;
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .filter_map(|p| p.port.and_then(|port| u16::try_from(port).ok()))
            .collect();
        for address in slice.endpoints.iter().flat_map(|e| e.addresses.iter()) {
            if let Some(workload) = address
                .parse::<IpAddr>()
                .ok()
                .and_then(|ip| workloads.get_mut(&ip))
            {
                workload.ports.extend(ports.iter().copied());
            }
        }
    }
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// Every Service with a cluster IP, sorted by hostname, its ports sorted by number, the
/// cluster IPs by Service, and the Services rejected for asking for a cluster IP an earlier
/// one holds.
fn services(
    objects: &Objects,
    workloads: &BTreeMap<IpAddr, Workload>,
    rejected: &mut Vec<Rejection>,
) -> (Vec<proto::Service>, BTreeMap<Key, IpAddr>, Vec<Key>) {
    // Headless and ExternalName Services have no cluster IP to capture.
    let mut with_ip: Vec<(&Key, &Service, Option<IpAddr>)> = Vec::new();
    let mut explicit: BTreeMap<IpAddr, &Key> = BTreeMap::new();
    let mut conflicting = Vec::new();
    for (key, service) in &objects.services {
        let spec = service.object.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let ip = match spec.and_then(|s| s.cluster_ip.as_deref()) {
            Some("None") => continue,
            None | Some("") => None,
            Some(text) => text.parse::<IpAddr>().ok(),
        };
        if let Some(ip) = ip {
            if let Some((namespace, name)) = explicit.get(&ip) {
                let reason = format!(
                    "spec.clusterIP: {ip} is already the cluster IP of Service {namespace}/{name}"
                );
                rejected.push(service.rejection("Service", key, reason));
                conflicting.push(key.clone());
                continue;
            }
            explicit.insert(ip, key);
        }
        with_ip.push((key, &service.object, ip));
    }
    let requests: Vec<(&str, &str, Option<IpAddr>)> = with_ip
        .iter()
        .map(|((namespace, name), _, ip)| (namespace.as_str(), name.as_str(), *ip))
        .collect();
    let addresses = cluster_ip::allocate(&requests);
    // Each Service's slices, found once rather than by looking at every slice per Service.
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in objects.endpoint_slices.values() {
        if let Some(service) = endpoints::service_of(&slice.object) {
            slices.entry(service).or_default().push(&slice.object);
        }
    }
    let mut services: Vec<proto::Service> = with_ip
        .into_iter()
        .filter_map(|(key, service, _)| {
            let ip = addresses.get(key)?;
            let slices = slices.get(&(key.0.as_str(), key.1.as_str()));
            let slices = slices.map_or(&[][..], Vec::as_slice);
            Some(service_entry(key, service, *ip, slices, workloads))
        })
        .collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    (services, addresses, conflicting)
}

fn service_entry(
    (namespace, name): &Key,
    service: &Service,
    ip: IpAddr,
    slices: &[&EndpointSlice],
    workloads: &BTreeMap<IpAddr, Workload>,
) -> proto::Service {
    let mut ports: Vec<proto::ServicePort> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|port| is_tcp(port.protocol.as_deref()))
        .filter_map(|port| {
            Some(proto::ServicePort {
                port: u32::try_from(port.port).ok()?,
                name: port.name.clone().unwrap_or_default(),
                app_protocol: app_protocol(port),
                endpoints: ready_endpoints(port, slices, workloads),
                ..Default::default()
            })
        })
        .collect();
    ports.sort_by_key(|port| port.port);
    proto::Service {
        hostname: service_hostname(namespace, name),
        addresses: vec![ip.to_string()],
        ports,
        passthrough: false,
        ..Default::default()
    }
}

/// `appProtocol` when set, else what Istio infers from the port name: the part before the
/// first `-`, when it names a protocol.
fn app_protocol(port: &ServicePort) -> String {
    if let Some(protocol) = port.app_protocol.as_deref().filter(|p| !p.is_empty()) {
        return protocol.to_owned();
    }
    let name = port.name.as_deref().unwrap_or_default();
    let prefix = name
        .split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if NAMED_PROTOCOLS.contains(&prefix.as_str()) {
        prefix
    } else {
        String::new()
    }
}

/// The ready `ip:port` addresses behind a Service port, each with the identity of the pod
/// behind it (none for a pod without a sidecar or not in the catalog).
fn ready_endpoints(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    workloads: &BTreeMap<IpAddr, Workload>,
) -> Vec<proto::Endpoint> {
    endpoints::ready_endpoints(port, slices.iter().copied())
        .into_iter()
        // Pod IPs are unique in the catalog (conflicts are rejected), so the IP alone finds
        // the pod behind the address.
        .map(|address| match workloads.get(&address.ip()) {
            Some(workload) => workload.endpoint(address.port()),
            None => proto::Endpoint {
                address: address.to_string(),
                ..Default::default()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_from_field_or_port_name() {
        let cases = [
            (
                Some("kubernetes.io/h2c"),
                Some("http-web"),
                "kubernetes.io/h2c",
            ),
            (Some(""), Some("grpc"), "grpc"),
            (None, Some("http"), "http"),
            (None, Some("http2-api"), "http2"),
            (None, Some("HTTPS-admin"), "https"),
            (None, Some("grpc-web"), "grpc"),
            (None, Some("tcp-db"), "tcp"),
            (None, Some("tls"), "tls"),
            (None, Some("mongo-1"), "mongo"),
            (None, Some("redis"), "redis"),
            (None, Some("mysql-primary"), "mysql"),
            (None, Some("metrics"), ""),
            (None, Some("web-http"), ""),
            (None, None, ""),
        ];
        for (field, name, expected) in cases {
            let port = ServicePort {
                app_protocol: field.map(str::to_owned),
                name: name.map(str::to_owned),
                port: 80,
                ..Default::default()
            };
            assert_eq!(app_protocol(&port), expected, "{field:?} {name:?}");
        }
    }
}
