//! The admin endpoint on 127.0.0.1:15000 (reachable only from inside the pod, as Envoy's):
//! - `GET /config_dump`: the bootstrap and the snapshot in use, as JSON;
//! - `POST /logging?level=<filter>`: change the log filter (e.g. `debug`, `remora_proxy=trace`);
//! - `POST /drain`: start a graceful drain, as SIGTERM does;
//! - `GET /stats/prometheus`: the same metrics as 15090.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::{
    body::{local_response, Body},
    drain::Drain,
    metrics::Metrics,
    status,
};

/// Changes the process's log filter; returns why a filter was refused.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub config_dump: Bytes,
    pub drain: Drain,
    pub log: LogControl,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    pub fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/config_dump") => {
                let mut response =
                    Response::new(Either::Right(Full::new(self.config_dump.clone())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
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
            _ => local_response(StatusCode::NOT_FOUND, ""),
        }
    }
}
