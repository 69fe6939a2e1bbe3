//! The run-time config a sidecar acts on: the wire [`proto::Snapshot`] checked and indexed for
//! lookups on every new connection. A snapshot with any problem is refused whole (the sidecar
//! keeps the one it has), never half-applied.
//!
//! This is plain data and pure decisions only: which logical destination an address is
//! ([`Snapshot::lookup`]). Choosing one endpoint of a Service, and any state that needs (turns,
//! latency estimates), belongs to the proxy, so `remoractl` can link this crate and ask the same
//! questions the sidecar asks.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::{
    load::ConfigError,
    mesh::{MeshSettings, OutboundPolicy},
    path::PathNormalization,
    proto::config as proto,
    security::Security,
    spiffe::SpiffeId,
};

/// A validated snapshot, indexed by destination address.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// What was received, kept for the admin config dump.
    pub source: proto::Snapshot,
    destinations: HashMap<SocketAddr, Destination>,
    services: HashMap<ServiceKey, Arc<ServicePort>>,
    pub mesh: MeshSettings,
    /// The policies of this sidecar's own workload.
    pub security: Security,
}

/// What a known address is.
#[derive(Debug)]
enum Destination {
    /// A workload address: that workload, directly.
    Workload(Endpoint),
    /// A service's cluster IP and port.
    Service(Arc<ServicePort>),
}

/// One port of a Service and its ready endpoints.
#[derive(Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub key: ServiceKey,
    pub endpoints: Vec<Endpoint>,
}

/// Names a Service port across snapshots: its hostname and port number.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ServiceKey {
    /// `name.namespace.svc.cluster.local`.
    pub hostname: Arc<str>,
    pub port: u16,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.hostname, self.port)
    }
}

/// One concrete endpoint to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The identity the sidecar in front of it must present; `None` when it has no sidecar.
    pub identity: Option<SpiffeId>,
}

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
        &self.source.version
    }

    /// Where a connection to `address` goes.
    pub fn lookup(&self, address: SocketAddr) -> Logical {
        match self.destinations.get(&address) {
            Some(Destination::Workload(endpoint)) => Logical::Workload(endpoint.clone()),
            Some(Destination::Service(port)) => Logical::Service(port.clone()),
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

    /// Number of addresses the snapshot knows.
    pub fn destination_count(&self) -> usize {
        self.destinations.len()
    }
}

impl TryFrom<proto::Snapshot> for Snapshot {
    type Error = ConfigError;

    /// Checks every field, reporting each problem with its path
    /// (`services[0].ports[1].endpoints[2].identity: ...`).
    fn try_from(source: proto::Snapshot) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut destinations = HashMap::new();
        let mut services = HashMap::new();
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
            if let Some(endpoint) = parse_endpoint(endpoint, &path, &mut problems) {
                insert(
                    endpoint.address,
                    format!("{path}.address"),
                    Destination::Workload(endpoint),
                    &mut problems,
                );
            }
        }
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
            for (p, port) in service.ports.iter().enumerate() {
                let path = format!("{path}.ports[{p}]");
                let Ok(number) = u16::try_from(port.port) else {
                    problems.push(format!("{path}.port: {} is not a port number", port.port));
                    continue;
                };
                let endpoints = port
                    .endpoints
                    .iter()
                    .enumerate()
                    .filter_map(|(e, endpoint)| {
                        parse_endpoint(endpoint, &format!("{path}.endpoints[{e}]"), &mut problems)
                    })
                    .collect();
                let service_port = Arc::new(ServicePort {
                    key: ServiceKey {
                        hostname: hostname.clone(),
                        port: number,
                    },
                    endpoints,
                });
                services.insert(service_port.key.clone(), service_port.clone());
                for ip in &addresses {
                    insert(
                        SocketAddr::new(*ip, number),
                        format!("{path}.port"),
                        Destination::Service(service_port.clone()),
                        &mut problems,
                    );
                }
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
        ConfigError::from_problems(problems)?;
        Ok(Self {
            source,
            destinations,
            services,
            mesh,
            security,
        })
    }
}

/// Parses one endpoint, recording its problems.
fn parse_endpoint(
    endpoint: &proto::Endpoint,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Endpoint> {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, identity: &str) -> proto::Endpoint {
        proto::Endpoint {
            address: address.into(),
            identity: identity.into(),
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
                }],
            }],
            mesh: None,
            security: None,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
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
    fn a_port_without_endpoints_is_known_but_empty() {
        let mut p = snapshot();
        p.services[0].ports[0].endpoints.clear();
        let s = Snapshot::try_from(p).expect("valid");
        let Logical::Service(port) = s.lookup(addr("198.19.0.1:8000")) else {
            panic!("still a Service");
        };
        assert!(port.endpoints.is_empty());
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
