use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use remora_api::{proto::config as proto, Logical, Snapshot};

use super::*;
use crate::body::Body;

const SLEEP_ID: &str = "spiffe://cluster.local/ns/demo/sa/sleep";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/demo/sa/httpbin";

fn workload(pod: &str, name: &str, ip: &str, identity: &str, version: &str) -> proto::Workload {
    proto::Workload {
        namespace: "demo".into(),
        name: pod.into(),
        identity: identity.into(),
        addresses: vec![ip.into()],
        workload_name: name.into(),
        canonical_service: name.into(),
        canonical_revision: if version.is_empty() {
            "latest"
        } else {
            version
        }
        .into(),
        app: name.into(),
        version: version.into(),
        ..Default::default()
    }
}

/// sleep calls httpbin (Service port 8000 → pod port 80).
fn snapshot() -> Arc<Snapshot> {
    let wire = proto::Snapshot {
        version: "1".into(),
        workloads: vec![
            workload("sleep-7f-a", "sleep", "198.18.0.10", SLEEP_ID, ""),
            workload("httpbin-5d-b", "httpbin", "198.18.0.11", HTTPBIN_ID, "v1"),
        ],
        services: vec![proto::Service {
            hostname: "httpbin.demo.svc.cluster.local".into(),
            addresses: vec!["198.19.0.1".into()],
            ports: vec![proto::ServicePort {
                port: 8000,
                name: "http".into(),
                endpoints: vec![proto::Endpoint {
                    address: "198.18.0.11:80".into(),
                    identity: HTTPBIN_ID.into(),
                    workload: "demo/httpbin-5d-b".into(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(Snapshot::try_from(wire).expect("valid snapshot"))
}

/// The series of a caller at sleep's address (that proved `peer`, if anything) to port 80.
fn from_sleeps_address(
    metrics: &Metrics,
    snapshot: &Arc<Snapshot>,
    peer: Option<&SpiffeId>,
    security: Security,
) -> Arc<Series> {
    let ip = "198.18.0.10".parse().expect("ip");
    metrics.inbound(snapshot, ip, peer, 80, security)
}

fn own(pod: &str, id: &str) -> Option<Own> {
    Some(Own {
        namespace: "demo".into(),
        pod: pod.into(),
        id: id.parse().expect("id"),
    })
}

/// One request through a record: answered `status` (with `body`), its body read to the end.
async fn request(series: &Arc<Series>, status: StatusCode, body: &'static str) {
    let mut req = Request::get("/ip").body(()).expect("request");
    let record = Recorder::counting(series.clone()).start(&mut req);
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let recorded = record.respond(response, "via_upstream");
    recorded.into_body().collect().await.expect("body");
}

fn sample<'a>(text: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    text.lines().find(|line| {
        line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l))
    })
}

#[tokio::test]
async fn the_server_names_a_verified_caller_by_the_snapshot() {
    let metrics = Metrics::new(own("httpbin-5d-b", HTTPBIN_ID));
    let snapshot = snapshot();
    let sleep: SpiffeId = SLEEP_ID.parse().expect("id");
    let series = from_sleeps_address(&metrics, &snapshot, Some(&sleep), Security::MutualTls);
    for _ in 0..3 {
        request(&series, StatusCode::OK, "hello").await;
    }
    let text = metrics.encode();
    let line = sample(&text, "istio_requests_total", &[r#"response_code="200""#])
        .unwrap_or_else(|| panic!("no request sample in {text}"));
    for label in [
        r#"reporter="destination""#,
        r#"source_workload="sleep""#,
        r#"source_workload_namespace="demo""#,
        r#"source_principal="spiffe://cluster.local/ns/demo/sa/sleep""#,
        r#"source_app="sleep""#,
        r#"source_version="unknown""#,
        r#"source_canonical_service="sleep""#,
        r#"source_canonical_revision="latest""#,
        r#"source_cluster="Kubernetes""#,
        r#"destination_workload="httpbin""#,
        r#"destination_workload_namespace="demo""#,
        r#"destination_principal="spiffe://cluster.local/ns/demo/sa/httpbin""#,
        r#"destination_app="httpbin""#,
        r#"destination_version="v1""#,
        r#"destination_canonical_revision="v1""#,
        r#"destination_service="httpbin.demo.svc.cluster.local""#,
        r#"destination_service_name="httpbin""#,
        r#"destination_service_namespace="demo""#,
        r#"destination_cluster="Kubernetes""#,
        r#"request_protocol="http""#,
        r#"grpc_response_status="""#,
        r#"response_flags="-""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        assert!(line.contains(label), "{label} missing from {line}");
    }
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        text.contains("# TYPE istio_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
    let bytes = sample(
        &text,
        "istio_response_bytes_bucket",
        &[r#"le="+Inf""#, r#"source_workload="sleep""#],
    )
    .expect("response sizes");
    assert!(bytes.ends_with(" 3"), "{bytes}");
    let sum = sample(&text, "istio_response_bytes_sum", &[]).expect("sum");
    // "hello" and no headers, three times.
    assert!(sum.ends_with(" 15"), "{sum}");
}

#[tokio::test]
async fn a_caller_is_never_named_by_an_address_its_identity_does_not_match() {
    let metrics = Metrics::new(own("httpbin-5d-b", HTTPBIN_ID));
    let snapshot = snapshot();
    let other: SpiffeId = "spiffe://cluster.local/ns/evil/sa/x".parse().expect("id");
    // sleep's address, another identity: not sleep.
    let series = from_sleeps_address(&metrics, &snapshot, Some(&other), Security::MutualTls);
    let labels = series.labels();
    assert_eq!(&*labels.source.workload, "unknown");
    assert_eq!(&*labels.source.namespace, "evil");
    assert_eq!(
        &*labels.source.principal,
        "spiffe://cluster.local/ns/evil/sa/x"
    );
    // A caller in the clear at an address the snapshot knows is that workload.
    let plain = from_sleeps_address(&metrics, &snapshot, None, Security::None);
    assert_eq!(&*plain.labels().source.workload, "sleep");
    assert_eq!(&*plain.labels().source.principal, "unknown");
    // The same labels are the same series.
    let again = from_sleeps_address(&metrics, &snapshot, None, Security::None);
    assert!(Arc::ptr_eq(&plain, &again));
}

#[tokio::test]
async fn the_client_names_the_endpoint_and_service_it_called() {
    let metrics = Metrics::new(own("sleep-7f-a", SLEEP_ID));
    let snapshot = snapshot();
    let Logical::Service(port) = snapshot.lookup("198.19.0.1:8000".parse().expect("addr")) else {
        panic!("a Service");
    };
    let series = metrics.outbound(
        &snapshot,
        Some(&port.key.hostname),
        &port.endpoints[0],
        true,
    );
    request(&series, StatusCode::SERVICE_UNAVAILABLE, "").await;
    let unresolved = metrics.outbound_unresolved(&snapshot, Unresolved::Blackhole);
    let mut req = Request::get("/").body(()).expect("request");
    // A request whose caller went away before any answer.
    drop(Recorder::counting(unresolved).start(&mut req));
    let text = metrics.encode();
    let line = sample(&text, "istio_requests_total", &[r#"response_code="503""#])
        .unwrap_or_else(|| panic!("{text}"));
    for label in [
        r#"reporter="source""#,
        r#"source_workload="sleep""#,
        r#"source_principal="spiffe://cluster.local/ns/demo/sa/sleep""#,
        r#"destination_workload="httpbin""#,
        r#"destination_principal="spiffe://cluster.local/ns/demo/sa/httpbin""#,
        r#"destination_service="httpbin.demo.svc.cluster.local""#,
        r#"destination_service_namespace="demo""#,
        r#"connection_security_policy="unknown""#,
    ] {
        assert!(line.contains(label), "{label} missing from {line}");
    }
    let gone = sample(&text, "istio_requests_total", &[r#"response_code="0""#])
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        gone.contains(r#"destination_service_name="BlackHoleCluster""#),
        "{gone}"
    );
    assert!(gone.contains(r#"response_flags="DC""#), "{gone}");
    // The same endpoint reached in the clear (DestinationRule `tls.mode: DISABLE`): no
    // certificate on that hop, so no principal on either side, as Istio reports it.
    let plain = metrics.outbound(
        &snapshot,
        Some(&port.key.hostname),
        &port.endpoints[0],
        false,
    );
    let labels = plain.labels();
    assert_eq!(
        (&*labels.source.principal, &*labels.destination.principal),
        ("unknown", "unknown")
    );
    assert_eq!(&*labels.source.workload, "sleep");
    assert_eq!(&*labels.destination.workload, "httpbin");
}

#[tokio::test]
async fn a_trailers_only_grpc_status_and_the_paths_flags_are_labels() {
    let metrics = Metrics::default();
    let snapshot = snapshot();
    let series =
        metrics.outbound_unresolved(&snapshot, Unresolved::Service("x.demo.svc.cluster.local"));
    let mut req = Request::post("/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
    let record = Recorder::counting(series.clone()).start(&mut req);
    record.flag(Flag::RetryLimitExceeded);
    record.flag(Flag::UpstreamConnectFailure);
    let mut response = Response::new(Body::full(""));
    response
        .headers_mut()
        .insert("grpc-status", http::HeaderValue::from_static("14"));
    record
        .respond(response, "via_upstream")
        .into_body()
        .collect()
        .await
        .expect("body");
    let text = metrics.encode();
    let line = sample(
        &text,
        "istio_requests_total",
        &[r#"request_protocol="grpc""#],
    )
    .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(r#"grpc_response_status="14""#), "{line}");
    assert!(line.contains(r#"response_flags="UF,URX""#), "{line}");
    assert!(line.contains(r#"source_workload="unknown""#), "{line}");
}

#[tokio::test]
async fn tcp_connections_count_opened_closed_and_bytes_as_they_pass() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let metrics = Metrics::default();
    let snapshot = snapshot();
    let series = metrics.outbound_unresolved(&snapshot, Unresolved::Passthrough);
    let tcp = Recorder::counting(series).tcp();
    let value = |name: &str| {
        let text = metrics.encode();
        sample(
            &text,
            name,
            &[r#"destination_service_name="PassthroughCluster""#],
        )
        .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    assert_eq!(
        value("istio_tcp_connections_opened_total").as_deref(),
        Some("1")
    );
    let (caller, mut app) = tokio::io::duplex(64);
    let (callee, mut upstream) = tokio::io::duplex(64);
    let spliced = tokio::spawn(crate::transport::splice_recorded(
        tcp,
        crate::prefixed::PrefixedIo::unread(caller),
        callee,
    ));
    app.write_all(b"hello").await.expect("write");
    let mut got = [0; 5];
    upstream.read_exact(&mut got).await.expect("read");
    upstream.write_all(b"goodbye").await.expect("write");
    let mut got = [0; 7];
    app.read_exact(&mut got).await.expect("read");
    // Counted while the connection is open, as Istio reports a long-lived one.
    assert_eq!(
        value("istio_tcp_received_bytes_total").as_deref(),
        Some("5")
    );
    assert_eq!(value("istio_tcp_sent_bytes_total").as_deref(), Some("7"));
    assert!(matches!(
        value("istio_tcp_connections_closed_total").as_deref(),
        None | Some("0")
    ));
    drop((app, upstream));
    spliced.await.expect("joined").expect("spliced");
    for (name, expected) in [
        ("istio_tcp_connections_closed_total", "1"),
        ("istio_tcp_received_bytes_total", "5"),
        ("istio_tcp_sent_bytes_total", "7"),
    ] {
        assert_eq!(value(name).as_deref(), Some(expected), "{name}");
    }
}

#[test]
fn the_sidecars_health_is_exposed() {
    let metrics = Metrics::default();
    metrics.connection("outbound", "http1");
    metrics.config_update(true, "v7");
    metrics.retry();
    let open = metrics.open("inbound");
    let text = metrics.encode();
    for expected in [
        r#"remora_proxy_connections_total{direction="outbound",protocol="http1"} 1"#,
        r#"remora_config_version{version="v7"} 1"#,
        r#"remora_config_updates_total{result="accepted"} 1"#,
        "remora_upstream_retries_total 1",
        r#"remora_proxy_open_connections{direction="inbound"} 1"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    drop(open);
    assert!(metrics
        .encode()
        .contains(r#"remora_proxy_open_connections{direction="inbound"} 0"#));
}

#[tokio::test]
async fn overrides_drop_metrics_and_change_labels_on_a_scrape() {
    use proto::tag_value::Value as V;
    let metrics = Metrics::new(own("httpbin-5d-b", HTTPBIN_ID));
    let overrides = proto::TelemetrySide {
        metric_overrides: vec![
            proto::MetricOverride {
                metric: "requests_total".into(),
                remove_tags: vec!["source_principal".into()],
                tags: [
                    (
                        "team".to_owned(),
                        proto::TagValue {
                            value: Some(V::Literal("payments".into())),
                        },
                    ),
                    (
                        "user".to_owned(),
                        proto::TagValue {
                            value: Some(V::RequestHeader(proto::RequestHeader {
                                name: "x-user".into(),
                                fallback: "anonymous".into(),
                            })),
                        },
                    ),
                ]
                .into(),
                ..Default::default()
            },
            proto::MetricOverride {
                metric: "request_bytes".into(),
                disabled: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut wire = snapshot().dump.snapshot();
    wire.telemetry = Some(proto::Telemetry {
        client: None,
        server: Some(overrides),
    });
    let snapshot = Arc::new(Snapshot::try_from(wire).expect("valid"));
    metrics.apply(&snapshot);
    let sleep: SpiffeId = SLEEP_ID.parse().expect("id");
    let series = from_sleeps_address(&metrics, &snapshot, Some(&sleep), Security::MutualTls);
    let downstream = crate::access_log::Downstream::default();
    let recorder = metrics.recorder(crate::access_log::Direction::Server, series, downstream);
    for user in [Some("alice"), Some("alice"), None] {
        let mut req = Request::get("/ip");
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        let record = recorder.start(&mut req.body(()).expect("request"));
        record
            .respond(Response::new(Body::full("ok")), "via_upstream")
            .into_body()
            .collect()
            .await
            .expect("body");
    }
    let text = metrics.encode();
    assert!(!text.contains("istio_request_bytes"), "{text}");
    assert!(text.contains("istio_response_bytes_bucket"), "{text}");
    let alice = sample(&text, "istio_requests_total", &[r#"user="alice""#]).expect("alice");
    assert!(
        alice.contains(r#"team="payments""#) && alice.ends_with(" 2"),
        "{alice}"
    );
    assert!(!alice.contains("source_principal"), "{alice}");
    let anonymous =
        sample(&text, "istio_requests_total", &[r#"user="anonymous""#]).expect("fallback");
    assert!(anonymous.ends_with(" 1"), "{anonymous}");
    // Other metrics keep Istio's labels.
    let duration =
        sample(&text, "istio_request_duration_milliseconds_count", &[]).expect("duration");
    assert!(duration.contains("source_principal=") && !duration.contains("team="));
}

#[test]
fn tcp_connections_that_reach_no_upstream_carry_their_flag() {
    let metrics = Metrics::default();
    let series = metrics.outbound_unresolved(
        &snapshot(),
        Unresolved::Service("httpbin.demo.svc.cluster.local"),
    );
    let recorder = Recorder::counting(series);
    recorder.tcp_failed(Some(Flag::NoHealthyUpstream));
    recorder.tcp_failed(Some(Flag::UpstreamConnectFailure));
    let text = metrics.encode();
    for flag in ["UH", "UF"] {
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            let line = sample(&text, name, &[&format!(r#"response_flags="{flag}""#)])
                .unwrap_or_else(|| panic!("{name} {flag} missing from {text}"));
            assert!(line.ends_with(" 1"), "{line}");
        }
    }
}
