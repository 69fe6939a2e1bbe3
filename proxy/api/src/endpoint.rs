//! What a snapshot's destinations are made of: a Service port's name across snapshots, an
//! endpoint to connect to, and the workload behind it. Shared by the snapshot, which indexes
//! them, and the routes, which resolve to them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::spiffe::SpiffeId;

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
    /// The workload (pod) it belongs to, when the control plane knows it.
    pub workload: Option<Arc<Workload>>,
}

/// Endpoints the sidecar finds by resolving names (a ServiceEntry with `resolution: DNS` or
/// `DNS_ROUND_ROBIN`), resolved again as the names' addresses change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEndpoints {
    pub names: Vec<DnsName>,
    /// `DNS_ROUND_ROBIN`: only the first address of a name is used (Envoy's `LOGICAL_DNS`);
    /// otherwise every address is an endpoint (`STRICT_DNS`).
    pub first_only: bool,
}

/// A name to resolve and the port its addresses take.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DnsName {
    pub host: Arc<str>,
    pub port: u16,
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A workload (pod) the snapshot knows: what endpoints belong to, what subsets select, and
/// what telemetry names a peer by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    pub labels: Labels,
    /// The identity its sidecar proves; `None` when it runs without one.
    pub identity: Option<SpiffeId>,
    pub addresses: Vec<IpAddr>,
    /// Telemetry's names for it, as istiod derives them (see [`WorkloadNames`]).
    pub names: WorkloadNames,
}

/// A workload's labels, sorted by key. A sidecar holds one set per workload in the mesh, and
/// a pod has a handful: a `BTreeMap` would give each set a node sized for eleven, so at ten
/// thousand pods this is megabytes smaller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`, if the workload carries it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Later pairs win over earlier ones with the same key, as a map's inserts would.
impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let sorted: BTreeMap<Box<str>, Box<str>> = pairs
            .into_iter()
            .map(|(k, v)| (Box::from(k.as_ref()), Box::from(v.as_ref())))
            .collect();
        Self(sorted.into_iter().collect())
    }
}

/// What Istio's standard metrics and spans call a workload: the workload it belongs to (a
/// Deployment, ..., or the pod), its canonical service and revision, and its `app` and
/// `version` labels (empty when it has none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadNames {
    pub workload_name: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::Labels;

    #[test]
    fn labels_are_found_by_key_and_a_later_pair_wins() {
        let labels: Labels = [("version", "v1"), ("app", "httpbin"), ("version", "v2")]
            .into_iter()
            .collect();
        for (key, expected) in [
            ("app", Some("httpbin")),
            ("version", Some("v2")),
            ("tier", None),
            ("", None),
        ] {
            assert_eq!(labels.get(key), expected, "{key}");
        }
        assert!(!labels.is_empty());
        assert!(Labels::default().is_empty());
        assert_eq!(Labels::default().get("app"), None);
    }
}
