//! Distributed tracing as Istio's sidecars do it: each request's trace context is read from its
//! headers ([`context`]: W3C and B3), its sampling decided once (the caller's decision, else
//! the side's sampling share), and written on what the sidecar sends on. The server side is one
//! span per inbound request (the app's parent); the client side one span per try to an
//! upstream (retries and mirrors included), each the parent of the server span the peer
//! makes. Sampled spans leave through a bounded queue per collector ([`export`]) to the
//! provider's collector, found in the snapshot ([`collector`]).
//!
//! Everything that does not change per request is built once per push ([`Tracer::side`]):
//! the formats written, the attributes every span carries, the exporter. Per request, an
//! unsampled one costs two random draws and its headers; attributes are only built for
//! sampled requests.

pub mod collector;
pub mod context;
pub mod export;

use std::{
    borrow::Cow,
    fmt::Display,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use http::{HeaderMap, Request, Uri, Version};
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_sdk::trace::SpanData;
use parking_lot::Mutex;
use remora_api::{
    telemetry::{
        spans::{CustomValue, Export},
        Tracing,
    },
    Snapshot, SpiffeId,
};

use context::{Formats, Outgoing};
use export::{Counters, Exporter};

/// The side a span reports: the server (inbound) or client (outbound) side of this sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Who this sidecar is, as its spans name it.
pub struct Me<'a> {
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub namespace: &'a str,
    pub cluster: &'a str,
}

/// The sidecar's exporters, one per collector in use, kept across pushes that leave it alone.
pub struct Tracer {
    counters: Counters,
    exporters: Mutex<Vec<(collector::Key, Exporter)>>,
    scope: InstrumentationScope,
}

impl Tracer {
    pub fn new(counters: Counters) -> Self {
        Self {
            counters,
            exporters: Mutex::default(),
            scope: InstrumentationScope::builder("remora-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// The tracing of each side under `snapshot`, where this sidecar is `me`; exporters no
    /// side uses any more are let go (their queues drain, then their tasks end).
    pub fn sides(
        &self,
        snapshot: &Snapshot,
        me: &Me<'_>,
    ) -> (Option<Arc<SideTracer>>, Option<Arc<SideTracer>>) {
        let mut used = Vec::new();
        let telemetry = &snapshot.telemetry;
        let client = self.side(
            telemetry.client.tracing.as_ref(),
            Side::Client,
            snapshot,
            me,
            &mut used,
        );
        let server = self.side(
            telemetry.server.tracing.as_ref(),
            Side::Server,
            snapshot,
            me,
            &mut used,
        );
        self.exporters.lock().retain(|(key, _)| used.contains(key));
        (client, server)
    }

    fn side(
        &self,
        tracing: Option<&Tracing>,
        side: Side,
        snapshot: &Snapshot,
        me: &Me<'_>,
        used: &mut Vec<collector::Key>,
    ) -> Option<Arc<SideTracer>> {
        let tracing = tracing?;
        let service_name = format!("{}.{}", me.canonical_service, me.namespace);
        let exporter = if tracing.reporting {
            collector::endpoint(&tracing.provider, snapshot).and_then(|endpoint| {
                let key = collector::Key {
                    provider: tracing.provider.clone(),
                    endpoint,
                    service_name: service_name.clone(),
                };
                let exporter = self.exporter(&key, me);
                used.push(key);
                exporter
            })
        } else {
            None
        };
        let formats = match tracing.provider.export {
            Export::Zipkin if tracing.provider.w3c => Formats::B3_MULTI | Formats::W3C,
            Export::Zipkin => Formats::B3_MULTI,
            Export::OtlpGrpc | Export::OtlpHttp => Formats::W3C,
        };
        let mut fixed = Vec::new();
        if tracing.istio_tags {
            fixed.extend([
                KeyValue::new("istio.canonical_service", me.canonical_service.to_owned()),
                KeyValue::new("istio.canonical_revision", me.canonical_revision.to_owned()),
                KeyValue::new("istio.namespace", me.namespace.to_owned()),
                KeyValue::new("istio.cluster_id", me.cluster.to_owned()),
            ]);
        }
        let mut headers = Vec::new();
        for tag in &tracing.custom_tags {
            let name = tag.name.clone();
            match &tag.value {
                CustomValue::Literal(value) => fixed.push(KeyValue::new(name, value.clone())),
                CustomValue::Environment {
                    name: var,
                    fallback,
                } => {
                    let value = std::env::var(var).unwrap_or_else(|_| fallback.clone());
                    fixed.push(KeyValue::new(name, value));
                }
                CustomValue::Header {
                    name: header,
                    fallback,
                } => headers.push((name, header.clone(), fallback.clone())),
            }
        }
        Some(Arc::new(SideTracer {
            tracing: tracing.clone(),
            side,
            formats,
            exporter,
            fixed,
            headers,
            scope: self.scope.clone(),
        }))
    }

    fn exporter(&self, key: &collector::Key, me: &Me<'_>) -> Option<Exporter> {
        let mut exporters = self.exporters.lock();
        if let Some((_, exporter)) = exporters.iter().find(|(k, _)| k == key) {
            return Some(exporter.clone());
        }
        let resource = collector::resource(&key.service_name, me.canonical_revision, me.namespace);
        match collector::start(key, &resource, self.counters.clone()) {
            Ok(exporter) => {
                exporters.push((key.clone(), exporter.clone()));
                Some(exporter)
            }
            Err(error) => {
                tracing::warn!(provider = %key.provider.name, %error, "cannot export spans");
                None
            }
        }
    }
}

/// One side's tracing under the snapshot in use.
pub struct SideTracer {
    tracing: Tracing,
    side: Side,
    /// The formats its provider reads, written on every request sent on.
    formats: Formats,
    /// `None`: spans are not reported (reporting off, or no collector endpoint).
    exporter: Option<Exporter>,
    /// Attributes every span carries: Istio's, and the literal and environment custom tags.
    fixed: Vec<KeyValue>,
    /// Custom tags from request headers: (attribute, header, fallback).
    headers: Vec<(String, String, String)>,
    scope: InstrumentationScope,
}

impl SideTracer {
    /// The trace of a request whose head just arrived: its sampling decided (the caller's
    /// decision is honoured even where headers are not written), and on the server side,
    /// this hop's span written as the app's parent.
    pub fn start<B>(self: &Arc<Self>, req: &mut Request<B>) -> Trace {
        let incoming = context::extract(req.headers());
        let sampled = self.tracing.sampled(incoming.sampled, rand::random());
        let (trace_id, parent) = match incoming.parent {
            Some((trace_id, span_id)) => (trace_id, Some(span_id)),
            None => (new_id(), None),
        };
        let formats = self.formats | incoming.formats;
        let span_id = rand::random::<u64>().max(1);
        let mut trace = Trace {
            side: self.clone(),
            trace_id,
            parent,
            sampled,
            formats,
            span: None,
            route: None,
        };
        if trace.reports() {
            trace.route = Some(Arc::default());
        }
        if self.side == Side::Server {
            trace.write(
                req.headers_mut(),
                &Outgoing {
                    trace_id,
                    span_id,
                    parent_span_id: parent,
                    sampled,
                },
            );
            if trace.reports() {
                trace.span = Some(Box::new(Started::of(req, span_id, &self.headers)));
            }
        }
        trace
    }
}

/// What a server span says about its request's connection, known when it ends (a tunnelled
/// request names its app port on its way in).
pub struct Described {
    /// The caller's verified identity.
    pub peer: Option<Arc<str>>,
    /// The Service host it called.
    pub service: Option<Arc<str>>,
    /// The app port it called.
    pub port: u16,
}

/// A new trace id (never zero).
fn new_id() -> u128 {
    rand::random::<u128>().max(1)
}

/// A request's trace on this hop.
#[derive(Clone)]
pub struct Trace {
    side: Arc<SideTracer>,
    trace_id: u128,
    /// The caller's span, when it sent one.
    parent: Option<u64>,
    sampled: bool,
    formats: Formats,
    /// The server side's span, when reported.
    span: Option<Box<Started>>,
    /// The route that took the request, when its spans are reported.
    route: Option<Arc<OnceLock<String>>>,
}

/// What a span knows from its start.
#[derive(Clone)]
struct Started {
    span_id: u64,
    start: SystemTime,
    /// The request's authority, which names the span when no Service does.
    authority: Option<String>,
    attributes: Vec<KeyValue>,
    /// The other side's verified identity.
    peer: Option<Arc<str>>,
    /// The Service host and port (the span is `host:port/*`, as Envoy names it).
    service: Option<(Arc<str>, u16)>,
}

impl Started {
    fn of<B>(req: &Request<B>, span_id: u64, tags: &[(String, String, String)]) -> Self {
        let headers = req.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| text("host"));
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_owned()),
            KeyValue::new("url.path", path(req.uri())),
            KeyValue::new("network.protocol.version", protocol(req.version())),
        ];
        if let Some(query) = req.uri().query() {
            attributes.push(KeyValue::new("url.query", query.to_owned()));
        }
        if let Some(authority) = authority {
            attributes.push(KeyValue::new("server.address", authority.to_owned()));
        }
        if let Some(agent) = text("user-agent") {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        if let Some(id) = text("x-request-id") {
            attributes.push(KeyValue::new("guid:x-request-id", id.to_owned()));
        }
        for (attribute, header, fallback) in tags {
            let value = text(header).unwrap_or(fallback);
            attributes.push(KeyValue::new(attribute.clone(), value.to_owned()));
        }
        Self {
            span_id,
            start: SystemTime::now(),
            authority: authority.map(str::to_owned),
            attributes,
            peer: None,
            service: None,
        }
    }
}

fn path(uri: &Uri) -> String {
    uri.path().to_owned()
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// How a request (or a try) ended, as its span reports it.
pub struct Ended<'a> {
    /// 0: no answer.
    pub code: u16,
    /// Envoy's response flags.
    pub flags: &'a dyn Display,
    pub cluster: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
}

/// Where a try goes.
pub struct To<'a> {
    pub address: SocketAddr,
    pub identity: Option<&'a SpiffeId>,
    pub cluster: Option<&'a Arc<str>>,
    /// The Service host and port, if any.
    pub service: Option<(&'a Arc<str>, u16)>,
}

impl Trace {
    /// Whether sampled spans of this request are reported.
    fn reports(&self) -> bool {
        self.sampled && self.side.exporter.is_some()
    }

    /// The route that took the request (`name` is only called when spans are reported).
    pub fn route(&self, name: impl FnOnce() -> String) {
        if let Some(route) = &self.route {
            route.get_or_init(name);
        }
    }

    fn write(&self, headers: &mut HeaderMap, context: &Outgoing) {
        if self.side.tracing.propagation {
            context::inject(headers, context, self.formats);
        }
    }

    /// One try of the request, about to be sent as `req` to `to`: its own span id is written
    /// as the peer's parent; the span is reported when the try ends, if it is sampled.
    pub fn attempt<B>(&self, req: &mut Request<B>, to: &To<'_>) -> Option<Attempt> {
        let span_id = rand::random::<u64>().max(1);
        self.write(
            req.headers_mut(),
            &Outgoing {
                trace_id: self.trace_id,
                span_id,
                parent_span_id: self.parent,
                sampled: self.sampled,
            },
        );
        if !self.reports() {
            return None;
        }
        let mut started = Started::of(req, span_id, &self.side.headers);
        if let Some(attempt) = req
            .headers()
            .get("x-envoy-attempt-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|&n| n > 1)
        {
            started
                .attributes
                .push(KeyValue::new("http.request.resend_count", attempt - 1));
        }
        started.peer = to.identity.map(|id| Arc::from(id.to_string()));
        started.service = to.service.map(|(host, port)| (host.clone(), port));
        Some(Attempt {
            trace: self.clone(),
            started: Some(started),
            upstream: to.address,
            cluster: to.cluster.cloned(),
        })
    }

    /// Whether a server span waits to be reported (and so to be described).
    pub fn has_span(&self) -> bool {
        self.span.is_some()
    }

    /// Reports the server side's span of a request that ended as `ended` says, on the
    /// connection `describe` tells about. The span is named after the Service and the port
    /// the caller addressed (its `:authority`'s, else the app port), as Envoy names it.
    pub fn end(&mut self, ended: &Ended<'_>, describe: impl FnOnce() -> Described) {
        if let Some(mut started) = self.span.take() {
            let described = describe();
            let port = started
                .authority
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, port)| port.parse().ok())
                .unwrap_or(described.port);
            started.peer = described.peer;
            started.service = described.service.map(|host| (host, port));
            self.report(*started, ended);
        }
    }

    fn report(&self, started: Started, ended: &Ended<'_>) {
        let Some(exporter) = &self.side.exporter else {
            return;
        };
        let side = &self.side;
        let Started {
            span_id,
            start,
            authority,
            mut attributes,
            peer,
            service,
        } = started;
        let name = match (service, authority) {
            (Some((host, port)), _) => format!("{host}:{port}/*"),
            (None, Some(authority)) => format!("{authority}/*"),
            (None, None) => "unknown/*".to_owned(),
        };
        attributes.extend(side.fixed.iter().cloned());
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(ended.code),
        ));
        attributes.push(KeyValue::new("response_flags", ended.flags.to_string()));
        if let Some(route) = self.route.as_ref().and_then(|r| r.get()) {
            attributes.push(KeyValue::new("route_name", route.clone()));
        }
        if let Some(cluster) = ended.cluster {
            attributes.push(KeyValue::new("upstream_cluster", cluster.to_owned()));
        }
        if let Some(upstream) = ended.upstream {
            attributes.push(KeyValue::new(
                "network.peer.address",
                upstream.ip().to_string(),
            ));
            attributes.push(KeyValue::new(
                "network.peer.port",
                i64::from(upstream.port()),
            ));
        }
        if let Some(peer) = peer {
            attributes.push(KeyValue::new("peer.identity", peer.to_string()));
        }
        if let Some(limit) = side.tracing.provider.max_tag_length {
            for attribute in &mut attributes {
                truncate(&mut attribute.value, limit);
            }
        }
        // A server failed when it answered 5xx (or not at all); a client when it got >= 400.
        let failed = ended.code == 0
            || ended.code >= 500
            || (side.side == Side::Client && ended.code >= 400);
        let status = if failed {
            Status::error(format!("{}", ended.code))
        } else {
            Status::Unset
        };
        exporter.send(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id.to_be_bytes()),
                SpanId::from_bytes(span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: self
                .parent
                .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: match side.side {
                Side::Client => SpanKind::Client,
                Side::Server => SpanKind::Server,
            },
            name: Cow::Owned(name),
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: side.scope.clone(),
        });
    }
}

/// Cuts a string value to at most `limit` bytes, on a character boundary.
fn truncate(value: &mut Value, limit: usize) {
    if let Value::String(text) = value {
        let text = text.as_str();
        if text.len() > limit {
            let mut end = limit;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            *value = Value::from(text[..end].to_owned());
        }
    }
}

/// One try's span, reported when it ends, or when it is given up (its future dropped by a
/// timeout or a caller gone) as unanswered.
pub struct Attempt {
    trace: Trace,
    /// Taken when reported.
    started: Option<Started>,
    upstream: SocketAddr,
    cluster: Option<Arc<str>>,
}

impl Attempt {
    /// The try got an answer with status `code` (0: none), with response `flags`.
    pub fn end(mut self, code: u16, flags: &dyn Display) {
        self.report(code, flags);
    }

    fn report(&mut self, code: u16, flags: &dyn Display) {
        if let Some(started) = self.started.take() {
            self.trace.report(
                started,
                &Ended {
                    code,
                    flags,
                    cluster: self.cluster.as_deref(),
                    upstream: Some(self.upstream),
                },
            );
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.report(0, &"-");
    }
}

#[cfg(test)]
mod tests;
