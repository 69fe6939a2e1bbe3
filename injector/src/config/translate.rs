//! Kubernetes objects to the parts of a sidecar's snapshot that every sidecar shares: the
//! services it can call and, for each workload address, the identity the sidecar in front of
//! it must present.
//!
//! Identity comes from the pod behind an address (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`),
//! only when that pod runs a sidecar; a pod without one gets an empty identity so callers pass
//! traffic to it in the clear, as Istio does for workloads outside the mesh. Output is sorted
//! so the same objects always give byte-identical snapshots (and the same version hash).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use remora_api::{proto::config as proto, SpiffeId};

use super::{
    cluster_ip,
    mesh::{MeshConfig, ProxyConfig},
    objects::{Key, Labelled, Objects, Rejection},
};

/// Set by the injector (or the local launcher) on every pod that got a sidecar.
const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// A pod's `ProxyConfig` overrides.
const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Service hostnames use the Kubernetes DNS domain, whatever the trust domain is.
const DNS_DOMAIN: &str = "svc.cluster.local";
/// Port name prefixes Istio reads as protocols (`http-web`, `grpc`); Istio's
/// `protocol.Parse`, minus UDP, which the sidecar never sees.
const NAMED_PROTOCOLS: [&str; 9] = [
    "http", "http2", "https", "grpc", "tcp", "tls", "mongo", "redis", "mysql",
];

/// The shared part of every snapshot, and what is known about each pod.
#[derive(Debug, Default)]
pub(crate) struct Translation {
    pub(crate) pods: BTreeMap<Key, PodFacts>,
    pub(crate) services: Vec<proto::Service>,
    pub(crate) endpoints: Vec<proto::Endpoint>,
}

#[derive(Debug)]
pub(crate) struct PodFacts {
    pub(crate) service_account: String,
    /// The pod's `proxy.istio.io/config`, when it has a valid one.
    pub(crate) proxy_config: Option<ProxyConfig>,
}

/// What translation needs about a running pod.
struct Workload {
    pod: Key,
    ip: IpAddr,
    /// Empty when the pod runs without a sidecar.
    identity: String,
    ports: BTreeSet<u16>,
}

pub(crate) fn translate(
    objects: &Objects,
    mesh: &MeshConfig,
    rejected: &mut Vec<Rejection>,
) -> Translation {
    let mut translation = Translation::default();
    let mut workloads = BTreeMap::new();
    for (key, pod) in &objects.pods {
        if let Some((facts, workload)) = pod_facts(key, pod, mesh, &workloads, rejected) {
            translation.pods.insert(key.clone(), facts);
            if let Some(workload) = workload {
                workloads.insert(workload.ip, workload);
            }
        }
    }
    add_endpoint_slice_ports(objects, &mut workloads);
    translation.endpoints = workloads
        .values()
        .filter(|workload| !workload.identity.is_empty())
        .flat_map(|workload| {
            workload.ports.iter().map(|port| proto::Endpoint {
                address: SocketAddr::new(workload.ip, *port).to_string(),
                identity: workload.identity.clone(),
            })
        })
        .collect();
    translation.services = services(objects, &workloads, rejected);
    translation
}

/// Checks one pod against the mesh: its overrides, its identity, and that its IP is its own.
/// `None` rejects the pod; the inner `None` means it has no (live) IP.
fn pod_facts(
    key: &Key,
    pod: &Labelled<Pod>,
    mesh: &MeshConfig,
    workloads: &BTreeMap<IpAddr, Workload>,
    rejected: &mut Vec<Rejection>,
) -> Option<(PodFacts, Option<Workload>)> {
    let mut reject = |reason: String| {
        rejected.push(Rejection {
            object: pod.label.clone(),
            reason,
        })
    };
    let annotations = pod.object.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    // A bad override is reported but does not stop the pod: it runs with the mesh defaults.
    let proxy_config = annotation(PROXY_CONFIG).and_then(|text| {
        ProxyConfig::from_annotation(text)
            .map_err(|e| reject(format!("metadata.annotations[{PROXY_CONFIG}]: {e}")))
            .ok()
    });
    let spec = pod.object.spec.as_ref();
    let service_account = spec
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default")
        .to_owned();
    let identity = if annotation(SIDECAR_STATUS).is_some() {
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
                ip,
                identity,
                ports,
            })
        }
        None => None,
    };
    Some((
        PodFacts {
            service_account,
            proxy_config,
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

/// Every Service with a cluster IP, sorted by hostname, its ports sorted by number.
fn services(
    objects: &Objects,
    workloads: &BTreeMap<IpAddr, Workload>,
    rejected: &mut Vec<Rejection>,
) -> Vec<proto::Service> {
    // Headless and ExternalName Services have no cluster IP to capture.
    let mut with_ip: Vec<(&Key, &Labelled<Service>, Option<IpAddr>)> = Vec::new();
    let mut explicit: BTreeMap<IpAddr, &Key> = BTreeMap::new();
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
                rejected.push(Rejection {
                    object: service.label.clone(),
                    reason: format!(
                        "spec.clusterIP: {ip} is already the cluster IP of Service {namespace}/{name}"
                    ),
                });
                continue;
            }
            explicit.insert(ip, key);
        }
        with_ip.push((key, service, ip));
    }
    let requests: Vec<(&str, &str, Option<IpAddr>)> = with_ip
        .iter()
        .map(|((namespace, name), _, ip)| (namespace.as_str(), name.as_str(), *ip))
        .collect();
    let addresses = cluster_ip::allocate(&requests);
    let mut services: Vec<proto::Service> = with_ip
        .into_iter()
        .filter_map(|(key, service, _)| {
            let ip = addresses.get(key)?;
            Some(service_entry(key, &service.object, *ip, objects, workloads))
        })
        .collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    services
}

fn service_entry(
    (namespace, name): &Key,
    service: &Service,
    ip: IpAddr,
    objects: &Objects,
    workloads: &BTreeMap<IpAddr, Workload>,
) -> proto::Service {
    let slices: Vec<&EndpointSlice> = objects
        .endpoint_slices
        .iter()
        .filter(|((slice_namespace, _), slice)| {
            slice_namespace == namespace
                && slice
                    .object
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
                    == Some(name)
        })
        .map(|(_, slice)| &slice.object)
        .collect();
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
                endpoints: ready_endpoints(port, &slices, workloads),
            })
        })
        .collect();
    ports.sort_by_key(|port| port.port);
    proto::Service {
        hostname: format!("{name}.{namespace}.{DNS_DOMAIN}"),
        addresses: vec![ip.to_string()],
        ports,
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

/// The ready `ip:port` addresses behind a Service port, matched to the EndpointSlice port of
/// the same name (or the slice's only port when the Service port is unnamed).
fn ready_endpoints(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    workloads: &BTreeMap<IpAddr, Workload>,
) -> Vec<proto::Endpoint> {
    let name = port.name.as_deref().unwrap_or_default();
    let mut found = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let matched = slice_ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == name)
            .or(match slice_ports {
                [only] if name.is_empty() => Some(only),
                _ => None,
            });
        let Some(number) = matched
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let ready = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
        for address in ready.flat_map(|e| e.addresses.iter()) {
            let Ok(ip) = address.parse::<IpAddr>() else {
                continue;
            };
            // Pod IPs are unique in the catalog (conflicts are rejected), so the IP alone
            // finds the pod behind the address.
            let identity = workloads
                .get(&ip)
                .map(|w| w.identity.clone())
                .unwrap_or_default();
            found.entry(SocketAddr::new(ip, number)).or_insert(identity);
        }
    }
    found
        .into_iter()
        .map(|(address, identity)| proto::Endpoint {
            address: address.to_string(),
            identity,
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
