use std::{future::Future, pin::Pin, sync::Mutex as StdMutex, time::Duration};

use http::{HeaderValue, Request};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use remora_api::{
    route::Percent,
    telemetry::spans::{CustomTag, Provider},
    SpiffeId,
};

use super::{export::Sink, *};

/// Keeps what it is sent.
struct Kept(Arc<StdMutex<Vec<SpanData>>>);

impl Sink for Kept {
    fn export(
        &mut self,
        batch: Vec<SpanData>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        if let Ok(mut kept) = self.0.lock() {
            kept.extend(batch);
        }
        Box::pin(async { Ok(()) })
    }
}

fn counters() -> Counters {
    let counter = |name: &str| prometheus::IntCounter::new(name, name).expect("counter");
    Counters {
        exported: counter("exported"),
        queue_full: counter("queue_full"),
        export_failed: counter("export_failed"),
    }
}

fn tracing(percent: f64, export: Export) -> Tracing {
    Tracing {
        sampling: Percent::compile(percent).expect("percent"),
        propagation: true,
        istio_tags: true,
        custom_tags: vec![
            CustomTag {
                name: "team".into(),
                value: CustomValue::Literal("payments".into()),
            },
            CustomTag {
                name: "user".into(),
                value: CustomValue::Header {
                    name: "x-user".into(),
                    fallback: "nobody".into(),
                },
            },
        ],
        provider: Provider {
            name: "otel".into(),
            export,
            service: "otel.observability.svc.cluster.local".into(),
            port: 4317,
            path: String::new(),
            timeout: Duration::from_secs(3),
            headers: Vec::new(),
            w3c: false,
            max_tag_length: Some(16),
        },
    }
}

const ME: Me<'static> = Me {
    canonical_service: "httpbin",
    canonical_revision: "v1",
    namespace: "demo",
    cluster: "Kubernetes",
};

/// A side tracing by `tracing`, whose spans end up in the returned list.
fn side(tracing: Tracing, side: Side) -> (Arc<SideTracer>, Arc<StdMutex<Vec<SpanData>>>) {
    let kept = Arc::new(StdMutex::new(Vec::new()));
    let exporter = Exporter::spawn(Kept(kept.clone()), Duration::from_secs(3), counters());
    let scope = InstrumentationScope::builder("test").build();
    let built = SideTracer::new(&tracing, side, exporter, &ME, scope);
    (Arc::new(built), kept)
}

async fn exported(kept: &StdMutex<Vec<SpanData>>) -> Vec<SpanData> {
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    // The batch starts when the export task sees its first span, then waits to fill.
    settle().await;
    tokio::time::advance(export::BATCH_DELAY).await;
    settle().await;
    std::mem::take(&mut *kept.lock().expect("lock"))
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn described() -> Described {
    Described {
        source: Some(Arc::from("spiffe://cluster.local/ns/demo/sa/sleep")),
        destination: Some(Arc::from("spiffe://cluster.local/ns/demo/sa/httpbin")),
        service: Some(Arc::from("httpbin.demo.svc.cluster.local")),
        port: 8080,
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_span_continues_the_callers_trace_and_parents_the_app() {
    let (server, kept) = side(tracing(0.0, Export::OtlpGrpc), Side::Server);
    let mut req = Request::get("http://httpbin:8000/get?x=1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-user", "alice")
        .body(())
        .expect("request");
    let mut trace = server.start(&mut req);
    // The app's parent is this hop's span, in the same trace.
    let sent = context::extract(req.headers());
    let (trace_id, span_id) = sent.parent.expect("written");
    assert_eq!(trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    assert_ne!(span_id, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(sent.sampled, Some(true), "the caller's decision beats 0%");
    trace.route(|| "default".into());
    trace.end(
        &Ended {
            code: 503,
            flags: &"UF",
            grpc_status: None,
        },
        described,
    );
    let spans = exported(&kept).await;
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.name, "httpbin.demo.svc.cluster.local:8000/*");
    assert_eq!(
        span.span_context.span_id(),
        SpanId::from_bytes(span_id.to_be_bytes())
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_bytes(0x00f0_67aa_0ba9_02b7_u64.to_be_bytes())
    );
    assert!(matches!(span.status, Status::Error { .. }));
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/get"),
        ("url.query", "x=1"),
        ("http.response.status_code", "503"),
        ("response_flags", "UF"),
        ("route_name", "default"),
        ("peer.identity", "spiffe://cluster.local/ns/demo/sa/sleep"),
        ("istio.canonical_service", "httpbin"),
        ("team", "payments"),
        ("user", "alice"),
    ] {
        assert_eq!(attribute(span, key).as_deref(), Some(value), "{key}");
    }
}

#[tokio::test(start_paused = true)]
async fn each_try_is_a_client_span_and_the_next_hops_parent() {
    let (client, kept) = side(tracing(100.0, Export::OtlpGrpc), Side::Client);
    let mut req = Request::get("/ip").body(()).expect("request");
    let trace = client.start(&mut req);
    assert!(
        !req.headers().contains_key("traceparent"),
        "written per try"
    );
    let identity: SpiffeId = "spiffe://cluster.local/ns/demo/sa/httpbin"
        .parse()
        .expect("id");
    let cluster: Arc<str> = Arc::from("outbound|8000||httpbin.demo.svc.cluster.local");
    let host: Arc<str> = Arc::from("httpbin.demo.svc.cluster.local");
    let to = To {
        address: "198.18.0.12:15008".parse().expect("address"),
        identity: Some(&identity),
        cluster: Some(&cluster),
        service: Some((&host, 8000)),
    };
    let mut tries = Vec::new();
    for attempt in ["1", "2"] {
        let mut try_req = Request::get("/ip/a/path/longer/than/sixteen")
            .header("x-envoy-attempt-count", attempt)
            .body(())
            .expect("request");
        let span = trace.attempt(&mut try_req, &to).expect("sampled");
        tries.push((context::extract(try_req.headers()), span));
    }
    let (first, first_span) = tries.remove(0);
    let (second, second_span) = tries.remove(0);
    assert_eq!(
        first.parent.map(|p| p.0),
        second.parent.map(|p| p.0),
        "one trace"
    );
    assert_ne!(first.parent, second.parent, "a span per try");
    first_span.end(0, &"UF", None);
    // The second try is given up (its future dropped): still reported, unanswered.
    drop(second_span);
    let spans = exported(&kept).await;
    assert_eq!(spans.len(), 2);
    for (span, sent) in spans.iter().zip([first, second]) {
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(
            span.parent_span_id,
            SpanId::INVALID,
            "the app sent no context"
        );
        let (_, span_id) = sent.parent.expect("written");
        assert_eq!(
            span.span_context.span_id(),
            SpanId::from_bytes(span_id.to_be_bytes())
        );
        assert_eq!(span.name, "httpbin.demo.svc.cluster.local:8000/*");
        assert_eq!(
            attribute(span, "peer.identity").as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/httpbin")
        );
        assert!(matches!(span.status, Status::Error { .. }));
    }
    assert_eq!(
        attribute(&spans[1], "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(attribute(&spans[0], "user").as_deref(), Some("nobody"));
    // maxTagLength bounds the path, as Envoy's max_path_tag_length does.
    assert_eq!(
        attribute(&spans[0], "url.path").as_deref(),
        Some("/ip/a/path/longe")
    );
}

fn try_to<'a>(identity: &'a SpiffeId, host: &'a Arc<str>) -> To<'a> {
    To {
        address: "198.18.0.12:15008".parse().expect("address"),
        identity: Some(identity),
        cluster: None,
        service: Some((host, 9080)),
    }
}

fn a_try() -> Request<()> {
    Request::get("/").body(()).expect("request")
}

#[tokio::test(start_paused = true)]
async fn the_answering_try_ends_with_the_request_and_a_local_answer_has_its_own_span() {
    let (client, kept) = side(tracing(100.0, Export::OtlpGrpc), Side::Client);
    let identity: SpiffeId = "spiffe://cluster.local/ns/shop/sa/reviews"
        .parse()
        .expect("id");
    let host: Arc<str> = Arc::from("reviews.shop.svc.cluster.local");
    let to = try_to(&identity, &host);
    let unreachable = || -> Described { unreachable!("a try was made") };

    // The first try answers 503 and is retried; the second's answer streams to the caller.
    let mut trace = client.start(&mut a_try());
    let first = trace.attempt(&mut a_try(), &to).expect("sampled");
    trace.answered(first, 503);
    let second = trace.attempt(&mut a_try(), &to).expect("sampled");
    trace.answered(second, 200);
    let spans = exported(&kept).await;
    assert_eq!(
        spans.len(),
        1,
        "the retried try ended when the next one answered"
    );
    assert_eq!(
        attribute(&spans[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    trace.end(
        &Ended {
            code: 200,
            flags: &"-",
            grpc_status: Some(0),
        },
        unreachable,
    );
    let spans = exported(&kept).await;
    assert_eq!(
        spans.len(),
        1,
        "the answering try, and no span of the request's own"
    );
    assert_eq!(
        attribute(&spans[0], "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(matches!(spans[0].status, Status::Unset));

    // A mirror's try ends with its answer.
    let mirror = trace.for_mirror();
    let copy = mirror.attempt(&mut a_try(), &to).expect("sampled");
    mirror.answered(copy, 200);
    assert_eq!(exported(&kept).await.len(), 1);

    // Answered before any try (no route): the request's own client span.
    let mut req = Request::get("http://reviews.shop:9080/")
        .body(())
        .expect("request");
    let mut trace = client.start(&mut req);
    trace.route(|| "reviews.shop.0".into());
    trace.end(
        &Ended {
            code: 404,
            flags: &"NR",
            grpc_status: None,
        },
        || Described {
            source: None,
            destination: None,
            service: Some(host.clone()),
            port: 0,
        },
    );
    let spans = exported(&kept).await;
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(span.name, "reviews.shop.svc.cluster.local:9080/*");
    assert_eq!(attribute(span, "response_flags").as_deref(), Some("NR"));
    assert_eq!(
        attribute(span, "route_name").as_deref(),
        Some("reviews.shop.0")
    );
    assert!(matches!(span.status, Status::Error { .. }));
}

#[tokio::test(start_paused = true)]
async fn unsampled_requests_propagate_their_decision_and_report_nothing() {
    let (client, kept) = side(tracing(0.0, Export::Zipkin), Side::Client);
    let mut req = Request::get("/").body(()).expect("request");
    let trace = client.start(&mut req);
    let mut sent = Request::get("/").body(()).expect("request");
    let to = To {
        address: "198.18.0.12:8000".parse().expect("address"),
        identity: None,
        cluster: None,
        service: None,
    };
    assert!(trace.attempt(&mut sent, &to).is_none());
    // Zipkin's provider writes B3, unsampled.
    assert_eq!(sent.headers()["x-b3-sampled"], "0");
    assert!(!sent.headers().contains_key("traceparent"));
    assert!(exported(&kept).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn b3_in_is_b3_out_and_propagation_can_be_off() {
    let (server, _kept) = side(tracing(0.0, Export::OtlpGrpc), Side::Server);
    let mut req = Request::get("/")
        .header("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")
        .body(())
        .expect("request");
    server.start(&mut req);
    let headers = req.headers();
    let b3 = headers["b3"].to_str().expect("ascii");
    assert!(b3.starts_with("4bf92f3577b34da6a3ce929d0e0e4736-"), "{b3}");
    assert!(b3.ends_with("-1-00f067aa0ba902b7"), "{b3}");
    assert!(
        headers.contains_key("traceparent"),
        "and the provider's own format"
    );

    let mut quiet = tracing(100.0, Export::OtlpGrpc);
    quiet.propagation = false;
    let (server, kept) = side(quiet, Side::Server);
    let original =
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    let mut req = Request::get("/")
        .header("traceparent", original.clone())
        .body(())
        .expect("request");
    let mut trace = server.start(&mut req);
    assert_eq!(req.headers()["traceparent"], original, "left as it came");
    trace.end(
        &Ended {
            code: 200,
            flags: &"-",
            grpc_status: None,
        },
        described,
    );
    assert!(
        exported(&kept).await.is_empty(),
        "the caller said not sampled"
    );
}
