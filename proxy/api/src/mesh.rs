//! Mesh-wide settings a sidecar acts on (Istio's `MeshConfig` and the pod's `ProxyConfig`, as
//! the snapshot carries them), with Istio's defaults for anything unset.

use std::time::Duration;

use crate::path::PathNormalization;

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Destinations outside the registry pass through (Istio's default).
    #[default]
    AllowAny,
    /// Destinations outside the registry are refused.
    RegistryOnly,
}

/// Mesh settings a sidecar acts on, with Istio's defaults for anything unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshSettings {
    pub trust_domain: Option<String>,
    pub drain_duration: Option<Duration>,
    pub outbound: OutboundPolicy,
    pub path_normalization: PathNormalization,
    /// `X-Forwarded-For` hops to trust when finding a request's remote address.
    pub num_trusted_proxies: u32,
    /// The cluster the mesh's workloads run in; see [`MeshSettings::cluster_id`].
    pub cluster_id: Option<String>,
}

/// Istio's cluster id when none is configured.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

impl MeshSettings {
    /// The cluster the mesh's workloads run in (telemetry's `source_cluster` and
    /// `destination_cluster`), Istio's `Kubernetes` unless configured.
    pub fn cluster_id(&self) -> &str {
        self.cluster_id.as_deref().unwrap_or(DEFAULT_CLUSTER_ID)
    }
}
