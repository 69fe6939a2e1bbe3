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
    /// How much load the sidecar takes before refusing more.
    pub overload: OverloadLimits,
}

/// How much load a sidecar takes before refusing more: connections open at once, per listener
/// and over all of them, and requests per listener waiting for their response's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverloadLimits {
    pub listener_connections: usize,
    pub global_connections: usize,
    pub listener_pending_requests: usize,
}

impl Default for OverloadLimits {
    /// Far above what a pod's app serves, and below what exhausts a sidecar: 16,384 open
    /// connections per listener (each costs a descriptor or two), and as many requests in
    /// flight; no limit over all listeners beyond the per-listener ones (Envoy's default).
    fn default() -> Self {
        Self {
            listener_connections: 16_384,
            global_connections: usize::MAX,
            listener_pending_requests: 16_384,
        }
    }
}

impl OverloadLimits {
    /// The limits `source` sets, each unset one (0) the default.
    pub fn from_proto(source: Option<&crate::proto::config::OverloadLimits>) -> Self {
        let defaults = Self::default();
        let Some(source) = source else {
            return defaults;
        };
        let or = |value: u64, default: usize| match value {
            0 => default,
            value => usize::try_from(value).unwrap_or(usize::MAX),
        };
        Self {
            listener_connections: or(
                source.listener_max_connections,
                defaults.listener_connections,
            ),
            global_connections: or(source.global_max_connections, defaults.global_connections),
            listener_pending_requests: or(
                source.listener_max_pending_requests,
                defaults.listener_pending_requests,
            ),
        }
    }
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
