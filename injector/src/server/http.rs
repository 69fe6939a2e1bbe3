//! The control plane's plain-HTTP port (15014): `/metrics` (Prometheus), `/ready` (200 once
//! config is loaded and the gRPC port is bound, which is when this port is bound too) and
//! `/debug/rejections` (the objects the sources rejected, and why, as JSON) and `/debug/syncz`
//! (each subscribed sidecar's sent and acknowledged versions and last rejection).

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{metrics::Metrics, sync_status::SyncStatus, CatalogWatch};

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    catalog: CatalogWatch,
    status: Arc<SyncStatus>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                tracing::warn!(%error, "accepting on the metrics port");
                // E.g. out of file descriptors: give the process a moment instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, catalog, status) = (metrics.clone(), catalog.clone(), status.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, &catalog, &status);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%error, "metrics connection");
            }
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    catalog: &CatalogWatch,
    status: &SyncStatus,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => match metrics.encode() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(error) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                error.to_string(),
            ),
        },
        "/ready" => reply(StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/debug/rejections" => {
            let rejected: Vec<serde_json::Value> = catalog
                .borrow()
                .rejected
                .iter()
                .map(|r| serde_json::json!({"object": r.object, "reason": r.reason}))
                .collect();
            json(&rejected)
        }
        "/debug/syncz" => json(&status.list()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", String::new()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(json) => reply(StatusCode::OK, "application/json", json),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            error.to_string(),
        ),
    }
}
