//! The kinds the control plane watches in a cluster: what the catalog reads, each in the API
//! version a cluster serves it in today (Istio's `v1` and Gateway API's `v1`; older versions
//! are served from the same storage, so nothing is missed).
//!
//! Deployments are not watched (a cluster has their Pods), nor ServiceAccounts or webhook
//! configurations: the catalog reads nothing from them that a cluster's Pods do not say (the
//! API server, not the control plane, decides which pods the webhook is called for).

use std::fmt;

use kube::core::{ApiResource, GroupVersionKind};

/// Where a kind is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// In every namespace (or a cluster-scoped kind).
    Cluster,
    /// Only in the control plane's root namespace (the mesh and injection ConfigMaps).
    RootNamespace,
}

/// One watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kind {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) scope: Scope,
}

impl Kind {
    const fn new(group: &'static str, version: &'static str, kind: &'static str) -> Self {
        Self {
            group,
            version,
            kind,
            scope: Scope::Cluster,
        }
    }

    const fn in_root_namespace(self) -> Self {
        Self {
            scope: Scope::RootNamespace,
            ..self
        }
    }

    /// The kind as the API serves it (its plural is the lower-case English one, as for every
    /// kind here).
    pub(crate) fn resource(&self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(self.group, self.version, self.kind))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group {
            "" => write!(f, "{} ({})", self.kind, self.version),
            group => write!(f, "{} ({group}/{})", self.kind, self.version),
        }
    }
}

/// Every kind watched, in the order the catalog reads them (the mesh config first, so
/// everything after is read with it).
pub(crate) const KINDS: [Kind; 14] = [
    Kind::new("", "v1", "ConfigMap").in_root_namespace(),
    Kind::new("", "v1", "Namespace"),
    Kind::new("", "v1", "Service"),
    Kind::new("", "v1", "Pod"),
    Kind::new("discovery.k8s.io", "v1", "EndpointSlice"),
    Kind::new("security.istio.io", "v1", "PeerAuthentication"),
    Kind::new("security.istio.io", "v1", "AuthorizationPolicy"),
    Kind::new("security.istio.io", "v1", "RequestAuthentication"),
    Kind::new("networking.istio.io", "v1", "ServiceEntry"),
    Kind::new("networking.istio.io", "v1", "VirtualService"),
    Kind::new("networking.istio.io", "v1", "DestinationRule"),
    Kind::new("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    Kind::new("gateway.networking.k8s.io", "v1", "GRPCRoute"),
    Kind::new("telemetry.istio.io", "v1", "Telemetry"),
];
