//! The status port against real apps on loopback: probes pass and fail as the app does, and
//! the app's metrics follow the sidecar's.

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::BodyExt;
use remora_api::app_probe::parse_probers;
use tokio::net::TcpListener;

use super::*;

/// An HTTP app on 127.0.0.1: `/ready` 200, `/redirect` 302, `/metrics` an OpenMetrics page,
/// anything else 503; it records the `x-probe` header it last saw.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/ready" if req.headers().get("x-probe").is_some() => (200, ""),
                        "/redirect" => (302, ""),
                        "/metrics" => (
                            200,
                            "# TYPE app_requests counter\napp_requests_total 7\n# EOF\n",
                        ),
                        _ => (503, "down"),
                    };
                    let mut response =
                        Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = StatusCode::from_u16(status).expect("status");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    address
}

fn port(probers: &str, app_metrics: Option<(u16, String)>) -> StatusPort {
    let readiness = Readiness::default();
    readiness.set_ready();
    StatusPort {
        readiness,
        metrics: Arc::new(Metrics::default()),
        probers: parse_probers(probers).expect("probers"),
        app_metrics,
        pod_ip: IpAddr::from([127, 0, 0, 1]),
    }
}

async fn get(port: &StatusPort, path: &str) -> (StatusCode, String) {
    let response = port
        .handle(Request::get(path).body(()).expect("request"))
        .await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn probes_pass_and_fail_as_the_app_does() {
    let app = app().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_port = closed.local_addr().expect("address").port();
    drop(closed);
    let p = app.port();
    let probers = format!(
        r#"{{"/app-health/web/readyz":{{"httpGet":{{"path":"/ready","port":{p},"httpHeaders":[{{"name":"x-probe","value":"1"}}]}}}},
            "/app-health/web/livez":{{"tcpSocket":{{"port":{p}}}}},
            "/app-health/web/startupz":{{"httpGet":{{"path":"/redirect","port":{p}}}}},
            "/app-health/down/readyz":{{"httpGet":{{"path":"/other","port":{p}}}}},
            "/app-health/down/livez":{{"tcpSocket":{{"port":{closed_port}}}}}}}"#
    );
    let status_port = port(&probers, None);
    let cases = [
        ("/app-health/web/readyz", StatusCode::OK),
        ("/app-health/web/livez", StatusCode::OK),
        ("/app-health/web/startupz", StatusCode::OK),
        ("/app-health/down/readyz", StatusCode::SERVICE_UNAVAILABLE),
        ("/app-health/down/livez", StatusCode::INTERNAL_SERVER_ERROR),
        ("/app-health/unknown/readyz", StatusCode::NOT_FOUND),
        ("/healthz/ready", StatusCode::OK),
    ];
    for (path, expected) in cases {
        assert_eq!(get(&status_port, path).await.0, expected, "{path}");
    }
}

#[tokio::test]
async fn the_apps_metrics_follow_the_sidecars_and_its_failure_is_not_ours() {
    let app = app().await;
    let merged = port("{}", Some((app.port(), "/metrics".to_owned())));
    let (status, text) = get(&merged, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    let sidecar = Metrics::default().encode();
    assert!(text.starts_with(&sidecar), "{text}");
    // The app's OpenMetrics end marker is dropped: the whole is text format 0.0.4.
    assert!(
        text.ends_with("# TYPE app_requests counter\napp_requests_total 7\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");

    let failing = port("{}", Some((app.port(), "/missing".to_owned())));
    let (status, text) = get(&failing, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains("app_requests"), "{text}");
}
