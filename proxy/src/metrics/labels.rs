//! The labels of Istio's standard metrics, resolved from the snapshot as Istio's stats filter
//! resolves them from peer metadata: who the source and destination workloads are, which
//! Service was called, and how. A peer is named only by what the snapshot says about its
//! verified identity or its address, never by anything a caller sends, and a peer the snapshot
//! does not know is `unknown`, so every label set is one of a bounded few.
//!
//! Values are `Arc<str>` built once per connection (inbound) or per upstream endpoint
//! (outbound) and interned by [`super::istio::Store`]; nothing here runs per request.

use std::sync::Arc;

use remora_api::{SpiffeId, Workload};

/// What Istio reports for a label nothing is known about.
pub const UNKNOWN: &str = "unknown";
/// Istio's canonical revision for a workload without a version.
pub const LATEST: &str = "latest";

/// Which side of a request this sidecar saw: as the caller's sidecar or the callee's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Istio's `connection_security_policy`: what the server side saw of the caller. The client
/// side reports `unknown`, as Istio's does.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Security {
    MutualTls,
    None,
    Unknown,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
            Security::Unknown => UNKNOWN,
        }
    }
}

/// One end of a request, as the `source_*` or `destination_*` labels name it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Peer {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub principal: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
}

pub fn or_unknown(value: &str) -> Arc<str> {
    Arc::from(if value.is_empty() { UNKNOWN } else { value })
}

impl Peer {
    /// A workload the snapshot knows, in `cluster`. `identity` is the one its sidecar proved
    /// (or, for an endpoint, must prove); the namespace is read from it when there is one, as
    /// Istio reads it from the peer's certificate.
    pub fn known(workload: &Workload, identity: Option<&SpiffeId>, cluster: &str) -> Self {
        let names = &workload.names;
        let namespace = identity.map_or(workload.namespace.as_str(), SpiffeId::namespace);
        Self {
            workload: or_unknown(&names.workload_name),
            namespace: or_unknown(namespace),
            principal: principal(identity),
            app: or_unknown(&names.app),
            version: or_unknown(&names.version),
            canonical_service: or_unknown(&names.canonical_service),
            canonical_revision: Arc::from(if names.canonical_revision.is_empty() {
                LATEST
            } else {
                names.canonical_revision.as_str()
            }),
            cluster: or_unknown(cluster),
        }
    }

    /// A peer the snapshot does not know: only what its certificate proved, if anything.
    pub fn unknown(identity: Option<&SpiffeId>) -> Self {
        let unknown: Arc<str> = Arc::from(UNKNOWN);
        Self {
            workload: unknown.clone(),
            namespace: identity.map_or(unknown.clone(), |id| Arc::from(id.namespace())),
            principal: principal(identity),
            app: unknown.clone(),
            version: unknown.clone(),
            canonical_service: unknown.clone(),
            canonical_revision: Arc::from(LATEST),
            cluster: unknown,
        }
    }

    /// `known` when there is a workload record, else `unknown`.
    pub fn of(workload: Option<&Workload>, identity: Option<&SpiffeId>, cluster: &str) -> Self {
        match workload {
            Some(workload) => Self::known(workload, identity, cluster),
            None => Self::unknown(identity),
        }
    }
}

fn principal(identity: Option<&SpiffeId>) -> Arc<str> {
    identity.map_or_else(|| Arc::from(UNKNOWN), |id| Arc::from(id.to_string()))
}

/// The Service a request was for: `destination_service` (its hostname),
/// `destination_service_name` and `destination_service_namespace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Service {
    pub host: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

impl Service {
    /// Service `host`: a Kubernetes Service's (`name.namespace.svc.<cluster domain>`) names its
    /// namespace; another host (a ServiceEntry's) is its own name, in `namespace` (the
    /// destination workload's, as Istio reports it).
    pub fn named(host: &str, namespace: &str) -> Self {
        let kubernetes = host
            .split_once(".svc.")
            .map(|(service, _)| service)
            .or_else(|| host.strip_suffix(".svc"))
            .and_then(|service| service.split_once('.'))
            .filter(|(name, ns)| !name.is_empty() && !ns.is_empty() && !ns.contains('.'));
        let (name, namespace) = kubernetes.unwrap_or((host, namespace));
        Self {
            host: Arc::from(host),
            name: Arc::from(name),
            namespace: or_unknown(namespace),
        }
    }

    /// No Service: a workload called by its own address.
    pub fn unknown(namespace: &str) -> Self {
        Self {
            host: Arc::from(UNKNOWN),
            name: Arc::from(UNKNOWN),
            namespace: or_unknown(namespace),
        }
    }

    /// One of Istio's special clusters (`PassthroughCluster`, `BlackHoleCluster`), which name
    /// traffic that went to no Service of the registry.
    pub fn cluster(name: &'static str) -> Self {
        Self {
            host: Arc::from(UNKNOWN),
            name: Arc::from(name),
            namespace: Arc::from(UNKNOWN),
        }
    }
}

/// Istio's name for traffic passed through to an address outside the registry.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's name for traffic refused under `REGISTRY_ONLY`.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// Everything a request's or connection's series is labelled with except its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SeriesLabels {
    pub reporter: Reporter,
    pub source: Peer,
    pub destination: Peer,
    pub service: Service,
    pub security: Security,
}

impl SeriesLabels {
    /// The label pairs in Istio's order, `request_protocol` and the outcome's left to the
    /// caller.
    pub fn pairs(&self) -> [(&'static str, &str); 20] {
        let (s, d) = (&self.source, &self.destination);
        [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &s.workload),
            ("source_canonical_service", &s.canonical_service),
            ("source_canonical_revision", &s.canonical_revision),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_version", &s.version),
            ("source_cluster", &s.cluster),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_version", &d.version),
            ("destination_service", &self.service.host),
            ("destination_canonical_service", &d.canonical_service),
            ("destination_canonical_revision", &d.canonical_revision),
            ("destination_service_name", &self.service.name),
            ("destination_service_namespace", &self.service.namespace),
            ("destination_cluster", &d.cluster),
        ]
    }
}

#[cfg(test)]
mod tests {

    use remora_api::WorkloadNames;

    use super::*;

    fn id(text: &str) -> SpiffeId {
        text.parse().expect("spiffe id")
    }

    fn httpbin(version: &str) -> Workload {
        Workload {
            namespace: "demo".into(),
            name: "httpbin-5d8f-x1".into(),
            labels: Default::default(),
            identity: Some(id("spiffe://cluster.local/ns/demo/sa/httpbin")),
            addresses: vec![],
            names: WorkloadNames {
                workload_name: "httpbin".into(),
                canonical_service: "httpbin".into(),
                canonical_revision: version.into(),
                app: "httpbin".into(),
                version: version.into(),
            },
        }
    }

    #[test]
    fn peers_are_named_as_istio_names_them() {
        let sa = id("spiffe://cluster.local/ns/demo/sa/httpbin");
        let cases: Vec<(&str, Peer, [&str; 8])> = vec![
            (
                "a known workload with its identity",
                Peer::known(&httpbin("v1"), Some(&sa), "Kubernetes"),
                [
                    "httpbin",
                    "demo",
                    "spiffe://cluster.local/ns/demo/sa/httpbin",
                    "httpbin",
                    "v1",
                    "httpbin",
                    "v1",
                    "Kubernetes",
                ],
            ),
            (
                "a known workload without labels: unknown app and version, latest revision",
                Peer::known(
                    &Workload {
                        names: WorkloadNames {
                            workload_name: "sleep".into(),
                            canonical_service: "sleep".into(),
                            ..WorkloadNames::default()
                        },
                        namespace: "demo".into(),
                        ..Workload::default()
                    },
                    None,
                    "east",
                ),
                [
                    "sleep", "demo", "unknown", "unknown", "unknown", "sleep", "latest", "east",
                ],
            ),
            (
                "an unknown caller that proved an identity: its namespace and principal only",
                Peer::unknown(Some(&id("spiffe://cluster.local/ns/other/sa/x"))),
                [
                    "unknown",
                    "other",
                    "spiffe://cluster.local/ns/other/sa/x",
                    "unknown",
                    "unknown",
                    "unknown",
                    "latest",
                    "unknown",
                ],
            ),
            (
                "an unknown caller in the clear",
                Peer::of(None, None, "Kubernetes"),
                [
                    "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "latest",
                    "unknown",
                ],
            ),
        ];
        for (case, peer, expected) in cases {
            let got = [
                &peer.workload,
                &peer.namespace,
                &peer.principal,
                &peer.app,
                &peer.version,
                &peer.canonical_service,
                &peer.canonical_revision,
                &peer.cluster,
            ]
            .map(|v| v.as_ref());
            assert_eq!(got, expected.map(|v| v), "{case}");
        }
    }

    #[test]
    fn services_are_named_by_their_host() {
        let cases = [
            (
                Service::named("httpbin.demo.svc.cluster.local", "other"),
                ["httpbin.demo.svc.cluster.local", "httpbin", "demo"],
            ),
            (
                Service::named("reviews.shop.svc.corp.example", ""),
                ["reviews.shop.svc.corp.example", "reviews", "shop"],
            ),
            (
                Service::named("api.example.com", "egress"),
                ["api.example.com", "api.example.com", "egress"],
            ),
            (
                Service::named("api.example.com", ""),
                ["api.example.com", "api.example.com", "unknown"],
            ),
            (
                Service::cluster(PASSTHROUGH_CLUSTER),
                ["unknown", "PassthroughCluster", "unknown"],
            ),
            (Service::unknown("demo"), ["unknown", "unknown", "demo"]),
        ];
        for (service, expected) in cases {
            assert_eq!(
                [&*service.host, &*service.name, &*service.namespace],
                expected
            );
        }
    }
}
