//! The sidecar's metrics, on 15090 `/stats/prometheus` (and merged with the app's on 15020),
//! in Prometheus' text format 0.0.4 as Envoy serves it: Istio's standard metrics
//! (`istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, `istio_tcp_*`) with Istio's full label set, so Kiali and Istio's
//! dashboards read Remora sidecars unchanged, and the sidecar's own health (`remora_*`).
//!
//! The request path never calls a counter by hand: each request carries a [`RequestRecord`]
//! and each spliced connection a [`TcpRecord`], made from a [`Series`] resolved once per
//! connection (inbound: the caller as the snapshot knows its verified identity and address;
//! outbound: once per upstream endpoint), completed with the outcome, and counted when over;
//! the same records write the access log ([`crate::access_log`]) when one is configured.

pub mod flags;
pub mod istio;
pub mod labels;
mod names;
pub mod record;

use std::{
    net::IpAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use prometheus::{
    core::Collector, Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use remora_api::{telemetry::Telemetry, Endpoint, Snapshot, SpiffeId};

use crate::{
    access_log::{AccessLogs, Direction, Downstream},
    config::Config,
    identity::Issued,
    trace::{self, Tracer},
};

pub use flags::{Flag, Flags};
pub use istio::Series;
pub use labels::{Reporter, Security};
pub use names::Own;
pub use record::{RecordedBody, Recorder, RequestRecord, SideState, TcpRecord};

use labels::{Peer, SeriesLabels, Service, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use names::Names;

/// The sidecar's health: how current its config and certificate are, what it accepted, and
/// what its policies and traffic settings did.
struct Health {
    connected: IntGauge,
    updates: IntCounterVec,
    last_update: IntGauge,
    config_version: IntGaugeVec,
    cert_expiry: IntGauge,
    connections: IntCounterVec,
    open: IntGaugeVec,
    refused_connections: IntCounterVec,
    refused_requests: IntCounterVec,
    denied: IntCounterVec,
    audit: IntCounterVec,
    dry_run: IntCounterVec,
    retries: IntCounter,
    mirrors: IntCounterVec,
    log_dropped: IntCounter,
    spans: trace::export::Counters,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    // Names are constants, distinct by construction: registering cannot fail.
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        tracing::error!(error = %e, "registering a metric");
    }
    collector
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

impl Health {
    fn new(registry: &Registry) -> Self {
        Self {
            connected: gauge(
                registry,
                "remora_control_plane_connected",
                "1 while the discovery stream to the control plane is up",
            ),
            updates: counter_vec(
                registry,
                "remora_config_updates_total",
                "Snapshots received, by result (accepted, rejected)",
                &["result"],
            ),
            last_update: gauge(
                registry,
                "remora_config_last_update_timestamp_seconds",
                "When the snapshot in use was received (Unix time)",
            ),
            config_version: gauge_vec(
                registry,
                "remora_config_version",
                "1 for the version of the snapshot in use",
                &["version"],
            ),
            cert_expiry: gauge(
                registry,
                "remora_certificate_expiry_timestamp_seconds",
                "When the workload certificate in use expires (Unix time)",
            ),
            connections: counter_vec(
                registry,
                "remora_proxy_connections_total",
                "Connections accepted, by listener (outbound, inbound, tunnel) and detected \
                 protocol",
                &["direction", "protocol"],
            ),
            open: gauge_vec(
                registry,
                "remora_proxy_open_connections",
                "Connections open now, by listener (outbound, inbound, tunnel)",
                &["direction"],
            ),
            refused_connections: counter_vec(
                registry,
                "remora_proxy_overload_connections_refused_total",
                "Connections closed as soon as accepted because their listener (or the whole \
                 sidecar) had as many open as it takes, by listener",
                &["listener"],
            ),
            refused_requests: counter_vec(
                registry,
                "remora_proxy_overload_requests_refused_total",
                "Requests answered 503 because their listener had as many waiting for a \
                 response as it takes, by listener",
                &["listener"],
            ),
            denied: counter_vec(
                registry,
                "remora_authz_denied_total",
                "Requests and connections denied by AuthorizationPolicy, by the deciding policy \
                 (- when no ALLOW policy matched)",
                &["policy"],
            ),
            audit: counter_vec(
                registry,
                "remora_authz_audit_total",
                "Requests and connections an AUDIT policy matched",
                &["policy"],
            ),
            dry_run: counter_vec(
                registry,
                "remora_authz_dry_run_total",
                "Requests and connections a dry-run policy matched (never enforced), by its \
                 action",
                &["policy", "action"],
            ),
            retries: register(
                registry,
                IntCounter::new(
                    "remora_upstream_retries_total",
                    "Requests tried again after a failed try",
                )
                .unwrap_or_else(|e| panic!("retries: {e}")),
            ),
            mirrors: counter_vec(
                registry,
                "remora_upstream_mirrors_total",
                "Mirrored copies of requests, by result (sent, failed, skipped: a body too \
                 large to copy)",
                &["result"],
            ),
            log_dropped: register(
                registry,
                IntCounter::new(
                    "remora_access_log_dropped_total",
                    "Access log entries dropped because the writer was behind",
                )
                .unwrap_or_else(|e| panic!("log drops: {e}")),
            ),
            spans: {
                let dropped = counter_vec(
                    registry,
                    "remora_tracing_spans_dropped_total",
                    "Spans not exported, by reason (queue_full: the export queue was full; \
                     export_failed: the collector failed or did not answer in time)",
                    &["reason"],
                );
                trace::export::Counters {
                    exported: register(
                        registry,
                        IntCounter::new(
                            "remora_tracing_spans_exported_total",
                            "Spans the collector accepted",
                        )
                        .unwrap_or_else(|e| panic!("spans: {e}")),
                    ),
                    queue_full: dropped.with_label_values(&["queue_full"]),
                    export_failed: dropped.with_label_values(&["export_failed"]),
                }
            },
        }
    }
}

pub struct Metrics {
    registry: Registry,
    istio: istio::Store,
    names: Names,
    health: Health,
    /// What each side records, from the snapshot in use (its overrides apply on a scrape).
    telemetry: ArcSwap<Telemetry>,
    /// The access logs, which records write to beside counting.
    logs: AccessLogs,
    /// The span exporters, which records report to.
    tracer: Tracer,
    /// What records of each side do, as of the last push.
    client: Arc<ArcSwap<SideState>>,
    server: Arc<ArcSwap<SideState>>,
}

impl Default for Metrics {
    /// Metrics of a sidecar that does not know its own pod (tests): it reports itself as an
    /// unknown workload.
    fn default() -> Self {
        Self::new(None)
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    /// The metrics of the sidecar of `own` pod.
    pub fn new(own: Option<Own>) -> Self {
        let registry = Registry::new();
        let health = Health::new(&registry);
        let logs = AccessLogs::new(health.log_dropped.clone());
        let tracer = Tracer::new(health.spans.clone());
        Self {
            registry,
            istio: istio::Store::default(),
            names: Names::new(own),
            health,
            telemetry: ArcSwap::default(),
            logs,
            tracer,
            client: Arc::default(),
            server: Arc::default(),
        }
    }

    /// Follows `config`: each snapshot's telemetry is put in use (metric overrides, access
    /// logs, request-valued labels, tracing) as it is, by connections old and new.
    pub async fn follow(self: Arc<Self>, config: Arc<Config>) {
        let mut changes = config.changes();
        loop {
            let snapshot = config.load_full();
            self.apply(&snapshot);
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Puts `snapshot`'s telemetry in use.
    fn apply(&self, snapshot: &Arc<Snapshot>) {
        let telemetry = snapshot.telemetry.clone();
        self.logs.update(&telemetry);
        // Derived now, once, rather than by the first connections after the push.
        let local = self.names.local(snapshot);
        let me = &local.me;
        let (client_tracing, server_tracing) = self.tracer.sides(
            snapshot,
            &trace::Me {
                canonical_service: &me.canonical_service,
                canonical_revision: &me.canonical_revision,
                namespace: &me.namespace,
                cluster: &me.cluster,
            },
        );
        for (direction, side, state, tracing) in [
            (
                Direction::Client,
                &telemetry.client,
                &self.client,
                client_tracing,
            ),
            (
                Direction::Server,
                &telemetry.server,
                &self.server,
                server_tracing,
            ),
        ] {
            let tags = side.request_tags();
            state.store(Arc::new(SideState {
                metrics: side.metrics,
                log: self.logs.current(direction),
                request_tags: (!tags.is_empty()).then(|| Arc::from(tags)),
                tracing,
            }));
        }
        self.telemetry.store(Arc::new(telemetry));
    }

    /// What a connection on `direction`'s side (between `downstream` addresses) records with:
    /// `series`, and that side's state as each request or stream starts.
    pub fn recorder(
        &self,
        direction: Direction,
        series: Arc<Series>,
        downstream: Downstream,
    ) -> Recorder {
        let side = match direction {
            Direction::Client => &self.client,
            Direction::Server => &self.server,
        };
        Recorder {
            series,
            downstream,
            side: side.clone(),
        }
    }

    pub fn control_plane_connected(&self, connected: bool) {
        self.health.connected.set(i64::from(connected));
    }

    /// A snapshot was received: `accepted` (with its `version`) or refused.
    pub fn config_update(&self, accepted: bool, version: &str) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.health.updates.with_label_values(&[result]).inc();
        if accepted {
            self.health.last_update.set(unix_seconds(SystemTime::now()));
            self.health.config_version.reset();
            self.health
                .config_version
                .with_label_values(&[version])
                .set(1);
        }
    }

    pub fn certificate(&self, issued: &Issued) {
        self.health.cert_expiry.set(unix_seconds(issued.not_after));
    }

    /// A connection was accepted on `direction`'s listener and detected as `protocol`.
    pub fn connection(&self, direction: &'static str, protocol: &'static str) {
        self.health
            .connections
            .with_label_values(&[direction, protocol])
            .inc();
    }

    /// Counts a connection open on `direction`'s listener until the guard is dropped.
    pub fn open(&self, direction: &'static str) -> OpenConnection {
        let gauge = self.health.open.with_label_values(&[direction]);
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts a connection closed at accept on `listener`'s, over its limit.
    pub fn overload_refused_connection(&self, listener: &'static str) {
        self.health
            .refused_connections
            .with_label_values(&[listener])
            .inc();
    }

    /// Counts a request refused on `listener`'s, over its limit.
    pub fn overload_refused_request(&self, listener: &'static str) {
        self.health
            .refused_requests
            .with_label_values(&[listener])
            .inc();
    }

    pub fn authz_denied(&self, policy: &str) {
        self.health.denied.with_label_values(&[policy]).inc();
    }

    pub fn authz_audit(&self, policy: &str) {
        self.health.audit.with_label_values(&[policy]).inc();
    }

    pub fn authz_dry_run(&self, policy: &str, action: &'static str) {
        self.health
            .dry_run
            .with_label_values(&[policy, action])
            .inc();
    }

    pub fn retry(&self) {
        self.health.retries.inc();
    }

    pub fn mirror(&self, result: &'static str) {
        self.health.mirrors.with_label_values(&[result]).inc();
    }

    /// The series of requests and connections a caller at `client` (having proved `peer`, if
    /// anything) makes to app port `port` of this pod, as `security` describes its transport.
    pub fn inbound(
        &self,
        snapshot: &Arc<Snapshot>,
        client: IpAddr,
        peer: Option<&SpiffeId>,
        port: u16,
        security: Security,
    ) -> Arc<Series> {
        let local = self.names.local(snapshot);
        let cluster = snapshot.mesh.cluster_id();
        let source = Peer::of(
            snapshot.workload_at(client, peer).map(|w| &**w),
            peer,
            cluster,
        );
        self.istio.intern(SeriesLabels {
            reporter: Reporter::Destination,
            source,
            destination: local.me.clone(),
            service: local.service(port),
            security,
        })
    }

    /// The series of requests to `endpoint` of Service `service` (none: the workload was
    /// called by its address), reached over mesh mTLS or not (`mesh_tls`): as Istio reads the
    /// principals from the upstream connection's certificates, a hop in the clear (or over TLS
    /// the sidecar originates to a destination outside the mesh) has `unknown` ones.
    pub fn outbound(
        &self,
        snapshot: &Arc<Snapshot>,
        service: Option<&str>,
        endpoint: &Endpoint,
        mesh_tls: bool,
    ) -> Arc<Series> {
        let local = self.names.local(snapshot);
        let mut destination = Peer::of(
            endpoint.workload.as_deref(),
            endpoint.identity.as_ref(),
            snapshot.mesh.cluster_id(),
        );
        let service = match service {
            Some(host) => Service::named(host, &destination.namespace),
            None => Service::unknown(&destination.namespace),
        };
        if mesh_tls {
            return self.outbound_series(&local.me, destination, service);
        }
        let unknown: Arc<str> = Arc::from(labels::UNKNOWN);
        destination.principal = unknown.clone();
        let me = Peer {
            principal: unknown,
            ..local.me.clone()
        };
        self.outbound_series(&me, destination, service)
    }

    /// The series of an outbound connection's requests before (or without) an upstream:
    /// Service `host`, or an address outside the registry (`PassthroughCluster`) or refused
    /// (`BlackHoleCluster`).
    pub fn outbound_unresolved(&self, snapshot: &Arc<Snapshot>, to: Unresolved<'_>) -> Arc<Series> {
        let local = self.names.local(snapshot);
        let service = match to {
            Unresolved::Service(host) => Service::named(host, ""),
            Unresolved::Passthrough => Service::cluster(PASSTHROUGH_CLUSTER),
            Unresolved::Blackhole => Service::cluster(BLACKHOLE_CLUSTER),
        };
        self.outbound_series(&local.me, Peer::unknown(None), service)
    }

    fn outbound_series(&self, me: &Peer, destination: Peer, service: Service) -> Arc<Series> {
        self.istio.intern(SeriesLabels {
            reporter: Reporter::Source,
            source: me.clone(),
            destination,
            service,
            security: Security::Unknown,
        })
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut families = self.istio.families(&self.telemetry.load());
        families.extend(self.registry.gather());
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Where an outbound request went when no upstream took it.
#[derive(Clone, Copy, Debug)]
pub enum Unresolved<'a> {
    Service(&'a str),
    Passthrough,
    Blackhole,
}

/// An open connection, counted until dropped.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
