//! The endpoints kubelet and Prometheus call: readiness on 15021 (`/healthz/ready`) and
//! metrics on 15090 (`/stats/prometheus`), at Istio's ports and paths.

use std::sync::{
    atomic::{AtomicU8, Ordering},
    Arc,
};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    body::{local_response, Body},
    metrics::Metrics,
};

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Ready once the listeners are bound and the identity is loaded; not ready again once
/// draining, so no new traffic is sent to a sidecar on its way out.
#[derive(Clone)]
pub struct Readiness(Arc<AtomicU8>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(AtomicU8::new(STARTING)))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// `/healthz/ready` on 15021.
pub fn health(readiness: &Readiness, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path(), readiness.state()) {
        (&Method::GET, "/healthz/ready", "ready") => local_response(StatusCode::OK, ""),
        (&Method::GET, "/healthz/ready", state) => {
            local_response(StatusCode::SERVICE_UNAVAILABLE, format!("{state}\n"))
        }
        _ => local_response(StatusCode::NOT_FOUND, ""),
    }
}

/// `/stats/prometheus` on 15090.
pub fn stats(metrics: &Metrics, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET || req.uri().path() != "/stats/prometheus" {
        return local_response(StatusCode::NOT_FOUND, "");
    }
    let mut response = Response::new(Body::full(metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
