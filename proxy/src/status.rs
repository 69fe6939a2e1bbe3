//! The endpoints kubelet and Prometheus call: readiness on 15021 (`/healthz/ready`) and
//! metrics on 15090 (`/stats/prometheus`), at Istio's ports and paths.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::{
    body::{local_response, Body},
    metrics::Metrics,
    serve,
};

/// Set once the listeners are bound and the identity is loaded.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves `/healthz/ready` on `listener` until the process ends.
pub async fn serve_health(listener: TcpListener, readiness: Readiness) {
    accept_loop(listener, move |req| {
        let ready = readiness.is_ready();
        async move {
            match (req.method(), req.uri().path(), ready) {
                (&Method::GET, "/healthz/ready", true) => local_response(StatusCode::OK, ""),
                (&Method::GET, "/healthz/ready", false) => {
                    local_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
                _ => local_response(StatusCode::NOT_FOUND, ""),
            }
        }
    })
    .await
}

/// Serves `/stats/prometheus` on `listener` until the process ends.
pub async fn serve_stats(listener: TcpListener, metrics: Arc<Metrics>) {
    accept_loop(listener, move |req| {
        let response = if req.method() == Method::GET && req.uri().path() == "/stats/prometheus" {
            let mut response =
                Response::new(Either::Right(Full::new(Bytes::from(metrics.encode()))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        } else {
            local_response(StatusCode::NOT_FOUND, "")
        };
        async move { response }
    })
    .await
}

async fn accept_loop<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "status listener accept failed");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(error) = serve::http1(tcp, handle).await {
                tracing::debug!(%error, %peer, "status connection failed");
            }
        });
    }
}
