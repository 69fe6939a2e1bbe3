//! The run-time config a sidecar acts on: the wire [`proto::Snapshot`] checked and indexed for
//! lookups on every new connection. A snapshot with any problem is refused whole (the sidecar
//! keeps the one it has), never half-applied.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{load::ConfigError, proto::config as proto, spiffe::SpiffeId};

/// A validated snapshot, indexed by destination address.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// What was received, kept for the admin config dump.
    pub source: proto::Snapshot,
    destinations: HashMap<SocketAddr, Destination>,
    pub mesh: MeshSettings,
}

/// Where a connection to a known address goes.
#[derive(Debug)]
enum Destination {
    /// A workload address: that workload, directly.
    Workload(Upstream),
    /// A service's cluster IP and port: one of its endpoints, taken in turn.
    Service(Arc<Backends>),
}

#[derive(Debug)]
struct Backends {
    endpoints: Vec<Upstream>,
    next: AtomicUsize,
}

/// One concrete endpoint to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub address: SocketAddr,
    /// The identity the sidecar in front of it must present; `None` when it has no sidecar.
    pub identity: Option<SpiffeId>,
}

/// Where a resolved destination leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Upstream(Upstream),
    /// A service port with no ready endpoint.
    NoEndpoints,
}

/// Mesh settings a sidecar acts on, with Istio's defaults for anything unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshSettings {
    pub trust_domain: Option<String>,
    pub drain_duration: Option<Duration>,
}

impl Snapshot {
    pub fn version(&self) -> &str {
        &self.source.version
    }

    /// Where a connection to `address` should go, or `None` when the address is not in the mesh
    /// registry (the connection passes through).
    pub fn resolve(&self, address: SocketAddr) -> Option<Resolved> {
        Some(match self.destinations.get(&address)? {
            Destination::Workload(upstream) => Resolved::Upstream(upstream.clone()),
            Destination::Service(backends) => {
                if backends.endpoints.is_empty() {
                    Resolved::NoEndpoints
                } else {
                    let turn = backends.next.fetch_add(1, Ordering::Relaxed);
                    Resolved::Upstream(backends.endpoints[turn % backends.endpoints.len()].clone())
                }
            }
        })
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
            if let Some(upstream) = upstream(endpoint, &path, &mut problems) {
                if upstream.identity.is_none() {
                    problems.push(format!("{path}.identity: must not be empty"));
                    continue;
                }
                insert(
                    upstream.address,
                    format!("{path}.address"),
                    Destination::Workload(upstream),
                    &mut problems,
                );
            }
        }
        for (s, service) in source.services.iter().enumerate() {
            let path = format!("services[{s}]");
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
                        upstream(endpoint, &format!("{path}.endpoints[{e}]"), &mut problems)
                    })
                    .collect();
                let backends = Arc::new(Backends {
                    endpoints,
                    next: AtomicUsize::new(0),
                });
                for ip in &addresses {
                    insert(
                        SocketAddr::new(*ip, number),
                        format!("{path}.port"),
                        Destination::Service(backends.clone()),
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
            })
            .unwrap_or_default();
        ConfigError::from_problems(problems)?;
        Ok(Self {
            source,
            destinations,
            mesh,
        })
    }
}

/// Parses one endpoint, recording its problems.
fn upstream(
    endpoint: &proto::Endpoint,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Upstream> {
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
    Some(Upstream {
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
        }
    }

    #[test]
    fn services_take_their_endpoints_in_turn() {
        let s = Snapshot::try_from(snapshot()).expect("valid");
        let vip = "198.19.0.1:8000".parse().expect("addr");
        let first = s.resolve(vip).expect("known");
        let second = s.resolve(vip).expect("known");
        let Resolved::Upstream(first) = first else {
            panic!("{first:?}")
        };
        let Resolved::Upstream(second) = second else {
            panic!("{second:?}")
        };
        assert_eq!(
            first.identity.map(|i| i.to_string()).as_deref(),
            Some(HTTPBIN)
        );
        assert_eq!(second.address, "198.18.0.4:8080".parse().expect("addr"));
        assert_eq!(second.identity, None);
        assert!(s
            .resolve("198.19.0.1:9000".parse().expect("addr"))
            .is_none());
        assert!(matches!(
            s.resolve("198.18.0.3:8080".parse().expect("addr")),
            Some(Resolved::Upstream(Upstream {
                identity: Some(_),
                ..
            }))
        ));
    }

    #[test]
    fn a_port_without_endpoints_is_known_but_empty() {
        let mut p = snapshot();
        p.services[0].ports[0].endpoints.clear();
        let s = Snapshot::try_from(p).expect("valid");
        assert_eq!(
            s.resolve("198.19.0.1:8000".parse().expect("addr")),
            Some(Resolved::NoEndpoints)
        );
    }

    #[test]
    fn every_problem_names_its_field() {
        let mut p = snapshot();
        p.endpoints.push(endpoint("198.18.0.3:8080", HTTPBIN));
        p.endpoints.push(endpoint("nowhere", HTTPBIN));
        p.endpoints.push(endpoint("198.18.0.9:1", ""));
        p.services[0].addresses.push("not-an-ip".into());
        p.services[0].ports[0].endpoints[1].identity = "httpbin".into();
        p.services[0].ports[0].port = 70000;
        let err = Snapshot::try_from(p).expect_err("invalid").to_string();
        for expected in [
            "endpoints[1].address: 198.18.0.3:8080 is listed twice (first at endpoints[0].address)",
            "endpoints[2].address: \"nowhere\" is not an ip:port address",
            "endpoints[3].identity: must not be empty",
            "services[0].addresses[1]: \"not-an-ip\" is not an IP address",
            "services[0].ports[0].port: 70000 is not a port number",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from {err}");
        }
    }
}
