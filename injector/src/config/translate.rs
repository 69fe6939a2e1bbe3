//! Kubernetes objects to the parts of a sidecar's snapshot that every sidecar shares: the
//! services it can call and, for each workload address, the identity the sidecar in front of
//! it must present.
//!
//! Identity comes from the pod behind an address (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`),
//! only when that pod runs a sidecar; a pod without one gets an empty identity so callers pass
//! traffic to it in the clear, as Istio does for workloads outside the mesh. Output is sorted
//! so the same objects always give byte-identical snapshots (and the same version hash).

mod pods;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use remora_api::proto::config as proto;

pub(crate) use pods::Memo;
use pods::{PoliciesByNamespace, Workload};

use super::{
    cluster_ip,
    encoded::WorkloadRecord,
    endpoints,
    mesh::{MeshConfig, ProxyConfig},
    objects::{Key, Objects, Rejection},
    well_known::service_hostname,
};
/// Port name prefixes Istio reads as protocols (`http-web`, `grpc`); Istio's
/// `protocol.Parse`, minus UDP, which the sidecar never sees.
const NAMED_PROTOCOLS: [&str; 9] = [
    "http", "http2", "https", "grpc", "tcp", "tls", "mongo", "redis", "mysql",
];

/// The shared part of every snapshot, and what is known about each pod and Service.
#[derive(Debug, Default)]
pub(crate) struct Translation {
    pub(crate) pods: BTreeMap<Key, Arc<PodFacts>>,
    pub(crate) services: Vec<proto::Service>,
    pub(crate) endpoints: Vec<proto::Endpoint>,
    /// The pods behind `endpoints` and the Services' endpoints.
    pub(crate) workloads: Vec<Arc<WorkloadRecord>>,
    /// The cluster IP of every Service that has one.
    pub(crate) cluster_ips: BTreeMap<Key, IpAddr>,
    /// What each pod's own ports declare, for pods behind a Service port that declares one.
    pub(crate) inbound_ports: BTreeMap<Key, Arc<[proto::InboundPort]>>,
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

/// Translates `objects`; a Service rejected here (for a cluster IP another one holds) is
/// removed from them, so what remains is exactly what was accepted.
pub(crate) fn translate(
    objects: &mut Objects,
    mesh: &MeshConfig,
    memo: &mut Memo,
    rejected: &mut Vec<Rejection>,
) -> Translation {
    let started = std::time::Instant::now();
    let mut translation = Translation::default();
    let mut workloads: BTreeMap<IpAddr, Workload> = BTreeMap::new();
    let policies = PoliciesByNamespace::new(objects);
    let mut memoized = memo.begin(pods::context(objects, mesh));
    for (key, pod) in &objects.pods {
        let translated = match memoized.remove(key) {
            Some((object, translated)) if Arc::ptr_eq(&object, &pod.object) => translated,
            _ => pods::translate_pod(key, pod, mesh, &policies),
        };
        rejected.extend(translated.rejections.iter().cloned());
        if let Some(kept) = &translated.kept {
            // An IP is the first pod's (in the catalog's order: the oldest).
            let taken = kept.workload.as_ref().and_then(|seed| {
                let (namespace, name) = workloads.get(&seed.ip)?.pod;
                Some(format!(
                    "status.podIP: {} is already the IP of Pod {namespace}/{name}",
                    seed.ip
                ))
            });
            match taken {
                Some(reason) => rejected.push(pod.rejection("Pod", key, reason)),
                None => {
                    translation.pods.insert(key.clone(), kept.facts.clone());
                    if let Some(seed) = &kept.workload {
                        let workload = Workload {
                            pod: key,
                            seed: seed.clone(),
                            ports: seed.ports.clone(),
                        };
                        workloads.insert(seed.ip, workload);
                    }
                }
            }
        }
        memo.keep(key, &pod.object, translated);
    }
    let pods = started.elapsed();
    add_endpoint_slice_ports(objects, &mut workloads);
    translation.endpoints = workloads
        .values()
        .filter(|workload| workload.has_identity())
        .flat_map(|workload| workload.ports.iter().map(|port| workload.endpoint(*port)))
        .collect();
    translation.workloads = workloads
        .values()
        .map(|workload| workload.seed.record.clone())
        .collect();
    let records = started.elapsed();
    // Each Service's slices, found once rather than by looking at every slice per Service.
    let mut slices: SlicesByService = HashMap::new();
    for slice in objects.endpoint_slices.values() {
        if let Some(service) = endpoints::service_of(&slice.object) {
            slices.entry(service).or_default().push(&slice.object);
        }
    }
    let conflicting;
    (translation.services, translation.cluster_ips, conflicting) =
        services(objects, &slices, &workloads, rejected);
    for key in conflicting {
        objects.services.remove(&key);
    }
    translation.inbound_ports = inbound_ports(objects, &slices, &workloads);
    drop(slices);
    drop(workloads);
    tracing::debug!(
        pods_ms = pods.as_millis(),
        records_ms = (records - pods).as_millis(),
        services_ms = (started.elapsed() - records).as_millis(),
        "translated"
    );
    translation
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
/// Every Service's slices, by the Service's `(namespace, name)`.
type SlicesByService<'a> = HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

fn services(
    objects: &Objects,
    slices: &SlicesByService,
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
/// What each pod's own ports declare: for every declared TCP port of a Service, the workload
/// ports behind it (ready or not, as its slices resolve `targetPort`). Where two Services
/// declare the same workload port, the first by namespace and name decides.
fn inbound_ports(
    objects: &Objects,
    slices: &SlicesByService,
    workloads: &BTreeMap<IpAddr, Workload>,
) -> BTreeMap<Key, Arc<[proto::InboundPort]>> {
    let mut found: BTreeMap<&Key, BTreeMap<u16, String>> = BTreeMap::new();
    for (key, service) in &objects.services {
        let Some(slices) = slices.get(&(key.0.as_str(), key.1.as_str())) else {
            continue;
        };
        let ports = service
            .object
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten());
        for port in ports.filter(|port| is_tcp(port.protocol.as_deref())) {
            let declared = app_protocol(port);
            if declared.is_empty() {
                continue;
            }
            for address in endpoints::all_endpoints(port, slices.iter().copied()) {
                let Some(workload) = workloads.get(&address.ip()) else {
                    continue;
                };
                found
                    .entry(workload.pod)
                    .or_default()
                    .entry(address.port())
                    .or_insert_with(|| declared.clone());
            }
        }
    }
    found
        .into_iter()
        .map(|(pod, ports)| {
            let ports = ports
                .into_iter()
                .map(|(port, app_protocol)| proto::InboundPort {
                    port: u32::from(port),
                    app_protocol,
                })
                .collect();
            (pod.clone(), ports)
        })
        .collect()
}

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
    use crate::config::objects::documents_of;

    /// Two pods with sidecars; `b` claims `a`'s IP.
    const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, creationTimestamp: '2026-01-01T00:00:00Z',
           annotations: {sidecar.istio.io/status: '{}'}}
spec: {serviceAccountName: web, containers: [{name: app, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, creationTimestamp: '2026-01-02T00:00:00Z',
           annotations: {sidecar.istio.io/status: '{}'}}
spec: {containers: [{name: app}]}
status: {phase: Running, podIP: 10.0.0.1}
";

    #[test]
    fn pods_are_translated_again_only_when_they_or_their_context_change() {
        let files = [("pods.yaml", PODS)];
        let (mut objects, _) = Objects::from_documents(documents_of(&files));
        let a = ("demo".to_owned(), "a".to_owned());
        let mut memo = Memo::default();
        let translate_with = |objects: &mut Objects, memo: &mut Memo, mesh: &MeshConfig| {
            let mut rejected = Vec::new();
            let translation = translate(objects, mesh, memo, &mut rejected);
            (translation, rejected)
        };
        let mesh = MeshConfig::default();
        let (first, rejected) = translate_with(&mut objects, &mut memo, &mesh);
        let (second, again) = translate_with(&mut objects, &mut memo, &mesh);
        // The same pods in the same context: the same translation, the conflict found anew.
        assert!(Arc::ptr_eq(&first.pods[&a], &second.pods[&a]));
        assert!(Arc::ptr_eq(&first.workloads[0], &second.workloads[0]));
        assert_eq!(first.workloads.len(), 1);
        for rejected in [&rejected, &again] {
            let [rejection] = rejected.as_slice() else {
                panic!("{rejected:?}")
            };
            assert!(
                rejection.reason.contains("already the IP of Pod demo/a"),
                "{}",
                rejection.reason
            );
        }
        // Another trust domain: translated again, with identities in it.
        let other = MeshConfig::parse("trustDomain: example.org").expect("mesh config");
        let (third, _) = translate_with(&mut objects, &mut memo, &other);
        assert!(!Arc::ptr_eq(&second.pods[&a], &third.pods[&a]));
        assert_eq!(
            third.workloads[0].record.identity,
            "spiffe://example.org/ns/demo/sa/web"
        );
        // The same pod read again (a new object): translated again.
        let (mut reread, _) = Objects::from_documents(documents_of(&files));
        let (fourth, _) = translate_with(&mut reread, &mut memo, &other);
        assert!(!Arc::ptr_eq(&third.pods[&a], &fourth.pods[&a]));
        assert_eq!(third.workloads[0].encoded, fourth.workloads[0].encoded);
    }

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
