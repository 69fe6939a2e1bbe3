//! A `trafficPolicy` as kept: the host-wide blocks and each port's, merged as Istio merges them
//! (a port's settings replace the policy whole, a subset's blocks replace the port's one by one),
//! and read from the spec.

use remora_api::proto::config as proto;

use super::settings::{load_balancing, outlier, pool, tls_mode};
use crate::config::routing::istio::{
    checks::{ranged, Problems},
    spec::{
        ConnectionPoolSpec, LoadBalancerSpec, OutlierDetectionSpec, TlsSpec, TrafficPolicySpec,
    },
    Meta,
};

/// A `trafficPolicy`: the host's, and each port's that replaces it.
#[derive(Debug, Clone, Default)]
pub(super) struct Policy {
    pub(super) parts: Parts,
    pub(super) ports: Vec<(u32, Parts)>,
}

impl Policy {
    /// Istio's `GetPortLevelTrafficPolicy`: the first port-level settings for `port` replace
    /// the whole policy (what they leave unset is not inherited); whether they did.
    pub(super) fn for_port(&self, port: u16) -> (&Parts, bool) {
        self.ports
            .iter()
            .find(|(number, _)| *number == u32::from(port))
            .map_or((&self.parts, false), |(_, parts)| (parts, true))
    }
}

/// The blocks of a policy, each replaced whole when merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Parts {
    load_balancer: Option<String>,
    connection_pool: Option<proto::ConnectionPool>,
    outlier_detection: Option<proto::OutlierDetection>,
    tls: Option<(String, Option<proto::OriginateTls>)>,
}

impl Parts {
    /// Istio's `MergeTrafficPolicy`: each block `over` sets replaces this one's; all of them
    /// when `over` is port-level.
    pub(super) fn merged(&self, over: &Parts, whole: bool) -> Parts {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>, whole: bool) -> Option<T> {
            if whole || over.is_some() {
                over.clone()
            } else {
                base.clone()
            }
        }
        Parts {
            load_balancer: pick(&self.load_balancer, &over.load_balancer, whole),
            connection_pool: pick(&self.connection_pool, &over.connection_pool, whole),
            outlier_detection: pick(&self.outlier_detection, &over.outlier_detection, whole),
            tls: pick(&self.tls, &over.tls, whole),
        }
    }

    pub(super) fn to_proto(&self, meta: &Meta) -> Option<proto::TrafficPolicy> {
        if *self == Parts::default() {
            return None;
        }
        Some(proto::TrafficPolicy {
            load_balancer: self.load_balancer.clone().unwrap_or_default(),
            connection_pool: self.connection_pool,
            outlier_detection: self.outlier_detection,
            tls_mode: self
                .tls
                .as_ref()
                .map(|(mode, _)| mode.clone())
                .unwrap_or_default(),
            tls: self.tls.as_ref().and_then(|(_, tls)| tls.clone()),
            policy: meta.full_name(),
        })
    }
}

pub(super) fn traffic_policy(spec: TrafficPolicySpec, path: &str, p: &mut Problems) -> Policy {
    let at = |field: &str| format!("{path}.{field}");
    let port_level = spec.port_level_settings.unwrap_or_default();
    let unsupported = [
        ("tunnel", &spec.tunnel),
        ("proxyProtocol", &spec.proxy_protocol),
        ("retryBudget", &spec.retry_budget),
    ];
    if spec.load_balancer.is_none()
        && spec.connection_pool.is_none()
        && spec.outlier_detection.is_none()
        && spec.tls.is_none()
        && port_level.is_empty()
        && unsupported.iter().all(|(_, value)| value.is_none())
    {
        p.add(path, "must set at least one field");
    }
    for (field, value) in unsupported {
        if value.is_some() {
            p.unsupported(&at(field));
        }
    }
    let parts = policy_parts(
        spec.load_balancer,
        spec.connection_pool,
        spec.outlier_detection,
        spec.tls,
        path,
        p,
    );
    let ports = port_level
        .into_iter()
        .enumerate()
        .map(|(i, settings)| {
            let path = at(&format!("portLevelSettings[{i}]"));
            let number = match settings.port {
                None => {
                    p.add(&format!("{path}.port"), "required");
                    0
                }
                Some(port) => ranged(
                    port.number.unwrap_or(0),
                    1..=65535,
                    &format!("{path}.port.number"),
                    p,
                )
                .unwrap_or(0),
            };
            if settings.load_balancer.is_none()
                && settings.connection_pool.is_none()
                && settings.outlier_detection.is_none()
                && settings.tls.is_none()
            {
                p.add(
                    &path,
                    "must set one of loadBalancer, connectionPool, outlierDetection and tls",
                );
            }
            let parts = policy_parts(
                settings.load_balancer,
                settings.connection_pool,
                settings.outlier_detection,
                settings.tls,
                &path,
                p,
            );
            (number, parts)
        })
        .collect();
    Policy { parts, ports }
}

fn policy_parts(
    load_balancer: Option<LoadBalancerSpec>,
    connection_pool: Option<ConnectionPoolSpec>,
    outlier_detection: Option<OutlierDetectionSpec>,
    tls: Option<TlsSpec>,
    path: &str,
    p: &mut Problems,
) -> Parts {
    Parts {
        load_balancer: load_balancer
            .map(|spec| load_balancing(spec, &format!("{path}.loadBalancer"), p)),
        connection_pool: connection_pool
            .map(|spec| pool(spec, &format!("{path}.connectionPool"), p)),
        outlier_detection: outlier_detection
            .map(|spec| outlier(spec, &format!("{path}.outlierDetection"), p)),
        tls: tls.map(|spec| tls_mode(spec, &format!("{path}.tls"), p)),
    }
}
