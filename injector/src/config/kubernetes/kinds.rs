//! The kinds the control plane watches in a cluster: what the catalog reads, each in every API
//! version the catalog reads it in, newest first. A kind is watched in the newest version the
//! cluster serves (Istio before 1.22 serves its kinds only as `v1beta1`): an older install must
//! not look like one without policies.
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
    /// The versions it is read in, the preferred first.
    pub(crate) versions: &'static [&'static str],
    pub(crate) kind: &'static str,
    pub(crate) scope: Scope,
}

impl Kind {
    const fn new(
        group: &'static str,
        versions: &'static [&'static str],
        kind: &'static str,
    ) -> Self {
        Self {
            group,
            versions,
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

    /// Whether it is one of Istio's kinds, whose `status.conditions` the status writer keeps.
    pub(crate) fn is_istio(&self) -> bool {
        self.group.ends_with(".istio.io")
    }

    /// The kind in its preferred version, as the catalog is handed it (the versions of a kind
    /// hold the same fields).
    pub(crate) fn resource(&self) -> ApiResource {
        self.resource_in(self.versions[0])
    }

    /// The kind in `version` (its plural is the lower-case English one, as for every kind
    /// here).
    pub(crate) fn resource_in(&self, version: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(self.group, version, self.kind))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group {
            "" => write!(f, "{}", self.kind),
            group => write!(f, "{} ({group})", self.kind),
        }
    }
}

/// Every kind watched, in the order the catalog reads them (the mesh config first, so
/// everything after is read with it).
pub(crate) const KINDS: [Kind; 15] = [
    Kind::new("", V1, "ConfigMap").in_root_namespace(),
    Kind::new("", V1, "Namespace"),
    Kind::new("", V1, "Service"),
    Kind::new("", V1, "Pod"),
    Kind::new("discovery.k8s.io", V1, "EndpointSlice"),
    Kind::new("security.istio.io", SECURITY, "PeerAuthentication"),
    Kind::new("security.istio.io", SECURITY, "AuthorizationPolicy"),
    Kind::new("security.istio.io", SECURITY, "RequestAuthentication"),
    Kind::new("networking.istio.io", NETWORKING, "ServiceEntry"),
    Kind::new("networking.istio.io", NETWORKING, "VirtualService"),
    Kind::new("networking.istio.io", NETWORKING, "DestinationRule"),
    Kind::new("networking.istio.io", NETWORKING, "Sidecar"),
    Kind::new("gateway.networking.k8s.io", &["v1", "v1beta1"], "HTTPRoute"),
    Kind::new("gateway.networking.k8s.io", V1, "GRPCRoute"),
    Kind::new("telemetry.istio.io", &["v1", "v1alpha1"], "Telemetry"),
];

const V1: &[&str] = &["v1"];
/// The versions `config::security` reads (a test keeps the two lists together).
pub(crate) const SECURITY: &[&str] = &["v1", "v1beta1"];
/// The versions `config::routing::istio` reads (a test keeps the two lists together).
pub(crate) const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
