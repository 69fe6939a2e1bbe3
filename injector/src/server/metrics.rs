//! Control-plane metrics on 15014, named as istiod's where istiod has one (`pilot_xds`,
//! `pilot_xds_pushes`, `pilot_total_xds_rejects`, `citadel_server_*`) so existing Istio
//! dashboards and alerts keep working.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

pub struct Metrics {
    registry: Registry,
    /// Sidecars with an open discovery stream.
    pub connected: Gauge,
    pub pushes: Counter,
    pub nacks: Counter,
    pub rejected_objects: Gauge,
    pub csrs: Counter,
    pub issued: Counter,
    pub auth_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connected = Gauge::default();
        let pushes = Counter::default();
        let nacks = Counter::default();
        let rejected_objects = Gauge::default();
        let csrs = Counter::default();
        let issued = Counter::default();
        let auth_failures = Counter::default();
        registry.register(
            "pilot_xds",
            "Sidecars connected to this control plane",
            connected.clone(),
        );
        // prometheus-client appends `_total` to counters; these are istiod's names without it.
        registry.register(
            "pilot_xds_pushes",
            "Snapshots pushed to sidecars",
            pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Snapshots sidecars rejected (NACK)",
            nacks.clone(),
        );
        registry.register(
            "remora_config_rejected_objects",
            "Objects in the config sources rejected as invalid",
            rejected_objects.clone(),
        );
        registry.register(
            "citadel_server_csr_count",
            "Certificate signing requests received",
            csrs.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "Certificates issued",
            issued.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "Certificate requests whose token proved nothing",
            auth_failures.clone(),
        );
        Self {
            registry,
            connected,
            pushes,
            nacks,
            rejected_objects,
            csrs,
            issued,
            auth_failures,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
