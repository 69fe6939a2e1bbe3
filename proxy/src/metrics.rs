//! Istio-standard Prometheus metrics (`istio_requests_total`, `istio_tcp_*`), so Kiali and the
//! Istio dashboards read Remora sidecars unchanged. Exposed on 15090 `/stats/prometheus`.
//!
//! The request path never calls a counter by hand: each request carries a [`RequestRecord`] and
//! each spliced connection a [`TcpRecord`], made from labels resolved once per connection
//! ([`Observed`]), completed with the outcome, and recorded when dropped, so a request that ends
//! early (the caller went away) is still counted, with response code 0 as Envoy does.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::identity::Issued;

/// Which side of a request this sidecar saw: as the caller's sidecar or the callee's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // Istio's label values are lowercase.
pub enum Reporter {
    source,
    destination,
}

/// Istio's `connection_security_policy`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Security {
    mutual_tls,
    none,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub connection_security_policy: Security,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub request_protocol: &'static str,
    pub connection_security_policy: Security,
}

/// Which listener accepted a connection, and what it turned out to carry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    pub protocol: &'static str,
}

/// Whether the sidecar took or refused a snapshot.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub result: &'static str,
}

/// The policy a decision concerns, `namespace/name` (`-`: the default decided).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabels {
    pub policy: String,
    pub action: &'static str,
}

/// What AuthorizationPolicy did: denials by deciding policy, AUDIT and dry-run matches.
#[derive(Default)]
struct AuthzMetrics {
    denied: Family<PolicyLabels, Counter>,
    audit: Family<PolicyLabels, Counter>,
    dry_run: Family<DryRunLabels, Counter>,
}

/// How current the sidecar's config and certificate are: with the control plane gone it keeps
/// serving, and these show for how long it has been on its own.
#[derive(Default)]
struct ControlPlaneMetrics {
    connected: Gauge,
    updates: Family<UpdateLabels, Counter>,
    last_update: Gauge,
    cert_expiry: Gauge,
}

pub struct Metrics {
    registry: Registry,
    control_plane: ControlPlaneMetrics,
    connections: Family<ConnectionLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    authz: AuthzMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connections = Family::default();
        let requests = Family::default();
        let tcp_opened = Family::default();
        let tcp_closed = Family::default();
        let tcp_sent = Family::default();
        let tcp_received = Family::default();
        // prometheus-client appends `_total` to counter names.
        registry.register(
            "remora_proxy_connections",
            "Connections accepted, by listener (outbound, inbound, tunnel) and detected protocol",
            connections.clone(),
        );
        registry.register(
            "istio_requests",
            "Requests handled, by reporter and response code",
            requests.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "Opaque TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Opaque TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the caller on opaque TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the caller on opaque TCP connections",
            tcp_received.clone(),
        );
        let control_plane = ControlPlaneMetrics::default();
        registry.register(
            "remora_control_plane_connected",
            "1 while the discovery stream to the control plane is up",
            control_plane.connected.clone(),
        );
        registry.register(
            "remora_config_updates",
            "Snapshots received, by result (accepted, rejected)",
            control_plane.updates.clone(),
        );
        registry.register(
            "remora_config_last_update_timestamp_seconds",
            "When the snapshot in use was received (Unix time)",
            control_plane.last_update.clone(),
        );
        registry.register(
            "remora_certificate_expiry_timestamp_seconds",
            "When the workload certificate in use expires (Unix time)",
            control_plane.cert_expiry.clone(),
        );
        let authz = AuthzMetrics::default();
        registry.register(
            "remora_authz_denied",
            "Requests and connections denied by AuthorizationPolicy, by the deciding policy \
             (- when no ALLOW policy matched)",
            authz.denied.clone(),
        );
        registry.register(
            "remora_authz_audit",
            "Requests and connections an AUDIT policy matched",
            authz.audit.clone(),
        );
        registry.register(
            "remora_authz_dry_run",
            "Requests and connections a dry-run policy matched (never enforced), by its action",
            authz.dry_run.clone(),
        );
        Self {
            registry,
            authz,
            control_plane,
            connections,
            requests,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
        }
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    pub fn control_plane_connected(&self, connected: bool) {
        self.control_plane.connected.set(i64::from(connected));
    }

    pub fn config_update(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.control_plane
            .updates
            .get_or_create(&UpdateLabels { result })
            .inc();
        if accepted {
            self.control_plane
                .last_update
                .set(unix_seconds(SystemTime::now()));
        }
    }

    pub fn certificate(&self, issued: &Issued) {
        self.control_plane
            .cert_expiry
            .set(unix_seconds(issued.not_after));
    }

    pub fn connection(&self, direction: &'static str, protocol: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                direction,
                protocol,
            })
            .inc();
    }

    pub fn authz_denied(&self, policy: &str) {
        let labels = PolicyLabels {
            policy: policy.to_owned(),
        };
        self.authz.denied.get_or_create(&labels).inc();
    }

    pub fn authz_audit(&self, policy: &str) {
        let labels = PolicyLabels {
            policy: policy.to_owned(),
        };
        self.authz.audit.get_or_create(&labels).inc();
    }

    pub fn authz_dry_run(&self, policy: &str, action: &'static str) {
        let labels = DryRunLabels {
            policy: policy.to_owned(),
            action,
        };
        self.authz.dry_run.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Istio's `request_protocol` of an HTTP request: `grpc` for gRPC, `http` otherwise.
pub fn request_protocol(headers: &http::HeaderMap) -> &'static str {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        "grpc"
    } else {
        "http"
    }
}

/// What every request or spliced stream of one connection is labelled with, resolved once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub reporter: Reporter,
    pub security: Security,
}

/// One request's metrics, recorded when dropped.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
}

impl RequestRecord {
    /// A request of `request_protocol` (see [`request_protocol`]) has started.
    pub fn new(metrics: Arc<Metrics>, observed: Observed, request_protocol: &'static str) -> Self {
        Self {
            metrics,
            labels: RequestLabels {
                reporter: observed.reporter,
                request_protocol,
                response_code: 0,
                connection_security_policy: observed.security,
            },
        }
    }

    /// The response the caller got.
    pub fn complete(&mut self, status: http::StatusCode) {
        self.labels.response_code = status.as_u16();
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.metrics.requests.get_or_create(&self.labels).inc();
    }
}

/// One opaque TCP stream's metrics: counted as opened when made, as closed (with its byte
/// counts) when dropped.
pub struct TcpRecord {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    received: u64,
    sent: u64,
}

impl TcpRecord {
    pub fn open(metrics: Arc<Metrics>, observed: Observed) -> Self {
        let labels = TcpLabels {
            reporter: observed.reporter,
            request_protocol: "tcp",
            connection_security_policy: observed.security,
        };
        metrics.tcp_opened.get_or_create(&labels).inc();
        Self {
            metrics,
            labels,
            received: 0,
            sent: 0,
        }
    }

    /// Bytes received from and sent to the caller.
    pub fn bytes(&mut self, received: u64, sent: u64) {
        self.received = received;
        self.sent = sent;
    }
}

impl Drop for TcpRecord {
    fn drop(&mut self) {
        let labels = &self.labels;
        self.metrics.tcp_closed.get_or_create(labels).inc();
        self.metrics
            .tcp_received
            .get_or_create(labels)
            .inc_by(self.received);
        self.metrics
            .tcp_sent
            .get_or_create(labels)
            .inc_by(self.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expose_istio_names_and_labels() {
        let metrics = Arc::new(Metrics::default());
        let source = Observed {
            reporter: Reporter::source,
            security: Security::mutual_tls,
        };
        for _ in 0..2 {
            let mut request = RequestRecord::new(metrics.clone(), source, "http");
            request.complete(http::StatusCode::OK);
        }
        // A request whose caller went away before an answer.
        drop(RequestRecord::new(metrics.clone(), source, "grpc"));
        let mut tcp = TcpRecord::open(
            metrics.clone(),
            Observed {
                reporter: Reporter::destination,
                security: Security::none,
            },
        );
        assert!(metrics.encode().contains(
            r#"istio_tcp_connections_opened_total{reporter="destination",request_protocol="tcp",connection_security_policy="none"} 1"#
        ));
        tcp.bytes(5, 7);
        drop(tcp);
        metrics.connection("outbound", "http1");
        let text = metrics.encode();
        for expected in [
            r#"remora_proxy_connections_total{direction="outbound",protocol="http1"} 1"#,
            r#"istio_requests_total{reporter="source",request_protocol="http",response_code="200",connection_security_policy="mutual_tls"} 2"#,
            r#"istio_requests_total{reporter="source",request_protocol="grpc",response_code="0",connection_security_policy="mutual_tls"} 1"#,
            r#"istio_tcp_connections_closed_total{reporter="destination",request_protocol="tcp",connection_security_policy="none"} 1"#,
            r#"istio_tcp_received_bytes_total{reporter="destination",request_protocol="tcp",connection_security_policy="none"} 5"#,
            r#"istio_tcp_sent_bytes_total{reporter="destination",request_protocol="tcp",connection_security_policy="none"} 7"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }
}
