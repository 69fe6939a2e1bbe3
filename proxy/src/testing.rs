//! Test support (the `testing` feature): identities issued by a throwaway mesh CA, and snapshots
//! built in a line, so tests run the real request path in-process, without root, over pipes or
//! loopback.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use remora_api::{proto::config as proto, Snapshot, SpiffeId};
use remora_injector::ca::Authority;
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, PrivateKeyDer};

use crate::identity::{parse_certs, CurrentCert, Identity, Issued};

/// A mesh CA for one test.
pub struct TestCa(Authority);

impl Default for TestCa {
    fn default() -> Self {
        Self(Authority::generate("cluster.local").expect("generating a test CA"))
    }
}

impl TestCa {
    /// A workload identity `spiffe://cluster.local/ns/{namespace}/sa/{account}`, certified by
    /// this CA for an hour.
    pub fn identity(&self, namespace: &str, account: &str) -> Identity {
        let id = SpiffeId::new("cluster.local", namespace, account).expect("a valid SPIFFE id");
        let issued = self
            .0
            .issue(&id, Duration::from_secs(3600))
            .expect("issuing a test certificate");
        let chain = parse_certs(issued.chain_pem.as_bytes()).expect("chain PEM");
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM");
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(parse_certs(issued.roots_pem.as_bytes()).expect("roots"));
        Identity {
            cert: Arc::new(CurrentCert::new(
                Issued::new(chain, key, &id).expect("a usable certificate"),
            )),
            id,
            roots,
        }
    }
}

/// Builds a validated [`Snapshot`].
#[derive(Default)]
pub struct SnapshotBuilder(proto::Snapshot);

impl SnapshotBuilder {
    /// A Service `hostname` at `cluster_ip:port`, with `endpoints` (address, and the identity
    /// of the sidecar in front of it, if any).
    pub fn service(
        mut self,
        hostname: &str,
        cluster_ip: SocketAddr,
        endpoints: &[(SocketAddr, Option<&SpiffeId>)],
    ) -> Self {
        self.0.services.push(proto::Service {
            hostname: hostname.to_owned(),
            addresses: vec![cluster_ip.ip().to_string()],
            ports: vec![proto::ServicePort {
                port: u32::from(cluster_ip.port()),
                name: "http".to_owned(),
                app_protocol: String::new(),
                endpoints: endpoints
                    .iter()
                    .map(|(address, identity)| proto::Endpoint {
                        address: address.to_string(),
                        identity: identity.map(ToString::to_string).unwrap_or_default(),
                        workload: String::new(),
                    })
                    .collect(),
                ..Default::default()
            }],
            passthrough: false,
            ..Default::default()
        });
        self
    }

    /// The routes of the last Service's port, spelled as the snapshot's JSON
    /// (`[{"kind": "VirtualService", "backends": [...]}]`).
    pub fn routes(mut self, routes: serde_json::Value) -> Self {
        let port = self
            .0
            .services
            .last_mut()
            .and_then(|service| service.ports.last_mut())
            .expect("a Service to route");
        port.http_routes = serde_json::from_value(routes).expect("valid HttpRoutes");
        self
    }

    /// What the last Service's port declares it speaks (its `appProtocol`, or a port name).
    pub fn declared(mut self, protocol: &str) -> Self {
        let port = self
            .0
            .services
            .last_mut()
            .and_then(|service| service.ports.last_mut())
            .expect("a Service to declare");
        protocol.clone_into(&mut port.app_protocol);
        self
    }

    /// What the sidecar's own workload port `port` declares it speaks (an `appProtocol`, or
    /// a port name).
    pub fn own_port(mut self, port: u16, protocol: &str) -> Self {
        self.0.inbound_ports.push(proto::InboundPort {
            port: u32::from(port),
            app_protocol: protocol.to_owned(),
        });
        self
    }

    /// A mesh workload at `address` whose sidecar is `identity`.
    pub fn workload(mut self, address: SocketAddr, identity: &SpiffeId) -> Self {
        self.0.endpoints.push(proto::Endpoint {
            address: address.to_string(),
            identity: identity.to_string(),
            workload: String::new(),
        });
        self
    }

    /// Istio's `outboundTrafficPolicy: REGISTRY_ONLY`.
    pub fn registry_only(mut self) -> Self {
        self.0.mesh = Some(proto::MeshSettings {
            outbound_traffic_policy: "REGISTRY_ONLY".to_owned(),
            ..Default::default()
        });
        self
    }

    /// The policies of the sidecar's own workload, spelled as the snapshot's JSON
    /// (`{"authorizationPolicies": [...]}`).
    pub fn security(mut self, security: serde_json::Value) -> Self {
        self.0.security = Some(serde_json::from_value(security).expect("a valid Security"));
        self
    }

    pub fn build(self) -> Snapshot {
        Snapshot::try_from(self.0).expect("a valid test snapshot")
    }
}
