//! Distributed tracing as Istio's sidecars do it: each request's trace context is read from its
//! headers ([`context`]: W3C and B3), its sampling decided once (the caller's decision, else
//! the side's sampling share), and written on what the sidecar sends on. The server side is one
//! span per inbound request (the app's parent); the client side one span per try to an
//! upstream (retries and mirrors included), each the parent of the server span the peer makes,
//! or, for a request answered before any try (no route, a fault, no healthy upstream), one
//! span of its own ([`span`]). Sampled spans leave through a bounded queue per collector
//! ([`export`]) to the provider's collector, found in the snapshot ([`collector`]).
//!
//! A side traces only when its provider's collector can be reached: as istiod configures no
//! tracing then, trace headers pass through untouched. Everything that does not change per
//! request is built once per push ([`Tracer::sides`]): the formats written, the attributes
//! every span carries, the exporter. Per request, an unsampled one costs a few random draws
//! and its headers; attributes are only built for sampled requests.

pub mod collector;
pub mod context;
pub mod export;
mod span;

use std::sync::Arc;

use opentelemetry::{InstrumentationScope, KeyValue};
use parking_lot::Mutex;
use remora_api::{
    telemetry::{
        spans::{CustomValue, Export},
        Tracing,
    },
    Snapshot,
};

use context::Formats;
use export::{Counters, Exporter};

pub use span::{Attempt, Described, Ended, To, Trace};

/// The side a span reports: the server (inbound) or client (outbound) side of this sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Who this sidecar is, as its spans name it.
pub struct Me<'a> {
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub namespace: &'a str,
    pub cluster: &'a str,
}

/// The sidecar's exporters, one per collector in use, kept across pushes that leave it alone.
pub struct Tracer {
    counters: Counters,
    exporters: Mutex<Vec<(collector::Key, Exporter)>>,
    scope: InstrumentationScope,
    /// Which of a collector's endpoints this sidecar sends to, so that sidecars spread over
    /// its replicas; drawn once, so a sidecar keeps its endpoint across pushes.
    seed: usize,
}

impl Tracer {
    pub fn new(counters: Counters) -> Self {
        Self {
            counters,
            exporters: Mutex::default(),
            scope: InstrumentationScope::builder("remora-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            seed: usize::from(rand::random::<u16>()),
        }
    }

    /// The tracing of each side under `snapshot`, where this sidecar is `me`; exporters no
    /// side uses any more are let go (their queues drain, then their tasks end).
    pub fn sides(
        &self,
        snapshot: &Snapshot,
        me: &Me<'_>,
    ) -> (Option<Arc<SideTracer>>, Option<Arc<SideTracer>>) {
        let mut used = Vec::new();
        let telemetry = &snapshot.telemetry;
        let mut side =
            |tracing: Option<&Tracing>, side| self.side(tracing?, side, snapshot, me, &mut used);
        let client = side(telemetry.client.tracing.as_ref(), Side::Client);
        let server = side(telemetry.server.tracing.as_ref(), Side::Server);
        self.exporters.lock().retain(|(key, _)| used.contains(key));
        (client, server)
    }

    fn side(
        &self,
        tracing: &Tracing,
        side: Side,
        snapshot: &Snapshot,
        me: &Me<'_>,
        used: &mut Vec<collector::Key>,
    ) -> Option<Arc<SideTracer>> {
        let provider = &tracing.provider;
        let Some(endpoint) = collector::endpoint(provider, snapshot, self.seed) else {
            tracing::warn!(
                provider = %provider.name,
                service = %provider.service,
                port = provider.port,
                ?side,
                "no endpoint of the tracing provider's Service: not tracing"
            );
            return None;
        };
        let key = collector::Key {
            provider: provider.clone(),
            endpoint,
            service_name: format!("{}.{}", me.canonical_service, me.namespace),
        };
        let exporter = self.exporter(&key, me)?;
        used.push(key);
        Some(Arc::new(SideTracer::new(
            tracing,
            side,
            exporter,
            me,
            self.scope.clone(),
        )))
    }

    fn exporter(&self, key: &collector::Key, me: &Me<'_>) -> Option<Exporter> {
        let mut exporters = self.exporters.lock();
        if let Some((_, exporter)) = exporters.iter().find(|(k, _)| k == key) {
            return Some(exporter.clone());
        }
        let resource = collector::resource(&key.service_name, me.canonical_revision, me.namespace);
        match collector::start(key, &resource, self.counters.clone()) {
            Ok(exporter) => {
                exporters.push((key.clone(), exporter.clone()));
                Some(exporter)
            }
            Err(error) => {
                tracing::warn!(provider = %key.provider.name, %error, "cannot export spans");
                None
            }
        }
    }
}

/// One side's tracing under the snapshot in use.
pub struct SideTracer {
    tracing: Tracing,
    side: Side,
    /// The formats its provider reads, written on every request sent on.
    formats: Formats,
    exporter: Exporter,
    /// Attributes every span carries: Istio's, and the literal and environment custom tags.
    fixed: Vec<KeyValue>,
    /// Custom tags from request headers: (attribute, header, fallback).
    headers: Vec<(String, String, String)>,
    scope: InstrumentationScope,
}

impl SideTracer {
    fn new(
        tracing: &Tracing,
        side: Side,
        exporter: Exporter,
        me: &Me<'_>,
        scope: InstrumentationScope,
    ) -> Self {
        let formats = match tracing.provider.export {
            Export::Zipkin if tracing.provider.w3c => Formats::B3_MULTI | Formats::W3C,
            Export::Zipkin => Formats::B3_MULTI,
            Export::OtlpGrpc | Export::OtlpHttp => Formats::W3C,
        };
        let mut fixed = Vec::new();
        if tracing.istio_tags {
            fixed.extend([
                KeyValue::new("istio.canonical_service", me.canonical_service.to_owned()),
                KeyValue::new("istio.canonical_revision", me.canonical_revision.to_owned()),
                KeyValue::new("istio.namespace", me.namespace.to_owned()),
                KeyValue::new("istio.cluster_id", me.cluster.to_owned()),
            ]);
        }
        let mut headers = Vec::new();
        for tag in &tracing.custom_tags {
            let name = tag.name.clone();
            match &tag.value {
                CustomValue::Literal(value) => fixed.push(KeyValue::new(name, value.clone())),
                CustomValue::Environment {
                    name: var,
                    fallback,
                } => {
                    let value = std::env::var(var).unwrap_or_else(|_| fallback.clone());
                    fixed.push(KeyValue::new(name, value));
                }
                CustomValue::Header {
                    name: header,
                    fallback,
                } => headers.push((name, header.clone(), fallback.clone())),
            }
        }
        Self {
            tracing: tracing.clone(),
            side,
            formats,
            exporter,
            fixed,
            headers,
            scope,
        }
    }
}

#[cfg(test)]
mod tests;
