//! The sidecar injection webhook: HTTPS on 15017 with the control plane's serving certificate
//! (names `istiod.istio-system.svc`, as the `MutatingWebhookConfiguration` calls it), `POST
//! /inject` (and `/inject/...` with Istio's path parameters) answered by
//! [`crate::inject::admission::review`] with the injection values and mesh config in force.
//! A body over 1 MiB, one that is not JSON, or a review that is not a Pod's is answered 400 with
//! the reason; nothing a caller sends can take the server down.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::CatalogWatch;
use crate::inject::admission::{review, PathParams};

/// The largest review read (Pods are far smaller; the API server's own limit is larger).
pub const MAX_REVIEW_BYTES: usize = 1024 * 1024;

pub async fn serve(listener: TcpListener, tls: TlsAcceptor, catalog: CatalogWatch) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                tracing::warn!(%error, "accepting on the webhook port");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, catalog) = (tls.clone(), catalog.clone());
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "webhook TLS handshake");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let catalog = catalog.clone();
                async move { Ok::<_, Infallible>(respond(req, &catalog).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "webhook connection");
            }
        });
    }
}

async fn respond(req: Request<Incoming>, catalog: &CatalogWatch) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path != "/inject" && !path.starts_with("/inject/") {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such path\n".to_owned(),
        );
    }
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "POST an AdmissionReview\n".to_owned(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let reason = if error.is::<http_body_util::LengthLimitError>() {
                format!("the review is larger than {MAX_REVIEW_BYTES} bytes")
            } else {
                format!("reading the review: {error}")
            };
            return reply(StatusCode::BAD_REQUEST, "text/plain", reason + "\n");
        }
    };
    let catalog = catalog.borrow().clone();
    match review(catalog.accepted().injector(), &body, &PathParams::of(&path)) {
        Ok(answer) => reply(StatusCode::OK, "application/json", answer.to_string()),
        Err(error) => {
            tracing::warn!(%error, "refused an admission review");
            reply(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n"))
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
