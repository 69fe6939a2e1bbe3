//! The admin endpoint on 127.0.0.1:15000 (reachable only from inside the pod, as Envoy's):
//! - `GET /config_dump`: the bootstrap and the snapshot in use, as JSON;
//! - `GET /certs`: the workload certificate in use (identity, serial, validity), as JSON;
//! - `POST /logging?level=<filter>`: change the log filter (e.g. `debug`, `remora_proxy=trace`);
//! - `POST /drain`: start a graceful drain, as SIGTERM does;
//! - `GET /stats/prometheus`: the same metrics as 15090;
//! - `GET /memory`: what the allocator holds, as Envoy reports it (see [`crate::memory`]).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    body::{local_response, Body},
    config::Config,
    drain::Drain,
    identity::CurrentCert,
    memory,
    metrics::Metrics,
    status,
};

/// Changes the process's log filter; returns why a filter was refused.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub bootstrap: serde_json::Value,
    pub config: Arc<Config>,
    pub cert: Arc<CurrentCert>,
    pub drain: Drain,
    pub log: LogControl,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    pub fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/config_dump") => json(&serde_json::json!({
                "bootstrap": self.bootstrap,
                "snapshot": self.config.load().dump.snapshot(),
            })),
            (&Method::GET, "/certs") => {
                let cert = self.cert.get();
                let seconds =
                    |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                json(&serde_json::json!({
                    "serial": cert.serial,
                    "notBefore": seconds(cert.not_before),
                    "notAfter": seconds(cert.not_after),
                }))
            }
            (&Method::POST, "/logging") => {
                let level = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
                match level.map(|level| (level, (self.log)(level))) {
                    Some((level, Ok(()))) => {
                        tracing::info!(level, "log filter changed");
                        local_response(StatusCode::OK, format!("log filter: {level}\n"))
                    }
                    Some((_, Err(error))) => {
                        local_response(StatusCode::BAD_REQUEST, format!("{error}\n"))
                    }
                    None => local_response(StatusCode::BAD_REQUEST, "missing ?level=\n"),
                }
            }
            (&Method::POST, "/drain") => {
                tracing::info!("drain requested over admin");
                self.drain.start();
                local_response(StatusCode::OK, "draining\n")
            }
            (&Method::GET, "/stats/prometheus") => status::stats(&self.metrics, req),
            (&Method::GET, "/memory") => match memory::stats() {
                Ok(stats) => json(&stats),
                Err(error) => local_response(StatusCode::NOT_IMPLEMENTED, format!("{error}\n")),
            },
            _ => local_response(StatusCode::NOT_FOUND, ""),
        }
    }
}

fn json(value: &serde_json::Value) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Body::full(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => local_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}
