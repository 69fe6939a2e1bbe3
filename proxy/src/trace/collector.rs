//! The collector a provider names, reached as Envoy reaches it: through the sidecar's own
//! snapshot (the endpoints of the provider's Service), dialled directly by the sidecar, whose
//! own traffic is not captured. One exporter per collector endpoint, provider and resource,
//! kept across pushes that leave those alone.

use std::{collections::HashMap, net::SocketAddr};

use opentelemetry::KeyValue;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{trace::SpanExporter as _, Resource};
use remora_api::{
    telemetry::spans::{Export, Provider},
    ServiceKey, Snapshot,
};

use super::export::{Counters, Exporter, Sdk};

/// What an exporter is made for: reused while all three stay the same.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub provider: Provider,
    pub endpoint: SocketAddr,
    /// The resource's `service.name`.
    pub service_name: String,
}

/// The endpoint spans for `provider` go to under `snapshot`: one of its Service's endpoints,
/// picked by `seed` (each sidecar its own, so sidecars spread over a collector's replicas);
/// `None` when the snapshot has none.
pub fn endpoint(provider: &Provider, snapshot: &Snapshot, seed: usize) -> Option<SocketAddr> {
    let service = snapshot.service(&ServiceKey {
        hostname: provider.service.as_str().into(),
        port: provider.port,
    })?;
    let mut addresses: Vec<SocketAddr> = service.endpoints.iter().map(|e| e.address).collect();
    if addresses.is_empty() {
        return None;
    }
    addresses.sort();
    Some(addresses[seed % addresses.len()])
}

/// Starts an exporter for `key` whose spans carry `resource`.
pub fn start(key: &Key, resource: &Resource, counters: Counters) -> Result<Exporter, String> {
    let provider = &key.provider;
    let headers: HashMap<String, String> = provider.headers.iter().cloned().collect();
    let http = || HyperClient::with_default_connector(provider.timeout, None);
    let base = format!("http://{}", key.endpoint);
    let timeout = provider.timeout;
    let exporter = match provider.export {
        Export::OtlpGrpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &headers {
                let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes());
                if let (Ok(name), Ok(value)) = (name, value.parse()) {
                    metadata.insert(name, value);
                }
            }
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(base)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .build()
                .map_err(|e| e.to_string())?;
            exporter.set_resource(resource);
            Exporter::spawn(Sdk(exporter), timeout, counters)
        }
        Export::OtlpHttp => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}{}", provider.path))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(timeout)
                .with_headers(headers)
                .with_http_client(http())
                .build()
                .map_err(|e| e.to_string())?;
            exporter.set_resource(resource);
            Exporter::spawn(Sdk(exporter), timeout, counters)
        }
        // Istio's `zipkin` provider posts Zipkin's own JSON, which the OpenTelemetry Zipkin
        // exporter (deprecated upstream in favour of OTLP, which Remora's `opentelemetry`
        // provider speaks) still writes.
        #[allow(deprecated)]
        Export::Zipkin => {
            let mut exporter = opentelemetry_zipkin::ZipkinExporter::builder()
                .with_collector_endpoint(format!("{base}{}", provider.path))
                .with_http_client(http())
                .build()
                .map_err(|e| e.to_string())?;
            exporter.set_resource(resource);
            Exporter::spawn(Sdk(exporter), timeout, counters)
        }
    };
    Ok(exporter)
}

/// The resource every span of this sidecar names: `service.name` as Istio's canonical
/// enrichment writes it (`<canonical service>.<namespace>`).
pub fn resource(service_name: &str, version: &str, namespace: &str) -> Resource {
    Resource::builder_empty()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.version", version.to_owned()),
            KeyValue::new("k8s.namespace.name", namespace.to_owned()),
        ])
        .build()
}
