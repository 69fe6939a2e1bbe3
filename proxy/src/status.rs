//! The endpoints kubelet and Prometheus call: readiness on 15021 (`/healthz/ready`), metrics
//! on 15090 (`/stats/prometheus`), and the status port 15020 that injection points the pod's
//! probes and scrapes at (`/healthz/ready`, the app's own probes under `/app-health/`, and
//! `/stats/prometheus` with the app's metrics merged in), at Istio's ports and paths.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};

use remora_api::app_probe::AppProbe;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    body::{local_response, Body},
    inbound::app_health,
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
pub fn health<B>(readiness: &Readiness, req: &Request<B>) -> Response<Body> {
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
    exposition(metrics.encode())
}

fn exposition(text: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The status port (15020).
pub struct StatusPort {
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    /// The app's original probes, by their `/app-health/...` path.
    pub probers: BTreeMap<String, AppProbe>,
    /// Where the app's own metrics are scraped (port, path).
    pub app_metrics: Option<(u16, String)>,
    /// The pod's address, which probes and scrapes are sent to.
    pub pod_ip: IpAddr,
}

impl StatusPort {
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        if req.method() != Method::GET {
            return local_response(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let path = req.uri().path();
        if path == "/healthz/ready" {
            return health(&self.readiness, &req);
        }
        if path == "/stats/prometheus" {
            return self.merged_metrics().await;
        }
        match self.probers.get(path) {
            Some(probe) => {
                let status = app_health::probe(probe, self.pod_ip).await;
                local_response(status, "")
            }
            None => local_response(StatusCode::NOT_FOUND, ""),
        }
    }

    /// The sidecar's metrics, then the app's (when it can be scraped: a failing app never
    /// turns the sidecar's own into an error).
    async fn merged_metrics(&self) -> Response<Body> {
        let mut text = self.metrics.encode();
        if let Some((port, path)) = &self.app_metrics {
            if let Some(app) = app_health::scrape(*port, path, self.pod_ip).await {
                text.push_str(&app_exposition(&app));
            }
        }
        exposition(text)
    }
}

/// The app's exposition as it can follow the sidecar's: an OpenMetrics `# EOF` dropped, a final
/// newline ensured.
fn app_exposition(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .lines()
        .filter(|line| line.trim() != "# EOF")
        .collect::<Vec<_>>()
        .join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
