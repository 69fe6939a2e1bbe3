//! The run-time config a sidecar acts on: the wire [`proto::Snapshot`] checked and indexed for
//! lookups on every new connection. A snapshot with any problem is refused whole (the sidecar
//! keeps the one it has), never half-applied.
//!
//! This is plain data and pure decisions only: which logical destination an address is
//! ([`Snapshot::lookup`]). Choosing one endpoint of a Service, and any state that needs (turns,
//! latency estimates), belongs to the proxy, so `remoractl` can link this crate and ask the same
//! questions the sidecar asks.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use prost::{bytes::Bytes, Message};

use crate::endpoint::{DnsEndpoints, DnsName, Endpoint, ServiceKey, Workload, WorkloadNames};
use crate::{
    load::ConfigError,
    mesh::{MeshSettings, OutboundPolicy, OverloadLimits},
    path::PathNormalization,
    proto::config as proto,
    protocol::{Declared, InboundPorts},
    resources,
    route::{self, Backend, BackendKey, DestinationPolicy, Resolve, RouteTable},
    security::Security,
    spiffe::SpiffeId,
    telemetry::Telemetry,
};

/// What a snapshot was made of, for the admin config dump: the wire snapshot itself (a
/// bootstrap's), or the discovery resources it was put together from, kept encoded (far
/// smaller than the decoded snapshot, which is not kept) and put together again when asked.
#[derive(Debug)]
pub enum Dump {
    Whole(Box<proto::Snapshot>),
    Resources {
        version: String,
        held: Arc<BTreeMap<String, Bytes>>,
    },
}

impl Default for Dump {
    fn default() -> Self {
        Self::Whole(Box::default())
    }
}

impl Dump {
    /// The wire snapshot, as the sidecar took it.
    pub fn snapshot(&self) -> proto::Snapshot {
        match self {
            Dump::Whole(snapshot) => (**snapshot).clone(),
            Dump::Resources { version, held } => {
                let decoded = held
                    .values()
                    .filter_map(|bytes| proto::Resource::decode(bytes.clone()).ok())
                    .map(Ok);
                let mut snapshot = resources::assemble(decoded).unwrap_or_default();
                snapshot.version.clone_from(version);
                snapshot
            }
        }
    }

    fn version(&self) -> &str {
        match self {
            Dump::Whole(snapshot) => &snapshot.version,
            Dump::Resources { version, .. } => version,
        }
    }
}

/// A validated snapshot, indexed by destination address.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// What it was made of, for the admin config dump.
    pub dump: Dump,
    destinations: HashMap<SocketAddr, Destination>,
    services: HashMap<ServiceKey, Arc<ServicePort>>,
    /// Every Service port, and every subset of one, as a backend to balance over.
    backends: HashMap<BackendKey, Arc<Backend>>,
    pub mesh: MeshSettings,
    /// The policies of this sidecar's own workload.
    pub security: Security,
    /// What this sidecar records, per side.
    pub telemetry: Telemetry,
    /// What its own workload's ports declare they speak.
    pub inbound_ports: InboundPorts,
    /// Every workload record, by `namespace/name` and by address.
    workloads: HashMap<String, Arc<Workload>>,
    workloads_at: HashMap<IpAddr, Arc<Workload>>,
}

/// What a known address is.
#[derive(Debug)]
enum Destination {
    /// A workload address: that workload, directly.
    Workload(Endpoint),
    /// A service's cluster IP and port.
    Service(Arc<ServicePort>),
    /// A ServiceEntry address with `resolution: NONE`: in the registry, passed through.
    Passthrough,
}

/// One port of a Service: its ready endpoints and how this sidecar routes requests to it.
#[derive(Debug)]
pub struct ServicePort {
    pub key: ServiceKey,
    pub endpoints: Vec<Endpoint>,
    pub routes: RouteTable,
    /// A ServiceEntry with `resolution: NONE`: requests go to the address the app dialled.
    pub passthrough: bool,
    /// What the port declares it speaks, which decides whether its connections are sniffed.
    pub protocol: Declared,
}

/// Two ports are the same when they name the same Service port with the same endpoints (their
/// routes hold compiled regexes, which do not compare).
impl PartialEq for ServicePort {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.endpoints == other.endpoints
    }
}

impl Eq for ServicePort {}

/// Where an outbound connection goes, decided once per connection from its original
/// destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logical {
    /// A Service's cluster IP and port: each request (or opaque connection) goes to one of its
    /// ready endpoints, chosen by the proxy.
    Service(Arc<ServicePort>),
    /// A workload address the mesh knows (it runs a sidecar).
    Workload(Endpoint),
    /// Not in the mesh registry, with `outboundTrafficPolicy` `ALLOW_ANY`: passed through to
    /// the address the app dialled, untouched.
    Passthrough(SocketAddr),
    /// Not in the mesh registry, with `REGISTRY_ONLY`: refused (Istio's `BlackHoleCluster`).
    Blackhole(SocketAddr),
}

impl Snapshot {
    pub fn version(&self) -> &str {
        self.dump.version()
    }

    /// The same snapshot, its config dump made from `dump` (the wire snapshot it was compiled
    /// from is then dropped).
    pub fn with_dump(self, dump: Dump) -> Self {
        Self { dump, ..self }
    }

    /// Where a connection to `address` goes.
    pub fn lookup(&self, address: SocketAddr) -> Logical {
        match self.destinations.get(&address) {
            Some(Destination::Workload(endpoint)) => Logical::Workload(endpoint.clone()),
            Some(Destination::Service(port)) => Logical::Service(port.clone()),
            Some(Destination::Passthrough) => Logical::Passthrough(address),
            None => match self.mesh.outbound {
                OutboundPolicy::AllowAny => Logical::Passthrough(address),
                OutboundPolicy::RegistryOnly => Logical::Blackhole(address),
            },
        }
    }

    /// Every Service port the snapshot lists, once each.
    pub fn service_ports(&self) -> impl Iterator<Item = &Arc<ServicePort>> {
        self.services.values()
    }

    /// The Service port `key` names in this snapshot, if it still lists it.
    pub fn service(&self, key: &ServiceKey) -> Option<&Arc<ServicePort>> {
        self.services.get(key)
    }

    /// The backend `key` names in this snapshot, if it still has it.
    pub fn backend(&self, key: &BackendKey) -> Option<&Arc<Backend>> {
        self.backends.get(key)
    }

    /// Every name the snapshot's backends resolve, for the proxy to keep resolved.
    pub fn dns_names(&self) -> impl Iterator<Item = &DnsName> {
        self.backends
            .values()
            .filter_map(|backend| backend.dns.as_deref())
            .flat_map(|dns| &dns.names)
    }

    /// Number of addresses the snapshot knows.
    pub fn destination_count(&self) -> usize {
        self.destinations.len()
    }

    /// The record of pod `name` in `namespace`.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(&format!("{namespace}/{name}"))
    }

    /// The workload a caller at `ip` is, when it is one the snapshot knows and, for a caller
    /// that proved `identity`, the one whose sidecar holds that identity: an address alone
    /// never lends a verified caller another workload's name.
    pub fn workload_at(&self, ip: IpAddr, identity: Option<&SpiffeId>) -> Option<&Arc<Workload>> {
        self.workloads_at
            .get(&ip)
            .filter(|workload| identity.is_none_or(|id| workload.identity.as_ref() == Some(id)))
    }
}

impl TryFrom<proto::Snapshot> for Snapshot {
    type Error = ConfigError;

    /// Checks every field, reporting each problem with its path
    /// (`services[0].ports[1].endpoints[2].identity: ...`).
    fn try_from(source: proto::Snapshot) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let workloads = workloads(&source.workloads, &mut problems);
        let workloads_at = workloads
            .values()
            .flat_map(|w| w.addresses.iter().map(move |ip| (*ip, w.clone())))
            .collect();
        let mut destinations = HashMap::new();
        let mut first_seen = HashMap::new();
        let mut insert = |address: SocketAddr, path: String, destination, problems: &mut Vec<_>| {
            if let Some(first) = first_seen.get(&address) {
                problems.push(format!(
                    "{path}: {address} is listed twice (first at {first})"
                ));
            } else {
                first_seen.insert(address, path);
                destinations.insert(address, destination);
            }
        };
        for (i, endpoint) in source.endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}]");
            if let Some(endpoint) = parse_endpoint(endpoint, &path, &workloads, &mut problems) {
                insert(
                    endpoint.address,
                    format!("{path}.address"),
                    Destination::Workload(endpoint),
                    &mut problems,
                );
            }
        }
        // Ports and their backends first, so that routes can name any of them.
        let mut ports = Vec::new();
        let mut backends = HashMap::new();
        for (s, service) in source.services.iter().enumerate() {
            let path = format!("services[{s}]");
            let hostname: Arc<str> = Arc::from(service.hostname.as_str());
            let addresses: Vec<IpAddr> = service
                .addresses
                .iter()
                .enumerate()
                .filter_map(|(a, text)| {
                    text.parse()
                        .map_err(|_| {
                            problems.push(format!(
                                "{path}.addresses[{a}]: {text:?} is not an IP address"
                            ))
                        })
                        .ok()
                })
                .collect();
            let dns_mode = match service.resolution.as_str() {
                "" => None,
                "DNS" => Some(false),
                "DNS_ROUND_ROBIN" => Some(true),
                other => {
                    problems.push(format!(
                        "{path}.resolution: {other:?} is neither DNS nor DNS_ROUND_ROBIN"
                    ));
                    None
                }
            };
            for (p, port) in service.ports.iter().enumerate() {
                let path = format!("{path}.ports[{p}]");
                let Ok(number) = u16::try_from(port.port) else {
                    problems.push(format!("{path}.port: {} is not a port number", port.port));
                    continue;
                };
                let (endpoints, dns) = match dns_mode {
                    Some(first_only) => (
                        Vec::new(),
                        Some(Arc::new(DnsEndpoints {
                            names: dns_names(port, &path, &mut problems),
                            first_only,
                        })),
                    ),
                    None => (
                        port.endpoints
                            .iter()
                            .enumerate()
                            .filter_map(|(e, endpoint)| {
                                let path = format!("{path}.endpoints[{e}]");
                                parse_endpoint(endpoint, &path, &workloads, &mut problems)
                            })
                            .collect(),
                        None,
                    ),
                };
                let key = ServiceKey {
                    hostname: hostname.clone(),
                    port: number,
                };
                let members = Members {
                    endpoints: &endpoints,
                    dns: dns.as_ref(),
                };
                add_backends(&key, port, members, &path, &mut backends, &mut problems);
                ports.push((
                    key,
                    endpoints,
                    path,
                    addresses.clone(),
                    port,
                    service.passthrough,
                ));
            }
        }
        let mut services = HashMap::new();
        for (key, endpoints, path, addresses, port, passthrough) in ports {
            let mut resolver = Backends(&backends);
            let routes =
                route::compile_table(&key, &port.http_routes, &port.tcp_routes, &mut resolver)
                    .unwrap_or_else(|found| {
                        problems.extend(found.into_iter().map(|e| format!("{path}.{e}")));
                        RouteTable::empty()
                    });
            let service_port = Arc::new(ServicePort {
                key,
                endpoints,
                routes,
                passthrough,
                protocol: Declared::of(&port.app_protocol),
            });
            services.insert(service_port.key.clone(), service_port.clone());
            for ip in &addresses {
                let destination = if passthrough {
                    Destination::Passthrough
                } else {
                    Destination::Service(service_port.clone())
                };
                insert(
                    SocketAddr::new(*ip, service_port.key.port),
                    format!("{path}.port"),
                    destination,
                    &mut problems,
                );
            }
        }
        let mesh = source
            .mesh
            .as_ref()
            .map(|mesh| MeshSettings {
                trust_domain: Some(mesh.trust_domain.clone()).filter(|t| !t.is_empty()),
                drain_duration: Some(Duration::from_millis(mesh.drain_duration_ms))
                    .filter(|d| !d.is_zero()),
                path_normalization: PathNormalization::parse(&mesh.path_normalization)
                    .unwrap_or_else(|| {
                        problems.push(format!(
                            "mesh.pathNormalization: {:?} is not one of NONE, BASE, \
                             MERGE_SLASHES, DECODE_AND_MERGE_SLASHES",
                            mesh.path_normalization
                        ));
                        PathNormalization::default()
                    }),
                num_trusted_proxies: mesh.num_trusted_proxies,
                cluster_id: Some(mesh.cluster_id.clone()).filter(|c| !c.is_empty()),
                overload: OverloadLimits::from_proto(mesh.overload.as_ref()),
                outbound: match mesh.outbound_traffic_policy.as_str() {
                    "" | "ALLOW_ANY" => OutboundPolicy::AllowAny,
                    "REGISTRY_ONLY" => OutboundPolicy::RegistryOnly,
                    other => {
                        problems.push(format!(
                            "mesh.outboundTrafficPolicy: {other:?} is neither ALLOW_ANY nor REGISTRY_ONLY"
                        ));
                        OutboundPolicy::AllowAny
                    }
                },
            })
            .unwrap_or_default();
        let security = source
            .security
            .as_ref()
            .map(Security::compile)
            .transpose()
            .unwrap_or_else(|found| {
                problems.extend(found);
                None
            })
            .unwrap_or_default();
        let telemetry = Telemetry::compile(source.telemetry.as_ref(), &mut problems);
        let inbound_ports = InboundPorts::compile(&source.inbound_ports, &mut problems);
        ConfigError::from_problems(problems)?;
        Ok(Self {
            dump: Dump::Whole(Box::new(source)),
            destinations,
            services,
            backends,
            mesh,
            security,
            telemetry,
            inbound_ports,
            workloads,
            workloads_at,
        })
    }
}

/// Parses one endpoint, recording its problems.
fn parse_endpoint(
    endpoint: &proto::Endpoint,
    path: &str,
    workloads: &HashMap<String, Arc<Workload>>,
    problems: &mut Vec<String>,
) -> Option<Endpoint> {
    let workload = if endpoint.workload.is_empty() {
        Some(None)
    } else {
        workloads
            .get(endpoint.workload.as_str())
            .map(|w| Some(w.clone()))
            .or_else(|| {
                problems.push(format!(
                    "{path}.workload: {:?} is not in workloads",
                    endpoint.workload
                ));
                None
            })
    };
    let address = endpoint
        .address
        .parse()
        .map_err(|_| {
            problems.push(format!(
                "{path}.address: {:?} is not an ip:port address",
                endpoint.address
            ))
        })
        .ok();
    let identity = if endpoint.identity.is_empty() {
        Some(None)
    } else {
        endpoint
            .identity
            .parse()
            .map(Some)
            .map_err(|e| problems.push(format!("{path}.identity: {e}")))
            .ok()
    };
    Some(Endpoint {
        address: address?,
        identity: identity?,
        workload: workload?,
    })
}

/// The workload records, by `namespace/name`.
fn workloads(
    source: &[proto::Workload],
    problems: &mut Vec<String>,
) -> HashMap<String, Arc<Workload>> {
    let mut by_name = HashMap::new();
    for (i, workload) in source.iter().enumerate() {
        let identity = if workload.identity.is_empty() {
            None
        } else {
            match workload.identity.parse() {
                Ok(id) => Some(id),
                Err(e) => {
                    problems.push(format!("workloads[{i}].identity: {e}"));
                    continue;
                }
            }
        };
        let mut addresses = Vec::new();
        for (a, address) in workload.addresses.iter().enumerate() {
            match address.parse() {
                Ok(ip) => addresses.push(ip),
                Err(_) => problems.push(format!(
                    "workloads[{i}].addresses[{a}]: {address:?} is not an IP address"
                )),
            }
        }
        let record = Arc::new(Workload {
            namespace: workload.namespace.clone(),
            name: workload.name.clone(),
            labels: workload.labels.iter().collect(),
            identity,
            addresses,
            names: WorkloadNames {
                workload_name: workload.workload_name.clone(),
                canonical_service: workload.canonical_service.clone(),
                canonical_revision: workload.canonical_revision.clone(),
                app: workload.app.clone(),
                version: workload.version.clone(),
            },
        });
        let key = format!("{}/{}", workload.namespace, workload.name);
        if by_name.contains_key(&key) {
            problems.push(format!("workloads[{i}]: {key} is listed twice"));
            continue;
        }
        by_name.insert(key, record);
    }
    by_name
}

/// The backends of Service port `key`: the port itself and each of its subsets (the endpoints
/// whose workload carries the subset's labels), with their DestinationRule policies.
/// The endpoints of a Service port a backend takes its members from.
#[derive(Clone, Copy)]
struct Members<'a> {
    endpoints: &'a [Endpoint],
    dns: Option<&'a Arc<DnsEndpoints>>,
}

/// The `name:port` endpoints of a port whose Service resolves names.
fn dns_names(port: &proto::ServicePort, path: &str, problems: &mut Vec<String>) -> Vec<DnsName> {
    port.endpoints
        .iter()
        .enumerate()
        .filter_map(|(e, endpoint)| {
            let parsed = endpoint
                .address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0);
            match parsed {
                Some((host, port)) => Some(DnsName {
                    host: Arc::from(host.trim_start_matches('[').trim_end_matches(']')),
                    port,
                }),
                None => {
                    problems.push(format!(
                        "{path}.endpoints[{e}].address: {:?} is not a name:port address",
                        endpoint.address
                    ));
                    None
                }
            }
        })
        .collect()
}

fn add_backends(
    key: &ServiceKey,
    port: &proto::ServicePort,
    members: Members<'_>,
    path: &str,
    backends: &mut HashMap<BackendKey, Arc<Backend>>,
    problems: &mut Vec<String>,
) {
    let policy =
        |field: String, source: Option<&proto::TrafficPolicy>, problems: &mut Vec<String>| {
            DestinationPolicy::compile(source).unwrap_or_else(|found| {
                problems.extend(found.into_iter().map(|e| format!("{path}.{field}.{e}")));
                DestinationPolicy::default()
            })
        };
    let own = BackendKey {
        service: key.clone(),
        subset: None,
    };
    let port_policy = policy(
        "trafficPolicy".into(),
        port.traffic_policy.as_ref(),
        problems,
    );
    backends.insert(
        own.clone(),
        Arc::new(Backend {
            key: own,
            endpoints: members.endpoints.to_vec(),
            dns: members.dns.cloned(),
            policy: port_policy,
        }),
    );
    for (i, subset) in port.subsets.iter().enumerate() {
        let subset_policy = policy(
            format!("subsets[{i}].trafficPolicy"),
            subset.traffic_policy.as_ref(),
            problems,
        );
        let key = BackendKey {
            service: key.clone(),
            subset: Some(Arc::from(subset.name.as_str())),
        };
        // Names carry no labels: a subset that selects by labels has none of them.
        let dns = members.dns.filter(|_| subset.labels.is_empty()).cloned();
        let endpoints = members
            .endpoints
            .iter()
            .filter(|e| {
                e.workload.as_ref().is_some_and(|w| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v.as_str()))
                })
            })
            .cloned()
            .collect();
        if backends.contains_key(&key) {
            problems.push(format!(
                "{path}.subsets[{i}].name: {:?} is listed twice",
                subset.name
            ));
            continue;
        }
        backends.insert(
            key.clone(),
            Arc::new(Backend {
                key,
                endpoints,
                dns,
                policy: subset_policy,
            }),
        );
    }
}

/// Resolves route backends against the snapshot's backends.
struct Backends<'b>(&'b HashMap<BackendKey, Arc<Backend>>);

impl Resolve for Backends<'_> {
    fn resolve(&mut self, host: &str, port: u16, subset: &str) -> Result<Arc<Backend>, String> {
        let key = BackendKey {
            service: ServiceKey {
                hostname: Arc::from(host),
                port,
            },
            subset: (!subset.is_empty()).then(|| Arc::from(subset)),
        };
        self.0.get(&key).cloned().ok_or_else(|| match &key.subset {
            Some(subset)
                if self.0.contains_key(&BackendKey {
                    subset: None,
                    ..key.clone()
                }) =>
            {
                format!("subset {subset:?} of {} is not defined", key.service)
            }
            _ => format!("no Service port {}", key.service),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, identity: &str) -> proto::Endpoint {
        proto::Endpoint {
            address: address.into(),
            identity: identity.into(),
            workload: String::new(),
        }
    }

    const HTTPBIN: &str = "spiffe://cluster.local/ns/default/sa/httpbin";

    fn snapshot() -> proto::Snapshot {
        proto::Snapshot {
            version: "1".into(),
            endpoints: vec![endpoint("198.18.0.3:8080", HTTPBIN)],
            services: vec![proto::Service {
                hostname: "httpbin.default.svc.cluster.local".into(),
                addresses: vec!["198.19.0.1".into()],
                ports: vec![proto::ServicePort {
                    port: 8000,
                    name: "http".into(),
                    app_protocol: "http".into(),
                    endpoints: vec![
                        endpoint("198.18.0.3:8080", HTTPBIN),
                        endpoint("198.18.0.4:8080", ""),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn dns_services_name_the_endpoints_the_proxy_resolves() {
        let mut source = snapshot();
        source.services.push(proto::Service {
            hostname: "api.example.com".into(),
            addresses: vec!["198.19.0.9".into()],
            ports: vec![proto::ServicePort {
                port: 80,
                endpoints: vec![
                    endpoint("api.example.com:8080", ""),
                    endpoint("198.18.5.5:80", ""),
                ],
                subsets: vec![proto::Subset {
                    name: "labelled".into(),
                    labels: [("v".to_owned(), "1".to_owned())].into(),
                    traffic_policy: None,
                }],
                ..Default::default()
            }],
            resolution: "DNS_ROUND_ROBIN".into(),
            ..Default::default()
        });
        let s = Snapshot::try_from(source.clone()).expect("valid");
        let key = |subset: Option<&str>| BackendKey {
            service: ServiceKey {
                hostname: "api.example.com".into(),
                port: 80,
            },
            subset: subset.map(Arc::from),
        };
        let backend = s.backend(&key(None)).expect("the port's backend");
        let dns = backend.dns.as_deref().expect("names");
        assert!(dns.first_only && backend.endpoints.is_empty());
        let names: Vec<String> = dns.names.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["api.example.com:8080", "198.18.5.5:80"]);
        assert_eq!(s.dns_names().count(), 2);
        let labelled = s.backend(&key(Some("labelled"))).expect("the subset");
        assert!(labelled.dns.is_none(), "names have no labels to select by");
        assert!(matches!(
            s.lookup(addr("198.19.0.9:80")),
            Logical::Service(_)
        ));

        for (resolution, address, problem) in [
            ("DNS", "api.example.com", "services[1].ports[0].endpoints[0].address: \"api.example.com\" is not a name:port address"),
            ("LOOKUP", "api.example.com:80", "services[1].resolution: \"LOOKUP\" is neither DNS nor DNS_ROUND_ROBIN"),
        ] {
            let mut bad = source.clone();
            bad.services[1].resolution = resolution.into();
            bad.services[1].ports[0].endpoints[0].address = address.into();
            let err = Snapshot::try_from(bad).expect_err("invalid").to_string();
            assert!(err.contains(problem), "{problem:?} missing from {err}");
        }
    }

    #[test]
    fn addresses_are_looked_up_as_logical_destinations() {
        let s = Snapshot::try_from(snapshot()).expect("valid");
        let Logical::Service(port) = s.lookup(addr("198.19.0.1:8000")) else {
            panic!("the cluster IP is a Service");
        };
        assert_eq!(&*port.key.hostname, "httpbin.default.svc.cluster.local");
        assert_eq!(port.key.port, 8000);
        assert_eq!(
            port.endpoints
                .iter()
                .map(|e| (e.address, e.identity.as_ref().map(ToString::to_string)))
                .collect::<Vec<_>>(),
            [
                (addr("198.18.0.3:8080"), Some(HTTPBIN.to_owned())),
                (addr("198.18.0.4:8080"), None),
            ]
        );
        assert_eq!(s.service_ports().count(), 1);
        assert_eq!(s.service(&port.key), Some(&port));
        let cases = [
            (
                "198.18.0.3:8080",
                Logical::Workload(Endpoint {
                    address: addr("198.18.0.3:8080"),
                    identity: Some(HTTPBIN.parse().expect("id")),
                    workload: None,
                }),
            ),
            (
                "198.19.0.1:9000",
                Logical::Passthrough(addr("198.19.0.1:9000")),
            ),
            ("10.0.0.1:443", Logical::Passthrough(addr("10.0.0.1:443"))),
        ];
        for (dst, expected) in cases {
            assert_eq!(s.lookup(addr(dst)), expected, "{dst}");
        }
    }

    #[test]
    fn registry_only_blackholes_unknown_destinations() {
        let mut p = snapshot();
        p.mesh = Some(proto::MeshSettings {
            outbound_traffic_policy: "REGISTRY_ONLY".into(),
            ..Default::default()
        });
        let s = Snapshot::try_from(p).expect("valid");
        assert_eq!(
            s.lookup(addr("10.0.0.1:443")),
            Logical::Blackhole(addr("10.0.0.1:443"))
        );
        assert!(matches!(
            s.lookup(addr("198.19.0.1:8000")),
            Logical::Service(_)
        ));
    }

    #[test]
    fn service_entries_without_resolution_pass_through_their_addresses() {
        let mut p = snapshot();
        p.mesh = Some(proto::MeshSettings {
            outbound_traffic_policy: "REGISTRY_ONLY".into(),
            ..Default::default()
        });
        p.services.push(proto::Service {
            hostname: "api.example.com".into(),
            addresses: vec!["198.18.9.9".into()],
            ports: vec![proto::ServicePort {
                port: 443,
                name: "https".into(),
                ..Default::default()
            }],
            passthrough: true,
            ..Default::default()
        });
        let s = Snapshot::try_from(p).expect("valid");
        assert_eq!(
            s.lookup(addr("198.18.9.9:443")),
            Logical::Passthrough(addr("198.18.9.9:443"))
        );
        assert_eq!(
            s.lookup(addr("198.18.9.9:80")),
            Logical::Blackhole(addr("198.18.9.9:80"))
        );
        let port = s
            .service(&ServiceKey {
                hostname: "api.example.com".into(),
                port: 443,
            })
            .expect("found by host");
        assert!(port.passthrough);
    }

    #[test]
    fn a_port_without_endpoints_is_known_but_empty() {
        let mut p = snapshot();
        p.services[0].ports[0].endpoints.clear();
        let s = Snapshot::try_from(p).expect("valid");
        let Logical::Service(port) = s.lookup(addr("198.19.0.1:8000")) else {
            panic!("still a Service");
        };
        assert!(port.endpoints.is_empty());
    }

    /// Two httpbin pods (v1, v2) behind the Service, a DestinationRule subset per version, and
    /// a route splitting between them.
    fn with_subsets() -> proto::Snapshot {
        let mut p = snapshot();
        for (name, version) in [("httpbin-1", "v1"), ("httpbin-2", "v2")] {
            p.workloads.push(proto::Workload {
                namespace: "default".into(),
                name: name.into(),
                labels: [
                    ("app".to_owned(), "httpbin".to_owned()),
                    ("version".to_owned(), version.to_owned()),
                ]
                .into(),
                ..Default::default()
            });
        }
        let port = &mut p.services[0].ports[0];
        port.endpoints[0].workload = "default/httpbin-1".into();
        port.endpoints[1].workload = "default/httpbin-2".into();
        for version in ["v1", "v2", "v3"] {
            port.subsets.push(proto::Subset {
                name: version.into(),
                labels: [("version".to_owned(), version.to_owned())].into(),
                traffic_policy: Some(proto::TrafficPolicy {
                    load_balancer: "ROUND_ROBIN".into(),
                    ..Default::default()
                }),
            });
        }
        port.http_routes.push(proto::HttpRoute {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "httpbin".into(),
            backends: ["v1", "v2", "v4"]
                .into_iter()
                .map(|subset| proto::RouteBackend {
                    host: "httpbin.default.svc.cluster.local".into(),
                    port: 8000,
                    subset: subset.into(),
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn subsets_select_endpoints_by_their_workloads_labels() {
        let s = Snapshot::try_from(with_subsets()).expect("valid");
        let Logical::Service(port) = s.lookup(addr("198.19.0.1:8000")) else {
            panic!("a Service");
        };
        let table = &port.routes;
        assert!(table.is_attached());
        let route = &table.routes()[0];
        let shares: Vec<String> = (0..3)
            .map(|draw| match &route.split(draw).expect("a share").target {
                route::Target::Backend(i) => {
                    let backend = &table.backends()[*i];
                    let addresses: Vec<String> = backend
                        .endpoints
                        .iter()
                        .map(|e| e.address.to_string())
                        .collect();
                    format!(
                        "{} {addresses:?} {:?}",
                        backend.key, backend.policy.load_balancer
                    )
                }
                route::Target::Unresolved { status, reason } => format!("{status} {reason}"),
            })
            .collect();
        assert_eq!(
            shares,
            [
                "httpbin.default.svc.cluster.local:8000 (subset v1) [\"198.18.0.3:8080\"] RoundRobin",
                "httpbin.default.svc.cluster.local:8000 (subset v2) [\"198.18.0.4:8080\"] RoundRobin",
                "503 Service Unavailable subset \"v4\" of httpbin.default.svc.cluster.local:8000 is not defined",
            ]
        );
        let v3 = s
            .backend(&BackendKey {
                service: port.key.clone(),
                subset: Some(Arc::from("v3")),
            })
            .expect("defined");
        assert!(v3.endpoints.is_empty(), "no workload has version v3");
        let own = s
            .backend(&BackendKey {
                service: port.key.clone(),
                subset: None,
            })
            .expect("the port itself");
        assert_eq!(own.endpoints.len(), 2);
        assert_eq!(
            own.endpoints[0].workload.as_ref().map(|w| w.name.as_str()),
            Some("httpbin-1")
        );
    }

    #[test]
    fn routes_and_workloads_problems_name_their_field() {
        let mut p = with_subsets();
        p.workloads.push(p.workloads[0].clone());
        p.services[0].ports[0].endpoints[0].workload = "default/nobody".into();
        p.services[0].ports[0].http_routes[0].kind = "Ingress".into();
        p.services[0].ports[0].subsets[0].traffic_policy = Some(proto::TrafficPolicy {
            load_balancer: "FASTEST".into(),
            ..Default::default()
        });
        let err = Snapshot::try_from(p).expect_err("invalid").to_string();
        for expected in [
            "workloads[2]: default/httpbin-1 is listed twice",
            "services[0].ports[0].endpoints[0].workload: \"default/nobody\" is not in workloads",
            "services[0].ports[0].httpRoutes[0].kind: \"Ingress\" is not HTTPRoute, GRPCRoute or VirtualService",
            "services[0].ports[0].subsets[0].trafficPolicy.loadBalancer: \"FASTEST\" is not a load balancer",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from {err}");
        }
    }

    #[test]
    fn every_problem_names_its_field() {
        let mut p = snapshot();
        p.endpoints.push(endpoint("198.18.0.3:8080", HTTPBIN));
        p.endpoints.push(endpoint("nowhere", HTTPBIN));
        p.services[0].addresses.push("not-an-ip".into());
        p.services[0].ports[0].endpoints[1].identity = "httpbin".into();
        p.services[0].ports[0].port = 70000;
        p.mesh = Some(proto::MeshSettings {
            outbound_traffic_policy: "DENY".into(),
            ..Default::default()
        });
        let err = Snapshot::try_from(p).expect_err("invalid").to_string();
        for expected in [
            "endpoints[1].address: 198.18.0.3:8080 is listed twice (first at endpoints[0].address)",
            "endpoints[2].address: \"nowhere\" is not an ip:port address",
            "services[0].addresses[1]: \"not-an-ip\" is not an IP address",
            "services[0].ports[0].port: 70000 is not a port number",
            "mesh.outboundTrafficPolicy: \"DENY\" is neither ALLOW_ANY nor REGISTRY_ONLY",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from {err}");
        }
    }
}
