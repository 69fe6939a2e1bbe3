//! Control-plane metrics on 15014, named as istiod's where istiod has one (`pilot_xds`,
//! `pilot_xds_pushes`, `pilot_total_xds_rejects`, `citadel_server_*`) so existing Istio
//! dashboards and alerts keep working.

use prometheus_client::{
    encoding::{text::encode, EncodeMetric, MetricEncoder},
    metrics::{counter::Counter, gauge::Gauge, MetricType},
    registry::Registry,
};

/// A counter exposed under istiod's exact name: istiod's exporter omits the `_total` suffix
/// that prometheus-client gives counters, and dashboards query the bare name.
#[derive(Clone, Debug, Default)]
pub struct IstiodCounter(Counter);

impl IstiodCounter {
    pub fn inc(&self) {
        self.0.inc();
    }
}

impl EncodeMetric for IstiodCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Counts stay far below 2^53, where f64 is exact.
        #[allow(clippy::cast_precision_loss)]
        let value = self.0.get() as f64;
        encoder.encode_gauge(&value)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

pub struct Metrics {
    registry: Registry,
    /// Sidecars with an open discovery stream.
    pub connected: Gauge,
    pub pushes: IstiodCounter,
    pub nacks: IstiodCounter,
    pub rejected_objects: Gauge,
    pub csrs: IstiodCounter,
    pub issued: IstiodCounter,
    pub auth_failures: IstiodCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connected = Gauge::default();
        let pushes = IstiodCounter::default();
        let nacks = IstiodCounter::default();
        let rejected_objects = Gauge::default();
        let csrs = IstiodCounter::default();
        let issued = IstiodCounter::default();
        let auth_failures = IstiodCounter::default();
        registry.register(
            "pilot_xds",
            "Sidecars connected to this control plane",
            connected.clone(),
        );
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
